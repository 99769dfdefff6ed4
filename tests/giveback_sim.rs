//! The giveback protocol (F4) on a simulated HA pair in virtual time: Fig. 5 of seed 000 step
//! by step, crashes at every step, corrupt and torn state, interconnect failures, repeated
//! failures during bring-up, operator commands, and a randomized seed sweep.
//!
//! `SEED=n cargo test --test giveback_sim random` replays one seed of the sweep;
//! `GIVEBACK_SEEDS=n` sets how many seeds the sweep runs (default 500).

#[path = "giveback_sim/mod.rs"]
mod sim;

use sim::disks::CopyFault;
use sim::{Cause, Step, World, A, B, I, K};
use interlink::clients::giveback::{
    Action, Command, CommandOutcome, GivebackEvent, NodeState, StateBlock,
};
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
                    Action::SendKill { target_incarnation } if !routine => {
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
                    other => Some(format!("{other:?}")),
                }
            }
            Step::State(s) => Some(format!("state {s}")),
            Step::Crash => Some("crash".into()),
            Step::Restart(inc) => Some(format!("restart {inc}")),
            Step::Event(e) => match e {
                GivebackEvent::PartnerFailed { .. } => Some("PartnerFailed".into()),
                GivebackEvent::TakeoverDone { .. } => Some("TakeoverDone".into()),
                GivebackEvent::KillsStopped => Some("KillsStopped".into()),
                GivebackEvent::KillsResumed => Some("KillsResumed".into()),
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
        (515, "A WriteMailbox taken_over=true"),
        (515, "A TakeoverDone"),
        (515, "A AssumeIdentity"),
        (515, "A ReplayPartnerLog"),
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
    assert!(detection >= K * I && detection <= (K + 1) * I, "{detection:?}");
}
