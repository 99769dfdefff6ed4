//! The chaos suite's pair of node processes: both run `--shadow` and `--giveback` on one
//! shared directory and each writes its shadow log continuously; faults (link flaps, kill -9,
//! SIGSTOP) are injected by the scenarios in `tests/pair/chaos_netns.rs` from a seeded schedule;
//! after each run [`ChaosPair::finish`] checks every acknowledged record against what the
//! partner replayed ([`ledger`]) and the service journals (at most one node served each disk
//! set at any time), and adds the counts to a [`Counts`].
#![allow(dead_code)]

pub mod ledger;

use crate::giveback_journal::{journals, never_served_twice, note, note_crash};
use crate::manager_pair::*;
use crate::netns_node::*;
use interlink::clients::giveback::driver::GivebackReport;
use interlink::clients::mirror::shadow::writer_payload;
use ledger::{check_writer, view_count, Tally, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Record payload size.
pub const SIZE: u64 = 256;
/// Appends in flight per writer.
pub const WINDOW: u64 = 16;
/// Acknowledgements between checkpoints.
pub const CHECKPOINT_EVERY: u64 = 100;
/// Shadow partner timeout (ms): longer than any outage a scenario makes, so appends wait
/// for the partner rather than complete unmirrored.
pub const SHADOW_PARTNER_TIMEOUT_MS: u64 = 60_000;

/// Runs per scenario (`CHAOS_RUNS`, default 1).
pub fn runs() -> u64 {
    std::env::var("CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The first run's seed: `CHAOS_SEED` (decimal or 0x hex) or a fresh one; run `i` uses
/// `seed + i`.
pub fn base_seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .expect("CHAOS_SEED: a u64")
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        }
    }
}

/// Counts over the runs of one scenario.
#[derive(Debug, Default)]
pub struct Counts {
    /// Runs completed.
    pub runs: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Takeovers (identities assumed, from the journals).
    pub takeovers: u64,
    /// Record bookkeeping.
    pub tally: Tally,
    /// Thaw to stop-serving of a node taken over while frozen, microseconds (max).
    pub fenced_max_us: u128,
}

impl Counts {
    /// Counts a fault.
    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_string()).or_default() += 1;
    }

    /// The summary line(s).
    pub fn render(&self, scenario: &str) -> String {
        let faults: u64 = self.faults.values().sum();
        let kinds = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "chaos {scenario}: runs {}, faults {faults} ({kinds}), takeovers {}, writes acknowledged {} ({} unmirrored), replayed {} (by the partner or the final read {}, by the writer's own recovery {}; {} never acknowledged, in flight), lost {}, duplicates {}{}",
            self.runs,
            self.takeovers,
            self.tally.acknowledged,
            self.tally.unmirrored,
            self.tally.replayed,
            self.tally.replayed - self.tally.replayed_own,
            self.tally.replayed_own,
            self.tally.unacknowledged,
            self.tally.lost,
            self.tally.duplicates,
            if self.fenced_max_us > 0 {
                format!(
                    ", thawed node stopped serving within {:.0} ms",
                    self.fenced_max_us as f64 / 1e3
                )
            } else {
                String::new()
            }
        )
    }

    /// Prints the summary and appends it to `CHAOS_REPORT` (default
    /// `target/chaos-report.txt`; not fatal where the tree is read-only, as in the VM).
    pub fn report(&self, scenario: &str) {
        let line = self.render(scenario);
        println!("{line}");
        let path = std::env::var_os("CHAOS_REPORT").map_or_else(
            || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../chaos-report.txt"),
            PathBuf::from,
        );
        let fabric = std::env::var("INTERLINK_TEST_FABRIC").unwrap_or_else(|_| "soft".into());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{fabric}: {line}\n").as_bytes())
            });
    }
}

/// Node ids: index 0 is node 1 (A, in ilA), index 1 node 2 (B, in ilB).
pub fn id(i: usize) -> u32 {
    i as u32 + 1
}

/// A pair of node processes under chaos, with its schedule's random source.
pub struct ChaosPair {
    pub nodes: [Node; 2],
    pub shared: PathBuf,
    pub rng: StdRng,
    pub seed: u64,
}

