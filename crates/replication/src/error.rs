//! [`ReplError`]: the one error type of the replication layer's public API
//! (§11.16), and [`ConnectError`], the failure of a half's connection set-up
//! (§4.2, §11.15).
//!
//! Every variant names what it concerns (vbucket, opaque, peer, side). The CLI prints
//! errors with [`ReplError::to_json`], whose objects are part of the black-box
//! contract of `conduit replicate` (issue #5): `kind` and `message` always, every
//! number an integer.

use std::fmt;
use std::sync::Arc;

use kv_client::ClientError;
use mcbp::dcp::EndReason;
use mcbp::kv::Feature;
use mcbp::{Opaque, Status, VbState, Vbid};
use serde_json::{json, Map, Value};

use crate::core::{
    ConnError, Operation, SetupError, Side, StreamFailure, StreamOp, TakeoverStep, WaitingFor,
};

/// The step of a half's connection set-up (§4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// SASL PLAIN authentication.
    Sasl,
    /// SELECT_BUCKET.
    SelectBucket,
    /// HELLO (feature negotiation).
    Hello,
    /// DCP_OPEN.
    DcpOpen,
}

impl Stage {
    /// `connect`, `sasl`, `select_bucket`, `hello` or `dcp_open` (the CLI's names).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Sasl => "sasl",
            Stage::SelectBucket => "select_bucket",
            Stage::Hello => "hello",
            Stage::DcpOpen => "dcp_open",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection set-up step failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectCause {
    /// The client call failed (transport, timeout, status).
    #[error(transparent)]
    Client(Arc<ClientError>),
    /// HELLO succeeded but did not grant features we require (XATTR, JSON).
    #[error("required features not granted: {}", missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    FeaturesRefused {
        /// The required features the node did not grant.
        missing: Vec<Feature>,
    },
}

/// A half's connection set-up failed (§4.2; §11.15: reported, never asserted).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{side} {peer}: connection set-up failed at {stage}{}", status.map_or_else(String::new, |s| format!(" ({s})")))]
pub struct ConnectError {
    /// Which half.
    pub side: Side,
    /// The address dialled (or the peer's address once connected).
    pub peer: String,
    /// The failed step.
    pub stage: Stage,
    /// The node's status, when it answered with one.
    pub status: Option<Status>,
    /// The vbuckets whose replication waited for this connection (filled in by the
    /// manager; empty for a bare connect).
    pub vbuckets: Vec<Vbid>,
    /// The cause.
    #[source]
    pub source: ConnectCause,
}

impl ConnectError {
    /// Whether the step ran out of time (connect or a handshake answer).
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if c.is_timeout())
    }

    /// Whether SASL refused our credentials.
    #[must_use]
    pub fn is_auth(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if matches!(**c, ClientError::Auth { .. }))
    }

    /// Whether the peer was unreachable or closed/failed the connection.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if matches!(**c,
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. }))
    }
}

/// What a [`ReplError::Timeout`] was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitFor {
    /// Connection set-up (connect and handshake).
    Connect,
    /// ADD_STREAM answers of a set-up.
    AddStream,
    /// CLOSE_STREAM answers of a set-up.
    CloseStream,
    /// Completion of a takeover.
    Takeover,
    /// The consumer-side CLOSE_STREAM answers of a graceful shut.
    Shut,
    /// `dcp-vbtakeover` estimates below the done limit (§7.7).
    DataMove,
    /// The destination persisting a seqno (SEQNO_PERSISTENCE, §9.2 step 7).
    SeqnoPersistence,
    /// A move's repair: vbucket states and histories read, leftover takeover
    /// connections gone, state changes applied.
    Repair,
}

impl WaitFor {
    /// The CLI's name: `connect`, `add_stream`, `close_stream`, `takeover`, `shut`,
    /// `data_move`, `seqno_persistence`, `repair`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WaitFor::Connect => "connect",
            WaitFor::AddStream => "add_stream",
            WaitFor::CloseStream => "close_stream",
            WaitFor::Takeover => "takeover",
            WaitFor::Shut => "shut",
            WaitFor::DataMove => "data_move",
            WaitFor::SeqnoPersistence => "seqno_persistence",
            WaitFor::Repair => "repair",
        }
    }
}

impl fmt::Display for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<WaitingFor> for WaitFor {
    fn from(w: WaitingFor) -> Self {
        match w {
            WaitingFor::AddStream => WaitFor::AddStream,
            WaitingFor::CloseStream => WaitFor::CloseStream,
            WaitingFor::Takeover => WaitFor::Takeover,
            WaitingFor::Shut => WaitFor::Shut,
        }
    }
}

