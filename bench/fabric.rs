//! Fabric latency benchmarks: RDMA WRITE, RDMA READ and a SEND/RECV ping-pong at 64 B and
//! 4 KiB, on the soft provider (in-process network, TCP loopback) and on verbs (rxe_a0 in ilA /
//! rxe_b0 in ilB, inside `soft-roce/vm`), plus a plain TCP ping-pong of the same sizes on
//! loopback for the soft provider's reference.
//!
//! One thread drives both queue pairs and busy-polls the completion queues (as perftest does):
//! - `write_<size>`: post one signaled RDMA WRITE, poll its completion (one round trip to the
//!   remote NIC's acknowledgement);
//! - `read_<size>`: post one RDMA READ, poll its completion (one round trip);
//! - `send_pingpong_<size>`: A SENDs to B, B's receive completes, B SENDs back, A's receive
//!   completes (receives are posted ahead, outside the timed part): one full round trip;
//! - `tcp_pingpong_<size>` (soft loopback only): the same ping-pong over two std TCP sockets
//!   (TCP_NODELAY) on 127.77.0.1 / 127.77.0.2, one thread writing and reading both ends.
//!
//! Criterion measures each; then a summary run records every operation into a histogram and
//! prints `fabric-bench: key=<net>/<figure> n= p50_us= p99_us= mean_us= ...` lines, which
//! `soft-roce/bench-fabric` sets next to ib_write_lat, ib_read_lat and ib_send_lat.
//! `INTERLINK_BENCH_FABRIC_ITERS` sets the summary run's operations per figure (default 5000).

#[path = "pair/mod.rs"]
mod pair;

