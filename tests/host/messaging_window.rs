//! The messaging window (`interlink::messaging::Window`) in a deterministic simulation: two
//! windows exchange frames over a simulated RDMA network with virtual time and seeded faults
//! (loss, duplication, reordering, delay, corruption, link cuts, partner failure and restart),
//! for thousands of seeds; plus targeted tests of single behaviours.
//!
//! Seeds: `MESSAGING_SEEDS=N` sets how many random seeds the main loop runs (the other loops
//! scale with it); `SEED=x cargo test --test host messaging_window::replay` replays one seed in every
//! scenario (`MESSAGING_TRACE=1` prints the last events before a failure).

use crate::messaging_sim;

use interlink::messaging::wire::{FrameHeader, FRAME_HEADER_LEN};
use interlink::messaging::{
    AckStatus, Arrival, CallFailure, CallId, Class, Handler, Head, Message, MessagingError, Outbox,
    Transmit, Window, WindowConfig,
};
use messaging_sim::pair::{small_cfg, Pair};
use messaging_sim::seeds::{main_seed_count, run_seeds};
use messaging_sim::{Action, Faults, Mix, Sim, MS, US};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------------- configurations

/// A small random configuration: wrap-around, aggregation and full windows all happen.
fn random_config(rng: &mut StdRng) -> WindowConfig {
    let slots: u16 = rng.gen_range(4..=16);
    let frame_size: u16 = rng.gen_range(256..=1024);
    let control_slots = if rng.gen_bool(0.1) {
        0
    } else {
        rng.gen_range(1..=slots / 4)
    };
    let mut cfg = WindowConfig {
        slots,
        control_slots,
        frame_size,
        max_payload: frame_size / 3 + rng.gen_range(0..=frame_size / 8),
        aggregate: rng.gen_bool(0.6),
        retransmit_after: Duration::from_micros(rng.gen_range(300..=3000)),
        max_queued: if rng.gen_bool(0.2) {
            rng.gen_range(4..=64)
        } else {
            100_000
        },
    };
    if rng.gen_bool(0.2) {
        // The largest payload the configuration accepts for this frame size.
        cfg.max_payload = frame_size - FRAME_HEADER_LEN as u16;
        while cfg.validate().is_err() {
            cfg.max_payload -= 1;
        }
    }
    cfg.validate().expect("valid random configuration");
    cfg
}

/// Retransmission timeout comfortably above the round trip of `faults` (plus a random part,
/// sometimes below a reordered round trip: spurious retransmissions must be harmless).
fn fit_rto(rng: &mut StdRng, cfg: &mut WindowConfig, faults: &Faults) {
    let rtt = 2 * (faults.delay_max + faults.poll_max);
    let extra = rng.gen_range(50..=2000) * US;
    cfg.retransmit_after = Duration::from_nanos(rtt + extra);
}

// ---------------------------------------------------------------------- main scenario

/// Both sides send numbered messages and calls concurrently under random faults and link
/// cuts; then the faults stop and everything must arrive exactly once, in order.
fn main_scenario(seed: u64) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d61_696e);
    let mut cfg = random_config(&mut rng);
    let fifo = rng.gen_bool(0.25);
    let faults = Faults::random(&mut rng, fifo);
    fit_rto(&mut rng, &mut cfg, &faults);
    let mix = Mix::random(&mut rng);
    let mut sim = Sim::new(seed, cfg, faults, mix);
    {
        let mut l = sim.ledger.borrow_mut();
        l.handler_sends = rng.gen_range(0..=20);
        l.stash_prob = rng.gen_range(0.0..0.6);
    }
    let stagger = rng.gen_range(0..=30) * US;
    sim.links_up(0, stagger);
    let work = rng.gen_range(1..=6) * MS;
    for side in 0..2 {
        let mut budget: usize = rng.gen_range(10..=100);
        while budget > 0 {
            let n = rng.gen_range(1..=8).min(budget);
            budget -= n;
            let at = rng.gen_range(0..work);
            sim.schedule(at, Action::Burst { side, n });
        }
        for _ in 0..rng.gen_range(0..=12) {
            let at = rng.gen_range(0..=work);
            sim.schedule(at, Action::Drain { side });
        }
    }
    for _ in 0..rng.gen_range(0..=3) {
        let at = rng.gen_range(0..work);
        let down_for = rng.gen_range(10..=2000) * US;
        let stagger = rng.gen_range(0..=100) * US;
        sim.schedule(at, Action::Cut { down_for, stagger });
    }
    sim.run_until(work);
    sim.settle_down("liveness");
    sim.check_complete("liveness");
    for i in 0..2 {
        if sim.sides[i].win.stats().resets != 0 {
            sim.fail(&format!(
                "side {i} reset its conversation without a partner failure"
            ));
        }
    }
    sim
}