/// A step of [`crate::mover::move_vbucket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveStep {
    /// Read both nodes' vbucket states before touching anything.
    Preflight,
    /// Set the vbucket to replica on the destination.
    SetReplica,
    /// Start the replicator and add the stream.
    Replicate,
    /// Wait for the data move (`dcp-vbtakeover` estimate).
    DataMove,
    /// Wait until the destination persisted the source's high seqno.
    Persistence,
    /// The takeover stream.
    Takeover,
    /// Set the final states (destination active, source dead).
    Finalize,
    /// After a failed takeover or finalize: wait until the move's connections are
    /// gone, then finish the move or make the source active again.
    Repair,
}

impl MoveStep {
    /// `preflight`, `set_replica`, `replicate`, `data_move`, `persistence`,
    /// `takeover`, `finalize`, `repair`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStep::Preflight => "preflight",
            MoveStep::SetReplica => "set_replica",
            MoveStep::Replicate => "replicate",
            MoveStep::DataMove => "data_move",
            MoveStep::Persistence => "persistence",
            MoveStep::Takeover => "takeover",
            MoveStep::Finalize => "finalize",
            MoveStep::Repair => "repair",
        }
    }
}

impl fmt::Display for MoveStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The replication layer's error (one type for every operation, §11.16).
///
/// `Clone`, so a termination reason can be handed to every pending caller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReplError {
    /// §5.9: the producer ended a stream that was being added (or the takeover
    /// stream before the takeover completed). The pair was torn down.
    #[error("producer {peer}: {vb} stream ended ({reason}) before it was established (stream opaque {opaque})")]
    UnexpectedStreamEnd {
        /// The vbucket.
        vb: Vbid,
        /// The opaque the STREAM_END carried (the consumer's STREAM_REQ opaque).
        opaque: Opaque,
        /// The end reason.
        reason: EndReason,
        /// The producer node's address.
        peer: String,
    },
    /// Some ADD_STREAM / CLOSE_STREAM commands of a set-up (or shut) were answered
    /// with a failure status; the pair stays up.
    #[error("{} stream command(s) failed (consumer {consumer}, producer {producer}), first: {}",
        failures.len(), failures.first().map_or_else(String::new, ToString::to_string))]
    StreamsFailed {
        /// Every failed command, in answer order.
        failures: Vec<StreamFailure>,
        /// The consumer node's address.
        consumer: String,
        /// The producer node's address.
        producer: String,
    },
    /// A takeover step was answered with an error status by the consumer node.
    #[error("consumer {peer}: takeover of {vb}: {step} failed (opaque {opaque}): {status}")]
    TakeoverFailed {
        /// The vbucket.
        vb: Vbid,
        /// Our ADD_STREAM opaque or the takeover stream's opaque.
        opaque: Opaque,
        /// The status.
        status: Status,
        /// The step.
        step: TakeoverStep,
        /// The consumer node's address.
        peer: String,
    },
    /// A takeover was requested for a vbucket with an open replication stream.
    #[error("takeover of {vb} refused: a replication stream is open for it")]
    TakeoverOnOpenStream {
        /// The vbucket.
        vb: Vbid,
    },
    /// A bounded wait expired.
    #[error("timed out waiting for {waiting_for}{} (vbuckets {vbuckets:?})", peer.as_ref().map_or_else(String::new, |p| format!(" from {p}")))]
    Timeout {
        /// What it waited for.
        waiting_for: WaitFor,
        /// The vbuckets still pending.
        vbuckets: Vec<Vbid>,
        /// The peer that owed the answer, when one does.
        peer: Option<String>,
    },
    /// A socket was closed (or failed) under an operation.
    #[error("{side} {peer}: connection closed{}", detail.as_ref().map_or_else(String::new, |d| format!(": {d}")))]
    ConnectionClosed {
        /// Which half.
        side: Side,
        /// The peer's address.
        peer: String,
        /// What happened (EOF, I/O error text).
        detail: Option<String>,
    },
    /// A node broke the protocol on the proxied connection (unknown opaque, a
    /// stream request for the wrong vbucket during a takeover, a corrupt stream).
    #[error("{side} {peer}: protocol error: {detail}")]
    Protocol {
        /// Which half.
        side: Side,
        /// The peer's address.
        peer: String,
        /// The vbucket concerned, if any.
        vb: Option<Vbid>,
        /// The opaque concerned, if any.
        opaque: Option<Opaque>,
        /// What was wrong.
        detail: String,
    },
    /// Connection set-up of a half failed (§4.2).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A node call outside the proxy (stats, SET_VBUCKET, SEQNO_PERSISTENCE) failed.
    #[error("{side} {peer}: {op} failed")]
    Node {
        /// The node's role in this replication.
        side: Side,
        /// The node's address.
        peer: String,
        /// What we asked.
        op: &'static str,
        /// The vbucket, if the call was about one.
        vb: Option<Vbid>,
        /// The client error.
        #[source]
        source: Arc<ClientError>,
    },
    /// `dcp-vbtakeover` reported a status that means the stream is not there
    /// (§7.7), or the node answered NOT_MY_VBUCKET (`no_status_stat_seen`).
    #[error("producer {peer}: {vb} on connection {connection}: unexpected dcp-vbtakeover status {status:?}")]
    UnexpectedStatus {
        /// The vbucket.
        vb: Vbid,
        /// The status string.
        status: String,
        /// The producer node's address.
        peer: String,
        /// The DCP connection name queried.
        connection: String,
    },
    /// A vbucket is not in the state an operation needs (e.g. a move whose source
    /// is not active).
    #[error("{peer}: {vb} is {state}, expected {expected}")]
    VbucketState {
        /// The vbucket.
        vb: Vbid,
        /// The node's address.
        peer: String,
        /// Its state there.
        state: VbState,
        /// What was needed.
        expected: &'static str,
    },
    /// The two copies of a vbucket each hold writes the other lacks (neither's
    /// history contains the other's): no choice of active copy keeps every
    /// acknowledged write, so the move changes nothing.
    #[error("{vb} diverged: source {source_peer} ({source_state}, high seqno {source_high_seqno}) and destination {destination_peer} ({destination_state}, high seqno {destination_high_seqno}) each hold writes the other lacks")]
    Diverged {
        /// The vbucket.
        vb: Vbid,
        /// The source node's address.
        source_peer: String,
        /// The vbucket's state there.
        source_state: VbState,
        /// Its high seqno there.
        source_high_seqno: u64,
        /// The destination node's address.
        destination_peer: String,
        /// The vbucket's state there.
        destination_state: VbState,
        /// Its high seqno there.
        destination_high_seqno: u64,
    },
    /// Another operation is in flight on this replicator.
    #[error("replicator busy with {in_progress}")]
    Busy {
        /// What is in flight.
        in_progress: Operation,
    },
    /// The replicator is shut (or shutting) and accepts no more work.
    #[error("replicator is shut")]
    Shut,
    /// The operation was abandoned because its owner stopped the replicator (abort,
    /// shut during a set-up, drop).
    #[error("interrupted")]
    Interrupted,
    /// The manager was asked about a node it cannot resolve to an address.
    #[error("unknown node {node:?}")]
    UnknownNode {
        /// The node name.
        node: String,
    },
    /// The manager has no replicator for this (producer node, connection index).
    #[error("no replicator for node {node:?} connection {index}")]
    NoReplicator {
        /// The producer node.
        node: String,
        /// The connection index.
        index: u32,
    },
    /// Several replicators failed in one manager operation (per producer node).
    #[error("{} replication(s) failed, first: {}", errors.len(), errors.first().map_or_else(String::new, |(n, e)| format!("{n}: {e}")))]
    Replications {
        /// (producer node, error) pairs.
        errors: Vec<(String, ReplError)>,
    },
    /// A step of a vbucket move failed.
    #[error("move of {vb}: step {step} failed")]
    Move {
        /// The vbucket being moved.
        vb: Vbid,
        /// The failed step.
        step: MoveStep,
        /// Why.
        #[source]
        source: Box<ReplError>,
    },
}

