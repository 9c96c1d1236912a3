//! Client config tests (cluster.md §7.1, sdk-compat §4): exact JSON for a small cluster,
//! the optional parts, and the fingerprint behind rev bumps (§7.2).

use serde_json::json;

use super::*;
use crate::map::Chain;

fn node(name: &str, host: &str, admin_port: u16, kv_port: u16) -> ConfigNode {
    ConfigNode {
        name: NodeId(name.to_owned()),
        host: host.to_owned(),
        admin_port,
        kv_port,
    }
}

fn id(name: &str) -> NodeId {
    NodeId(name.to_owned())
}

fn chain(nodes: &[Option<&str>]) -> Chain {
    nodes.iter().map(|s| s.map(id)).collect()
}

/// Two servers given out of name order, plus a member that is not a server.
struct Fixture {
    servers: Vec<ConfigNode>,
    members: Vec<ConfigNode>,
    map: Map,
    ff: Map,
}

fn fixture() -> Fixture {
    let a = node("ns_1@10.0.0.1", "10.0.0.1", 8091, 11210);
    let b = node("ns_1@10.0.0.2", "10.0.0.2", 8091, 11210);
    let c = node("ns_1@10.0.0.3", "10.0.0.3", 8091, 11210);
    Fixture {
        servers: vec![b.clone(), a.clone()],
        members: vec![c, b, a],
        map: Map::new(vec![
            chain(&[Some("ns_1@10.0.0.1"), Some("ns_1@10.0.0.2")]),
            chain(&[Some("ns_1@10.0.0.2"), Some("ns_1@10.0.0.1")]),
        ]),
        ff: Map::new(vec![
            chain(&[Some("ns_1@10.0.0.2"), Some("ns_1@10.0.0.1")]),
            chain(&[Some("ns_1@10.0.0.2"), Some("ns_1@10.0.0.1")]),
        ]),
    }
}

fn input<'a>(f: &'a Fixture, ff: Option<&'a Map>) -> BucketConfigInput<'a> {
    BucketConfigInput {
        rev: 1042,
        rev_epoch: 1,
        name: "default",
        uuid: "b-uuid",
        num_vbuckets: 2,
        num_replicas: 1,
        servers: &f.servers,
        members: &f.members,
        map: &f.map,
        ff_map: ff,
        cluster_uuid: "c-uuid",
        cluster_name: "c1",
    }
}

/// §7.1's example, exactly: servers by name, nodesExt servers first then the other
/// member, thisNode on the named node only, the forward map while ff is set.
#[test]
fn bucket_config_for_two_servers_is_exactly_the_spec_shape() {
    let f = fixture();
    let got = bucket_config(&input(&f, Some(&f.ff)), Some(&id("ns_1@10.0.0.1")));
    let want = json!({
        "rev": 1042, "revEpoch": 1, "name": "default", "uuid": "b-uuid",
        "nodeLocator": "vbucket", "bucketType": "membase", "numVBuckets": 2,
        "bucketCapabilitiesVer": "",
        "bucketCapabilities": ["dcp", "cbhello", "touch", "cccp", "nodesExt", "xattr"],
        "nodes": [
            {"hostname": "10.0.0.1:8091", "ports": {"direct": 11210}},
            {"hostname": "10.0.0.2:8091", "ports": {"direct": 11210}}
        ],
        "nodesExt": [
            {"hostname": "10.0.0.1", "services": {"kv": 11210, "mgmt": 8091}, "thisNode": true},
            {"hostname": "10.0.0.2", "services": {"kv": 11210, "mgmt": 8091}},
            {"hostname": "10.0.0.3", "services": {"kv": 11210, "mgmt": 8091}}
        ],
        "vBucketServerMap": {
            "hashAlgorithm": "CRC", "numReplicas": 1,
            "serverList": ["10.0.0.1:11210", "10.0.0.2:11210"],
            "vBucketMap": [[0, 1], [1, 0]],
            "vBucketMapForward": [[1, 0], [1, 0]]
        },
        "clusterCapabilitiesVer": [1, 0], "clusterCapabilities": {},
        "clusterUUID": "c-uuid", "clusterName": "c1"
    });
    assert_eq!(got, want);
}

/// No fast-forward map: no `vBucketMapForward` key at all.
#[test]
fn forward_map_is_absent_without_a_fast_forward_map() {
    let f = fixture();
    let got = vbucket_server_map(&input(&f, None));
    assert_eq!(
        got,
        json!({
            "hashAlgorithm": "CRC", "numReplicas": 1,
            "serverList": ["10.0.0.1:11210", "10.0.0.2:11210"],
            "vBucketMap": [[0, 1], [1, 0]]
        })
    );
    let full = bucket_config(&input(&f, None), None);
    assert_eq!(full["vBucketServerMap"], got);
}

