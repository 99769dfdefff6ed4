//! Fabric latency benchmarks: RDMA WRITE, RDMA READ and a SEND/RECV ping-pong at 64 B and
//! 4 KiB, on the soft provider (in-process network, TCP loopback) and on verbs (rxe_a0 in ilA /
//! rxe_b0 in ilB, inside `soft-roce/vm`), plus a plain TCP ping-pong of the same sizes on
//! loopback for the soft provider's reference.
//!
//! One thread drives both queue pairs and busy-polls the completion queues with the device's
//! [`BusyPoll`] policy (on verbs back to back for 1 ms, as perftest does, then yielding the CPU
//! between polls; `INTERLINK_BENCH_BUSY_POLL=yield-after-20us` selects the policy every waiter
//! used before, the pause hint and a yield after 20 µs, to compare):
//! - `write_pingpong_<size>`: a WRITE ping-pong shaped as `ib_write_lat`: A RDMA WRITEs into
//!   B's buffer, B sees the last byte of its buffer change and WRITEs back into A's landing
//!   buffer, A sees the last byte of its buffer change; both reap their WRITE's completion (as
//!   perftest's loop does). One full round trip, set against 2 x `ib_write_lat`'s t_typical;
//! - `write_<size>`: post one signaled RDMA WRITE, poll its completion (one round trip to the
//!   remote NIC's acknowledgement; an extra line, not `ib_write_lat`'s shape);
//! - `read_<size>`: post one RDMA READ, poll its completion (one round trip);
//! - `send_pingpong_<size>`: A SENDs to B, B's receive completes, B SENDs back, A's receive
//!   completes (receives are posted ahead, outside the timed part): one full round trip;
//! - `soft_echo_<size>` and `tcp_echo_<size>` (soft loopback only, summary lines only): an
//!   echo ping-pong with node B in its own thread sending every message back and both sides
//!   waiting the ordinary blocking way, on the soft provider (SEND/RECV, blocking
//!   [`CompletionQueue::next`]) and over a plain std TCP connection (TCP_NODELAY, blocking
//!   reads) on 127.77.0.1 / 127.77.0.2: the soft provider next to the transport it runs on;
//!   `soft_echo_sealed_<size>` is the soft echo with every packet sealed and checked under a
//!   packet key (`ConnectOptions::packet_key`, as the cluster manager connects its queue
//!   pairs): the cost of the packet authentication.
//!
//! Criterion measures each; then a summary run records every operation into a histogram and
//! prints `fabric-bench: key=<net>/<figure> n= p50_us= p99_us= mean_us= ...` lines, which
//! `soft-roce/bench-fabric` sets next to ib_write_lat, ib_read_lat and ib_send_lat.
//! `INTERLINK_BENCH_FABRIC_ITERS` sets the summary run's operations per figure (default 5000);
//! `INTERLINK_BENCH_SUMMARY_ONLY=1` skips criterion and `INTERLINK_BENCH_FIGURES` (e.g.
//! `read_64,write_pingpong_64`) picks the summary figures (how the script interleaves the bench
//! with perftest, one figure at a time).

#[path = "pair/mod.rs"]
mod pair;

use criterion::Criterion;
use hdrhistogram::Histogram;
use interlink::fabric::*;
use pair::{
    figure_wanted, init_logs, run_verbs_case, selected, summary_only, Net, Recorder, SOFT_LOOPBACK,
    VERBS_NETNS,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SIZES: [usize; 2] = [64, 4096];
const REGION: usize = 1 << 17;
/// Longest a single operation may take before the bench gives up (a lost completion).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Where B's WRITE of a WRITE ping-pong comes from in B's buffer (A's WRITEs land at 0).
const PONG_SOURCE: usize = REGION / 2;

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
    /// Where B's WRITEs of a WRITE ping-pong land on A.
    a_land: MemoryRegion,
    a_land_target: RegionDescriptor,
    /// The last byte of the current WRITE ping-pong (never 0: the buffers start zeroed).
    stamp: u8,
    busy: BusyPoll,
    polled: Vec<Completion>,
}

