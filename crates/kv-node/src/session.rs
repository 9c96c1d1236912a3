//! One client connection: framing, HELLO, SASL, bucket selection, permission checks
//! and the KV commands. DCP connections are handed to [`crate::dcp`] after DCP_OPEN.
//!
//! Every complete frame in a read is handled in order and the answers are written
//! with one write, so pipelined clients (the SDK's bootstrap batches, benchmarks)
//! cost one syscall per read. The unsent output is bounded (`max_conn_output`): past
//! it the connection reads and handles nothing more until the client reads.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kv_engine::{ArithOp, ConcatOp, Counter, Document, EngineError, Item, MutationInfo, StoreOp};
use mcbp::kv::{
    Arithmetic, Concat, Delete, Feature, Flush, Get, GetAllVbSeqnos, GetClusterConfig, GetErrorMap,
    GetResponse, Hello, HelloResponse, MutationResponse, MutationToken, ObserveSeqno,
    ObserveSeqnoResponse, SaslAuth, SaslMechsResponse, SelectBucket, SeqnoPersistence, SetVbucket,
    Stat, StatResponse, Store, Touch,
};
use mcbp::{
    BareRequest, BodyError, Cas, Datatype, Frame, Magic, Message, Opcode, Response, Seqno,
    ServerOpcode, Status, VbState, Vbid,
};
use mcbp_conn::{FrameReader, FrameWriter, ReadConfig, ReadError, WriteError};
use sasl::{ScramMech, ScramServer};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::ConfigVersion;
use crate::dcp::DcpPeer;
use crate::state::{now, BucketEntry, NodeState};
use crate::users::User;

/// Accepts connections until shutdown; each gets its own task.
pub(crate) async fn accept_loop(
    state: Arc<NodeState>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let c = &state.counters;
                if c.curr_connections.load(Ordering::Relaxed) >= state.config.max_connections {
                    c.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, limit = state.config.max_connections, "connection limit reached; refusing");
                    drop(sock);
                    continue;
                }
                c.total_connections.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(handle_connection(
                    state.clone(),
                    sock,
                    peer,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

struct ConnGuard(Arc<NodeState>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .counters
            .curr_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_connection(
    state: Arc<NodeState>,
    sock: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    state
        .counters
        .curr_connections
        .fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard(state.clone());
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    let mut session = Session::new(state, peer, shutdown.clone());
    match session.run(rd, wr, shutdown).await {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(reason) => info!(%peer, %reason, "connection closed"),
    }
}

/// Output capacity a connection keeps once its buffer has drained.
const OUT_KEEP: usize = 1024 * 1024;

/// Writes everything pending before the connection closes or changes hands.
/// Returns `false` if shutdown came first.
///
/// # Errors
/// A write failed, or made no progress for the idle timeout (the writer's stall
/// bound).
async fn write_out(
    w: &mut FrameWriter<OwnedWriteHalf>,
    shutdown: &CancellationToken,
) -> Result<bool, SessionEnd> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(false),
        r = w.flush() => r.map(|()| true).map_err(SessionEnd::from),
    }
}

impl From<WriteError> for SessionEnd {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stalled(d) => SessionEnd::WriteStalled(d),
            WriteError::Closed => std::io::Error::from(std::io::ErrorKind::WriteZero).into(),
            WriteError::Io(e) => e.into(),
        }
    }
}

type ConfigWatch = tokio::sync::watch::Receiver<Option<ConfigVersion>>;

/// N4 / `cluster.md` §7.3: a server request (0x82) CLUSTERMAP_CHANGE_NOTIFICATION,
/// key = bucket (empty for the cluster-level config), extras = revEpoch and rev
/// (i64 big-endian), value = the config, or nothing for a brief notification.
fn push_config(
    out: &mut BytesMut,
    bucket: &str,
    v: ConfigVersion,
    body: &Bytes,
    brief: Option<bool>,
) {
    let mut extras = [0u8; 16];
    extras[..8].copy_from_slice(&v.epoch.to_be_bytes());
    extras[8..].copy_from_slice(&v.rev.to_be_bytes());
    let full = brief == Some(false);
    // Server opcodes share the byte space of client ones (0x01 here).
    let opcode = Opcode::from_raw(ServerOpcode::ClustermapChangeNotification.to_raw());
    let mut f = mcbp::FrameSpec::request(opcode)
        .magic(Magic::ServerRequest)
        .extras(&extras)
        .key(bucket.as_bytes());
    if full {
        f = f.datatype(Datatype::JSON).value(body);
    }
    f.encode(out);
}

/// Why a connection ended abnormally (logged; never affects other connections).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    #[error("malformed frame: {0}")]
    Malformed(#[from] mcbp::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    #[error("client read nothing for {0:?} while answers were waiting")]
    WriteStalled(std::time::Duration),
    #[error("{0}")]
    Dcp(String),
}

/// What handling one frame asks of the connection loop.
pub(crate) enum Flow {
    Continue,
    Close,
    /// DCP_OPEN succeeded: the answer is in the output buffer; hand the socket over.
    Dcp(crate::dcp::DcpOpen),
}

