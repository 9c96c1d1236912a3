//! The admin HTTP API (axum): buckets, vbucket states, cluster config, health and,
//! on test nodes, fault injection. HTTP basic auth with the admin user, except
//! `/health`.

// Handlers return axum `Response`s as errors; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use mcbp::{VbState, Vbid};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cluster::{ConfigSlot, ConfigVersion, Offer};
use crate::faults::Fault;
use crate::state::{BucketEntry, BucketMeta, NodeError, NodeState};

type Shared = Arc<NodeState>;

/// Serves the admin API until shutdown.
pub(crate) async fn serve(state: Shared, listener: TcpListener, shutdown: CancellationToken) {
    let mut app = router(state.clone());
    if let Some(ext) = state.config.admin_extension.clone() {
        // A fallback, not a merge: the node's own routes win and an overlap can
        // never make the server refuse to start.
        let public = Arc::new(ext.public);
        let guarded = ext.router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let state = state.clone();
                let public = public.clone();
                async move {
                    let open = public
                        .iter()
                        .any(|(m, p)| m == req.method() && p == req.uri().path());
                    if !open {
                        if let Err(denied) = check_auth(&state, req.headers()) {
                            return denied;
                        }
                    }
                    next.run(req).await
                }
            },
        ));
        app = app.fallback_service(guarded);
    }
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        warn!(error = %e, "admin server failed");
    }
}

fn router(state: Shared) -> Router {
    // Every route but /health and the fault routes (which answer 404 first when
    // fault injection is off) needs the admin role: one layer, not a check per
    // handler.
    let admin = Router::new()
        .route("/buckets", get(list_buckets).post(create_bucket))
        .route("/buckets/{name}", get(get_bucket).delete(delete_bucket))
        .route("/buckets/{name}/vbuckets/{vb}", put(set_vbucket))
        .route("/buckets/{name}/cluster-config", put(set_cluster_config))
        .route("/cluster-config", put(set_global_config))
        .route("/users/{name}", put(put_user).delete(delete_user))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_only,
        ));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .merge(admin)
        .with_state(state)
}

