//! One realistic frame of every typed KV and session message, requests and
//! responses (`mcbp-dcp.md` §4, §5). Success answers use the success layout.
//!
//! The HELLO sample negotiates COLLECTIONS, so document keys carry the LEB128
//! collection-id prefix (0x00, the default collection) as on a real connection (§1.9).

use bytes::Bytes;
use mcbp::kv::{
    Arithmetic, ArithmeticResponse, Concat, DelVbucket, Delete, Feature, Flush, GetAllVbSeqnos,
    GetAllVbSeqnosResponse, GetClusterConfig, GetErrorMap, GetResponse, GetVbucketResponse, Hello,
    HelloResponse, MutationResponse, MutationToken, ObserveSeqno, ObserveSeqnoResponse, SaslAuth,
    SaslMechsResponse, SelectBucket, SeqnoPersistence, SetVbucket, Stat, StatResponse, Store,
    Touch,
};
use mcbp::{
    BareRequest, Cas, Datatype, Frame, Message, Opaque, Opcode, Response, Seqno, Status, VbState,
    VbUuid, Vbid,
};

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

const CLUSTER_MAP: &[u8] = br#"{"rev":42,"revEpoch":1,"name":"default","nodeLocator":"vbucket","nodesExt":[{"services":{"kv":11210,"mgmt":8091},"thisNode":true}]}"#;
const ERROR_MAP: &[u8] = br#"{"version":2,"revision":1,"errors":{"1":{"name":"KEY_ENOENT","desc":"key not found","attrs":["item-only"]}}}"#;