#[test]
fn seeds_main() {
    let cov = run_seeds("seeds_main", 1_000_000, main_seed_count(), main_scenario);
    // The faults really happened (over thousands of seeds each kind occurs many times).
    if main_seed_count() >= 200 {
        assert!(cov.get(&cov.retransmitted) > 0, "{}", cov.line());
        assert!(cov.get(&cov.duplicates) > 0, "{}", cov.line());
        assert!(cov.get(&cov.out_of_order) > 0, "{}", cov.line());
        assert!(cov.get(&cov.corrupt) > 0, "{}", cov.line());
    }
}

// ---------------------------------------------------------------------- partner failure

/// Faults of an RDMA reliable connection: writes arrive intact, in order, once, with random
/// delays; what is lost is lost by the connection failing (a link cut loses everything in
/// flight). Conversation changes are recognised by what arrives in that order; isolated
/// loss, duplication, reordering and corruption within a conversation are the main
/// scenario's.
fn rc_faults(rng: &mut StdRng) -> Faults {
    Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        corrupt: 0.0,
        ..Faults::random(rng, true)
    }
}

/// Traffic under faults (in-order network, as RDMA reliable connections deliver), then one
/// side declares the partner failed (or both do, or one restarts with a new window); pending
/// calls and notifications fail exactly once; after the faults stop the windows converge to
/// a new conversation in which fresh traffic arrives exactly once, in order.
fn partner_scenario(seed: u64) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7061_7274);
    let mut cfg = random_config(&mut rng);
    let faults = rc_faults(&mut rng);
    fit_rto(&mut rng, &mut cfg, &faults);
    let mix = Mix::random(&mut rng);
    let mut sim = Sim::new(seed, cfg, faults, mix);
    {
        let mut l = sim.ledger.borrow_mut();
        l.allow_inoperative = true;
        l.handler_sends = rng.gen_range(0..=10);
        l.stash_prob = rng.gen_range(0.0..0.6);
    }
    sim.links_up(0, rng.gen_range(0..=30) * US);
    let work = rng.gen_range(1..=5) * MS;
    for side in 0..2 {
        let mut budget: usize = rng.gen_range(10..=80);
        while budget > 0 {
            let n = rng.gen_range(1..=8).min(budget);
            budget -= n;
            sim.schedule(rng.gen_range(0..work), Action::Burst { side, n });
        }
        for _ in 0..rng.gen_range(0..=8) {
            sim.schedule(rng.gen_range(0..=work), Action::Drain { side });
        }
    }
    for _ in 0..rng.gen_range(0..=3) {
        let down_for = rng.gen_range(10..=1000) * US;
        let stagger = rng.gen_range(0..=50) * US;
        sim.schedule(rng.gen_range(0..work), Action::Cut { down_for, stagger });
    }
    // The failure events (sometimes two).
    let mut restarted = [false; 2];
    let mut declared = [false; 2];
    for _ in 0..if rng.gen_bool(0.2) { 2 } else { 1 } {
        let at = rng.gen_range(0..work);
        let side = rng.gen_range(0..2);
        match rng.gen_range(0..6) {
            0 | 1 => {
                declared[side] = true;
                sim.schedule(at, Action::PartnerFailed { side });
            }
            2 => {
                declared = [true, true];
                let later = if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(0..=200) * US
                };
                sim.schedule(at, Action::PartnerFailed { side });
                let t = (at + later).min(work - 1);
                sim.schedule(t, Action::PartnerFailed { side: 1 - side });
            }
            3 => {
                // A manager failover declares the partner failed while the link is down.
                declared[side] = true;
                let down_for = rng.gen_range(10..=1000) * US;
                sim.schedule(
                    at,
                    Action::Cut {
                        down_for,
                        stagger: 20 * US,
                    },
                );
                let t = (at + rng.gen_range(0..=down_for)).min(work - 1);
                sim.schedule(t, Action::PartnerFailed { side });
            }
            _ => {
                restarted[side] = true;
                let cut = rng.gen_bool(0.7);
                let down_for = rng.gen_range(10..=1000) * US;
                sim.schedule(
                    at,
                    Action::Restart {
                        side,
                        cut,
                        down_for,
                    },
                );
            }
        }
    }
    let before = [sim.sides[0].win.session(), sim.sides[1].win.session()];
    sim.run_until(work);
    sim.settle_down("after the failure");
    // Everything pending before has been reported (delivered or not, once).
    sim.ledger.borrow_mut().require_from_now();
    sim.check_complete("after the failure");
    if !sim.ledger.borrow().doomed.is_empty() {
        sim.fail("calls pending at a restart were never failed");
    }

    // Each side says something so both learn the new conversation (a side that declared
    // the partner failed may not have heard from it since).
    for side in 0..2 {
        sim.schedule(sim.now, Action::Burst { side, n: 1 });
    }
    sim.settle_down("handshake");
    sim.check_complete("handshake");
    let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
    if a.peer_session() != Some(b.session()) || b.peer_session() != Some(a.session()) {
        sim.fail("the windows did not converge to one conversation");
    }
    // A side that declared its partner failed, or restarted, is in a new conversation. (Its
    // partner may carry on with its own: it has started over in answer, or never knew the
    // old one.)
    for i in 0..2 {
        if (declared[i] || restarted[i]) && sim.sides[i].win.session() == before[i] {
            sim.fail(&format!(
                "side {i} declared its partner failed or restarted but kept conversation {:#x}",
                before[i]
            ));
        }
    }

    // Fresh traffic: nothing may fail now.
    let sessions = [sim.sides[0].win.session(), sim.sides[1].win.session()];
    {
        let mut l = sim.ledger.borrow_mut();
        l.allow_inoperative = false;
        l.stash_prob = 0.3;
        l.require_from_now();
    }
    sim.faults = rc_faults(&mut rng);
    let t0 = sim.now;
    for side in 0..2 {
        for k in 0..rng.gen_range(1..=6) {
            let n = rng.gen_range(1..=6);
            sim.schedule(t0 + k * 100 * US, Action::Burst { side, n });
            sim.schedule(t0 + k * 150 * US, Action::Drain { side });
        }
    }
    sim.run_until(t0 + MS);
    sim.settle_down("fresh traffic");
    sim.check_complete("fresh traffic");
    if [sim.sides[0].win.session(), sim.sides[1].win.session()] != sessions {
        sim.fail("a conversation reset during fresh traffic");
    }
    sim
}

