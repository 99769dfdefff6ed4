//! The takeover sequence of the giveback machine (F4.3, steps 540-567 of seed 001): reserving
//! the partner's disks (after the guards of `machine_commands.rs`), the "taken over" mailbox
//! write, the identity and replay hooks, the reservation check before serving, the kill
//! messages, and the release of the partner's disks in TAKEOVER.

use super::{GivebackMachine, TakeoverPhase};
use crate::clients::giveback::actions::{Action, GivebackEvent};
use crate::clients::giveback::state::NodeState;
use std::time::Instant;

impl GivebackMachine {
    /// A fresh read of the partner while this node serves its disks.
    pub(super) fn handle_takeover_partner(&mut self, now: Instant, partner: NodeState) {
        match partner {
            NodeState::GiveWait => {
                self.stop_kills();
                self.release_partner_disks();
            }
            NodeState::MbWait => {
                self.stop_kills();
                let since = *self.mbwait_since.get_or_insert(now);
                let held = self.operator_takeover && self.cfg.hold_operator_takeover;
                let due = now.saturating_duration_since(since) >= self.cfg.giveback_delay;
                if self.giveback_requested || (self.auto_giveback && !held && due) {
                    self.give_back(now);
                }
            }
            // After step 540 the partner comes up only by this node's giveback, or by
            // declaring this node failed (then it serves its disks already).
            NodeState::Up | NodeState::Takeover
                if self.serving_partner_in_takeover() && self.partner_released =>
            {
                self.stop_serving_partner(
                        now,
                        "the partner's block says it serves its own disks again (it declared this node failed)",
                    );
            }
            _ => {}
        }
    }

    pub(super) fn partner_reservation(&mut self, now: Instant, holder: Option<u32>) {
        let granted = holder == Some(self.cfg.me);
        match self.takeover {
            TakeoverPhase::Confirming if granted => self.serve_partner(now),
            TakeoverPhase::Confirming => {
                tracing::error!(
                    me = self.cfg.me,
                    ?holder,
                    "the partner's disks were taken back during the takeover: fencing myself"
                );
                self.halt(now, GivebackEvent::Fenced);
            }
            TakeoverPhase::Reserving if granted => {
                self.takeover = TakeoverPhase::Reconfirming;
                self.actions.push_back(Action::ReadMailbox);
            }
            TakeoverPhase::Reserving => {
                self.takeover = if self.takeover_manual {
                    TakeoverPhase::Killing
                } else {
                    TakeoverPhase::Idle
                };
            }
            TakeoverPhase::Rereserving => {
                self.takeover = TakeoverPhase::Idle;
                if granted {
                    self.partner_released = false;
                }
            }
            // The interval's check in TAKEOVER (see `tick`).
            TakeoverPhase::Idle if self.serving_partner_in_takeover() && !self.partner_released => {
                if granted {
                    if self.killing {
                        self.send_kill();
                    }
                } else {
                    self.stop_serving_partner(now, "the partner's disks are reserved by another node again (the partner declared this node failed)");
                }
            }
            _ => {}
        }
    }

    pub(super) fn start_reserving_partner(&mut self, now: Instant) {
        if self.refuse_outdated_takeover() {
            return;
        }
        if self.takeover == TakeoverPhase::Idle {
            self.events.push_back(GivebackEvent::TakeoverStarted {
                manual: self.takeover_manual,
            });
        }
        self.detection = self.view.silent_for(now);
        self.takeover = TakeoverPhase::Reserving;
        self.actions.push_back(Action::Reserve {
            set: self.cfg.partner,
            preempt: true,
        });
    }

    /// The mailbox says "taken over": assume the identity, replay the partner's log, then
    /// confirm the reservation (the hooks may take long: the partner may have preempted it
    /// meanwhile) before serving.
    pub(super) fn complete_takeover(&mut self, _now: Instant) {
        let partner = self.cfg.partner;
        self.takeover = TakeoverPhase::Confirming;
        self.identity = true;
        self.actions.push_back(Action::AssumeIdentity);
        let record = self.view.record();
        self.actions.push_back(Action::ReplayPartnerLog {
            partner_log_generation: record.map_or(0, |r| r.own_log_generation),
            partner_writeback_epoch: record.map_or(0, |r| r.own_writeback_epoch),
            partner_log_applied_here: record.is_some_and(|r| r.own_log_applied_here),
        });
        self.actions
            .push_back(Action::CheckReservation { set: partner });
    }

    /// The check after the hooks failed: nothing of the partner's is served; the identity
    /// goes back; the takeover starts again from the reserve at the next fresh evidence.
    /// Returns the takeover's next phase (a manual takeover goes back to waiting for the
    /// partner to be read not serving, as after a failed reserve).
    pub(super) fn abandon_takeover(&mut self) -> TakeoverPhase {
        tracing::warn!(
            me = self.cfg.me,
            "takeover abandoned: the partner's reservation could not be confirmed"
        );
        if self.identity {
            self.identity = false;
            self.actions.push_back(Action::ReleaseIdentity);
        }
        if self.takeover_manual {
            TakeoverPhase::Killing
        } else {
            TakeoverPhase::Idle
        }
    }

