//! `conduit decode`: frames to JSON, for operators reading captures and logs.

use anyhow::bail;
use bytes::BytesMut;
use mcbp::{FrameDecoder, Message};
use serde_json::{json, Value};

/// Decodes every frame in `buf` into one JSON value each.
pub(crate) fn frames_to_json(buf: &mut BytesMut, max_body: usize) -> anyhow::Result<Vec<Value>> {
    let decoder = FrameDecoder::new(max_body);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(buf)? {
            Some(f) => out.push(describe(&f)),
            None => bail!("{} trailing bytes do not form a whole frame", buf.len()),
        }
    }
    Ok(out)
}

fn describe(f: &mcbp::Frame) -> Value {
    let h = f.header();
    let mut v = json!({
        "magic": format!("{:#04x}", h.magic.to_u8()),
        "opcode": h.opcode,
        "opcode_name": if h.magic.is_server_initiated() { h.server_opcode().name() } else { h.opcode().name() },
        "opaque": h.opaque.0,
        "cas": h.cas.0,
        "datatype": h.datatype.0,
        "extras_hex": hex::encode(f.extras()),
        "key": String::from_utf8_lossy(f.key()),
        "value_length": f.value().len(),
        "body_length": h.body_len,
    });
    if f.is_response() {
        v["status"] = json!(f.status().to_raw());
        v["status_name"] = json!(f.status().name());
    } else {
        v["vbucket"] = json!(f.vbucket().0);
    }
    if let Ok(m) = mcbp::dcp::StreamReq::parse(f) {
        v["stream_req"] = json!({
            "flags": m.flags.0, "start": m.start.0, "end": m.end.0,
            "vb_uuid": m.vb_uuid.0, "snap_start": m.snap_start.0, "snap_end": m.snap_end.0,
        });
    }
    if let Ok(m) = mcbp::dcp::StreamEnd::parse(f) {
        v["reason"] = json!(m.reason.to_raw());
        v["reason_name"] = json!(m.reason.name());
    }
    if let Ok(m) = mcbp::dcp::AddStreamResponse::parse(f) {
        if let Some(o) = m.stream_opaque {
            v["stream_opaque"] = json!(o.0);
        }
    }
    if let Ok(m) = mcbp::dcp::Mutation::parse(f) {
        v["by_seqno"] = json!(m.by_seqno.0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_stream_request_and_reports_leftovers() {
        let raw = hex::decode("805300003000000500000030deadbeef000000000000000000000000000000000000000000000000ffffffffffffffff000000000000123400000000000000000000000000000000").expect("hex");
        let mut buf = BytesMut::from(&raw[..]);
        let out = frames_to_json(&mut buf, 1024).expect("decodes");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["opcode_name"], "DCP_STREAM_REQ");
        assert_eq!(out[0]["vbucket"], 5);
        assert_eq!(out[0]["opaque"], 0xdeadbeefu32);
        assert_eq!(out[0]["stream_req"]["vb_uuid"], 0x1234);
        let mut cut = BytesMut::from(&raw[..30]);
        let err = frames_to_json(&mut cut, 1024).expect_err("truncated");
        assert!(err.to_string().contains("30 trailing bytes"), "{err}");
    }
}
