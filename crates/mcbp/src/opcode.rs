//! Opcodes of client requests (magic 0x80/0x08) and their responses (`mcbp-dcp.md` §3).

use crate::codes::code_table;

code_table! {
    /// A client-namespace opcode (§3.1 KV/management, §3.2 DCP).
    ///
    /// Server-initiated requests (magic 0x82/0x83) use their own namespace: see
    /// [`ServerOpcode`].
    Opcode(u8) {
        Get = 0x00 => "GET",
        Set = 0x01 => "SET",
        Add = 0x02 => "ADD",
        Replace = 0x03 => "REPLACE",
        Delete = 0x04 => "DELETE",
        Increment = 0x05 => "INCREMENT",
        Decrement = 0x06 => "DECREMENT",
        Quit = 0x07 => "QUIT",
        Flush = 0x08 => "FLUSH",
        GetQ = 0x09 => "GETQ",
        Noop = 0x0a => "NOOP",
        Version = 0x0b => "VERSION",
        GetK = 0x0c => "GETK",
        GetKQ = 0x0d => "GETKQ",
        Append = 0x0e => "APPEND",
        Prepend = 0x0f => "PREPEND",
        Stat = 0x10 => "STAT",
        SetQ = 0x11 => "SETQ",
        AddQ = 0x12 => "ADDQ",
        ReplaceQ = 0x13 => "REPLACEQ",
        DeleteQ = 0x14 => "DELETEQ",
        IncrementQ = 0x15 => "INCREMENTQ",
        DecrementQ = 0x16 => "DECREMENTQ",
        QuitQ = 0x17 => "QUITQ",
        FlushQ = 0x18 => "FLUSHQ",
        AppendQ = 0x19 => "APPENDQ",
        PrependQ = 0x1a => "PREPENDQ",
        Verbosity = 0x1b => "VERBOSITY",
        Touch = 0x1c => "TOUCH",
        Gat = 0x1d => "GAT",
        GatQ = 0x1e => "GATQ",
        Hello = 0x1f => "HELLO",
        SaslListMechs = 0x20 => "SASL_LIST_MECHS",
        SaslAuth = 0x21 => "SASL_AUTH",
        SaslStep = 0x22 => "SASL_STEP",
        SetVbucket = 0x3d => "SET_VBUCKET",
        GetVbucket = 0x3e => "GET_VBUCKET",
        DelVbucket = 0x3f => "DEL_VBUCKET",
        GetAllVbSeqnos = 0x48 => "GET_ALL_VB_SEQNOS",
        DcpOpen = 0x50 => "DCP_OPEN",
        DcpAddStream = 0x51 => "DCP_ADD_STREAM",
        DcpCloseStream = 0x52 => "DCP_CLOSE_STREAM",
        DcpStreamReq = 0x53 => "DCP_STREAM_REQ",
        DcpGetFailoverLog = 0x54 => "DCP_GET_FAILOVER_LOG",
        DcpStreamEnd = 0x55 => "DCP_STREAM_END",
        DcpSnapshotMarker = 0x56 => "DCP_SNAPSHOT_MARKER",
        DcpMutation = 0x57 => "DCP_MUTATION",
        DcpDeletion = 0x58 => "DCP_DELETION",
        DcpExpiration = 0x59 => "DCP_EXPIRATION",
        DcpFlush = 0x5a => "DCP_FLUSH",
        DcpSetVbucketState = 0x5b => "DCP_SET_VBUCKET_STATE",
        DcpNoop = 0x5c => "DCP_NOOP",
        DcpBufferAcknowledgement = 0x5d => "DCP_BUFFER_ACKNOWLEDGEMENT",
        DcpControl = 0x5e => "DCP_CONTROL",
        DcpSystemEvent = 0x5f => "DCP_SYSTEM_EVENT",
        DcpPrepare = 0x60 => "DCP_PREPARE",
        DcpSeqnoAcknowledged = 0x61 => "DCP_SEQNO_ACKNOWLEDGED",
        DcpCommit = 0x62 => "DCP_COMMIT",
        DcpAbort = 0x63 => "DCP_ABORT",
        DcpSeqnoAdvanced = 0x64 => "DCP_SEQNO_ADVANCED",
        DcpOsoSnapshot = 0x65 => "DCP_OSO_SNAPSHOT",
        DcpCacheTransfer = 0x66 => "DCP_CACHE_TRANSFER",
        DcpCacheTransferEnd = 0x67 => "DCP_CACHE_TRANSFER_END",
        SetParam = 0x82 => "SET_PARAM",
        GetReplica = 0x83 => "GET_REPLICA",
        SelectBucket = 0x89 => "SELECT_BUCKET",
        ObserveSeqno = 0x91 => "OBSERVE_SEQNO",
        GetFailoverLog = 0x96 => "GET_FAILOVER_LOG",
        GetMeta = 0xa0 => "GET_META",
        GetQMeta = 0xa1 => "GETQ_META",
        SetWithMeta = 0xa2 => "SET_WITH_META",
        SetQWithMeta = 0xa3 => "SETQ_WITH_META",
        AddWithMeta = 0xa4 => "ADD_WITH_META",
        AddQWithMeta = 0xa5 => "ADDQ_WITH_META",
        DelWithMeta = 0xa8 => "DEL_WITH_META",
        DelQWithMeta = 0xa9 => "DELQ_WITH_META",
        GetClusterConfig = 0xb5 => "GET_CLUSTER_CONFIG",
        SeqnoPersistence = 0xb7 => "SEQNO_PERSISTENCE",
        CollectionsSetManifest = 0xb9 => "COLLECTIONS_SET_MANIFEST",
        CollectionsGetManifest = 0xba => "COLLECTIONS_GET_MANIFEST",
        CollectionsGetId = 0xbb => "COLLECTIONS_GET_ID",
        CollectionsGetScopeId = 0xbc => "COLLECTIONS_GET_SCOPE_ID",
        GetErrorMap = 0xfe => "GET_ERROR_MAP",
    }
}