impl ChaosPair {
    /// Builds the topology, starts both nodes and their writers once both are UP.
    pub fn start(tag: &str, seed: u64) -> ChaosPair {
        Self::start_with(tag, seed, SHADOW_PARTNER_TIMEOUT_MS)
    }

    /// [`ChaosPair::start`] with the shadow logs' partner timeout `partner_timeout_ms`.
    pub fn start_with(tag: &str, seed: u64, partner_timeout_ms: u64) -> ChaosPair {
        topology(2);
        let dir = temp_dir(tag);
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let (a, b) = pair(&dir, 2, netns, fabric(), 19300);
        let mut na = Node::new(&dir, "a", "ilA", a, &[]);
        let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
        for n in [&mut na, &mut nb] {
            n.extra = vec![
                "--shadow".into(),
                format!("{}:1M:{partner_timeout_ms}", shared.display()),
                "--giveback".into(),
                shared.display().to_string(),
            ];
            if let Ok(k) = std::env::var("CHAOS_MISS_INTERVALS") {
                n.extra.extend(["--miss-intervals".into(), k]);
            }
            n.start();
        }
        let p = ChaosPair {
            nodes: [na, nb],
            shared,
            rng: StdRng::seed_from_u64(seed),
            seed,
        };
        p.wait_pair_up();
        for i in 0..2 {
            p.start_writer(i);
        }
        p
    }

    fn ctx(&self) -> String {
        format!(
            "seed {:#x} (replay: CHAOS_SEED={:#x} CHAOS_RUNS=1)",
            self.seed, self.seed
        )
    }

