//! Response status codes (`mcbp-dcp.md` §2).

use crate::codes::code_table;

code_table! {
    /// A response status (header bytes 6–7 of a response).
    Status(u16) {
        Success = 0x0000 => "SUCCESS",
        KeyEnoent = 0x0001 => "KEY_ENOENT",
        KeyEexists = 0x0002 => "KEY_EEXISTS",
        E2big = 0x0003 => "E2BIG",
        Einval = 0x0004 => "EINVAL",
        NotStored = 0x0005 => "NOT_STORED",
        DeltaBadval = 0x0006 => "DELTA_BADVAL",
        NotMyVbucket = 0x0007 => "NOT_MY_VBUCKET",
        NoBucket = 0x0008 => "NO_BUCKET",
        Locked = 0x0009 => "LOCKED",
        DcpStreamNotFound = 0x000a => "DCP_STREAM_NOT_FOUND",
        OpaqueNoMatch = 0x000b => "OPAQUE_NO_MATCH",
        Ewouldthrottle = 0x000c => "EWOULDTHROTTLE",
        EconfigOnly = 0x000d => "ECONFIG_ONLY",
        NotLocked = 0x000e => "NOT_LOCKED",
        CasValueInvalid = 0x000f => "CAS_VALUE_INVALID",
        AuthStale = 0x001f => "AUTH_STALE",
        AuthError = 0x0020 => "AUTH_ERROR",
        AuthContinue = 0x0021 => "AUTH_CONTINUE",
        Erange = 0x0022 => "ERANGE",
        Rollback = 0x0023 => "ROLLBACK",
        Eaccess = 0x0024 => "EACCESS",
        NotInitialized = 0x0025 => "NOT_INITIALIZED",
        EncryptionKeyNotAvailable = 0x0026 => "ENCRYPTION_KEY_NOT_AVAILABLE",
        ChecksumMismatch = 0x0027 => "CHECKSUM_MISMATCH",
        ExpiryOverflow = 0x0028 => "EXPIRY_OVERFLOW",
        LockExpiryOverflow = 0x0029 => "LOCK_EXPIRY_OVERFLOW",
        RateLimitedNetworkIngress = 0x0030 => "RATE_LIMITED_NETWORK_INGRESS",
        RateLimitedNetworkEgress = 0x0031 => "RATE_LIMITED_NETWORK_EGRESS",
        RateLimitedMaxConnections = 0x0032 => "RATE_LIMITED_MAX_CONNECTIONS",
        RateLimitedMaxCommands = 0x0033 => "RATE_LIMITED_MAX_COMMANDS",
        BucketSizeLimitExceeded = 0x0035 => "BUCKET_SIZE_LIMIT_EXCEEDED",
        BucketResidentRatioTooLow = 0x0036 => "BUCKET_RESIDENT_RATIO_TOO_LOW",
        BucketDataSizeTooBig = 0x0037 => "BUCKET_DATA_SIZE_TOO_BIG",
        BucketDiskSpaceTooLow = 0x0038 => "BUCKET_DISK_SPACE_TOO_LOW",
        BucketPaused = 0x0050 => "BUCKET_PAUSED",
        Cancelled = 0x0051 => "CANCELLED",
        UnknownFrameInfo = 0x0080 => "UNKNOWN_FRAME_INFO",
        UnknownCommand = 0x0081 => "UNKNOWN_COMMAND",
        Enomem = 0x0082 => "ENOMEM",
        NotSupported = 0x0083 => "NOT_SUPPORTED",
        Einternal = 0x0084 => "EINTERNAL",
        Ebusy = 0x0085 => "EBUSY",
        Etmpfail = 0x0086 => "ETMPFAIL",
        XattrEinval = 0x0087 => "XATTR_EINVAL",
        UnknownCollection = 0x0088 => "UNKNOWN_COLLECTION",
        NoCollectionsManifest = 0x0089 => "NO_COLLECTIONS_MANIFEST",
        CannotApplyCollectionsManifest = 0x008a => "CANNOT_APPLY_COLLECTIONS_MANIFEST",
        UnknownScope = 0x008c => "UNKNOWN_SCOPE",
        DcpStreamidInvalid = 0x008d => "DCP_STREAMID_INVALID",
        DurabilityInvalidLevel = 0x00a0 => "DURABILITY_INVALID_LEVEL",
        DurabilityImpossible = 0x00a1 => "DURABILITY_IMPOSSIBLE",
        SyncWriteInProgress = 0x00a2 => "SYNC_WRITE_IN_PROGRESS",
        SyncWriteAmbiguous = 0x00a3 => "SYNC_WRITE_AMBIGUOUS",
        SyncWriteRecommitInProgress = 0x00a4 => "SYNC_WRITE_RECOMMIT_IN_PROGRESS",
        RangeScanCancelled = 0x00a5 => "RANGE_SCAN_CANCELLED",
        RangeScanMore = 0x00a6 => "RANGE_SCAN_MORE",
        RangeScanComplete = 0x00a7 => "RANGE_SCAN_COMPLETE",
        VbUuidNotEqual = 0x00a8 => "VB_UUID_NOT_EQUAL",
    }
}

impl Status {
    /// SUCCESS.
    #[must_use]
    pub fn is_success(self) -> bool {
        self == Status::Success
    }

    /// The "no stream for this vbucket" answers a CLOSE_STREAM may get: KEY_ENOENT
    /// (0x01) or, with v7 DCP status codes, DCP_STREAM_NOT_FOUND (0x0a) (§11 item 3).
    #[must_use]
    pub fn is_no_stream(self) -> bool {
        matches!(self, Status::KeyEnoent | Status::DcpStreamNotFound)
    }

    /// Temporary failures a client may retry.
    #[must_use]
    pub fn is_temporary(self) -> bool {
        matches!(self, Status::Etmpfail | Status::Ebusy | Status::Enomem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknowns_are_kept() {
        for s in Status::ALL {
            assert_eq!(Status::from_raw(s.to_raw()), *s);
        }
        assert_eq!(Status::from_raw(0xff01), Status::Unknown(0xff01));
        assert_eq!(Status::Rollback.to_raw(), 0x23);
        assert!(Status::DcpStreamNotFound.is_no_stream());
        assert!(!Status::KeyEexists.is_no_stream());
    }
}
