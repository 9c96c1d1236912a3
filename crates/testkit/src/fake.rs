//! The scripted fake peer: a fake KV node for integration tests that need a node
//! whose every answer the test controls (STYLE "Integration tests": real sockets on
//! 127.0.0.1:0, every await bounded).
//!
//! A [`FakeNode`] accepts connections and speaks just enough MCBP for a half's
//! set-up (SASL PLAIN, SELECT_BUCKET, HELLO granting the configured features,
//! DCP_OPEN with the configured status), answers STAT groups from a script, and
//! answers SET_VBUCKET / SEQNO_PERSISTENCE. After a successful DCP_OPEN the
//! connection is handed to the test as a [`FakeConn`], which the test drives frame by
//! frame (the DCP behaviour of each race is scripted in the test itself).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mcbp::dcp::{
    AddStreamResponse, EndReason, FailoverEntry, SetVbucketState, StreamEnd, StreamFlags,
    StreamReq, StreamReqOutcome, StreamReqResponse,
};
use mcbp::kv::{Feature, Hello, HelloResponse, SeqnoPersistence, SetVbucket, StatResponse};
use mcbp::{
    Frame, FrameDecoder, Message, Opaque, Opcode, Response, Seqno, Status, VbState, VbUuid, Vbid,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Bound on every wait of a fake (catches hangs; never a sleep).
pub const WAIT: Duration = Duration::from_secs(10);

/// How a fake node answers the set-up and out-of-band commands.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Features granted (intersected with the requested ones).
    pub grant: Vec<Feature>,
    /// Status of the HELLO answer.
    pub hello_status: Status,
    /// Status of the DCP_OPEN answer.
    pub open_status: Status,
    /// Status of the SASL answer.
    pub auth_status: Status,
    /// Status of SELECT_BUCKET.
    pub select_status: Status,
    /// Serve DCP connections automatically in this role instead of handing them to
    /// the test (manager and mover tests).
    pub auto: Option<AutoRole>,
    /// Accept TCP, then never answer SASL (a node that hangs mid-handshake).
    pub mute_sasl: bool,
}

/// The DCP behaviour of an automatic fake node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoRole {
    /// A consumer node: answers ADD_STREAM after its STREAM_REQ was accepted,
    /// answers CLOSE_STREAM and SET_VBUCKET_STATE with SUCCESS.
    Consumer,
    /// A producer node: accepts every STREAM_REQ, answers CLOSE_STREAM with SUCCESS,
    /// and runs takeover streams (pending, active, STREAM_END).
    Producer,
}

/// What an automatic fake node saw, per DCP connection name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoEvent {
    /// DCP_OPEN.
    Opened(String),
    /// A stream for vb was established (consumer: ADD answered; producer: STREAM_REQ
    /// accepted).
    Added(String, u16),
    /// A CLOSE_STREAM for vb was answered.
    Closed(String, u16),
    /// A takeover of vb completed (producer: STREAM_END sent).
    TookOver(String, u16),
    /// The proxy closed the socket.
    Eof(String),
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            grant: vec![Feature::Xattr, Feature::Json, Feature::Snappy],
            hello_status: Status::Success,
            open_status: Status::Success,
            auth_status: Status::Success,
            select_status: Status::Success,
            auto: None,
            mute_sasl: false,
        }
    }
}

/// Answers for STAT groups and persistence, shared with the test.
#[derive(Debug, Default)]
pub struct Script {
    /// Per `dcp-vbtakeover` call, the next answer: `Ok(pairs)` or `Err(status)`.
    /// When empty, the last answer is repeated.
    pub vbtakeover: VecDeque<Result<Vec<(String, String)>, Status>>,
    last_vbtakeover: Option<Result<Vec<(String, String)>, Status>>,
    /// `vbucket-seqno` answers: (vb, high seqno).
    pub high_seqnos: Vec<(u16, u64)>,
    /// SEQNO_PERSISTENCE: answers ETMPFAIL this many times, then SUCCESS.
    pub persistence_tmpfails: u32,
    /// Every SET_VBUCKET received: (vb, state).
    pub set_vbuckets: Vec<(u16, VbState)>,
    /// Every STAT group received.
    pub stat_groups: Vec<String>,
    /// Every SEQNO_PERSISTENCE received: (vb, seqno).
    pub persistence_calls: Vec<(u16, u64)>,
}

