//! Operator commands of the giveback machine (F4.5): manual takeover and giveback.

use super::{GivebackMachine, TakeoverPhase};
use crate::clients::giveback::actions::{Action, CommandOutcome, GivebackEvent};
use crate::clients::giveback::state::NodeState;
use std::time::Instant;

impl GivebackMachine {
    pub(super) fn command_takeover(
        &mut self,
        now: Instant,
        check_only: bool,
    ) -> (CommandOutcome, String) {
        let refuse = |r: String| (CommandOutcome::Refused, r);
        match self.state {
            NodeState::Up => {}
            NodeState::Takeover => return refuse("already in takeover".into()),
            s => return refuse(format!("not serving my own disks yet (state {s})")),
        }
        if self.takeover != TakeoverPhase::Idle {
            return refuse("a takeover is already under way".into());
        }
        let fresh = self.fresh_read(now).map(|l| l.read.block.state);
        // The decision itself is taken at the next fresh evidence (a mailbox read confirming
        // the failure, or a READ showing the partner not serving), never on a stale verdict.
        let (reason, kill) = if self.partner_failed {
            (
                format!(
                    "partner considered failed (silent for {:?}): reserving its disks at the \
                     next mailbox read that confirms it",
                    self.view.silent_for(now)
                ),
                false,
            )
        } else if self.interconnect_alert {
            return refuse(
                "interconnect down with the partner's mailbox alive: it cannot be killed, \
                 a takeover would risk split brain"
                    .into(),
            );
        } else {
            match fresh {
                Some(s) if !s.may_serve() => (
                    format!("partner is {s} (not serving): reserving its disks at the next read"),
                    false,
                ),
                Some(s) => (
                    format!("partner is {s}: killing it first, then taking over"),
                    true,
                ),
                None => (
                    "no fresh read of the partner: killing it first, then taking over".into(),
                    true,
                ),
            }
        };
        if check_only {
            return (CommandOutcome::Allowed, reason);
        }
        self.takeover_manual = true;
        self.takeover = TakeoverPhase::Killing;
        self.events
            .push_back(GivebackEvent::TakeoverStarted { manual: true });
        if kill {
            // TAKEOVER_PENDING goes to the mailbox before the first kill: a killed partner
            // that reboots at once reads it and waits in MBWAIT instead of serving again
            // (and being killed a second time).
            let rec = self.record();
            self.actions.push_back(Action::WriteMailbox(rec));
            self.send_kill();
        }
        (CommandOutcome::Started, reason)
    }

    pub(super) fn command_giveback(
        &mut self,
        now: Instant,
        check_only: bool,
    ) -> (CommandOutcome, String) {
        if self.state != NodeState::Takeover {
            return (
                CommandOutcome::Refused,
                format!("not in takeover (state {})", self.state),
            );
        }
        if self.partner_failed {
            return (
                CommandOutcome::Refused,
                "partner is considered failed: nobody to give back to".into(),
            );
        }
        let reason = match self.fresh_read(now).map(|l| l.read.block.state) {
            Some(NodeState::MbWait) => {
                "partner is MBWAIT: giving back at the next read confirming it"
            }
            Some(NodeState::GiveWait) => "partner is GIVEWAIT: giving back once it reaches MBWAIT",
            Some(s) => {
                return (
                    CommandOutcome::Refused,
                    format!("partner is {s}, not waiting for a giveback"),
                )
            }
            None => {
                return (
                    CommandOutcome::Refused,
                    "no fresh read of the partner".into(),
                )
            }
        };
        if check_only {
            return (CommandOutcome::Allowed, reason.into());
        }
        self.giveback_requested = true;
        (CommandOutcome::Started, reason.into())
    }
}
