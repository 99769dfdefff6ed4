//! Unit tests of the giveback machine, one node at a time with scripted driver results.
//! The two-node protocol is exercised by `tests/host/giveback_sim.rs`.

use super::*;
use crate::clients::giveback::mailbox::LogMark;
use crate::clients::giveback::state::StateBlock;

const I: Duration = Duration::from_millis(100);
const ME: u32 = 1;
const PARTNER: u32 = 2;

fn cfg() -> GivebackConfig {
    GivebackConfig {
        me: ME,
        partner: PARTNER,
        interval: I,
        miss_intervals: 5,
        auto_giveback: true,
        giveback_delay: Duration::ZERO,
        hold_operator_takeover: true,
        mbwait_reads_per_interval: 1,
    }
}

/// What the scripted driver answers.
struct World {
    holder_me: Option<u32>,
    holder_partner: Option<u32>,
    partner_record: Option<MailboxRecord>,
    mailbox_fails: bool,
    write_fails: bool,
    /// The partner's record from the moment this node's preempt of its disks is carried out.
    after_preempt: Option<Option<MailboxRecord>>,
    done: Vec<Action>,
}

impl World {
    fn new() -> World {
        World {
            holder_me: None,
            holder_partner: Some(PARTNER),
            partner_record: None,
            mailbox_fails: false,
            write_fails: false,
            after_preempt: None,
            done: Vec::new(),
        }
    }

    /// Carries out every queued action, feeding results back, like a real driver.
    fn drain(&mut self, m: &mut GivebackMachine, now: Instant) {
        self.drain_through(m, now, |_| false);
    }

    /// Like `drain`, but stops right after carrying out an action `stop` matches (the driver
    /// is then blocked in it, say a hook).
    fn drain_through(
        &mut self,
        m: &mut GivebackMachine,
        now: Instant,
        stop: impl Fn(&Action) -> bool,
    ) {
        while let Some(a) = m.poll_action() {
            self.done.push(a.clone());
            let last = stop(&a);
            match &a {
                Action::ReadMailbox if self.mailbox_fails => {
                    m.handle_io_failed(now, &a, "EIO".into())
                }
                Action::ReadMailbox => m.handle_mailbox(now, self.partner_record),
                Action::WriteMailbox(_) if self.write_fails => {
                    m.handle_io_failed(now, &a, "EIO".into())
                }
                Action::WriteMailbox(_) => m.handle_mailbox_written(
                    now,
                    MailboxWrite {
                        primary: true,
                        backup: true,
                        failure: None,
                    },
                ),
                Action::Reserve { set, preempt } => {
                    if *set == PARTNER && *preempt {
                        if let Some(r) = self.after_preempt.take() {
                            self.partner_record = r;
                        }
                    }
                    let slot = self.slot(*set);
                    if slot.is_none() || *preempt || *slot == Some(ME) {
                        *slot = Some(ME);
                    }
                    let h = *slot;
                    m.handle_reservation(now, *set, h);
                }
                Action::CheckReservation { set } => {
                    let h = *self.slot(*set);
                    m.handle_reservation(now, *set, h);
                }
                Action::Release { set } => {
                    let slot = self.slot(*set);
                    if *slot == Some(ME) {
                        *slot = None;
                    }
                }
                _ => {}
            }
            if last {
                return;
            }
        }
    }

    fn slot(&mut self, set: u32) -> &mut Option<u32> {
        if set == ME {
            &mut self.holder_me
        } else {
            &mut self.holder_partner
        }
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.done)
    }
}

fn partner_rec(heartbeat: u64, taken_over: bool) -> Option<MailboxRecord> {
    Some(MailboxRecord {
        own_log_applied_here: false,
        node: PARTNER,
        incarnation: 1,
        state: if taken_over {
            NodeState::Takeover
        } else {
            NodeState::Up
        },
        taken_over,
        takeover_pending: false,
        heartbeat,
        partner_incarnation: 0,
        replayed_partner_log: None,
        partner_copy_outdated: None,
        partner_copy_complete_for: None,
        writeback_copy_outdated: false,
        own_log_generation: 0,
        own_writeback_epoch: 0,
        took_over_writeback: 0,
    })
}

fn significant(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Publish(_) | Action::WriteMailbox(_)))
        .cloned()
        .collect()
}

fn tick(m: &mut GivebackMachine, w: &mut World, now: Instant) {
    m.handle_timeout(now);
    w.drain(m, now);
}