/// `(name, frame)` pairs; requests first, then responses.
pub fn kv_samples() -> Vec<(&'static str, Frame)> {
    let token = Some(MutationToken {
        vb_uuid: VbUuid(0x0000_7f3a_91c2_55e1),
        seqno: Seqno(1042),
    });
    let doc_cas = Cas(0x17a9_3c5e_2b40_0000);
    vec![
        // §4 session set-up.
        (
            "HELLO request",
            Hello {
                opaque: Opaque(0x0000_0001),
                agent: b(b"ns_server:proxy-consumer/replication:n_0@a->n_1@b:default"),
                features: vec![Feature::Xattr, Feature::Collections, Feature::Json],
            }
            .to_frame(),
        ),
        (
            "SASL_LIST_MECHS request",
            BareRequest::new(Opcode::SaslListMechs, Vbid(0), Opaque(0x0000_0002)).to_frame(),
        ),
        (
            "SASL_AUTH request",
            SaslAuth::plain(Opaque(0x0000_0003), b"user", b"pass").to_frame(),
        ),
        (
            "SASL_STEP request",
            SaslAuth {
                opcode: Opcode::SaslStep,
                opaque: Opaque(0x0000_0004),
                mechanism: b(b"SCRAM-SHA512"),
                data: b(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="),
            }
            .to_frame(),
        ),
        (
            "SELECT_BUCKET request",
            SelectBucket {
                opaque: Opaque(0x0000_0005),
                bucket: b(b"default"),
            }
            .to_frame(),
        ),
        // §5 documents.
        (
            "GET request",
            mcbp::kv::Get {
                opcode: Opcode::Get,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0010),
                key: b(b"\x00user::1001"),
            }
            .to_frame(),
        ),
        (
            "GETK request",
            mcbp::kv::Get {
                opcode: Opcode::GetK,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0011),
                key: b(b"\x00user::1001"),
            }
            .to_frame(),
        ),
        (
            "SET request",
            Store {
                opcode: Opcode::Set,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0012),
                cas: Cas(0),
                datatype: Datatype::JSON,
                flags: 0x0200_0006,
                expiry: 3600,
                key: b(b"\x00user::1001"),
                value: b(br#"{"name":"Ada","visits":3}"#),
            }
            .to_frame(),
        ),
        (
            "DELETE request",
            Delete {
                opcode: Opcode::Delete,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0013),
                cas: doc_cas,
                key: b(b"\x00user::1001"),
            }
            .to_frame(),
        ),
        (
            "INCREMENT request",
            Arithmetic {
                opcode: Opcode::Increment,
                vbucket: Vbid(7),
                opaque: Opaque(0x0000_0014),
                cas: Cas(0),
                delta: 1,
                initial: 100,
                expiry: 0,
                key: b(b"\x00counter::visits"),
            }
            .to_frame(),
        ),
        (
            "APPEND request",
            Concat {
                opcode: Opcode::Append,
                vbucket: Vbid(9),
                opaque: Opaque(0x0000_0015),
                cas: Cas(0),
                key: b(b"\x00log::today"),
                value: b(b",entry-17"),
            }
            .to_frame(),
        ),
        (
            "TOUCH request",
            Touch {
                opcode: Opcode::Touch,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0016),
                expiry: 600,
                key: b(b"\x00user::1001"),
            }
            .to_frame(),
        ),
        (
            "GAT request",
            Touch {
                opcode: Opcode::Gat,
                vbucket: Vbid(115),
                opaque: Opaque(0x0000_0017),
                expiry: 600,
                key: b(b"\x00user::1001"),
            }
            .to_frame(),
        ),
        // §5 bucket-wide and informational.
        (
            "FLUSH request",
            Flush {
                opcode: Opcode::Flush,
                opaque: Opaque(0x0000_0020),
                expiry: Some(0),
            }
            .to_frame(),
        ),
        (
            "STAT request",
            Stat::group(Opaque(0x0000_0021), "dcp-vbtakeover 5 replication:n_0@a->n_1@b:default")
                .to_frame(),
        ),
        (
            "GET_ERROR_MAP request",
            GetErrorMap {
                opaque: Opaque(0x0000_0022),
                version: 2,
            }
            .to_frame(),
        ),
        (
            "GET_CLUSTER_CONFIG request",
            GetClusterConfig {
                opaque: Opaque(0x0000_0023),
                known: Some((1, 41)),
            }
            .to_frame(),
        ),
        // §5 vbuckets.
        (
            "SET_VBUCKET request",
            SetVbucket {
                vbucket: Vbid(5),
                opaque: Opaque(0x0000_0030),
                state: VbState::Active,
                value: b(br#"{"topology":[["n_0@a","n_1@b"]]}"#),
            }
            .to_frame(),
        ),
        (
            "GET_VBUCKET request",
            BareRequest::new(Opcode::GetVbucket, Vbid(5), Opaque(0x0000_0031)).to_frame(),
        ),
        (
            "DEL_VBUCKET request",
            DelVbucket {
                vbucket: Vbid(5),
                opaque: Opaque(0x0000_0032),
                value: b(b"async=0"),
            }
            .to_frame(),
        ),
        (
            "GET_ALL_VB_SEQNOS request",
            GetAllVbSeqnos {
                opaque: Opaque(0x0000_0033),
                state_filter: Some(u32::from(VbState::Active.to_u8())),
                collection: None,
            }
            .to_frame(),
        ),
        (
            "OBSERVE_SEQNO request",
            ObserveSeqno {
                vbucket: Vbid(5),
                opaque: Opaque(0x0000_0034),
                vb_uuid: VbUuid(0x0000_7f3a_91c2_55e1),
            }
            .to_frame(),
        ),
        (
            "SEQNO_PERSISTENCE request",
            SeqnoPersistence {
                vbucket: Vbid(5),
                opaque: Opaque(0x0000_0035),
                seqno: Seqno(1042),
            }
            .to_frame(),
        ),
        // Responses, in the same order.
        (
            "HELLO response",
            HelloResponse {
                opaque: Opaque(0x0000_0001),
                status: Status::Success,
                features: vec![Feature::Xattr, Feature::Json, Feature::Collections],
            }
            .to_frame(),
        ),
        (
            "SASL_LIST_MECHS response",
            SaslMechsResponse {
                opaque: Opaque(0x0000_0002),
                status: Status::Success,
                mechs: b(b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN"),
            }
            .to_frame(),
        ),
        (
            "SASL_AUTH response",
            Response::status_only(Opcode::SaslAuth, Opaque(0x0000_0003), Status::Success)
                .to_frame(),
        ),
        (
            "GET response",
            GetResponse {
                opcode: Opcode::Get,
                opaque: Opaque(0x0000_0010),
                status: Status::Success,
                cas: doc_cas,
                datatype: Datatype::JSON,
                flags: 0x0200_0006,
                key: Bytes::new(),
                value: b(br#"{"name":"Ada","visits":3}"#),
            }
            .to_frame(),
        ),
        (
            "GETK response",
            GetResponse {
                opcode: Opcode::GetK,
                opaque: Opaque(0x0000_0011),
                status: Status::Success,
                cas: doc_cas,
                datatype: Datatype::JSON,
                flags: 0x0200_0006,
                key: b(b"\x00user::1001"),
                value: b(br#"{"name":"Ada","visits":3}"#),
            }
            .to_frame(),
        ),
        (
            "SET response",
            MutationResponse {
                opcode: Opcode::Set,
                opaque: Opaque(0x0000_0012),
                status: Status::Success,
                cas: doc_cas,
                token,
            }
            .to_frame(),
        ),
        (
            "INCREMENT response",
            ArithmeticResponse {
                opcode: Opcode::Increment,
                opaque: Opaque(0x0000_0014),
                status: Status::Success,
                cas: Cas(0x17a9_3c5e_2b41_0000),
                value: 101,
                token,
            }
            .to_frame(),
        ),
        (
            "STAT response",
            StatResponse {
                opaque: Opaque(0x0000_0021),
                status: Status::Success,
                key: b(b"status"),
                value: b(b"in-progress"),
            }
            .to_frame(),
        ),
        (
            "STAT terminator response",
            StatResponse::terminator(Opaque(0x0000_0021)).to_frame(),
        ),
        (
            "GET_ERROR_MAP response",
            Response::status_only(Opcode::GetErrorMap, Opaque(0x0000_0022), Status::Success)
                .with_value(Datatype::JSON, ERROR_MAP)
                .to_frame(),
        ),
        (
            "GET_CLUSTER_CONFIG response",
            Response::status_only(
                Opcode::GetClusterConfig,
                Opaque(0x0000_0023),
                Status::Success,
            )
            .with_value(Datatype::JSON, CLUSTER_MAP)
            .to_frame(),
        ),
        (
            "GET_VBUCKET response",
            GetVbucketResponse {
                opaque: Opaque(0x0000_0031),
                status: Status::Success,
                state: Some(VbState::Active),
            }
            .to_frame(),
        ),
        (
            "GET_ALL_VB_SEQNOS response",
            GetAllVbSeqnosResponse {
                opaque: Opaque(0x0000_0033),
                status: Status::Success,
                entries: vec![
                    (Vbid(0), Seqno(311)),
                    (Vbid(5), Seqno(1042)),
                    (Vbid(9), Seqno(77)),
                ],
            }
            .to_frame(),
        ),
        (
            "OBSERVE_SEQNO response",
            ObserveSeqnoResponse {
                opaque: Opaque(0x0000_0034),
                status: Status::Success,
                vbucket: Vbid(5),
                vb_uuid: VbUuid(0x0000_7f3a_91c2_55e1),
                persisted_seqno: Seqno(1040),
                current_seqno: Seqno(1042),
                failover: None,
            }
            .to_frame(),
        ),
    ]
}