    /// Both nodes UP, each serving its own disk set, the partner read UP, shadow connected.
    pub fn wait_pair_up(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            n.wait_giveback("both nodes UP, each serving its own set", |r| {
                r.state == "UP"
                    && r.partner_state.as_deref() == Some("UP")
                    && r.serving == vec![id(i)]
            });
        }
        for n in &self.nodes {
            self.shadow_wait(n, "shadow connected", |v| {
                v["shadow"]["connected"] == json!(true)
            });
        }
    }

    fn shadow_wait(&self, n: &Node, what: &str, pred: impl FnMut(&Value) -> bool) -> Value {
        n.wait_client("shadow", what, WAIT, pred)
    }

    /// Starts node `i`'s writer (its process has none).
    pub fn start_writer(&self, i: usize) {
        self.nodes[i].client(
            "shadow",
            json!({"write": {"size": SIZE, "window": WINDOW, "checkpoint_every": CHECKPOINT_EVERY}}),
        );
    }

    /// Starts a writer on every node whose process runs none.
    pub fn ensure_writers(&self) {
        for i in 0..2 {
            let running = self.nodes[i].client("shadow", json!({}))["writer"]
                .get("running")
                .is_some_and(|r| r == &json!(true));
            if !running {
                self.start_writer(i);
            }
        }
    }

    /// The giveback state of node `i`.
    pub fn state(&self, i: usize) -> String {
        self.nodes[i].giveback().state
    }

    /// Identities node `i` assumed (takeovers), from the journals.
    pub fn assumed(&self, i: usize) -> usize {
        journals(&self.shared)
            .iter()
            .filter(|e| e.node == id(i) && e.event == "assume-identity")
            .count()
    }

    /// kill -9 of node `i`, then waits until its partner serves both disk sets: if node `i`
    /// served anything (UP or TAKEOVER), through a new takeover (whose replay covers what
    /// node `i` acknowledged), else the partner's takeover in force; or until the partner
    /// refused the takeover because its copy of node `i`'s log may lack acknowledged records
    /// (outdated, or not confirmed complete on the partner's incarnation: killed before its
    /// re-send to a restarted partner completed). Then nothing replays node `i`'s log but
    /// node `i` itself once restarted, which every caller does. Returns the victim's state
    /// when killed, and whether the takeover was refused.
    pub fn kill_and_wait_takeover(&mut self, i: usize) -> (String, bool) {
        let state = self.state(i);
        let before = self.assumed(1 - i);
        self.kill(i);
        let serving = state == "UP" || state == "TAKEOVER";
        let r = self.nodes[1 - i].wait_giveback("takeover, or its refusal", |r| {
            (r.state == "TAKEOVER" && r.serving.len() == 2)
                || (r.partner_failed && r.takeover_refused)
        });
        if r.takeover_refused && !(r.state == "TAKEOVER" && r.serving.len() == 2) {
            assert!(
                r.partner_copy_gap.is_some(),
                "seed {:#x}: takeover refused without a copy gap: {r:#?}",
                self.seed
            );
            println!(
                "chaos seed {:#x}: node {} refused to take over node {} ({state}): its copy {}",
                self.seed,
                id(1 - i),
                id(i),
                r.partner_copy_gap.expect("checked")
            );
            return (state, true);
        }
        if serving {
            self.wait_new_takeover(1 - i, before);
        }
        (state, false)
    }

    /// Waits until node `i` assumed its partner's identity more than `before` times and
    /// serves both disk sets.
    pub fn wait_new_takeover(&self, i: usize, before: usize) {
        let ctx = self.ctx();
        self.nodes[i].poll(
            &format!("a new takeover ({ctx})"),
            WAIT,
            || self.assumed(i),
            |n| *n > before,
        );
        self.wait_takeover(i);
    }

    /// Waits until node `i` acknowledged `n` records without its partner's copy.
    pub fn wait_unmirrored(&self, i: usize, n: u64) {
        self.shadow_wait(&self.nodes[i], &format!("{n} unmirrored writes"), |v| {
            v["shadow"]["unmirrored"].as_u64().unwrap_or(0) >= n
        });
    }

    /// Node `i`'s writer's acknowledged count (0 without a writer).
    pub fn acked(&self, i: usize) -> u64 {
        self.nodes[i].client("shadow", json!({}))["writer"]["acknowledged"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until node `i`'s writer acknowledged `more` records beyond now.
    pub fn wait_writes(&self, i: usize, more: u64) {
        let from = self.acked(i);
        self.shadow_wait(&self.nodes[i], &format!("{more} more writes"), |v| {
            v["writer"]["acknowledged"].as_u64().unwrap_or(0) >= from + more
        });
    }

    /// A random duration in `[lo, hi)` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(lo..hi))
    }

    /// Sleeps a random duration in `[lo, hi)` milliseconds.
    pub fn pause(&mut self, lo: u64, hi: u64) {
        std::thread::sleep(self.ms(lo, hi));
    }

    /// kill -9 of node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        note_crash(&self.shared, id(i));
    }

    /// Restarts node `i` (its control socket answers).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
    }

    /// Waits until node `i` took its partner over (the replay is done by then).
    pub fn wait_takeover(&self, i: usize) -> GivebackReport {
        self.nodes[i].wait_giveback("takeover", |r| {
            r.state == "TAKEOVER" && r.serving.len() == 2
        })
    }

    /// SIGSTOP of node `i` (noted in the journals).
    pub fn freeze(&mut self, i: usize) {
        self.nodes[i].signal("STOP");
        note(&self.shared, id(i), "frozen");
    }

    /// SIGCONT of node `i`.
    pub fn thaw(&mut self, i: usize) {
        note(&self.shared, id(i), "thawed");
        self.nodes[i].signal("CONT");
    }

    fn view_count(&self, survivor: usize) -> usize {
        let path = self.shared.join(format!("replayed-{}.log", id(survivor)));
        view_count(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// The end of a run: both nodes up again, writers make progress, then stop; every
    /// writer's acknowledged records are checked against the partner's replays and a final
    /// read of its live log, and the journals against double service. Adds to `counts`.
    pub fn finish(mut self, counts: &mut Counts) {
        let ctx = self.ctx();
        for i in 0..2 {
            if !self.nodes[i].running() {
                self.restart(i);
            }
        }
        self.wait_pair_up();
        self.ensure_writers();
        for i in 0..2 {
            self.wait_writes(i, 50);
        }
        let mut stopped = Vec::new();
        for n in &self.nodes {
            stopped.push(n.client("shadow", json!({"stop": true})));
        }
        let mut tally = Tally::default();
        for (i, stop) in stopped.iter().enumerate() {
            let w = &stop["writer"];
            if w["errors"] != json!(0) {
                tally.problems.push(format!("node {} writer: {w:#}", id(i)));
            }
            let partner = &self.nodes[1 - i];
            let r = partner.client("shadow", json!({"replay": true}))["replay"].clone();
            let fin = final_view(&r, &mut tally, id(i));
            let read = |n: u32| {
                let text = std::fs::read_to_string(self.shared.join(format!("replayed-{n}.log")))
                    .unwrap_or_default();
                ledger::parse_replayed(&text, |s| writer_payload(s, SIZE as usize))
            };
            // The partner's takeover replays, then this writer's own recoveries, then the
            // final read.
            let mut views: Vec<View> = read(id(1 - i)).into_iter().filter(|v| !v.own).collect();
            views.extend(read(id(i)).into_iter().filter(|v| v.own));
            views.push(fin);
            let acked = std::fs::read_to_string(self.shared.join(format!("acked-{}.log", id(i))))
                .unwrap_or_default();
            tally.add(&check_writer(&acked, &views, WINDOW));
        }
        let (_, fenced) = never_served_twice(&self.shared);
        counts.fenced_max_us = fenced.iter().copied().fold(counts.fenced_max_us, u128::max);
        counts.takeovers += journals(&self.shared)
            .iter()
            .filter(|e| e.event == "assume-identity")
            .count() as u64;
        counts.runs += 1;
        let problems = tally.problems.clone();
        counts.tally.add(&tally);
        assert!(
            problems.is_empty() && tally.lost == 0 && tally.duplicates == 0,
            "{ctx}: {problems:#?}\nA's log:\n{}\nB's log:\n{}",
            self.nodes[0].log_text(),
            self.nodes[1].log_text()
        );
        for n in self.nodes.iter_mut() {
            n.kill();
        }
    }
}

/// The final, non-consuming read of writer `node`'s log on its partner.
fn final_view(r: &Value, tally: &mut Tally, node: u32) -> View {
    for k in ["gaps", "bad_payloads"] {
        if r[k] != json!(0) {
            tally
                .problems
                .push(format!("final read of node {node}'s log: {k} {r:#}"));
        }
    }
    let checkpoint = r["checkpoint"].as_u64().unwrap_or(0);
    let seqs = match (r["first"].as_u64(), r["last"].as_u64()) {
        (Some(f), Some(l)) => (f..=l).collect(),
        _ => Vec::new(),
    };
    View {
        generation: r["generation"].as_u64().unwrap_or(0),
        checkpoint,
        seqs,
        bad: 0,
        own: false,
    }
}

fn file_len(p: &Path) -> usize {
    std::fs::metadata(p).map_or(0, |m| m.len() as usize)
}

/// Runs `scenario` for [`runs`] runs from [`base_seed`], printing each seed, then reports
/// the counts.
pub fn run_scenario(name: &str, scenario: impl FnMut(&mut ChaosPair, &mut Counts)) {
    run_scenario_with(name, SHADOW_PARTNER_TIMEOUT_MS, scenario)
}

/// [`run_scenario`] with the shadow logs' partner timeout `partner_timeout_ms`.
pub fn run_scenario_with(
    name: &str,
    partner_timeout_ms: u64,
    mut scenario: impl FnMut(&mut ChaosPair, &mut Counts),
) {
    let base = base_seed();
    let n = runs();
    let mut counts = Counts::default();
    let t0 = Instant::now();
    for r in 0..n {
        let seed = base.wrapping_add(r);
        println!(
            "chaos {name}: run {}/{n}, seed {seed:#x} (replay: CHAOS_SEED={seed:#x} CHAOS_RUNS=1)",
            r + 1
        );
        let mut p = ChaosPair::start_with(&format!("chaos-{name}"), seed, partner_timeout_ms);
        scenario(&mut p, &mut counts);
        p.finish(&mut counts);
    }
    counts.report(name);
    println!("chaos {name}: {:.0} s", t0.elapsed().as_secs_f64());
}
