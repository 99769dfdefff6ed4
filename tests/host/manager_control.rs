//! The control socket: protocol, socket-file life cycle, rendering, and `interlink status`.

use interlink::manager::control::*;
use interlink::manager::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A unique socket path under the temp directory (removed when dropped).
struct TempSock(PathBuf);

impl TempSock {
    fn new(tag: &str) -> TempSock {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("il-ctl-{}-{n}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempSock(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fixed_status() -> NodeStatus {
    let link = |id: LinkId, state, clients: &[&str], rate: f64| LinkStatus {
        id,
        local: format!("198.18.{id}.1"),
        peer: format!("198.18.{id}.2"),
        device: if id == 0 {
            "rxe0".into()
        } else {
            String::new()
        },
        provider: "verbs".into(),
        state,
        since_ms: 12_345 + u64::from(id),
        last_error: (id == 1).then(|| "port down".to_string()),
        clients: clients.iter().map(|s| s.to_string()).collect(),
        rate_bps: rate,
        counters: LinkCounters {
            unauthenticated_packets: 0,
            ops: 1000 * u64::from(id + 1),
            bytes: 5 << 20,
            errors: u64::from(id),
            failures: u64::from(id),
            reconnects: 1,
            heartbeats: 500,
            heartbeat_misses: 2 * u64::from(id),
            heartbeat_rtt: LatencySummary {
                count: 500,
                p50_us: 7.5,
                p99_us: 21.25,
                max_us: 80.0,
            },
            pending_dropped: 0,
        },
    };
    let client = |name: &str, class, state, link: Option<LinkId>, ops: u64| ClientStatus {
        name: name.into(),
        class,
        state,
        link,
        home: Some(0),
        generation: 3,
        qps: 2,
        regions: 1,
        rate_bps: 1536.0,
        refused: None,
        counters: ClientCounters {
            ops,
            bytes: ops * 4096,
            errors: 0,
            failovers: 1,
            migrations: 2,
            reconnects: 3,
            latency: LatencySummary {
                count: ops,
                p50_us: 11.0,
                p99_us: 42.5,
                max_us: 99.0,
            },
        },
    };
    NodeStatus {
        cluster_id: 42,
        node_id: 1,
        partner_id: 2,
        incarnation: 7,
        partner_incarnation: None,
        uptime_ms: 3_723_000,
        links: vec![
            link(0, LinkState::Ready, &["mirror", "giveback"], 2.5e6),
            link(1, LinkState::Down, &[], 0.0),
        ],
        clients: vec![
            client(
                "mirror",
                BandwidthClass::High,
                ClientState::Ready,
                Some(0),
                100,
            ),
            client(
                "giveback",
                BandwidthClass::Low,
                ClientState::Ready,
                Some(0),
                0,
            ),
            client(
                "stats",
                BandwidthClass::Medium,
                ClientState::Waiting,
                None,
                5,
            ),
        ],
    }
}

/// Answers Status with the fixed snapshot, echoes client commands, counts calls.
struct Fake {
    calls: AtomicUsize,
}

impl ControlHandler for Fake {
    fn handle(&self, request: ControlRequest) -> ControlResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request {
            ControlRequest::Status => ControlResponse::Status {
                status: fixed_status(),
            },
            ControlRequest::Client { name, command } => {
                if name == "boom" {
                    panic!("handler bug");
                }
                ControlResponse::Ok {
                    value: serde_json::json!({ "client": name, "echo": command }),
                }
            }
            ControlRequest::Shutdown => ControlResponse::Ok {
                value: serde_json::Value::Null,
            },
        }
    }
}

fn fake() -> Arc<Fake> {
    Arc::new(Fake {
        calls: AtomicUsize::new(0),
    })
}

fn start(sock: &TempSock) -> ControlServer {
    ControlServer::start(sock.path(), fake()).expect("start control server")
}

/// Sends raw lines on one connection and reads one response line per request line.
fn raw_exchange(path: &Path, lines: &[&str]) -> Vec<ControlResponse> {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    lines
        .iter()
        .map(|l| {
            w.write_all(l.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
            let mut resp = String::new();
            r.read_line(&mut resp).unwrap();
            serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
        })
        .collect()
}

#[test]
fn status_round_trip() {
    let sock = TempSock::new("rt");
    let server = start(&sock);
    assert_eq!(server.path(), sock.path());
    let resp = request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap();
    assert_eq!(
        resp,
        ControlResponse::Status {
            status: fixed_status()
        }
    );
    let resp = request(
        sock.path(),
        &ControlRequest::Client {
            name: "mirror".into(),
            command: serde_json::json!({"flush": true}),
        },
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        resp,
        ControlResponse::Ok {
            value: serde_json::json!({"client": "mirror", "echo": {"flush": true}})
        }
    );
    let resp = request(sock.path(), &ControlRequest::Shutdown, TIMEOUT).unwrap();
    assert!(matches!(resp, ControlResponse::Ok { .. }), "{resp:?}");
}

#[test]
fn several_requests_on_one_connection() {
    let sock = TempSock::new("multi");
    let handler = fake();
    let _server = ControlServer::start(sock.path(), handler.clone()).unwrap();
    let mut client = ControlClient::connect(sock.path(), TIMEOUT).unwrap();
    for i in 0..5 {
        let resp = client
            .call(&ControlRequest::Client {
                name: format!("c{i}"),
                command: serde_json::json!(i),
            })
            .unwrap();
        assert_eq!(
            resp,
            ControlResponse::Ok {
                value: serde_json::json!({"client": format!("c{i}"), "echo": i})
            }
        );
    }
    assert!(matches!(
        client.call(&ControlRequest::Status).unwrap(),
        ControlResponse::Status { .. }
    ));
    // Pipelined: several lines written at once are answered in order.
    let resps = raw_exchange(
        sock.path(),
        &[
            r#"{"cmd":"status"}"#,
            r#"{"cmd":"shutdown"}"#,
            r#"{"cmd":"status"}"#,
        ],
    );
    assert!(matches!(resps[0], ControlResponse::Status { .. }));
    assert!(matches!(resps[1], ControlResponse::Ok { .. }));
    assert!(matches!(resps[2], ControlResponse::Status { .. }));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 9);
}

#[test]
fn malformed_lines_get_errors_and_the_server_keeps_serving() {
    let sock = TempSock::new("bad");
    let _server = start(&sock);
    let resps = raw_exchange(
        sock.path(),
        &[
            "not json",
            "",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"client","name":"x"}"#,
            r#"{"cmd":"client","name":"boom","command":null}"#,
            r#"{"cmd":"status"}"#,
        ],
    );
    for r in &resps[..5] {
        match r {
            ControlResponse::Error { message } => assert!(!message.is_empty()),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    assert!(matches!(resps[5], ControlResponse::Status { .. }));
    // Invalid UTF-8 is an error too.
    let mut s = UnixStream::connect(sock.path()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"\xff\xfe{\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains(r#""result":"error""#), "{line}");
    // A new connection is served normally.
    assert!(matches!(
        request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap(),
        ControlResponse::Status { .. }
    ));
}

#[test]
fn overlong_line_is_refused_and_the_connection_closed() {
    let sock = TempSock::new("long");
    let _server = start(&sock);
    let mut s = UnixStream::connect(sock.path()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let big = vec![b'x'; MAX_LINE + 10];
    // The server may close before it has read everything: a write error is fine.
    let _ = s.write_all(&big);
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    let first = rest.lines().next().unwrap_or_default();
    let resp: ControlResponse = serde_json::from_str(first).unwrap();
    assert!(
        matches!(&resp, ControlResponse::Error { message } if message.contains("longer")),
        "{resp:?}"
    );
    // The server still serves.
    assert!(matches!(
        request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap(),
        ControlResponse::Status { .. }
    ));
}

#[test]
fn a_stuck_client_does_not_block_others() {
    let sock = TempSock::new("stuck");
    let _server = start(&sock);
    let mut stuck = UnixStream::connect(sock.path()).unwrap();
    stuck.write_all(br#"{"cmd":"sta"#).unwrap();
    assert!(matches!(
        request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap(),
        ControlResponse::Status { .. }
    ));
}

#[test]
fn stale_socket_file_is_replaced() {
    let sock = TempSock::new("stale");
    drop(UnixListener::bind(sock.path()).unwrap());
    assert!(std::fs::symlink_metadata(sock.path())
        .unwrap()
        .file_type()
        .is_socket());
    let _server = start(&sock);
    assert!(matches!(
        request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap(),
        ControlResponse::Status { .. }
    ));
}

#[test]
fn second_server_on_the_same_path_is_refused() {
    let sock = TempSock::new("inuse");
    let _first = start(&sock);
    match ControlServer::start(sock.path(), fake()) {
        Err(ControlError::InUse { path }) => assert_eq!(path, sock.path()),
        other => panic!("expected InUse, got {other:?}"),
    }
    // The first one is undisturbed.
    assert!(matches!(
        request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap(),
        ControlResponse::Status { .. }
    ));
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let sock = TempSock::new("file");
    std::fs::write(sock.path(), b"precious").unwrap();
    match ControlServer::start(sock.path(), fake()) {
        Err(ControlError::NotSocket { .. }) => {}
        other => panic!("expected NotSocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(sock.path()).unwrap(), b"precious");
}

#[test]
fn socket_is_owner_only_parent_created_and_removed_on_drop() {
    let dir = std::env::temp_dir().join(format!("il-ctl-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub").join("node.sock");
    let server = ControlServer::start(&path, fake()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o022, 0, "{dir_mode:o}");
    // Only the socket is left in the directory (no temporary names).
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node.sock")]);
    drop(server);
    assert!(!path.exists());
    assert!(matches!(
        request(&path, &ControlRequest::Status, TIMEOUT),
        Err(ControlError::NotRunning { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn drop_with_an_open_connection_returns() {
    let sock = TempSock::new("dropconn");
    let server = start(&sock);
    let mut client = ControlClient::connect(sock.path(), TIMEOUT).unwrap();
    client.call(&ControlRequest::Status).unwrap();
    let t = std::time::Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!sock.path().exists());
    assert!(client.call(&ControlRequest::Status).is_err());
}

#[test]
fn no_server_gives_not_running() {
    let sock = TempSock::new("none");
    let err = request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap_err();
    assert!(matches!(err, ControlError::NotRunning { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("no node listening on {}", sock.path().display())
    );
    // A stale socket file: nobody answers either.
    drop(UnixListener::bind(sock.path()).unwrap());
    let err = request(sock.path(), &ControlRequest::Status, TIMEOUT).unwrap_err();
    assert!(matches!(err, ControlError::NotRunning { .. }), "{err:?}");
}

#[test]
fn silent_server_times_out() {
    let sock = TempSock::new("silent");
    let _listener = UnixListener::bind(sock.path()).unwrap();
    let err = request(
        sock.path(),
        &ControlRequest::Status,
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(matches!(err, ControlError::Timeout { .. }), "{err:?}");
}

#[test]
fn render_status_shows_every_link_and_client() {
    let status = fixed_status();
    let text = render_status(&status);
    assert!(
        text.starts_with(
            "node 1  partner 2  cluster 42  incarnation 7  partner incarnation -  uptime 1h02m"
        ),
        "{text}"
    );
    assert!(text.contains("LINKS"), "{text}");
    assert!(text.contains("CLIENTS"), "{text}");
    for l in &status.links {
        assert!(
            text.contains(&format!("{} -> {}", l.local, l.peer)),
            "{text}"
        );
    }
    for c in &status.clients {
        assert!(text.contains(&c.name), "{text}");
    }
    for state in ["ready", "down", "waiting"] {
        assert!(text.contains(state), "{state}: {text}");
    }
    for unit in ["5.0 MiB", "2.4 MiB/s", "1.5 KiB/s", "7.5/21.2", "port down"] {
        assert!(text.contains(unit), "{unit}: {text}");
    }
    // Link rows start with their id; every row of a table has its columns aligned: the header's
    // last column ends where every row's does.
    let lines: Vec<&str> = text.lines().collect();
    let links_at = lines.iter().position(|l| *l == "LINKS").unwrap();
    let header = lines[links_at + 1];
    assert!(header.trim_start().starts_with("ID"), "{header}");
    for (i, row) in lines[links_at + 2..links_at + 4].iter().enumerate() {
        assert!(row.trim_start().starts_with(&i.to_string()), "{row}");
        assert_eq!(row.chars().count(), header.chars().count(), "{text}");
    }
    let clients_at = lines.iter().position(|l| *l == "CLIENTS").unwrap();
    let header = lines[clients_at + 1];
    for (row, c) in lines[clients_at + 2..].iter().zip(&status.clients) {
        assert!(row.trim_start().starts_with(&c.name), "{row}");
        assert_eq!(row.chars().count(), header.chars().count(), "{text}");
    }
    // A waiting client has no link: "-".
    let stats = lines.iter().find(|l| l.contains("stats")).unwrap();
    assert!(stats.split_whitespace().any(|w| w == "-"), "{stats}");
}

#[test]
fn render_status_of_an_empty_node() {
    let mut status = fixed_status();
    status.links.clear();
    status.clients.clear();
    status.partner_incarnation = Some(9);
    let text = render_status(&status);
    assert!(text.contains("partner incarnation 9"), "{text}");
    assert_eq!(text.matches("(none)").count(), 2, "{text}");
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interlink"))
}

#[test]
fn cli_status_json_round_trips() {
    let sock = TempSock::new("cli-json");
    let _server = start(&sock);
    let out = cli()
        .args(["status", "--json", "--socket"])
        .arg(sock.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: NodeStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status, fixed_status());
}

#[test]
fn cli_status_human() {
    let sock = TempSock::new("cli-human");
    let _server = start(&sock);
    let out = cli()
        .args(["status", "--socket"])
        .arg(sock.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, render_status(&fixed_status()));
    for c in ["mirror", "giveback", "stats"] {
        assert!(text.contains(c), "{text}");
    }
}

#[test]
fn cli_status_via_config_with_a_relative_socket() {
    let dir = std::env::temp_dir().join(format!("il-ctl-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run").join("ctl.sock");
    let _server = ControlServer::start(&path, fake()).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "cluster_id = 42\nnode_id = 1\npartner_id = 2\nsecret_file = \"secret\"\n\
         control_socket = \"run/ctl.sock\"\n\n[[link]]\nid = 0\nlocal = \"198.18.0.1\"\npeer = \"198.18.0.2\"\n",
    )
    .unwrap();
    let out = cli()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: NodeStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status, fixed_status());

    // A config without control_socket says so.
    std::fs::write(&config, "cluster_id = 42\n").unwrap();
    let out = cli()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control_socket"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_status_without_a_node_exits_1() {
    let out = cli()
        .args(["status", "--socket", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node listening on /nonexistent"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn cli_status_needs_exactly_one_target() {
    let out = cli().args(["status"]).output().unwrap();
    assert!(!out.status.success());
    let out = cli()
        .args(["status", "--socket", "/a", "--config", "/b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn render_status_names_a_refused_client_with_both_values() {
    let mut status = fixed_status();
    status.clients[2].state = ClientState::Refused;
    status.clients[2].refused = Some(interlink::manager::TermMismatch {
        term: "window slots".into(),
        ours: Some(64),
        theirs: Some(32),
    });
    let text = render_status(&status);
    assert!(
        text.contains("stats refused: window slots: ours 64, partner's 32"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("stats"))
        .unwrap();
    assert!(row.contains("refused"), "{row}");
}
