//! Fabric latency benchmarks on the soft provider (in-process network and TCP loopback):
//! 64-byte RDMA WRITE, RDMA READ and SEND/RECV round trips. The perftest comparison on
//! Soft-RoCE belongs to the "Demo and benchmarks" issue.

use criterion::{criterion_group, criterion_main, Criterion};
use interlink::fabric::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

struct Setup {
    qa: QueuePair,
    qb: QueuePair,
    ca: CompletionQueue,
    cb: CompletionQueue,
    src: MemoryRegion,
    dst: MemoryRegion,
    target: RegionDescriptor,
}

fn setup(a: Device, b: Device) -> Setup {
    let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
    let (ca, cb) = (a.create_cq(256).unwrap(), b.create_cq(256).unwrap());
    let qa = pa.create_qp(&ca, &ca, QpCapacity::default()).unwrap();
    let qb = pb.create_qp(&cb, &cb, QpCapacity::default()).unwrap();
    qa.connect(&qb.endpoint().unwrap(), &ConnectOptions::default())
        .unwrap();
    qb.connect(&qa.endpoint().unwrap(), &ConnectOptions::default())
        .unwrap();
    let src = pa.register(4096, Access::LOCAL_WRITE).unwrap();
    let dst = pb
        .register(
            4096,
            Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
        )
        .unwrap();
    let target = dst.descriptor();
    Setup {
        qa,
        qb,
        ca,
        cb,
        src,
        dst,
        target,
    }
}

fn wait(cq: &CompletionQueue) {
    let c = cq
        .next(Duration::from_secs(10))
        .unwrap()
        .expect("completion");
    assert!(c.status.is_ok(), "{:?}", c.status);
}

fn bench_pair(c: &mut Criterion, name: &str, s: &Setup) {
    let mut g = c.benchmark_group(name);
    g.bench_function("write_64B", |b| {
        b.iter(|| {
            s.qa.post_send(SendRequest::new(
                1,
                SendOp::Write(s.target.at(0)),
                s.src.slice(0, 64).unwrap(),
            ))
            .unwrap();
            wait(&s.ca);
        })
    });
    g.bench_function("read_64B", |b| {
        b.iter(|| {
            s.qa.post_send(SendRequest::new(
                2,
                SendOp::Read(s.target.at(0)),
                s.src.slice(0, 64).unwrap(),
            ))
            .unwrap();
            wait(&s.ca);
        })
    });
    g.bench_function("send_recv_64B", |b| {
        b.iter(|| {
            s.qb.post_recv(RecvRequest {
                wr_id: 3,
                local: s.dst.slice(0, 64).unwrap(),
            })
            .unwrap();
            s.qa.post_send(SendRequest::new(
                4,
                SendOp::Send,
                s.src.slice(0, 64).unwrap(),
            ))
            .unwrap();
            wait(&s.ca);
            wait(&s.cb);
        })
    });
    g.finish();
}

fn soft(c: &mut Criterion) {
    let net = SimNet::new(1);
    let s = setup(
        Device::open_sim(&net, "a").unwrap(),
        Device::open_sim(&net, "b").unwrap(),
    );
    bench_pair(c, "soft_sim", &s);
    let cfg = DeviceConfig {
        provider: ProviderChoice::Soft,
        addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..Default::default()
    };
    let s = setup(Device::open(&cfg).unwrap(), Device::open(&cfg).unwrap());
    bench_pair(c, "soft_tcp_loopback", &s);
}

criterion_group!(benches, soft);
criterion_main!(benches);
