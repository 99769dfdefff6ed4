//! PSN rules of the soft RC protocol (docs/security.md P15), driven on one queue pair with
//! no engine thread and no socket: the test plays the peer, hands each packet to
//! `QpCore::handle_packet` itself and reads what the queue pair sent from the peer's inbox
//! on an in-process network (zero delay: a packet is there as soon as the call returns).

use super::*;
use crate::fabric::soft::packet_buf::Inbox;
use crate::fabric::soft::sim::Node;
use crate::fabric::soft::{SimNet, SoftDevice, SoftMr, Transport};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

/// The peer's queue pair number (the one the queue pair under test is connected to).
const PEER_QPN: u32 = 0x4242;

/// What the queue pair under test put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    /// ACK or NAK for this PSN.
    Ack(u32, Syndrome),
    /// READ response for this PSN, with its payload.
    ReadResponse(u32, Vec<u8>),
    /// A request (SEND, WRITE, READ) with this PSN, and its bytes.
    Request(u32, Vec<u8>),
}

/// One queue pair connected to a peer the test plays by hand.
struct Rig {
    _net: SimNet,
    dev: Arc<SoftDevice>,
    pd: Arc<SoftPd>,
    cq: Arc<SoftCq>,
    qp: SoftQp,
    /// The peer's inbox: everything the queue pair sends.
    wire: Arc<Inbox>,
    /// Responder memory (remote read and write).
    mem: SoftMr,
}

impl Rig {
    /// A queue pair in RTS whose requests start at `local_psn` and whose responder expects
    /// `expected_psn` first.
    fn new(local_psn: u32, expected_psn: u32) -> Rig {
        let net = SimNet::new(7);
        let wire = Arc::new(Inbox::default());
        let node = |name: &str, inbox: Arc<Inbox>| Node {
            name: name.to_string(),
            inbox,
            events: Arc::new(|_| {}),
        };
        let peer_gid = net.attach(node("peer", wire.clone())).unwrap();
        let gid = net
            .attach(node("under-test", Arc::new(Inbox::default())))
            .unwrap();
        let shared = Arc::new(DeviceShared {
            name: "under-test".into(),
            gid,
            lid: 0,
            transport: Transport::Sim(net.clone(), gid),
            qps: RwLock::new(HashMap::new()),
            stale_responses: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            rnr_naks: AtomicU64::new(0),
            regions: RwLock::new(HashMap::new()),
            next_qpn: AtomicU32::new(0x100),
            next_key: AtomicU32::new(1),
            next_pd: AtomicU32::new(1),
            next_addr: AtomicU64::new(0x7f00_0000_0000),
            violations: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            port_up: AtomicBool::new(true),
            iface: None,
            stop: AtomicBool::new(false),
        });
        // No engine thread: packets reach the queue pair only through `deliver`.
        let dev = Arc::new(SoftDevice {
            shared,
            threads: Mutex::new(Vec::new()),
        });
        let pd = SoftPd::new(&dev);
        let cq = SoftCq::new(&dev, 64);
        let qp = SoftQp::new(&pd, &cq, &cq, QpCapacity::default()).unwrap();
        let peer = Endpoint {
            qpn: PEER_QPN,
            psn: expected_psn,
            gid: peer_gid,
            lid: 0,
            mtu: Mtu::M4096,
        };
        qp.connect(local_psn, &peer, &ConnectOptions::default())
            .unwrap();
        let mem = SoftMr::register(
            &pd,
            64,
            Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
        )
        .unwrap();
        Rig {
            _net: net,
            dev,
            pd,
            cq,
            qp,
            wire,
            mem,
        }
    }

    /// Hands one packet from the peer to the queue pair.
    fn deliver(&self, psn: u32, body: Body<'_>) {
        let p = Packet {
            dst_qpn: self.qp.qpn(),
            src_qpn: PEER_QPN,
            psn,
            body,
        };
        self.qp
            .core
            .handle_packet(&self.dev.shared, &p, Instant::now());
    }

    /// A WRITE of `payload` at `off` of the responder memory.
    fn write_req(&self, off: u64, payload: &'static [u8]) -> Body<'static> {
        let d = self.mem.descriptor();
        Body::Write {
            addr: d.addr + off,
            rkey: d.rkey,
            imm: None,
            payload,
        }
    }

    /// A READ of `len` bytes at `off` of the responder memory.
    fn read_req(&self, off: u64, len: u32) -> Body<'static> {
        let d = self.mem.descriptor();
        Body::ReadRequest {
            addr: d.addr + off,
            rkey: d.rkey,
            len,
        }
    }

