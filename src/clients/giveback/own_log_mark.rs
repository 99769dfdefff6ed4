//! This node's record, in its mailbox record, of the newest generation of its own shadow log
//! that may hold an acknowledged record (F5.6): written before the first record of a new
//! generation is acknowledged, and kept across restarts (the driver starts from what its own
//! newest mailbox record says). A node whose NVRAM is lost or corrupt learns from it that a
//! log existed, and fetches the log from the partner's copy instead of starting fresh.
//!
//! The shadow log asks for a generation when it installs a new log and appends nothing until
//! a mailbox write carried it; the giveback driver stamps it on every mailbox write of this
//! node and reports back which writes carried what (as for the
//! [`PartnerCopyMark`](super::PartnerCopyMark)).

use super::actions::CopyGap;
use super::copy_mark::PartnerCopyMark;
use super::lease::ServingLease;
use super::mailbox::ReplayedMark;
use super::writeback_epochs::WriteBackEpochs;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct MarkState {
    /// What the next mailbox write must carry.
    wanted: u64,
    /// What the last successful mailbox write carried (the inherited value at start).
    written: u64,
}

/// The own log generation of this node's mailbox record, shared by the shadow log (which
/// records a new generation) and the giveback driver (which writes it to the mailbox).
#[derive(Debug)]
pub struct OwnLogMark {
    state: Mutex<MarkState>,
    durable: AtomicBool,
}

impl OwnLogMark {
    /// A mark as the newest own mailbox record left it (`inherited`, durable already; 0: no
    /// log was ever acknowledged).
    pub fn new(inherited: u64) -> OwnLogMark {
        OwnLogMark {
            state: Mutex::new(MarkState {
                wanted: inherited,
                written: inherited,
            }),
            durable: AtomicBool::new(true),
        }
    }

    /// The generation the mailbox holds (what the last mailbox write carried, or the
    /// inherited value): the newest log that may hold an acknowledged record.
    pub fn recorded(&self) -> u64 {
        self.state.lock().written
    }

    /// A log of `generation` is installed: the next mailbox writes carry it (a lower one than
    /// asked already is ignored: generations only grow).
    pub fn record(&self, generation: u64) {
        let mut s = self.state.lock();
        if generation > s.wanted {
            s.wanted = generation;
            self.durable.store(s.written == s.wanted, Ordering::Release);
        }
    }

    /// Whether the mailbox holds what was last asked for (appends of the new generation wait
    /// for it).
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// What a mailbox write about to happen carries (for the mailbox writer).
    pub fn stamp(&self) -> u64 {
        self.state.lock().wanted
    }

    /// A mailbox write carrying `carried` succeeded (for the mailbox writer).
    pub fn written(&self, carried: u64) {
        let mut s = self.state.lock();
        s.written = carried;
        self.durable.store(s.written == s.wanted, Ordering::Release);
    }
}

/// What the giveback driver hands the replay hook at a takeover (F5.2): whose log, and what the
/// partner's mailbox record (read after the reservation) says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerLogContext {
    /// The partner taken over.
    pub partner: u32,
    /// The newest generation of the partner's own log that may hold an acknowledged record
    /// (0: none recorded). A copy of an older generation is stale: the partner recovered
    /// that generation itself before it formatted this one (only a forced takeover starts
    /// from such a copy), so replaying it would apply its records a second time.
    pub partner_log_generation: u64,
    /// A forced takeover went past this gap of the copy (its records from there are lost).
    pub forced_loss: Option<CopyGap>,
    /// The epoch of the partner's write-back table its record names (0: none recorded):
    /// what a whole takeover of its mirrored blocks records
    /// ([`WriteBackEpochs::took_over`]).
    pub partner_writeback_epoch: u64,
}

/// What the giveback driver hands the own-log recovery hook before this node serves its own
/// disks (F5.6): what the partner replayed of this node's log (its mailbox record), and the
/// two marks of this node's mailbox record the shadow log keeps up to date from then on.
/// Handing the marks with the recovery (rather than separately) means a recovery never runs
/// without what the mailbox knows.
#[derive(Clone, Debug)]
pub struct OwnLogContext {
    /// The partner's replay cursor of this node's log (None: it never replayed it).
    pub partner_replayed: Option<ReplayedMark>,
    /// The partner's record says it took this node over (TAKEN_OVER): its replay of this
    /// node's log may have gone beyond the cursor it published.
    pub partner_took_over: bool,
    /// The own log generation of this node's mailbox record.
    pub own_log: Arc<OwnLogMark>,
    /// The outdated mark of the partner's copy of this node's log (F5.7).
    pub copy_mark: Arc<PartnerCopyMark>,
    /// The serving lease: the log acknowledges a record only while it runs (`lease.rs`).
    pub serving_lease: Arc<ServingLease>,
    /// The giveback protocol's incarnation this recovery runs in: a halt restarts the protocol
    /// as a new one, and a log recovered in an earlier one is recovered again (the node may
    /// have been taken over meanwhile).
    pub incarnation: u64,
    /// The epoch of this node's write-back table whose mirrored blocks the partner's record
    /// says it took over whole (0: none): a table still in that epoch holds blocks the
    /// partner destaged and may have overwritten on disk since.
    pub partner_took_over_writeback: u64,
    /// The write-back epochs of this node's mailbox record (the write-back keeps its own
    /// epoch up to date from then on, like `own_log`).
    pub writeback: Arc<WriteBackEpochs>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_is_durable_once_a_write_carried_it_and_only_grows() {
        let m = OwnLogMark::new(7);
        assert_eq!((m.recorded(), m.is_durable(), m.stamp()), (7, true, 7));
        m.record(9);
        assert!(!m.is_durable());
        assert_eq!((m.recorded(), m.stamp()), (7, 9));
        // A keepalive write taken before the ask carried the old value: still not durable.
        m.written(7);
        assert!(!m.is_durable());
        m.written(m.stamp());
        assert!(m.is_durable());
        assert_eq!(m.recorded(), 9);
        m.record(8);
        assert_eq!(m.stamp(), 9);
        assert!(m.is_durable());
        let fresh = OwnLogMark::new(0);
        assert_eq!(fresh.recorded(), 0);
    }
}
