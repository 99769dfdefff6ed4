//! Chaos on two node processes in namespaces ilA and ilB (soft provider on the host, verbs on
//! Soft-RoCE in the VM with `INTERLINK_TEST_FABRIC=verbs`): both run `--shadow` and
//! `--giveback` and append to their shadow logs continuously while a seeded random schedule
//! injects faults:
//!
//! - `link_flaps`: links cut and restored, one at a time or both at once (briefly: the
//!   mailbox stays alive, so nobody takes over);
//! - `kills`: kill -9 of either node during appends, of the returning node during its
//!   bring-up (GIVEWAIT, MBWAIT), or of the survivor while the returning node waits, each
//!   followed by a restart;
//! - `restart_loops`: the killed node restarted and killed again several times in a row, at
//!   random points of its bring-up (sometimes after it served and wrote again);
//! - `stopped_partner`: a node SIGSTOPped inside the detection window, then one SIGSTOPped
//!   past it: that one is taken over, and once resumed it acknowledges nothing (its serving
//!   lease ran out; the ledger judges what it acknowledged after resuming like anything
//!   else), stops serving (the journals show it never served its set beside the survivor
//!   except until its fence is seen) and rejoins through giveback;
//! - `fast_restart`: kill -9 of either node and a restart 0-1 s later, as a supervisor does:
//!   inside the failure-detection window the node applies its own log's records itself, past
//!   it the survivor took it over and replayed them, and in the race between the two nobody
//!   applies a record twice;
//! - `power_loss`: kill -9 of both nodes at once, then both restarted in random order, up
//!   to 3 s apart: each applies its own records (the first up may take the other over with
//!   an empty mirror, which replays nothing; the other then recovers its own log after the
//!   giveback);
//! - `stale_mirror`: both links cut (the mailbox alive: no takeover), a node's writer goes on
//!   without the partner's copy (its shadow partner timeout is 1 s here), having first marked
//!   that copy outdated in its mailbox record; the node is killed: the survivor declares it
//!   failed but refuses the takeover from its outdated copy; links back, the node restarts
//!   and applies its own records.
//! - `nvram_loss`: kill -9 of either node, its NVRAM log file deleted, zeroed or corrupted (a
//!   replaced controller; its replay cursors kept), and a restart 0-1 s later: its mailbox
//!   record names the lost log's generation, so it fetches the log from the survivor's copy
//!   by RDMA READ and applies its records itself (or, past the detection window, the
//!   survivor took it over and replayed them); nothing acknowledged is lost or applied twice.
//!
//! After each run every record each writer acknowledged is found exactly once, in order, in
//! its partner's replays or its own recoveries (or covered by a checkpoint), and the service journals show at most
//! one node serving each disk set at any time (see `tests/pair/chaos/`). The counts are printed
//! and appended to `target/chaos-report.txt` (or `CHAOS_REPORT`).
//!
//! `CHAOS_RUNS=n` runs each scenario n times (default 1), `CHAOS_SEED=s` replays from seed
//! s; each run prints its seed. Root only, so `#[ignore]`: `soft-roce/test-all` runs them.
//! Each run builds its own topology, so run them with `--test-threads=1`.

use crate::chaos;
use crate::giveback_journal;
use crate::manager_pair;
use crate::netns_node;

use chaos::{run_scenario, run_scenario_with, ChaosPair, Counts};
use giveback_journal::journals;
use interlink::clients::giveback::CopyGap;
use manager_pair::links_ready;
use netns_node::sh;
use rand::Rng;