/// The peer addresses of a replicator's two halves, for error mapping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Peers {
    pub(crate) consumer: String,
    pub(crate) producer: String,
}

impl Peers {
    pub(crate) fn of(&self, side: Side) -> &str {
        match side {
            Side::Consumer => &self.consumer,
            Side::Producer => &self.producer,
        }
    }
}

impl ReplError {
    /// Maps a core reply error, adding peer addresses.
    pub(crate) fn from_setup(e: SetupError, peers: &Peers) -> ReplError {
        match e {
            SetupError::UnexpectedStreamEnd { vb, opaque, reason } => {
                ReplError::UnexpectedStreamEnd {
                    vb,
                    opaque,
                    reason,
                    peer: peers.producer.clone(),
                }
            }
            SetupError::StreamsFailed { failures } => ReplError::StreamsFailed {
                failures,
                consumer: peers.consumer.clone(),
                producer: peers.producer.clone(),
            },
            SetupError::Timeout {
                waiting_for,
                vbuckets,
                side,
            } => ReplError::Timeout {
                waiting_for: waiting_for.into(),
                vbuckets,
                peer: Some(peers.of(side).to_string()),
            },
            SetupError::ConnectionClosed { side } => ReplError::ConnectionClosed {
                side,
                peer: peers.of(side).to_string(),
                detail: None,
            },
            SetupError::Protocol(c) | SetupError::TornDown(c) => ReplError::from_conn(&c, peers),
            SetupError::Busy { in_progress } => ReplError::Busy { in_progress },
            SetupError::Shut => ReplError::Shut,
            SetupError::SupersededByShut => ReplError::Interrupted,
            SetupError::TakeoverOnOpenStream { vb } => ReplError::TakeoverOnOpenStream { vb },
            SetupError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
            } => ReplError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
                peer: peers.consumer.clone(),
            },
        }
    }

    /// Maps a core teardown reason, adding peer addresses.
    pub(crate) fn from_conn(e: &ConnError, peers: &Peers) -> ReplError {
        match e {
            ConnError::UnknownOpaque { side, opaque, .. } => ReplError::Protocol {
                side: *side,
                peer: peers.of(*side).to_string(),
                vb: None,
                opaque: Some(*opaque),
                detail: e.to_string(),
            },
            ConnError::UnexpectedStreamReq {
                expected, opaque, ..
            } => ReplError::Protocol {
                side: Side::Consumer,
                peer: peers.consumer.clone(),
                vb: Some(*expected),
                opaque: Some(*opaque),
                detail: e.to_string(),
            },
            ConnError::UnexpectedStreamEnd { vb, opaque, reason } => {
                ReplError::UnexpectedStreamEnd {
                    vb: *vb,
                    opaque: *opaque,
                    reason: *reason,
                    peer: peers.producer.clone(),
                }
            }
            ConnError::TakeoverFailed { vb, opaque, status } => ReplError::TakeoverFailed {
                vb: *vb,
                opaque: *opaque,
                status: *status,
                step: TakeoverStep::SetVbucketState,
                peer: peers.consumer.clone(),
            },
            ConnError::Timeout {
                waiting_for,
                vbuckets,
                side,
            } => ReplError::Timeout {
                waiting_for: (*waiting_for).into(),
                vbuckets: vbuckets.clone(),
                peer: Some(peers.of(*side).to_string()),
            },
            ConnError::PeerClosed { side } => ReplError::ConnectionClosed {
                side: *side,
                peer: peers.of(*side).to_string(),
                detail: None,
            },
        }
    }

    /// A kv-client failure of a node call outside the proxy.
    pub(crate) fn node(side: Side, op: &'static str, vb: Option<Vbid>, e: ClientError) -> Self {
        let peer = client_peer(&e).unwrap_or_default();
        ReplError::Node {
            side,
            peer,
            op,
            vb,
            source: Arc::new(e),
        }
    }

    /// The CLI's `kind` of this error.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ReplError::UnexpectedStreamEnd { .. } => "unexpected_stream_end",
            ReplError::StreamsFailed { failures, .. } => {
                if failures.iter().any(|f| f.op == StreamOp::AddStream) {
                    "add_stream_failed"
                } else {
                    "close_stream_failed"
                }
            }
            ReplError::TakeoverFailed {
                step: TakeoverStep::AddStream,
                ..
            } => "add_stream_failed",
            ReplError::TakeoverFailed { .. } => "takeover_failed",
            ReplError::TakeoverOnOpenStream { .. } => "takeover_on_open_stream",
            ReplError::Timeout { .. } => "timeout",
            ReplError::ConnectionClosed { .. } => "connection_closed",
            ReplError::Protocol { .. } => "protocol_error",
            ReplError::Connect(c) => {
                if c.is_timeout() {
                    "timeout"
                } else if c.is_auth() {
                    "auth"
                } else if c.is_connection_lost() {
                    "connection_closed"
                } else {
                    "protocol_error"
                }
            }
            ReplError::Node { source, .. } => match &**source {
                ClientError::Timeout { .. } => "timeout",
                ClientError::Auth { .. } => "auth",
                ClientError::Connect { .. }
                | ClientError::Io { .. }
                | ClientError::Closed { .. } => "connection_closed",
                _ => "protocol_error",
            },
            ReplError::UnexpectedStatus { .. } => "unexpected_status",
            ReplError::VbucketState { .. } => "vbucket_state",
            ReplError::Diverged { .. } => "diverged",
            ReplError::Busy { .. } => "busy",
            ReplError::Shut => "shut",
            ReplError::Interrupted => "interrupted",
            ReplError::UnknownNode { .. } => "unknown_node",
            ReplError::NoReplicator { .. } => "no_replicator",
            ReplError::Replications { errors } => match errors.first() {
                Some((_, first)) => first.kind(),
                None => "replications_failed",
            },
            ReplError::Move { source, .. } => source.kind(),
        }
    }

    /// The error object the CLI prints (issue #5, "conduit replicate"): `kind` and
    /// `message` always, plus the fields of its kind; every number is an integer
    /// (`status` is the u16 wire status, `stream_opaque` the header opaque read
    /// big-endian, `reason` the u32 STREAM_END reason).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!(self.kind()));
        m.insert("message".into(), json!(self.message()));
        self.fill_json(&mut m);
        Value::Object(m)
    }

    /// The full message: this error's text followed by its sources'.
    #[must_use]
    pub fn message(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let t = e.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = e.source();
        }
        s
    }

    fn fill_json(&self, m: &mut Map<String, Value>) {
        match self {
            ReplError::UnexpectedStreamEnd {
                vb,
                opaque,
                reason,
                peer,
            } => {
                m.insert("vbucket".into(), json!(vb.0));
                m.insert("stream_opaque".into(), json!(opaque.0));
                m.insert("reason".into(), json!(reason.to_raw()));
                m.insert("reason_name".into(), json!(reason.name()));
                m.insert("side".into(), json!("producer"));
                m.insert("peer".into(), json!(peer));
            }
            ReplError::StreamsFailed {
                failures,
                consumer,
                producer,
            } => {
                let adds = failures.iter().any(|f| f.op == StreamOp::AddStream);
                let list: Vec<Value> = failures
                    .iter()
                    .filter(|f| !adds || f.op == StreamOp::AddStream)
                    .map(failure_json)
                    .collect();
                m.insert("failures".into(), Value::Array(list));
                if adds {
                    let closes: Vec<Value> = failures
                        .iter()
                        .filter(|f| f.op == StreamOp::CloseStream)
                        .map(failure_json)
                        .collect();
                    if !closes.is_empty() {
                        m.insert("close_failures".into(), Value::Array(closes));
                    }
                }
                m.insert("consumer".into(), json!(consumer));
                m.insert("producer".into(), json!(producer));
            }
            ReplError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
                peer,
            } => {
                if *step == TakeoverStep::AddStream {
                    m.insert(
                        "failures".into(),
                        json!([{"vbucket": vb.0, "status": status.to_raw(),
                            "status_name": status.name(), "side": "consumer"}]),
                    );
                }
                m.insert("vbucket".into(), json!(vb.0));
                m.insert("opaque".into(), json!(opaque.0));
                m.insert("status".into(), json!(status.to_raw()));
                m.insert("status_name".into(), json!(status.name()));
                m.insert("step".into(), json!(step.to_string()));
                m.insert("takeover".into(), json!(true));
                m.insert("side".into(), json!("consumer"));
                m.insert("peer".into(), json!(peer));
            }
            ReplError::TakeoverOnOpenStream { vb } => {
                m.insert("vbucket".into(), json!(vb.0));
            }
            ReplError::Timeout {
                waiting_for,
                vbuckets,
                peer,
            } => {
                m.insert("waiting_for".into(), json!(waiting_for.as_str()));
                m.insert("vbuckets".into(), vbs_json(vbuckets));
                if let Some(p) = peer {
                    m.insert("peer".into(), json!(p));
                }
            }
            ReplError::ConnectionClosed { side, peer, .. } => {
                m.insert("side".into(), json!(side.as_str()));
                m.insert("peer".into(), json!(peer));
            }
            ReplError::Protocol {
                side,
                peer,
                vb,
                opaque,
                ..
            } => {
                m.insert("side".into(), json!(side.as_str()));
                m.insert("peer".into(), json!(peer));
                if let Some(vb) = vb {
                    m.insert("vbucket".into(), json!(vb.0));
                }
                if let Some(o) = opaque {
                    m.insert("opaque".into(), json!(o.0));
                }
            }
            ReplError::Connect(c) => {
                m.insert("side".into(), json!(c.side.as_str()));
                m.insert("peer".into(), json!(c.peer));
                m.insert("stage".into(), json!(c.stage.as_str()));
                if let Some(s) = c.status {
                    m.insert("status".into(), json!(s.to_raw()));
                    m.insert("status_name".into(), json!(s.name()));
                }
                if c.is_timeout() {
                    m.insert("waiting_for".into(), json!(WaitFor::Connect.as_str()));
                    m.insert("vbuckets".into(), vbs_json(&c.vbuckets));
                }
                if let ConnectCause::FeaturesRefused { missing } = &c.source {
                    let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
                    m.insert("missing_features".into(), json!(names));
                }
            }
            ReplError::Node {
                side,
                peer,
                op,
                vb,
                source,
            } => {
                m.insert("side".into(), json!(side.as_str()));
                m.insert("peer".into(), json!(peer));
                m.insert("stage".into(), json!(op));
                if let Some(vb) = vb {
                    m.insert("vbucket".into(), json!(vb.0));
                }
                if let Some(s) = source.status() {
                    m.insert("status".into(), json!(s.to_raw()));
                    m.insert("status_name".into(), json!(s.name()));
                }
                if source.is_timeout() {
                    m.insert("waiting_for".into(), json!(op));
                    m.insert(
                        "vbuckets".into(),
                        vb.map_or_else(|| json!([]), |v| json!([v.0])),
                    );
                }
            }
            ReplError::UnexpectedStatus {
                vb,
                status,
                peer,
                connection,
            } => {
                m.insert("vbucket".into(), json!(vb.0));
                m.insert("status".into(), json!(status));
                m.insert("peer".into(), json!(peer));
                m.insert("connection".into(), json!(connection));
            }
            ReplError::VbucketState {
                vb,
                peer,
                state,
                expected,
            } => {
                m.insert("vbucket".into(), json!(vb.0));
                m.insert("peer".into(), json!(peer));
                m.insert("state".into(), json!(state.as_str()));
                m.insert("expected".into(), json!(expected));
            }
            ReplError::Diverged {
                vb,
                source_peer,
                source_state,
                source_high_seqno,
                destination_peer,
                destination_state,
                destination_high_seqno,
            } => {
                m.insert("vbucket".into(), json!(vb.0));
                m.insert("source".into(), json!(source_peer));
                m.insert("source_state".into(), json!(source_state.as_str()));
                m.insert("source_high_seqno".into(), json!(source_high_seqno));
                m.insert("destination".into(), json!(destination_peer));
                m.insert(
                    "destination_state".into(),
                    json!(destination_state.as_str()),
                );
                m.insert(
                    "destination_high_seqno".into(),
                    json!(destination_high_seqno),
                );
            }
            ReplError::Busy { in_progress } => {
                m.insert("in_progress".into(), json!(in_progress.to_string()));
            }
            ReplError::Shut | ReplError::Interrupted => {}
            ReplError::UnknownNode { node } => {
                m.insert("node".into(), json!(node));
            }
            ReplError::NoReplicator { node, index } => {
                m.insert("node".into(), json!(node));
                m.insert("connection_index".into(), json!(index));
            }
            ReplError::Replications { errors } => {
                // The first error gives kind and fields (the CLI contract); errors of
                // the same kind on other connections add their vbuckets / failures.
                let Some((node, first)) = errors.first() else {
                    return;
                };
                first.fill_json(m);
                m.insert("node".into(), json!(node));
                let kind = first.kind();
                for (_, e) in errors.iter().skip(1).filter(|(_, e)| e.kind() == kind) {
                    let mut other = Map::new();
                    e.fill_json(&mut other);
                    for key in ["vbuckets", "failures"] {
                        if let (Some(Value::Array(mine)), Some(Value::Array(theirs))) =
                            (m.get_mut(key), other.remove(key))
                        {
                            mine.extend(theirs);
                        }
                    }
                }
                if errors.len() > 1 {
                    let list: Vec<Value> = errors
                        .iter()
                        .map(|(n, e)| {
                            let mut v = e.to_json();
                            if let Value::Object(o) = &mut v {
                                o.insert("node".into(), json!(n));
                            }
                            v
                        })
                        .collect();
                    m.insert("errors".into(), Value::Array(list));
                }
            }
            ReplError::Move { vb, step, source } => {
                source.fill_json(m);
                m.insert("move_step".into(), json!(step.as_str()));
                m.entry("vbucket").or_insert_with(|| json!(vb.0));
            }
        }
    }
}

