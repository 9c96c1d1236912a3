//! Real clients nobody here wrote, against a `conduit node` process:
//! libmemcached's tools and conformance suite, and the official Couchbase Python SDK.
//!
//! `scripts/test` installs the tools and sets `CONDUIT_REQUIRE_INTEROP=1`, turning a
//! missing tool into a failure; elsewhere a missing tool skips with a message.

use std::path::PathBuf;
use std::process::Command;

use testkit::{have, skip, NodeProcess};

const PW: &str = "adminpw";

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

fn run(cmd: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn libmemcached_tools_store_read_and_remove_documents() -> anyhow::Result<()> {
    if !have("memccp")
        && skip(
            "CONDUIT_REQUIRE_INTEROP",
            "libmemcached-tools not installed",
        )
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("users.json");
    std::fs::write(
        &cfg,
        r#"{"users":[{"name":"docs","password":"docspw","bucket":"docs"}]}"#,
    )?;
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let n = NodeProcess::start(&conduit(), PW, &["--config", &cfg_arg])?;
    n.create_bucket(r#"{"name":"docs","vbuckets":1,"ram_quota_mb":32,"initial_state":"active"}"#)
        .await?;
    let servers = format!("--servers={}", n.kv);
    let auth = ["--binary", "--username=docs", "--password=docspw"];
    let file = dir.path().join("greeting.txt");
    std::fs::write(&file, "hello from libmemcached\n")?;
    let (ok, out) = run(Command::new("memccp").arg(&servers).args(auth).arg(&file))?;
    assert!(ok, "memccp failed: {out}\n{}", n.log());
    let (ok, out) = run(Command::new("memccat")
        .arg(&servers)
        .args(auth)
        .arg("greeting.txt"))?;
    assert!(
        ok && out.contains("hello from libmemcached"),
        "memccat: {out}"
    );
    let (ok, out) = run(Command::new("memcrm")
        .arg(&servers)
        .args(auth)
        .arg("greeting.txt"))?;
    assert!(ok, "memcrm: {out}");
    let (ok, _) = run(Command::new("memccat")
        .arg(&servers)
        .args(auth)
        .arg("greeting.txt"))?;
    assert!(!ok, "the document is gone after memcrm");
    let wrong = ["--binary", "--username=docs", "--password=wrong"];
    let (ok, out) = run(Command::new("memccat")
        .arg(&servers)
        .args(wrong)
        .arg("greeting.txt"))?;
    assert!(!ok, "a wrong password must not read: {out}");
    Ok(())
}

#[tokio::test]
async fn memccapable_binary_conformance_passes_all_27_tests() -> anyhow::Result<()> {
    if !have("memccapable") && skip("CONDUIT_REQUIRE_INTEROP", "memccapable not installed") {
        return Ok(());
    }
    let n = NodeProcess::start(&conduit(), PW, &["--anonymous-bucket", "cap"])?;
    n.create_bucket(r#"{"name":"cap","vbuckets":1,"ram_quota_mb":32,"initial_state":"active","flush_enabled":true}"#,
    )
    .await?;
    let port = n.kv.port().to_string();
    let (_, out) = run(Command::new("memccapable").args(["-h", "127.0.0.1", "-p", &port, "-b"]))?;
    let passed = out.lines().filter(|l| l.contains("[pass]")).count();
    assert!(
        passed == 27 && !out.contains("[FAIL]") && !out.contains("tests failed"),
        "memccapable ({passed} passed):\n{out}"
    );
    Ok(())
}

#[tokio::test]
async fn the_official_couchbase_python_sdk_works_against_a_node() -> anyhow::Result<()> {
    let python = std::env::var("CONDUIT_SDK_PYTHON").unwrap_or_default();
    if python.is_empty()
        && skip(
            "CONDUIT_REQUIRE_INTEROP",
            "CONDUIT_SDK_PYTHON (a venv's python with couchbase installed) is not set",
        )
    {
        return Ok(());
    }
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    n.create_bucket(
        r#"{"name":"default","vbuckets":1024,"ram_quota_mb":64,"initial_state":"active"}"#,
    )
    .await?;
    let script = testkit::repo_root(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_probe.py");
    let out = Command::new(&python)
        .arg(script)
        .args([&n.kv.to_string(), "default", "admin", PW, "300"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK probe failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        n.log()
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    assert_eq!(v["ok"], true);
    assert_eq!(v["upserted"], 300);
    assert_eq!(v["missing_after_remove"], 150);
    assert_eq!(v["wrong_password_refused"], true);
    Ok(())
}