    fn ack(&self, psn: u32, syndrome: Syndrome) {
        self.deliver(psn, Body::Ack { syndrome });
    }

    /// Everything the queue pair sent since the last call.
    fn sent(&self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(b) = self.wire.pop_timeout(Duration::ZERO) {
            let p = Packet::decode(&b).unwrap();
            assert_eq!((p.dst_qpn, p.src_qpn), (PEER_QPN, self.qp.qpn()));
            out.push(match p.body {
                Body::Ack { syndrome } => Out::Ack(p.psn, syndrome),
                Body::ReadResponse { payload } => Out::ReadResponse(p.psn, payload.to_vec()),
                _ => Out::Request(p.psn, b.to_vec()),
            });
        }
        out
    }

    /// The requests sent since the last call, with their PSNs.
    fn sent_requests(&self) -> Vec<(u32, Vec<u8>)> {
        self.sent()
            .into_iter()
            .map(|o| match o {
                Out::Request(psn, bytes) => (psn, bytes),
                other => panic!("not a request: {other:?}"),
            })
            .collect()
    }

    /// (token, status, operation, byte_len) of every completion since the last call.
    fn completions(&self) -> Vec<(u64, CompletionStatus, CompletionOp, u32)> {
        let mut out = Vec::new();
        self.cq.poll(&mut out, 1024).unwrap();
        out.iter()
            .map(|c| (c.token, c.status, c.op, c.byte_len))
            .collect()
    }

    fn stale(&self) -> u64 {
        self.dev.stale_responses()
    }

    fn memory(&self, off: usize, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read(off, &mut b);
        b
    }

    /// A local buffer of `len` bytes for requests.
    fn local(&self, len: usize) -> SoftMr {
        SoftMr::register(&self.pd, len, Access::LOCAL_WRITE).unwrap()
    }

    /// Posts signaled WRITEs of the first 4 bytes of `src`, one per token.
    fn post_writes(&self, src: &SoftMr, tokens: std::ops::RangeInclusive<u64>) {
        for token in tokens {
            self.post(token, RawOp::Write(Self::remote()), src, 4);
        }
    }

    fn post(&self, token: u64, op: RawOp, local: &SoftMr, len: u32) {
        let d = local.descriptor();
        self.qp
            .post_send(&[RawSend {
                token,
                op,
                sge: RawSge {
                    addr: d.addr,
                    len,
                    lkey: local.lkey(),
                },
                signaled: true,
                inline: false,
            }])
            .unwrap();
    }

    /// Where the requests go (the requester does not check it; the peer is played by hand).
    fn remote() -> RemoteAddr {
        RemoteAddr {
            addr: 0x1000,
            rkey: 0x77,
        }
    }

    fn outstanding(&self) -> usize {
        self.qp.core.st.lock().sq.len()
    }
}

fn ok_write(token: u64) -> (u64, CompletionStatus, CompletionOp, u32) {
    (token, CompletionStatus::Success, CompletionOp::Write, 4)
}

// ----- Responder -----

/// Requests with the expected PSN are executed and answered, in order: a WRITE (memory
/// written, ACK), a READ (response with the data) and a SEND (receive completed, ACK).
#[test]
fn responder_executes_and_acks_the_expected_psn() {
    const E: u32 = 0x31_0000;
    let rig = Rig::new(0x10, E);
    let recv_buf = rig.local(8);
    rig.qp
        .post_recv(&[RawRecv {
            token: 9,
            sge: RawSge {
                addr: recv_buf.descriptor().addr,
                len: 8,
                lkey: recv_buf.lkey(),
            },
        }])
        .unwrap();
    rig.deliver(E, rig.write_req(0, b"abcd"));
    assert_eq!(rig.memory(0, 4), b"abcd");
    assert_eq!(rig.sent(), vec![Out::Ack(E, Syndrome::Ack)]);
    rig.deliver(E + 1, rig.read_req(0, 4));
    assert_eq!(rig.sent(), vec![Out::ReadResponse(E + 1, b"abcd".to_vec())]);
    rig.deliver(
        E + 2,
        Body::Send {
            imm: None,
            payload: b"hi",
        },
    );
    assert_eq!(rig.sent(), vec![Out::Ack(E + 2, Syndrome::Ack)]);
    assert_eq!(
        rig.completions(),
        vec![(9, CompletionStatus::Success, CompletionOp::Recv, 2)]
    );
    let mut got = [0u8; 2];
    recv_buf.read(0, &mut got);
    assert_eq!(&got, b"hi");
}