#[test]
fn seeds_partner_failure() {
    let n = (main_seed_count() / 3).max(1);
    let cov = run_seeds("seeds_partner_failure", 2_000_000, n, partner_scenario);
    if n >= 100 {
        assert!(cov.get(&cov.resets) > 0, "{}", cov.line());
        assert!(cov.get(&cov.stale) > 0, "{}", cov.line());
    }
}

// ---------------------------------------------------------------------- full duplex

/// One side (sometimes both) floods bulk messages over a bandwidth-limited in-order link
/// while both sides make control calls: control calls keep completing within a few round
/// trips though the bulk queue never empties, and bulk-only frames never take the control
/// slots.
fn duplex_scenario(seed: u64) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6475_706c);
    let slots: u16 = rng.gen_range(4..=16);
    let frame_size: u16 = rng.gen_range(256..=1024);
    let mut cfg = WindowConfig {
        slots,
        control_slots: rng.gen_range(1..=slots / 4),
        frame_size,
        max_payload: frame_size / 3,
        aggregate: rng.gen_bool(0.5),
        retransmit_after: Duration::from_secs(1),
        max_queued: 100_000,
    };
    let ns_per_byte = rng.gen_range(1..=8);
    let faults = Faults {
        delay_min: US,
        delay_max: rng.gen_range(1..=10) * US,
        ns_per_byte,
        poll_max: rng.gen_range(0..=3) * US,
        ..Faults::clean()
    };
    // One round trip with a full window queued on the wire in each direction.
    let window_wire = u64::from(slots) * (u64::from(frame_size) + 64) * ns_per_byte;
    let rt = 2 * (faults.delay_max + faults.poll_max + window_wire + US);
    cfg.retransmit_after = Duration::from_nanos(20 * rt);
    let mut sim = Sim::new(seed, cfg.clone(), faults, Mix::random(&mut rng));
    sim.ledger.borrow_mut().stash_prob = 0.0;
    sim.links_up(0, 0);
    let flooder = (seed % 2) as usize;
    let both = rng.gen_bool(0.3);
    let end = 30 * rt;
    let queued = 4 * usize::from(slots);
    for side in 0..2 {
        if side == flooder || both {
            sim.schedule(
                0,
                Action::TopUpBulk {
                    side,
                    queued,
                    every: rt / 16,
                    until: end,
                },
            );
        }
        let every = rng.gen_range(rt / 4..=rt / 2);
        sim.schedule(
            3 * rt,
            Action::ControlCalls {
                side,
                every,
                until: end,
            },
        );
    }
    let bound = 4 * rt;
    let mut completed = 0;
    while let Some(t) = sim.next_time() {
        if t > end {
            break;
        }
        sim.now = t;
        sim.step();
        let done: Vec<_> = sim.ledger.borrow_mut().completions.drain(..).collect();
        for c in done {
            completed += 1;
            if !c.ok || c.latency > bound {
                sim.fail(&format!(
                    "control call {:?} of side {} took {}ns (bound {bound}ns = 4 round trips of {rt}ns), ok={}",
                    c.call, c.side, c.latency, c.ok
                ));
            }
            if sim.sides[flooder].win.queued() == 0 {
                sim.fail("the bulk queue ran empty: the link was not saturated");
            }
        }
    }
    let bulk_slots = usize::from(cfg.slots - cfg.control_slots);
    if sim.sides[flooder].max_bulk_only != bulk_slots {
        sim.fail(&format!(
            "the flooder had at most {} bulk-only frames in flight, expected exactly {bulk_slots}",
            sim.sides[flooder].max_bulk_only
        ));
    }
    if completed < 20 {
        sim.fail(&format!("only {completed} control calls completed"));
    }
    for s in &sim.sides {
        if s.win.stats().frames_retransmitted != 0 {
            sim.fail("retransmission on a loss-free link");
        }
    }
    sim.settle_down("after the flood");
    sim.check_complete("after the flood");
    sim
}

