//! Request parameters of the REST routes (cluster.md §3.1–§3.5): parsing form-encoded and
//! JSON bodies plus the query string, and validating each route's parameters.
//!
//! Pure: no I/O, no clock. Every rule answers a [`RestError`] naming the parameter, so a
//! handler is "parse, validate, act". Name resolution, duplicate checks and anything else
//! that needs cluster state stay with the caller.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::Value;

use super::error::RestError;

/// Parsed parameters of one request: form-encoded (`application/x-www-form-urlencoded`) or
/// JSON object body, plus the query string. Repeated keys keep every value, in order
/// (query first, then body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

/// How a body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Form,
    Json,
}

fn bad_body(message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::BAD_REQUEST, "bad_body", "_", message)
}

fn parse_form(text: &str, what: &str) -> Result<Vec<(String, String)>, RestError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(text)
        .map_err(|e| bad_body(format!("malformed {what}: {e}")))
}

/// A JSON scalar as a parameter value; `null` means absent.
fn json_scalar(key: &str, v: &Value) -> Result<Option<String>, RestError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Array(_) | Value::Object(_) => Err(bad_body(format!(
            "JSON body: {key} must be a string, number, boolean or a list of them"
        ))),
    }
}

fn parse_json(body: &[u8]) -> Result<Vec<(String, String)>, RestError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad_body(format!("malformed JSON body: {e}")))?;
    let Value::Object(o) = v else {
        return Err(bad_body("JSON body must be an object"));
    };
    let mut pairs = Vec::new();
    for (k, v) in o {
        match &v {
            Value::Array(items) => {
                for item in items {
                    if let Some(s) = json_scalar(&k, item)? {
                        pairs.push((k.clone(), s));
                    }
                }
            }
            _ => {
                if let Some(s) = json_scalar(&k, &v)? {
                    pairs.push((k, s));
                }
            }
        }
    }
    Ok(pairs)
}

