//! The frame tap: a frame-by-frame forwarder between a connecting side and a node.
//! Its core, [`Relay`], relays one socket pair: it logs every frame passing, applies
//! a per-frame [`Rule`] (forward, swallow, kill, answer back) and lets the test inject
//! frames. [`Tap`] puts a listener in front of a node and relays each connection; it
//! can do a [`Cut`] to the first frame a trigger matches (across all its connections)
//! to break a conversation at an exact point, and notes which side ended each
//! connection first. Without a cut it changes nothing: both sides talk exactly as
//! they would directly (whole frames are forwarded unchanged, in order).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use mcbp::{Frame, FrameDecoder, Message, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::wait::wait_for;

/// Which way a frame went through the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the connecting side (e.g. a replicator) to the node.
    ToNode,
    /// From the node to the connecting side.
    FromNode,
}

/// What a tap does with the first frame its trigger matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Drop the connection (both sockets) without forwarding the frame.
    Kill,
    /// Never forward the frame; the connection stays open.
    Swallow,
    /// Answer the request itself with this status instead of forwarding it.
    Refuse(Status),
}

/// What a relay does with one frame it read.
#[derive(Debug)]
pub enum Verdict {
    /// Write it on, unchanged.
    Forward,
    /// Drop it; the connection stays open.
    Swallow,
    /// Drop the connection (both sockets) without forwarding it.
    Kill,
    /// Write this frame back to the sender instead of forwarding it.
    Answer(Frame),
}

/// Decides what happens to each frame a relay reads (after it is logged).
pub type Rule = Arc<dyn Fn(Dir, &Frame) -> Verdict + Send + Sync>;

type Log = Arc<Mutex<Vec<(Dir, Frame)>>>;

/// One relayed socket pair, the core of every tap: a "client" socket and a "node"
/// socket, one pump per direction that decodes whole frames, logs each, and does what
/// the [`Rule`] says; frames can be injected in either direction. The first
/// direction to end (EOF, error or a kill) ends the relay and drops both sockets.
pub struct Relay {
    inject: mpsc::UnboundedSender<(Dir, Bytes)>,
    log: Log,
    task: JoinHandle<Dir>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts relaying between `client` and `node`; `client_buf`/`node_buf` hold
    /// bytes already read from each (relayed first).
    #[must_use]
    pub fn start(
        client: TcpStream,
        client_buf: BytesMut,
        node: TcpStream,
        node_buf: BytesMut,
        rule: Rule,
    ) -> Relay {
        Relay::spawn(client, client_buf, node, node_buf, rule, Log::default())
    }

    fn spawn(
        client: TcpStream,
        client_buf: BytesMut,
        node: TcpStream,
        node_buf: BytesMut,
        rule: Rule,
        log: Log,
    ) -> Relay {
        let (inject, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            (client, client_buf),
            (node, node_buf),
            rule,
            log.clone(),
            rx,
        ));
        Relay { inject, log, task }
    }

    /// Writes `frame` in direction `dir` (to the node for [`Dir::ToNode`]), between
    /// whole relayed frames.
    pub fn inject(&self, dir: Dir, frame: Bytes) {
        let _ = self.inject.send((dir, frame));
    }

    /// Frames logged so far that match.
    #[must_use]
    pub fn frames(&self, f: impl Fn(Dir, &Frame) -> bool) -> Vec<(Dir, Frame)> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(d, fr)| f(*d, fr))
            .cloned()
            .collect()
    }

    /// Whether the relay ended (one of the sockets closed).
    #[must_use]
    pub fn closed(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops relaying and waits (bounded) until it is gone, so nothing more is
    /// forwarded.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = tokio::time::timeout(crate::node::BOUND, &mut self.task).await;
    }

    /// Waits until the relay ends; the direction in which it ended first.
    async fn ended(&mut self) -> Option<Dir> {
        (&mut self.task).await.ok()
    }
}

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

async fn run(
    (client, client_buf): (TcpStream, BytesMut),
    (node, node_buf): (TcpStream, BytesMut),
    rule: Rule,
    log: Log,
    mut inject: mpsc::UnboundedReceiver<(Dir, Bytes)>,
) -> Dir {
    let (cr, cw) = client.into_split();
    let (nr, nw) = node.into_split();
    let cw: Writer = Arc::new(tokio::sync::Mutex::new(cw));
    let nw: Writer = Arc::new(tokio::sync::Mutex::new(nw));
    let to_node = pump(cr, client_buf, &nw, &cw, Dir::ToNode, &rule, &log);
    let from_node = pump(nr, node_buf, &cw, &nw, Dir::FromNode, &rule, &log);
    let injector = async {
        while let Some((dir, b)) = inject.recv().await {
            let w = match dir {
                Dir::ToNode => &nw,
                Dir::FromNode => &cw,
            };
            if w.lock().await.write_all(&b).await.is_err() {
                return dir;
            }
        }
        std::future::pending().await
    };
    // Either pump ending (EOF, error or a kill) drops both sockets.
    tokio::select! {
        () = to_node => Dir::ToNode,
        () = from_node => Dir::FromNode,
        d = injector => d,
    }
}