#[test]
fn seeds_full_duplex() {
    let n = (main_seed_count() / 15).max(1);
    run_seeds("seeds_full_duplex", 3_000_000, n, duplex_scenario);
}

/// Replays one seed in every scenario: `SEED=1234 cargo test --test host messaging_window::replay`.
#[test]
fn replay() {
    let Ok(s) = std::env::var("SEED") else {
        return;
    };
    let seed: u64 = s.parse().expect("SEED must be a number");
    for (name, f) in [
        ("main", main_scenario as fn(u64) -> Sim),
        ("partner failure", partner_scenario),
        ("full duplex", duplex_scenario),
    ] {
        let sim = f(seed);
        println!("seed {seed} {name}: ok\n{}", sim.dump());
    }
}

#[test]
fn aggregation_packs_small_messages_into_one_frame() {
    let mut p = Pair::new(small_cfg());
    for k in 0..5u8 {
        p.w[0].outbox().send(Head::bulk(7), &[k; 10]).unwrap();
    }
    p.w[0].outbox().send(Head::control(8), b"ctl").unwrap();
    let out = p.transmit(0);
    let frames: Vec<_> = out
        .iter()
        .filter(|(t, _)| matches!(t, Transmit::Frame { .. }))
        .collect();
    assert_eq!(frames.len(), 1, "six small messages, one frame: {out:?}");
    let (t, bytes) = frames[0].clone();
    let h = FrameHeader::open(&bytes).unwrap();
    assert_eq!(h.count, 6);
    assert_eq!(
        p.deliver(0, t, &bytes),
        Some(Arrival::Delivered { messages: 6 })
    );
    let got: Vec<_> = p.h[1].messages.iter().map(|m| (m.0, m.3.clone())).collect();
    // Control overtakes the bulk messages queued before it.
    let mut want = vec![(8u8, b"ctl".to_vec())];
    want.extend((0..5u8).map(|k| (7u8, vec![k; 10])));
    assert_eq!(got, want);
    // Without aggregation: one frame per message.
    let mut cfg = small_cfg();
    cfg.aggregate = false;
    let mut p = Pair::new(cfg);
    for k in 0..3u8 {
        p.w[0].outbox().send(Head::bulk(7), &[k; 10]).unwrap();
    }
    let frames = p
        .transmit(0)
        .into_iter()
        .filter(|(t, _)| matches!(t, Transmit::Frame { .. }))
        .count();
    assert_eq!(frames, 3);
}

/// A message of exactly `max_payload` fits an empty frame of the smallest frame size the
/// configuration accepts, whatever its kind: plain, built, call, and the response.
#[test]
fn max_payload_fits_an_empty_frame_of_the_smallest_accepted_size() {
    let max_payload = 200u16;
    let mut cfg = small_cfg();
    cfg.max_payload = max_payload;
    cfg.frame_size = FRAME_HEADER_LEN as u16;
    while cfg.validate().is_err() {
        cfg.frame_size += 1;
    }
    let full = vec![0xabu8; usize::from(max_payload)];
    let mut p = Pair::new(cfg.clone());
    p.w[0].outbox().send(Head::bulk(5), &full).unwrap();
    let f = full.clone();
    p.w[0]
        .outbox()
        .build(Head::bulk(5), move |b| {
            if b.len() < f.len() {
                return None;
            }
            b[..f.len()].copy_from_slice(&f);
            Some(f.len())
        })
        .unwrap();
    let (_, call) = p.w[0].outbox().call(Head::control(6), &full).unwrap();
    // The partner answers with a response of max_payload bytes.
    struct Big(usize, Vec<CallId>, usize);
    impl Handler for Big {
        fn on_message(&mut self, msg: &Message<'_>, out: &mut Outbox) -> bool {
            self.2 += 1;
            if let Some(c) = msg.call {
                out.respond(c, &vec![1u8; self.0]).unwrap();
            }
            true
        }
        fn on_response(&mut self, call: CallId, r: Result<&[u8], CallFailure>, _: &mut Outbox) {
            assert_eq!(r.map(|b| b.len()), Ok(self.0));
            self.1.push(call);
        }
    }
    let mp = usize::from(max_payload);
    let mut h = [Big(mp, vec![], 0), Big(mp, vec![], 0)];
    let t0 = p.t0;
    for _ in 0..20 {
        for i in 0..2 {
            while let Some(t) = p.w[i].poll_transmit(t0, &mut p.tx[i], &mut h[i]) {
                let j = 1 - i;
                match t {
                    Transmit::Frame { offset, len, .. } => {
                        assert!(len <= usize::from(cfg.frame_size));
                        let b = p.tx[i][offset..offset + len].to_vec();
                        p.rx[j][offset..offset + len].copy_from_slice(&b);
                        let fs = usize::from(cfg.frame_size);
                        p.w[j]
                            .handle_frame(t0, &p.rx[j][offset..offset + fs], &mut h[j])
                            .unwrap();
                    }
                    Transmit::Signal { imm } => p.w[j].handle_signal(t0, imm, &mut h[j]).unwrap(),
                }
            }
        }
    }
    assert_eq!(h[1].2, 3, "all three requests delivered");
    assert_eq!(h[0].1, vec![call], "the max-size response arrived");
    assert!(p.w[0].is_idle() && p.w[1].is_idle());
    assert_eq!(p.w[1].queued(), 0, "the response is not stuck in the queue");
}

