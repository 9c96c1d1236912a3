//! DCP connection names (`replication-layer.md` §4.3) and HELLO agent names (§4.2).
//!
//! Both nodes evaluate [`connection_name`] (the producer node to query per-stream
//! stats, §7.7), so it must be a pure function of its inputs and identical
//! everywhere (MB-51458).
//!
//! Lengths and cuts count characters (Unicode scalar values), the unit of the
//! original's Erlang strings; node and bucket names are ASCII in practice, where
//! characters and bytes coincide. Working on characters means a cut never splits
//! a code point.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mcbp::Vbid;
use sha1::{Digest, Sha1};

use super::Side;

/// Longest connection name we produce (KV's limit for DCP names).
pub const MAX_NAME_LEN: usize = 200;
/// Characters kept of each node name in a shortened name.
const NODE_PART_LEN: usize = 35;
/// Characters kept of the bucket name in a shortened name.
const BUCKET_PART_LEN: usize = 60;
/// Cap of the HELLO agent name, in bytes.
pub const MAX_AGENT_NAME_LEN: usize = 250;
/// Every replication connection name starts with this (KV depends on it).
pub const NAME_PREFIX: &str = "replication:";

/// The DCP connection name of replication connection `index` (0-based) from
/// `producer` into `consumer` for `bucket` (§4.3).
///
/// Long form `replication:P->C:B` (plus `/N` when N > 0); when longer than 200
/// characters, the shortened form `replication:cut(P)->cut(C):B[..60]:hash`, where
/// `hash` is the standard base64 of the SHA-1 of the long form.
#[must_use]
pub fn connection_name(consumer: &str, producer: &str, bucket: &str, index: u32) -> String {
    let mut long = format!("{NAME_PREFIX}{producer}->{consumer}:{bucket}");
    if index > 0 {
        long.push_str(&format!("/{index}"));
    }
    let name = if char_len(&long) <= MAX_NAME_LEN {
        long
    } else {
        let common = common_prefix_len(consumer, producer);
        let hash = STANDARD.encode(Sha1::digest(long.as_bytes()));
        format!(
            "{NAME_PREFIX}{}->{}:{}:{hash}",
            cut(producer, common),
            cut(consumer, common),
            take_chars(bucket, 0, BUCKET_PART_LEN),
        )
    };
    debug_assert!(name.starts_with(NAME_PREFIX) && char_len(&name) <= MAX_NAME_LEN);
    name
}

/// The name of a takeover-via-orchestrator connection (§4.3, §9.4):
/// `replication:takeover:<uuid>:Old->New:B:vb`, with node names and bucket cut
/// like [`connection_name`] (no hash) when longer than 200 characters.
///
/// `uuid` is the 32-hex-digit random uuid the caller chose for this takeover.
#[must_use]
pub fn takeover_connection_name(
    uuid: &str,
    old_master: &str,
    new_master: &str,
    bucket: &str,
    vb: Vbid,
) -> String {
    let long = format!(
        "{NAME_PREFIX}takeover:{uuid}:{old_master}->{new_master}:{bucket}:{}",
        vb.0
    );
    if char_len(&long) <= MAX_NAME_LEN {
        return long;
    }
    let common = common_prefix_len(old_master, new_master);
    format!(
        "{NAME_PREFIX}takeover:{uuid}:{}->{}:{}:{}",
        cut(old_master, common),
        cut(new_master, common),
        take_chars(bucket, 0, BUCKET_PART_LEN),
        vb.0
    )
}

