//! Just enough of a node for `bench proxy`: the handshake the replication proxy runs
//! (SASL PLAIN, SELECT_BUCKET, HELLO, DCP_OPEN), one stream set-up per role, a
//! mutation sender (one frame template, seqno patched per frame, big writes) and a
//! receiver that validates every frame it counts.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use mcbp::dcp::{
    AddStream, AddStreamResponse, FailoverEntry, Mutation, StreamFlags, StreamReq,
    StreamReqOutcome, StreamReqResponse,
};
use mcbp::kv::{Hello, HelloResponse};
use mcbp::{
    Cas, Datatype, Frame, FrameDecoder, Message, Opaque, Opcode, Response, Seqno, Status, VbUuid,
    Vbid,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bytes per socket write of the sender.
const WRITE_CHUNK: usize = 256 * 1024;
/// Offset of `by_seqno` in a DCP_MUTATION: right after the 24-byte header.
const SEQNO_AT: usize = mcbp::HEADER_LEN;
/// The stream opaque the fake consumer node picks for its STREAM_REQ.
const STREAM_OPAQUE: Opaque = Opaque(0x5743_0001);

/// The mutation stream both sides agree on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flood {
    pub(crate) vb: Vbid,
    pub(crate) opaque: Opaque,
    pub(crate) frames: u64,
    pub(crate) value_size: usize,
}

impl Flood {
    /// One DCP_MUTATION with `by_seqno` 0 (seqnos start at 1 and are patched in).
    pub(crate) fn template(&self) -> BytesMut {
        let mut b = BytesMut::new();
        Mutation {
            vbucket: self.vb,
            opaque: self.opaque,
            cas: Cas(1),
            datatype: Datatype::RAW,
            by_seqno: Seqno(0),
            rev_seqno: 1,
            flags: 0,
            expiration: 0,
            lock_time: 0,
            nru: 0,
            key: Bytes::from_static(b"bench-0000000000"),
            value: Bytes::from(vec![b'v'; self.value_size]),
        }
        .encode(&mut b);
        b
    }

    /// Wire bytes of all frames.
    pub(crate) fn wire_bytes(&self) -> u64 {
        self.frames * self.template().len() as u64
    }
}

/// Sends seqnos 1..=frames as fast as the socket takes them; returns when the first
/// write started.
pub(crate) async fn send_mutations(
    w: &mut (impl AsyncWrite + Unpin),
    flood: Flood,
) -> anyhow::Result<Instant> {
    let template = flood.template();
    let per_write = (WRITE_CHUNK / template.len()).max(1) as u64;
    let mut out = BytesMut::with_capacity(per_write as usize * template.len());
    let started = Instant::now();
    let mut seqno = 1;
    while seqno <= flood.frames {
        out.clear();
        let end = (seqno + per_write).min(flood.frames + 1);
        for s in seqno..end {
            let at = out.len() + SEQNO_AT;
            out.extend_from_slice(&template);
            out[at..at + 8].copy_from_slice(&s.to_be_bytes());
        }
        w.write_all(&out).await.context("sending mutations")?;
        seqno = end;
    }
    w.flush().await?;
    Ok(started)
}

/// Receives `flood.frames` mutations, each parsed and checked (vbucket, opaque,
/// seqno one past the previous, value length); returns when the last one was read.
pub(crate) async fn receive_mutations(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    flood: Flood,
) -> anyhow::Result<Instant> {
    let decoder = FrameDecoder::default();
    let mut next = 1u64;
    while next <= flood.frames {
        let Some(frame) = decoder.decode(buf).context("corrupt frame")? else {
            buf.reserve(WRITE_CHUNK);
            if r.read_buf(buf).await? == 0 {
                bail!("closed after {} of {} mutations", next - 1, flood.frames);
            }
            continue;
        };
        check_mutation(&frame, flood, next)?;
        next += 1;
    }
    Ok(Instant::now())
}

fn check_mutation(frame: &Frame, flood: Flood, seqno: u64) -> anyhow::Result<()> {
    if !frame.is_client_request(Opcode::DcpMutation) {
        bail!(
            "expected mutation {seqno}, got {} {}",
            frame.opcode(),
            frame.opaque()
        );
    }
    let m = Mutation::parse(frame).with_context(|| format!("mutation {seqno}"))?;
    if m.vbucket != flood.vb || m.opaque != flood.opaque {
        bail!(
            "mutation {seqno} for {} opaque {}, expected {} opaque {}",
            m.vbucket,
            m.opaque,
            flood.vb,
            flood.opaque
        );
    }
    if m.by_seqno != Seqno(seqno) {
        bail!(
            "{}: seqno {} where {seqno} was due",
            m.vbucket,
            m.by_seqno.0
        );
    }
    if m.value.len() != flood.value_size {
        bail!(
            "mutation {seqno}: {} value bytes, expected {}",
            m.value.len(),
            flood.value_size
        );
    }
    Ok(())
}

