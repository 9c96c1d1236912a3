//! `parse(encode(m)) == m` for every typed KV and session message, with arbitrary
//! field values; and every KV sample frame parses back with its typed parser.

mod common;

use bytes::{Bytes, BytesMut};
use mcbp::kv::*;
use mcbp::{
    BareRequest, BodyError, Cas, Datatype, Frame, FrameDecoder, Magic, Message, Opaque, Opcode,
    Response, Seqno, Status, VbState, VbUuid, Vbid,
};
use proptest::prelude::*;

fn bytes(min: usize, max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), min..=max).prop_map(Bytes::from)
}
fn key() -> impl Strategy<Value = Bytes> {
    bytes(1, 250)
}
fn value() -> impl Strategy<Value = Bytes> {
    bytes(0, 1023)
}
fn vb() -> impl Strategy<Value = Vbid> {
    (0u16..1024).prop_map(Vbid)
}
fn op() -> impl Strategy<Value = Opaque> {
    any::<u32>().prop_map(Opaque)
}
fn cas() -> impl Strategy<Value = Cas> {
    any::<u64>().prop_map(Cas)
}
fn seq() -> impl Strategy<Value = Seqno> {
    any::<u64>().prop_map(Seqno)
}
fn uuid() -> impl Strategy<Value = VbUuid> {
    any::<u64>().prop_map(VbUuid)
}
fn datatype() -> impl Strategy<Value = Datatype> {
    (0u8..8).prop_map(Datatype)
}
fn status() -> impl Strategy<Value = Status> {
    any::<u16>().prop_map(Status::from_raw)
}
/// Any status but SUCCESS: answers whose structured fields are then empty.
fn error_status() -> impl Strategy<Value = Status> {
    (1u16..).prop_map(Status::from_raw)
}
fn state() -> impl Strategy<Value = VbState> {
    (1u8..=4).prop_map(|v| VbState::from_u8(v).expect("1..=4"))
}
fn features() -> impl Strategy<Value = Vec<Feature>> {
    proptest::collection::vec(any::<u16>().prop_map(Feature::from_raw), 0..40)
}
fn token() -> impl Strategy<Value = Option<MutationToken>> {
    proptest::option::of(
        (uuid(), seq()).prop_map(|(vb_uuid, seqno)| MutationToken { vb_uuid, seqno }),
    )
}
fn one_of(ops: &'static [Opcode]) -> impl Strategy<Value = Opcode> {
    proptest::sample::select(ops)
}

const GETS: &[Opcode] = &[
    Opcode::Get,
    Opcode::GetQ,
    Opcode::GetK,
    Opcode::GetKQ,
    Opcode::GetReplica,
];
const GET_ANSWERS: &[Opcode] = &[
    Opcode::Get,
    Opcode::GetQ,
    Opcode::GetK,
    Opcode::GetKQ,
    Opcode::GetReplica,
    Opcode::Gat,
    Opcode::GatQ,
];
const STORES: &[Opcode] = &[
    Opcode::Set,
    Opcode::Add,
    Opcode::Replace,
    Opcode::SetQ,
    Opcode::AddQ,
    Opcode::ReplaceQ,
];
const MUTATIONS: &[Opcode] = &[
    Opcode::Set,
    Opcode::Add,
    Opcode::Replace,
    Opcode::SetQ,
    Opcode::AddQ,
    Opcode::ReplaceQ,
    Opcode::Delete,
    Opcode::DeleteQ,
    Opcode::Append,
    Opcode::Prepend,
    Opcode::AppendQ,
    Opcode::PrependQ,
    Opcode::Touch,
];
const ARITHMETIC: &[Opcode] = &[
    Opcode::Increment,
    Opcode::Decrement,
    Opcode::IncrementQ,
    Opcode::DecrementQ,
];
const CONCATS: &[Opcode] = &[
    Opcode::Append,
    Opcode::Prepend,
    Opcode::AppendQ,
    Opcode::PrependQ,
];

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) -> Result<(), TestCaseError> {
    let f = m.to_frame();
    prop_assert_eq!(M::parse(&f), Ok(m));
    Ok(())
}

