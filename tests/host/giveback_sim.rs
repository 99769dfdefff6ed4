//! The giveback protocol (F4) on a simulated HA pair in virtual time (`giveback_sim/`: the
//! world, its shared disks and the random sweep). After every action a driver carries out the
//! world checks: at most one node serves each disk set; a giveback happens only while the
//! partner truly waits in MBWAIT; a preempting reserve that goes through never hits a set (or a
//! partner) that is being served.
//!
//! - a: Fig. 5 of seed 000, normal case, every step in order; outage <= 2 intervals.
//! - b: the 546 -> 567 branch (the partner gave back before the mailbox read).
//! - c: a crash of either node at every action of (a), then liveness.
//! - d: torn state blocks and forged, stale or lost mailbox copies are never believed.
//! - e: dead links with a live mailbox (no takeover), an isolated node fencing itself, an
//!   unreadable mailbox (never counted as a silent partner).
//! - f: the repaired node fails again in GIVEWAIT and in MBWAIT.
//! - g: manual takeover of a live partner and manual giveback; check-only changes nothing.
//! - h: a randomized seed sweep with a liveness phase.
//! - i: a slow replay hook: the partner takes its disks back meanwhile (the taker must not
//!   serve them: it fences itself); the mailbox heartbeat during the hook keeps the partner
//!   from declaring the taker failed at all.
//!
//! `SEED=n cargo test --test host giveback_sim::h_random` replays one seed of the sweep (with
//! `TRACE_TAIL=n` trace lines); `GIVEBACK_SEEDS=n` sets how many seeds it runs (default 500).

#[path = "../giveback_sim/mod.rs"]
mod sim;

use interlink::clients::giveback::{Action, Command, CommandOutcome, GivebackEvent, NodeState};
use sim::disks::CopyFault;
use sim::sweep::{add_coverage, random_run, Coverage};
use sim::{Cause, Step, World, A, B, I, K};
use std::collections::HashMap;
use std::time::Duration;

fn name(id: u32) -> &'static str {
    if id == A {
        "A"
    } else {
        "B"
    }
}

/// The protocol milestones from `from` on, one label per line: routine per-interval work
/// (mailbox heartbeat writes and reads, reservation checks, repeated kills) is left out;
/// state changes, every other action and the main events are kept.
fn milestones(w: &World, from: Duration) -> Vec<String> {
    let mut taken_over: HashMap<u32, bool> = HashMap::new();
    // The kills shown per node since its kills last stopped or resumed: repeats are routine
    // (in TAKEOVER they follow the interval's reservation check).
    let mut kills_shown: HashMap<u32, u64> = HashMap::new();
    let mut out = Vec::new();
    for t in w.trace.iter().filter(|t| t.at >= from) {
        let label = match &t.step {
            Step::Action(a) => {
                let routine = t.cause == Cause::Timeout
                    && !(matches!(a, Action::CheckReservation { .. })
                        && t.state == Some(NodeState::Booting));
                match a {
                    Action::Publish(_) => None,
                    Action::WriteMailbox(r) => {
                        let old = taken_over.insert(t.node, r.taken_over).unwrap_or(false);
                        (old != r.taken_over)
                            .then(|| format!("WriteMailbox taken_over={}", r.taken_over))
                    }
                    Action::ReadMailbox if !routine => Some("ReadMailbox".into()),
                    Action::CheckReservation { set } if !routine => {
                        Some(format!("CheckReservation {set}"))
                    }
                    Action::SendKill { target_incarnation }
                        if !routine
                            && kills_shown.insert(t.node, *target_incarnation)
                                != Some(*target_incarnation) =>
                    {
                        Some(format!("SendKill {target_incarnation}"))
                    }
                    Action::Release { set } if !routine => Some(format!("Release {set}")),
                    Action::ReadMailbox
                    | Action::CheckReservation { .. }
                    | Action::SendKill { .. }
                    | Action::Release { .. } => None,
                    Action::Reserve { set, preempt } => Some(format!(
                        "Reserve {set}{}",
                        if *preempt { " preempt" } else { "" }
                    )),
                    Action::StartServing { set } => Some(format!("StartServing {set}")),
                    Action::StopServing { set } => Some(format!("StopServing {set}")),
                    Action::ReplayPartnerLog { .. } => Some("ReplayPartnerLog".into()),
                    other => Some(format!("{other:?}")),
                }
            }
            Step::State(s) => Some(format!("state {s}")),
            Step::Crash => Some("crash".into()),
            Step::Restart(inc) => Some(format!("restart {inc}")),
            Step::Event(e) => match e {
                GivebackEvent::PartnerFailed { .. } => Some("PartnerFailed".into()),
                GivebackEvent::TakeoverDone { .. } => Some("TakeoverDone".into()),
                GivebackEvent::KillsStopped => {
                    kills_shown.remove(&t.node);
                    Some("KillsStopped".into())
                }
                GivebackEvent::KillsResumed => {
                    kills_shown.remove(&t.node);
                    Some("KillsResumed".into())
                }
                GivebackEvent::GivebackStarted => Some("GivebackStarted".into()),
                GivebackEvent::GivebackDone { .. } => Some("GivebackDone".into()),
                GivebackEvent::Killed => Some("Killed".into()),
                GivebackEvent::Fenced => Some("Fenced".into()),
                _ => None,
            },
        };
        if let Some(l) = label {
            out.push(format!("{} {l}", name(t.node)));
        }
    }
    out
}

