//! Every checker of the swarm can fail: each test here runs the pair without faults, injects
//! one deliberate violation (a buggy replay, a second server, a forged MBWAIT, a duplicated or
//! skipped delivery, a rolled-back or mixed write, a pair that cannot converge, logs that
//! disagree) and asserts the checker catches it.

use crate::giveback_sim::{World as GbWorld, A, B, I};
use crate::messaging_sim::{Ledger, Spec, SpecKind};
use crate::mirror_log_sim::check_replay;
use crate::world::{World, LIVENESS_STEPS};
use crate::writeback::{block_bytes, version_in, Issued};
use interlink::clients::giveback::{NodeState, StateBlock};
use interlink::clients::mirror::{replay, ReplayedRecord};
use interlink::messaging::{Class, Handler, Message};
use std::time::Duration;

/// A pair that ran `steps` steps without faults (both up, traffic flowing).
pub fn warm(seed: u64, steps: u64) -> World {
    let mut w = World::new(seed);
    for _ in 0..steps {
        w.step(false);
    }
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    w
}

#[test]
fn checker_log_replay_catches_lost_and_duplicated_records() {
    let w = warm(11, 120);
    let mut lanes = w.logs.borrow_mut();
    let lane = &mut lanes[0];
    let o = lane.oracle();
    let good = replay(&lane.mirror, None).expect("mirror replays");
    assert!(
        o.acked > good.checkpoint,
        "no acknowledged record after the checkpoint: {o:?}"
    );
    check_replay(&good, &o, &lane.payloads, "good").expect("a correct replay passes");
    // A buggy replay that drops the last acknowledged record.
    let mut dropped = good.clone();
    let k = dropped
        .records
        .iter()
        .position(|r| r.seq == o.acked)
        .expect("acknowledged record replayed");
    dropped.records.truncate(k);
    let e = check_replay(&dropped, &o, &lane.payloads, "dropped").unwrap_err();
    assert!(e.contains("lost"), "{e}");
    // One that replays a record twice.
    let mut twice = good.clone();
    let r = twice.records[0].clone();
    twice.records.insert(
        1,
        ReplayedRecord {
            seq: r.seq,
            payload: r.payload,
        },
    );
    check_replay(&twice, &o, &lane.payloads, "twice").unwrap_err();
    // A mirror region that lost the record's bytes: the takeover replay check fails.
    let p = &lane.payloads[&o.acked];
    let at = lane
        .mirror
        .windows(p.len())
        .position(|x| x == p.as_slice())
        .expect("record in the mirror");
    lane.mirror[at] ^= 0xff;
    lane.takeover_replay(None, 0, false);
    assert!(
        lane.violations.iter().any(|v| v.contains("lost")),
        "{:?}",
        lane.violations
    );
}

#[test]
fn checker_serving_catches_two_servers() {
    let mut w = warm(12, 40);
    w.check_serving().expect("one server per set");
    w.gb.node_mut(B).serving.insert(A);
    let e = w.check_serving().unwrap_err();
    assert!(e.contains("served by nodes"), "{e}");
}

/// The partner's state block claims MBWAIT while it truly waits in GIVEWAIT (a forged or
/// stale READ): the survivor gives back, and the giveback checker sees the truth.
#[test]
fn checker_giveback_catches_giveback_to_partner_not_in_mbwait() {
    let mut w = GbWorld::new(13);
    w.run_until(I * 3);
    assert!(w.converged());
    w.crash(B);
    let takeover = w.run_until_true(60, |w| w.state(A) == Some(NodeState::Takeover));
    assert!(takeover.is_some(), "{}", w.trace_tail(40));
    let givewait = w.run_until_true(60, |w| w.state(B) == Some(NodeState::GiveWait));
    assert!(givewait.is_some(), "{}", w.trace_tail(40));
    for _ in 0..40 {
        if !w.violations.is_empty() {
            break;
        }
        let n = w.node_mut(B);
        if let Some(b) = n.published {
            n.published = Some(StateBlock {
                state: NodeState::MbWait,
                ..b
            });
        }
        w.run_for(Duration::from_millis(10));
    }
    assert!(
        w.violations.iter().any(|v| v.contains("gave back while")),
        "{:?}\n{}",
        w.violations,
        w.trace_tail(40)
    );
}