#[test]
fn build_that_never_fits_is_not_built_exactly_once() {
    let mut p = Pair::new(small_cfg());
    let calls = std::sync::Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let id = p.w[0]
        .outbox()
        .build(Head::bulk(9).notify(), move |_| {
            c.fetch_add(1, Ordering::Relaxed);
            None
        })
        .unwrap();
    let (_, call) = p.w[0]
        .outbox()
        .call_build(Head::control(9).notify(), |_| None)
        .unwrap();
    let after = p.w[0]
        .outbox()
        .send(Head::bulk(9).notify(), b"after")
        .unwrap();
    p.run();
    p.run();
    let not_built: Vec<_> = p.h[0]
        .acks
        .iter()
        .filter(|a| a.1 == AckStatus::NotBuilt)
        .collect();
    assert_eq!(not_built.len(), 2, "{:?}", p.h[0].acks);
    assert!(not_built.iter().any(|a| a.0 == id));
    assert_eq!(p.h[0].responses, vec![(call, Err(CallFailure::NotBuilt))]);
    assert!(p.h[0].acks.contains(&(after, AckStatus::Acked)));
    assert_eq!(
        p.h[1].messages.len(),
        1,
        "only the message after them arrived"
    );
    // Tried once on a non-empty frame at most, then once on an empty one.
    assert!((1..=2).contains(&calls.load(Ordering::Relaxed)));
    assert_eq!(p.w[0].outbox().pending_calls(), 0);
}

#[test]
fn reserved_code_and_flags_are_refused() {
    let mut w = Window::new(small_cfg(), 5).unwrap();
    let out = w.outbox();
    let refused = |r: Result<(), MessagingError>| {
        assert!(matches!(r, Err(MessagingError::Queue { .. })), "{r:?}");
    };
    refused(out.send(Head::bulk(0), b"x").map(drop));
    refused(out.send(Head::control(0), b"x").map(drop));
    refused(out.build(Head::bulk(0), |_| Some(0)).map(drop));
    refused(out.call(Head::control(0), b"x").map(drop));
    refused(out.call_build(Head::control(0), |_| Some(0)).map(drop));
    for bit in [0x01u8, 0x02, 0x04, 0x08] {
        refused(out.send(Head::bulk(3).flags(bit), b"x").map(drop));
        refused(out.call(Head::bulk(3).flags(bit | 0x10), b"x").map(drop));
    }
    refused(out.send(Head::bulk(3), &[0; 161]).map(drop));
    assert_eq!(out.queued(), 0);
    assert_eq!(out.pending_calls(), 0);
    out.send(Head::bulk(3).flags(0xf0), b"x").unwrap();
    out.send(Head::bulk(255), &[0; 160]).unwrap();
}

#[test]
fn call_without_handler_fails_with_no_handler() {
    let mut p = Pair::new(small_cfg());
    p.h[1].refuse = vec![77];
    let (_, call) = p.w[0].outbox().call(Head::control(77), b"anyone?").unwrap();
    let (_, ok) = p.w[0].outbox().call(Head::control(78), b"ping").unwrap();
    p.run();
    assert_eq!(
        p.h[0].responses,
        vec![
            (call, Err(CallFailure::NoHandler)),
            (ok, Ok(b"pong".to_vec()))
        ]
    );
    assert_eq!(p.w[1].stats().unhandled, 1);
    assert!(p.w[0].is_idle() && p.w[1].is_idle());
    assert_eq!(p.w[0].outbox().pending_calls(), 0);
}

#[test]
fn a_call_the_handler_fails_carries_its_error_to_the_caller() {
    let mut p = Pair::new(small_cfg());
    p.h[1].fail = vec![77];
    let (_, failed) = p.w[0].outbox().call(Head::control(77), b"please").unwrap();
    let (_, ok) = p.w[0].outbox().call(Head::control(78), b"ping").unwrap();
    p.run();
    assert_eq!(
        p.h[0].responses,
        vec![
            (
                failed,
                Err(CallFailure::Handler {
                    code: 577,
                    reason: "refused".into()
                })
            ),
            (ok, Ok(b"pong".to_vec()))
        ]
    );
    assert_eq!(p.w[1].stats().unhandled, 0, "the handler ran");
    assert!(p.w[0].is_idle() && p.w[1].is_idle());
    assert_eq!(p.w[0].outbox().pending_calls(), 0);
}

