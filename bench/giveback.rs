//! Giveback (issue 5) benchmarks between the two nodes of a pair: the latency of a
//! partner-state read, to set next to `ib_read_lat`, and the failure detection time and
//! giveback outage window in units of the poll interval.
//!
//! * `<net>/partner_state_read/64`: [`Manager::time_partner_reads`] on node A: back-to-back
//!   RDMA READs of node B's 64-byte health block on link 0's heartbeat queue pair, each READ's
//!   round trip (post to completion, busy polling) as the manager measures it (criterion
//!   `iter_custom`, the sum of the round trips). A pair of [`Manager`]s (no clients) is started
//!   for it; the reads run on A's event loop, in chunks of about 20 ms so that the loop keeps
//!   publishing its own health block. After the criterion group, `N` more reads (20 000 on the
//!   soft provider, 10 000 on Soft-RoCE) go into a histogram for p50 / p99.
//! * The takeover / giveback scenario (measured, not a criterion benchmark; it runs after the
//!   criterion group of a net whose benchmark ran): a fresh pair of managers, each with a
//!   [`GivebackNode`] (file mailbox, file reservations and journal hooks in a shared temporary
//!   directory; heartbeat and poll interval 100 ms, 5 missed intervals). Once both are UP,
//!   `N` cycles (default 5, `INTERLINK_BENCH_GIVEBACK_CYCLES`; 0 skips the scenario): B
//!   crashes (its giveback driver stops, its manager shuts down, nothing is released); A
//!   detects it and takes over (`last_detection`: B's last sign of life to A's takeover
//!   decision); B restarts with the same configuration (new manager and giveback node),
//!   GIVEWAIT, MBWAIT, A gives back and reads B UP (`last_outage`: A's giveback to A's first
//!   read of B UP). From the service journals: the handover gap, A's `stop-serving 2` to B's
//!   `start-serving 2`.
//!
//! `<net>` is `soft_loopback` (soft provider on 127.77.0.1 / 127.77.0.2, always run) and
//! `verbs_netns` (verbs provider on rxe_a0 / rxe_b0, 198.18.0.1 in ilA / 198.18.0.2 in ilB:
//! run inside `soft-roce/vm`, see `soft-roce/bench-giveback`). The verbs case runs when both
//! namespaces exist and libibverbs lists devices; `INTERLINK_BENCH_VERBS=1` makes their
//! absence an error instead of a skip, `INTERLINK_BENCH_VERBS=0` skips it. A net's managers
//! start only when its benchmark runs (so a filter such as `verbs_netns` skips the other net
//! entirely, scenario included).
//!
//! After criterion's report one `giveback-bench:` line per figure follows, which
//! `soft-roce/bench-giveback` reads: `key=<net>/partner_state_read n= p50_us= p99_us= mean_us=
//! min_us= max_us= p25_us= p75_us=`, `key=<net>/detection n= p50_ms= max_ms= min_ms=
//! p50_intervals= max_intervals=` (and `outage`), `key=<net>/handover n= p50_ms= max_ms=
//! min_ms=`, and `key=<net>/giveback cycles= interval_ms= miss_intervals=`.
//! `INTERLINK_BENCH_SUMMARY_ONLY=1` skips criterion; `INTERLINK_BENCH_FIGURES` names the
//! figures to run (`partner_state_read`, `giveback` for the scenario), as the script's
//! interleaved runs do.
//! Without `--bench` (criterion's test mode, as in `cargo test --benches`) the benchmark runs
//! once, the histogram takes 1000 reads and the scenario one cycle.

mod pair;

