//! Opcode-agnostic request and response shapes, for status-only answers and
//! commands without a body.

use bytes::{Bytes, BytesMut};

use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::{Cas, Opaque, Vbid};
use crate::message::{impl_try_from_frame, Check, Direction, Message};
use crate::opcode::Opcode;
use crate::status::Status;

/// Any response, sections kept raw. Used for status-only answers (DCP_OPEN,
/// CLOSE_STREAM, CONTROL, SET_VBUCKET_STATE, snapshot-marker acks, NOOP, …) and for
/// error answers of any command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The opcode answered.
    pub opcode: Opcode,
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// The CAS.
    pub cas: Cas,
    /// The datatype of the value.
    pub datatype: Datatype,
    /// Raw extras.
    pub extras: Bytes,
    /// Raw key.
    pub key: Bytes,
    /// Raw value (error context JSON, cluster map, server data …).
    pub value: Bytes,
}

impl Response {
    /// A body-less response.
    #[must_use]
    pub fn status_only(opcode: Opcode, opaque: Opaque, status: Status) -> Response {
        Response {
            opcode,
            opaque,
            status,
            cas: Cas(0),
            datatype: Datatype::RAW,
            extras: Bytes::new(),
            key: Bytes::new(),
            value: Bytes::new(),
        }
    }

    /// A body-less answer to `req`.
    #[must_use]
    pub fn to_request(req: &Frame, status: Status) -> Response {
        Response::status_only(req.opcode(), req.opaque(), status)
    }

    /// Sets the value and its datatype.
    #[must_use]
    pub fn with_value(mut self, datatype: Datatype, value: impl Into<Bytes>) -> Response {
        self.datatype = datatype;
        self.value = value.into();
        self
    }
}

impl Message for Response {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(_: Opcode) -> bool {
        true
    }

    fn parse_body(frame: &Frame) -> Result<Self, crate::BodyError> {
        Ok(Response {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            status: frame.status(),
            cas: frame.cas(),
            datatype: frame.datatype(),
            extras: Bytes::copy_from_slice(frame.extras()),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::response(self.opcode, self.status)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(&self.extras)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// A request with no extras, key or value: NOOP, VERSION, QUIT(Q), SASL_LIST_MECHS,
/// GET_VBUCKET, GET_FAILOVER_LOG (0x96), COLLECTIONS_GET_MANIFEST, DCP_NOOP,
/// DCP_CLOSE_STREAM, DCP_GET_FAILOVER_LOG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BareRequest {
    /// Which command.
    pub opcode: Opcode,
    /// Header vbucket (0 where unused).
    pub vbucket: Vbid,
    /// The opaque.
    pub opaque: Opaque,
}

impl BareRequest {
    /// A new bare request.
    #[must_use]
    pub fn new(opcode: Opcode, vbucket: Vbid, opaque: Opaque) -> BareRequest {
        debug_assert!(Self::accepts(opcode), "{opcode} has a body");
        BareRequest {
            opcode,
            vbucket,
            opaque,
        }
    }
}

impl Message for BareRequest {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(
            op,
            Opcode::Noop
                | Opcode::Version
                | Opcode::Quit
                | Opcode::QuitQ
                | Opcode::SaslListMechs
                | Opcode::GetVbucket
                | Opcode::GetFailoverLog
                | Opcode::CollectionsGetManifest
                | Opcode::DcpNoop
                | Opcode::DcpCloseStream
                | Opcode::DcpGetFailoverLog
        )
    }

    fn parse_body(frame: &Frame) -> Result<Self, crate::BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        c.no_value()?;
        Ok(BareRequest {
            opcode: frame.opcode(),
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .encode(buf);
    }
}

impl_try_from_frame!(Response, BareRequest);