#[test]
fn giveback_machine_boots_straight_to_up_when_not_taken_over() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    assert_eq!(m.poll_timeout(), Some(t0));
    tick(&mut m, &mut w, t0);
    assert_eq!(
        significant(&w.take()),
        vec![
            Action::ReadMailbox,
            Action::CheckReservation { set: ME },
            Action::Reserve {
                set: ME,
                preempt: false
            },
            Action::ReadMailbox,
            Action::CheckReservation { set: ME },
            Action::StartServing { set: ME },
        ]
    );
    assert_eq!(m.state(), NodeState::Up);
    assert_eq!(m.status().serving, vec![ME]);
    assert_eq!(m.poll_timeout(), Some(t0 + I));
}

#[test]
fn giveback_machine_waits_in_givewait_then_mbwait_then_serves() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.holder_me = Some(PARTNER);
    w.partner_record = partner_rec(1, true);
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::GiveWait);
    let published: Vec<_> = w
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Publish(b) => Some(b.state),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![NodeState::Booting, NodeState::GiveWait]);
    // Reservation released by the partner: reserve, read the mailbox (taken over) -> MBWAIT.
    w.holder_me = None;
    w.partner_record = partner_rec(2, true);
    tick(&mut m, &mut w, t0 + I);
    assert_eq!(m.state(), NodeState::MbWait);
    // The same record again (or a stale one) does not release me.
    tick(&mut m, &mut w, t0 + 2 * I);
    w.partner_record = partner_rec(1, false);
    tick(&mut m, &mut w, t0 + 3 * I);
    assert_eq!(
        m.state(),
        NodeState::MbWait,
        "a stale copy never releases me"
    );
    w.take();
    // The partner gave back.
    w.partner_record = partner_rec(5, false);
    tick(&mut m, &mut w, t0 + 4 * I);
    assert_eq!(
        significant(&w.take()),
        vec![
            Action::ReadMailbox,
            Action::CheckReservation { set: ME },
            Action::StartServing { set: ME },
        ]
    );
    assert_eq!(m.state(), NodeState::Up);
}

#[test]
fn giveback_machine_never_takes_over_on_an_unreadable_mailbox() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.partner_record = partner_rec(1, false);
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::Up);
    // The partner is silent on every link (no reads at all) and the mailbox cannot be read.
    w.mailbox_fails = true;
    for i in 1..50u32 {
        tick(&mut m, &mut w, t0 + I * i);
    }
    assert!(!w
        .take()
        .iter()
        .any(|a| matches!(a, Action::Reserve { set: PARTNER, .. })));
    assert!(!m.status().partner_failed);
    // Readable again: K more intervals of evidence are needed.
    w.mailbox_fails = false;
    for i in 50..54u32 {
        tick(&mut m, &mut w, t0 + I * i);
        assert!(!m.status().partner_failed, "interval {i}");
    }
    tick(&mut m, &mut w, t0 + I * 55);
    assert!(m.status().partner_failed);
    assert_eq!(m.state(), NodeState::Takeover);
    assert_eq!(w.holder_partner, Some(ME));
}

#[test]
fn giveback_machine_kills_only_a_serving_node_of_that_incarnation() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.holder_me = Some(PARTNER);
    let mut m = GivebackMachine::new(cfg(), 7, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::GiveWait);
    m.handle_kill(t0, 7);
    assert_eq!(m.state(), NodeState::GiveWait, "not serving: kill ignored");
    w.holder_me = None;
    tick(&mut m, &mut w, t0 + I);
    assert_eq!(m.state(), NodeState::Up);
    m.handle_kill(t0 + I, 6);
    assert_eq!(m.state(), NodeState::Up, "another incarnation's kill");
    w.take();
    m.handle_kill(t0 + I, 7);
    w.drain(&mut m, t0 + I);
    assert_eq!(m.state(), NodeState::Halted);
    let acts = w.take();
    assert_eq!(
        significant(&acts),
        vec![Action::StopServing { set: ME }, Action::Reboot]
    );
    assert_eq!(m.poll_timeout(), None);
    let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&GivebackEvent::Killed));
}

