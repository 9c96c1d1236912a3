//! [`AgentClient`]: the orchestrator's side of the agent API (cluster.md §2.6).
//!
//! Every call sends basic auth and, when set, `X-Conduit-Cluster` /
//! `X-Conduit-Term`, and is bounded: 10 s, or `timeout_ms + 5 s` for calls that
//! carry `timeout_ms`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::api::{
    AddressBook, AgentInfo, ApplyRequest, BuildRequest, Creds, DataMoveAnswer, Health, JoinRequest,
    LeaveRequest, PutBucket, StopNodesRequest, TakeoverRequest, UnreplicateRequest, VbucketsReport,
    WaitDataMove, WaitPersisted,
};

/// Bound of a call without `timeout_ms`.
pub const DEFAULT_CALL_BOUND: Duration = Duration::from_secs(10);
/// Added to `timeout_ms` for calls that carry one.
pub const CALL_SLACK: Duration = Duration::from_secs(5);

/// Header naming the caller's cluster uuid.
pub const CLUSTER_HEADER: &str = "x-conduit-cluster";
/// Header carrying the caller's orchestrator term.
pub const TERM_HEADER: &str = "x-conduit-term";

/// Why an agent call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// Connect refused, DNS, reset.
    #[error("agent on {node} unreachable: {message}")]
    Unreachable {
        /// The node.
        node: String,
        /// What happened.
        message: String,
    },
    /// The call's bound expired.
    #[error("agent on {node}: no answer within {after_ms} ms")]
    Timeout {
        /// The node.
        node: String,
        /// The bound.
        after_ms: u64,
    },
    /// 401/403.
    #[error("agent on {node}: credentials refused")]
    Unauthorized {
        /// The node.
        node: String,
    },
    /// The agent (or node) answered with an error object.
    #[error("agent on {node} refused ({status}): {error}")]
    Refused {
        /// The node.
        node: String,
        /// HTTP status.
        status: u16,
        /// The error object (`kind`, `message`, …).
        error: Value,
    },
    /// An answer that is not what the API promises.
    #[error("agent on {node}: bad answer: {message}")]
    BadAnswer {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
}

impl AgentCallError {
    /// `unreachable|timeout|unauthorized|refused|bad_answer`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            AgentCallError::Unreachable { .. } => "unreachable",
            AgentCallError::Timeout { .. } => "timeout",
            AgentCallError::Unauthorized { .. } => "unauthorized",
            AgentCallError::Refused { .. } => "refused",
            AgentCallError::BadAnswer { .. } => "bad_answer",
        }
    }

    /// The node called.
    #[must_use]
    pub fn node(&self) -> &str {
        match self {
            AgentCallError::Unreachable { node, .. }
            | AgentCallError::Timeout { node, .. }
            | AgentCallError::Unauthorized { node }
            | AgentCallError::Refused { node, .. }
            | AgentCallError::BadAnswer { node, .. } => node,
        }
    }

    /// The refusal's `error.kind`, when the agent refused.
    #[must_use]
    pub fn refused_kind(&self) -> Option<&str> {
        match self {
            AgentCallError::Refused { error, .. } => error.get("kind").and_then(Value::as_str),
            _ => None,
        }
    }

    /// `{"kind", "node", "message", …}`; a refusal carries the agent's object as
    /// `cause` and its status.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut v = json!({"kind": self.kind(), "node": self.node(), "message": self.to_string()});
        match self {
            AgentCallError::Timeout { after_ms, .. } => v["after_ms"] = json!(after_ms),
            AgentCallError::Refused { status, error, .. } => {
                v["status"] = json!(status);
                v["cause"] = error.clone();
            }
            _ => {}
        }
        v
    }
}

/// A client of one node's agent. Cheap to clone (one `reqwest::Client` inside).
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    addr: String,
    node: String,
    creds: Creds,
    cluster: Option<String>,
    term: u64,
}

impl AgentClient {
    /// `addr` = `host:admin_port`; `node` names the node in errors. `term` 0 sends
    /// no term header.
    pub fn new(
        addr: impl Into<String>,
        node: impl Into<String>,
        creds: Creds,
        cluster: Option<String>,
        term: u64,
    ) -> AgentClient {
        AgentClient {
            http: reqwest::Client::new(),
            addr: addr.into(),
            node: node.into(),
            creds,
            cluster,
            term,
        }
    }

