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
//!   read go to the partner's writer as one batch, written with one write (MB-38984).
//!   Frames the core must see are queued to the replicator actor *before* anything
//!   after them is forwarded (register-before-forward, §2.4):
//!   - consumer side: the reader flushes the batch so far, queues the frame to the
//!     actor and waits for the actor's acknowledgement (the actor forwards such
//!     frames itself, so per-direction order is kept);
//!   - producer side: the reader queues the event, then appends the frame to its
//!     batch (or drops it: CLOSE_STREAM answers are ours).
//! * Any task failing (EOF, I/O error, decode error) records the first failure and
//!   cancels the pair's teardown token: every task stops at once (a blocked write is
//!   cancelled with it), the sockets are dropped, and the actor fails what is pending.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcbp::{DecodeError, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, Instrument};

use crate::core::{
    classify_from_producer, route_from_consumer, Event, ProducerDecision, Route, Side,
};
use crate::error::{Peers, ReplError};
use crate::io::connect::Connected;

/// Tuning of the socket tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Batches queued per writer before the sources stop reading.
    pub channel_batches: usize,
    /// Bytes reserved per socket read.
    pub read_chunk: usize,
    /// Largest frame body accepted (§3.1 IMPROVE: a cap, failing the pair beyond it).
    pub max_body_len: usize,
}

impl Default for ProxyConfig {
    /// 16 batches, 64 KiB reads (§12 socket buffers), mcbp's default body cap.
    fn default() -> Self {
        ProxyConfig {
            channel_batches: 16,
            read_chunk: 64 * 1024,
            max_body_len: mcbp::DEFAULT_MAX_BODY_LEN,
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

/// Why a socket task stopped the pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IoFailure {
    /// The node closed its socket.
    Eof(Side),
    /// Reading or writing failed.
    Io(Side, String),
    /// The byte stream cannot be framed (or a frame exceeds the cap).
    Decode(Side, String),
    /// The actor went away (only during teardown).
    ActorGone(Side),
}

impl IoFailure {
    pub(crate) fn side(&self) -> Side {
        match self {
            IoFailure::Eof(s)
            | IoFailure::Io(s, _)
            | IoFailure::Decode(s, _)
            | IoFailure::ActorGone(s) => *s,
        }
    }

    pub(crate) fn to_repl_error(&self, peers: &Peers) -> ReplError {
        let side = self.side();
        let peer = peers.of(side).to_string();
        match self {
            IoFailure::Eof(_) => ReplError::ConnectionClosed {
                side,
                peer,
                detail: Some("closed by peer".into()),
            },
            IoFailure::Io(_, e) => ReplError::ConnectionClosed {
                side,
                peer,
                detail: Some(e.clone()),
            },
            IoFailure::Decode(_, e) => ReplError::Protocol {
                side,
                peer,
                vb: None,
                opaque: None,
                detail: format!("corrupt stream: {e}"),
            },
            IoFailure::ActorGone(_) => ReplError::Interrupted,
        }
    }
}

/// State shared by the pair's tasks and the actor.
#[derive(Debug)]
pub(crate) struct PairShared {
    /// Cancelled by whoever tears the pair down first.
    pub(crate) teardown: CancellationToken,
    failure: Mutex<Option<IoFailure>>,
    /// Mirrors `ConsumerConn::forwards_consumer_traffic` (false once shut).
    pub(crate) consumer_forwarding: AtomicBool,
    pub(crate) liveness: Liveness,
}

impl PairShared {
    pub(crate) fn new() -> Arc<PairShared> {
        Arc::new(PairShared {
            teardown: CancellationToken::new(),
            failure: Mutex::new(None),
            consumer_forwarding: AtomicBool::new(true),
            liveness: Liveness::new(),
        })
    }

    /// Records the first failure and tears the pair down.
    fn fail(&self, f: IoFailure) {
        if let Ok(mut slot) = self.failure.lock() {
            if slot.is_none() && !self.teardown.is_cancelled() {
                debug!(side = %f.side(), failure = ?f, "socket task failed");
                *slot = Some(f);
            }
        }
        self.teardown.cancel();
    }

    pub(crate) fn take_failure(&self) -> Option<IoFailure> {
        self.failure.lock().ok().and_then(|mut s| s.take())
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
    handles.push(spawn_guarded(
        shared,
        run_reader(
            Side::Consumer,
            c_read,
            consumer.leftover,
            to_producer.clone(),
            events.clone(),
            Arc::clone(shared),
            cfg,
        )
        .instrument(span(Side::Consumer, "consumer->producer", &consumer.peer)),
    ));
    handles.push(spawn_guarded(
        shared,
        run_reader(
            Side::Producer,
            p_read,
            producer.leftover,
            to_consumer.clone(),
            events.clone(),
            Arc::clone(shared),
            cfg,
        )
        .instrument(span(Side::Producer, "producer->consumer", &producer.peer)),
    ));
    handles.push(spawn_guarded(
        shared,
        run_writer(Side::Consumer, c_write, consumer_rx).instrument(span(
            Side::Consumer,
            "write",
            &consumer.peer,
        )),
    ));
    handles.push(spawn_guarded(
        shared,
        run_writer(Side::Producer, p_write, producer_rx).instrument(span(
            Side::Producer,
            "write",
            &producer.peer,
        )),
    ));
    PairTasks {
        handles,
        to_consumer,
        to_producer,
    }
}

/// Runs a socket task until it fails or the pair is torn down; dropping the future
/// drops (and so closes) its socket half, cancelling any blocked write.
fn spawn_guarded<F>(shared: &Arc<PairShared>, fut: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), IoFailure>> + Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        tokio::select! {
            biased;
            () = shared.teardown.cancelled() => {}
            r = fut => {
                if let Err(f) = r {
                    shared.fail(f);
                }
            }
        }
    })
}

