//! The behavioural fabric suite, written once and run against every provider and transport:
//! `fabric_sim` (in-process), `fabric_tcp` (loopback and across the ilA/ilB namespaces) and
//! `fabric_verbs` (libibverbs over Soft-RoCE across ilA/ilB, inside the VM).
#![allow(dead_code)]

use interlink::fabric::*;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Upper bound for anything that should happen "at once" (generous: the VM is slow).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Sends `frames` (encoded soft-provider packets) to the soft listener of the device that
/// `to` names, as a forger would: one new TCP connection, each frame length-prefixed.
pub fn send_soft_frames<'a>(to: &Endpoint, frames: impl IntoIterator<Item = &'a [u8]>) {
    use std::io::Write;
    let mut s =
        std::net::TcpStream::connect(std::net::SocketAddr::new(to.gid.to_ip(), to.lid)).unwrap();
    for f in frames {
        s.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
        s.write_all(f).unwrap();
    }
    s.flush().unwrap();
}

/// One node of a test pair.
pub struct Side {
    pub dev: Device,
    pub pd: ProtectionDomain,
    pub cq: CompletionQueue,
    pub rcq: CompletionQueue,
}

impl Side {
    pub fn new(dev: Device) -> Side {
        // A link just created (veth, rxe) takes a moment to report carrier.
        let deadline = Instant::now() + PATIENCE;
        while !dev.port_active().expect("query port") {
            assert!(
                Instant::now() < deadline,
                "port of {} never became active",
                dev.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let pd = dev.alloc_pd().expect("alloc pd");
        let cq = dev.create_cq(1024).expect("create send cq");
        let rcq = dev.create_cq(1024).expect("create recv cq");
        Side { dev, pd, cq, rcq }
    }
    pub fn qp(&self) -> QueuePair {
        self.pd
            .create_qp(&self.cq, &self.rcq, QpCapacity::default())
            .expect("create qp")
    }
    pub fn region(&self, len: usize, access: Access) -> MemoryRegion {
        self.pd.register(len, access).expect("register region")
    }
}

/// How to cut and restore the link between the two sides.
pub enum Link {
    None,
    Sim(SimNet, String, String),
    Netns(u32),
}

impl Link {
    pub fn cut(&self) {
        match self {
            Link::None => panic!("this pair cannot cut its link"),
            Link::Sim(net, a, b) => net.cut(a, b),
            Link::Netns(l) => soft_roce("link", &["down", &l.to_string()]),
        }
    }
    pub fn heal(&self) {
        match self {
            Link::None => {}
            Link::Sim(net, a, b) => net.heal(a, b),
            Link::Netns(l) => soft_roce("link", &["up", &l.to_string()]),
        }
    }
}

fn soft_roce(cmd: &str, args: &[&str]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("soft-roce")
        .join(cmd);
    let st = Command::new(&path)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(st.success(), "{} {:?} failed: {st}", path.display(), args);
}

/// Two connected-able nodes.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub link: Link,
    pub opts: ConnectOptions,
}

fn ns_addr(side: u8, link: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, link as u8, side))
}

/// Runs `f` with the calling thread inside network namespace `ns` (root only), then returns.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
    let target = std::fs::File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| {
        panic!("network namespace {ns} is missing ({e}): run `soft-roce/netns-up` as root first")
    });
    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter netns");
    let out = f();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET).expect("leave netns");
    out
}

impl Pair {
    /// Two soft devices on an in-process network.
    pub fn sim(_link: u32) -> Pair {
        let net = SimNet::new(7);
        let a = Side::new(Device::open_sim(&net, "a").unwrap());
        let b = Side::new(Device::open_sim(&net, "b").unwrap());
        Pair {
            a,
            b,
            link: Link::Sim(net, "a".into(), "b".into()),
            opts: fast_opts(),
        }
    }

    /// Two soft devices over TCP on loopback.
    pub fn tcp_loopback(_link: u32) -> Pair {
        let cfg = DeviceConfig {
            provider: ProviderChoice::Soft,
            addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..Default::default()
        };
        Pair {
            a: Side::new(Device::open(&cfg).unwrap()),
            b: Side::new(Device::open(&cfg).unwrap()),
            link: Link::None,
            opts: fast_opts(),
        }
    }

    /// Two soft devices over TCP across namespaces ilA and ilB on `link`.
    pub fn tcp_netns(link: u32) -> Pair {
        let open = |side: u8| {
            let cfg = DeviceConfig {
                provider: ProviderChoice::Soft,
                addr: Some(ns_addr(side, link)),
                ..Default::default()
            };
            Device::open(&cfg)
                .unwrap_or_else(|e| panic!("open soft device on {}: {e}", ns_addr(side, link)))
        };
        let a = in_netns("ilA", || open(1));
        let b = in_netns("ilB", || open(2));
        Pair {
            a: Side::new(a),
            b: Side::new(b),
            link: Link::Netns(link),
            opts: fast_opts(),
        }
    }

