//! The manager on the soft provider over loopback, two nodes in one process: bootstrap,
//! placement, refusals, replay, live changes and partner restart. (Link cuts need the
//! ilA/ilB namespaces or the Soft-RoCE VM: see tests/pair/manager_netns.rs.)

use crate::manager_pair;

use interlink::clients::probe::{Probe, ProbeConfig};
use interlink::fabric::{Access, ProviderChoice};
use interlink::manager::{
    BandwidthClass, ClientEvent, ClientSpec, ClientState, LinkState, Manager, ManagerError,
    ReadGrant, RegionSpec, TermMismatch,
};
use manager_pair::*;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn start_pair(links: u8) -> (Arc<Manager>, Arc<Manager>, std::path::PathBuf) {
    init_logs();
    let dir = temp_dir("mgr");
    let (a, b) = pair(&dir, links, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a).expect("start A"));
    let mb = Arc::new(Manager::start(b).expect("start B"));
    (ma, mb, dir)
}

fn probes(m: &Arc<Manager>) -> Vec<Probe> {
    vec![
        Probe::start(m, ProbeConfig::new("mirror", BandwidthClass::High)).expect("probe"),
        Probe::start(m, ProbeConfig::new("cfo", BandwidthClass::Low)).expect("probe"),
        Probe::start(m, ProbeConfig::new("stats", BandwidthClass::Low)).expect("probe"),
    ]
}

#[test]
fn three_clients_two_links_one_exchange_per_link() {
    let (a, b, _dir) = start_pair(2);
    let pa = probes(&a);
    let pb = probes(&b);
    let names = ["mirror", "cfo", "stats"];
    for m in [&a, &b] {
        let (ok, s) = m
            .wait_status(WAIT, |s| links_ready(s) && clients_ready(s, &names))
            .expect("status");
        assert!(ok, "not ready: {s:#?}");
    }
    let sa = a.status().expect("status");
    assert_eq!(link_of(&sa, "mirror"), Some(1), "{sa:#?}");
    assert_eq!(link_of(&sa, "cfo"), Some(0));
    assert_eq!(link_of(&sa, "stats"), Some(0));
    let sb = b.status().expect("status");
    for n in names {
        assert_eq!(
            link_of(&sb, n),
            link_of(&sa, n),
            "placement differs for {n}"
        );
    }
    // One exchange per link: each link was initialised once, and every client connected
    // without a later re-establishment.
    for l in &sa.links {
        assert_eq!(l.counters.reconnects, 1, "{l:#?}");
    }
    for c in &sa.clients {
        assert_eq!(c.counters.reconnects, 1, "{c:#?}");
    }
    // Traffic flows both ways, in order.
    for p in pa.iter().chain(pb.iter()) {
        let deadline = std::time::Instant::now() + WAIT;
        while p.stats().received < 50 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = p.stats();
        assert!(st.received >= 50, "{}: {st:?}", p.name());
        assert_eq!(st.out_of_order, 0, "{}: {st:?}", p.name());
        assert_eq!(st.gaps, 0, "{}: {st:?}", p.name());
    }
}

