//! Document commands (§5): the GET family, SET/ADD/REPLACE, DELETE,
//! INCREMENT/DECREMENT, APPEND/PREPEND, TOUCH/GAT, and their answers.
//!
//! Quiet variants (…Q) share their loud sibling's layout; they omit the success
//! response but their error responses look the same.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::{Cas, Opaque, Seqno, VbUuid, Vbid};
use crate::message::{be_u32, be_u64, impl_try_from_frame, BodyField, Check, Direction, Message};
use crate::opcode::Opcode;
use crate::status::Status;
use crate::BodyError;

/// GET, GETQ, GETK, GETKQ or GET_REPLICA request (§5): key only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    /// [`Opcode::Get`], [`Opcode::GetQ`], [`Opcode::GetK`], [`Opcode::GetKQ`] or
    /// [`Opcode::GetReplica`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// Document key (non-empty).
    pub key: Bytes,
}

impl Message for Get {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Get | Opcode::GetQ | Opcode::GetK | Opcode::GetKQ | Opcode::GetReplica
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        c.no_value()?;
        Ok(Get {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            key: frame.key_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .key(&self.key)
            .encode(buf);
    }
}

/// The answer to GET, GETQ, GETK, GETKQ, GET_REPLICA, GAT or GATQ (§5).
///
/// SUCCESS carries 4 bytes of extras (the document flags), the CAS and the document.
/// Error answers may omit the extras (`flags` is then 0) and carry error context in
/// the value. Only GETK/GETKQ answers carry the key; the encoder writes extras on
/// SUCCESS or when `flags` is non-zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    /// Which command this answers.
    pub opcode: Opcode,
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// Document CAS.
    pub cas: Cas,
    /// Datatype of the value.
    pub datatype: Datatype,
    /// Document flags.
    pub flags: u32,
    /// Document key (GETK/GETKQ only, else empty).
    pub key: Bytes,
    /// Document value, or error context.
    pub value: Bytes,
}

impl Message for GetResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Get
                | Opcode::GetQ
                | Opcode::GetK
                | Opcode::GetKQ
                | Opcode::GetReplica
                | Opcode::Gat
                | Opcode::GatQ
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let status = frame.status();
        let e = if status.is_success() {
            c.extras(&[4])?
        } else {
            c.extras(&[0, 4])?
        };
        if !matches!(frame.opcode(), Opcode::GetK | Opcode::GetKQ) {
            c.no_key()?;
        }
        Ok(GetResponse {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            status,
            cas: frame.cas(),
            datatype: frame.datatype(),
            flags: if e.len() == 4 { be_u32(e, 0) } else { 0 },
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let flags = self.flags.to_be_bytes();
        let extras: &[u8] = if self.status.is_success() || self.flags != 0 {
            &flags
        } else {
            &[]
        };
        FrameSpec::response(self.opcode, self.status)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(extras)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// SET, ADD, REPLACE or their quiet variants (§5): 8 bytes of extras (flags, expiry),
/// key and document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// [`Opcode::Set`], [`Opcode::Add`], [`Opcode::Replace`], [`Opcode::SetQ`],
    /// [`Opcode::AddQ`] or [`Opcode::ReplaceQ`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// CAS to compare against (0 = no check).
    pub cas: Cas,
    /// Datatype of the value.
    pub datatype: Datatype,
    /// Document flags, stored as-is.
    pub flags: u32,
    /// Expiry (0 = none; up to 30 days relative, else absolute Unix time).
    pub expiry: u32,
    /// Document key (non-empty).
    pub key: Bytes,
    /// Document value (may be empty).
    pub value: Bytes,
}

impl Message for Store {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Set
                | Opcode::Add
                | Opcode::Replace
                | Opcode::SetQ
                | Opcode::AddQ
                | Opcode::ReplaceQ
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[8])?;
        c.key()?;
        Ok(Store {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            datatype: frame.datatype(),
            flags: be_u32(e, 0),
            expiry: be_u32(e, 4),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&self.flags.to_be_bytes());
        e[4..].copy_from_slice(&self.expiry.to_be_bytes());
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(&e)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// Where a mutation landed: the 16 bytes of extras a mutation response carries when
/// the connection enabled HELLO MUTATION_SEQNO (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MutationToken {
    /// The vbucket's current uuid.
    pub vb_uuid: VbUuid,
    /// Seqno assigned to the mutation.
    pub seqno: Seqno,
}

impl MutationToken {
    fn from_extras(e: &[u8]) -> Option<MutationToken> {
        (e.len() == 16).then(|| MutationToken {
            vb_uuid: VbUuid(be_u64(e, 0)),
            seqno: Seqno(be_u64(e, 8)),
        })
    }

    fn to_extras(token: Option<MutationToken>) -> Vec<u8> {
        let mut e = Vec::with_capacity(16);
        if let Some(t) = token {
            e.put_u64(t.vb_uuid.0);
            e.put_u64(t.seqno.0);
        }
        e
    }
}

/// The answer to SET/ADD/REPLACE, DELETE, APPEND/PREPEND (and their quiet variants)
/// or TOUCH (§5): a CAS and, with MUTATION_SEQNO, a [`MutationToken`].
///
/// A SUCCESS answer has no value; error context on other statuses is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutationResponse {
    /// Which command this answers.
    pub opcode: Opcode,
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// New document CAS.
    pub cas: Cas,
    /// vb uuid and seqno of the mutation (16 B extras), if sent.
    pub token: Option<MutationToken>,
}

