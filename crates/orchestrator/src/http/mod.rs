//! The cluster's REST routes (cluster.md §3) on every node's admin port. A node that
//! is not the orchestrator forwards every cluster route to it (bounded); a node not
//! yet in a cluster answers the init routes itself.

mod views;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tracing::info;

use crate::agent::api::{AddressEntry, Creds, JoinRequest};
use crate::agent::Agent;
use crate::agent::AgentClient;
use crate::orch::{has_store, Membership, NodeRecord, OrchConfig, Orchestrator};
use crate::rest::error::RestError;
use crate::rest::form::{
    add_node_params, bucket_params, diag_eval, init_params, node_name, parse_node_ref,
    rebalance_params, NodeRef, Params,
};

/// Bound of a forwarded request (§3.1).
const FORWARD_BOUND: Duration = Duration::from_secs(30);
/// Header marking a forwarded request (a forward is never forwarded again).
const FORWARDED: &str = "x-conduit-forwarded";
/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What the REST layer knows of its node.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The node's data dir.
    pub data_dir: std::path::PathBuf,
    /// The node's own startup admin user (authenticates before init; the agent call
    /// of init uses it).
    pub local_admin: Creds,
    /// Product version.
    pub version: String,
    /// Janitor period (tests shorten it).
    pub janitor_period: Duration,
    /// The orchestrator's T7 test hook (see `OrchConfig`).
    pub fail_first_takeover_commit: bool,
}

#[derive(Debug, Default)]
struct Pending {
    hostname: Option<String>,
    memory_quota_mb: Option<u64>,
    cluster_name: Option<String>,
    default_vbuckets: Option<u16>,
}

/// The REST layer's state.
#[derive(Debug)]
pub struct ClusterHttp {
    cfg: HttpConfig,
    agent: Arc<Agent>,
    orch: Mutex<Option<Orchestrator>>,
    init_lock: tokio::sync::Mutex<()>,
    pending: Mutex<Pending>,
    forward: reqwest::Client,
}

enum Mode {
    Orchestrator(Orchestrator),
    Member {
        orchestrator: String,
        addr: Option<String>,
    },
    Uninitialised,
}

impl ClusterHttp {
    /// The REST layer of a node with `agent`.
    #[must_use]
    pub fn new(cfg: HttpConfig, agent: Arc<Agent>) -> Arc<ClusterHttp> {
        Arc::new(ClusterHttp {
            cfg,
            agent,
            orch: Mutex::new(None),
            init_lock: tokio::sync::Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            forward: reqwest::Client::builder()
                .timeout(FORWARD_BOUND)
                .build()
                .unwrap_or_default(),
        })
    }

    /// Starts the orchestrator again when this node is a member whose agent names it
    /// the orchestrator and its store exists (a restart).
    ///
    /// # Errors
    /// The store or secrets cannot be opened.
    pub async fn resume(&self) -> Result<bool, RestError> {
        let Some(m) = self.agent.membership() else {
            return Ok(false);
        };
        if m.orchestrator != m.name || !has_store(&self.cfg.data_dir) {
            return Ok(false);
        }
        let cfg = self.orch_config(&m.name);
        let (store, secrets) = Orchestrator::open(&cfg).await?;
        let o = Orchestrator::start(cfg, store, secrets);
        info!(node = %m.name, "orchestrator resumed");
        self.set_orch(o);
        Ok(true)
    }

    /// The running orchestrator, if this node is it.
    #[must_use]
    pub fn orchestrator(&self) -> Option<Orchestrator> {
        self.orch.lock().ok().and_then(|o| o.clone())
    }

    /// Stops the orchestrator's tasks.
    pub fn shutdown(&self) {
        if let Some(o) = self.orchestrator() {
            o.shutdown();
        }
    }

    fn set_orch(&self, o: Orchestrator) {
        if let Ok(mut g) = self.orch.lock() {
            *g = Some(o);
        }
    }

