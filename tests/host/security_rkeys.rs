//! Old remote keys stop working (docs/security.md, "Stale rkeys"): after a partner restart
//! (the links reconnect), a client failure (the client is re-established, as after a failover)
//! and a client release (the whole client, or one region), a WRITE naming the partner's old
//! region descriptor fails with `RemoteAccessError`, while the same WRITE to the current
//! descriptor, over the same queue pair, succeeds (so the old key would work if it were not
//! revoked: every client of a link shares the link's protection domain, which outlives
//! reconnects). The local client keeps its old `Connection` (and so its region handles)
//! across the teardown, as a real client does until it has handled `Suspended`: what kills the
//! key is the manager's revoke, not the memory being freed. Two managers in one process on the
//! soft provider over loopback. A link cut (a failover, then the move back once the link is
//! restored) is the soft provider's simulated cable pull, on two links of the test's own; the
//! same case across namespaces, on soft and on verbs, is in tests/pair/manager_netns.rs.

use crate::manager_pair;
use crate::suite;

use interlink::fabric::{
    soft, Access, CompletionStatus, ProviderChoice, RegionDescriptor, SendOp, SendRequest,
};
use interlink::manager::{
    BandwidthClass, ClientEvent, ClientHandle, ClientSpec, Connection, Manager, NodeConfig,
    SuspendReason,
};
use manager_pair::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const MEM: &str = "mem";

fn configs(tag: &str) -> (NodeConfig, NodeConfig) {
    init_logs();
    pair(
        &temp_dir(tag),
        1,
        loopback,
        ProviderChoice::Soft,
        port_base(),
    )
}

fn started(tag: &str) -> (Arc<Manager>, Arc<Manager>) {
    let (ca, cb) = configs(tag);
    (
        Arc::new(Manager::start(ca).expect("start A")),
        Arc::new(Manager::start(cb).expect("start B")),
    )
}

/// Over `conn`, the partner's current region takes a WRITE; its `old` descriptor is refused.
fn new_key_works_old_key_refused(conn: &Connection, old: RegionDescriptor) {
    let new = partner_mem(conn);
    assert_ne!(new.rkey, old.rkey, "a new registration, a new key");
    assert_eq!(write(conn, new), CompletionStatus::Success);
    assert_eq!(write(conn, old), CompletionStatus::RemoteAccessError);
}

fn client(m: &Arc<Manager>, name: &str) -> ClientHandle {
    m.register(ClientSpec::new(name, BandwidthClass::Low, 1).region(
        MEM,
        4096,
        Access::REMOTE_WRITE,
    ))
    .expect("register")
}

fn ready(h: &ClientHandle) -> Connection {
    h.wait_ready_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{} not ready: {e}", h.name()))
}

fn partner_mem(c: &Connection) -> RegionDescriptor {
    c.partner_region(MEM).expect("partner mem").descriptor
}

