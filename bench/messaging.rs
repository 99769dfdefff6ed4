//! Messaging (F3) benchmarks between the two nodes of a pair: call round trip, one-way message
//! throughput with and without aggregation, and control-call latency under a bulk flood.
//!
//! One pair of [`Manager`]s per net is started once (node A's threads in namespace ilA and
//! node B's in ilB on Soft-RoCE) and serves every measurement of that net:
//!
//! * `<net>/raw_rtt/32`, for reference: the bare verbs ping-pong the messenger builds on. A
//!   client `bench-raw` (one queue pair, a 4 KiB region per node); A writes 32 bytes with
//!   immediate into B's region and polls for B's answer, a thread at B answers each with the
//!   same; no messaging layer in between. The client exists only during this benchmark.
//! * messenger `bench-call` (default window, aggregation on) on both nodes, with an echo
//!   handler on both and a counting handler for the flood at B:
//!   - `<net>/call_rtt/32`: one synchronous control call of 32 bytes from A to B's echo
//!     handler and its response (criterion `iter`); every round trip also goes into a
//!     histogram for p50 / p99.
//!   - control calls under bulk (not a criterion benchmark; it runs after the criterion
//!     groups of a net whose benchmarks ran): a thread floods A→B with bulk messages of the
//!     maximum payload (at most 256 queued), while the bench makes `N` control calls A→B, then
//!     `N` B→A; p50 / p99 per direction and the flood's throughput meanwhile.
//! * messengers `bench-agg` and `bench-unagg`, whose windows differ only in `aggregate` (true /
//!   false), started for the stream benchmarks only (an idle messenger's driver still wakes
//!   every few milliseconds, which would disturb the latency measurements):
//!   - `<net>/stream/aggregated` and `<net>/stream/unaggregated`: a batch of 32-byte one-way
//!     bulk messages A→B, queued with `with_outbox` in chunks of 1000, timed until B's handler
//!     has counted all of them (criterion `Throughput::Elements`; one batch per sample). B's
//!     handler checks the sequence numbers (every message exactly once, in order).
//!
//! Every messenger spins 1 ms after activity before it blocks, and a synchronous call
//! busy-polls for its response, so both sides poll like perftest does.
//!
//! `<net>` is `soft_loopback` (soft provider on 127.77.0.1 / 127.77.0.2, always run) and
//! `verbs_netns` (verbs provider on rxe_a0 / rxe_b0, 198.18.0.1 in ilA / 198.18.0.2 in ilB:
//! run inside `soft-roce/vm`, see `soft-roce/bench-messaging`). The verbs case runs when both
//! namespaces exist and libibverbs lists devices; `INTERLINK_BENCH_VERBS=1` makes their
//! absence an error instead of a skip, `INTERLINK_BENCH_VERBS=0` skips it. A net's managers
//! start only when the first of its benchmarks runs (so a filter such as `verbs_netns` skips
//! the other net entirely).
//!
//! After criterion's report one `messaging-bench:` line per figure follows, which
//! `soft-roce/bench-messaging` reads:
//! `key=<net>/call_rtt_32 n= p50_us= p99_us= mean_us= min_us= max_us= p25_us= p75_us=` (and
//! `raw_rtt_32`), `key=<net>/stream_aggregated msgs_per_s= ...` (and `stream_unaggregated`,
//! `stream_ratio`), `key=<net>/control_under_bulk_a_to_b n= p50_us= p99_us= ...` (and
//! `_b_to_a`), and `key=<net>/bulk_flood msgs_per_s= mb_per_s= ...`.
//! `INTERLINK_BENCH_SUMMARY_ONLY=1` skips criterion and records `raw_rtt_32` and `call_rtt_32`
//! (`INTERLINK_BENCH_MESSAGING_CALLS` round trips each, default 2000) and the calls under bulk,
//! those of them `INTERLINK_BENCH_FIGURES` names (`control_under_bulk` for the latter): how
//! `soft-roce/bench-messaging` interleaves the call with ib_send_lat.
//! Without `--bench` (criterion's test mode, as in `cargo test --benches`) every benchmark runs
//! once and the calls under bulk are few. `INTERLINK_BENCH_BULK_CALLS=N` sets the number of calls
//! per direction under bulk (0 skips that measurement).

mod pair;

