//! The typed-message contract and its error type.
//!
//! Each typed message parses from a [`Frame`] and encodes into a buffer. Parsing
//! checks the magic, opcode and every length the spec fixes; it never panics.

use bytes::BytesMut;

use crate::frame::{Frame, Magic};
use crate::opcode::Opcode;

/// Requests or responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Magic 0x80/0x08.
    Request,
    /// Magic 0x81/0x18.
    Response,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// Which part of a frame a [`BodyError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyField {
    /// The magic byte.
    Magic,
    /// The opcode.
    Opcode,
    /// The datatype byte.
    Datatype,
    /// The extras section.
    Extras,
    /// The key.
    Key,
    /// The value.
    Value,
}

impl std::fmt::Display for BodyField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyField::Magic => "magic",
            BodyField::Opcode => "opcode",
            BodyField::Datatype => "datatype",
            BodyField::Extras => "extras",
            BodyField::Key => "key",
            BodyField::Value => "value",
        })
    }
}

/// A well-framed packet whose body does not fit the message's layout (nodes answer
/// EINVAL). It names the opcode, the field and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{opcode} {direction}: {field}: {problem}")]
pub struct BodyError {
    /// The frame's opcode.
    pub opcode: Opcode,
    /// Request or response.
    pub direction: Direction,
    /// The offending part.
    pub field: BodyField,
    /// What was wrong, in words.
    pub problem: String,
}

impl BodyError {
    /// A new error.
    pub fn new(
        frame: &Frame,
        direction: Direction,
        field: BodyField,
        problem: impl Into<String>,
    ) -> BodyError {
        BodyError {
            opcode: frame.opcode(),
            direction,
            field,
            problem: problem.into(),
        }
    }
}

/// A typed MCBP/DCP message.
pub trait Message: Sized {
    /// Requests or responses.
    const DIRECTION: Direction;

    /// Whether `op` is an opcode this type represents.
    fn accepts(op: Opcode) -> bool;

    /// Parses the body of a frame already known to have the right magic and opcode.
    ///
    /// # Errors
    /// [`BodyError`] naming the field that does not fit.
    fn parse_body(frame: &Frame) -> Result<Self, BodyError>;

    /// Appends the encoded packet to `buf`.
    fn encode(&self, buf: &mut BytesMut);

    /// Parses a frame: magic, opcode, then body.
    ///
    /// # Errors
    /// [`BodyError`] if the frame is not this message or its body does not fit.
    fn parse(frame: &Frame) -> Result<Self, BodyError> {
        let magic_ok = match Self::DIRECTION {
            Direction::Request => matches!(
                frame.magic(),
                Magic::ClientRequest | Magic::AltClientRequest
            ),
            Direction::Response => matches!(
                frame.magic(),
                Magic::ClientResponse | Magic::AltClientResponse
            ),
        };
        if !magic_ok {
            return Err(BodyError::new(
                frame,
                Self::DIRECTION,
                BodyField::Magic,
                format!(
                    "magic {} is not a client {}",
                    frame.magic(),
                    Self::DIRECTION
                ),
            ));
        }
        if !Self::accepts(frame.opcode()) {
            return Err(BodyError::new(
                frame,
                Self::DIRECTION,
                BodyField::Opcode,
                "unexpected opcode for this message",
            ));
        }
        Self::parse_body(frame)
    }

    /// Encodes into a standalone [`Frame`] (tests, and callers that need one).
    #[must_use]
    fn to_frame(&self) -> Frame {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        crate::FrameDecoder::new(usize::MAX)
            .decode(&mut buf)
            .expect("our own encoding frames cleanly")
            .expect("our own encoding is one whole frame")
    }
}

/// Checks section lengths of a frame against a layout.
#[derive(Debug)]
pub(crate) struct Check<'a> {
    pub(crate) frame: &'a Frame,
    pub(crate) dir: Direction,
}

impl<'a> Check<'a> {
    pub(crate) fn new(frame: &'a Frame, dir: Direction) -> Self {
        Check { frame, dir }
    }

    pub(crate) fn err(&self, field: BodyField, problem: impl Into<String>) -> BodyError {
        BodyError::new(self.frame, self.dir, field, problem)
    }

    /// Extras of exactly one of the given lengths.
    pub(crate) fn extras(&self, allowed: &[usize]) -> Result<&'a [u8], BodyError> {
        let got = self.frame.extras();
        if allowed.contains(&got.len()) {
            Ok(got)
        } else {
            Err(self.err(
                BodyField::Extras,
                format!("length {} (expected {})", got.len(), join(allowed)),
            ))
        }
    }

    pub(crate) fn no_key(&self) -> Result<(), BodyError> {
        if self.frame.key().is_empty() {
            Ok(())
        } else {
            Err(self.err(BodyField::Key, "must be empty"))
        }
    }

    pub(crate) fn key(&self) -> Result<&'a [u8], BodyError> {
        let k = self.frame.key();
        if k.is_empty() {
            Err(self.err(BodyField::Key, "must not be empty"))
        } else {
            Ok(k)
        }
    }

    pub(crate) fn no_value(&self) -> Result<(), BodyError> {
        if self.frame.value().is_empty() {
            Ok(())
        } else {
            Err(self.err(BodyField::Value, "must be empty"))
        }
    }
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Big-endian reads from a slice whose length was already checked.
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Implements `TryFrom<&Frame>` for message types.
macro_rules! impl_try_from_frame {
    ($($t:ty),* $(,)?) => {
        $(
            impl TryFrom<&$crate::Frame> for $t {
                type Error = $crate::BodyError;
                fn try_from(frame: &$crate::Frame) -> Result<Self, Self::Error> {
                    <$t as $crate::Message>::parse(frame)
                }
            }
        )*
    };
}
pub(crate) use impl_try_from_frame;