/// A fake node's connection: socket, read buffer, decoder.
struct Conn {
    sock: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Conn {
    async fn accept(listener: &TcpListener) -> anyhow::Result<Conn> {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            buf: BytesMut::with_capacity(WRITE_CHUNK),
            decoder: FrameDecoder::default(),
        })
    }

    async fn read(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf)? {
                return Ok(f);
            }
            if self.sock.read_buf(&mut self.buf).await? == 0 {
                bail!("proxy closed the connection");
            }
        }
    }

    async fn send(&mut self, m: &impl Message) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        Ok(self.sock.write_all(&out).await?)
    }

    /// Answers the proxy half's set-up (§4.2) up to and including DCP_OPEN, granting
    /// every HELLO feature requested.
    async fn handshake(&mut self) -> anyhow::Result<()> {
        loop {
            let f = self.read().await?;
            match f.opcode() {
                Opcode::SaslAuth | Opcode::SelectBucket => {
                    self.send(&Response::to_request(&f, Status::Success))
                        .await?;
                }
                Opcode::Hello => {
                    let hello = Hello::parse(&f)?;
                    self.send(&HelloResponse {
                        opaque: hello.opaque,
                        status: Status::Success,
                        features: hello.features,
                    })
                    .await?;
                }
                Opcode::DcpOpen => {
                    return self.send(&Response::to_request(&f, Status::Success)).await;
                }
                other => bail!("unexpected {other} during the handshake"),
            }
        }
    }
}

/// The producer node: on STREAM_REQ answers SUCCESS with a one-entry failover log,
/// then floods the stream. Returns when sending started, and the socket, which must
/// stay open until the receiver is done (a closed half tears the proxy pair down).
pub(crate) async fn producer_node(
    listener: TcpListener,
    frames: u64,
    value_size: usize,
) -> anyhow::Result<(Instant, TcpStream)> {
    let mut c = Conn::accept(&listener).await?;
    c.handshake().await?;
    let f = c.read().await?;
    let req =
        StreamReq::parse(&f).with_context(|| format!("expected STREAM_REQ, got {}", f.opcode()))?;
    let failover_log = vec![FailoverEntry {
        vb_uuid: VbUuid(0xbe7c),
        seqno: Seqno(0),
    }];
    c.send(&StreamReqResponse {
        opaque: req.opaque,
        outcome: StreamReqOutcome::Success { failover_log },
    })
    .await?;
    let flood = Flood {
        vb: req.vbucket,
        opaque: req.opaque,
        frames,
        value_size,
    };
    let started = send_mutations(&mut c.sock, flood).await?;
    Ok((started, c.sock))
}

/// The consumer node: on ADD_STREAM sends its STREAM_REQ (stream opaque W) through
/// the proxy, waits for the answer, answers the ADD_STREAM with W, then receives and
/// validates the flood. Returns when the last mutation was read, and the socket (kept
/// open so that the proxy pair is not torn down before it is stopped).
pub(crate) async fn consumer_node(
    listener: TcpListener,
    frames: u64,
    value_size: usize,
) -> anyhow::Result<(Instant, TcpStream)> {
    let mut c = Conn::accept(&listener).await?;
    c.handshake().await?;
    let f = c.read().await?;
    let add =
        AddStream::parse(&f).with_context(|| format!("expected ADD_STREAM, got {}", f.opcode()))?;
    c.send(&StreamReq {
        vbucket: add.vbucket,
        opaque: STREAM_OPAQUE,
        flags: StreamFlags(0),
        start: Seqno(0),
        end: Seqno(u64::MAX),
        vb_uuid: VbUuid(0),
        snap_start: Seqno(0),
        snap_end: Seqno(0),
        value: Bytes::new(),
    })
    .await?;
    let f = c.read().await?;
    let resp = StreamReqResponse::parse(&f)
        .with_context(|| format!("expected the STREAM_REQ answer, got {}", f.opcode()))?;
    if resp.opaque != STREAM_OPAQUE || !matches!(resp.outcome, StreamReqOutcome::Success { .. }) {
        bail!("stream request answered {resp:?}");
    }
    c.send(&AddStreamResponse {
        opaque: add.opaque,
        status: Status::Success,
        stream_opaque: Some(STREAM_OPAQUE),
    })
    .await?;
    let flood = Flood {
        vb: add.vbucket,
        opaque: STREAM_OPAQUE,
        frames,
        value_size,
    };
    let done = receive_mutations(&mut c.sock, &mut c.buf, flood).await?;
    Ok((done, c.sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(frames: u64) -> Flood {
        Flood {
            vb: Vbid(5),
            opaque: Opaque(9),
            frames,
            value_size: 33,
        }
    }

    #[tokio::test]
    async fn patched_frames_parse_as_consecutive_mutations() -> anyhow::Result<()> {
        let mut wire = Vec::new();
        send_mutations(&mut wire, flood(2000)).await?;
        assert_eq!(wire.len() as u64, flood(2000).wire_bytes());
        receive_mutations(&mut &wire[..], &mut BytesMut::new(), flood(2000)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_gap_in_seqnos_is_rejected() -> anyhow::Result<()> {
        let mut wire = Vec::new();
        send_mutations(&mut wire, flood(3)).await?;
        let len = flood(1).template().len();
        wire.drain(len..2 * len); // drop seqno 2
        let err = receive_mutations(&mut &wire[..], &mut BytesMut::new(), flood(3))
            .await
            .expect_err("gap");
        assert!(err.to_string().contains("seqno 3 where 2 was due"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_truncated_stream_is_not_counted_whole() -> anyhow::Result<()> {
        let mut wire = Vec::new();
        send_mutations(&mut wire, flood(3)).await?;
        wire.truncate(wire.len() - 1);
        let err = receive_mutations(&mut &wire[..], &mut BytesMut::new(), flood(3))
            .await
            .expect_err("truncated");
        assert!(err.to_string().contains("after 2 of 3"), "{err}");
        Ok(())
    }
}