use criterion::{Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use interlink::fabric::{
    Access, BusyPoll, Completion, ProviderChoice, RecvRequest, SendOp, SendRequest,
};
use interlink::manager::{
    BandwidthClass, ClientHandle, ClientSpec, Connection, LinkConfig, Manager, NodeConfig,
};
use interlink::messaging::{Head, Messenger, MessengerConfig, Outbox};
use pair::*;
use std::cell::OnceCell;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echo calls (the response is the request).
const ECHO: u8 = 1;
/// Stream messages: payload starts with a sequence number (u64, little endian).
const STREAM: u8 = 2;
/// Flood messages (counted).
const FLOOD: u8 = 3;
/// Payload of calls and stream messages.
const SMALL: usize = 32;
/// Messages queued per `with_outbox`.
const CHUNK: u64 = 1000;
/// Most flood messages waiting in A's queue.
const FLOOD_QUEUE: usize = 256;
/// Longest anything may take before the bench gives up (TCG emulation is slow).
const WAIT: Duration = Duration::from_secs(120);
/// Busy polling after activity, both sides.
const SPIN: Duration = Duration::from_millis(1);

/// How much each net measures.
#[derive(Clone, Copy)]
struct Amounts {
    /// Criterion sample count and times of `call_rtt`.
    rtt_samples: usize,
    rtt_warm_up: Duration,
    rtt_measurement: Duration,
    /// Messages per stream batch (one batch per sample, 10 samples plus warm-up).
    stream_batch: u64,
    /// Control calls per direction under the bulk flood.
    bulk_calls: usize,
}

/// How much `net` measures (Soft-RoCE in the VM runs under TCG emulation: fewer samples).
fn amounts(net: &Net) -> Amounts {
    match net.provider {
        ProviderChoice::Verbs => Amounts {
            rtt_samples: 10,
            rtt_warm_up: Duration::from_secs(1),
            rtt_measurement: Duration::from_secs(5),
            stream_batch: 20_000,
            bulk_calls: 500,
        },
        _ => Amounts {
            rtt_samples: 30,
            rtt_warm_up: Duration::from_secs(1),
            rtt_measurement: Duration::from_secs(3),
            stream_batch: 20_000,
            bulk_calls: 2000,
        },
    }
}

// ------------------------------------------------------------------ the pair

/// What B's stream handler saw.
#[derive(Default)]
struct StreamCount {
    received: AtomicU64,
    /// Messages whose sequence number was not the previous one plus one.
    out_of_order: AtomicU64,
}

/// One node: its manager and its call messenger.
struct Node {
    call: Messenger,
    /// Flood messages B's handler counted.
    flood: Arc<AtomicU64>,
    manager: Arc<Manager>,
}

impl Node {
    fn shutdown(self) {
        let Node { call, manager, .. } = self;
        drop(call);
        manager.shutdown();
    }
}

/// The stream messengers, `[aggregated, unaggregated]` on each node, and what B's handlers
/// counted. They exist only while the stream benchmarks run: an idle messenger's driver
/// still wakes every few milliseconds, which would disturb the latency measurements.
struct Streams {
    a: [Messenger; 2],
    b: [Messenger; 2],
    counts: [Arc<StreamCount>; 2],
}

const STREAM_NAMES: [&str; 2] = ["aggregated", "unaggregated"];

fn start_streams(m: &Arc<Manager>) -> Result<([Messenger; 2], [Arc<StreamCount>; 2]), String> {
    let start = |name: &str, aggregate| {
        Messenger::start(m, messenger_config(name, BandwidthClass::Medium, aggregate))
            .map_err(|e| format!("messenger {name}: {e}"))
    };
    let ms = [start("bench-agg", true)?, start("bench-unagg", false)?];
    let counts = [Arc::default(), Arc::default()];
    for (m, c) in ms.iter().zip(&counts) {
        stream_handler(m, Arc::clone(c));
    }
    Ok((ms, counts))
}

impl Streams {
    /// Starts both nodes' stream messengers (each from a thread in its node's namespace)
    /// and waits until they are connected.
    fn start(net: &Net, pair: &Pair) -> Streams {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                enter(net.ns_a());
                start_streams(&pair.a.manager)
            });
            let b = s.spawn(|| {
                enter(net.ns_b());
                start_streams(&pair.b.manager)
            });
            let j = |h: std::thread::ScopedJoinHandle<'_, _>| {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            (j(a), j(b))
        });
        let ((a, _), (b, counts)) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!(
                "stream messengers failed:\n A: {:?}\n B: {:?}",
                a.err(),
                b.err()
            ),
        };
        for m in a.iter().chain(&b) {
            assert!(
                m.wait_connected_timeout(WAIT).is_ok(),
                "{}: messenger {} not connected within {WAIT:?}",
                net.label,
                m.name()
            );
        }
        Streams { a, b, counts }
    }
}

