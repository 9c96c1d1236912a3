//! One realistic frame of every typed DCP message, requests and responses.

use bytes::Bytes;
use mcbp::dcp::{
    AddStream, AddStreamResponse, BufferAck, Control, Deletion, EndReason, Expiration,
    FailoverEntry, FailoverLogResponse, MarkerFlags, MarkerVersion, Mutation, Open, OpenFlags,
    SeqnoAdvanced, SetVbucketState, SnapshotMarker, StreamEnd, StreamFlags, StreamReq,
    StreamReqOutcome, StreamReqResponse, SystemEvent,
};
use mcbp::{
    BareRequest, Cas, Datatype, Frame, Message, Opaque, Opcode, Response, Seqno, Status, VbState,
    VbUuid, Vbid,
};

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// `(name, frame)` pairs; requests first, then responses.
pub fn dcp_samples() -> Vec<(&'static str, Frame)> {
    let log = vec![
        FailoverEntry {
            vb_uuid: VbUuid(0xabcdef),
            seqno: Seqno(120),
        },
        FailoverEntry {
            vb_uuid: VbUuid(0x1234),
            seqno: Seqno(0),
        },
    ];
    let s = Opaque(0x1122_3344);
    vec![
        (
            "DCP_OPEN consumer",
            Open {
                opaque: Opaque(1),
                flags: OpenFlags::REPLICATION_CONSUMER,
                name: b(b"replication:n_0@a->n_1@b:default"),
                value: b(br#"{"consumer_name":"n_1@b"}"#),
            }
            .to_frame(),
        ),
        (
            "DCP_OPEN producer",
            Open {
                opaque: Opaque(2),
                flags: OpenFlags::REPLICATION_PRODUCER,
                name: b(b"replication:n_0@a->n_1@b:default"),
                value: Bytes::new(),
            }
            .to_frame(),
        ),
        (
            "DCP_ADD_STREAM",
            AddStream {
                vbucket: Vbid(5),
                opaque: Opaque(5),
                flags: StreamFlags(StreamFlags::TAKEOVER),
            }
            .to_frame(),
        ),
        (
            "DCP_CLOSE_STREAM",
            BareRequest::new(Opcode::DcpCloseStream, Vbid(6), Opaque(6)).to_frame(),
        ),
        (
            "DCP_STREAM_REQ",
            StreamReq {
                vbucket: Vbid(5),
                opaque: s,
                flags: StreamFlags(0),
                start: Seqno(10),
                end: Seqno(u64::MAX),
                vb_uuid: VbUuid(0xabcdef),
                snap_start: Seqno(10),
                snap_end: Seqno(10),
                value: Bytes::new(),
            }
            .to_frame(),
        ),
        (
            "DCP_GET_FAILOVER_LOG",
            BareRequest::new(Opcode::DcpGetFailoverLog, Vbid(7), Opaque(70)).to_frame(),
        ),
        (
            "DCP_STREAM_END",
            StreamEnd {
                vbucket: Vbid(5),
                opaque: s,
                reason: EndReason::StateChanged,
            }
            .to_frame(),
        ),
        (
            "DCP_SNAPSHOT_MARKER v1",
            SnapshotMarker {
                vbucket: Vbid(5),
                opaque: s,
                start: Seqno(11),
                end: Seqno(20),
                flags: MarkerFlags(
                    MarkerFlags::MEMORY | MarkerFlags::CHECKPOINT | MarkerFlags::ACK,
                ),
                version: MarkerVersion::V1,
            }
            .to_frame(),
        ),
        (
            "DCP_SNAPSHOT_MARKER v2.0",
            SnapshotMarker {
                vbucket: Vbid(5),
                opaque: s,
                start: Seqno(21),
                end: Seqno(30),
                flags: MarkerFlags(MarkerFlags::DISK),
                version: MarkerVersion::V2_0 {
                    max_visible_seqno: Seqno(30),
                    high_completed_seqno: Seqno(25),
                },
            }
            .to_frame(),
        ),
        (
            "DCP_SNAPSHOT_MARKER v2.2",
            SnapshotMarker {
                vbucket: Vbid(5),
                opaque: s,
                start: Seqno(31),
                end: Seqno(40),
                flags: MarkerFlags(MarkerFlags::DISK),
                version: MarkerVersion::V2_2 {
                    max_visible_seqno: Seqno(40),
                    high_completed_seqno: Seqno(35),
                    purge_seqno: Seqno(3),
                    high_prepared_seqno: Seqno(36),
                },
            }
            .to_frame(),
        ),
        (
            "DCP_MUTATION",
            Mutation {
                vbucket: Vbid(5),
                opaque: s,
                cas: Cas(0x17f0_a1b2_c3d4_0000),
                datatype: Datatype::JSON,
                by_seqno: Seqno(41),
                rev_seqno: 3,
                flags: 0x0200_0006,
                expiration: 0,
                lock_time: 0,
                nru: 2,
                key: b(b"user::1"),
                value: b(br#"{"name":"ada"}"#),
            }
            .to_frame(),
        ),
        (
            "DCP_DELETION v1",
            Deletion {
                vbucket: Vbid(5),
                opaque: s,
                cas: Cas(0x17f0_a1b2_c3d4_0001),
                datatype: Datatype::RAW,
                by_seqno: Seqno(42),
                rev_seqno: 4,
                delete_time: None,
                key: b(b"user::2"),
                value: Bytes::new(),
            }
            .to_frame(),
        ),
        (
            "DCP_DELETION v2",
            Deletion {
                vbucket: Vbid(5),
                opaque: s,
                cas: Cas(0x17f0_a1b2_c3d4_0002),
                datatype: Datatype::RAW,
                by_seqno: Seqno(43),
                rev_seqno: 5,
                delete_time: Some(1_700_000_000),
                key: b(b"user::3"),
                value: Bytes::new(),
            }
            .to_frame(),
        ),
        (
            "DCP_EXPIRATION",
            Expiration {
                vbucket: Vbid(5),
                opaque: s,
                cas: Cas(0x17f0_a1b2_c3d4_0003),
                datatype: Datatype::RAW,
                by_seqno: Seqno(44),
                rev_seqno: 6,
                delete_time: 1_700_000_001,
                key: b(b"user::4"),
                value: Bytes::new(),
            }
            .to_frame(),
        ),
        (
            "DCP_SET_VBUCKET_STATE",
            SetVbucketState {
                vbucket: Vbid(5),
                opaque: s,
                state: VbState::Pending,
            }
            .to_frame(),
        ),
        (
            "DCP_NOOP",
            BareRequest::new(Opcode::DcpNoop, Vbid(0), Opaque(900)).to_frame(),
        ),
        (
            "DCP_BUFFER_ACKNOWLEDGEMENT",
            BufferAck {
                vbucket: Vbid(0),
                opaque: Opaque(901),
                bytes: 4096,
            }
            .to_frame(),
        ),
        (
            "DCP_CONTROL",
            Control::new(Opaque(902), "enable_noop", "true").to_frame(),
        ),
        (
            "DCP_SYSTEM_EVENT",
            SystemEvent {
                vbucket: Vbid(5),
                opaque: s,
                by_seqno: Seqno(45),
                event: 0,
                version: 0,
                key: b(b"orders"),
                value: b(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8]),
            }
            .to_frame(),
        ),
        (
            "DCP_SEQNO_ADVANCED",
            SeqnoAdvanced {
                vbucket: Vbid(5),
                opaque: s,
                seqno: Seqno(46),
            }
            .to_frame(),
        ),
        // Responses.
        (
            "DCP_OPEN response",
            Response::status_only(Opcode::DcpOpen, Opaque(1), Status::Success).to_frame(),
        ),
        (
            "DCP_ADD_STREAM response",
            AddStreamResponse {
                opaque: Opaque(5),
                status: Status::Success,
                stream_opaque: Some(s),
            }
            .to_frame(),
        ),
        (
            "DCP_ADD_STREAM error response",
            AddStreamResponse {
                opaque: Opaque(8),
                status: Status::NotMyVbucket,
                stream_opaque: None,
            }
            .to_frame(),
        ),
        (
            "DCP_CLOSE_STREAM response",
            Response::status_only(Opcode::DcpCloseStream, Opaque(6), Status::Success).to_frame(),
        ),
        (
            "DCP_STREAM_REQ response",
            StreamReqResponse {
                opaque: s,
                outcome: StreamReqOutcome::Success {
                    failover_log: log.clone(),
                },
            }
            .to_frame(),
        ),
        (
            "DCP_STREAM_REQ rollback",
            StreamReqResponse {
                opaque: s,
                outcome: StreamReqOutcome::Rollback { to: Seqno(9) },
            }
            .to_frame(),
        ),
        (
            "DCP_STREAM_REQ refused",
            StreamReqResponse {
                opaque: s,
                outcome: StreamReqOutcome::Refused(Status::Erange),
            }
            .to_frame(),
        ),
        (
            "DCP_GET_FAILOVER_LOG response",
            FailoverLogResponse {
                opcode: Opcode::DcpGetFailoverLog,
                opaque: Opaque(70),
                status: Status::Success,
                entries: log,
            }
            .to_frame(),
        ),
        (
            "DCP_SNAPSHOT_MARKER ack",
            Response::status_only(Opcode::DcpSnapshotMarker, s, Status::Success).to_frame(),
        ),
        (
            "DCP_SET_VBUCKET_STATE response",
            Response::status_only(Opcode::DcpSetVbucketState, s, Status::Success).to_frame(),
        ),
        (
            "DCP_NOOP response",
            Response::status_only(Opcode::DcpNoop, Opaque(900), Status::Success).to_frame(),
        ),
        (
            "DCP_CONTROL response",
            Response::status_only(Opcode::DcpControl, Opaque(902), Status::Success).to_frame(),
        ),
    ]
}