/// The bench's busy-polling policy for `provider` (see the module documentation).
fn busy_poll(provider: ProviderKind) -> BusyPoll {
    match std::env::var("INTERLINK_BENCH_BUSY_POLL").as_deref() {
        // The pause hint and a yield after 20 µs: the soft provider's policy.
        Ok("yield-after-20us") => {
            BusyPoll::configured(ProviderKind::Soft, Some(BusyPoll::SOFT_PURE))
        }
        Ok("default") | Err(_) => BusyPoll::for_provider(provider),
        Ok(other) => panic!("INTERLINK_BENCH_BUSY_POLL={other}: use default or yield-after-20us"),
    }
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
    fn new(a: Device, b: Device, packet_key: Option<PacketKey>) -> Setup {
        let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
        let (ca, cb) = (a.create_cq(256).unwrap(), b.create_cq(256).unwrap());
        let qa = pa.create_qp(&ca, &ca, QpCapacity::default()).unwrap();
        let qb = pb.create_qp(&cb, &cb, QpCapacity::default()).unwrap();
        let opts = ConnectOptions {
            packet_key,
            ..ConnectOptions::default()
        };
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
        let a_land = pa
            .register(REGION, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .unwrap();
        let a_land_target = a_land.descriptor();
        let busy = busy_poll(a.provider());
        Setup {
            qa,
            qb,
            ca,
            cb,
            a_buf,
            b_buf,
            target,
            a_land,
            a_land_target,
            stamp: 0,
            busy,
            polled: Vec::with_capacity(4),
        }
    }

    /// A fresh pair on `net`; its queue pairs seal their packets under `key` when given.
    fn for_net(net: &Net, key: Option<PacketKey>) -> Setup {
        if net.label == SOFT_SIM.label {
            let sim = SimNet::new(1);
            return Setup::new(
                Device::open_sim(&sim, "a").unwrap(),
                Device::open_sim(&sim, "b").unwrap(),
                key,
            );
        }
        Setup::new(open(net, 1), open(net, 2), key)
    }

    /// Busy-polls `cq` (A's when `a`) for one successful completion.
    fn reap(&mut self, a: bool) {
        let cq = if a { &self.ca } else { &self.cb };
        let start = Instant::now();
        self.polled.clear();
        while cq.poll(&mut self.polled, 1).unwrap() == 0 {
            let now = Instant::now();
            assert!(
                now.duration_since(start) < OP_TIMEOUT,
                "no completion within {OP_TIMEOUT:?}"
            );
            self.busy.round(start, now);
        }
        let c = self.polled[0];
        assert!(c.status.is_ok(), "{:?}", c.status);
    }

    /// One RDMA WRITE (`read` false) or READ of `size` bytes at B's buffer, to its completion.
    fn one_sided(&mut self, read: bool, size: usize) {
        let at = self.target.at(0);
        let op = if read {
            SendOp::Read(at)
        } else {
            SendOp::Write(at)
        };
        let req = SendRequest::new(1, op, self.a_buf.slice(0, size).unwrap());
        self.qa.post_send(req).unwrap();
        self.reap(true);
    }

    fn write(&mut self, size: usize) {
        self.one_sided(false, size)
    }

    /// Busy-polls until byte `at` of `buf` holds `stamp`.
    fn wait_byte(busy: BusyPoll, buf: &MemoryRegion, at: usize, stamp: u8) {
        let start = Instant::now();
        let mut b = [0u8; 1];
        loop {
            buf.read(at, &mut b).unwrap();
            if b[0] == stamp {
                return;
            }
            let now = Instant::now();
            assert!(
                now.duration_since(start) < OP_TIMEOUT,
                "the WRITE did not land within {OP_TIMEOUT:?}"
            );
            busy.round(start, now);
        }
    }

    /// One WRITE ping-pong of `size` bytes, shaped as ib_write_lat (see the module
    /// documentation).
    fn write_pingpong(&mut self, size: usize) {
        self.stamp = self.stamp.wrapping_add(1).max(1);
        let last = size - 1;
        self.a_buf.write(last, &[self.stamp]).unwrap();
        let ping = SendRequest::new(
            7,
            SendOp::Write(self.target.at(0)),
            self.a_buf.slice(0, size).unwrap(),
        );
        self.qa.post_send(ping).unwrap();
        Setup::wait_byte(self.busy, &self.b_buf, last, self.stamp);
        self.b_buf.write(PONG_SOURCE + last, &[self.stamp]).unwrap();
        let pong = SendRequest::new(
            8,
            SendOp::Write(self.a_land_target.at(0)),
            self.b_buf.slice(PONG_SOURCE, size).unwrap(),
        );
        self.qb.post_send(pong).unwrap();
        Setup::wait_byte(self.busy, &self.a_land, last, self.stamp);
        self.reap(true);
        self.reap(false);
    }

    fn read(&mut self, size: usize) {
        self.one_sided(true, size)
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

/// The echo ping-pong (soft loopback only, next to TCP): node B runs in its own thread and
/// sends every message back; both sides wait the ordinary blocking way (a TCP read,
/// [`CompletionQueue::next`]), the shape of netperf's TCP_RR. `n` timed round trips after
/// `WARMUP` untimed ones.
const WARMUP: usize = 200;
/// Receives kept posted on each side of the soft echo.
const RECV_DEPTH: usize = 16;

/// Waits (blocking) for the next receive completion on `cq`, skipping send completions.
fn next_recv(cq: &CompletionQueue) -> Completion {
    loop {
        let c = cq
            .next(OP_TIMEOUT)
            .unwrap()
            .unwrap_or_else(|| panic!("no completion within {OP_TIMEOUT:?}"));
        assert!(c.status.is_ok(), "{:?}", c.status);
        if c.op == CompletionOp::Recv {
            return c;
        }
    }
}

fn post_recv_slot(qp: &QueuePair, buf: &MemoryRegion, slot: u64, size: usize) {
    let local = buf.slice(slot as usize * size, size).unwrap();
    qp.post_recv(RecvRequest { wr_id: slot, local }).unwrap();
}

/// The soft provider's echo ping-pong of `size` bytes on a fresh pair (its packets sealed
/// under `key` when given).
fn soft_echo(net: &Net, size: usize, n: usize, key: Option<PacketKey>) -> Histogram<u64> {
    let Setup {
        qa,
        qb,
        ca,
        cb,
        a_buf,
        b_buf,
        ..
    } = Setup::for_net(net, key);
    let total = WARMUP + n;
    for slot in 0..RECV_DEPTH as u64 {
        post_recv_slot(&qa, &a_buf, slot, size);
        post_recv_slot(&qb, &b_buf, slot, size);
    }
    let echo = std::thread::spawn(move || {
        for _ in 0..total {
            let c = next_recv(&cb);
            let back = b_buf.slice(c.wr_id as usize * size, size).unwrap();
            qb.post_send(SendRequest::new(1_000, SendOp::Send, back))
                .unwrap();
            post_recv_slot(&qb, &b_buf, c.wr_id, size);
        }
        next_recv_or_sends(&cb);
    });
    let mut h = histogram();
    let ping = RECV_DEPTH * size;
    for i in 0..total {
        let t = Instant::now();
        qa.post_send(SendRequest::new(
            2_000,
            SendOp::Send,
            a_buf.slice(ping, size).unwrap(),
        ))
        .unwrap();
        let c = next_recv(&ca);
        if i >= WARMUP {
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
        post_recv_slot(&qa, &a_buf, c.wr_id, size);
    }
    pair::join(echo);
    h
}

/// Drains B's last send completions (so its queue pair is idle before it drops).
fn next_recv_or_sends(cq: &CompletionQueue) {
    let mut out = Vec::with_capacity(RECV_DEPTH);
    let _ = cq.wait(&mut out, RECV_DEPTH, Duration::from_millis(100));
}

/// A plain TCP echo ping-pong of `size` bytes on loopback (TCP_NODELAY), B in its own thread.
fn tcp_echo(net: &Net, size: usize, n: usize) -> Histogram<u64> {
    let listener = TcpListener::bind(SocketAddr::new(net.addr_b(), 0)).unwrap();
    let to = listener.local_addr().unwrap();
    let mut a = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    let (mut b, _) = listener.accept().unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    let total = WARMUP + n;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            b.read_exact(&mut buf).unwrap();
            b.write_all(&buf).unwrap();
        }
    });
    let mut buf = vec![0u8; size];
    let mut h = histogram();
    for i in 0..total {
        let t = Instant::now();
        a.write_all(&buf).unwrap();
        a.read_exact(&mut buf).unwrap();
        if i >= WARMUP {
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
    }
    pair::join(echo);
    h
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

fn bench_net(c: &mut Criterion, net: &Net, rec: &Recorder, quick: bool) {
    if !selected(net) {
        return;
    }
    let mut s = Setup::for_net(net, None);
    let n = iters(quick);
    if !summary_only() {
        let mut g = c.benchmark_group(net.label);
        for size in SIZES {
            g.bench_function(format!("write_pingpong_{size}"), |b| {
                b.iter(|| s.write_pingpong(size))
            });
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
        let fig = |name: &str| format!("{name}_{size}");
        if figure_wanted(&fig("write_pingpong")) {
            let h = measure(n, &mut s, |_| {}, |s| s.write_pingpong(size));
            rec.latency(net, &fig("write_pingpong"), &h);
        }
        if figure_wanted(&fig("write")) {
            let h = measure(n, &mut s, |_| {}, |s| s.write(size));
            rec.latency(net, &fig("write"), &h);
        }
        if figure_wanted(&fig("read")) {
            let h = measure(n, &mut s, |_| {}, |s| s.read(size));
            rec.latency(net, &fig("read"), &h);
        }
        if figure_wanted(&fig("send_pingpong")) {
            let h = measure(n, &mut s, |s| s.arm(size), |s| s.pingpong(size));
            rec.latency(net, &fig("send_pingpong"), &h);
        }
    }
    if net.label == SOFT_LOOPBACK.label {
        for size in SIZES
            .into_iter()
            .filter(|s| figure_wanted(&format!("soft_echo_{s}")))
        {
            eprintln!("fabric bench: echo ping-pong, soft provider and TCP, {n} at {size} bytes");
            rec.latency(
                net,
                &format!("soft_echo_{size}"),
                &soft_echo(net, size, n, None),
            );
            let key = Some(PacketKey::from_bytes([7; 32]));
            rec.latency(
                net,
                &format!("soft_echo_sealed_{size}"),
                &soft_echo(net, size, n, key),
            );
            rec.latency(net, &format!("tcp_echo_{size}"), &tcp_echo(net, size, n));
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