/// Reads frames from `rd` (after those already in `buf`), logs each, and does what
/// `rule` says. Returns on EOF, a read or write error, a corrupt stream or a kill.
async fn pump(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    fwd: &Writer,
    back: &Writer,
    dir: Dir,
    rule: &Rule,
    log: &Log,
) {
    let decoder = FrameDecoder::default();
    loop {
        loop {
            let f = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            log.lock().expect("log").push((dir, f.clone()));
            let res = match rule(dir, &f) {
                Verdict::Kill => return,
                Verdict::Swallow => Ok(()),
                Verdict::Answer(answer) => back.lock().await.write_all(answer.bytes()).await,
                Verdict::Forward => fwd.lock().await.write_all(f.bytes()).await,
            };
            if res.is_err() {
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

type Trigger = Arc<dyn Fn(Dir, &Frame) -> bool + Send + Sync>;

/// A listener in front of a node: every accepted connection is relayed to the node
/// by a [`Relay`] sharing one log and one cut.
pub struct Tap {
    /// The address to connect to instead of the node.
    pub addr: String,
    log: Log,
    /// Per accepted connection: `Some(dir)` once it ended, `dir` the direction in
    /// which the first EOF, error or kill was seen.
    ends: Arc<Mutex<Vec<Option<Dir>>>>,
    fired: Arc<Mutex<bool>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("addr", &self.addr).finish()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// A transparent tap in front of `upstream`.
    ///
    /// # Errors
    /// Binding `127.0.0.1:0` fails.
    pub async fn start(upstream: String) -> anyhow::Result<Tap> {
        Tap::spawn(upstream, None).await
    }

    /// A tap in front of `upstream` that does `cut` to the first frame matching
    /// `trigger` and forwards everything else unchanged.
    ///
    /// # Errors
    /// Binding `127.0.0.1:0` fails.
    pub async fn with_cut(
        upstream: String,
        cut: Cut,
        trigger: impl Fn(Dir, &Frame) -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Tap> {
        Tap::spawn(upstream, Some((cut, Arc::new(trigger)))).await
    }

    async fn spawn(upstream: String, cut: Option<(Cut, Trigger)>) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let log = Log::default();
        let ends: Arc<Mutex<Vec<Option<Dir>>>> = Arc::default();
        let fired: Arc<Mutex<bool>> = Arc::default();
        let rule: Rule = match cut {
            None => Arc::new(|_, _| Verdict::Forward),
            Some((cut, trigger)) => {
                let fired = fired.clone();
                Arc::new(move |dir, f| {
                    let mut done = fired.lock().expect("fired");
                    let hit = !*done && trigger(dir, f);
                    *done |= hit;
                    match (hit, cut) {
                        (false, _) => Verdict::Forward,
                        (true, Cut::Kill) => Verdict::Kill,
                        (true, Cut::Swallow) => Verdict::Swallow,
                        (true, Cut::Refuse(status)) => {
                            Verdict::Answer(mcbp::Response::to_request(f, status).to_frame())
                        }
                    }
                })
            }
        };
        let (log2, ends2) = (log.clone(), ends.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let idx = {
                    let mut e = ends2.lock().expect("ends");
                    e.push(None);
                    e.len() - 1
                };
                let mut relay = Relay::spawn(
                    client,
                    BytesMut::new(),
                    node,
                    BytesMut::new(),
                    rule.clone(),
                    log2.clone(),
                );
                let ends = ends2.clone();
                conns.spawn(async move {
                    if let Some(first) = relay.ended().await {
                        ends.lock().expect("ends")[idx] = Some(first);
                    }
                });
            }
            conns.abort_all();
        });
        Ok(Tap {
            addr,
            log,
            ends,
            fired,
            task,
        })
    }

    /// Frames logged so far that match.
    #[must_use]
    pub fn frames(&self, f: impl Fn(Dir, &Frame) -> bool) -> Vec<Frame> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(d, fr)| f(*d, fr))
            .map(|(_, fr)| fr.clone())
            .collect()
    }

    /// How each accepted connection ended so far (`None`: still open).
    #[must_use]
    pub fn ends(&self) -> Vec<Option<Dir>> {
        self.ends.lock().expect("ends").clone()
    }

    /// Whether the cut's trigger matched.
    #[must_use]
    pub fn fired(&self) -> bool {
        *self.fired.lock().expect("fired")
    }

    /// Waits (bounded) until the tap has seen `n` connections and every one of them
    /// ended; returns how each ended.
    ///
    /// # Errors
    /// They did not all end within the bound.
    pub async fn wait_closed(&self, n: usize) -> anyhow::Result<Vec<Dir>> {
        wait_for("the tapped connections closed", || async {
            let e = self.ends();
            Ok(e.len() >= n && e.iter().all(Option::is_some))
        })
        .await?;
        self.ends()
            .into_iter()
            .map(|d| d.ok_or_else(|| anyhow::anyhow!("open")))
            .collect()
    }
}