    fn orch_config(&self, name: &str) -> OrchConfig {
        let mut cfg = OrchConfig::new(&self.cfg.data_dir, name);
        cfg.janitor_period = self.cfg.janitor_period;
        cfg.fail_first_takeover_commit = self.cfg.fail_first_takeover_commit;
        cfg.version.clone_from(&self.cfg.version);
        cfg
    }

    fn mode(&self) -> Mode {
        if let Some(o) = self.orchestrator() {
            return Mode::Orchestrator(o);
        }
        match self.agent.membership() {
            Some(m) => Mode::Member {
                addr: m
                    .address_of(&m.orchestrator)
                    .map(|a: &AddressEntry| format!("{}:{}", a.host, a.admin_port)),
                orchestrator: m.orchestrator,
            },
            None => Mode::Uninitialised,
        }
    }

    /// The product version as nodes show it.
    fn implementation_version(&self) -> String {
        format!("7.6.0-conduit-{}", self.cfg.version)
    }
}

/// The routes (served by kv-node's admin extension; `GET /pools` is public).
pub fn router(state: Arc<ClusterHttp>) -> Router {
    Router::new()
        .route("/pools", get(pools))
        .fallback(dispatch)
        .with_state(state)
}

/// The routes the node serves without authentication.
#[must_use]
pub fn public_routes() -> Vec<(Method, String)> {
    vec![(Method::GET, "/pools".to_owned())]
}

fn basic_creds(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let enc = v.strip_prefix("Basic ")?;
    let dec = base64::engine::general_purpose::STANDARD
        .decode(enc.trim())
        .ok()?;
    let text = String::from_utf8(dec).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

async fn pools(State(st): State<Arc<ClusterHttp>>, headers: HeaderMap) -> Response {
    let creds = basic_creds(&headers);
    let matches = |c: &Creds| {
        creds
            .as_ref()
            .is_some_and(|(u, p)| *u == c.user && *p == c.password)
    };
    let membership = st.agent.membership();
    let is_admin = matches(&st.cfg.local_admin)
        || membership
            .as_ref()
            .is_some_and(|m| matches(&m.admin) || matches(&m.internal));
    let ver = st.implementation_version();
    let (uuid, pools) = match &membership {
        Some(m) => (
            json!(m.cluster),
            json!([{"name": "default", "uri": "/pools/default", "streamingUri": "/poolsStreaming/default"}]),
        ),
        None => (json!([]), json!([])),
    };
    Json(json!({
        "isAdminCreds": is_admin,
        "isEnterprise": true,
        "implementationVersion": ver,
        "componentsVersion": {"conduit": st.cfg.version},
        "uuid": uuid,
        "pools": pools,
    }))
    .into_response()
}

async fn dispatch(State(st): State<Arc<ClusterHttp>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return RestError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "_",
                format!("the request body exceeds {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    let path = parts.uri.path().to_owned();
    if !is_cluster_route(&path) {
        return RestError::not_found(format!("no route {} {path}", parts.method)).into_response();
    }
    match st.mode() {
        Mode::Orchestrator(o) => local(
            &st,
            &o,
            &parts.method,
            &path,
            parts.uri.query(),
            &parts.headers,
            &body,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response),
        Mode::Member { orchestrator, addr } => {
            if parts.headers.contains_key(FORWARDED) {
                return RestError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "orchestrator_unreachable",
                    "_",
                    format!("{orchestrator} is not running the orchestrator"),
                )
                .into_response();
            }
            forward(&st, &orchestrator, addr.as_deref(), &parts, body).await
        }
        Mode::Uninitialised => uninitialised(
            &st,
            &parts.method,
            &path,
            parts.uri.query(),
            &parts.headers,
            &body,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response),
    }
}

fn is_cluster_route(path: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "/pools/",
        "/controller/",
        "/clusterInit",
        "/settings/",
        "/node/",
        "/nodes/",
        "/diag/eval",
        "/logs/",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p))
}

