//! The fabric suite on the soft provider over the in-process simulated network.
use crate::{fabric_suite, suite};
use suite::Pair;

fabric_suite!(Pair::sim; cut: yes);

/// Under seeded loss, duplication and reordering, every request still completes once, in order,
/// with the right data (the reliable-connected protocol retransmits and discards duplicates).
#[test]
fn survives_seeded_faults() {
    use interlink::fabric::*;
    for seed in 0..8u64 {
        let mut p = Pair::sim(0);
        // Generous retries (7, each after ~67 ms): under 10% loss a request and all its
        // retransmissions being lost is then negligible, and a loaded host's scheduling delays
        // fit inside the timers (with the suite's fast 16 ms x 3, a CI run on a busy machine
        // exhausted them).
        p.opts = ConnectOptions {
            ack_timeout: 14,
            retry_count: 7,
            ..p.opts
        };
        let suite::Link::Sim(net, ..) = &p.link else {
            unreachable!()
        };
        let net = net.clone();
        let (qa, qb) = p.connect();
        net.set_faults(FaultConfig {
            drop: 0.1,
            duplicate: 0.1,
            delay_min: std::time::Duration::ZERO,
            delay_max: std::time::Duration::from_millis(3),
        });
        let _ = seed;
        let n = 64usize;
        let src = p.a.region(n * 32, Access::NONE);
        src.write(0, &suite::pattern(n * 32, seed as u8)).unwrap();
        let dst = p.b.region(n * 32, Access::LOCAL_WRITE);
        qb.post_recv_batch((0..n).map(|i| RecvRequest {
            wr_id: i as u64,
            local: dst.slice(i * 32, 32).unwrap(),
        }))
        .unwrap();
        for i in 0..n {
            qa.post_send(SendRequest::new(
                i as u64,
                SendOp::Send,
                src.slice(i * 32, 32).unwrap(),
            ))
            .unwrap();
        }
        for i in 0..n {
            let c = suite::next(&p.a.cq);
            assert_eq!(
                (c.wr_id, c.status),
                (i as u64, CompletionStatus::Success),
                "seed {seed}"
            );
            let c = suite::next(&p.b.rcq);
            assert_eq!(
                (c.wr_id, c.status),
                (i as u64, CompletionStatus::Success),
                "seed {seed}"
            );
        }
        let mut got = vec![0u8; n * 32];
        dst.read(0, &mut got).unwrap();
        assert_eq!(got, suite::pattern(n * 32, seed as u8), "seed {seed}");
        let stats = net.stats();
        assert!(
            stats.dropped > 0 && stats.duplicated > 0,
            "faults were not injected: {stats:?}"
        );
    }
}

/// A partition (no port event) still gives `RetryExceeded` in bounded time.
#[test]
fn partition_gives_retry_exceeded() {
    use interlink::fabric::*;
    let p = Pair::sim(0);
    let suite::Link::Sim(net, ..) = &p.link else {
        unreachable!()
    };
    let (qa, _qb) = p.connect();
    net.partition(&["a"], &["b"]);
    let src = p.a.region(64, Access::NONE);
    qa.post_send(SendRequest::new(1, SendOp::Send, src.whole()))
        .unwrap();
    qa.post_send(SendRequest::new(2, SendOp::Send, src.whole()).unsignaled())
        .unwrap();
    let started = std::time::Instant::now();
    let c = suite::next(&p.a.cq);
    assert_eq!((c.wr_id, c.status), (1, CompletionStatus::RetryExceeded));
    let bound = p.opts.give_up_after().unwrap() * 4 + std::time::Duration::from_secs(1);
    assert!(
        started.elapsed() < bound,
        "took {:?}, bound {bound:?}",
        started.elapsed()
    );
    let c = suite::next(&p.a.cq);
    assert_eq!(
        (c.wr_id, c.status),
        (2, CompletionStatus::WorkRequestFlushed)
    );
    assert_eq!(qa.state().unwrap(), QpState::Error);
}

/// RNR: a SEND before the receive is posted waits and then lands.
#[test]
fn receiver_not_ready_retries() {
    use interlink::fabric::*;
    let p = Pair::sim(0);
    let (qa, qb) = p.connect();
    let src = p.a.region(8, Access::NONE);
    let dst = p.b.region(8, Access::LOCAL_WRITE);
    src.write(0, b"late rcv").unwrap();
    qa.post_send(SendRequest::new(1, SendOp::Send, src.whole()))
        .unwrap();
    // B has NAKed the SEND at least once before its receive is posted.
    let t0 = std::time::Instant::now();
    while p.a.dev.soft_rnr_naks().expect("soft provider") == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no RNR NAK"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    qb.post_recv(RecvRequest {
        wr_id: 2,
        local: dst.whole(),
    })
    .unwrap();
    assert!(suite::next(&p.a.cq).status.is_ok());
    assert_eq!(suite::next(&p.b.rcq).byte_len, 8);
}

/// Access violations are counted on the target.
#[test]
fn violations_counted_on_target() {
    use interlink::fabric::*;
    let net = SimNet::new(1);
    let a = interlink::fabric::soft::SoftDevice::open_sim(&net, "x").unwrap();
    assert_eq!(a.access_violations(), 0);
    let p = Pair::sim(0);
    let (qa, _qb) = p.connect();
    let src = p.a.region(8, Access::NONE);
    qa.post_send(SendRequest::new(
        1,
        SendOp::Write(RemoteAddr {
            addr: 0,
            rkey: 0xdead,
        }),
        src.whole(),
    ))
    .unwrap();
    assert_eq!(
        suite::next(&p.a.cq).status,
        CompletionStatus::RemoteAccessError
    );
}
