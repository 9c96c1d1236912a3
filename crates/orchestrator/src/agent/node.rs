//! The agent's link to its own node: loopback admin HTTP (reqwest) and MCBP
//! (kv-client), as the node's startup admin user. Every call is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kv_client::{Client, ClientConfig, Credentials};
use mcbp::kv::GetClusterConfig;
use mcbp::{BareRequest, Opcode, VbState, Vbid};
use serde_json::{json, Value};

use super::api::{Creds, VbReport};
use super::error::AgentError;

/// Bound on one call to the own node.
pub(crate) const NODE_CALL_BOUND: Duration = Duration::from_secs(10);

/// One bucket as the node's admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct NodeBucket {
    pub(crate) name: String,
    pub(crate) uuid: Option<String>,
    pub(crate) vbuckets: Vec<VbReport>,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeLink {
    http: reqwest::Client,
    admin: SocketAddr,
    kv: SocketAddr,
    creds: Creds,
}

impl NodeLink {
    pub(crate) fn new(admin: SocketAddr, kv: SocketAddr, creds: Creds) -> NodeLink {
        NodeLink {
            http: reqwest::Client::new(),
            admin,
            kv,
            creds,
        }
    }

    /// One admin call; returns the status and the JSON body (`null` if none).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), AgentError> {
        let what = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.admin))
            .basic_auth(&self.creds.user, Some(&self.creds.password))
            .timeout(NODE_CALL_BOUND);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| AgentError::node(&what, e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| AgentError::node(&what, e))?;
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    fn refused(what: &str, status: u16, body: &Value) -> AgentError {
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| body.to_string(), str::to_string);
        AgentError::Node {
            call: what.to_string(),
            status: Some(status),
            message,
        }
    }

    /// `(name, uuid)` of every bucket.
    pub(crate) async fn list_buckets(&self) -> Result<Vec<(String, Option<String>)>, AgentError> {
        let (status, v) = self.call(reqwest::Method::GET, "/buckets", None).await?;
        if status != 200 {
            return Err(Self::refused("GET /buckets", status, &v));
        }
        let list = v
            .as_array()
            .ok_or_else(|| AgentError::node("GET /buckets", "answer is not a list"))?;
        Ok(list
            .iter()
            .filter_map(|b| {
                let name = b.get("name")?.as_str()?.to_string();
                let uuid = b.get("uuid").and_then(Value::as_str).map(str::to_string);
                Some((name, uuid))
            })
            .collect())
    }

    /// The bucket with its vbuckets, `None` if the node has no such bucket.
    pub(crate) async fn bucket(&self, name: &str) -> Result<Option<NodeBucket>, AgentError> {
        let path = format!("/buckets/{name}");
        let (status, v) = self.call(reqwest::Method::GET, &path, None).await?;
        match status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(Self::refused(&format!("GET {path}"), status, &v)),
        }
        let vbs = v
            .get("vbuckets")
            .and_then(Value::as_array)
            .ok_or_else(|| AgentError::node(format!("GET {path}"), "no vbuckets in the answer"))?;
        let u = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
        let vbuckets = vbs
            .iter()
            .filter_map(|o| {
                Some(VbReport {
                    vb: u16::try_from(o.get("vb")?.as_u64()?).ok()?,
                    state: o.get("state")?.as_str()?.to_string(),
                    high_seqno: u(o, "high_seqno"),
                    persisted_seqno: u(o, "persisted_seqno"),
                    items: u(o, "items"),
                })
            })
            .collect();
        Ok(Some(NodeBucket {
            name: name.to_string(),
            uuid: v.get("uuid").and_then(Value::as_str).map(str::to_string),
            vbuckets,
        }))
    }

    /// `POST /buckets` with every vbucket dead. `Ok(false)`: it already existed.
    pub(crate) async fn create_bucket(
        &self,
        name: &str,
        vbuckets: u16,
        ram_quota_mb: u64,
        uuid: &str,
        cluster_config: Option<&Value>,
    ) -> Result<bool, AgentError> {
        let mut body = json!({
            "name": name,
            "vbuckets": vbuckets,
            "ram_quota_mb": ram_quota_mb,
            "uuid": uuid,
            "initial_state": "dead",
        });
        if let Some(c) = cluster_config {
            body["cluster_config"] = c.clone();
        }
        let (status, v) = self
            .call(reqwest::Method::POST, "/buckets", Some(body))
            .await?;
        match status {
            200 | 201 => Ok(true),
            409 => Ok(false),
            _ => Err(Self::refused("POST /buckets", status, &v)),
        }
    }

    /// `DELETE /buckets/{name}`; a missing bucket is fine.
    pub(crate) async fn delete_bucket(&self, name: &str) -> Result<(), AgentError> {
        let path = format!("/buckets/{name}");
        let (status, v) = self.call(reqwest::Method::DELETE, &path, None).await?;
        match status {
            200 | 404 => Ok(()),
            _ => Err(Self::refused(&format!("DELETE {path}"), status, &v)),
        }
    }

    /// N5 `PUT /users/{name}` as an admin.
    pub(crate) async fn put_user(&self, c: &Creds) -> Result<(), AgentError> {
        let path = format!("/users/{}", c.user);
        let body = json!({"password": c.password, "role": "admin"});
        let (status, v) = self.call(reqwest::Method::PUT, &path, Some(body)).await?;
        match status {
            200 => Ok(()),
            _ => Err(Self::refused(&format!("PUT {path}"), status, &v)),
        }
    }

    /// N5 `DELETE /users/{name}`; a missing user is fine.
    pub(crate) async fn delete_user(&self, user: &str) -> Result<(), AgentError> {
        let path = format!("/users/{user}");
        let (status, v) = self.call(reqwest::Method::DELETE, &path, None).await?;
        match status {
            200 | 404 => Ok(()),
            _ => Err(Self::refused(&format!("DELETE {path}"), status, &v)),
        }
    }

    /// An MCBP connection as the node's admin user with `bucket` selected.
    pub(crate) async fn mcbp(&self, bucket: &str) -> Result<Mcbp, AgentError> {
        let what = format!("MCBP {} bucket {bucket}", self.kv);
        let cfg = ClientConfig {
            timeout: NODE_CALL_BOUND,
            ..ClientConfig::default()
        };
        let mut c = Client::connect(&self.kv.to_string(), cfg)
            .await
            .map_err(|e| AgentError::node(&what, e))?;
        c.auth_plain(&Credentials {
            user: self.creds.user.clone(),
            password: self.creds.password.clone(),
        })
        .await
        .map_err(|e| AgentError::node(&what, e))?;
        c.select_bucket(bucket)
            .await
            .map_err(|e| AgentError::node(&what, e))?;
        Ok(Mcbp {
            c,
            bucket: bucket.to_string(),
        })
    }
}

