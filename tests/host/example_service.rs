//! The storage service example (`examples/storage_service.rs`) end to end: two node
//! processes on the soft provider over loopback; PUTs through node A, A killed with -9 in the
//! middle of them; B takes A's key set over and serves every acknowledged key (it replayed
//! A's mirrored shadow log); A restarts, B gives the set back and A serves every acknowledged
//! key again (from the disk B wrote at the giveback; its own log's recovery applies nothing
//! twice). Each key is written once, so every key found must say `applications=1`.

use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound of every wait (a loaded CI machine may be slow; none of them is a timing check).
const WAIT: Duration = Duration::from_secs(60);
/// PUTs sent to node A.
const KEYS: usize = 400;
/// Acknowledged PUTs seen before node A is killed.
const KILL_AFTER: usize = 100;

/// The example binary of this test's profile, built first into the same target directory
/// (`cargo test --test host example_service::` alone does not build examples; a plain `cargo test`
/// has built it already, and then this build does nothing).
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/<test> -> target/<profile>/examples/storage_service
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--example", "storage_service", "--target-dir"]);
    build.arg(target_dir);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --example storage_service: {status}"
    );
    profile_dir.join("examples").join("storage_service")
}

/// A running node: its standard input, and every line it printed so far.
struct Node {
    child: Child,
    stdin: ChildStdin,
    out: Arc<(Mutex<Output>, Condvar)>,
}

/// What a node printed so far, and whether its output ended (the process is gone).
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    ended: bool,
}

