//! DCP producer and consumer connections. Built out by the DCP issue; until then a
//! DCP_OPEN is refused with NOT_SUPPORTED.

use std::sync::Arc;

use bytes::BytesMut;
use mcbp::{Frame, Status, Vbid};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::node::{BucketEntry, NodeState};
use crate::session::Session;

/// An accepted DCP_OPEN, ready to take the socket over.
#[derive(Debug)]
pub(crate) struct DcpOpen {
    bucket: Arc<BucketEntry>,
}

/// A DCP connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("dcp connection on bucket {bucket}: {reason}")]
pub(crate) struct DcpError {
    bucket: String,
    reason: String,
}

/// Validates a DCP_OPEN and registers the connection name.
pub(crate) fn accept_open(
    _s: &Session,
    _bucket: &Arc<BucketEntry>,
    _open: mcbp::dcp::Open,
    _req: &Frame,
) -> Result<DcpOpen, Status> {
    Err(Status::NotSupported)
}

/// Serves a DCP connection until it ends.
pub(crate) async fn run(
    _s: &mut Session,
    open: DcpOpen,
    _rd: OwnedReadHalf,
    _wr: OwnedWriteHalf,
    _inbuf: BytesMut,
    _shutdown: CancellationToken,
) -> Result<(), DcpError> {
    Err(DcpError {
        bucket: open.bucket.meta.name.clone(),
        reason: "DCP is not implemented".into(),
    })
}

/// The `dcp` stat group.
pub(crate) fn connection_stats(_state: &NodeState, _b: &BucketEntry) -> Vec<(String, String)> {
    Vec::new()
}

/// The `dcp-vbtakeover <vb> <name>` stat group (§7.10).
pub(crate) fn vbtakeover_stats(
    _state: &NodeState,
    b: &BucketEntry,
    vb: Vbid,
    _name: &str,
) -> Result<Vec<(String, String)>, Status> {
    let s = b.bucket.vb_stats(vb).map_err(|e| e.status())?;
    Ok(vec![
        ("status".into(), "connection_does_not_exist".into()),
        (
            "estimate".into(),
            (s.items + s.persisted_tombstones).to_string(),
        ),
        ("vb_items".into(), s.items.to_string()),
        ("on_disk_deletes".into(), s.persisted_tombstones.to_string()),
    ])
}
