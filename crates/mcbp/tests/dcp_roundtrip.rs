//! `parse(encode(m)) == m` for every typed DCP message, with arbitrary field values.

use bytes::Bytes;
use mcbp::dcp::*;
use mcbp::{
    BareRequest, Cas, Datatype, Message, Opaque, Opcode, Response, Seqno, Status, VbState, VbUuid,
    Vbid,
};
use proptest::prelude::*;

fn bytes(min: usize, max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), min..=max).prop_map(Bytes::from)
}
fn key() -> impl Strategy<Value = Bytes> {
    bytes(1, 250)
}
fn vb() -> impl Strategy<Value = Vbid> {
    (0u16..1024).prop_map(Vbid)
}
fn op() -> impl Strategy<Value = Opaque> {
    any::<u32>().prop_map(Opaque)
}
fn seq() -> impl Strategy<Value = Seqno> {
    any::<u64>().prop_map(Seqno)
}
fn status() -> impl Strategy<Value = Status> {
    any::<u16>().prop_map(Status::from_raw)
}
fn state() -> impl Strategy<Value = VbState> {
    (1u8..=4).prop_map(|v| VbState::from_u8(v).expect("1..=4"))
}
fn failover_log() -> impl Strategy<Value = Vec<FailoverEntry>> {
    proptest::collection::vec(
        (any::<u64>(), any::<u64>()).prop_map(|(u, s)| FailoverEntry {
            vb_uuid: VbUuid(u),
            seqno: Seqno(s),
        }),
        1..25,
    )
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) -> Result<(), TestCaseError> {
    let f = m.to_frame();
    prop_assert_eq!(M::parse(&f), Ok(m));
    Ok(())
}