async fn flush(
    side: Side,
    batch: &mut BytesMut,
    partner: &mpsc::Sender<Bytes>,
) -> Result<(), IoFailure> {
    if batch.is_empty() {
        return Ok(());
    }
    partner
        .send(batch.split().freeze())
        .await
        .map_err(|_| IoFailure::ActorGone(side))
}

async fn run_reader(
    side: Side,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    partner: mpsc::Sender<Bytes>,
    events: mpsc::Sender<ReaderEvent>,
    shared: Arc<PairShared>,
    cfg: ProxyConfig,
) -> Result<(), IoFailure> {
    let decoder = FrameDecoder::new(cfg.max_body_len);
    let mut batch = BytesMut::new();
    loop {
        let mut frames = 0usize;
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(decode_failure(side, &e)),
            };
            frames += 1;
            match side {
                Side::Consumer => match route_from_consumer(frame.magic(), frame.opcode()) {
                    Route::Forward => {
                        if shared.consumer_forwarding.load(Ordering::Acquire) {
                            batch.extend_from_slice(frame.bytes());
                        } else {
                            trace!(opcode = %frame.opcode(), "shut: dropping consumer frame");
                        }
                    }
                    Route::Core => {
                        flush(side, &mut batch, &partner).await?;
                        let (ack, acked) = oneshot::channel();
                        events
                            .send(ReaderEvent {
                                event: Event::FromConsumer(frame),
                                ack: Some(ack),
                            })
                            .await
                            .map_err(|_| IoFailure::ActorGone(side))?;
                        acked.await.map_err(|_| IoFailure::ActorGone(side))?;
                    }
                },
                Side::Producer => match classify_from_producer(&frame) {
                    ProducerDecision::Forward => batch.extend_from_slice(frame.bytes()),
                    ProducerDecision::NotifyThenForward(event) => {
                        events
                            .send(ReaderEvent { event, ack: None })
                            .await
                            .map_err(|_| IoFailure::ActorGone(side))?;
                        batch.extend_from_slice(frame.bytes());
                    }
                    ProducerDecision::NotifyAndDrop(event) => {
                        events
                            .send(ReaderEvent { event, ack: None })
                            .await
                            .map_err(|_| IoFailure::ActorGone(side))?;
                    }
                },
            }
        }
        if frames > 0 {
            shared.liveness.touch(side);
        }
        // One write per read (MB-38984); awaiting capacity here is the back-pressure.
        flush(side, &mut batch, &partner).await?;
        if buf.capacity() - buf.len() < cfg.read_chunk / 2 {
            buf.reserve(cfg.read_chunk);
        }
        let n = rd
            .read_buf(&mut buf)
            .await
            .map_err(|e| IoFailure::Io(side, e.to_string()))?;
        if n == 0 {
            return Err(IoFailure::Eof(side));
        }
    }
}

fn decode_failure(side: Side, e: &DecodeError) -> IoFailure {
    IoFailure::Decode(side, e.to_string())
}

async fn run_writer(
    side: Side,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), IoFailure> {
    while let Some(b) = rx.recv().await {
        wr.write_all(&b)
            .await
            .map_err(|e| IoFailure::Io(side, e.to_string()))?;
    }
    Ok(())
}