#[test]
fn client_added_live_does_not_disturb_others() {
    let (a, b, _dir) = start_pair(1);
    let pa = Probe::start(&a, ProbeConfig::new("steady", BandwidthClass::Low)).expect("probe");
    let pb = Probe::start(&b, ProbeConfig::new("steady", BandwidthClass::Low)).expect("probe");
    for m in [&a, &b] {
        assert!(
            m.wait_status(WAIT, |s| clients_ready(s, &["steady"]))
                .expect("status")
                .0
        );
    }
    // A client registered after the partner is reachable, at both nodes.
    let spec =
        ClientSpec::new("late", BandwidthClass::Low, 1).region("r0", 4096, Access::REMOTE_WRITE);
    let ca = a.register(spec.clone()).expect("register");
    let cb = b.register(spec).expect("register");
    let conn_a = ca.wait_ready_timeout(WAIT).expect("late ready at A");
    let conn_b = cb.wait_ready_timeout(WAIT).expect("late ready at B");
    assert_eq!(conn_a.qps.len(), 1);
    assert_eq!(
        conn_b.partner_region("r0").map(|r| r.descriptor),
        conn_a.region("r0").map(|r| r.descriptor())
    );
    let before = (pa.stats(), pb.stats());
    // Live: A adds a queue pair (B mirrors it) and a region (B learns it).
    ca.add_qp().expect("add qp");
    let upd = |h: &interlink::manager::ClientHandle| match h.next_event_timeout(WAIT) {
        Ok(ClientEvent::Updated(c)) => c,
        Ok(other) => panic!("unexpected event {other:?}"),
        Err(e) => panic!("no update: {e}"),
    };
    let ua = upd(&ca);
    let ub = upd(&cb);
    assert_eq!(ua.qps.len(), 2);
    assert_eq!(ub.qps.len(), 2, "partner mirrored the queue pair");
    let readable = RegionSpec {
        read_grant: None,
        purpose: "r1".into(),
        len: 8192,
        access: Access::REMOTE_READ,
    };
    // Remote READ needs a reason (docs/security.md P4).
    assert!(ca.add_region(readable.clone()).is_err());
    ca.add_region(RegionSpec {
        read_grant: Some(ReadGrant::Service("the test reads it back".into())),
        ..readable
    })
    .expect("add region");
    let ua = upd(&ca);
    let ub = upd(&cb);
    assert!(ua.region("r1").is_some());
    assert_eq!(
        ub.partner_region("r1").map(|r| r.descriptor.len),
        Some(8192)
    );
    // The new queue pair works: SEND from B's to A's.
    let qa = ua.qp(1).expect("qp 1");
    let qb = ub.qp(1).expect("qp 1");
    let ra = ua.region("r0").expect("r0").clone();
    qa.post_recv(interlink::fabric::RecvRequest {
        wr_id: 5,
        local: ra.slice(0, 64).expect("slice"),
    })
    .expect("recv");
    let rb = ub.region("r0").expect("r0").clone();
    rb.write(0, b"hello over the new queue pair")
        .expect("write");
    qb.post_send(interlink::fabric::SendRequest::new(
        6,
        interlink::fabric::SendOp::Send,
        rb.slice(0, 29).expect("slice"),
    ))
    .expect("send");
    let c = qa.recv_cq().next(WAIT).expect("poll").expect("completion");
    assert!(c.status.is_ok(), "{c:?}");
    let mut got = [0u8; 29];
    ra.read(0, &mut got).expect("read");
    assert_eq!(&got, b"hello over the new queue pair");
    // The steady client was never suspended and kept flowing: 20 more messages each way.
    let t0 = std::time::Instant::now();
    while pa.stats().received < before.0.received + 20
        || pb.stats().received < before.1.received + 20
    {
        assert!(t0.elapsed() < WAIT, "{:?} {:?}", pa.stats(), pb.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = (pa.stats(), pb.stats());
    assert_eq!(after.0.connections, 1, "{:?}", after.0);
    assert_eq!(after.1.connections, 1, "{:?}", after.1);
    assert!(after.0.received > before.0.received && after.1.received > before.1.received);
    assert_eq!(after.0.out_of_order + after.1.out_of_order, 0);
    assert_eq!(after.0.gaps + after.1.gaps, 0);
}

fn refused(cfg_b: impl FnOnce(&mut interlink::manager::NodeConfig), cause: &str) {
    let dir = temp_dir("refuse");
    let (a, mut b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    cfg_b(&mut b);
    let ma = Arc::new(Manager::start(a).expect("start A"));
    let mb = Arc::new(Manager::start(b).expect("start B"));
    let _pa = Probe::start(&ma, ProbeConfig::new("p", BandwidthClass::Low)).expect("probe");
    let _pb = Probe::start(&mb, ProbeConfig::new("p", BandwidthClass::Low)).expect("probe");
    for m in [&ma, &mb] {
        let (ok, s) = m
            .wait_status(WAIT, |s| {
                s.links[0].state == LinkState::Refused
                    && s.links[0]
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.to_lowercase().contains(cause))
            })
            .expect("status");
        assert!(
            ok,
            "node {} did not refuse with {cause:?}: {s:#?}",
            s.node_id
        );
        assert!(
            s.clients
                .iter()
                .all(|c| c.state != interlink::manager::ClientState::Ready),
            "{s:#?}"
        );
        assert_eq!(s.links[0].counters.reconnects, 0);
    }
    // A client waiting for the partner is told why it is not coming.
    let h = mb
        .register(ClientSpec::new("waiter", BandwidthClass::Low, 1))
        .expect("register");
    match h.wait_ready_timeout(Duration::from_millis(300)).map(|_| ()) {
        Err(ManagerError::NotReady { why, .. }) => {
            assert!(
                why.to_lowercase().contains(cause),
                "{cause:?} not in {why:?}"
            )
        }
        other => panic!("wait_ready with the partner refused: {other:?}"),
    }
}

/// What the start can know is the start's error: a bootstrap port in use (a second
/// instance of the node) and an absent verbs device fail `Manager::start`, naming the link,
/// instead of an Ok manager whose link retries in the background.
#[test]
fn start_fails_on_a_port_in_use_and_on_an_absent_device() {
    init_logs();
    let dir = temp_dir("start-errors");
    let port = port_base();
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port);
    let first = Arc::new(Manager::start(b.clone()).expect("first instance"));
    match Manager::start(b).map(|_| ()) {
        Err(ManagerError::Listen {
            link: 0, source, ..
        }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}")
        }
        other => panic!("second instance on the same bootstrap port: {other:?}"),
    }
    first.shutdown();
    drop(first);
    // No verbs device serves a loopback address (and a build without the verbs feature has
    // none at all).
    let a = a.with_fabric(ProviderChoice::Verbs);
    match Manager::start(a).map(|_| ()) {
        Err(e @ ManagerError::OpenDevice { link: 0, .. }) => {
            assert!(e.to_string().contains("open device"), "{e}")
        }
        other => panic!("verbs on a loopback address: {other:?}"),
    }
}

