//! Operator commands of the giveback machine (F4.5): manual takeover and giveback; and two
//! guards of the automatic takeover: none starts from a copy of the partner's log that may
//! lack acknowledged records, outdated or not confirmed complete on this incarnation (F5.7;
//! only a forced takeover overrides it), and none goes on past a partner that showed
//! life in the mailbox read right after its disks were reserved (a restart racing the
//! preempt: the restarted partner may already have reserved its disks and be recovering its
//! own log, which the takeover's replay would apply a second time).

use super::{GivebackMachine, TakeoverPhase};
use crate::clients::giveback::actions::CopyGap;
use crate::clients::giveback::actions::{Action, CommandOutcome, GivebackEvent};
use crate::clients::giveback::state::NodeState;
use std::time::Instant;

impl GivebackMachine {
    /// What the partner's newest mailbox record says this node's copy of its shadow log may
    /// lack: outdated from a position on, or (positive confirmation) not confirmed complete
    /// on this incarnation of this node. None: in sync and complete, or no shadow log.
    /// A copy both outdated and not confirmed on this incarnation is unconfirmed: this
    /// node's region was not the one the copy was complete in (it restarted since), so it
    /// may lack records before the outdated mark as well.
    pub(super) fn partner_copy_gap(&self) -> Option<CopyGap> {
        let r = self.view.record()?;
        let unconfirmed = match r.partner_copy_complete_for {
            Some(c) if c != self.incarnation => Some(CopyGap::Unconfirmed { complete_for: c }),
            _ => None,
        };
        if let Some(from) = r.partner_copy_outdated {
            return Some(unconfirmed.unwrap_or(CopyGap::Outdated { from }));
        }
        if r.writeback_copy_outdated {
            return Some(CopyGap::WriteBackOutdated);
        }
        unconfirmed
    }

    /// F5.7 (DRBD: an outdated peer is never promoted; ONTAP: no takeover while NVRAM is not
    /// in sync): a takeover about to reserve the partner's disks is refused while the
    /// partner's record says this node's copy may lack acknowledged records, unless an
    /// operator forced it (what it went past is then recorded). Returns whether it is
    /// refused.
    pub(super) fn refuse_outdated_takeover(&mut self) -> bool {
        let Some(gap) = self.partner_copy_gap() else {
            self.takeover_refused = None;
            return false;
        };
        if self.takeover_forced {
            if self.forced_loss != Some(gap) {
                tracing::error!(me = self.cfg.me, partner = self.cfg.partner, copy = %gap, "forced takeover from a copy of the partner's log that may lack acknowledged records: they are lost to it");
                self.forced_loss = Some(gap);
            }
            return false;
        }
        if self.takeover_refused != Some(gap) {
            tracing::error!(me = self.cfg.me, partner = self.cfg.partner, copy = %gap, "partner failed, but this node's copy of its log may lack acknowledged records: no automatic takeover (force one to accept the loss)");
            self.takeover_refused = Some(gap);
            self.events
                .push_back(GivebackEvent::TakeoverRefused { gap });
        }
        // A manual (unforced) takeover ends here (a forced command may start another): left
        // waiting, its TAKEOVER_PENDING would hold the restarted partner in MBWAIT for good.
        if self.takeover_manual && self.takeover == TakeoverPhase::Killing {
            self.takeover = TakeoverPhase::Idle;
            self.takeover_manual = false;
        }
        true
    }

    /// [`TakeoverPhase::Reconfirming`]: the mailbox read after the preempt. The partner
    /// still failed (or a manual takeover killed it) and its record still allows it (no copy
    /// gap, checked again on this read: a mark written after the last read): the takeover
    /// goes on ("taken over" to the mailbox). It showed life (a
    /// newer record, written by a restart before it reserved its disks, which the preempt
    /// then took): the takeover is abandoned and the disks released.
    pub(super) fn reconfirm_takeover(&mut self) {
        // A manual takeover killed a live partner: life shown is no reason to stop, but the
        // copy's state is checked on this read as well.
        let manual = self.takeover_manual;
        if (self.partner_failed || manual) && self.refuse_outdated_takeover() {
            // The record read now carries what the one the reservation followed did not yet
            // (an outdated mark written in between): refused like before the reservation.
            self.abort_unconfirmed_takeover(
                "the partner's record, read after the preempt, says the copy may lack records",
            );
            self.takeover_manual = false;
        } else if self.partner_failed || manual {
            self.takeover = TakeoverPhase::WritingMailbox;
            let rec = self.record();
            self.actions.push_back(Action::WriteMailbox(rec));
        } else {
            self.abort_unconfirmed_takeover("the partner showed life right after the preempt");
        }
    }

    /// Abandons an automatic takeover before anything of it was done but the reservation.
    pub(super) fn abort_unconfirmed_takeover(&mut self, why: &str) {
        tracing::warn!(
            me = self.cfg.me,
            partner = self.cfg.partner,
            reason = why,
            "takeover abandoned after the reservation; the partner's disks are released"
        );
        self.takeover = TakeoverPhase::Idle;
        if self.holding.remove(&self.cfg.partner) {
            self.actions.push_back(Action::Release {
                set: self.cfg.partner,
            });
        }
    }

    pub(super) fn command_force_takeover(&mut self, now: Instant) -> (CommandOutcome, String) {
        let gap = self.partner_copy_gap();
        let was_forced = self.takeover_forced;
        self.takeover_forced = true;
        let (outcome, reason) = if self.takeover == TakeoverPhase::Killing && self.takeover_manual {
            // A manual takeover already waits: forcing lets it past the outdated copy.
            (
                CommandOutcome::Started,
                "the manual takeover under way goes on".to_string(),
            )
        } else {
            self.command_takeover(now, false)
        };
        if outcome == CommandOutcome::Refused {
            self.takeover_forced = was_forced;
            return (outcome, reason);
        }
        let loss = match gap {
            Some(CopyGap::Outdated { from }) => format!(
                "forced past an outdated copy: the partner's records from {from} on were \
                 acknowledged without this node's copy and are lost to this takeover (they are \
                 in the partner's NVRAM only)"
            ),
            Some(CopyGap::WriteBackOutdated) => "forced past an outdated write-back mirror: the \
                 partner's writes completed without this node's mirror are lost to this takeover \
                 (they are in the partner's NVRAM only)"
                .into(),
            Some(g @ CopyGap::Unconfirmed { .. }) => format!(
                "forced past an unconfirmed copy ({g}): records the partner acknowledged \
                 after the last one this copy holds are lost to this takeover (they are in the \
                 partner's NVRAM only)"
            ),
            None => "this node's copy of the partner's log is in sync: nothing is lost".into(),
        };
        (outcome, format!("{reason}; {loss}"))
    }

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