    /// Two verbs devices (Soft-RoCE rxe_a<L> in ilA, rxe_b<L> in ilB), found by address.
    pub fn verbs(link: u32) -> Pair {
        let open = |side: u8| {
            let cfg = DeviceConfig {
                provider: ProviderChoice::Verbs,
                addr: Some(ns_addr(side, link)),
                ..Default::default()
            };
            Device::open(&cfg).unwrap_or_else(|e| {
                panic!(
                    "verbs suite asked for but no device serves {}: {e} (devices: {:?})",
                    ns_addr(side, link),
                    verbs_devices()
                )
            })
        };
        let a = open(1);
        let b = open(2);
        assert_eq!(a.provider(), ProviderKind::Verbs);
        Pair {
            a: Side::new(a),
            b: Side::new(b),
            link: Link::Netns(link),
            opts: ConnectOptions {
                ack_timeout: 16,
                retry_count: 3,
                ..ConnectOptions::default()
            },
        }
    }

    /// A connected queue pair on each side.
    pub fn connect(&self) -> (QueuePair, QueuePair) {
        let qa = self.a.qp();
        let qb = self.b.qp();
        self.reconnect(&qa, &qb);
        (qa, qb)
    }

    pub fn reconnect(&self, qa: &QueuePair, qb: &QueuePair) {
        let ea = qa.endpoint().expect("endpoint a");
        let eb = qb.endpoint().expect("endpoint b");
        qa.connect(&eb, &self.opts).expect("connect a");
        qb.connect(&ea, &self.opts).expect("connect b");
        assert_eq!(qa.state().unwrap(), QpState::ReadyToSend);
        assert_eq!(qb.state().unwrap(), QpState::ReadyToSend);
    }
}

/// Short timeouts so failures surface quickly (ack timeout 16 ms x 4 tries).
pub fn fast_opts() -> ConnectOptions {
    ConnectOptions {
        ack_timeout: 12,
        retry_count: 3,
        ..ConnectOptions::default()
    }
}

pub fn next(cq: &CompletionQueue) -> Completion {
    cq.next(PATIENCE)
        .expect("poll cq")
        .unwrap_or_else(|| panic!("no completion within {PATIENCE:?}"))
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub const SIZES: [usize; 6] = [1, 63, 4096, 65_537, 262_144, 1 << 20];

// ---------------------------------------------------------------- the suite

pub fn register_and_describe(p: Pair) {
    let r = p.a.region(8192, Access::LOCAL_WRITE | Access::REMOTE_READ);
    let d = r.descriptor();
    assert_eq!(d.len, 8192);
    assert_eq!(r.access(), Access::LOCAL_WRITE | Access::REMOTE_READ);
    r.write(100, b"hello").unwrap();
    let mut out = [0u8; 5];
    r.read(100, &mut out).unwrap();
    assert_eq!(&out, b"hello");
    r.write_u64(8, 0x0102_0304_0506_0708).unwrap();
    assert_eq!(r.read_u64(8).unwrap(), 0x0102_0304_0506_0708);
    assert!(matches!(
        r.write(8190, b"xyz"),
        Err(FabricError::LocalBounds { .. })
    ));
    assert!(r.slice(8000, 193).is_err());
    let r2 = p.a.region(4096, Access::REMOTE_WRITE);
    assert_ne!(r2.descriptor().rkey, d.rkey);
    let json = serde_json::to_string(&d).unwrap();
    let back: RegionDescriptor = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
}

pub fn send_recv_sizes(p: Pair) {
    let (qa, qb) = p.connect();
    for (i, &len) in SIZES.iter().enumerate() {
        let src = p.a.region(len, Access::NONE);
        let dst = p.b.region(len + 64, Access::LOCAL_WRITE);
        let data = pattern(len, i as u8);
        src.write(0, &data).unwrap();
        qb.post_recv(RecvRequest {
            wr_id: 100 + i as u64,
            local: dst.whole(),
        })
        .unwrap();
        qa.post_send(SendRequest::new(i as u64, SendOp::Send, src.whole()))
            .unwrap();
        let c = next(&p.a.cq);
        assert_eq!(
            (c.wr_id, c.status, c.op),
            (i as u64, CompletionStatus::Success, CompletionOp::Send)
        );
        let c = next(&p.b.rcq);
        assert_eq!(c.wr_id, 100 + i as u64);
        assert_eq!(c.status, CompletionStatus::Success);
        assert_eq!(c.op, CompletionOp::Recv);
        assert_eq!(c.byte_len as usize, len);
        assert_eq!(c.imm, None);
        let mut got = vec![0u8; len];
        dst.read(0, &mut got).unwrap();
        assert!(got == data, "payload of {len} bytes differs");
    }
    // SEND with immediate.
    let src = p.a.region(16, Access::NONE);
    let dst = p.b.region(16, Access::LOCAL_WRITE);
    qb.post_recv(RecvRequest {
        wr_id: 7,
        local: dst.whole(),
    })
    .unwrap();
    qa.post_send(SendRequest::new(
        8,
        SendOp::SendImm(0xfeed_f00d),
        src.slice(0, 4).unwrap(),
    ))
    .unwrap();
    assert!(next(&p.a.cq).status.is_ok());
    let c = next(&p.b.rcq);
    assert_eq!((c.imm, c.byte_len), (Some(0xfeed_f00d), 4));
}

pub fn write_read_sizes(p: Pair) {
    let (qa, _qb) = p.connect();
    let max = *SIZES.last().unwrap();
    let target = p.b.region(
        max + 128,
        Access::REMOTE_WRITE | Access::REMOTE_READ | Access::LOCAL_WRITE,
    );
    let t = target.descriptor();
    let src = p.a.region(max, Access::NONE);
    let back = p.a.region(max, Access::LOCAL_WRITE);
    for (i, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, 40 + i as u8);
        src.write(0, &data).unwrap();
        qa.post_send(SendRequest::new(
            1,
            SendOp::Write(t.at(64)),
            src.slice(0, len).unwrap(),
        ))
        .unwrap();
        let c = next(&p.a.cq);
        assert_eq!(
            (c.wr_id, c.status, c.op),
            (1, CompletionStatus::Success, CompletionOp::Write)
        );
        let mut got = vec![0u8; len];
        target.read(64, &mut got).unwrap();
        assert!(got == data, "WRITE of {len} bytes differs at the target");
        // Change the target locally, READ it back.
        let fresh = pattern(len, 90 + i as u8);
        target.write(64, &fresh).unwrap();
        qa.post_send(SendRequest::new(
            2,
            SendOp::Read(t.at(64)),
            back.slice(0, len).unwrap(),
        ))
        .unwrap();
        let c = next(&p.a.cq);
        assert_eq!(
            (c.wr_id, c.status, c.op),
            (2, CompletionStatus::Success, CompletionOp::Read)
        );
        let mut got = vec![0u8; len];
        back.read(0, &mut got).unwrap();
        assert!(got == fresh, "READ of {len} bytes differs");
    }
}

