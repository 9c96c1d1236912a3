//! Smoke tests of `conduit bench dcp|proxy|replication|rebalance` at small sizes: each exits 0
//! and prints one JSON line with its fields present and positive. No speed checks.

use std::process::Command;

fn bench(args: &[&str], positive: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_conduit"))
        .arg("bench")
        .args(args)
        .args(["--timeout", "60"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("conduit bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    for field in positive {
        let x = v[field].as_f64();
        assert!(
            x.is_some_and(|x| x > 0.0),
            "{field} missing or not positive: {v}"
        );
    }
    v
}

#[test]
fn bench_proxy_reports_direct_and_proxied_rates() {
    let v = bench(
        &["proxy", "--frames", "20000", "--value-size", "64"],
        &[
            "frames",
            "direct_frames_per_sec",
            "direct_mb_per_sec",
            "proxy_frames_per_sec",
            "proxy_mb_per_sec",
            "relay_frames_per_sec",
            "ratio",
            "ratio_to_relay",
        ],
    );
    assert_eq!(v["frames"], 20000);
}

const NODE_FIELDS: [&str; 7] = [
    "docs",
    "mutations_per_sec",
    "producer_peak_rss_bytes",
    "consumer_peak_rss_bytes",
    "payload_bytes",
    "peak_rss_per_payload",
    "value_size",
];

/// The memory ratio is the larger node's peak over the payload, as reported.
fn check_rss_ratio(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let want = f("producer_peak_rss_bytes").max(f("consumer_peak_rss_bytes")) / f("payload_bytes");
    assert!((f("peak_rss_per_payload") - want).abs() <= 0.001, "{v}");
}

#[test]
fn bench_dcp_from_disk_streams_every_document() {
    let v = bench(
        &[
            "dcp",
            "--docs",
            "2000",
            "--value-size",
            "64",
            "--source",
            "disk",
        ],
        &[&NODE_FIELDS[..], &["mb_per_sec", "elapsed_ms"]].concat(),
    );
    assert_eq!(v["source"], "disk");
    assert_eq!(v["mutations"], 2000);
    check_rss_ratio(&v);
}

#[test]
fn bench_replication_reports_throughput_and_lag() {
    let v = bench(
        &["replication", "--docs", "2000", "--value-size", "64"],
        &[&NODE_FIELDS[..], &["lag_samples"]].concat(),
    );
    for field in ["lag_p50_ms", "lag_p99_ms", "poll_p99_ms", "poll_max_ms"] {
        assert!(v[field].as_f64().is_some_and(|x| x >= 0.0), "{field}: {v}");
    }
    assert!(
        v["poll_p99_ms"].as_f64() <= v["poll_max_ms"].as_f64(),
        "{v}"
    );
    assert_eq!(
        v["offered_rate"].as_u64(),
        Some(0),
        "unpaced by default: {v}"
    );
    check_rss_ratio(&v);
}

/// `--rate` paces the load: the run cannot finish before the offered rate allows.
#[test]
fn bench_replication_paces_its_load_at_the_offered_rate() {
    let v = bench(
        &[
            "replication",
            "--docs",
            "4000",
            "--value-size",
            "64",
            "--rate",
            "10000",
        ],
        &[&NODE_FIELDS[..], &["lag_samples"]].concat(),
    );
    assert_eq!(v["offered_rate"].as_u64(), Some(10_000), "{v}");
    let elapsed = v["elapsed_ms"].as_u64().unwrap_or(0);
    assert!(elapsed >= 400, "4,000 documents at 10,000/s: {elapsed} ms");
    let rate = v["mutations_per_sec"].as_u64().unwrap_or(u64::MAX);
    assert!(rate <= 10_000, "{rate}/s offered 10,000/s");
}

#[test]
fn bench_rebalance_reports_time_bytes_moves_and_the_ratio_to_replication() {
    let v = bench(
        &[
            "rebalance",
            "--docs",
            "2000",
            "--value-size",
            "64",
            "--vbuckets",
            "16",
        ],
        &[
            "seconds",
            "bytes_moved",
            "moves",
            "mb_per_s",
            "replication_mb_per_s",
            "ratio",
        ],
    );
    assert_eq!((v["nodes"].as_u64(), v["add"].as_u64()), (Some(3), Some(1)));
    let r =
        v["mb_per_s"].as_f64().unwrap_or(0.0) / v["replication_mb_per_s"].as_f64().unwrap_or(1.0);
    let ratio = v["ratio"].as_f64().unwrap_or(0.0);
    assert!(
        (r - ratio).abs() <= 0.01 * r.max(1.0),
        "ratio {ratio} vs {r}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kv_reports_rates_and_latencies_against_a_node() {
    let n = testkit::NodeProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_conduit")),
        "pw",
        &[],
    )
    .expect("node starts");
    n.create_bucket(
        r#"{"name":"default","vbuckets":16,"ram_quota_mb":64,"initial_state":"active"}"#,
    )
    .await
    .expect("bucket created");
    let addr = n.kv.to_string();
    let v = tokio::task::spawn_blocking(move || {
        bench(
            &[
                "kv",
                "--addr",
                &addr,
                "--user",
                "admin",
                "--password",
                "pw",
                "--bucket",
                "default",
                "--vbuckets",
                "16",
                "--ops",
                "4000",
                "--connections",
                "2",
                "--pipeline",
                "8",
                "--settle-ms",
                "10",
            ],
            &[
                "set_ops_per_sec",
                "get_ops_per_sec",
                "set_p50_us",
                "set_p99_us",
                "get_p50_us",
                "get_p99_us",
            ],
        )
    })
    .await
    .expect("bench thread");
    assert_eq!(v["ops"], 4000);
}
