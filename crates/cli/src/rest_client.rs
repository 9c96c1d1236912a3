//! A small client of the cluster REST API (cluster.md §3) for the cluster commands (§9):
//! basic auth, form-encoded requests, every call bounded, and every failure turned into a
//! typed [`CliError`] that carries the REST error's own fields (§3.1) through unchanged.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Bound on one REST call (the server bounds its own work by 30 s, §10.1 I3).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(35);
/// Bound on connecting, inside [`CALL_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest body text quoted in a message when the answer is not JSON.
const QUOTE_MAX: usize = 200;

/// A typed failure of a cluster command: printed as `{"ok":false,"error":…}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CliError {
    /// The error object: always `kind` and `message`; `status` when the server answered;
    /// the REST error's other fields (`errors`, `mismatch`, …) as they came.
    pub(crate) fields: Map<String, Value>,
}

impl CliError {
    /// Only `kind` and `message` (plus whatever [`CliError::with`] adds).
    pub(crate) fn new(kind: &str, message: impl Into<String>) -> CliError {
        let mut fields = Map::new();
        fields.insert("kind".into(), Value::from(kind));
        fields.insert("message".into(), Value::from(message.into()));
        CliError { fields }
    }

    /// Adds a field.
    #[must_use]
    pub(crate) fn with(mut self, key: &str, value: Value) -> CliError {
        self.fields.insert(key.into(), value);
        self
    }

    pub(crate) fn kind(&self) -> &str {
        self.fields
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("error")
    }

