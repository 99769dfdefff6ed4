//! Shadow log (issue 6, F5.1) benchmarks between the two nodes of a pair: append latency, to
//! set next to `ib_write_lat`, and pipelined append throughput, to set next to `ib_write_bw`.
//!
//! One pair of [`Manager`]s per net, each with a [`ShadowMirror`] (default [`ShadowConfig`]:
//! send queue 128 deep, 1 ms of spinning before a waiter sleeps) on a 64 MiB log, is started
//! once (node A's threads in namespace ilA, node B's in ilB on Soft-RoCE) and serves every
//! measurement of that net. Node A appends; node B only mirrors. The local NVRAM is a
//! [`MemoryNvram`] (plain memory: persisting is a no-op, so the figures are the mirror path's
//! own); `INTERLINK_BENCH_MIRROR_NVRAM=file` uses the reference
//! [`FileNvram`](interlink::clients::mirror::FileNvram) (a memory-mapped
//! file in a temporary directory, msync per append) instead, `=dax` a
//! [`DaxNvram`](interlink::clients::mirror::DaxNvram) (persistent
//! memory: the files in `INTERLINK_BENCH_MIRROR_NVRAM_DIR`, a filesystem mounted `-o dax`,
//! cache flushes per append; that variable also moves the `file` case's files), and
//! `INTERLINK_BENCH_MIRROR_SPIN_US` sets [`ShadowConfig::spin`]. With a file or DAX NVRAM the
//! one-at-a-time figures are named `append_file_<size>` / `append_dax_<size>` (criterion group
//! `<net>/append_file`, `<net>/append_dax`) instead of `append_<size>`. Every 1024 acknowledged
//! records node A checkpoints through the last one, so the log never fills (its data area
//! holds about 16 000 records of 4 KiB).
//!
//! * `<net>/append/{64,512,4096}`: [`ShadowMirror::append`] of one record of that payload size
//!   at a time (as `append_start` then `wait`): local copy into the log (record header and
//!   checksum), staging copy, one RDMA WRITE of the record to the partner's mirror region and
//!   its completion (criterion `iter_custom`, the sum of the appends' latencies; the periodic
//!   checkpoint is outside the timing). After the criterion group, `N` more appends per size
//!   (20 000 on the soft provider, 5 000 on Soft-RoCE) go into a histogram for p50 / p99.
//! * `<net>/append_throughput/4096`: appends of 4 KiB with up to `W` in flight
//!   ([`ShadowMirror::append_start`] while fewer than `W` are in flight, else
//!   [`ShadowMirror::wait`] for the oldest; `W` = 32, `INTERLINK_BENCH_MIRROR_WINDOW`), timed
//!   until the last is acknowledged (criterion `Throughput::Bytes`). After the group, a timed
//!   run (3 s on the soft provider, 5 s on Soft-RoCE) gives MB/s (2^20 bytes per second, as
//!   perftest counts them) and records/s.
//!
//! `<net>` is `soft_loopback` (soft provider on 127.77.0.1 / 127.77.0.2, always run) and
//! `verbs_netns` (verbs provider on rxe_a0 / rxe_b0, 198.18.0.1 in ilA / 198.18.0.2 in ilB:
//! run inside `soft-roce/vm`, see `soft-roce/bench-mirror`). The verbs case runs when both
//! namespaces exist and libibverbs lists devices; `INTERLINK_BENCH_VERBS=1` makes their
//! absence an error instead of a skip, `INTERLINK_BENCH_VERBS=0` skips it. A net's managers
//! start only when the first of its benchmarks runs (so a filter such as `verbs_netns` skips
//! the other net entirely).
//!
//! After criterion's report one `mirror-bench:` line per figure follows, which
//! `soft-roce/bench-mirror` reads: `key=<net>/append_<size> n= p50_us= p99_us= mean_us=
//! min_us= max_us= p25_us= p75_us= start_mean_us=` for sizes 64, 512 and 4096,
//! `key=<net>/append_throughput_4096 records= secs= mb_s= records_s= wire_mb_s= window=
//! start_mean_us=`, and `key=<net>/shadow nvram= log_mib= checkpoint_every= spin_us=
//! writes_per_record= ...` (the driver's counters after the run). `start_mean_us` is the mean
//! time in [`ShadowMirror::append_start`], the local part of an append (lock, log copy and
//! record checksum, staging copy, post; on Soft-RoCE the post is a system call in which rxe
//! does much of the sending), which the latencies include.
//! Without `--bench` (criterion's test mode, as in `cargo test --benches`) every benchmark runs
//! once, the histograms take 1000 appends and the timed throughput run 0.2 s.