async fn admin_only(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match check_auth(&state, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => denied,
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Basic auth as an admin: missing or wrong credentials → 401 with the challenge; a
/// user without the admin role → 403. Both bodies are typed (`kind`), in the shape
/// the cluster's REST errors use.
fn check_auth(state: &NodeState, headers: &HeaderMap) -> Result<(), Response> {
    let denied = || {
        let message = "admin credentials required";
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"conduit\"")],
            Json(json!({"error": message, "kind": "unauthorized", "message": message, "errors": {"_": message}})),
        )
            .into_response()
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(denied());
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return Err(denied());
    };
    let decoded = B64.decode(encoded.trim()).map_err(|_| denied())?;
    let text = String::from_utf8(decoded).map_err(|_| denied())?;
    let (user, password) = text.split_once(':').ok_or_else(denied)?;
    match state.users.authenticate(user, password) {
        Some(u) if u.is_admin() => Ok(()),
        Some(_) => {
            let message = "this user lacks the admin role";
            Err((
                StatusCode::FORBIDDEN,
                Json(json!({"error": message, "kind": "forbidden", "message": message, "errors": {"_": message}})),
            )
                .into_response())
        }
        None => Err(denied()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBucket {
    name: String,
    #[serde(default = "default_vbuckets")]
    vbuckets: u16,
    #[serde(default = "default_quota")]
    ram_quota_mb: u64,
    #[serde(default)]
    initial_state: Option<String>,
    #[serde(default)]
    flush_enabled: bool,
    /// The cluster's uuid for the bucket (N1).
    #[serde(default)]
    uuid: Option<String>,
    /// A cluster config installed with the bucket (N1).
    #[serde(default)]
    cluster_config: Option<Value>,
}

fn default_vbuckets() -> u16 {
    1024
}

fn default_quota() -> u64 {
    256
}

/// Parses a JSON body whatever its Content-Type (curl -d sends form encoding).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid {what}: {e}")))
}

async fn create_bucket(State(state): State<Shared>, body: axum::body::Bytes) -> Response {
    let req: CreateBucket = match json_body(&body, "bucket definition") {
        Ok(b) => b,
        Err(r) => return r,
    };
    if req.vbuckets == 0 {
        return error(StatusCode::BAD_REQUEST, "vbuckets must be at least 1");
    }
    if req.ram_quota_mb == 0 {
        return error(StatusCode::BAD_REQUEST, "ram_quota_mb must be at least 1");
    }
    let initial = match req.initial_state.as_deref().map(VbState::parse) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "initial_state must be active, replica, pending or dead",
            )
        }
    };
    let config = match req.cluster_config {
        None => None,
        Some(v) => match ConfigVersion::of(&v) {
            Some(version) => Some((version, bytes::Bytes::from(v.to_string()))),
            None => return error(StatusCode::BAD_REQUEST, BAD_CONFIG),
        },
    };
    let meta = BucketMeta {
        name: req.name,
        vbuckets: req.vbuckets,
        ram_quota_mb: req.ram_quota_mb,
        flush_enabled: req.flush_enabled,
        uuid: req.uuid,
    };
    let st = state.clone();
    let res =
        tokio::task::spawn_blocking(move || st.create_bucket_with_config(meta, initial, config))
            .await;
    match res {
        Ok(Ok(entry)) => (StatusCode::CREATED, Json(bucket_json(&entry, false))).into_response(),
        Ok(Err(NodeError::BucketExists(n))) => {
            error(StatusCode::CONFLICT, format!("bucket {n:?} already exists"))
        }
        Ok(Err(NodeError::Engine(e))) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn bucket_json(b: &BucketEntry, with_vbuckets: bool) -> Value {
    let s = b.bucket.stats();
    let mut v = json!({
        "name": b.meta.name,
        "num_vbuckets": b.meta.vbuckets,
        "ram_quota_mb": b.meta.ram_quota_mb,
        "flush_enabled": b.meta.flush_enabled,
        "uuid": b.meta.uuid,
        "items": s.items,
        "mem_used": s.mem_used,
    });
    if with_vbuckets {
        let vbs: Vec<Value> = (0..b.meta.vbuckets)
            .filter_map(|vb| {
                let s = b.bucket.vb_stats(Vbid(vb)).ok()?;
                Some(json!({
                    "vb": vb,
                    "state": s.state.as_str(),
                    "high_seqno": s.high_seqno.0,
                    "persisted_seqno": s.persisted_seqno.0,
                    "purge_seqno": s.purge_seqno.0,
                    "uuid": s.vb_uuid.0,
                    "items": s.items,
                }))
            })
            .collect();
        v["vbuckets"] = Value::Array(vbs);
    }
    v
}

async fn list_buckets(State(state): State<Shared>) -> Response {
    let list: Vec<Value> = state
        .buckets()
        .iter()
        .map(|b| bucket_json(b, false))
        .collect();
    Json(Value::Array(list)).into_response()
}

async fn get_bucket(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match state.bucket(&name) {
        Some(b) => Json(bucket_json(&b, true)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no bucket {name:?}")),
    }
}

async fn delete_bucket(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    // Rewrites buckets.json and unlinks the database: file work, off the runtime.
    let (st, n) = (state.clone(), name.clone());
    match tokio::task::spawn_blocking(move || st.delete_bucket(&n)).await {
        Ok(Ok(())) => Json(json!({"deleted": name})).into_response(),
        Ok(Err(NodeError::NoSuchBucket(_))) => {
            error(StatusCode::NOT_FOUND, format!("no bucket {name:?}"))
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetState {
    state: String,
}

async fn set_vbucket(
    State(state): State<Shared>,
    Path((name, vb)): Path<(String, u16)>,
    body: axum::body::Bytes,
) -> Response {
    let req: SetState = match json_body(
        &body,
        "vbucket state (want {\"state\": \"active|replica|pending|dead\"})",
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(vb_state) = VbState::parse(&req.state) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown state {:?}", req.state),
        );
    };
    let Some(b) = state.bucket(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no bucket {name:?}"));
    };
    if vb >= b.meta.vbuckets {
        return error(
            StatusCode::NOT_FOUND,
            format!("bucket {name:?} has no vbucket {vb}"),
        );
    }
    let st = state.clone();
    let res =
        tokio::task::spawn_blocking(move || st.set_vbucket_state(&b, Vbid(vb), vb_state)).await;
    match res {
        Ok(Ok(())) => Json(json!({"vb": vb, "state": vb_state.as_str()})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutUser {
    password: String,
    role: String,
}

/// N5: adds or replaces an admin user; only derived credentials are stored.
async fn put_user(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: PutUser = match json_body(&body, "user") {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(why) = valid_user(&name, &req) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if state.is_own_user(&name) {
        return error(
            StatusCode::CONFLICT,
            format!("{name:?} is one of the node's own users"),
        );
    }
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.put_admin_user(&name, &req.password)).await {
        Ok(Ok(())) => Json(json!({"ok": true})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn valid_user(name: &str, req: &PutUser) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("a user name has 1 to 128 characters");
    }
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err("a user name has no ':' and no control characters");
    }
    if req.password.is_empty() || req.password.len() > 512 {
        return Err("a password has 1 to 512 characters");
    }
    if req.role != "admin" {
        return Err("role must be \"admin\"");
    }
    Ok(())
}

/// N5: removes a user added through this API.
async fn delete_user(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    if state.is_own_user(&name) {
        return error(
            StatusCode::CONFLICT,
            format!("{name:?} is one of the node's own users"),
        );
    }
    let st = state.clone();
    let who = name.clone();
    match tokio::task::spawn_blocking(move || st.delete_user(&who)).await {
        Ok(Ok(true)) => Json(json!({"ok": true})).into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, format!("no user {name:?}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

const BAD_CONFIG: &str =
    "cluster config must be a JSON object with a numeric rev (and optional numeric revEpoch)";

/// N2: a bucket's config only moves forward.
async fn set_cluster_config(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(b) = state.bucket(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no bucket {name:?}"));
    };
    offer_config(&b.cluster_config, &body)
}

/// N3: the cluster-level config (connections without a selected bucket).
async fn set_global_config(State(state): State<Shared>, body: axum::body::Bytes) -> Response {
    offer_config(&state.global_config, &body)
}

/// Newer → 200 `{"ok":true}`; the same version → 200, nothing changes; older → 409
/// with the version kept.
fn offer_config(slot: &ConfigSlot, body: &[u8]) -> Response {
    let Some(version) = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(ConfigVersion::of)
    else {
        return error(StatusCode::BAD_REQUEST, BAD_CONFIG);
    };
    match slot.offer(version, bytes::Bytes::copy_from_slice(body)) {
        Offer::Installed | Offer::Same => Json(json!({"ok": true})).into_response(),
        Offer::Stale(cur) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "stale config", "current": [cur.epoch, cur.rev]})),
        )
            .into_response(),
    }
}

fn faults_guard(state: &NodeState, headers: &HeaderMap) -> Result<(), Response> {
    if !state.faults.enabled() {
        return Err(error(
            StatusCode::NOT_FOUND,
            "fault injection is not enabled on this node",
        ));
    }
    check_auth(state, headers)
}

async fn list_faults(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = faults_guard(&state, &headers) {
        return r;
    }
    Json(json!(state.faults.list())).into_response()
}

async fn add_fault(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = faults_guard(&state, &headers) {
        return r;
    }
    match json_body::<Fault>(&body, "fault") {
        Ok(f) => {
            warn!(fault = ?f, "fault injected");
            state.faults.add(f.clone());
            (StatusCode::CREATED, Json(json!(f))).into_response()
        }
        Err(r) => r,
    }
}

async fn clear_faults(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = faults_guard(&state, &headers) {
        return r;
    }
    state.faults.clear();
    Json(json!({"cleared": true})).into_response()
}
