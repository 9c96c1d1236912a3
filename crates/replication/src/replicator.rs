//! The replicator (`replication-layer.md` §7): one per (bucket, producer node,
//! connection index) on the consumer node. It owns a proxy pair and the
//! [`ConsumerConn`] state machine, in one actor task (§2.4); [`Replicator`] is its
//! handle (mpsc commands, oneshot replies, watch channels for state).
//!
//! * Every operation is bounded: set-ups, closes, takeovers and shuts by the core's
//!   timeouts ([`CoreConfig`]), connection set-up by `connect_timeout`.
//! * [`Replicator::get_partitions`] reads a watch channel the actor updates after
//!   every event: it never waits behind a set-up or takeover (§7.5 IMPROVE MUST).
//! * Either socket failing, a protocol error or a timeout tears the pair down: both
//!   sockets are closed, every pending caller gets the typed error, and
//!   [`Replicator::closed`] resolves with it. A replicator is never restarted; start
//!   a new one (its DCP_OPEN replaces the old connection on the node, §4.4).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kv_client::{Client, ClientConfig, ClientError, Credentials};
use mcbp::{Status, Vbid};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::core::{
    connection_name, Action, ConsumerConn, CoreConfig, Event, Outcome, Phase, ReplyTo, SetupError,
    Side,
};
use crate::error::{Peers, ReplError, WaitFor};
use crate::io::connect::{connect_half, HalfConfig};
use crate::io::proxy::{
    spawn_pair, IoFailure, Liveness, PairShared, ProxyConfig, ReaderEvent, TEARDOWN_FLUSH,
};

/// Default bound on a half's connection set-up (§11.1: much lower than 180 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on a graceful shut (CLI default `--shut-timeout`).
pub const DEFAULT_SHUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `dcp_move_done_limit` (§7.7).
pub const DEFAULT_DONE_LIMIT: u64 = 1000;
/// Data-move poll interval (§7.7).
pub const DATA_MOVE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a replicator needs (§7.1).
#[derive(Clone, Debug)]
pub struct ReplicatorConfig {
    /// The consumer node's KV address (the local node).
    pub consumer_addr: String,
    /// The producer node's KV address (the remote node).
    pub producer_addr: String,
    /// The bucket.
    pub bucket: String,
    /// SASL PLAIN credentials for both nodes.
    pub credentials: Credentials,
    /// The consumer node's name (connection name, `consumer_name`).
    pub consumer_node: String,
    /// The producer node's name (connection name).
    pub producer_node: String,
    /// Connection index (0-based; `/N` suffix for N > 0).
    pub connection_index: u32,
    /// Request SNAPPY in HELLO.
    pub snappy: bool,
    /// Operation bounds. `shut_timeout` is replaced by [`Self::shut_timeout`].
    pub core: CoreConfig,
    /// Bound on each half's connection set-up step.
    pub connect_timeout: Duration,
    /// Bound on a graceful shut (`dcp_shut_consumer`).
    pub shut_timeout: Duration,
    /// Socket task tuning.
    pub proxy: ProxyConfig,
    /// The DCP connection name to use instead of the regular one derived from the
    /// node names (a takeover connection of a vbucket move, §4.3).
    pub name: Option<String>,
}

impl ReplicatorConfig {
    /// A configuration with defaults: node names = addresses, index 0, no snappy,
    /// default core bounds, [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_SHUT_TIMEOUT`].
    #[must_use]
    pub fn new(
        consumer_addr: impl Into<String>,
        producer_addr: impl Into<String>,
        bucket: impl Into<String>,
        credentials: Credentials,
    ) -> ReplicatorConfig {
        let consumer_addr = consumer_addr.into();
        let producer_addr = producer_addr.into();
        ReplicatorConfig {
            consumer_node: consumer_addr.clone(),
            producer_node: producer_addr.clone(),
            consumer_addr,
            producer_addr,
            bucket: bucket.into(),
            credentials,
            connection_index: 0,
            snappy: false,
            core: CoreConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shut_timeout: DEFAULT_SHUT_TIMEOUT,
            proxy: ProxyConfig::default(),
            name: None,
        }
    }

