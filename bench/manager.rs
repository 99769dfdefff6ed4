//! Bring-up time of 16 client queue pairs between the two nodes of a pair, to set next to
//! `cmtime -c 16` (rdmacm-utils). Every sample is one fresh bring-up on fresh ports:
//!
//! * `manager_<net>/1x16` and `manager_<net>/16x1`: the whole manager path. Both nodes'
//!   [`Manager`]s are started on two threads (A in namespace ilA and B in ilB on Soft-RoCE),
//!   each registers its clients at once (one client with 16 queue pairs, or 16 clients with
//!   one each, every client with one 4 KiB region), and the sample ends when both nodes have
//!   delivered `ClientEvent::Ready` to every client. It includes device open, the bootstrap
//!   TCP connection and authenticated handshake, the heartbeat set-up, placement, resource
//!   creation, the PeerInfo exchange and the slam connects. The manager exposes no internal
//!   timings, so the split below is measured on the fabric API directly.
//! * `fabric_<net>/create16` and `fabric_<net>/connect16`: what the manager does per link,
//!   step by step. Each node opens its device and protection domain (reported as `open`, not
//!   part of the split), then both create 16 × (send CQ + receive CQ + RC queue pair + 4 KiB
//!   region) in parallel (`create`: from the common start until both have finished); then A
//!   opens a TCP connection to B (`tcp`), sends its 16 endpoints and region descriptors, B
//!   slam-connects its 16 queue pairs (RESET→INIT→RTR→RTS) and answers with its own, and A
//!   slam-connects its 16 (`connect`: from A's TCP connect until A's last queue pair is in
//!   RTS; it includes `tcp`). Both benchmarks run the same bring-up; each reports one part to
//!   criterion, and both add every part to the summary.
//!
//! `<net>` is `soft_loopback` (soft provider on 127.77.0.1 / 127.77.0.2, always run) and
//! `verbs_netns` (verbs provider on rxe_a0 / rxe_b0, 198.18.0.1 in ilA / 198.18.0.2 in ilB:
//! run inside `soft-roce/vm`, see `soft-roce/bench-manager`). The verbs case runs when both
//! namespaces exist and libibverbs lists devices; `INTERLINK_BENCH_VERBS=1` makes their
//! absence an error instead of a skip, `INTERLINK_BENCH_VERBS=0` skips it.
//!
//! Criterion takes one bring-up per sample (10 samples plus one warm-up), so it warns that
//! it cannot complete the samples in the tiny target time: that is expected. After
//! criterion's own report a summary prints one `manager-bench:` line per measured part
//! (median, min and max over every bring-up), which `soft-roce/bench-manager` reads.

mod pair;

use criterion::{Criterion, SamplingMode};
use interlink::fabric::{
    Access, CompletionQueue, ConnectOptions, Device, DeviceConfig, Endpoint, MemoryRegion,
    ProtectionDomain, QpCapacity, QpState, QueuePair, RegionDescriptor, ENDPOINT_WIRE_LEN,
};
use interlink::manager::{
    BandwidthClass, ClientHandle, ClientSpec, LinkConfig, Manager, NodeConfig,
};
use pair::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Queue pairs brought up per sample (cmtime -c 16).
const QPS: usize = 16;
/// Size of each client's region.
const REGION_LEN: usize = 4096;
/// Longest a bring-up may take before the bench gives up (TCG emulation is slow).
const WAIT: Duration = Duration::from_secs(120);

/// Every measured part of every bring-up, by name (`<net>/<part>`), for the summary.
#[derive(Default)]
struct Recorder {
    parts: RefCell<BTreeMap<String, Vec<Duration>>>,
    counts: RefCell<BTreeMap<String, u64>>,
}