proptest! {
    #[test]
    fn open(opaque in op(), flags in any::<u32>(), name in key(), value in prop_oneof![Just(Bytes::new()), bytes(2, 64)]) {
        round_trip(Open { opaque, flags: OpenFlags(flags), name, value })?;
    }

    #[test]
    fn add_stream(vbucket in vb(), opaque in op(), flags in any::<u32>()) {
        round_trip(AddStream { vbucket, opaque, flags: StreamFlags(flags) })?;
    }

    #[test]
    fn add_stream_response(opaque in op(), status in status(), so in proptest::option::of(any::<u32>())) {
        let stream_opaque = if status == Status::Success { Some(Opaque(so.unwrap_or(0))) } else { so.map(Opaque) };
        round_trip(AddStreamResponse { opaque, status, stream_opaque })?;
    }

    #[test]
    fn stream_req(vbucket in vb(), opaque in op(), flags in any::<u32>(), start in seq(), end in seq(), uuid in any::<u64>(), ss in seq(), se in seq(), value in prop_oneof![Just(Bytes::new()), bytes(1, 40)]) {
        round_trip(StreamReq { vbucket, opaque, flags: StreamFlags(flags), start, end, vb_uuid: VbUuid(uuid), snap_start: ss, snap_end: se, value })?;
    }

    #[test]
    fn stream_req_response(opaque in op(), log in failover_log(), to in seq(), st in status(), pick in 0u8..3) {
        let outcome = match pick {
            0 => StreamReqOutcome::Success { failover_log: log },
            1 => StreamReqOutcome::Rollback { to },
            _ if st == Status::Success || st == Status::Rollback => StreamReqOutcome::Refused(Status::Erange),
            _ => StreamReqOutcome::Refused(st),
        };
        round_trip(StreamReqResponse { opaque, outcome })?;
    }

    #[test]
    fn failover_log_response(opaque in op(), entries in failover_log(), dcp in any::<bool>()) {
        let opcode = if dcp { Opcode::DcpGetFailoverLog } else { Opcode::GetFailoverLog };
        round_trip(FailoverLogResponse { opcode, opaque, status: Status::Success, entries })?;
    }

    #[test]
    fn stream_end(vbucket in vb(), opaque in op(), reason in any::<u32>()) {
        round_trip(StreamEnd { vbucket, opaque, reason: EndReason::from_raw(reason) })?;
    }

    #[test]
    fn snapshot_marker(vbucket in vb(), opaque in op(), start in seq(), end in seq(), flags in any::<u32>(), a in seq(), b in seq(), c in seq(), d in seq(), v in 0u8..3) {
        let version = match v {
            0 => MarkerVersion::V1,
            1 => MarkerVersion::V2_0 { max_visible_seqno: a, high_completed_seqno: b },
            _ => MarkerVersion::V2_2 { max_visible_seqno: a, high_completed_seqno: b, purge_seqno: c, high_prepared_seqno: d },
        };
        round_trip(SnapshotMarker { vbucket, opaque, start, end, flags: MarkerFlags(flags), version })?;
    }

    #[test]
    fn mutation(vbucket in vb(), opaque in op(), cas in any::<u64>(), dt in 0u8..8, by_seqno in seq(), rev in any::<u64>(), flags in any::<u32>(), exp in any::<u32>(), lock in any::<u32>(), nru in any::<u8>(), key in key(), value in bytes(0, 512)) {
        round_trip(Mutation { vbucket, opaque, cas: Cas(cas), datatype: Datatype(dt), by_seqno, rev_seqno: rev, flags, expiration: exp, lock_time: lock, nru, key, value })?;
    }

    #[test]
    fn deletion(vbucket in vb(), opaque in op(), cas in any::<u64>(), dt in 0u8..8, by_seqno in seq(), rev in any::<u64>(), dtime in proptest::option::of(any::<u32>()), key in key(), value in bytes(0, 64)) {
        round_trip(Deletion { vbucket, opaque, cas: Cas(cas), datatype: Datatype(dt), by_seqno, rev_seqno: rev, delete_time: dtime, key, value })?;
    }

    #[test]
    fn expiration(vbucket in vb(), opaque in op(), cas in any::<u64>(), by_seqno in seq(), rev in any::<u64>(), dtime in any::<u32>(), key in key()) {
        round_trip(Expiration { vbucket, opaque, cas: Cas(cas), datatype: Datatype::RAW, by_seqno, rev_seqno: rev, delete_time: dtime, key, value: Bytes::new() })?;
    }

    #[test]
    fn set_vbucket_state(vbucket in vb(), opaque in op(), state in state()) {
        round_trip(SetVbucketState { vbucket, opaque, state })?;
    }

    #[test]
    fn buffer_ack(vbucket in vb(), opaque in op(), n in any::<u32>()) {
        round_trip(BufferAck { vbucket, opaque, bytes: n })?;
    }

    #[test]
    fn control(opaque in op(), k in key(), v in bytes(1, 40)) {
        round_trip(Control { opaque, key: k, value: v })?;
    }

    #[test]
    fn seqno_advanced(vbucket in vb(), opaque in op(), seqno in seq()) {
        round_trip(SeqnoAdvanced { vbucket, opaque, seqno })?;
    }

    #[test]
    fn system_event(vbucket in vb(), opaque in op(), by_seqno in seq(), event in any::<u32>(), version in any::<u8>(), key in bytes(0, 30), value in bytes(0, 40)) {
        round_trip(SystemEvent { vbucket, opaque, by_seqno, event, version, key, value })?;
    }

    #[test]
    fn bare_requests(vbucket in vb(), opaque in op(), which in 0usize..3) {
        let opcode = [Opcode::DcpNoop, Opcode::DcpCloseStream, Opcode::DcpGetFailoverLog][which];
        round_trip(BareRequest::new(opcode, vbucket, opaque))?;
    }

    #[test]
    fn generic_responses(opaque in op(), st in status(), value in bytes(0, 64), raw_op in 0x50u8..0x68) {
        round_trip(Response::status_only(Opcode::from_raw(raw_op), opaque, st).with_value(Datatype::RAW, value))?;
    }
}
