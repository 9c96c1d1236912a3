//! Black-box tests of `conduit replicate` and `conduit move-vbucket` against two
//! `conduit node` processes: JSON lines, exit codes, the seed's race, timeouts,
//! takeover, signals and lost connections.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::Client;
use mcbp::{Cas, Datatype, Opcode, VbState, Vbid};
use serde_json::Value;
use testkit::{NodeProcess, BOUND};

const PW: &str = "adminpw";

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

async fn bucket(n: &NodeProcess, state: &str) -> anyhow::Result<()> {
    n.create_bucket(&format!(
        r#"{{"name":"default","vbuckets":8,"ram_quota_mb":32,"initial_state":"{state}"}}"#
    ))
    .await
}

async fn fault(n: &NodeProcess, f: &str) -> anyhow::Result<()> {
    n.admin_call("POST", "/faults", Some(f), 201)
        .await
        .map(drop)
}

async fn client(n: &NodeProcess) -> anyhow::Result<Client> {
    n.client("default").await
}

async fn pair() -> anyhow::Result<(NodeProcess, NodeProcess)> {
    let a = NodeProcess::start(&conduit(), PW, &["--enable-fault-injection"])?;
    let b = NodeProcess::start(&conduit(), PW, &["--enable-fault-injection"])?;
    bucket(&a, "active").await?;
    bucket(&b, "replica").await?;
    let mut c = client(&a).await?;
    for i in 0..400u32 {
        let vb = Vbid((i % 8) as u16);
        c.store(
            Opcode::Set,
            vb,
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
            i,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await?;
    }
    Ok((a, b))
}

fn replicate(a: &NodeProcess, b: &NodeProcess, extra: &[&str]) -> Command {
    let mut cmd = Command::new(conduit());
    cmd.args([
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
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// Runs to completion (bounded); returns (exit code, JSON lines).
fn finish(mut cmd: Command) -> anyhow::Result<(i32, Vec<Value>)> {
    let child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(BOUND * 2) {
        Ok(o) => o?,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            anyhow::bail!("conduit replicate did not finish within {:?}", BOUND * 2);
        }
    };
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("stdout line {l:?} is not JSON: {e}"))
        })
        .collect::<Result<Vec<Value>, _>>()?;
    Ok((out.status.code().unwrap_or(-1), lines))
}