/// The HELLO agent name (key) of a half: `conduit:proxy-<consumer|producer>/<name>`,
/// truncated to 250 bytes on a character boundary (§4.1, §4.2).
#[must_use]
pub fn agent_name(side: Side, connection_name: &str) -> String {
    let mut agent = format!("conduit:proxy-{side}/{connection_name}");
    if agent.len() > MAX_AGENT_NAME_LEN {
        let mut end = MAX_AGENT_NAME_LEN;
        while !agent.is_char_boundary(end) {
            end -= 1;
        }
        agent.truncate(end);
    }
    agent
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Length (in characters) of the longest common prefix.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// `cut(name, L)`: start at L if at least 35 characters remain from there, else
/// at `max(0, len - 35)`; take at most 35 characters.
fn cut(name: &str, common: usize) -> &str {
    let len = char_len(name);
    let start = if len.saturating_sub(common) >= NODE_PART_LEN {
        common
    } else {
        len.saturating_sub(NODE_PART_LEN)
    };
    take_chars(name, start, NODE_PART_LEN)
}

/// At most `n` characters of `s` starting at character `start`.
fn take_chars(s: &str, start: usize, n: usize) -> &str {
    let byte_at = |chars: usize| s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i);
    let from = byte_at(start);
    let to = byte_at(start.saturating_add(n));
    &s[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_A: &str = "nodeA.eng.couchbase.com";
    const NODE_B: &str = "nodeB.eng.couchbase.com";
    const POD_0: &str =
        "ns_1@platform-couchbase-cluster-0000.platform-couchbase-cluster.couchbase-new-pxxxxxxx.svc";
    const POD_1: &str =
        "ns_1@platform-couchbase-cluster-0001.platform-couchbase-cluster.couchbase-new-pxxxxxxx.svc";
    const LONG_BUCKET_78: &str =
        "com.yyyyyy.digital.ms.shoppingcart.shoppingcart.123456789012345678901234567890";
    const COMMON_0: &str = "ManyManyManyManyCommonCharacters_ns_1@platform-couchbase-cluster-0000";
    const COMMON_1: &str = "ManyManyManyManyCommonCharacters_ns_1@platform-couchbase-cluster-0001";
    const TRAVEL: &str = "travel-sample-with-a-very-very-very-very-long-bucket-name";
    const UUID: &str = "a5292f34ef9062cae8dc4a86e82ac3c8";

    /// §4.3 vector 1.
    #[test]
    fn short_name_for_index_0_has_no_suffix() {
        assert_eq!(
            connection_name(NODE_A, NODE_B, "bucket1", 0),
            "replication:nodeB.eng.couchbase.com->nodeA.eng.couchbase.com:bucket1"
        );
    }

    /// §4.3 vector 2.
    #[test]
    fn short_name_for_index_1_has_suffix() {
        assert_eq!(
            connection_name(NODE_A, NODE_B, "bucket1", 1),
            "replication:nodeB.eng.couchbase.com->nodeA.eng.couchbase.com:bucket1/1"
        );
    }

    /// §4.3 vector 3.
    #[test]
    fn long_pod_names_are_cut_after_the_common_prefix_index_1() {
        assert_eq!(
            connection_name(POD_0, POD_1, LONG_BUCKET_78, 1),
            "replication:1.platform-couchbase-cluster.couchb->0.platform-couchbase-cluster.couchb:com.yyyyyy.digital.ms.shoppingcart.shoppingcart.123456789012:w3alxj4OikI3A7xWNfPr+8pFoA0="
        );
    }

    /// §4.3 vector 4.
    #[test]
    fn long_pod_names_are_cut_after_the_common_prefix_index_0() {
        assert_eq!(
            connection_name(POD_0, POD_1, LONG_BUCKET_78, 0),
            "replication:1.platform-couchbase-cluster.couchb->0.platform-couchbase-cluster.couchb:com.yyyyyy.digital.ms.shoppingcart.shoppingcart.123456789012:TYFMH5ZD2gPLOaLgcuA2VijsZvc="
        );
    }

    /// §4.3 vector 5: less than 35 characters after the common prefix.
    #[test]
    fn names_differing_only_at_the_end_keep_their_last_35_characters() {
        assert_eq!(
            connection_name(COMMON_0, COMMON_1, TRAVEL, 1),
            "replication:s_1@platform-couchbase-cluster-0001->s_1@platform-couchbase-cluster-0000:travel-sample-with-a-very-very-very-very-long-bucket-name:xTwxM/eoOT2oWMVsTzP9/YV8FZ0="
        );
    }

    /// §4.3 vector 6: no common prefix, one short node name.
    #[test]
    fn short_node_name_is_kept_whole() {
        let producer = "ManyManyManyManyCommonCharacters_ns_1@platform-couchbase-cluster-AndEvenMoreCharactersToMakeThisNodeNameLongEnoughToRequireItToBeShortened";
        assert_eq!(
            connection_name("AShortNodeName", producer, TRAVEL, 1),
            "replication:ManyManyManyManyCommonCharacters_ns->AShortNodeName:travel-sample-with-a-very-very-very-very-long-bucket-name:D2K3xTLIijnhEm579aGJvEY6bMs="
        );
    }

    /// §4.3 takeover vector 1.
    #[test]
    fn short_takeover_name() {
        assert_eq!(
            takeover_connection_name(UUID, NODE_B, NODE_A, "bucket1", Vbid(0)),
            "replication:takeover:a5292f34ef9062cae8dc4a86e82ac3c8:nodeB.eng.couchbase.com->nodeA.eng.couchbase.com:bucket1:0"
        );
    }

    /// §4.3 takeover vector 2.
    #[test]
    fn long_takeover_name_is_cut_without_hash() {
        assert_eq!(
            takeover_connection_name(UUID, POD_1, POD_0, LONG_BUCKET_78, Vbid(1023)),
            "replication:takeover:a5292f34ef9062cae8dc4a86e82ac3c8:1.platform-couchbase-cluster.couchb->0.platform-couchbase-cluster.couchb:com.yyyyyy.digital.ms.shoppingcart.shoppingcart.123456789012:1023"
        );
    }

    #[test]
    fn names_at_the_limit_are_kept_and_one_more_character_shortens() {
        // replication: (12) + P + -> (2) + C + : (1) + B: make it exactly 200.
        let c = "c".repeat(90);
        let p = "p".repeat(90);
        let b = "b".repeat(200 - 12 - 2 - 1 - 180);
        let at_limit = connection_name(&c, &p, &b, 0);
        assert_eq!(at_limit.len(), 200);
        assert!(!at_limit.ends_with('='));
        let over = connection_name(&c, &p, &format!("{b}x"), 0);
        assert!(over.ends_with('=') && over.len() <= MAX_NAME_LEN, "{over}");
        assert!(over.starts_with(NAME_PREFIX));
    }

    #[test]
    fn shortened_names_never_exceed_174_characters() {
        let huge = "n".repeat(500);
        let name = connection_name(&huge, &format!("{huge}x"), &"b".repeat(500), 7);
        assert_eq!(name.chars().count(), 12 + 35 + 2 + 35 + 1 + 60 + 1 + 28);
        assert_eq!(name.chars().count(), 174);
    }

    #[test]
    fn non_ascii_names_are_cut_on_character_boundaries() {
        let c = "é".repeat(120);
        let p = "ü".repeat(120);
        let name = connection_name(&c, &p, "bücket", 3);
        assert!(name.starts_with("replication:üüü"));
        assert!(name.chars().count() <= MAX_NAME_LEN);
    }

    #[test]
    fn agent_names_carry_side_and_connection_name() {
        let name = connection_name(NODE_A, NODE_B, "bucket1", 0);
        assert_eq!(
            agent_name(Side::Consumer, &name),
            format!("conduit:proxy-consumer/{name}")
        );
        assert_eq!(
            agent_name(Side::Producer, &name),
            format!("conduit:proxy-producer/{name}")
        );
    }

    #[test]
    fn agent_names_are_capped_at_250_bytes_on_a_char_boundary() {
        let ascii = agent_name(Side::Producer, &"x".repeat(300));
        assert_eq!(ascii.len(), MAX_AGENT_NAME_LEN);
        // "conduit:proxy-producer/" is 23 bytes; 2-byte chars then straddle byte 250.
        let wide = agent_name(Side::Producer, &"é".repeat(200));
        assert_eq!(wide.len(), 249);
        assert!(wide.ends_with('é'));
    }
}
