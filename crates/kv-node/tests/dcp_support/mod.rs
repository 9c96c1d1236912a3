//! DCP test helpers: open producer/consumer connections on real nodes and splice
//! them with testkit's frame relay (the real proxy is the replication layer's job).
//! The test injects ADD_STREAM / CLOSE_STREAM and receives their answers; every
//! frame that passes is logged for assertions. The node fixture and the bounded
//! waits are testkit's; this adds the DCP splice and item comparisons these tests
//! need.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kv_engine::Item;
use mcbp::dcp::{AddStream, AddStreamResponse, OpenFlags, StreamFlags};
use mcbp::kv::Feature;
use mcbp::{Frame, FrameSpec, Message, Opaque, Opcode, Seqno, Vbid};
use testkit::node::{TestNode, BOUND};
use testkit::tap::{self, Relay, Rule, Verdict};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

pub use testkit::wait_until;

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Consumer node -> producer node.
    ToProducer,
    /// Producer node -> consumer node.
    ToConsumer,
}

/// Opens an admin DCP connection (HELLO JSON/XATTR/SNAPPY like the proxy) and
/// returns its socket and any bytes read past the DCP_OPEN answer.
pub async fn dcp_conn(
    node: &TestNode,
    bucket: &str,
    name: &str,
    producer: bool,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut c = node.client(bucket).await?;
    c.hello(
        "dcp-test",
        &[Feature::Json, Feature::Xattr, Feature::Snappy],
    )
    .await?;
    if producer {
        c.dcp_open(name, OpenFlags::REPLICATION_PRODUCER, b"")
            .await?;
    } else {
        c.dcp_open(
            name,
            OpenFlags::REPLICATION_CONSUMER,
            br#"{"consumer_name":"test"}"#,
        )
        .await?;
    }
    Ok(c.into_parts())
}

/// A running splice between a consumer node's and a producer node's DCP connection:
/// a testkit relay (consumer node as the connecting side, producer node as the node)
/// whose rule diverts the answers to the test's own ADD_STREAM / CLOSE_STREAM.
pub struct Splice {
    relay: Relay,
    answers: mpsc::UnboundedReceiver<(Dir, Frame)>,
}

impl Dir {
    fn of(d: tap::Dir) -> Dir {
        match d {
            tap::Dir::ToNode => Dir::ToProducer,
            tap::Dir::FromNode => Dir::ToConsumer,
        }
    }

    fn tap(self) -> tap::Dir {
        match self {
            Dir::ToProducer => tap::Dir::ToNode,
            Dir::ToConsumer => tap::Dir::FromNode,
        }
    }
}

impl Splice {
    /// Opens both connections (same name, like ns_server) and starts pumping.
    pub async fn open(
        producer: &TestNode,
        consumer: &TestNode,
        bucket: &str,
        name: &str,
    ) -> anyhow::Result<Splice> {
        let (p, pbuf) = dcp_conn(producer, bucket, name, true).await?;
        let (c, cbuf) = dcp_conn(consumer, bucket, name, false).await?;
        Ok(Splice::start(c, cbuf, p, pbuf))
    }

    pub fn start(
        consumer: TcpStream,
        cbuf: BytesMut,
        producer: TcpStream,
        pbuf: BytesMut,
    ) -> Splice {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let rule: Rule = Arc::new(move |d, f| {
            let dir = Dir::of(d);
            let ours = f.is_response()
                && matches!(f.opcode(), Opcode::DcpAddStream | Opcode::DcpCloseStream)
                && (dir == Dir::ToProducer || f.opcode() == Opcode::DcpCloseStream);
            if ours {
                let _ = answers_tx.send((dir, f.clone()));
                Verdict::Swallow
            } else {
                Verdict::Forward
            }
        });
        Splice {
            relay: Relay::start(consumer, cbuf, producer, pbuf, rule),
            answers,
        }
    }

    /// Stops the pump and waits until it is gone, so nothing more is forwarded.
    pub async fn close(self) {
        self.relay.close().await;
    }