/// Per-connection state.
pub(crate) struct Session {
    pub(crate) state: Arc<NodeState>,
    pub(crate) peer: SocketAddr,
    pub(crate) user: Option<User>,
    pub(crate) bucket: Option<Arc<BucketEntry>>,
    pub(crate) features: HashSet<Feature>,
    scram: Option<ScramServer>,
    pub(crate) agent: String,
    /// Whether the client sent HELLO: a Couchbase-era client rather than a plain
    /// memcached one (see `mutation_ok`).
    hello_seen: bool,
    /// The node's shutdown: commands that wait (SEQNO_PERSISTENCE) stop waiting.
    shutdown: CancellationToken,
}

fn has(features: &HashSet<Feature>, f: Feature) -> bool {
    features.contains(&f)
}

/// Hello features this node grants.
const SUPPORTED: &[Feature] = &[
    Feature::TcpNodelay,
    Feature::MutationSeqno,
    Feature::Xattr,
    Feature::Xerror,
    Feature::SelectBucket,
    Feature::Snappy,
    Feature::Json,
    Feature::Duplex,
    Feature::AltRequestSupport,
    Feature::ClustermapChangeNotification,
    Feature::ClustermapChangeNotificationBrief,
    Feature::GetClusterConfigWithKnownVersion,
];

/// Notifications need the server-request channel (DUPLEX) to arrive on.
const NEED_DUPLEX: [Feature; 2] = [
    Feature::ClustermapChangeNotification,
    Feature::ClustermapChangeNotificationBrief,
];

