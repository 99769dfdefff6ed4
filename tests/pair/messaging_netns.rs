//! Messaging between node processes in namespaces ilA and ilB (soft provider on the host,
//! verbs on Soft-RoCE in the VM with `INTERLINK_TEST_FABRIC=verbs`): numbered streams stay
//! exactly-once and in order while the link they use is cut; calls pending when the partner
//! is killed all fail with "partner inoperative", once; calls keep completing both ways while
//! bulk data saturates one direction.
//!
//! Root only, so `#[ignore]`: `soft-roce/test-all` runs them. Each test builds its own
//! topology, so run them with `--test-threads=1`.

use crate::manager_pair;
use crate::netns_node;

use interlink::clients::message_probe::MessageProbeStats;
use interlink::manager::{BalanceConfig, ClientState, NodeStatus};
use manager_pair::*;
use netns_node::*;
use std::time::{Duration, Instant};

const NAME: &str = "msg";

fn nodes(tag: &str, links: u8, partner_timeout_ms: u64) -> (Node, Node) {
    topology(links);
    let dir = temp_dir(tag);
    let (mut a, mut b) = pair(&dir, links, netns, fabric(), 18700);
    let balance = BalanceConfig {
        hysteresis_ms: 2000,
        adaptive: false,
        ..BalanceConfig::default()
    };
    a.balance = balance;
    b.balance = balance;
    let mut na = Node::new(&dir, "a", "ilA", a, &[]);
    let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
    for n in [&mut na, &mut nb] {
        n.extra = vec![
            "--messenger".into(),
            format!("{NAME}:low:{partner_timeout_ms}"),
        ];
        n.start();
    }
    for n in [&na, &nb] {
        n.wait("messenger ready", |s| link_of_ready(s).is_some());
    }
    (na, nb)
}

fn link_of_ready(s: &NodeStatus) -> Option<u8> {
    s.clients
        .iter()
        .find(|c| c.name == NAME && c.state == ClientState::Ready)
        .and_then(|c| c.link)
}

fn stats(n: &Node, command: serde_json::Value) -> MessageProbeStats {
    serde_json::from_value(n.client(NAME, command)).expect("message probe stats")
}

