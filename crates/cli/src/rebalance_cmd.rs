//! `conduit rebalance …` (cluster.md §3.5, §5.4, §5.9, §9).
//!
//! * `conduit rebalance [--eject NODE…] [--wait] [--timeout S]`: knownNodes = every node
//!   `/pools/default` lists, `--eject` the nodes to remove. `--wait` polls
//!   `/pools/default/tasks` every 250 ms: on a terminal (stderr, without `--json`) an
//!   overall bar and one line per node on stderr; otherwise JSON lines on stdout, at most
//!   4 a second, only when something changed and only while a bucket's moves run (a
//!   rebalance without buckets prints only its end). The last line is
//!   `{"event":"done","ok":true,…}`, `{"event":"stopped","ok":false,"error":{"kind":"stopped"}}`
//!   (someone stopped it), the server's typed error (`{"event":"failed","ok":false,"error":…}`)
//!   or a `timeout` (the rebalance keeps running).
//! * `conduit rebalance stop [--wait]`: `POST /controller/stopRebalance`.
//! * `conduit rebalance status`: the rebalance entry of `/pools/default/tasks`.
//! * `conduit rebalance report [--id ID]`: `GET /logs/rebalanceReport`.
//! * `conduit rebalance settings [--moves-per-node N] …`: `GET|POST /settings/rebalance`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::cluster_cmd::{finish, parse_seconds, with_client, Report, RestArgs};
use crate::rest_client::{CliError, RestClient};

/// Poll period of `--wait` (§9).
const POLL: Duration = Duration::from_millis(250);
/// At most this often a JSON progress line (4/s, §5.4).
const LINE_EVERY: Duration = Duration::from_millis(250);
/// How long `--wait` keeps polling through failed polls (unreachable, 503).
const POLL_FAILURES_BOUND: Duration = Duration::from_secs(10);

/// `conduit rebalance`: the start flags directly, or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RebalanceArgs {
    #[command(subcommand)]
    command: Option<RebalanceCommand>,
    #[command(flatten)]
    start: StartArgs,
}

/// `conduit rebalance <subcommand>`.
#[derive(Debug, Subcommand)]
enum RebalanceCommand {
    /// Stop the running rebalance (POST /controller/stopRebalance).
    Stop(StopArgs),
    /// The rebalance task: progress, moves and nodes while it runs; the last error and
    /// report otherwise.
    Status(StatusArgs),
    /// A rebalance report (GET /logs/rebalanceReport): the newest, or --id's.
    Report(ReportArgs),
    /// Show the rebalance settings, or change the ones given (GET|POST /settings/rebalance).
    Settings(SettingsArgs),
}

/// Flags of `conduit rebalance` itself.
#[derive(Debug, Args)]
struct StartArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// A node to remove (its name or HOST:PORT); repeatable.
    #[arg(long = "eject")]
    eject: Vec<String>,
    /// Wait until the rebalance has ended, showing its progress.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds (the rebalance keeps running after it).
    #[arg(long, default_value = "3600", value_parser = parse_seconds)]
    timeout: Duration,
}

/// Flags of `conduit rebalance stop`.
#[derive(Debug, Args)]
struct StopArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// Wait until no rebalance runs (rebalanceProgress is `{"status":"none"}`).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value = "120", value_parser = parse_seconds)]
    timeout: Duration,
}

/// Flags of `conduit rebalance status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    rest: RestArgs,
}

/// Flags of `conduit rebalance report`.
#[derive(Debug, Args)]
struct ReportArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The report's id (the rebalance id, 32 hex digits) [default: the newest].
    #[arg(long, value_parser = parse_report_id)]
    id: Option<String>,
}

