//! Framed MCBP connections for the tokio shells (issue #8, "one framed connection
//! type"): every socket in Conduit — the node's KV sessions and DCP shells, the
//! client, the replication proxy — reads and writes frames through these two halves.
//!
//! * [`FrameReader`]: reads into its own buffer (so every read is cancel-safe in a
//!   `select!`), hands out whole frames checked by [`mcbp::FrameDecoder`] (body cap
//!   before anything is buffered), stops reading while `max_buffered` bytes of whole
//!   frames wait to be handled (a peer cannot make it buffer without limit), and
//!   reports end of stream as [`ReadError::Closed`].
//! * [`FrameWriter`]: a queue of byte chunks with a soft bound (`has_room`: callers
//!   stop producing, e.g. stop reading requests, while it is full) and a stall bound:
//!   a write that makes no progress for `stall_timeout` fails with
//!   [`WriteError::Stalled`], so a peer that stopped reading is noticed.
//!
//! No protocol decisions are made here; the cores decide, the shells move bytes.

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use mcbp::{DecodeError, Frame, FrameDecoder, Header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a [`FrameReader`] buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadConfig {
    /// Largest frame body accepted (checked before the body is buffered).
    pub max_body_len: usize,
    /// Stop reading while this many bytes are buffered (unless they are only part
    /// of one frame, which must be completed).
    pub max_buffered: usize,
    /// Room reserved before each read.
    pub read_chunk: usize,
}

impl Default for ReadConfig {
    /// mcbp's default body cap, 4 MiB buffered, 64 KiB reads.
    fn default() -> Self {
        ReadConfig {
            max_body_len: mcbp::DEFAULT_MAX_BODY_LEN,
            max_buffered: 4 * 1024 * 1024,
            read_chunk: 64 * 1024,
        }
    }
}

/// Why a [`FrameReader`] cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection (end of stream).
    #[error("connection closed by peer")]
    Closed,
    /// Reading failed.
    #[error("read failed")]
    Io(#[source] io::Error),
    /// The byte stream cannot be framed.
    #[error("corrupt stream")]
    Decode(#[source] DecodeError),
}

/// The read half of a framed connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    cfg: ReadConfig,
    /// The buffer holds no whole frame (only part of one): reading must go on even
    /// past `max_buffered`, or a large frame could never complete.
    starved: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `rd`; `leftover` holds bytes already read from it (they come
    /// first).
    pub fn new(rd: R, leftover: BytesMut, cfg: ReadConfig) -> FrameReader<R> {
        FrameReader {
            rd,
            buf: leftover,
            decoder: FrameDecoder::new(cfg.max_body_len),
            cfg,
            starved: false,
        }
    }

    /// The next whole frame already read, if any (no I/O).
    ///
    /// # Errors
    /// The stream cannot be framed (the connection must be dropped).
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, DecodeError> {
        let f = self.decoder.decode(&mut self.buf)?;
        self.starved = f.is_none();
        Ok(f)
    }

    /// Takes the longest run of whole frames at the front of the buffer whose
    /// headers `pass` accepts, as one chunk and without copying; returns it with the
    /// number of frames (an empty chunk and 0 when the first frame is incomplete or
    /// refused: take that one with [`Self::next_buffered`]). Every header is checked
    /// as [`Self::next_buffered`] checks it.
    ///
    /// # Errors
    /// The stream cannot be framed (the connection must be dropped); the frames
    /// before the bad header stay buffered.
    pub fn take_run(
        &mut self,
        mut pass: impl FnMut(&Header) -> bool,
    ) -> Result<(Bytes, usize), DecodeError> {
        let mut end = 0usize;
        let mut frames = 0usize;
        let mut failed = None;
        loop {
            let header = match self.decoder.peek_header(&self.buf[end..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let len = header.frame_len();
            if self.buf.len() - end < len || !pass(&header) {
                break;
            }
            end += len;
            frames += 1;
        }
        // Frames before a bad header are still whole: hand them out first.
        match failed {
            Some(e) if frames == 0 => Err(e),
            _ => Ok((self.buf.split_to(end).freeze(), frames)),
        }
    }

    /// Bytes read and not yet handed out.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether [`Self::fill`] may read now: below the buffering bound, or the buffer
    /// holds only part of a frame.
    #[must_use]
    pub fn can_read(&self) -> bool {
        self.starved || self.buf.len() < self.cfg.max_buffered
    }

    /// Reads once into the buffer; returns the bytes read. Cancel-safe. Use it only
    /// when [`Self::can_read`] (a shell's `select!` guard).
    ///
    /// # Errors
    /// [`ReadError::Closed`] at end of stream, [`ReadError::Io`].
    pub async fn fill(&mut self) -> Result<usize, ReadError> {
        if self.buf.capacity() - self.buf.len() < self.cfg.read_chunk / 2 {
            self.buf.reserve(self.cfg.read_chunk);
        }
        match self.rd.read_buf(&mut self.buf).await {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.starved = false;
                Ok(n)
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The next whole frame, reading as needed. Cancel-safe: partial bytes stay in
    /// the buffer.
    ///
    /// # Errors
    /// As [`Self::fill`], or [`ReadError::Decode`].
    pub async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(f) = self.next_buffered().map_err(ReadError::Decode)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// The underlying reader.
    #[must_use]
    pub fn get_ref(&self) -> &R {
        &self.rd
    }

    /// The underlying reader and the bytes read but not handed out.
    #[must_use]
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.rd, self.buf)
    }
}

/// Why a [`FrameWriter`] cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing failed.
    #[error("write failed")]
    Io(#[source] io::Error),
    /// The socket accepted nothing (peer gone).
    #[error("connection closed by peer")]
    Closed,
    /// No write progress for the stall bound: the peer stopped reading.
    #[error("no write progress for {0:?}: the peer stopped reading")]
    Stalled(Duration),
}

/// The write half of a framed connection.
#[derive(Debug)]
pub struct FrameWriter<W> {
    wr: W,
    /// Whole chunks waiting, oldest first (zero-copy for forwarded frames).
    queue: VecDeque<Bytes>,
    /// Where shells encode their own frames; moved to `queue` before writing.
    staged: BytesMut,
    queued: usize,
    max_queued: usize,
    stall_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer over `wr` whose queue counts as full at `max_queued` bytes and whose
    /// writes fail after `stall_timeout` without progress.
    pub fn new(wr: W, max_queued: usize, stall_timeout: Duration) -> FrameWriter<W> {
        FrameWriter {
            wr,
            queue: VecDeque::new(),
            staged: BytesMut::new(),
            queued: 0,
            max_queued,
            stall_timeout,
        }
    }

    /// Queues a chunk of whole frames (not written yet), after anything staged.
    pub fn queue(&mut self, b: Bytes) {
        self.stage_to_queue();
        self.push(b);
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queued += b.len();
            self.queue.push_back(b);
        }
    }

    /// A buffer to encode frames into; what is appended is written after everything
    /// queued before. While nothing is queued, its length is the pending output.
    pub fn staging(&mut self) -> &mut BytesMut {
        &mut self.staged
    }

    fn stage_to_queue(&mut self) {
        if !self.staged.is_empty() {
            let b = self.staged.split().freeze();
            self.push(b);
        }
    }

    /// Bytes queued and not yet written.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queued + self.staged.len()
    }

    /// Whether nothing waits to be written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queued() == 0
    }

    /// Whether the queue is below its bound (producers should pause otherwise).
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.queued() < self.max_queued
    }

    /// Writes some of what is queued; returns the bytes written (0 only when nothing
    /// was queued). Cancel-safe: a cancelled write wrote nothing.
    ///
    /// # Errors
    /// [`WriteError::Stalled`] after `stall_timeout` without progress,
    /// [`WriteError::Closed`], [`WriteError::Io`].
    pub async fn write_some(&mut self) -> Result<usize, WriteError> {
        // Staged bytes are written in place while nothing else is queued, so a
        // shell that only stages sees its pending output in `staging().len()`.
        let from_queue = !self.queue.is_empty();
        let chunk: &[u8] = match self.queue.front() {
            Some(front) => front,
            None if !self.staged.is_empty() => &self.staged,
            None => return Ok(0),
        };
        // Try once without a timer: the socket usually has room, and arming a timer
        // per write costs more than the write on a busy connection.
        let wr = &mut self.wr;
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *wr).poll_write(cx, chunk) {
                std::task::Poll::Ready(r) => Some(r),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        let written = match first {
            Some(r) => r,
            None => match tokio::time::timeout(self.stall_timeout, self.wr.write(chunk)).await {
                Err(_) => return Err(WriteError::Stalled(self.stall_timeout)),
                Ok(r) => r,
            },
        };
        let n = match written {
            Err(e) => return Err(WriteError::Io(e)),
            Ok(0) => return Err(WriteError::Closed),
            Ok(n) => n,
        };
        if from_queue {
            if let Some(front) = self.queue.front_mut() {
                front.advance(n);
                if front.is_empty() {
                    self.queue.pop_front();
                }
            }
            self.queued -= n;
        } else {
            self.staged.advance(n);
        }
        Ok(n)
    }

    /// Writes everything queued (each write bounded by the stall bound).
    ///
    /// # Errors
    /// As [`Self::write_some`].
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        while !self.is_empty() {
            self.write_some().await?;
        }
        self.wr.flush().await.map_err(WriteError::Io)
    }

    /// Best effort on the way out: writes what is queued for at most `within`, then
    /// drops the rest. Returns whether everything was written.
    pub async fn flush_within(&mut self, within: Duration) -> bool {
        let done = matches!(tokio::time::timeout(within, self.flush()).await, Ok(Ok(())));
        if !done {
            self.queue.clear();
            self.staged.clear();
            self.queued = 0;
        }
        done
    }

    /// The underlying writer.
    #[must_use]
    pub fn get_ref(&self) -> &W {
        &self.wr
    }

    /// The underlying writer (anything still queued is dropped).
    #[must_use]
    pub fn into_inner(self) -> W {
        self.wr
    }
}

