//! The fabric suite on the soft provider over TCP: on loopback, and across the ilA/ilB network
//! namespaces (`soft-roce/netns-up`, root). The namespace tests are selected explicitly with
//! `--ignored` (the README's test command does so after creating the namespaces); selected
//! without the namespaces they fail.
use crate::{fabric_suite, suite};
use suite::Pair;

mod loopback {
    use super::*;
    fabric_suite!(Pair::tcp_loopback; cut: no);
}

mod netns {
    use super::*;
    fabric_suite!(Pair::tcp_netns, #[ignore = "needs soft-roce/netns-up (root); run with --ignored"]; cut: yes);
}

/// A forged acknowledgement (issue 16 item 1, the part rxe does too): a process that can reach
/// the requester's soft listener sends ACKs from the responder's QPN for PSNs ahead of what
/// was sent (before, any PSN in the half-space ahead completed every outstanding WRITE that
/// never reached the target). They are dropped and counted; the WRITE, whose target stopped
/// answering, fails on its retries instead of completing.
mod forged_ack {
    use super::suite::Pair;
    use interlink::fabric::soft::wire::{psn_add, Body, Packet, Syndrome};
    use interlink::fabric::{Access, CompletionStatus, SendOp, SendRequest};
    use std::time::Duration;

    #[test]
    fn acks_for_psns_not_outstanding_are_dropped() {
        let mut p = Pair::tcp_loopback(0);
        // The WRITE stays outstanding for seconds (7 retries of ~1 s): every forged ACK
        // arrives while it does, even on a loaded host.
        p.opts = interlink::fabric::ConnectOptions {
            ack_timeout: 18,
            retry_count: 7,
            ..p.opts
        };
        let (qa, qb) = p.connect();
        let (ea, eb) = (qa.endpoint().unwrap(), qb.endpoint().unwrap());
        let target = p.b.region(4096, Access::REMOTE_WRITE);
        let t = target.descriptor();
        let src = p.a.region(4096, Access::NONE);
        // B stops answering: its queue pair goes to RESET.
        qb.reset().unwrap();
        qa.post_send(SendRequest::new(
            7,
            SendOp::Write(t.at(0)),
            src.slice(0, 4096).unwrap(),
        ))
        .unwrap();
        let before = p.a.dev.soft_stale_responses().unwrap();
        // ACKs for every 4096th PSN ahead of A's first PSN: 2,048 guesses over the space, none
        // naming the one PSN outstanding (A's first).
        let frames: Vec<Vec<u8>> = (1..2049u32)
            .map(|k| {
                let mut frame = Vec::new();
                Packet {
                    dst_qpn: ea.qpn,
                    src_qpn: eb.qpn,
                    psn: psn_add(ea.psn, k * 4096),
                    body: Body::Ack {
                        syndrome: Syndrome::Ack,
                    },
                }
                .encode(&mut frame);
                frame
            })
            .collect();
        super::suite::send_soft_frames(&ea, frames.iter().map(Vec::as_slice));
        let t0 = std::time::Instant::now();
        while p.a.dev.soft_stale_responses().unwrap() < before + 2048 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}",
                p.a.dev.soft_stale_responses()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let c =
            p.a.cq
                .next(Duration::from_secs(60))
                .unwrap()
                .expect("a completion");
        assert_eq!(c.wr_id, 7);
        assert_eq!(
            c.status,
            CompletionStatus::RetryExceeded,
            "the forged ACKs completed a WRITE that never reached the target"
        );
    }
}

/// Packets sealed under the connection's key (docs/security.md P16): on a keyed connection a
/// forger who knows the QPNs, the PSN and the rkey (everything an on-path observer sees) gets
/// nothing through without the key: a WRITE to the target and an ACK for the one PSN
/// outstanding are dropped and counted. The same packets on a connection without a key are
/// taken (the positive control: each test fails if the check is gone).
mod packet_auth {
    use super::suite::Pair;
    use interlink::fabric::soft::wire::{psn_add, Body, Packet, Syndrome};
    use interlink::fabric::{
        Access, CompletionStatus, ConnectOptions, PacketKey, QueuePair, SendOp, SendRequest,
    };
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_secs(60);