/// `thisNode` appears only in the named node's entry; without one, nowhere (REST
/// `GET /pools/default/b/{name}`); a non-server member can be this node too.
#[test]
fn this_node_marks_exactly_one_entry() {
    let f = fixture();
    let marked = |this: Option<&NodeId>| -> Vec<bool> {
        let config = bucket_config(&input(&f, None), this);
        config["nodesExt"]
            .as_array()
            .map(|a| a.iter().map(|e| e.get("thisNode").is_some()).collect())
            .unwrap_or_default()
    };
    assert_eq!(marked(None), vec![false, false, false]);
    assert_eq!(marked(Some(&id("ns_1@10.0.0.2"))), vec![false, true, false]);
    assert_eq!(marked(Some(&id("ns_1@10.0.0.3"))), vec![false, false, true]);
    assert_eq!(
        marked(Some(&id("ns_1@elsewhere"))),
        vec![false, false, false]
    );
}

/// Null is −1; so is a chain node that is not a server (transient); rows always have
/// R+1 entries even when the map's chains are of another width.
#[test]
fn nulls_and_unknown_nodes_are_minus_one_and_rows_have_r_plus_one_entries() {
    let mut f = fixture();
    f.map = Map::new(vec![
        chain(&[Some("ns_1@10.0.0.2"), None]),
        chain(&[Some("ns_1@gone"), Some("ns_1@10.0.0.1")]),
        chain(&[None, None]),
    ]);
    let mut i = input(&f, None);
    let got = vbucket_server_map(&i);
    assert_eq!(got["vBucketMap"], json!([[1, -1], [-1, 0], [-1, -1]]));
    i.num_replicas = 2;
    let got = vbucket_server_map(&i);
    assert_eq!(got["numReplicas"], json!(2));
    assert_eq!(
        got["vBucketMap"],
        json!([[1, -1, -1], [-1, 0, -1], [-1, -1, -1]])
    );
    i.num_replicas = 0;
    let got = vbucket_server_map(&i);
    assert_eq!(got["vBucketMap"], json!([[1], [-1], [-1]]));
}

/// IPv6 hosts are bracketed where a port follows, literal in nodesExt.
#[test]
fn ipv6_hosts_are_bracketed_before_a_port() {
    let servers = vec![node("ns_1@::1", "::1", 9000, 12000)];
    let map = Map::new(vec![chain(&[Some("ns_1@::1")])]);
    let f = Fixture {
        members: servers.clone(),
        servers,
        ff: map.clone(),
        map,
    };
    let mut i = input(&f, None);
    i.num_replicas = 0;
    let got = bucket_config(&i, None);
    assert_eq!(
        got["vBucketServerMap"]["serverList"],
        json!(["[::1]:12000"])
    );
    assert_eq!(got["nodes"][0]["hostname"], json!("[::1]:9000"));
    assert_eq!(got["nodesExt"][0]["hostname"], json!("::1"));
}

/// §7.1 global config: every member by name, no bucket parts.
#[test]
fn global_config_lists_every_member_by_name() {
    let f = fixture();
    let got = global_config(7, 1, &f.members, "c-uuid", "c1", Some(&id("ns_1@10.0.0.3")));
    let want = json!({
        "rev": 7, "revEpoch": 1,
        "nodesExt": [
            {"hostname": "10.0.0.1", "services": {"kv": 11210, "mgmt": 8091}},
            {"hostname": "10.0.0.2", "services": {"kv": 11210, "mgmt": 8091}},
            {"hostname": "10.0.0.3", "services": {"kv": 11210, "mgmt": 8091}, "thisNode": true}
        ],
        "clusterCapabilitiesVer": [1, 0], "clusterCapabilities": {},
        "clusterUUID": "c-uuid", "clusterName": "c1"
    });
    assert_eq!(got, want);
}

/// §7.2: the fingerprint ignores rev and input order, and changes with the map, the
/// forward map, servers, members, ports and the epoch.
#[test]
fn fingerprint_changes_with_the_inputs_but_not_with_rev() {
    let f = fixture();
    let base = input(&f, None);
    let fp = bucket_fingerprint(&base);

    assert_eq!(
        bucket_fingerprint(&BucketConfigInput { rev: 9999, ..base }),
        fp
    );
    let mut reordered = fixture();
    reordered.servers.reverse();
    reordered.members.reverse();
    assert_eq!(bucket_fingerprint(&input(&reordered, None)), fp);

    assert_ne!(bucket_fingerprint(&input(&f, Some(&f.ff))), fp);
    let mut other_map = fixture();
    other_map
        .map
        .set_chain(0, chain(&[Some("ns_1@10.0.0.2"), Some("ns_1@10.0.0.1")]));
    assert_ne!(bucket_fingerprint(&input(&other_map, None)), fp);
    let mut port = fixture();
    port.members[0].kv_port = 11999;
    assert_ne!(bucket_fingerprint(&input(&port, None)), fp);
    assert_ne!(
        bucket_fingerprint(&BucketConfigInput {
            rev_epoch: 2,
            ..base
        }),
        fp
    );
    let fewer = &f.members[1..];
    assert_ne!(
        bucket_fingerprint(&BucketConfigInput {
            members: fewer,
            ..base
        }),
        fp
    );
}

/// The fingerprint is a fixed function of the JSON (it may be stored across restarts).
#[test]
fn fingerprint_hash_is_stable_fnv1a() {
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
}
