//! The replication layer's error JSON (repl `ReplError` objects), carried unchanged
//! in the agent's `{"ok":false,"error":…}` answers (cluster.md §2.6).
//!
//! A copy of `cli/src/replicate_json.rs` (the `conduit replicate` contract): the
//! orchestrator cannot depend on `cli`. Both must produce the same objects; moving
//! this into `replication` would leave one copy.

use kv_client::ClientError;
use mcbp::{Status, Vbid};
use replication::core::{StreamFailure, StreamOp, TakeoverStep};
use replication::{ConnectCause, ConnectError, ReplError, WaitFor};
use serde::Serialize;

/// The `kind` of an error object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// The producer ended a stream before it was established.
    UnexpectedStreamEnd,
    /// ADD_STREAM commands failed (also a takeover's ADD_STREAM).
    AddStreamFailed,
    /// Only CLOSE_STREAM commands failed.
    CloseStreamFailed,
    /// The consumer refused a takeover's SET_VBUCKET_STATE.
    TakeoverFailed,
    /// A bounded wait expired.
    Timeout,
    /// A socket closed or failed, or a node was unreachable.
    ConnectionClosed,
    /// A node broke the protocol or refused a handshake step.
    ProtocolError,
    /// SASL refused the credentials.
    Auth,
    /// `dcp-vbtakeover` reported a status meaning the stream is not there.
    UnexpectedStatus,
    /// A vbucket is not in the state an operation needs.
    VbucketState,
    /// The two copies of a vbucket diverged.
    Diverged,
    /// Another operation is in flight on the replicator.
    Busy,
    /// The replicator is shut.
    Shut,
    /// Stopped by a signal or by the replicator's owner.
    Interrupted,
    /// A node name without an address.
    UnknownNode,
    /// Several replications failed, none reported.
    ReplicationsFailed,
}

/// `status` is a wire status, except in `unexpected_status`, where it is the
/// `dcp-vbtakeover` stat's string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum StatusJson {
    /// The u16 wire status.
    Wire(u16),
    /// The stat's status string.
    Stat(String),
}

/// One failed stream command (`failures`, `close_failures`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FailureJson {
    vbucket: u16,
    status: u16,
    status_name: &'static str,
    side: &'static str,
    /// `add_stream` or `close_stream`; absent for a takeover's ADD_STREAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opaque: Option<u32>,
}

impl From<&StreamFailure> for FailureJson {
    fn from(f: &StreamFailure) -> Self {
        FailureJson {
            vbucket: f.vb.0,
            status: f.status.to_raw(),
            status_name: f.status.name(),
            side: f.side.as_str(),
            op: Some(match f.op {
                StreamOp::AddStream => "add_stream",
                StreamOp::CloseStream => "close_stream",
            }),
            opaque: Some(f.opaque.0),
        }
    }
}

/// The error object of an `{"ok":false,"error":…}` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ErrorJson {
    kind: Kind,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    vbucket: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_opaque: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opaque: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    takeover: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vbuckets: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_features: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<Vec<FailureJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_failures: Option<Vec<FailureJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_high_seqno: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_high_seqno: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// A move's failed step.
    #[serde(skip_serializing_if = "Option::is_none")]
    move_step: Option<&'static str>,
    /// Every failed replication, when several failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<ErrorJson>>,
}

fn vbs(v: &[Vbid]) -> Vec<u16> {
    v.iter().map(|v| v.0).collect()
}

/// The kind of a client error of a node call or a connection set-up step.
fn client_kind(c: &ClientError) -> Kind {
    match c {
        ClientError::Timeout { .. } => Kind::Timeout,
        ClientError::Auth { .. } => Kind::Auth,
        ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. } => {
            Kind::ConnectionClosed
        }
        _ => Kind::ProtocolError,
    }
}

fn connect_kind(c: &ConnectError) -> Kind {
    if c.is_timeout() {
        Kind::Timeout
    } else if c.is_auth() {
        Kind::Auth
    } else if c.is_connection_lost() {
        Kind::ConnectionClosed
    } else {
        Kind::ProtocolError
    }
}

