//! Vbucket management (§5): SET_VBUCKET, GET_VBUCKET's answer, DEL_VBUCKET,
//! GET_ALL_VB_SEQNOS, OBSERVE_SEQNO and SEQNO_PERSISTENCE.
//!
//! GET_VBUCKET requests use [`BareRequest`](crate::BareRequest); SET_VBUCKET,
//! DEL_VBUCKET and SEQNO_PERSISTENCE are answered with a status-only
//! [`Response`](crate::Response).

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::{Opaque, Seqno, VbState, VbUuid, Vbid};
use crate::message::{
    be_u16, be_u32, be_u64, impl_try_from_frame, BodyField, Check, Direction, Message,
};
use crate::opcode::Opcode;
use crate::status::Status;
use crate::BodyError;

/// SET_VBUCKET request (0x3d, §5): 1 byte of extras (the state), optional JSON value
/// (`topology`, `use_snapshot`, `next_expected_state`) with datatype JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetVbucket {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// The state to apply.
    pub state: VbState,
    /// Optional JSON metadata; empty when absent.
    pub value: Bytes,
}

impl Message for SetVbucket {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::SetVbucket
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[1])?;
        c.no_key()?;
        let state = VbState::from_u8(e[0]).ok_or_else(|| {
            c.err(
                BodyField::Extras,
                format!("vbucket state {} (expected 1..=4)", e[0]),
            )
        })?;
        let value = frame.value_bytes();
        let want = if value.is_empty() {
            Datatype::RAW
        } else {
            Datatype::JSON
        };
        if frame.datatype() != want {
            return Err(c.err(
                BodyField::Datatype,
                "must be JSON with a value and RAW without one",
            ));
        }
        Ok(SetVbucket {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            state,
            value,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let dt = if self.value.is_empty() {
            Datatype::RAW
        } else {
            Datatype::JSON
        };
        FrameSpec::request(Opcode::SetVbucket)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .datatype(dt)
            .extras(&[self.state.to_u8()])
            .value(&self.value)
            .encode(buf);
    }
}

/// The answer to GET_VBUCKET (0x3e, §5): on SUCCESS the state as a u32 BE value. On
/// other statuses `state` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetVbucketResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// The vbucket's state.
    pub state: Option<VbState>,
}

impl Message for GetVbucketResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::GetVbucket
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let status = frame.status();
        let state = if status.is_success() {
            let v = frame.value();
            if v.len() != 4 {
                return Err(c.err(
                    BodyField::Value,
                    format!("state of {} bytes (need 4)", v.len()),
                ));
            }
            let raw = be_u32(v, 0);
            let state = u8::try_from(raw)
                .ok()
                .and_then(VbState::from_u8)
                .ok_or_else(|| {
                    c.err(
                        BodyField::Value,
                        format!("vbucket state {raw} (expected 1..=4)"),
                    )
                })?;
            Some(state)
        } else {
            None
        };
        Ok(GetVbucketResponse {
            opaque: frame.opaque(),
            status,
            state,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let v = self.state.map(|s| u32::from(s.to_u8()).to_be_bytes());
        FrameSpec::response(Opcode::GetVbucket, self.status)
            .opaque(self.opaque)
            .value(v.as_ref().map_or(&[][..], |v| &v[..]))
            .encode(buf);
    }
}

/// DEL_VBUCKET request (0x3f, §5): optional value `async=0` (synchronous delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelVbucket {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// Options, e.g. `async=0`; empty when absent.
    pub value: Bytes,
}

impl Message for DelVbucket {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DelVbucket
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        Ok(DelVbucket {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DelVbucket)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .value(&self.value)
            .encode(buf);
    }
}

/// GET_ALL_VB_SEQNOS request (0x48, §5): extras are empty, a u32 state filter
/// (0 = any alive state), or the filter plus a u32 collection id.
///
/// A `collection` without a `state_filter` is encoded with filter 0 and so parses
/// back as `Some(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetAllVbSeqnos {
    /// The opaque.
    pub opaque: Opaque,
    /// Only vbuckets in this state (1..=4), or 0 for any alive state.
    pub state_filter: Option<u32>,
    /// Report the high seqno of this collection instead of the vbucket's.
    pub collection: Option<u32>,
}

