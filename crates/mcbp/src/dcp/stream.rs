//! Connection and stream set-up: DCP_OPEN, ADD_STREAM, CLOSE_STREAM, STREAM_REQ,
//! GET_FAILOVER_LOG, STREAM_END (§6.2–6.7).

use bytes::{BufMut, Bytes, BytesMut};

use super::{EndReason, OpenFlags, StreamFlags};
use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::{Opaque, Seqno, VbUuid, Vbid};
use crate::message::{be_u32, be_u64, impl_try_from_frame, BodyField, Check, Direction, Message};
use crate::opcode::Opcode;
use crate::status::Status;
use crate::BodyError;

/// DCP_OPEN request (§6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The opaque.
    pub opaque: Opaque,
    /// Connection flags.
    pub flags: OpenFlags,
    /// Connection name (non-empty).
    pub name: Bytes,
    /// Optional JSON object (`{"consumer_name":…}`); datatype JSON when non-empty.
    pub value: Bytes,
}

impl Message for Open {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpOpen
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let ext = c.extras(&[8])?;
        c.key()?;
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
        Ok(Open {
            opaque: frame.opaque(),
            flags: OpenFlags(be_u32(ext, 4)),
            name: frame.key_bytes(),
            value,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut ext = [0u8; 8];
        ext[4..].copy_from_slice(&self.flags.0.to_be_bytes());
        let dt = if self.value.is_empty() {
            Datatype::RAW
        } else {
            Datatype::JSON
        };
        FrameSpec::request(Opcode::DcpOpen)
            .opaque(self.opaque)
            .datatype(dt)
            .extras(&ext)
            .key(&self.name)
            .value(&self.value)
            .encode(buf);
    }
}

/// DCP_ADD_STREAM request: proxy -> consumer node (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddStream {
    /// The vbucket to replicate.
    pub vbucket: Vbid,
    /// The proxy's opaque (ns_server uses the vbucket id).
    pub opaque: Opaque,
    /// Stream flags (TAKEOVER for a takeover).
    pub flags: StreamFlags,
}

impl Message for AddStream {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpAddStream
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let ext = c.extras(&[4])?;
        c.no_key()?;
        c.no_value()?;
        Ok(AddStream {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            flags: StreamFlags(be_u32(ext, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpAddStream)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.flags.0.to_be_bytes())
            .encode(buf);
    }
}

/// The answer to ADD_STREAM (§6.3, §1.7).
///
/// `stream_opaque` is the header opaque of the consumer's STREAM_REQ. On the wire the
/// extras hold those 4 bytes **reversed** (kv_engine's quirk, which ns_server undoes by
/// reading them little-endian); this type does the reversal in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddStreamResponse {
    /// Echo of the ADD_STREAM opaque.
    pub opaque: Opaque,
    /// The final STREAM_REQ status.
    pub status: Status,
    /// The STREAM_REQ header opaque, when the answer carries extras.
    pub stream_opaque: Option<Opaque>,
}

impl Message for AddStreamResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpAddStream
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let status = frame.status();
        let ext = if status.is_success() {
            c.extras(&[4])?
        } else {
            c.extras(&[0, 4])?
        };
        c.no_key()?;
        Ok(AddStreamResponse {
            opaque: frame.opaque(),
            status,
            stream_opaque: (ext.len() == 4).then(|| Opaque(be_u32(ext, 0)).byte_reversed()),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let ext = self
            .stream_opaque
            .map(|o| o.byte_reversed().0.to_be_bytes());
        FrameSpec::response(Opcode::DcpAddStream, self.status)
            .opaque(self.opaque)
            .extras(ext.as_ref().map_or(&[][..], |e| &e[..]))
            .encode(buf);
    }
}

/// DCP_STREAM_REQ request: consumer -> producer (§6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReq {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque, used on every message of the stream.
    pub opaque: Opaque,
    /// Stream flags.
    pub flags: StreamFlags,
    /// Last seqno the consumer already has.
    pub start: Seqno,
    /// End seqno (`u64::MAX` = open ended).
    pub end: Seqno,
    /// The consumer's history branch (0 = none).
    pub vb_uuid: VbUuid,
    /// Snapshot start of the last marker the consumer saw.
    pub snap_start: Seqno,
    /// Snapshot end of the last marker the consumer saw.
    pub snap_end: Seqno,
    /// Optional JSON value (collections only); datatype stays RAW.
    pub value: Bytes,
}

