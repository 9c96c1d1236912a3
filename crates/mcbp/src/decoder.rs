//! The incremental, zero-copy frame decoder.
//!
//! Contract (tokio-util's): `Ok(None)` = not enough bytes yet, `Ok(Some)` = exactly one
//! frame consumed, `Err` = the stream is corrupt and must be closed. Lengths are
//! checked against the cap *before* any memory is reserved for the body.

use bytes::BytesMut;

use crate::frame::{Frame, Header, Magic, HEADER_LEN};

/// kv_engine's packet limit: a value just over the 20 MiB document limit still
/// decodes, so a node can answer it with E2BIG instead of dropping the connection.
pub const DEFAULT_MAX_BODY_LEN: usize = 30 * 1024 * 1024;

/// Which length field of a header is inconsistent with the body length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthField {
    /// Framing extras alone exceed the body.
    FramingExtras,
    /// Framing extras + extras exceed the body.
    Extras,
    /// Framing extras + extras + key exceed the body.
    Key,
}

impl std::fmt::Display for LengthField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LengthField::FramingExtras => "framing extras length",
            LengthField::Extras => "extras length",
            LengthField::Key => "key length",
        })
    }
}

/// The byte stream cannot be framed; the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a body larger than the cap.
    #[error("opcode {opcode:#04x} (magic {magic}): body length {body_len} exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Magic of the offending frame.
        magic: Magic,
        /// Raw opcode of the offending frame.
        opcode: u8,
        /// The announced body length.
        body_len: u32,
        /// The cap in force.
        max: usize,
    },
    /// A section length runs past the body.
    #[error("opcode {opcode:#04x} (magic {magic}): {field} runs past the body (framing extras {framing_extras_len} + extras {extras_len} + key {key_len} > body {body_len})")]
    LengthExceedsBody {
        /// The first field that does not fit.
        field: LengthField,
        /// Magic of the offending frame.
        magic: Magic,
        /// Raw opcode of the offending frame.
        opcode: u8,
        /// Framing extras length.
        framing_extras_len: u8,
        /// Extras length.
        extras_len: u8,
        /// Key length.
        key_len: u16,
        /// Body length.
        body_len: u32,
    },
}