impl Message for GetAllVbSeqnos {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::GetAllVbSeqnos
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[0, 4, 8])?;
        c.no_key()?;
        c.no_value()?;
        Ok(GetAllVbSeqnos {
            opaque: frame.opaque(),
            state_filter: (e.len() >= 4).then(|| be_u32(e, 0)),
            collection: (e.len() == 8).then(|| be_u32(e, 4)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(8);
        match (self.state_filter, self.collection) {
            (None, None) => {}
            (Some(s), None) => e.put_u32(s),
            (s, Some(cid)) => {
                e.put_u32(s.unwrap_or(0));
                e.put_u32(cid);
            }
        }
        FrameSpec::request(Opcode::GetAllVbSeqnos)
            .opaque(self.opaque)
            .extras(&e)
            .encode(buf);
    }
}

/// The answer to GET_ALL_VB_SEQNOS (§5): on SUCCESS repeated `{u16 vb, u64 high
/// seqno}` sorted by vbucket (possibly none). On other statuses `entries` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetAllVbSeqnosResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// Each vbucket and its high seqno.
    pub entries: Vec<(Vbid, Seqno)>,
}

impl Message for GetAllVbSeqnosResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::GetAllVbSeqnos
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let status = frame.status();
        let entries = if status.is_success() {
            let v = frame.value();
            if !v.chunks_exact(10).remainder().is_empty() {
                return Err(c.err(
                    BodyField::Value,
                    format!(
                        "{} bytes of {{vb, seqno}} entries (need a multiple of 10)",
                        v.len()
                    ),
                ));
            }
            v.chunks_exact(10)
                .map(|e| (Vbid(be_u16(e, 0)), Seqno(be_u64(e, 2))))
                .collect()
        } else {
            Vec::new()
        };
        Ok(GetAllVbSeqnosResponse {
            opaque: frame.opaque(),
            status,
            entries,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut v = Vec::with_capacity(self.entries.len() * 10);
        for (vb, seqno) in &self.entries {
            v.put_u16(vb.0);
            v.put_u64(seqno.0);
        }
        FrameSpec::response(Opcode::GetAllVbSeqnos, self.status)
            .opaque(self.opaque)
            .value(&v)
            .encode(buf);
    }
}

/// OBSERVE_SEQNO request (0x91, §5): value = the u64 vb uuid the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserveSeqno {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// The history branch the client last saw.
    pub vb_uuid: VbUuid,
}

impl Message for ObserveSeqno {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::ObserveSeqno
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let v = frame.value();
        if v.len() != 8 {
            return Err(c.err(
                BodyField::Value,
                format!("vb uuid of {} bytes (need 8)", v.len()),
            ));
        }
        Ok(ObserveSeqno {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            vb_uuid: VbUuid(be_u64(v, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::ObserveSeqno)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .value(&self.vb_uuid.0.to_be_bytes())
            .encode(buf);
    }
}

/// The answer to OBSERVE_SEQNO (§5). SUCCESS values: format 0 (27 bytes: u8 format,
/// u16 vb, u64 uuid, u64 persisted seqno, u64 current seqno) or format 1 (43 bytes,
/// after a failover: the uuid asked about and the last seqno of that branch
/// appended). Error answers have no body; their fields are zero and `failover` is
/// `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserveSeqnoResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status (KEY_ENOENT if the uuid is unknown).
    pub status: Status,
    /// The vbucket, from the value.
    pub vbucket: Vbid,
    /// The vbucket's current uuid.
    pub vb_uuid: VbUuid,
    /// Highest persisted seqno.
    pub persisted_seqno: Seqno,
    /// Current high seqno.
    pub current_seqno: Seqno,
    /// Format 1 only: the old uuid and the last seqno received on it.
    pub failover: Option<(VbUuid, Seqno)>,
}

impl Message for ObserveSeqnoResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::ObserveSeqno
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let status = frame.status();
        let mut r = ObserveSeqnoResponse {
            opaque: frame.opaque(),
            status,
            vbucket: Vbid(0),
            vb_uuid: VbUuid(0),
            persisted_seqno: Seqno(0),
            current_seqno: Seqno(0),
            failover: None,
        };
        if !status.is_success() {
            return Ok(r);
        }
        let v = frame.value();
        let need = match v.first() {
            Some(0) => 27,
            Some(1) => 43,
            Some(other) => {
                return Err(c.err(
                    BodyField::Value,
                    format!("format {other} (expected 0 or 1)"),
                ))
            }
            None => return Err(c.err(BodyField::Value, "must not be empty")),
        };
        if v.len() != need {
            return Err(c.err(
                BodyField::Value,
                format!("length {} (format {} needs {need})", v.len(), v[0]),
            ));
        }
        r.vbucket = Vbid(be_u16(v, 1));
        r.vb_uuid = VbUuid(be_u64(v, 3));
        r.persisted_seqno = Seqno(be_u64(v, 11));
        r.current_seqno = Seqno(be_u64(v, 19));
        if need == 43 {
            r.failover = Some((VbUuid(be_u64(v, 27)), Seqno(be_u64(v, 35))));
        }
        Ok(r)
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut v = Vec::with_capacity(43);
        if self.status.is_success() {
            v.put_u8(u8::from(self.failover.is_some()));
            v.put_u16(self.vbucket.0);
            v.put_u64(self.vb_uuid.0);
            v.put_u64(self.persisted_seqno.0);
            v.put_u64(self.current_seqno.0);
            if let Some((uuid, seqno)) = self.failover {
                v.put_u64(uuid.0);
                v.put_u64(seqno.0);
            }
        }
        FrameSpec::response(Opcode::ObserveSeqno, self.status)
            .opaque(self.opaque)
            .value(&v)
            .encode(buf);
    }
}

