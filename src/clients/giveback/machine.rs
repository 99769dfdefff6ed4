//! The giveback protocol machine (F4.2-F4.5): one per node, sans-IO.
//!
//! No clock, thread, file or socket: the driver feeds `handle_*` inputs with the current
//! (possibly virtual) time and carries out the [`Action`]s from `poll_action` one at a time,
//! in order, reporting each result before taking the next.
//!
//! Every interval the machine writes its mailbox record and reads the partner's; when up it
//! also checks that nobody took its own disks.
//!
//! Failure detection (F4.2). The partner has failed when, at a successful mailbox read, no
//! link brought a change of its (incarnation, progress) for K × interval (counted from this
//! machine's start if no READ ever arrived) AND the mailbox reads have succeeded without
//! interruption for the whole K × interval and none showed a newer (incarnation, heartbeat)
//! of the partner (no valid record counts as no change). A mailbox read that fails breaks the
//! evidence: the window starts again at the next successful read, so an unreadable mailbox
//! delays a takeover and never causes one. Takeover decisions are only taken on that fresh
//! evidence (or on a fresh READ), never on an earlier verdict. Links silent for the window
//! while the mailbox changed at least two intervals after they went quiet raise the
//! interconnect alert instead (no takeover). Torn READs are counted and ignored; a mailbox
//! record older than the newest one seen (a stale copy) is no change and is never used.
//!
//! The bring-up follows Fig. 5 of seed 000 (steps 505-575):
//!
//! - Booting: check own reservation; held by the partner → GIVEWAIT (530); free or mine →
//!   reserve, read the mailbox (545); partner claims my disks (546) → MBWAIT (550); else
//!   re-check the reservation and serve (567-570).
//! - GIVEWAIT: the same each interval until the reservation is free.
//! - MBWAIT: read the mailbox each interval; a newer partner record without the claim (565)
//!   → re-check the reservation and serve.
//! - GIVEWAIT or MBWAIT with the partner failed: preempt own disks, serve, then take over.
//!
//! Takeover (515): reserve the partner's disks with preempt, read the mailbox once more (an
//! automatic takeover is abandoned, the disks released, if the partner showed life: a restart
//! that reserved its disks just before the preempt and may be recovering its own log), write
//! "taken over" to the mailbox, assume the identity, replay the partner's log, check that the partner's disks are
//! still reserved here, serve them, enter TAKEOVER and send kill messages every interval until
//! a fresh READ shows the partner waiting. Partner
//! GIVEWAIT (535) → stop kills (537), release its disks (540). Partner MBWAIT (555) with
//! automatic giveback or an operator giveback → give back (560). The first later READ showing
//! the partner UP closes the outage window (575).
//!
//! Safety rules beyond the seed:
//! - A booting node re-checks its reservation after the mailbox read, right before serving,
//!   so a preempt between its reserve and its serve is seen.
//! - A taking-over node checks the partner's reservation again after the identity and replay
//!   hooks (which may take long), right before serving the partner's disks. Found taken back
//!   (only a partner that declared this node failed preempts), it serves nothing of the
//!   partner's and fences itself (releases the identity, stops serving, halts, reboots), as a
//!   serving node that finds its own disks reserved by the partner does: the partner is about
//!   to take this node's disks too. If the check itself fails, the takeover is abandoned (the
//!   identity released) and starts again from the reserve at the next fresh evidence.
//! - While the driver is blocked in a long service hook it cannot run the timer; it calls
//!   [`GivebackMachine::keepalive`] instead, which gives it the interval's mailbox record to
//!   write, so a slow replay does not make this node look dead to its partner.
//! - At 546 and 565 a fresh READ showing the partner serving my disks counts as a claim even
//!   if the mailbox copy says otherwise (a stale copy never releases a waiting node).
//! - A serving node whose mailbox writes fail on both copies for K−1 intervals in a row fences
//!   itself (stops serving, halts, reboots), whatever its links say: its partner may declare it
//!   failed after K intervals without a visible mailbox change if the partner's READs fail
//!   (links cut, or copies torn) even while this node's own READs work. A node that cannot
//!   reach the mailbox disks has in practice lost its shared storage path too.
//! - Any node not serving the partner's disks that sees the partner in GIVEWAIT releases the
//!   partner's disks (a reservation left by an earlier incarnation would block it forever).