#[test]
fn corrupt_frame_is_rejected_and_changes_nothing() {
    let mut p = Pair::new(small_cfg());
    // The conversations' announcements first, so that B owes nothing.
    p.run();
    assert!(p.w[1].is_idle());
    p.w[0].outbox().send(Head::bulk(3), b"hello world").unwrap();
    let (_, call) = p.w[0].outbox().call(Head::control(4), b"ping").unwrap();
    let out = p.transmit(0);
    let (t, bytes) = out
        .into_iter()
        .find(|(t, _)| matches!(t, Transmit::Frame { .. }))
        .unwrap();
    let Transmit::Frame { slot, .. } = t else {
        unreachable!()
    };
    let fs = usize::from(p.w[1].config().frame_size);
    let off = slot as usize * fs;
    let expected = p.w[1].expected();
    for bit in 0..bytes.len() * 8 {
        let mut g = bytes.clone();
        g[bit / 8] ^= 1 << (bit % 8);
        let mut ring = p.rx[1].clone();
        ring[off..off + g.len()].copy_from_slice(&g);
        let r = p.w[1].handle_frame(p.t0, &ring[off..off + fs], &mut p.h[1]);
        assert!(r.is_err(), "bit {bit} flipped: {r:?}");
        assert_eq!(p.w[1].expected(), expected);
        assert_eq!(p.w[1].peer_session(), Some(0x1111_1111));
        assert!(p.w[1].is_idle(), "nothing owed after a corrupt frame");
        assert!(p.h[1].messages.is_empty());
        assert!(p.transmit(1).is_empty());
    }
    assert_eq!(p.w[1].stats().corrupt, bytes.len() as u64 * 8);
    assert_eq!(p.w[1].stats().frames_delivered, 1, "only the announcement");
    // The intact frame is still accepted afterwards.
    assert_eq!(
        p.deliver(0, t, &bytes),
        Some(Arrival::Delivered { messages: 2 })
    );
    p.run();
    assert_eq!(p.h[0].responses, vec![(call, Ok(b"pong".to_vec()))]);
}

// ---------------------------------------------------------------------- conversation changes

/// A clean in-order simulation for targeted conversation tests; calls are answered at once.
fn clean_sim(seed: u64) -> Sim {
    let mut cfg = small_cfg();
    cfg.retransmit_after = Duration::from_micros(200);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed, cfg, Faults::clean(), Mix::random(&mut rng));
    {
        let mut l = sim.ledger.borrow_mut();
        l.stash_prob = 0.0;
        l.allow_inoperative = true;
    }
    sim.links_up(0, 0);
    sim
}

fn call_spec(class: Class) -> messaging_sim::Spec {
    messaging_sim::Spec {
        class,
        kind: messaging_sim::SpecKind::Call,
        len: 16,
        need: 16,
        notify: true,
        unhandled: false,
    }
}

/// B has a call that A received and stashed (it answers later); A declares B failed while
/// the link is down. When the link is back, B must learn of A's new conversation without any
/// further traffic, and its call must fail.
#[test]
fn partner_failure_declared_while_link_is_down_is_announced_on_link_up() {
    let mut sim = clean_sim(11);
    sim.ledger.borrow_mut().stash_prob = 1.0;
    sim.queue(1, call_spec(Class::Control));
    assert!(sim.run_quiet(10 * MS));
    assert_eq!(sim.ledger.borrow().stash[0].len(), 1, "A holds B's call");
    assert_eq!(
        sim.ledger.borrow().dirs[1].calls.len(),
        1,
        "B waits for its response"
    );
    sim.cut(100 * US, 0);
    sim.partner_failed(0);
    sim.ledger.borrow_mut().stash[0].clear(); // A's answers belong to the old conversation
    assert!(sim.run_quiet(10 * MS));
    let failed = sim.ledger.borrow().dirs[1].failed_calls;
    assert_eq!(failed, 1, "B's call failed once\n{}", sim.dump());
    let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
    assert_eq!(b.peer_session(), Some(a.session()));
}

/// A restarted process (a brand-new window) announces its conversation as soon as its link is
/// up, so the survivor fails the calls the old process can no longer answer even if neither
/// side has anything else to send.
#[test]
fn restarted_partner_is_recognised_without_traffic() {
    let mut sim = clean_sim(12);
    sim.ledger.borrow_mut().stash_prob = 1.0;
    sim.queue(0, call_spec(Class::Control));
    sim.queue(0, call_spec(Class::Bulk));
    assert!(sim.run_quiet(10 * MS));
    assert_eq!(sim.ledger.borrow().stash[1].len(), 2, "B holds A's calls");
    let old_b = sim.sides[1].win.session();
    sim.restart(1, true, 100 * US);
    assert!(sim.run_quiet(10 * MS));
    assert!(sim.ledger.borrow().doomed.is_empty(), "{}", sim.dump());
    assert_eq!(sim.ledger.borrow().dirs[0].failed_calls, 2);
    let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
    assert_ne!(b.session(), old_b);
    assert_eq!(a.peer_session(), Some(b.session()), "{}", sim.dump());
    assert_eq!(b.peer_session(), Some(a.session()), "{}", sim.dump());
}

