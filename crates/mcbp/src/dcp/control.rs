//! Connection control: SET_VBUCKET_STATE, BUFFER_ACKNOWLEDGEMENT, CONTROL
//! (§6.13–6.16). NOOP, CLOSE_STREAM and GET_FAILOVER_LOG requests have no body and
//! use [`BareRequest`](crate::BareRequest); status-only answers use
//! [`Response`](crate::Response).

use bytes::{Bytes, BytesMut};

use crate::frame::{Frame, FrameSpec};
use crate::ids::{Opaque, VbState, Vbid};
use crate::message::{be_u32, impl_try_from_frame, BodyField, Check, Direction, Message};
use crate::opcode::Opcode;
use crate::BodyError;

/// DCP_SET_VBUCKET_STATE: producer -> consumer during takeover (§6.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetVbucketState {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// The state to apply.
    pub state: VbState,
}

impl Message for SetVbucketState {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpSetVbucketState
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[1])?;
        c.no_key()?;
        c.no_value()?;
        let state = VbState::from_u8(e[0]).ok_or_else(|| {
            c.err(
                BodyField::Extras,
                format!("vbucket state {} (expected 1..=4)", e[0]),
            )
        })?;
        Ok(SetVbucketState {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            state,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpSetVbucketState)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&[self.state.to_u8()])
            .encode(buf);
    }
}

/// DCP_BUFFER_ACKNOWLEDGEMENT: consumer -> producer (§6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferAck {
    /// Header vbucket (not interpreted).
    pub vbucket: Vbid,
    /// The opaque (not interpreted).
    pub opaque: Opaque,
    /// Bytes the consumer has finished with.
    pub bytes: u32,
}

impl Message for BufferAck {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpBufferAcknowledgement
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[4])?;
        c.no_key()?;
        c.no_value()?;
        Ok(BufferAck {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            bytes: be_u32(e, 0),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpBufferAcknowledgement)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.bytes.to_be_bytes())
            .encode(buf);
    }
}

/// DCP_CONTROL: consumer -> producer (§6.16). Key and value are non-empty ASCII.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The opaque.
    pub opaque: Opaque,
    /// Control name, e.g. `enable_noop`.
    pub key: Bytes,
    /// Control value, e.g. `true`.
    pub value: Bytes,
}

impl Control {
    /// A control with string key and value.
    #[must_use]
    pub fn new(opaque: Opaque, key: &str, value: &str) -> Control {
        Control {
            opaque,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }
}

impl Message for Control {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpControl
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        if frame.value().is_empty() {
            return Err(c.err(BodyField::Value, "must not be empty"));
        }
        Ok(Control {
            opaque: frame.opaque(),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpControl)
            .opaque(self.opaque)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

impl_try_from_frame!(SetVbucketState, BufferAck, Control);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_vbucket_state_refuses_unknown_states() {
        let f = FrameSpec::request(Opcode::DcpSetVbucketState)
            .extras(&[9])
            .to_frame();
        assert_eq!(
            SetVbucketState::parse(&f).expect_err("state 9").field,
            BodyField::Extras
        );
        let ok = SetVbucketState {
            vbucket: Vbid(3),
            opaque: Opaque(7),
            state: VbState::Pending,
        };
        assert_eq!(ok.to_frame().wire_len(), 25, "flow-control size 25");
    }

    #[test]
    fn control_needs_key_and_value() {
        let f = FrameSpec::request(Opcode::DcpControl)
            .key(b"enable_noop")
            .to_frame();
        assert!(Control::parse(&f).is_err());
        let c = Control::new(Opaque(1), "enable_noop", "true");
        assert_eq!(Control::parse(&c.to_frame()), Ok(c));
    }
}
