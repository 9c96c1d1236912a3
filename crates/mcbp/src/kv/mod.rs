//! Typed KV and session messages (`mcbp-dcp.md` §4, §5), one group per file:
//!
//! * session: HELLO, SASL, SELECT_BUCKET (§4);
//! * documents: GET family, stores, DELETE, INCR/DECR, APPEND/PREPEND, TOUCH/GAT (§5);
//! * vbuckets: SET/GET/DEL_VBUCKET, GET_ALL_VB_SEQNOS, OBSERVE_SEQNO,
//!   SEQNO_PERSISTENCE (§5);
//! * misc: FLUSH, STAT, GET_ERROR_MAP, GET_CLUSTER_CONFIG (§5).
//!
//! As in [`dcp`](crate::dcp), header fields a message needs (vbucket, opaque, CAS,
//! datatype) are fields of the message, and message families sharing one layout carry
//! their `opcode`, so `parse(encode(m)) == m` holds for every message.
//!
//! Commands without a body use [`BareRequest`](crate::BareRequest): NOOP, VERSION,
//! QUIT(Q), SASL_LIST_MECHS, GET_VBUCKET and GET_FAILOVER_LOG (0x96), whose answer is
//! [`dcp::FailoverLogResponse`](crate::dcp::FailoverLogResponse). Status-only answers
//! (SASL_AUTH/STEP, SELECT_BUCKET, SET_VBUCKET, DEL_VBUCKET, FLUSH,
//! SEQNO_PERSISTENCE, NOOP) and answers that are just a value (VERSION, GET_ERROR_MAP,
//! GET_CLUSTER_CONFIG) use [`Response`](crate::Response).
//!
//! Typed responses interpret the body of a SUCCESS answer. On any other status the
//! value is error context (§1.8): fields that are the raw value keep it, structured
//! fields are left empty or zero (read the context with [`Response`](crate::Response)).

mod doc;
mod misc;
mod session;
mod vbucket;

pub use doc::{
    Arithmetic, ArithmeticResponse, Concat, Delete, Get, GetResponse, MutationResponse,
    MutationToken, Store, Touch,
};
pub use misc::{Flush, GetClusterConfig, GetErrorMap, Stat, StatResponse};
pub use session::{Feature, Hello, HelloResponse, SaslAuth, SaslMechsResponse, SelectBucket};
pub use vbucket::{
    DelVbucket, GetAllVbSeqnos, GetAllVbSeqnosResponse, GetVbucketResponse, ObserveSeqno,
    ObserveSeqnoResponse, SeqnoPersistence, SetVbucket,
};
