//! The README's main job runs end to end and verifies itself (cluster.md §9).

use std::process::Command;

fn demo(extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_conduit"))
        .args([
            "demo",
            "--docs",
            "1500",
            "--vbuckets",
            "16",
            "--timeout",
            "60",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("conduit demo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Quick mode: three nodes formed through REST, bucket created, documents loaded
/// through MCBP and verified on the actives and the replicas.
#[test]
fn demo_no_grow_forms_loads_and_verifies() {
    let (ok, stdout, stderr) = demo(&["--no-grow"]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "nodes: 3",
        "failed operations: 0",
        "documents verified: 1500",
        "check values at the actives: ok",
        "check vbucket states: ok",
        "check replica seqnos: ok",
        "check replica copies: ok",
        "demo complete",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

/// The full demo: a fourth node rebalanced in while a writer keeps upserting.
/// Needs the data-moving rebalance; the `check …` lines name any check that failed.
#[test]
fn demo_rebalances_in_under_writes_and_verifies() {
    let (ok, stdout, stderr) = demo(&[]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "nodes: 4",
        "failed operations: 0",
        "documents verified: 1500",
        "check rebalance-in: ok",
        "check writer: ok",
        "check values at the actives: ok",
        "check vbucket states: ok",
        "check replica seqnos: ok",
        "check replica copies: ok",
        "demo complete",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let moves = stdout
        .lines()
        .find_map(|l| l.strip_prefix("moves: "))
        .and_then(|m| m.parse::<u32>().ok());
    assert!(moves.is_some_and(|m| m > 0), "no moves in:\n{stdout}");
    let writes = stdout
        .lines()
        .find_map(|l| l.strip_prefix("writes during the rebalance: "))
        .and_then(|m| m.parse::<u64>().ok());
    assert!(writes.is_some_and(|w| w > 0), "no writes in:\n{stdout}");
}