    fn keyed(p: &mut Pair, key: Option<[u8; 32]>) {
        p.opts = ConnectOptions {
            // An outstanding WRITE waits about 2 s before RetryExceeded.
            ack_timeout: 16,
            retry_count: 7,
            packet_key: key.map(PacketKey::from_bytes),
            ..p.opts
        };
    }

    /// Sends `pkt` to the soft listener of `to` as a forger would (length-prefixed frame),
    /// with `tag` appended and the tag flag set when given (a tag made without the key).
    fn forge(to: &QueuePair, pkt: &Packet<'_>, tag: Option<[u8; 16]>) {
        let ep = to.endpoint().unwrap();
        let mut frame = Vec::new();
        pkt.encode(&mut frame);
        if let Some(tag) = tag {
            frame[3] |= 1;
            frame.extend_from_slice(&tag);
        }
        super::suite::send_soft_frames(&ep, [frame.as_slice()]);
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A genuine WRITE of `byte` at offset 0 from A, completed `Success`.
    fn genuine_write(p: &Pair, qa: &QueuePair, target: u64, rkey: u32, byte: u8, id: u64) {
        let src = p.a.region(64, Access::NONE);
        src.write(0, &[byte; 8]).unwrap();
        let at = interlink::fabric::RemoteAddr { addr: target, rkey };
        qa.post_send(SendRequest::new(
            id,
            SendOp::Write(at),
            src.slice(0, 8).unwrap(),
        ))
        .unwrap();
        let c = p.a.cq.next(WAIT).unwrap().expect("a completion");
        assert_eq!((c.wr_id, c.status), (id, CompletionStatus::Success));
    }

    /// Returns the target's first 8 bytes after a forged WRITE of b"forged!!" at the PSN B
    /// expects, and how many packets B dropped as unauthenticated meanwhile.
    fn forged_write(key: Option<[u8; 32]>) -> ([u8; 8], u64) {
        let mut p = Pair::tcp_loopback(0);
        keyed(&mut p, key);
        let (qa, qb) = p.connect();
        let (ea, eb) = (qa.endpoint().unwrap(), qb.endpoint().unwrap());
        let target = p.b.region(4096, Access::REMOTE_WRITE);
        let t = target.descriptor();
        genuine_write(&p, &qa, t.addr, t.rkey, 0x11, 1);
        let before = p.b.dev.soft_unauthenticated().unwrap();
        let pkt = Packet {
            dst_qpn: eb.qpn,
            src_qpn: ea.qpn,
            psn: psn_add(ea.psn, 1),
            body: Body::Write {
                addr: t.addr,
                rkey: t.rkey,
                imm: None,
                payload: b"forged!!",
            },
        };
        forge(&qb, &pkt, None);
        forge(&qb, &pkt, Some([0x5a; 16]));
        if key.is_some() {
            wait_for("both forged WRITEs dropped", || {
                p.b.dev.soft_unauthenticated().unwrap() >= before + 2
            });
        }
        // A genuine WRITE at the next PSN: taken only if no forged one took that PSN.
        let after = p.b.dev.soft_unauthenticated().unwrap() - before;
        if key.is_some() {
            genuine_write(&p, &qa, t.addr + 64, t.rkey, 0x22, 2);
            let mut second = [0u8; 8];
            target.read(64, &mut second).unwrap();
            assert_eq!(second, [0x22; 8], "the genuine WRITE after the forged ones");
        } else {
            wait_for("the forged WRITE executed", || {
                let mut b = [0u8; 8];
                target.read(0, &mut b).unwrap();
                &b == b"forged!!"
            });
        }
        let mut first = [0u8; 8];
        target.read(0, &mut first).unwrap();
        (first, after)
    }

    #[test]
    fn a_forged_write_reaches_no_memory_of_a_keyed_connection() {
        let (bytes, dropped) = forged_write(Some([3; 32]));
        assert_eq!(bytes, [0x11; 8], "a forged WRITE reached the target");
        assert_eq!(dropped, 2);
        // The control: without a key the same WRITE is executed.
        let (bytes, _) = forged_write(None);
        assert_eq!(&bytes, b"forged!!");
    }

    /// A forged ACK for the one PSN outstanding (which the PSN rules of P15 take).
    fn forged_ack(key: Option<[u8; 32]>) -> (CompletionStatus, u64) {
        let mut p = Pair::tcp_loopback(0);
        keyed(&mut p, key);
        let (qa, qb) = p.connect();
        let (ea, eb) = (qa.endpoint().unwrap(), qb.endpoint().unwrap());
        let target = p.b.region(4096, Access::REMOTE_WRITE);
        let t = target.descriptor();
        let src = p.a.region(4096, Access::NONE);
        // B stops answering: its queue pair goes to RESET.
        qb.reset().unwrap();
        let before = p.a.dev.soft_unauthenticated().unwrap();
        qa.post_send(SendRequest::new(
            7,
            SendOp::Write(t.at(0)),
            src.slice(0, 4096).unwrap(),
        ))
        .unwrap();
        let ack = Packet {
            dst_qpn: ea.qpn,
            src_qpn: eb.qpn,
            psn: ea.psn,
            body: Body::Ack {
                syndrome: Syndrome::Ack,
            },
        };
        forge(&qa, &ack, None);
        forge(&qa, &ack, Some([0xa5; 16]));
        let c = p.a.cq.next(WAIT).unwrap().expect("a completion");
        assert_eq!(c.wr_id, 7);
        (c.status, p.a.dev.soft_unauthenticated().unwrap() - before)
    }

    #[test]
    fn a_forged_ack_for_the_outstanding_psn_completes_nothing_on_a_keyed_connection() {
        let (status, dropped) = forged_ack(Some([4; 32]));
        assert_eq!(
            status,
            CompletionStatus::RetryExceeded,
            "a forged ACK completed a WRITE that never reached the target"
        );
        assert_eq!(dropped, 2);
        // The control: without a key the forged ACK completes it.
        let (status, _) = forged_ack(None);
        assert_eq!(status, CompletionStatus::Success);
    }

    /// Both ends keyed alike: traffic flows, nothing is dropped; ends keyed differently
    /// drop each other's packets and the WRITE fails on its retries.
    #[test]
    fn both_ends_need_the_same_key() {
        let mut p = Pair::tcp_loopback(0);
        keyed(&mut p, Some([5; 32]));
        let (qa, qb) = p.connect();
        let target = p.b.region(4096, Access::REMOTE_WRITE);
        let t = target.descriptor();
        for i in 0..50 {
            genuine_write(&p, &qa, t.addr, t.rkey, i as u8, i);
        }
        assert_eq!(p.a.dev.soft_unauthenticated(), Some(0));
        assert_eq!(p.b.dev.soft_unauthenticated(), Some(0));
        // B reconnects under another key.
        let other = ConnectOptions {
            packet_key: Some(PacketKey::from_bytes([6; 32])),
            ..p.opts
        };
        qb.connect(&qa.endpoint().unwrap(), &other).unwrap();
        let src = p.a.region(64, Access::NONE);
        qa.post_send(SendRequest::new(
            99,
            SendOp::Write(t.at(0)),
            src.slice(0, 8).unwrap(),
        ))
        .unwrap();
        let c = p.a.cq.next(WAIT).unwrap().expect("a completion");
        assert_eq!((c.wr_id, c.status), (99, CompletionStatus::RetryExceeded));
        assert!(p.b.dev.soft_unauthenticated().unwrap() >= 1);
    }
}