/// RDMA WRITEs 8 bytes to `target` over queue pair 0 of `via`; the completion status.
fn write(via: &Connection, target: RegionDescriptor) -> CompletionStatus {
    let qp = via.qp(0).expect("qp 0");
    let src = via.region(MEM).expect("mem").slice(0, 8).expect("slice");
    qp.post_send(SendRequest::new(0x5ec, SendOp::Write(target.at(0)), src))
        .expect("post");
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        out.clear();
        qp.send_cq().poll(&mut out, 8).expect("poll");
        if let Some(c) = out.iter().find(|c| c.wr_id == 0x5ec) {
            return c.status;
        }
        assert!(Instant::now() < deadline, "WRITE never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for a `Suspended` event (with reason `want`, when given).
fn wait_suspended(h: &ClientHandle, want: Option<SuspendReason>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match h.next_event_timeout(left).ok() {
            Some(ClientEvent::Suspended { reason, .. })
                if want.as_ref().is_none_or(|w| *w == reason) =>
            {
                return
            }
            Some(_) => continue,
            None => panic!("{}: no Suspended {want:?}", h.name()),
        }
    }
}

#[test]
fn partner_restart_kills_the_old_rkeys() {
    let (ca, cb) = configs("rk-restart");
    let a = Arc::new(Manager::start(ca).expect("start A"));
    let b1 = Arc::new(Manager::start(cb.clone()).expect("start B"));
    let ha = client(&a, "c");
    let hb = client(&b1, "c");
    let _held = ready(&ha);
    let old = partner_mem(&ready(&hb));
    // B restarts: A tears the client down (revokes) and re-creates it on the same link and
    // protection domain for the new B.
    drop(hb);
    b1.shutdown();
    drop(b1);
    wait_suspended(&ha, None);
    let b2 = Arc::new(Manager::start(cb).expect("restart B"));
    let hb = client(&b2, "c");
    let conn = ready(&hb);
    // A stale peer (anything that kept the old descriptor) is refused.
    new_key_works_old_key_refused(&conn, old);
}

#[test]
fn re_established_client_kills_the_old_rkeys() {
    let (a, b) = started("rk-failed");
    let (ha, hb) = (client(&a, "c"), client(&b, "c"));
    let _held = ready(&ha);
    let old = partner_mem(&ready(&hb));
    // A's client saw a failed completion (as after a link failure or a queue pair error):
    // torn down at both nodes and re-established.
    ha.report_failure("test: queue pair failed");
    let _ = ready(&ha);
    let conn = ready(&hb);
    new_key_works_old_key_refused(&conn, old);
}

#[test]
fn released_client_kills_its_rkeys() {
    let (a, b) = started("rk-release");
    let (victim_a, victim_b) = (client(&a, "victim"), client(&b, "victim"));
    let (carrier_a, carrier_b) = (client(&a, "carrier"), client(&b, "carrier"));
    let _held = (ready(&victim_a), ready(&carrier_a));
    let victim_mem = partner_mem(&ready(&victim_b));
    let carrier = ready(&carrier_b);
    // Same link, same protection domain: another client's queue pair reaches the victim's
    // region while it is registered...
    assert_eq!(write(&carrier, victim_mem), CompletionStatus::Success);
    // ...and not once A released the client.
    victim_a.close();
    wait_suspended(&victim_b, Some(SuspendReason::PartnerReleased));
    assert_eq!(
        write(&carrier, victim_mem),
        CompletionStatus::RemoteAccessError
    );
}

#[test]
fn released_region_kills_its_rkey() {
    let (a, b) = started("rk-region");
    let ha = a
        .register(
            ClientSpec::new("c", BandwidthClass::Low, 1)
                .region(MEM, 4096, Access::REMOTE_WRITE)
                .region("extra", 4096, Access::REMOTE_WRITE),
        )
        .expect("register");
    let hb = client(&b, "c");
    let _held = ready(&ha);
    let conn = ready(&hb);
    let extra = conn.partner_region("extra").expect("extra").descriptor;
    assert_eq!(write(&conn, extra), CompletionStatus::Success);
    ha.release_region("extra").expect("release");
    // B learns of the release by an Updated event (without "extra"); its queue pair was
    // broken by nothing, but the first WRITE above left it usable, so reuse it.
    let deadline = Instant::now() + WAIT;
    loop {
        match hb
            .next_event_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
        {
            Some(ClientEvent::Updated(c)) if c.partner_region("extra").is_none() => break,
            Some(_) => continue,
            None => panic!("no Updated event without the released region"),
        }
    }
    assert_eq!(write(&conn, extra), CompletionStatus::RemoteAccessError);
}

/// A restarted process opens a new soft device: it must not hand out the keys of its previous
/// run again (they were deterministic, 1, 2, 3... per device, so after a partner restart its
/// regions had the very descriptors a stale peer still held). Ten fresh devices registering
/// the same sequence of regions get ten different key sets.
#[test]
fn a_new_soft_device_does_not_reuse_the_keys_of_the_last_run() {
    let runs: Vec<Vec<u32>> = (0..10)
        .map(|_| {
            let p = suite::Pair::sim(0);
            (0..4)
                .map(|_| p.b.region(64, Access::REMOTE_WRITE).descriptor().rkey)
                .collect()
        })
        .collect();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            assert!(a.iter().all(|k| !b.contains(k)), "{a:x?} / {b:x?}");
        }
    }
}