impl Recorder {
    fn add(&self, net: &Net, part: &str, d: Duration) {
        self.parts
            .borrow_mut()
            .entry(format!("{}/{part}", net.label))
            .or_default()
            .push(d);
    }
    fn count(&self, net: &Net, what: &str, n: u64) {
        *self
            .counts
            .borrow_mut()
            .entry(format!("{}/{what}", net.label))
            .or_default() += n;
    }
    fn print_summary(&self) {
        let parts = self.parts.borrow();
        if parts.is_empty() {
            return;
        }
        println!();
        println!("manager bench summary: {QPS} queue pairs per bring-up, milliseconds over every bring-up");
        for (key, samples) in parts.iter() {
            let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let median = if ms.len() % 2 == 1 {
                ms[ms.len() / 2]
            } else {
                (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
            };
            println!(
                "manager-bench: key={key} n={} median_ms={median:.3} min_ms={:.3} max_ms={:.3}",
                ms.len(),
                ms[0],
                ms[ms.len() - 1]
            );
        }
        for (key, n) in self.counts.borrow().iter() {
            println!("manager-bench: key={key} count={n}");
        }
    }
}

/// A unique port per bring-up: this process's range, then one after the other.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 24000 + (std::process::id() % 40) as u16 * 500;
    base + NEXT.fetch_add(1, Ordering::Relaxed) % 500
}

// ------------------------------------------------------------------ the manager path

/// How the 16 queue pairs are asked for.
#[derive(Clone, Copy)]
enum Shape {
    /// One client with 16 queue pairs.
    OneClient,
    /// 16 clients with one queue pair each (cmtime's 16 connections).
    SixteenClients,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::OneClient => "1x16",
            Shape::SixteenClients => "16x1",
        }
    }
    fn specs(self) -> Vec<ClientSpec> {
        let spec = |name: String, qps: usize| {
            ClientSpec::new(name, BandwidthClass::Low, qps as u16).region(
                "r0",
                REGION_LEN,
                Access::REMOTE_WRITE,
            )
        };
        match self {
            Shape::OneClient => vec![spec("bench".into(), QPS)],
            Shape::SixteenClients => (0..QPS).map(|i| spec(format!("c{i:02}"), 1)).collect(),
        }
    }
}

/// Node A's (initiator) and node B's configuration: one link, default policies.
fn configs(net: &Net, secret: &Path, port: u16) -> (NodeConfig, NodeConfig) {
    let (la, lb) = (net.addr_a(), net.addr_b());
    let a = NodeConfig::new(7, 1, 2, secret)
        .with_fabric(net.provider)
        .with_heartbeat(100, 5)
        .with_link(LinkConfig::new(0, la, lb).with_bootstrap_port(port));
    let b = NodeConfig::new(7, 2, 1, secret)
        .with_fabric(net.provider)
        .with_heartbeat(100, 5)
        .with_link(LinkConfig::new(0, lb, la).with_bootstrap_port(port));
    (a, b)
}

/// One node of a manager bring-up: waits at `go`, starts the manager, registers the
/// clients, waits for every Ready. Returns the manager and clients (kept alive until both
/// nodes are done), the start and the all-ready instants, and the link's error count.
type NodeRun = (Manager, Vec<ClientHandle>, Instant, Instant, u64);

fn run_node(cfg: NodeConfig, shape: Shape, go: Arc<Barrier>) -> Result<NodeRun, String> {
    let node = cfg.node_id;
    let specs = shape.specs();
    go.wait();
    let start = Instant::now();
    let m = Manager::start(cfg).map_err(|e| format!("node {node}: start: {e}"))?;
    let mut handles = Vec::with_capacity(specs.len());
    for s in specs {
        handles.push(
            m.register(s)
                .map_err(|e| format!("node {node}: register: {e}"))?,
        );
    }
    let mut qps = 0;
    for h in &handles {
        match h.wait_ready_timeout(WAIT) {
            Ok(conn) => qps += conn.qps.len(),
            Err(e) => return Err(format!("node {node}: {e}")),
        }
    }
    let ready = Instant::now();
    if qps != QPS {
        return Err(format!(
            "node {node}: {qps} queue pairs ready, expected {QPS}"
        ));
    }
    let errors = m
        .status()
        .map(|s| s.links.iter().map(|l| l.counters.errors).sum())
        .unwrap_or(0);
    Ok((m, handles, start, ready, errors))
}

