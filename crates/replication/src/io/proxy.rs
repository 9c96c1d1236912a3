//! The proxy pair's socket tasks (`replication-layer.md` §2.4, §3): per socket one
//! reader task and one writer task.
//!
//! * Only the writer writes to its socket. It receives whole batches of whole
//!   frames over a bounded channel, so forwarded traffic and injected commands never
//!   interleave inside a frame and a slow destination stops the source's reader
//!   (back-pressure, §3.2): the reader awaits channel capacity before it reads again.
//!   Memory per direction is bounded by the channel capacity times one read's worth
//!   of frames (plus one partial frame, capped by the decoder's body limit).
//! * Readers decide "forward vs core" from `(magic, opcode)`
//!   ([`route_from_consumer`], [`classify_from_producer`]). Forwarded frames of one
//!   read go to the partner's writer as one batch, written with one write (MB-38984);
//!   a run of them is judged by header alone and handed on as the very chunk of the
//!   read buffer it arrived in (no copy, no per-frame object).
//!   Frames the core must see are queued to the replicator actor *before* anything
//!   after them is forwarded (register-before-forward, §2.4):
//!   - consumer side: the reader flushes the batch so far, queues the frame to the
//!     actor and waits for the actor's acknowledgement (the actor forwards such
//!     frames itself, so per-direction order is kept);
//!   - producer side: the reader queues the event, then appends the frame to its
//!     batch (or drops it: CLOSE_STREAM answers are ours).
//! * Any task failing (EOF, I/O error, decode error, a write stalled for
//!   `write_stall_timeout`) records the first failure and cancels the pair's teardown
//!   token. Teardown flushes what was already read (issue #8 item 7): readers stop
//!   reading and hand the frames they hold to their partner's writer, writers write
//!   what is queued, both for at most [`TEARDOWN_FLUSH`]; then every task ends and
//!   the sockets close. Nobody waits for that to report the failure.
//! * Back-pressure never blinds a reader (issue #8 item 3): while it waits for room
//!   in its partner's queue it still polls its socket's pending error every
//!   [`STALL_PROBE`], so a peer that resets the connection is noticed at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcbp::DecodeError;
use mcbp_conn::{FrameReader, FrameWriter, ReadConfig, ReadError, WriteError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::core::{
    classify_from_producer, route_from_consumer, route_from_producer, Event, ProducerDecision,
    Route, Side,
};
use crate::io::connect::Connected;
use crate::lock::lock;

/// How long teardown keeps writing what was already read (issue #8 item 7).
pub const TEARDOWN_FLUSH: Duration = Duration::from_millis(100);
/// How often a reader blocked by back-pressure checks its socket for an error.
pub const STALL_PROBE: Duration = Duration::from_millis(100);

/// Tuning of the socket tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Batches queued per writer before the sources stop reading.
    pub channel_batches: usize,
    /// Bytes reserved per socket read.
    pub read_chunk: usize,
    /// Largest frame body accepted (§3.1 IMPROVE: a cap, failing the pair beyond it).
    pub max_body_len: usize,
    /// A write that makes no progress for this long fails the pair (a node that
    /// stopped reading).
    pub write_stall_timeout: Duration,
}

impl Default for ProxyConfig {
    /// 16 batches, 64 KiB reads (§12 socket buffers), mcbp's default body cap, 60 s
    /// write stall bound.
    fn default() -> Self {
        ProxyConfig {
            channel_batches: 16,
            read_chunk: 64 * 1024,
            max_body_len: mcbp::DEFAULT_MAX_BODY_LEN,
            write_stall_timeout: Duration::from_secs(60),
        }
    }
}

/// When each half last heard from its node (§3.3 liveness): set for every read that
/// completed at least one frame. Cheap to clone and read from any task.
#[derive(Clone, Debug)]
pub struct Liveness {
    base: Instant,
    /// Nanoseconds since `base`, plus one; 0 = never.
    last: Arc<[AtomicU64; 2]>,
}

impl Liveness {
    pub(crate) fn new() -> Liveness {
        Liveness {
            base: Instant::now(),
            last: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    fn slot(side: Side) -> usize {
        match side {
            Side::Consumer => 0,
            Side::Producer => 1,
        }
    }

    pub(crate) fn touch(&self, side: Side) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last[Self::slot(side)].store(nanos.saturating_add(1), Ordering::Relaxed);
    }

    /// When a complete frame was last read from this side's node, if ever.
    #[must_use]
    pub fn last_heard(&self, side: Side) -> Option<Instant> {
        match self.last[Self::slot(side)].load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }
}

/// Why a socket task stopped the pair ([`crate::error::ReplError::from_io`] adds the peer).
#[derive(Clone, Debug)]
pub(crate) enum IoFailure {
    /// The node closed its socket.
    Eof(Side),
    /// Reading or writing failed.
    Io(Side, Arc<std::io::Error>),
    /// The byte stream cannot be framed (or a frame exceeds the cap).
    Decode(Side, DecodeError),
    /// The actor went away (only during teardown).
    ActorGone(Side),
    /// A write to this side's node made no progress for the stall bound.
    WriteStalled(Side, Duration),
}

impl IoFailure {
    pub(crate) fn side(&self) -> Side {
        match self {
            IoFailure::Eof(s)
            | IoFailure::Io(s, _)
            | IoFailure::Decode(s, _)
            | IoFailure::ActorGone(s)
            | IoFailure::WriteStalled(s, _) => *s,
        }
    }