impl Params {
    /// From the Content-Type header and body bytes (and the query string, merged: body values
    /// come after the query's, so [`Params::get`] prefers the body). A JSON body must be an
    /// object; scalars become strings (`null` = absent), arrays become repeated values.
    /// Without a recognised Content-Type, a body whose first non-blank byte is `{` is JSON,
    /// anything else form-encoded.
    ///
    /// # Errors
    /// Malformed body (or query) → 400 kind `bad_body`.
    pub fn parse(
        content_type: Option<&str>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Params, RestError> {
        let mut pairs = match query {
            Some(q) if !q.is_empty() => parse_form(q, "query string")?,
            _ => Vec::new(),
        };
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        let format = match mime.as_deref() {
            Some("application/x-www-form-urlencoded") => BodyFormat::Form,
            Some(m) if m == "application/json" || m.ends_with("+json") => BodyFormat::Json,
            _ => {
                if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    BodyFormat::Json
                } else {
                    BodyFormat::Form
                }
            }
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params { pairs });
        }
        match format {
            BodyFormat::Json => pairs.extend(parse_json(body)?),
            BodyFormat::Form => {
                let text =
                    std::str::from_utf8(body).map_err(|_| bad_body("form body is not UTF-8"))?;
                pairs.extend(parse_form(text.trim(), "form body")?);
            }
        }
        Ok(Params { pairs })
    }

    /// From explicit pairs (tests, forwarded requests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Params {
        Params {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Every (key, value) in request order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// No parameter at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The distinct keys, sorted.
    pub fn keys(&self) -> BTreeSet<&str> {
        self.pairs.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Whether `key` was given (even empty).
    pub fn contains(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// Every value of `key`, in order, untouched.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Rejects keys not in `known` ∪ `ignored` with [`RestError::unsupported_key`] (first
    /// offending key in sorted order). Ignored keys are logged at debug; callers never read
    /// them.
    ///
    /// # Errors
    /// 400 `unsupported_key`.
    pub fn check_keys(&self, known: &[&str], ignored: &[&str]) -> Result<(), RestError> {
        for k in self.keys() {
            if known.contains(&k) {
                continue;
            }
            if ignored.contains(&k) {
                tracing::debug!(param = k, "ignored REST parameter");
                continue;
            }
            return Err(RestError::unsupported_key(k));
        }
        Ok(())
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The last value of `key`, trimmed; absent or blank → error.
    ///
    /// # Errors
    /// 400 `missing_parameter`.
    pub fn require(&self, key: &str) -> Result<&str, RestError> {
        match self.get(key).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(RestError::missing(key)),
        }
    }

    /// Repeated values and comma lists flattened, trimmed, empty items dropped
    /// (`ejectedNodes=` → `[]`).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Integer in `[min, max]` (the last value, trimmed); absent → `Ok(None)`.
    ///
    /// # Errors
    /// Not an integer or out of range → 400 `invalid_parameter` naming the param and range.
    pub fn int_in(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, RestError> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        match raw.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(RestError::bad_param(
                key,
                format!("{key} must be an integer between {min} and {max}, got {raw:?}"),
            )),
        }
    }

    /// `true`/`false`/`1`/`0` (ASCII case-insensitive) → bool; absent → `Ok(None)`.
    ///
    /// # Errors
    /// Anything else → 400 `invalid_parameter`.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, RestError> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let v = raw.trim();
        if v == "1" || v.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if v == "0" || v.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(RestError::bad_param(
                key,
                format!("{key} must be true, false, 1 or 0, got {raw:?}"),
            ))
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Params {
    type Rejection = RestError;

    /// [`Params::parse`] of the request's Content-Type, query string and body (axum's
    /// default body limit applies).
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, RestError> {
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let query = req.uri().query().map(str::to_string);
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| bad_body(format!("cannot read the body: {e}")))?;
        Params::parse(content_type.as_deref(), query.as_deref(), &body)
    }
}

/// A node reference (§3.1): `ns_1@h` / `n_0@h`-style name, `h:adminport`, or `Self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// An otpNode name, as given.
    Name(String),
    /// A host (IPv6 without brackets) and admin port.
    HostPort(String, u16),
    /// The node that received the request.
    SelfNode,
}

/// Splits `host:port` / `[v6]:port` / `host` (then `port` is `None`). The host comes back
/// without brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if host.is_empty() {
            return None;
        }
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':')?))),
        };
    }
    match s.split_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((_, rest)) if rest.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'))
}

