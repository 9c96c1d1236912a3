//! The producer half's decisions (`replication-layer.md` §6) and the fast-path
//! routing of both sockets (§2.4).
//!
//! The producer half has no state: for each frame read from the producer node it
//! decides whether the consumer half must be told (and whether the frame is
//! forwarded to the consumer node). Readers first call [`route_from_producer`] /
//! [`route_from_consumer`], which look at `(magic, opcode)` only, so the bulk of
//! the traffic (mutations, markers, noops, acks) never reaches the replicator
//! actor. Frames routed to the core must be handed to it *before* the partner
//! writer sees them (register-before-forward, §2.4).

use mcbp::dcp::EndReason;
use mcbp::{Frame, Magic, Opaque, Opcode, VbState};
use tracing::debug;

use super::consumer_conn::Event;

/// Where a reader sends a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Forward the bytes to the partner socket unchanged; the core need not see it.
    Forward,
    /// The core must see it first (it decides about forwarding, or the producer
    /// half notifies the consumer half before forwarding).
    Core,
}

fn is_client_request(magic: Magic) -> bool {
    matches!(magic, Magic::ClientRequest | Magic::AltClientRequest)
}

fn is_client_response(magic: Magic) -> bool {
    matches!(magic, Magic::ClientResponse | Magic::AltClientResponse)
}

/// Fast path for frames read from the **consumer** node (§5.3): ADD_STREAM,
/// CLOSE_STREAM and SET_VBUCKET_STATE answers and STREAM_REQ requests go to
/// [`ConsumerConn`](super::ConsumerConn) as [`Event::FromConsumer`]; everything
/// else is forwarded to the producer. Once
/// [`ConsumerConn::forwards_consumer_traffic`](super::ConsumerConn::forwards_consumer_traffic)
/// is false (shut) the replicator stops the pair at once and a deliberate stop
/// forwards nothing more, which is how the shell honours it.
#[must_use]
pub fn route_from_consumer(magic: Magic, opcode: Opcode) -> Route {
    match opcode {
        Opcode::DcpAddStream | Opcode::DcpCloseStream | Opcode::DcpSetVbucketState
            if is_client_response(magic) =>
        {
            Route::Core
        }
        Opcode::DcpStreamReq if is_client_request(magic) => Route::Core,
        _ => Route::Forward,
    }
}

/// Fast path for frames read from the **producer** node (§6): SET_VBUCKET_STATE
/// and STREAM_END requests and CLOSE_STREAM answers need
/// [`classify_from_producer`]; everything else is forwarded to the consumer.
#[must_use]
pub fn route_from_producer(magic: Magic, opcode: Opcode) -> Route {
    match opcode {
        Opcode::DcpSetVbucketState | Opcode::DcpStreamEnd if is_client_request(magic) => {
            Route::Core
        }
        Opcode::DcpCloseStream if is_client_response(magic) => Route::Core,
        _ => Route::Forward,
    }
}

/// What to do with a frame read from the producer node (§6 table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProducerDecision {
    /// Forward to the consumer node; nothing to tell.
    Forward,
    /// Queue the event for the consumer half, *then* forward the frame
    /// (SET_VBUCKET_STATE, STREAM_END).
    NotifyThenForward(Event),
    /// Queue the event and drop the frame: it answers our own CLOSE_STREAM (every
    /// CLOSE_STREAM answer on the producer socket is ours; the consumer node never
    /// sends CLOSE_STREAM to the producer).
    NotifyAndDrop(Event),
}

/// Classifies one frame read from the producer node.
///
/// Total: malformed bodies never fail. A STREAM_END without 4 bytes of extras is
/// still reported (its vbucket and opaque are in the header; the reason becomes
/// `EndReason::Unknown(u32::MAX)`), because the consumer half must not miss the end
/// of a stream. A SET_VBUCKET_STATE with an invalid state byte is only forwarded:
/// the consumer node refuses it (EINVAL) and that refusal fails the takeover.
#[must_use]
pub fn classify_from_producer(frame: &Frame) -> ProducerDecision {
    if route_from_producer(frame.magic(), frame.opcode()) == Route::Forward {
        return ProducerDecision::Forward;
    }
    match frame.opcode() {
        Opcode::DcpStreamEnd => {
            let reason = match frame.extras() {
                [a, b, c, d] => EndReason::from_raw(u32::from_be_bytes([*a, *b, *c, *d])),
                other => {
                    debug!(vb = %frame.vbucket(), extras_len = other.len(), "malformed stream end");
                    EndReason::Unknown(u32::MAX)
                }
            };
            ProducerDecision::NotifyThenForward(Event::ProducerStreamEnd {
                vb: frame.vbucket(),
                opaque: frame.opaque(),
                reason,
            })
        }
        Opcode::DcpSetVbucketState => match frame.extras() {
            [s] => match VbState::from_u8(*s) {
                Some(state) => {
                    ProducerDecision::NotifyThenForward(Event::ProducerSetVbucketState {
                        vb: frame.vbucket(),
                        opaque: frame.opaque(),
                        state,
                    })
                }
                None => {
                    debug!(vb = %frame.vbucket(), state = *s, "set-vbucket-state with invalid state");
                    ProducerDecision::Forward
                }
            },
            other => {
                debug!(vb = %frame.vbucket(), extras_len = other.len(), "malformed set-vbucket-state");
                ProducerDecision::Forward
            }
        },
        Opcode::DcpCloseStream => {
            ProducerDecision::NotifyAndDrop(Event::ProducerCloseStreamResponse {
                opaque: frame.opaque(),
                status: frame.status(),
            })
        }
        _ => ProducerDecision::Forward,
    }
}