/// A fresh pair, both UP.
fn pair() -> World {
    let mut w = World::new(0);
    w.run_until(I * 3);
    assert!(w.converged(), "pair did not come up\n{}", w.trace_tail(40));
    w
}

fn outage_of(w: &World, id: u32) -> Vec<Duration> {
    w.node(id)
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            GivebackEvent::GivebackDone { outage } => Some(*outage),
            _ => None,
        })
        .collect()
}

/// Fig. 5, normal case: B fails, A takes over; B is repaired and brought up in coordination.
/// Returns the world at the end and the time of the crash.
fn normal_case(crash_a_at: Option<u64>, crash_b_at: Option<u64>) -> (World, Duration) {
    let mut w = pair();
    let t_crash = I * 10 + I / 2;
    w.node_mut(A).crash_at_action = crash_a_at;
    w.run_until(t_crash);
    w.crash(B);
    w.node_mut(B).crash_at_action = crash_b_at;
    w.run_until(t_crash + I * 40);
    (w, t_crash)
}

#[test]
fn a_fig5_normal_case_every_step_in_order() {
    let (w, t_crash) = normal_case(None, None);
    w.assert_safe("normal case");
    let got = milestones(&w, t_crash);
    // Events show where the driver collects them: before the actions of the same input.
    let expected: &[(u32, &str)] = &[
        (510, "B crash"),
        (515, "A PartnerFailed"),
        (515, "A Reserve 2 preempt"),
        // The mailbox read once more after the preempt: B did not restart meanwhile.
        (515, "A ReadMailbox"),
        (515, "A WriteMailbox taken_over=true"),
        (515, "A AssumeIdentity"),
        (515, "A ReplayPartnerLog"),
        // Still reserved here after the (possibly long) hooks? Only then serve.
        (515, "A CheckReservation 2"),
        (515, "A TakeoverDone"),
        (515, "A StartServing 2"),
        (515, "A state TAKEOVER"),
        (515, "A SendKill 1"),
        (520, "B restart 2"),
        (520, "B state BOOTING"),
        (525, "B CheckReservation 2"),
        (530, "B state GIVEWAIT"),
        (537, "A KillsStopped"),
        (540, "A Release 2"),
        (545, "B Reserve 2"),
        (545, "B ReadMailbox"),
        (550, "B state MBWAIT"),
        (560, "A GivebackStarted"),
        (560, "A StopServing 2"),
        (560, "A ReleaseIdentity"),
        (560, "A WriteMailbox taken_over=false"),
        (560, "A state UP"),
        (565, "B CheckReservation 2"),
        (567, "B StartServing 2"),
        (570, "B state UP"),
        (575, "A GivebackDone"),
    ];
    let want: Vec<String> = expected.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(
        got,
        want,
        "\nstep by step:\n{}",
        expected
            .iter()
            .zip(got.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|((n, e), g)| format!("{n}: want {e:<34} got {g:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(w.converged());
    for id in [A, B] {
        assert!(
            !w.node(id)
                .events
                .iter()
                .any(|(_, e)| *e == GivebackEvent::InterconnectDown),
            "false interconnect alarm"
        );
    }
    // The outage window (560 to 570) is at most two intervals: the survivor reads every
    // interval and the repaired node reads the mailbox every interval.
    let outage = outage_of(&w, A);
    assert_eq!(outage.len(), 1);
    assert!(outage[0] <= 2 * I, "outage {:?}", outage[0]);
    let st = w.machine(A).status();
    assert_eq!(st.last_outage(), Some(outage[0]));
    assert_eq!((st.takeovers, st.givebacks), (1, 1));
    assert_eq!(
        w.machine(A).state_block().last_outage_us,
        outage[0].as_micros() as u64
    );
    // Detection: from B's last sign of life to the decision, K intervals.
    let detection = st.last_detection.expect("detection recorded");
    assert!(
        detection >= K * I && detection <= (K + 1) * I,
        "{detection:?}"
    );
}

/// A trace predicate: node `id` recorded a step whose label (as in [`milestones`]) is `what`.
fn is(id: u32, what: &'static str) -> impl Fn(&sim::TraceItem) -> bool {
    move |t| {
        t.node == id
            && match &t.step {
                Step::State(s) => what == format!("state {s}"),
                Step::Action(Action::Release { set }) => what == format!("Release {set}"),
                Step::Event(GivebackEvent::GivebackStarted) => what == "GivebackStarted",
                _ => false,
            }
    }
}

fn count(w: &World, from: Duration, id: u32, f: impl Fn(&Step) -> bool) -> usize {
    w.trace
        .iter()
        .filter(|t| t.at >= from && t.node == id && f(&t.step))
        .count()
}

#[test]
fn b_fig5_546_to_567_when_the_partner_gave_back_before_the_mailbox_read() {
    let mut w = pair();
    w.run_until(I * 10 + I / 2);
    // B reads the mailbox only at its interval ticks in MBWAIT (no extra reads), so A's
    // giveback lands between two of B's reads.
    w.node_mut(B).mbwait_reads_per_interval = 1;
    w.crash(B);
    assert!(w.run_until_trace(I * 60, is(A, "GivebackStarted")));
    // B is in MBWAIT and has not read the mailbox since: it crashes now, and restarts
    // before A could declare it failed.
    assert_eq!(w.state(B), Some(NodeState::MbWait));
    w.restart_delay = I * 2;
    w.crash(B);
    let t = w.now;
    w.run_for(I * 10);
    w.assert_safe("546 -> 567");
    let got = milestones(&w, t);
    let b: Vec<&str> = got.iter().filter_map(|l| l.strip_prefix("B ")).collect();
    assert_eq!(
        b,
        [
            "crash",
            "restart 3",
            "state BOOTING",
            "CheckReservation 2", // 525: still mine
            "ReadMailbox",        // 545
            "CheckReservation 2", // 546: not taken over -> re-check and
            "StartServing 2",     // 567
            "state UP",           // 570
        ]
    );
    assert!(w.converged());
    assert_eq!(outage_of(&w, A).len(), 1, "the outage window still closes");
}

/// The reference run of the normal case: (A's, B's) action counts at B's crash and at the end.
fn reference_action_ranges() -> ([u64; 2], [u64; 2]) {
    let mut w = pair();
    let t_crash = I * 10 + I / 2;
    w.run_until(t_crash);
    let at_crash = [w.node(A).actions_done, w.node(B).actions_done];
    w.crash(B);
    w.run_until(t_crash + I * 40);
    assert!(w.converged());
    (at_crash, [w.node(A).actions_done, w.node(B).actions_done])
}

#[test]
fn c_crash_either_node_at_every_step_then_the_pair_recovers() {
    let (start, end) = reference_action_ranges();
    let mut runs = 0;
    let mut worst = 0;
    for (who, idx) in [A, B].into_iter().enumerate() {
        for at in start[who]..end[who] {
            let (mut w, t_crash) = if idx == A {
                normal_case(Some(at), None)
            } else {
                normal_case(None, Some(at))
            };
            let context = format!("node {} crashed at its action #{at}", name(idx));
            w.assert_safe(&context);
            let crashes = count(&w, t_crash, idx, |s| *s == Step::Crash);
            let expected = if idx == B { 2 } else { 1 };
            assert_eq!(crashes, expected, "{context}: the crash did not happen");
            // Liveness: with no more faults the pair must return to normal.
            let took = w.run_until_true(150, World::converged);
            w.assert_safe(&context);
            let took =
                took.unwrap_or_else(|| panic!("{context}: no convergence\n{}", w.trace_tail(80)));
            worst = worst.max(took);
            runs += 1;
        }
    }
    assert!(runs > 100, "only {runs} crash points");
    println!("{runs} crash points, worst recovery {worst} intervals after the scenario");
}

#[test]
fn d_torn_state_blocks_and_bad_mailbox_copies_are_never_believed() {
    let mut w = pair();
    w.run_until(I * 10 + I / 2);
    w.crash(B);
    assert!(w.run_until_trace(I * 60, is(A, "Release 2")));
    assert_eq!(w.state(B), Some(NodeState::GiveWait));
    // Every READ of B now comes back torn, carrying a bogus MBWAIT.
    w.tear_all_reads_of.insert(B);
    let t = w.now;
    w.run_for(I * 30);
    w.assert_safe("torn reads");
    assert_eq!(w.state(B), Some(NodeState::MbWait), "B went on to MBWAIT");
    assert_eq!(
        w.state(A),
        Some(NodeState::Takeover),
        "no giveback on torn copies"
    );
    assert_eq!(
        count(&w, t, A, |s| *s == Step::Action(Action::ReleaseIdentity)),
        0
    );
    assert!(w.machine(A).status().torn_reads >= 30);
    assert!(
        !w.machine(A).status().partner_failed,
        "B's mailbox is alive"
    );
    w.tear_all_reads_of.clear();
    assert!(w.run_until_true(5, World::converged).is_some());

    // Mailbox: B waits in MBWAIT (A's automatic giveback off). A's slot in copy 0 holds a
    // forged "not taken over" with a higher heartbeat but a broken checksum; copy 1 is lost.
    let mut w = pair();
    w.command(A, Command::SetAutoGiveback(false));
    w.run_until(I * 10 + I / 2);
    w.crash(B);
    assert!(w.run_until_trace(I * 60, is(B, "state MBWAIT")));
    let current = {
        let d = w.disks();
        interlink::clients::giveback::MailboxRecord::decode(&d.copies[0].slots[&A]).unwrap()
    };
    assert!(current.taken_over);
    let forged = interlink::clients::giveback::MailboxRecord {
        taken_over: false,
        state: NodeState::Up,
        heartbeat: current.heartbeat + 1000,
        ..current
    };
    {
        let mut d = w.disks();
        let mut bytes = forged.encode();
        bytes[30] ^= 0x01;
        d.copies[0].slots.insert(A, bytes);
        d.copies[0].fault = CopyFault::Stale;
        d.copies[1].fault = CopyFault::Lost;
    }
    w.run_for(I * 20);
    assert_eq!(w.state(B), Some(NodeState::MbWait), "forged copy believed");
    // A stale but valid "not taken over" from before the takeover: older, never believed.
    let stale = interlink::clients::giveback::MailboxRecord {
        taken_over: false,
        state: NodeState::Up,
        heartbeat: 3,
        incarnation: current.incarnation,
        ..current
    };
    w.disks().copies[0].slots.insert(A, stale.encode());
    w.run_for(I * 20);
    w.assert_safe("bad mailbox copies");
    assert_eq!(w.state(B), Some(NodeState::MbWait), "stale copy believed");
    assert!(w.node(A).serving.contains(&B));
    {
        let mut d = w.disks();
        d.copies[0].fault = CopyFault::None;
        d.copies[1].fault = CopyFault::None;
    }
    w.run_for(I * 2);
    assert_eq!(
        w.state(B),
        Some(NodeState::MbWait),
        "still taken over: no giveback yet"
    );
    let r = w.command(A, Command::Giveback { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(w.run_until_true(5, World::converged).is_some());
    w.assert_safe("after the giveback");
}

#[test]
fn e_dead_links_with_a_live_mailbox_never_cause_a_takeover() {
    let mut w = pair();
    w.run_until(I * 10);
    let t = w.now;
    w.links = [false, false];
    w.run_for(I * 200);
    w.assert_safe("links dead");
    for id in [A, B] {
        let ev = w.events_since(id, t);
        assert!(
            ev.contains(&GivebackEvent::InterconnectDown),
            "{}",
            name(id)
        );
        assert!(!ev
            .iter()
            .any(|e| matches!(e, GivebackEvent::PartnerFailed { .. })));
        let st = w.machine(id).status();
        assert!(st.interconnect_down);
        assert!(w
            .machine(id)
            .state_block()
            .has(interlink::clients::giveback::state::FLAG_INTERCONNECT_ALERT));
        assert_eq!(
            count(&w, t, id, |s| matches!(
                s,
                Step::Action(Action::Reserve { preempt: true, .. })
            )),
            0
        );
    }
    assert!(w.converged(), "both still serve their own disks");
    let t = w.now;
    w.links = [true, false];
    w.run_for(I * 2);
    for id in [A, B] {
        assert!(w
            .events_since(id, t)
            .contains(&GivebackEvent::InterconnectRestored));
        assert!(!w.machine(id).status().interconnect_down);
    }
    w.assert_safe("links back");
}

#[test]
fn e_an_isolated_node_fences_itself_before_its_partner_takes_over() {
    let mut w = pair();
    w.run_until(I * 10 + I / 3);
    w.links = [false, false];
    w.disks().no_mailbox_access.insert(A);
    w.run_for(I * 30);
    w.assert_safe("isolated A");
    assert!(w
        .node(A)
        .events
        .iter()
        .any(|(_, e)| *e == GivebackEvent::Fenced));
    assert_eq!(w.state(B), Some(NodeState::Takeover));
    assert_eq!(w.holder(A), Some(B));
    w.links = [true, true];
    w.disks().no_mailbox_access.clear();
    assert!(
        w.run_until_true(60, World::converged).is_some(),
        "{}",
        w.trace_tail(40)
    );
    w.assert_safe("after isolation");
}

#[test]
fn e_an_unreadable_mailbox_never_counts_as_a_silent_partner() {
    let mut w = pair();
    w.restart_delay = I * 1000;
    w.disks().mailbox_read_fails.insert(A);
    w.run_until(I * 10 + I / 2);
    w.crash(B);
    let t = w.now;
    w.run_for(I * 50);
    assert_eq!(
        w.state(A),
        Some(NodeState::Up),
        "no takeover without mailbox evidence"
    );
    assert!(w.machine(A).status().mailbox_read_failures >= 50);
    w.disks().mailbox_read_fails.clear();
    let took = w
        .run_until_true(20, |w| w.state(A) == Some(NodeState::Takeover))
        .expect("takeover once the mailbox is readable");
    assert!((K..=K + 1).contains(&took), "took {took} intervals");
    assert_eq!(
        count(&w, t, A, |s| matches!(
            s,
            Step::Event(GivebackEvent::PartnerFailed { .. })
        )),
        1
    );
    w.assert_safe("unreadable mailbox");
}

fn holds(w: &World, id: u32) -> Vec<u32> {
    [A, B]
        .into_iter()
        .filter(|s| w.holder(*s) == Some(id))
        .collect()
}

/// B, repaired, fails again during its bring-up in `state`: A keeps serving both sets,
/// re-reserves B's disks and resumes kills; after B's next restart the giveback completes.
fn repaired_node_fails_again(state: NodeState) {
    let mut w = pair();
    w.run_until(I * 10 + I / 2);
    w.crash(B);
    let (wait_for, partner_held) = match state {
        // Crash B after A released its disks, before B reserves them.
        NodeState::GiveWait => (is(A, "Release 2"), false),
        // Crash B as it enters MBWAIT, before A reads it.
        _ => (is(B, "state MBWAIT"), true),
    };
    assert!(w.run_until_trace(I * 60, wait_for));
    assert_eq!(w.state(B), Some(state));
    assert_eq!(w.holder(B), if partner_held { Some(B) } else { None });
    let t = w.now;
    w.crash(B);
    w.run_for(I * (K + 3));
    w.assert_safe("second failure");
    assert_eq!(w.state(A), Some(NodeState::Takeover));
    assert_eq!(
        w.node(A).serving,
        [A, B].into(),
        "A keeps serving both sets"
    );
    assert_eq!(holds(&w, A), [A, B], "A holds both reservations again");
    let ev = w.events_since(A, t);
    assert!(ev
        .iter()
        .any(|e| matches!(e, GivebackEvent::PartnerFailed { .. })));
    assert!(ev.contains(&GivebackEvent::KillsResumed));
    assert!(
        !ev.contains(&GivebackEvent::InterconnectDown),
        "false interconnect alarm"
    );
    assert!(
        count(&w, t, A, |s| matches!(
            s,
            Step::Action(Action::SendKill { .. })
        )) >= 2
    );
    assert_eq!(
        count(&w, t, A, |s| *s
            == Step::Action(Action::Reserve {
                set: B,
                preempt: true
            })),
        1
    );
    // B's next restart: GIVEWAIT (its disks are reserved again), MBWAIT, giveback.
    let took = w.run_until_true(40, World::converged);
    w.assert_safe("after the second restart");
    assert!(took.is_some(), "{}", w.trace_tail(40));
    let b = milestones(&w, t);
    assert!(b.contains(&"B state GIVEWAIT".to_string()), "{b:?}");
    assert!(b.contains(&"B state MBWAIT".to_string()), "{b:?}");
    w.run_for(I);
    assert_eq!(
        outage_of(&w, A).len(),
        1,
        "the next read closes the outage window"
    );
}

#[test]
fn f_repaired_node_fails_again_in_givewait() {
    repaired_node_fails_again(NodeState::GiveWait);
}

#[test]
fn f_repaired_node_fails_again_in_mbwait() {
    repaired_node_fails_again(NodeState::MbWait);
}

#[test]
fn g_manual_takeover_of_a_live_partner_and_manual_giveback() {
    let mut w = pair();
    w.run_until(I * 10);
    let r = w.command(A, Command::SetAutoGiveback(false));
    assert_eq!(r.outcome, CommandOutcome::Done);
    w.run_for(I);
    // Refusals.
    let r = w.command(A, Command::Giveback { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Refused, "{}", r.reason);
    // check_only changes nothing.
    let (trace_len, block, status) = (
        w.trace.len(),
        w.machine(A).state_block(),
        w.machine(A).status(),
    );
    let r = w.command(A, Command::Takeover { check_only: true });
    assert_eq!(r.outcome, CommandOutcome::Allowed, "{}", r.reason);
    assert!(r.reason.contains("UP"), "{}", r.reason);
    assert_eq!(r.facts.partner_state, Some(NodeState::Up));
    assert_eq!(w.trace.len(), trace_len, "no action, no event");
    assert_eq!(w.machine(A).state_block(), block);
    assert_eq!(w.machine(A).status(), status);

    // The real takeover kills B first, then reserves once B is not serving.
    let t = w.now;
    let r = w.command(A, Command::Takeover { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(w.run_until_trace(I * 20, is(A, "state TAKEOVER")));
    w.assert_safe("manual takeover");
    assert!(w.events_since(B, t).contains(&GivebackEvent::Killed));
    let a = milestones(&w, t);
    let kill = a
        .iter()
        .position(|l| l.starts_with("A SendKill"))
        .expect("kill sent");
    let halted = a
        .iter()
        .position(|l| l == "B state HALTED")
        .expect("B halted");
    let reserve = a
        .iter()
        .position(|l| l == "A Reserve 2 preempt")
        .expect("reserved");
    assert!(kill < halted && halted < reserve, "{a:?}");
    let r = w.command(A, Command::Takeover { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Refused);

    // B comes back to MBWAIT and waits there: no automatic giveback.
    assert!(w.run_until_trace(I * 40, is(B, "state MBWAIT")));
    w.run_for(I * 20);
    assert_eq!(w.state(A), Some(NodeState::Takeover));
    assert_eq!(w.state(B), Some(NodeState::MbWait));
    let (trace_len, block) = (w.trace.len(), w.machine(A).state_block());
    let r = w.command(A, Command::Giveback { check_only: true });
    assert_eq!(r.outcome, CommandOutcome::Allowed, "{}", r.reason);
    assert_eq!(
        (w.trace.len(), w.machine(A).state_block()),
        (trace_len, block)
    );
    let r = w.command(A, Command::Giveback { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(w.run_until_true(3, World::converged).is_some());
    w.assert_safe("manual giveback");
    assert!(!w
        .machine(A)
        .state_block()
        .has(interlink::clients::giveback::state::FLAG_AUTO_GIVEBACK));
}

#[test]
fn h_random_seed_sweep() {
    if let Some(seed) = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        match random_run(seed, true) {
            (w, Ok(took)) => println!(
                "seed {seed}: converged {took} intervals after the faults\n{}",
                w.trace_tail(40)
            ),
            (w, Err(why)) => {
                let status: Vec<String> = [A, B]
                    .iter()
                    .filter_map(|id| {
                        w.node(*id)
                            .machine
                            .as_ref()
                            .map(|m| format!("{:#?}", m.status()))
                    })
                    .collect();
                panic!(
                    "seed {seed}: {why}\n--- milestones ---\n{}\n--- status ---\n{}\nholders: A {:?} B {:?}\n--- trace ---\n{}",
                    milestones(&w, Duration::ZERO).join("\n"),
                    status.join("\n"),
                    w.holder(A),
                    w.holder(B),
                    w.trace_tail(std::env::var("TRACE_TAIL").ok().and_then(|s| s.parse().ok()).unwrap_or(40))
                )
            }
        }
        return;
    }
    let seeds: u64 = std::env::var("GIVEBACK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let threads = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(16) as u64;
    let results: Vec<(Coverage, Option<(u64, String)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut cov = Coverage::default();
                    for seed in (t..seeds).step_by(threads as usize) {
                        let run = std::panic::catch_unwind(|| random_run(seed, false));
                        match run {
                            Ok((w, Ok(took))) => add_coverage(&mut cov, &w, took),
                            Ok((w, Err(why))) => {
                                return (cov, Some((seed, format!("{why}\n{}", w.trace_tail(60)))))
                            }
                            Err(_) => return (cov, Some((seed, "panicked".into()))),
                        }
                    }
                    (cov, None)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Coverage::default(), Some((0, "thread".into()))))
            })
            .collect()
    });
    let mut total = Coverage::default();
    for (c, failure) in &results {
        if let Some((seed, why)) = failure {
            panic!("seed {seed} failed (replay: SEED={seed} cargo test --test host giveback_sim::h_random): {why}");
        }
        total.seeds += c.seeds;
        total.crashes += c.crashes;
        total.takeovers += c.takeovers;
        total.givebacks_done += c.givebacks_done;
        total.fences += c.fences;
        total.kills_obeyed += c.kills_obeyed;
        total.torn_reads += c.torn_reads;
        total.torn_writes += c.torn_writes;
        total.interconnect_alarms += c.interconnect_alarms;
        total.max_recovery_intervals = total.max_recovery_intervals.max(c.max_recovery_intervals);
    }
    println!("{total:?}");
    assert_eq!(total.seeds, seeds);
    if seeds >= 200 {
        // The sweep must actually exercise the protocol.
        assert!(total.takeovers > seeds / 2, "{total:?}");
        assert!(total.givebacks_done > seeds / 4, "{total:?}");
        assert!(total.fences > 0 && total.kills_obeyed > 0, "{total:?}");
        assert!(total.torn_reads > 0 && total.torn_writes > 0, "{total:?}");
        assert!(total.interconnect_alarms > 0, "{total:?}");
    }
}

#[test]
fn d_a_stale_mailbox_copy_never_lets_a_repaired_node_serve_while_taken_over() {
    // Two mailbox faults at once (beyond the sweep's single-fault model): A's slot in copy 0
    // is an old valid record from before the takeover ("not taken over") and stays so
    // (writes dropped), copy 1 is lost. The fresh READ of A showing it serving B's disks
    // keeps B waiting at 546 anyway.
    let mut w = pair();
    let old = {
        let d = w.disks();
        d.copies[0].slots[&A]
    };
    w.run_until(I * 10 + I / 2);
    w.crash(B);
    assert!(w.run_until_trace(I * 30, is(A, "state TAKEOVER")));
    {
        let mut d = w.disks();
        d.copies[0].slots.insert(A, old);
        d.copies[0].fault = CopyFault::Stale;
        d.copies[1].fault = CopyFault::Lost;
    }
    let t = w.now;
    assert!(w.run_until_trace(I * 40, is(B, "state MBWAIT")));
    w.assert_safe("stale copy at 546");
    let b = milestones(&w, t);
    assert!(!b.contains(&"B StartServing 2".to_string()), "{b:?}");
    // A gives back, but B cannot see A's new records until the copies heal.
    w.run_for(I * 10);
    assert_eq!(w.state(B), Some(NodeState::MbWait));
    w.assert_safe("stale copy after the giveback");
    {
        let mut d = w.disks();
        d.copies[0].fault = CopyFault::None;
        d.copies[1].fault = CopyFault::None;
    }
    assert!(w.run_until_true(5, World::converged).is_some());
    w.assert_safe("healed");
}

/// Links down, A crashes (with `faults` set up first); B takes A over and is blocked for 25
/// intervals in the replay hook. Runs until an interval after B's hook returned; returns the
/// world, the crash time and (B blocked, B resumed).
fn slow_replay_after_a_crash(
    faults: impl FnOnce(&mut World),
) -> (World, Duration, (Duration, Duration)) {
    let mut w = pair();
    w.run_until(I * 10 + I / 2);
    w.links = [false, false];
    w.node_mut(B).slow_replay = Some(I * 25);
    faults(&mut w);
    w.crash(A);
    let t = w.now;
    let replay = |t: &sim::TraceItem| {
        t.node == B && matches!(t.step, Step::Action(Action::ReplayPartnerLog { .. }))
    };
    assert!(w.run_until_trace(I * 20, replay), "B took A over");
    let blocked_at = w.now;
    let resumes_at = w.node(B).busy_until.expect("B blocked in the replay hook");
    w.run_until(resumes_at + I);
    (w, t, (blocked_at, resumes_at))
}

/// The chaos suite's double serving (VM under load): A crashes; B takes it over and spends 25
/// intervals in the replay hook. B's driver, blocked, writes no mailbox (the driver before
/// the keepalive) and the links are down (A's restart brings them back slowly), so A, booting
/// into GIVEWAIT, declares B failed, takes its own disks back (reserve with preempt) and
/// serves them. A's path to B's disks is down, so A cannot take B over too: what is at stake
/// is A's set. When the replay returns B must not serve A's disks: it checks the reservation,
/// finds it taken back, and fences itself. (Without the check B serves A's set and the world
/// reports the split brain.)
#[test]
fn i_after_a_slow_replay_the_taker_never_serves_a_set_the_partner_took_back() {
    let (mut w, t, (blocked_at, resumes_at)) = slow_replay_after_a_crash(|w| {
        w.node_mut(B).keepalive_in_hooks = false;
        w.disks().reservation_path_down.insert((A, B));
    });
    w.assert_safe("slow replay, the partner took its disks back");
    // The scenario happened: A preempted its own set and served it while B was blocked.
    let a_preempted = w.trace.iter().any(|x| {
        x.node == A
            && (blocked_at..resumes_at).contains(&x.at)
            && x.step
                == Step::Action(Action::Reserve {
                    set: A,
                    preempt: true,
                })
    });
    assert!(a_preempted, "{}", milestones(&w, t).join("\n"));
    assert!(w.node(A).serving.contains(&A));
    let b = milestones(&w, resumes_at);
    assert!(b.contains(&"B Fenced".to_string()), "{b:?}");
    assert_eq!(
        count(&w, t, B, |s| *s
            == Step::Action(Action::StartServing { set: A })),
        0,
        "B served A's disks"
    );
    assert!(!w.node(B).identity, "B kept A's identity");
    // Faults heal: the pair recovers (A takes B over, B comes back through GIVEWAIT, MBWAIT).
    w.links = [true, true];
    w.disks().reservation_path_down.clear();
    let took = w.run_until_true(80, World::converged);
    w.assert_safe("after the faults");
    assert!(took.is_some(), "{}", w.trace_tail(60));
}

/// The same slow replay with the driver's mailbox heartbeat during hooks: A, booting, sees B
/// alive in the mailbox, never declares it failed and waits in GIVEWAIT; B's takeover
/// completes after the hook, and the pair recovers once the links are back.
#[test]
fn i_the_mailbox_heartbeat_during_a_slow_replay_keeps_the_taker_alive() {
    let (mut w, t, (blocked_at, resumes_at)) = slow_replay_after_a_crash(|_| {});
    w.assert_safe("slow replay with the heartbeat");
    let beats = w
        .trace
        .iter()
        .filter(|x| {
            x.node == B
                && (blocked_at..resumes_at).contains(&x.at)
                && matches!(x.step, Step::Action(Action::WriteMailbox(_)))
        })
        .count();
    assert!(beats >= 24, "{beats} heartbeats during 25 intervals");
    let restarted = w
        .trace
        .iter()
        .find(|x| x.node == A && matches!(x.step, Step::Restart(_)))
        .map(|x| x.at)
        .expect("A restarted during the replay");
    assert!(restarted < resumes_at);
    assert!(
        !w.events_since(A, restarted)
            .iter()
            .any(|e| matches!(e, GivebackEvent::PartnerFailed { .. })),
        "A declared B failed"
    );
    assert_eq!(w.state(A), Some(NodeState::GiveWait));
    assert_eq!(w.state(B), Some(NodeState::Takeover));
    assert_eq!(w.node(B).serving, [A, B].into());
    assert!(milestones(&w, t).contains(&"B CheckReservation 1".to_string()));
    w.links = [true, true];
    let took = w.run_until_true(40, World::converged);
    w.assert_safe("links back");
    assert!(took.is_some(), "{}", w.trace_tail(60));
}

#[test]
fn g_an_operators_takeover_is_held_until_an_operator_gives_back() {
    let mut w = pair();
    w.run_until(I * 10);
    // Automatic giveback is on, as by default.
    let r = w.command(A, Command::Takeover { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(w.run_until_trace(I * 20, is(A, "state TAKEOVER")));
    assert!(w.run_until_trace(I * 40, is(B, "state MBWAIT")));
    w.run_for(I * 30);
    assert_eq!(
        w.state(A),
        Some(NodeState::Takeover),
        "{}",
        w.trace_tail(20)
    );
    assert_eq!(w.state(B), Some(NodeState::MbWait));
    assert!(w.machine(A).status().operator_hold);
    let r = w.command(A, Command::Giveback { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(
        w.run_until_true(40, World::converged).is_some(),
        "{}",
        w.trace_tail(30)
    );
    assert!(!w.machine(A).status().operator_hold);
    w.assert_safe("operator takeover held, then given back");
}

#[test]
fn g_without_the_hold_an_operators_takeover_is_given_back_automatically() {
    let mut w = World::new(0);
    w.node_mut(A).hold_operator_takeover = false;
    w.run_until(I * 10);
    assert!(w.converged());
    let t = w.now;
    let r = w.command(A, Command::Takeover { check_only: false });
    assert_eq!(r.outcome, CommandOutcome::Started, "{}", r.reason);
    assert!(w.run_until_trace(I * 20, is(A, "state TAKEOVER")));
    assert!(w.run_until_trace(I * 60, is(A, "GivebackStarted")));
    assert!(w.run_until_true(40, World::converged).is_some());
    assert!(w
        .events_since(A, t)
        .contains(&GivebackEvent::GivebackStarted));
    w.assert_safe("operator takeover given back automatically");
}

#[test]
fn g_the_automatic_giveback_waits_its_delay_after_mbwait() {
    let delay = I * 25;
    let mut w = World::new(0);
    w.node_mut(A).giveback_delay = delay;
    w.run_until(I * 10);
    assert!(w.converged());
    w.crash(B);
    assert!(w.run_until_trace(I * 40, is(B, "state MBWAIT")));
    let mbwait_at = w.now;
    assert!(w.run_until_trace(I * 60, is(A, "GivebackStarted")));
    let given = w.now;
    // Not before the delay, and at the first read after it.
    assert!(
        given >= mbwait_at + delay,
        "{given:?} vs {mbwait_at:?} + {delay:?}"
    );
    assert!(
        given <= mbwait_at + delay + 2 * I,
        "{given:?} vs {mbwait_at:?} + {delay:?}"
    );
    assert!(w.run_until_true(40, World::converged).is_some());
    w.assert_safe("delayed giveback");
}
