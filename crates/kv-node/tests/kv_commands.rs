//! KV commands over real sockets: documents, CAS, counters, vbucket ownership,
//! replica reads, seqnos, persistence waits, stats and cluster config.

use bytes::Bytes;
use kv_client::Client;
use mcbp::kv::{Arithmetic, Concat, Get, ObserveSeqno, ObserveSeqnoResponse, Store, Touch};
use mcbp::{Cas, Datatype, Message, Opaque, Opcode, Response, Seqno, Status, VbState, Vbid};
use testkit::http;
use testkit::node::*;
use tokio::time::timeout;

async fn setup() -> anyhow::Result<(TestNode, Client)> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 16, Some(VbState::Active))
        .await?;
    let c = n.client("default").await?;
    Ok((n, c))
}

#[tokio::test]
async fn set_get_delete_keep_flags_cas_and_datatype() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    c.hello(
        "test",
        &[mcbp::kv::Feature::Json, mcbp::kv::Feature::MutationSeqno],
    )
    .await?;
    let r = c
        .store(
            Opcode::Set,
            Vbid(3),
            b"doc",
            br#"{"a":1}"#,
            0x0200_0000,
            0,
            Cas(0),
            Datatype::JSON,
        )
        .await?;
    let token = r.token.expect("mutation seqno negotiated");
    assert_eq!(token.seqno, Seqno(1));
    let g = c.get(Vbid(3), b"doc").await?.expect("present");
    assert_eq!(g.flags, 0x0200_0000);
    assert_eq!(g.cas, r.cas);
    assert_eq!(g.datatype, Datatype::JSON);
    assert_eq!(&g.value[..], br#"{"a":1}"#);
    // CAS mismatch refused, matching CAS accepted.
    let err = c
        .store(
            Opcode::Set,
            Vbid(3),
            b"doc",
            b"x",
            0,
            0,
            Cas(r.cas.0 + 1),
            Datatype::RAW,
        )
        .await
        .expect_err("stale cas");
    assert_eq!(err.status(), Some(Status::KeyEexists));
    c.store(
        Opcode::Set,
        Vbid(3),
        b"doc",
        b"x",
        0,
        0,
        r.cas,
        Datatype::RAW,
    )
    .await?;
    // ADD of an existing key, REPLACE of a missing one.
    let e = c
        .store(
            Opcode::Add,
            Vbid(3),
            b"doc",
            b"y",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await
        .expect_err("exists");
    assert_eq!(e.status(), Some(Status::KeyEexists));
    let e = c
        .store(
            Opcode::Replace,
            Vbid(3),
            b"nope",
            b"y",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await
        .expect_err("missing");
    assert_eq!(e.status(), Some(Status::KeyEnoent));
    let d = c.delete(Vbid(3), b"doc").await?;
    assert_eq!(d.token.expect("token").seqno, Seqno(3));
    assert!(c.get(Vbid(3), b"doc").await?.is_none());
    assert_eq!(
        c.delete(Vbid(3), b"doc").await.expect_err("gone").status(),
        Some(Status::KeyEnoent)
    );
    Ok(())
}

#[tokio::test]
async fn json_datatype_without_hello_is_einval() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let e = c
        .store(
            Opcode::Set,
            Vbid(0),
            b"k",
            b"{}",
            0,
            0,
            Cas(0),
            Datatype::JSON,
        )
        .await
        .expect_err("not negotiated");
    assert_eq!(e.status(), Some(Status::Einval));
    Ok(())
}

#[tokio::test]
async fn counters_concat_touch_and_gat() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let o = c.next_opaque();
    let incr = |opcode, delta, initial, expiry| Arithmetic {
        opcode,
        vbucket: Vbid(1),
        opaque: o,
        cas: Cas(0),
        delta,
        initial,
        expiry,
        key: Bytes::from_static(b"ctr"),
    };
    let f = c.call_ok(&incr(Opcode::Increment, 5, 10, 0)).await?;
    assert_eq!(
        mcbp::kv::ArithmeticResponse::parse(&f)?.value,
        10,
        "created with the initial value"
    );
    let f = c.call_ok(&incr(Opcode::Increment, 5, 10, 0)).await?;
    assert_eq!(mcbp::kv::ArithmeticResponse::parse(&f)?.value, 15);
    let f = c.call_ok(&incr(Opcode::Decrement, 100, 0, 0)).await?;
    assert_eq!(
        mcbp::kv::ArithmeticResponse::parse(&f)?.value,
        0,
        "decrement stops at zero"
    );
    let missing = Arithmetic {
        key: Bytes::from_static(b"none"),
        ..incr(Opcode::Increment, 1, 0, 0xffff_ffff)
    };
    assert_eq!(c.call(&missing).await?.status(), Status::KeyEnoent);

    c.store(
        Opcode::Set,
        Vbid(1),
        b"s",
        b"mid",
        7,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    for (opcode, part) in [
        (Opcode::Append, &b"-end"[..]),
        (Opcode::Prepend, &b"start-"[..]),
    ] {
        let o = c.next_opaque();
        c.call_ok(&Concat {
            opcode,
            vbucket: Vbid(1),
            opaque: o,
            cas: Cas(0),
            key: Bytes::from_static(b"s"),
            value: Bytes::copy_from_slice(part),
        })
        .await?;
    }
    let g = c.get(Vbid(1), b"s").await?.expect("present");
    assert_eq!(&g.value[..], b"start-mid-end");
    assert_eq!(g.flags, 7, "concat keeps flags");
    let o = c.next_opaque();
    let f = c
        .call_ok(&Touch {
            opcode: Opcode::Gat,
            vbucket: Vbid(1),
            opaque: o,
            expiry: 3600,
            key: Bytes::from_static(b"s"),
        })
        .await?;
    assert_eq!(
        &mcbp::kv::GetResponse::parse(&f)?.value[..],
        b"start-mid-end"
    );
    Ok(())
}

#[tokio::test]
async fn expired_documents_are_invisible() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as u32;
    c.store(
        Opcode::Set,
        Vbid(2),
        b"old",
        b"v",
        0,
        now - 10,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    assert!(c.get(Vbid(2), b"old").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn vbucket_ownership_and_replica_reads() -> anyhow::Result<()> {
    let (n, mut c) = setup().await?;
    c.store(
        Opcode::Set,
        Vbid(4),
        b"k",
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    c.set_vbucket(Vbid(4), VbState::Replica).await?;
    let e = c.get(Vbid(4), b"k").await.expect_err("replica");
    assert_eq!(e.status(), Some(Status::NotMyVbucket));
    let o = c.next_opaque();
    let f = c
        .call_ok(&Get {
            opcode: Opcode::GetReplica,
            vbucket: Vbid(4),
            opaque: o,
            key: Bytes::from_static(b"k"),
        })
        .await?;
    assert_eq!(&mcbp::kv::GetResponse::parse(&f)?.value[..], b"v");
    // GET_REPLICA on an active vbucket is refused.
    let o = c.next_opaque();
    let f = c
        .call(&Get {
            opcode: Opcode::GetReplica,
            vbucket: Vbid(5),
            opaque: o,
            key: Bytes::from_static(b"k"),
        })
        .await?;
    assert_eq!(f.status(), Status::NotMyVbucket);
    // Beyond the bucket's vbuckets.
    let e = c.get(Vbid(99), b"k").await.expect_err("no such vb");
    assert_eq!(e.status(), Some(Status::NotMyVbucket));
    // Once the cluster layer set a config, NMVB carries it as JSON.
    let cfg = r#"{"rev":7,"nodesExt":[]}"#;
    let (status, _) = http(
        n.node.admin_addr(),
        "PUT",
        "/buckets/default/cluster-config",
        Some((ADMIN, PASSWORD)),
        Some(cfg),
    )
    .await?;
    assert_eq!(status, 200);
    let o = c.next_opaque();
    let f = c
        .call(&Get {
            opcode: Opcode::Get,
            vbucket: Vbid(4),
            opaque: o,
            key: Bytes::from_static(b"k"),
        })
        .await?;
    assert_eq!(f.status(), Status::NotMyVbucket);
    assert_eq!(f.datatype(), Datatype::JSON);
    assert_eq!(f.value(), cfg.as_bytes());
    Ok(())
}

#[tokio::test]
async fn seqnos_observe_and_persistence() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    for i in 0..5 {
        c.store(
            Opcode::Set,
            Vbid(6),
            format!("k{i}").as_bytes(),
            b"v",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await?;
    }
    assert!(
        c.seqno_persistence(Vbid(6), Seqno(5)).await?,
        "flusher persists within the bound"
    );
    let log = c.failover_log(Vbid(6)).await?;
    assert!(!log.is_empty(), "an active vbucket has a failover entry");
    let o = c.next_opaque();
    let f = c
        .call_ok(&ObserveSeqno {
            vbucket: Vbid(6),
            opaque: o,
            vb_uuid: log[0].vb_uuid,
        })
        .await?;
    let obs = ObserveSeqnoResponse::parse(&f)?;
    assert_eq!(obs.current_seqno, Seqno(5));
    assert_eq!(obs.persisted_seqno, Seqno(5));
    let o = c.next_opaque();
    let f = c
        .call(&ObserveSeqno {
            vbucket: Vbid(6),
            opaque: o,
            vb_uuid: mcbp::VbUuid(12345),
        })
        .await?;
    assert_eq!(f.status(), Status::KeyEnoent, "unknown uuid");
    let o = c.next_opaque();
    let f = c
        .call_ok(&mcbp::kv::GetAllVbSeqnos {
            opaque: o,
            state_filter: Some(1),
            collection: None,
        })
        .await?;
    let all = mcbp::kv::GetAllVbSeqnosResponse::parse(&f)?;
    assert_eq!(all.entries.len(), 16);
    assert_eq!(all.entries[6], (Vbid(6), Seqno(5)));
    let stats = c.stats("vbucket-seqno 6").await?;
    assert!(
        stats.contains(&("vb_6:high_seqno".to_string(), "5".to_string())),
        "{stats:?}"
    );
    let stats = c.stats("").await?;
    assert!(
        stats.iter().any(|(k, v)| k == "curr_items" && v == "5"),
        "{stats:?}"
    );
    Ok(())
}

#[tokio::test]
async fn quiet_commands_pipeline_and_answer_only_misses_and_errors() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let mut batch = bytes::BytesMut::new();
    for i in 0..50u32 {
        Store {
            opcode: Opcode::SetQ,
            vbucket: Vbid(0),
            opaque: Opaque(i),
            cas: Cas(0),
            datatype: Datatype::RAW,
            flags: i,
            expiry: 0,
            key: Bytes::from(format!("q{i}")),
            value: Bytes::from_static(b"v"),
        }
        .encode(&mut batch);
    }
    Get {
        opcode: Opcode::GetKQ,
        vbucket: Vbid(0),
        opaque: Opaque(100),
        key: Bytes::from_static(b"q7"),
    }
    .encode(&mut batch);
    Get {
        opcode: Opcode::GetKQ,
        vbucket: Vbid(0),
        opaque: Opaque(101),
        key: Bytes::from_static(b"missing"),
    }
    .encode(&mut batch);
    mcbp::BareRequest::new(Opcode::Noop, Vbid(0), Opaque(102)).encode(&mut batch);
    c.send_bytes(&batch).await?;
    let first = c.read_frame("GETKQ").await?;
    assert_eq!(
        (first.opcode(), first.opaque(), first.key()),
        (Opcode::GetKQ, Opaque(100), &b"q7"[..])
    );
    let noop = c.read_frame("NOOP").await?;
    assert_eq!(
        (noop.opcode(), noop.opaque()),
        (Opcode::Noop, Opaque(102)),
        "quiet miss and quiet sets are silent"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_values_get_e2big_and_the_connection_stays_open() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let big = vec![b'x'; 20 * 1024 * 1024 + 1];
    let e = c
        .store(
            Opcode::Set,
            Vbid(0),
            b"big",
            &big,
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await
        .expect_err("too big");
    assert_eq!(e.status(), Some(Status::E2big));
    c.store(
        Opcode::Set,
        Vbid(0),
        b"small",
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn unknown_opcodes_and_wrong_extras_are_answered_not_fatal() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    let f = mcbp::FrameSpec::request(Opcode::Unknown(0xee))
        .opaque(Opaque(9))
        .to_frame();
    c.send_bytes(f.bytes()).await?;
    let r = c.read_frame("unknown").await?;
    assert_eq!(r.status(), Status::UnknownCommand);
    // SET with 4 bytes of extras instead of 8.
    let f = mcbp::FrameSpec::request(Opcode::Set)
        .opaque(Opaque(10))
        .extras(&[0; 4])
        .key(b"k")
        .value(b"v")
        .to_frame();
    c.send_bytes(f.bytes()).await?;
    let r = c.read_frame("bad set").await?;
    assert_eq!((r.status(), r.opaque()), (Status::Einval, Opaque(10)));
    // GET without a key.
    let f = mcbp::FrameSpec::request(Opcode::Get)
        .opaque(Opaque(11))
        .to_frame();
    c.send_bytes(f.bytes()).await?;
    assert_eq!(c.read_frame("keyless get").await?.status(), Status::Einval);
    // DCP opcodes on a plain connection.
    let f = mcbp::FrameSpec::request(Opcode::DcpAddStream)
        .extras(&[0; 4])
        .to_frame();
    c.send_bytes(f.bytes()).await?;
    assert_eq!(c.read_frame("dcp on kv").await?.status(), Status::Einval);
    assert_eq!(
        c.call_response(&mcbp::BareRequest::new(Opcode::Noop, Vbid(0), Opaque(12)))
            .await?,
        Response::status_only(Opcode::Noop, Opaque(12), Status::Success)
    );
    Ok(())
}

#[tokio::test]
async fn cluster_config_lists_active_vbuckets_and_honours_known_revision() -> anyhow::Result<()> {
    let (_n, mut c) = setup().await?;
    c.set_vbucket(Vbid(1), VbState::Replica).await?;
    let o = c.next_opaque();
    let f = c
        .call_ok(&mcbp::kv::GetClusterConfig {
            opaque: o,
            known: None,
        })
        .await?;
    let v: serde_json::Value = serde_json::from_slice(f.value())?;
    assert_eq!(
        v["vBucketServerMap"]["vBucketMap"][0],
        serde_json::json!([0])
    );
    assert_eq!(
        v["vBucketServerMap"]["vBucketMap"][1],
        serde_json::json!([-1])
    );
    let rev = v["rev"].as_i64().expect("rev");
    let o = c.next_opaque();
    let f = c
        .call_ok(&mcbp::kv::GetClusterConfig {
            opaque: o,
            known: Some((0, rev)),
        })
        .await?;
    assert!(f.value().is_empty(), "not newer than what the client knows");
    Ok(())
}

#[tokio::test]
async fn seqno_persistence_answers_etmpfail_when_the_bound_passes() -> anyhow::Result<()> {
    let n = TestNode::start_with(|c| {
        c.flush_interval = std::time::Duration::from_secs(3600);
        c.seqno_persistence_timeout = std::time::Duration::from_millis(200);
    })
    .await?;
    n.create_bucket("default", 4, Some(VbState::Active)).await?;
    let mut c = n.client("default").await?;
    c.store(
        Opcode::Set,
        Vbid(0),
        b"k",
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    assert!(
        !c.seqno_persistence(Vbid(0), Seqno(1)).await?,
        "not persisted within the bound"
    );
    Ok(())
}

/// A client that sent HELLO (every Couchbase SDK) gets the tombstone's CAS from
/// DELETE; a plain memcached client (no HELLO) keeps getting CAS 0, which
/// `memccapable` checks.
#[tokio::test]
async fn delete_returns_the_tombstone_cas_only_after_hello() -> anyhow::Result<()> {
    let (n, mut c) = setup().await?;
    timeout(BOUND, c.hello("sdk", &[])).await??;
    let set = timeout(
        BOUND,
        c.store(
            Opcode::Set,
            Vbid(1),
            b"k",
            b"v",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        ),
    )
    .await??;
    let d = timeout(BOUND, c.delete(Vbid(1), b"k")).await??;
    assert_ne!(d.cas, Cas(0), "a HELLO client gets the tombstone's cas");
    assert!(
        d.cas.0 > set.cas.0,
        "the tombstone's cas is newer than the document's"
    );
    let tombstone = n
        .node
        .state()
        .bucket("default")
        .expect("bucket")
        .bucket
        .items_since(Vbid(1), Seqno(0), 10)?
        .into_iter()
        .find(|i| i.deleted)
        .expect("tombstone");
    assert_eq!(d.cas, tombstone.cas);

    let mut plain = n.client("default").await?;
    timeout(
        BOUND,
        plain.store(
            Opcode::Set,
            Vbid(1),
            b"k2",
            b"v",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        ),
    )
    .await??;
    let d = timeout(BOUND, plain.delete(Vbid(1), b"k2")).await??;
    assert_eq!(d.cas, Cas(0), "no HELLO: classic memcached answer");
    Ok(())
}

/// Shutdown does not wait for a SEQNO_PERSISTENCE that cannot be satisfied soon: the
/// waiting request is answered ETMPFAIL (or dropped with the connection) at once.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_pending_seqno_persistence() -> anyhow::Result<()> {
    let n = TestNode::start_with(|c| {
        c.flush_interval = std::time::Duration::from_secs(3600);
        c.seqno_persistence_timeout = std::time::Duration::from_secs(120);
    })
    .await?;
    n.create_bucket("default", 4, Some(VbState::Active)).await?;
    let mut c = n.client("default").await?;
    c.store(
        Opcode::Set,
        Vbid(0),
        b"k",
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    c.send(&mcbp::kv::SeqnoPersistence {
        vbucket: Vbid(0),
        opaque: Opaque(9),
        seqno: Seqno(1),
    })
    .await?;
    let waiting = || {
        n.node
            .state()
            .counters
            .seqno_persistence_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    testkit::wait_until("a SEQNO_PERSISTENCE waits", || waiting() != 0).await?;
    let TestNode { node, dir: _dir } = n;
    timeout(std::time::Duration::from_secs(5), node.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("shutdown waited for SEQNO_PERSISTENCE"))?;
    Ok(())
}