use super::actions::{
    Action, Command, CommandOutcome, CommandReply, CopyGap, GivebackConfig, GivebackEvent,
    GivebackStatus,
};
use super::detector::{ObservedRead, PartnerView};
use super::lease::LeaseClock;
use super::mailbox::{MailboxRecord, MailboxWrite};
use super::reservation::DiskSet;
use super::state::{
    NodeState, PartnerRead, StateBlock, FLAG_AUTO_GIVEBACK, FLAG_INTERCONNECT_ALERT,
    FLAG_PARTNER_DISKS_RESERVED, FLAG_SERVING_OWN, FLAG_SERVING_PARTNER,
};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Where a bring-up round is (Booting, GIVEWAIT, MBWAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BootPhase {
    /// Nothing outstanding.
    Idle,
    /// CheckReservation{me} sent.
    CheckOwn,
    /// Reserve{me, preempt: false} sent.
    ReserveOwn,
    /// ReadMailbox sent after the reservation was granted (545).
    ReadMailbox,
    /// CheckReservation{me} sent after the mailbox released me (565/567).
    Recheck,
    /// Reserve{me, preempt: true} sent: the partner failed while I waited.
    PreemptOwn,
}

/// Where a takeover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TakeoverPhase {
    /// None under way.
    Idle,
    /// Manual takeover of a live partner: killing it until it stops serving.
    Killing,
    /// Reserve{partner, preempt: true} sent.
    Reserving,
    /// Automatic takeover, reservation granted: the mailbox is read once more, and a partner
    /// record newer than the failure evidence (a partner that restarted and reserved its
    /// disks just before the preempt) aborts the takeover.
    Reconfirming,
    /// Reservation granted; the mailbox write saying "taken over" is outstanding.
    WritingMailbox,
    /// Identity assumed and log replayed (hooks queued); CheckReservation{partner} sent:
    /// serving the partner's disks waits for its answer.
    Confirming,
    /// In TAKEOVER, the partner failed again after its disks were released: re-reserving.
    Rereserving,
}

/// One node's giveback protocol machine. See the module docs.
#[derive(Debug)]
pub struct GivebackMachine {
    cfg: GivebackConfig,
    incarnation: u64,
    state: NodeState,
    state_since: Instant,
    state_changes: u16,
    /// Input number of the last state change: reads handled after it are "fresh".
    state_input: u64,
    input: u64,
    now: Instant,
    next_tick: Option<Instant>,
    /// In MBWAIT: when the mailbox was last read between ticks.
    mbwait_read_at: Instant,
    actions: VecDeque<Action>,
    events: VecDeque<GivebackEvent>,
    published: Option<StateBlock>,
    view: PartnerView,
    serving_own: bool,
    serving_partner: bool,
    identity: bool,
    holding: BTreeSet<DiskSet>,
    heartbeat: u64,
    write_failures: u32,
    boot: BootPhase,
    /// Key of the partner record that sent me to MBWAIT: leaving needs a newer one.
    mbwait_key: Option<(u64, u64)>,
    takeover: TakeoverPhase,
    takeover_manual: bool,
    detection: Duration,
    killing: bool,
    partner_released: bool,
    giveback_requested: bool,
    giveback_at: Option<Instant>,
    auto_giveback: bool,
    /// The takeover being served was an operator's.
    operator_takeover: bool,
    /// Since when the partner is read in MBWAIT (for the giveback delay).
    mbwait_since: Option<Instant>,
    interconnect_alert: bool,
    partner_failed: bool,
    /// The operator forced the takeover in progress past an outdated copy (F5.7).
    takeover_forced: bool,
    /// The gap of the copy an automatic takeover was refused for.
    takeover_refused: Option<CopyGap>,
    /// What the last forced takeover went past.
    forced_loss: Option<CopyGap>,
    takeovers: u32,
    givebacks: u32,
    last_detection: Option<Duration>,
    last_outage_window: Option<(Instant, Instant)>,
    kills_sent: u64,
    io_failures: u64,
    last_error: Option<String>,
    /// The serving lease (`lease.rs`).
    lease: LeaseClock,
}