fn parse_port(p: &str) -> Option<u16> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// [`parse_node_ref`] for a named parameter (`knownNodes`, `ejectedNodes`, …).
///
/// # Errors
/// 400 `invalid_parameter` naming `param`.
pub fn parse_node_ref_param(param: &str, s: &str) -> Result<NodeRef, RestError> {
    let s = s.trim();
    let bad = || {
        RestError::bad_param(
            param,
            format!("{s:?} is not a node: expected a name (ns_1@host), host:port or Self"),
        )
    };
    if s == "Self" {
        return Ok(NodeRef::SelfNode);
    }
    if let Some((prefix, host)) = s.split_once('@') {
        let prefix_ok = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        return if prefix_ok && valid_host(host) {
            Ok(NodeRef::Name(s.to_string()))
        } else {
            Err(bad())
        };
    }
    match split_host_port(s) {
        Some((host, Some(port))) if valid_host(host) => match parse_port(port) {
            Some(p) => Ok(NodeRef::HostPort(host.to_string(), p)),
            None => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Parses a node reference (§3.1): `ns_1@h` / `n_0@h`-style name, `h:adminport`, or `Self`.
///
/// # Errors
/// 400 `invalid_parameter` naming `otpNode`; use [`parse_node_ref_param`] for another param.
pub fn parse_node_ref(s: &str) -> Result<NodeRef, RestError> {
    parse_node_ref_param("otpNode", s)
}

/// Every node reference in `key` ([`Params::list`] then [`parse_node_ref_param`]).
///
/// # Errors
/// The first bad reference, naming `key`.
pub fn node_refs(p: &Params, key: &str) -> Result<Vec<NodeRef>, RestError> {
    p.list(key)
        .iter()
        .map(|s| parse_node_ref_param(key, s))
        .collect()
}

/// The node name rule of §2.3 (`ns_1@h` for 8091, `n_<port-9000>@h` for 9000..=9999, else
/// `n_<port>@h`).
pub fn node_name(host: &str, admin_port: u16) -> String {
    match admin_port {
        8091 => format!("ns_1@{host}"),
        9000..=9999 => format!("n_{}@{host}", admin_port - 9000),
        p => format!("n_{p}@{host}"),
    }
}

/// addNode's `hostname`: `h`, `h:port`, `http://h:port` (a trailing `/` is tolerated);
/// default port 8091. Returns (host, port), the host without IPv6 brackets.
///
/// # Errors
/// `https://` → 400 kind `unsupported` (no TLS between nodes in this stage); another
/// scheme, a bad host or port → 400 `invalid_parameter`; blank → 400 `missing_parameter`.
pub fn parse_add_node_hostname(s: &str) -> Result<(String, u16), RestError> {
    const P: &str = "hostname";
    let s = s.trim();
    if s.is_empty() {
        return Err(RestError::missing(P));
    }
    let bad = || RestError::bad_param(P, format!("Invalid hostname {s:?}: expected host[:port]"));
    let rest = if let Some((scheme, rest)) = s.split_once("://") {
        if scheme.eq_ignore_ascii_case("https") {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unsupported",
                P,
                "https is not supported between nodes in this version; use http or host:port",
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(bad());
        }
        rest
    } else {
        s
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_host_port(rest).ok_or_else(bad)?;
    if !valid_host(host) {
        return Err(bad());
    }
    let port = match port {
        None => 8091,
        Some(p) => parse_port(p).ok_or_else(bad)?,
    };
    Ok((host.to_string(), port))
}

/// Validated `POST /pools/default/buckets` parameters (§3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketParams {
    /// Bucket name.
    pub name: String,
    /// RAM quota, MiB.
    pub ram_quota_mb: u64,
    /// Configured replicas (R).
    pub replicas: u8,
    /// vbuckets (V).
    pub num_vbuckets: u16,
    /// Stored only: flush is out of scope.
    pub flush_enabled: bool,
}

/// The parameters `POST /pools/default/buckets` understands (§3.4).
pub const BUCKET_KEYS: &[&str] = &[
    "name",
    "bucketType",
    "ramQuota",
    "ramQuotaMB",
    "replicaNumber",
    "numVBuckets",
    "flushEnabled",
    "durabilityMinLevel",
];

/// What harnesses send to `POST /pools/default/buckets` that means nothing to Conduit (§3.4).
pub const BUCKET_IGNORED: &[&str] = &[
    "evictionPolicy",
    "authType",
    "saslPassword",
    "storageBackend",
    "compressionMode",
    "conflictResolutionType",
    "maxTTL",
    "threadsNumber",
    "replicaIndex",
];

/// Bucket default RAM quota cap when the cluster has a memory quota (§3.4).
pub const DEFAULT_BUCKET_QUOTA_MB: u64 = 256;

/// The bucket name rule (§3.4): 1–100 of `[A-Za-z0-9._%-]` (and `_`, as ns_server),
/// not starting with `.`.
///
/// # Errors
/// 400 `invalid_parameter` (`missing_parameter` when blank) naming `name`.
pub fn validate_bucket_name(name: &str) -> Result<(), RestError> {
    const P: &str = "name";
    if name.is_empty() {
        return Err(RestError::missing(P));
    }
    if name.len() > 100 {
        return Err(RestError::bad_param(
            P,
            "Bucket name cannot exceed 100 characters",
        ));
    }
    if name.starts_with('.') {
        return Err(RestError::bad_param(P, "Bucket name cannot start with dot"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '-'))
    {
        return Err(RestError::bad_param(
            P,
            "Bucket name can only contain characters in range A-Z, a-z, 0-9 as well as \
             underscore, period, dash & percent",
        ));
    }
    Ok(())
}

/// Validated `POST /pools/default/buckets` parameters (§3.4): the name rule and charset,
/// `bucketType` (`couchbase` | `membase` default; `ephemeral`/`memcached` → 400 kind
/// `unsupported_bucket_type`), `ramQuotaMB` | `ramQuota` (`ramQuotaMB` wins when both; ≥ 1;
/// required unless `cluster_quota_left` is `Some`, then default `min(left, 256)`; over what
/// is left → 400), `replicaNumber` 0..=3 default 1, `numVBuckets` 1..=1024 default
/// `default_vbuckets`, `flushEnabled` 0/1, `durabilityMinLevel` only `none`, the ignore-list
/// of §3.4. Duplicate-name checks are the caller's.
///
/// # Errors
/// The first failing rule's [`RestError`] (unknown keys first).
pub fn bucket_params(
    p: &Params,
    default_vbuckets: u16,
    cluster_quota_left: Option<u64>,
) -> Result<BucketParams, RestError> {
    p.check_keys(BUCKET_KEYS, BUCKET_IGNORED)?;
    let name = p.require("name")?;
    validate_bucket_name(name)?;
    match p.get("bucketType").map(str::trim) {
        None | Some("couchbase" | "membase") => {}
        Some(t @ ("ephemeral" | "memcached")) => {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_bucket_type",
                "bucketType",
                format!("{t} buckets are not supported in this version"),
            ))
        }
        Some(t) => {
            return Err(RestError::bad_param(
                "bucketType",
                format!("invalid bucket type {t:?}: expected couchbase or membase"),
            ))
        }
    }
    let quota_key = if p.contains("ramQuotaMB") {
        "ramQuotaMB"
    } else {
        "ramQuota"
    };
    let ram_quota_mb = match p.int_in(quota_key, 1, i64::MAX)? {
        Some(q) => {
            let q = u64::try_from(q).expect("int_in bounds it to >= 1");
            if let Some(left) = cluster_quota_left {
                if q > left {
                    return Err(RestError::bad_param(
                        quota_key,
                        format!(
                            "RAM quota specified is too large to be provisioned into this \
                             cluster: {q} MiB asked, {left} MiB left"
                        ),
                    ));
                }
            }
            q
        }
        None => match cluster_quota_left {
            None => return Err(RestError::missing("ramQuota")),
            Some(0) => {
                return Err(RestError::bad_param(
                    "ramQuota",
                    "RAM quota cannot be set: the cluster's memory quota is used up",
                ))
            }
            Some(left) => left.min(DEFAULT_BUCKET_QUOTA_MB),
        },
    };
    let replicas = p.int_in("replicaNumber", 0, 3)?.unwrap_or(1);
    let num_vbuckets = match p.int_in("numVBuckets", 1, 1024)? {
        Some(n) => n,
        None => i64::from(default_vbuckets),
    };
    let flush_enabled = p.bool("flushEnabled")?.unwrap_or(false);
    match p.get("durabilityMinLevel").map(str::trim) {
        None | Some("none") => {}
        Some(l) => {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unsupported",
                "durabilityMinLevel",
                format!("durability level {l:?} is not supported in this version: only none"),
            ))
        }
    }
    Ok(BucketParams {
        name: name.to_string(),
        ram_quota_mb,
        replicas: u8::try_from(replicas).expect("int_in bounds it to 0..=3"),
        num_vbuckets: u16::try_from(num_vbuckets).expect("int_in bounds it to 1..=1024"),
        flush_enabled,
    })
}