#[test]
fn clients_that_disagree_on_a_term_are_refused_at_connect_on_both_sides() {
    let (a, b, _dir) = start_pair(1);
    let spec = |slots: u64| {
        ClientSpec::new("terms", BandwidthClass::Low, 1)
            .region("ring", 4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .term("frame size", 1024)
            .term("window slots", slots)
    };
    let ha = a.register(spec(64)).expect("register A");
    let hb = b.register(spec(32)).expect("register B");
    // Told at once by the call (not after the timeout), with the term and both values.
    let refusal = |h: &interlink::manager::ClientHandle| match h.wait_ready_timeout(WAIT) {
        Err(ManagerError::Refused { client, mismatch }) => {
            assert_eq!(client, "terms");
            mismatch
        }
        other => panic!("disagreeing client: {other:?}"),
    };
    let want = |ours, theirs| TermMismatch {
        term: "window slots".into(),
        ours: Some(ours),
        theirs: Some(theirs),
    };
    assert_eq!(refusal(&ha), want(64, 32));
    assert_eq!(refusal(&hb), want(32, 64));
    let e = ManagerError::Refused {
        client: "terms".into(),
        mismatch: want(64, 32),
    };
    assert!(
        e.to_string()
            .contains("window slots: ours 64, partner's 32"),
        "{e}"
    );
    for m in [&a, &b] {
        let st = m.status().expect("status");
        let c = st
            .clients
            .iter()
            .find(|c| c.name == "terms")
            .expect("listed");
        assert_eq!(c.state, ClientState::Refused, "{c:?}");
        assert_eq!(
            c.refused.as_ref().map(|r| r.term.as_str()),
            Some("window slots")
        );
    }
    // B registers again with A's terms: both become ready.
    hb.close();
    let hb = b.register(spec(64)).expect("register B again");
    hb.wait_ready_timeout(WAIT)
        .expect("B ready with matching terms");
    ha.wait_ready_timeout(WAIT)
        .expect("A ready with matching terms");
    // A term only one side states is a disagreement too.
    hb.close();
    let hb = b
        .register(spec(64).term("version", 2))
        .expect("register B with one more term");
    match hb.wait_ready_timeout(WAIT) {
        Err(ManagerError::Refused { mismatch, .. }) => assert_eq!(
            mismatch,
            TermMismatch {
                term: "version".into(),
                ours: Some(2),
                theirs: None
            }
        ),
        other => panic!("a term the partner does not state: {other:?}"),
    }
}

#[test]
fn cluster_id_mismatch_refused_on_both_sides() {
    refused(|b| b.cluster_id = 8, "cluster");
}

#[test]
fn secret_mismatch_refused_on_both_sides() {
    let dir = temp_dir("secret2");
    let other = secret(&dir, "other", "ffffffffffffffffffffffffffffffff");
    refused(move |b| b.secret_file = other, "auth");
}

#[test]
fn version_range_mismatch_refused_on_both_sides() {
    refused(|b| b.protocol_versions = Some([2, 3]), "version");
}

#[test]
fn partner_restart_reinitialises_and_clients_come_back() {
    let dir = temp_dir("restart");
    let (a, b) = pair(&dir, 2, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a).expect("start A"));
    let mb = Arc::new(Manager::start(b.clone()).expect("start B"));
    let pa = Probe::start(&ma, ProbeConfig::new("p", BandwidthClass::Low)).expect("probe");
    let pb = Probe::start(&mb, ProbeConfig::new("p", BandwidthClass::Low)).expect("probe");
    assert!(
        ma.wait_status(WAIT, |s| clients_ready(s, &["p"]))
            .expect("status")
            .0
    );
    let first = ma.status().expect("status").partner_incarnation;
    drop(pb);
    mb.shutdown();
    drop(mb);
    assert!(
        ma.wait_status(WAIT, |s| !clients_ready(s, &["p"]))
            .expect("status")
            .0
    );
    let mb = Arc::new(Manager::start(b).expect("restart B"));
    let _pb = Probe::start(&mb, ProbeConfig::new("p", BandwidthClass::Low)).expect("probe");
    let (ok, s) = ma
        .wait_status(WAIT, |s| {
            links_ready(s) && clients_ready(s, &["p"]) && s.partner_incarnation != first
        })
        .expect("status");
    assert!(ok, "{s:#?}");
    assert!(s.links.iter().all(|l| l.counters.reconnects >= 2), "{s:#?}");
    let before = pa.stats().received;
    let deadline = std::time::Instant::now() + WAIT;
    while pa.stats().received < before + 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pa.stats().received >= before + 20, "{:?}", pa.stats());
}