/// The `kind` of an error.
pub(crate) fn kind(e: &ReplError) -> Kind {
    match e {
        ReplError::UnexpectedStreamEnd { .. } => Kind::UnexpectedStreamEnd,
        ReplError::StreamsFailed { failures, .. } => {
            if failures.iter().any(|f| f.op == StreamOp::AddStream) {
                Kind::AddStreamFailed
            } else {
                Kind::CloseStreamFailed
            }
        }
        ReplError::TakeoverFailed {
            step: TakeoverStep::AddStream,
            ..
        } => Kind::AddStreamFailed,
        ReplError::TakeoverFailed { .. } => Kind::TakeoverFailed,
        ReplError::Timeout { .. } => Kind::Timeout,
        ReplError::ConnectionClosed { .. } => Kind::ConnectionClosed,
        ReplError::Protocol { .. } => Kind::ProtocolError,
        ReplError::Connect(c) => connect_kind(c),
        ReplError::Node { source, .. } => client_kind(source),
        ReplError::UnexpectedStatus { .. } => Kind::UnexpectedStatus,
        ReplError::VbucketState { .. } => Kind::VbucketState,
        ReplError::Diverged { .. } => Kind::Diverged,
        ReplError::Busy { .. } => Kind::Busy,
        ReplError::Shut => Kind::Shut,
        ReplError::Interrupted => Kind::Interrupted,
        ReplError::UnknownNode { .. } => Kind::UnknownNode,
        ReplError::Replications { errors } => match errors.first() {
            Some((_, first)) => kind(first),
            None => Kind::ReplicationsFailed,
        },
        ReplError::Move { source, .. } => kind(source),
    }
}

impl ErrorJson {
    /// Only `kind` and `message`.
    fn bare(kind: Kind, message: String) -> ErrorJson {
        ErrorJson {
            kind,
            message,
            vbucket: None,
            stream_opaque: None,
            reason: None,
            reason_name: None,
            side: None,
            peer: None,
            opaque: None,
            status: None,
            status_name: None,
            step: None,
            takeover: None,
            waiting_for: None,
            vbuckets: None,
            stage: None,
            missing_features: None,
            failures: None,
            close_failures: None,
            consumer: None,
            producer: None,
            connection: None,
            state: None,
            expected: None,
            source: None,
            source_state: None,
            source_high_seqno: None,
            destination: None,
            destination_state: None,
            destination_high_seqno: None,
            in_progress: None,
            node: None,
            move_step: None,
            errors: None,
        }
    }

    fn set_status(&mut self, s: Status) {
        self.status = Some(StatusJson::Wire(s.to_raw()));
        self.status_name = Some(s.name());
    }