/// `/clusterInit` (and `/settings/web`) parameters (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitParams {
    /// The cluster admin user.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The host the cluster reaches this node by.
    pub hostname: Option<String>,
    /// Cluster memory quota, MiB.
    pub memory_quota_mb: Option<u64>,
    /// Cluster name.
    pub cluster_name: Option<String>,
}

/// The parameters `/clusterInit` understands (§3.2).
pub const INIT_KEYS: &[&str] = &[
    "username",
    "password",
    "hostname",
    "port",
    "services",
    "memoryQuota",
    "clusterName",
];

/// The parameters the legacy `/settings/web` understands (§3.2).
pub const SETTINGS_WEB_KEYS: &[&str] = &["username", "password", "port"];

/// What harnesses send to `/clusterInit` that means nothing to Conduit (§3.2).
pub const INIT_IGNORED: &[&str] = &[
    "sendStats",
    "indexerStorageMode",
    "afamily",
    "afamilyOnly",
    "nodeEncryption",
    "dataPath",
    "indexPath",
];

/// `services` must name only `kv` (§2.3); absent or blank is `kv`.
///
/// # Errors
/// 400 kind `unsupported_service` naming `services`.
pub fn check_services(p: &Params) -> Result<(), RestError> {
    let other: Vec<String> = p
        .list("services")
        .into_iter()
        .filter(|s| s != "kv")
        .collect();
    if other.is_empty() {
        Ok(())
    } else {
        Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_service",
            "services",
            format!(
                "only the kv service is supported in this version, not {}",
                other.join(",")
            ),
        ))
    }
}