/// `NAME` from the environment, or `default`.
fn env_count(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn link(action: &str, l: u8) {
    sh("link", &[action, &l.to_string()]);
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn link_flaps() {
    let takeovers = |p: &ChaosPair| {
        journals(&p.shared)
            .iter()
            .filter(|e| e.event == "assume-identity")
            .count()
    };
    run_scenario("link-flaps", |p: &mut ChaosPair, c: &mut Counts| {
        // Under emulation one node may start long enough after the other to be taken over
        // (and given back) during start-up: count from here.
        let before = takeovers(p);
        for _ in 0..env_count("CHAOS_FLAPS", 8) {
            let l = p.rng.gen_range(0..2u8);
            let both = p.rng.gen_bool(0.25);
            let down = if both {
                p.ms(100, 1000)
            } else {
                p.ms(100, 1500)
            };
            link("down", l);
            if both {
                link("down", 1 - l);
            }
            std::thread::sleep(down);
            link("up", l);
            if both {
                link("up", 1 - l);
            }
            c.fault(if both {
                "both links flapped"
            } else {
                "link flapped"
            });
            p.pause(100, 1500);
        }
        for n in &p.nodes {
            n.wait("links ready", links_ready);
        }
        assert_eq!(
            takeovers(p),
            before,
            "seed {:#x}: a takeover during link flaps with both nodes alive",
            p.seed
        );
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn kills() {
    run_scenario("kills", |p: &mut ChaosPair, c: &mut Counts| {
        for _ in 0..env_count("CHAOS_KILLS", 2) {
            let v = p.rng.gen_range(0..2usize);
            let s = 1 - v;
            p.pause(200, 1500);
            let (_, refused) = p.kill_and_wait_takeover(v);
            c.fault("kill -9 mid-mirror");
            if refused {
                c.fault("takeover refused: copy gap");
            }
            let kind = p.rng.gen_range(0..3);
            if kind == 0 {
                p.pause(0, 1000);
                p.restart(v);
                c.fault("restart");
            } else {
                p.restart(v);
                c.fault("restart");
                // Killing the survivor right away: the returning node's region is new and
                // fills while the survivor re-sends its live log, so it takes over only once
                // the survivor confirmed its copy complete on the returning incarnation; else
                // it refuses, and the survivor's restart recovers its own log.
                let state = p.state(v);
                let target = if kind == 1 { v } else { s };
                let (_, refused) = p.kill_and_wait_takeover(target);
                c.fault(&format!(
                    "kill -9 of the {} with the returning node in {state}",
                    if target == v {
                        "returning node"
                    } else {
                        "survivor"
                    }
                ));
                if refused {
                    c.fault("takeover refused: copy gap");
                }
                p.pause(0, 1000);
                p.restart(target);
                c.fault("restart");
            }
            p.wait_pair_up();
            p.ensure_writers();
        }
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn restart_loops() {
    run_scenario("restart-loops", |p: &mut ChaosPair, c: &mut Counts| {
        let v = p.rng.gen_range(0..2usize);
        p.pause(200, 1500);
        if p.kill_and_wait_takeover(v).1 {
            c.fault("takeover refused: copy gap");
        }
        c.fault("kill -9 mid-mirror");
        for _ in 0..env_count("CHAOS_RESTARTS", 3) {
            p.restart(v);
            c.fault("restart");
            // Half the time early in the bring-up (BOOTING, GIVEWAIT, MBWAIT), else later.
            if p.rng.gen_bool(0.5) {
                p.pause(0, 300);
            } else {
                p.pause(300, 2500);
            }
            if p.state(v) == "UP" && p.rng.gen_bool(0.5) {
                p.start_writer(v);
                p.pause(100, 800);
            }
            let (state, refused) = p.kill_and_wait_takeover(v);
            c.fault(&format!("kill -9 of the restarted node in {state}"));
            if refused {
                c.fault("takeover refused: copy gap");
            }
        }
        p.restart(v);
        c.fault("restart");
        p.wait_pair_up();
        p.ensure_writers();
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn stopped_partner() {
    run_scenario("stopped-partner", |p: &mut ChaosPair, c: &mut Counts| {
        for k in 0..env_count("CHAOS_STOPS", 2) {
            let v = p.rng.gen_range(0..2usize);
            let s = 1 - v;
            p.pause(300, 1500);
            if k % 2 == 0 {
                // A stall inside the detection window (0.5 s): the node resumes serving,
                // acknowledging again once its serving lease is renewed (or, if the stall
                // outlasted the detection after all, it was taken over).
                p.freeze(v);
                c.fault("SIGSTOP inside the detection window");
                p.pause(50, 300);
                p.thaw(v);
                p.wait_pair_up();
                p.ensure_writers();
                continue;
            }
            let before = p.assumed(s);
            let reboots = p.nodes[v].giveback().driver.reboots;
            p.freeze(v);
            c.fault("SIGSTOP past the takeover");
            p.wait_new_takeover(s, before);
            p.pause(0, 1000);
            p.thaw(v);
            p.wait_pair_up();
            let r = p.nodes[v].giveback();
            assert!(
                r.driver.reboots > reboots,
                "seed {:#x}: the resumed node went on without halting: {r:#?}",
                p.seed
            );
            p.ensure_writers();
        }
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn fast_restart() {
    run_scenario("fast-restart", |p: &mut ChaosPair, c: &mut Counts| {
        for _ in 0..env_count("CHAOS_FAST_RESTARTS", 3) {
            let v = p.rng.gen_range(0..2usize);
            p.pause(200, 1500);
            p.kill(v);
            c.fault("kill -9 mid-mirror");
            p.pause(0, 1000);
            p.restart(v);
            c.fault("restart 0-1 s after the kill");
            p.wait_pair_up();
            p.ensure_writers();
        }
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn power_loss() {
    run_scenario("power-loss", |p: &mut ChaosPair, c: &mut Counts| {
        for _ in 0..env_count("CHAOS_POWER_LOSSES", 2) {
            p.pause(200, 1500);
            p.kill(0);
            p.kill(1);
            c.fault("power loss of both nodes");
            let first = p.rng.gen_range(0..2usize);
            p.pause(0, 500);
            p.restart(first);
            p.pause(0, 3000);
            p.restart(1 - first);
            c.fault("both restarted, in random order");
            p.wait_pair_up();
            p.ensure_writers();
        }
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn stale_mirror() {
    run_scenario_with("stale-mirror", 1000, |p: &mut ChaosPair, c: &mut Counts| {
        let v = p.rng.gen_range(0..2usize);
        let s = 1 - v;
        p.pause(200, 1000);
        let before = p.assumed(s);
        link("down", 0);
        link("down", 1);
        c.fault("both links cut");
        p.wait_unmirrored(v, 20);
        p.kill(v);
        c.fault("kill -9 of a writer acknowledging without the mirror");
        let r = p.nodes[s].wait_giveback("the takeover refused: outdated copy", |r| {
            r.partner_failed && r.takeover_refused
        });
        assert!(
            matches!(r.partner_copy_gap, Some(CopyGap::Outdated { .. })),
            "{r:#?}"
        );
        assert_eq!(
            p.assumed(s),
            before,
            "seed {:#x}: a takeover from an outdated copy",
            p.seed
        );
        link("up", 0);
        link("up", 1);
        p.restart(v);
        c.fault("restart");
        p.wait_pair_up();
        p.ensure_writers();
    });
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn nvram_loss() {
    run_scenario("nvram-loss", |p: &mut ChaosPair, c: &mut Counts| {
        for _ in 0..env_count("CHAOS_NVRAM_LOSSES", 3) {
            let v = p.rng.gen_range(0..2usize);
            p.pause(200, 1500);
            p.kill(v);
            c.fault("kill -9 mid-mirror");
            let log = interlink::clients::mirror::shadow::log_path(&p.shared, chaos::id(v));
            match p.rng.gen_range(0..3) {
                0 => {
                    std::fs::remove_file(&log).unwrap();
                    c.fault("NVRAM log deleted");
                }
                1 => {
                    let len = std::fs::metadata(&log).unwrap().len() as usize;
                    std::fs::write(&log, vec![0u8; len]).unwrap();
                    c.fault("NVRAM log zeroed");
                }
                _ => {
                    let mut bytes = std::fs::read(&log).unwrap();
                    bytes[12] ^= 0xff;
                    std::fs::write(&log, &bytes).unwrap();
                    c.fault("NVRAM log superblock corrupted");
                }
            }
            p.pause(0, 1000);
            p.restart(v);
            c.fault("restart 0-1 s after the kill");
            p.wait_pair_up();
            p.ensure_writers();
        }
    });
}