/// One full manager bring-up; returns the time from the first start to the last Ready.
fn manager_bringup(net: &Net, shape: Shape, secret: &Path, rec: &Recorder) -> Duration {
    let (ca, cb) = configs(net, secret, next_port());
    let go = Arc::new(Barrier::new(2));
    let (ga, gb) = (go.clone(), go);
    let a = spawn_in(net.ns_a(), "bench-node-a", move || run_node(ca, shape, ga));
    let b = spawn_in(net.ns_b(), "bench-node-b", move || run_node(cb, shape, gb));
    let (ra, rb) = (join(a), join(b));
    let (ra, rb) = match (ra, rb) {
        (Ok(ra), Ok(rb)) => (ra, rb),
        (ra, rb) => panic!(
            "manager bring-up failed:\n A: {:?}\n B: {:?}",
            ra.err(),
            rb.err()
        ),
    };
    let total = ra.3.max(rb.3) - ra.2.min(rb.2);
    rec.add(net, &format!("manager_{}/total", shape.label()), total);
    // Bring-ups whose first bootstrap connect succeeded, and those where it raced B's
    // listener (connection refused) and was retried after the backoff delay.
    let first_try = if ra.4 + rb.4 == 0 {
        "first_try"
    } else {
        "retried"
    };
    rec.add(
        net,
        &format!("manager_{}/total_{first_try}", shape.label()),
        total,
    );
    rec.count(
        net,
        &format!("manager_{}/link_errors", shape.label()),
        ra.4 + rb.4,
    );
    drop((ra, rb)); // both managers shut down here, outside the measurement
    total
}

// ------------------------------------------------------------------ the fabric split

struct Resources {
    _pd: ProtectionDomain,
    qps: Vec<(QueuePair, CompletionQueue, CompletionQueue)>,
    regions: Vec<MemoryRegion>,
    /// Time this node spent creating CQs, queue pairs and regions.
    cq_time: Duration,
    qp_time: Duration,
    mr_time: Duration,
}