/// SEQNO_PERSISTENCE request (0xb7, §5): 8 bytes of extras (the seqno to wait for).
/// Answered SUCCESS once persisted, ETMPFAIL on timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqnoPersistence {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
    /// Wait until this seqno is persisted.
    pub seqno: Seqno,
}

impl Message for SeqnoPersistence {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::SeqnoPersistence
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[8])?;
        c.no_key()?;
        c.no_value()?;
        Ok(SeqnoPersistence {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            seqno: Seqno(be_u64(e, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::SeqnoPersistence)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.seqno.0.to_be_bytes())
            .encode(buf);
    }
}

impl_try_from_frame!(
    SetVbucket,
    GetVbucketResponse,
    DelVbucket,
    GetAllVbSeqnos,
    GetAllVbSeqnosResponse,
    ObserveSeqno,
    ObserveSeqnoResponse,
    SeqnoPersistence,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(m: &impl Message) -> String {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        hex::encode(&buf)
    }

    /// §5: SET_VBUCKET extras are one state byte; the JSON value sets datatype JSON.
    #[test]
    fn set_vbucket_matches_hand_computed_bytes() {
        let s = SetVbucket {
            vbucket: Vbid(5),
            opaque: Opaque(1),
            state: VbState::Active,
            value: Bytes::new(),
        };
        assert_eq!(
            hex_of(&s),
            "803d000001000005 0000000100000001 0000000000000000 01".replace(' ', "")
        );
        let j = SetVbucket {
            value: Bytes::from_static(b"{}"),
            ..s.clone()
        };
        let f = j.to_frame();
        assert_eq!(f.datatype(), Datatype::JSON);
        assert_eq!(SetVbucket::parse(&f), Ok(j));
    }

    #[test]
    fn set_vbucket_refuses_bad_states_extras_and_datatypes() {
        for bad in [0u8, 5, 0xff] {
            let f = FrameSpec::request(Opcode::SetVbucket)
                .extras(&[bad])
                .to_frame();
            assert_eq!(
                SetVbucket::parse(&f).expect_err("state").field,
                BodyField::Extras
            );
        }
        let f = FrameSpec::request(Opcode::SetVbucket)
            .extras(&[0, 0, 0, 1])
            .to_frame();
        assert_eq!(
            SetVbucket::parse(&f).expect_err("4 B").field,
            BodyField::Extras
        );
        let f = FrameSpec::request(Opcode::SetVbucket)
            .extras(&[1])
            .value(b"{}")
            .to_frame();
        assert_eq!(
            SetVbucket::parse(&f).expect_err("raw json").field,
            BodyField::Datatype
        );
    }

    #[test]
    fn get_vbucket_answer_is_a_u32_state() {
        let r = GetVbucketResponse {
            opaque: Opaque(4),
            status: Status::Success,
            state: Some(VbState::Replica),
        };
        assert_eq!(
            hex_of(&r),
            "813e000000000000 0000000400000004 0000000000000000 00000002".replace(' ', "")
        );
        assert_eq!(GetVbucketResponse::parse(&r.to_frame()), Ok(r));
        let f = FrameSpec::response(Opcode::GetVbucket, Status::Success)
            .value(&[0, 0, 1, 1])
            .to_frame();
        assert_eq!(
            GetVbucketResponse::parse(&f).expect_err("0x101").field,
            BodyField::Value
        );
        let f = FrameSpec::response(Opcode::GetVbucket, Status::NotMyVbucket).to_frame();
        assert_eq!(GetVbucketResponse::parse(&f).map(|r| r.state), Ok(None));
    }

    /// §5: GET_ALL_VB_SEQNOS extras 0/4/8; answer = {u16 vb, u64 seqno}*.
    #[test]
    fn get_all_vb_seqnos_matches_hand_computed_bytes() {
        let q = GetAllVbSeqnos {
            opaque: Opaque(1),
            state_filter: Some(1),
            collection: None,
        };
        assert_eq!(
            hex_of(&q),
            "8048000004000000 0000000400000001 0000000000000000 00000001".replace(' ', "")
        );
        let f = FrameSpec::request(Opcode::GetAllVbSeqnos)
            .extras(&[0; 2])
            .to_frame();
        assert_eq!(
            GetAllVbSeqnos::parse(&f).expect_err("2 B").field,
            BodyField::Extras
        );
        let r = GetAllVbSeqnosResponse {
            opaque: Opaque(1),
            status: Status::Success,
            entries: vec![(Vbid(0), Seqno(9)), (Vbid(3), Seqno(0x100))],
        };
        assert_eq!(
            hex_of(&r),
            "8148000000000000 0000001400000001 0000000000000000 \
             0000 0000000000000009 0003 0000000000000100"
                .replace(' ', "")
        );
        assert_eq!(GetAllVbSeqnosResponse::parse(&r.to_frame()), Ok(r));
        let f = FrameSpec::response(Opcode::GetAllVbSeqnos, Status::Success)
            .value(&[0; 11])
            .to_frame();
        assert_eq!(
            GetAllVbSeqnosResponse::parse(&f).expect_err("11 B").field,
            BodyField::Value
        );
    }

    /// §5: OBSERVE_SEQNO value formats 0 (27 B) and 1 (43 B).
    #[test]
    fn observe_seqno_formats_match_hand_computed_bytes() {
        let q = ObserveSeqno {
            vbucket: Vbid(5),
            opaque: Opaque(2),
            vb_uuid: VbUuid(0x1234),
        };
        assert_eq!(
            hex_of(&q),
            "8091000000000005 0000000800000002 0000000000000000 0000000000001234".replace(' ', "")
        );
        let r0 = ObserveSeqnoResponse {
            opaque: Opaque(2),
            status: Status::Success,
            vbucket: Vbid(5),
            vb_uuid: VbUuid(0x1234),
            persisted_seqno: Seqno(6),
            current_seqno: Seqno(7),
            failover: None,
        };
        assert_eq!(
            hex_of(&r0),
            "8191000000000000 0000001b00000002 0000000000000000 \
             00 0005 0000000000001234 0000000000000006 0000000000000007"
                .replace(' ', "")
        );
        let r1 = ObserveSeqnoResponse {
            failover: Some((VbUuid(0x99), Seqno(3))),
            ..r0
        };
        let f = r1.to_frame();
        assert_eq!(f.value().len(), 43);
        assert_eq!(f.value()[0], 1);
        assert_eq!(ObserveSeqnoResponse::parse(&f), Ok(r1));
        let mut bad = r0.to_frame().value().to_vec();
        bad[0] = 1;
        let f = FrameSpec::response(Opcode::ObserveSeqno, Status::Success)
            .value(&bad)
            .to_frame();
        assert_eq!(
            ObserveSeqnoResponse::parse(&f)
                .expect_err("27 B format 1")
                .field,
            BodyField::Value
        );
        let f = FrameSpec::request(Opcode::ObserveSeqno)
            .value(&[0; 4])
            .to_frame();
        assert_eq!(
            ObserveSeqno::parse(&f).expect_err("4 B uuid").field,
            BodyField::Value
        );
    }

    #[test]
    fn seqno_persistence_needs_eight_bytes_of_extras() {
        let s = SeqnoPersistence {
            vbucket: Vbid(1),
            opaque: Opaque(1),
            seqno: Seqno(42),
        };
        assert_eq!(
            hex_of(&s),
            "80b7000008000001 0000000800000001 0000000000000000 000000000000002a".replace(' ', "")
        );
        let f = FrameSpec::request(Opcode::SeqnoPersistence)
            .extras(&[0; 4])
            .to_frame();
        assert_eq!(
            SeqnoPersistence::parse(&f).expect_err("4 B").field,
            BodyField::Extras
        );
        let d = DelVbucket {
            vbucket: Vbid(1),
            opaque: Opaque(1),
            value: Bytes::from_static(b"async=0"),
        };
        assert_eq!(DelVbucket::parse(&d.to_frame()), Ok(d));
    }
}