    /// `kind` and `message` of `e`, and the fields of `e`'s variant.
    fn of(e: &ReplError) -> ErrorJson {
        let mut j = ErrorJson::bare(kind(e), e.message());
        match e {
            ReplError::UnexpectedStreamEnd {
                vb,
                opaque,
                reason,
                peer,
            } => {
                j.vbucket = Some(vb.0);
                j.stream_opaque = Some(opaque.0);
                j.reason = Some(reason.to_raw());
                j.reason_name = Some(reason.name());
                j.side = Some("producer");
                j.peer = Some(peer.clone());
            }
            ReplError::StreamsFailed {
                failures,
                consumer,
                producer,
            } => {
                // An add_stream_failed lists the ADD_STREAM failures, and any
                // CLOSE_STREAM failures of the same set-up apart.
                let adds = failures.iter().any(|f| f.op == StreamOp::AddStream);
                let of_op = |op: StreamOp| -> Vec<FailureJson> {
                    failures
                        .iter()
                        .filter(|f| f.op == op)
                        .map(FailureJson::from)
                        .collect()
                };
                if adds {
                    j.failures = Some(of_op(StreamOp::AddStream));
                    let closes = of_op(StreamOp::CloseStream);
                    if !closes.is_empty() {
                        j.close_failures = Some(closes);
                    }
                } else {
                    j.failures = Some(failures.iter().map(FailureJson::from).collect());
                }
                j.consumer = Some(consumer.clone());
                j.producer = Some(producer.clone());
            }
            ReplError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
                peer,
            } => {
                if *step == TakeoverStep::AddStream {
                    j.failures = Some(vec![FailureJson {
                        vbucket: vb.0,
                        status: status.to_raw(),
                        status_name: status.name(),
                        side: "consumer",
                        op: None,
                        opaque: None,
                    }]);
                }
                j.vbucket = Some(vb.0);
                j.opaque = Some(opaque.0);
                j.set_status(*status);
                j.step = Some(step.to_string());
                j.takeover = Some(true);
                j.side = Some("consumer");
                j.peer = Some(peer.clone());
            }
            ReplError::Timeout {
                waiting_for,
                vbuckets,
                peer,
            } => {
                j.waiting_for = Some(waiting_for.as_str());
                j.vbuckets = Some(vbs(vbuckets));
                j.peer.clone_from(peer);
            }
            ReplError::ConnectionClosed { side, peer, .. } => {
                j.side = Some(side.as_str());
                j.peer = Some(peer.clone());
            }
            ReplError::Protocol {
                side,
                peer,
                vb,
                opaque,
                ..
            } => {
                j.side = Some(side.as_str());
                j.peer = Some(peer.clone());
                j.vbucket = vb.map(|v| v.0);
                j.opaque = opaque.map(|o| o.0);
            }
            ReplError::Connect(c) => {
                j.side = Some(c.side.as_str());
                j.peer = Some(c.peer.clone());
                j.stage = Some(c.stage.as_str());
                if let Some(s) = c.status {
                    j.set_status(s);
                }
                if c.is_timeout() {
                    j.waiting_for = Some(WaitFor::Connect.as_str());
                    j.vbuckets = Some(vbs(&c.vbuckets));
                }
                if let ConnectCause::FeaturesRefused { missing } = &c.source {
                    j.missing_features = Some(missing.iter().map(|f| f.name()).collect());
                }
            }
            ReplError::Node {
                side,
                peer,
                op,
                vb,
                source,
            } => {
                j.side = Some(side.as_str());
                j.peer = Some(peer.clone());
                j.stage = Some(op);
                j.vbucket = vb.map(|v| v.0);
                if let Some(s) = source.status() {
                    j.set_status(s);
                }
                if source.is_timeout() {
                    j.waiting_for = Some(op);
                    j.vbuckets = Some(vb.iter().map(|v| v.0).collect());
                }
            }
            ReplError::UnexpectedStatus {
                vb,
                status,
                peer,
                connection,
            } => {
                j.vbucket = Some(vb.0);
                j.status = Some(StatusJson::Stat(status.clone()));
                j.peer = Some(peer.clone());
                j.connection = Some(connection.clone());
            }
            ReplError::VbucketState {
                vb,
                peer,
                state,
                expected,
            } => {
                j.vbucket = Some(vb.0);
                j.peer = Some(peer.clone());
                j.state = Some(state.as_str());
                j.expected = Some(expected);
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
                j.vbucket = Some(vb.0);
                j.source = Some(source_peer.clone());
                j.source_state = Some(source_state.as_str());
                j.source_high_seqno = Some(*source_high_seqno);
                j.destination = Some(destination_peer.clone());
                j.destination_state = Some(destination_state.as_str());
                j.destination_high_seqno = Some(*destination_high_seqno);
            }
            ReplError::Busy { in_progress } => j.in_progress = Some(in_progress.to_string()),
            ReplError::Shut | ReplError::Interrupted => {}
            ReplError::UnknownNode { node } => j.node = Some(node.clone()),
            ReplError::Replications { errors } => {
                // The first error gives kind and fields; errors of the same kind on
                // other connections add their vbuckets / failures.
                let Some((node, first)) = errors.first() else {
                    return j;
                };
                let message = j.message;
                j = ErrorJson::of(first);
                j.message = message;
                j.node = Some(node.clone());
                for (_, e) in errors.iter().skip(1).filter(|(_, e)| kind(e) == j.kind) {
                    let other = ErrorJson::of(e);
                    if let (Some(mine), Some(theirs)) = (&mut j.vbuckets, other.vbuckets) {
                        mine.extend(theirs);
                    }
                    if let (Some(mine), Some(theirs)) = (&mut j.failures, other.failures) {
                        mine.extend(theirs);
                    }
                }
                if errors.len() > 1 {
                    j.errors = Some(
                        errors
                            .iter()
                            .map(|(n, e)| {
                                let mut one = ErrorJson::of(e);
                                one.node = Some(n.clone());
                                one
                            })
                            .collect(),
                    );
                }
            }
            ReplError::Move { vb, step, source } => {
                let message = j.message;
                j = ErrorJson::of(source);
                j.message = message;
                j.move_step = Some(step.as_str());
                j.vbucket.get_or_insert(vb.0);
            }
        }
        j
    }
}

impl From<&ReplError> for ErrorJson {
    fn from(e: &ReplError) -> Self {
        ErrorJson::of(e)
    }
}

/// `e` as the replication layer's error object.
pub(crate) fn to_json(e: &ReplError) -> serde_json::Value {
    serde_json::to_value(ErrorJson::from(e))
        .unwrap_or_else(|_| serde_json::json!({"kind": "internal", "message": e.message()}))
}