pub fn write_with_immediate(p: Pair) {
    let (qa, qb) = p.connect();
    let target = p.b.region(4096, Access::REMOTE_WRITE);
    let recv = p.b.region(64, Access::LOCAL_WRITE);
    let src = p.a.region(4096, Access::NONE);
    src.write(0, &pattern(1000, 3)).unwrap();
    qb.post_recv(RecvRequest {
        wr_id: 55,
        local: recv.whole(),
    })
    .unwrap();
    qa.post_send(SendRequest::new(
        9,
        SendOp::WriteImm(target.descriptor().at(8), 0x1234_5678),
        src.slice(0, 1000).unwrap(),
    ))
    .unwrap();
    assert!(next(&p.a.cq).status.is_ok());
    let c = next(&p.b.rcq);
    assert_eq!(c.wr_id, 55);
    assert_eq!(c.op, CompletionOp::RecvWithImm);
    assert_eq!(c.imm, Some(0x1234_5678));
    assert_eq!(c.byte_len, 1000);
    let mut got = vec![0u8; 1000];
    target.read(8, &mut got).unwrap();
    assert_eq!(got, pattern(1000, 3));
    // Zero-length WRITE with immediate: a pure doorbell.
    qb.post_recv(RecvRequest {
        wr_id: 56,
        local: recv.whole(),
    })
    .unwrap();
    qa.post_send(SendRequest::new(
        10,
        SendOp::WriteImm(target.descriptor().at(0), 77),
        src.slice(0, 0).unwrap(),
    ))
    .unwrap();
    assert!(next(&p.a.cq).status.is_ok());
    let c = next(&p.b.rcq);
    assert_eq!((c.wr_id, c.imm, c.byte_len), (56, Some(77), 0));
}