/// Acts as node 1 on link 0 with the real secret: one full session, then a second session
/// into which the first session's PeerInfo frame is replayed.
#[test]
fn replayed_bootstrap_message_is_refused() {
    use interlink::fabric::{Endpoint, Gid, Mtu, RegionDescriptor};
    use interlink::manager::session::{Session, SessionEvent};
    use interlink::manager::wire::{self, Message, PeerInfo, RefuseReason};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    init_logs();
    let dir = temp_dir("replay");
    let port = port_base();
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port);
    let secret = a.read_secret().expect("secret");
    let mb = Arc::new(Manager::start(b).expect("start B"));
    let (local, _) = loopback(0);
    let connect = || connect_as_partner(port);
    let params = || initiator_params(secret.clone());
    // Pumps frames both ways until `done` says stop; returns what was written.
    fn pump(
        s: &mut TcpStream,
        sess: &mut Session,
        mut done: impl FnMut(&SessionEvent) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(f) = sess.poll_transmit() {
                s.write_all(&f).expect("write");
                sent.push(f);
            }
            while let Some(ev) = sess.poll_event() {
                if done(&ev) {
                    return sent;
                }
            }
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "closed by the node");
            sess.handle_bytes(&buf[..n]).expect("session");
        }
    }
    // Session 1: complete exchange, record our PeerInfo frame.
    let mut s1 = connect();
    let mut sess1 = Session::new(params());
    pump(&mut s1, &mut sess1, |e| {
        matches!(e, SessionEvent::Established { .. })
    });
    let info = PeerInfo {
        version: 1,
        cluster_id: 7,
        node_id: 1,
        link_id: 0,
        incarnation: 99,
        capabilities: 0,
        health: RegionDescriptor {
            addr: 4096,
            len: 64,
            rkey: 5,
        },
        heartbeat: Endpoint {
            qpn: 17,
            psn: 1,
            gid: Gid::from_ip(local),
            lid: 9,
            mtu: Mtu::M1024,
        },
        clients: vec![],
    };
    sess1.send(Message::PeerInfo(info)).expect("send");
    let recorded = pump(&mut s1, &mut sess1, |e| {
        matches!(e, SessionEvent::Message(Message::PeerInfo(_)))
    });
    assert_eq!(recorded.len(), 1, "one PeerInfo frame");
    drop(s1);
    // Session 2: fresh Hellos, then the old PeerInfo frame.
    let mut s2 = connect();
    let mut sess2 = Session::new(params());
    pump(&mut s2, &mut sess2, |e| {
        matches!(e, SessionEvent::Established { .. })
    });
    s2.write_all(&recorded[0]).expect("replay");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let refuse = loop {
        let n = s2.read(&mut buf).expect("read refusal");
        assert!(n > 0, "closed without a Refuse");
        got.extend_from_slice(&buf[..n]);
        if let Ok(Some(len)) = wire::frame_len(&got) {
            if got.len() >= len {
                break wire::decode_frame(&got[..len], None).expect("decode refusal");
            }
        }
    };
    match refuse.message {
        Message::Refuse(r) => assert_eq!(r.reason, RefuseReason::Auth, "{r:?}"),
        other => panic!("expected a Refuse, got {other:?}"),
    }
    let (ok, s) = mb
        .wait_status(WAIT, |s| {
            s.links[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains("auth"))
        })
        .expect("status");
    assert!(ok, "{s:#?}");
}