    /// This replicator's DCP connection name (§4.3).
    #[must_use]
    pub fn connection_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        connection_name(
            &self.consumer_node,
            &self.producer_node,
            &self.bucket,
            self.connection_index,
        )
    }

    fn half(&self, side: Side, name: &str) -> HalfConfig {
        HalfConfig {
            side,
            addr: match side {
                Side::Consumer => self.consumer_addr.clone(),
                Side::Producer => self.producer_addr.clone(),
            },
            bucket: self.bucket.clone(),
            credentials: self.credentials.clone(),
            connection_name: name.to_string(),
            consumer_node: self.consumer_node.clone(),
            snappy: self.snappy,
            timeout: self.connect_timeout,
            max_body_len: self.proxy.max_body_len,
        }
    }
}

/// A point-in-time view of a replicator, served without waiting (§7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatorState {
    /// Vbuckets with an established replication stream.
    pub partitions: BTreeSet<Vbid>,
    /// The consumer half's state.
    pub phase: Phase,
}

type Reply = oneshot::Sender<Result<(), ReplError>>;

#[derive(Debug)]
enum Command {
    Setup { want: BTreeSet<Vbid>, reply: Reply },
    Takeover { vb: Vbid, reply: Reply },
    Shut { reply: Reply },
}

impl Command {
    fn fail(self, e: ReplError) {
        let (Command::Setup { reply, .. }
        | Command::Takeover { reply, .. }
        | Command::Shut { reply }) = self;
        let _ = reply.send(Err(e));
    }
}