fn failure_json(f: &StreamFailure) -> Value {
    json!({
        "vbucket": f.vb.0,
        "status": f.status.to_raw(),
        "status_name": f.status.name(),
        "side": f.side.as_str(),
        "op": match f.op { StreamOp::AddStream => "add_stream", StreamOp::CloseStream => "close_stream" },
        "opaque": f.opaque.0,
    })
}

fn vbs_json(vbs: &[Vbid]) -> Value {
    Value::Array(vbs.iter().map(|v| json!(v.0)).collect())
}

/// The peer a client error names.
pub(crate) fn client_peer(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Connect { peer, .. }
        | ClientError::Io { peer, .. }
        | ClientError::Timeout { peer, .. }
        | ClientError::Closed { peer, .. }
        | ClientError::Decode { peer, .. }
        | ClientError::Body { peer, .. }
        | ClientError::Status { peer, .. }
        | ClientError::Unexpected { peer, .. }
        | ClientError::Auth { peer, .. }
        | ClientError::Scram { peer, .. } => Some(peer.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peers() -> Peers {
        Peers {
            consumer: "127.0.0.1:1".into(),
            producer: "127.0.0.1:2".into(),
        }
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    }

    fn assert_common(v: &Value, kind: &str) {
        assert_eq!(v["kind"], kind, "{v}");
        assert!(v["message"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }

    #[test]
    fn unexpected_stream_end_json_names_vbucket_stream_opaque_and_reason() {
        let e = ReplError::from_setup(
            SetupError::UnexpectedStreamEnd {
                vb: Vbid(5),
                opaque: Opaque(0x0000_0007),
                reason: EndReason::StateChanged,
            },
            &peers(),
        );
        let v = e.to_json();
        assert_common(&v, "unexpected_stream_end");
        assert_eq!(v["vbucket"], 5);
        assert_eq!(v["stream_opaque"], 7);
        assert_eq!(v["reason"], 2);
        assert_eq!(v["reason_name"], "STATE_CHANGED");
        assert_eq!(v["peer"], "127.0.0.1:2");
    }

    #[test]
    fn add_stream_failed_json_lists_failures() {
        let e = ReplError::from_setup(
            SetupError::StreamsFailed {
                failures: vec![
                    StreamFailure {
                        op: StreamOp::AddStream,
                        vb: Vbid(3),
                        side: Side::Consumer,
                        opaque: Opaque(0x8000_0000),
                        status: Status::NotMyVbucket,
                    },
                    StreamFailure {
                        op: StreamOp::AddStream,
                        vb: Vbid(4),
                        side: Side::Consumer,
                        opaque: Opaque(0x8000_0001),
                        status: Status::KeyEexists,
                    },
                ],
            },
            &peers(),
        );
        let v = e.to_json();
        assert_common(&v, "add_stream_failed");
        assert_eq!(v["failures"][0]["vbucket"], 3);
        assert_eq!(v["failures"][0]["status"], 7);
        assert_eq!(v["failures"][1]["vbucket"], 4);
        assert_eq!(v["failures"][1]["status"], 2);
        assert_eq!(v["failures"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn close_stream_failed_json_lists_failures_with_side() {
        let e = ReplError::from_setup(
            SetupError::StreamsFailed {
                failures: vec![StreamFailure {
                    op: StreamOp::CloseStream,
                    vb: Vbid(9),
                    side: Side::Producer,
                    opaque: Opaque(0x8000_0003),
                    status: Status::Einval,
                }],
            },
            &peers(),
        );
        let v = e.to_json();
        assert_common(&v, "close_stream_failed");
        assert_eq!(v["failures"][0]["vbucket"], 9);
        assert_eq!(v["failures"][0]["status"], 4);
        assert_eq!(v["failures"][0]["side"], "producer");
    }

    #[test]
    fn timeout_json_names_what_and_vbuckets() {
        let e = ReplError::from_setup(
            SetupError::Timeout {
                waiting_for: WaitingFor::AddStream,
                vbuckets: vec![Vbid(1), Vbid(2)],
                side: Side::Consumer,
            },
            &peers(),
        );
        let v = e.to_json();
        assert_common(&v, "timeout");
        assert_eq!(v["waiting_for"], "add_stream");
        assert_eq!(v["vbuckets"], json!([1, 2]));
        assert_eq!(v["peer"], json!(peers().consumer));
        // Issue #8 item 9: a producer CLOSE_STREAM that is late names the producer.
        let v = ReplError::from_conn(
            &ConnError::Timeout {
                waiting_for: WaitingFor::CloseStream,
                vbuckets: vec![Vbid(3)],
                side: Side::Producer,
            },
            &peers(),
        )
        .to_json();
        assert_eq!(v["waiting_for"], "close_stream");
        assert_eq!(v["peer"], json!(peers().producer));
        for (w, s) in [
            (WaitFor::Connect, "connect"),
            (WaitFor::CloseStream, "close_stream"),
            (WaitFor::Takeover, "takeover"),
            (WaitFor::DataMove, "data_move"),
        ] {
            let v = ReplError::Timeout {
                waiting_for: w,
                vbuckets: vec![],
                peer: None,
            }
            .to_json();
            assert_common(&v, "timeout");
            assert_eq!(v["waiting_for"], s);
            assert_eq!(v["vbuckets"], json!([]));
        }
    }

    #[test]
    fn connection_closed_json_names_side() {
        let v = ReplError::from_setup(
            SetupError::ConnectionClosed {
                side: Side::Producer,
            },
            &peers(),
        )
        .to_json();
        assert_common(&v, "connection_closed");
        assert_eq!(v["side"], "producer");
        assert_eq!(v["peer"], "127.0.0.1:2");
    }

    #[test]
    fn protocol_error_json_from_unknown_opaque() {
        let v = ReplError::from_conn(
            &ConnError::UnknownOpaque {
                side: Side::Consumer,
                opcode: mcbp::Opcode::DcpAddStream,
                opaque: Opaque(0x1234),
            },
            &peers(),
        )
        .to_json();
        assert_common(&v, "protocol_error");
        assert_eq!(v["side"], "consumer");
        assert_eq!(v["opaque"], 0x1234);
    }

    #[test]
    fn protocol_error_json_from_refused_hello_and_dcp_open() {
        let hello = ReplError::Connect(ConnectError {
            side: Side::Producer,
            peer: "p".into(),
            stage: Stage::Hello,
            status: Some(Status::Success),
            vbuckets: Vec::new(),
            source: ConnectCause::FeaturesRefused {
                missing: vec![Feature::Xattr],
            },
        })
        .to_json();
        assert_common(&hello, "protocol_error");
        assert_eq!(hello["status"], 0);
        assert_eq!(hello["side"], "producer");
        assert_eq!(hello["stage"], "hello");
        assert_eq!(hello["missing_features"], json!(["XATTR"]));
        let open = ReplError::Connect(ConnectError {
            side: Side::Consumer,
            peer: "c".into(),
            stage: Stage::DcpOpen,
            status: Some(Status::Eaccess),
            vbuckets: Vec::new(),
            source: ConnectCause::Client(Arc::new(ClientError::Status {
                peer: "c".into(),
                opcode: mcbp::Opcode::DcpOpen,
                status: Status::Eaccess,
                context: String::new(),
            })),
        })
        .to_json();
        assert_common(&open, "protocol_error");
        assert_eq!(open["stage"], "dcp_open");
        assert_eq!(open["status"], 0x24);
        assert_eq!(open["side"], "consumer");
    }

    #[test]
    fn connect_timeout_json_is_a_timeout_waiting_for_connect() {
        let v = ReplError::Connect(ConnectError {
            side: Side::Producer,
            peer: "p".into(),
            stage: Stage::Connect,
            status: None,
            vbuckets: vec![Vbid(3), Vbid(7)],
            source: ConnectCause::Client(Arc::new(ClientError::Timeout {
                peer: "p".into(),
                op: "connect",
                after: Duration::from_secs(1),
            })),
        })
        .to_json();
        assert_common(&v, "timeout");
        assert_eq!(v["waiting_for"], "connect");
        assert_eq!(v["vbuckets"], json!([3, 7]));
        assert_eq!(v["stage"], "connect");
    }

    #[test]
    fn auth_json() {
        let v = ReplError::Connect(ConnectError {
            side: Side::Consumer,
            peer: "c".into(),
            stage: Stage::Sasl,
            status: Some(Status::AuthError),
            vbuckets: Vec::new(),
            source: ConnectCause::Client(Arc::new(ClientError::Auth {
                peer: "c".into(),
                user: "u".into(),
                mechanism: "PLAIN".into(),
                status: Status::AuthError,
            })),
        })
        .to_json();
        assert_common(&v, "auth");
        assert_eq!(v["stage"], "sasl");
        assert_eq!(v["status"], 0x20);
    }

    #[test]
    fn unexpected_status_json_has_string_status() {
        let v = ReplError::UnexpectedStatus {
            vb: Vbid(12),
            status: "stream_is_dead".into(),
            peer: "p".into(),
            connection: "replication:a->b:x".into(),
        }
        .to_json();
        assert_common(&v, "unexpected_status");
        assert_eq!(v["vbucket"], 12);
        assert_eq!(v["status"], "stream_is_dead");
    }

    #[test]
    fn interrupted_json() {
        let v = ReplError::from_setup(SetupError::SupersededByShut, &peers()).to_json();
        assert_common(&v, "interrupted");
        assert_eq!(keys(&v), vec!["kind", "message"]);
    }

    #[test]
    fn move_error_json_is_the_step_error_plus_the_step() {
        let v = ReplError::Move {
            vb: Vbid(3),
            step: MoveStep::DataMove,
            source: Box::new(ReplError::Timeout {
                waiting_for: WaitFor::DataMove,
                vbuckets: vec![Vbid(3)],
                peer: None,
            }),
        }
        .to_json();
        assert_common(&v, "timeout");
        assert_eq!(v["move_step"], "data_move");
        assert_eq!(v["waiting_for"], "data_move");
    }

    #[test]
    fn diverged_json_names_both_copies() {
        let v = ReplError::Move {
            vb: Vbid(5),
            step: MoveStep::Preflight,
            source: Box::new(ReplError::Diverged {
                vb: Vbid(5),
                source_peer: "a:1".into(),
                source_state: VbState::Active,
                source_high_seqno: 50,
                destination_peer: "b:2".into(),
                destination_state: VbState::Active,
                destination_high_seqno: 60,
            }),
        }
        .to_json();
        assert_common(&v, "diverged");
        assert_eq!(v["move_step"], "preflight");
        assert_eq!(v["vbucket"], 5);
        assert_eq!(v["source"], "a:1");
        assert_eq!(v["destination"], "b:2");
        assert_eq!(v["source_high_seqno"], 50);
        assert_eq!(v["destination_state"], "active");
    }

    #[test]
    fn replications_json_takes_the_first_kind_and_merges_vbuckets() {
        let t = |vbs: &[u16]| ReplError::Timeout {
            waiting_for: WaitFor::AddStream,
            vbuckets: vbs.iter().copied().map(Vbid).collect(),
            peer: None,
        };
        let v = ReplError::Replications {
            errors: vec![("a".into(), t(&[0, 2])), ("a".into(), t(&[1]))],
        }
        .to_json();
        assert_common(&v, "timeout");
        assert_eq!(v["waiting_for"], "add_stream");
        assert_eq!(v["vbuckets"], json!([0, 2, 1]));
        assert_eq!(v["node"], "a");
        assert_eq!(v["errors"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn every_number_is_an_integer() {
        fn walk(v: &Value) {
            match v {
                Value::Number(n) => assert!(n.is_u64() || n.is_i64(), "{n}"),
                Value::Array(a) => a.iter().for_each(walk),
                Value::Object(o) => o.values().for_each(walk),
                _ => {}
            }
        }
        for e in [
            ReplError::from_setup(
                SetupError::UnexpectedStreamEnd {
                    vb: Vbid(1),
                    opaque: Opaque(u32::MAX),
                    reason: EndReason::Unknown(u32::MAX),
                },
                &peers(),
            ),
            ReplError::from_setup(
                SetupError::TakeoverFailed {
                    vb: Vbid(1),
                    opaque: Opaque(1),
                    status: Status::Einval,
                    step: TakeoverStep::SetVbucketState,
                },
                &peers(),
            ),
        ] {
            walk(&e.to_json());
        }
    }
}
