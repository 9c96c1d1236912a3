//! The socket half shared by both DCP shells: mcbp-conn's framed halves (bounded
//! input, output flushed from inside the select loop so a peer that stops reading
//! never blocks timers or cancellation), plus the two connection-level faults
//! (`close_after_frames`, `stall`).

use std::collections::HashSet;
use std::time::Instant;

use bytes::BytesMut;
use mcbp::Frame;
use mcbp_conn::{FrameReader, FrameWriter, ReadError, WriteError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

use super::ConnError;
use crate::faults::{Fault, Faults};

/// A write without progress for this long ends the connection (the DCP idle and
/// noop rules normally end it much earlier).
const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(360);

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
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
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
    /// Takes over a connection from the session that accepted its DCP_OPEN: the
    /// reader keeps whatever the session had read past the DCP_OPEN.
    pub(super) fn new(
        reader: FrameReader<OwnedReadHalf>,
        wr: OwnedWriteHalf,
        close_after: Option<u64>,
    ) -> Wire {
        Wire {
            reader,
            writer: FrameWriter::new(wr, usize::MAX, WRITE_STALL),
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

    /// Where the cores encode what they send; its length is the unsent output.
    pub(super) fn out(&mut self) -> &mut BytesMut {
        self.writer.staging()
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
        let f = self.reader.next_buffered().map_err(ConnError::Decode)?;
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
        let can_read = !stalled && self.reader.can_read();
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
            r = self.writer.write_some(), if !self.writer.is_empty() => match r {
                Ok(_) => Ok(Wake::Wrote),
                Err(WriteError::Closed) => Err(ConnError::PeerClosed),
                Err(WriteError::Io(e)) => Err(ConnError::Io(e)),
                Err(WriteError::Stalled(d)) => Err(ConnError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no write progress for {d:?}"),
                ))),
            },
            r = self.reader.fill(), if can_read => match r {
                Ok(_) => Ok(Wake::Read),
                Err(ReadError::Closed) => Err(ConnError::PeerClosed),
                Err(ReadError::Io(e)) => Err(ConnError::Io(e)),
                Err(ReadError::Decode(e)) => Err(ConnError::Decode(e)),
            },
            () = changed => Ok(Wake::Changed),
            () = sleep => Ok(Wake::Timer),
        }
    }

    /// Best effort on the way out: what is buffered, bounded by `within`.
    pub(super) async fn flush(&mut self, within: std::time::Duration) {
        let _ = self.writer.flush_within(within).await;
    }
}