/// Panics unless `m` kept its first connection all along.
fn check_connection(net: &Net, node: &str, m: &Messenger) {
    let s = m.stats();
    assert!(
        s.connections == 1 && s.partner_failures == 0 && s.send_errors == 0,
        "{}: node {node}'s messenger {} lost its connection during the bench: {s:?}",
        net.label,
        m.name()
    );
}

struct Pair {
    a: Node,
    b: Node,
}

fn messenger_config(name: &str, class: BandwidthClass, aggregate: bool) -> MessengerConfig {
    let mut cfg = MessengerConfig::new(name, class);
    cfg.window.aggregate = aggregate;
    cfg.spin = SPIN;
    cfg.partner_timeout = Duration::from_secs(30);
    cfg
}

/// A stream handler: counts, and checks that sequence numbers follow each other.
fn stream_handler(m: &Messenger, count: Arc<StreamCount>) {
    let mut last = 0u64;
    m.on(STREAM, move |msg, _: &mut Outbox| {
        let seq = msg
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if seq != last + 1 {
            count.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        last = seq;
        count.received.fetch_add(1, Ordering::Release);
    })
    .expect("stream handler");
}

fn start_node(cfg: NodeConfig) -> Result<Node, String> {
    let id = cfg.node_id;
    let manager = Arc::new(Manager::start(cfg).map_err(|e| format!("node {id}: start: {e}"))?);
    let start = |name: &str, class, aggregate| {
        Messenger::start(&manager, messenger_config(name, class, aggregate))
            .map_err(|e| format!("node {id}: messenger {name}: {e}"))
    };
    let call = start("bench-call", BandwidthClass::Low, true)?;
    call.on(ECHO, |msg, out: &mut Outbox| {
        if let Some(c) = msg.call {
            out.respond(c, msg.payload).expect("echo response");
        }
    })
    .map_err(|e| e.to_string())?;
    let flood = Arc::new(AtomicU64::new(0));
    let f = flood.clone();
    call.on(FLOOD, move |_, _: &mut Outbox| {
        f.fetch_add(1, Ordering::Release);
    })
    .map_err(|e| e.to_string())?;
    Ok(Node {
        call,
        flood,
        manager,
    })
}

/// The bootstrap port of a net's pair: a range apart from bench/manager.rs's (24000-43999).
fn port(net: &Net) -> u16 {
    let base = 45000 + (std::process::id() % 100) as u16 * 10;
    base + u16::from(net.provider == ProviderChoice::Verbs)
}

/// Node A's (initiator) and node B's configuration: one link, tolerant heartbeats (the
/// bench keeps both CPUs busy, under emulation too).
fn configs(net: &Net, secret: &Path) -> (NodeConfig, NodeConfig) {
    let (la, lb) = (net.addr_a(), net.addr_b());
    let port = port(net);
    let a = NodeConfig::new(9, 1, 2, secret)
        .with_fabric(net.provider)
        .with_heartbeat(250, 12)
        .with_link(LinkConfig::new(0, la, lb).with_bootstrap_port(port));
    let b = NodeConfig::new(9, 2, 1, secret)
        .with_fabric(net.provider)
        .with_heartbeat(250, 12)
        .with_link(LinkConfig::new(0, lb, la).with_bootstrap_port(port));
    (a, b)
}

impl Pair {
    /// Starts both nodes (each from a thread in its namespace, so the managers' and
    /// messengers' threads live there) and waits until the call messengers are connected.
    fn start(net: &Net) -> Pair {
        let t = Instant::now();
        let (ca, cb) = configs(net, &secret_file("messaging"));
        let a = spawn_in(net.ns_a(), "bench-node-a", move || start_node(ca));
        let b = spawn_in(net.ns_b(), "bench-node-b", move || start_node(cb));
        let (a, b) = match (join(a), join(b)) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!(
                "messaging bench set-up failed:\n A: {:?}\n B: {:?}",
                a.err(),
                b.err()
            ),
        };
        for (node, n) in [("A", &a), ("B", &b)] {
            assert!(
                n.call.wait_connected_timeout(WAIT).is_ok(),
                "{}: node {node}'s messenger {} not connected within {WAIT:?}: {:#?}",
                net.label,
                n.call.name(),
                n.manager.status()
            );
        }
        eprintln!(
            "messaging bench: {} pair connected in {:.2} s",
            net.label,
            t.elapsed().as_secs_f64()
        );
        Pair { a, b }
    }

    fn shutdown(self) {
        let Pair { a, b } = self;
        let (ha, hb) = (
            std::thread::spawn(move || a.shutdown()),
            std::thread::spawn(move || b.shutdown()),
        );
        join(ha);
        join(hb);
    }
}