/// `/clusterInit` (and `/settings/web` when `legacy_settings_web`) parameters (§3.2):
/// `username`, `password` required; `hostname`; `port` (`SAME` or the node's admin port);
/// `services` (kv only: other → 400 kind `unsupported_service`); `memoryQuota` (MiB, ≥ 1);
/// `clusterName`; the ignore list of §3.2. `/settings/web` knows only `username`,
/// `password` and `port`.
///
/// # Errors
/// The first failing rule's [`RestError`] (unknown keys first).
pub fn init_params(
    p: &Params,
    admin_port: u16,
    legacy_settings_web: bool,
) -> Result<InitParams, RestError> {
    let known = if legacy_settings_web {
        SETTINGS_WEB_KEYS
    } else {
        INIT_KEYS
    };
    p.check_keys(known, INIT_IGNORED)?;
    let username = p.require("username")?.to_string();
    let password = p.get("password").unwrap_or_default();
    if password.is_empty() {
        return Err(RestError::missing("password"));
    }
    if let Some(port) = p.get("port").map(str::trim) {
        let same = port.eq_ignore_ascii_case("SAME") || port.parse::<u16>() == Ok(admin_port);
        if !same {
            return Err(RestError::bad_param(
                "port",
                format!("port must be SAME or this node's admin port {admin_port}, got {port:?}"),
            ));
        }
    }
    check_services(p)?;
    let hostname = match p.get("hostname").map(str::trim) {
        None | Some("") => None,
        Some(h) => {
            if !valid_host(h.trim_start_matches('[').trim_end_matches(']')) {
                return Err(RestError::bad_param(
                    "hostname",
                    format!("invalid hostname {h:?}"),
                ));
            }
            Some(h.to_string())
        }
    };
    let memory_quota_mb = p
        .int_in("memoryQuota", 1, i64::MAX)?
        .map(|q| u64::try_from(q).expect("int_in bounds it to >= 1"));
    let cluster_name = p
        .get("clusterName")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    Ok(InitParams {
        username,
        password: password.to_string(),
        hostname,
        memory_quota_mb,
        cluster_name,
    })
}

/// `POST /controller/addNode` parameters (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddNodeParams {
    /// The joining node's host (no brackets).
    pub host: String,
    /// Its admin port.
    pub port: u16,
    /// Its own admin user.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// Server group.
    pub group: String,
}

/// The parameters `POST /controller/addNode` understands (§3.3).
pub const ADD_NODE_KEYS: &[&str] = &["hostname", "user", "password", "services", "serverGroup"];