#[test]
fn giveback_machine_fences_when_its_disks_are_taken() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::Up);
    w.holder_me = Some(PARTNER);
    w.take();
    tick(&mut m, &mut w, t0 + I);
    assert_eq!(m.state(), NodeState::Halted);
    let acts = significant(&w.take());
    assert_eq!(
        &acts[acts.len() - 2..],
        &[Action::StopServing { set: ME }, Action::Reboot]
    );
    let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&GivebackEvent::Fenced));
}

#[test]
fn giveback_machine_fences_itself_when_it_cannot_write_the_mailbox() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.partner_record = partner_rec(1, false);
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    w.write_fails = true;
    w.mailbox_fails = true;
    for i in 1..4u32 {
        tick(&mut m, &mut w, t0 + I * i);
        assert_eq!(m.state(), NodeState::Up, "interval {i}");
    }
    tick(&mut m, &mut w, t0 + I * 4);
    assert_eq!(
        m.state(),
        NodeState::Halted,
        "K-1 = 4 failed writes, links silent"
    );
}

#[test]
fn giveback_machine_check_only_commands_change_nothing() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.partner_record = partner_rec(1, false);
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    let read = PartnerRead {
        incarnation: 3,
        progress: 1,
        block: StateBlock::new(NodeState::Up),
    };
    m.handle_partner_read(t0 + I / 2, 0, read);
    w.drain(&mut m, t0 + I / 2);
    while m.poll_event().is_some() {}
    let before = m.status();
    let block = m.state_block();
    let r = m.handle_command(t0 + I / 2, Command::Takeover { check_only: true });
    assert_eq!(r.outcome, CommandOutcome::Allowed, "{}", r.reason);
    assert!(r.reason.contains("killing it first"), "{}", r.reason);
    let r = m.handle_command(t0 + I / 2, Command::Giveback { check_only: true });
    assert_eq!(r.outcome, CommandOutcome::Refused);
    assert_eq!(m.poll_action(), None);
    assert_eq!(m.poll_event(), None);
    assert_eq!(m.state_block(), block);
    assert_eq!(m.status(), before);
    // The real takeover announces TAKEOVER_PENDING in the mailbox, then kills the live
    // partner.
    let r = m.handle_command(t0 + I / 2, Command::Takeover { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started);
    match m.poll_action() {
        Some(Action::WriteMailbox(rec)) => assert!(rec.takeover_pending && !rec.taken_over),
        other => panic!("expected the pending mailbox write first, got {other:?}"),
    }
    assert_eq!(
        m.poll_action(),
        Some(Action::SendKill {
            target_incarnation: 3
        })
    );
}

/// Takes the partner over (it is silent on every link and in the mailbox) and stops with the
/// driver blocked in the replay hook; returns the time then.
fn takeover_blocked_in_replay(m: &mut GivebackMachine, w: &mut World, t0: Instant) -> Instant {
    w.partner_record = partner_rec(1, false);
    tick(m, w, t0);
    assert_eq!(m.state(), NodeState::Up);
    let mut i = 1;
    loop {
        let now = t0 + I * i;
        m.handle_timeout(now);
        w.drain_through(m, now, |a| matches!(a, Action::ReplayPartnerLog { .. }));
        if w.done
            .iter()
            .any(|a| matches!(a, Action::ReplayPartnerLog { .. }))
        {
            return now;
        }
        i += 1;
        assert!(i < 20, "no takeover");
    }
}

#[test]
fn giveback_machine_serves_the_partner_only_if_still_reserved_after_the_replay() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    let blocked = takeover_blocked_in_replay(&mut m, &mut w, t0);
    assert_eq!(w.holder_partner, Some(ME));
    assert_eq!(
        m.pending_actions(),
        1,
        "the confirmation waits for the hook"
    );
    // The hook runs for 10 intervals: the keepalive gives a "taken over" heartbeat each.
    let mut beats = Vec::new();
    for i in 1..=10u32 {
        let now = blocked + I * i;
        assert!(m.poll_timeout().is_some_and(|t| t <= now));
        let rec = m.keepalive(now).expect("a heartbeat each interval");
        assert!(rec.taken_over && rec.state == NodeState::Up);
        m.handle_mailbox_written(
            now,
            MailboxWrite {
                primary: true,
                backup: true,
                failure: None,
            },
        );
        beats.push(rec.heartbeat);
        assert_eq!(m.keepalive(now), None, "one per interval");
    }
    assert!(beats.windows(2).all(|b| b[1] == b[0] + 1));
    // Meanwhile the partner took its disks back: the check after the hook sees it.
    w.holder_partner = Some(PARTNER);
    let now = blocked + I * 10;
    w.take();
    w.drain(&mut m, now);
    let acts = significant(&w.take());
    assert_eq!(
        acts,
        vec![
            Action::CheckReservation { set: PARTNER },
            Action::StopServing { set: ME },
            Action::ReleaseIdentity,
            Action::Reboot
        ]
    );
    assert_eq!(m.state(), NodeState::Halted);
    let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&GivebackEvent::Fenced));
    assert!(!events
        .iter()
        .any(|e| matches!(e, GivebackEvent::TakeoverDone { .. })));
}