// ------------------------------------------------------------------ recording

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram")
}

// ------------------------------------------------------------------ measurements

/// The bare verbs ping-pong the messenger builds on, for reference: a client `bench-raw`
/// with one queue pair and a 4 KiB region on each node; A writes 32 bytes with immediate into
/// B's region, a thread at B answers each with the same, no messaging layer in between.
struct Raw {
    _handles: [ClientHandle; 2],
    conns: [Connection; 2],
    /// Busy polling as the messenger's driver and calls do (its default pure spin).
    busy: BusyPoll,
}

const RAW_REGION: &str = "raw";
const RAW_RECVS: usize = 64;

impl Raw {
    fn start(pair: &Pair) -> Raw {
        let spec = ClientSpec::new("bench-raw", BandwidthClass::Low, 1).region(
            RAW_REGION,
            4096,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        );
        let register = |m: &Arc<Manager>| m.register(spec.clone()).expect("register bench-raw");
        let handles = [register(&pair.a.manager), register(&pair.b.manager)];
        let conns = [0, 1].map(|i| {
            handles[i]
                .wait_ready_timeout(WAIT)
                .expect("bench-raw client not ready")
        });
        for c in &conns {
            let qp = c.qp(0).expect("queue pair");
            let region = c.region(RAW_REGION).expect("region");
            for i in 0..RAW_RECVS {
                qp.queue_pair()
                    .post_recv(RecvRequest {
                        wr_id: i as u64,
                        local: region.slice(0, 0).expect("slice"),
                    })
                    .expect("post receive");
            }
        }
        let provider = conns[0]
            .qp(0)
            .expect("queue pair")
            .recv_cq()
            .device()
            .provider();
        let busy = BusyPoll::configured(
            provider,
            MessengerConfig::new("bench-raw", BandwidthClass::Low).pure_spin,
        );
        Raw {
            _handles: handles,
            conns,
            busy,
        }
    }

    /// Writes 32 bytes with immediate to the partner of `side`.
    fn write(&self, side: usize) {
        let c = &self.conns[side];
        let qp = c.qp(0).expect("queue pair");
        let local = c.region(RAW_REGION).expect("region");
        let dst = c
            .partner_region(RAW_REGION)
            .expect("partner region")
            .descriptor;
        qp.queue_pair()
            .post_send(SendRequest::new(
                1,
                SendOp::WriteImm(dst.at(64), 7),
                local.slice(128, SMALL).expect("slice"),
            ))
            .expect("post send");
    }

    /// Polls `side`'s receive queue for one completion (busy, like the messenger) and
    /// reposts the receive; reaps send completions. False if `stop` was set meanwhile.
    fn receive(&self, side: usize, comps: &mut Vec<Completion>, stop: &AtomicBool) -> bool {
        let c = &self.conns[side];
        let qp = c.qp(0).expect("queue pair");
        let busy = self.busy;
        let start = Instant::now();
        loop {
            comps.clear();
            qp.recv_cq().poll(comps, 1).expect("poll receive queue");
            if let Some(done) = comps.pop() {
                assert!(done.status.is_ok(), "raw receive: {:?}", done.status);
                let local = c
                    .region(RAW_REGION)
                    .expect("region")
                    .slice(0, 0)
                    .expect("slice");
                qp.queue_pair()
                    .post_recv(RecvRequest {
                        wr_id: done.wr_id,
                        local,
                    })
                    .expect("post receive");
                qp.send_cq().poll(comps, 16).expect("poll send queue");
                assert!(
                    comps.iter().all(|c| c.status.is_ok()),
                    "raw send: {comps:?}"
                );
                return true;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            busy.round(start, Instant::now());
        }
    }
}

/// One synchronous 32-byte echo call A→B; returns its round trip.
fn call_once(m: &Messenger, payload: &[u8]) -> Duration {
    let t = Instant::now();
    let r = m
        .call_timeout(Head::control(ECHO), payload, WAIT)
        .unwrap_or_else(|e| panic!("call from {}: {e}", m.name()));
    let d = t.elapsed();
    assert_eq!(r.len(), payload.len(), "echo response");
    black_box(r);
    d
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_nanos().max(1) as u64);
}