/// One accepted connection: what its set-up said, and the socket after it.
#[derive(Debug)]
pub struct FakeConn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// HELLO agent name.
    pub agent: String,
    /// HELLO requested features.
    pub requested: Vec<Feature>,
    /// DCP_OPEN name, flags and value (if DCP_OPEN was sent).
    pub open: Option<(String, u32, Vec<u8>, u8)>,
    /// Bucket selected.
    pub bucket: String,
    /// SASL PLAIN user.
    pub user: String,
}

/// A fake node listening on 127.0.0.1:0.
#[derive(Debug)]
pub struct FakeNode {
    addr: String,
    conns: mpsc::Receiver<FakeConn>,
    /// Out-of-band answers (stats, persistence).
    pub script: Arc<Mutex<Script>>,
    /// What automatic DCP connections saw.
    pub events: Arc<Mutex<Vec<AutoEvent>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeNode {
    /// Binds and starts accepting.
    pub async fn start(cfg: FakeConfig) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (tx, rx) = mpsc::channel(16);
        let script = Arc::new(Mutex::new(Script::default()));
        let s2 = Arc::clone(&script);
        let events = Arc::new(Mutex::new(Vec::new()));
        let e2 = Arc::clone(&events);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a2 = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let cfg = cfg.clone();
                let tx = tx.clone();
                let script = Arc::clone(&s2);
                let events = Arc::clone(&e2);
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut c = FakeConn {
                        stream,
                        buf: BytesMut::new(),
                        decoder: FrameDecoder::new(mcbp::DEFAULT_MAX_BODY_LEN),
                        agent: String::new(),
                        requested: Vec::new(),
                        open: None,
                        bucket: String::new(),
                        user: String::new(),
                    };
                    c.serve_setup(&cfg, &script).await;
                    match (cfg.auto, &c.open) {
                        (Some(role), Some(_)) if cfg.open_status.is_success() => {
                            c.auto_serve(role, &events).await;
                        }
                        _ => {
                            let _ = tx.send(c).await;
                        }
                    }
                });
            }
        });
        FakeNode {
            addr,
            conns: rx,
            script,
            events,
            accepted,
        }
    }

    /// Starts a node with the default configuration.
    pub async fn default_node() -> FakeNode {
        FakeNode::start(FakeConfig::default()).await
    }

    /// A node serving DCP automatically in `role`.
    pub async fn auto(role: AutoRole) -> FakeNode {
        FakeNode::start(FakeConfig {
            auto: Some(role),
            ..FakeConfig::default()
        })
        .await
    }

    /// A snapshot of the automatic DCP events.
    pub fn events(&self) -> Vec<AutoEvent> {
        self.events.lock().expect("events lock").clone()
    }

    /// Waits (bounded) until `pred` holds for the events.
    pub async fn wait_events(&self, what: &str, pred: impl Fn(&[AutoEvent]) -> bool) {
        let ok = timeout(WAIT, async {
            loop {
                if pred(&self.events()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "fake node: never saw {what}; events: {:?}",
            self.events()
        );
    }

    /// Waits (bounded) until at least `n` TCP connections were accepted.
    pub async fn wait_accepted(&self, n: usize) {
        let ok = timeout(WAIT, async {
            while self.accepted.load(std::sync::atomic::Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "fake node: fewer than {n} connections accepted");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The next connection that finished (or failed) its set-up.
    pub async fn accept(&mut self) -> FakeConn {
        timeout(WAIT, self.conns.recv())
            .await
            .expect("fake node: no connection within the bound")
            .expect("fake node acceptor gone")
    }
}

impl FakeConn {
    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("fake node: corrupt stream from the proxy: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn answer(&mut self, f: &Frame) {
        let _ = self.stream.write_all(f.bytes()).await;
    }

    /// Runs the set-up; returns after DCP_OPEN (whatever its status) or EOF. STAT,
    /// SET_VBUCKET and SEQNO_PERSISTENCE connections are served here until EOF.
    async fn serve_setup(&mut self, cfg: &FakeConfig, script: &Arc<Mutex<Script>>) {
        while let Some(f) = self.read_frame().await {
            match f.opcode() {
                Opcode::SaslAuth if cfg.mute_sasl => {
                    // Hold the connection, answer nothing, until the peer goes away.
                    while self.read_frame().await.is_some() {}
                    return;
                }
                Opcode::SaslAuth => {
                    // PLAIN: value = \0user\0password
                    let parts: Vec<&[u8]> = f.value().split(|b| *b == 0).collect();
                    self.user = parts
                        .get(1)
                        .map(|u| String::from_utf8_lossy(u).into_owned())
                        .unwrap_or_default();
                    self.answer(&Response::to_request(&f, cfg.auth_status).to_frame())
                        .await;
                }
                Opcode::SelectBucket => {
                    self.bucket = String::from_utf8_lossy(f.key()).into_owned();
                    self.answer(&Response::to_request(&f, cfg.select_status).to_frame())
                        .await;
                }
                Opcode::Hello => {
                    let h = Hello::parse(&f).expect("hello parses");
                    self.agent = String::from_utf8_lossy(&h.agent).into_owned();
                    self.requested.clone_from(&h.features);
                    let mut features: Vec<Feature> = h
                        .features
                        .iter()
                        .copied()
                        .filter(|x| cfg.grant.contains(x))
                        .collect();
                    if !cfg.hello_status.is_success() {
                        features.clear();
                    }
                    let r = HelloResponse {
                        opaque: f.opaque(),
                        status: cfg.hello_status,
                        features,
                    };
                    self.answer(&r.to_frame()).await;
                }
                Opcode::DcpOpen => {
                    let flags = f
                        .extras()
                        .get(4..8)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    self.open = Some((
                        String::from_utf8_lossy(f.key()).into_owned(),
                        flags,
                        f.value().to_vec(),
                        f.datatype().0,
                    ));
                    self.answer(&Response::to_request(&f, cfg.open_status).to_frame())
                        .await;
                    return;
                }
                Opcode::Stat => {
                    let group = String::from_utf8_lossy(f.key()).into_owned();
                    self.serve_stat(&f, &group, script).await;
                }
                Opcode::SetVbucket => {
                    let s = SetVbucket::parse(&f).expect("set vbucket parses");
                    script
                        .lock()
                        .expect("script lock")
                        .set_vbuckets
                        .push((s.vbucket.0, s.state));
                    self.answer(&Response::to_request(&f, Status::Success).to_frame())
                        .await;
                }
                Opcode::SeqnoPersistence => {
                    let s = SeqnoPersistence::parse(&f).expect("seqno persistence parses");
                    let status = {
                        let mut sc = script.lock().expect("script lock");
                        sc.persistence_calls.push((s.vbucket.0, s.seqno.0));
                        if sc.persistence_tmpfails > 0 {
                            sc.persistence_tmpfails -= 1;
                            Status::Etmpfail
                        } else {
                            Status::Success
                        }
                    };
                    self.answer(&Response::to_request(&f, status).to_frame())
                        .await;
                }
                _ => {
                    self.answer(&Response::to_request(&f, Status::UnknownCommand).to_frame())
                        .await;
                }
            }
        }
    }

    async fn serve_stat(&mut self, f: &Frame, group: &str, script: &Arc<Mutex<Script>>) {
        let answer: Result<Vec<(String, String)>, Status> = {
            let mut sc = script.lock().expect("script lock");
            sc.stat_groups.push(group.to_string());
            if group.starts_with("dcp-vbtakeover") {
                match sc.vbtakeover.pop_front() {
                    Some(a) => {
                        sc.last_vbtakeover = Some(a.clone());
                        a
                    }
                    None => sc.last_vbtakeover.clone().unwrap_or(Err(Status::KeyEnoent)),
                }
            } else if let Some(vb) = group.strip_prefix("vbucket-seqno ") {
                let vb: u16 = vb.trim().parse().unwrap_or(u16::MAX);
                Ok(sc
                    .high_seqnos
                    .iter()
                    .filter(|(v, _)| *v == vb)
                    .map(|(v, s)| (format!("vb_{v}:high_seqno"), s.to_string()))
                    .collect())
            } else {
                Err(Status::KeyEnoent)
            }
        };
        match answer {
            Ok(pairs) => {
                for (k, v) in pairs {
                    let r = StatResponse {
                        opaque: f.opaque(),
                        status: Status::Success,
                        key: k.into_bytes().into(),
                        value: v.into_bytes().into(),
                    };
                    self.answer(&r.to_frame()).await;
                }
                self.answer(&StatResponse::terminator(f.opaque()).to_frame())
                    .await;
            }
            Err(s) => self.answer(&Response::to_request(f, s).to_frame()).await,
        }
    }

    /// Serves a DCP connection automatically until EOF.
    async fn auto_serve(&mut self, role: AutoRole, events: &Arc<Mutex<Vec<AutoEvent>>>) {
        let name = self.open.as_ref().map(|o| o.0.clone()).unwrap_or_default();
        let log = |e: AutoEvent| events.lock().expect("events lock").push(e);
        log(AutoEvent::Opened(name.clone()));
        let mut next_w: u32 = 0x100;
        // consumer: wire opaque -> (vb, ADD opaque)
        let mut pending: std::collections::HashMap<u32, (u16, Opaque)> = Default::default();
        // producer: takeover stream opaque -> vb, and which state was last sent
        let mut takeovers: std::collections::HashMap<u32, (u16, VbState)> = Default::default();
        while let Some(f) = self.read_frame().await {
            let op = f.opcode();
            match (role, f.is_request(), op) {
                (AutoRole::Consumer, true, Opcode::DcpAddStream) => {
                    let takeover = f.extras() == 1u32.to_be_bytes();
                    next_w += 1;
                    pending.insert(next_w, (f.vbucket().0, f.opaque()));
                    self.send_stream_req(f.vbucket().0, next_w, takeover).await;
                }
                (AutoRole::Consumer, false, Opcode::DcpStreamReq) => {
                    if let Some((vb, add)) = pending.remove(&f.opaque().0) {
                        let r = AddStreamResponse {
                            opaque: add,
                            status: f.status(),
                            stream_opaque: Some(f.opaque()),
                        };
                        self.send(&r.to_frame()).await;
                        if f.status().is_success() {
                            log(AutoEvent::Added(name.clone(), vb));
                        }
                    }
                }
                (AutoRole::Consumer, true, Opcode::DcpSetVbucketState) => {
                    self.answer_status(&f, Status::Success).await;
                }
                (_, true, Opcode::DcpCloseStream) => {
                    self.answer_status(&f, Status::Success).await;
                    log(AutoEvent::Closed(name.clone(), f.vbucket().0));
                }
                (AutoRole::Producer, true, Opcode::DcpStreamReq) => {
                    let takeover = StreamReq::parse(&f)
                        .map(|r| r.flags.has(StreamFlags::TAKEOVER))
                        .unwrap_or(false);
                    self.send_stream_req_ok(f.opaque().0).await;
                    let vb = f.vbucket().0;
                    if takeover {
                        takeovers.insert(f.opaque().0, (vb, VbState::Pending));
                        self.send_set_vbucket_state(vb, f.opaque().0, VbState::Pending)
                            .await;
                    } else {
                        log(AutoEvent::Added(name.clone(), vb));
                    }
                }
                (AutoRole::Producer, false, Opcode::DcpSetVbucketState) => {
                    let w = f.opaque().0;
                    match takeovers.get(&w).copied() {
                        Some((vb, VbState::Pending)) => {
                            takeovers.insert(w, (vb, VbState::Active));
                            self.send_set_vbucket_state(vb, w, VbState::Active).await;
                        }
                        Some((vb, _)) => {
                            takeovers.remove(&w);
                            self.send_stream_end(vb, w, EndReason::Ok).await;
                            log(AutoEvent::TookOver(name.clone(), vb));
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
        log(AutoEvent::Eof(name));
    }

    /// The DCP_OPEN flags.
    pub fn open_flags(&self) -> Option<u32> {
        self.open.as_ref().map(|o| o.1)
    }

    /// The next frame from the proxy (panics on EOF or after the bound).
    pub async fn recv(&mut self) -> Frame {
        timeout(WAIT, self.read_frame())
            .await
            .expect("fake node: no frame within the bound")
            .expect("fake node: proxy closed the socket while a frame was expected")
    }

    /// The next frame, which must be a request (or response) with this opcode.
    pub async fn expect(&mut self, op: Opcode) -> Frame {
        let f = self.recv().await;
        assert_eq!(f.opcode(), op, "fake node: unexpected frame {f:?}");
        f
    }

    /// Writes a frame (errors ignored: the proxy may already be gone).
    pub async fn send(&mut self, f: &Frame) {
        let _ = self.stream.write_all(f.bytes()).await;
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// Waits until the proxy closes the socket (frames read meanwhile are returned).
    pub async fn expect_eof(&mut self) -> Vec<Frame> {
        let mut seen = Vec::new();
        let r = timeout(WAIT, async {
            while let Some(f) = self.read_frame().await {
                seen.push(f);
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "fake node: the proxy did not close the socket; frames seen: {seen:?}"
        );
        seen
    }

    /// Writes DCP mutations for `vb` until a write makes no progress for 300 ms
    /// (every buffer between here and a peer that does not read is full). Returns
    /// the bytes written.
    pub async fn flood(&mut self, vb: u16, w: u32) -> usize {
        let mut batch = Vec::new();
        for i in 0..64u32 {
            let key = format!("flood-{i}");
            let f = mcbp::FrameSpec::request(Opcode::DcpMutation)
                .vbucket(Vbid(vb))
                .opaque(Opaque(w))
                .extras(&[0u8; 31])
                .key(key.as_bytes())
                .value(&[b'x'; 4000])
                .to_frame();
            batch.extend_from_slice(f.bytes());
        }
        let mut written = 0usize;
        let bound = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                tokio::time::Instant::now() < bound,
                "fake node: flood never blocked"
            );
            // Whole frames only: continue where the last (partial) write stopped.
            let at = written % batch.len();
            match timeout(Duration::from_millis(300), self.stream.write(&batch[at..])).await {
                Err(_) => return written,
                Ok(Ok(n)) if n > 0 => written += n,
                Ok(_) => return written,
            }
        }
    }

    /// Closes the socket with a reset (SO_LINGER 0): the peer sees ECONNRESET.
    pub fn reset(self) {
        #[allow(deprecated)]
        let _ = self.stream.set_linger(Some(Duration::ZERO));
        drop(self);
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
        drop(self);
    }

    // ---- scripted DCP helpers ------------------------------------------------

    /// Consumer node: sends STREAM_REQ for `vb` with wire opaque `w` (after our ADD).
    pub async fn send_stream_req(&mut self, vb: u16, w: u32, takeover: bool) {
        let req = StreamReq {
            vbucket: Vbid(vb),
            opaque: Opaque(w),
            flags: StreamFlags(if takeover { StreamFlags::TAKEOVER } else { 0 }),
            start: Seqno(0),
            end: Seqno(u64::MAX),
            vb_uuid: VbUuid(0),
            snap_start: Seqno(0),
            snap_end: Seqno(0),
            value: bytes::Bytes::new(),
        };
        self.send(&req.to_frame()).await;
    }

    /// Producer node: answers a STREAM_REQ with SUCCESS.
    pub async fn send_stream_req_ok(&mut self, w: u32) {
        let r = StreamReqResponse {
            opaque: Opaque(w),
            outcome: StreamReqOutcome::Success {
                failover_log: vec![FailoverEntry {
                    vb_uuid: VbUuid(0xabcd),
                    seqno: Seqno(0),
                }],
            },
        };
        self.send(&r.to_frame()).await;
    }

    /// Consumer node: answers our ADD_STREAM.
    pub async fn send_add_answer(&mut self, add: &Frame, status: Status, w: Option<u32>) {
        let r = AddStreamResponse {
            opaque: add.opaque(),
            status,
            stream_opaque: w.map(Opaque),
        };
        self.send(&r.to_frame()).await;
    }

    /// Producer node: STREAM_END.
    pub async fn send_stream_end(&mut self, vb: u16, w: u32, reason: EndReason) {
        let e = StreamEnd {
            vbucket: Vbid(vb),
            opaque: Opaque(w),
            reason,
        };
        self.send(&e.to_frame()).await;
    }

    /// Producer node: SET_VBUCKET_STATE.
    pub async fn send_set_vbucket_state(&mut self, vb: u16, w: u32, state: VbState) {
        let s = SetVbucketState {
            vbucket: Vbid(vb),
            opaque: Opaque(w),
            state,
        };
        self.send(&s.to_frame()).await;
    }

    /// Answers a request with a status-only response.
    pub async fn answer_status(&mut self, req: &Frame, status: Status) {
        self.send(&Response::to_request(req, status).to_frame())
            .await;
    }
}