impl GivebackMachine {
    /// A machine for incarnation `incarnation` of node `cfg.me`, in Booting; its first
    /// interval starts at once.
    pub fn new(cfg: GivebackConfig, incarnation: u64, now: Instant) -> GivebackMachine {
        let mut m = GivebackMachine {
            view: PartnerView::new(cfg.interval, cfg.detection_window(), now),
            lease: LeaseClock::new(cfg.detection_window()),
            auto_giveback: cfg.auto_giveback,
            cfg,
            incarnation,
            state: NodeState::Booting,
            state_since: now,
            state_changes: 0,
            state_input: 0,
            input: 0,
            now,
            next_tick: Some(now),
            mbwait_read_at: now,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            published: None,
            serving_own: false,
            serving_partner: false,
            identity: false,
            holding: BTreeSet::new(),
            heartbeat: 0,
            write_failures: 0,
            boot: BootPhase::Idle,
            mbwait_key: None,
            takeover: TakeoverPhase::Idle,
            takeover_manual: false,
            detection: Duration::ZERO,
            killing: false,
            partner_released: false,
            giveback_requested: false,
            giveback_at: None,
            operator_takeover: false,
            mbwait_since: None,
            interconnect_alert: false,
            partner_failed: false,
            takeover_forced: false,
            takeover_refused: None,
            forced_loss: None,
            takeovers: 0,
            givebacks: 0,
            last_detection: None,
            last_outage_window: None,
            kills_sent: 0,
            io_failures: 0,
            last_error: None,
        };
        m.publish_if_changed();
        m
    }

    // ------------------------------------------------------------------ inputs

    /// A believed READ of the partner's block over `link` (torn copies are reported with
    /// [`GivebackMachine::handle_partner_torn`] instead).
    pub fn handle_partner_read(&mut self, now: Instant, link: u8, read: PartnerRead) {
        self.enter(now);
        if self.state == NodeState::Halted {
            return;
        }
        let previous = self.view.latest();
        let changed = self.view.on_read(now, link, read, self.input);
        if changed {
            self.partner_alive();
            if self.interconnect_alert {
                self.interconnect_alert = false;
                self.events.push_back(GivebackEvent::InterconnectRestored);
            }
        }
        // Only a read that is now the latest (not a lagging copy of an older incarnation)
        // drives decisions.
        if self.view.latest().is_none_or(|l| l.input != self.input) {
            self.publish_if_changed();
            return;
        }
        if previous.is_none_or(|p| {
            p.read.block.state != read.block.state || p.read.incarnation != read.incarnation
        }) {
            self.events.push_back(GivebackEvent::PartnerStateChanged {
                incarnation: read.incarnation,
                state: read.block.state,
            });
        }
        let partner = read.block.state;
        match self.state {
            NodeState::Up => {
                if let (Some(at), NodeState::Up) = (self.giveback_at, partner) {
                    self.giveback_at = None;
                    self.last_outage_window = Some((at, now));
                    self.events.push_back(GivebackEvent::GivebackDone {
                        outage: now.saturating_duration_since(at),
                    });
                }
                if self.takeover == TakeoverPhase::Killing && !partner.may_serve() {
                    self.start_reserving_partner(now);
                }
            }
            NodeState::Takeover if partner != NodeState::MbWait && self.mbwait_since.is_some() => {
                // It left MBWAIT (restarted again): the delay starts over when it is back.
                self.mbwait_since = None;
                self.handle_takeover_partner(now, partner);
            }
            NodeState::Takeover => self.handle_takeover_partner(now, partner),
            _ => {}
        }
        self.publish_if_changed();
    }

    /// A READ of the partner's block that was torn or corrupt: counted, never believed.
    pub fn handle_partner_torn(&mut self, now: Instant, link: u8) {
        self.enter(now);
        self.view.torn_reads += 1;
        tracing::debug!(
            link,
            torn = self.view.torn_reads,
            "torn partner block ignored"
        );
    }

    /// The result of [`Action::ReadMailbox`]: the partner's newest valid record, if any.
    pub fn handle_mailbox(&mut self, now: Instant, partner: Option<MailboxRecord>) {
        self.enter(now);
        if self.state == NodeState::Halted {
            return;
        }
        let partner = partner.filter(|r| r.node == self.cfg.partner);
        if self.view.on_mailbox(now, partner) {
            self.partner_alive();
        }
        self.evaluate_partner(now);
        self.bring_up_after_mailbox(now);
        self.partner_took_its_disks_back(now);
        if self.takeover == TakeoverPhase::Reconfirming {
            self.reconfirm_takeover();
        } else if self.partner_failed {
            self.react_to_failed_partner(now);
        }
        self.publish_if_changed();
    }

    /// The result of [`Action::WriteMailbox`]: at least one copy was written.
    pub fn handle_mailbox_written(&mut self, now: Instant, write: MailboxWrite) {
        self.enter(now);
        self.lease.written();
        if self.state == NodeState::Halted {
            return;
        }
        if let Some(f) = write.failure {
            tracing::debug!(failure = %f, "one mailbox copy not written");
        }
        self.write_failures = 0;
        if self.takeover == TakeoverPhase::WritingMailbox {
            self.complete_takeover(now);
        }
        self.publish_if_changed();
    }

