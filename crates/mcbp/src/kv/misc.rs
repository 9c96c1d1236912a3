//! Bucket-wide and informational commands (§5): FLUSH, STAT, GET_ERROR_MAP,
//! GET_CLUSTER_CONFIG.
//!
//! FLUSH is answered with a status-only [`Response`](crate::Response); GET_ERROR_MAP
//! and GET_CLUSTER_CONFIG with a [`Response`](crate::Response) whose value is JSON
//! (datatype JSON).

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::Opaque;
use crate::message::{
    be_u16, be_u32, be_u64, impl_try_from_frame, BodyField, Check, Direction, Message,
};
use crate::opcode::Opcode;
use crate::status::Status;
use crate::BodyError;

/// FLUSH or FLUSHQ request: optional 4 bytes of extras (when to flush).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flush {
    /// [`Opcode::Flush`] or [`Opcode::FlushQ`].
    pub opcode: Opcode,
    /// The opaque.
    pub opaque: Opaque,
    /// Delay before flushing, if given.
    pub expiry: Option<u32>,
}

impl Message for Flush {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(op, Opcode::Flush | Opcode::FlushQ)
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[0, 4])?;
        c.no_key()?;
        c.no_value()?;
        Ok(Flush {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            expiry: (e.len() == 4).then(|| be_u32(e, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let e = self.expiry.map(u32::to_be_bytes);
        FrameSpec::request(self.opcode)
            .opaque(self.opaque)
            .extras(e.as_ref().map_or(&[][..], |e| &e[..]))
            .encode(buf);
    }
}

/// STAT request (0x10, §5): key = optional group (e.g. `dcp-vbtakeover 5 <conn>`),
/// value = optional JSON (sent with datatype JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The opaque.
    pub opaque: Opaque,
    /// Stat group; empty for the default group.
    pub key: Bytes,
    /// Optional JSON argument; empty when absent.
    pub value: Bytes,
}

impl Stat {
    /// A request for one stat group (empty = default group).
    #[must_use]
    pub fn group(opaque: Opaque, group: &str) -> Stat {
        Stat {
            opaque,
            key: Bytes::copy_from_slice(group.as_bytes()),
            value: Bytes::new(),
        }
    }
}

impl Message for Stat {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::Stat
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        Ok(Stat {
            opaque: frame.opaque(),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let dt = if self.value.is_empty() {
            Datatype::RAW
        } else {
            Datatype::JSON
        };
        FrameSpec::request(Opcode::Stat)
            .opaque(self.opaque)
            .datatype(dt)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// One answer to STAT (§5): key = stat name, value = ASCII value. A group ends with
/// an answer whose key and value are both empty ([`StatResponse::is_terminator`]).
/// An error answer ends the group too; its value is error context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// Stat name.
    pub key: Bytes,
    /// Stat value.
    pub value: Bytes,
}

impl StatResponse {
    /// The answer ending a SUCCESS group: empty key and value.
    #[must_use]
    pub fn terminator(opaque: Opaque) -> StatResponse {
        StatResponse {
            opaque,
            status: Status::Success,
            key: Bytes::new(),
            value: Bytes::new(),
        }
    }

    /// Whether this is the empty answer that ends a group.
    #[must_use]
    pub fn is_terminator(&self) -> bool {
        self.key.is_empty() && self.value.is_empty()
    }
}

impl Message for StatResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::Stat
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        Ok(StatResponse {
            opaque: frame.opaque(),
            status: frame.status(),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::response(Opcode::Stat, self.status)
            .opaque(self.opaque)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// GET_ERROR_MAP request (0xfe, §5): value = u16 highest error-map version the client
/// understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetErrorMap {
    /// The opaque.
    pub opaque: Opaque,
    /// Highest version wanted (1 or 2 today).
    pub version: u16,
}

impl Message for GetErrorMap {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::GetErrorMap
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let v = frame.value();
        if v.len() != 2 {
            return Err(c.err(
                BodyField::Value,
                format!("version of {} bytes (need 2)", v.len()),
            ));
        }
        Ok(GetErrorMap {
            opaque: frame.opaque(),
            version: be_u16(v, 0),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::GetErrorMap)
            .opaque(self.opaque)
            .value(&self.version.to_be_bytes())
            .encode(buf);
    }
}

/// GET_CLUSTER_CONFIG request (0xb5, §5): extras are empty or the i64 epoch and
/// i64 revision of the map the client has (HELLO
/// GET_CLUSTER_CONFIG_WITH_KNOWN_VERSION); the server then omits a map that is not
/// newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetClusterConfig {
    /// The opaque.
    pub opaque: Opaque,
    /// `(epoch, revision)` of the map the client already has.
    pub known: Option<(i64, i64)>,
}

impl Message for GetClusterConfig {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::GetClusterConfig
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[0, 16])?;
        c.no_key()?;
        c.no_value()?;
        let known = (e.len() == 16).then(|| {
            (
                i64::from_be_bytes(be_u64(e, 0).to_be_bytes()),
                i64::from_be_bytes(be_u64(e, 8).to_be_bytes()),
            )
        });
        Ok(GetClusterConfig {
            opaque: frame.opaque(),
            known,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(16);
        if let Some((epoch, revision)) = self.known {
            e.put_i64(epoch);
            e.put_i64(revision);
        }
        FrameSpec::request(Opcode::GetClusterConfig)
            .opaque(self.opaque)
            .extras(&e)
            .encode(buf);
    }
}

impl_try_from_frame!(Flush, Stat, StatResponse, GetErrorMap, GetClusterConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(m: &impl Message) -> String {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        hex::encode(&buf)
    }

    #[test]
    fn flush_extras_are_optional_but_never_other_lengths() {
        let f = Flush {
            opcode: Opcode::Flush,
            opaque: Opaque(1),
            expiry: Some(10),
        };
        assert_eq!(
            hex_of(&f),
            "8008000004000000 0000000400000001 0000000000000000 0000000a".replace(' ', "")
        );
        assert_eq!(Flush::parse(&f.to_frame()), Ok(f));
        let bad = FrameSpec::request(Opcode::FlushQ)
            .extras(&[0; 8])
            .to_frame();
        assert_eq!(
            Flush::parse(&bad).expect_err("8 B").field,
            BodyField::Extras
        );
    }

    /// §5: a STAT group ends with an empty answer.
    #[test]
    fn stat_request_and_answers_match_hand_computed_bytes() {
        let s = Stat::group(Opaque(7), "vbucket");
        assert_eq!(
            hex_of(&s),
            "8010000700000000 0000000700000007 0000000000000000 766275636b6574".replace(' ', "")
        );
        let r = StatResponse {
            opaque: Opaque(7),
            status: Status::Success,
            key: Bytes::from_static(b"vb_0"),
            value: Bytes::from_static(b"active"),
        };
        assert_eq!(
            hex_of(&r),
            "8110000400000000 0000000a00000007 0000000000000000 76625f30 616374697665"
                .replace(' ', "")
        );
        assert!(!r.is_terminator());
        let end = StatResponse::parse(&StatResponse::terminator(Opaque(7)).to_frame())
            .expect("empty answer");
        assert!(end.is_terminator());
        let bad = FrameSpec::request(Opcode::Stat).extras(&[0; 4]).to_frame();
        assert_eq!(
            Stat::parse(&bad).expect_err("extras").field,
            BodyField::Extras
        );
    }

    #[test]
    fn get_error_map_value_is_a_u16() {
        let g = GetErrorMap {
            opaque: Opaque(1),
            version: 2,
        };
        assert_eq!(
            hex_of(&g),
            "80fe000000000000 0000000200000001 0000000000000000 0002".replace(' ', "")
        );
        let bad = FrameSpec::request(Opcode::GetErrorMap)
            .value(&[2])
            .to_frame();
        assert_eq!(
            GetErrorMap::parse(&bad).expect_err("1 B").field,
            BodyField::Value
        );
    }

    #[test]
    fn get_cluster_config_known_version_is_sixteen_bytes_of_extras() {
        let g = GetClusterConfig {
            opaque: Opaque(1),
            known: Some((-1, 42)),
        };
        assert_eq!(
            hex_of(&g),
            "80b5000010000000 0000001000000001 0000000000000000 ffffffffffffffff 000000000000002a"
                .replace(' ', "")
        );
        assert_eq!(GetClusterConfig::parse(&g.to_frame()), Ok(g));
        let bad = FrameSpec::request(Opcode::GetClusterConfig)
            .extras(&[0; 8])
            .to_frame();
        assert_eq!(
            GetClusterConfig::parse(&bad).expect_err("8 B").field,
            BodyField::Extras
        );
    }
}