/// Flags of `conduit rebalance settings`; none given = show them.
#[derive(Debug, Args)]
struct SettingsArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// Backfills per node at a time (rebalanceMovesPerNode), 1–64.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    moves_per_node: Option<u32>,
    /// Seconds before leaving nodes are ejected (rebalanceOutDelay), 0–300.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=300))]
    out_delay: Option<u64>,
    /// Seconds a stop lets moves past takeover finish (stopGracePeriod), 1–60.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60))]
    stop_grace: Option<u64>,
    /// Bound on a data move making no progress, seconds (moveStallTimeout), 10–3600.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3600))]
    move_stall_timeout: Option<u64>,
    /// Bound on the persistence wait, seconds (persistenceTimeout), 10–3600.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3600))]
    persistence_timeout: Option<u64>,
    /// Bound on a takeover, seconds (takeoverTimeout), 10–3600.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3600))]
    takeover_timeout: Option<u64>,
}

fn parse_report_id(s: &str) -> Result<String, String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a report id (32 hex digits)"))
    }
}

/// Runs `conduit rebalance …`; returns the exit code.
pub(crate) async fn run(a: RebalanceArgs) -> u8 {
    match a.command {
        None => run_start(a.start).await,
        Some(RebalanceCommand::Stop(s)) => with_client(&s.rest, |c| stop(c, &s)).await,
        Some(RebalanceCommand::Status(s)) => with_client(&s.rest, status).await,
        Some(RebalanceCommand::Report(r)) => run_report(r).await,
        Some(RebalanceCommand::Settings(s)) => with_client(&s.rest, |c| settings(c, &s)).await,
    }
}

/// How `--wait` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    /// Bar and node lines on stderr; human final line.
    Bar,
    /// JSON lines on stdout, the final line too.
    Lines,
}

async fn run_start(a: StartArgs) -> u8 {
    let show = if a.wait && !a.rest.json && std::io::stderr().is_terminal() {
        Show::Bar
    } else {
        Show::Lines
    };
    let r = match RestClient::new(&a.rest.cluster, &a.rest.user, &a.rest.password) {
        Ok(c) => rebalance(c, &a, show).await,
        Err(e) => Err(e),
    };
    // Without --wait only --json decides; with it, JSON lines unless on a terminal.
    let json = a.rest.json || (a.wait && show == Show::Lines);
    finish_wait(json, r)
}

async fn rebalance(c: RestClient, a: &StartArgs, show: Show) -> Result<Report, CliError> {
    let pd = c.get_json("/pools/default").await?;
    let known: Vec<String> = pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["otpNode"].as_str().map(str::to_owned))
        .collect();
    let answer = c
        .post(
            "/controller/rebalance",
            &[
                ("knownNodes", known.join(",")),
                ("ejectedNodes", a.eject.join(",")),
            ],
        )
        .await?;
    let id = answer.body["rebalance_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if !a.wait {
        return Ok(Report::new(
            json!({"rebalance_id": id, "known": known, "ejected": a.eject}),
            format!("rebalance {id} started"),
        ));
    }
    wait_end(&c, &id, a.timeout, show).await
}

/// How a rebalance ended, from the idle task and its report.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Done,
    Stopped,
    /// The server's typed error object.
    Failed(Map<String, Value>),
}

/// The rebalance entry of a `/pools/default/tasks` answer.
fn rebalance_task(tasks: &Value) -> Value {
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["type"] == "rebalance")
        .cloned()
        .unwrap_or_else(|| json!({"type": "rebalance", "status": "notRunning"}))
}

/// The report id in `lastReportURI` (`/logs/rebalanceReport?reportID=…`).
fn report_id_of(task: &Value) -> Option<String> {
    let uri = task["lastReportURI"].as_str()?;
    let (_, q) = uri.split_once('?')?;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("reportID="))
        .map(str::to_owned)
}

/// The error object of an idle task: `error`, else one built from `errorMessage`
/// (`Rebalance failed: <kind>: <message>`).
fn task_error(task: &Value) -> Option<Map<String, Value>> {
    if let Some(Value::Object(e)) = task.get("error") {
        return Some(e.clone());
    }
    let msg = task.get("errorMessage")?.as_str()?;
    let rest = msg.strip_prefix("Rebalance failed: ").unwrap_or(msg);
    let (kind, message) = match rest.split_once(": ") {
        Some((k, m)) if !k.is_empty() && !k.contains(' ') => (k, m),
        _ => ("rebalance_failed", msg),
    };
    let mut e = Map::new();
    e.insert("kind".into(), json!(kind));
    e.insert("message".into(), json!(message));
    Some(e)
}