#[test]
fn checker_ledger_catches_duplicate_and_skipped_deliveries() {
    let mut w = warm(14, 80);
    let sim = &mut w.msg;
    // A message from A that B got, delivered again.
    let (class, k, code, flags, len) = {
        let l = sim.ledger.borrow();
        let found = (0..2).find_map(|c| {
            let st = &l.dirs[0].streams[c];
            (0..st.metas.len())
                .find(|&k| st.delivered[k] && st.metas[k].call.is_none())
                .map(|k| (c, k, st.metas[k].code, st.metas[k].flags, st.metas[k].len))
        });
        found.expect("a delivered message")
    };
    let deliver =
        |sim: &mut crate::messaging_sim::Sim, class: usize, seq: u64, code, flags, len| {
            let payload = Ledger::payload_bytes(0, class, seq, len);
            let msg = Message {
                code,
                flags,
                class: [Class::Control, Class::Bulk][class],
                payload: &payload,
                call: None,
            };
            let side = &mut sim.sides[1];
            side.h.on_message(&msg, side.win.outbox());
            sim.ledger.borrow_mut().failure.take()
        };
    let e = deliver(sim, class, k as u64 + 1, code, flags, len).expect("duplicate caught");
    assert!(e.contains("twice"), "{e}");
    // Two new messages queued; the second delivered first.
    let spec = Spec {
        class: [Class::Control, Class::Bulk][class],
        kind: SpecKind::Send,
        len: 32,
        need: 32,
        notify: false,
        unhandled: false,
    };
    assert!(sim.queue(0, spec) && sim.queue(0, spec));
    let (seq, code, flags) = {
        let l = sim.ledger.borrow();
        let st = &l.dirs[0].streams[class];
        let m = st.metas.last().expect("queued");
        (st.metas.len() as u64, m.code, m.flags)
    };
    let e = deliver(sim, class, seq, code, flags, 32).expect("skip caught");
    assert!(!e.is_empty());
}

#[test]
fn checker_writeback_catches_lost_and_mixed_writes() {
    let mut w = warm(15, 120);
    let lane = &mut w.wbs[0];
    lane.takeover_check().expect("a correct copy passes");
    // A block whose mirrored version is only in the mirror's copy (not destaged since).
    let mut acked: Vec<(u64, u64)> = lane.acked.iter().map(|(&b, &v)| (b, v)).collect();
    acked.sort_unstable();
    let m = lane.mirror.as_ref().expect("mirror up");
    let (block, acked) = acked
        .into_iter()
        .find(|&(b, v)| {
            v > 0
                && lane.disk.get(&b).copied().unwrap_or(0) < v
                && version_in(m.table(), b) == Ok(v)
        })
        .expect("a mirrored write");
    let issued = lane.issued.values().max().copied().unwrap_or(0);
    let m = lane.mirror.as_mut().expect("mirror up");
    let t = m.table_mut();
    let buffer = t.lookup(0, block).expect("block mirrored");
    // A recovery that rolled an acknowledged block back to an older version.
    t.block_data_mut(buffer)
        .unwrap()
        .copy_from_slice(&block_bytes(acked - 1, block));
    let e = lane.takeover_check().unwrap_err();
    assert!(e.contains("acknowledged"), "{e}");
    // A torn block.
    let m = lane.mirror.as_mut().expect("mirror up");
    m.table_mut().block_data_mut(buffer).unwrap()[100] ^= 1;
    let e = lane.takeover_check().unwrap_err();
    assert!(e.contains("torn"), "{e}");
    // A write in progress over two blocks that only one of them shows.
    let v = issued + 1;
    let m = lane.mirror.as_mut().expect("mirror up");
    m.table_mut()
        .block_data_mut(buffer)
        .unwrap()
        .copy_from_slice(&block_bytes(v, block));
    assert_eq!(version_in(m.table(), block), Ok(v));
    let (first, other) = if block + 1 < crate::writeback::SPACE {
        (block, block + 1)
    } else {
        (block - 1, block)
    };
    let _ = other;
    lane.issued.insert(first, v);
    lane.issued.insert(first + 1, v);
    lane.inflight.insert(
        u64::MAX,
        Issued {
            first,
            blocks: 2,
            version: v,
        },
    );
    let e = lane.takeover_check().unwrap_err();
    assert!(e.contains("mixed"), "{e}");
}

#[test]
fn checker_liveness_catches_a_pair_that_does_not_converge() {
    let mut w = warm(16, 40);
    w.gb.restart_delay = I * 10_000;
    w.gb.crash(B);
    let e = w.liveness(200).unwrap_err();
    assert!(e.contains("no convergence"), "{e}");
}

#[test]
fn checker_logs_agree_catches_a_diverged_mirror() {
    let mut w = warm(17, 80);
    let took = w.liveness(LIVENESS_STEPS).expect("converges");
    assert!(took < LIVENESS_STEPS);
    let mut lanes = w.logs.borrow_mut();
    let lane = &mut lanes[1];
    lane.check_agree().expect("logs agree");
    let r = replay(&lane.mirror, None).expect("replays");
    let p = &r
        .records
        .last()
        .expect("a record after the checkpoint")
        .payload;
    let at = lane
        .mirror
        .windows(p.len())
        .position(|x| x == p.as_slice())
        .expect("record in the mirror");
    lane.mirror[at] ^= 0x55;
    lane.check_agree().unwrap_err();
}