fn wait_stats(
    n: &Node,
    what: &str,
    limit: Duration,
    mut pred: impl FnMut(&MessageProbeStats) -> bool,
) -> MessageProbeStats {
    let t0 = Instant::now();
    loop {
        let st = stats(n, serde_json::json!({}));
        if pred(&st) {
            return st;
        }
        assert!(
            t0.elapsed() < limit,
            "{}: timed out waiting for {what}: {st:#?}\nlog:\n{}",
            n.name,
            n.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn streams_stay_exactly_once_in_order_across_a_link_cut() {
    // A long partner timeout: the cut is a failover, never a partner failure.
    let (a, b) = nodes("msgcut", 2, 60_000);
    // Both links up and the messenger settled on one of them at both nodes (on Soft-RoCE a
    // port can flap right after set-up, moving the client once before the stream starts).
    let settled = |s: &NodeStatus| link_of_ready(s).filter(|_| links_ready(s));
    b.wait("links up, messenger placed", |s| settled(s).is_some());
    let mut link = None;
    a.wait("links up, messenger placed", |s| {
        link = settled(s);
        link.is_some()
    });
    let link = link.expect("link");
    let n: u64 = 60_000;
    stats(
        &a,
        serde_json::json!({"stream": {"count": n, "size": 48, "class": "bulk"}}),
    );
    stats(
        &b,
        serde_json::json!({"stream": {"count": n, "size": 300, "class": "control"}}),
    );
    let at_cut = wait_stats(&b, "stream under way", WAIT, |s| s.received > 2000);
    sh("link", &["down", &link.to_string()]);
    eprintln!(
        "link {link} cut with {} of {n} A→B messages delivered",
        at_cut.received
    );
    let other = 1 - link;
    for node in [&a, &b] {
        node.wait("messenger moved", |s| link_of_ready(s) == Some(other));
    }
    let limit = Duration::from_secs(300);
    let done = |s: &MessageProbeStats| s.received >= n && s.stream_acked >= n;
    let sa = wait_stats(&a, "streams complete at A", limit, done);
    let sb = wait_stats(&b, "streams complete at B", limit, done);
    sh("link", &["up", &link.to_string()]);
    for (who, st) in [("A", &sa), ("B", &sb)] {
        eprintln!(
            "{who}: received {} (dup {}, gaps {}), acked {}, connections {}, retransmitted frames {}, frames {} for {} messages",
            st.received,
            st.duplicates,
            st.gaps,
            st.stream_acked,
            st.messenger.connections,
            st.messenger.window.frames_retransmitted,
            st.messenger.window.frames_sent,
            st.messenger.window.messages_sent
        );
        assert_eq!(st.received, n, "{who}: every message delivered: {st:#?}");
        assert_eq!(st.last_seq, n, "{who}: {st:#?}");
        assert_eq!(st.duplicates, 0, "{who}: none twice: {st:#?}");
        assert_eq!(st.gaps, 0, "{who}: none lost or reordered: {st:#?}");
        assert_eq!(st.stream_acked, n, "{who}: every message acked: {st:#?}");
        assert_eq!(st.stream_inoperative, 0, "{who}: {st:#?}");
        assert_eq!(st.messenger.partner_failures, 0, "{who}: {st:#?}");
        assert!(
            st.messenger.connections >= 2,
            "{who}: the conversation moved to the other link: {st:#?}"
        );
    }
    assert!(
        at_cut.received < n,
        "the cut came mid-stream ({} of {n} delivered)",
        at_cut.received
    );
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn partner_killed_with_calls_pending_fails_each_call_once() {
    let (a, mut b) = nodes("msgkill", 2, 2000);
    let held = 200;
    stats(&a, serde_json::json!({ "hold": held }));
    wait_stats(&b, "calls held at B", WAIT, |s| s.holding == held);
    let before = stats(&a, serde_json::json!({}));
    assert_eq!(before.held_pending, held, "{before:#?}");
    let t0 = Instant::now();
    b.kill();
    let st = wait_stats(&a, "held calls failed", WAIT, |s| s.held_pending == 0);
    eprintln!(
        "partner killed: {} pending calls failed with partner inoperative after {:?}",
        st.calls_inoperative,
        t0.elapsed()
    );
    // Nothing is left pending that could fail a second time.
    let st = wait_stats(&a, "no pending call", WAIT, |s| {
        s.messenger.pending_calls == 0
    });
    assert_eq!(
        st.calls_inoperative, held,
        "each call failed exactly once: {st:#?}"
    );
    assert_eq!(st.calls_failed, 0, "{st:#?}");
    assert_eq!(st.messenger.partner_failures, 1, "{st:#?}");
    assert_eq!(st.messenger.pending_calls, 0, "{st:#?}");
    // The survivor's messenger keeps working when the partner comes back.
    b.start();
    wait_stats(&a, "reconnected", WAIT, |s| s.messenger.connected);
    stats(&a, serde_json::json!({"calls": {"count": 20, "size": 16}}));
    let st = wait_stats(&a, "calls after restart", WAIT, |s| !s.calls_running);
    assert_eq!(st.calls_ok, 20, "{st:#?}");
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn calls_complete_both_ways_while_bulk_saturates_one_direction() {
    let (a, b) = nodes("msgbulk", 1, 30_000);
    stats(&a, serde_json::json!({ "flood": true }));
    let f0 = wait_stats(&b, "flood arriving", WAIT, |s| s.flood_received > 500).flood_received;
    let calls = 300;
    for n in [&a, &b] {
        stats(
            n,
            serde_json::json!({"calls": {"count": calls, "size": 32}}),
        );
    }
    let limit = Duration::from_secs(300);
    let sa = wait_stats(&a, "calls from A", limit, |s| !s.calls_running);
    let sb = wait_stats(&b, "calls from B", limit, |s| !s.calls_running);
    let during = stats(&b, serde_json::json!({}));
    stats(&a, serde_json::json!({ "flood": false }));
    for (who, st) in [("A (bulk sender)", &sa), ("B (bulk receiver)", &sb)] {
        eprintln!(
            "{who}: {} calls during the flood, p50 {} µs, p99 {} µs",
            st.calls_ok, st.call_p50_us, st.call_p99_us
        );
        assert_eq!(st.calls_ok, calls, "{who}: {st:#?}");
        assert_eq!(st.calls_failed + st.calls_inoperative, 0, "{who}: {st:#?}");
    }
    let a_now = stats(&a, serde_json::json!({}));
    eprintln!(
        "flood: {} bulk messages received during the calls; A window: {} frames in flight max slots, {} sent",
        during.flood_received - f0,
        a_now.messenger.in_flight,
        a_now.messenger.window.frames_sent
    );
    assert!(
        during.flood_received > f0 + 1000,
        "bulk kept flowing while the calls ran: {f0} → {}",
        during.flood_received
    );
}