impl Message for StreamReq {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpStreamReq
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[48])?;
        c.no_key()?;
        Ok(StreamReq {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            flags: StreamFlags(be_u32(e, 0)),
            start: Seqno(be_u64(e, 8)),
            end: Seqno(be_u64(e, 16)),
            vb_uuid: VbUuid(be_u64(e, 24)),
            snap_start: Seqno(be_u64(e, 32)),
            snap_end: Seqno(be_u64(e, 40)),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(48);
        e.put_u32(self.flags.0);
        e.put_u32(0);
        e.put_u64(self.start.0);
        e.put_u64(self.end.0);
        e.put_u64(self.vb_uuid.0);
        e.put_u64(self.snap_start.0);
        e.put_u64(self.snap_end.0);
        FrameSpec::request(Opcode::DcpStreamReq)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&e)
            .value(&self.value)
            .encode(buf);
    }
}

/// One failover-log entry: a history branch and the seqno it started at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailoverEntry {
    /// Branch uuid.
    pub vb_uuid: VbUuid,
    /// Seqno at which the branch started.
    pub seqno: Seqno,
}

pub(crate) fn parse_failover_log(c: &Check<'_>, v: &[u8]) -> Result<Vec<FailoverEntry>, BodyError> {
    if v.is_empty() || !v.len().is_multiple_of(16) {
        return Err(c.err(
            BodyField::Value,
            format!(
                "failover log of {} bytes (need a non-zero multiple of 16)",
                v.len()
            ),
        ));
    }
    Ok(v.chunks_exact(16)
        .map(|e| FailoverEntry {
            vb_uuid: VbUuid(be_u64(e, 0)),
            seqno: Seqno(be_u64(e, 8)),
        })
        .collect())
}

pub(crate) fn put_failover_log(entries: &[FailoverEntry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 16);
    for e in entries {
        v.put_u64(e.vb_uuid.0);
        v.put_u64(e.seqno.0);
    }
    v
}

/// What a STREAM_REQ got: data, not an error (STYLE: outcomes are values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamReqOutcome {
    /// SUCCESS with the producer's failover log, newest first (N >= 1).
    Success {
        /// The failover log.
        failover_log: Vec<FailoverEntry>,
    },
    /// ROLLBACK: roll back to this seqno, then ask again.
    Rollback {
        /// The rollback seqno.
        to: Seqno,
    },
    /// Any other status; no body.
    Refused(Status),
}

/// The producer's answer to STREAM_REQ (§6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReqResponse {
    /// The stream opaque.
    pub opaque: Opaque,
    /// What happened.
    pub outcome: StreamReqOutcome,
}

impl Message for StreamReqResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpStreamReq
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let v = frame.value();
        let outcome = match frame.status() {
            Status::Success => StreamReqOutcome::Success {
                failover_log: parse_failover_log(&c, v)?,
            },
            Status::Rollback => {
                if v.len() != 8 {
                    return Err(c.err(
                        BodyField::Value,
                        format!("rollback seqno of {} bytes (need 8)", v.len()),
                    ));
                }
                StreamReqOutcome::Rollback {
                    to: Seqno(be_u64(v, 0)),
                }
            }
            other => StreamReqOutcome::Refused(other),
        };
        Ok(StreamReqResponse {
            opaque: frame.opaque(),
            outcome,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let (status, value) = match &self.outcome {
            StreamReqOutcome::Success { failover_log } => {
                (Status::Success, put_failover_log(failover_log))
            }
            StreamReqOutcome::Rollback { to } => (Status::Rollback, to.0.to_be_bytes().to_vec()),
            StreamReqOutcome::Refused(s) => (*s, Vec::new()),
        };
        FrameSpec::response(Opcode::DcpStreamReq, status)
            .opaque(self.opaque)
            .value(&value)
            .encode(buf);
    }
}

/// The answer to DCP_GET_FAILOVER_LOG (0x54) or GET_FAILOVER_LOG (0x96) (§6.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverLogResponse {
    /// Which of the two opcodes this answers.
    pub opcode: Opcode,
    /// The opaque.
    pub opaque: Opaque,
    /// SUCCESS or the error.
    pub status: Status,
    /// Newest first; empty on error.
    pub entries: Vec<FailoverEntry>,
}

impl Message for FailoverLogResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        matches!(op, Opcode::DcpGetFailoverLog | Opcode::GetFailoverLog)
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let status = frame.status();
        let entries = if status.is_success() {
            parse_failover_log(&c, frame.value())?
        } else {
            Vec::new()
        };
        Ok(FailoverLogResponse {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            status,
            entries,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let value = put_failover_log(&self.entries);
        FrameSpec::response(self.opcode, self.status)
            .opaque(self.opaque)
            .value(&value)
            .encode(buf);
    }
}

