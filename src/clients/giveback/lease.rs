//! The serving lease: how long this node may still acknowledge writes to its own disk set
//! without the partner having taken it over.
//!
//! A node that stalled (a SIGSTOP, a long pause of its process) keeps believing it serves its
//! disks while the partner declares it failed, takes it over and replays its log. When the
//! stalled node resumes, whatever it acknowledges before it learns that is lost: the
//! partner's replay is over, and its restart drops its own records behind the partner's
//! replay cursor. Acknowledgements therefore wait for a lease, and the lease rests on the
//! failure-detection rule (`detector.rs`): the partner declares this node failed only after
//! a whole detection window `W` in which its successful mailbox reads saw no newer record of
//! this node. A record this node handed to its driver at `t` cannot be seen before `t`, so:
//!
//! - **Renewal.** A mailbox record handed out at `t` while the lease runs, once written,
//!   extends the lease to `t + W/2` (half the window: slack for the two clocks and the
//!   partner's read schedule).
//! - **After a gap.** A record written while the lease had run out says nothing by itself
//!   (the partner may have declared the failure in the gap): the lease comes back only with a
//!   check of this node's own reservation carried out after that write, that finds it still
//!   held, at `t + W/2`. A takeover preempts the reservation before its last mailbox read,
//!   and that read sees the record and abandons the takeover, or the check finds the
//!   reservation gone and the machine fences itself.
//! - **End.** The lease is none while this node does not serve its own disks (booting,
//!   GIVEWAIT, MBWAIT, HALTED).
//!
//! A write acknowledged at a moment the lease runs (after it became durable at the partner or,
//! unmirrored, after the outdated mark of the partner's copy became durable) is therefore in
//! the copy a later takeover replays, or the copy is marked outdated before the takeover reads
//! the mailbox. The shadow log checks [`ServingLease::is_valid`] right before each
//! acknowledgement ([`ShadowMirror::set_serving_lease`](crate::clients::mirror::ShadowMirror::set_serving_lease)).
//!
//! [`LeaseClock`] is the machine's sans-IO bookkeeping; [`ServingLease`] is what the driver
//! publishes to the data path.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Records handed out and not yet reported written or failed (more means a driver that does
/// not report: the oldest are dropped, which only shortens a lease).
const MAX_OUTSTANDING: usize = 64;

/// The machine's lease bookkeeping (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct LeaseClock {
    length: Duration,
    /// When each record not yet reported was handed out, oldest first.
    handed_out: VecDeque<Instant>,
    until: Option<Instant>,
    /// A record written after the lease ran out: a reservation check after it renews.
    pending: Option<Instant>,
}

impl LeaseClock {
    pub fn new(detection_window: Duration) -> LeaseClock {
        LeaseClock {
            length: detection_window / 2,
            handed_out: VecDeque::new(),
            until: None,
            pending: None,
        }
    }

    /// A mailbox record of this node was handed to the driver at `at`.
    pub fn handed_out(&mut self, at: Instant) {
        if self.handed_out.len() == MAX_OUTSTANDING {
            self.handed_out.pop_front();
        }
        self.handed_out.push_back(at);
    }

    /// The driver reported a mailbox write of this node. The reports come in the order the
    /// records were handed out; the time taken is that of the oldest record outstanding (a
    /// lower bound of when the written one was handed out).
    pub fn written(&mut self) {
        let Some(at) = self.handed_out.pop_front() else {
            return;
        };
        match self.until {
            Some(until) if at < until => self.until = Some(until.max(at + self.length)),
            _ => self.pending = Some(self.pending.map_or(at, |p| p.max(at))),
        }
    }

    /// The driver reported a mailbox write of this node failed.
    pub fn write_failed(&mut self) {
        self.handed_out.pop_front();
    }

    /// A check (or reserve) of this node's own disk set, carried out after every write
    /// reported so far, found it held by this node.
    pub fn own_reservation_held(&mut self) {
        if let Some(at) = self.pending.take() {
            let renewed = at + self.length;
            self.until = Some(self.until.map_or(renewed, |u| u.max(renewed)));
        }
    }

    /// This node stops serving its own disks (or finds its reservation gone).
    pub fn end(&mut self) {
        self.until = None;
        self.pending = None;
    }

    /// Until when acknowledgements may be given (None: not at all).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

/// The lease as the driver last published it, shared with the data path (the shadow log),
/// and whether the node serves its own disks (a halt ends that: the shadow log then gives up
/// its log until the next recovery, which the restarted protocol runs before serving again).
#[derive(Debug, Default)]
pub struct ServingLease {
    until: Mutex<Option<Instant>>,
    serving: std::sync::atomic::AtomicBool,
}

impl ServingLease {
    /// A lease that has not been granted yet.
    pub fn new() -> ServingLease {
        ServingLease::default()
    }

    /// What the machine says now (for the driver): the lease, and whether this node serves
    /// its own disks.
    pub fn set(&self, until: Option<Instant>, serving: bool) {
        *self.until.lock() = until;
        self.serving
            .store(serving, std::sync::atomic::Ordering::Release);
    }

    /// Whether this node serves its own disks (as last published).
    pub fn serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Until when the lease runs (None: it does not).
    pub fn until(&self) -> Option<Instant> {
        *self.until.lock()
    }

    /// Whether this node may acknowledge a write at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.until().is_some_and(|u| now < u)
    }
}