proptest! {
    #[test]
    fn hello(opaque in op(), agent in bytes(0, 250), features in features()) {
        round_trip(Hello { opaque, agent, features })?;
    }

    #[test]
    fn hello_response(opaque in op(), features in features(), err in proptest::option::of(error_status())) {
        let m = match err {
            None => HelloResponse { opaque, status: Status::Success, features },
            Some(status) => HelloResponse { opaque, status, features: Vec::new() },
        };
        round_trip(m)?;
    }

    #[test]
    fn sasl_mechs_response(opaque in op(), status in status(), mechs in value()) {
        round_trip(SaslMechsResponse { opaque, status, mechs })?;
    }

    #[test]
    fn sasl_auth(opaque in op(), step in any::<bool>(), mechanism in bytes(1, 20), data in value()) {
        let opcode = if step { Opcode::SaslStep } else { Opcode::SaslAuth };
        round_trip(SaslAuth { opcode, opaque, mechanism, data })?;
    }

    #[test]
    fn select_bucket(opaque in op(), bucket in key()) {
        round_trip(SelectBucket { opaque, bucket })?;
    }

    #[test]
    fn get(opcode in one_of(GETS), vbucket in vb(), opaque in op(), key in key()) {
        round_trip(Get { opcode, vbucket, opaque, key })?;
    }

    #[test]
    fn get_response(opcode in one_of(GET_ANSWERS), opaque in op(), status in status(), cas in cas(), datatype in datatype(), flags in any::<u32>(), k in key(), value in value()) {
        let key = if matches!(opcode, Opcode::GetK | Opcode::GetKQ) { k } else { Bytes::new() };
        round_trip(GetResponse { opcode, opaque, status, cas, datatype, flags, key, value })?;
    }

    #[test]
    fn store(opcode in one_of(STORES), vbucket in vb(), opaque in op(), cas in cas(), datatype in datatype(), flags in any::<u32>(), expiry in any::<u32>(), key in key(), value in value()) {
        round_trip(Store { opcode, vbucket, opaque, cas, datatype, flags, expiry, key, value })?;
    }

    #[test]
    fn mutation_response(opcode in one_of(MUTATIONS), opaque in op(), status in status(), cas in cas(), token in token()) {
        round_trip(MutationResponse { opcode, opaque, status, cas, token })?;
    }

    #[test]
    fn delete(quiet in any::<bool>(), vbucket in vb(), opaque in op(), cas in cas(), key in key()) {
        let opcode = if quiet { Opcode::DeleteQ } else { Opcode::Delete };
        round_trip(Delete { opcode, vbucket, opaque, cas, key })?;
    }

    #[test]
    fn arithmetic(opcode in one_of(ARITHMETIC), vbucket in vb(), opaque in op(), cas in cas(), delta in any::<u64>(), initial in any::<u64>(), expiry in any::<u32>(), key in key()) {
        round_trip(Arithmetic { opcode, vbucket, opaque, cas, delta, initial, expiry, key })?;
    }

    #[test]
    fn arithmetic_response(opcode in one_of(ARITHMETIC), opaque in op(), cas in cas(), value in any::<u64>(), token in token(), err in proptest::option::of(error_status())) {
        let (status, value) = match err {
            None => (Status::Success, value),
            Some(s) => (s, 0),
        };
        round_trip(ArithmeticResponse { opcode, opaque, status, cas, value, token })?;
    }

    #[test]
    fn concat(opcode in one_of(CONCATS), vbucket in vb(), opaque in op(), cas in cas(), key in key(), value in value()) {
        round_trip(Concat { opcode, vbucket, opaque, cas, key, value })?;
    }

    #[test]
    fn touch(opcode in one_of(&[Opcode::Touch, Opcode::Gat, Opcode::GatQ]), vbucket in vb(), opaque in op(), expiry in any::<u32>(), key in key()) {
        round_trip(Touch { opcode, vbucket, opaque, expiry, key })?;
    }

    #[test]
    fn flush(quiet in any::<bool>(), opaque in op(), expiry in proptest::option::of(any::<u32>())) {
        let opcode = if quiet { Opcode::FlushQ } else { Opcode::Flush };
        round_trip(Flush { opcode, opaque, expiry })?;
    }

    #[test]
    fn stat(opaque in op(), key in bytes(0, 250), value in value()) {
        round_trip(Stat { opaque, key, value })?;
    }

    #[test]
    fn stat_response(opaque in op(), status in status(), key in bytes(0, 250), value in value()) {
        round_trip(StatResponse { opaque, status, key, value })?;
    }

    #[test]
    fn set_vbucket(vbucket in vb(), opaque in op(), state in state(), value in value()) {
        round_trip(SetVbucket { vbucket, opaque, state, value })?;
    }

    #[test]
    fn get_vbucket_response(opaque in op(), state in state(), err in proptest::option::of(error_status())) {
        let m = match err {
            None => GetVbucketResponse { opaque, status: Status::Success, state: Some(state) },
            Some(status) => GetVbucketResponse { opaque, status, state: None },
        };
        round_trip(m)?;
    }

    #[test]
    fn del_vbucket(vbucket in vb(), opaque in op(), value in value()) {
        round_trip(DelVbucket { vbucket, opaque, value })?;
    }

    #[test]
    fn get_all_vb_seqnos(opaque in op(), filter in any::<u32>(), collection in any::<u32>(), shape in 0u8..3) {
        let (state_filter, collection) = match shape {
            0 => (None, None),
            1 => (Some(filter), None),
            _ => (Some(filter), Some(collection)),
        };
        round_trip(GetAllVbSeqnos { opaque, state_filter, collection })?;
    }

    #[test]
    fn get_all_vb_seqnos_response(opaque in op(), entries in proptest::collection::vec((vb(), seq()), 0..100), err in proptest::option::of(error_status())) {
        let m = match err {
            None => GetAllVbSeqnosResponse { opaque, status: Status::Success, entries },
            Some(status) => GetAllVbSeqnosResponse { opaque, status, entries: Vec::new() },
        };
        round_trip(m)?;
    }

    #[test]
    fn observe_seqno(vbucket in vb(), opaque in op(), vb_uuid in uuid()) {
        round_trip(ObserveSeqno { vbucket, opaque, vb_uuid })?;
    }

    #[test]
    fn observe_seqno_response(opaque in op(), vbucket in vb(), vb_uuid in uuid(), persisted in seq(), current in seq(), failover in proptest::option::of((uuid(), seq())), err in proptest::option::of(error_status())) {
        let m = match err {
            None => ObserveSeqnoResponse { opaque, status: Status::Success, vbucket, vb_uuid, persisted_seqno: persisted, current_seqno: current, failover },
            Some(status) => ObserveSeqnoResponse { opaque, status, vbucket: Vbid(0), vb_uuid: VbUuid(0), persisted_seqno: Seqno(0), current_seqno: Seqno(0), failover: None },
        };
        round_trip(m)?;
    }

    #[test]
    fn seqno_persistence(vbucket in vb(), opaque in op(), seqno in seq()) {
        round_trip(SeqnoPersistence { vbucket, opaque, seqno })?;
    }

    #[test]
    fn get_error_map(opaque in op(), version in any::<u16>()) {
        round_trip(GetErrorMap { opaque, version })?;
    }

    #[test]
    fn get_cluster_config(opaque in op(), known in proptest::option::of((any::<i64>(), any::<i64>()))) {
        round_trip(GetClusterConfig { opaque, known })?;
    }

    /// Arbitrary KV-opcode bodies never panic a typed parser.
    #[test]
    fn typed_parsers_are_total(opcode in any::<u8>(), response in any::<bool>(), status in status(), extras in bytes(0, 24), key in bytes(0, 12), value in bytes(0, 48)) {
        let spec = if response {
            mcbp::FrameSpec::response(Opcode::from_raw(opcode), status)
        } else {
            mcbp::FrameSpec::request(Opcode::from_raw(opcode))
        };
        let f = spec.extras(&extras).key(&key).value(&value).to_frame();
        let _ = parse_typed(&f);
    }
}

