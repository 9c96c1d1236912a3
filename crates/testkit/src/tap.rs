//! The frame tap: a frame-by-frame TCP forwarder in front of a node. It logs every
//! frame passing, notes which side ended each connection first, and can do a [`Cut`]
//! to the first frame a trigger matches (across all its connections) to break a
//! conversation at an exact point. Without a cut it changes nothing: the connecting
//! side and the node talk exactly as they would directly (whole frames are forwarded
//! unchanged, in order).

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mcbp::{Frame, FrameDecoder, Message, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
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

type Trigger = Arc<dyn Fn(Dir, &Frame) -> bool + Send + Sync>;

/// What every connection of one tap shares.
struct Shared {
    cut: Option<(Cut, Trigger)>,
    fired: Mutex<bool>,
    log: Mutex<Vec<(Dir, Frame)>>,
    /// Per accepted connection: `Some(dir)` once it ended, `dir` the direction in
    /// which the first EOF, error or kill was seen.
    ends: Mutex<Vec<Option<Dir>>>,
}

/// A running tap; stops accepting and drops its connections when dropped.
pub struct Tap {
    /// The address to connect to instead of the node.
    pub addr: String,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            cut,
            fired: Mutex::new(false),
            log: Mutex::new(Vec::new()),
            ends: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let idx = {
                    let mut e = sh.ends.lock().expect("ends");
                    e.push(None);
                    e.len() - 1
                };
                let sh = sh.clone();
                conns.spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (nr, nw) = node.into_split();
                    let cw = Arc::new(tokio::sync::Mutex::new(cw));
                    let nw = Arc::new(tokio::sync::Mutex::new(nw));
                    let to_node = pump(cr, nw.clone(), cw.clone(), Dir::ToNode, &sh);
                    let from_node = pump(nr, cw, nw, Dir::FromNode, &sh);
                    // Either pump ending (EOF, error or a kill) drops both sockets.
                    let first = tokio::select! {
                        () = to_node => Dir::ToNode,
                        () = from_node => Dir::FromNode,
                    };
                    sh.ends.lock().expect("ends")[idx] = Some(first);
                });
            }
            conns.abort_all();
        });
        Ok(Tap { addr, shared, task })
    }

    /// Frames logged so far that match.
    #[must_use]
    pub fn frames(&self, f: impl Fn(Dir, &Frame) -> bool) -> Vec<Frame> {
        self.shared
            .log
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
        self.shared.ends.lock().expect("ends").clone()
    }

    /// Whether the cut's trigger matched.
    #[must_use]
    pub fn fired(&self) -> bool {
        *self.shared.fired.lock().expect("fired")
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

/// Reads frames from `rd`, logs each, and forwards it to `fwd` unless it is the cut
/// frame. Returns on EOF, a read or write error, a corrupt stream or a kill.
async fn pump(
    mut rd: OwnedReadHalf,
    fwd: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    back: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    dir: Dir,
    sh: &Shared,
) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        loop {
            let f = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            sh.log.lock().expect("log").push((dir, f.clone()));
            let cut = sh.cut.as_ref().and_then(|(cut, trigger)| {
                let mut done = sh.fired.lock().expect("fired");
                let hit = !*done && trigger(dir, &f);
                *done |= hit;
                hit.then_some(*cut)
            });
            let res = match cut {
                Some(Cut::Kill) => return,
                Some(Cut::Swallow) => Ok(()),
                Some(Cut::Refuse(status)) => {
                    let answer = mcbp::Response::to_request(&f, status).to_frame();
                    back.lock().await.write_all(answer.bytes()).await
                }
                None => fwd.lock().await.write_all(f.bytes()).await,
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