/// A handle to a running replicator. Cloning shares the replicator; when the last
/// handle is dropped the replicator stops (sockets closed, nothing graceful).
#[derive(Clone, Debug)]
pub struct Replicator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    state: watch::Receiver<ReplicatorState>,
    done: watch::Receiver<Option<Result<(), ReplError>>>,
    liveness: Liveness,
    config: ReplicatorConfig,
    name: String,
    peers: Peers,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Replicator {
    /// Connects the consumer half, then the producer half (§7.1; each step bounded
    /// by `connect_timeout`), and starts the actor and the socket tasks.
    ///
    /// Cancel-safe: dropping the future closes whatever was connected.
    ///
    /// # Errors
    /// [`ReplError::Connect`] naming the side, peer and stage.
    pub async fn start(mut config: ReplicatorConfig) -> Result<Replicator, ReplError> {
        config.core.shut_timeout = config.shut_timeout;
        let name = config.connection_name();
        let consumer = connect_half(&config.half(Side::Consumer, &name)).await?;
        let producer = connect_half(&config.half(Side::Producer, &name)).await?;
        let peers = Peers {
            consumer: consumer.peer.clone(),
            producer: producer.peer.clone(),
        };
        let shared = PairShared::new();
        let (events_tx, events_rx) = mpsc::channel(64);
        let tasks = spawn_pair(consumer, producer, &events_tx, &shared, config.proxy, &name);
        // Only the readers queue events.
        drop(events_tx);
        let (cmd_tx, cmd_rx) = mpsc::channel(32);
        let stop = CancellationToken::new();
        let (state_tx, state_rx) = watch::channel(ReplicatorState {
            partitions: BTreeSet::new(),
            phase: Phase::Idle,
        });
        let (done_tx, done_rx) = watch::channel(None);
        let actor = Actor {
            core: ConsumerConn::new(config.core),
            events: events_rx,
            commands: cmd_rx,
            stop: stop.clone(),
            shared: Arc::clone(&shared),
            to_consumer: Some(tasks.to_consumer),
            to_producer: Some(tasks.to_producer),
            outbound: [VecDeque::new(), VecDeque::new()],
            held_acks: Vec::new(),
            deferred: VecDeque::new(),
            tasks: tasks.handles,
            pending: HashMap::new(),
            next_reply: 1,
            state: state_tx,
            peers: peers.clone(),
            finished: None,
            shutting: false,
        };
        let span = tracing::info_span!("replicator", %name);
        tokio::spawn(
            async move {
                let end = actor.run().await;
                let _ = done_tx.send(Some(end));
            }
            .instrument(span),
        );
        info!(%name, consumer = %peers.consumer, producer = %peers.producer, "replicator started");
        Ok(Replicator {
            inner: Arc::new(Inner {
                commands: cmd_tx,
                stop,
                state: state_rx,
                done: done_rx,
                liveness: shared.liveness.clone(),
                config,
                name,
                peers,
            }),
        })
    }

    /// Makes the set of established streams equal to `vbuckets` (§7.2): adds and
    /// closes streams, and answers once every command was answered.
    ///
    /// # Errors
    /// [`ReplError::StreamsFailed`] (pair stays up) or a teardown error
    /// ([`ReplError::UnexpectedStreamEnd`], [`ReplError::Timeout`],
    /// [`ReplError::ConnectionClosed`], [`ReplError::Protocol`]), [`ReplError::Busy`],
    /// [`ReplError::Shut`], [`ReplError::Interrupted`].
    pub async fn setup_replication(
        &self,
        vbuckets: impl IntoIterator<Item = Vbid>,
    ) -> Result<(), ReplError> {
        let want: BTreeSet<Vbid> = vbuckets.into_iter().collect();
        let waiting_for = if want.is_subset(&self.get_partitions()) {
            WaitFor::CloseStream
        } else {
            WaitFor::AddStream
        };
        self.call(waiting_for, |reply| Command::Setup { want, reply })
            .await
    }

    /// Takes `vb` over (§7.3): closes its replication stream on both sides
    /// (`maybe_close_stream`) and fails if that close failed (IMPROVE), then runs the
    /// takeover stream until the consumer node acknowledged SET_VBUCKET_STATE(active)
    /// and our takeover ADD_STREAM.
    ///
    /// # Errors
    /// As [`Self::setup_replication`], plus [`ReplError::TakeoverFailed`].
    pub async fn takeover(&self, vb: Vbid) -> Result<(), ReplError> {
        self.call(WaitFor::Takeover, |reply| Command::Takeover { vb, reply })
            .await
    }

    /// Graceful stop (§7.4 `shutdown`): closes every stream on the consumer node only
    /// (MB-16064), bounded by the shut timeout, then stops both halves. A set-up in
    /// flight is answered with [`ReplError::Interrupted`]; a takeover in flight is
    /// not graceful-closable (the core answers the shut with [`ReplError::Busy`]), so
    /// the pair is then stopped at once and the takeover gets `Interrupted`.
    /// [`Self::closed`] then resolves with `Ok(())` whatever the shut's outcome.
    ///
    /// # Errors
    /// The shut's own failure (timeout, close failures, connection lost); the
    /// replicator is stopped either way.
    pub async fn shut(&self) -> Result<(), ReplError> {
        let bound = self.inner.config.shut_timeout + Duration::from_secs(1);
        let shut = self.call_unbounded(|reply| Command::Shut { reply });
        match tokio::time::timeout(bound, shut).await {
            Ok(r) => r,
            Err(_) => {
                warn!(name = %self.inner.name, "shut overran its bound; stopping abruptly");
                self.abort();
                Err(ReplError::Timeout {
                    waiting_for: WaitFor::Shut,
                    vbuckets: self.get_partitions().into_iter().collect(),
                    peer: Some(self.inner.peers.consumer.clone()),
                })
            }
        }
    }

    /// Abrupt stop (§7.4 other reasons): both sockets are closed at once, pending
    /// callers get [`ReplError::Interrupted`], [`Self::closed`] resolves `Ok(())`.
    pub fn abort(&self) {
        self.inner.stop.cancel();
    }

    /// The vbuckets with an established stream, served from state immediately, even
    /// during a set-up or takeover (§7.5 IMPROVE MUST).
    #[must_use]
    pub fn get_partitions(&self) -> BTreeSet<Vbid> {
        self.inner.state.borrow().partitions.clone()
    }

    /// Partitions and phase, served from state immediately.
    #[must_use]
    pub fn state(&self) -> ReplicatorState {
        self.inner.state.borrow().clone()
    }

    /// A watch of [`ReplicatorState`], updated after every event.
    #[must_use]
    pub fn watch_state(&self) -> watch::Receiver<ReplicatorState> {
        self.inner.state.clone()
    }

    /// Resolves when the replicator has stopped and both sockets are closed:
    /// `Ok(())` after [`Self::shut`]/[`Self::abort`]/drop, else the error that tore it
    /// down (connection closed, unexpected stream end, timeout, protocol error).
    ///
    /// # Errors
    /// The termination reason.
    pub async fn closed(&self) -> Result<(), ReplError> {
        let mut done = self.inner.done.clone();
        let end = match done.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Err(ReplError::Interrupted)),
            Err(_) => Err(ReplError::Interrupted),
        };
        end
    }

    /// The termination reason, if the replicator has stopped.
    #[must_use]
    pub fn termination(&self) -> Option<Result<(), ReplError>> {
        self.inner.done.borrow().clone()
    }

    /// Whether the replicator is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.inner.done.borrow().is_none() && self.inner.state.borrow().phase != Phase::Closed
    }

    /// When each half last read a frame from its node (§3.3).
    #[must_use]
    pub fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    /// The DCP connection name.
    #[must_use]
    pub fn connection_name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration it was started with.
    #[must_use]
    pub fn config(&self) -> &ReplicatorConfig {
        &self.inner.config
    }

    /// The peer addresses of (consumer, producer).
    #[must_use]
    pub fn peers(&self) -> (&str, &str) {
        (&self.inner.peers.consumer, &self.inner.peers.producer)
    }

    /// Waits until the producer node's `dcp-vbtakeover` estimate of every vbucket is
    /// below `done_limit` (§7.7), polling every 100 ms over a separate connection to
    /// the producer node, bounded by `timeout`.
    ///
    /// # Errors
    /// See [`wait_for_data_move`].
    pub async fn wait_for_data_move(
        &self,
        vbuckets: &[Vbid],
        done_limit: u64,
        timeout: Duration,
    ) -> Result<(), ReplError> {
        let c = &self.inner.config;
        wait_for_data_move(&DataMoveWait {
            producer_addr: c.producer_addr.clone(),
            bucket: c.bucket.clone(),
            credentials: c.credentials.clone(),
            targets: vbuckets
                .iter()
                .map(|vb| (*vb, self.inner.name.clone()))
                .collect(),
            done_limit,
            timeout,
            poll_interval: DATA_MOVE_POLL_INTERVAL,
        })
        .await
    }

    /// Sends a command and waits for its answer, within an outer bound that only a
    /// stuck actor could exceed (the core bounds every wait on a node): twice the
    /// longest operation bound (one may be queued behind another) plus 5 s. On
    /// expiry the replicator is stopped and the caller gets a typed timeout.
    async fn call(
        &self,
        waiting_for: WaitFor,
        make: impl FnOnce(Reply) -> Command,
    ) -> Result<(), ReplError> {
        let c = &self.inner.config.core;
        let longest = c
            .setup_timeout
            .max(c.close_timeout)
            .max(c.takeover_timeout)
            .max(c.shut_timeout);
        let bound = longest.saturating_mul(2) + Duration::from_secs(5);
        match tokio::time::timeout(bound, self.call_unbounded(make)).await {
            Ok(r) => r,
            Err(_) => {
                warn!(name = %self.inner.name, %waiting_for, ?bound, "call overran its outer bound; stopping the replicator");
                self.abort();
                Err(ReplError::Timeout {
                    waiting_for,
                    vbuckets: self.get_partitions().into_iter().collect(),
                    peer: Some(self.inner.peers.consumer.clone()),
                })
            }
        }
    }

    async fn call_unbounded(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), ReplError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.send(make(tx)).await.is_err() {
            return Err(self.stopped_error().await);
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.stopped_error().await),
        }
    }

    /// The error a caller gets once the replicator has stopped.
    async fn stopped_error(&self) -> ReplError {
        match self.closed().await {
            Ok(()) => ReplError::Interrupted,
            Err(e) => e,
        }
    }
}