async fn forward(
    st: &ClusterHttp,
    orchestrator: &str,
    addr: Option<&str>,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let unreachable = |msg: String| {
        RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orchestrator_unreachable",
            "_",
            msg,
        )
        .with("node", json!(orchestrator))
        .into_response()
    };
    let Some(addr) = addr else {
        return unreachable(format!(
            "the address of the orchestrator {orchestrator} is unknown"
        ));
    };
    let url = match parts.uri.query() {
        Some(q) => format!("http://{addr}{}?{q}", parts.uri.path()),
        None => format!("http://{addr}{}", parts.uri.path()),
    };
    let mut rb = st
        .forward
        .request(parts.method.clone(), &url)
        .header(FORWARDED, "1")
        .body(body);
    for h in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&h) {
            rb = rb.header(h, v.clone());
        }
    }
    let resp = match tokio::time::timeout(FORWARD_BOUND, rb.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return unreachable(format!(
                "forwarding to the orchestrator {orchestrator} at {addr}: {e}"
            ))
        }
        Err(_) => {
            return unreachable(format!(
                "the orchestrator {orchestrator} at {addr} did not answer within {FORWARD_BOUND:?}"
            ))
        }
    };
    let status = resp.status();
    let mut out = HeaderMap::new();
    for h in [
        header::CONTENT_TYPE,
        header::LOCATION,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(v) = resp.headers().get(&h) {
            out.insert(h, v.clone());
        }
    }
    match tokio::time::timeout(FORWARD_BOUND, resp.bytes()).await {
        Ok(Ok(b)) => (status, out, b).into_response(),
        _ => unreachable(format!(
            "the orchestrator {orchestrator} at {addr} broke off its answer"
        )),
    }
}

const INIT_IGNORED_NODE_SETTINGS: [&str; 6] = [
    "path",
    "data_path",
    "index_path",
    "cbas_path",
    "eventing_path",
    "analytics_path",
];
const POOLS_DEFAULT_KNOWN: [&str; 2] = ["memoryQuota", "clusterName"];
const POOLS_DEFAULT_IGNORED: [&str; 5] = [
    "indexMemoryQuota",
    "ftsMemoryQuota",
    "cbasMemoryQuota",
    "eventingMemoryQuota",
    "queryMemoryQuota",
];

fn params(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Result<Params, RestError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Params::parse(ct, query, body)
}

fn ok_empty() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

fn services_ok(p: &Params) -> Result<(), RestError> {
    for s in p.list("services") {
        if s != "kv" {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_service",
                "services",
                format!("Unsupported service {s:?}: this cluster runs kv only"),
            ));
        }
    }
    Ok(())
}

