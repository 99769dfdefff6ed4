//! The mirror sync state of one writer (F5.7), self-contained so it can be swapped for the
//! library's sans-IO core once the threaded driver's rules are extracted from
//! `shadow/driver.rs` (plug it in at [`MirrorSyncState`]'s four calls in `swarm/log.rs`:
//! `on_step`, `needs_mark`/`may_complete_unsent`, `on_reconnect`, `on_complete`).
//!
//! The rules, as the driver has them (docs/architecture.md, "Mirror sync state"):
//!
//! - the partner is *absent* once the writer ran without a mirror path for the partner
//!   timeout; then writes complete unsent, but only after the outdated mark (generation and
//!   first unacknowledged sequence) is durable in the writer's mailbox record (the real
//!   [`PartnerCopyMark`], stamped by the simulated mailbox writes);
//! - on the next connection the live log is re-sent whole; the mark clears once every write
//!   queued up to the end of that re-send completed on the partner;
//! - a restarted writer inherits the mark its newest own record carried.

use interlink::clients::giveback::{CopyStamp, LogMark, PartnerCopyMark};

/// See the module docs.
#[derive(Debug)]
pub struct MirrorSyncState {
    /// The outdated mark of the partner's copy (the library's type).
    pub mark: PartnerCopyMark,
    absent: bool,
    steps_down: u32,
    /// A re-send is under way: the mark clears once write `id` of the running log completed.
    resend_until: Option<u64>,
}

impl MirrorSyncState {
    /// As a start finds it: `inherited` is what the newest own record says of the copy
    /// (the shadow log attaches at once: the lane always runs one).
    pub fn new(inherited: CopyStamp) -> MirrorSyncState {
        let mark = PartnerCopyMark::new(inherited);
        mark.attach();
        MirrorSyncState {
            mark,
            absent: false,
            steps_down: 0,
            resend_until: None,
        }
    }

    /// One step of a running writer: the path is up or not; `timeout` steps without it make
    /// the partner absent (0: never).
    pub fn on_step(&mut self, path_up: bool, timeout: u32) {
        if path_up {
            self.steps_down = 0;
        } else {
            self.steps_down += 1;
            if timeout > 0 && self.steps_down >= timeout {
                self.absent = true;
            }
        }
    }

    /// The partner is absent: queued writes would complete unsent.
    pub fn absent(&self) -> bool {
        self.absent
    }

    /// Writes may complete unsent: absent, and the mark durable in the mailbox.
    pub fn may_complete_unsent(&self) -> bool {
        self.absent && self.mark.is_marked() && self.mark.is_durable()
    }

    /// Asks for the mark before anything is acknowledged unmirrored (an earlier one is kept).
    pub fn needs_mark(&mut self, from: LogMark) {
        self.mark.mark(from);
    }

    /// A connection to partner incarnation `partner` came up: whether the live log must be
    /// re-sent whole (the partner was absent, the mark is set, or the copy is not confirmed
    /// complete on that incarnation).
    pub fn on_reconnect(&mut self, partner: Option<u64>) -> bool {
        let resend = self.absent
            || self.mark.is_marked()
            || partner.is_none_or(|p| !self.mark.is_confirmed_for(p));
        self.absent = false;
        self.steps_down = 0;
        resend
    }

    /// The re-send's last write is `last_queued` (call after queuing it).
    pub fn resending(&mut self, last_queued: u64) {
        self.resend_until = Some(last_queued);
    }

    /// Writes through `completed` of the running log completed on partner incarnation
    /// `partner`: a full send complete there clears the mark and confirms the copy for it.
    pub fn on_complete(&mut self, completed: u64, partner: Option<u64>) {
        if self.resend_until.is_some_and(|t| completed >= t) {
            self.resend_until = None;
            if let Some(p) = partner {
                self.mark.synced(p);
            }
        }
    }

    /// Appends may go: the mailbox says this node runs a shadow log.
    pub fn may_append(&self) -> bool {
        self.mark.is_attached_durably()
    }

    /// The writer's log changed (a new generation formatted): a re-send in progress names
    /// writes of the old one.
    pub fn log_replaced(&mut self, last_queued: u64, path_up: bool) {
        self.resend_until = None;
        // The new log is sent whole from its start: once that completed, the copy is
        // confirmed (the driver's `install` sets its sync target the same way).
        if path_up && !self.absent {
            self.resend_until = Some(last_queued);
        }
    }
}