impl Message for MutationResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Set
                | Opcode::Add
                | Opcode::Replace
                | Opcode::SetQ
                | Opcode::AddQ
                | Opcode::ReplaceQ
                | Opcode::Delete
                | Opcode::DeleteQ
                | Opcode::Append
                | Opcode::Prepend
                | Opcode::AppendQ
                | Opcode::PrependQ
                | Opcode::Touch
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[0, 16])?;
        c.no_key()?;
        let status = frame.status();
        if status.is_success() {
            c.no_value()?;
        }
        Ok(MutationResponse {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            status,
            cas: frame.cas(),
            token: MutationToken::from_extras(e),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let e = MutationToken::to_extras(self.token);
        FrameSpec::response(self.opcode, self.status)
            .opaque(self.opaque)
            .cas(self.cas)
            .extras(&e)
            .encode(buf);
    }
}

/// DELETE or DELETEQ request (§5): key only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// [`Opcode::Delete`] or [`Opcode::DeleteQ`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// CAS to compare against (0 = no check).
    pub cas: Cas,
    /// Document key (non-empty).
    pub key: Bytes,
}

impl Message for Delete {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(op, Opcode::Delete | Opcode::DeleteQ)
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        c.no_value()?;
        Ok(Delete {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            key: frame.key_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .key(&self.key)
            .encode(buf);
    }
}

/// INCREMENT, DECREMENT or their quiet variants (§5): 20 bytes of extras (delta,
/// initial, expiry), key, no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arithmetic {
    /// [`Opcode::Increment`], [`Opcode::Decrement`], [`Opcode::IncrementQ`] or
    /// [`Opcode::DecrementQ`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// CAS to compare against (0 = no check).
    pub cas: Cas,
    /// Amount to add or subtract.
    pub delta: u64,
    /// Value to create the counter with if it does not exist.
    pub initial: u64,
    /// Expiry of a created counter; `0xffffffff` = fail with KEY_ENOENT if missing.
    pub expiry: u32,
    /// Document key (non-empty).
    pub key: Bytes,
}

impl Arithmetic {
    /// The expiry that means "do not create the counter".
    pub const NO_CREATE: u32 = 0xffff_ffff;
}

impl Message for Arithmetic {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Increment | Opcode::Decrement | Opcode::IncrementQ | Opcode::DecrementQ
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[20])?;
        c.key()?;
        c.no_value()?;
        Ok(Arithmetic {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            delta: be_u64(e, 0),
            initial: be_u64(e, 8),
            expiry: be_u32(e, 16),
            key: frame.key_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(20);
        e.put_u64(self.delta);
        e.put_u64(self.initial);
        e.put_u32(self.expiry);
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .extras(&e)
            .key(&self.key)
            .encode(buf);
    }
}

/// The answer to INCREMENT/DECREMENT (§5): SUCCESS carries the new counter as an
/// 8-byte value. On other statuses `value` is 0 and error context is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArithmeticResponse {
    /// Which command this answers.
    pub opcode: Opcode,
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// New document CAS.
    pub cas: Cas,
    /// The counter after the operation.
    pub value: u64,
    /// vb uuid and seqno of the mutation (16 B extras), if sent.
    pub token: Option<MutationToken>,
}

impl Message for ArithmeticResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Increment | Opcode::Decrement | Opcode::IncrementQ | Opcode::DecrementQ
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[0, 16])?;
        c.no_key()?;
        let status = frame.status();
        let value = if status.is_success() {
            let v = frame.value();
            if v.len() != 8 {
                return Err(c.err(
                    BodyField::Value,
                    format!("counter of {} bytes (need 8)", v.len()),
                ));
            }
            be_u64(v, 0)
        } else {
            0
        };
        Ok(ArithmeticResponse {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            status,
            cas: frame.cas(),
            value,
            token: MutationToken::from_extras(e),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let e = MutationToken::to_extras(self.token);
        let counter = self.value.to_be_bytes();
        let value: &[u8] = if self.status.is_success() {
            &counter
        } else {
            &[]
        };
        FrameSpec::response(self.opcode, self.status)
            .opaque(self.opaque)
            .cas(self.cas)
            .extras(&e)
            .value(value)
            .encode(buf);
    }
}