/// DCP_STREAM_END: producer -> consumer (§6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Why.
    pub reason: EndReason,
}

impl Message for StreamEnd {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpStreamEnd
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[4])?;
        c.no_key()?;
        c.no_value()?;
        Ok(StreamEnd {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            reason: EndReason::from_raw(be_u32(e, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpStreamEnd)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.reason.to_raw().to_be_bytes())
            .encode(buf);
    }
}

impl_try_from_frame!(
    Open,
    AddStream,
    AddStreamResponse,
    StreamReq,
    StreamReqResponse,
    FailoverLogResponse,
    StreamEnd,
);

#[cfg(test)]
mod tests {
    use super::*;

    /// §9.1 worked example, byte for byte.
    #[test]
    fn stream_req_matches_spec_example_9_1() {
        let req = StreamReq {
            vbucket: Vbid(5),
            opaque: Opaque(0xdeadbeef),
            flags: StreamFlags(0),
            start: Seqno(0),
            end: Seqno(u64::MAX),
            vb_uuid: VbUuid(0x1234),
            snap_start: Seqno(0),
            snap_end: Seqno(0),
            value: Bytes::new(),
        };
        let golden = "805300003000000500000030deadbeef000000000000000000000000000000000000000000000000ffffffffffffffff000000000000123400000000000000000000000000000000";
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        assert_eq!(hex::encode(&buf), golden);
        let frame = req.to_frame();
        assert_eq!(StreamReq::parse(&frame), Ok(req));
    }

    #[test]
    fn stream_req_answers_match_spec_example_9_1() {
        let ok = StreamReqResponse {
            opaque: Opaque(0xdeadbeef),
            outcome: StreamReqOutcome::Success {
                failover_log: vec![FailoverEntry {
                    vb_uuid: VbUuid(0x1234),
                    seqno: Seqno(0),
                }],
            },
        };
        let mut buf = BytesMut::new();
        ok.encode(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "8153000000000000 00000010deadbeef 0000000000000000 0000000000001234 0000000000000000"
                .replace(' ', "")
        );
        let rb = StreamReqResponse {
            opaque: Opaque(0xdeadbeef),
            outcome: StreamReqOutcome::Rollback { to: Seqno(0) },
        };
        let mut buf = BytesMut::new();
        rb.encode(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "8153000000000023 00000008deadbeef 0000000000000000 0000000000000000".replace(' ', "")
        );
    }

    #[test]
    fn add_stream_matches_spec_example_9_3() {
        let a = AddStream {
            vbucket: Vbid(5),
            opaque: Opaque(5),
            flags: StreamFlags(0),
        };
        let mut buf = BytesMut::new();
        a.encode(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "8051000004000005 0000000400000005 0000000000000000 00000000".replace(' ', "")
        );
    }

    /// §1.7: the ADD_STREAM answer's extras are the STREAM_REQ header bytes reversed.
    #[test]
    fn add_stream_response_extras_are_the_stream_req_opaque_bytes_reversed() {
        let r = AddStreamResponse {
            opaque: Opaque(5),
            status: Status::Success,
            stream_opaque: Some(Opaque(0x0102_0304)),
        };
        let f = r.to_frame();
        assert_eq!(f.extras(), &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(AddStreamResponse::parse(&f), Ok(r));
    }

    #[test]
    fn dcp_open_matches_spec_example_9_3() {
        let o = Open {
            opaque: Opaque(1),
            flags: OpenFlags::REPLICATION_CONSUMER,
            name: Bytes::from_static(b"replication:n_0@a->n_1@b:default"),
            value: Bytes::from_static(br#"{"consumer_name":"n_1@b"}"#),
        };
        let f = o.to_frame();
        assert_eq!(f.wire_len(), 89);
        assert_eq!(
            hex::encode(&f.bytes()[..32]),
            "8050002008010000000000410000000100000000000000000000000000000124"
        );
    }

    #[test]
    fn malformed_stream_req_answers_are_typed_errors() {
        let f = FrameSpec::response(Opcode::DcpStreamReq, Status::Rollback)
            .value(&[0; 4])
            .to_frame();
        let e = StreamReqResponse::parse(&f).expect_err("short rollback");
        assert_eq!(e.field, BodyField::Value);
        let f = FrameSpec::response(Opcode::DcpStreamReq, Status::Success)
            .value(&[0; 17])
            .to_frame();
        assert!(StreamReqResponse::parse(&f).is_err());
        let f = FrameSpec::response(Opcode::DcpStreamReq, Status::Success).to_frame();
        assert!(StreamReqResponse::parse(&f).is_err(), "empty failover log");
    }
}
