//! Authentication and authorization: every SASL mechanism, every refusal.

use bytes::Bytes;
use kv_client::scram::ScramMech;
use kv_client::Client;
use kv_node::BucketUserConfig;
use mcbp::{Cas, Datatype, Opcode, Status, VbState, Vbid};
use testkit::node::*;

async fn node_with_bucket_user() -> anyhow::Result<TestNode> {
    let n = TestNode::start_with(|c| {
        c.bucket_users.push(BucketUserConfig {
            name: "travel".into(),
            password: "tpw".into(),
            bucket: "travel".into(),
        });
        c.bucket_users.push(BucketUserConfig {
            name: "reader".into(),
            password: "rpw".into(),
            bucket: "travel".into(),
        });
    })
    .await?;
    n.create_bucket("travel", 8, Some(VbState::Active)).await?;
    n.create_bucket("other", 8, Some(VbState::Active)).await?;
    Ok(n)
}

#[tokio::test]
async fn every_mechanism_authenticates_and_wrong_passwords_fail() -> anyhow::Result<()> {
    let n = node_with_bucket_user().await?;
    let mut c = Client::connect(&n.kv(), client_config()).await?;
    assert_eq!(
        c.sasl_mechs().await?,
        vec!["SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1", "PLAIN"]
    );
    for mech in ScramMech::ALL {
        let mut c = Client::connect(&n.kv(), client_config()).await?;
        c.auth_scram(mech, &creds(ADMIN, PASSWORD)).await?;
        c.select_bucket("travel").await?;
        let mut bad = Client::connect(&n.kv(), client_config()).await?;
        let e = bad
            .auth_scram(mech, &creds(ADMIN, "wrong"))
            .await
            .expect_err("wrong password");
        assert_eq!(e.status(), Some(Status::AuthError), "{mech:?}");
        let e = bad
            .auth_scram(mech, &creds("ghost", PASSWORD))
            .await
            .expect_err("unknown user");
        assert_eq!(e.status(), Some(Status::AuthError));
    }
    let mut c = Client::connect(&n.kv(), client_config()).await?;
    c.auth_plain(&creds("travel", "tpw")).await?;
    let e = c
        .auth_plain(&creds("travel", "nope"))
        .await
        .expect_err("wrong password");
    assert_eq!(e.status(), Some(Status::AuthError));
    Ok(())
}

#[tokio::test]
async fn unauthenticated_connections_get_eaccess() -> anyhow::Result<()> {
    let n = node_with_bucket_user().await?;
    let mut c = Client::connect(&n.kv(), client_config()).await?;
    c.hello("probe", &[]).await?;
    let e = c.get(Vbid(0), b"k").await.expect_err("not authenticated");
    assert_eq!(e.status(), Some(Status::Eaccess));
    let e = c
        .select_bucket("travel")
        .await
        .expect_err("not authenticated");
    assert_eq!(e.status(), Some(Status::Eaccess));
    Ok(())
}

#[tokio::test]
async fn bucket_users_get_their_bucket_and_nothing_else() -> anyhow::Result<()> {
    let n = node_with_bucket_user().await?;
    let mut c = Client::connect(&n.kv(), client_config()).await?;
    c.auth_scram(ScramMech::Sha512, &creds("travel", "tpw"))
        .await?;
    // Selected automatically: the user is named like the bucket.
    c.store(
        Opcode::Set,
        Vbid(1),
        b"k",
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    assert_eq!(
        c.select_bucket("other")
            .await
            .expect_err("forbidden")
            .status(),
        Some(Status::Eaccess)
    );
    assert_eq!(
        c.select_bucket("missing")
            .await
            .expect_err("missing")
            .status(),
        Some(Status::Eaccess)
    );
    assert_eq!(
        c.set_vbucket(Vbid(1), VbState::Dead)
            .await
            .expect_err("no vbucket control")
            .status(),
        Some(Status::Eaccess)
    );
    let e = c
        .dcp_open(
            "replication:x->y:travel",
            mcbp::dcp::OpenFlags::REPLICATION_PRODUCER,
            b"",
        )
        .await
        .expect_err("no DCP");
    assert_eq!(e.status(), Some(Status::Eaccess));
    assert_eq!(
        c.stats("vbucket").await.expect_err("admin stats").status(),
        Some(Status::Eaccess)
    );
    // A user not named like a bucket selects explicitly.
    let mut r = Client::connect(&n.kv(), client_config()).await?;
    r.auth_plain(&creds("reader", "rpw")).await?;
    assert_eq!(
        r.get(Vbid(1), b"k").await.expect_err("no bucket").status(),
        Some(Status::NoBucket)
    );
    r.select_bucket("travel").await?;
    assert_eq!(
        &r.get(Vbid(1), b"k").await?.expect("written above").value[..],
        b"v"
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_bucket_allows_key_value_only() -> anyhow::Result<()> {
    let n = TestNode::start_with(|c| c.anonymous_bucket = Some("anon".into())).await?;
    n.create_bucket("anon", 1, Some(VbState::Active)).await?;
    n.create_bucket("private", 1, Some(VbState::Active)).await?;
    let mut c = Client::connect(&n.kv(), client_config()).await?;
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
    assert_eq!(
        &c.get(Vbid(0), b"k").await?.expect("stored").value[..],
        b"v"
    );
    assert_eq!(
        c.select_bucket("private")
            .await
            .expect_err("other bucket")
            .status(),
        Some(Status::Eaccess)
    );
    assert_eq!(
        c.set_vbucket(Vbid(0), VbState::Dead)
            .await
            .expect_err("no vbucket control")
            .status(),
        Some(Status::Eaccess)
    );
    let e = c
        .dcp_open("x", mcbp::dcp::OpenFlags::REPLICATION_PRODUCER, b"")
        .await
        .expect_err("no DCP");
    assert_eq!(e.status(), Some(Status::Eaccess));
    Ok(())
}

#[tokio::test]
async fn sasl_step_without_auth_and_bad_plain_are_auth_errors() -> anyhow::Result<()> {
    let n = node_with_bucket_user().await?;
    let mut c = Client::connect(&n.kv(), client_config()).await?;
    let o = c.next_opaque();
    let step = mcbp::kv::SaslAuth {
        opcode: Opcode::SaslStep,
        opaque: o,
        mechanism: Bytes::from_static(b"SCRAM-SHA512"),
        data: Bytes::from_static(b"c=biws,r=x,p=AAAA"),
    };
    assert_eq!(c.call(&step).await?.status(), Status::AuthError);
    let o = c.next_opaque();
    let bad = mcbp::kv::SaslAuth {
        opcode: Opcode::SaslAuth,
        opaque: o,
        mechanism: Bytes::from_static(b"PLAIN"),
        data: Bytes::from_static(b"no-nuls"),
    };
    assert_eq!(c.call(&bad).await?.status(), Status::AuthError);
    let o = c.next_opaque();
    let unknown = mcbp::kv::SaslAuth {
        opcode: Opcode::SaslAuth,
        opaque: o,
        mechanism: Bytes::from_static(b"CRAM-MD5"),
        data: Bytes::from_static(b"x"),
    };
    assert_eq!(c.call(&unknown).await?.status(), Status::AuthError);
    Ok(())
}
