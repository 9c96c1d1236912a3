//! The README's main job runs end to end and verifies itself.

use std::process::Command;

#[test]
fn demo_loads_replicates_moves_and_verifies() {
    let out = Command::new(env!("CARGO_BIN_EXE_conduit"))
        .args([
            "demo",
            "--docs",
            "1500",
            "--vbuckets",
            "16",
            "--moves",
            "2",
            "--timeout",
            "60",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("conduit demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified 1500 documents"), "{stdout}");
    assert!(stdout.contains("moved vb:1 to node B"), "{stdout}");
    assert!(stdout.contains("demo complete"), "{stdout}");
}
