//! Mirrored write-back (issue 6, F5.3) benchmark between the two nodes of a pair: the latency
//! of one atomic write of 1, 16 and 256 blocks of 4 KiB, from `write` to its `Mirrored`
//! status (local copy and commit, RQR, RTR, RDMA WRITE of the data, DataSent, the mirror's
//! copy and commit, MDA).
//!
//! One pair of [`Manager`]s per net, each with a [`MirroredWriteBack`] over memory NVRAM
//! (`MemoryNvram`: the figure is the protocol's and the transport's, not a file's `msync`),
//! 2048 buffers of 4 KiB; node A writes the same range again and again (old buffers are freed
//! and reused on both sides):
//!
//! * `<net>/write_back/{1,16,256}`: one synchronous `write` (criterion `iter_custom`); every
//!   write also goes into a histogram. After the group, `N` more writes per size (2000, 1000,
//!   200; 20 each in test mode) go into it for p50 / p99.
//!
//! Both messengers spin 1 ms after activity and a waiting writer busy-polls 1 ms, so both
//! sides poll like perftest does.
//!
//! `<net>` is `soft_loopback` (soft provider on 127.77.0.1 / 127.77.0.2, always run) and
//! `verbs_netns` (verbs provider on rxe_a0 / rxe_b0, 198.18.0.1 in ilA / 198.18.0.2 in ilB:
//! run inside `soft-roce/vm`). The verbs case runs when both namespaces exist and libibverbs
//! lists devices; `INTERLINK_BENCH_VERBS=1` makes their absence an error instead of a skip,
//! `INTERLINK_BENCH_VERBS=0` skips it.
//!
//! After criterion's report one `writeback-bench:` line per figure follows:
//! `key=<net>/write_back_<blocks> n= p50_us= p99_us= mean_us= min_us= max_us=`.
//! Without `--bench` (criterion's test mode, as in `cargo test --benches`) every benchmark runs
//! once and the histograms take 20 writes.

mod pair;

use criterion::{Criterion, SamplingMode};
use hdrhistogram::Histogram;
use interlink::clients::mirror::{
    AtomicGeometry, CompletionStatus, MemoryNvram, MirroredWriteBack, WriteBackConfig,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{LinkConfig, Manager, NodeConfig};
use pair::*;
use std::cell::OnceCell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
const SIZES: [usize; 3] = [1, 16, 256];
const SPIN: Duration = Duration::from_millis(1);
const WAIT: Duration = Duration::from_secs(120);

struct Node {
    wb: MirroredWriteBack,
    manager: Arc<Manager>,
}

struct Pair {
    a: Node,
    b: Node,
}

fn config() -> WriteBackConfig {
    WriteBackConfig {
        geometry: AtomicGeometry {
            block_size: BLOCK as u32,
            buffers: 2048,
            ries: 64,
        },
        partner_timeout: Duration::from_secs(30),
        spin: SPIN,
        messenger_spin: SPIN,
        ..WriteBackConfig::new()
    }
}

fn port(net: &Net) -> u16 {
    let base = 46000 + (std::process::id() % 100) as u16 * 10;
    base + u16::from(net.provider == ProviderChoice::Verbs)
}

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

fn start_node(cfg: NodeConfig) -> Result<Node, String> {
    let id = cfg.node_id;
    let manager = Arc::new(Manager::start(cfg).map_err(|e| format!("node {id}: start: {e}"))?);
    let c = config();
    let len = c.geometry.required_len();
    let wb = MirroredWriteBack::start(
        &manager,
        c,
        Box::new(MemoryNvram::new(len)),
        Box::new(MemoryNvram::new(len)),
    )
    .map_err(|e| format!("node {id}: write-back: {e}"))?;
    Ok(Node { wb, manager })
}

impl Pair {
    fn start(net: &Net) -> Pair {
        let t = Instant::now();
        let (ca, cb) = configs(net, &secret_file("writeback"));
        let a = spawn_in(net.ns_a(), "bench-node-a", move || start_node(ca));
        let b = spawn_in(net.ns_b(), "bench-node-b", move || start_node(cb));
        let (a, b) = match (join(a), join(b)) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!(
                "write-back bench set-up failed:\n A: {:?}\n B: {:?}",
                a.err(),
                b.err()
            ),
        };
        for (node, n) in [("A", &a), ("B", &b)] {
            assert!(
                n.wb.wait_connected_timeout(WAIT).is_ok(),
                "{}: node {node}'s write-back not connected within {WAIT:?}: {:#?}",
                net.label,
                n.wb.stats()
            );
        }
        eprintln!(
            "write-back bench: {} pair connected in {:.2} s",
            net.label,
            t.elapsed().as_secs_f64()
        );
        Pair { a, b }
    }

    fn shutdown(self) {
        let Pair { a, b } = self;
        let (sa, sb) = (a.wb.stats(), b.wb.stats());
        assert_eq!(sa.mirrored, sa.writes, "A: {sa:#?}");
        assert_eq!(sb.absorbed, sa.writes, "B: {sb:#?}");
        drop(a.wb);
        drop(b.wb);
        a.manager.shutdown();
        b.manager.shutdown();
    }
}

/// One write of `blocks` blocks at block 0 of unit 1; its latency.
fn write(p: &Pair, blocks: usize, data: &[u8]) -> Duration {
    let t = Instant::now();
    let status = p.a.wb.write(1, 0, &data[..blocks * BLOCK]).expect("write");
    let d = t.elapsed();
    assert_eq!(status, CompletionStatus::Mirrored);
    d
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    let pair: OnceCell<Pair> = OnceCell::new();
    let get = || pair.get_or_init(|| Pair::start(net));
    let data: Vec<u8> = (0..256 * BLOCK).map(|i| (i * 7 + 3) as u8).collect();
    let mut hists: Vec<Histogram<u64>> = SIZES.iter().map(|_| histogram()).collect();
    let mut g = c.benchmark_group(format!("{}/write_back", net.label));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(if quick { 10 } else { 30 });
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(if quick { 1 } else { 5 }));
    for (i, blocks) in SIZES.iter().enumerate() {
        let h = &mut hists[i];
        g.bench_function(blocks.to_string(), |bch| {
            let p = get();
            bch.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let d = write(p, *blocks, &data);
                        let _ = h.record(d.as_nanos() as u64);
                        d
                    })
                    .sum()
            })
        });
    }
    g.finish();
    let Some(p) = pair.get() else {
        return; // filtered out
    };
    for (i, blocks) in SIZES.iter().enumerate() {
        let n = if quick { 20 } else { [2000, 1000, 200][i] };
        for _ in 0..n {
            let d = write(p, *blocks, &data);
            let _ = hists[i].record(d.as_nanos() as u64);
        }
        rec.latency(net, &format!("write_back_{blocks}"), &hists[i]);
    }
    // The mirror holds what A wrote last (256 blocks).
    for k in [0u64, 255] {
        let got = p.b.wb.read_mirror_block(1, k).expect("mirrored block");
        let at = k as usize * BLOCK;
        assert_eq!(got, &data[at..at + BLOCK], "block {k} on the mirror");
    }
    if let Some(p) = pair.into_inner() {
        p.shutdown();
    }
}

fn main() {
    init_logs();
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::new("writeback");
    bench_net(&mut c, &SOFT_LOOPBACK, &rec, quick);
    run_verbs_case("writeback", "vm", || {
        bench_net(&mut c, &VERBS_NETNS, &rec, quick)
    });
    c.final_summary();
    rec.print_summary("mirrored write-back of 4 KiB blocks, latencies in microseconds");
    remove_secret("writeback");
}