/// Parses `f` with the typed KV parser for its direction and opcode, then checks the
/// re-encoding is the same bytes.
fn check<M: Message + PartialEq + std::fmt::Debug>(f: &Frame) -> Result<(), BodyError> {
    let m = M::parse(f)?;
    assert_eq!(
        m.to_frame().bytes(),
        f.bytes(),
        "{m:?} re-encodes byte for byte"
    );
    Ok(())
}

/// `None` if no KV parser covers the frame.
fn parse_typed(f: &Frame) -> Option<Result<(), BodyError>> {
    use Opcode as O;
    let op = f.opcode();
    Some(if f.magic() == Magic::ClientRequest {
        match op {
            O::Hello => check::<Hello>(f),
            O::SaslAuth | O::SaslStep => check::<SaslAuth>(f),
            O::SelectBucket => check::<SelectBucket>(f),
            O::Get | O::GetQ | O::GetK | O::GetKQ | O::GetReplica => check::<Get>(f),
            O::Set | O::Add | O::Replace | O::SetQ | O::AddQ | O::ReplaceQ => check::<Store>(f),
            O::Delete | O::DeleteQ => check::<Delete>(f),
            O::Increment | O::Decrement | O::IncrementQ | O::DecrementQ => check::<Arithmetic>(f),
            O::Append | O::Prepend | O::AppendQ | O::PrependQ => check::<Concat>(f),
            O::Touch | O::Gat | O::GatQ => check::<Touch>(f),
            O::Flush | O::FlushQ => check::<Flush>(f),
            O::Stat => check::<Stat>(f),
            O::SetVbucket => check::<SetVbucket>(f),
            O::DelVbucket => check::<DelVbucket>(f),
            O::GetAllVbSeqnos => check::<GetAllVbSeqnos>(f),
            O::ObserveSeqno => check::<ObserveSeqno>(f),
            O::SeqnoPersistence => check::<SeqnoPersistence>(f),
            O::GetErrorMap => check::<GetErrorMap>(f),
            O::GetClusterConfig => check::<GetClusterConfig>(f),
            O::SaslListMechs | O::GetVbucket | O::Noop | O::Version => check::<BareRequest>(f),
            _ => return None,
        }
    } else {
        match op {
            O::Hello => check::<HelloResponse>(f),
            O::SaslListMechs => check::<SaslMechsResponse>(f),
            O::Get | O::GetQ | O::GetK | O::GetKQ | O::GetReplica | O::Gat | O::GatQ => {
                check::<GetResponse>(f)
            }
            O::Set
            | O::Add
            | O::Replace
            | O::SetQ
            | O::AddQ
            | O::ReplaceQ
            | O::Delete
            | O::DeleteQ
            | O::Append
            | O::Prepend
            | O::AppendQ
            | O::PrependQ
            | O::Touch => check::<MutationResponse>(f),
            O::Increment | O::Decrement | O::IncrementQ | O::DecrementQ => {
                check::<ArithmeticResponse>(f)
            }
            O::Stat => check::<StatResponse>(f),
            O::GetVbucket => check::<GetVbucketResponse>(f),
            O::GetAllVbSeqnos => check::<GetAllVbSeqnosResponse>(f),
            O::ObserveSeqno => check::<ObserveSeqnoResponse>(f),
            O::SaslAuth
            | O::SaslStep
            | O::SelectBucket
            | O::GetErrorMap
            | O::GetClusterConfig
            | O::SetVbucket
            | O::DelVbucket
            | O::Flush
            | O::SeqnoPersistence => check::<Response>(f),
            _ => return None,
        }
    })
}