/// Creates 16 × (send CQ + receive CQ + RC queue pair + 4 KiB region), like a client
/// attachment per queue pair.
fn create(pd: ProtectionDomain) -> Result<Resources, String> {
    let dev = pd.device().clone();
    let cap = QpCapacity::default();
    let mut qps = Vec::with_capacity(QPS);
    let mut regions = Vec::with_capacity(QPS);
    let (mut cq_time, mut qp_time, mut mr_time) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..QPS {
        let t = Instant::now();
        let scq = dev
            .create_cq(cap.max_send_wr)
            .map_err(|e| format!("create send cq: {e}"))?;
        let rcq = dev
            .create_cq(cap.max_recv_wr)
            .map_err(|e| format!("create recv cq: {e}"))?;
        let t2 = Instant::now();
        cq_time += t2 - t;
        let qp = pd
            .create_qp(&scq, &rcq, cap)
            .map_err(|e| format!("create qp: {e}"))?;
        let t3 = Instant::now();
        qp_time += t3 - t2;
        qps.push((qp, scq, rcq));
        regions.push(
            pd.register(REGION_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
                .map_err(|e| format!("register region: {e}"))?,
        );
        mr_time += t3.elapsed();
    }
    Ok(Resources {
        _pd: pd,
        qps,
        regions,
        cq_time,
        qp_time,
        mr_time,
    })
}

const ENTRY_LEN: usize = ENDPOINT_WIRE_LEN + 20;

/// Our endpoints and region descriptors, as one message.
fn encode(r: &Resources) -> Vec<u8> {
    let mut out = Vec::with_capacity(QPS * ENTRY_LEN);
    for ((qp, _, _), mr) in r.qps.iter().zip(&r.regions) {
        out.extend_from_slice(&qp.endpoint().expect("endpoint").to_bytes());
        let d = mr.descriptor();
        out.extend_from_slice(&d.addr.to_be_bytes());
        out.extend_from_slice(&d.len.to_be_bytes());
        out.extend_from_slice(&d.rkey.to_be_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Vec<(Endpoint, RegionDescriptor)> {
    b.chunks(ENTRY_LEN)
        .map(|e| {
            let ep = Endpoint::from_bytes(&e[..ENDPOINT_WIRE_LEN]).expect("peer endpoint");
            let u64_at = |o: usize| u64::from_be_bytes(e[o..o + 8].try_into().expect("8 bytes"));
            let d = RegionDescriptor {
                addr: u64_at(ENDPOINT_WIRE_LEN),
                len: u64_at(ENDPOINT_WIRE_LEN + 8),
                rkey: u32::from_be_bytes(
                    e[ENDPOINT_WIRE_LEN + 16..ENTRY_LEN]
                        .try_into()
                        .expect("4 bytes"),
                ),
            };
            (ep, d)
        })
        .collect()
}

/// Reads the peer's message and slam-connects every queue pair to its counterpart; returns
/// the peer's region descriptors and the time the 16 connects took.
fn read_and_connect(s: &mut TcpStream, r: &Resources) -> (Vec<RegionDescriptor>, Duration) {
    let mut buf = vec![0u8; QPS * ENTRY_LEN];
    s.read_exact(&mut buf).expect("read peer endpoints");
    let opts = ConnectOptions::default();
    let t = Instant::now();
    let regions = decode(&buf)
        .into_iter()
        .zip(&r.qps)
        .map(|((ep, d), (qp, _, _))| {
            qp.connect(&ep, &opts).expect("connect qp");
            d
        })
        .collect();
    (regions, t.elapsed())
}

/// What one node of a fabric bring-up measured.
struct SideTimes {
    open: Duration,
    create_start: Instant,
    create_end: Instant,
    /// Creation split: CQs, queue pairs, regions.
    create_parts: [Duration; 3],
    /// A only: TCP connect.
    tcp: Duration,
    /// The node's 16 slam connects.
    slam: Duration,
    connect_start: Instant,
    connect_end: Instant,
}

fn open(net: &Net, addr: IpAddr) -> Result<(Duration, ProtectionDomain), String> {
    let t = Instant::now();
    let dev = Device::open(&DeviceConfig {
        provider: net.provider,
        addr: Some(addr),
        ..Default::default()
    })
    .map_err(|e| format!("open {:?} device for {addr}: {e}", net.provider))?;
    let pd = dev.alloc_pd().map_err(|e| format!("alloc pd: {e}"))?;
    Ok((t.elapsed(), pd))
}

/// Waits for the other node at `barrier`, then goes on only if neither node failed (so a
/// failure on one side does not leave the other waiting forever).
fn step<T>(r: Result<T, String>, barrier: &Barrier, failed: &AtomicBool) -> T {
    if r.is_err() {
        failed.store(true, Ordering::SeqCst);
    }
    barrier.wait();
    match r {
        Err(e) => panic!("{e}"),
        Ok(_) if failed.load(Ordering::SeqCst) => panic!("the other node failed"),
        Ok(v) => v,
    }
}

fn check_connected(r: &Resources) {
    for (qp, _, _) in &r.qps {
        assert_eq!(qp.state().expect("qp state"), QpState::ReadyToSend);
    }
}

/// One fabric bring-up: open, create on both nodes in parallel, then connect.
fn fabric_bringup(net: &Net, rec: &Recorder) -> (Duration, Duration) {
    let port = next_port();
    let b_addr = SocketAddr::new(net.addr_b(), port);
    let (a_local, b_local) = (net.addr_a(), net.addr_b());
    let opened = Arc::new(Barrier::new(2));
    let created = Arc::new(Barrier::new(2));
    let failed = Arc::new(AtomicBool::new(false));
    let netc = *net;
    let (oa, ca, fa) = (opened.clone(), created.clone(), failed.clone());
    let a = spawn_in(net.ns_a(), "bench-fabric-a", move || {
        let (open_t, pd) = step(open(&netc, a_local), &oa, &fa);
        let create_start = Instant::now();
        let r = create(pd);
        let create_end = Instant::now();
        let r = step(r, &ca, &fa);
        let connect_start = Instant::now();
        let mut s = TcpStream::connect(b_addr).expect("connect to B");
        let tcp = connect_start.elapsed();
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&encode(&r)).expect("send endpoints");
        let (_peer_regions, slam) = read_and_connect(&mut s, &r);
        let connect_end = Instant::now();
        check_connected(&r);
        SideTimes {
            open: open_t,
            create_start,
            create_end,
            create_parts: [r.cq_time, r.qp_time, r.mr_time],
            tcp,
            slam,
            connect_start,
            connect_end,
        }
    });
    let b = spawn_in(net.ns_b(), "bench-fabric-b", move || {
        let ready = TcpListener::bind(b_addr)
            .map_err(|e| format!("bind B's listener {b_addr}: {e}"))
            .and_then(|l| open(&netc, b_local).map(|o| (l, o)));
        let (listener, (open_t, pd)) = step(ready, &opened, &failed);
        let create_start = Instant::now();
        let r = create(pd);
        let create_end = Instant::now();
        let r = step(r, &created, &failed);
        let (mut s, _) = listener.accept().expect("accept A");
        let connect_start = Instant::now();
        s.set_nodelay(true).expect("nodelay");
        let (_peer_regions, slam) = read_and_connect(&mut s, &r);
        s.write_all(&encode(&r)).expect("send endpoints");
        let connect_end = Instant::now();
        // Keep the resources until A has read the answer and connected (A closes then).
        let mut eof = [0u8; 1];
        let _ = s.read(&mut eof);
        check_connected(&r);
        SideTimes {
            open: open_t,
            create_start,
            create_end,
            create_parts: [r.cq_time, r.qp_time, r.mr_time],
            tcp: Duration::ZERO,
            slam,
            connect_start,
            connect_end,
        }
    });
    let (ta, tb) = (join(a), join(b));
    let create_t = ta.create_end.max(tb.create_end) - ta.create_start.min(tb.create_start);
    let connect_t = ta.connect_end.max(tb.connect_end) - ta.connect_start;
    rec.add(net, "fabric16/open", ta.open.max(tb.open));
    rec.add(net, "fabric16/create", create_t);
    for (i, part) in ["cqs", "qps", "mrs"].iter().enumerate() {
        rec.add(
            net,
            &format!("fabric16/create_a_{part}"),
            ta.create_parts[i],
        );
    }
    rec.add(net, "fabric16/tcp", ta.tcp);
    rec.add(net, "fabric16/slam_a", ta.slam);
    rec.add(net, "fabric16/slam_b", tb.slam);
    rec.add(net, "fabric16/connect", connect_t);
    rec.add(net, "fabric16/total", create_t + connect_t);
    (create_t, connect_t)
}

// ------------------------------------------------------------------ criterion

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder) {
    let secret = secret_file("manager");
    let mut g = c.benchmark_group(format!("fabric_{}", net.label));
    configure(&mut g);
    g.bench_function("create16", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fabric_bringup(net, rec).0).sum())
    });
    g.bench_function("connect16", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fabric_bringup(net, rec).1).sum())
    });
    g.finish();
    let mut g = c.benchmark_group(format!("manager_{}", net.label));
    configure(&mut g);
    for shape in [Shape::SixteenClients, Shape::OneClient] {
        g.bench_function(shape.label(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| manager_bringup(net, shape, &secret, rec))
                    .sum()
            })
        });
    }
    g.finish();
}

/// One bring-up per sample, ten samples: a bring-up is long and has side effects (threads,
/// sockets), so criterion's usual many iterations per sample would take far too long under
/// emulation.
fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .nresamples(2000);
}

fn main() {
    init_logs();
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::default();
    bench_net(&mut c, &SOFT_LOOPBACK, &rec);
    run_verbs_case("manager", "bench-manager", || {
        bench_net(&mut c, &VERBS_NETNS, &rec)
    });
    c.final_summary();
    rec.print_summary();
    remove_secret("manager");
}