pub fn batched_and_unsignaled(p: Pair) {
    let (qa, qb) = p.connect();
    let n = 32usize;
    let target =
        p.b.region(n * 256, Access::REMOTE_WRITE | Access::LOCAL_WRITE);
    let src = p.a.region(n * 256, Access::NONE);
    src.write(0, &pattern(n * 256, 11)).unwrap();
    let reqs: Vec<SendRequest> = (0..n)
        .map(|i| {
            let r = SendRequest::new(
                i as u64,
                SendOp::Write(target.descriptor().at((i * 256) as u64)),
                src.slice(i * 256, 256).unwrap(),
            );
            if i + 1 == n {
                r
            } else {
                r.unsignaled()
            }
        })
        .collect();
    qa.post_send_batch(reqs).unwrap();
    let c = next(&p.a.cq);
    assert_eq!(
        (c.wr_id, c.status),
        ((n - 1) as u64, CompletionStatus::Success)
    );
    let mut extra = Vec::new();
    assert_eq!(
        p.a.cq.poll(&mut extra, 16).unwrap(),
        0,
        "unsignaled requests completed: {extra:?}"
    );
    assert_eq!(
        qa.outstanding().0,
        0,
        "buffers of unsignaled requests not released"
    );
    let mut got = vec![0u8; n * 256];
    target.read(0, &mut got).unwrap();
    assert_eq!(got, pattern(n * 256, 11));

    // A batch of receives, then a batch of sends: completions in posting order.
    let rbuf = p.b.region(n * 64, Access::LOCAL_WRITE);
    qb.post_recv_batch((0..n).map(|i| RecvRequest {
        wr_id: 1000 + i as u64,
        local: rbuf.slice(i * 64, 64).unwrap(),
    }))
    .unwrap();
    qa.post_send_batch((0..n).map(|i| {
        SendRequest::new(
            2000 + i as u64,
            SendOp::SendImm(i as u32),
            src.slice(i, 8).unwrap(),
        )
    }))
    .unwrap();
    for i in 0..n {
        let c = next(&p.a.cq);
        assert_eq!(
            (c.wr_id, c.status),
            (2000 + i as u64, CompletionStatus::Success)
        );
        let c = next(&p.b.rcq);
        assert_eq!((c.wr_id, c.imm), (1000 + i as u64, Some(i as u32)));
    }
    // The queue depth is enforced.
    let big: Vec<SendRequest> = (0..(qa.capacity().max_send_wr as usize + 1))
        .map(|i| SendRequest::new(i as u64, SendOp::Send, src.slice(0, 1).unwrap()))
        .collect();
    assert!(matches!(
        qa.post_send_batch(big),
        Err(FabricError::QueueFull { .. })
    ));
}