/// The default server group.
pub const DEFAULT_GROUP: &str = "Group 1";

/// addNode params (§3.3): `hostname` ([`parse_add_node_hostname`]), `user`, `password`
/// (required), `services` (kv), `serverGroup` (default `Group 1`; blank = default).
///
/// # Errors
/// The first failing rule's [`RestError`] (unknown keys first).
pub fn add_node_params(p: &Params) -> Result<AddNodeParams, RestError> {
    p.check_keys(ADD_NODE_KEYS, &[])?;
    let (host, port) = parse_add_node_hostname(p.require("hostname")?)?;
    let user = p.require("user")?.to_string();
    let password = p.get("password").unwrap_or_default();
    if password.is_empty() {
        return Err(RestError::missing("password"));
    }
    check_services(p)?;
    let group = p
        .get("serverGroup")
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .unwrap_or(DEFAULT_GROUP)
        .to_string();
    Ok(AddNodeParams {
        host,
        port,
        user,
        password: password.to_string(),
        group,
    })
}

/// The parameters `POST /controller/rebalance` understands (§3.5).
pub const REBALANCE_KEYS: &[&str] = &["knownNodes", "ejectedNodes"];

/// rebalance params (§3.5): `knownNodes` required non-empty (else 400 kind
/// `empty_known_nodes` with `{"empty_known_nodes":1}`), `ejectedNodes` optional; returns
/// (known, ejected) as given (name resolution is the caller's).
///
/// # Errors
/// Unknown keys, or empty `knownNodes`.
pub fn rebalance_params(p: &Params) -> Result<(Vec<String>, Vec<String>), RestError> {
    p.check_keys(REBALANCE_KEYS, &[])?;
    let known = p.list("knownNodes");
    if known.is_empty() {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "empty_known_nodes",
            "knownNodes",
            "knownNodes must list every node of the cluster",
        )
        .with("empty_known_nodes", Value::from(1)));
    }
    Ok((known, p.list("ejectedNodes")))
}

fn diag_eval_statement(s: &str) -> Option<&str> {
    fn tok<'a>(s: &'a str, t: &str) -> Option<&'a str> {
        s.trim_start().strip_prefix(t)
    }
    let s = tok(s, "ns_config")?;
    let s = tok(s, ":")?;
    let s = tok(s, "set")?;
    let s = tok(s, "(")?;
    let s = tok(s, "couchbase_num_vbuckets_default")?;
    let s = tok(s, ",")?;
    let s = s.trim_start();
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (n, s) = s.split_at(digits);
    let s = tok(s, ")")?;
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    (s.trim().is_empty() && !n.is_empty()).then_some(n)
}

/// `/diag/eval` (§3.2): only `ns_config:set(couchbase_num_vbuckets_default, <n>).`
/// (whitespace tolerant, the final `.` optional, raw or form-encoded body), 1..=1024.
///
/// # Errors
/// Any other statement → 400 kind `unsupported`; n out of range → 400 `invalid_parameter`.
pub fn diag_eval(body: &str) -> Result<u16, RestError> {
    let decoded;
    let n = match diag_eval_statement(body) {
        Some(n) => n,
        None => {
            // `curl -d` and form clients may have percent-encoded the statement.
            decoded = serde_urlencoded::from_str::<Vec<(String, String)>>(body.trim())
                .ok()
                .and_then(|v| match v.as_slice() {
                    [(k, v)] if v.is_empty() => Some(k.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            diag_eval_statement(&decoded).ok_or_else(|| {
                RestError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported",
                    "_",
                    "only ns_config:set(couchbase_num_vbuckets_default, <n>). is supported",
                )
            })?
        }
    };
    match n.parse::<u16>() {
        Ok(v @ 1..=1024) => Ok(v),
        _ => Err(RestError::bad_param(
            "_",
            format!("couchbase_num_vbuckets_default must be between 1 and 1024, got {n}"),
        )),
    }
}

#[cfg(test)]
mod tests;
