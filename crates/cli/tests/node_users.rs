//! `cluster.md` N5: admin users managed through the node's admin API, persisted as
//! derived SCRAM credentials only, surviving a restart; black box against a
//! `conduit node` process.

use std::path::PathBuf;

use kv_client::{Client, ClientConfig, Credentials};
use serde_json::json;
use testkit::{http, NodeProcess, BOUND};

const PW: &str = "adminpw";

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

async fn kv_login(n: &NodeProcess, user: &str, password: &str, scram: bool) -> bool {
    let cfg = ClientConfig {
        timeout: BOUND,
        ..ClientConfig::default()
    };
    let Ok(mut c) = Client::connect(&n.kv.to_string(), cfg).await else {
        return false;
    };
    let creds = Credentials {
        user: user.into(),
        password: password.into(),
    };
    if scram {
        c.auth_scram(kv_client::scram::ScramMech::Sha512, &creds)
            .await
            .is_ok()
    } else {
        c.auth_plain(&creds).await.is_ok()
    }
}

async fn http_login(n: &NodeProcess, user: &str, password: &str) -> anyhow::Result<u16> {
    Ok(
        http(n.admin, "GET", "/buckets", Some((user, password)), None)
            .await?
            .0,
    )
}

async fn put_user(
    n: &NodeProcess,
    name: &str,
    body: &str,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<u16> {
    Ok(
        http(n.admin, "PUT", &format!("/users/{name}"), auth, Some(body))
            .await?
            .0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_users_are_managed_persisted_as_derived_credentials_and_survive_a_restart(
) -> anyhow::Result<()> {
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    let admin = Some(("admin", PW));
    let body = json!({"password": "pw-one", "role": "admin"}).to_string();
    assert_eq!(put_user(&n, "ops", &body, None).await?, 401);
    assert_eq!(put_user(&n, "ops", &body, admin).await?, 200);
    assert_eq!(http_login(&n, "ops", "pw-one").await?, 200);
    assert_eq!(http_login(&n, "ops", "pw-two").await?, 401);
    assert!(kv_login(&n, "ops", "pw-one", false).await);
    assert!(kv_login(&n, "ops", "pw-one", true).await);
    assert!(!kv_login(&n, "ops", "nope", true).await);
    // Only derived credentials on disk, readable by the owner only.
    let path = n.dir.path().join("users.json");
    let text = std::fs::read_to_string(&path)?;
    assert!(text.contains("ops") && !text.contains("pw-one"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    // A restart keeps the user.
    let dir = n.terminate()?;
    let n = NodeProcess::start_in(dir, &conduit(), PW, &[])?;
    assert!(kv_login(&n, "ops", "pw-one", true).await);
    // A new password replaces the old one.
    let body2 = json!({"password": "pw-two", "role": "admin"}).to_string();
    assert_eq!(put_user(&n, "ops", &body2, admin).await?, 200);
    assert_eq!(http_login(&n, "ops", "pw-one").await?, 401);
    assert_eq!(http_login(&n, "ops", "pw-two").await?, 200);
    // Removal.
    let del = |name: &'static str| {
        let path = format!("/users/{name}");
        async move { http(n.admin, "DELETE", &path, admin, None).await }
    };
    assert_eq!(del("ops").await?.0, 200);
    assert_eq!(http_login(&n, "ops", "pw-two").await?, 401);
    assert!(!kv_login(&n, "ops", "pw-two", false).await);
    assert_eq!(del("ops").await?.0, 404);
    // The node's own user is not the API's to change.
    assert_eq!(put_user(&n, "admin", &body, admin).await?, 409);
    assert_eq!(del("admin").await?.0, 409);
    assert_eq!(http_login(&n, "admin", PW).await?, 200);
    // Bad input.
    for bad in [
        json!({"password": "x", "role": "reader"}),
        json!({"password": "", "role": "admin"}),
        json!({"password": "x", "role": "admin", "extra": 1}),
        json!({"role": "admin"}),
    ] {
        assert_eq!(
            put_user(&n, "u", &bad.to_string(), admin).await?,
            400,
            "{bad}"
        );
    }
    assert_eq!(put_user(&n, "a%3Ab", &body, admin).await?, 400);
    Ok(())
}
