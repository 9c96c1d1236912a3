//! The socket half shared by both DCP shells: framing, a bounded output buffer
//! flushed from inside the select loop (so a peer that stops reading never blocks
//! timers or cancellation), and the two connection-level faults (`close_after_frames`,
//! `stall`).

use std::collections::HashSet;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use mcbp::{Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

use super::ConnError;
use crate::faults::{Fault, Faults};

/// Stop reading while this much unprocessed input is buffered.
const MAX_INBUF: usize = 4 * 1024 * 1024;

/// What woke the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    Read,
    Wrote,
    Changed,
    Timer,
    /// Shutdown or a newer connection with the same name.
    Cancelled,
}

#[derive(Debug)]
pub(super) struct Wire {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    inbuf: BytesMut,
    pub(super) out: BytesMut,
    decoder: FrameDecoder,
    frames: u64,
    close_after: Option<u64>,
    stall_until: Option<Instant>,
    stalls_applied: HashSet<u64>,
}

/// The current time as the cores take it (respects `tokio::time::pause`).
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Wire {
    pub(super) fn new(
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        inbuf: BytesMut,
        close_after: Option<u64>,
    ) -> Wire {
        Wire {
            rd,
            wr,
            inbuf,
            out: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::default(),
            frames: 0,
            close_after,
            stall_until: None,
            stalls_applied: HashSet::new(),
        }
    }

    /// Applies a `stall` fault once per connection per distinct duration.
    pub(super) fn check_stall(&mut self, faults: &Faults, now: Instant) {
        if !faults.enabled() {
            return;
        }
        let stall = faults.find(|f| match f {
            Fault::Stall { ms } => Some(*ms),
            _ => None,
        });
        if let Some(ms) = stall {
            if self.stalls_applied.insert(ms) {
                tracing::info!(ms, "stall fault: not reading");
                self.stall_until = Some(now + std::time::Duration::from_millis(ms));
            }
        }
    }

    fn stalled(&self, now: Instant) -> bool {
        self.stall_until.is_some_and(|t| t > now)
    }

    /// The next whole frame already read, unless stalled.
    pub(super) fn next_frame(&mut self, now: Instant) -> Result<Option<Frame>, ConnError> {
        if self.stalled(now) {
            return Ok(None);
        }
        if let Some(n) = self.close_after {
            if self.frames >= n {
                return Err(ConnError::FaultClose(n));
            }
        }
        let f = self
            .decoder
            .decode(&mut self.inbuf)
            .map_err(ConnError::Decode)?;
        if f.is_some() {
            self.frames += 1;
        }
        Ok(f)
    }

    /// Waits for the next thing to do: bytes read or written, a change in the bucket,
    /// the deadline, or cancellation. Every branch is cancel-safe.
    pub(super) async fn wait(
        &mut self,
        deadline: Option<Instant>,
        changed: Option<std::pin::Pin<&mut Notified<'_>>>,
        shutdown: &CancellationToken,
        replaced: &CancellationToken,
    ) -> Result<Wake, ConnError> {
        let now = now();
        let stalled = self.stalled(now);
        let deadline = match (deadline, self.stall_until.filter(|_| stalled)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let can_read = !stalled && self.inbuf.len() < MAX_INBUF;
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let changed = async {
            match changed {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(Wake::Cancelled),
            () = replaced.cancelled() => Ok(Wake::Cancelled),
            r = self.wr.write(&self.out), if !self.out.is_empty() => {
                let n = r.map_err(ConnError::Io)?;
                if n == 0 {
                    return Err(ConnError::PeerClosed);
                }
                self.out.advance(n);
                Ok(Wake::Wrote)
            }
            r = self.rd.read_buf(&mut self.inbuf), if can_read => match r {
                Ok(0) => Err(ConnError::PeerClosed),
                Ok(_) => Ok(Wake::Read),
                Err(e) => Err(ConnError::Io(e)),
            },
            () = changed => Ok(Wake::Changed),
            () = sleep => Ok(Wake::Timer),
        }
    }

    /// Best effort on the way out: what is buffered, bounded by `within`.
    pub(super) async fn flush(&mut self, within: std::time::Duration) {
        if self.out.is_empty() {
            return;
        }
        let _ = tokio::time::timeout(within, self.wr.write_all(&self.out)).await;
        self.out.clear();
    }
}