#[cfg(test)]
mod tests {
    use mcbp::{BareRequest, Message, Opaque, Opcode, Vbid};
    use tokio::io::duplex;

    use super::*;

    fn frame(i: u32) -> Frame {
        BareRequest::new(Opcode::Noop, Vbid(0), Opaque(i)).to_frame()
    }

    fn cfg(max_buffered: usize) -> ReadConfig {
        ReadConfig {
            max_body_len: 1024,
            max_buffered,
            read_chunk: 64,
        }
    }

    #[tokio::test]
    async fn frames_split_across_reads_come_out_whole_and_eof_is_closed() {
        let (mut a, b) = duplex(1024);
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(1 << 20));
        let mut bytes = Vec::new();
        for i in 0..3 {
            bytes.extend_from_slice(frame(i).bytes());
        }
        for chunk in bytes.chunks(7) {
            a.write_all(chunk).await.expect("write");
        }
        drop(a);
        for i in 0..3 {
            assert_eq!(r.read_frame().await.expect("frame").opaque(), Opaque(i));
        }
        assert!(matches!(r.read_frame().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn take_run_hands_out_accepted_whole_frames_as_one_chunk_and_stops_at_the_rest() {
        let (mut a, b) = duplex(1 << 16);
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(1 << 20));
        let set = |i: u32| {
            mcbp::FrameSpec::request(Opcode::Set)
                .opaque(Opaque(i))
                .key(b"k")
                .value(b"v")
                .to_frame()
        };
        let mut bytes = Vec::new();
        for f in [frame(0), frame(1), set(2), frame(3)] {
            bytes.extend_from_slice(f.bytes());
        }
        let whole = bytes.len();
        // The last frame arrives without its final byte.
        a.write_all(&bytes[..whole - 1]).await.expect("write");
        while r.buffered() < whole - 1 {
            r.fill().await.expect("fill");
        }
        let noops = |h: &Header| h.opcode() == Opcode::Noop;
        let (run, n) = r.take_run(noops).expect("valid");
        assert_eq!(n, 2);
        assert_eq!(&run[..], &bytes[..2 * frame(0).bytes().len()]);
        // A refused frame stays for next_buffered, untouched.
        let (run, n) = r.take_run(noops).expect("valid");
        assert_eq!((run.len(), n), (0, 0));
        assert_eq!(
            r.next_buffered().expect("valid").expect("whole").opaque(),
            Opaque(2)
        );
        // An incomplete frame is not handed out, even when accepted.
        let (run, n) = r.take_run(noops).expect("valid");
        assert_eq!((run.len(), n), (0, 0));
        a.write_all(&bytes[whole - 1..]).await.expect("write");
        r.fill().await.expect("fill");
        let (run, n) = r.take_run(noops).expect("valid");
        assert_eq!((&run[..], n), (frame(3).bytes().as_ref(), 1));
        assert_eq!(r.buffered(), 0);
    }

    #[tokio::test]
    async fn take_run_hands_out_the_frames_before_a_bad_header_then_fails() {
        let (mut a, b) = duplex(1 << 16);
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(1024));
        let mut bad = frame(9).bytes().to_vec();
        bad[8..12].copy_from_slice(&4096u32.to_be_bytes());
        let mut bytes = frame(0).bytes().to_vec();
        bytes.extend_from_slice(&bad);
        a.write_all(&bytes).await.expect("write");
        while r.buffered() < bytes.len() {
            r.fill().await.expect("fill");
        }
        let (run, n) = r.take_run(|_| true).expect("the good frame first");
        assert_eq!((&run[..], n), (frame(0).bytes().as_ref(), 1));
        assert!(matches!(
            r.take_run(|_| true),
            Err(DecodeError::BodyTooLarge { body_len: 4096, .. })
        ));
    }