/// A request one PSN ahead of the expected one is not executed: the responder answers one
/// NAK sequence error naming the PSN it expects (as rxe and the IB specification do), and
/// stays silent for the rest of the gap. Once the expected PSN arrives and is executed, a new
/// gap is NAKed again.
#[test]
fn responder_naks_a_psn_one_ahead_once_and_does_not_execute_it() {
    const E: u32 = 0x20_0000;
    let rig = Rig::new(0x10, E);
    rig.deliver(E + 1, rig.write_req(0, b"one+"));
    assert_eq!(rig.memory(0, 4), [0; 4], "a PSN one ahead was executed");
    assert_eq!(rig.sent(), vec![Out::Ack(E, Syndrome::NakSequence)]);
    // The rest of the gap: no second NAK, nothing executed.
    rig.deliver(E + 2, rig.write_req(8, b"two+"));
    rig.deliver(E + 1, rig.write_req(0, b"one+"));
    assert_eq!(rig.memory(0, 12), [0; 12]);
    assert_eq!(rig.sent(), vec![]);
    // The go-back-N retransmission from E: executed in order.
    rig.deliver(E, rig.write_req(0, b"zero"));
    assert_eq!(rig.sent(), vec![Out::Ack(E, Syndrome::Ack)]);
    rig.deliver(E + 2, rig.write_req(8, b"two+"));
    assert_eq!(rig.sent(), vec![Out::Ack(E + 1, Syndrome::NakSequence)]);
    rig.deliver(E + 1, rig.write_req(4, b"one+"));
    rig.deliver(E + 2, rig.write_req(8, b"two+"));
    assert_eq!(
        rig.sent(),
        vec![
            Out::Ack(E + 1, Syndrome::Ack),
            Out::Ack(E + 2, Syndrome::Ack)
        ]
    );
    assert_eq!(rig.memory(0, 12), b"zeroone+two+");
}

/// No PSN in the forward half-space (1 to 2^23 - 1 ahead, modulo 2^24) is executed, with the
/// expected PSN just below the wrap so most of them wrap past 0: one NAK sequence error for
/// the whole run, no memory written, and the expected PSN still executes afterwards.
#[test]
fn responder_executes_no_psn_in_the_forward_half_space() {
    const E: u32 = 0xff_ff00;
    let rig = Rig::new(0x10, E);
    let mut ahead: Vec<u32> = (1..0x80_0000).step_by(4099).collect();
    ahead.extend([2, 0xff, 0x100, 0x101, 0x7f_fffe, 0x7f_ffff]);
    for d in &ahead {
        rig.deliver(psn_add(E, *d), rig.write_req(0, b"evil"));
    }
    assert_eq!(rig.memory(0, 4), [0; 4], "a PSN ahead was executed");
    let sent = rig.sent();
    assert!(
        sent == [Out::Ack(E, Syndrome::NakSequence)],
        "{} answers to {} PSNs ahead, the first: {:?}",
        sent.len(),
        ahead.len(),
        &sent[..sent.len().min(3)]
    );
    assert_eq!(rig.dev.access_violations(), 0);
    assert_eq!(rig.qp.state().unwrap(), QpState::ReadyToSend);
    rig.deliver(E, rig.write_req(0, b"good"));
    assert_eq!(rig.sent(), vec![Out::Ack(E, Syndrome::Ack)]);
    assert_eq!(rig.memory(0, 4), b"good");
}

/// A duplicate WRITE (the last one executed, or an older one) is acknowledged with the last
/// PSN executed and not executed again: memory changed since keeps its new bytes.
#[test]
fn responder_reacks_a_duplicate_write_without_writing_again() {
    const E: u32 = 0x40_0000;
    let rig = Rig::new(0x10, E);
    rig.deliver(E, rig.write_req(0, b"orig"));
    assert_eq!(rig.sent(), vec![Out::Ack(E, Syndrome::Ack)]);
    rig.mem.write(0, b"new!");
    // The requester did not see the ACK and retransmits; and an older duplicate.
    rig.deliver(E, rig.write_req(0, b"orig"));
    rig.deliver(E - 7, rig.write_req(0, b"old!"));
    assert_eq!(
        rig.memory(0, 4),
        b"new!",
        "a duplicate WRITE was executed again"
    );
    assert_eq!(
        rig.sent(),
        vec![Out::Ack(E, Syndrome::Ack), Out::Ack(E, Syndrome::Ack)]
    );
    // The expected PSN did not move.
    rig.deliver(E + 1, rig.write_req(4, b"next"));
    assert_eq!(rig.sent(), vec![Out::Ack(E + 1, Syndrome::Ack)]);
    assert_eq!(rig.memory(0, 8), b"new!next");
}