    /// The result of [`Action::Reserve`] or [`Action::CheckReservation`]: who holds `set` now.
    pub fn handle_reservation(&mut self, now: Instant, set: DiskSet, holder: Option<u32>) {
        self.enter(now);
        if self.state == NodeState::Halted {
            return;
        }
        let me = self.cfg.me;
        if holder == Some(me) {
            self.holding.insert(set);
        } else {
            self.holding.remove(&set);
        }
        if set == me {
            self.own_reservation(now, holder);
            match holder {
                Some(h) if h == me => {
                    if self.serving_own {
                        self.lease.own_reservation_held();
                    }
                }
                // Unheld while booting is the usual case (a reserve follows); anything else
                // ends the lease.
                None if !self.serving_own => {}
                _ => self.lease.end(),
            }
        } else if set == self.cfg.partner {
            self.partner_reservation(now, holder);
        }
        self.publish_if_changed();
    }

    /// A driver action failed: it is retried next interval; a failure never causes a takeover.
    pub fn handle_io_failed(&mut self, now: Instant, action: &Action, error: String) {
        self.enter(now);
        self.io_failures += 1;
        tracing::warn!(?action, %error, "giveback driver action failed");
        self.last_error = Some(format!("{action:?}: {error}"));
        if self.state == NodeState::Halted {
            return;
        }
        match action {
            Action::WriteMailbox(_) => {
                self.lease.write_failed();
                self.write_failures = self.write_failures.saturating_add(1);
                self.fence_if_isolated(now);
            }
            Action::ReadMailbox => {
                self.view.on_mailbox_failed();
                if self.boot == BootPhase::ReadMailbox {
                    self.boot = BootPhase::Idle;
                }
                if self.takeover == TakeoverPhase::Reconfirming {
                    self.abort_unconfirmed_takeover("the mailbox read confirming it failed");
                }
            }
            Action::Reserve { set, .. } | Action::CheckReservation { set } => {
                if *set == self.cfg.me {
                    self.boot = BootPhase::Idle;
                } else if *set == self.cfg.partner {
                    self.takeover = match self.takeover {
                        TakeoverPhase::Reserving if self.takeover_manual => TakeoverPhase::Killing,
                        TakeoverPhase::Reserving | TakeoverPhase::Rereserving => {
                            TakeoverPhase::Idle
                        }
                        TakeoverPhase::Confirming => self.abandon_takeover(),
                        other => other,
                    };
                }
            }
            Action::Release { set } => {
                // Still held as far as anyone knows: retried next interval.
                self.holding.insert(*set);
                if *set == self.cfg.partner {
                    self.partner_released = false;
                }
            }
            _ => {}
        }
        self.publish_if_changed();
    }

    /// A kill message arrived. Only a serving node of the named incarnation obeys: it stops
    /// serving, halts and reboots.
    pub fn handle_kill(&mut self, now: Instant, target_incarnation: u64) {
        self.enter(now);
        if target_incarnation != self.incarnation || !self.state.may_serve() {
            tracing::debug!(target_incarnation, state = %self.state, "kill ignored");
            return;
        }
        tracing::warn!(incarnation = self.incarnation, "killed by the partner");
        self.halt(now, GivebackEvent::Killed);
    }

    /// An operator command (F4.5).
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> CommandReply {
        self.enter(now);
        let (outcome, reason) = match cmd {
            Command::Takeover { check_only } => self.command_takeover(now, check_only),
            Command::Giveback { check_only } => self.command_giveback(now, check_only),
            Command::ForceTakeover => self.command_force_takeover(now),
            Command::SetAutoGiveback(on) => {
                self.auto_giveback = on;
                (
                    CommandOutcome::Done,
                    format!("automatic giveback {}", if on { "on" } else { "off" }),
                )
            }
        };
        tracing::info!(?cmd, ?outcome, %reason, "giveback command");
        self.publish_if_changed();
        CommandReply {
            outcome,
            reason,
            facts: self.status(),
        }
    }

