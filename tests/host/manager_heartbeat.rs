//! Fast failure detection: a heartbeat interval of 1 ms on the soft provider over loopback.
//! Node A runs in this process, node B is an `interlink node` process. While both run, a
//! healthy idle pair is never declared down over thousands of intervals; once node B is frozen
//! (SIGSTOP: its READ responses and its progress counter stop, as for a cut link, while its
//! bootstrap connection stays open and its port up) node A declares the link down by the
//! heartbeat alone.

use crate::manager_pair;
use interlink::manager::{loopback_pair, LinkState, LinkStatus, Manager};
use manager_pair::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Heartbeat interval under test, milliseconds.
const INTERVAL_MS: u64 = 1;
/// Missed intervals before the link is declared down: the largest count the configuration
/// takes, a window of about a second, wide enough that a loaded test machine that stops a
/// node's threads for a while (a hundred milliseconds was seen with 100 intervals while other
/// builds and a VM ran) raises no alarm.
const MISS_COUNT: u32 = 1000;
/// Heartbeat READs node A completes while the pair idles.
const IDLE_READS: u64 = 3000;
/// Generous bound of every wait (a loaded machine).
const WAIT: Duration = Duration::from_secs(120);

/// A node process, continued and killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        signal(self, "-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(n: &Node, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(n.0.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {}", n.0.id());
}

/// Node A's only link.
fn link(m: &Manager) -> LinkStatus {
    let mut s = m.status().expect("status");
    assert_eq!(s.links.len(), 1);
    s.links.remove(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < WAIT, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_ms_heartbeat_detects_a_frozen_partner_and_raises_no_false_alarm_while_idle() {
    init_logs();
    let dir = temp_dir("hb1ms");
    let (a, b) = loopback_pair(&dir).expect("loopback pair");
    let a = a.with_heartbeat(INTERVAL_MS, MISS_COUNT);
    let b = b.with_heartbeat(INTERVAL_MS, MISS_COUNT);
    let b_file = dir.join("b.toml");
    std::fs::write(&b_file, b.to_toml_string()).expect("write node B's configuration");
    let node_b = Node(
        Command::new(env!("CARGO_BIN_EXE_interlink"))
            .arg("node")
            .arg("--config")
            .arg(&b_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node B"),
    );
    let ma = Manager::start(a).expect("start node A");
    wait_for("link ready", || link(&ma).state == LinkState::Ready);

    // Idle and healthy: thousands of intervals, the link never goes down.
    let start = link(&ma).counters;
    wait_for("heartbeat reads while idle", || {
        link(&ma).counters.heartbeats >= start.heartbeats + IDLE_READS
    });
    let idle = link(&ma);
    assert_eq!(idle.state, LinkState::Ready, "{:?}", idle.last_error);
    assert_eq!(idle.counters.failures, 0, "{:?}", idle.last_error);
    assert_eq!(idle.counters.reconnects, start.reconnects);
    eprintln!(
        "idle: {} reads, {} missed intervals, none declared the link down",
        idle.counters.heartbeats - start.heartbeats,
        idle.counters.heartbeat_misses - start.heartbeat_misses
    );

    // Node B frozen: only the heartbeat can tell (its port stays up, its connection open).
    signal(&node_b, "-STOP");
    let frozen = Instant::now();
    wait_for("link down", || link(&ma).state != LinkState::Ready);
    let seen = frozen.elapsed();
    let down = link(&ma);
    let why = down.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("heartbeat"),
        "link down for another reason: {why}"
    );
    assert_eq!(down.counters.failures, 1);
    eprintln!("frozen partner: link down after {seen:?} ({why})");
}