#[test]
fn published_state_reaches_the_partner_on_every_link_and_reads_can_be_timed() {
    let (ma, mb, _dir) = start_pair(2);
    let (ok, s) = ma.wait_status(WAIT, links_ready).unwrap();
    assert!(ok, "links never ready: {s:?}");
    let mut ext = [0u8; interlink::manager::health::HEALTH_EXTENSION_LEN];
    ext[0] = 0xA5;
    ext[31] = 0x5A;
    ma.publish_state(7, ext);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let obs = mb.partner_state();
        assert_eq!(obs.len(), 2);
        let seen = obs.iter().all(|o| {
            o.reading
                && o.block.is_some_and(|b| {
                    b.state == 7
                        && b.extension == ext
                        && b.node_id == ma.config().node_id
                        && b.incarnation == ma.incarnation()
                })
        });
        if seen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never read A's published state on both links: {obs:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = mb.partner_state()[1].reads;
    let rtts = mb.time_partner_reads(1, 50).expect("timed reads");
    assert_eq!(rtts.len(), 50);
    assert!(mb.partner_state()[1].reads >= before + 50);
    assert!(matches!(
        mb.time_partner_reads(9, 1),
        Err(interlink::manager::ManagerError::ReadPartnerState { link: 9, .. })
    ));
}