    /// The timer: runs the interval's work when it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.enter(now);
        if let Some(due) = self.mbwait_read_due() {
            if now >= due {
                // MBWAIT is short and the partner's clients are without service until the
                // mailbox change is seen (565): read it `mbwait_reads_per_interval` times per
                // interval.
                self.mbwait_read_at = now;
                self.actions.push_back(Action::ReadMailbox);
            }
        }
        if self.advance_timer(now) {
            self.tick(now);
            self.publish_if_changed();
        }
    }

    /// The timer for a driver blocked in a long service hook (identity, replay, serving),
    /// called instead of [`GivebackMachine::handle_timeout`] when
    /// [`GivebackMachine::poll_timeout`] is due. Such a driver cannot do the interval's work,
    /// but its partner must keep seeing it alive: the returned record is the interval's
    /// mailbox heartbeat, to be written and reported with `handle_mailbox_written` or
    /// `handle_io_failed` like an [`Action::WriteMailbox`] (failures count towards fencing).
    /// The rest of the interval's work (mailbox read, reservation check, kills) waits until
    /// the hook returns and the queued actions have been carried out. `None` when no interval
    /// is due, when halted, or while the takeover's own "taken over" write is queued.
    pub fn keepalive(&mut self, now: Instant) -> Option<MailboxRecord> {
        self.enter(now);
        if self.mbwait_read_due().is_some_and(|due| now >= due) {
            self.mbwait_read_at = now;
        }
        if !self.advance_timer(now)
            || self.state == NodeState::Halted
            || self.takeover == TakeoverPhase::WritingMailbox
        {
            return None;
        }
        Some(self.record())
    }

    // ------------------------------------------------------------------ outputs

    /// Until when this node may acknowledge writes to its own disk set (the serving lease,
    /// `lease.rs`); None: it may not.
    pub fn poll_lease(&self) -> Option<Instant> {
        self.lease.until().filter(|_| self.serving_own)
    }

    /// Whether this node serves its own disk set now.
    pub fn serves_own(&self) -> bool {
        self.serving_own
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Actions waiting to be taken with [`GivebackMachine::poll_action`].
    pub fn pending_actions(&self) -> usize {
        self.actions.len()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GivebackEvent> {
        self.events.pop_front()
    }

    /// When [`GivebackMachine::handle_timeout`] wants to run next (`None` once Halted).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.mbwait_read_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// In MBWAIT, when the next extra mailbox read is due.
    fn mbwait_read_due(&self) -> Option<Instant> {
        let n = self.cfg.mbwait_reads_per_interval;
        (self.state == NodeState::MbWait && n > 1)
            .then(|| self.mbwait_read_at + self.cfg.interval / n)
    }

    /// This node's state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// This incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The state block as it should be published now.
    pub fn state_block(&self) -> StateBlock {
        let mut flags = 0;
        for (on, flag) in [
            (self.auto_giveback, FLAG_AUTO_GIVEBACK),
            (self.serving_own, FLAG_SERVING_OWN),
            (self.serving_partner, FLAG_SERVING_PARTNER),
            (
                self.holding.contains(&self.cfg.partner),
                FLAG_PARTNER_DISKS_RESERVED,
            ),
            (self.interconnect_alert, FLAG_INTERCONNECT_ALERT),
        ] {
            if on {
                flags |= flag;
            }
        }
        let micros =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        StateBlock {
            state: self.state,
            flags,
            takeovers: self.takeovers,
            givebacks: self.givebacks,
            last_outage_us: micros(
                self.last_outage_window
                    .map(|(a, b)| b.saturating_duration_since(a)),
            ),
            last_detection_us: micros(self.last_detection),
            state_changes: self.state_changes,
        }
    }

    /// A status snapshot as of the last input.
    pub fn status(&self) -> GivebackStatus {
        let now = self.now;
        let latest = self.view.latest();
        let mut serving = Vec::new();
        if self.serving_own {
            serving.push(self.cfg.me);
        }
        if self.serving_partner {
            serving.push(self.cfg.partner);
        }
        GivebackStatus {
            me: self.cfg.me,
            partner: self.cfg.partner,
            incarnation: self.incarnation,
            state: self.state,
            in_state_for: now.saturating_duration_since(self.state_since),
            partner_state: latest.map(|l| l.read.block.state),
            partner_incarnation: self.view.partner_incarnation(),
            partner_read_age: latest.map(|l| now.saturating_duration_since(l.at)),
            partner_silent_for: self.view.silent_for(now),
            partner_failed: self.partner_failed,
            serving,
            reservations_held: self.holding.iter().copied().collect(),
            identity_assumed: self.identity,
            interconnect_down: self.interconnect_alert,
            auto_giveback: self.auto_giveback,
            operator_hold: self.operator_takeover
                && self.cfg.hold_operator_takeover
                && self.state == NodeState::Takeover,
            takeover_in_progress: self.takeover != TakeoverPhase::Idle,
            giveback_requested: self.giveback_requested,
            killing: self.killing,
            takeovers: self.takeovers,
            givebacks: self.givebacks,
            last_detection: self.last_detection,
            last_outage_window: self.last_outage_window,
            torn_reads: self.view.torn_reads,
            mailbox_read_failures: self.view.mailbox_read_failures,
            mailbox_write_failures: self.write_failures,
            kills_sent: self.kills_sent,
            io_failures: self.io_failures,
            last_error: self.last_error.clone(),
            partner_copy_gap: self.partner_copy_gap(),
            takeover_refused: self.takeover_refused.is_some(),
            forced_loss: self.forced_loss,
        }
    }

    // ------------------------------------------------------------------ internals

    /// Moves the interval timer past `now` if it is due; returns whether it was.
    fn advance_timer(&mut self, now: Instant) -> bool {
        let Some(due) = self.next_tick else {
            return false;
        };
        if now < due {
            return false;
        }
        let mut next = due + self.cfg.interval;
        while next <= now {
            next += self.cfg.interval;
        }
        self.next_tick = Some(next);
        true
    }

    fn enter(&mut self, now: Instant) {
        self.now = now.max(self.now);
        self.input += 1;
    }

    fn set_state(&mut self, now: Instant, to: NodeState) {
        if to == self.state {
            return;
        }
        let from = self.state;
        tracing::info!(me = self.cfg.me, %from, %to, "giveback state");
        self.state = to;
        self.state_since = now;
        self.mbwait_read_at = now;
        if to != NodeState::Takeover {
            self.operator_takeover = false;
            self.mbwait_since = None;
        }
        self.state_changes = self.state_changes.wrapping_add(1);
        self.state_input = self.input;
        self.events
            .push_back(GivebackEvent::StateChanged { from, to });
    }

    fn publish_if_changed(&mut self) {
        let block = self.state_block();
        if self.published != Some(block) {
            self.published = Some(block);
            self.actions.push_back(Action::Publish(block));
        }
    }

    /// My mailbox record for the next write (heartbeat already advanced).
    fn record(&mut self) -> MailboxRecord {
        self.heartbeat += 1;
        self.lease.handed_out(self.now);
        MailboxRecord {
            own_log_applied_here: false,
            node: self.cfg.me,
            incarnation: self.incarnation,
            state: self.state,
            taken_over: self.serving_partner
                || matches!(
                    self.takeover,
                    TakeoverPhase::WritingMailbox | TakeoverPhase::Confirming
                ),
            takeover_pending: matches!(
                self.takeover,
                TakeoverPhase::Killing | TakeoverPhase::Reserving | TakeoverPhase::Reconfirming
            ),
            heartbeat: self.heartbeat,
            partner_incarnation: self.view.partner_incarnation().unwrap_or(0),
            replayed_partner_log: None,
            partner_copy_outdated: None,
            partner_copy_complete_for: None,
            writeback_copy_outdated: false,
            own_log_generation: 0,
            own_writeback_epoch: 0,
            took_over_writeback: 0,
        }
    }

    /// A believed READ handled after my last state change and within the last interval.
    fn fresh_read(&self, now: Instant) -> Option<ObservedRead> {
        self.view.latest().filter(|l| {
            l.input > self.state_input && now.saturating_duration_since(l.at) <= self.cfg.interval
        })
    }

    /// A fresh READ shows the partner serving my disks.
    fn partner_serving_mine(&self, now: Instant) -> bool {
        self.fresh_read(now).is_some_and(|l| {
            l.read.block.has(FLAG_SERVING_PARTNER) || l.read.block.state == NodeState::Takeover
        })
    }

    fn tick(&mut self, now: Instant) {
        let me = self.cfg.me;
        if self.state == NodeState::Halted {
            return;
        }
        self.released_disks_past_the_lease(now);
        let rec = self.record();
        self.actions.push_back(Action::WriteMailbox(rec));
        self.actions.push_back(Action::ReadMailbox);
        match self.state {
            NodeState::Booting | NodeState::GiveWait => {
                self.boot = BootPhase::CheckOwn;
                self.actions.push_back(Action::CheckReservation { set: me });
            }
            NodeState::Up | NodeState::Takeover => {
                // In TAKEOVER, the partner's disks are still this node's (a partner that
                // declared this node failed, say after a stall, preempts them back); the
                // interval's kill waits for the answer.
                let confirm_partner = self.serving_partner_in_takeover() && !self.partner_released;
                if confirm_partner {
                    self.actions.push_back(Action::CheckReservation {
                        set: self.cfg.partner,
                    });
                }
                self.actions.push_back(Action::CheckReservation { set: me });
                if !confirm_partner && (self.killing || self.takeover == TakeoverPhase::Killing) {
                    self.send_kill();
                }
            }
            NodeState::MbWait => {
                // Each interval's mailbox read is the next 565 check.
                self.boot = BootPhase::Idle;
            }
            NodeState::Halted => {}
        }
        let partner_givewait = self
            .fresh_read(now)
            .is_some_and(|l| l.read.block.state == NodeState::GiveWait);
        if partner_givewait {
            if self.state == NodeState::Takeover {
                self.release_partner_disks();
            } else if !self.serving_partner && self.takeover == TakeoverPhase::Idle {
                // A reservation an earlier incarnation of mine left behind.
                self.actions.push_back(Action::Release {
                    set: self.cfg.partner,
                });
                self.holding.remove(&self.cfg.partner);
            }
        }
    }

    /// The self-fencing rule (module docs): called when a mailbox write failed.
    fn fence_if_isolated(&mut self, now: Instant) {
        let fence_after = self.cfg.miss_intervals.saturating_sub(1).max(1);
        if self.state.may_serve() && self.write_failures >= fence_after {
            tracing::error!(
                me = self.cfg.me,
                failures = self.write_failures,
                "mailbox unwritable: fencing myself before the partner may take over"
            );
            self.halt(now, GivebackEvent::Fenced);
        }
    }

    fn evaluate_partner(&mut self, now: Instant) {
        if self.view.partner_failed(now) {
            if !self.partner_failed {
                let silent_for = self.view.silent_for(now);
                tracing::warn!(me = self.cfg.me, ?silent_for, "partner failed");
                self.partner_failed = true;
                self.giveback_requested = false;
                self.giveback_at = None;
                self.events
                    .push_back(GivebackEvent::PartnerFailed { silent_for });
            }
        } else if self.view.interconnect_down(now) && !self.interconnect_alert {
            tracing::warn!(
                me = self.cfg.me,
                "interconnect down, partner's mailbox alive"
            );
            self.interconnect_alert = true;
            self.events.push_back(GivebackEvent::InterconnectDown);
        }
    }

    fn partner_alive(&mut self) {
        self.takeover_refused = None;
        if self.partner_failed {
            self.partner_failed = false;
            self.events.push_back(GivebackEvent::PartnerAlive);
        }
    }

    /// Steps 546 and 565.
    fn bring_up_after_mailbox(&mut self, now: Instant) {
        let rec = self.view.record();
        let serving_mine = self.partner_serving_mine(now);
        match self.state {
            NodeState::Booting | NodeState::GiveWait | NodeState::MbWait
                if self.boot == BootPhase::ReadMailbox =>
            {
                if rec.is_some_and(|r| r.claims_partner()) || serving_mine {
                    self.mbwait_key = rec.map(|r| r.key());
                    self.boot = BootPhase::Idle;
                    self.set_state(now, NodeState::MbWait);
                } else {
                    self.recheck_own();
                }
            }
            NodeState::MbWait if self.boot == BootPhase::Idle => {
                let released = rec.is_some_and(|r| {
                    !r.claims_partner() && self.mbwait_key.is_none_or(|k| r.key() > k)
                });
                if released && !serving_mine {
                    self.recheck_own();
                }
            }
            _ => {}
        }
    }

    fn recheck_own(&mut self) {
        self.boot = BootPhase::Recheck;
        self.actions
            .push_back(Action::CheckReservation { set: self.cfg.me });
    }

    fn react_to_failed_partner(&mut self, now: Instant) {
        match self.state {
            NodeState::GiveWait | NodeState::MbWait if self.boot != BootPhase::PreemptOwn => {
                self.boot = BootPhase::PreemptOwn;
                self.actions.push_back(Action::Reserve {
                    set: self.cfg.me,
                    preempt: true,
                });
            }
            NodeState::Up
                if matches!(self.takeover, TakeoverPhase::Idle | TakeoverPhase::Killing) =>
            {
                self.start_reserving_partner(now);
            }
            NodeState::Takeover => {
                if !self.holding.contains(&self.cfg.partner) && self.takeover == TakeoverPhase::Idle
                {
                    self.takeover = TakeoverPhase::Rereserving;
                    self.actions.push_back(Action::Reserve {
                        set: self.cfg.partner,
                        preempt: true,
                    });
                }
                if !self.killing {
                    self.killing = true;
                    self.events.push_back(GivebackEvent::KillsResumed);
                }
            }
            _ => {}
        }
    }

    fn own_reservation(&mut self, now: Instant, holder: Option<u32>) {
        let me = self.cfg.me;
        match self.state {
            NodeState::Booting | NodeState::GiveWait | NodeState::MbWait => {
                match (self.boot, holder) {
                    (BootPhase::PreemptOwn, Some(h)) if h == me => {
                        self.complete_init(now);
                        if self.partner_failed {
                            self.start_reserving_partner(now);
                        }
                    }
                    (BootPhase::PreemptOwn, _) => {}
                    (BootPhase::Recheck, Some(h)) if h == me => self.complete_init(now),
                    (BootPhase::CheckOwn | BootPhase::ReserveOwn, Some(h)) if h == me => {
                        self.boot = BootPhase::ReadMailbox;
                        self.actions.push_back(Action::ReadMailbox);
                    }
                    (BootPhase::CheckOwn | BootPhase::Recheck, None) => {
                        self.boot = BootPhase::ReserveOwn;
                        self.actions.push_back(Action::Reserve {
                            set: me,
                            preempt: false,
                        });
                    }
                    (BootPhase::CheckOwn | BootPhase::ReserveOwn | BootPhase::Recheck, Some(_)) => {
                        self.boot = BootPhase::Idle;
                        self.set_state(now, NodeState::GiveWait);
                    }
                    _ => {}
                }
            }
            NodeState::Up | NodeState::Takeover => match holder {
                Some(h) if h != me => {
                    tracing::error!(me, holder = h, "my disks are reserved by the partner");
                    self.halt(now, GivebackEvent::Fenced);
                }
                None => self.actions.push_back(Action::Reserve {
                    set: me,
                    preempt: false,
                }),
                Some(_) => {}
            },
            NodeState::Halted => {}
        }
    }

    /// Step 567: serve my own disks.
    fn complete_init(&mut self, now: Instant) {
        self.boot = BootPhase::Idle;
        self.mbwait_key = None;
        self.serving_own = true;
        self.actions
            .push_back(Action::StartServing { set: self.cfg.me });
        self.events
            .push_back(GivebackEvent::Serving { set: self.cfg.me });
        self.set_state(now, NodeState::Up);
        self.publish_if_changed();
    }

    /// Step 560.
    fn give_back(&mut self, now: Instant) {
        let partner = self.cfg.partner;
        tracing::warn!(me = self.cfg.me, partner, "giving back");
        self.serving_partner = false;
        self.actions.push_back(Action::StopServing { set: partner });
        self.events
            .push_back(GivebackEvent::StoppedServing { set: partner });
        self.identity = false;
        self.actions.push_back(Action::ReleaseIdentity);
        if self.holding.remove(&partner) {
            self.actions.push_back(Action::Release { set: partner });
        }
        self.set_state(now, NodeState::Up);
        let rec = self.record();
        self.actions.push_back(Action::WriteMailbox(rec));
        self.givebacks = self.givebacks.wrapping_add(1);
        self.giveback_at = Some(now);
        self.giveback_requested = false;
        self.killing = false;
        self.partner_released = false;
        self.events.push_back(GivebackEvent::GivebackStarted);
        self.publish_if_changed();
    }

    /// Killed or fenced: stop serving everything, halt, reboot.
    fn halt(&mut self, now: Instant, why: GivebackEvent) {
        // What is queued is dropped, except stopping what this node serves (a stop already
        // decided has cleared its serving flag: it must still reach the service).
        self.actions
            .retain(|a| matches!(a, Action::StopServing { .. } | Action::ReleaseIdentity));
        for (serving, set) in [
            (self.serving_partner, self.cfg.partner),
            (self.serving_own, self.cfg.me),
        ] {
            if serving {
                self.actions.push_back(Action::StopServing { set });
                self.events.push_back(GivebackEvent::StoppedServing { set });
            }
        }
        self.serving_partner = false;
        self.serving_own = false;
        self.lease.end();
        if self.identity {
            self.identity = false;
            self.actions.push_back(Action::ReleaseIdentity);
        }
        self.takeover = TakeoverPhase::Idle;
        self.takeover_manual = false;
        self.takeover_forced = false;
        self.killing = false;
        self.giveback_at = None;
        self.set_state(now, NodeState::Halted);
        self.publish_if_changed();
        self.events.push_back(why);
        self.actions.push_back(Action::Reboot);
        self.next_tick = None;
    }
}

#[path = "machine_commands.rs"]
mod commands;
#[path = "machine_takeover.rs"]
mod machine_takeover;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