impl Opcode {
    /// Whether this is a DCP opcode (0x50..=0x67).
    #[must_use]
    pub fn is_dcp(self) -> bool {
        (0x50..=0x67).contains(&self.to_raw())
    }

    /// Whether this is a "quiet" KV opcode that omits its success response.
    #[must_use]
    pub fn is_quiet(self) -> bool {
        matches!(
            self,
            Opcode::GetQ
                | Opcode::GetKQ
                | Opcode::SetQ
                | Opcode::AddQ
                | Opcode::ReplaceQ
                | Opcode::DeleteQ
                | Opcode::IncrementQ
                | Opcode::DecrementQ
                | Opcode::QuitQ
                | Opcode::FlushQ
                | Opcode::AppendQ
                | Opcode::PrependQ
                | Opcode::GatQ
                | Opcode::GetQMeta
                | Opcode::SetQWithMeta
                | Opcode::AddQWithMeta
                | Opcode::DelQWithMeta
        )
    }
}

code_table! {
    /// Opcodes of server-initiated requests (magic 0x82) and their responses (0x83).
    ServerOpcode(u8) {
        ClustermapChangeNotification = 0x01 => "CLUSTERMAP_CHANGE_NOTIFICATION",
        Authenticate = 0x02 => "AUTHENTICATE",
        ActiveExternalUsers = 0x03 => "ACTIVE_EXTERNAL_USERS",
        GetAuthorization = 0x04 => "GET_AUTHORIZATION",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_opcode_round_trips_and_unknown_values_are_kept() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_raw(op.to_raw()), *op);
        }
        assert_eq!(Opcode::from_raw(0x68), Opcode::Unknown(0x68));
        assert_eq!(Opcode::from_raw(0x68).to_string(), "UNKNOWN(0x68)");
        assert_eq!(Opcode::DcpStreamReq.to_string(), "DCP_STREAM_REQ(0x53)");
    }

    #[test]
    fn dcp_range_is_0x50_to_0x67() {
        assert!(Opcode::DcpOpen.is_dcp());
        assert!(Opcode::DcpCacheTransferEnd.is_dcp());
        assert!(!Opcode::Unknown(0x68).is_dcp());
        assert!(!Opcode::Get.is_dcp());
        assert!(Opcode::GetKQ.is_quiet());
        assert!(!Opcode::GetK.is_quiet());
    }
}
