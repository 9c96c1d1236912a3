//! Typed DCP messages (`mcbp-dcp.md` §6), one group per file.
//!
//! Header fields a message needs (vbucket, opaque, CAS, datatype) are fields of the
//! message, so `parse(encode(m)) == m` holds for every message.

mod control;
mod data;
mod stream;

pub use control::{BufferAck, Control, SetVbucketState};
pub use data::{
    Deletion, Expiration, MarkerVersion, Mutation, SeqnoAdvanced, SnapshotMarker, SystemEvent,
};
pub use stream::{
    AddStream, AddStreamResponse, FailoverEntry, FailoverLogResponse, Open, StreamEnd, StreamReq,
    StreamReqOutcome, StreamReqResponse,
};

use crate::codes::code_table;

/// DCP_OPEN flags (§6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    /// This connection is a producer (the opener consumes).
    pub const PRODUCER: u32 = 0x001;
    /// Invalid now (was NOTIFIER).
    pub const NOTIFIER: u32 = 0x002;
    /// Mutations/deletions/expirations carry xattrs.
    pub const INCLUDE_XATTRS: u32 = 0x004;
    /// Strip document bodies.
    pub const NO_VALUE: u32 = 0x008;
    /// Deletions use V2 extras.
    pub const INCLUDE_DELETE_TIMES: u32 = 0x020;
    /// Strip bodies but keep the datatype.
    pub const NO_VALUE_WITH_UNDERLYING_DATATYPE: u32 = 0x040;
    /// User xattrs in deletion values.
    pub const INCLUDE_DELETED_USER_XATTRS: u32 = 0x100;
    /// Producer only.
    pub const SKIP_DELETES_IN_INITIAL_BACKFILL: u32 = 0x200;
    /// What a replication consumer connection opens with (0x124).
    pub const REPLICATION_CONSUMER: OpenFlags = OpenFlags(0x124);
    /// What a replication producer connection opens with (0x125).
    pub const REPLICATION_PRODUCER: OpenFlags = OpenFlags(0x125);

    /// Whether a flag bit is set.
    #[must_use]
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }

    /// The bits DCP_OPEN refuses with EINVAL (§6.2): 0x002, 0x010, 0x080, unknown
    /// bits, NO_VALUE with NO_VALUE_WITH_UNDERLYING_DATATYPE, deleted user xattrs
    /// without xattrs.
    #[must_use]
    pub fn invalid_reason(self) -> Option<&'static str> {
        const KNOWN: u32 = 0x001 | 0x004 | 0x008 | 0x020 | 0x040 | 0x100 | 0x200;
        if self.0 & !KNOWN != 0 {
            return Some("unknown or retired flag bits");
        }
        if self.has(Self::NO_VALUE) && self.has(Self::NO_VALUE_WITH_UNDERLYING_DATATYPE) {
            return Some("NO_VALUE and NO_VALUE_WITH_UNDERLYING_DATATYPE are exclusive");
        }
        if self.has(Self::INCLUDE_DELETED_USER_XATTRS) && !self.has(Self::INCLUDE_XATTRS) {
            return Some("INCLUDE_DELETED_USER_XATTRS needs INCLUDE_XATTRS");
        }
        if self.has(Self::SKIP_DELETES_IN_INITIAL_BACKFILL) && !self.has(Self::PRODUCER) {
            return Some("SKIP_DELETES_IN_INITIAL_BACKFILL is for producers only");
        }
        None
    }
}

/// ADD_STREAM / STREAM_REQ flags (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct StreamFlags(pub u32);

impl StreamFlags {
    /// Stream until caught up, then hand the vbucket over.
    pub const TAKEOVER: u32 = 0x001;
    /// End at the persisted seqno.
    pub const DISK_ONLY: u32 = 0x002;
    /// End at the current high seqno.
    pub const TO_LATEST: u32 = 0x004;
    /// Removed (EINVAL).
    pub const NO_VALUE: u32 = 0x008;
    /// Refuse unless the vbucket is active.
    pub const ACTIVE_VB_ONLY: u32 = 0x010;
    /// Check the uuid even when start is 0.
    pub const STRICT_VBUUID: u32 = 0x020;
    /// Start at the current high seqno.
    pub const FROM_LATEST: u32 = 0x040;
    /// Skip the purge-seqno rollback rule.
    pub const IGNORE_PURGED_TOMBSTONES: u32 = 0x080;
    /// Cache transfer.
    pub const CACHE_TRANSFER: u32 = 0x100;

    /// Whether a flag bit is set.
    #[must_use]
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// Snapshot marker flags (§6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MarkerFlags(pub u32);

impl MarkerFlags {
    /// In-memory snapshot.
    pub const MEMORY: u32 = 0x01;
    /// Disk snapshot.
    pub const DISK: u32 = 0x02;
    /// Start a new checkpoint on the replica.
    pub const CHECKPOINT: u32 = 0x04;
    /// The consumer must acknowledge once the end seqno is processed.
    pub const ACK: u32 = 0x08;
    /// History snapshot.
    pub const HISTORY: u32 = 0x10;
    /// May contain duplicate keys.
    pub const MAY_CONTAIN_DUPLICATE_KEYS: u32 = 0x20;

    /// Whether a flag bit is set.
    #[must_use]
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

code_table! {
    /// Why a producer ended a stream (§6.7).
    EndReason(u32) {
        Ok = 0 => "OK",
        Closed = 1 => "CLOSED",
        StateChanged = 2 => "STATE_CHANGED",
        Disconnected = 3 => "DISCONNECTED",
        TooSlow = 4 => "TOO_SLOW",
        BackfillFailed = 5 => "BACKFILL_FAILED",
        Rollback = 6 => "ROLLBACK",
        FilterEmpty = 7 => "FILTER_EMPTY",
        LostPrivileges = 8 => "LOST_PRIVILEGES",
    }
}

/// Flow-control size of a DCP message: its full wire size (§7.6). NOOPs and
/// responses are not counted; a PREPARE counts 2 extra bytes (MB-46634).
#[must_use]
pub fn flow_control_size(frame: &crate::Frame) -> usize {
    use crate::Opcode;
    if !frame.is_request() {
        return 0;
    }
    match frame.opcode() {
        Opcode::DcpNoop
        | Opcode::DcpOpen
        | Opcode::DcpAddStream
        | Opcode::DcpCloseStream
        | Opcode::DcpStreamReq
        | Opcode::DcpGetFailoverLog
        | Opcode::DcpBufferAcknowledgement
        | Opcode::DcpControl
        | Opcode::DcpSeqnoAcknowledged => 0,
        Opcode::DcpPrepare => frame.wire_len() + 2,
        op if op.is_dcp() => frame.wire_len(),
        _ => 0,
    }
}