/// The two links of the cut test: loopback addresses no other test of this file uses, since
/// a simulated cut holds for every soft device of the process bound to the address.
fn cut_test_addrs(l: u8) -> (IpAddr, IpAddr) {
    (
        format!("127.78.{l}.1").parse().expect("ip"),
        format!("127.78.{l}.2").parse().expect("ip"),
    )
}

/// A simulated cable pull at both ends of a link; dropping it (also on a panic) restores
/// the link.
struct Cut(Vec<IpAddr>);

impl Cut {
    fn new(ends: (IpAddr, IpAddr)) -> Cut {
        let ends = vec![ends.0, ends.1];
        for a in &ends {
            soft::set_cut(*a, true);
        }
        Cut(ends)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for a in &self.0 {
            soft::set_cut(*a, false);
        }
    }
}

/// Waits for a `Ready` on `link`, skipping other events (earlier links included).
fn ready_on(h: &ClientHandle, link: u8) -> Connection {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match h.next_event_timeout(left).ok() {
            Some(ClientEvent::Ready(c)) if c.link == link => return c,
            Some(ClientEvent::Ready(c)) => seen.push(format!("Ready on link {}", c.link)),
            Some(ClientEvent::Suspended { link, reason }) => {
                seen.push(format!("Suspended on link {link}: {reason:?}"))
            }
            Some(ClientEvent::Updated(c)) => seen.push(format!("Updated on link {}", c.link)),
            Some(ClientEvent::Refused(m)) => panic!("{}: refused: {m}", h.name()),
            None => panic!("{}: not ready on link {link}; saw {seen:?}", h.name()),
        }
    }
}

/// A failover and the move back kill the keys of the link left. "victim" (low class) is homed
/// on link 0 and "carrier" (high class) has link 1 to itself. Link 0 is cut at both ends: the
/// victim fails over to link 1, then, once link 0 is restored and the hysteresis has passed,
/// moves back home. A keeps every victim connection (and so its regions registered) to the
/// end; B writes.
///
/// A key of one link names nothing on another link's device, so the checks that can fail
/// without the revoke are those over the link the key was issued on, whose protection domain
/// outlives the cut and the move: after the move back, the victim's new queue pair on link 0
/// is refused A's link 0 region from before the failover, and the carrier, still on link 1,
/// is refused the victim's link 1 region from before the move back (which it could write
/// while the victim was there).
#[test]
fn failover_and_move_back_kill_the_old_rkeys() {
    init_logs();
    let (ca, cb) = pair(
        &temp_dir("rk-cut"),
        2,
        cut_test_addrs,
        ProviderChoice::Soft,
        port_base(),
    );
    let a = Arc::new(Manager::start(ca).expect("start A"));
    let b = Arc::new(Manager::start(cb).expect("start B"));
    let carrier_spec = || {
        ClientSpec::new("carrier", BandwidthClass::High, 1).region(MEM, 4096, Access::REMOTE_WRITE)
    };
    let (victim_a, victim_b) = (client(&a, "victim"), client(&b, "victim"));
    let carrier_a = a.register(carrier_spec()).expect("register carrier");
    let carrier_b = b.register(carrier_spec()).expect("register carrier");
    let mut held = vec![ready_on(&victim_a, 0), ready_on(&carrier_a, 1)];
    let carrier = ready_on(&carrier_b, 1);
    let home = ready_on(&victim_b, 0);
    let key0 = partner_mem(&home);
    assert_eq!(
        write(&home, key0),
        CompletionStatus::Success,
        "before the cut"
    );

    // Cable pull on link 0: the victim fails over to link 1, with new keys there.
    let started = Instant::now();
    let cut = Cut::new(cut_test_addrs(0));
    held.push(ready_on(&victim_a, 1));
    let away = ready_on(&victim_b, 1);
    let failover = started.elapsed();
    let key1 = partner_mem(&away);
    // The carrier shares link 1's protection domain: it reaches the victim's new region.
    assert_eq!(write(&carrier, key1), CompletionStatus::Success);
    // Through the new connection the new key works and the link 0 key is refused (by the
    // other device already; the revoke shows after the move back, on link 0 itself).
    new_key_works_old_key_refused(&away, key0);

    // Link 0 restored: the victim goes home after the hysteresis.
    let restored = Instant::now();
    drop(cut);
    held.push(ready_on(&victim_a, 0));
    let back = ready_on(&victim_b, 0);
    let move_back = restored.elapsed();
    eprintln!("failover after {failover:?}, back on link 0 {move_back:?} after the restore");
    let key2 = partner_mem(&back);
    assert_ne!(key2.rkey, key0.rkey, "a new registration, a new key");
    assert_eq!(write(&back, key2), CompletionStatus::Success);
    let stale = [
        (
            "link 0 key from before the failover, over link 0",
            write(&back, key0),
        ),
        (
            "link 1 key from before the move back, over link 1",
            write(&carrier, key1),
        ),
    ];
    assert!(
        stale
            .iter()
            .all(|(_, s)| *s == CompletionStatus::RemoteAccessError),
        "old keys still reach memory: {stale:?}"
    );
    let s = a.status().expect("status");
    let victim = s
        .clients
        .iter()
        .find(|c| c.name == "victim")
        .expect("victim");
    assert!(victim.counters.failovers >= 1, "{victim:#?}");
    drop(held);
}