use criterion::Criterion;
use hdrhistogram::Histogram;
use interlink::clients::giveback::service::{journal_path, read_journal};
use interlink::clients::giveback::{
    FileMailbox, FileReservations, GivebackNode, GivebackOptions, GivebackStatus, JournalHooks,
    NodeState,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{LinkConfig, LinkState, Manager, NodeConfig};
use pair::*;
use std::cell::{OnceCell, RefCell};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The scenario's heartbeat (and giveback poll) interval, ms.
const INTERVAL_MS: u64 = 100;
/// The scenario's missed intervals before a partner is declared failed (heartbeat and
/// giveback), as in tests/manager_pair and the giveback tests.
const MISS: u32 = 5;
/// The read pair's heartbeat: tolerant (as bench/messaging.rs's), because the reads busy-poll
/// node A's event loop and a loaded host (or TCG) can then starve the loop's periodic work
/// long enough for B to declare A's heartbeat lost. The read's latency does not depend on it.
const READ_PAIR_HEARTBEAT: (u64, u32) = (250, 12);
/// The partner-state read: the health block's size.
const BLOCK: usize = 64;
/// About how long one `time_partner_reads` call may hold node A's event loop.
const CHUNK_TIME: Duration = Duration::from_millis(20);
/// Longest anything may take before the bench gives up (TCG emulation is slow).
const WAIT: Duration = Duration::from_secs(120);

/// How much each net measures.
#[derive(Clone, Copy)]
struct Amounts {
    /// Criterion sample count and times of `partner_state_read`.
    samples: usize,
    warm_up: Duration,
    measurement: Duration,
    /// Reads recorded in the histogram.
    hist_reads: usize,
}

/// How much `net` measures (Soft-RoCE in the VM runs under TCG emulation: fewer reads).
fn amounts(net: &Net) -> Amounts {
    match net.provider {
        ProviderChoice::Verbs => Amounts {
            samples: 10,
            warm_up: Duration::from_secs(1),
            measurement: Duration::from_secs(3),
            hist_reads: 10_000,
        },
        _ => Amounts {
            samples: 30,
            warm_up: Duration::from_secs(1),
            measurement: Duration::from_secs(3),
            hist_reads: 20_000,
        },
    }
}

// ------------------------------------------------------------------ configuration

/// Bootstrap ports: a range apart from bench/manager.rs's (24000-43999) and
/// bench/messaging.rs's (45000-45999); `which` is 0 for the read pair, 1 for the scenario.
fn port(net: &Net, which: u16) -> u16 {
    let base = 46000 + (std::process::id() % 100) as u16 * 10;
    base + u16::from(net.provider == ProviderChoice::Verbs) * 2 + which
}

/// Node 1's (A, initiator) and node 2's (B) configuration: one link, a heartbeat every
/// `interval_ms`, `miss` missed intervals before a link is declared dead.
fn configs(
    net: &Net,
    secret: &Path,
    port: u16,
    (interval_ms, miss): (u64, u32),
) -> (NodeConfig, NodeConfig) {
    let (la, lb) = (net.addr_a(), net.addr_b());
    let a = NodeConfig::new(11, 1, 2, secret)
        .with_fabric(net.provider)
        .with_heartbeat(interval_ms, miss)
        .with_link(LinkConfig::new(0, la, lb).with_bootstrap_port(port));
    let b = NodeConfig::new(11, 2, 1, secret)
        .with_fabric(net.provider)
        .with_heartbeat(interval_ms, miss)
        .with_link(LinkConfig::new(0, lb, la).with_bootstrap_port(port));
    (a, b)
}

fn wait_link_ready(net: &Net, node: &str, m: &Manager) {
    let (ok, s) = m
        .wait_status(WAIT, |s| {
            s.links.iter().all(|l| l.state == LinkState::Ready)
        })
        .unwrap_or_else(|e| panic!("{}: node {node}: status: {e}", net.label));
    assert!(
        ok,
        "{}: node {node}'s link not ready within {WAIT:?}: {s:#?}",
        net.label
    );
}

// ------------------------------------------------------------------ partner-state reads

/// Node A's and B's managers for the reads.
struct ReadPair {
    a: Manager,
    b: Manager,
    /// Reads per `time_partner_reads` call (about [`CHUNK_TIME`] worth).
    chunk: usize,
}

impl ReadPair {
    fn start(net: &Net, secret: &Path) -> ReadPair {
        let t = Instant::now();
        let (ca, cb) = configs(net, secret, port(net, 0), READ_PAIR_HEARTBEAT);
        let a = spawn_in(net.ns_a(), "bench-node-a", move || Manager::start(ca));
        let b = spawn_in(net.ns_b(), "bench-node-b", move || Manager::start(cb));
        let (a, b) = match (join(a), join(b)) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!(
                "giveback bench set-up failed:\n A: {:?}\n B: {:?}",
                a.err(),
                b.err()
            ),
        };
        wait_link_ready(net, "A", &a);
        wait_link_ready(net, "B", &b);
        // The heartbeat learns the partner's block shortly after the link is ready.
        let t0 = Instant::now();
        let first = loop {
            match a.time_partner_reads(0, 10) {
                Ok(d) => break d,
                Err(e) if t0.elapsed() > WAIT => {
                    panic!("{}: partner-state reads failed: {e}", net.label)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut pair = ReadPair { a, b, chunk: 10 };
        pair.adapt(&first);
        eprintln!(
            "giveback bench: {} read pair ready in {:.2} s",
            net.label,
            t.elapsed().as_secs_f64()
        );
        pair
    }

    /// Sizes the next chunks from the round trips of the last one.
    fn adapt(&mut self, last: &[Duration]) {
        let total: Duration = last.iter().sum();
        if let Some(mean) = total.checked_div(last.len().max(1) as u32) {
            let n = CHUNK_TIME.as_nanos() / mean.as_nanos().max(1);
            self.chunk = (n as usize).clamp(1, 5000);
        }
    }

    /// `n` partner-state reads from A, in chunks; every round trip goes to `each`.
    fn reads(&mut self, net: &Net, n: u64, mut each: impl FnMut(Duration)) {
        let mut left = n;
        while left > 0 {
            let k = left.min(self.chunk as u64);
            let d = self
                .a
                .time_partner_reads(0, k as usize)
                .unwrap_or_else(|e| panic!("{}: partner-state reads: {e}", net.label));
            assert_eq!(d.len() as u64, k, "round trips returned");
            d.iter().copied().for_each(&mut each);
            self.adapt(&d);
            left -= k;
            // Let A's event loop run its periodic work before the next chunk.
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn shutdown(self) {
        let ReadPair { a, b, .. } = self;
        let (ha, hb) = (
            std::thread::spawn(move || a.shutdown()),
            std::thread::spawn(move || b.shutdown()),
        );
        join(ha);
        join(hb);
    }
}

// ------------------------------------------------------------------ the giveback scenario

/// One node: its manager and giveback client.
struct Node {
    manager: Arc<Manager>,
    giveback: GivebackNode,
}

impl Node {
    /// Starts a manager and its giveback client (call from a thread in the node's namespace).
    fn start(cfg: NodeConfig, dir: &Path) -> Result<Node, String> {
        let me = cfg.node_id;
        let partner = cfg.partner_id;
        let manager = Arc::new(Manager::start(cfg).map_err(|e| format!("node {me}: start: {e}"))?);
        let mailbox =
            FileMailbox::open(dir, me, partner).map_err(|e| format!("node {me}: mailbox: {e}"))?;
        let reservations =
            FileReservations::open(dir, me).map_err(|e| format!("node {me}: reservations: {e}"))?;
        let giveback = GivebackNode::start(
            &manager,
            GivebackOptions {
                interval: None, // the heartbeat interval
                miss_intervals: MISS,
                auto_giveback: true,
                ..GivebackOptions::default()
            },
            Box::new(mailbox),
            Box::new(reservations),
            Box::new(JournalHooks::new(dir, me)),
        )
        .map_err(|e| format!("node {me}: giveback: {e}"))?;
        Ok(Node { manager, giveback })
    }

    /// Starts node `cfg` from a thread in namespace `ns`.
    fn start_in(ns: Option<&'static str>, cfg: NodeConfig, dir: &Path) -> Result<Node, String> {
        let dir = dir.to_path_buf();
        let name = format!("bench-node-{}", cfg.node_id);
        join(spawn_in(ns, &name, move || Node::start(cfg, &dir)))
    }

    /// Stops the node as a crash would: nothing is released.
    fn crash(self) {
        self.giveback.stop();
        self.manager.shutdown();
    }

    fn wait(
        &self,
        net: &Net,
        what: &str,
        mut pred: impl FnMut(&GivebackStatus) -> bool,
    ) -> GivebackStatus {
        let t0 = Instant::now();
        loop {
            let s = self.giveback.status();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{}: timed out waiting for {what}: {s:#?}",
                net.label
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn both_up(s: &GivebackStatus) -> bool {
    s.state == NodeState::Up && s.partner_state == Some(NodeState::Up) && s.serving == [s.me]
}

/// What the scenario measured, per cycle.
#[derive(Default)]
struct Cycles {
    detection: Vec<Duration>,
    outage: Vec<Duration>,
    handover: Vec<Duration>,
    interval: Duration,
}

/// The handover gap of the last giveback of set 2: node 1's last `stop-serving 2` to node 2's
/// first `start-serving 2` after it.
fn handover_gap(dir: &Path) -> Option<Duration> {
    let a = read_journal(&journal_path(dir, 1)).ok()?;
    let b = read_journal(&journal_path(dir, 2)).ok()?;
    let stop = a
        .iter()
        .rev()
        .find(|e| e.event == "stop-serving" && e.what == 2)?
        .at_us;
    let start = b
        .iter()
        .find(|e| e.event == "start-serving" && e.what == 2 && e.at_us >= stop)?
        .at_us;
    Some(Duration::from_micros((start - stop) as u64))
}

fn giveback_scenario(net: &Net, secret: &Path, cycles: usize) -> Cycles {
    let dir = secret.parent().expect("secret dir").join(net.label);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create giveback dir");
    let (ca, cb) = configs(net, secret, port(net, 1), (INTERVAL_MS, MISS));
    let start = |ns, cfg: &NodeConfig| {
        Node::start_in(ns, cfg.clone(), &dir)
            .unwrap_or_else(|e| panic!("{}: giveback set-up: {e}", net.label))
    };
    let na = start(net.ns_a(), &ca);
    let mut nb = Some(start(net.ns_b(), &cb));
    let mut out = Cycles {
        interval: Duration::from_secs_f64(na.giveback.report().interval_ms / 1e3),
        ..Cycles::default()
    };
    for cycle in 1..=cycles {
        let b = nb.take().expect("node B");
        na.wait(net, "both nodes up (A)", both_up);
        b.wait(net, "both nodes up (B)", both_up);
        let before = na.giveback.status();
        b.crash();
        let s = na.wait(net, "A's takeover", |s| {
            s.state == NodeState::Takeover
                && s.serving.contains(&2)
                && s.identity_assumed
                && s.takeovers > before.takeovers
        });
        let detection = s.last_detection.expect("detection time");
        let b = start(net.ns_b(), &cb);
        b.wait(net, "B serving again", |s| {
            s.state == NodeState::Up && s.serving == [2]
        });
        let s = na.wait(net, "A's giveback done", |s| {
            s.state == NodeState::Up
                && s.serving == [1]
                && s.last_outage_window.is_some()
                && s.last_outage_window != before.last_outage_window
        });
        let outage = s.last_outage().expect("outage window");
        let gap = handover_gap(&dir).expect("journal handover");
        eprintln!(
            "giveback bench: {} cycle {cycle}: detection {:.1} ms, outage {:.1} ms, handover {:.1} ms",
            net.label,
            detection.as_secs_f64() * 1e3,
            outage.as_secs_f64() * 1e3,
            gap.as_secs_f64() * 1e3
        );
        out.detection.push(detection);
        out.outage.push(outage);
        out.handover.push(gap);
        nb = Some(b);
    }
    let b = nb.take().expect("node B");
    let (ha, hb) = (
        std::thread::spawn(move || na.crash()),
        std::thread::spawn(move || b.crash()),
    );
    join(ha);
    join(hb);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

// ------------------------------------------------------------------ recording

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The giveback figures on top of the shared [`Recorder`].
trait GivebackFigures {
    fn durations(&self, net: &Net, figure: &str, d: &[Duration], interval: Option<Duration>);
    fn cycles(&self, net: &Net, c: &Cycles);
}

impl GivebackFigures for Recorder {
    /// n, p50, max, min in ms, and (with an interval) p50 and max in intervals.
    fn durations(&self, net: &Net, figure: &str, d: &[Duration], interval: Option<Duration>) {
        if d.is_empty() {
            return;
        }
        let mut v: Vec<f64> = d.iter().copied().map(ms).collect();
        v.sort_by(f64::total_cmp);
        let (p50, max) = (median(&v), v[v.len() - 1]);
        let mut fields = format!(
            "n={} p50_ms={p50:.1} max_ms={max:.1} min_ms={:.1}",
            v.len(),
            v[0]
        );
        if let Some(i) = interval {
            let i = ms(i);
            fields += &format!(" p50_intervals={:.2} max_intervals={:.2}", p50 / i, max / i);
        }
        self.set(net, figure, fields);
    }

    fn cycles(&self, net: &Net, c: &Cycles) {
        let i = Some(c.interval);
        self.durations(net, "detection", &c.detection, i);
        self.durations(net, "outage", &c.outage, i);
        self.durations(net, "handover", &c.handover, i);
        self.set(
            net,
            "giveback",
            format!(
                "cycles={} interval_ms={:.0} miss_intervals={MISS}",
                c.detection.len(),
                ms(c.interval)
            ),
        );
    }
}

// ------------------------------------------------------------------ criterion

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    let secret = secret_file("giveback");
    let am = amounts(net);
    let pair: OnceCell<RefCell<ReadPair>> = OnceCell::new();
    let get = || pair.get_or_init(|| RefCell::new(ReadPair::start(net, &secret)));

    if summary_only() {
        if !selected(net) {
            return;
        }
        if figure_wanted("partner_state_read") {
            get();
        }
    } else {
        let mut g = c.benchmark_group(format!("{}/partner_state_read", net.label));
        g.sample_size(am.samples)
            .warm_up_time(am.warm_up)
            .measurement_time(am.measurement)
            .nresamples(10_000);
        g.bench_function(format!("{BLOCK}"), |bch| {
            let p = get();
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                p.borrow_mut().reads(net, iters, |d| total += d);
                total
            })
        });
        g.finish();
    }

    match pair.into_inner().map(RefCell::into_inner) {
        Some(mut pair) => {
            let n = if quick { 1000 } else { am.hist_reads };
            eprintln!(
                "giveback bench: {}: {n} partner-state reads into the histogram",
                net.label
            );
            let mut h = histogram();
            pair.reads(net, n as u64, |d| {
                h.saturating_record(d.as_nanos().max(1) as u64)
            });
            rec.latency(net, "partner_state_read", &h);
            pair.shutdown();
        }
        // Criterion's filter left this net out: nothing of it runs.
        None if !summary_only() => return,
        None => {}
    }

    let cycles = match std::env::var("INTERLINK_BENCH_GIVEBACK_CYCLES").map(|v| v.parse::<usize>())
    {
        Ok(Ok(n)) => n,
        _ if quick => 1,
        _ => 5,
    };
    let cycles = if figure_wanted("giveback") { cycles } else { 0 };
    if cycles > 0 {
        eprintln!(
            "giveback bench: {}: {cycles} crash / takeover / restart / giveback cycles",
            net.label
        );
        rec.cycles(net, &giveback_scenario(net, &secret, cycles));
    }
}

fn main() {
    init_logs();
    // cargo bench passes --bench; without it criterion runs every benchmark once (test mode).
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::new("giveback");
    bench_net(&mut c, &SOFT_LOOPBACK, &rec, quick);
    run_verbs_case("giveback", "bench-giveback", || {
        bench_net(&mut c, &VERBS_NETNS, &rec, quick)
    });
    c.final_summary();
    rec.print_summary(&format!(
        "{BLOCK}-byte partner-state reads in microseconds; detection, outage and handover in milliseconds and poll intervals"
    ));
    remove_secret("giveback");
}
