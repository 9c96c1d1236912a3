//! Property tests of the frame decoder: arbitrary bytes never panic, and any chunking
//! of a byte stream yields the same frames (or the same error) as decoding it whole.

mod common;

use bytes::BytesMut;
use mcbp::{DecodeError, Frame, FrameDecoder, Message};
use proptest::prelude::*;

/// Decodes `stream` fed in pieces of the given sizes; returns the frames and the
/// first error, if any.
fn decode_chunked(
    d: &FrameDecoder,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut cut_iter = cuts.iter().cycle();
    while pos < stream.len() {
        let n = (*cut_iter.next().unwrap_or(&1))
            .max(1)
            .min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn sample_stream() -> Vec<u8> {
    common::dcp_samples::dcp_samples()
        .iter()
        .flat_map(|(_, f)| f.bytes().to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..64, 1..16),
        cap in prop_oneof![Just(64usize), Just(1024usize), Just(mcbp::DEFAULT_MAX_BODY_LEN)],
    ) {
        let d = FrameDecoder::new(cap);
        let whole = decode_chunked(&d, &bytes, &[bytes.len().max(1)]);
        let pieces = decode_chunked(&d, &bytes, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn real_frame_streams_survive_any_chunking(
        cuts in proptest::collection::vec(1usize..200, 1..24),
        corrupt_at in proptest::option::of(0usize..2000),
        corrupt_byte in any::<u8>(),
    ) {
        let mut stream = sample_stream();
        if let Some(at) = corrupt_at {
            let at = at % stream.len();
            stream[at] = corrupt_byte;
        }
        let d = FrameDecoder::default();
        let whole = decode_chunked(&d, &stream, &[stream.len()]);
        let pieces = decode_chunked(&d, &stream, &cuts);
        prop_assert_eq!(&whole, &pieces);
        if corrupt_at.is_none() {
            prop_assert!(whole.1.is_none());
            prop_assert_eq!(whole.0.len(), common::dcp_samples::dcp_samples().len());
        }
        // Typed parsing of whatever decoded never panics either.
        for f in &whole.0 {
            let _ = mcbp::dcp::Mutation::parse(f);
            let _ = mcbp::dcp::StreamReq::parse(f);
            let _ = mcbp::dcp::SnapshotMarker::parse(f);
            let _ = mcbp::dcp::Deletion::parse(f);
            let _ = mcbp::dcp::StreamReqResponse::parse(f);
            let _ = mcbp::dcp::AddStreamResponse::parse(f);
            let _ = f.frame_infos().count();
        }
    }
}

#[test]
fn every_sample_is_consumed_exactly() {
    let stream = sample_stream();
    let (frames, err) = decode_chunked(&FrameDecoder::default(), &stream, &[7]);
    assert!(err.is_none());
    let lens: usize = frames.iter().map(Frame::wire_len).sum();
    assert_eq!(lens, stream.len());
}