async fn vb_state(n: &NodeProcess, vb: u16) -> anyhow::Result<String> {
    let t = n.admin_call("GET", "/buckets/default", None, 200).await?;
    let v: Value = serde_json::from_str(&t)?;
    Ok(v["vbuckets"][usize::from(vb)]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_until_caught_up_prints_two_ok_lines_and_the_replica_has_the_data(
) -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    let (code, lines) = finish(replicate(
        &a,
        &b,
        &[
            "--vbuckets",
            "0-7",
            "--until-caught-up",
            "--done-limit",
            "1",
            "--timeout",
            "20",
        ],
    ))?;
    assert_eq!(code, 0, "{lines:?}\n{}", b.log());
    assert_eq!(
        lines[0],
        serde_json::json!({"ok": true, "vbuckets": [0, 1, 2, 3, 4, 5, 6, 7]})
    );
    assert_eq!(lines[1], serde_json::json!({"ok": true, "caught_up": true}));
    let mut rb = client(&b).await?;
    let deadline = Instant::now() + BOUND;
    loop {
        let stats = rb.stats("vbucket-seqno").await?;
        let total: u64 = stats
            .iter()
            .filter(|(k, _)| k.ends_with(":high_seqno"))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum();
        if total == 400 {
            break;
        }
        assert!(Instant::now() < deadline, "replica stuck at {total} of 400");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_race_fails_with_unexpected_stream_end_and_a_rerun_succeeds() -> anyhow::Result<()>
{
    let (a, b) = pair().await?;
    fault(&b, r#"{"kind":"drop_add_stream_response","vbucket":3}"#).await?;
    fault(
        &a,
        r#"{"kind":"end_stream_after_stream_req","vbucket":3,"reason":2}"#,
    )
    .await?;
    let t0 = Instant::now();
    let (code, lines) = finish(replicate(&a, &b, &["--vbuckets", "2,3", "--timeout", "20"]))?;
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines.len(), 1, "exactly one JSON line: {lines:?}");
    let e = &lines[0]["error"];
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(e["kind"], "unexpected_stream_end", "{e}");
    assert_eq!(e["vbucket"], 3);
    assert_eq!(e["reason"], 2);
    assert!(e["stream_opaque"].is_u64(), "{e}");
    assert!(e["message"].is_string());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "failed fast, not by the 20 s timeout"
    );
    for n in [&a, &b] {
        n.admin_call("DELETE", "/faults", None, 200).await?;
    }
    let (code, lines) = finish(replicate(
        &a,
        &b,
        &["--vbuckets", "2,3", "--until-caught-up", "--timeout", "20"],
    ))?;
    assert_eq!(code, 0, "retry starts clean: {lines:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_consumer_times_out_naming_the_vbucket() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    fault(&b, r#"{"kind":"drop_add_stream_response","vbucket":5}"#).await?;
    let (code, lines) = finish(replicate(&a, &b, &["--vbuckets", "4,5", "--timeout", "2"]))?;
    assert_eq!(code, 1);
    let e = &lines[0]["error"];
    assert_eq!(e["kind"], "timeout", "{e}");
    assert_eq!(e["waiting_for"], "add_stream");
    assert_eq!(e["vbuckets"], serde_json::json!([5]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_prints_a_second_line_and_moves_the_vbucket() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    let (code, lines) = finish(replicate(
        &a,
        &b,
        &["--vbuckets", "0-7", "--takeover", "6", "--timeout", "20"],
    ))?;
    assert_eq!(code, 0, "{lines:?}\n{}", a.log());
    assert_eq!(lines[1], serde_json::json!({"ok": true, "takeover": 6}));
    assert_eq!(vb_state(&b, 6).await?, "active");
    assert_eq!(vb_state(&a, 6).await?, "dead");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_print_nothing_on_stdout() -> anyhow::Result<()> {
    let out = Command::new(conduit())
        .args([
            "replicate",
            "--producer",
            "x",
            "--consumer",
            "y",
            "--bucket",
            "b",
            "--user",
            "u",
            "--password",
            "p",
            "--vbuckets",
            "9-1",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backwards"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_setup_exits_0_and_a_lost_producer_exits_1() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    let args = [
        "--vbuckets",
        "0-3",
        "--timeout",
        "20",
        "--shut-timeout",
        "2",
    ];
    let (mut child, rx) = spawn_lines(replicate(&a, &b, &args))?;
    let first = next_json(&rx, BOUND)?;
    assert_eq!(first["ok"], true);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert_eq!(wait_exit(&mut child, BOUND)?, 0);

    let (mut child, rx) = spawn_lines(replicate(&a, &b, &args))?;
    let first = next_json(&rx, BOUND)?;
    assert_eq!(first["ok"], true);
    drop(a); // kills the producer node
    let second = next_json(&rx, BOUND)?;
    assert_eq!(wait_exit(&mut child, BOUND)?, 1);
    assert_eq!(second["error"]["kind"], "connection_closed", "{second}");
    assert_eq!(second["error"]["side"], "producer");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_vbucket_leaves_it_active_on_the_destination_with_every_document() -> anyhow::Result<()>
{
    let (a, b) = pair().await?;
    let out = Command::new(conduit())
        .args([
            "move-vbucket",
            "--bucket",
            "default",
            "--vbucket",
            "1",
            "--from",
            &a.kv.to_string(),
            "--to",
            &b.kv.to_string(),
            "--user",
            "admin",
            "--password",
            PW,
            "--timeout",
            "20",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(v["ok"], true);
    assert_eq!(v["vbucket"], 1);
    assert_eq!(vb_state(&b, 1).await?, "active");
    assert_eq!(vb_state(&a, 1).await?, "dead");
    let mut cb = client(&b).await?;
    for i in (1..400u32).step_by(8) {
        let g = cb
            .get(Vbid(1), format!("k{i}").as_bytes())
            .await?
            .expect("moved document");
        assert_eq!(g.value, format!("v{i}").as_bytes());
        assert_eq!(g.flags, i);
    }
    assert_eq!(
        cb.get(Vbid(0), b"k0")
            .await
            .expect_err("vb 0 not here")
            .status(),
        Some(mcbp::Status::NotMyVbucket)
    );
    let _ = VbState::Active;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_setup_prints_interrupted_and_exits_1() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    // The consumer never answers the ADD_STREAM: the set-up waits (bounded by 60 s).
    fault(&b, r#"{"kind":"drop_add_stream_response","vbucket":1}"#).await?;
    let mut child = replicate(&a, &b, &["--vbuckets", "1", "--timeout", "60"]).spawn()?;
    // Give it time to connect and send the ADD_STREAM; the set-up then hangs on purpose.
    wait_for_dcp_connection(&b).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait()?;
        let mut s = String::new();
        if let Some(mut o) = child.stdout.take() {
            std::io::Read::read_to_string(&mut o, &mut s)?;
        }
        Ok::<_, std::io::Error>((status, s))
    })
    .await??;
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "exits promptly, not at the 60 s timeout"
    );
    assert_eq!(out.0.code(), Some(1));
    let v: Value = serde_json::from_str(out.1.trim())?;
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    Ok(())
}

/// Stdout lines of a child, each with when it was read.
type Lines = std::sync::mpsc::Receiver<(Instant, String)>;

/// The next stdout line, parsed.
fn next_json(rx: &Lines, bound: Duration) -> anyhow::Result<Value> {
    let (_, line) = rx.recv_timeout(bound)?;
    Ok(serde_json::from_str(&line)?)
}

/// Waits (bounded) until `replicate` has opened its DCP connection on `n`.
async fn wait_for_dcp_connection(n: &NodeProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        let mut c = client(n).await?;
        let dcp = c.stats("dcp").await?;
        if dcp.iter().any(|(k, _)| k.contains("replication:")) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replicate never opened its DCP connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spawns `conduit replicate` with its stdout lines on a channel.
fn spawn_lines(mut cmd: Command) -> anyhow::Result<(Child, Lines)> {
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    Ok((child, rx))
}

/// Waits (bounded) for the process to exit; returns its exit code.
fn wait_exit(child: &mut Child, bound: Duration) -> anyhow::Result<i32> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code().unwrap_or(-1));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replicate did not exit within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue #8 item 9: `--takeover V` without a set-up of V (no `--vbuckets`) starts
/// the connection for the takeover and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_without_a_setup_starts_the_connection_and_succeeds() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    let (code, lines) = finish(replicate(&a, &b, &["--takeover", "3", "--timeout", "20"]))?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["vbuckets"], serde_json::json!([]));
    assert_eq!(lines[1], serde_json::json!({"ok": true, "takeover": 3}));
    assert_eq!(vb_state(&b, 3).await?, "active");
    assert_eq!(vb_state(&a, 3).await?, "dead");
    Ok(())
}

/// Issue #8 item 9: SIGINT while `--until-caught-up` waits (it never catches up
/// with `--done-limit 0`) or while `--takeover` waits (the producer stopped
/// reading) prints an `interrupted` line and exits 1 within `--shut-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_until_caught_up_or_takeover_prints_interrupted() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    let shut = Duration::from_secs(2);
    let cases: [&[&str]; 2] = [
        &[
            "--vbuckets",
            "0-3",
            "--until-caught-up",
            "--done-limit",
            "0",
        ],
        &["--takeover", "5"],
    ];
    for (i, extra) in cases.iter().enumerate() {
        if i == 1 {
            // The producer's DCP connections stop reading: the takeover waits.
            fault(&a, r#"{"kind":"stall","ms":60000}"#).await?;
        }
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--timeout", "60", "--shut-timeout", "2"]);
        let (mut child, rx) = spawn_lines(replicate(&a, &b, &args))?;
        let first = next_json(&rx, BOUND)?;
        assert_eq!(first["ok"], true, "{first}");
        // Now in the wait; give it a moment to be well inside it.
        std::thread::sleep(Duration::from_millis(500));
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()?;
        let t0 = Instant::now();
        let code = wait_exit(&mut child, BOUND)?;
        assert!(
            t0.elapsed() < shut + Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(code, 1, "{extra:?}");
        let second = next_json(&rx, Duration::from_secs(1))?;
        assert_eq!(second["ok"], false, "{second}");
        assert_eq!(
            second["error"]["kind"], "interrupted",
            "{extra:?}: {second}"
        );
    }
    Ok(())
}

/// Issue #8 item 9: on a signal the `interrupted` line comes out *before* the
/// teardown starts. The consumer node stops reading its DCP connection, so the
/// graceful close at exit has to wait its bound: the line must arrive well before
/// the process ends, not just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interrupted_line_comes_before_a_slow_teardown() -> anyhow::Result<()> {
    let (a, b) = pair().await?;
    // The consumer's DCP connections stop reading: the set-up hangs, and so would
    // the close of its streams at exit.
    fault(&b, r#"{"kind":"stall","ms":60000}"#).await?;
    let (mut child, rx) = spawn_lines(replicate(
        &a,
        &b,
        &["--vbuckets", "1", "--timeout", "60", "--shut-timeout", "5"],
    ))?;
    wait_for_dcp_connection(&b).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let (line_at, line) = rx.recv_timeout(BOUND)?;
    let code = wait_exit(&mut child, BOUND)?;
    let exited_at = Instant::now();
    let v: Value = serde_json::from_str(&line)?;
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert_eq!(code, 1);
    let gap = exited_at.duration_since(line_at);
    assert!(
        gap >= Duration::from_millis(250),
        "the line came only {gap:?} before the exit: it was printed after the teardown"
    );
    Ok(())
}
