//! DCP producer and consumer connections (`mcbp-dcp.md` §6, §7).
//!
//! Layout: pure cores that own no socket and read no clock — [`producer::ProducerConn`]
//! with one [`active_stream::ActiveStream`] per vbucket, [`consumer::ConsumerConn`]
//! with one [`passive_stream::PassiveStream`] per vbucket, [`flow`] for flow
//! control — and one thin async shell per connection ([`wire::Wire`] plus the `run`
//! functions) that feeds them frames, time and wake-ups and writes what they encode.
//!
//! The engine is a synchronous, deterministic dependency, so cores read it (and the
//! consumer applies replica writes to it) directly; the only engine call done by the
//! shell is a consumer rollback, which writes to disk.
//!
//! Node-wide bookkeeping lives in [`DcpRegistry`] (one per bucket, in
//! [`crate::dcp_registry`]): live connections and their streams for the `dcp` and
//! `dcp-vbtakeover` stats, a per-vbucket epoch bumped on every state change or
//! rollback (it ends producer streams, §7.8), and the per-vbucket "receiving its
//! initial disk snapshot" flag (ETMPFAIL, §7.4).
//!
//! The KV session hands a connection over after DCP_OPEN as a [`DcpPeer`]; this
//! module never reaches back into the session.

pub(crate) mod active_stream;
pub(crate) mod consumer;
pub(crate) mod flow;
pub(crate) mod passive_stream;
pub(crate) mod producer;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mcbp::dcp::OpenFlags;
use mcbp::{Frame, Opaque, Opcode, Status, Vbid};
use mcbp_conn::FrameReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub(crate) use crate::dcp_registry::{ConnInfo, DcpRegistry, Side, StreamInfo, StreamStatus};
use crate::state::{BucketEntry, NodeState};

/// What a DCP connection takes over from the KV session that accepted its DCP_OPEN.
#[derive(Debug)]
pub(crate) struct DcpPeer {
    pub(crate) state: Arc<NodeState>,
    pub(crate) peer: SocketAddr,
    /// HELLO granted JSON: the producer may send the JSON datatype.
    pub(crate) json: bool,
}

/// An accepted DCP_OPEN, ready to take the socket over.
#[derive(Debug)]
pub(crate) struct DcpOpen {
    bucket: Arc<BucketEntry>,
    name: String,
    flags: OpenFlags,
    reg_id: u64,
    replaced: CancellationToken,
    close_after_frames: Option<u64>,
}

/// A DCP connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("dcp {side} {name:?} on bucket {bucket} ({peer}): {reason}")]
pub(crate) struct DcpError {
    side: Side,
    name: String,
    bucket: String,
    peer: SocketAddr,
    #[source]
    reason: ConnError,
}

/// Why a DCP connection is torn down (the whole connection, not one stream).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// Nothing at all arrived from the peer for the DCP idle timeout (§7.7).
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    /// A NOOP answer that does not match the one outstanding (§6.14).
    #[error("noop answer with opaque {got} (outstanding: {expected:?})")]
    NoopMismatch {
        got: Opaque,
        expected: Option<Opaque>,
    },
    /// A command this side never accepts (§6.1).
    #[error("{opcode} is not accepted on a {side} connection")]
    WrongSide { opcode: Opcode, side: Side },
    /// A frame whose body does not fit its opcode.
    #[error("malformed {opcode}: {reason}")]
    Malformed { opcode: Opcode, reason: String },
    /// A STREAM_REQ answer for an opaque we never used (§10.3).
    #[error("stream request answer with unknown opaque {0}")]
    UnknownOpaque(Opaque),
    /// A control the protocol makes mandatory was refused (§6.16).
    #[error("control {key} refused with {status}")]
    ControlRefused { key: String, status: Status },
    /// The replica refused a stream message in a way that leaves it inconsistent.
    #[error("{vb}: {what}")]
    Replica { vb: Vbid, what: String },
    /// The stream or connection state the takeover needs could not be set.
    #[error("{vb}: setting the vbucket state failed: {what}")]
    SetState { vb: Vbid, what: String },
    /// The `close_after_frames` fault.
    #[error("closed by the close_after_frames fault after {0} frames")]
    FaultClose(u64),
    /// Undecodable bytes.
    #[error("malformed frame")]
    Decode(#[source] mcbp::DecodeError),
    /// The socket failed.
    #[error("i/o failed")]
    Io(#[source] std::io::Error),
    /// The peer closed its end.
    #[error("peer closed the connection")]
    PeerClosed,
}

/// Validates a DCP_OPEN (§6.2) and registers the connection name; a live connection
/// of the same name on the bucket is told to disconnect.
pub(crate) fn accept_open(
    s: &DcpPeer,
    bucket: &Arc<BucketEntry>,
    open: mcbp::dcp::Open,
    _req: &Frame,
) -> Result<DcpOpen, Status> {
    if let Some(why) = open.flags.invalid_reason() {
        debug!(peer = %s.peer, flags = open.flags.0, why, "DCP_OPEN refused");
        return Err(Status::Einval);
    }
    let producer = open.flags.has(OpenFlags::PRODUCER);
    if !open.value.is_empty() {
        // Only {"consumer_name": "<string>"} on a consumer connection.
        let ok = !producer
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&open.value)
                .is_ok_and(|m| m.iter().all(|(k, v)| k == "consumer_name" && v.is_string()));
        if !ok {
            debug!(peer = %s.peer, "DCP_OPEN value refused");
            return Err(Status::Einval);
        }
    }
    let name = String::from_utf8_lossy(&open.name).into_owned();
    if name.is_empty() {
        return Err(Status::Einval);
    }
    let (reg_id, replaced) = s.state.register_dcp_name(&bucket.meta.name, &name);
    let close_after_frames = s.state.faults.take_close_after_frames();
    info!(peer = %s.peer, bucket = %bucket.meta.name, %name, side = %if producer { Side::Producer } else { Side::Consumer }, flags = open.flags.0, "DCP connection opened");
    Ok(DcpOpen {
        bucket: bucket.clone(),
        name,
        flags: open.flags,
        reg_id,
        replaced,
        close_after_frames,
    })
}

/// Serves a DCP connection until it ends.
pub(crate) async fn run(
    s: &DcpPeer,
    open: DcpOpen,
    reader: FrameReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    shutdown: CancellationToken,
) -> Result<(), DcpError> {
    let side = if open.flags.has(OpenFlags::PRODUCER) {
        Side::Producer
    } else {
        Side::Consumer
    };
    let info = Arc::new(ConnInfo::new(open.reg_id, open.name.clone(), side, s.peer));
    let entry = open.bucket.clone();
    entry.dcp.register(info.clone());
    let wire = wire::Wire::new(reader, wr, open.close_after_frames);
    let res = match side {
        Side::Producer => producer::run(s, &open, &info, wire, &shutdown).await,
        Side::Consumer => consumer::run(s, &open, &info, wire, &shutdown).await,
    };
    entry.dcp.unregister(&open.name, open.reg_id);
    s.state
        .unregister_dcp_name(&entry.meta.name, &open.name, open.reg_id);
    match res {
        Ok(()) => {
            info!(peer = %s.peer, name = %open.name, %side, "DCP connection closed");
            Ok(())
        }
        Err(reason) => Err(DcpError {
            side,
            name: open.name.clone(),
            bucket: entry.meta.name.clone(),
            peer: s.peer,
            reason,
        }),
    }
}