#[test]
fn giveback_machine_abandons_a_takeover_it_cannot_confirm() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    let blocked = takeover_blocked_in_replay(&mut m, &mut w, t0);
    assert_eq!(
        m.poll_action(),
        Some(Action::CheckReservation { set: PARTNER })
    );
    m.handle_io_failed(
        blocked,
        &Action::CheckReservation { set: PARTNER },
        "EIO".into(),
    );
    w.take();
    w.drain(&mut m, blocked);
    assert_eq!(significant(&w.take()), vec![Action::ReleaseIdentity]);
    assert_eq!(m.state(), NodeState::Up);
    assert_eq!(m.status().serving, vec![ME]);
    assert!(!m.status().identity_assumed && !m.status().takeover_in_progress);
    // The next fresh evidence starts the takeover again, and it completes.
    tick(&mut m, &mut w, blocked + I);
    assert_eq!(m.state(), NodeState::Takeover);
    assert_eq!(m.status().serving, vec![ME, PARTNER]);
}

#[test]
fn giveback_machine_refuses_to_take_over_from_an_outdated_copy_unless_forced() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.holder_partner = Some(PARTNER);
    let outdated = LogMark {
        generation: 7,
        seq: 41,
    };
    w.partner_record = partner_rec(1, false).map(|r| MailboxRecord {
        partner_copy_outdated: Some(outdated),
        ..r
    });
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::Up);
    let mut events = Vec::new();
    // The partner dies with its record saying this node's copy of its log is outdated.
    for i in 1..40u32 {
        tick(&mut m, &mut w, t0 + I * i);
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
    }
    let s = m.status();
    assert!(s.partner_failed && s.takeover_refused, "{s:?}");
    let gap = CopyGap::Outdated { from: outdated };
    assert_eq!(s.partner_copy_gap, Some(gap));
    assert_eq!(m.state(), NodeState::Up);
    assert!(
        !w.take()
            .iter()
            .any(|a| matches!(a, Action::Reserve { set: PARTNER, .. })),
        "an outdated copy was taken over"
    );
    let refusals = events
        .iter()
        .filter(|e| matches!(e, GivebackEvent::TakeoverRefused { gap: g } if *g == gap))
        .count();
    assert_eq!(refusals, 1, "{events:?}");
    // The operator forces it: the takeover goes ahead and names the loss.
    let r = m.handle_command(t0 + I * 40, Command::ForceTakeover);
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(r.reason.contains("generation 7 seq 41"), "{}", r.reason);
    for i in 40..50u32 {
        tick(&mut m, &mut w, t0 + I * i);
        w.drain(&mut m, t0 + I * i);
    }
    assert!(w.take().iter().any(|a| matches!(
        a,
        Action::Reserve {
            set: PARTNER,
            preempt: true
        }
    )));
    assert_eq!(m.status().forced_loss, Some(gap));
}

/// Runs a pair whose partner dies with `complete_for` in its record (this node is
/// incarnation 1); returns whether this node reserved the partner's disks, and its events.
fn takeover_with_confirmation(complete_for: Option<u64>) -> (bool, Vec<GivebackEvent>) {
    takeover_from(complete_for, false)
}

/// [`takeover_with_confirmation`], the partner's record also saying whether its write-back
/// mirror here is outdated.
fn takeover_from(
    complete_for: Option<u64>,
    writeback_outdated: bool,
) -> (bool, Vec<GivebackEvent>) {
    let t0 = Instant::now();
    let mut w = World::new();
    w.partner_record = partner_rec(1, false).map(|r| MailboxRecord {
        partner_copy_complete_for: complete_for,
        writeback_copy_outdated: writeback_outdated,
        ..r
    });
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    let mut events = Vec::new();
    for i in 0..40u32 {
        tick(&mut m, &mut w, t0 + I * i);
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
    }
    let reserved = w.take().iter().any(|a| {
        matches!(
            a,
            Action::Reserve {
                set: PARTNER,
                preempt: true
            }
        )
    });
    (reserved, events)
}

