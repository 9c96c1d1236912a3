//! The REST error answer (cluster.md §3.1): one type every route returns, rendered as
//! `{"errors":{"<param or _>":"<text>"},"kind":"…","message":"…", …extra}` with its status.
//!
//! `errors` keeps the shape ns_server answers (harnesses read it); `kind` is the typed
//! name every Conduit error carries (§10.1 I4); `extra` holds the well-known keys
//! ns_server adds (`{"mismatch":1}`, `{"empty_known_nodes":1}`) and fields a kind
//! names (`"running":"rebalance"`), so clients checking either form work.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// The parameter name used when an error concerns no single parameter.
pub const NO_PARAM: &str = "_";

/// A REST error (§3.1): JSON `{"errors":{"<param or _>":"<text>"},"kind":"…","message":"…",
/// …extra}` with a status.
#[derive(Debug, Clone, PartialEq)]
pub struct RestError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The typed error name (`invalid_parameter`, `busy`, …).
    pub kind: String,
    /// Human text; also the value under `errors.<param>`.
    pub message: String,
    /// The offending parameter, `_` when none.
    pub param: String,
    /// Extra top-level fields (never `errors`, `kind` or `message`: those win).
    pub extra: Map<String, Value>,
}

impl RestError {
    /// Any error. An empty `param` means `_`.
    pub fn new(status: StatusCode, kind: &str, param: &str, message: impl Into<String>) -> Self {
        RestError {
            status,
            kind: kind.to_string(),
            message: message.into(),
            param: if param.is_empty() {
                NO_PARAM.to_string()
            } else {
                param.to_string()
            },
            extra: Map::new(),
        }
    }

    /// 400, kind `invalid_parameter`: a value is malformed, out of range or not allowed.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", param, message)
    }

    /// 400 `{"errors":{"<p>":"Unsupported key"}}`, kind `unsupported_key` (§3.1).
    pub fn unsupported_key(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_key",
            param,
            "Unsupported key",
        )
    }

    /// 400, kind `missing_parameter`.
    pub fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            param,
            format!("{param} is required"),
        )
    }

    /// 503 `{"errors":{"_":"Cannot <op> during rebalance"},"kind":"busy","running":"rebalance"}`
    /// (§2.4).
    pub fn busy(op: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            NO_PARAM,
            format!("Cannot {op} during rebalance"),
        )
        .with("running", Value::from("rebalance"))
    }

    /// 404, kind `not_found`; `what` is the whole message (`Requested resource not found.`,
    /// `bucket default not found`).
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", NO_PARAM, what)
    }

    /// 500, kind `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            NO_PARAM,
            message,
        )
    }

    /// 401, kind `unauthorized`; the response carries `WWW-Authenticate: Basic
    /// realm="conduit"` (§3.1).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            NO_PARAM,
            "Authentication required",
        )
    }

    /// 403, kind `forbidden` (a user without the admin role).
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            NO_PARAM,
            "Forbidden. User needs the cluster admin role",
        )
    }

    /// Adds an extra top-level field (e.g. `"mismatch":1`). Keys `errors`, `kind` and
    /// `message` are ignored by [`RestError::to_json`].
    #[must_use]
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        let mut o = self.extra.clone();
        let mut errors = Map::new();
        errors.insert(self.param.clone(), Value::from(self.message.clone()));
        o.insert("errors".into(), Value::Object(errors));
        o.insert("kind".into(), Value::from(self.kind.clone()));
        o.insert("message".into(), Value::from(self.message.clone()));
        Value::Object(o)
    }
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.param == NO_PARAM {
            write!(
                f,
                "{} {}: {}",
                self.status.as_u16(),
                self.kind,
                self.message
            )
        } else {
            write!(
                f,
                "{} {} ({}): {}",
                self.status.as_u16(),
                self.kind,
                self.param,
                self.message
            )
        }
    }
}

impl std::error::Error for RestError {}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = (status, axum::Json(self.to_json())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"conduit\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_param_renders_errors_kind_and_message() {
        let e = RestError::bad_param("replicaNumber", "replicaNumber must be 0..=3");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_json(),
            json!({"errors":{"replicaNumber":"replicaNumber must be 0..=3"},
                   "kind":"invalid_parameter","message":"replicaNumber must be 0..=3"})
        );
    }

    #[test]
    fn unsupported_key_is_the_ns_server_text() {
        let e = RestError::unsupported_key("foo");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.to_json()["errors"], json!({"foo":"Unsupported key"}));
        assert_eq!(e.kind, "unsupported_key");
    }

    #[test]
    fn missing_names_the_parameter() {
        let e = RestError::missing("name");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.kind, "missing_parameter");
        assert_eq!(e.param, "name");
        assert_eq!(e.to_json()["errors"]["name"], "name is required");
    }

    #[test]
    fn busy_is_503_with_running_rebalance() {
        let e = RestError::busy("add node");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_json(),
            json!({"errors":{"_":"Cannot add node during rebalance"},"kind":"busy",
                   "message":"Cannot add node during rebalance","running":"rebalance"})
        );
    }

    #[test]
    fn not_found_and_internal_have_their_statuses_and_kinds() {
        let e = RestError::not_found("bucket x not found");
        assert_eq!(
            (e.status, e.kind.as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        assert_eq!(e.to_json()["errors"]["_"], "bucket x not found");
        let e = RestError::internal("boom");
        assert_eq!(
            (e.status, e.kind.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
    }

    #[test]
    fn with_adds_a_well_known_key_but_never_overrides_kind() {
        let e = RestError::new(StatusCode::BAD_REQUEST, "mismatch", "", "Nodes mismatch")
            .with("mismatch", json!(1))
            .with("kind", json!("other"));
        let v = e.to_json();
        assert_eq!(v["mismatch"], 1);
        assert_eq!(v["kind"], "mismatch");
        assert_eq!(v["errors"], json!({"_":"Nodes mismatch"}));
    }

    #[tokio::test]
    async fn into_response_carries_status_json_and_the_auth_challenge() {
        let r = RestError::bad_param("x", "bad").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        let r = RestError::unauthorized().into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Basic realm=\"conduit\"")
        );
    }

    #[test]
    fn display_names_status_kind_and_param() {
        assert_eq!(
            RestError::bad_param("name", "bad name").to_string(),
            "400 invalid_parameter (name): bad name"
        );
        assert_eq!(RestError::internal("x").to_string(), "500 internal: x");
    }
}