/// Both sides declare each other failed, the second one a round trip after the first (so it
/// has already acknowledged the first one's announcement in its old conversation). They must
/// settle on one new conversation, without resetting each other forever, and carry traffic.
/// After convergence: fresh calls both ways, in both classes, all complete with a response
/// (none fails) and the ledger is complete. `ctx` prefixes failure messages.
fn fresh_calls_complete(sim: &mut Sim, ctx: &str) {
    sim.ledger.borrow_mut().require_from_now();
    for side in 0..2 {
        sim.queue(side, call_spec(Class::Control));
        sim.queue(side, call_spec(Class::Bulk));
    }
    let failed = [0, 1].map(|i| sim.ledger.borrow().dirs[i].failed_calls);
    sim.settle_down("fresh traffic");
    sim.check_complete("fresh traffic");
    let after = [0, 1].map(|i| sim.ledger.borrow().dirs[i].failed_calls);
    assert_eq!(failed, after, "{ctx}fresh calls failed\n{}", sim.dump());
}

#[test]
fn both_sides_declaring_failure_a_round_trip_apart_converge() {
    for gap in [0, 5, 10, 15, 20, 25, 30, 40, 60, 100] {
        let mut sim = clean_sim(13 + gap);
        sim.queue(0, call_spec(Class::Bulk));
        sim.queue(1, call_spec(Class::Control));
        assert!(sim.run_quiet(10 * MS));
        sim.partner_failed(0);
        sim.run_until(sim.now + gap * US);
        sim.partner_failed(1);
        sim.run_until(sim.now + 5 * MS);
        let resets = [0, 1].map(|i| sim.sides[i].win.stats().resets);
        assert!(
            resets[0] <= 3 && resets[1] <= 3,
            "gap {gap}us: resets {resets:?}\n{}",
            sim.dump()
        );
        assert!(
            sim.run_quiet(sim.now + 10 * MS),
            "gap {gap}us: {}",
            sim.dump()
        );
        fresh_calls_complete(&mut sim, &format!("gap {gap}us: "));
    }
}

/// A declares B failed and soon queues a message (its frame 2 goes out before A knows any new
/// conversation of B, so it names none). B starts a new conversation in answer to A's
/// announcement (acknowledging it) and at once declares A failed too; B's second announcement
/// is lost. B's newest conversation then takes up A's stream at frame 2 and can never get
/// frame 1 (A counts it acknowledged); A hears B's newest conversation only through its
/// retransmitted announcement. A must start over rather than wait forever, and the two must
/// not then keep resetting each other.
#[test]
fn partner_conversation_without_our_acknowledged_frames_is_not_adopted() {
    let mut sim = clean_sim(21);
    sim.queue(0, call_spec(Class::Bulk));
    sim.queue(1, call_spec(Class::Control));
    assert!(sim.run_quiet(10 * MS));
    sim.partner_failed(0);
    sim.kick(); // A's announcement
                // Step until B has answered A's announcement with a conversation of its own.
    while sim.sides[1].win.stats().resets == 0 {
        let t = sim.next_time().expect("busy");
        sim.now = t;
        sim.step();
    }
    assert_eq!(sim.sides[0].win.peer_session(), None);
    sim.queue(0, call_spec(Class::Bulk));
    sim.kick(); // A's frame 2, naming no conversation of B
    sim.partner_failed(1);
    let before: Vec<_> = sim.lanes[1].q.keys().copied().collect();
    sim.kick(); // B's second announcement
    let lost: Vec<_> = sim.lanes[1]
        .q
        .iter()
        .filter(|(k, w)| !before.contains(k) && !w.bytes.is_empty())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(lost.len(), 1, "B's second announcement");
    sim.lanes[1].q.remove(&lost[0]);
    sim.run_until(sim.now + 5 * MS);
    let resets = [0, 1].map(|i| sim.sides[i].win.stats().resets);
    assert!(
        resets[0] <= 3 && resets[1] <= 3,
        "resets {resets:?}\n{}",
        sim.dump()
    );
    assert!(sim.run_quiet(sim.now + 10 * MS), "{}", sim.dump());
    fresh_calls_complete(&mut sim, "");
    let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
    assert_eq!(a.peer_session(), Some(b.session()));
    assert_eq!(b.peer_session(), Some(a.session()));
}