    /// The partner's reservation is confirmed after the hooks: serve its disks, TAKEOVER.
    pub(super) fn serve_partner(&mut self, now: Instant) {
        let partner = self.cfg.partner;
        self.takeover = TakeoverPhase::Idle;
        self.operator_takeover = self.takeover_manual;
        self.takeover_manual = false;
        self.takeover_forced = false;
        self.takeover_refused = None;
        self.serving_partner = true;
        self.actions
            .push_back(Action::StartServing { set: partner });
        self.events
            .push_back(GivebackEvent::Serving { set: partner });
        self.set_state(now, NodeState::Takeover);
        self.takeovers = self.takeovers.wrapping_add(1);
        self.last_detection = Some(self.detection);
        self.partner_released = false;
        self.giveback_requested = false;
        self.publish_if_changed();
        self.events.push_back(GivebackEvent::TakeoverDone {
            detection: self.detection,
        });
        tracing::warn!(me = self.cfg.me, partner, detection = ?self.detection, "took over");
        self.killing = true;
        self.send_kill();
    }

    pub(super) fn send_kill(&mut self) {
        if let Some(target_incarnation) = self.view.partner_incarnation() {
            self.kills_sent += 1;
            self.actions
                .push_back(Action::SendKill { target_incarnation });
        }
    }

    pub(super) fn stop_kills(&mut self) {
        if self.killing {
            self.killing = false;
            self.events.push_back(GivebackEvent::KillsStopped);
        }
    }

    /// In TAKEOVER after step 540 (the partner's disks released, still served), the
    /// partner's record of its running incarnation says it serves its own disks: it came up
    /// without this node's giveback, which happens only when it declared this node failed
    /// (a stall of this node; it preempts its own disks from MBWAIT). This node stops
    /// serving them at once: no giveback, the partner is not waiting for one.
    pub(super) fn partner_took_its_disks_back(&mut self, now: Instant) {
        if !self.serving_partner_in_takeover() || !self.partner_released {
            return;
        }
        let Some(rec) = self.view.record() else {
            return;
        };
        let serves_own = matches!(rec.state, NodeState::Up | NodeState::Takeover);
        if !serves_own || Some(rec.incarnation) != self.view.partner_incarnation() {
            return;
        }
        let why = format!(
            "the partner serves its own disks again ({}; it declared this node failed)",
            rec.state
        );
        self.stop_serving_partner(now, &why);
    }

    /// In TAKEOVER, serving the partner's disks, with no takeover step under way: the state
    /// in which the partner may take its disks back behind this node's back (whether step
    /// 540 released them decides how this node learns it).
    pub(super) fn serving_partner_in_takeover(&self) -> bool {
        self.state == NodeState::Takeover
            && self.serving_partner
            && self.takeover == TakeoverPhase::Idle
    }

    /// The partner took its disks back without a giveback: stop serving them at once,
    /// release its identity, back to UP (no mailbox handshake: the partner waits for none).
    pub(super) fn stop_serving_partner(&mut self, now: Instant, why: &str) {
        let partner = self.cfg.partner;
        tracing::warn!(
            me = self.cfg.me,
            partner,
            reason = why,
            "no longer serving the partner's disks"
        );
        self.serving_partner = false;
        self.holding.remove(&partner);
        self.actions.push_back(Action::StopServing { set: partner });
        self.events
            .push_back(GivebackEvent::StoppedServing { set: partner });
        if self.identity {
            self.identity = false;
            self.actions.push_back(Action::ReleaseIdentity);
        }
        self.partner_released = false;
        self.stop_kills();
        self.set_state(now, NodeState::Up);
    }

    /// After step 540 this node serves disks it no longer holds, on the strength of being
    /// alive: once its lease ran out (a stall) the partner may have declared it failed and
    /// taken them back. It stops serving them; its next record says so, which is what a
    /// partner still in MBWAIT waits for.
    pub(super) fn released_disks_past_the_lease(&mut self, now: Instant) {
        if self.serving_partner_in_takeover()
            && self.partner_released
            && self.lease.until().is_none_or(|u| u <= now)
        {
            self.stop_serving_partner(
                now,
                "serving lease ran out while serving the partner's released disks",
            );
        }
    }

    /// Step 540 (in TAKEOVER): release the partner's disks, keep serving them.
    pub(super) fn release_partner_disks(&mut self) {
        if self.partner_released {
            return;
        }
        self.partner_released = true;
        if self.holding.remove(&self.cfg.partner) {
            self.actions.push_back(Action::Release {
                set: self.cfg.partner,
            });
        }
    }
}
