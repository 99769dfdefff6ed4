//! Old remote keys stop working (docs/security.md, "Stale rkeys"): after a partner restart
//! (the links reconnect), a client failure (the client is re-established, as after a failover)
//! and a client release (the whole client, or one region), a WRITE naming the partner's old
//! region descriptor fails with `RemoteAccessError`, while the same WRITE to the current
//! descriptor, over the same queue pair, succeeds (so the old key would work if it were not
//! revoked: every client of a link shares the link's protection domain, which outlives
//! reconnects). The local client keeps its old `Connection` (and so its region handles)
//! across the teardown, as a real client does until it has handled `Suspended`: what kills the
//! key is the manager's revoke, not the memory being freed. Two managers in one process on the soft provider over loopback; link cuts
//! (failover) run across namespaces in tests/manager_netns.rs, on soft and on verbs.

mod manager_pair;
mod suite;

use interlink::fabric::{
    Access, CompletionStatus, ProviderChoice, RegionDescriptor, SendOp, SendRequest,
};
use interlink::manager::{
    BandwidthClass, ClientEvent, ClientHandle, ClientSpec, Connection, Manager, NodeConfig,
    SuspendReason,
};
use manager_pair::*;
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

fn started(tag: &str) -> (Manager, Manager) {
    let (ca, cb) = configs(tag);
    (
        Manager::start(ca).expect("start A"),
        Manager::start(cb).expect("start B"),
    )
}

/// Over `conn`, the partner's current region takes a WRITE; its `old` descriptor is refused.
fn new_key_works_old_key_refused(conn: &Connection, old: RegionDescriptor) {
    let new = partner_mem(conn);
    assert_ne!(new.rkey, old.rkey, "a new registration, a new key");
    assert_eq!(write(conn, new), CompletionStatus::Success);
    assert_eq!(write(conn, old), CompletionStatus::RemoteAccessError);
}

fn client(m: &Manager, name: &str) -> ClientHandle {
    m.register(ClientSpec::new(name, BandwidthClass::Low, 1).region(
        MEM,
        4096,
        Access::REMOTE_WRITE,
    ))
    .expect("register")
}

fn ready(h: &ClientHandle) -> Connection {
    h.wait_ready(WAIT)
        .unwrap_or_else(|| panic!("{} not ready", h.name()))
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
        match h.next_event(left) {
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
    let a = Manager::start(ca).expect("start A");
    let b1 = Manager::start(cb.clone()).expect("start B");
    let ha = client(&a, "c");
    let hb = client(&b1, "c");
    let _held = ready(&ha);
    let old = partner_mem(&ready(&hb));
    // B restarts: A tears the client down (revokes) and re-creates it on the same link and
    // protection domain for the new B.
    drop(hb);
    drop(b1);
    wait_suspended(&ha, None);
    let b2 = Manager::start(cb).expect("restart B");
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
        match hb.next_event(deadline.saturating_duration_since(Instant::now())) {
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
