//! Wireshark's dissector reads a real replication session cleanly: two `conduit
//! node` processes, KV traffic, `conduit replicate` through the proxy (controls,
//! stream requests, snapshot markers, mutations, deletions, noops, buffer acks) and a
//! takeover (SET_VBUCKET_STATE, STREAM_END), all captured on both KV ports and decoded
//! by `shared/tools/mcbp-decode`: zero malformed frames, every byte part of a frame.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::{Client, ClientConfig, Credentials};
use mcbp::{Cas, Datatype, Opcode, Vbid};
use testkit::{have, skip, NodeProcess, BOUND};

const PW: &str = "adminpw";

fn tool() -> Option<PathBuf> {
    std::env::var("MCBP_DECODE")
        .ok()
        .map(PathBuf::from)
        .or_else(|| {
            let p =
                testkit::repo_root(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/mcbp-decode");
            p.exists().then_some(p)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replication_session_decodes_cleanly_in_wireshark() -> anyhow::Result<()> {
    let Some(tool) = tool() else {
        let _ = skip(
            "CONDUIT_REQUIRE_WIRE_CHECK",
            "shared/tools/mcbp-decode not found",
        );
        return Ok(());
    };
    if !(have("tshark") && have("dumpcap"))
        && skip("CONDUIT_REQUIRE_WIRE_CHECK", "tshark/dumpcap not installed")
    {
        return Ok(());
    }
    let conduit = PathBuf::from(env!("CARGO_BIN_EXE_conduit"));
    let a = NodeProcess::start(&conduit, PW, &[])?;
    let b = NodeProcess::start(&conduit, PW, &[])?;
    for (n, state) in [(&a, "active"), (&b, "replica")] {
        n.create_bucket(&format!(
            r#"{{"name":"default","vbuckets":4,"ram_quota_mb":32,"initial_state":"{state}"}}"#
        ))
        .await?;
    }
    let out = tempfile::tempdir()?;
    let pcap = out.path().join("session.pcapng");
    let mut cap = Command::new("python3")
        .arg(&tool)
        .args([
            "--capture",
            "--port",
            &a.kv.port().to_string(),
            "--port",
            &b.kv.port().to_string(),
            "--seconds",
            "20",
            "--out",
        ])
        .arg(&pcap)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(
        cap.stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?,
    )
    .lines();
    loop {
        match err.next() {
            Some(Ok(l)) if l.contains("capturing on") => break,
            Some(Ok(_)) => {}
            _ => anyhow::bail!("mcbp-decode did not start capturing"),
        }
    }
    std::thread::spawn(move || err.for_each(drop));
    // dumpcap reports "Capturing on" a moment before its filter sees packets.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();

    let mut c = Client::connect(
        &a.kv.to_string(),
        ClientConfig {
            timeout: BOUND,
            ..ClientConfig::default()
        },
    )
    .await?;
    c.auth_scram(
        kv_client::scram::ScramMech::Sha512,
        &Credentials {
            user: "admin".into(),
            password: PW.into(),
        },
    )
    .await?;
    c.select_bucket("default").await?;
    c.hello(
        "wire-e2e",
        &[mcbp::kv::Feature::Json, mcbp::kv::Feature::MutationSeqno],
    )
    .await?;
    for i in 0..200u32 {
        c.store(
            Opcode::Set,
            Vbid((i % 4) as u16),
            format!("k{i}").as_bytes(),
            br#"{"v":1}"#,
            7,
            0,
            Cas(0),
            Datatype::JSON,
        )
        .await?;
    }
    for i in (0..200u32).step_by(10) {
        c.delete(Vbid((i % 4) as u16), format!("k{i}").as_bytes())
            .await?;
    }
    let _ = c.stats("").await?;
    drop(c);
    let status = Command::new(&conduit)
        .args([
            "replicate",
            "--producer",
            &a.kv.to_string(),
            "--consumer",
            &b.kv.to_string(),
            "--bucket",
            "default",
            "--user",
            "admin",
            "--password",
            PW,
        ])
        .args(["--vbuckets", "0-3", "--takeover", "2", "--timeout", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    assert!(status.success(), "replicate with takeover failed");
    assert!(
        t0.elapsed() < Duration::from_secs(18),
        "traffic must end inside the capture window"
    );
    // Close the nodes' sockets before the capture ends: no half frames in flight.
    drop(a);
    drop(b);

    let output = tokio::task::spawn_blocking(move || cap.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        output.status.success(),
        "mcbp-decode found problems: {summary}\n{}",
        stdout
            .lines()
            .filter(|l| l.contains("\"malformed\": true"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let frames: usize = summary
        .split(|ch: char| !ch.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        summary.ends_with("malformed: 0") && frames > 300,
        "{summary}"
    );
    for opcode in [
        "\"opcode_hex\": \"0x57\"",
        "\"opcode_hex\": \"0x56\"",
        "\"opcode_hex\": \"0x5b\"",
        "\"opcode_hex\": \"0x55\"",
        "\"opcode_hex\": \"0x5e\"",
        "\"opcode_hex\": \"0x58\"",
    ] {
        assert!(stdout.contains(opcode), "no {opcode} frame in the capture");
    }
    Ok(())
}