/// A duplicate SEND is acknowledged without consuming a second receive.
#[test]
fn responder_does_not_deliver_a_duplicate_send_twice() {
    const E: u32 = 0x50_0000;
    let rig = Rig::new(0x10, E);
    let buf = rig.local(16);
    let recvs: Vec<RawRecv> = (0..2)
        .map(|i| RawRecv {
            token: 100 + i,
            sge: RawSge {
                addr: buf.descriptor().addr + i * 8,
                len: 8,
                lkey: buf.lkey(),
            },
        })
        .collect();
    rig.qp.post_recv(&recvs).unwrap();
    let send = Body::Send {
        imm: None,
        payload: b"msg",
    };
    rig.deliver(E, send.clone());
    rig.deliver(E, send);
    assert_eq!(
        rig.sent(),
        vec![Out::Ack(E, Syndrome::Ack), Out::Ack(E, Syndrome::Ack)]
    );
    assert_eq!(
        rig.completions(),
        vec![(100, CompletionStatus::Success, CompletionOp::Recv, 3)],
        "a duplicate SEND consumed a receive"
    );
    assert_eq!(rig.qp.core.st.lock().rq.len(), 1);
}

/// A duplicate READ is answered again with the memory as it is now (rxe re-reads), and the
/// expected PSN does not move.
#[test]
fn responder_answers_a_duplicate_read_again() {
    const E: u32 = 0x60_0000;
    let rig = Rig::new(0x10, E);
    rig.mem.write(0, b"v1");
    rig.deliver(E, rig.read_req(0, 2));
    assert_eq!(rig.sent(), vec![Out::ReadResponse(E, b"v1".to_vec())]);
    rig.mem.write(0, b"v2");
    rig.deliver(E, rig.read_req(0, 2));
    assert_eq!(rig.sent(), vec![Out::ReadResponse(E, b"v2".to_vec())]);
    rig.deliver(E + 1, rig.write_req(4, b"next"));
    assert_eq!(rig.sent(), vec![Out::Ack(E + 1, Syndrome::Ack)]);
}

/// The expected PSN wraps from 0xffffff to 0: both are executed in order, 0xffffff is then a
/// duplicate and 2 (with 1 expected) is ahead.
#[test]
fn responder_psn_wraps_from_0xffffff_to_0() {
    let rig = Rig::new(0x10, 0xff_fffe);
    rig.deliver(0xff_fffe, rig.write_req(0, b"aa"));
    rig.deliver(0xff_ffff, rig.write_req(2, b"bb"));
    rig.deliver(0, rig.write_req(4, b"cc"));
    assert_eq!(
        rig.sent(),
        vec![
            Out::Ack(0xff_fffe, Syndrome::Ack),
            Out::Ack(0xff_ffff, Syndrome::Ack),
            Out::Ack(0, Syndrome::Ack)
        ]
    );
    assert_eq!(rig.memory(0, 6), b"aabbcc");
    // 0xffffff is behind 1 (the expected PSN now): a duplicate, re-acknowledged with 0.
    rig.deliver(0xff_ffff, rig.write_req(2, b"XX"));
    assert_eq!(rig.sent(), vec![Out::Ack(0, Syndrome::Ack)]);
    rig.deliver(2, rig.write_req(8, b"XX"));
    assert_eq!(rig.sent(), vec![Out::Ack(1, Syndrome::NakSequence)]);
    rig.deliver(1, rig.write_req(6, b"dd"));
    assert_eq!(rig.sent(), vec![Out::Ack(1, Syndrome::Ack)]);
    assert_eq!(rig.memory(0, 10), b"aabbccdd\0\0");
}

// ----- Requester -----

/// An ACK (or a NAK) naming a PSN not outstanding (not sent yet, before the oldest one
/// outstanding, far away, or after everything was acknowledged) is dropped and counted; only
/// the ACK of the request sent completes it.
#[test]
fn requester_drops_and_counts_an_ack_for_a_psn_not_outstanding() {
    const S: u32 = 0x10_0000;
    let rig = Rig::new(S, 0x10);
    let src = rig.local(8);
    rig.post_writes(&src, 1..=1);
    assert_eq!(rig.sent_requests().len(), 1);
    let forged = [S + 1, S + 2, S - 1, S + 0x40_0000, psn_add(S, 0xc0_0000)];
    for psn in forged {
        rig.ack(psn, Syndrome::Ack);
    }
    rig.ack(S + 1, Syndrome::NakRemoteAccess);
    assert_eq!(
        rig.completions(),
        vec![],
        "a forged ACK completed the WRITE"
    );
    assert_eq!(rig.stale(), forged.len() as u64 + 1);
    assert_eq!(rig.outstanding(), 1);
    assert_eq!(rig.qp.state().unwrap(), QpState::ReadyToSend);
    rig.ack(S, Syndrome::Ack);
    assert_eq!(rig.completions(), vec![ok_write(1)]);
    // Nothing outstanding: a duplicated ACK is stale too.
    rig.ack(S, Syndrome::Ack);
    assert_eq!(rig.stale(), forged.len() as u64 + 2);
    assert_eq!(rig.completions(), vec![]);
}