#[derive(Debug)]
enum Pending {
    Setup(Reply),
    Takeover(Reply),
    Shut(Reply),
}

impl Pending {
    fn into_reply(self) -> Reply {
        match self {
            Pending::Setup(r) | Pending::Takeover(r) | Pending::Shut(r) => r,
        }
    }
}

/// Why the actor stops processing.
#[derive(Debug)]
enum Exit {
    /// A socket task failed (or the pair was torn down under a send).
    Io,
    /// The owner stopped the replicator.
    Stop,
    /// The core tore the pair down.
    Fail(ReplError),
}

/// Commands waiting for the operation in flight to finish (issue #8 item 5).
const DEFERRED_CAP: usize = 32;

struct Actor {
    core: ConsumerConn,
    events: mpsc::Receiver<ReaderEvent>,
    commands: mpsc::Receiver<Command>,
    /// Set-ups and takeovers that arrived while another one ran: ordered, not refused.
    deferred: VecDeque<Command>,
    stop: CancellationToken,
    shared: Arc<PairShared>,
    /// `None` once teardown began (dropping them lets the writers finish early).
    to_consumer: Option<mpsc::Sender<Bytes>>,
    to_producer: Option<mpsc::Sender<Bytes>>,
    /// Frames for each writer not yet in its queue (consumer, producer). The actor
    /// never blocks on a full queue, so its deadlines keep firing (issue #8 item 3).
    outbound: [VecDeque<Bytes>; 2],
    /// Consumer-reader acknowledgements held until `outbound` is empty: the reader
    /// forwards nothing after a frame the core saw before the core's own frames.
    held_acks: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    pending: HashMap<u64, Pending>,
    next_reply: u64,
    state: watch::Sender<ReplicatorState>,
    peers: Peers,
    /// Set when a shut was answered: the actor then stops.
    finished: Option<()>,
    shutting: bool,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) -> Result<(), ReplError> {
        let exit = self.main_loop().await;
        let end = match exit {
            Exit::Stop => Ok(()),
            Exit::Io => Err(self.on_io_failure()),
            Exit::Fail(e) => Err(e),
        };
        let end = if self.shutting { Ok(()) } else { end };
        // Stop the socket tasks: after a failure they flush what was already read
        // for at most TEARDOWN_FLUSH, then close the sockets; a stop (shut, abort)
        // drops it (§5.7 Shut: consumer traffic is no longer forwarded). The
        // failure is reported first.
        if end.is_ok() {
            self.shared.skip_teardown_flush();
        }
        self.shared.teardown.cancel();
        self.to_consumer = None;
        self.to_producer = None;
        let for_pending = match &end {
            Ok(()) => ReplError::Interrupted,
            Err(e) => e.clone(),
        };
        for (_, p) in self.pending.drain() {
            let _ = p.into_reply().send(Err(for_pending.clone()));
        }
        for cmd in self.deferred.drain(..) {
            cmd.fail(for_pending.clone());
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            cmd.fail(for_pending.clone());
        }
        // A dead replicator keeps no streams (issue #8 item 10).
        self.state.send_modify(|s| {
            s.partitions.clear();
            s.phase = Phase::Closed;
        });
        match &end {
            Ok(()) => info!("replicator stopped"),
            Err(e) => warn!(error = %e, "replicator torn down"),
        }
        let bound = Instant::now() + TEARDOWN_FLUSH * 3;
        for h in self.tasks.drain(..) {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(bound, h).await.is_err() {
                abort.abort();
            }
        }
        end
    }

    async fn main_loop(&mut self) -> Exit {
        loop {
            let deadline = self.core.next_deadline();
            let quiet = self.outbound.iter().all(VecDeque::is_empty);
            let (Some(to_consumer), Some(to_producer)) = (&self.to_consumer, &self.to_producer)
            else {
                return Exit::Io;
            };
            let (to_consumer, to_producer) = (to_consumer.clone(), to_producer.clone());
            let r = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Exit::Stop,
                () = self.shared.teardown.cancelled() => return Exit::Io,
                () = sleep_until_opt(deadline) => self.feed(Event::Timeout, None),
                permit = to_consumer.reserve(), if !self.outbound[0].is_empty() => {
                    self.send_queued(0, permit.ok())
                }
                permit = to_producer.reserve(), if !self.outbound[1].is_empty() => {
                    self.send_queued(1, permit.ok())
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => self.feed(ev.event, ev.ack),
                    None => return Exit::Io,
                },
                cmd = self.commands.recv(), if quiet && self.deferred.len() < DEFERRED_CAP => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return Exit::Stop,
                },
            };
            if let Err(exit) = r {
                return exit;
            }
            if self.finished.is_some() {
                return Exit::Stop;
            }
            if self.outbound.iter().all(VecDeque::is_empty) {
                for ack in self.held_acks.drain(..) {
                    let _ = ack.send(());
                }
                if self.core.phase() == Phase::Idle {
                    if let Some(cmd) = self.deferred.pop_front() {
                        if let Err(exit) = self.start_command(cmd) {
                            return exit;
                        }
                    }
                }
            }
        }
    }

    /// Moves the oldest queued frame of one side (0 consumer, 1 producer) into the
    /// room a writer made; no room means the writer is gone.
    fn send_queued(
        &mut self,
        side: usize,
        permit: Option<mpsc::Permit<'_, Bytes>>,
    ) -> Result<(), Exit> {
        let permit = permit.ok_or(Exit::Io)?;
        if let Some(b) = self.outbound[side].pop_front() {
            permit.send(b);
        }
        Ok(())
    }

    /// A set-up or takeover waits for the one in flight; a shut goes straight in
    /// (it supersedes a set-up, §5.6).
    fn on_command(&mut self, cmd: Command) -> Result<(), Exit> {
        let busy = matches!(self.core.phase(), Phase::Setup | Phase::Takeover)
            || !self.deferred.is_empty();
        match cmd {
            Command::Setup { .. } | Command::Takeover { .. } if busy => {
                debug!(phase = ?self.core.phase(), queued = self.deferred.len() + 1, "operation queued behind the one in flight");
                self.deferred.push_back(cmd);
                Ok(())
            }
            cmd => self.start_command(cmd),
        }
    }

    fn start_command(&mut self, cmd: Command) -> Result<(), Exit> {
        let id = self.next_reply;
        self.next_reply += 1;
        let event = match cmd {
            Command::Setup { want, reply } => {
                self.pending.insert(id, Pending::Setup(reply));
                Event::SetupStreams {
                    want,
                    reply: ReplyTo(id),
                }
            }
            // The core closes an open replication stream of `vb` first (§7.3).
            Command::Takeover { vb, reply } => {
                self.pending.insert(id, Pending::Takeover(reply));
                Event::Takeover {
                    vb,
                    reply: ReplyTo(id),
                }
            }
            Command::Shut { reply } => {
                self.shutting = true;
                self.pending.insert(id, Pending::Shut(reply));
                Event::Shut { reply: ReplyTo(id) }
            }
        };
        self.feed(event, None)
    }

    /// Hands one event to the core and performs its actions in order.
    fn feed(&mut self, event: Event, ack: Option<oneshot::Sender<()>>) -> Result<(), Exit> {
        let actions = self.core.handle(now(), event);
        self.publish();
        self.perform(actions)?;
        if let Some(ack) = ack {
            self.held_acks.push(ack);
        }
        Ok(())
    }

    fn publish(&mut self) {
        let phase = self.core.phase();
        let partitions = self.core.partitions();
        self.state.send_if_modified(|s| {
            if s.phase == phase && s.partitions == partitions {
                false
            } else {
                s.phase = phase;
                s.partitions = partitions;
                true
            }
        });
    }

    /// Queues the core's frames for the writers (sent from the main loop as room
    /// appears) and delivers replies, in order.
    fn perform(&mut self, actions: Vec<Action>) -> Result<(), Exit> {
        let mut close = None;
        for action in actions {
            match action {
                Action::ForwardToProducer(f) | Action::SendToProducer(f) => {
                    self.outbound[1].push_back(f.into_bytes());
                }
                Action::SendToConsumer(f) => self.outbound[0].push_back(f.into_bytes()),
                Action::Reply(to, result) => self.reply(to, result, None),
                Action::Close(e) => {
                    debug!(error = %e, "core tears the pair down");
                    close.get_or_insert_with(|| ReplError::from_conn(&e, &self.peers));
                }
            }
        }
        match close {
            Some(e) => Err(Exit::Fail(e)),
            None => Ok(()),
        }
    }

    /// Delivers a core reply. `closed_as` replaces a bare "connection closed" error by
    /// the precise I/O failure during teardown.
    fn reply(
        &mut self,
        to: ReplyTo,
        result: Result<Outcome, SetupError>,
        closed_as: Option<&ReplError>,
    ) {
        let Some(p) = self.pending.remove(&to.0) else {
            debug!(reply = to.0, ?result, "reply for nobody");
            return;
        };
        let result = result
            .map(drop)
            .map_err(|e| ReplError::from_setup(e, &self.peers).or_precise(closed_as));
        match p {
            Pending::Shut(reply) => {
                self.finished = Some(());
                let _ = reply.send(result);
            }
            Pending::Setup(reply) | Pending::Takeover(reply) => {
                let _ = reply.send(result);
            }
        }
    }

    /// A socket task failed: the events its reader queued before the failure are
    /// still delivered to the core (a STREAM_END read just before EOF must fail the
    /// set-up as an unexpected stream end), without any I/O; then the core learns the
    /// socket closed. Returns the termination reason.
    fn on_io_failure(&mut self) -> ReplError {
        let failure = self.shared.take_failure();
        let mut first: Option<ReplError> = None;
        while let Ok(ev) = self.events.try_recv() {
            let actions = self.core.handle(now(), ev.event);
            self.perform_offline(actions, None, &mut first);
        }
        let precise = failure.as_ref().map(|f| ReplError::from_io(f, &self.peers));
        let side = failure.as_ref().map_or(Side::Consumer, IoFailure::side);
        let actions = self.core.handle(now(), Event::ConnectionClosed { side });
        self.perform_offline(actions, precise.as_ref(), &mut first);
        self.publish();
        first.or(precise).unwrap_or(ReplError::Interrupted)
    }

    fn perform_offline(
        &mut self,
        actions: Vec<Action>,
        closed_as: Option<&ReplError>,
        first: &mut Option<ReplError>,
    ) {
        for action in actions {
            match action {
                Action::Reply(to, result) => self.reply(to, result, closed_as),
                Action::Close(e) => {
                    if first.is_none() {
                        *first = Some(ReplError::from_conn(&e, &self.peers).or_precise(closed_as));
                    }
                }
                Action::ForwardToProducer(_)
                | Action::SendToProducer(_)
                | Action::SendToConsumer(_) => {}
            }
        }
    }
}