/// Splits a byte stream into [`Frame`]s.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_body_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_BODY_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses bodies longer than `max_body_len`.
    #[must_use]
    pub fn new(max_body_len: usize) -> FrameDecoder {
        FrameDecoder { max_body_len }
    }

    /// The body-length cap.
    #[must_use]
    pub fn max_body_len(&self) -> usize {
        self.max_body_len
    }

    /// Validates a header against the cap and its own lengths.
    ///
    /// # Errors
    /// [`DecodeError`] when the stream cannot be framed past this header.
    pub fn check_header(&self, h: &Header) -> Result<(), DecodeError> {
        if h.body_len as usize > self.max_body_len {
            return Err(DecodeError::BodyTooLarge {
                magic: h.magic,
                opcode: h.opcode,
                body_len: h.body_len,
                max: self.max_body_len,
            });
        }
        if matches!(h.magic, Magic::Unknown(_)) {
            // Not interpreted: delimited by the body length only.
            return Ok(());
        }
        let body = u64::from(h.body_len);
        let fe = u64::from(h.framing_extras_len);
        let ex = u64::from(h.extras_len);
        let key = u64::from(h.key_len);
        let field = if fe > body {
            Some(LengthField::FramingExtras)
        } else if fe + ex > body {
            Some(LengthField::Extras)
        } else if fe + ex + key > body {
            Some(LengthField::Key)
        } else {
            None
        };
        match field {
            None => Ok(()),
            Some(field) => Err(DecodeError::LengthExceedsBody {
                field,
                magic: h.magic,
                opcode: h.opcode,
                framing_extras_len: h.framing_extras_len,
                extras_len: h.extras_len,
                key_len: h.key_len,
                body_len: h.body_len,
            }),
        }
    }

    /// The checked header at the front of `bytes`, once all 24 of its bytes are
    /// there (the body may still be missing).
    ///
    /// # Errors
    /// [`DecodeError`] when the header is inconsistent or over the cap.
    pub fn peek_header(&self, bytes: &[u8]) -> Result<Option<Header>, DecodeError> {
        let Some(hdr) = bytes.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(hdr);
        self.check_header(&header)?;
        Ok(Some(header))
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    ///
    /// On `Ok(None)` it reserves room for the rest of the current frame (bounded by
    /// the cap), so the caller's next read can fill it.
    ///
    /// # Errors
    /// [`DecodeError`] when the header is inconsistent or over the cap; `buf` is left
    /// as it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(header) = self.peek_header(buf)? else {
            return Ok(None);
        };
        let len = header.frame_len();
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let bytes = buf.split_to(len).freeze();
        Ok(Some(Frame::from_validated(header, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameSpec;
    use crate::opcode::Opcode;

    fn sample() -> BytesMut {
        let mut b = BytesMut::new();
        FrameSpec::request(Opcode::Set)
            .extras(&[0; 8])
            .key(b"key")
            .value(b"value")
            .encode(&mut b);
        b
    }

    #[test]
    fn partial_frames_are_not_yet_and_consume_nothing() {
        let whole = sample();
        let d = FrameDecoder::default();
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(d.decode(&mut b), Ok(None), "cut at {cut}");
            assert_eq!(b.len(), cut);
        }
        let mut b = whole.clone();
        let f = d.decode(&mut b).expect("valid").expect("whole");
        assert!(b.is_empty());
        assert_eq!(f.key(), b"key");
        assert_eq!(f.value(), b"value");
        assert_eq!(f.extras(), &[0; 8]);
    }

    #[test]
    fn oversized_body_is_refused_before_buffering() {
        let mut b = sample();
        b[8..12].copy_from_slice(&(31u32 * 1024 * 1024).to_be_bytes());
        b.truncate(HEADER_LEN);
        let err = FrameDecoder::default()
            .decode(&mut b)
            .expect_err("too large");
        assert!(
            matches!(err, DecodeError::BodyTooLarge { body_len, .. } if body_len == 31 * 1024 * 1024)
        );
        assert!(
            b.capacity() < 1024 * 1024,
            "no reservation for a refused body"
        );
    }

    #[test]
    fn inconsistent_lengths_name_the_field() {
        let d = FrameDecoder::default();
        let mut b = sample();
        b[2..4].copy_from_slice(&100u16.to_be_bytes());
        let err = d.decode(&mut b).expect_err("key too long");
        assert!(matches!(
            err,
            DecodeError::LengthExceedsBody {
                field: LengthField::Key,
                ..
            }
        ));
        assert!(err.to_string().contains("key length"), "{err}");

        let mut b = sample();
        b[4] = 200;
        let err = d.decode(&mut b).expect_err("extras too long");
        assert!(matches!(
            err,
            DecodeError::LengthExceedsBody {
                field: LengthField::Extras,
                ..
            }
        ));

        let mut b = sample();
        b[0] = 0x08;
        b[2] = 250;
        let err = d.decode(&mut b).expect_err("framing extras too long");
        assert!(matches!(
            err,
            DecodeError::LengthExceedsBody {
                field: LengthField::FramingExtras,
                ..
            }
        ));
    }

    #[test]
    fn unknown_magic_is_delimited_by_body_length_and_kept_raw() {
        let mut b = sample();
        b[0] = 0x42;
        b[2..4].copy_from_slice(&0xffffu16.to_be_bytes()); // not interpreted
        let original = b.clone().freeze();
        let f = FrameDecoder::default()
            .decode(&mut b)
            .expect("ok")
            .expect("whole");
        assert_eq!(f.magic(), Magic::Unknown(0x42));
        assert_eq!(f.bytes(), &original);
        assert!(f.key().is_empty() && f.value().is_empty());
    }
}