    fn io(side: Side, e: std::io::Error) -> IoFailure {
        IoFailure::Io(side, Arc::new(e))
    }
}

/// State shared by the pair's tasks and the actor.
#[derive(Debug)]
pub(crate) struct PairShared {
    /// Cancelled by whoever tears the pair down first.
    pub(crate) teardown: CancellationToken,
    failure: Mutex<Option<IoFailure>>,
    /// Cleared when the pair is stopped on purpose: teardown then drops what was
    /// read instead of flushing it (a failure flushes, issue #8 item 7).
    flush_on_teardown: AtomicBool,
    pub(crate) liveness: Liveness,
}

impl PairShared {
    pub(crate) fn new() -> Arc<PairShared> {
        Arc::new(PairShared {
            teardown: CancellationToken::new(),
            failure: Mutex::new(None),
            flush_on_teardown: AtomicBool::new(true),
            liveness: Liveness::new(),
        })
    }

    /// Records the first failure and tears the pair down.
    fn fail(&self, f: IoFailure) {
        {
            let mut slot = lock(&self.failure);
            if slot.is_none() && !self.teardown.is_cancelled() {
                debug!(side = %f.side(), failure = ?f, "socket task failed");
                *slot = Some(f);
            }
        }
        self.teardown.cancel();
    }

    /// A stop on purpose: teardown does not flush.
    pub(crate) fn skip_teardown_flush(&self) {
        self.flush_on_teardown.store(false, Ordering::Release);
    }

    fn flushes_on_teardown(&self) -> bool {
        self.flush_on_teardown.load(Ordering::Acquire)
    }

    pub(crate) fn take_failure(&self) -> Option<IoFailure> {
        lock(&self.failure).take()
    }
}

/// An event a reader hands to the replicator actor.
#[derive(Debug)]
pub(crate) struct ReaderEvent {
    pub(crate) event: Event,
    /// Sent once the actor performed the event's actions (consumer side only).
    pub(crate) ack: Option<oneshot::Sender<()>>,
}

/// The four socket tasks of a pair and the writers' inputs.
#[derive(Debug)]
pub(crate) struct PairTasks {
    pub(crate) handles: Vec<JoinHandle<()>>,
    pub(crate) to_consumer: mpsc::Sender<Bytes>,
    pub(crate) to_producer: mpsc::Sender<Bytes>,
}

/// Spawns the reader and writer of both sockets.
pub(crate) fn spawn_pair(
    consumer: Connected,
    producer: Connected,
    events: &mpsc::Sender<ReaderEvent>,
    shared: &Arc<PairShared>,
    cfg: ProxyConfig,
    name: &str,
) -> PairTasks {
    let (to_consumer, consumer_rx) = mpsc::channel::<Bytes>(cfg.channel_batches.max(1));
    let (to_producer, producer_rx) = mpsc::channel::<Bytes>(cfg.channel_batches.max(1));
    let (c_read, c_write) = consumer.stream.into_split();
    let (p_read, p_write) = producer.stream.into_split();
    let mut handles = Vec::with_capacity(4);
    let span = |side: Side, dir: &'static str, peer: &str| tracing::debug_span!("proxy", %side, %peer, %name, dir);
    let read = ReadConfig {
        max_body_len: cfg.max_body_len,
        max_buffered: cfg.read_chunk * 2,
        read_chunk: cfg.read_chunk,
    };
    let reader =
        |side: Side, rd: OwnedReadHalf, leftover: BytesMut, partner: &mpsc::Sender<Bytes>| Reader {
            side,
            reader: FrameReader::new(rd, leftover, read),
            batch: VecDeque::new(),
            partner: partner.clone(),
            events: events.clone(),
            shared: Arc::clone(shared),
        };
    handles.push(spawn_task(
        shared,
        reader(Side::Consumer, c_read, consumer.leftover, &to_producer)
            .run()
            .instrument(span(Side::Consumer, "consumer->producer", &consumer.peer)),
    ));
    handles.push(spawn_task(
        shared,
        reader(Side::Producer, p_read, producer.leftover, &to_consumer)
            .run()
            .instrument(span(Side::Producer, "producer->consumer", &producer.peer)),
    ));
    handles.push(spawn_task(
        shared,
        run_writer(
            Side::Consumer,
            c_write,
            consumer_rx,
            Arc::clone(shared),
            cfg,
        )
        .instrument(span(Side::Consumer, "write", &consumer.peer)),
    ));
    handles.push(spawn_task(
        shared,
        run_writer(
            Side::Producer,
            p_write,
            producer_rx,
            Arc::clone(shared),
            cfg,
        )
        .instrument(span(Side::Producer, "write", &producer.peer)),
    ));
    PairTasks {
        handles,
        to_consumer,
        to_producer,
    }
}

/// Runs a socket task; its failure tears the pair down. The task itself watches
/// the teardown token and ends within [`TEARDOWN_FLUSH`] of it; dropping its future
/// drops (and so closes) its socket half.
fn spawn_task<F>(shared: &Arc<PairShared>, fut: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), IoFailure>> + Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(f) = fut.await {
            shared.fail(f);
        }
    })
}