/// A `dcp-vbtakeover` wait (§7.7) against one producer node.
#[derive(Clone, Debug)]
pub struct DataMoveWait {
    /// The producer node's KV address.
    pub producer_addr: String,
    /// The bucket.
    pub bucket: String,
    /// Credentials (the stats group needs an admin user).
    pub credentials: Credentials,
    /// (vbucket, DCP connection name) pairs to wait for.
    pub targets: Vec<(Vbid, String)>,
    /// Done when `estimate < done_limit` (default 1000).
    pub done_limit: u64,
    /// Bound on the whole wait.
    pub timeout: Duration,
    /// Poll interval (100 ms).
    pub poll_interval: Duration,
}

/// Polls the producer node's `dcp-vbtakeover <vb> <conn>` stat on a separate
/// connection (no DCP_OPEN) until every estimate is below the done limit (§7.7):
/// `calculating-item-count` polls again; `backfilling`/`in-memory` compare the
/// estimate; any other status, or NOT_MY_VBUCKET (`no_status_stat_seen`), fails.
///
/// # Errors
/// [`ReplError::UnexpectedStatus`], [`ReplError::Timeout`] (`data_move`) naming the
/// vbuckets not caught up, or [`ReplError::Node`] for a failed call.
pub async fn wait_for_data_move(w: &DataMoveWait) -> Result<(), ReplError> {
    let deadline = Instant::now() + w.timeout;
    let mut pending: BTreeMap<Vbid, String> = w.targets.iter().cloned().collect();
    let timeout_err = |pending: &BTreeMap<Vbid, String>| ReplError::Timeout {
        waiting_for: WaitFor::DataMove,
        vbuckets: pending.keys().copied().collect(),
        peer: Some(w.producer_addr.clone()),
    };
    let node_err = |op: &'static str, vb: Option<Vbid>, e: ClientError| {
        if e.is_timeout() {
            return None;
        }
        Some(ReplError::node(Side::Producer, op, vb, e))
    };
    let connect = async {
        let cfg = ClientConfig {
            timeout: w.timeout,
            ..ClientConfig::default()
        };
        let mut c = Client::connect(&w.producer_addr, cfg)
            .await
            .map_err(|e| ("connect", e))?;
        c.auth_plain(&w.credentials)
            .await
            .map_err(|e| ("sasl", e))?;
        c.select_bucket(&w.bucket)
            .await
            .map_err(|e| ("select_bucket", e))?;
        Ok::<_, (&'static str, ClientError)>(c)
    };
    let mut client = match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => return Err(timeout_err(&pending)),
        Ok(Err((op, e))) => {
            return Err(node_err(op, None, e).unwrap_or_else(|| timeout_err(&pending)))
        }
        Ok(Ok(c)) => c,
    };
    let mut polls: u64 = 0;
    loop {
        for (vb, name) in pending.clone() {
            let group = format!("dcp-vbtakeover {} {name}", vb.0);
            let stats = match tokio::time::timeout_at(deadline, client.stats(&group)).await {
                Err(_) => return Err(timeout_err(&pending)),
                Ok(r) => r,
            };
            let (status, estimate) = match stats {
                Ok(pairs) => {
                    let get = |k: &str| {
                        pairs
                            .iter()
                            .find(|(key, _)| key == k)
                            .map(|(_, v)| v.as_str())
                    };
                    let estimate = get("estimate").and_then(|e| e.trim().parse::<u64>().ok());
                    (get("status").unwrap_or("").to_string(), estimate)
                }
                Err(e) if e.status() == Some(Status::NotMyVbucket) => {
                    ("no_status_stat_seen".to_string(), Some(0))
                }
                Err(e) => {
                    return Err(node_err("dcp-vbtakeover", Some(vb), e)
                        .unwrap_or_else(|| timeout_err(&pending)))
                }
            };
            match status.as_str() {
                "calculating-item-count" => {}
                "backfilling" | "in-memory" => {
                    if estimate.is_some_and(|e| e < w.done_limit) {
                        debug!(vb = %vb, ?estimate, "data move done");
                        pending.remove(&vb);
                    }
                }
                _ => {
                    return Err(ReplError::UnexpectedStatus {
                        vb,
                        status,
                        peer: client.peer().to_string(),
                        connection: name,
                    })
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        polls += 1;
        if polls.is_multiple_of(300) {
            info!(pending = ?pending.keys().collect::<Vec<_>>(), polls, "waiting for data move");
        }
        if tokio::time::timeout_at(deadline, tokio::time::sleep(w.poll_interval))
            .await
            .is_err()
        {
            return Err(timeout_err(&pending));
        }
    }
}
