//! Connection set-up of a half (`replication-layer.md` §4.2, §11.15) against fake
//! nodes: what is sent, and the typed error of each refused stage.

use std::time::Duration;

use kv_client::Credentials;
use mcbp::kv::Feature;
use mcbp::Status;
use replication::core::Side;
use replication::io::{connect_half, HalfConfig};
use replication::{ConnectCause, ConnectError, ReplError, Replicator, ReplicatorConfig, Stage};
use testkit::fake::{FakeConfig, FakeNode, WAIT};
use tokio::time::timeout;

/// The node answered but refused a step: neither a timeout, nor refused
/// credentials, nor a lost connection (the CLI's `protocol_error`).
fn is_protocol_error(e: &ConnectError) -> bool {
    !e.is_timeout() && !e.is_auth() && !e.is_connection_lost()
}

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn half(side: Side, addr: String, snappy: bool) -> HalfConfig {
    HalfConfig {
        side,
        addr,
        bucket: "travel".into(),
        credentials: creds(),
        connection_name: "replication:nodeA->nodeB:travel".into(),
        consumer_node: "nodeB".into(),
        snappy,
        timeout: Duration::from_secs(5),
        max_body_len: mcbp::DEFAULT_MAX_BODY_LEN,
    }
}

/// §4.2: SASL PLAIN, SELECT_BUCKET, HELLO requesting exactly XATTR and JSON with the
/// agent name, DCP_OPEN consumer flags 0x124 with `consumer_name` as JSON.
#[tokio::test]
async fn consumer_half_sends_the_spec_sequence() {
    let mut node = FakeNode::default_node().await;
    let got = timeout(
        WAIT,
        connect_half(&half(Side::Consumer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect("connects");
    let conn = node.accept().await;
    assert_eq!(conn.user, "admin");
    assert_eq!(conn.bucket, "travel");
    assert_eq!(conn.requested, vec![Feature::Xattr, Feature::Json]);
    assert_eq!(
        conn.agent,
        "conduit:proxy-consumer/replication:nodeA->nodeB:travel"
    );
    let (name, flags, value, datatype) = conn.open.clone().expect("dcp open sent");
    assert_eq!(name, "replication:nodeA->nodeB:travel");
    assert_eq!(flags, 0x124);
    assert_eq!(datatype, 0x01, "JSON datatype");
    let v: serde_json::Value = serde_json::from_slice(&value).expect("json value");
    assert_eq!(v, serde_json::json!({"consumer_name": "nodeB"}));
    assert_eq!(got.granted, vec![Feature::Xattr, Feature::Json]);
}

/// §4.2: the producer half opens with 0x125 and no value; SNAPPY only when enabled.
#[tokio::test]
async fn producer_half_flags_and_snappy_request() {
    let mut node = FakeNode::default_node().await;
    timeout(WAIT, connect_half(&half(Side::Producer, node.addr(), true)))
        .await
        .expect("hangs")
        .expect("connects");
    let conn = node.accept().await;
    assert_eq!(
        conn.requested,
        vec![Feature::Xattr, Feature::Snappy, Feature::Json]
    );
    assert!(conn.agent.starts_with("conduit:proxy-producer/"));
    let (_, flags, value, _) = conn.open.clone().expect("dcp open sent");
    assert_eq!(flags, 0x125);
    assert!(value.is_empty());
}

/// §4.2 step 4: a refused SNAPPY is only logged.
#[tokio::test]
async fn refused_snappy_is_not_an_error() {
    let node = FakeNode::start(FakeConfig {
        grant: vec![Feature::Xattr, Feature::Json],
        ..FakeConfig::default()
    })
    .await;
    let got = timeout(WAIT, connect_half(&half(Side::Producer, node.addr(), true)))
        .await
        .expect("hangs")
        .expect("connects without snappy");
    assert!(!got.granted.contains(&Feature::Snappy));
}

/// §4.2 step 4, §11.15: HELLO not granting XATTR fails at stage hello.
#[tokio::test]
async fn hello_refusing_xattr_fails_at_stage_hello() {
    let mut node = FakeNode::start(FakeConfig {
        grant: vec![Feature::Json],
        ..FakeConfig::default()
    })
    .await;
    let err = timeout(
        WAIT,
        connect_half(&half(Side::Consumer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect_err("must fail");
    assert_eq!(err.stage, Stage::Hello);
    assert_eq!(err.side, Side::Consumer);
    // Issue #8 item 9: the refusal carries HELLO's own status (success).
    assert_eq!(err.status, Some(mcbp::Status::Success));
    // A protocol error (not a timeout, refusal of credentials or lost connection)
    // naming the refused feature.
    assert!(is_protocol_error(&err), "{err:?}");
    assert!(
        matches!(&err.source, ConnectCause::FeaturesRefused { missing } if missing == &[Feature::Xattr]),
        "{err:?}"
    );
    // The socket is closed, never opened for DCP.
    let mut conn = node.accept().await;
    assert!(conn.open.is_none());
    conn.expect_eof().await;
}

/// A HELLO error answer counts as "nothing granted".
#[tokio::test]
async fn hello_error_answer_fails_at_stage_hello_with_status() {
    let node = FakeNode::start(FakeConfig {
        hello_status: Status::NotSupported,
        ..FakeConfig::default()
    })
    .await;
    let err = timeout(
        WAIT,
        connect_half(&half(Side::Producer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect_err("must fail");
    assert_eq!(
        (err.stage, err.status),
        (Stage::Hello, Some(Status::NotSupported))
    );
}

/// §4.2 step 5: a refused DCP_OPEN fails at stage dcp_open with its status.
#[tokio::test]
async fn dcp_open_refused_fails_at_stage_dcp_open_with_status() {
    let node = FakeNode::start(FakeConfig {
        open_status: Status::Eaccess,
        ..FakeConfig::default()
    })
    .await;
    let err = timeout(
        WAIT,
        connect_half(&half(Side::Producer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect_err("must fail");
    assert_eq!(
        (err.stage, err.status),
        (Stage::DcpOpen, Some(Status::Eaccess))
    );
    assert_eq!(err.status.map(Status::to_raw), Some(0x24));
    assert_eq!(err.side, Side::Producer);
    assert!(is_protocol_error(&err), "{err:?}");
}

/// §4.2 step 2: refused credentials are an `auth` error at stage sasl.
#[tokio::test]
async fn sasl_refused_is_an_auth_error() {
    let node = FakeNode::start(FakeConfig {
        auth_status: Status::AuthError,
        ..FakeConfig::default()
    })
    .await;
    let err = timeout(
        WAIT,
        connect_half(&half(Side::Consumer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect_err("must fail");
    assert_eq!(
        (err.stage, err.status),
        (Stage::Sasl, Some(Status::AuthError))
    );
    assert!(err.is_auth(), "{err:?}");
    assert!(!err.is_timeout() && !err.is_connection_lost(), "{err:?}");
}

/// §4.2 step 3: a missing bucket fails at stage select_bucket.
#[tokio::test]
async fn select_bucket_refused_fails_at_stage_select_bucket() {
    let node = FakeNode::start(FakeConfig {
        select_status: Status::Eaccess,
        ..FakeConfig::default()
    })
    .await;
    let err = timeout(
        WAIT,
        connect_half(&half(Side::Consumer, node.addr(), false)),
    )
    .await
    .expect("hangs")
    .expect_err("must fail");
    assert_eq!(
        (err.stage, err.status),
        (Stage::SelectBucket, Some(Status::Eaccess))
    );
    assert!(is_protocol_error(&err), "{err:?}");
}

/// Nothing listening: connection_closed at stage connect.
#[tokio::test]
async fn unreachable_node_fails_at_stage_connect() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let err = timeout(WAIT, connect_half(&half(Side::Producer, addr, false)))
        .await
        .expect("hangs")
        .expect_err("must fail");
    assert_eq!(err.stage, Stage::Connect);
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(!err.is_timeout() && !err.is_auth(), "{err:?}");
    assert_eq!(err.side, Side::Producer);
}

/// §7.1: the consumer half connects first; if the producer half fails, the
/// replicator does not start and the consumer socket is closed.
#[tokio::test]
async fn replicator_start_failing_on_the_producer_closes_the_consumer() {
    let mut c_node = FakeNode::default_node().await;
    let p_node = FakeNode::start(FakeConfig {
        open_status: Status::Einval,
        ..FakeConfig::default()
    })
    .await;
    let cfg = ReplicatorConfig::new(c_node.addr(), p_node.addr(), "b", creds());
    let err = timeout(WAIT, Replicator::start(cfg))
        .await
        .expect("hangs")
        .expect_err("must fail");
    match &err {
        ReplError::Connect(c) => assert_eq!((c.side, c.stage), (Side::Producer, Stage::DcpOpen)),
        other => panic!("unexpected {other:?}"),
    }
    let mut c = c_node.accept().await;
    assert!(c.open.is_some());
    c.expect_eof().await;
}