/// Why a reader's loop ended.
enum Stop {
    /// The pair is being torn down by someone else.
    Teardown,
    /// This task failed.
    Fail(IoFailure),
}

impl From<IoFailure> for Stop {
    fn from(f: IoFailure) -> Self {
        Stop::Fail(f)
    }
}

struct Reader {
    side: Side,
    reader: FrameReader<OwnedReadHalf>,
    /// Whole frames read and not yet handed to the partner's writer: chunks of the
    /// read buffer, oldest first (usually one per read).
    batch: VecDeque<Bytes>,
    partner: mpsc::Sender<Bytes>,
    events: mpsc::Sender<ReaderEvent>,
    shared: Arc<PairShared>,
}

impl Reader {
    async fn run(mut self) -> Result<(), IoFailure> {
        let stop = self.read_loop().await;
        // Frames already read still reach the other node (bounded), also when this
        // socket failed: e.g. the STREAM_END read just before the producer's EOF.
        if !self.batch.is_empty() && self.shared.flushes_on_teardown() {
            let partner = &self.partner;
            let last = std::mem::take(&mut self.batch);
            let send_all = async move {
                for chunk in last {
                    if partner.send(chunk).await.is_err() {
                        return;
                    }
                }
            };
            if tokio::time::timeout(TEARDOWN_FLUSH, send_all)
                .await
                .is_err()
            {
                debug!(side = %self.side, "teardown: partner queue full, frames dropped");
            }
        }
        match stop {
            Stop::Teardown => Ok(()),
            Stop::Fail(f) => Err(f),
        }
    }