/// Sends `n` numbered 32-byte bulk messages from `m` (whose partner counts into `count`) and
/// waits until all have been handled; returns the time from the first queueing to the last
/// handler run. `next` is the next sequence number (B's handler checks the order).
fn stream_batch(m: &Messenger, count: &StreamCount, next: &mut u64, n: u64) -> Duration {
    let target = count.received.load(Ordering::Acquire) + n;
    let mut payload = [0x5au8; SMALL];
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let chunk = left.min(CHUNK);
        let queued = m
            .with_outbox(STREAM, |out| {
                let mut k = 0;
                while k < chunk {
                    payload[..8].copy_from_slice(&next.to_le_bytes());
                    if out.send(Head::bulk(STREAM), &payload).is_err() {
                        break; // queue full: the rest in the next round
                    }
                    *next += 1;
                    k += 1;
                }
                k
            })
            .unwrap_or_else(|e| panic!("stream from {}: {e}", m.name()));
        left -= queued;
        if queued < chunk {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    while count.received.load(Ordering::Acquire) < target {
        assert!(
            t.elapsed() < WAIT,
            "stream from {}: {} of {n} messages handled within {WAIT:?}: {:?}",
            m.name(),
            n + count.received.load(Ordering::Acquire) - target,
            m.stats()
        );
        std::thread::sleep(Duration::from_micros(20));
    }
    t.elapsed()
}

/// Per-batch durations of one stream messenger, and its window's counters before.
struct StreamRun {
    batches: Vec<Duration>,
    frames_before: u64,
    messages_before: u64,
}

fn stream_summary(
    rec: &Recorder,
    net: &Net,
    figure: &str,
    m: &Messenger,
    run: &StreamRun,
    batch: u64,
) -> Option<f64> {
    if run.batches.is_empty() {
        return None;
    }
    let mut secs: Vec<f64> = run.batches.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let total: f64 = secs.iter().sum();
    let s = m.stats().window;
    let frames = s.frames_sent - run.frames_before;
    let messages = s.messages_sent - run.messages_before;
    let rate = batch as f64 / median;
    rec.set(
        net,
        figure,
        format!(
            "msgs_per_s={rate:.0} batch={batch} batches={} median_batch_ms={:.3} overall_msgs_per_s={:.0} msgs_per_frame={:.2} retransmits={}",
            secs.len(),
            median * 1e3,
            batch as f64 * secs.len() as f64 / total,
            messages as f64 / frames.max(1) as f64,
            s.frames_retransmitted
        ),
    );
    Some(rate)
}

/// Control calls both ways while a thread floods A→B with maximum-size bulk messages.
fn control_under_bulk(net: &Net, pair: &Pair, rec: &Recorder, calls: usize) {
    let (a, b) = (&pair.a.call, &pair.b.call);
    let max = a.max_payload();
    let flooding = AtomicBool::new(true);
    let payload = [0x33u8; SMALL];
    let (mut ab, mut ba) = (histogram(), histogram());
    let (received, secs) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            enter(net.ns_a());
            let big = vec![0xa5u8; max];
            let mut sent = 0u64;
            while flooding.load(Ordering::Relaxed) {
                let n = a
                    .with_outbox(FLOOD, |out| {
                        let mut n = 0;
                        while out.queued() < FLOOD_QUEUE
                            && out.send(Head::bulk(FLOOD), &big).is_ok()
                        {
                            n += 1;
                        }
                        n
                    })
                    .expect("flood");
                sent += n;
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            sent
        });
        // Stops the flood however this closure ends (a failed call panics).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&flooding);
        // Let the flood fill the window and the queue first.
        std::thread::sleep(Duration::from_millis(300));
        let r0 = pair.b.flood.load(Ordering::Acquire);
        let t0 = Instant::now();
        for _ in 0..calls {
            record(&mut ab, call_once(a, &payload));
        }
        let b_calls = s.spawn(|| {
            enter(net.ns_b());
            let mut h = histogram();
            for _ in 0..calls {
                record(&mut h, call_once(b, &payload));
            }
            h
        });
        ba = b_calls
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let secs = t0.elapsed().as_secs_f64();
        let received = pair.b.flood.load(Ordering::Acquire) - r0;
        flooding.store(false, Ordering::Relaxed);
        let sent = flood
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        assert!(sent >= received, "flood: {received} received, {sent} sent");
        (received, secs)
    });
    rec.latency(net, "control_under_bulk_a_to_b", &ab);
    rec.latency(net, "control_under_bulk_b_to_a", &ba);
    rec.set(
        net,
        "bulk_flood",
        format!(
            "msgs_per_s={:.0} mb_per_s={:.2} payload={max} secs={secs:.2} msgs={received}",
            received as f64 / secs,
            (received * max as u64) as f64 / secs / 1e6
        ),
    );
}