/// One ACK covers every request up to its PSN: they complete in posting order, the ones
/// after it stay outstanding (across the PSN wrap).
#[test]
fn requester_completes_every_request_an_ack_covers_in_order() {
    const S: u32 = 0xff_fffe;
    let rig = Rig::new(S, 0x10);
    let src = rig.local(8);
    rig.post_writes(&src, 1..=4);
    let psns: Vec<u32> = rig.sent_requests().into_iter().map(|(p, _)| p).collect();
    assert_eq!(psns, vec![0xff_fffe, 0xff_ffff, 0, 1]);
    rig.ack(0, Syndrome::Ack);
    assert_eq!(
        rig.completions(),
        vec![ok_write(1), ok_write(2), ok_write(3)]
    );
    assert_eq!(rig.outstanding(), 1);
    rig.ack(1, Syndrome::Ack);
    assert_eq!(rig.completions(), vec![ok_write(4)]);
    assert_eq!(rig.outstanding(), 0);
    assert_eq!(rig.stale(), 0);
}

/// A NAK sequence error naming PSN n completes the requests before n (the responder took
/// them) and retransmits from n on, byte for byte; one naming the oldest retransmits all.
#[test]
fn requester_retransmits_from_the_psn_a_sequence_nak_names() {
    const S: u32 = 0x70_0000;
    let rig = Rig::new(S, 0x10);
    let src = rig.local(8);
    src.write(0, b"data");
    rig.post_writes(&src, 1..=4);
    let first = rig.sent_requests();
    assert_eq!(first.len(), 4);
    rig.ack(S, Syndrome::NakSequence);
    assert_eq!(rig.sent_requests(), first);
    assert_eq!(rig.completions(), vec![]);
    rig.ack(S + 2, Syndrome::NakSequence);
    assert_eq!(rig.completions(), vec![ok_write(1), ok_write(2)]);
    assert_eq!(rig.sent_requests(), first[2..].to_vec());
    assert_eq!(rig.outstanding(), 2);
    assert_eq!(rig.qp.state().unwrap(), QpState::ReadyToSend);
}

/// A READ response naming a PSN not outstanding is dropped and counted: it neither fills the
/// READ's buffer nor implicitly acknowledges the WRITE before it; the real one does both.
#[test]
fn requester_drops_a_read_response_for_a_psn_not_outstanding() {
    const S: u32 = 0x30_0000;
    let rig = Rig::new(S, 0x10);
    let src = rig.local(8);
    let dst = rig.local(8);
    rig.post_writes(&src, 1..=1);
    rig.post(2, RawOp::Read(Rig::remote()), &dst, 8);
    assert_eq!(rig.sent_requests().len(), 2);
    for psn in [S + 2, S + 3, S - 1, S + 0x40_0000] {
        rig.deliver(
            psn,
            Body::ReadResponse {
                payload: b"forged!!",
            },
        );
    }
    assert_eq!(
        rig.completions(),
        vec![],
        "a forged READ response completed"
    );
    assert_eq!(rig.stale(), 4);
    let mut got = [0u8; 8];
    dst.read(0, &mut got);
    assert_eq!(got, [0; 8]);
    rig.deliver(
        S + 1,
        Body::ReadResponse {
            payload: b"realdata",
        },
    );
    assert_eq!(
        rig.completions(),
        vec![
            ok_write(1),
            (2, CompletionStatus::Success, CompletionOp::Read, 8)
        ]
    );
    dst.read(0, &mut got);
    assert_eq!(&got, b"realdata");
    // Answered: a duplicate response is stale.
    rig.deliver(
        S + 1,
        Body::ReadResponse {
            payload: b"again!!!",
        },
    );
    assert_eq!(rig.stale(), 5);
    dst.read(0, &mut got);
    assert_eq!(&got, b"realdata");
}