    async fn read_loop(&mut self) -> Stop {
        loop {
            let mut frames = 0usize;
            loop {
                // The common case: a run of frames that are only forwarded, handed
                // on as one chunk of the read buffer (no copy, no per-frame object).
                let side = self.side;
                match self.reader.take_run(|h| forwards(side, h)) {
                    Ok((run, n)) => {
                        frames += n;
                        self.push(run);
                    }
                    Err(e) => return Stop::Fail(decode_failure(self.side, &e)),
                }
                let frame = match self.reader.next_buffered() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Stop::Fail(decode_failure(self.side, &e)),
                };
                frames += 1;
                if let Err(stop) = self.route(frame).await {
                    return stop;
                }
            }
            if frames > 0 {
                self.shared.liveness.touch(self.side);
            }
            // One write per read (MB-38984); awaiting capacity here is the back-pressure.
            if let Err(stop) = self.flush().await {
                return stop;
            }
            tokio::select! {
                biased;
                () = self.shared.teardown.cancelled() => return Stop::Teardown,
                r = self.reader.fill() => match r {
                    Ok(_) => {}
                    Err(ReadError::Closed) => return Stop::Fail(IoFailure::Eof(self.side)),
                    Err(ReadError::Io(e)) => return Stop::Fail(IoFailure::io(self.side, e)),
                    Err(ReadError::Decode(e)) => return Stop::Fail(decode_failure(self.side, &e)),
                },
            }
        }
    }

    async fn route(&mut self, frame: mcbp::Frame) -> Result<(), Stop> {
        let side = self.side;
        match side {
            Side::Consumer => match route_from_consumer(frame.magic(), frame.opcode()) {
                Route::Forward => self.push(frame.into_bytes()),
                Route::Core => {
                    self.flush().await?;
                    let (ack, acked) = oneshot::channel();
                    self.notify(Event::FromConsumer(frame), Some(ack)).await?;
                    tokio::select! {
                        biased;
                        () = self.shared.teardown.cancelled() => return Err(Stop::Teardown),
                        r = acked => r.map_err(|_| IoFailure::ActorGone(side))?,
                    }
                }
            },
            Side::Producer => match classify_from_producer(&frame) {
                ProducerDecision::Forward => self.push(frame.into_bytes()),
                ProducerDecision::NotifyThenForward(event) => {
                    self.notify(event, None).await?;
                    self.push(frame.into_bytes());
                }
                ProducerDecision::NotifyAndDrop(event) => self.notify(event, None).await?,
            },
        }
        Ok(())
    }

    async fn notify(&self, event: Event, ack: Option<oneshot::Sender<()>>) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.shared.teardown.cancelled() => Err(Stop::Teardown),
            r = self.events.send(ReaderEvent { event, ack }) => {
                r.map_err(|_| Stop::Fail(IoFailure::ActorGone(self.side)))
            }
        }
    }

    /// Appends whole frames to the batch.
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.batch.push_back(chunk);
        }
    }

    /// Hands the batch to the partner's writer, chunk by chunk, waiting for room
    /// (back-pressure).
    async fn flush(&mut self) -> Result<(), Stop> {
        // A chunk leaves the batch only once handed on: what was not stays for the
        // teardown flush.
        while let Some(chunk) = self.batch.front() {
            self.send(chunk.clone()).await?;
            self.batch.pop_front();
        }
        Ok(())
    }

    /// Hands one chunk to the partner's writer, waiting for room (back-pressure);
    /// meanwhile the socket's pending error is polled, so a reset is not missed.
    async fn send(&self, chunk: Bytes) -> Result<(), Stop> {
        // Usually there is room: no timer for the common case.
        match self.partner.try_reserve() {
            Ok(permit) => {
                permit.send(chunk);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(Stop::Fail(IoFailure::ActorGone(self.side)));
            }
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        let mut probe = tokio::time::interval_at(Instant::now() + STALL_PROBE, STALL_PROBE);
        loop {
            tokio::select! {
                biased;
                () = self.shared.teardown.cancelled() => return Err(Stop::Teardown),
                permit = self.partner.reserve() => {
                    let permit = permit.map_err(|_| IoFailure::ActorGone(self.side))?;
                    permit.send(chunk);
                    return Ok(());
                }
                _ = probe.tick() => {
                    match self.reader.get_ref().as_ref().take_error() {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => {
                            return Err(Stop::Fail(IoFailure::io(self.side, e)));
                        }
                    }
                }
            }
        }
    }
}

/// Whether a frame read from `side` is only forwarded, by its header alone (the
/// core's routing tables); the others go through [`Reader::route`].
fn forwards(side: Side, h: &mcbp::Header) -> bool {
    let route = match side {
        Side::Consumer => route_from_consumer(h.magic, h.opcode()),
        Side::Producer => route_from_producer(h.magic, h.opcode()),
    };
    route == Route::Forward
}

fn decode_failure(side: Side, e: &DecodeError) -> IoFailure {
    IoFailure::Decode(side, e.clone())
}

/// Writes queued batches; a write without progress for the stall bound fails the
/// pair. On teardown after a failure, writes what is still queued for at most
/// [`TEARDOWN_FLUSH`]. One batch at a time leaves the channel, so the channel's bound
/// is the memory bound.
async fn run_writer(
    side: Side,
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<PairShared>,
    cfg: ProxyConfig,
) -> Result<(), IoFailure> {
    let mut w = FrameWriter::new(wr, usize::MAX, cfg.write_stall_timeout);
    loop {
        if w.is_empty() {
            tokio::select! {
                biased;
                () = shared.teardown.cancelled() => break,
                b = rx.recv() => match b {
                    Some(b) => w.queue(b),
                    None => return Ok(()),
                },
            }
            continue;
        }
        tokio::select! {
            biased;
            () = shared.teardown.cancelled() => break,
            r = w.write_some() => {
                r.map_err(|e| write_failure(side, e, cfg.write_stall_timeout))?;
            }
        }
    }
    if !shared.flushes_on_teardown() {
        return Ok(());
    }
    let drain = async {
        loop {
            if w.is_empty() {
                match rx.recv().await {
                    Some(b) => w.queue(b),
                    None => return,
                }
            } else if let Err(e) = w.write_some().await {
                debug!(%side, error = %e, "teardown flush failed");
                return;
            }
        }
    };
    if tokio::time::timeout(TEARDOWN_FLUSH, drain).await.is_err() {
        debug!(%side, "teardown flush cut at its bound");
    }
    Ok(())
}

fn write_failure(side: Side, e: WriteError, stall: Duration) -> IoFailure {
    match e {
        WriteError::Stalled(_) => IoFailure::WriteStalled(side, stall),
        WriteError::Closed => IoFailure::io(
            side,
            std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0"),
        ),
        WriteError::Io(e) => IoFailure::io(side, e),
    }
}