/// The event for a producer CLOSE_STREAM answer given only its header fields
/// (convenience for shells that do not keep the frame).
#[must_use]
pub fn producer_close_answer(opaque: Opaque, status: mcbp::Status) -> Event {
    Event::ProducerCloseStreamResponse { opaque, status }
}

#[cfg(test)]
mod tests {
    use mcbp::dcp::{SetVbucketState, StreamEnd};
    use mcbp::{FrameSpec, Message, Response, Status, Vbid};

    use super::*;

    #[test]
    fn producer_set_vbucket_state_is_notified_then_forwarded() {
        let f = SetVbucketState {
            vbucket: Vbid(3),
            opaque: Opaque(9),
            state: VbState::Pending,
        }
        .to_frame();
        assert_eq!(route_from_producer(f.magic(), f.opcode()), Route::Core);
        assert_eq!(
            classify_from_producer(&f),
            ProducerDecision::NotifyThenForward(Event::ProducerSetVbucketState {
                vb: Vbid(3),
                opaque: Opaque(9),
                state: VbState::Pending
            })
        );
    }

    #[test]
    fn producer_stream_end_is_notified_then_forwarded() {
        let f = StreamEnd {
            vbucket: Vbid(4),
            opaque: Opaque(17),
            reason: EndReason::StateChanged,
        }
        .to_frame();
        assert_eq!(
            classify_from_producer(&f),
            ProducerDecision::NotifyThenForward(Event::ProducerStreamEnd {
                vb: Vbid(4),
                opaque: Opaque(17),
                reason: EndReason::StateChanged
            })
        );
    }

    #[test]
    fn malformed_producer_stream_end_is_still_notified() {
        let f = FrameSpec::request(Opcode::DcpStreamEnd)
            .vbucket(Vbid(4))
            .opaque(Opaque(1))
            .to_frame();
        assert_eq!(
            classify_from_producer(&f),
            ProducerDecision::NotifyThenForward(Event::ProducerStreamEnd {
                vb: Vbid(4),
                opaque: Opaque(1),
                reason: EndReason::Unknown(u32::MAX)
            })
        );
    }

    #[test]
    fn invalid_set_vbucket_state_is_only_forwarded() {
        let f = FrameSpec::request(Opcode::DcpSetVbucketState)
            .vbucket(Vbid(4))
            .extras(&[9])
            .to_frame();
        assert_eq!(classify_from_producer(&f), ProducerDecision::Forward);
    }

    #[test]
    fn producer_close_stream_answer_is_notified_and_dropped() {
        let f = Response::status_only(
            Opcode::DcpCloseStream,
            Opaque(0x8000_0001),
            Status::KeyEnoent,
        )
        .to_frame();
        assert_eq!(
            classify_from_producer(&f),
            ProducerDecision::NotifyAndDrop(producer_close_answer(
                Opaque(0x8000_0001),
                Status::KeyEnoent
            ))
        );
    }

    #[test]
    fn other_producer_frames_are_forwarded() {
        for f in [
            Response::status_only(Opcode::DcpStreamReq, Opaque(1), Status::NotMyVbucket).to_frame(),
            FrameSpec::request(Opcode::DcpNoop)
                .opaque(Opaque(5))
                .to_frame(),
            // A CLOSE_STREAM *request* from the producer is not ours to intercept.
            FrameSpec::request(Opcode::DcpCloseStream).to_frame(),
            // A STREAM_END *response* neither.
            Response::status_only(Opcode::DcpStreamEnd, Opaque(1), Status::KeyEnoent).to_frame(),
            FrameSpec::request(Opcode::DcpMutation)
                .magic(Magic::Unknown(0x42))
                .to_frame(),
        ] {
            assert_eq!(
                classify_from_producer(&f),
                ProducerDecision::Forward,
                "{f:?}"
            );
        }
    }

    #[test]
    fn consumer_routing_sends_only_the_state_machine_frames_to_the_core() {
        use Magic::{AltClientResponse, ClientRequest, ClientResponse};
        let core = [
            (ClientResponse, Opcode::DcpAddStream),
            (AltClientResponse, Opcode::DcpAddStream),
            (ClientResponse, Opcode::DcpCloseStream),
            (ClientResponse, Opcode::DcpSetVbucketState),
            (ClientRequest, Opcode::DcpStreamReq),
        ];
        for (m, op) in core {
            assert_eq!(route_from_consumer(m, op), Route::Core, "{m} {op}");
        }
        let fwd = [
            (ClientRequest, Opcode::DcpControl),
            (ClientRequest, Opcode::DcpBufferAcknowledgement),
            (ClientResponse, Opcode::DcpNoop),
            (ClientResponse, Opcode::DcpSnapshotMarker),
            (ClientRequest, Opcode::DcpSeqnoAcknowledged),
            (ClientResponse, Opcode::DcpStreamReq),
            (ClientRequest, Opcode::DcpAddStream),
            (Magic::Unknown(0x42), Opcode::DcpAddStream),
        ];
        for (m, op) in fwd {
            assert_eq!(route_from_consumer(m, op), Route::Forward, "{m} {op}");
        }
    }
}
