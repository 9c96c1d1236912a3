//! The agent's errors and their `{"ok":false,"error":{kind,message,…}}` answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use replication::ReplError;
use serde_json::{json, Value};

/// Everything an agent route or [`super::Agent::start`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The route needs a joined node.
    #[error("this node is not a cluster member")]
    NotMember,
    /// `X-Conduit-Cluster` names another cluster.
    #[error("request for cluster {got}, this node belongs to cluster {ours}")]
    WrongCluster {
        /// The header's uuid.
        got: String,
        /// Ours.
        ours: String,
    },
    /// `X-Conduit-Term` below the highest seen.
    #[error("term {got} is below the highest seen, {seen}")]
    StaleTerm {
        /// The header's term.
        got: u64,
        /// The highest term seen.
        seen: u64,
    },
    /// A join while joined to another cluster (or under another name).
    #[error("already a member of cluster {cluster} as {name}")]
    AlreadyMember {
        /// The cluster.
        cluster: String,
        /// Our name in it.
        name: String,
    },
    /// A malformed request.
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// The bucket is not on this node.
    #[error("bucket {bucket}: not on this node")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
    },
    /// The node has the bucket under another uuid (a stale copy the cluster does
    /// not own): left alone.
    #[error("bucket {bucket}: the node has it with uuid {have}, not {want}")]
    BucketConflict {
        /// The bucket.
        bucket: String,
        /// The uuid on the node.
        have: String,
        /// The uuid asked for.
        want: String,
    },
    /// An operation overran its `timeout_ms`.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What (`apply demote of bucket b`, …).
        what: String,
        /// The bound.
        after_ms: u64,
    },
    /// A call to this agent's own node (loopback admin HTTP or MCBP) failed.
    #[error("own node: {call}: {message}")]
    Node {
        /// The call (`PUT /users/@conduit`, `SET_VBUCKET b vb:3`, …).
        call: String,
        /// The HTTP status, when the node answered.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// A replication operation failed: its JSON is the replication layer's.
    #[error("bucket {bucket}: {source}")]
    Repl {
        /// The bucket.
        bucket: String,
        /// The vbucket the route was about, if one.
        vb: Option<u16>,
        /// The replication error.
        #[source]
        source: ReplError,
    },
    /// `wait-persisted`: the replicator serving the vbucket from `source` ended.
    #[error("bucket {bucket} vb:{vb}: replication from {source_node} ended while waiting for persistence")]
    ReplicationEnded {
        /// The bucket.
        bucket: String,
        /// The vbucket.
        vb: u16,
        /// The producer node.
        source_node: String,
    },
    /// Reading or writing the agent's state file failed.
    #[error("agent state {path}: {message}")]
    State {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
}

impl AgentError {
    /// The `kind` string of the error object.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::NotMember => "not_member",
            AgentError::WrongCluster { .. } => "wrong_cluster",
            AgentError::StaleTerm { .. } => "stale_term",
            AgentError::AlreadyMember { .. } => "already_member",
            AgentError::BadRequest { .. } => "bad_request",
            AgentError::NoSuchBucket { .. } => "no_such_bucket",
            AgentError::BucketConflict { .. } => "bucket_uuid_mismatch",
            AgentError::Timeout { .. } => "timeout",
            AgentError::Node { .. } => "node_call_failed",
            AgentError::Repl { .. } => "replication",
            AgentError::ReplicationEnded { .. } => "replication_ended",
            AgentError::State { .. } => "agent_state",
        }
    }

    /// The HTTP status of the answer.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AgentError::NotMember => StatusCode::CONFLICT,
            AgentError::WrongCluster { .. }
            | AgentError::StaleTerm { .. }
            | AgentError::AlreadyMember { .. } => StatusCode::CONFLICT,
            AgentError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AgentError::NoSuchBucket { .. } => StatusCode::NOT_FOUND,
            AgentError::BucketConflict { .. } => StatusCode::CONFLICT,
            AgentError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AgentError::Node { .. } | AgentError::Repl { .. } => StatusCode::BAD_GATEWAY,
            AgentError::ReplicationEnded { .. } => StatusCode::CONFLICT,
            AgentError::State { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error object: `kind`, `message` and the variant's fields. A replication
    /// error is the replication layer's object unchanged.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut v = json!({"kind": self.kind(), "message": self.to_string()});
        match self {
            AgentError::Repl { source, .. } => return replication::json::to_json(source),
            AgentError::WrongCluster { got, ours } => {
                v["got"] = json!(got);
                v["cluster"] = json!(ours);
            }
            AgentError::StaleTerm { got, seen } => {
                v["got"] = json!(got);
                v["term"] = json!(seen);
            }
            AgentError::AlreadyMember { cluster, name } => {
                v["cluster"] = json!(cluster);
                v["name"] = json!(name);
            }
            AgentError::NoSuchBucket { bucket } => v["bucket"] = json!(bucket),
            AgentError::BucketConflict { bucket, have, want } => {
                v["bucket"] = json!(bucket);
                v["have"] = json!(have);
                v["want"] = json!(want);
            }
            AgentError::Timeout { after_ms, .. } => v["after_ms"] = json!(after_ms),
            AgentError::Node { call, status, .. } => {
                v["call"] = json!(call);
                if let Some(s) = status {
                    v["status"] = json!(s);
                }
            }
            AgentError::ReplicationEnded {
                bucket,
                vb,
                source_node,
            } => {
                v["bucket"] = json!(bucket);
                v["vbucket"] = json!(vb);
                v["source"] = json!(source_node);
            }
            AgentError::NotMember | AgentError::BadRequest { .. } | AgentError::State { .. } => {}
        }
        v
    }

    pub(crate) fn node(call: impl Into<String>, message: impl std::fmt::Display) -> AgentError {
        AgentError::Node {
            call: call.into(),
            status: None,
            message: message.to_string(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> AgentError {
        AgentError::BadRequest {
            message: message.into(),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(json!({"ok": false, "error": self.to_json()})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §2.6: replication failures are the replication layer's JSON unchanged.
    #[test]
    fn a_replication_error_is_the_replication_layers_object_unchanged() {
        let e = AgentError::Repl {
            bucket: "b".into(),
            vb: Some(3),
            source: ReplError::UnknownNode {
                node: "n_9@h".into(),
            },
        };
        let v = e.to_json();
        assert_eq!(v["kind"], "unknown_node");
        assert_eq!(v["node"], "n_9@h");
        assert_eq!(
            v,
            replication::json::to_json(&ReplError::UnknownNode {
                node: "n_9@h".into()
            })
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn every_agent_error_object_has_kind_and_message() {
        let errors = [
            AgentError::NotMember,
            AgentError::StaleTerm { got: 1, seen: 2 },
            AgentError::Timeout {
                what: "apply".into(),
                after_ms: 5,
            },
            AgentError::bad("nope"),
        ];
        for e in errors {
            let v = e.to_json();
            assert_eq!(v["kind"], e.kind());
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
        let v = AgentError::StaleTerm { got: 1, seen: 2 }.to_json();
        assert_eq!((v["got"].as_u64(), v["term"].as_u64()), (Some(1), Some(2)));
        assert_eq!(
            AgentError::Timeout {
                what: "x".into(),
                after_ms: 1
            }
            .status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
