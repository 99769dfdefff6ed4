//! The applied ledger can fail: each test runs the pair without faults, then drives one log
//! lane by hand through a takeover replay or an own recovery with one planted bug (an
//! off-by-one in the stored takeover cursor, a double application in the own recovery, a
//! record the replay skips) and asserts the ledger reports it; the same steps without the
//! bug pass.

use crate::checkers::warm;
use crate::log::{LaneFaults, LogLane};
use crate::world::World;
use interlink::clients::giveback::OwnLogStamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// A warm pair's lane 0, with its own fault rates off.
fn lane(w: &World) -> std::cell::RefMut<'_, LogLane> {
    let mut l = std::cell::RefMut::map(w.logs.borrow_mut(), |l| &mut l[0]);
    l.faults = LaneFaults::default();
    assert!(l.violations.is_empty(), "{:?}", l.violations);
    l
}

/// A warm pair whose lane 0 holds acknowledged records after its last checkpoint (the
/// first such seed from `seed` on).
fn warm_with_records(seed: u64) -> World {
    (seed..seed + 50)
        .map(|s| warm(s, 120))
        .find(|w| {
            let l = &w.logs.borrow()[0];
            l.acked > l.oracle().requested_checkpoint
        })
        .expect("a seed with records after the checkpoint")
}

/// Its writer crashes (the world is not told: the test drives the lane).
fn crash(l: &mut LogLane) {
    l.crash_writer(&mut SmallRng::seed_from_u64(1));
}

#[test]
fn checker_ledger_catches_an_off_by_one_takeover_cursor() {
    // The survivor dies inside its replay, after one record and its cursor; the next
    // takeover resumes after the stored cursor.
    fn interrupted(w: &World) -> std::cell::RefMut<'_, LogLane> {
        let mut l = lane(w);
        crash(&mut l);
        l.faults.replay_dies_after = Some(1);
        assert!(l.takeover_replay(None, 0, false));
        assert_eq!(l.ledger.counts.applied_by_partner, 1, "{:?}", l.oracle());
        l
    }
    let w = warm_with_records(21);
    {
        let mut l = interrupted(&w);
        assert!(!l.takeover_replay(None, 0, false));
        assert!(l.ledger.counts.applied_by_partner > 1);
        assert_eq!(l.counts.replays_after_cursor, 1);
        assert!(l.violations.is_empty(), "{:?}", l.violations);
    }
    let w = warm_with_records(21);
    let mut l = interrupted(&w);
    l.bugs.cursor_off_by_one = true;
    assert!(!l.takeover_replay(None, 0, false));
    assert!(
        l.violations.iter().any(|v| v.contains("applied twice")),
        "{:?}",
        l.violations
    );
}

#[test]
fn checker_ledger_catches_a_double_application_in_own_recovery() {
    for planted in [false, true] {
        let w = warm_with_records(22);
        let mut l = lane(&w);
        crash(&mut l);
        l.writer_started(9, None, OwnLogStamp::default());
        l.bugs.own_applies_twice = planted;
        // Nobody replayed the log: the writer applies it itself.
        assert!(!l.recover(Some(None), Some(1), false));
        assert!(l.counts.recoveries_replay_here == 1 && l.ledger.counts.applied_by_own > 0);
        let caught = l.violations.iter().any(|v| v.contains("applied twice"));
        assert_eq!(caught, planted, "{:?}", l.violations);
    }
}

#[test]
fn checker_ledger_catches_a_lost_record() {
    for planted in [false, true] {
        let w = warm_with_records(23);
        let mut l = lane(&w);
        crash(&mut l);
        let acked = l.acked;
        assert!(acked > l.oracle().mirrored_checkpoint, "{:?}", l.oracle());
        // The survivor's replay skips the last acknowledged record; the restarted writer
        // learns its log was replayed and formats a new generation.
        l.bugs.replay_skips = planted.then_some(acked);
        assert!(!l.takeover_replay(None, 0, false));
        l.writer_started(9, None, OwnLogStamp::default());
        let published = l.published_cursor();
        assert!(!l.recover(Some(published), Some(1), false));
        assert_eq!(l.counts.recoveries_replayed_by_partner, 1);
        let caught = l.violations.iter().any(|v| v.contains("never applied"));
        assert_eq!(caught, planted, "{:?}", l.violations);
    }
}

#[test]
fn checker_ledger_counts_an_accepted_loss_once_and_still_catches_a_lost_record() {
    use interlink::clients::mirror::LogPosition;
    let at = |seq| LogPosition { generation: 4, seq };
    let mut l = crate::ledger::Ledger::default();
    for seq in 1..=3 {
        l.append(at(seq), &[seq as u8]);
        l.ack(at(seq)).unwrap();
    }
    // A refusal (no valid copy, the operator accepted the loss), then a later start whose
    // mailbox record still names the generation closes it again.
    assert!(l.close(4, true).is_ok());
    assert!(l.close(4, false).is_ok());
    assert_eq!(l.counts.records_unavailable, 3);
    // A record acknowledged after the refusal is not covered by it.
    l.append(at(4), &[4]);
    l.ack(at(4)).unwrap();
    let e = l.close(4, false).unwrap_err();
    assert!(e.contains("[4]"), "{e}");
}

#[test]
fn checker_ledger_catches_a_forced_replay_of_records_the_writer_applied_itself() {
    use interlink::clients::giveback::CopyGap;
    // The writer restarts with no connection, applies its records itself (its record says
    // so, durably, before the first), formats its next generation and dies before a
    // mailbox write named it; an operator forces the partner's takeover from the copy,
    // which still holds those records after its checkpoint. Planted: the survivor ignores
    // what the writer's record says.
    for planted in [false, true] {
        let w = warm_with_records(24);
        let mut l = lane(&w);
        crash(&mut l);
        // The path is down (the crashed writer has no log: the step only records that).
        let mut rng = SmallRng::seed_from_u64(2);
        l.step(
            std::time::Duration::ZERO,
            &mut rng,
            false,
            false,
            None,
            false,
            |_| std::time::Duration::ZERO,
        );
        let generation = l.own_log.recorded();
        l.writer_started(
            9,
            None,
            OwnLogStamp {
                generation,
                applied_here: false,
            },
        );
        // Deferred until a mailbox write carries the applied-here flag.
        assert!(!l.recover(Some(None), None, false));
        assert_eq!(l.counts.recoveries_replay_here, 0);
        let carried = l.own_log.stamp_log();
        assert!(carried.applied_here && carried.generation == generation);
        l.own_log.written_stamp(carried);
        assert!(!l.recover(Some(None), None, false));
        assert!(l.counts.recoveries_replay_here == 1 && l.ledger.counts.applied_by_own > 0);
        crash(&mut l);
        let record = l.own_log.recorded();
        assert_eq!(
            record, generation,
            "no mailbox write named the next generation"
        );
        let forced = Some(CopyGap::Unconfirmed { complete_for: 0 });
        assert!(!l.takeover_replay(forced, record, !planted));
        let caught = l.violations.iter().any(|v| v.contains("applied twice"));
        assert_eq!(caught, planted, "{:?}", l.violations);
        assert_eq!(l.counts.applied_here_copies_skipped, u64::from(!planted));
    }
}