    /// Whether the pump stopped (one of the sockets closed).
    pub fn closed(&self) -> bool {
        self.relay.closed()
    }

    pub fn send_add_stream(&self, vb: u16, flags: u32) {
        let f = AddStream {
            vbucket: Vbid(vb),
            opaque: Opaque(u32::from(vb)),
            flags: StreamFlags(flags),
        }
        .to_frame();
        self.relay.inject(Dir::ToConsumer.tap(), f.into_bytes());
    }

    pub fn send_close_stream(&self, dir: Dir, vb: u16) {
        let f = FrameSpec::request(Opcode::DcpCloseStream)
            .vbucket(Vbid(vb))
            .opaque(Opaque(0xc105e000 + u32::from(vb)))
            .to_frame();
        self.relay.inject(dir.tap(), f.into_bytes());
    }

    /// The next intercepted answer (ADD_STREAM or CLOSE_STREAM), bounded by `within`.
    pub async fn answer(&mut self, within: Duration) -> Option<(Dir, Frame)> {
        timeout(within, self.answers.recv()).await.ok().flatten()
    }

    /// Sends ADD_STREAM for every vb and collects the answers, by vbucket.
    pub async fn add_streams(
        &mut self,
        vbs: impl IntoIterator<Item = u16>,
        flags: u32,
    ) -> anyhow::Result<BTreeMap<u16, AddStreamResponse>> {
        let vbs: Vec<u16> = vbs.into_iter().collect();
        for vb in &vbs {
            self.send_add_stream(*vb, flags);
        }
        let mut got = BTreeMap::new();
        while got.len() < vbs.len() {
            let (_, f) = self
                .answer(BOUND)
                .await
                .ok_or_else(|| anyhow::anyhow!("ADD_STREAM answers missing: got {got:?}"))?;
            if f.opcode() == Opcode::DcpAddStream {
                let a = AddStreamResponse::parse(&f)?;
                got.insert(u16::try_from(a.opaque.0)?, a);
            }
        }
        Ok(got)
    }

    /// Frames logged so far that match.
    pub fn frames(&self, f: impl Fn(Dir, &Frame) -> bool) -> Vec<(Dir, Frame)> {
        self.relay
            .frames(|d, fr| f(Dir::of(d), fr))
            .into_iter()
            .map(|(d, fr)| (Dir::of(d), fr))
            .collect()
    }
}

/// Every stored version of a vbucket (items and tombstones), by seqno.
pub fn items(node: &TestNode, bucket: &str, vb: u16) -> Vec<Item> {
    node.items(bucket, Vbid(vb))
}

pub fn high_seqno(node: &TestNode, bucket: &str, vb: u16) -> Seqno {
    node.high_seqno(bucket, Vbid(vb))
}

/// Asserts the replica holds exactly the active's versions: keys, values, CAS,
/// flags, expiry, datatype, seqnos, rev seqnos, tombstones and their kind. A
/// tombstone's user flags are not compared: DCP deletions carry none (§6.10).
pub fn assert_same_items(active: &TestNode, replica: &TestNode, bucket: &str, vb: u16) {
    let a = items(active, bucket, vb);
    let r = items(replica, bucket, vb);
    assert_eq!(a.len(), r.len(), "vb {vb}: item count");
    for (x, y) in a.iter().zip(r.iter()) {
        let flags = |i: &Item| if i.deleted { 0 } else { i.flags };
        assert_eq!(
            (
                &x.key,
                &x.value,
                x.cas,
                flags(x),
                x.expiry,
                x.datatype,
                x.by_seqno,
                x.rev_seqno,
                x.deleted,
                x.delete_source,
                x.delete_time
            ),
            (
                &y.key,
                &y.value,
                y.cas,
                flags(y),
                y.expiry,
                y.datatype,
                y.by_seqno,
                y.rev_seqno,
                y.deleted,
                y.delete_source,
                y.delete_time
            ),
            "vb {vb}: item differs"
        );
    }
}