// ------------------------------------------------------------------ criterion

/// Round trips recorded per figure by [`summary_run`] (`INTERLINK_BENCH_MESSAGING_CALLS`).
fn summary_calls(quick: bool) -> usize {
    if quick {
        return 50;
    }
    std::env::var("INTERLINK_BENCH_MESSAGING_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// `INTERLINK_BENCH_SUMMARY_ONLY=1`: the wanted figures among `raw_rtt_32`, `call_rtt_32` and
/// `control_under_bulk` into the summary, without criterion (the streams are measured by
/// criterion only).
fn summary_run(net: &Net, rec: &Recorder, quick: bool) {
    let pair = Pair::start(net);
    let n = summary_calls(quick);
    let payload = [0x11u8; SMALL];
    eprintln!("messaging bench: {}: {n} round trips per figure", net.label);
    if figure_wanted("raw_rtt_32") {
        let r = Raw::start(&pair);
        let stop = AtomicBool::new(false);
        let mut h = histogram();
        std::thread::scope(|s| {
            let echo = s.spawn(|| {
                enter(net.ns_b());
                let mut comps = Vec::with_capacity(16);
                while r.receive(1, &mut comps, &stop) {
                    r.write(1);
                }
            });
            let mut comps = Vec::with_capacity(16);
            for i in 0..n + 50 {
                let t = Instant::now();
                r.write(0);
                r.receive(0, &mut comps, &stop);
                if i >= 50 {
                    record(&mut h, t.elapsed()); // the first 50 after set-up are not
                }
            }
            stop.store(true, Ordering::Relaxed);
            echo.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        });
        rec.latency(net, "raw_rtt_32", &h);
    }
    if figure_wanted("call_rtt_32") {
        for _ in 0..50 {
            call_once(&pair.a.call, &payload); // not recorded: first calls after set-up
        }
        let mut h = histogram();
        for _ in 0..n {
            record(&mut h, call_once(&pair.a.call, &payload));
        }
        rec.latency(net, "call_rtt_32", &h);
    }
    if figure_wanted("control_under_bulk") {
        control_under_bulk(net, &pair, rec, n.min(amounts(net).bulk_calls));
    }
    check_connection(net, "A", &pair.a.call);
    check_connection(net, "B", &pair.b.call);
    pair.shutdown();
}

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    if summary_only() {
        if selected(net) {
            summary_run(net, rec, quick);
        }
        return;
    }
    let pair: OnceCell<Pair> = OnceCell::new();
    let get = || pair.get_or_init(|| Pair::start(net));
    let am = amounts(net);
    let payload = [0x11u8; SMALL];

    let mut raw_rtt = histogram();
    let raw: OnceCell<Raw> = OnceCell::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut echo = None;
        let mut g = c.benchmark_group(format!("{}/raw_rtt", net.label));
        g.sample_size(am.rtt_samples)
            .warm_up_time(am.rtt_warm_up)
            .measurement_time(am.rtt_measurement)
            .nresamples(10_000);
        g.bench_function(format!("{SMALL}"), |bch| {
            let r: &Raw = raw.get_or_init(|| Raw::start(get()));
            if echo.is_none() {
                let stop = &stop;
                echo = Some(s.spawn(move || {
                    enter(net.ns_b());
                    let mut comps = Vec::with_capacity(16);
                    while r.receive(1, &mut comps, stop) {
                        r.write(1);
                    }
                }));
            }
            let mut comps = Vec::with_capacity(16);
            bch.iter(|| {
                let t = Instant::now();
                r.write(0);
                r.receive(0, &mut comps, &stop);
                record(&mut raw_rtt, t.elapsed());
            });
        });
        g.finish();
        stop.store(true, Ordering::Relaxed);
        if let Some(e) = echo {
            e.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
    });
    drop(raw);
    rec.latency(net, "raw_rtt_32", &raw_rtt);

    let mut rtt = histogram();
    let warmed = std::cell::Cell::new(false);
    let mut g = c.benchmark_group(format!("{}/call_rtt", net.label));
    g.sample_size(am.rtt_samples)
        .warm_up_time(am.rtt_warm_up)
        .measurement_time(am.rtt_measurement)
        .nresamples(10_000);
    g.bench_function(format!("{SMALL}"), |bch| {
        let p = get();
        if !warmed.replace(true) {
            for _ in 0..50 {
                call_once(&p.a.call, &payload); // not recorded: first calls after set-up
            }
        }
        bch.iter(|| record(&mut rtt, call_once(&p.a.call, &payload)))
    });
    g.finish();
    rec.latency(net, "call_rtt_32", &rtt);

    let mut g = c.benchmark_group(format!("{}/stream", net.label));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .nresamples(10_000)
        .throughput(Throughput::Elements(am.stream_batch));
    let streams: OnceCell<Streams> = OnceCell::new();
    let mut runs: [Option<StreamRun>; 2] = [None, None];
    for (i, run) in runs.iter_mut().enumerate() {
        let mut next = 1u64;
        g.bench_function(STREAM_NAMES[i], |bch| {
            let st = streams.get_or_init(|| Streams::start(net, get()));
            let (m, count) = (&st.a[i], &*st.counts[i]);
            let run = run.get_or_insert_with(|| {
                let s = m.stats().window;
                StreamRun {
                    batches: Vec::new(),
                    frames_before: s.frames_sent,
                    messages_before: s.messages_sent,
                }
            });
            bch.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let d = stream_batch(m, count, &mut next, am.stream_batch);
                        run.batches.push(d);
                        d
                    })
                    .sum()
            })
        });
    }
    g.finish();
    if let Some(st) = streams.into_inner() {
        let mut rates = [None, None];
        for (i, run) in runs.iter().enumerate() {
            if let Some(run) = run {
                let figure = format!("stream_{}", STREAM_NAMES[i]);
                rates[i] = stream_summary(rec, net, &figure, &st.a[i], run, am.stream_batch);
            }
            let bad = st.counts[i].out_of_order.load(Ordering::Relaxed);
            assert_eq!(
                bad, 0,
                "{}: stream {}: {bad} messages out of order",
                net.label, STREAM_NAMES[i]
            );
        }
        if let [Some(agg), Some(unagg)] = rates {
            rec.set(
                net,
                "stream_ratio",
                format!("agg_over_unagg={:.2}", agg / unagg),
            );
        }
        for (node, ms) in [("A", &st.a), ("B", &st.b)] {
            for m in ms {
                check_connection(net, node, m);
            }
        }
    }

    let Some(pair) = pair.into_inner() else {
        return; // none of this net's benchmarks ran (filtered out)
    };
    let calls = match std::env::var("INTERLINK_BENCH_BULK_CALLS").map(|v| v.parse::<usize>()) {
        Ok(Ok(n)) => n,
        _ if quick => 20,
        _ => am.bulk_calls,
    };
    if calls > 0 {
        eprintln!(
            "messaging bench: {}: {calls} control calls each way under a bulk flood",
            net.label
        );
        control_under_bulk(net, &pair, rec, calls);
    }
    check_connection(net, "A", &pair.a.call);
    check_connection(net, "B", &pair.b.call);
    pair.shutdown();
}

/// Whether to run the verbs case: the namespaces exist and libibverbs lists devices.
fn main() {
    init_logs();
    // cargo bench passes --bench; without it criterion runs every benchmark once (test mode).
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::new("messaging");
    bench_net(&mut c, &SOFT_LOOPBACK, &rec, quick);
    run_verbs_case("messaging", "bench-messaging", || {
        bench_net(&mut c, &VERBS_NETNS, &rec, quick)
    });
    c.final_summary();
    rec.print_summary(&format!(
        "{SMALL}-byte calls and messages; latencies in microseconds"
    ));
    remove_secret("messaging");
}