    pub(crate) fn message(&self) -> &str {
        self.fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The HTTP status, when the server answered.
    pub(crate) fn status(&self) -> Option<u16> {
        self.fields
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
    }

    /// The `{"ok":false,"error":…}` line.
    pub(crate) fn to_line(&self) -> Value {
        json!({"ok": false, "error": Value::Object(self.fields.clone())})
    }

    /// A non-2xx answer: the REST error object's fields (its `message` unchanged) plus
    /// `status` and `request` (`"POST /controller/addNode"`). 401 is always
    /// `unauthorized` and 403 `forbidden`; an answer without a `kind` gets one from its
    /// status.
    pub(crate) fn from_answer(method: &str, path: &str, status: u16, body: &[u8]) -> CliError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let mut fields = match &parsed {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        let message = match fields.get("message").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => answer_text(parsed.as_ref(), body),
        };
        let kind = match status {
            401 => "unauthorized".to_string(),
            403 => "forbidden".to_string(),
            _ => match fields.get("kind").and_then(Value::as_str) {
                Some(k) if !k.is_empty() => k.to_string(),
                _ => match status {
                    404 => "not_found",
                    400 => "invalid_parameter",
                    503 => "unavailable",
                    500..=599 => "internal",
                    _ => "http_error",
                }
                .to_string(),
            },
        };
        let message = if message.is_empty() {
            format!("HTTP {status}")
        } else {
            message
        };
        if !matches!(&parsed, Some(Value::Object(_))) {
            if let Some(v) = parsed {
                // ns_server answers some errors as a bare list of strings.
                fields.insert("errors".into(), v);
            }
        }
        fields.insert("kind".into(), Value::from(kind));
        fields.insert("message".into(), Value::from(message));
        fields.insert("status".into(), Value::from(status));
        fields.insert("request".into(), Value::from(format!("{method} {path}")));
        CliError { fields }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = self.fields.get("request").and_then(Value::as_str) {
            write!(f, "{r}: ")?;
        }
        if let Some(s) = self.status() {
            write!(f, "HTTP {s} ")?;
        }
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

/// Human text of an error answer: its `errors` values, or the body itself (bounded).
fn answer_text(parsed: Option<&Value>, body: &[u8]) -> String {
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) if k == "_" => s.clone(),
                    Value::String(s) => format!("{k}: {s}"),
                    other => format!("{k}: {other}"),
                })
                .collect(),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    let from_json = match parsed {
        Some(Value::Object(o)) => o.get("errors").map(strings).unwrap_or_default(),
        Some(v) => strings(v),
        None => Vec::new(),
    };
    if !from_json.is_empty() {
        return from_json.join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTE_MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The base URL for `--cluster`: `HOST:PORT`, `HOST` (port 8091) or a full `http://` URL.
pub(crate) fn base_url(cluster: &str) -> String {
    let c = cluster.trim().trim_end_matches('/');
    if c.contains("://") {
        return c.to_string();
    }
    let has_port = if let Some(rest) = c.strip_prefix('[') {
        rest.split_once("]:").is_some()
    } else {
        c.matches(':').count() == 1
    };
    if has_port {
        format!("http://{c}")
    } else if c.contains(':') {
        format!("http://[{c}]:8091")
    } else {
        format!("http://{c}:8091")
    }
}

/// Percent-encodes one path segment (bucket names may hold `%`).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// The cluster REST API at one address, as one user.
#[derive(Debug, Clone)]
pub(crate) struct RestClient {
    http: reqwest::Client,
    base: String,
    cluster: String,
    user: String,
    password: String,
}

impl RestClient {
    /// # Errors
    /// The HTTP client cannot be built (`internal`).
    pub(crate) fn new(cluster: &str, user: &str, password: &str) -> Result<RestClient, CliError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::new("internal", format!("cannot build an HTTP client: {e}")))?;
        Ok(RestClient {
            http,
            base: base_url(cluster),
            cluster: cluster.to_string(),
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The `--cluster` address as given.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    fn transport_error(&self, method: &str, path: &str, e: &reqwest::Error) -> CliError {
        let mut text = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            text.push_str(": ");
            text.push_str(&s.to_string());
            src = s.source();
        }
        if e.is_connect() {
            CliError::new(
                "unreachable",
                format!("cannot reach the cluster at {}: {text}", self.cluster),
            )
            .with("address", Value::from(self.cluster.clone()))
        } else if e.is_timeout() {
            CliError::new(
                "timeout",
                format!(
                    "{method} {path} at {} got no answer within {} s",
                    self.cluster,
                    CALL_TIMEOUT.as_secs()
                ),
            )
            .with("address", Value::from(self.cluster.clone()))
            .with("waiting_for", Value::from("rest_call"))
        } else {
            CliError::new(
                "unreachable",
                format!("{method} {path} at {} failed: {text}", self.cluster),
            )
            .with("address", Value::from(self.cluster.clone()))
        }
    }

    /// One call, bounded by `bound` (at most [`CALL_TIMEOUT`]); any status comes back as an
    /// [`Answer`].
    ///
    /// # Errors
    /// Transport failures only (`unreachable`, `timeout`).
    pub(crate) async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(&str, String)]>,
        bound: Duration,
    ) -> Result<(Answer, Vec<u8>), CliError> {
        let m = method.as_str().to_string();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .timeout(bound.min(CALL_TIMEOUT));
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&m, path, &e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&m, path, &e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((Answer { status, body }, bytes.to_vec()))
    }

    /// One call; a non-2xx answer is a [`CliError`] carrying the REST error's fields.
    ///
    /// # Errors
    /// Transport failures and error answers.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(&str, String)]>,
    ) -> Result<Answer, CliError> {
        let m = method.as_str().to_string();
        let (answer, raw) = self.call_raw(method, path, form, CALL_TIMEOUT).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(CliError::from_answer(&m, path, answer.status, &raw))
        }
    }

    /// `GET path`, which must answer a JSON body.
    ///
    /// # Errors
    /// As [`RestClient::call`], and `bad_response` when the body is not JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let a = self.call(reqwest::Method::GET, path, None).await?;
        if a.body.is_null() {
            return Err(CliError::new(
                "bad_response",
                format!("GET {path}: the answer is not JSON"),
            )
            .with("status", Value::from(a.status)));
        }
        Ok(a.body)
    }

    /// `POST path` with a form body.
    ///
    /// # Errors
    /// As [`RestClient::call`].
    pub(crate) async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        self.call(reqwest::Method::POST, path, Some(form)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(base_url("node-a"), "http://node-a:8091");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
        assert_eq!(base_url("[::1]:9000"), "http://[::1]:9000");
        assert_eq!(base_url("::1"), "http://[::1]:8091");
    }

    #[test]
    fn path_segments_escape_percent() {
        assert_eq!(path_segment("a.b-c_d"), "a.b-c_d");
        assert_eq!(path_segment("50%"), "50%25");
    }

    #[test]
    fn an_error_answer_keeps_the_rest_fields_and_adds_status() {
        let body = br#"{"errors":{"_":"Nodes mismatch"},"kind":"mismatch","message":"Nodes mismatch","mismatch":1}"#;
        let e = CliError::from_answer("POST", "/controller/rebalance", 400, body);
        assert_eq!(e.kind(), "mismatch");
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.fields["mismatch"], 1);
        assert_eq!(e.fields["errors"]["_"], "Nodes mismatch");
        assert_eq!(e.message(), "Nodes mismatch");
        assert_eq!(e.fields["request"], "POST /controller/rebalance");
    }

    #[test]
    fn untyped_answers_get_a_kind_from_their_status() {
        let e = CliError::from_answer("GET", "/x", 401, b"");
        assert_eq!((e.kind(), e.status()), ("unauthorized", Some(401)));
        let e = CliError::from_answer("GET", "/x", 401, br#"{"kind":"other"}"#);
        assert_eq!(e.kind(), "unauthorized");
        let e = CliError::from_answer("GET", "/x", 404, b"Requested resource not found.\r\n");
        assert_eq!(e.kind(), "not_found");
        assert_eq!(e.message(), "Requested resource not found.");
        let e = CliError::from_answer("POST", "/x", 400, br#"["Unknown server given."]"#);
        assert_eq!(e.kind(), "invalid_parameter");
        assert_eq!(e.fields["errors"][0], "Unknown server given.");
        assert!(e.message().ends_with("Unknown server given."));
        let e = CliError::from_answer("POST", "/x", 400, br#"{"errors":{"name":"bad"}}"#);
        assert!(e.message().ends_with("name: bad"), "{}", e.message());
        let e = CliError::from_answer("POST", "/x", 502, b"");
        assert_eq!((e.kind(), e.message()), ("internal", "HTTP 502"));
        let e = CliError::from_answer("POST", "/x", 503, b"");
        assert_eq!(e.kind(), "unavailable");
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(1000);
        let e = CliError::from_answer("GET", "/x", 500, body.as_bytes());
        assert!(e.message().len() < 300);
    }
}