/// APPEND, PREPEND or their quiet variants (§5): key and the bytes to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concat {
    /// [`Opcode::Append`], [`Opcode::Prepend`], [`Opcode::AppendQ`] or
    /// [`Opcode::PrependQ`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// CAS to compare against (0 = no check).
    pub cas: Cas,
    /// Document key (non-empty).
    pub key: Bytes,
    /// Bytes to append or prepend.
    pub value: Bytes,
}

impl Message for Concat {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Append | Opcode::Prepend | Opcode::AppendQ | Opcode::PrependQ
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        Ok(Concat {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// TOUCH, GAT or GATQ request (§5): 4 bytes of extras (new expiry), key, no value.
/// GAT/GATQ are answered with [`GetResponse`]; TOUCH with [`MutationResponse`] (or a
/// status-only [`Response`](crate::Response)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touch {
    /// [`Opcode::Touch`], [`Opcode::Gat`] or [`Opcode::GatQ`].
    pub opcode: Opcode,
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// New expiry.
    pub expiry: u32,
    /// Document key (non-empty).
    pub key: Bytes,
}

impl Message for Touch {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(op, Opcode::Touch | Opcode::Gat | Opcode::GatQ)
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[4])?;
        c.key()?;
        c.no_value()?;
        Ok(Touch {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            expiry: be_u32(e, 0),
            key: frame.key_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.expiry.to_be_bytes())
            .key(&self.key)
            .encode(buf);
    }
}

impl_try_from_frame!(
    Get,
    GetResponse,
    Store,
    MutationResponse,
    Delete,
    Arithmetic,
    ArithmeticResponse,
    Concat,
    Touch,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(m: &impl Message) -> String {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        hex::encode(&buf)
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    /// §5: SET extras are u32 flags then u32 expiry.
    #[test]
    fn set_matches_hand_computed_bytes() {
        let s = Store {
            opcode: Opcode::Set,
            vbucket: Vbid(5),
            opaque: Opaque(0xdeadbeef),
            cas: Cas(0),
            datatype: Datatype::RAW,
            flags: 0xdeadbeef,
            expiry: 3600,
            key: b(b"k"),
            value: b(b"v"),
        };
        assert_eq!(
            hex_of(&s),
            "8001000108000005 0000000adeadbeef 0000000000000000 deadbeef00000e10 6b 76"
                .replace(' ', "")
        );
        assert_eq!(Store::parse(&s.to_frame()), Ok(s));
    }

    #[test]
    fn get_and_its_answer_match_hand_computed_bytes() {
        let g = Get {
            opcode: Opcode::GetK,
            vbucket: Vbid(1),
            opaque: Opaque(9),
            key: b(b"k1"),
        };
        assert_eq!(
            hex_of(&g),
            "800c000200000001 0000000200000009 0000000000000000 6b31".replace(' ', "")
        );
        let r = GetResponse {
            opcode: Opcode::GetK,
            opaque: Opaque(9),
            status: Status::Success,
            cas: Cas(0x1122),
            datatype: Datatype::JSON,
            flags: 0x0102_0304,
            key: b(b"k1"),
            value: b(b"{}"),
        };
        assert_eq!(
            hex_of(&r),
            "810c000204010000 0000000800000009 0000000000001122 01020304 6b31 7b7d"
                .replace(' ', "")
        );
        assert_eq!(GetResponse::parse(&r.to_frame()), Ok(r));
    }

    #[test]
    fn get_miss_without_extras_parses_with_zero_flags() {
        let f = FrameSpec::response(Opcode::Get, Status::KeyEnoent)
            .datatype(Datatype::JSON)
            .value(br#"{"error":{"context":"x"}}"#)
            .to_frame();
        let r = GetResponse::parse(&f).expect("miss");
        assert_eq!(r.flags, 0);
        assert_eq!(r.to_frame(), f, "re-encodes byte for byte");
        let f = FrameSpec::response(Opcode::Get, Status::Success).to_frame();
        assert_eq!(
            GetResponse::parse(&f).expect_err("no flags").field,
            BodyField::Extras
        );
        let f = FrameSpec::response(Opcode::Get, Status::Success)
            .extras(&[0; 4])
            .key(b"k")
            .to_frame();
        assert_eq!(
            GetResponse::parse(&f).expect_err("key on GET").field,
            BodyField::Key
        );
    }

    #[test]
    fn wrong_extras_lengths_are_refused() {
        let cases: [(Opcode, usize); 6] = [
            (Opcode::Get, 4),
            (Opcode::Set, 4),
            (Opcode::Delete, 8),
            (Opcode::Increment, 16),
            (Opcode::Append, 4),
            (Opcode::Touch, 8),
        ];
        for (op, len) in cases {
            let f = FrameSpec::request(op)
                .extras(&vec![0; len])
                .key(b"k")
                .to_frame();
            let err = match op {
                Opcode::Get => Get::parse(&f).map(drop),
                Opcode::Set => Store::parse(&f).map(drop),
                Opcode::Delete => Delete::parse(&f).map(drop),
                Opcode::Increment => Arithmetic::parse(&f).map(drop),
                Opcode::Append => Concat::parse(&f).map(drop),
                _ => Touch::parse(&f).map(drop),
            }
            .expect_err("wrong extras");
            assert_eq!(err.field, BodyField::Extras, "{op}");
        }
        let f = FrameSpec::response(Opcode::Set, Status::Success)
            .extras(&[0; 8])
            .to_frame();
        assert_eq!(
            MutationResponse::parse(&f).expect_err("8 B").field,
            BodyField::Extras
        );
    }

    #[test]
    fn requests_without_a_key_are_refused() {
        let f = FrameSpec::request(Opcode::Set)
            .extras(&[0; 8])
            .value(b"v")
            .to_frame();
        assert_eq!(Store::parse(&f).expect_err("no key").field, BodyField::Key);
        let f = FrameSpec::request(Opcode::Delete)
            .key(b"k")
            .value(b"v")
            .to_frame();
        assert_eq!(
            Delete::parse(&f).expect_err("value").field,
            BodyField::Value
        );
    }

    /// §5 with HELLO MUTATION_SEQNO: 16 B extras, vb uuid then seqno.
    #[test]
    fn mutation_response_with_token_matches_hand_computed_bytes() {
        let r = MutationResponse {
            opcode: Opcode::Set,
            opaque: Opaque(1),
            status: Status::Success,
            cas: Cas(0xabcd),
            token: Some(MutationToken {
                vb_uuid: VbUuid(0x1234),
                seqno: Seqno(7),
            }),
        };
        assert_eq!(
            hex_of(&r),
            "8101000010000000 0000001000000001 000000000000abcd 0000000000001234 0000000000000007"
                .replace(' ', "")
        );
        assert_eq!(MutationResponse::parse(&r.to_frame()), Ok(r));
    }

    /// §5: INCR extras are u64 delta, u64 initial, u32 expiry; the answer is a u64 value.
    #[test]
    fn increment_and_answer_match_hand_computed_bytes() {
        let a = Arithmetic {
            opcode: Opcode::Increment,
            vbucket: Vbid(2),
            opaque: Opaque(3),
            cas: Cas(0),
            delta: 1,
            initial: 10,
            expiry: Arithmetic::NO_CREATE,
            key: b(b"c"),
        };
        assert_eq!(
            hex_of(&a),
            "8005000114000002 0000001500000003 0000000000000000 \
             0000000000000001 000000000000000a ffffffff 63"
                .replace(' ', "")
        );
        let r = ArithmeticResponse {
            opcode: Opcode::Increment,
            opaque: Opaque(3),
            status: Status::Success,
            cas: Cas(5),
            value: 11,
            token: None,
        };
        assert_eq!(
            hex_of(&r),
            "8105000000000000 0000000800000003 0000000000000005 000000000000000b".replace(' ', "")
        );
        let f = FrameSpec::response(Opcode::Increment, Status::Success)
            .value(&[0; 4])
            .to_frame();
        assert_eq!(
            ArithmeticResponse::parse(&f).expect_err("short").field,
            BodyField::Value
        );
    }

    #[test]
    fn touch_and_concat_round_trip() {
        let t = Touch {
            opcode: Opcode::Gat,
            vbucket: Vbid(1),
            opaque: Opaque(2),
            expiry: 60,
            key: b(b"k"),
        };
        assert_eq!(
            hex_of(&t),
            "801d000104000001 0000000500000002 0000000000000000 0000003c 6b".replace(' ', "")
        );
        assert_eq!(Touch::parse(&t.to_frame()), Ok(t));
        let c = Concat {
            opcode: Opcode::Prepend,
            vbucket: Vbid(1),
            opaque: Opaque(2),
            cas: Cas(3),
            key: b(b"k"),
            value: b(b"xy"),
        };
        assert_eq!(Concat::parse(&c.to_frame()), Ok(c));
    }
}