/// The soft provider seals the manager's queue pairs' packets under the link session's key
/// (docs/security.md P16): a forger who knows a client queue pair's QPNs, its next PSN and
/// the partner region's rkey (all visible on the wire) writes nothing; the packet is dropped
/// and counted in the link's `unauthenticated_packets`, and the genuine WRITE at that PSN is
/// taken afterwards.
#[test]
fn a_forged_write_into_a_managed_queue_pair_is_dropped() {
    use interlink::fabric::soft::wire::{psn_add, Body, Packet};
    let (a, b) = started("rk-sealed");
    let (ha, hb) = (client(&a, "c"), client(&b, "c"));
    let (ca, cb) = (ready(&ha), ready(&hb));
    let target = partner_mem(&ca);
    let src = ca.region(MEM).expect("mem");
    let dst = cb.region(MEM).expect("mem");
    src.write(0, &[0x11; 8]).unwrap();
    assert_eq!(write(&ca, target), CompletionStatus::Success);
    let mut got = [0u8; 8];
    dst.read(0, &mut got).unwrap();
    assert_eq!(got, [0x11; 8]);
    // The next WRITE of A's queue pair 0 carries its first PSN + 1: forge it.
    let ea = ca.qp(0).unwrap().queue_pair().endpoint().unwrap();
    let eb = cb.qp(0).unwrap().queue_pair().endpoint().unwrap();
    let mut frame = Vec::new();
    Packet {
        dst_qpn: eb.qpn,
        src_qpn: ea.qpn,
        psn: psn_add(ea.psn, 1),
        body: Body::Write {
            addr: target.addr,
            rkey: target.rkey,
            imm: None,
            payload: b"forged!!",
        },
    }
    .encode(&mut frame);
    let dropped = || {
        b.status().unwrap().links[0]
            .counters
            .unauthenticated_packets
    };
    let before = dropped();
    suite::send_soft_frames(&eb, [frame.as_slice()]);
    let t0 = Instant::now();
    while dropped() < before + 1 {
        dst.read(0, &mut got).unwrap();
        assert_ne!(&got, b"forged!!", "the forged WRITE reached the region");
        assert!(t0.elapsed() < WAIT, "the forged WRITE was never counted");
        std::thread::sleep(Duration::from_millis(2));
    }
    src.write(0, &[0x22; 8]).unwrap();
    assert_eq!(write(&ca, target), CompletionStatus::Success);
    dst.read(0, &mut got).unwrap();
    assert_eq!(got, [0x22; 8], "the genuine WRITE at that PSN");
}
