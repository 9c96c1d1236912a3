//! cluster.md §3 (T14 at the unit level): every parameter row and rule, with the
//! status, kind and param of each bad input; jepsen's and the CLI's real parameters.

use super::*;
use serde_json::json;

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");

fn form(body: &str) -> Params {
    Params::parse(FORM, None, body.as_bytes()).expect("valid form")
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(
    r: Result<T, RestError>,
    status: u16,
    kind: &str,
    param: &str,
) -> RestError {
    let e = r.expect_err("an error");
    assert_eq!(
        (e.status.as_u16(), e.kind.as_str(), e.param.as_str()),
        (status, kind, param),
        "{e}"
    );
    e
}

// ---- Params::parse ----------------------------------------------------------------------

#[test]
fn form_body_is_decoded_with_repeated_keys_kept_in_order() {
    let p = form("otpNode=ns_1%40a&otpNode=n_1@b&x=a+b&y=");
    assert_eq!(p.all("otpNode"), vec!["ns_1@a", "n_1@b"]);
    assert_eq!(p.get("otpNode"), Some("n_1@b"));
    assert_eq!(p.get("x"), Some("a b"));
    assert_eq!(p.get("y"), Some(""));
    assert_eq!(p.get("z"), None);
    assert!(p.contains("y"));
    assert_eq!(
        p.keys().into_iter().collect::<Vec<_>>(),
        ["otpNode", "x", "y"]
    );
}

#[test]
fn content_type_parameters_and_case_are_ignored() {
    let p = Params::parse(
        Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        None,
        b"a=1",
    )
    .expect("form");
    assert_eq!(p.get("a"), Some("1"));
    let p =
        Params::parse(Some("application/json; charset=utf-8"), None, br#"{"a":1}"#).expect("json");
    assert_eq!(p.get("a"), Some("1"));
    let p = Params::parse(Some("application/vnd.x+json"), None, br#"{"a":"b"}"#).expect("json");
    assert_eq!(p.get("a"), Some("b"));
}

#[test]
fn json_body_scalars_become_strings_and_arrays_repeated_values() {
    let body = json!({"name":"b","ramQuota":100,"flushEnabled":true,"knownNodes":["a","b"],
                      "ejectedNodes":[],"gone":null,"f":1.5});
    let p = Params::parse(JSON, None, body.to_string().as_bytes()).expect("json");
    assert_eq!(p.get("name"), Some("b"));
    assert_eq!(p.get("ramQuota"), Some("100"));
    assert_eq!(p.get("flushEnabled"), Some("true"));
    assert_eq!(p.all("knownNodes"), vec!["a", "b"]);
    assert_eq!(p.list("knownNodes"), vec!["a", "b"]);
    assert!(!p.contains("ejectedNodes"));
    assert!(!p.contains("gone"), "null is absent");
    assert_eq!(p.get("f"), Some("1.5"));
}

#[test]
fn json_body_must_be_an_object_of_scalars_or_lists() {
    for body in [
        "[1,2]",
        "\"x\"",
        "12",
        "{",
        "{\"a\":{\"b\":1}}",
        "{\"a\":[[1]]}",
        "{\"a\":[{}]}",
    ] {
        assert_err(
            Params::parse(JSON, None, body.as_bytes()),
            400,
            "bad_body",
            "_",
        );
    }
}

#[test]
fn a_body_without_content_type_is_sniffed() {
    let p = Params::parse(None, None, br#" {"a":"1"}"#).expect("json");
    assert_eq!(p.get("a"), Some("1"));
    let p = Params::parse(None, None, b"a=2").expect("form");
    assert_eq!(p.get("a"), Some("2"));
    let p = Params::parse(Some("text/plain"), None, b"a=3").expect("form");
    assert_eq!(p.get("a"), Some("3"));
}

#[test]
fn empty_bodies_give_no_params_whatever_the_content_type() {
    for ct in [None, FORM, JSON] {
        for body in [&b""[..], b"  \r\n"] {
            assert!(Params::parse(ct, None, body).expect("empty").is_empty());
        }
    }
}

#[test]
fn non_utf8_form_body_is_a_bad_body() {
    assert_err(
        Params::parse(FORM, None, &[b'a', b'=', 0xff]),
        400,
        "bad_body",
        "_",
    );
}

#[test]
fn query_and_body_merge_and_the_body_wins_get() {
    let p = Params::parse(FORM, Some("reportID=abc&a=q"), b"a=b").expect("merged");
    assert_eq!(p.get("reportID"), Some("abc"));
    assert_eq!(p.all("a"), vec!["q", "b"]);
    assert_eq!(p.get("a"), Some("b"));
    let p = Params::parse(None, Some("x=1"), b"").expect("query only");
    assert_eq!(p.get("x"), Some("1"));
    assert_eq!(
        p.pairs(),
        &[("x".to_string(), "1".to_string())][..],
        "pairs in order"
    );
}

// ---- accessors --------------------------------------------------------------------------

#[test]
fn check_keys_rejects_the_first_unknown_key_in_sorted_order() {
    let p = form("zeta=1&name=x&alpha=2&sendStats=false");
    let e = assert_err(
        p.check_keys(&["name"], &["sendStats"]),
        400,
        "unsupported_key",
        "alpha",
    );
    assert_eq!(e.to_json()["errors"], json!({"alpha":"Unsupported key"}));
    assert!(form("name=x&sendStats=1")
        .check_keys(&["name"], &["sendStats"])
        .is_ok());
    assert!(Params::default().check_keys(&[], &[]).is_ok());
}

#[test]
fn require_treats_absent_and_blank_as_missing_and_trims() {
    let p = form("a=&b=+&c=+v+");
    assert_err(p.require("a"), 400, "missing_parameter", "a");
    assert_err(p.require("b"), 400, "missing_parameter", "b");
    assert_err(p.require("z"), 400, "missing_parameter", "z");
    assert_eq!(p.require("c").expect("given"), "v");
}

#[test]
fn list_flattens_repeats_and_comma_lists_and_drops_empty_items() {
    let p = form("k=a,b&k=+c+&k=&k=,,d,&e=");
    assert_eq!(p.list("k"), vec!["a", "b", "c", "d"]);
    assert!(p.list("e").is_empty(), "ejectedNodes= is an empty list");
    assert!(p.list("none").is_empty());
}

#[test]
fn int_in_checks_syntax_and_range_and_names_both() {
    let p = form("a=5&b=+7+&c=x&d=-1&e=11&f=&g=1.0&h=99999999999999999999");
    assert_eq!(p.int_in("a", 0, 10).expect("ok"), Some(5));
    assert_eq!(p.int_in("b", 0, 10).expect("trimmed"), Some(7));
    assert_eq!(p.int_in("absent", 0, 10).expect("absent"), None);
    for k in ["c", "d", "e", "f", "g", "h"] {
        let e = assert_err(p.int_in(k, 0, 10), 400, "invalid_parameter", k);
        assert!(e.message.contains("between 0 and 10"), "{e}");
    }
    assert_eq!(p.int_in("a", 5, 5).expect("inclusive"), Some(5));
}

#[test]
fn bool_accepts_true_false_1_0() {
    let p = form("a=true&b=FALSE&c=1&d=0&e=yes&f=");
    assert_eq!(p.bool("a").expect("ok"), Some(true));
    assert_eq!(p.bool("b").expect("ok"), Some(false));
    assert_eq!(p.bool("c").expect("ok"), Some(true));
    assert_eq!(p.bool("d").expect("ok"), Some(false));
    assert_eq!(p.bool("absent").expect("ok"), None);
    assert_err(p.bool("e"), 400, "invalid_parameter", "e");
    assert_err(p.bool("f"), 400, "invalid_parameter", "f");
}

// ---- node references ----------------------------------------------------------------------

#[test]
fn node_refs_accept_names_host_ports_and_self() {
    assert_eq!(
        parse_node_ref("ns_1@10.0.0.5"),
        Ok(NodeRef::Name("ns_1@10.0.0.5".into()))
    );
    assert_eq!(
        parse_node_ref(" n_0@127.0.0.1 "),
        Ok(NodeRef::Name("n_0@127.0.0.1".into()))
    );
    assert_eq!(
        parse_node_ref("n_1@host-a.example"),
        Ok(NodeRef::Name("n_1@host-a.example".into()))
    );
    assert_eq!(
        parse_node_ref("ns_1@::1"),
        Ok(NodeRef::Name("ns_1@::1".into()))
    );
    assert_eq!(
        parse_node_ref("127.0.0.1:9001"),
        Ok(NodeRef::HostPort("127.0.0.1".into(), 9001))
    );
    assert_eq!(
        parse_node_ref("[::1]:8091"),
        Ok(NodeRef::HostPort("::1".into(), 8091))
    );
    assert_eq!(parse_node_ref("Self"), Ok(NodeRef::SelfNode));
}

#[test]
fn bad_node_refs_name_the_parameter() {
    for s in [
        "",
        "self",
        "ns_1@",
        "@h",
        "a b@h",
        "host",
        "host:",
        "host:0",
        "host:70000",
        ":8091",
        "[::1]",
        "h:p",
        "ns_1@h/x",
    ] {
        assert_err(parse_node_ref(s), 400, "invalid_parameter", "otpNode");
    }
    assert_err(
        parse_node_ref_param("knownNodes", "nope"),
        400,
        "invalid_parameter",
        "knownNodes",
    );
}

#[test]
fn node_ref_lists_parse_every_item_and_name_the_key() {
    let p = form("otpNode=ns_1@a&otpNode=b:9001,Self&ejectedNodes=&knownNodes=ok@h,bad");
    assert_eq!(
        node_refs(&p, "otpNode"),
        Ok(vec![
            NodeRef::Name("ns_1@a".into()),
            NodeRef::HostPort("b".into(), 9001),
            NodeRef::SelfNode
        ])
    );
    assert_eq!(node_refs(&p, "ejectedNodes"), Ok(vec![]));
    assert_err(
        node_refs(&p, "knownNodes"),
        400,
        "invalid_parameter",
        "knownNodes",
    );
}

#[tokio::test]
async fn params_extract_from_an_axum_request() {
    use axum::extract::FromRequest;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/controller/rebalance?x=1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from("knownNodes=a%2Cb&ejectedNodes="))
        .expect("request");
    let p = Params::from_request(req, &()).await.expect("params");
    assert_eq!(p.get("x"), Some("1"));
    assert_eq!(p.list("knownNodes"), vec!["a", "b"]);
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/x")
        .header("content-type", "application/json")
        .body(axum::body::Body::from("[1]"))
        .expect("request");
    assert_err(Params::from_request(req, &()).await, 400, "bad_body", "_");
}

#[test]
fn node_names_follow_the_port_rule() {
    assert_eq!(node_name("10.0.0.1", 8091), "ns_1@10.0.0.1");
    assert_eq!(node_name("127.0.0.1", 9000), "n_0@127.0.0.1");
    assert_eq!(node_name("127.0.0.1", 9003), "n_3@127.0.0.1");
    assert_eq!(node_name("127.0.0.1", 9999), "n_999@127.0.0.1");
    assert_eq!(node_name("h", 8999), "n_8999@h");
    assert_eq!(node_name("h", 10000), "n_10000@h");
    assert_eq!(node_name("h", 18091), "n_18091@h");
}

#[test]
fn add_node_hostname_forms() {
    let ok = |s: &str| parse_add_node_hostname(s).expect(s);
    assert_eq!(ok("10.0.0.2"), ("10.0.0.2".into(), 8091));
    assert_eq!(ok("10.0.0.2:9001"), ("10.0.0.2".into(), 9001));
    assert_eq!(ok("http://10.0.0.2:9001"), ("10.0.0.2".into(), 9001));
    assert_eq!(ok("HTTP://node-b/"), ("node-b".into(), 8091));
    assert_eq!(ok(" [::1]:9002 "), ("::1".into(), 9002));
    assert_eq!(ok("[fe80::1]"), ("fe80::1".into(), 8091));
    assert_eq!(ok("::1"), ("::1".into(), 8091));
}

#[test]
fn add_node_hostname_rejects_https_other_schemes_and_bad_ports() {
    assert_err(
        parse_add_node_hostname("https://10.0.0.2:18091"),
        400,
        "unsupported",
        "hostname",
    );
    for s in [
        "ftp://h", "h:0", "h:x", "h:65536", "h:", "http://", "a b", "h/path",
    ] {
        assert_err(
            parse_add_node_hostname(s),
            400,
            "invalid_parameter",
            "hostname",
        );
    }
    assert_err(
        parse_add_node_hostname(" "),
        400,
        "missing_parameter",
        "hostname",
    );
}

// ---- buckets (§3.4) --------------------------------------------------------------------------

const JEPSEN_BUCKET: &str = "name=default&ramQuotaMB=256&bucketType=membase&replicaNumber=1\
&threadsNumber=3&flushEnabled=1&evictionPolicy=valueOnly&conflictResolutionType=seqno&maxTTL=0\
&compressionMode=off&storageBackend=couchstore&durabilityMinLevel=none";

#[test]
fn jepsens_bucket_parameters_are_accepted() {
    let b = bucket_params(&form(JEPSEN_BUCKET), 64, None).expect("jepsen");
    assert_eq!(
        b,
        BucketParams {
            name: "default".into(),
            ram_quota_mb: 256,
            replicas: 1,
            num_vbuckets: 64,
            flush_enabled: true,
        }
    );
    // The same as a JSON body.
    let j = json!({"name":"default","ramQuotaMB":256,"bucketType":"membase","replicaNumber":1,
        "threadsNumber":3,"flushEnabled":1,"evictionPolicy":"valueOnly",
        "conflictResolutionType":"seqno","maxTTL":0,"compressionMode":"off",
        "storageBackend":"couchstore","durabilityMinLevel":"none"});
    let p = Params::parse(JSON, None, j.to_string().as_bytes()).expect("json");
    assert_eq!(bucket_params(&p, 64, None), Ok(b));
}

#[test]
fn the_clis_bucket_parameters_are_accepted() {
    let p = form("name=b1&replicaNumber=2&numVBuckets=16&ramQuota=100&bucketType=membase");
    assert_eq!(
        bucket_params(&p, 64, Some(1000)),
        Ok(BucketParams {
            name: "b1".into(),
            ram_quota_mb: 100,
            replicas: 2,
            num_vbuckets: 16,
            flush_enabled: false,
        })
    );
}

#[test]
fn every_ignored_bucket_parameter_is_accepted() {
    for k in BUCKET_IGNORED {
        let p = form(&format!("name=b&ramQuota=1&{k}=whatever"));
        assert!(bucket_params(&p, 64, None).is_ok(), "{k}");
    }
    assert!(bucket_params(
        &form("name=b&ramQuota=1&authType=sasl&saslPassword=&replicaIndex=0"),
        64,
        None
    )
    .is_ok());
}

#[test]
fn unknown_bucket_parameters_are_unsupported_keys() {
    assert_err(
        bucket_params(&form("name=b&ramQuota=1&bogus=1"), 64, None),
        400,
        "unsupported_key",
        "bogus",
    );
    // Unknown keys are found before anything else.
    assert_err(
        bucket_params(&form("ramQuota=x&zzz=1"), 64, None),
        400,
        "unsupported_key",
        "zzz",
    );
}

#[test]
fn bucket_defaults() {
    let b = bucket_params(&form("name=b&ramQuota=10"), 32, None).expect("defaults");
    assert_eq!(
        (b.replicas, b.num_vbuckets, b.flush_enabled),
        (1, 32, false)
    );
    assert!(bucket_params(&form("name=b&ramQuota=10&bucketType=couchbase"), 32, None).is_ok());
}

#[test]
fn bucket_name_rules() {
    for good in ["a", "A-z_0.9%", "default", &"x".repeat(100), "a.b"] {
        let p = Params::from_pairs([("name", good), ("ramQuota", "1")]);
        assert_eq!(
            bucket_params(&p, 64, None).map(|b| b.name),
            Ok(good.to_string())
        );
    }
    assert_err(
        bucket_params(&form("ramQuota=1"), 64, None),
        400,
        "missing_parameter",
        "name",
    );
    assert_err(
        bucket_params(&form("name=&ramQuota=1"), 64, None),
        400,
        "missing_parameter",
        "name",
    );
    for bad in [
        ".hidden",
        &"x".repeat(101),
        "a b",
        "a/b",
        "a:b",
        "ü",
        "a*",
        "a@b",
    ] {
        let p = Params::from_pairs([("name", bad), ("ramQuota", "1")]);
        assert_err(
            bucket_params(&p, 64, None),
            400,
            "invalid_parameter",
            "name",
        );
    }
}

#[test]
fn bucket_types() {
    for t in ["ephemeral", "memcached"] {
        let e = assert_err(
            bucket_params(
                &form(&format!("name=b&ramQuota=1&bucketType={t}")),
                64,
                None,
            ),
            400,
            "unsupported_bucket_type",
            "bucketType",
        );
        assert!(e.message.contains(t));
    }
    assert_err(
        bucket_params(&form("name=b&ramQuota=1&bucketType=nosql"), 64, None),
        400,
        "invalid_parameter",
        "bucketType",
    );
}

#[test]
fn ram_quota_rules() {
    // Either name; ramQuotaMB wins when both are given.
    let q = |s: &str, left| bucket_params(&form(s), 64, left).map(|b| b.ram_quota_mb);
    assert_eq!(q("name=b&ramQuota=7", None), Ok(7));
    assert_eq!(q("name=b&ramQuotaMB=8", None), Ok(8));
    assert_eq!(q("name=b&ramQuota=7&ramQuotaMB=9", None), Ok(9));
    // Required without a cluster quota.
    assert_err(q("name=b", None), 400, "missing_parameter", "ramQuota");
    // With one: default min(left, 256).
    assert_eq!(q("name=b", Some(1000)), Ok(256));
    assert_eq!(q("name=b", Some(100)), Ok(100));
    assert_err(q("name=b", Some(0)), 400, "invalid_parameter", "ramQuota");
    // Over what is left.
    assert_eq!(q("name=b&ramQuota=100", Some(100)), Ok(100));
    let e = assert_err(
        q("name=b&ramQuota=101", Some(100)),
        400,
        "invalid_parameter",
        "ramQuota",
    );
    assert!(e.message.contains("too large"), "{e}");
    assert_err(
        q("name=b&ramQuotaMB=101", Some(100)),
        400,
        "invalid_parameter",
        "ramQuotaMB",
    );
    // ≥ 1 and an integer.
    for bad in ["0", "-5", "x", "", "1.5"] {
        assert_err(
            q(&format!("name=b&ramQuota={bad}"), None),
            400,
            "invalid_parameter",
            "ramQuota",
        );
    }
}

#[test]
fn replica_number_is_0_to_3() {
    for (v, r) in [("0", 0), ("1", 1), ("3", 3)] {
        let b = bucket_params(
            &form(&format!("name=b&ramQuota=1&replicaNumber={v}")),
            64,
            None,
        );
        assert_eq!(b.map(|b| b.replicas), Ok(r));
    }
    for bad in ["4", "-1", "one", ""] {
        let e = assert_err(
            bucket_params(
                &form(&format!("name=b&ramQuota=1&replicaNumber={bad}")),
                64,
                None,
            ),
            400,
            "invalid_parameter",
            "replicaNumber",
        );
        assert!(e.message.contains("between 0 and 3"), "{e}");
    }
}

#[test]
fn num_vbuckets_is_1_to_1024() {
    for (v, n) in [("1", 1), ("1024", 1024), ("128", 128)] {
        let b = bucket_params(
            &form(&format!("name=b&ramQuota=1&numVBuckets={v}")),
            64,
            None,
        );
        assert_eq!(b.map(|b| b.num_vbuckets), Ok(n));
    }
    for bad in ["0", "1025", "x"] {
        assert_err(
            bucket_params(
                &form(&format!("name=b&ramQuota=1&numVBuckets={bad}")),
                64,
                None,
            ),
            400,
            "invalid_parameter",
            "numVBuckets",
        );
    }
}

#[test]
fn flush_enabled_is_0_or_1() {
    let f = |v: &str| {
        bucket_params(
            &form(&format!("name=b&ramQuota=1&flushEnabled={v}")),
            64,
            None,
        )
        .map(|b| b.flush_enabled)
    };
    assert_eq!(f("1"), Ok(true));
    assert_eq!(f("0"), Ok(false));
    assert_err(f("2"), 400, "invalid_parameter", "flushEnabled");
}

#[test]
fn durability_min_level_only_none() {
    assert!(bucket_params(&form("name=b&ramQuota=1&durabilityMinLevel=none"), 64, None).is_ok());
    for l in ["majority", "majorityAndPersistActive", "persistToMajority"] {
        assert_err(
            bucket_params(
                &form(&format!("name=b&ramQuota=1&durabilityMinLevel={l}")),
                64,
                None,
            ),
            400,
            "unsupported",
            "durabilityMinLevel",
        );
    }
}

// ---- init (§3.2) ------------------------------------------------------------------------------

#[test]
fn jepsens_init_parameters_are_accepted() {
    let p = form(
        "username=Administrator&password=abc123&port=SAME&services=kv&memoryQuota=1024\
         &sendStats=false",
    );
    assert_eq!(
        init_params(&p, 9000, false),
        Ok(InitParams {
            username: "Administrator".into(),
            password: "abc123".into(),
            hostname: None,
            memory_quota_mb: Some(1024),
            cluster_name: None,
        })
    );
}

#[test]
fn the_clis_init_parameters_are_accepted() {
    let p = form(
        "username=admin&password=pw&port=SAME&services=kv&hostname=10.0.0.1&memoryQuota=512\
         &clusterName=c1",
    );
    let i = init_params(&p, 8091, false).expect("cli");
    assert_eq!(i.hostname.as_deref(), Some("10.0.0.1"));
    assert_eq!(i.cluster_name.as_deref(), Some("c1"));
    assert_eq!(i.memory_quota_mb, Some(512));
}

#[test]
fn every_ignored_init_parameter_is_accepted() {
    for k in INIT_IGNORED {
        let p = form(&format!("username=u&password=p&{k}=x"));
        assert!(init_params(&p, 8091, false).is_ok(), "{k}");
    }
}

#[test]
fn init_requires_username_and_password() {
    assert_err(
        init_params(&form("password=p"), 8091, false),
        400,
        "missing_parameter",
        "username",
    );
    assert_err(
        init_params(&form("username=u"), 8091, false),
        400,
        "missing_parameter",
        "password",
    );
    assert_err(
        init_params(&form("username=u&password="), 8091, false),
        400,
        "missing_parameter",
        "password",
    );
}

#[test]
fn init_port_is_same_or_the_admin_port() {
    for ok in ["SAME", "same", "9001"] {
        let p = form(&format!("username=u&password=p&port={ok}"));
        assert!(init_params(&p, 9001, false).is_ok(), "{ok}");
    }
    for bad in ["8091", "x", ""] {
        let p = form(&format!("username=u&password=p&port={bad}"));
        assert_err(
            init_params(&p, 9001, false),
            400,
            "invalid_parameter",
            "port",
        );
    }
}

#[test]
fn init_services_are_kv_only() {
    for ok in ["kv", "kv,kv", ""] {
        let p = form(&format!("username=u&password=p&services={ok}"));
        assert!(init_params(&p, 8091, false).is_ok(), "{ok}");
    }
    for bad in ["n1ql", "kv,index", "fts"] {
        let p = form(&format!("username=u&password=p&services={bad}"));
        assert_err(
            init_params(&p, 8091, false),
            400,
            "unsupported_service",
            "services",
        );
    }
}

#[test]
fn init_memory_quota_and_hostname_are_checked() {
    for bad in ["0", "x", "-1"] {
        let p = form(&format!("username=u&password=p&memoryQuota={bad}"));
        assert_err(
            init_params(&p, 8091, false),
            400,
            "invalid_parameter",
            "memoryQuota",
        );
    }
    let p = form("username=u&password=p&hostname=a+b");
    assert_err(
        init_params(&p, 8091, false),
        400,
        "invalid_parameter",
        "hostname",
    );
    let p = form("username=u&password=p&hostname=&clusterName=");
    let i = init_params(&p, 8091, false).expect("blank = absent");
    assert_eq!((i.hostname, i.cluster_name), (None, None));
}

#[test]
fn init_rejects_unknown_keys() {
    assert_err(
        init_params(&form("username=u&password=p&foo=1"), 8091, false),
        400,
        "unsupported_key",
        "foo",
    );
}

#[test]
fn legacy_settings_web_knows_only_username_password_port() {
    let p = form("username=Administrator&password=abc123&port=SAME");
    let i = init_params(&p, 9000, true).expect("jepsen's legacy init");
    assert_eq!(
        (i.username.as_str(), i.password.as_str()),
        ("Administrator", "abc123")
    );
    assert_err(
        init_params(&form("username=u&password=p&memoryQuota=1"), 9000, true),
        400,
        "unsupported_key",
        "memoryQuota",
    );
    assert_err(
        init_params(&form("username=u&password=p&port=9001"), 9000, true),
        400,
        "invalid_parameter",
        "port",
    );
}

#[test]
fn init_accepts_a_json_body() {
    let p = Params::parse(
        JSON,
        None,
        br#"{"username":"u","password":"p","services":["kv"],"memoryQuota":256}"#,
    )
    .expect("json");
    assert_eq!(
        init_params(&p, 8091, false).map(|i| i.memory_quota_mb),
        Ok(Some(256))
    );
}

// ---- addNode (§3.3) ---------------------------------------------------------------------------

#[test]
fn add_node_parameters() {
    let p =
        form("hostname=http%3A%2F%2F10.0.0.2%3A9001&user=Administrator&password=pw&services=kv");
    assert_eq!(
        add_node_params(&p),
        Ok(AddNodeParams {
            host: "10.0.0.2".into(),
            port: 9001,
            user: "Administrator".into(),
            password: "pw".into(),
            group: "Group 1".into(),
        })
    );
    let p = form("hostname=h&user=u&password=p&serverGroup=rack+2");
    assert_eq!(add_node_params(&p).map(|a| a.group), Ok("rack 2".into()));
}

#[test]
fn add_node_rejections() {
    let cases = [
        ("user=u&password=p", "missing_parameter", "hostname"),
        ("hostname=h&password=p", "missing_parameter", "user"),
        ("hostname=h&user=u", "missing_parameter", "password"),
        (
            "hostname=https://h&user=u&password=p",
            "unsupported",
            "hostname",
        ),
        (
            "hostname=h:0&user=u&password=p",
            "invalid_parameter",
            "hostname",
        ),
        (
            "hostname=h&user=u&password=p&services=index",
            "unsupported_service",
            "services",
        ),
        ("hostname=h&user=u&password=p&x=1", "unsupported_key", "x"),
    ];
    for (body, kind, param) in cases {
        assert_err(add_node_params(&form(body)), 400, kind, param);
    }
}

// ---- rebalance (§3.5) -------------------------------------------------------------------------

#[test]
fn rebalance_lists_with_jepsens_empty_ejected_nodes() {
    let p = form("knownNodes=n_0%40127.0.0.1%2Cn_1%40127.0.0.1&ejectedNodes=");
    assert_eq!(
        rebalance_params(&p),
        Ok((vec!["n_0@127.0.0.1".into(), "n_1@127.0.0.1".into()], vec![]))
    );
    let p = form("knownNodes=a&knownNodes=b&ejectedNodes=b");
    assert_eq!(
        rebalance_params(&p),
        Ok((vec!["a".into(), "b".into()], vec!["b".into()]))
    );
}

#[test]
fn rebalance_with_empty_known_nodes_answers_the_well_known_key() {
    for body in [
        "knownNodes=&ejectedNodes=",
        "ejectedNodes=a",
        "knownNodes=,,",
    ] {
        let e = assert_err(
            rebalance_params(&form(body)),
            400,
            "empty_known_nodes",
            "knownNodes",
        );
        assert_eq!(e.to_json()["empty_known_nodes"], 1);
    }
    assert_err(
        rebalance_params(&form("knownNodes=a&x=1")),
        400,
        "unsupported_key",
        "x",
    );
}

// ---- /diag/eval (§3.2) ------------------------------------------------------------------------

#[test]
fn diag_eval_understands_only_the_vbuckets_default() {
    for (body, n) in [
        ("ns_config:set(couchbase_num_vbuckets_default, 64).", 64),
        ("ns_config:set(couchbase_num_vbuckets_default,16).", 16),
        (
            "  ns_config : set ( couchbase_num_vbuckets_default ,\n 1024 ) .\n",
            1024,
        ),
        ("ns_config:set(couchbase_num_vbuckets_default, 8)", 8),
        (
            "ns_config%3Aset%28couchbase_num_vbuckets_default%2C+32%29.",
            32,
        ),
    ] {
        assert_eq!(diag_eval(body), Ok(n), "{body}");
    }
    for body in [
        "",
        "ns_config:set(other_key, 64).",
        "ns_config:set(couchbase_num_vbuckets_default, 64). os:cmd(\"rm\").",
        "ns_config:set(couchbase_num_vbuckets_default, x).",
        "ns_config:set(couchbase_num_vbuckets_default, 6 4).",
        "ns_config:get(couchbase_num_vbuckets_default).",
        "erlang:halt().",
    ] {
        assert_err(diag_eval(body), 400, "unsupported", "_");
    }
    for body in [
        "ns_config:set(couchbase_num_vbuckets_default, 0).",
        "ns_config:set(couchbase_num_vbuckets_default, 1025).",
        "ns_config:set(couchbase_num_vbuckets_default, 99999999999).",
    ] {
        assert_err(diag_eval(body), 400, "invalid_parameter", "_");
    }
}