/// Routes of a node that has not joined a cluster.
async fn uninitialised(
    st: &ClusterHttp,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, RestError> {
    let p = params(headers, query, body)?;
    match (method.as_str(), path) {
        ("POST", "/clusterInit") => init(st, &p, false).await,
        ("POST", "/settings/web") => init(st, &p, true).await,
        ("POST", "/node/controller/setupServices") => {
            p.check_keys(&["services"], &["setDefaultMemQuotas"])?;
            services_ok(&p)?;
            Ok(ok_empty())
        }
        ("POST", "/nodes/self/controller/settings") => {
            p.check_keys(&[], &INIT_IGNORED_NODE_SETTINGS)?;
            Ok(ok_empty())
        }
        ("POST", "/node/controller/rename") => {
            p.check_keys(&["hostname"], &[])?;
            let h = p.require("hostname")?.to_owned();
            if let Ok(mut pend) = st.pending.lock() {
                pend.hostname = Some(h);
            }
            Ok(ok_empty())
        }
        ("POST", "/pools/default") => {
            p.check_keys(&POOLS_DEFAULT_KNOWN, &POOLS_DEFAULT_IGNORED)?;
            let q = p.int_in("memoryQuota", 256, 1 << 30)?;
            if let Ok(mut pend) = st.pending.lock() {
                if let Some(q) = q {
                    pend.memory_quota_mb = Some(q as u64);
                }
                if let Some(n) = p.get("clusterName") {
                    pend.cluster_name = Some(n.to_owned());
                }
            }
            Ok(ok_empty())
        }
        ("POST", "/diag/eval") => {
            let n = diag_eval(&String::from_utf8_lossy(body))?;
            if let Ok(mut pend) = st.pending.lock() {
                pend.default_vbuckets = Some(n);
            }
            Ok(ok_empty())
        }
        ("GET", "/pools/default") => Err(RestError::not_found("unknown pool: the cluster is not initialised")),
        _ => Err(RestError::new(StatusCode::BAD_REQUEST, "not_initialised", "_", "This node is not part of a cluster yet: initialise it (POST /clusterInit) or add it to one.")),
    }
}

async fn init(st: &ClusterHttp, p: &Params, legacy: bool) -> Result<Response, RestError> {
    let _serial = st.init_lock.lock().await;
    if st.orchestrator().is_some() || st.agent.membership().is_some() {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "already_initialised",
            "_",
            "Cluster is already initialized",
        ));
    }
    let info = st.agent.info();
    let mut ip = init_params(p, info.admin_port, legacy)?;
    let (pend_host, pend_quota, pend_name, pend_vbs) = match st.pending.lock() {
        Ok(pd) => (
            pd.hostname.clone(),
            pd.memory_quota_mb,
            pd.cluster_name.clone(),
            pd.default_vbuckets,
        ),
        Err(_) => (None, None, None, None),
    };
    ip.memory_quota_mb = ip.memory_quota_mb.or(pend_quota);
    ip.cluster_name = ip.cluster_name.or(pend_name);
    let host = ip
        .hostname
        .clone()
        .or(pend_host)
        .unwrap_or_else(|| info.host.clone());
    let name = node_name(&host, info.admin_port);
    let me = NodeRecord {
        name: name.clone(),
        uuid: info.uuid.clone(),
        host: host.clone(),
        admin_port: info.admin_port,
        kv_port: info.kv_port,
        membership: Membership::Active,
        recovery_type: "none".to_owned(),
        server_group: "Group 1".to_owned(),
        services: vec!["kv".to_owned()],
    };
    let cfg = st.orch_config(&name);
    let (store, secrets, cluster) = Orchestrator::init(&cfg, &ip, me).await?;
    // The local agent joins first (it installs the internal user the orchestrator's
    // calls authenticate with), then the orchestrator starts.
    let local = AgentClient::new(
        format!("127.0.0.1:{}", info.admin_port),
        name.clone(),
        st.cfg.local_admin.clone(),
        None,
        0,
    );
    local
        .join(&JoinRequest {
            cluster: cluster.uuid.clone(),
            name: name.clone(),
            term: cluster.term,
            orchestrator: name.clone(),
            nodes: vec![AddressEntry {
                name: name.clone(),
                host,
                kv_port: info.kv_port,
                admin_port: info.admin_port,
            }],
            admin: secrets.admin.clone(),
            internal: secrets.internal.clone(),
            wipe: false,
        })
        .await
        .map_err(|e| {
            RestError::internal(format!(
                "the local agent refused to join the new cluster: {e}"
            ))
        })?;
    let o = Orchestrator::start(cfg, store, secrets);
    if let Some(n) = pend_vbs {
        o.set_default_vbuckets(n).await?;
    }
    st.set_orch(o);
    info!(node = %name, "cluster initialised");
    Ok(ok_empty())
}

fn resolve_ref(view: &crate::orch::ClusterView, me: &str, r: &str) -> Result<String, RestError> {
    match parse_node_ref(r)? {
        NodeRef::SelfNode => Ok(me.to_owned()),
        NodeRef::Name(n) => Ok(n),
        NodeRef::HostPort(h, port) => Ok(view
            .nodes
            .values()
            .find(|n| n.host == h && n.admin_port == port)
            .map_or_else(|| format!("{h}:{port}"), |n| n.name.clone())),
    }
}