/// How run `id` ended: the idle task's error when the task is about that run; else the
/// report's `result`; a run with neither error nor report counts as done.
fn outcome(id: &str, task: &Value, report: Option<&Value>) -> Outcome {
    let about_us = report_id_of(task).is_none_or(|r| r.eq_ignore_ascii_case(id));
    if about_us && task["status"] != "running" {
        if let Some(e) = task_error(task) {
            return Outcome::Failed(e);
        }
    }
    let Some(result) = report.map(|r| &r["result"]) else {
        return Outcome::Done;
    };
    if result["ok"] == true {
        Outcome::Done
    } else if result["stopped"] == true {
        Outcome::Stopped
    } else if let Some(Value::Object(e)) = result.get("error") {
        Outcome::Failed(e.clone())
    } else {
        Outcome::Failed(
            json!({"kind": "rebalance_failed", "message": format!("the rebalance failed: {result}")})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    }
}

/// The JSON progress line of a running task (§5.4), plus per node the moves left and
/// backfills running.
fn progress_event(task: &Value) -> Value {
    let round = |v: &Value| (v.as_f64().unwrap_or(0.0) * 10.0).round() / 10.0;
    let moves = &task["moves"];
    let count = |k: &str| moves[k].as_u64().unwrap_or(0);
    let detail = &task["detailedProgress"]["perNode"];
    let mut per = Map::new();
    if let Some(nodes) = task["perNode"].as_object() {
        for (name, p) in nodes {
            let d = &detail[name];
            let left: u64 = ["ingoing", "outgoing"]
                .iter()
                .flat_map(|dir| ["activeVBucketsLeft", "replicaVBucketsLeft"].map(|k| &d[dir][k]))
                .filter_map(Value::as_u64)
                .sum();
            let backfilling = moves["vbuckets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["state"] == "backfilling")
                .filter(|m| {
                    let has =
                        |k: &str| m[k].as_array().is_some_and(|c| c.iter().any(|n| n == name));
                    has("to") && !has("from")
                })
                .count();
            per.insert(
                name.clone(),
                json!({"progress": round(&p["progress"]), "movesLeft": left, "backfilling": backfilling}),
            );
        }
    }
    json!({
        "event": "progress",
        "rebalance_id": task["statusId"],
        "progress": round(&task["progress"]),
        "bucket": task["detailedProgress"]["bucket"],
        "moves": {
            "done": count("done"),
            "total": count("total"),
            "running": count("running"),
            "backfilling": count("backfilling"),
        },
        "perNode": per,
        "stopping": task["stopping"].as_bool().unwrap_or(false),
    })
}

/// Where `--wait` draws.
#[derive(Debug)]
enum Sink {
    Bar {
        multi: MultiProgress,
        overall: ProgressBar,
        nodes: BTreeMap<String, ProgressBar>,
    },
    Lines {
        last: Option<Value>,
        at: Option<Instant>,
    },
}

impl Sink {
    fn new(show: Show) -> Sink {
        match show {
            Show::Bar => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let overall = multi.add(ProgressBar::new(1000));
                overall.set_style(
                    ProgressStyle::with_template("rebalance {bar:40} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                Sink::Bar {
                    multi,
                    overall,
                    nodes: BTreeMap::new(),
                }
            }
            Show::Lines => Sink::Lines {
                last: None,
                at: None,
            },
        }
    }

    fn show(&mut self, ev: &Value) {
        match self {
            Sink::Bar {
                multi,
                overall,
                nodes,
            } => {
                let p = ev["progress"].as_f64().unwrap_or(0.0);
                overall.set_position((p * 10.0).round().clamp(0.0, 1000.0) as u64);
                let m = &ev["moves"];
                overall.set_message(format!(
                    "{p:5.1}%  {}{}/{} moves, {} running, {} backfilling{}",
                    ev["bucket"]
                        .as_str()
                        .map(|b| format!("{b}: "))
                        .unwrap_or_default(),
                    m["done"],
                    m["total"],
                    m["running"],
                    m["backfilling"],
                    if ev["stopping"] == true {
                        "  (stopping)"
                    } else {
                        ""
                    }
                ));
                if let Some(per) = ev["perNode"].as_object() {
                    for (name, n) in per {
                        let bar = nodes.entry(name.clone()).or_insert_with(|| {
                            let b = multi.add(ProgressBar::new_spinner());
                            b.set_style(
                                ProgressStyle::with_template("  {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            b
                        });
                        bar.set_message(format!(
                            "{name:<28} {:5.1}%  {} moves left, {} backfilling",
                            n["progress"].as_f64().unwrap_or(0.0),
                            n["movesLeft"],
                            n["backfilling"]
                        ));
                    }
                }
            }
            Sink::Lines { last, at } => {
                // A line describes a bucket's moves: none before the first bucket's moves
                // are planned, between buckets, or in a rebalance without buckets.
                if ev["bucket"].is_null() || last.as_ref() == Some(ev) {
                    return;
                }
                if at.is_some_and(|t| t.elapsed() < LINE_EVERY) {
                    return;
                }
                println!("{ev}");
                *last = Some(ev.clone());
                *at = Some(Instant::now());
            }
        }
    }

    fn clear(&self) {
        if let Sink::Bar {
            multi,
            overall,
            nodes,
        } = self
        {
            for b in nodes.values() {
                b.finish_and_clear();
            }
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

/// Failures worth retrying while polling: no answer, or 503 (busy, orchestrator
/// unreachable).
fn transient(e: &CliError) -> bool {
    matches!(e.kind(), "unreachable" | "timeout") || e.status() == Some(503)
}

/// Polls the tasks until run `id` is no longer running; its outcome as a report or the
/// typed error.
async fn wait_end(
    c: &RestClient,
    id: &str,
    timeout: Duration,
    show: Show,
) -> Result<Report, CliError> {
    let deadline = Instant::now() + timeout;
    let mut sink = Sink::new(show);
    let mut failing_since: Option<Instant> = None;
    let r = loop {
        let task = match c.get_json("/pools/default/tasks").await {
            Ok(t) => {
                failing_since = None;
                rebalance_task(&t)
            }
            Err(e) => {
                // A node or the orchestrator briefly unreachable is not the rebalance's
                // end: retry for a while, within the --timeout.
                let since = *failing_since.get_or_insert_with(Instant::now);
                if transient(&e)
                    && since.elapsed() < POLL_FAILURES_BOUND
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                break Err(e.with("rebalance_id", json!(id)));
            }
        };
        let ours = task["status"] == "running" && task["statusId"].as_str() == Some(id);
        if !ours {
            break ended(c, id, &task).await;
        }
        sink.show(&progress_event(&task));
        if Instant::now() >= deadline {
            break Err(CliError::new(
                "timeout",
                format!(
                    "the rebalance did not end within {} s; it keeps running (`conduit rebalance stop` stops it)",
                    timeout.as_secs_f64()
                ),
            )
            .with("waiting_for", json!("rebalance"))
            .with("rebalance_id", json!(id))
            .with("still_running", json!(true)));
        }
        tokio::time::sleep(POLL).await;
    };
    sink.clear();
    r
}

/// Run `id` has ended: read its report and decide.
async fn ended(c: &RestClient, id: &str, task: &Value) -> Result<Report, CliError> {
    let report = if id.is_empty() {
        None
    } else {
        c.get_json(&format!("/logs/rebalanceReport?reportID={id}"))
            .await
            .ok()
    };
    let report_id = report
        .as_ref()
        .and_then(|r| r["rebalanceId"].as_str().map(str::to_owned))
        .or_else(|| report_id_of(task).filter(|r| r.eq_ignore_ascii_case(id)));
    match outcome(id, task, report.as_ref()) {
        Outcome::Done => {
            let took = report
                .as_ref()
                .map_or(Value::Null, |r| r["timeTaken"].clone());
            Ok(Report::new(
                json!({"event": "done", "rebalance_id": id, "reportID": report_id, "timeTaken": took}),
                format!(
                    "rebalance {id} done{}",
                    took.as_u64()
                        .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
                        .unwrap_or_default()
                ),
            ))
        }
        Outcome::Stopped => Err(CliError::new(
            "stopped",
            format!("rebalance {id} was stopped before it finished"),
        )
        .with("rebalance_id", json!(id))
        .with("reportID", json!(report_id))
        .with("event_line", json!("stopped"))),
        Outcome::Failed(mut e) => {
            e.insert("rebalance_id".into(), json!(id));
            if let Some(r) = &report_id {
                e.entry("reportID").or_insert_with(|| json!(r));
            }
            e.insert("event_line".into(), json!("failed"));
            Err(CliError { fields: e })
        }
    }
}

/// Prints the outcome of the start/wait: as [`finish`], but the stopped and failed lines
/// carry `"event"` at the top level (`{"event":"stopped","ok":false,"error":…}`).
fn finish_wait(json: bool, r: Result<Report, CliError>) -> u8 {
    match r {
        Err(mut e) => {
            let event = e.fields.remove("event_line");
            let Some(event) = event else {
                return finish(json, Err(e));
            };
            let mut line = Map::new();
            line.insert("event".into(), event);
            line.insert("ok".into(), json!(false));
            if let Some(id) = e.fields.get("rebalance_id") {
                line.insert("rebalance_id".into(), id.clone());
            }
            line.insert("error".into(), Value::Object(e.fields.clone()));
            println!("{}", Value::Object(line));
            if !json {
                eprintln!("conduit: {e}");
            }
            1
        }
        ok => finish(json, ok),
    }
}

async fn stop(c: RestClient, a: &StopArgs) -> Result<Report, CliError> {
    let before = rebalance_task(&c.get_json("/pools/default/tasks").await?);
    let running = before["status"] == "running";
    let id = if running {
        before["statusId"].clone()
    } else {
        Value::Null
    };
    c.post("/controller/stopRebalance", &[]).await?;
    if !a.wait {
        return Ok(Report::new(
            json!({"was_running": running, "rebalance_id": id, "stopped": false}),
            if running {
                "stop requested".to_string()
            } else {
                "no rebalance was running".to_string()
            },
        ));
    }
    let started = Instant::now();
    let deadline = started + a.timeout;
    loop {
        let p = c.get_json("/pools/default/rebalanceProgress").await?;
        if p["status"] == "none" {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                "timeout",
                format!(
                    "the rebalance was still stopping after {} s",
                    a.timeout.as_secs_f64()
                ),
            )
            .with("waiting_for", json!("rebalance_stop"))
            .with("rebalance_id", id));
        }
        tokio::time::sleep(POLL).await;
    }
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Report::new(
        json!({"was_running": running, "rebalance_id": id, "stopped": true, "waited_ms": ms}),
        if running {
            "rebalance stopped".to_string()
        } else {
            "no rebalance was running".to_string()
        },
    ))
}

/// The status object (`--json`) and human lines of a rebalance task.
fn status_view(task: &Value) -> (Value, Vec<String>) {
    if task["status"] == "running" {
        let ev = progress_event(task);
        let mut lines = vec![format!(
            "rebalance {} {}: {:.1}%{}, {}/{} moves ({} running, {} backfilling){}",
            task["statusId"].as_str().unwrap_or("?"),
            task["subtype"].as_str().unwrap_or("rebalance"),
            ev["progress"].as_f64().unwrap_or(0.0),
            ev["bucket"]
                .as_str()
                .map(|b| format!(" of bucket {b}"))
                .unwrap_or_default(),
            ev["moves"]["done"],
            ev["moves"]["total"],
            ev["moves"]["running"],
            ev["moves"]["backfilling"],
            if ev["stopping"] == true {
                ", stopping"
            } else {
                ""
            },
        )];
        if let Some(per) = ev["perNode"].as_object() {
            for (name, n) in per {
                lines.push(format!(
                    "  {name}: {:.1}%, {} moves left, {} backfilling",
                    n["progress"].as_f64().unwrap_or(0.0),
                    n["movesLeft"],
                    n["backfilling"]
                ));
            }
        }
        let out = json!({
            "running": true,
            "status": "running",
            "rebalance_id": task["statusId"],
            "subtype": task["subtype"],
            "progress": ev["progress"],
            "bucket": ev["bucket"],
            "moves": ev["moves"],
            "perNode": ev["perNode"],
            "stopping": ev["stopping"],
            "vbuckets": task["moves"]["vbuckets"].clone(),
        });
        return (out, lines);
    }
    let error = task_error(task).map(Value::Object);
    let mut lines = vec!["no rebalance is running".to_string()];
    if let Some(e) = &error {
        lines.push(format!(
            "the last rebalance failed: {}: {}",
            e["kind"].as_str().unwrap_or("error"),
            e["message"].as_str().unwrap_or("")
        ));
    }
    if let Some(uri) = task["lastReportURI"].as_str() {
        lines.push(format!("last report: {uri}"));
    }
    let out = json!({
        "running": false,
        "status": task["status"].as_str().unwrap_or("notRunning"),
        "lastReportURI": task["lastReportURI"],
        "reportID": report_id_of(task),
        "error": error,
    });
    (out, lines)
}

async fn status(c: RestClient) -> Result<Report, CliError> {
    let task = rebalance_task(&c.get_json("/pools/default/tasks").await?);
    let (json, human) = status_view(&task);
    Ok(Report::lines(json, human))
}

async fn run_report(a: ReportArgs) -> u8 {
    let json = a.rest.json;
    with_client(&a.rest, |c| async move {
        let path = match &a.id {
            Some(id) => format!("/logs/rebalanceReport?reportID={id}"),
            None => "/logs/rebalanceReport".to_string(),
        };
        let report = c.get_json(&path).await?;
        let human = if json {
            String::new()
        } else {
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string())
        };
        Ok(Report::new(json!({ "report": report }), human))
    })
    .await
}

async fn settings(c: RestClient, a: &SettingsArgs) -> Result<Report, CliError> {
    let mut form: Vec<(&str, String)> = vec![];
    if let Some(v) = a.moves_per_node {
        form.push(("rebalanceMovesPerNode", v.to_string()));
    }
    for (key, v) in [
        ("rebalanceOutDelay", a.out_delay),
        ("stopGracePeriod", a.stop_grace),
        ("moveStallTimeout", a.move_stall_timeout),
        ("persistenceTimeout", a.persistence_timeout),
        ("takeoverTimeout", a.takeover_timeout),
    ] {
        if let Some(v) = v {
            form.push((key, v.to_string()));
        }
    }
    let changed = !form.is_empty();
    let s = if changed {
        c.post("/settings/rebalance", &form).await?.body
    } else {
        c.get_json("/settings/rebalance").await?
    };
    let human = s
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    Ok(Report::lines(
        json!({"changed": changed, "settings": s}),
        human,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn running() -> Value {
        json!({"type":"rebalance","subtype":"node_addition","status":"running","statusId":ID,
            "progress":42.5,"stopping":false,
            "perNode":{"ns_1@a":{"progress":40.04},"ns_1@d":{"progress":45.0}},
            "detailedProgress":{"bucket":"default","perNode":{
                "ns_1@a":{"ingoing":{"activeVBucketsLeft":0,"replicaVBucketsLeft":1},"outgoing":{"activeVBucketsLeft":2,"replicaVBucketsLeft":0}},
                "ns_1@d":{"ingoing":{"activeVBucketsLeft":3,"replicaVBucketsLeft":4},"outgoing":{"activeVBucketsLeft":0,"replicaVBucketsLeft":0}}}},
            "moves":{"total":32,"done":12,"running":4,"backfilling":1,"vbuckets":[
                {"vb":5,"from":["ns_1@a","ns_1@b"],"to":["ns_1@d","ns_1@a"],"state":"backfilling"},
                {"vb":6,"from":["ns_1@a","ns_1@b"],"to":["ns_1@a","ns_1@d"],"state":"building"}]}})
    }

    #[test]
    fn progress_lines_carry_moves_and_per_node_counts() {
        let ev = progress_event(&running());
        assert_eq!(ev["event"], "progress");
        assert_eq!(ev["progress"], 42.5);
        assert_eq!(ev["bucket"], "default");
        assert_eq!(ev["moves"]["done"], 12);
        assert_eq!(ev["moves"]["total"], 32);
        assert_eq!(ev["perNode"]["ns_1@a"]["progress"], 40.0);
        assert_eq!(ev["perNode"]["ns_1@a"]["movesLeft"], 3);
        assert_eq!(ev["perNode"]["ns_1@a"]["backfilling"], 0);
        assert_eq!(ev["perNode"]["ns_1@d"]["movesLeft"], 7);
        assert_eq!(ev["perNode"]["ns_1@d"]["backfilling"], 1);
    }

    #[test]
    fn outcomes_prefer_the_idle_tasks_typed_error() {
        let err = json!({"kind":"move_failed","message":"vb 3 failed","vb":3});
        let idle = json!({"type":"rebalance","status":"notRunning",
            "lastReportURI":format!("/logs/rebalanceReport?reportID={ID}"),
            "errorMessage":"Rebalance failed: move_failed: vb 3 failed","error":err});
        let report = json!({"result":{"ok":false,"error":{"kind":"other","message":"x"}}});
        match outcome(ID, &idle, Some(&report)) {
            Outcome::Failed(e) => assert_eq!(Value::Object(e), err),
            o => panic!("{o:?}"),
        }
        // The task is about another run: the report decides.
        let other = json!({"status":"notRunning","lastReportURI":"/logs/rebalanceReport?reportID=ffffffffffffffffffffffffffffffff","error":err});
        match outcome(ID, &other, Some(&report)) {
            Outcome::Failed(e) => assert_eq!(e["kind"], "other"),
            o => panic!("{o:?}"),
        }
        // Only errorMessage: its kind and message.
        let old = json!({"status":"notRunning","errorMessage":"Rebalance failed: node_down: ns_1@c went down"});
        match outcome(ID, &old, None) {
            Outcome::Failed(e) => {
                assert_eq!(e["kind"], "node_down");
                assert_eq!(e["message"], "ns_1@c went down");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn outcomes_from_the_report() {
        let idle = json!({"status":"notRunning","lastReportURI":format!("/logs/rebalanceReport?reportID={ID}")});
        assert_eq!(report_id_of(&idle).as_deref(), Some(ID));
        let done = json!({"result":{"ok":true}});
        let stopped = json!({"result":{"ok":false,"stopped":true}});
        assert_eq!(outcome(ID, &idle, Some(&done)), Outcome::Done);
        assert_eq!(outcome(ID, &idle, Some(&stopped)), Outcome::Stopped);
        assert_eq!(outcome(ID, &idle, None), Outcome::Done);
    }

    #[test]
    fn idle_status_names_the_last_error_and_report() {
        let idle = json!({"type":"rebalance","status":"notRunning",
            "lastReportURI":format!("/logs/rebalanceReport?reportID={ID}"),
            "error":{"kind":"node_down","message":"m","node":"ns_1@c"}});
        let (j, human) = status_view(&idle);
        assert_eq!(j["running"], false);
        assert_eq!(j["reportID"], ID);
        assert_eq!(j["error"]["kind"], "node_down");
        assert!(human.iter().any(|l| l.contains("node_down")), "{human:?}");
        let (j, human) = status_view(&running());
        assert_eq!(j["running"], true);
        assert_eq!(j["moves"]["total"], 32);
        assert_eq!(human.len(), 3, "{human:?}");
    }

    #[test]
    fn only_unanswered_polls_and_503_are_retried() {
        assert!(transient(&CliError::new("unreachable", "x")));
        assert!(transient(&CliError::from_answer("GET", "/t", 503, b"")));
        assert!(!transient(&CliError::from_answer("GET", "/t", 401, b"")));
        assert!(!transient(&CliError::from_answer("GET", "/t", 404, b"")));
    }

    #[test]
    fn report_ids_are_32_hex() {
        assert!(parse_report_id(ID).is_ok());
        assert!(parse_report_id("abc").is_err());
        assert!(parse_report_id(&"g".repeat(32)).is_err());
    }
}