mod pair;

use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;
use interlink::clients::mirror::shadow::{Durability, Nvram};
use interlink::clients::mirror::{
    LogPosition, MemoryNvram, NvramKind, ShadowConfig, ShadowMirror, ShadowStats,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{LinkConfig, Manager, NodeConfig};
use pair::*;
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload sizes of the latency benchmarks.
const SIZES: [usize; 3] = [64, 512, 4096];
/// Payload size of the throughput benchmark.
const BW_SIZE: usize = 4096;
/// Log size (both nodes).
const LOG_LEN: usize = 64 << 20;
/// Acknowledged records between checkpoints.
const CHECKPOINT_EVERY: u64 = 1024;
/// Default appends in flight in the throughput benchmark.
const WINDOW: usize = 32;
/// The pair's heartbeat: tolerant (as the other pair benchmarks'), because appends busy-poll
/// and a loaded host (or TCG) can starve the managers' event loops.
const HEARTBEAT: (u64, u32) = (250, 12);
/// Longest anything may take before the bench gives up (TCG emulation is slow).
const WAIT: Duration = Duration::from_secs(120);

/// How much each net measures.
#[derive(Clone, Copy)]
struct Amounts {
    samples: usize,
    warm_up: Duration,
    measurement: Duration,
    /// Appends per size recorded in the latency histograms.
    hist_appends: usize,
    /// Length of the timed throughput run.
    bw_time: Duration,
}

/// How much `net` measures (Soft-RoCE in the VM runs under TCG emulation: fewer appends).
fn amounts(net: &Net) -> Amounts {
    match net.provider {
        ProviderChoice::Verbs => Amounts {
            samples: 10,
            warm_up: Duration::from_secs(1),
            measurement: Duration::from_secs(3),
            hist_appends: 5_000,
            bw_time: Duration::from_secs(5),
        },
        _ => Amounts {
            samples: 20,
            warm_up: Duration::from_millis(500),
            measurement: Duration::from_secs(2),
            hist_appends: 20_000,
            bw_time: Duration::from_secs(3),
        },
    }
}

fn window() -> usize {
    std::env::var("INTERLINK_BENCH_MIRROR_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(WINDOW)
}

/// The durability point of the pair being started: the default (a READ behind the writes),
/// or, for the comparison, delivery (the plain WRITE) or an RDMA FLUSH behind the writes.
static DURABILITY: parking_lot::Mutex<Durability> = parking_lot::Mutex::new(Durability::Read);

/// The shadow configuration: the defaults, except a waiter's spin before it sleeps
/// (`INTERLINK_BENCH_MIRROR_SPIN_US`, to compare settings) and the durability point.
fn shadow_config() -> ShadowConfig {
    let mut cfg = ShadowConfig::new();
    cfg.durability = *DURABILITY.lock();
    if let Some(us) = std::env::var("INTERLINK_BENCH_MIRROR_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.spin = Duration::from_micros(us);
    }
    cfg
}

/// The NVRAM backing (`INTERLINK_BENCH_MIRROR_NVRAM`: memory, `file` or `dax`).
fn nvram_kind() -> Option<NvramKind> {
    match std::env::var("INTERLINK_BENCH_MIRROR_NVRAM").as_deref() {
        Ok("file") => Some(NvramKind::File),
        Ok("dax") => Some(NvramKind::Dax),
        _ => None,
    }
}

fn nvram_label() -> &'static str {
    match nvram_kind() {
        None => "memory",
        Some(NvramKind::Dax) => "dax",
        Some(_) => "file",
    }
}

/// The one-at-a-time append figures' name: `append`, or `append_file` / `append_dax`.
fn append_name() -> String {
    match nvram_kind() {
        None => "append".into(),
        Some(_) => format!("append_{}", nvram_label()),
    }
}

// ------------------------------------------------------------------ configuration

/// Bootstrap ports: a range apart from bench/manager.rs's (24000-43999), bench/messaging.rs's
/// (45000-45999) and bench/giveback.rs's (46000-46999).
fn port(net: &Net) -> u16 {
    47000
        + (std::process::id() % 100) as u16 * 10
        + u16::from(net.provider == ProviderChoice::Verbs)
}

/// Node 1's (A, initiator, the appender) and node 2's (B, the mirror) configuration.
fn configs(net: &Net, secret: &Path) -> (NodeConfig, NodeConfig) {
    let (la, lb) = (net.addr_a(), net.addr_b());
    let (interval, miss) = HEARTBEAT;
    let a = NodeConfig::new(12, 1, 2, secret)
        .with_fabric(net.provider)
        .with_heartbeat(interval, miss)
        .with_link(LinkConfig::new(0, la, lb).with_bootstrap_port(port(net)));
    let b = NodeConfig::new(12, 2, 1, secret)
        .with_fabric(net.provider)
        .with_heartbeat(interval, miss)
        .with_link(LinkConfig::new(0, lb, la).with_bootstrap_port(port(net)));
    (a, b)
}

/// The log and cursor backings of `node`.
fn backings(dir: &Path, node: u32) -> Result<(Nvram, Nvram), String> {
    if let Some(kind) = nvram_kind() {
        let log = kind
            .open(&dir.join(format!("shadow-{node}.nvram")), LOG_LEN)
            .map_err(|e| format!("node {node}: log file: {e}"))?;
        let cursor = kind
            .open(&dir.join(format!("shadow-{node}.cursor")), 4096)
            .map_err(|e| format!("node {node}: cursor file: {e}"))?;
        Ok((log, cursor))
    } else {
        Ok((
            Box::new(MemoryNvram::new(LOG_LEN)),
            Box::new(MemoryNvram::new(4096)),
        ))
    }
}

/// One node: its manager and shadow mirror.
struct Node {
    manager: Arc<Manager>,
    shadow: ShadowMirror,
}

impl Node {
    /// Starts node `cfg` from a thread in namespace `ns`.
    fn start_in(ns: Option<&'static str>, cfg: NodeConfig, dir: &Path) -> Result<Node, String> {
        let dir = dir.to_path_buf();
        let name = format!("bench-node-{}", cfg.node_id);
        join(spawn_in(ns, &name, move || {
            let me = cfg.node_id;
            let manager =
                Arc::new(Manager::start(cfg).map_err(|e| format!("node {me}: start: {e}"))?);
            let (log, cursor) = backings(&dir, me)?;
            let shadow = ShadowMirror::start(&manager, shadow_config(), log, cursor)
                .map_err(|e| format!("node {me}: shadow mirror: {e}"))?;
            // The bench's files are new for each run: a fresh log.
            shadow
                .recover(None, |_| Ok(()))
                .map_err(|e| format!("node {me}: shadow recovery: {e}"))?;
            Ok(Node { manager, shadow })
        }))
    }

    fn shutdown(self) {
        let Node { manager, shadow } = self;
        drop(shadow);
        manager.shutdown();
    }
}

// ------------------------------------------------------------------ the pair

struct MirrorPair {
    a: Node,
    b: Node,
    dir: PathBuf,
    /// Acknowledged records since the last checkpoint, and the last of them.
    since_checkpoint: u64,
    last: Option<LogPosition>,
    payloads: BTreeMap<usize, Vec<u8>>,
    window: usize,
    /// Time in `append_start` (the local part: log copy and checksum, staging copy, post).
    local: Local,
}

/// Time spent in `append_start`, and how many calls.
#[derive(Default, Clone, Copy)]
struct Local {
    total: Duration,
    n: u64,
}

impl Local {
    fn note(&mut self, d: Duration) {
        self.total += d;
        self.n += 1;
    }
    /// Mean µs per call since `before`.
    fn mean_us_since(&self, before: Local) -> f64 {
        let n = self.n - before.n;
        (self.total - before.total).as_secs_f64() * 1e6 / n.max(1) as f64
    }
}

impl MirrorPair {
    fn start(net: &Net, secret: &Path) -> MirrorPair {
        let t = Instant::now();
        let dir = match std::env::var_os("INTERLINK_BENCH_MIRROR_NVRAM_DIR") {
            Some(d) => PathBuf::from(d).join(net.label),
            None => secret.parent().expect("secret dir").join(net.label),
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create nvram dir");
        let (ca, cb) = configs(net, secret);
        let (da, db) = (dir.clone(), dir.clone());
        let (na, nb) = (net.ns_a(), net.ns_b());
        let ha = std::thread::spawn(move || Node::start_in(na, ca, &da));
        let hb = std::thread::spawn(move || Node::start_in(nb, cb, &db));
        let (a, b) = match (join(ha), join(hb)) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!(
                "mirror bench set-up failed:\n A: {:?}\n B: {:?}",
                a.err(),
                b.err()
            ),
        };
        for (n, node) in [("A", &a), ("B", &b)] {
            assert!(
                node.shadow.wait_connected_timeout(WAIT).is_ok(),
                "{}: node {n}'s shadow mirror not connected within {WAIT:?}: {:#?}",
                net.label,
                node.shadow.stats()
            );
        }
        let payloads = SIZES
            .iter()
            .chain([BW_SIZE].iter())
            .map(|&s| {
                let p: Vec<u8> = (0..s).map(|i| (i % 251) as u8).collect();
                (s, p)
            })
            .collect();
        eprintln!(
            "mirror bench: {} pair ready in {:.2} s ({} NVRAM, {} MiB log)",
            net.label,
            t.elapsed().as_secs_f64(),
            nvram_label(),
            LOG_LEN >> 20
        );
        MirrorPair {
            a,
            b,
            dir,
            since_checkpoint: 0,
            last: None,
            payloads,
            window: window(),
            local: Local::default(),
        }
    }

    /// Notes `n` acknowledged records up to `last`; checkpoints every [`CHECKPOINT_EVERY`].
    fn acknowledged(&mut self, net: &Net, n: u64, last: LogPosition) {
        self.since_checkpoint += n;
        self.last = Some(last);
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            self.a
                .shadow
                .checkpoint(last)
                .unwrap_or_else(|e| panic!("{}: checkpoint: {e}", net.label));
            self.since_checkpoint = 0;
        }
    }

    /// `n` appends of `size` bytes, one at a time; every latency goes to `each`.
    fn appends(&mut self, net: &Net, size: usize, n: u64, mut each: impl FnMut(Duration)) {
        for _ in 0..n {
            let p = &self.payloads[&size];
            // As ShadowMirror::append, with the local part (append_start) timed apart.
            let t = Instant::now();
            let ticket = self
                .a
                .shadow
                .append_start(p)
                .unwrap_or_else(|e| panic!("{}: append of {size} bytes: {e}", net.label));
            self.local.note(t.elapsed());
            let r = self
                .a
                .shadow
                .wait(&ticket)
                .unwrap_or_else(|e| panic!("{}: append of {size} bytes: {e}", net.label));
            each(t.elapsed());
            assert!(r.mirrored, "{}: append not mirrored", net.label);
            self.acknowledged(net, 1, r.position);
        }
    }

    /// Appends of [`BW_SIZE`] bytes with up to `window` in flight, until `n` were started or
    /// `until` passed; returns how many were acknowledged and the time from the first start
    /// to the last acknowledgement.
    fn pipelined(&mut self, net: &Net, n: u64, until: Option<Instant>) -> (u64, Duration) {
        let mut in_flight = VecDeque::with_capacity(self.window);
        let (mut started, mut done) = (0u64, 0u64);
        let t0 = Instant::now();
        loop {
            while in_flight.len() < self.window
                && started < n
                && until.is_none_or(|u| Instant::now() < u)
            {
                let t = Instant::now();
                let ticket = self
                    .a
                    .shadow
                    .append_start(&self.payloads[&BW_SIZE])
                    .unwrap_or_else(|e| panic!("{}: append_start: {e}", net.label));
                self.local.note(t.elapsed());
                in_flight.push_back(ticket);
                started += 1;
            }
            let Some(front) = in_flight.pop_front() else {
                break;
            };
            let r = self
                .a
                .shadow
                .wait(&front)
                .unwrap_or_else(|e| panic!("{}: wait: {e}", net.label));
            assert!(r.mirrored, "{}: append not mirrored", net.label);
            done += 1;
            // Every acknowledged record counts; the checkpoint follows the oldest in flight.
            self.acknowledged(net, 1, r.position);
        }
        (done, t0.elapsed())
    }

    fn shutdown(self) {
        let MirrorPair { a, b, dir, .. } = self;
        let (ha, hb) = (
            std::thread::spawn(move || a.shutdown()),
            std::thread::spawn(move || b.shutdown()),
        );
        join(ha);
        join(hb);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ------------------------------------------------------------------ recording

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram")
}

/// perftest's MB: 2^20 bytes.
const MB: f64 = (1u64 << 20) as f64;

/// The shadow-log figures on top of the shared [`Recorder`].
trait MirrorFigures {
    fn append_latency(&self, net: &Net, figure: &str, h: &Histogram<u64>, local_us: f64);
    fn throughput(&self, net: &Net, run: (u64, Duration), window: usize, wire: u64, local_us: f64);
    fn shadow(&self, net: &Net, s: &ShadowStats);
}

impl MirrorFigures for Recorder {
    fn append_latency(&self, net: &Net, figure: &str, h: &Histogram<u64>, local_us: f64) {
        self.latency_with(net, figure, h, &format!(" start_mean_us={local_us:.2}"));
    }

    fn throughput(
        &self,
        net: &Net,
        (records, took): (u64, Duration),
        window: usize,
        wire: u64,
        local_us: f64,
    ) {
        let secs = took.as_secs_f64().max(1e-9);
        self.set(
            net,
            &format!("append_throughput_{BW_SIZE}"),
            format!(
                "records={records} secs={secs:.3} mb_s={:.2} records_s={:.0} wire_mb_s={:.2} window={window} start_mean_us={local_us:.2}",
                records as f64 * BW_SIZE as f64 / MB / secs,
                records as f64 / secs,
                wire as f64 / MB / secs,
            ),
        );
    }

    fn shadow(&self, net: &Net, s: &ShadowStats) {
        self.set(
            net,
            "shadow",
            format!(
                "nvram={} log_mib={} checkpoint_every={CHECKPOINT_EVERY} spin_us={} appends={} mirror_writes={} writes_per_record={:.3} mirror_mb={:.1} resyncs={} write_errors={} unmirrored={}",
                nvram_label(),
                LOG_LEN >> 20,
                shadow_config().spin.as_micros(),
                s.appends,
                s.mirror_writes,
                s.mirror_writes as f64 / s.appends.max(1) as f64,
                s.mirror_bytes as f64 / MB,
                s.resyncs,
                s.write_errors,
                s.unmirrored,
            ),
        );
    }
}

// ------------------------------------------------------------------ criterion

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    let secret = secret_file("mirror");
    let am = amounts(net);
    let pair: OnceCell<RefCell<MirrorPair>> = OnceCell::new();
    let get = || pair.get_or_init(|| RefCell::new(MirrorPair::start(net, &secret)));

    append_group(c, net, &append_name(), get);

    let mut g = c.benchmark_group(format!("{}/append_throughput", net.label));
    g.sample_size(am.samples)
        .warm_up_time(am.warm_up)
        .measurement_time(am.measurement)
        .nresamples(10_000)
        .throughput(Throughput::Bytes(BW_SIZE as u64));
    g.bench_function(format!("{BW_SIZE}"), |bch| {
        let p = get();
        bch.iter_custom(|iters| p.borrow_mut().pipelined(net, iters, None).1)
    });
    g.finish();

    let Some(pair) = pair.into_inner().map(RefCell::into_inner) else {
        // The benchmarks were filtered out: nothing of this net runs, but maybe these.
        bench_durability(c, net, rec, quick, &secret, Durability::Delivered);
        bench_durability(c, net, rec, quick, &secret, Durability::Flush);
        return;
    };
    let mut pair = pair;
    append_histograms(&mut pair, net, rec, quick, &append_name());
    let bw_time = if quick {
        Duration::from_millis(200)
    } else {
        am.bw_time
    };
    eprintln!(
        "mirror bench: {}: appends of {BW_SIZE} bytes, {} in flight, for {:.1} s",
        net.label,
        pair.window,
        bw_time.as_secs_f64()
    );
    let before = pair.a.shadow.stats();
    let local = pair.local;
    let run = pair.pipelined(net, u64::MAX, Some(Instant::now() + bw_time));
    let after = pair.a.shadow.stats();
    rec.throughput(
        net,
        run,
        pair.window,
        after.mirror_bytes - before.mirror_bytes,
        pair.local.mean_us_since(local),
    );
    rec.shadow(net, &after);
    pair.shutdown();
    bench_durability(c, net, rec, quick, &secret, Durability::Delivered);
    bench_durability(c, net, rec, quick, &secret, Durability::Flush);
}