impl Session {
    pub(crate) fn new(
        state: Arc<NodeState>,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Session {
        Session {
            state,
            peer,
            user: None,
            bucket: None,
            features: HashSet::new(),
            scram: None,
            agent: String::new(),
            hello_seen: false,
            shutdown,
        }
    }

    /// The connection loop. Whole frames are handled in order while the unsent
    /// output is under `max_conn_output`; past it, no further request is read or
    /// handled until the client has taken some output, so a client that sends but
    /// never reads costs at most the bound plus one answer. Writing happens inside
    /// the same `select!` as reading and shutdown, so neither a stalled write nor a
    /// silent client blocks shutdown; a write that makes no progress for the idle
    /// timeout ends the connection, as does silence with nothing to write.
    async fn run(
        &mut self,
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        shutdown: CancellationToken,
    ) -> Result<(), SessionEnd> {
        let idle = self.state.config.idle_timeout;
        let read = ReadConfig {
            read_chunk: 16 * 1024,
            ..ReadConfig::default()
        };
        let mut reader = FrameReader::new(rd, BytesMut::with_capacity(16 * 1024), read);
        // The writer's queue bound is enforced here (`max_out`), not by the writer.
        let mut writer = FrameWriter::new(wr, usize::MAX, idle);
        let max_out = self.state.config.max_conn_output.max(1);
        // Last time the client sent or took something.
        let mut last_activity = Instant::now();
        // Since when the unsent output has waited for the client (reset on progress).
        let mut write_since = Instant::now();
        let mut read_closed = false;
        // N4: installs of the cluster-level config and of the selected bucket's.
        let mut global_rx = self.state.global_config.subscribe();
        let mut bucket_rx: Option<(String, ConfigWatch)> = None;
        loop {
            let had_output = !writer.is_empty();
            while writer.queued() < max_out {
                let frame = match reader.next_buffered() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(peer = %self.peer, error = %e, "malformed frame; closing connection");
                        let _ = write_out(&mut writer, &shutdown).await;
                        return Err(e.into());
                    }
                };
                match self.handle(frame, writer.staging()).await {
                    Flow::Continue => {}
                    Flow::Close => {
                        write_out(&mut writer, &shutdown).await?;
                        return Ok(());
                    }
                    Flow::Dcp(open) => {
                        if !write_out(&mut writer, &shutdown).await? {
                            return Ok(());
                        }
                        let wr = writer.into_inner();
                        return crate::dcp::run(&self.dcp_peer(), open, reader, wr, shutdown)
                            .await
                            .map_err(|e| SessionEnd::Dcp(e.to_string()));
                    }
                }
            }
            self.state
                .counters
                .conn_output_high_water
                .fetch_max(writer.queued(), Ordering::Relaxed);
            if writer.is_empty() {
                if read_closed {
                    return Ok(());
                }
                // A burst of large answers must not pin its buffer for the
                // connection's lifetime.
                if writer.staging().capacity() > OUT_KEEP {
                    *writer.staging() = BytesMut::with_capacity(16 * 1024);
                }
            } else if !had_output {
                write_since = Instant::now();
            }
            let can_read = !read_closed && writer.queued() < max_out && reader.can_read();
            let selected = self.bucket.as_ref().map(|b| b.meta.name.as_str());
            if bucket_rx.as_ref().map(|(n, _)| n.as_str()) != selected {
                bucket_rx = self
                    .bucket
                    .as_ref()
                    .map(|b| (b.meta.name.clone(), b.cluster_config.subscribe()));
            }
            // A push waits while the output is full; the change stays pending.
            let push = self.notifications().filter(|_| writer.queued() < max_out);
            let bucket_changed = async {
                match bucket_rx.as_mut() {
                    Some((_, rx)) => rx.changed().await,
                    None => std::future::pending().await,
                }
            };
            let (deadline, why) = if writer.is_empty() {
                (last_activity + idle, SessionEnd::Idle(idle))
            } else {
                (write_since + idle, SessionEnd::WriteStalled(idle))
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = writer.write_some(), if !writer.is_empty() => {
                    r?;
                    write_since = Instant::now();
                    last_activity = write_since;
                }
                r = reader.fill(), if can_read => match r {
                    // The client may half-close and still read: answer what it sent.
                    Ok(_) => last_activity = Instant::now(),
                    Err(ReadError::Closed) => read_closed = true,
                    Err(ReadError::Io(e)) => return Err(e.into()),
                    Err(ReadError::Decode(e)) => return Err(e.into()),
                },
                r = global_rx.changed(), if push.is_some() => {
                    if r.is_ok() {
                        if let Some((version, body)) = self.state.global_config.get() {
                            push_config(writer.staging(), "", version, &body, push);
                        }
                    }
                }
                r = bucket_changed, if push.is_some() => {
                    if let (Ok(()), Some(b)) = (r, self.bucket.as_ref()) {
                        if let Some((version, body)) = b.cluster_config.get() {
                            push_config(writer.staging(), &b.meta.name, version, &body, push);
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(why),
            }
        }
    }

    /// `Some(brief)` when the client asked for cluster-map change notifications
    /// (granted only with DUPLEX).
    fn notifications(&self) -> Option<bool> {
        if has(&self.features, Feature::ClustermapChangeNotificationBrief) {
            Some(true)
        } else if has(&self.features, Feature::ClustermapChangeNotification) {
            Some(false)
        } else {
            None
        }
    }

    /// What a DCP connection takes over from this session.
    fn dcp_peer(&self) -> DcpPeer {
        DcpPeer {
            state: self.state.clone(),
            peer: self.peer,
            json: has(&self.features, Feature::Json),
        }
    }

    fn reply(out: &mut BytesMut, req: &Frame, status: Status) {
        Response::to_request(req, status).encode(out);
    }

    fn reply_error(&self, out: &mut BytesMut, req: &Frame, status: Status, context: &str) {
        let mut r = Response::to_request(req, status);
        if status == Status::NotMyVbucket {
            if let Some(cfg) = self.bucket.as_ref().and_then(|b| b.cluster_config_if_set()) {
                r = r.with_value(Datatype::JSON, cfg);
            }
        } else if !context.is_empty() && has(&self.features, Feature::Xerror) {
            let body = serde_json::json!({"error": {"context": context}}).to_string();
            r = r.with_value(Datatype::JSON, body);
        }
        r.encode(out);
    }

    fn engine_error(&self, out: &mut BytesMut, req: &Frame, e: &EngineError) {
        let status = e.status();
        if status == Status::Einternal {
            warn!(peer = %self.peer, error = %e, "storage error");
        }
        self.reply_error(out, req, status, &e.to_string());
    }

    fn body_error(&self, out: &mut BytesMut, req: &Frame, e: &BodyError) {
        debug!(peer = %self.peer, error = %e, "invalid request");
        self.reply_error(out, req, Status::Einval, &e.to_string());
    }

    fn parse<M: Message>(&self, out: &mut BytesMut, req: &Frame) -> Option<M> {
        match M::parse(req) {
            Ok(m) => Some(m),
            Err(e) => {
                self.body_error(out, req, &e);
                None
            }
        }
    }

    fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(User::is_admin)
    }

    /// The selected bucket, selecting the anonymous bucket for unauthenticated
    /// connections when it is configured.
    fn current_bucket(&mut self) -> Option<Arc<BucketEntry>> {
        if self.bucket.is_none() && !self.authenticated() {
            if let Some(name) = &self.state.config.anonymous_bucket {
                self.bucket = self.state.bucket(name);
            }
        }
        // A deleted bucket is gone for every session.
        if self
            .bucket
            .as_ref()
            .is_some_and(|b| b.deleted.load(Ordering::Relaxed))
        {
            self.bucket = None;
        }
        self.bucket.clone()
    }

    fn may_access_kv(&self) -> bool {
        self.authenticated() || self.state.config.anonymous_bucket.is_some()
    }

    /// Handles one frame, appending any answer to `out`.
    pub(crate) async fn handle(&mut self, req: Frame, out: &mut BytesMut) -> Flow {
        match req.magic() {
            Magic::ClientRequest | Magic::AltClientRequest => {}
            // Answers to server requests we never send, and anything else: drop.
            Magic::ClientResponse | Magic::AltClientResponse | Magic::ServerResponse => {
                debug!(peer = %self.peer, ?req, "unexpected response from client ignored");
                return Flow::Continue;
            }
            Magic::ServerRequest | Magic::Unknown(_) => {
                warn!(peer = %self.peer, magic = %req.magic(), "unexpected magic; closing");
                return Flow::Close;
            }
        }
        if req.magic() == Magic::AltClientRequest {
            if !has(&self.features, Feature::AltRequestSupport) {
                Self::reply(out, &req, Status::Einval);
                return Flow::Continue;
            }
            for info in req.frame_infos() {
                match info {
                    Ok(i) if i.id == 0 => {}
                    Ok(i) if i.id <= 7 => {
                        Self::reply(out, &req, Status::NotSupported);
                        return Flow::Continue;
                    }
                    _ => {
                        Self::reply(out, &req, Status::UnknownFrameInfo);
                        return Flow::Continue;
                    }
                }
            }
        }
        if !req.datatype().is_valid() {
            Self::reply(out, &req, Status::Einval);
            return Flow::Continue;
        }
        let op = req.opcode();
        let open = matches!(
            op,
            Opcode::Hello
                | Opcode::SaslListMechs
                | Opcode::SaslAuth
                | Opcode::SaslStep
                | Opcode::GetErrorMap
                | Opcode::Quit
                | Opcode::QuitQ
        );
        if !(open || self.authenticated() || (self.may_access_kv() && is_kv_op(op))) {
            Self::reply(out, &req, Status::Eaccess);
            return Flow::Continue;
        }
        match op {
            Opcode::Hello => self.hello(&req, out),
            Opcode::SaslListMechs => self.list_mechs(&req, out),
            Opcode::SaslAuth | Opcode::SaslStep => self.sasl(&req, out),
            Opcode::SelectBucket => self.select_bucket(&req, out),
            Opcode::Noop => Self::reply(out, &req, Status::Success),
            Opcode::Version => {
                Response::to_request(&req, Status::Success)
                    .with_value(
                        Datatype::RAW,
                        format!("{}-conduit", env!("CARGO_PKG_VERSION")),
                    )
                    .encode(out);
            }
            Opcode::Verbosity => Self::reply(out, &req, Status::Success),
            Opcode::Quit => {
                Self::reply(out, &req, Status::Success);
                return Flow::Close;
            }
            Opcode::QuitQ => return Flow::Close,
            Opcode::GetErrorMap => self.error_map(&req, out),
            Opcode::GetClusterConfig => self.cluster_config(&req, out),
            Opcode::Stat => self.stats(&req, out),
            Opcode::DcpOpen => return self.dcp_open(&req, out),
            op if op.is_dcp() => Self::reply(out, &req, Status::Einval),
            Opcode::SetVbucket | Opcode::GetVbucket | Opcode::DelVbucket => {
                self.vbucket_admin(&req, out).await
            }
            Opcode::GetAllVbSeqnos => self.all_vb_seqnos(&req, out),
            Opcode::SeqnoPersistence => self.seqno_persistence(&req, out).await,
            Opcode::ObserveSeqno => self.observe_seqno(&req, out),
            Opcode::GetFailoverLog => self.failover_log(&req, out),
            _ if is_kv_op(op) => self.kv(&req, out),
            _ => Self::reply(out, &req, Status::UnknownCommand),
        }
        Flow::Continue
    }

    fn hello(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(h) = self.parse::<Hello>(out, req) else {
            return;
        };
        self.agent = String::from_utf8_lossy(&h.agent)
            .chars()
            .take(250)
            .collect();
        let mut granted: Vec<Feature> = Vec::new();
        for f in h.features {
            if SUPPORTED.contains(&f) && !granted.contains(&f) {
                granted.push(f);
            }
        }
        if !granted.contains(&Feature::Duplex) {
            granted.retain(|f| !NEED_DUPLEX.contains(f));
        }
        granted.sort_by_key(|f| f.to_raw());
        self.features = granted.iter().copied().collect();
        // Even a HELLO granting nothing marks a Couchbase-era client (DELETE's CAS).
        self.hello_seen = true;
        debug!(peer = %self.peer, agent = %self.agent, ?granted, "hello");
        HelloResponse {
            opaque: req.opaque(),
            status: Status::Success,
            features: granted,
        }
        .encode(out);
    }

    fn list_mechs(&self, req: &Frame, out: &mut BytesMut) {
        SaslMechsResponse {
            opaque: req.opaque(),
            status: Status::Success,
            mechs: Bytes::from_static(b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN"),
        }
        .encode(out);
    }

    fn sasl(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(a) = self.parse::<SaslAuth>(out, req) else {
            return;
        };
        let fail = |s: &mut Session, out: &mut BytesMut, why: &str| {
            info!(peer = %s.peer, mechanism = %String::from_utf8_lossy(&a.mechanism), reason = why, "authentication failed");
            s.scram = None;
            Session::reply(out, req, Status::AuthError);
        };
        if a.opcode == Opcode::SaslStep {
            let Some(server) = self.scram.take() else {
                return fail(self, out, "SASL_STEP without SASL_AUTH");
            };
            if ScramMech::parse(&a.mechanism) != Some(server.mech()) {
                return fail(self, out, "SASL_STEP mechanism differs");
            }
            let name = server.user().to_string();
            match server.finish(&a.data) {
                Ok(v) => {
                    let user = self.state.users.get(&name);
                    self.login(user);
                    Response::to_request(req, Status::Success)
                        .with_value(Datatype::RAW, v)
                        .encode(out);
                }
                Err(e) => fail(self, out, &e.to_string()),
            }
            return;
        }
        if a.mechanism.as_ref() == b"PLAIN" {
            let Some((name, password)) = sasl::plain::parse(&a.data) else {
                return fail(self, out, "malformed PLAIN message");
            };
            match self.state.users.authenticate(&name, &password) {
                Some(user) => {
                    self.login(Some(user));
                    Self::reply(out, req, Status::Success);
                }
                None => fail(self, out, "unknown user or wrong password"),
            }
            return;
        }
        let Some(mech) = ScramMech::parse(&a.mechanism) else {
            return fail(self, out, "unsupported mechanism");
        };
        let nonce = random_nonce();
        let users = &self.state.users;
        match ScramServer::start(mech, &a.data, &nonce, |u| {
            users.get(u).and_then(|u| u.credential(mech).cloned())
        }) {
            Ok((server, first)) => {
                self.scram = Some(server);
                Response::to_request(req, Status::AuthContinue)
                    .with_value(Datatype::RAW, first)
                    .encode(out);
            }
            Err(e) => fail(self, out, &e.to_string()),
        }
    }

    /// Authenticated: memcached's rule selects the bucket named like the user.
    fn login(&mut self, user: Option<User>) {
        let Some(user) = user else { return };
        info!(peer = %self.peer, user = %user.name, "authenticated");
        self.bucket = None;
        if user.may_use_bucket(&user.name) {
            self.bucket = self.state.bucket(&user.name);
        }
        self.user = Some(user);
    }

    fn select_bucket(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(s) = self.parse::<SelectBucket>(out, req) else {
            return;
        };
        let name = String::from_utf8_lossy(&s.bucket).into_owned();
        if name == "@no bucket@" {
            self.bucket = None;
            return Self::reply(out, req, Status::Success);
        }
        let allowed = self.user.as_ref().is_some_and(|u| u.may_use_bucket(&name))
            || (!self.authenticated()
                && self.state.config.anonymous_bucket.as_deref() == Some(&name));
        match self.state.bucket(&name) {
            Some(b) if allowed => {
                self.bucket = Some(b);
                Self::reply(out, req, Status::Success);
            }
            // Missing and forbidden look the same: the SDK would retry KEY_ENOENT forever.
            _ => Self::reply(out, req, Status::Eaccess),
        }
    }

    fn error_map(&self, req: &Frame, out: &mut BytesMut) {
        let Some(g) = self.parse::<GetErrorMap>(out, req) else {
            return;
        };
        if g.version == 0 {
            return Self::reply(out, req, Status::Einval);
        }
        Response::to_request(req, Status::Success)
            .with_value(Datatype::JSON, crate::cluster::error_map_json())
            .encode(out);
    }

    fn cluster_config(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(g) = self.parse::<GetClusterConfig>(out, req) else {
            return;
        };
        let kv_port = self.state.kv_port();
        let admin_port = self.state.admin_port();
        // The version served: the cluster layer's (revEpoch, rev), or the node's own
        // config at epoch -1.
        let (version, body) = match self.current_bucket() {
            Some(b) => b.cluster_config(kv_port, admin_port),
            None => self.state.global_config.get().unwrap_or_else(|| {
                let (rev, body) = crate::cluster::cluster_level_config(kv_port, admin_port);
                (ConfigVersion { epoch: -1, rev }, body)
            }),
        };
        // A config without revEpoch is compared by rev alone: clients report some
        // epoch of their own for it.
        let known = g.known.is_some_and(|(epoch, rev)| {
            if version.epoch < 0 {
                rev >= version.rev
            } else {
                ConfigVersion { epoch, rev } >= version
            }
        });
        let body = if known { Bytes::new() } else { body };
        Response::to_request(req, Status::Success)
            .with_value(
                if body.is_empty() {
                    Datatype::RAW
                } else {
                    Datatype::JSON
                },
                body,
            )
            .encode(out);
    }

    fn stats(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(s) = self.parse::<Stat>(out, req) else {
            return;
        };
        let group = String::from_utf8_lossy(&s.key).into_owned();
        let bucket = self.current_bucket();
        match crate::stats::collect(&self.state, bucket.as_deref(), &group, self.is_admin()) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    StatResponse {
                        opaque: req.opaque(),
                        status: Status::Success,
                        key: Bytes::from(k.into_bytes()),
                        value: Bytes::from(v.into_bytes()),
                    }
                    .encode(out);
                }
                StatResponse::terminator(req.opaque()).encode(out);
            }
            Err(status) => Self::reply(out, req, status),
        }
    }

    fn dcp_open(&mut self, req: &Frame, out: &mut BytesMut) -> Flow {
        if !self.is_admin() {
            Self::reply(out, req, Status::Eaccess);
            return Flow::Continue;
        }
        let Some(bucket) = self.current_bucket() else {
            Self::reply(out, req, Status::NoBucket);
            return Flow::Continue;
        };
        let Some(open) = self.parse::<mcbp::dcp::Open>(out, req) else {
            return Flow::Continue;
        };
        match crate::dcp::accept_open(&self.dcp_peer(), &bucket, open, req) {
            Ok(dcp) => {
                Self::reply(out, req, Status::Success);
                Flow::Dcp(dcp)
            }
            Err(status) => {
                Self::reply(out, req, status);
                Flow::Continue
            }
        }
    }

    /// SET/GET/DEL_VBUCKET. Setting and deleting can commit, so the engine call runs
    /// on the blocking pool while this connection waits (others are served).
    async fn vbucket_admin(&mut self, req: &Frame, out: &mut BytesMut) {
        if !self.is_admin() {
            return Self::reply(out, req, Status::Eaccess);
        }
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        match req.opcode() {
            Opcode::SetVbucket => {
                let Some(s) = self.parse::<SetVbucket>(out, req) else {
                    return;
                };
                match self
                    .state
                    .set_vbucket_state_off_runtime(&b, s.vbucket, s.state)
                    .await
                {
                    Ok(()) => Self::reply(out, req, Status::Success),
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::GetVbucket => {
                let Some(g) = self.parse::<BareRequest>(out, req) else {
                    return;
                };
                match b.bucket.vbucket_state(g.vbucket) {
                    Ok(state) => Response::to_request(req, Status::Success)
                        .with_value(
                            Datatype::RAW,
                            u32::from(state.to_u8()).to_be_bytes().to_vec(),
                        )
                        .encode(out),
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            _ => {
                let (e, vb) = (b.clone(), req.vbucket());
                let deleted =
                    crate::state::off_runtime(&b.meta.name, move || e.bucket.delete_vbucket(vb))
                        .await;
                match deleted {
                    Ok(()) => {
                        b.dcp.bump_epoch(vb);
                        b.notify_change();
                        Self::reply(out, req, Status::Success);
                    }
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
        }
    }

    fn all_vb_seqnos(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(g) = self.parse::<GetAllVbSeqnos>(out, req) else {
            return;
        };
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        let filter = match g.state_filter {
            None | Some(0) => None,
            Some(v) => match u8::try_from(v).ok().and_then(VbState::from_u8) {
                Some(s) => Some(s),
                None => return Self::reply(out, req, Status::Einval),
            },
        };
        let mut value = Vec::new();
        for vb in 0..b.meta.vbuckets {
            let vb = Vbid(vb);
            let Ok(stats) = b.bucket.vb_stats(vb) else {
                continue;
            };
            let keep = match filter {
                Some(s) => stats.state == s,
                None => stats.state != VbState::Dead,
            };
            if keep {
                value.extend_from_slice(&vb.0.to_be_bytes());
                value.extend_from_slice(&stats.high_seqno.0.to_be_bytes());
            }
        }
        Response::to_request(req, Status::Success)
            .with_value(Datatype::RAW, value)
            .encode(out);
    }

    async fn seqno_persistence(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(s) = self.parse::<SeqnoPersistence>(out, req) else {
            return;
        };
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        let deadline = tokio::time::Instant::now() + self.state.config.seqno_persistence_timeout;
        let _waiting = Gauged::new(&self.state.counters.seqno_persistence_waiting);
        loop {
            let notified = b.persisted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match b.bucket.persisted_seqno(s.vbucket) {
                Ok(p) if p >= s.seqno => return Self::reply(out, req, Status::Success),
                Ok(_) => {}
                Err(e) => return self.engine_error(out, req, &e),
            }
            // Shutdown must not wait for a persistence that may be far away.
            let persisted_or_timeout = tokio::select! {
                () = self.shutdown.cancelled() => Err(()),
                r = tokio::time::timeout_at(deadline, notified) => r.map_err(drop),
            };
            if persisted_or_timeout.is_err() {
                return Self::reply(out, req, Status::Etmpfail);
            }
        }
    }

    fn observe_seqno(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(o) = self.parse::<ObserveSeqno>(out, req) else {
            return;
        };
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        let vb = o.vbucket;
        let (log, stats) = match (b.bucket.failover_log(vb), b.bucket.vb_stats(vb)) {
            (Ok(l), Ok(s)) => (l, s),
            (Err(e), _) | (_, Err(e)) => return self.engine_error(out, req, &e),
        };
        if stats.state == VbState::Dead {
            return self.reply_error(out, req, Status::NotMyVbucket, "");
        }
        let entries = log.entries();
        let Some(pos) = entries.iter().position(|e| e.vb_uuid == o.vb_uuid) else {
            return Self::reply(out, req, Status::KeyEnoent);
        };
        // Not the newest branch: report where the old branch ended.
        let failover = (pos > 0).then(|| (entries[pos].vb_uuid, entries[pos - 1].seqno));
        ObserveSeqnoResponse {
            opaque: req.opaque(),
            status: Status::Success,
            vbucket: vb,
            vb_uuid: stats.vb_uuid,
            persisted_seqno: stats.persisted_seqno,
            current_seqno: stats.high_seqno,
            failover,
        }
        .encode(out);
    }

    fn failover_log(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(g) = self.parse::<BareRequest>(out, req) else {
            return;
        };
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        match b.bucket.failover_log(g.vbucket) {
            Ok(log) => mcbp::dcp::FailoverLogResponse {
                opcode: Opcode::GetFailoverLog,
                opaque: req.opaque(),
                status: Status::Success,
                entries: log
                    .entries()
                    .iter()
                    .map(|e| mcbp::dcp::FailoverEntry {
                        vb_uuid: e.vb_uuid,
                        seqno: e.seqno,
                    })
                    .collect(),
            }
            .encode(out),
            Err(e) => self.engine_error(out, req, &e),
        }
    }

    /// Normalises an incoming value: Snappy is inflated on ingest so the store holds
    /// plain bytes and every reader gets what its own HELLO allows. On a datatype
    /// the connection did not negotiate, or invalid Snappy, answers EINVAL and
    /// returns `None`.
    fn ingest_value(
        &self,
        out: &mut BytesMut,
        req: &Frame,
        dt: Datatype,
        value: Bytes,
    ) -> Option<(Datatype, Bytes)> {
        let r = self.check_ingest(req, dt, value);
        if r.is_err() {
            self.reply_error(
                out,
                req,
                Status::Einval,
                "datatype not negotiated or invalid snappy",
            );
        }
        r.ok()
    }

    fn check_ingest(
        &self,
        req: &Frame,
        dt: Datatype,
        value: Bytes,
    ) -> Result<(Datatype, Bytes), ()> {
        for (bit, feat) in [
            (Datatype::JSON, Feature::Json),
            (Datatype::SNAPPY, Feature::Snappy),
            (Datatype::XATTR, Feature::Xattr),
        ] {
            if dt.contains(bit) && !has(&self.features, feat) {
                debug!(peer = %self.peer, opcode = %req.opcode(), "datatype bit not negotiated");
                return Err(());
            }
        }
        if dt.contains(Datatype::SNAPPY) {
            let plain = snap::raw::Decoder::new()
                .decompress_vec(&value)
                .map_err(|_| ())?;
            return Ok((dt.without(Datatype::SNAPPY), Bytes::from(plain)));
        }
        Ok((dt, value))
    }

    /// What this connection may see of a stored value: xattrs stripped unless
    /// negotiated, JSON bit cleared unless negotiated.
    fn egress_value(&self, item: &Item) -> (Datatype, Bytes) {
        let mut dt = Datatype(item.datatype);
        let mut value = item.value.clone();
        if dt.contains(Datatype::XATTR) && !has(&self.features, Feature::Xattr) {
            value = crate::xattr::strip_xattrs(&value);
            dt = dt.without(Datatype::XATTR);
        }
        if !has(&self.features, Feature::Json) {
            dt = dt.without(Datatype::JSON);
        }
        (dt, value)
    }

    fn token(&self, info: &MutationInfo) -> Option<MutationToken> {
        has(&self.features, Feature::MutationSeqno).then_some(MutationToken {
            vb_uuid: info.vb_uuid,
            seqno: info.seqno,
        })
    }

    fn mutation_ok(&self, out: &mut BytesMut, req: &Frame, info: &MutationInfo, b: &BucketEntry) {
        b.notify_change();
        if req.opcode().is_quiet() {
            return;
        }
        // Classic memcached answers DELETE with CAS 0 and its clients check that;
        // Couchbase clients (which always send HELLO) get the tombstone's CAS.
        let cas = if matches!(req.opcode(), Opcode::Delete) && !self.hello_seen {
            Cas(0)
        } else {
            info.cas
        };
        MutationResponse {
            opcode: req.opcode(),
            opaque: req.opaque(),
            status: Status::Success,
            cas,
            token: self.token(info),
        }
        .encode(out);
    }

    fn kv(&mut self, req: &Frame, out: &mut BytesMut) {
        let Some(b) = self.current_bucket() else {
            return Self::reply(out, req, Status::NoBucket);
        };
        let t = now();
        let op = req.opcode();
        let counters = &self.state.counters;
        let is_write = !(Get::accepts(op) || Flush::accepts(op));
        if is_write && b.dcp.takeover_backoff(req.vbucket()) {
            return self.reply_error(
                out,
                req,
                Status::Etmpfail,
                "takeover in progress: writes paused until it catches up",
            );
        }
        match op {
            Opcode::Get | Opcode::GetQ | Opcode::GetK | Opcode::GetKQ | Opcode::GetReplica => {
                let Some(g) = self.parse::<Get>(out, req) else {
                    return;
                };
                counters.cmd_get.fetch_add(1, Ordering::Relaxed);
                let res = if op == Opcode::GetReplica {
                    b.bucket.get_replica(g.vbucket, &g.key, t)
                } else {
                    b.bucket.get(g.vbucket, &g.key, t)
                };
                match res {
                    Ok(item) => {
                        counters.get_hits.fetch_add(1, Ordering::Relaxed);
                        self.get_response(out, req, &item);
                    }
                    Err(EngineError::KeyNotFound { .. }) => {
                        counters.get_misses.fetch_add(1, Ordering::Relaxed);
                        if !op.is_quiet() {
                            let mut r = Response::to_request(req, Status::KeyEnoent);
                            if matches!(op, Opcode::GetK) {
                                r.key = g.key.clone();
                            }
                            r.encode(out);
                        }
                    }
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::Set
            | Opcode::Add
            | Opcode::Replace
            | Opcode::SetQ
            | Opcode::AddQ
            | Opcode::ReplaceQ => {
                let Some(s) = self.parse::<Store>(out, req) else {
                    return;
                };
                counters.cmd_set.fetch_add(1, Ordering::Relaxed);
                let Some((dt, value)) = self.ingest_value(out, req, s.datatype, s.value) else {
                    return;
                };
                let store_op = match op {
                    Opcode::Set | Opcode::SetQ => StoreOp::Set,
                    Opcode::Add | Opcode::AddQ => StoreOp::Add,
                    _ => StoreOp::Replace,
                };
                let doc = Document {
                    key: s.key,
                    value,
                    flags: s.flags,
                    expiry: s.expiry,
                    datatype: dt.0,
                };
                match b.bucket.store(s.vbucket, store_op, doc, s.cas, t) {
                    Ok(info) => self.mutation_ok(out, req, &info, &b),
                    // memcached: ADD of an existing key and REPLACE of a missing one.
                    Err(EngineError::KeyNotFound { .. })
                        if store_op == StoreOp::Replace || s.cas.0 != 0 =>
                    {
                        Self::reply(out, req, Status::KeyEnoent);
                    }
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::Delete | Opcode::DeleteQ => {
                let Some(d) = self.parse::<Delete>(out, req) else {
                    return;
                };
                match b.bucket.delete(d.vbucket, &d.key, d.cas, t) {
                    Ok(info) => self.mutation_ok(out, req, &info, &b),
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::Increment | Opcode::Decrement | Opcode::IncrementQ | Opcode::DecrementQ => {
                let Some(a) = self.parse::<Arithmetic>(out, req) else {
                    return;
                };
                let arith = if matches!(op, Opcode::Increment | Opcode::IncrementQ) {
                    ArithOp::Incr
                } else {
                    ArithOp::Decr
                };
                let counter = Counter {
                    delta: a.delta,
                    initial: a.initial,
                    expiry: a.expiry,
                };
                match b
                    .bucket
                    .arithmetic(a.vbucket, arith, &a.key, counter, a.cas, t)
                {
                    Ok((value, info)) => {
                        b.notify_change();
                        if !op.is_quiet() {
                            mcbp::kv::ArithmeticResponse {
                                opcode: op,
                                opaque: req.opaque(),
                                status: Status::Success,
                                cas: info.cas,
                                value,
                                token: self.token(&info),
                            }
                            .encode(out);
                        }
                    }
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::Append | Opcode::Prepend | Opcode::AppendQ | Opcode::PrependQ => {
                let Some(c) = self.parse::<Concat>(out, req) else {
                    return;
                };
                // APPEND/PREPEND keep the stored datatype (the engine clears JSON).
                let Some((_, value)) = self.ingest_value(out, req, req.datatype(), c.value) else {
                    return;
                };
                let cop = if matches!(op, Opcode::Append | Opcode::AppendQ) {
                    ConcatOp::Append
                } else {
                    ConcatOp::Prepend
                };
                match b.bucket.concat(c.vbucket, cop, &c.key, &value, c.cas, t) {
                    Ok(info) => self.mutation_ok(out, req, &info, &b),
                    Err(e) => self.engine_error(out, req, &e),
                }
            }
            Opcode::Touch | Opcode::Gat | Opcode::GatQ => {
                let Some(tc) = self.parse::<Touch>(out, req) else {
                    return;
                };
                if op == Opcode::Touch {
                    match b.bucket.touch(tc.vbucket, &tc.key, tc.expiry, t) {
                        Ok(info) => self.mutation_ok(out, req, &info, &b),
                        Err(e) => self.engine_error(out, req, &e),
                    }
                } else {
                    match b.bucket.get_and_touch(tc.vbucket, &tc.key, tc.expiry, t) {
                        Ok((item, _)) => {
                            b.notify_change();
                            self.get_response(out, req, &item);
                        }
                        Err(EngineError::KeyNotFound { .. }) if op == Opcode::GatQ => {}
                        Err(e) => self.engine_error(out, req, &e),
                    }
                }
            }
            Opcode::Flush | Opcode::FlushQ => {
                let Some(f) = self.parse::<Flush>(out, req) else {
                    return;
                };
                if !b.meta.flush_enabled {
                    return self.reply_error(
                        out,
                        req,
                        Status::NotSupported,
                        "flush is disabled on this bucket",
                    );
                }
                let _ = f.expiry;
                let removed = flush_bucket(&b, t);
                info!(peer = %self.peer, bucket = %b.meta.name, removed, "bucket flushed");
                b.notify_change();
                if op == Opcode::Flush {
                    Self::reply(out, req, Status::Success);
                }
            }
            _ => Self::reply(out, req, Status::UnknownCommand),
        }
    }

    fn get_response(&self, out: &mut BytesMut, req: &Frame, item: &Item) {
        let (dt, value) = self.egress_value(item);
        let with_key = matches!(req.opcode(), Opcode::GetK | Opcode::GetKQ);
        GetResponse {
            opcode: req.opcode(),
            opaque: req.opaque(),
            status: Status::Success,
            cas: item.cas,
            datatype: dt,
            flags: item.flags,
            key: if with_key {
                item.key.clone()
            } else {
                Bytes::new()
            },
            value,
        }
        .encode(out);
    }
}

/// Commands served on a bucket (by an authenticated or anonymous client): the
/// typed document messages' opcodes, plus the harmless session commands.
fn is_kv_op(op: Opcode) -> bool {
    Get::accepts(op)
        || Store::accepts(op)
        || Delete::accepts(op)
        || Arithmetic::accepts(op)
        || Concat::accepts(op)
        || Touch::accepts(op)
        || Flush::accepts(op)
        || matches!(
            op,
            Opcode::Noop | Opcode::Version | Opcode::Stat | Opcode::Verbosity
        )
}

/// Deletes every live document of the bucket's active vbuckets (FLUSH). Tombstones
/// keep replicas in step.
fn flush_bucket(b: &BucketEntry, t: kv_engine::UnixTime) -> usize {
    let mut removed = 0;
    for vb in 0..b.meta.vbuckets {
        let vb = Vbid(vb);
        if b.bucket.vbucket_state(vb).ok() != Some(VbState::Active) {
            continue;
        }
        let mut from = Seqno(0);
        loop {
            let Ok(items) = b.bucket.items_since(vb, from, 1024) else {
                break;
            };
            let Some(last) = items.last() else { break };
            from = last.by_seqno;
            for it in items.iter().filter(|i| !i.deleted) {
                if b.bucket.delete(vb, &it.key, Cas(0), t).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

fn random_nonce() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Counts one waiter in a gauge for as long as it lives.
struct Gauged<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Gauged<'a> {
    fn new(gauge: &'a std::sync::atomic::AtomicUsize) -> Gauged<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauged(gauge)
    }
}

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
