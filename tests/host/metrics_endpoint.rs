//! `interlink node --metrics ADDR` (and the configuration's `metrics_listen`): two node
//! processes on loopback serve their metrics on `GET /metrics`, answer anything else with
//! 404 (400 for a request head too large) and keep serving, and `interlink status` shows the
//! same names as /metrics.

use crate::manager_pair;

use interlink::fabric::ProviderChoice;
use manager_pair::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A node process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `interlink node` with `args` and returns it with the address its metrics
/// endpoint printed.
fn start(config: &Path, args: &[&str]) -> (Node, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_interlink"))
        .arg("node")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn interlink node");
    let stdout = child.stdout.take().expect("stdout");
    let node = Node(child);
    let (tx, rx) = mpsc::channel();
    // Reads stdout to its end (the node's later lines must not hit a closed pipe).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("metrics on http://") {
                let addr = rest.trim_end_matches("/metrics").parse::<SocketAddr>();
                let _ = tx.send(addr.expect("metrics address"));
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("the node printed its metrics address");
    (node, addr)
}

/// Sends `request` and returns the status code and body of the answer.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).expect("send the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    if code == 200 {
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
    }
    (code, body.to_string())
}

fn get_metrics(addr: SocketAddr) -> String {
    let (code, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    body
}

/// Metric names (without labels) of the sample lines of an exposition.
fn metric_names<'a>(series: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    series
        .map(|s| s.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(socket: &Path, json: bool) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_interlink"));
    c.arg("status").arg("--socket").arg(socket);
    if json {
        c.arg("--json");
    }
    let out = c.output().expect("run interlink status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn node_serves_metrics_and_status_shows_the_same_names() {
    let dir = temp_dir("metrics-endpoint");
    let (mut a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    // A from its configuration file, B from the command line.
    a.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let a = a.with_control_socket(dir.join("a.sock"));
    let b = b.with_control_socket(dir.join("b.sock"));
    let (ca, cb) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&ca, a.to_toml_string()).unwrap();
    std::fs::write(&cb, b.to_toml_string()).unwrap();
    let (_na, addr_a) = start(&ca, &["--messenger", "probe:low"]);
    let (_nb, addr_b) = start(
        &cb,
        &["--messenger", "probe:low", "--metrics", "127.0.0.1:0"],
    );

    // Both links come up, and the messaging probe's client is ready on A.
    let ready = |addr, node: &str| {
        let text = get_metrics(addr);
        text.contains(&format!(
            "interlink_link_state{{node=\"{node}\",link=\"0\"}} 3"
        )) && text.contains(&format!(
            "interlink_client_state{{node=\"{node}\",client=\"probe\"}} 2"
        ))
    };
    wait_for("A's link and client ready in its metrics", || {
        ready(addr_a, "1")
    });
    wait_for("B's link and client ready in its metrics", || {
        ready(addr_b, "2")
    });
    let text = get_metrics(addr_a);
    assert!(
        text.contains("# HELP interlink_link_state "),
        "no description:\n{text}"
    );
    assert!(text.contains("interlink_messaging_messages_sent_total{node=\"1\",client=\"probe\"}"));

    // Anything but GET /metrics: 404; a head larger than the bound: 400; then still served.
    assert_eq!(http(addr_a, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr_a, b"POST /metrics HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr_a, b"\x00\xff garbage \x07\r\n\r\n").0, 404);
    // 8 KiB (the bound) without the end of a head: refused once the bound is read.
    assert_eq!(http(addr_a, &[b'A'; 8192]).0, 400);
    let served = get_metrics(addr_a);
    let served_names = metric_names(
        served
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty()),
    );
    assert!(served_names.contains("interlink_link_state"), "{served}");

    // interlink status: the same names, in JSON and in text.
    let json: serde_json::Value =
        serde_json::from_str(&status(&dir.join("a.sock"), true)).expect("status JSON");
    let metrics = json
        .get("metrics")
        .and_then(|m| m.as_object())
        .expect("a metrics section in the status JSON");
    assert_eq!(
        metrics.get("interlink_link_state{node=\"1\",link=\"0\"}"),
        Some(&serde_json::json!(3.0))
    );
    let status_names = metric_names(metrics.keys().map(String::as_str));
    assert!(
        served_names.is_subset(&status_names),
        "/metrics has {served_names:?}, status {status_names:?}"
    );
    let text = status(&dir.join("a.sock"), false);
    assert!(text.contains("metrics:"), "{text}");
    assert!(
        text.contains("interlink_link_state{node=\"1\",link=\"0\"} 3"),
        "{text}"
    );
}