use criterion::Criterion;
use hdrhistogram::Histogram;
use interlink::fabric::*;
use pair::{init_logs, run_verbs_case, Net, Recorder, SOFT_LOOPBACK, VERBS_NETNS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SIZES: [usize; 2] = [64, 4096];
const REGION: usize = 1 << 16;
/// Longest a single operation may take before the bench gives up (a lost completion).
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The in-process simulated network (no sockets; the soft provider's protocol cost alone).
const SOFT_SIM: Net = Net {
    label: "soft_sim",
    provider: ProviderChoice::Soft,
    namespaces: None,
    a: [0, 0, 0, 0],
    b: [0, 0, 0, 0],
};

struct Setup {
    qa: QueuePair,
    qb: QueuePair,
    ca: CompletionQueue,
    cb: CompletionQueue,
    /// A's source and receive buffer (no remote rights).
    a_buf: MemoryRegion,
    /// B's receive buffer and the target of A's WRITEs and READs.
    b_buf: MemoryRegion,
    target: RegionDescriptor,
    polled: Vec<Completion>,
}

fn open(net: &Net, side: u8) -> Device {
    let addr = if side == 1 {
        net.addr_a()
    } else {
        net.addr_b()
    };
    let cfg = DeviceConfig {
        provider: net.provider,
        addr: Some(addr),
        ..Default::default()
    };
    Device::open(&cfg).unwrap_or_else(|e| panic!("open the {addr} device: {e}"))
}

impl Setup {
    fn new(a: Device, b: Device) -> Setup {
        let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
        let (ca, cb) = (a.create_cq(256).unwrap(), b.create_cq(256).unwrap());
        let qa = pa.create_qp(&ca, &ca, QpCapacity::default()).unwrap();
        let qb = pb.create_qp(&cb, &cb, QpCapacity::default()).unwrap();
        let opts = ConnectOptions::default();
        qa.connect(&qb.endpoint().unwrap(), &opts).unwrap();
        qb.connect(&qa.endpoint().unwrap(), &opts).unwrap();
        let a_buf = pa.register(REGION, Access::LOCAL_WRITE).unwrap();
        let b_buf = pb
            .register(
                REGION,
                Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
            )
            .unwrap();
        let target = b_buf.descriptor();
        Setup {
            qa,
            qb,
            ca,
            cb,
            a_buf,
            b_buf,
            target,
            polled: Vec::with_capacity(4),
        }
    }

    fn for_net(net: &Net) -> Setup {
        if net.label == SOFT_SIM.label {
            let sim = SimNet::new(1);
            return Setup::new(
                Device::open_sim(&sim, "a").unwrap(),
                Device::open_sim(&sim, "b").unwrap(),
            );
        }
        Setup::new(open(net, 1), open(net, 2))
    }

    /// Busy-polls `cq` (A's when `a`) for one successful completion.
    fn reap(&mut self, a: bool) {
        let cq = if a { &self.ca } else { &self.cb };
        let deadline = Instant::now() + OP_TIMEOUT;
        self.polled.clear();
        while cq.poll(&mut self.polled, 1).unwrap() == 0 {
            assert!(
                Instant::now() < deadline,
                "no completion within {OP_TIMEOUT:?}"
            );
            std::hint::spin_loop();
        }
        let c = self.polled[0];
        assert!(c.status.is_ok(), "{:?}", c.status);
    }

    fn write(&mut self, size: usize) {
        let req = SendRequest::new(
            1,
            SendOp::Write(self.target.at(0)),
            self.a_buf.slice(0, size).unwrap(),
        );
        self.qa.post_send(req).unwrap();
        self.reap(true);
    }

    fn read(&mut self, size: usize) {
        let req = SendRequest::new(
            2,
            SendOp::Read(self.target.at(0)),
            self.a_buf.slice(0, size).unwrap(),
        );
        self.qa.post_send(req).unwrap();
        self.reap(true);
    }

    /// Posts the receives of one ping-pong (not timed).
    fn arm(&self, size: usize) {
        self.qb
            .post_recv(RecvRequest {
                wr_id: 3,
                local: self.b_buf.slice(0, size).unwrap(),
            })
            .unwrap();
        self.qa
            .post_recv(RecvRequest {
                wr_id: 4,
                local: self.a_buf.slice(size, size).unwrap(),
            })
            .unwrap();
    }

    /// One ping-pong; the receives are armed. Completions: A's send, B's receive, B's send,
    /// A's receive (both queue pairs share their device's completion queue).
    fn pingpong(&mut self, size: usize) {
        let ping = SendRequest::new(5, SendOp::Send, self.a_buf.slice(0, size).unwrap());
        self.qa.post_send(ping).unwrap();
        self.reap(false); // B's receive
        let pong = SendRequest::new(6, SendOp::Send, self.b_buf.slice(0, size).unwrap());
        self.qb.post_send(pong).unwrap();
        self.reap(true); // A's send or receive
        self.reap(true);
        self.reap(false); // B's send
    }
}

/// Two TCP sockets connected on loopback, for the reference ping-pong.
struct TcpPair {
    a: TcpStream,
    b: TcpStream,
    buf: Vec<u8>,
}

impl TcpPair {
    fn new(net: &Net) -> TcpPair {
        let listener = TcpListener::bind(SocketAddr::new(net.addr_b(), 0)).unwrap();
        let to = listener.local_addr().unwrap();
        let a = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        let (b, _) = listener.accept().unwrap();
        for s in [&a, &b] {
            s.set_nodelay(true).unwrap();
        }
        TcpPair {
            a,
            b,
            buf: vec![0; REGION],
        }
    }

    fn pingpong(&mut self, size: usize) {
        let buf = &mut self.buf[..size];
        self.a.write_all(buf).unwrap();
        self.b.read_exact(buf).unwrap();
        self.b.write_all(buf).unwrap();
        self.a.read_exact(buf).unwrap();
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram")
}

/// Runs `op` on `state` `n` times into a histogram of nanoseconds; `prepare` runs before
/// each, untimed.
fn measure<S>(
    n: usize,
    state: &mut S,
    mut prepare: impl FnMut(&mut S),
    mut op: impl FnMut(&mut S),
) -> Histogram<u64> {
    let mut h = histogram();
    for _ in 0..n {
        prepare(state);
        let t = Instant::now();
        op(state);
        h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
    }
    h
}

fn iters(quick: bool) -> usize {
    if quick {
        return 20;
    }
    std::env::var("INTERLINK_BENCH_FABRIC_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

/// Whether the command line's benchmark filters (criterion's positional arguments, taken as
/// substrings) select any benchmark of `net`: a net nobody asked for is not set up at all (in
/// the VM, `--bench verbs_netns` must not spend emulated time on the soft provider).
fn selected(net: &Net) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut groups = vec![net.label];
    if net.label == SOFT_LOOPBACK.label {
        groups.push("tcp_loopback");
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| groups.iter().any(|g| format!("{g}/").contains(f.as_str())))
}

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    if !selected(net) {
        return;
    }
    let mut s = Setup::for_net(net);
    let n = iters(quick);
    {
        let mut g = c.benchmark_group(net.label);
        for size in SIZES {
            g.bench_function(format!("write_{size}"), |b| b.iter(|| s.write(size)));
            g.bench_function(format!("read_{size}"), |b| b.iter(|| s.read(size)));
            g.bench_function(format!("send_pingpong_{size}"), |b| {
                b.iter_custom(|k| {
                    let mut took = Duration::ZERO;
                    for _ in 0..k {
                        s.arm(size);
                        let t = Instant::now();
                        s.pingpong(size);
                        took += t.elapsed();
                    }
                    took
                })
            });
        }
        g.finish();
    }
    for size in SIZES {
        eprintln!(
            "fabric bench: {}: {n} operations of each kind at {size} bytes",
            net.label
        );
        let h = measure(n, &mut s, |_| {}, |s| s.write(size));
        rec.latency(net, &format!("write_{size}"), &h);
        let h = measure(n, &mut s, |_| {}, |s| s.read(size));
        rec.latency(net, &format!("read_{size}"), &h);
        let h = measure(n, &mut s, |s| s.arm(size), |s| s.pingpong(size));
        rec.latency(net, &format!("send_pingpong_{size}"), &h);
    }
    if net.label == SOFT_LOOPBACK.label {
        let mut t = TcpPair::new(net);
        let mut g = c.benchmark_group("tcp_loopback");
        for size in SIZES {
            g.bench_function(format!("tcp_pingpong_{size}"), |b| {
                b.iter(|| t.pingpong(size))
            });
        }
        g.finish();
        for size in SIZES {
            let h = measure(n, &mut t, |_| {}, |t| t.pingpong(size));
            rec.latency(net, &format!("tcp_pingpong_{size}"), &h);
        }
    }
}

fn main() {
    init_logs();
    // cargo bench passes --bench; without it criterion runs every benchmark once (test mode).
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    let rec = Recorder::new("fabric");
    bench_net(&mut c, &SOFT_SIM, &rec, quick);
    bench_net(&mut c, &SOFT_LOOPBACK, &rec, quick);
    run_verbs_case("fabric", "bench-fabric", || {
        bench_net(&mut c, &VERBS_NETNS, &rec, quick)
    });
    c.final_summary();
    rec.print_summary("fabric operations, latencies in microseconds");
}