#[test]
fn giveback_machine_takes_over_only_from_a_copy_confirmed_complete_on_its_incarnation() {
    // No shadow log, or a copy confirmed on this incarnation: automatic takeover.
    assert!(takeover_with_confirmation(None).0);
    assert!(takeover_with_confirmation(Some(1)).0);
    // Confirmed on none, or on an earlier incarnation of this node (its region was empty
    // after that restart until a full re-send completed): refused, and said why.
    for c in [0, 7] {
        let (reserved, events) = takeover_with_confirmation(Some(c));
        assert!(
            !reserved,
            "an unconfirmed copy (complete for {c}) was taken over"
        );
        assert!(
            events.contains(&GivebackEvent::TakeoverRefused {
                gap: CopyGap::Unconfirmed { complete_for: c }
            }),
            "{events:?}"
        );
    }
}

#[test]
fn giveback_machine_takes_over_once_the_mark_is_cleared() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    // Marked while alive, then cleared by a resync (newer record), then the partner dies.
    w.partner_record = partner_rec(1, false).map(|r| MailboxRecord {
        partner_copy_outdated: Some(LogMark {
            generation: 3,
            seq: 1,
        }),
        ..r
    });
    tick(&mut m, &mut w, t0 + I);
    w.partner_record = partner_rec(2, false);
    for i in 2..40u32 {
        tick(&mut m, &mut w, t0 + I * i);
    }
    assert!(w.take().iter().any(|a| matches!(
        a,
        Action::Reserve {
            set: PARTNER,
            preempt: true
        }
    )));
    assert!(!m.status().takeover_refused);
}

#[test]
fn giveback_machine_abandons_a_takeover_when_the_partner_shows_life_right_after_the_preempt() {
    let t0 = Instant::now();
    let mut w = World::new();
    w.partner_record = partner_rec(1, false);
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    // The partner dies; just as this node preempts its disks, it restarts (a new incarnation
    // writes its mailbox record, then reserves its disks).
    w.after_preempt = Some(partner_rec(1, false).map(|r| MailboxRecord {
        incarnation: 2,
        state: NodeState::Booting,
        ..r
    }));
    let mut i = 1u32;
    while !w.done.contains(&Action::Release { set: PARTNER }) {
        assert!(i < 20, "no abort: {:?}", w.done);
        tick(&mut m, &mut w, t0 + I * i);
        i += 1;
    }
    // The restarted partner lives on (its heartbeat moves): no takeover.
    for hb in 2..12u64 {
        w.partner_record = w.partner_record.map(|r| MailboxRecord {
            heartbeat: hb,
            state: NodeState::Up,
            ..r
        });
        tick(&mut m, &mut w, t0 + I * i);
        i += 1;
    }
    let done = w.take();
    let preempt = done
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Reserve {
                    set: PARTNER,
                    preempt: true
                }
            )
        })
        .expect("the takeover started");
    assert_eq!(done[preempt + 1], Action::ReadMailbox, "{done:?}");
    assert!(
        done[preempt..].contains(&Action::Release { set: PARTNER }),
        "{done:?}"
    );
    assert!(
        !done.iter().any(|a| matches!(
            a,
            Action::WriteMailbox(r) if r.taken_over
        ) || matches!(a, Action::ReplayPartnerLog { .. })),
        "{done:?}"
    );
    assert_eq!(m.state(), NodeState::Up);
    assert!(!m.status().takeover_in_progress);
}

#[test]
fn giveback_machine_refuses_to_take_over_an_outdated_write_back_mirror() {
    let (reserved, events) = takeover_from(Some(1), true);
    assert!(!reserved, "an outdated write-back mirror was taken over");
    assert!(
        events.contains(&GivebackEvent::TakeoverRefused {
            gap: CopyGap::WriteBackOutdated
        }),
        "{events:?}"
    );
}

/// Half the detection window of `cfg()`.
const LEASE: Duration = Duration::from_millis(250);

