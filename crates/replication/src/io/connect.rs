//! Connection set-up of one half (`replication-layer.md` §4.2): connect, SASL
//! PLAIN, SELECT_BUCKET, HELLO, DCP_OPEN. Every step is bounded by the configured
//! timeout (kv-client bounds connect and every answer); a failure is a
//! [`ConnectError`] naming the side, peer, stage and status.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kv_client::{Client, ClientConfig, ClientError, Credentials};
use mcbp::dcp::OpenFlags;
use mcbp::kv::Feature;
use mcbp::Status;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::core::{agent_name, Side};
use crate::error::{ConnectCause, ConnectError, Stage};

/// What one half needs to connect.
#[derive(Clone, Debug)]
pub struct HalfConfig {
    /// Which half (decides DCP_OPEN flags and the agent name).
    pub side: Side,
    /// The node's KV address (`host:port`).
    pub addr: String,
    /// The bucket.
    pub bucket: String,
    /// SASL PLAIN credentials.
    pub credentials: Credentials,
    /// The DCP connection name (§4.3), identical on both halves.
    pub connection_name: String,
    /// The consumer node's name: the consumer half sends it as `consumer_name`.
    pub consumer_node: String,
    /// Also request SNAPPY in HELLO (a refusal is only logged).
    pub snappy: bool,
    /// Bound on connect and on each answer of the handshake.
    pub timeout: Duration,
    /// Largest frame body accepted from the node.
    pub max_body_len: usize,
}

/// A half after a successful set-up: the socket in streaming mode.
#[derive(Debug)]
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes already read past DCP_OPEN's answer (the proxy reader's first input).
    pub leftover: BytesMut,
    /// The peer's address, for errors and logs.
    pub peer: String,
    /// The features HELLO granted.
    pub granted: Vec<Feature>,
}

/// The HELLO features a half requests: exactly XATTR and JSON, plus SNAPPY only when
/// configured (§4.1 Conduit note: never COLLECTIONS).
#[must_use]
pub fn requested_features(snappy: bool) -> Vec<Feature> {
    let mut f = vec![Feature::Xattr];
    if snappy {
        f.push(Feature::Snappy);
    }
    f.push(Feature::Json);
    f
}

/// DCP_OPEN flags of a half (§4.2 step 5, with xattr, del_times, del_user_xattr).
#[must_use]
pub fn open_flags(side: Side) -> OpenFlags {
    match side {
        Side::Consumer => OpenFlags::REPLICATION_CONSUMER,
        Side::Producer => OpenFlags::REPLICATION_PRODUCER,
    }
}

/// The DCP_OPEN value of a half: `{"consumer_name":"<node>"}` on the consumer half
/// (MB-32880), nothing on the producer half.
#[must_use]
pub fn open_value(side: Side, consumer_node: &str) -> Vec<u8> {
    match side {
        Side::Consumer => serde_json::json!({ "consumer_name": consumer_node })
            .to_string()
            .into_bytes(),
        Side::Producer => Vec::new(),
    }
}

/// Runs the §4.2 sequence for one half.
///
/// # Errors
/// [`ConnectError`] naming the stage that failed; XATTR and JSON must be granted
/// (stage `hello`), a refused SNAPPY is only logged.
pub async fn connect_half(cfg: &HalfConfig) -> Result<Connected, ConnectError> {
    let side = cfg.side;
    let fail = |peer: &str, stage: Stage, e: ClientError| ConnectError {
        side,
        peer: peer.to_string(),
        stage,
        status: e.status(),
        vbuckets: Vec::new(),
        source: ConnectCause::Client(Arc::new(e)),
    };
    let client_cfg = ClientConfig {
        timeout: cfg.timeout,
        max_body_len: cfg.max_body_len,
    };
    let mut c = Client::connect(&cfg.addr, client_cfg)
        .await
        .map_err(|e| fail(&cfg.addr, Stage::Connect, e))?;
    let peer = c.peer().to_string();
    c.auth_plain(&cfg.credentials)
        .await
        .map_err(|e| fail(&peer, Stage::Sasl, e))?;
    c.select_bucket(&cfg.bucket)
        .await
        .map_err(|e| fail(&peer, Stage::SelectBucket, e))?;
    let agent = agent_name(side, &cfg.connection_name);
    let wanted = requested_features(cfg.snappy);
    let granted = c
        .hello(&agent, &wanted)
        .await
        .map_err(|e| fail(&peer, Stage::Hello, e))?;
    let missing: Vec<Feature> = [Feature::Xattr, Feature::Json]
        .into_iter()
        .filter(|f| !granted.contains(f))
        .collect();
    if !missing.is_empty() {
        debug!(%side, %peer, ?missing, "hello: required features refused");
        return Err(ConnectError {
            side,
            peer,
            // HELLO itself succeeded; its status is carried so that the refusal
            // reads like every other failed step.
            stage: Stage::Hello,
            status: Some(Status::Success),
            vbuckets: Vec::new(),
            source: ConnectCause::FeaturesRefused { missing },
        });
    }
    if cfg.snappy && !granted.contains(&Feature::Snappy) {
        warn!(%side, %peer, "hello: snappy refused; continuing without it");
    }
    c.dcp_open(
        &cfg.connection_name,
        open_flags(side),
        &open_value(side, &cfg.consumer_node),
    )
    .await
    .map_err(|e| fail(&peer, Stage::DcpOpen, e))?;
    info!(%side, %peer, name = %cfg.connection_name, "dcp connection open");
    let (stream, leftover) = c.into_parts();
    Ok(Connected {
        stream,
        leftover,
        peer,
        granted,
    })
}