/// The cost of the durability point (F5.8): the same appends on a pair of their own (started
/// after the other), counted done when the WRITE is delivered (`append_delivered`: no READ
/// behind it), or when an RDMA FLUSH behind it completed (`append_flush`; where FLUSH is
/// unavailable, as on the soft provider, that pair uses the READ: the `<net>/flush` line
/// says which).
fn bench_durability(
    c: &mut Criterion,
    net: &Net,
    rec: &Recorder,
    quick: bool,
    secret: &Path,
    durability: Durability,
) {
    let name = match durability {
        Durability::Delivered => "append_delivered",
        Durability::Flush => "append_flush",
        Durability::Read => "append",
    };
    let other: OnceCell<RefCell<MirrorPair>> = OnceCell::new();
    let get_other = || {
        other.get_or_init(|| {
            *DURABILITY.lock() = durability;
            let p = MirrorPair::start(net, secret);
            *DURABILITY.lock() = Durability::Read;
            RefCell::new(p)
        })
    };
    append_group(c, net, name, get_other);
    if let Some(mut p) = other.into_inner().map(RefCell::into_inner) {
        append_histograms(&mut p, net, rec, quick, name);
        if durability == Durability::Flush {
            let s = p.a.shadow.stats();
            rec.set(
                net,
                "flush",
                format!(
                    "in_use={:?} flushes={} reads={} mirror_writes={} unavailable={:?}",
                    s.durability_in_use,
                    s.durability_flushes,
                    s.durability_reads,
                    s.mirror_writes,
                    s.flush_unavailable.as_deref().unwrap_or("-"),
                ),
            );
        }
        p.shutdown();
    }
}