#[test]
fn the_serving_lease_runs_half_a_window_from_each_record_and_comes_back_after_a_gap_only_by_a_reservation_check(
) {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    assert_eq!(m.poll_lease(), None, "no lease before serving");
    tick(&mut m, &mut w, t0);
    assert_eq!(m.state(), NodeState::Up);
    assert_eq!(m.poll_lease(), Some(t0 + LEASE));
    // Each interval's record renews it, from when the record was handed out.
    tick(&mut m, &mut w, t0 + I);
    assert_eq!(m.poll_lease(), Some(t0 + I + LEASE));
    // A record handed out, then carried out late (the driver stalled in between): the lease
    // counts from when it was handed out, so it has run out meanwhile.
    let stalled = t0 + 2 * I;
    m.handle_timeout(stalled);
    let resumed = stalled + 10 * I;
    w.drain_through(&mut m, resumed, |a| matches!(a, Action::WriteMailbox(_)));
    assert_eq!(m.poll_lease(), Some(stalled + LEASE));
    assert!(m.poll_lease().is_some_and(|u| u <= resumed));
    // The check of the own reservation after that write renews it from that record, which
    // was handed out long ago: still run out.
    w.drain(&mut m, resumed);
    assert_eq!(m.poll_lease(), Some(stalled + LEASE));
    // The next interval's record, written after the lease ran out, and its check: back.
    tick(&mut m, &mut w, resumed + I);
    assert_eq!(m.poll_lease(), Some(resumed + I + LEASE));
}

#[test]
fn a_node_that_stalled_past_its_lease_and_finds_its_disks_preempted_gets_no_lease_again() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    assert_eq!(m.poll_lease(), Some(t0 + LEASE));
    // Stalled for ten intervals; the partner took this node over meanwhile.
    w.holder_me = Some(PARTNER);
    w.partner_record = partner_rec(9, true);
    let resumed = t0 + 10 * I;
    m.handle_timeout(resumed);
    w.drain_through(&mut m, resumed, |a| matches!(a, Action::WriteMailbox(_)));
    assert!(
        m.poll_lease().is_none_or(|u| u <= resumed),
        "the write after the gap renews nothing by itself: {:?}",
        m.poll_lease()
    );
    w.drain(&mut m, resumed);
    assert_eq!(m.state(), NodeState::Halted);
    assert_eq!(m.poll_lease(), None);
}

#[test]
fn failed_mailbox_writes_let_the_lease_run_out_and_keepalive_records_renew_it() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    tick(&mut m, &mut w, t0);
    // Writes fail for two intervals: the lease runs out (the fence comes later).
    w.write_fails = true;
    tick(&mut m, &mut w, t0 + I);
    tick(&mut m, &mut w, t0 + 2 * I);
    assert_eq!(m.poll_lease(), Some(t0 + LEASE));
    assert_eq!(m.state(), NodeState::Up);
    w.write_fails = false;
    // The driver is in a hook: keepalive records only, no reservation check. The first one
    // after the gap renews nothing ...
    let at = t0 + 3 * I;
    let rec = m.keepalive(at).expect("a keepalive record is due");
    assert_eq!(rec.node, ME);
    m.handle_mailbox_written(
        at,
        MailboxWrite {
            primary: true,
            backup: true,
            failure: None,
        },
    );
    assert_eq!(m.poll_lease(), Some(t0 + LEASE));
    // ... until the driver is back and the interval's check finds the reservation held.
    tick(&mut m, &mut w, t0 + 4 * I);
    assert_eq!(m.poll_lease(), Some(t0 + 4 * I + LEASE));
    // Without a gap, keepalive records renew it.
    let at = t0 + 5 * I;
    m.keepalive(at).expect("a keepalive record is due");
    m.handle_mailbox_written(
        at,
        MailboxWrite {
            primary: true,
            backup: true,
            failure: None,
        },
    );
    assert_eq!(m.poll_lease(), Some(at + LEASE));
}

/// A node that took over its silent partner (at `t0 + 5 I`); returns the time after.
fn taken_over(m: &mut GivebackMachine, w: &mut World, t0: Instant) -> Instant {
    w.partner_record = partner_rec(1, false);
    let mut at = t0;
    for i in 0..10u32 {
        at = t0 + I * i;
        tick(m, w, at);
    }
    assert_eq!(m.state(), NodeState::Takeover);
    assert_eq!(m.status().serving, vec![ME, PARTNER]);
    while m.poll_event().is_some() {}
    w.take();
    at
}