impl Node {
    fn start(bin: &Path, node: &str, dir: &Path, port: u16) -> Node {
        let mut child = Command::new(bin)
            .args(["--node", node, "--port", &port.to_string(), "--dir"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let o = out.clone();
        let tag = node.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.starts_with("value ") && !line.starts_with("ok ") {
                    println!("{tag}: {line}");
                }
                o.0.lock().lines.push(line);
                o.1.notify_all();
            }
            o.0.lock().ended = true; // end of output: the process is gone
            o.1.notify_all();
        });
        Node { child, stdin, out }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the node");
    }

    /// Waits for a line after the first `from` ones that satisfies `pred`.
    fn wait_line(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut g = self.out.0.lock();
        loop {
            if let Some(l) = g.lines.iter().skip(from).find(|l| pred(l)) {
                return l.clone();
            }
            assert!(!g.ended, "the node exited while waiting for {what}");
            assert!(
                !self.out.1.wait_until(&mut g, deadline).timed_out(),
                "timed out waiting for {what}"
            );
        }
    }

    fn lines(&self) -> usize {
        self.out.0.lock().lines.len()
    }

    /// Sends `command` and returns the first later line that starts with `answer`.
    fn ask(&mut self, command: &str, answer: &str) -> String {
        let from = self.lines();
        self.send(command);
        self.wait_line(from, command, |l| l.starts_with(answer))
    }

    /// Asks `status` until `pred` holds for the answer.
    fn wait_status(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.ask("status", "status ");
            if pred(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `get KEY`: Some((value, set, applications, via)) or None when missing.
    fn get(&mut self, key: &str) -> Option<(String, u32, u32, String)> {
        let (found, missing) = (format!("value {key} "), format!("missing {key} "));
        let from = self.lines();
        self.send(&format!("get {key}"));
        let answer = self.wait_line(from, key, |l| {
            l.starts_with(&found) || l.starts_with(&missing)
        });
        if answer.starts_with("missing") {
            return None;
        }
        let w: Vec<&str> = answer.split(' ').collect();
        let field = |name: &str| {
            w.iter()
                .find_map(|x| x.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {answer:?}"))
                .to_string()
        };
        Some((
            w[2].to_string(),
            field("set=").parse().expect("set"),
            field("applications=").parse().expect("applications"),
            field("via="),
        ))
    }

    /// Every line, once the process's output ended.
    fn all_lines(&self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut g = self.out.0.lock();
        while !g.ended {
            assert!(
                !self.out.1.wait_until(&mut g, deadline).timed_out(),
                "timed out waiting for the end of the output"
            );
        }
        g.lines.clone()
    }

    /// Ends the node: standard input closed, then it stops and exits (killed if it does not
    /// within the bound).
    fn stop(mut self) {
        drop(self.stdin);
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the node did not exit after its input closed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn no_acknowledged_put_is_lost_across_takeover_and_giveback() {
    let bin = example_bin();
    let dir = std::env::temp_dir().join(format!("interlink-example-kv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // Node B listens on the bootstrap port of its address.
    let port = TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();

    let mut a = Node::start(&bin, "a", &dir, port);
    let mut b = Node::start(&bin, "b", &dir, port);
    a.wait_status("A serves its set", |s| {
        s.contains("serving={1}") && s.contains("shadow_connected=true")
    });
    b.wait_status("B serves its set", |s| {
        s.contains("serving={2}") && s.contains("shadow_connected=true")
    });
    // Messaging: a key A does not hold is asked of B.
    assert_eq!(a.get("nothing"), None);

    // PUTs, pipelined; A is killed with -9 once KILL_AFTER of them are acknowledged.
    let from = a.lines();
    let puts: String = (0..KEYS).map(|i| format!("put k{i} v{i}\n")).collect();
    a.stdin.write_all(puts.as_bytes()).expect("send puts");
    let nth = format!("k{}", KILL_AFTER - 1);
    a.wait_line(from, "acknowledgements", |l| {
        l.starts_with(&format!("ok {nth} "))
    });
    a.child.kill().expect("kill -9 A");
    a.child.wait().expect("reap A");
    let mut acked = Vec::new();
    for line in a.all_lines().iter().skip(from) {
        if let Some(rest) = line.strip_prefix("ok k") {
            let (i, how) = rest.split_once(' ').expect("ok kI how");
            assert_eq!(
                how, "mirrored",
                "every PUT is acknowledged mirrored (B is up)"
            );
            acked.push(i.parse::<usize>().expect("key index"));
        }
    }
    assert!(acked.len() >= KILL_AFTER, "{} acknowledged", acked.len());
    println!(
        "{} PUTs acknowledged of {KEYS} sent before kill -9",
        acked.len()
    );

    // B takes A's set over (its log replayed) and serves every acknowledged key.
    b.wait_status("B serves A's set", |s| s.contains("serving={1, 2}"));
    let mut on_b = BTreeMap::new();
    for i in 0..KEYS {
        let found = b.get(&format!("k{i}"));
        if let Some((value, set, applications, via)) = &found {
            assert_eq!(
                (value.as_str(), *set, via.as_str()),
                (format!("v{i}").as_str(), 1, "local")
            );
            assert_eq!(*applications, 1, "k{i} applied once on B");
            on_b.insert(i, value.clone());
        }
    }
    for i in &acked {
        assert!(
            on_b.contains_key(i),
            "acknowledged k{i} lost at the takeover"
        );
    }
    println!("{} keys on B after the takeover", on_b.len());

    // A restarts: B gives its set back; A serves it again, the same keys, each applied once.
    let mut a = Node::start(&bin, "a", &dir, port);
    a.wait_status("A serves its set again", |s| s.contains("serving={1}"));
    b.wait_status("B gave A's set back", |s| s.contains("serving={2}"));
    for i in 0..KEYS {
        let found = a.get(&format!("k{i}"));
        match (&found, on_b.get(&i)) {
            (Some((value, set, applications, via)), Some(before)) => {
                assert_eq!(
                    (value, *set, via.as_str()),
                    (before, 1, "local"),
                    "k{i} on A"
                );
                assert_eq!(*applications, 1, "k{i} applied once on A");
            }
            (None, None) => {}
            (found, before) => panic!("k{i}: on A {found:?}, on B before the giveback {before:?}"),
        }
    }

    // A takes writes again (a new log generation); B reads them through A by messaging.
    assert_eq!(
        a.ask("put fresh after-giveback", "ok fresh"),
        "ok fresh mirrored"
    );
    let fresh = b.get("fresh").expect("fresh via A");
    assert_eq!(
        (fresh.0.as_str(), fresh.1, fresh.3.as_str()),
        ("after-giveback", 1, "partner")
    );

    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