/// Criterion group `{net}/{name}`: one append at a time, for each size, on the pair `get`
/// starts on first use.
fn append_group<'a>(
    c: &mut Criterion,
    net: &Net,
    name: &str,
    get: impl Fn() -> &'a RefCell<MirrorPair>,
) {
    let am = amounts(net);
    let mut g = c.benchmark_group(format!("{}/{name}", net.label));
    g.sample_size(am.samples)
        .warm_up_time(am.warm_up)
        .measurement_time(am.measurement)
        .nresamples(10_000);
    for size in SIZES {
        g.bench_function(format!("{size}"), |bch| {
            let p = get();
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                p.borrow_mut().appends(net, size, iters, |d| total += d);
                total
            })
        });
    }
    g.finish();
}

/// The append latency histograms `{name}_{size}` of `pair` for the summary.
fn append_histograms(pair: &mut MirrorPair, net: &Net, rec: &Recorder, quick: bool, name: &str) {
    let n = if quick {
        1000
    } else {
        amounts(net).hist_appends
    };
    for size in SIZES {
        eprintln!(
            "mirror bench: {}: {n} appends of {size} bytes into the histogram ({name})",
            net.label
        );
        let mut h = histogram();
        let local = pair.local;
        pair.appends(net, size, n as u64, |d| {
            h.saturating_record(d.as_nanos().max(1) as u64)
        });
        let local_us = pair.local.mean_us_since(local);
        rec.append_latency(net, &format!("{name}_{size}"), &h, local_us);
    }
}

fn main() {
    init_logs();
    // cargo bench passes --bench; without it criterion runs every benchmark once (test mode).
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::new("mirror");
    bench_net(&mut c, &SOFT_LOOPBACK, &rec, quick);
    run_verbs_case("mirror", "bench-mirror", || {
        bench_net(&mut c, &VERBS_NETNS, &rec, quick)
    });
    c.final_summary();
    rec.print_summary(&format!(
        "append latency in microseconds (one record at a time, to acknowledgement), append throughput of {BW_SIZE}-byte records in MB/s (2^20 bytes)"
    ));
    remove_secret("mirror");
}