#[test]
fn a_takeover_node_whose_partner_preempted_its_disks_back_stops_serving_them_and_kills_nobody() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    let at = taken_over(&mut m, &mut w, t0);
    // Each interval in TAKEOVER confirms the partner's disks are still held before the kill.
    tick(&mut m, &mut w, at + I);
    let acts = significant(&w.take());
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::CheckReservation { set: PARTNER }))
            .count(),
        1,
        "{acts:?}"
    );
    assert!(acts.iter().any(|a| matches!(a, Action::SendKill { .. })));
    // This node stalled; the partner restarted, declared it failed and preempted its own
    // disks back.
    w.holder_partner = Some(PARTNER);
    tick(&mut m, &mut w, at + 20 * I);
    let acts = significant(&w.take());
    assert!(
        !acts.iter().any(|a| matches!(a, Action::SendKill { .. })),
        "{acts:?}"
    );
    assert!(
        acts.contains(&Action::StopServing { set: PARTNER }),
        "{acts:?}"
    );
    assert!(acts.contains(&Action::ReleaseIdentity), "{acts:?}");
    assert_eq!(m.state(), NodeState::Up);
    assert_eq!(m.status().serving, vec![ME]);
}

#[test]
fn a_takeover_node_stops_serving_released_disks_once_its_lease_ran_out_or_the_partner_serves_them()
{
    for partner_up_first in [false, true] {
        let t0 = Instant::now();
        let mut w = World::new();
        let mut m = GivebackMachine::new(cfg(), 1, t0);
        let at = taken_over(&mut m, &mut w, t0);
        // The partner restarts into GIVEWAIT: step 540 releases its disks, still served.
        let read = |state, progress| PartnerRead {
            incarnation: 2,
            progress,
            block: StateBlock::new(state),
        };
        m.handle_partner_read(at + I / 2, 0, read(NodeState::GiveWait, 1));
        w.drain(&mut m, at + I / 2);
        assert!(w.take().contains(&Action::Release { set: PARTNER }));
        assert_eq!(m.status().serving, vec![ME, PARTNER]);
        tick(&mut m, &mut w, at + I);
        assert_eq!(m.status().serving, vec![ME, PARTNER], "lease running");
        let record = |state, heartbeat| {
            partner_rec(heartbeat, false).map(|r| MailboxRecord {
                incarnation: 2,
                state,
                ..r
            })
        };
        if partner_up_first {
            // Its block says it serves its own disks (it declared this node failed).
            w.partner_record = record(NodeState::Up, 3);
            m.handle_partner_read(at + I + I / 2, 0, read(NodeState::Up, 2));
            w.drain(&mut m, at + I + I / 2);
        } else {
            // Stalled past the lease (the partner waits in MBWAIT): the first interval after
            // stops serving them.
            w.partner_record = record(NodeState::MbWait, 3);
            tick(&mut m, &mut w, at + 6 * I);
        }
        let acts = significant(&w.take());
        assert!(
            acts.contains(&Action::StopServing { set: PARTNER }),
            "{acts:?}"
        );
        assert_eq!(m.state(), NodeState::Up);
        assert_eq!(m.status().serving, vec![ME]);
        // Its records say it no longer holds the partner: what an MBWAIT partner waits for.
        tick(&mut m, &mut w, at + 7 * I);
        let rec = w.done.iter().find_map(|a| match a {
            Action::WriteMailbox(r) => Some(*r),
            _ => None,
        });
        assert!(rec.is_some_and(|r| !r.claims_partner()), "{rec:?}");
    }
}

#[test]
fn a_halt_keeps_a_stop_of_serving_already_decided() {
    let t0 = Instant::now();
    let mut w = World::new();
    let mut m = GivebackMachine::new(cfg(), 1, t0);
    let at = taken_over(&mut m, &mut w, t0);
    // Stalled; meanwhile the partner preempted both disk sets back. The interval's checks
    // find both gone: the partner's first (stop serving it), then this node's own (halt).
    w.holder_partner = Some(PARTNER);
    w.holder_me = Some(PARTNER);
    tick(&mut m, &mut w, at + 20 * I);
    assert_eq!(m.state(), NodeState::Halted);
    let acts = significant(&w.take());
    assert!(
        acts.contains(&Action::StopServing { set: PARTNER }),
        "{acts:?}"
    );
    assert!(acts.contains(&Action::StopServing { set: ME }), "{acts:?}");
}