    #[tokio::test]
    async fn a_corrupt_stream_is_a_decode_error() {
        let (mut a, b) = duplex(1024);
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(1 << 20));
        // A body longer than the cap, announced in the header.
        let mut h = frame(1).bytes().to_vec();
        h[8..12].copy_from_slice(&4096u32.to_be_bytes());
        a.write_all(&h).await.expect("write");
        assert!(matches!(r.read_frame().await, Err(ReadError::Decode(_))));
    }

    #[tokio::test]
    async fn reading_stops_at_the_buffering_bound_until_frames_are_taken() {
        let (mut a, b) = duplex(1 << 16);
        let one = frame(0).bytes().len();
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(one * 2));
        for i in 0..8 {
            a.write_all(frame(i).bytes()).await.expect("write");
        }
        while r.can_read() {
            r.fill().await.expect("fill");
        }
        assert!(r.buffered() >= one * 2);
        // Taking frames makes room again.
        while r.buffered() >= one * 2 {
            assert!(r.next_buffered().expect("ok").is_some());
        }
        assert!(r.can_read());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_buffering_bound_still_completes() {
        let (mut a, b) = duplex(1 << 16);
        let mut r = FrameReader::new(b, BytesMut::new(), cfg(16));
        let big = mcbp::FrameSpec::request(Opcode::Set)
            .key(b"k")
            .value(&[7u8; 500])
            .to_frame();
        a.write_all(big.bytes()).await.expect("write");
        let f = r.read_frame().await.expect("frame");
        assert_eq!(f.value().len(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_stalls_the_writer_at_its_bound() {
        let (a, _b) = duplex(64);
        let mut w = FrameWriter::new(a, 1 << 20, Duration::from_secs(5));
        w.queue(Bytes::from(vec![1u8; 4096]));
        let t0 = tokio::time::Instant::now();
        let err = w.flush().await.expect_err("stalls");
        assert!(matches!(err, WriteError::Stalled(d) if d == Duration::from_secs(5)));
        assert!(t0.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn queued_and_staged_bytes_are_written_in_order_and_counted() {
        let (a, mut b) = duplex(1 << 16);
        let mut w = FrameWriter::new(a, 100, Duration::from_secs(5));
        w.queue(Bytes::from_static(b"ab"));
        w.staging().extend_from_slice(b"cd");
        w.queue(Bytes::from_static(b"ef"));
        assert_eq!(w.queued(), 6);
        assert!(w.has_room());
        w.staging().extend_from_slice(&[0u8; 100]);
        assert!(!w.has_room());
        w.flush().await.expect("flush");
        assert!(w.is_empty());
        let mut got = vec![0u8; 106];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..6], b"abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn flush_within_gives_up_at_its_bound_and_drops_the_rest() {
        let (a, _b) = duplex(16);
        let mut w = FrameWriter::new(a, 1 << 20, Duration::from_secs(60));
        w.queue(Bytes::from(vec![1u8; 1024]));
        assert!(!w.flush_within(Duration::from_millis(100)).await);
        assert!(w.is_empty());
    }
}
