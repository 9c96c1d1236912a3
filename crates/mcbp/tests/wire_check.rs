//! Wire check against an independent implementation: Wireshark's couchbase dissector,
//! run through `shared/tools/mcbp-decode`.
//!
//! One frame of every typed message crosses a loopback TCP connection while the tool
//! captures; the dissector must find zero malformed frames, and opcode, vbucket,
//! status, opaque and key as we sent them. Requests go client -> server, responses
//! server -> client, like real traffic.
//!
//! Needs tshark and capture rights. `scripts/test` installs tshark and sets
//! `CONDUIT_REQUIRE_WIRE_CHECK=1`, which turns a missing tool into a failure; without
//! it the test says it was skipped and passes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcbp::{Frame, Magic};
use serde_json::Value;

fn tool_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MCBP_DECODE") {
        return Some(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = manifest.join("../../../shared/tools/mcbp-decode");
    p.exists().then_some(p)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn skip_or_fail(why: &str) {
    if std::env::var("CONDUIT_REQUIRE_WIRE_CHECK").is_ok_and(|v| v == "1") {
        panic!("wire check required but impossible: {why}");
    }
    eprintln!("SKIPPED wire check: {why}");
}

fn all_samples() -> Vec<(&'static str, Frame)> {
    let mut v = common::dcp_samples::dcp_samples();
    v.extend(common::kv_samples::kv_samples());
    v
}

#[test]
fn every_typed_message_decodes_cleanly_in_wireshark() {
    let Some(tool) = tool_path() else {
        return skip_or_fail("shared/tools/mcbp-decode not found (set MCBP_DECODE)");
    };
    if !have("tshark") || !have("dumpcap") {
        return skip_or_fail("tshark/dumpcap not installed (scripts/test installs them)");
    }
    let samples = all_samples();
    let (requests, responses): (Vec<_>, Vec<_>) = samples
        .iter()
        .partition(|(_, f)| f.magic() == Magic::ClientRequest);
    assert!(responses
        .iter()
        .all(|(_, f)| f.magic() == Magic::ClientResponse));

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let out = std::env::temp_dir().join(format!("conduit-wire-{port}.pcapng"));
    let mut child = Command::new("python3")
        .arg(&tool)
        .args([
            "--capture",
            "--port",
            &port.to_string(),
            "--seconds",
            "4",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcbp-decode");

    // Start traffic only once the tool says it is capturing.
    let stderr = child.stderr.take().expect("piped stderr");
    let mut err_lines = BufReader::new(stderr).lines();
    let mut stderr_text = String::new();
    let started = Instant::now();
    loop {
        match err_lines.next() {
            Some(Ok(line)) => {
                stderr_text.push_str(&line);
                stderr_text.push('\n');
                if line.contains("capturing on") {
                    break;
                }
            }
            _ => {
                let _ = child.wait();
                panic!("mcbp-decode did not start capturing:\n{stderr_text}");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "capture start hung"
        );
    }
    // dumpcap reports "Capturing on" a moment before its filter sees packets; give
    // it a second so the first frames are not lost (the tool's byte accounting would
    // otherwise see a capture that starts mid-stream).
    std::thread::sleep(Duration::from_secs(1));
    let stderr_rest = std::thread::spawn(move || {
        err_lines
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });

    let resp_bytes: Vec<u8> = responses
        .iter()
        .flat_map(|(_, f)| f.bytes().to_vec())
        .collect();
    let req_len: usize = requests.iter().map(|(_, f)| f.wire_len()).sum();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = vec![0u8; req_len];
        sock.read_exact(&mut got).expect("read all requests");
        sock.write_all(&resp_bytes).expect("write responses");
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest); // until the client closes
        got
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for (_, f) in &requests {
        client.write_all(f.bytes()).expect("write request");
    }
    let mut echoed = vec![0u8; responses.iter().map(|(_, f)| f.wire_len()).sum()];
    client.read_exact(&mut echoed).expect("read responses");
    drop(client);
    let got = server.join().expect("server thread");
    assert_eq!(got.len(), req_len);

    let output = child.wait_with_output().expect("mcbp-decode finished");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr_tail = stderr_rest.join().unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(
        output.status.success(),
        "mcbp-decode exit {:?}\nstderr: {stderr_tail}\nstdout:\n{stdout}",
        output.status.code()
    );
    assert!(stdout.contains("malformed: 0"), "summary:\n{stdout}");

    let decoded: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("tool prints JSON objects"))
        .collect();
    let to_port: Vec<&Value> = decoded
        .iter()
        .filter(|v| v["direction"] == "to_port")
        .collect();
    let from_port: Vec<&Value> = decoded
        .iter()
        .filter(|v| v["direction"] == "from_port")
        .collect();
    assert_eq!(
        (to_port.len(), from_port.len()),
        (requests.len(), responses.len()),
        "frames decoded per direction; tool output:\n{stdout}"
    );
    check_direction(&requests, &to_port);
    check_direction(&responses, &from_port);
    eprintln!(
        "wire check: {} requests and {} responses decoded cleanly by tshark",
        requests.len(),
        responses.len()
    );
}

fn check_direction(sent: &[&(&str, Frame)], seen: &[&Value]) {
    for ((name, f), v) in sent.iter().zip(seen) {
        let ctx = format!("{name}: {v}");
        assert_eq!(v["malformed"], Value::Bool(false), "{ctx}");
        assert_eq!(
            v["opcode"].as_u64(),
            Some(u64::from(f.header().opcode)),
            "{ctx}"
        );
        assert_eq!(v["opaque"].as_u64(), Some(u64::from(f.opaque().0)), "{ctx}");
        assert_eq!(
            v["key_length"].as_u64(),
            Some(f.key().len() as u64),
            "{ctx}"
        );
        assert_eq!(
            v["extras_length"].as_u64(),
            Some(f.extras().len() as u64),
            "{ctx}"
        );
        assert_eq!(
            v["body_length"].as_u64(),
            Some(u64::from(f.header().body_len)),
            "{ctx}"
        );
        if f.is_request() {
            assert_eq!(
                v["vbucket"].as_u64(),
                Some(u64::from(f.vbucket().0)),
                "{ctx}"
            );
        } else {
            assert_eq!(
                v["status"].as_u64(),
                Some(u64::from(f.status().to_raw())),
                "{ctx}"
            );
        }
        if !f.key().is_empty() {
            if let Some(k) = v["key"].as_str() {
                assert_eq!(k.as_bytes(), f.key(), "{ctx}");
            }
        }
    }
}