#[test]
fn every_kv_sample_decodes_and_parses_back_with_its_typed_parser() {
    let samples = common::kv_samples::kv_samples();
    assert!(samples.len() >= 30, "one sample per KV message");
    let mut names = std::collections::BTreeSet::new();
    for (name, f) in &samples {
        assert!(names.insert(*name), "duplicate sample name {name}");
        let mut buf = BytesMut::from(&f.bytes()[..]);
        let decoded = FrameDecoder::new(mcbp::DEFAULT_MAX_BODY_LEN)
            .decode(&mut buf)
            .expect("well framed")
            .expect("one whole frame");
        assert!(buf.is_empty(), "{name}: exactly one frame");
        assert_eq!(&decoded, f, "{name}");
        let h = f.header();
        assert_eq!(
            h.body_len as usize,
            usize::from(h.extras_len) + usize::from(h.key_len) + f.value().len(),
            "{name}"
        );
        assert!(
            f.key().len() <= 250,
            "{name}: key of {} bytes",
            f.key().len()
        );
        match parse_typed(f) {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("{name}: {e}"),
            None => panic!("{name}: no typed KV parser for {:?}", f.opcode()),
        }
        if f.is_response() {
            assert_eq!(
                f.status(),
                Status::Success,
                "{name}: samples show the success layout"
            );
        }
    }
}

/// A typed message refuses a frame of the other direction or another opcode.
#[test]
fn typed_parsers_check_magic_and_opcode() {
    let req = Get {
        opcode: Opcode::Get,
        vbucket: Vbid(1),
        opaque: Opaque(1),
        key: Bytes::from_static(b"k"),
    }
    .to_frame();
    assert_eq!(
        GetResponse::parse(&req).expect_err("request").field,
        mcbp::BodyField::Magic
    );
    assert_eq!(
        Store::parse(&req).expect_err("GET").field,
        mcbp::BodyField::Opcode
    );
}
