//! A tokio-util `Decoder`/`Encoder` around [`FrameDecoder`](crate::FrameDecoder).
//!
//! Kept apart so the core stays I/O-free; shells use it with `FramedRead`/`FramedWrite`.

use bytes::{Bytes, BytesMut};

use crate::{DecodeError, Frame, FrameDecoder};

/// An error from [`McbpCodec`]: the stream is corrupt or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes cannot be framed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The underlying I/O failed.
    #[error("i/o failed")]
    Io(#[from] std::io::Error),
}

/// Frames in, raw packets out. Encoding takes already-encoded bytes (a forwarded
/// [`Frame`]'s bytes, or a typed message's encoding), so forwarding never re-encodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct McbpCodec {
    decoder: FrameDecoder,
}

impl McbpCodec {
    /// A codec with the given body-length cap.
    #[must_use]
    pub fn new(max_body_len: usize) -> McbpCodec {
        McbpCodec {
            decoder: FrameDecoder::new(max_body_len),
        }
    }
}

impl tokio_util::codec::Decoder for McbpCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Bytes> for McbpCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<&Frame> for McbpCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(item.bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameSpec, Opcode};
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn codec_round_trips_raw_frames() {
        let f = FrameSpec::request(Opcode::Noop).to_frame();
        let mut codec = McbpCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).expect("encode");
        codec.encode(f.bytes().clone(), &mut buf).expect("encode");
        assert_eq!(codec.decode(&mut buf).expect("ok"), Some(f.clone()));
        assert_eq!(codec.decode(&mut buf).expect("ok"), Some(f));
        assert_eq!(codec.decode(&mut buf).expect("ok"), None);
    }
}