/// Routes on the orchestrator node.
async fn local(
    st: &ClusterHttp,
    o: &Orchestrator,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, RestError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if method == Method::POST && path == "/diag/eval" {
        let n = diag_eval(&String::from_utf8_lossy(body))?;
        o.set_default_vbuckets(n).await?;
        return Ok(ok_empty());
    }
    let p = params(headers, query, body)?;
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["clusterInit"]) => Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "already_initialised",
            "_",
            "Cluster is already initialized",
        )),
        ("POST", ["settings", "web"]) => {
            let same = p.get("username") == Some(o.secrets().admin.user.as_str())
                && p.get("password") == Some(o.secrets().admin.password.as_str());
            if same {
                Ok(ok_empty())
            } else {
                Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "already_initialised",
                    "_",
                    "Cluster is already initialized; the credentials can not be changed here",
                ))
            }
        }
        ("POST", ["node", "controller", "setupServices"]) => {
            p.check_keys(&["services"], &["setDefaultMemQuotas"])?;
            services_ok(&p)?;
            Ok(ok_empty())
        }
        ("POST", ["nodes", "self", "controller", "settings"]) => {
            p.check_keys(&[], &INIT_IGNORED_NODE_SETTINGS)?;
            Ok(ok_empty())
        }
        ("POST", ["node", "controller", "rename"]) => {
            p.check_keys(&["hostname"], &[])?;
            let h = p.require("hostname")?;
            let view = o.view().await?;
            match view.nodes.get(o.self_name()) {
                Some(me) if me.host == h => Ok(ok_empty()),
                _ => Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "rename_not_allowed",
                    "hostname",
                    "Renaming an initialised node is not supported in this version.",
                )),
            }
        }
        ("POST", ["pools", "default"]) => {
            p.check_keys(&POOLS_DEFAULT_KNOWN, &POOLS_DEFAULT_IGNORED)?;
            let q = p.int_in("memoryQuota", 256, 1 << 30)?.map(|q| q as u64);
            o.set_cluster_settings(q, p.get("clusterName").map(str::to_owned))
                .await?;
            Ok(ok_empty())
        }
        ("POST", ["controller", "addNode"]) => {
            let a = add_node_params(&p)?;
            let v = o.add_node(a).await?;
            Ok(Json(v).into_response())
        }
        ("POST", ["controller", "ejectNode"]) => {
            p.check_keys(&["otpNode"], &[])?;
            let view = o.view().await?;
            let name = resolve_ref(&view, o.self_name(), p.require("otpNode")?)?;
            o.eject_node(name).await?;
            Ok(ok_empty())
        }
        ("POST", ["controller", "rebalance"]) => {
            let (known, ejected) = rebalance_params(&p)?;
            let view = o.view().await?;
            let known = known
                .iter()
                .map(|k| resolve_ref(&view, o.self_name(), k))
                .collect::<Result<Vec<_>, _>>()?;
            let ejected = ejected
                .iter()
                .map(|k| resolve_ref(&view, o.self_name(), k))
                .collect::<Result<Vec<_>, _>>()?;
            let v = o.rebalance(known, ejected).await?;
            Ok(Json(v).into_response())
        }
        ("POST", ["controller", "stopRebalance"]) => {
            p.check_keys(&["allowUnsafe"], &[])?;
            o.stop_rebalance().await?;
            Ok(ok_empty())
        }
        ("GET", ["pools", "default", "rebalanceProgress"]) => {
            Ok(views::rebalance_progress(o).await)
        }
        ("GET", ["pools", "default", "tasks"]) => {
            Ok(Json(json!([o.rebalance_task().await])).into_response())
        }
        ("GET", ["pools", "default", "currentRebalanceReport"]) => {
            if o.rebalance_running() {
                Ok(Json(o.rebalance_task().await).into_response())
            } else {
                Ok(Json(json!({"is_rebalancing": false})).into_response())
            }
        }
        ("GET", ["logs", "rebalanceReport"]) => {
            p.check_keys(&["reportID"], &[])?;
            let id = p.get("reportID");
            if let Some(id) = id {
                if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(RestError::bad_param(
                        "reportID",
                        "reportID must be 32 hex digits",
                    ));
                }
            }
            match o.rebalance_report(id).await {
                Some(r) => Ok(Json(r).into_response()),
                None => Err(RestError::not_found("no such rebalance report")),
            }
        }
        ("POST", ["controller", "failOver"]) => {
            p.check_keys(&["otpNode", "allowUnsafe", "force"], &[])?;
            let view = o.view().await?;
            let nodes = p
                .list("otpNode")
                .iter()
                .map(|n| resolve_ref(&view, o.self_name(), n))
                .collect::<Result<Vec<_>, _>>()?;
            let force =
                p.bool("force")?.unwrap_or(false) || p.bool("allowUnsafe")?.unwrap_or(false);
            Ok(Json(o.fail_over(nodes, force).await?).into_response())
        }
        ("POST", ["controller", "startGracefulFailover"]) => {
            p.check_keys(&["otpNode"], &[])?;
            let view = o.view().await?;
            let nodes = p.list("otpNode");
            if nodes.len() != 1 {
                return Err(RestError::bad_param(
                    "otpNode",
                    "exactly one node can be failed over gracefully at a time in this version",
                ));
            }
            let node = resolve_ref(&view, o.self_name(), &nodes[0])?;
            Ok(Json(o.graceful_failover(node).await?).into_response())
        }
        ("POST", ["controller", "setRecoveryType"]) => {
            p.check_keys(&["otpNode", "recoveryType"], &[])?;
            let view = o.view().await?;
            let node = resolve_ref(&view, o.self_name(), p.require("otpNode")?)?;
            let kind = p.require("recoveryType")?.to_owned();
            Ok(Json(o.set_recovery_type(node, kind).await?).into_response())
        }
        ("POST", ["controller", "reAddNode"]) => {
            p.check_keys(&["otpNode"], &[])?;
            let view = o.view().await?;
            let node = resolve_ref(&view, o.self_name(), p.require("otpNode")?)?;
            Ok(Json(o.set_recovery_type(node, "full".to_owned()).await?).into_response())
        }
        ("POST", ["controller", "reFailOver"]) => {
            p.check_keys(&["otpNode"], &[])?;
            let view = o.view().await?;
            let node = resolve_ref(&view, o.self_name(), p.require("otpNode")?)?;
            Ok(Json(o.re_fail_over(node).await?).into_response())
        }
        ("GET", ["settings", "autoFailover"]) => {
            Ok(Json(o.auto_failover_settings().await?).into_response())
        }
        ("POST", ["settings", "autoFailover"]) => {
            p.check_keys(
                &["enabled", "timeout", "maxCount"],
                &[
                    "failoverOnDataDiskIssues[enabled]",
                    "failoverOnDataDiskIssues[timePeriod]",
                    "canAbortRebalance",
                    "failoverServerGroup",
                ],
            )?;
            let enabled = p
                .bool("enabled")?
                .ok_or_else(|| RestError::missing("enabled"))?;
            let timeout = p.int_in("timeout", 5, 3600)?.map(|v| v as u64);
            let max_count = p.int_in("maxCount", 1, 100)?.map(|v| v as u32);
            Ok(Json(o.set_auto_failover(enabled, timeout, max_count).await?).into_response())
        }
        ("POST", ["settings", "autoFailover", "resetCount"]) => {
            o.reset_auto_failover_count().await?;
            Ok(ok_empty())
        }
        ("GET", ["settings", "retryRebalance"]) => {
            Ok(Json(o.retry_settings().await?.to_json()).into_response())
        }
        ("POST", ["settings", "retryRebalance"]) => {
            p.check_keys(&["enabled", "afterTimePeriod", "maxAttempts"], &[])?;
            let mut s = o.retry_settings().await?;
            s.enabled = p
                .bool("enabled")?
                .ok_or_else(|| RestError::missing("enabled"))?;
            if let Some(v) = p.int_in("afterTimePeriod", 5, 3600)? {
                s.after_time_period_s = v as u64;
            }
            if let Some(v) = p.int_in("maxAttempts", 1, 3)? {
                s.max_attempts = v as u32;
            }
            Ok(Json(o.set_retry_settings(s).await?).into_response())
        }
        ("GET", ["pools", "default", "pendingRetryRebalance"]) => {
            Ok(Json(o.pending_retry().await?).into_response())
        }
        ("POST", ["controller", "cancelRebalanceRetry", id]) => {
            o.cancel_retry((*id).to_owned()).await?;
            Ok(ok_empty())
        }
        ("GET", ["settings", "rebalance"]) => {
            Ok(Json(o.rebalance_settings().await?).into_response())
        }
        ("POST", ["settings", "rebalance"]) => {
            const KEYS: [&str; 6] = [
                "rebalanceMovesPerNode",
                "moveStallTimeout",
                "persistenceTimeout",
                "takeoverTimeout",
                "rebalanceOutDelay",
                "stopGracePeriod",
            ];
            p.check_keys(&KEYS, &[])?;
            let mut s = o.rebalance_settings().await?;
            if let Some(v) = p.int_in("rebalanceMovesPerNode", 1, 64)? {
                s.rebalance_moves_per_node = v as u32;
            }
            for (key, field, min, max) in [
                ("moveStallTimeout", &mut s.move_stall_timeout, 10, 3600),
                ("persistenceTimeout", &mut s.persistence_timeout, 10, 3600),
                ("takeoverTimeout", &mut s.takeover_timeout, 10, 3600),
                ("rebalanceOutDelay", &mut s.rebalance_out_delay, 0, 300),
                ("stopGracePeriod", &mut s.stop_grace_period, 1, 60),
            ] {
                if let Some(v) = p.int_in(key, min, max)? {
                    *field = v as u64;
                }
            }
            o.set_rebalance_settings(s).await?;
            Ok(Json(s).into_response())
        }
        ("GET", ["pools", "default"]) => {
            Ok(Json(views::pools_default(st, o).await?).into_response())
        }
        ("GET", ["pools", "default", "serverGroups"]) => {
            Ok(Json(views::server_groups(st, o).await?).into_response())
        }
        ("GET", ["pools", "default", "nodeServices"]) => {
            Ok(Json(views::node_services(o).await?).into_response())
        }
        ("GET", ["pools", "default", "buckets"]) => {
            Ok(Json(views::bucket_list(st, o).await?).into_response())
        }
        ("GET", ["pools", "default", "buckets", name]) => {
            Ok(Json(views::bucket(st, o, name).await?).into_response())
        }
        ("GET", ["pools", "default", "b", name]) => {
            Ok(Json(views::client_config(o, name).await?).into_response())
        }
        ("POST", ["pools", "default", "buckets"]) => {
            let view = o.view().await?;
            let left = view.cluster.memory_quota_mb.map(|q| {
                q.saturating_sub(view.buckets.values().map(|b| b.record.ram_quota_mb).sum())
            });
            let bp = bucket_params(&p, view.cluster.default_num_vbuckets, left)?;
            let name = bp.name.clone();
            o.create_bucket(bp).await?;
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, format!("/pools/default/buckets/{name}"))],
                "",
            )
                .into_response())
        }
        ("DELETE", ["pools", "default", "buckets", name]) => {
            o.delete_bucket((*name).to_owned()).await?;
            Ok(ok_empty())
        }
        ("POST", ["pools", "default", "buckets", _name, "controller", "doFlush"]) => {
            Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unsupported",
                "_",
                "Flush is not supported in this version.",
            ))
        }
        _ => Err(RestError::not_found(format!("no route {method} {path}"))),
    }
}

#[allow(unused_imports)]
use Value as _;