/// Both sides declare each other failed at the same instant, just after startup, while each
/// side's first announcement is still in flight: each adopts the other's old conversation from
/// that announcement, then starts over in answer to the other's new one. They cross: each now
/// addresses a conversation the other has left, so everything either way is stale. The
/// windows must still converge (a stale frame names the partner's current conversation),
/// also when the timing is exactly symmetric (equal fixed delays both ways), where only the
/// session ids can tell the sides apart.
#[test]
fn crossed_restarts_converge() {
    for k in 0..300u64 {
        let delay = 1 + k % 20;
        let mut cfg = small_cfg();
        cfg.retransmit_after = Duration::from_micros(200);
        let mut rng = StdRng::seed_from_u64(k);
        let faults = Faults {
            delay_min: delay * US,
            delay_max: delay * US + (k % 3) * 300,
            poll_max: 0,
            ..Faults::clean()
        };
        let mut sim = Sim::new(30 + k, cfg, faults, Mix::random(&mut rng));
        sim.ledger.borrow_mut().allow_inoperative = true;
        sim.links_up(0, 0);
        sim.step(); // both announcements leave
        sim.run_until(delay * US / 2);
        sim.partner_failed(0);
        sim.partner_failed(1);
        sim.run_until(5 * MS);
        if !sim.run_quiet(20 * MS) {
            sim.fail(&format!("delay {delay}us: no convergence"));
        }
        let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
        assert_eq!(
            a.peer_session(),
            Some(b.session()),
            "delay {delay}us: {}",
            sim.dump()
        );
        assert_eq!(
            b.peer_session(),
            Some(a.session()),
            "delay {delay}us: {}",
            sim.dump()
        );
        sim.ledger.borrow_mut().allow_inoperative = false;
        fresh_calls_complete(&mut sim, &format!("delay {delay}us: "));
    }
}

/// Frames of a conversation the partner has left are stale even when the receiver never saw
/// that conversation end, and however late they arrive (a wire that loses or reorders single
/// writes). The case the swarm found: A (after declaring B failed) sends frames 1 and 2 of
/// conversation S1; frame 2 arrives first, so B (a fresh window) adopts S1 and announces
/// itself before it has frame 1; then frame 1 arrives and is delivered. A gets B's
/// announcement, which acknowledges nothing of S1, and starts over with S2 (both sides look
/// as if they had just started over crossing; the larger id carries on, B's); B carries on
/// with S2. Then a late copy of S1's frame 1 (a retransmission, or a duplicated write)
/// reaches B: it must be discarded, not taken for a new conversation of A and delivered a
/// second time.
#[test]
fn late_frame_of_a_conversation_the_partner_left_is_stale() {
    let mut p = Pair::new(small_cfg());
    p.w[0].handle_partner_failed(&mut p.h[0]);
    let s1 = p.w[0].session();
    assert_ne!(s1, u32::MAX);
    // B: a fresh window whose id is the larger one.
    p.w[1] = Window::new(small_cfg(), u32::MAX).unwrap();
    p.w[1].handle_link_up(p.t0);
    let mut a_frames = Vec::new();
    for payload in [b"first".as_slice(), b"second"] {
        p.w[0].outbox().send(Head::control(7), payload).unwrap();
        a_frames.extend(p.transmit(0));
    }
    // A's announcement is frame 1 with the first message, frame 2 has the second.
    assert_eq!(a_frames.len(), 2);
    let (f1, f2) = (a_frames[0].clone(), a_frames[1].clone());
    assert_eq!(p.deliver(0, f2.0, &f2.1), Some(Arrival::OutOfOrder));
    assert_eq!(p.w[1].peer_session(), Some(s1));
    // B's announcement leaves before frame 1 arrives (with a nak, which is lost).
    let b_out = p.transmit(1);
    let (g1, g1_bytes) = b_out
        .iter()
        .find(|(t, _)| matches!(t, Transmit::Frame { .. }))
        .cloned()
        .expect("B's announcement");
    assert_eq!(
        p.deliver(0, f1.0, &f1.1),
        Some(Arrival::Delivered { messages: 1 })
    );
    let delivered = |p: &Pair| p.h[1].messages.iter().filter(|m| m.3 == b"first").count();
    assert_eq!(delivered(&p), 1);
    p.transmit(1); // B's acks: lost
                   // A gets B's announcement (acknowledging nothing of S1) and starts over.
    assert_eq!(
        p.deliver(1, g1, &g1_bytes),
        Some(Arrival::Delivered { messages: 0 })
    );
    let s2 = p.w[0].session();
    assert_ne!(s2, s1, "A started over");
    // A's new conversation reaches B, which carries on with it.
    for (t, b) in p.transmit(0) {
        p.deliver(0, t, &b);
    }
    assert_eq!(p.w[1].peer_session(), Some(s2));
    let b_session = p.w[1].session();
    // The late copy of S1's frame 1.
    assert_eq!(p.deliver(0, f1.0, &f1.1), Some(Arrival::Stale));
    assert_eq!(delivered(&p), 1, "S1's frame 1 delivered twice");
    assert_eq!(
        p.w[1].session(),
        b_session,
        "B reset for a dead conversation"
    );
    assert_eq!(p.w[1].peer_session(), Some(s2));
    p.run();
    assert_eq!(p.w[0].peer_session(), Some(p.w[1].session()));
    assert_eq!(p.w[1].peer_session(), Some(p.w[0].session()));
    assert_eq!(delivered(&p), 1);
}