pub fn expect_remote_access_error(
    p: &Pair,
    qa: &QueuePair,
    qb: &QueuePair,
    op: SendOp,
    local: LocalBuf,
    what: &str,
) {
    qa.post_send(SendRequest::new(99, op, local)).unwrap();
    let c = next(&p.a.cq);
    assert_eq!(c.wr_id, 99, "{what}");
    assert_eq!(c.status, CompletionStatus::RemoteAccessError, "{what}");
    // The initiator's queue pair is in error (may take a moment to be visible).
    let deadline = Instant::now() + PATIENCE;
    while qa.state().unwrap() != QpState::Error {
        assert!(
            Instant::now() < deadline,
            "{what}: initiator QP not in error"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for_responder_error(qb, what);
}

/// The responder moves its queue pair to error after a remote access violation, but rxe does
/// so only after it has sent the NAK: the initiator can see its error completion first. A
/// reconnect that resets the responder before that lands then fails (ERR -> INIT is invalid),
/// so wait for it.
fn wait_for_responder_error(qb: &QueuePair, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while qb.state().unwrap() != QpState::Error {
        assert!(
            Instant::now() < deadline,
            "{what}: responder QP not in error"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn access_violations(p: Pair) {
    let qa = p.a.qp();
    let qb = p.b.qp();
    let src = p.a.region(4096, Access::LOCAL_WRITE);
    let ro = p.b.region(4096, Access::REMOTE_READ);
    let wo = p.b.region(4096, Access::REMOTE_WRITE);
    let rw = p.b.region(4096, Access::REMOTE_READ | Access::REMOTE_WRITE);
    let cases: Vec<(&str, SendOp, usize)> = vec![
        (
            "write with a bad rkey",
            SendOp::Write(RemoteAddr {
                addr: rw.descriptor().addr,
                rkey: rw.descriptor().rkey ^ 0x5a5a_0000,
            }),
            16,
        ),
        (
            "write out of bounds",
            SendOp::Write(rw.descriptor().at(4090)),
            16,
        ),
        (
            "read out of bounds",
            SendOp::Read(rw.descriptor().at(4000)),
            200,
        ),
        (
            "write to a read-only region",
            SendOp::Write(ro.descriptor().at(0)),
            16,
        ),
        (
            "read of a write-only region",
            SendOp::Read(wo.descriptor().at(0)),
            16,
        ),
    ];
    for (what, op, len) in cases {
        p.reconnect(&qa, &qb);
        expect_remote_access_error(&p, &qa, &qb, op, src.slice(0, len).unwrap(), what);
    }
    // After the last error, reconnect and check the pair works again.
    p.reconnect(&qa, &qb);
    src.write(0, b"fine").unwrap();
    qa.post_send(SendRequest::new(
        5,
        SendOp::Write(rw.descriptor().at(0)),
        src.slice(0, 4).unwrap(),
    ))
    .unwrap();
    assert!(next(&p.a.cq).status.is_ok());
    let mut got = [0u8; 4];
    rw.read(0, &mut got).unwrap();
    assert_eq!(&got, b"fine");
    // Drain anything the responder flushed.
    let mut junk = Vec::new();
    let _ = p.b.rcq.poll(&mut junk, 64);
}

pub fn local_errors(p: Pair) {
    let (qa, qb) = p.connect();
    let no_write = p.a.region(64, Access::NONE);
    // A receive buffer must be locally writable; so must a READ destination.
    assert!(matches!(
        qb.post_recv(RecvRequest {
            wr_id: 1,
            local: p.b.region(64, Access::NONE).whole()
        }),
        Err(FabricError::LocalAccess { .. })
    ));
    assert!(matches!(
        qa.post_send(SendRequest::new(
            1,
            SendOp::Read(RemoteAddr { addr: 0, rkey: 1 }),
            no_write.whole()
        )),
        Err(FabricError::LocalAccess { .. })
    ));
    // A buffer of another protection domain is refused.
    let other_pd = p.a.dev.alloc_pd().unwrap();
    let foreign = other_pd.register(64, Access::LOCAL_WRITE).unwrap();
    assert!(matches!(
        qa.post_send(SendRequest::new(1, SendOp::Send, foreign.whole())),
        Err(FabricError::ProviderMismatch { .. })
    ));
    // Malformed endpoints are refused before touching the queue pair.
    let mut ep = qb.endpoint().unwrap();
    ep.qpn = 0;
    assert!(matches!(
        qa.connect(&ep, &p.opts),
        Err(FabricError::Endpoint(_))
    ));
    let mut ep = qb.endpoint().unwrap();
    ep.gid = Gid::default();
    assert!(matches!(
        qa.connect(&ep, &p.opts),
        Err(FabricError::Endpoint(EndpointError::ZeroGid))
    ));
    assert!(Endpoint::from_bytes(&[1, 2, 3]).is_err());
    // A receive too small for the message: local length error at the responder.
    let (qa, qb) = p.connect();
    let small = p.b.region(8, Access::LOCAL_WRITE);
    let src = p.a.region(64, Access::NONE);
    qb.post_recv(RecvRequest {
        wr_id: 3,
        local: small.whole(),
    })
    .unwrap();
    qa.post_send(SendRequest::new(4, SendOp::Send, src.whole()))
        .unwrap();
    let c = next(&p.b.rcq);
    assert_eq!(c.wr_id, 3);
    // The IB spec says local length error; Linux rxe reports a local QP operation error.
    assert!(
        matches!(
            c.status,
            CompletionStatus::LocalLengthError | CompletionStatus::LocalQpOperationError
        ),
        "receiver saw {:?}",
        c.status
    );
    let c = next(&p.a.cq);
    assert_eq!(c.wr_id, 4);
    assert!(!c.status.is_ok(), "sender saw {:?}", c.status);
}

pub fn buffers_outlive_handles(p: Pair) {
    let (qa, qb) = p.connect();
    let dst = p.b.region(1 << 16, Access::LOCAL_WRITE);
    qb.post_recv(RecvRequest {
        wr_id: 1,
        local: dst.whole(),
    })
    .unwrap();
    {
        // The only handle to the source region is dropped right after posting: the request
        // keeps the memory registered and alive until it completes.
        let src = p.a.region(1 << 16, Access::NONE);
        src.write(0, &pattern(1 << 16, 5)).unwrap();
        qa.post_send(SendRequest::new(2, SendOp::Send, src.whole()))
            .unwrap();
    }
    assert!(next(&p.a.cq).status.is_ok());
    assert_eq!(next(&p.b.rcq).byte_len, 1 << 16);
    let mut got = vec![0u8; 1 << 16];
    dst.read(0, &mut got).unwrap();
    assert_eq!(got, pattern(1 << 16, 5));
    assert_eq!(qa.outstanding(), (0, 0));
}

pub fn link_cut_errors_in_bounded_time(p: Pair) {
    let (qa, qb) = p.connect();
    let events = p.a.dev.subscribe_events();
    let target = p.b.region(4096, Access::REMOTE_WRITE);
    let src = p.a.region(4096, Access::NONE);
    // Prove the link works, then cut it.
    qa.post_send(SendRequest::new(
        1,
        SendOp::Write(target.descriptor().at(0)),
        src.slice(0, 64).unwrap(),
    ))
    .unwrap();
    assert!(next(&p.a.cq).status.is_ok());
    p.link.cut();
    let started = Instant::now();
    let post = qa.post_send(SendRequest::new(
        2,
        SendOp::Write(target.descriptor().at(0)),
        src.slice(0, 64).unwrap(),
    ));
    if post.is_ok() {
        let c = next(&p.a.cq);
        assert_eq!(c.wr_id, 2);
        assert!(!c.status.is_ok(), "a write over a cut link succeeded");
        eprintln!("link cut: {:?} after {:?}", c.status, started.elapsed());
    }
    // The port-down event arrives.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(AsyncEvent::PortDown { .. }) => break,
            Ok(_) => continue,
            Err(_) => panic!("no PortDown event after the cut"),
        }
    }
    p.link.heal();
    // Wait for the port, then reconnect and the pair works again.
    let deadline = Instant::now() + PATIENCE;
    while !p.a.dev.port_active().unwrap() || !p.b.dev.port_active().unwrap() {
        assert!(Instant::now() < deadline, "port did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        qa.reset().unwrap();
        qb.reset().unwrap();
        p.reconnect(&qa, &qb);
        qa.post_send(SendRequest::new(
            3,
            SendOp::Write(target.descriptor().at(0)),
            src.slice(0, 64).unwrap(),
        ))
        .unwrap();
        let c = next(&p.a.cq);
        if c.status.is_ok() {
            break;
        }
        // RoCE may need a moment for neighbour resolution after the link returns.
        assert!(
            Instant::now() < deadline,
            "pair did not recover after heal: {:?}",
            c.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn reconnect_after_error(p: Pair) {
    let (qa, qb) = p.connect();
    let dst = p.b.region(64, Access::LOCAL_WRITE);
    let src = p.a.region(64, Access::NONE);
    qb.post_recv_batch((0..4).map(|i| RecvRequest {
        wr_id: i,
        local: dst.whole(),
    }))
    .unwrap();
    // Force both into error: posted receives are flushed.
    qb.set_error().unwrap();
    for _ in 0..4 {
        let c = next(&p.b.rcq);
        assert_eq!(c.status, CompletionStatus::WorkRequestFlushed);
    }
    assert_eq!(qb.state().unwrap(), QpState::Error);
    qa.set_error().unwrap();
    p.reconnect(&qa, &qb);
    let (sent, got) = send_again(&p, &qa, &qb, &src, &dst);
    assert!(sent.status.is_ok());
    assert_eq!((got.wr_id, got.byte_len), (9, 5));
}

/// After a re-connect: B posts one receive (wr_id 9) into `dst`, A sends "again" (wr_id 10)
/// from `src`; returns A's send completion and B's receive completion.
fn send_again(
    p: &Pair,
    qa: &QueuePair,
    qb: &QueuePair,
    src: &MemoryRegion,
    dst: &MemoryRegion,
) -> (Completion, Completion) {
    qb.post_recv(RecvRequest {
        wr_id: 9,
        local: dst.whole(),
    })
    .unwrap();
    src.write(0, b"again").unwrap();
    qa.post_send(SendRequest::new(10, SendOp::Send, src.slice(0, 5).unwrap()))
        .unwrap();
    (next(&p.a.cq), next(&p.b.rcq))
}

/// A connected queue pair connected again in place (what the cluster manager does when the
/// partner replaced its side): its epoch changes, the receives posted before are discarded
/// without completions, and only receives posted afterwards take the peer's sends. A user that
/// keeps posting on it must see the new epoch and post its receives again.
pub fn reconnect_in_place_discards_posted(p: Pair) {
    let (qa, qb) = p.connect();
    let (ea, eb) = (qa.epoch(), qb.epoch());
    let dst = p.b.region(64, Access::LOCAL_WRITE);
    let src = p.a.region(64, Access::NONE);
    qb.post_recv_batch((0..4).map(|i| RecvRequest {
        wr_id: i,
        local: dst.whole(),
    }))
    .unwrap();
    assert_eq!(qb.outstanding(), (0, 4));
    p.reconnect(&qa, &qb);
    assert_eq!((qa.epoch(), qb.epoch()), (ea + 1, eb + 1));
    assert_eq!(qb.outstanding(), (0, 0), "receives survived the re-connect");
    let (sent, got) = send_again(&p, &qa, &qb, &src, &dst);
    assert_eq!((sent.wr_id, sent.status), (10, CompletionStatus::Success));
    assert_eq!(
        (got.wr_id, got.status, got.byte_len),
        (9, CompletionStatus::Success, 5)
    );
    // Nothing of the discarded receives ever completes.
    let late = p.b.rcq.next(Duration::from_millis(100)).expect("poll cq");
    assert!(late.is_none(), "a discarded receive completed: {late:?}");
    qb.reset().unwrap();
    assert_eq!(qb.epoch(), eb + 2);
}

/// Generates one `#[test]` per suite case for a pair constructor.
#[macro_export]
macro_rules! fabric_suite {
    ($make:expr $(, #[$attr:meta])* ; cut: $cut:tt) => {
        $crate::fabric_suite!(@case $make, [$(#[$attr])*], register_and_describe, send_recv_sizes,
            write_read_sizes, write_with_immediate, batched_and_unsignaled, access_violations,
            local_errors, buffers_outlive_handles, reconnect_after_error, reconnect_in_place_discards_posted,
            endpoint_pointing_nowhere,
            revoke_kills_rkey, revoke_local_post_fails);
        $crate::fabric_suite!(@cut $make, [$(#[$attr])*], $cut);
    };
    (@case $make:expr, [$($attrs:tt)*], $name:ident $(, $rest:ident)*) => {
        #[test]
        $($attrs)*
        fn $name() {
            suite::$name($make(0));
        }
        $crate::fabric_suite!(@case $make, [$($attrs)*] $(, $rest)*);
    };
    (@case $make:expr, [$($attrs:tt)*]) => {};
    (@cut $make:expr, [$($attrs:tt)*], yes) => {
        #[test]
        $($attrs)*
        fn link_cut_errors_in_bounded_time() {
            // Its own link, so cutting it does not disturb the cases running in parallel.
            suite::link_cut_errors_in_bounded_time($make(1));
        }
    };
    (@cut $make:expr, [$($attrs:tt)*], no) => {};
}

/// Connecting to an endpoint whose queue pair does not exist: requests fail with
/// `RetryExceeded` in bounded time, nothing panics.
pub fn endpoint_pointing_nowhere(p: Pair) {
    let qa = p.a.qp();
    let qb = p.b.qp();
    let mut ghost = qb.endpoint().unwrap();
    ghost.qpn = (ghost.qpn + 0x1000) & 0x00ff_ffff;
    qa.connect(&ghost, &p.opts).unwrap();
    let src = p.a.region(64, Access::NONE);
    qa.post_send(SendRequest::new(1, SendOp::Send, src.whole()))
        .unwrap();
    let c = next(&p.a.cq);
    assert_eq!((c.wr_id, c.status), (1, CompletionStatus::RetryExceeded));
    // rxe posts the error completion before it moves the QP to error.
    wait_for_error_state(&qa, "retry exceeded");
}

/// What the requester sees for a READ/WRITE naming a revoked region's rkey. Both providers
/// report `RemoteAccessError`: the soft provider refuses it as an unknown rkey, and Linux rxe
/// finds no MR for the deregistered key and NAKs with a remote access error.
const REVOKED_RKEY_STATUS: [CompletionStatus; 1] = [CompletionStatus::RemoteAccessError];

fn wait_for_error_state(qp: &QueuePair, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while qp.state().unwrap() != QpState::Error {
        assert!(Instant::now() < deadline, "{what}: QP not in error");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Revoking a region kills its rkey for the peer at once, while its memory (and what was
/// written into it before) stays readable and writable locally.
pub fn revoke_kills_rkey(p: Pair) {
    let (qa, qb) = p.connect();
    let target = p.b.region(4096, Access::REMOTE_WRITE | Access::REMOTE_READ);
    let t = target.descriptor();
    let src = p.a.region(4096, Access::LOCAL_WRITE);
    src.write(0, b"before revoke").unwrap();
    qa.post_send(SendRequest::new(
        1,
        SendOp::Write(t.at(0)),
        src.slice(0, 13).unwrap(),
    ))
    .unwrap();
    let c = next(&p.a.cq);
    assert_eq!((c.wr_id, c.status), (1, CompletionStatus::Success));

    // A clone is still held (as a torn-down client would): revoke acts for every clone.
    let held = target.clone();
    assert!(!target.is_revoked());
    target.revoke().unwrap();
    assert!(target.is_revoked() && held.is_revoked());
    assert_eq!(
        held.descriptor(),
        t,
        "descriptor keeps the (dead) registered values"
    );

    // WRITE with the old descriptor: remote access error, initiator QP to error.
    src.write(0, b"after revoke!").unwrap();
    qa.post_send(SendRequest::new(
        2,
        SendOp::Write(t.at(0)),
        src.slice(0, 13).unwrap(),
    ))
    .unwrap();
    let c = next(&p.a.cq);
    assert_eq!(c.wr_id, 2);
    assert!(
        REVOKED_RKEY_STATUS.contains(&c.status),
        "WRITE with a revoked rkey: {:?}",
        c.status
    );
    wait_for_error_state(&qa, "WRITE with a revoked rkey");
    wait_for_responder_error(&qb, "WRITE with a revoked rkey");

    // READ with the old descriptor fails the same way.
    p.reconnect(&qa, &qb);
    qa.post_send(SendRequest::new(
        3,
        SendOp::Read(t.at(0)),
        src.slice(100, 13).unwrap(),
    ))
    .unwrap();
    let c = next(&p.a.cq);
    assert_eq!(c.wr_id, 3);
    assert!(
        REVOKED_RKEY_STATUS.contains(&c.status),
        "READ with a revoked rkey: {:?}",
        c.status
    );
    wait_for_error_state(&qa, "READ with a revoked rkey");
    let mut got = [0u8; 13];
    src.read(100, &mut got).unwrap();
    assert_eq!(got, [0u8; 13], "a refused READ delivered data");

    // The bytes written before revocation are still there (the refused WRITE changed
    // nothing), and the memory is still locally usable through any clone.
    let mut got = [0u8; 13];
    held.read(0, &mut got).unwrap();
    assert_eq!(&got, b"before revoke");
    held.write_u64(16, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(target.read_u64(16).unwrap(), 0x1122_3344_5566_7788);
    held.write(100, b"local").unwrap();
    let mut got = [0u8; 5];
    target.read(100, &mut got).unwrap();
    assert_eq!(&got, b"local");

    // Revoking is idempotent; dropping the revoked clones frees the memory without a second
    // deregistration.
    held.revoke().unwrap();
    drop(held);
    drop(target);
    // Drain what the responder flushed.
    let mut junk = Vec::new();
    let _ = p.b.rcq.poll(&mut junk, 64);
}

/// Posting a buffer of a revoked region fails at post time with `Revoked`; nothing is posted,
/// so the queue pair keeps working. A receive already posted into a region that is then
/// revoked completes with an error.
pub fn revoke_local_post_fails(p: Pair) {
    let (qa, qb) = p.connect();
    let region = p.a.region(256, Access::LOCAL_WRITE);
    region.write(0, b"payload").unwrap();
    let early = region.slice(0, 7).unwrap();
    region.revoke().unwrap();
    region.revoke().unwrap();
    assert!(region.is_revoked());

    let revoked = |r: Result<()>, what: &str| match r {
        Err(FabricError::Revoked { .. }) => {}
        other => panic!("{what}: expected Err(Revoked), got {other:?}"),
    };
    // A buffer built before the revoke, and one built after it (slice/whole still work).
    revoked(
        qa.post_send(SendRequest::new(1, SendOp::Send, early.clone())),
        "SEND of a buffer sliced before revoke",
    );
    revoked(
        qa.post_send(SendRequest::new(2, SendOp::Send, region.whole())),
        "SEND of a buffer built after revoke",
    );
    revoked(
        qa.post_send(SendRequest::new(
            3,
            SendOp::Read(RemoteAddr { addr: 0, rkey: 1 }),
            region.slice(8, 8).unwrap(),
        )),
        "READ into a revoked region",
    );
    revoked(
        qa.post_recv(RecvRequest {
            wr_id: 4,
            local: region.whole(),
        }),
        "receive into a revoked region",
    );
    // A batch with one revoked buffer is refused as a whole.
    let good = p.a.region(64, Access::NONE);
    revoked(
        qa.post_send_batch([
            SendRequest::new(5, SendOp::Send, good.whole()),
            SendRequest::new(6, SendOp::Send, early.clone()),
        ]),
        "batch with a revoked buffer",
    );
    assert_eq!(qa.outstanding(), (0, 0));
    assert_eq!(qa.state().unwrap(), QpState::ReadyToSend);

    // Nothing was posted: the pair still works, and the revoked memory is still readable.
    let dst = p.b.region(64, Access::LOCAL_WRITE);
    qb.post_recv(RecvRequest {
        wr_id: 7,
        local: dst.whole(),
    })
    .unwrap();
    good.write(0, b"fresh").unwrap();
    qa.post_send(SendRequest::new(8, SendOp::Send, good.slice(0, 5).unwrap()))
        .unwrap();
    assert_eq!(next(&p.a.cq).status, CompletionStatus::Success);
    let c = next(&p.b.rcq);
    assert_eq!(
        (c.wr_id, c.status, c.byte_len),
        (7, CompletionStatus::Success, 5)
    );
    let mut got = [0u8; 7];
    region.read(0, &mut got).unwrap();
    assert_eq!(&got, b"payload");

    // A receive posted before its region is revoked: the SEND that would land in it fails.
    let late = p.b.region(64, Access::LOCAL_WRITE);
    qb.post_recv(RecvRequest {
        wr_id: 9,
        local: late.whole(),
    })
    .unwrap();
    late.revoke().unwrap();
    qa.post_send(SendRequest::new(
        10,
        SendOp::Send,
        good.slice(0, 5).unwrap(),
    ))
    .unwrap();
    // The soft provider finds no region for the receive's lkey (a local protection error, as
    // the IB spec has it); Linux rxe reports a local QP operation error. Both NAK the sender
    // with a remote operation error.
    let rc = next(&p.b.rcq);
    let sc = next(&p.a.cq);
    assert_eq!(rc.wr_id, 9);
    let expected = match p.b.dev.provider() {
        ProviderKind::Soft => CompletionStatus::LocalProtectionError,
        ProviderKind::Verbs => CompletionStatus::LocalQpOperationError,
    };
    assert_eq!(rc.status, expected, "receive into a revoked region");
    assert_eq!(
        (sc.wr_id, sc.status),
        (10, CompletionStatus::RemoteOperationError),
        "SEND into a receive in a revoked region"
    );
    assert_eq!(
        qb.outstanding().1,
        0,
        "the failed receive's buffer was not released"
    );

    // Dropping revoked regions (and buffers naming them) is fine.
    drop(early);
    drop(region);
    drop(late);
}
