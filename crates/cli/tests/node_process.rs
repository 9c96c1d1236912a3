//! `conduit node` as a process: SIGTERM shuts it down cleanly (storage flushed, no
//! failover entry added at restart) and the buckets, documents and ports come back.

use std::path::PathBuf;

use mcbp::{Cas, Datatype, Opcode, Vbid};
use testkit::NodeProcess;

const PW: &str = "adminpw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_everything_and_a_restart_serves_it_unchanged() -> anyhow::Result<()> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_conduit"));
    // No periodic flush: only the shutdown's flush can persist the writes below.
    let n = NodeProcess::start(&bin, PW, &["--flush-interval-ms", "600000"])?;
    n.create_bucket(
        r#"{"name":"default","vbuckets":4,"ram_quota_mb":32,"initial_state":"active"}"#,
    )
    .await?;
    let mut c = n.client("default").await?;
    // Acknowledged in memory, not yet persisted when the signal arrives.
    for i in 0..100u32 {
        c.store(
            Opcode::Set,
            Vbid((i % 4) as u16),
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
            i,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await?;
    }
    let log_before = c.failover_log(Vbid(0)).await?;
    drop(c);
    let dir = n.terminate()?;

    let n = NodeProcess::start_in(dir, &bin, PW, &[])?;
    let mut c = n.client("default").await?;
    for i in 0..100u32 {
        let g = c
            .get(Vbid((i % 4) as u16), format!("k{i}").as_bytes())
            .await?
            .expect("flushed at shutdown");
        assert_eq!(g.value, format!("v{i}").as_bytes());
        assert_eq!(g.flags, i);
    }
    assert_eq!(
        c.failover_log(Vbid(0)).await?,
        log_before,
        "a clean shutdown adds no failover entry"
    );
    Ok(())
}
