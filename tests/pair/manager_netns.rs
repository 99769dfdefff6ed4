//! Node processes in namespaces ilA and ilB (soft-roce/netns-up): link cuts with
//! failover and return, three links, adaptive migration, partner kill and restart.
//!
//! Root only, so `#[ignore]`: `soft-roce/test-all` runs them on the host with the soft
//! provider and inside the Soft-RoCE VM with `INTERLINK_TEST_FABRIC=verbs`. Each test builds
//! its own topology (`netns-up N`), so run them with `--test-threads=1`.

use crate::manager_pair;

use interlink::manager::{BalanceConfig, ClientState, LinkState};
use manager_pair::*;
use std::time::{Duration, Instant};

use crate::netns_node;
use netns_node::*;

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn link_down_fails_over_kills_old_rkeys_and_moves_back() {
    let probes = ["mirror:high", "cfo:low", "stats:low"];
    let (a, b, cfg) = pair_nodes("cut", 2, balance(), &probes);
    for n in [&a, &b] {
        n.wait("placement", |s| {
            links_ready(s)
                && on_link(s, "mirror", 1)
                && on_link(s, "cfo", 0)
                && on_link(s, "stats", 0)
        });
    }
    let before = [a.wait_traffic("cfo", 20), b.wait_traffic("cfo", 20)];
    sh("link", &["down", "0"]);
    let bound = cfg.heartbeat.detection_bound();
    let took = [&a, &b].map(|n| {
        n.wait("failover to link 1", |s| {
            on_link(s, "cfo", 1) && on_link(s, "stats", 1)
        })
    });
    eprintln!(
        "link 0 cut: clients ready on link 1 after {:?} (A) / {:?} (B); detection bound {bound:?}",
        took[0], took[1]
    );
    for t in took {
        // Detection within the bound, plus the re-attach exchange on the surviving link.
        assert!(t <= bound + Duration::from_secs(5), "failover took {t:?}");
    }
    let after = [
        a.wait_traffic("cfo", before[0].received + 20),
        b.wait_traffic("cfo", before[1].received + 20),
    ];
    for st in &after {
        assert_eq!(st.out_of_order, 0, "{st:?}");
        assert_eq!(st.link, Some(1));
    }
    // The mirror kept its own link throughout.
    assert!(on_link(&a.status(), "mirror", 1));
    sh("link", &["up", "0"]);
    let back = a.wait("return to link 0", |s| {
        on_link(s, "cfo", 0) && on_link(s, "stats", 0)
    });
    b.wait("return to link 0", |s| {
        on_link(s, "cfo", 0) && on_link(s, "stats", 0)
    });
    eprintln!(
        "link 0 restored: clients back after {back:?} (hysteresis {} ms)",
        cfg.balance.hysteresis_ms
    );
    let sa = a.status();
    let cfo = sa.clients.iter().find(|c| c.name == "cfo").expect("cfo");
    // Back on link 0 by a planned move (migration), or, when link 1's heartbeat was lost
    // meanwhile (a loaded emulated VM), by a second failover.
    assert!(
        cfo.counters.failovers >= 1
            && (cfo.counters.migrations >= 1 || cfo.counters.failovers >= 2),
        "{cfo:#?}"
    );
    if cfo.counters.migrations == 0 {
        eprintln!("cfo came back by failover: link 1 failed during the hysteresis");
    }
    // The partner region descriptor cfo used on link 0 before the cut is dead now.
    let st = a.wait_traffic("cfo", 0);
    assert!(st.stale_keys >= 1, "{st:?}");
    let outcome = stale_write(&a, "cfo");
    assert!(
        outcome.contains("RemoteAccessError"),
        "write with a revoked rkey: {outcome}"
    );
    // The failed queue pair was re-established and traffic continues.
    a.wait("cfo re-established", |s| on_link(s, "cfo", 0));
    let n = a.probe("cfo", serde_json::json!({})).received;
    a.wait_traffic("cfo", n + 10);
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn three_links_one_cut_goes_to_least_utilised_survivor() {
    // Homes: mirror (high) on link 2, cfo on 0, stats on 1. stats is busy, mirror light, so
    // when link 0 is cut cfo must go to link 2 (least utilised), not link 1 (lowest id).
    let probes = ["mirror:high:20000", "cfo:low:20000", "stats:low:max"];
    // Under emulation (verbs in the VM) the cut and the flooding stats client can stall the
    // guest past 5 heartbeat intervals: the surviving links then drop too, and the clients
    // are placed afresh with no rates measured. This test is about placement on a cut, so
    // the survivors get 2 s of heartbeat patience.
    let (a, b, _) = pair_nodes_with("three", 3, balance(), &probes, |c| {
        *c = c.clone().with_heartbeat(100, 20);
    });
    for n in [&a, &b] {
        n.wait("placement", |s| {
            links_ready(s)
                && on_link(s, "mirror", 2)
                && on_link(s, "cfo", 0)
                && on_link(s, "stats", 1)
        });
    }
    a.wait("rates measured", |s| {
        let rate = |l: u8| {
            s.links
                .iter()
                .find(|x| x.id == l)
                .map_or(0.0, |x| x.rate_bps)
        };
        rate(1) > 2.0 * rate(2) && rate(2) > 0.0
    });
    sh("link", &["down", "0"]);
    for n in [&a, &b] {
        n.wait("cfo on link 2", |s| on_link(s, "cfo", 2));
    }
    let st = a.wait_traffic("cfo", a.probe("cfo", serde_json::json!({})).received + 10);
    assert_eq!(st.out_of_order, 0);
    sh("link", &["up", "0"]);
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn adaptive_migration_moves_the_lighter_client() {
    let adaptive = BalanceConfig {
        adaptive: true,
        rebalance_ratio: 4.0,
        rebalance_min_bps: 200_000.0,
        rebalance_cooldown_ms: 60_000,
        hysteresis_ms: 2000,
        ..BalanceConfig::default()
    };
    // heavy and light share link 0; the idle mirror has link 1 to itself.
    let probes = ["heavy:low:max", "light:low:20000", "mirror:high:1000"];
    let (a, b, _) = pair_nodes("adaptive", 2, adaptive, &probes);
    a.wait("light moved to link 1", |s| on_link(s, "light", 1));
    b.wait("light moved to link 1", |s| on_link(s, "light", 1));
    let s = a.status();
    assert!(
        on_link(&s, "heavy", 0),
        "the heavy client keeps its link: {s:#?}"
    );
    let light = s.clients.iter().find(|c| c.name == "light").expect("light");
    assert_eq!(light.counters.migrations, 1, "{light:#?}");
    let heavy = s.clients.iter().find(|c| c.name == "heavy").expect("heavy");
    assert_eq!(heavy.counters.migrations, 0, "{heavy:#?}");
    for p in ["heavy", "light"] {
        let st = a.probe(p, serde_json::json!({}));
        assert_eq!(st.out_of_order, 0, "{p}: {st:?}");
    }
    a.wait_traffic(
        "light",
        a.probe("light", serde_json::json!({})).received + 10,
    );
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn partner_killed_and_restarted_reinitialises_with_backoff() {
    let probes = ["cfo:low", "mirror:high"];
    let (a, mut b, _) = pair_nodes("restart", 2, balance(), &probes);
    for n in [&a, &b] {
        n.wait("ready", |s| {
            links_ready(s) && s.clients.iter().all(|c| c.state == ClientState::Ready)
        });
    }
    let first = a.status().partner_incarnation;
    b.kill();
    a.wait("links down", |s| {
        s.links.iter().all(|l| l.state != LinkState::Ready)
    });
    a.wait("clients not ready", |s| {
        s.clients.iter().all(|c| c.state != ClientState::Ready)
    });
    // Backoff: attempts keep failing while B is away.
    a.wait("retries with backoff", |s| {
        s.links.iter().all(|l| l.counters.errors >= 2)
    });
    let s = a.status();
    assert!(
        s.links.iter().all(|l| l.counters.errors >= 2),
        "retries with backoff: {s:#?}"
    );
    b.start();
    a.wait("ready again with the new partner", |s| {
        links_ready(s)
            && s.partner_incarnation != first
            && s.clients.iter().all(|c| c.state == ClientState::Ready)
    });
    let n = a.probe("cfo", serde_json::json!({})).received;
    a.wait_traffic("cfo", n + 10);
    // A still knows the descriptor of the restarted B's old region: after the reconnect it
    // must not reach anything.
    assert!(a.probe("cfo", serde_json::json!({})).stale_keys >= 1);
    let outcome = stale_write(&a, "cfo");
    assert!(
        outcome.contains("RemoteAccessError"),
        "write with the old run's rkey: {outcome}"
    );
}

/// Has `probe` on node `n` RDMA WRITE to the newest partner region descriptor it saw on its
/// link before the current one; the write's completion status.
fn stale_write(n: &Node, probe: &str) -> String {
    n.probe(probe, serde_json::json!({ "write_stale": true }));
    let t0 = Instant::now();
    let mut asked = Instant::now();
    loop {
        let st = n.probe(probe, serde_json::json!({}));
        if let Some(o) = st.stale_write {
            return o;
        }
        assert!(t0.elapsed() < WAIT, "stale write never completed: {st:?}");
        // The write's error also breaks the partner's queue pair; if the client is torn down
        // before this probe polled the completion (a loaded machine), the outcome is lost:
        // ask again on the re-established connection.
        if asked.elapsed() > Duration::from_secs(5) && st.ready {
            n.probe(probe, serde_json::json!({ "write_stale": true }));
            asked = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn queue_pair_added_live_is_mirrored_and_others_keep_flowing() {
    let probes = ["cfo:low", "stats:low"];
    let (a, b, _) = pair_nodes("live", 1, balance(), &probes);
    for n in [&a, &b] {
        n.wait("ready", |s| {
            links_ready(s) && on_link(s, "cfo", 0) && on_link(s, "stats", 0)
        });
    }
    let before = [a.wait_traffic("stats", 20), b.wait_traffic("stats", 20)];
    a.probe("cfo", serde_json::json!({ "add_qp": true }));
    for n in [&a, &b] {
        n.wait("cfo has two queue pairs", |s| {
            s.clients.iter().any(|c| c.name == "cfo" && c.qps == 2)
        });
    }
    let t0 = Instant::now();
    for n in [&a, &b] {
        while n.probe("cfo", serde_json::json!({})).updates < 1 {
            assert!(t0.elapsed() < WAIT, "no Updated event at {}", n.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(n.probe("cfo", serde_json::json!({})).qps, 2);
    }
    let after = [
        a.wait_traffic("stats", before[0].received + 20),
        b.wait_traffic("stats", before[1].received + 20),
    ];
    for (st, old) in after.iter().zip(before.iter()) {
        assert_eq!(
            st.connections, old.connections,
            "stats was re-established: {st:?}"
        );
        assert_eq!(st.out_of_order, 0);
    }
    a.wait_traffic("cfo", a.probe("cfo", serde_json::json!({})).received + 10);
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn cluster_and_secret_mismatch_refused_by_both_node_processes() {
    topology(1);
    for (tag, cause) in [("cluster", "cluster"), ("secret", "auth")] {
        let dir = temp_dir(tag);
        let (a, mut b) = pair(&dir, 1, netns, fabric(), 18600);
        if tag == "cluster" {
            b.cluster_id = 8;
        } else {
            b.secret_file = secret(&dir, "other", "ffffffffffffffffffffffffffffffff");
        }
        let mut na = Node::new(&dir, "a", "ilA", a, &["p:low"]);
        let mut nb = Node::new(&dir, "b", "ilB", b, &["p:low"]);
        na.start();
        nb.start();
        for n in [&na, &nb] {
            n.wait(&format!("refusal naming {cause}"), |s| {
                s.links[0].state == LinkState::Refused
                    && s.links[0]
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.to_lowercase().contains(cause))
            });
            let s = n.status();
            assert!(
                s.clients.iter().all(|c| c.state != ClientState::Ready),
                "{s:#?}"
            );
            assert_eq!(
                s.links[0].counters.reconnects, 0,
                "nothing connected: {s:#?}"
            );
        }
    }
}