/// One MCBP connection to the own node with a bucket selected.
#[derive(Debug)]
pub(crate) struct Mcbp {
    c: Client,
    bucket: String,
}

impl Mcbp {
    pub(crate) async fn set_state(&mut self, vb: u16, state: VbState) -> Result<(), AgentError> {
        self.c.set_vbucket(Vbid(vb), state).await.map_err(|e| {
            AgentError::node(
                format!(
                    "SET_VBUCKET bucket {} vb:{vb} {}",
                    self.bucket,
                    state.as_str()
                ),
                e,
            )
        })
    }

    /// DEL_VBUCKET: the vbucket's data is dropped (it must be dead).
    pub(crate) async fn delete_vbucket(&mut self, vb: u16) -> Result<(), AgentError> {
        let opaque = self.c.next_opaque();
        // Built literally: BareRequest::new only admits the opcodes mcbp lists as
        // body-less, and DEL_VBUCKET (no extras, key or value) is one the list lacks.
        let req = BareRequest {
            opcode: Opcode::DelVbucket,
            vbucket: Vbid(vb),
            opaque,
        };
        self.c
            .call_ok(&req)
            .await
            .map(drop)
            .map_err(|e| AgentError::node(format!("DEL_VBUCKET bucket {} vb:{vb}", self.bucket), e))
    }

    /// GET_CLUSTER_CONFIG: `(revEpoch, rev)` of the config the node serves for the
    /// bucket (revEpoch −1 when absent: the node's own one-node config).
    pub(crate) async fn config_version(&mut self) -> Result<Option<(i64, u64)>, AgentError> {
        let opaque = self.c.next_opaque();
        let f = self
            .c
            .call_ok(&GetClusterConfig {
                opaque,
                known: None,
            })
            .await
            .map_err(|e| {
                AgentError::node(format!("GET_CLUSTER_CONFIG bucket {}", self.bucket), e)
            })?;
        let Ok(v) = serde_json::from_slice::<Value>(f.value()) else {
            return Ok(None);
        };
        let Some(rev) = v.get("rev").and_then(Value::as_u64) else {
            return Ok(None);
        };
        let epoch = v.get("revEpoch").and_then(Value::as_i64).unwrap_or(-1);
        Ok(Some((epoch, rev)))
    }

    /// SEQNO_PERSISTENCE once: `true` when `seqno` is persisted, `false` on ETMPFAIL.
    pub(crate) async fn seqno_persisted(
        &mut self,
        vb: u16,
        seqno: u64,
    ) -> Result<bool, AgentError> {
        self.c
            .seqno_persistence(Vbid(vb), mcbp::Seqno(seqno))
            .await
            .map_err(|e| {
                AgentError::node(
                    format!("SEQNO_PERSISTENCE bucket {} vb:{vb} {seqno}", self.bucket),
                    e,
                )
            })
    }
}

/// Counts of states in a vbucket list.
pub(crate) fn state_counts(vbs: &[VbReport]) -> BTreeMap<&str, u32> {
    let mut out = BTreeMap::new();
    for v in vbs {
        *out.entry(v.state.as_str()).or_insert(0) += 1;
    }
    out
}

/// A vbucket state from the agent API's word.
pub(crate) fn parse_state(s: &str) -> Option<VbState> {
    VbState::parse(s)
}