/// A bootstrap connection from the partner's address that does not authenticate never
/// disturbs the established link: it closes at once, sends junk, or completes a handshake
/// with the wrong secret; each one is dropped and counted, and the link stays Ready with no
/// failure. (Before, every such connection tore the link down: link flapping on demand.) A
/// partner that restarts does authenticate, and the link moves to its new connection.
#[test]
fn connections_that_do_not_authenticate_leave_the_link_alone() {
    use interlink::manager::session::Session;
    use std::io::{Read, Write};

    init_logs();
    let dir = temp_dir("pending");
    let port = port_base();
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port);
    let ma = Arc::new(Manager::start(a.clone()).expect("start A"));
    let mb = Arc::new(Manager::start(b).expect("start B"));
    let ready = |m: &Arc<Manager>| {
        m.status()
            .unwrap()
            .links
            .iter()
            .all(|l| l.state == LinkState::Ready)
    };
    let t0 = std::time::Instant::now();
    while !(ready(&ma) && ready(&mb)) {
        assert!(
            t0.elapsed() < WAIT,
            "links not ready: {:#?}",
            mb.status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let counters = |m: &Arc<Manager>| m.status().unwrap().links[0].counters;
    let (before_a, before_b) = (counters(&ma), counters(&mb));
    let connect = || connect_as_partner(port);
    let wrong_secret = || initiator_params(vec![0x5a; 32]);
    const TRIES: u64 = 15;
    for k in 0..TRIES {
        let mut s = connect();
        match k % 3 {
            0 => {}
            1 => s.write_all(&[0xff; 300]).expect("junk"),
            _ => {
                // A Hello, B's Hello back, our Confirm under the wrong key: refused.
                let mut sess = Session::new(wrong_secret());
                let mut buf = [0u8; 4096];
                while let Some(f) = sess.poll_transmit() {
                    s.write_all(&f).expect("hello");
                }
                let n = s.read(&mut buf).expect("B's hello");
                let _ = sess.handle_bytes(&buf[..n]);
                while let Some(f) = sess.poll_transmit() {
                    let _ = s.write_all(&f);
                }
                // B refuses and closes.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
        drop(s);
        assert!(ready(&mb), "try {k}: {:#?}", mb.status().unwrap().links);
    }
    let t0 = std::time::Instant::now();
    while counters(&mb).pending_dropped < TRIES {
        assert!(t0.elapsed() < WAIT, "{:#?}", counters(&mb));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (after_a, after_b) = (counters(&ma), counters(&mb));
    assert_eq!(
        (after_a.failures, after_b.failures),
        (before_a.failures, before_b.failures)
    );
    assert_eq!(after_b.reconnects, before_b.reconnects);
    assert!(ready(&ma) && ready(&mb));
    // The real partner restarts: its new connection authenticates and replaces the link's.
    ma.shutdown();
    drop(ma);
    let ma = Arc::new(Manager::start(a).expect("restart A"));
    let t0 = std::time::Instant::now();
    while !(ready(&ma) && ready(&mb) && counters(&mb).reconnects > before_b.reconnects) {
        assert!(t0.elapsed() < WAIT, "{:#?}", mb.status().unwrap().links);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP connection to B's bootstrap port from A's address (what only the partner, or a
/// process on its address, can open); retried while B is not listening yet.
fn connect_as_partner(port: u16) -> std::net::TcpStream {
    use std::net::SocketAddr;
    let (local, peer) = loopback(0);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::new(local, 0).into()).expect("bind");
        match s.connect(&SocketAddr::new(peer, port).into()) {
            Ok(()) => {
                let t: std::net::TcpStream = s.into();
                t.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                return t;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "connect: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The session parameters of a node 1 of cluster 7 (the initiator) holding `secret`.
fn initiator_params(secret: Vec<u8>) -> interlink::manager::session::SessionParams {
    use interlink::manager::session::{fresh_nonce, Role, SessionParams};
    SessionParams {
        role: Role::Initiator,
        cluster_id: 7,
        node_id: 1,
        partner_id: 2,
        link_id: 0,
        incarnation: 99,
        capabilities: 0,
        version_min: 1,
        version_max: 1,
        secret,
        nonce: fresh_nonce(),
    }
}