    /// The same client with other cluster/term headers (shares the connection pool).
    #[must_use]
    pub fn with_cluster(&self, cluster: Option<String>, term: u64) -> AgentClient {
        AgentClient {
            cluster,
            term,
            ..self.clone()
        }
    }

    /// `GET /agent/v1/info`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn info(&self) -> Result<AgentInfo, AgentCallError> {
        self.agent(reqwest::Method::GET, "/agent/v1/info", None::<&()>, None)
            .await
    }

    /// `POST /agent/v1/join`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn join(&self, req: &JoinRequest) -> Result<(), AgentCallError> {
        self.agent_unit(reqwest::Method::POST, "/agent/v1/join", Some(req), None)
            .await
    }

    /// `PUT /agent/v1/cluster`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn set_cluster(&self, req: &AddressBook) -> Result<(), AgentCallError> {
        self.agent_unit(reqwest::Method::PUT, "/agent/v1/cluster", Some(req), None)
            .await
    }

    /// `POST /agent/v1/leave` (`{"wipe":true}`).
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn leave(&self) -> Result<(), AgentCallError> {
        let req = LeaveRequest { wipe: true };
        self.agent_unit(reqwest::Method::POST, "/agent/v1/leave", Some(&req), None)
            .await
    }

    /// `POST /agent/v1/fence`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn fence(&self) -> Result<(), AgentCallError> {
        self.agent_unit(
            reqwest::Method::POST,
            "/agent/v1/fence",
            Some(&json!({})),
            None,
        )
        .await
    }

    /// `PUT /agent/v1/buckets/{b}`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn put_bucket(&self, bucket: &str, req: &PutBucket) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}");
        self.agent_unit(reqwest::Method::PUT, &path, Some(req), None)
            .await
    }

    /// `DELETE /agent/v1/buckets/{b}`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}");
        self.agent_unit(reqwest::Method::DELETE, &path, None::<&()>, None)
            .await
    }

    /// `GET /agent/v1/health`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn health(&self) -> Result<Health, AgentCallError> {
        self.agent(reqwest::Method::GET, "/agent/v1/health", None::<&()>, None)
            .await
    }

    /// `GET /agent/v1/buckets/{b}/vbuckets`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn vbuckets(&self, bucket: &str) -> Result<VbucketsReport, AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets");
        self.agent(reqwest::Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `POST /agent/v1/buckets/{b}/apply`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn apply(&self, bucket: &str, req: &ApplyRequest) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/apply");
        self.agent_unit(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/build`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn build(
        &self,
        bucket: &str,
        vb: u16,
        req: &BuildRequest,
    ) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/build");
        self.agent_unit(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/wait-data-move`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn wait_data_move(
        &self,
        bucket: &str,
        vb: u16,
        req: &WaitDataMove,
    ) -> Result<DataMoveAnswer, AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/wait-data-move");
        self.agent(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/wait-persisted`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn wait_persisted(
        &self,
        bucket: &str,
        vb: u16,
        req: &WaitPersisted,
    ) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/wait-persisted");
        self.agent_unit(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/takeover`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn takeover(
        &self,
        bucket: &str,
        vb: u16,
        req: &TakeoverRequest,
    ) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/takeover");
        self.agent_unit(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/unreplicate`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn stop_nodes(
        &self,
        bucket: &str,
        req: &StopNodesRequest,
    ) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/stop-nodes");
        self.agent_unit(reqwest::Method::POST, &path, Some(req), None)
            .await
    }

    /// `POST …/vbuckets/{vb}/unreplicate`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn unreplicate(
        &self,
        bucket: &str,
        vb: u16,
        req: &UnreplicateRequest,
    ) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/unreplicate");
        self.agent_unit(
            reqwest::Method::POST,
            &path,
            Some(req),
            Some(req.timeout_ms),
        )
        .await
    }

    /// `…/vbuckets/{vb}/delete`.
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn delete_vbucket(&self, bucket: &str, vb: u16) -> Result<(), AgentCallError> {
        let path = format!("/agent/v1/buckets/{bucket}/vbuckets/{vb}/delete");
        self.agent_unit(reqwest::Method::POST, &path, Some(&json!({})), None)
            .await
    }

    /// Pushes a bucket's client config to the node (kv-node
    /// `PUT /buckets/{b}/cluster-config`): `Ok(true)` accepted or equal, `Ok(false)`
    /// the node has a newer one (409).
    ///
    /// # Errors
    /// [`AgentCallError`]; a missing bucket is `Refused` with status 404.
    pub async fn push_bucket_config(
        &self,
        bucket: &str,
        config: &Value,
    ) -> Result<bool, AgentCallError> {
        self.push(&format!("/buckets/{bucket}/cluster-config"), config)
            .await
    }

    /// Pushes the global config (kv-node `PUT /cluster-config`); as
    /// [`Self::push_bucket_config`].
    ///
    /// # Errors
    /// [`AgentCallError`].
    pub async fn push_global_config(&self, config: &Value) -> Result<bool, AgentCallError> {
        self.push("/cluster-config", config).await
    }

    async fn push(&self, path: &str, config: &Value) -> Result<bool, AgentCallError> {
        let (status, body) = self
            .send(reqwest::Method::PUT, path, Some(config), None)
            .await?;
        match status {
            200 => Ok(true),
            409 => Ok(false),
            _ => Err(self.refusal(status, body)),
        }
    }

    async fn agent_unit<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout_ms: Option<u64>,
    ) -> Result<(), AgentCallError> {
        let _: Value = self.agent(method, path, body, timeout_ms).await?;
        Ok(())
    }

    /// An agent route: `{"ok":true,…}` is parsed as `T`; `{"ok":false,"error":…}` is
    /// `Refused`.
    async fn agent<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout_ms: Option<u64>,
    ) -> Result<T, AgentCallError> {
        let (status, v) = self.send(method, path, body, timeout_ms).await?;
        if status == 200 && v.get("ok").and_then(Value::as_bool) == Some(true) {
            return serde_json::from_value(v).map_err(|e| AgentCallError::BadAnswer {
                node: self.node.clone(),
                message: format!("{path}: {e}"),
            });
        }
        Err(self.refusal(status, v))
    }

    fn refusal(&self, status: u16, v: Value) -> AgentCallError {
        let error = match v {
            Value::Object(mut o) => match o.remove("error") {
                // The agent's error object.
                Some(e @ Value::Object(_)) => e,
                // The node's own `{"error": "text"}`.
                Some(Value::String(m)) => {
                    let mut e = json!({"kind": "node_refused", "message": m});
                    if let Some(cur) = o.remove("current") {
                        e["current"] = cur;
                    }
                    e
                }
                _ => {
                    return AgentCallError::BadAnswer {
                        node: self.node.clone(),
                        message: format!("status {status} without an error object"),
                    }
                }
            },
            other => {
                return AgentCallError::BadAnswer {
                    node: self.node.clone(),
                    message: format!("status {status}: {other}"),
                }
            }
        };
        AgentCallError::Refused {
            node: self.node.clone(),
            status,
            error,
        }
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout_ms: Option<u64>,
    ) -> Result<(u16, Value), AgentCallError> {
        let bound = timeout_ms.map_or(DEFAULT_CALL_BOUND, |t| {
            Duration::from_millis(t).saturating_add(CALL_SLACK)
        });
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .basic_auth(&self.creds.user, Some(&self.creds.password));
        if let Some(c) = &self.cluster {
            req = req.header(CLUSTER_HEADER, c);
        }
        if self.term > 0 {
            req = req.header(TERM_HEADER, self.term.to_string());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let after_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        let timeout = || AgentCallError::Timeout {
            node: self.node.clone(),
            after_ms,
        };
        let call = async {
            let resp = req.send().await.map_err(|e| self.transport(&e))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| self.transport(&e))?;
            Ok::<_, AgentCallError>((status, text))
        };
        let (status, text) = tokio::time::timeout(bound, call)
            .await
            .map_err(|_| timeout())??;
        if status == 401 || status == 403 {
            return Err(AgentCallError::Unauthorized {
                node: self.node.clone(),
            });
        }
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| AgentCallError::BadAnswer {
                node: self.node.clone(),
                message: format!("{path}: status {status}, body is not JSON ({e})"),
            })?
        };
        Ok((status, v))
    }

    fn transport(&self, e: &reqwest::Error) -> AgentCallError {
        if e.is_timeout() {
            return AgentCallError::Timeout {
                node: self.node.clone(),
                after_ms: 0,
            };
        }
        // reqwest's Display hides the cause (refused, reset): show the chain.
        let mut message = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        AgentCallError::Unreachable {
            node: self.node.clone(),
            message,
        }
    }
}
