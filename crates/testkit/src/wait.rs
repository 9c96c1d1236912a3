//! Bounded condition waits: tests wait on a condition, never sleep for a fixed time
//! to let something happen. Every wait gives up after [`crate::node::BOUND`], which
//! only catches hangs.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::{timeout, Instant};

use crate::node::BOUND;

/// Condition poll interval.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds.
///
/// # Errors
/// `cond` did not hold within the bound (the message names `what`).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Polls an asynchronous, fallible `cond` until it yields `true`.
///
/// # Errors
/// `cond` failed, hung, or did not hold within the bound.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + BOUND;
    loop {
        if timeout(BOUND, cond()).await.context(what.to_string())?? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
