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
//!
//! The mark also says whether this node's own recovery applies records of the recorded
//! generation itself while the partner's copy does not follow ([`OwnLogStamp::applied_here`]):
//! the copy's checkpoints then lag what was applied, and a forced takeover must not replay
//! that generation from it. Set ([`OwnLogMark::applying_here`]) and durable before the first
//! such record is applied, it goes with the generation: recording a newer one clears it in
//! the same mailbox write.

use super::actions::CopyGap;
use super::copy_mark::PartnerCopyMark;
use super::lease::ServingLease;
use super::mailbox::ReplayedMark;
use super::writeback_epochs::WriteBackEpochs;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a mailbox write carries of the own log: the generation, and whether this node's
/// recovery applies records of it itself with the partner's copy not following.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnLogStamp {
    /// The newest generation that may hold an acknowledged record (0: none).
    pub generation: u64,
    /// This node's own recovery applies (or applied) records of `generation` itself while
    /// the partner's copy did not follow: no replay source for that generation.
    pub applied_here: bool,
}

#[derive(Debug)]
struct MarkState {
    /// What the next mailbox write must carry.
    wanted: OwnLogStamp,
    /// What the last successful mailbox write carried (the inherited value at start).
    written: OwnLogStamp,
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
        OwnLogMark::inherit(OwnLogStamp {
            generation: inherited,
            applied_here: false,
        })
    }

    /// A mark as the newest own mailbox record left it, the applied-here flag included.
    pub fn inherit(inherited: OwnLogStamp) -> OwnLogMark {
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
        self.state.lock().written.generation
    }

    /// A log of `generation` is installed: the next mailbox writes carry it, without the
    /// applied-here flag (a lower one than asked already is ignored: generations only grow).
    pub fn record(&self, generation: u64) {
        let mut s = self.state.lock();
        if generation > s.wanted.generation {
            s.wanted = OwnLogStamp {
                generation,
                applied_here: false,
            };
            self.durable.store(s.written == s.wanted, Ordering::Release);
        }
    }

    /// This node's recovery is about to apply records of the recorded generation itself with
    /// the partner's copy not following: the next mailbox writes say so (see the module
    /// docs). Wait for [`is_durable`](Self::is_durable) before applying.
    pub fn applying_here(&self) {
        let mut s = self.state.lock();
        if !s.wanted.applied_here {
            tracing::warn!(
                generation = s.wanted.generation,
                "the mailbox records that this node applies its own log's records itself"
            );
            s.wanted.applied_here = true;
            self.durable.store(s.written == s.wanted, Ordering::Release);
        }
    }

    /// Whether the mailbox holds what was last asked for (appends of the new generation wait
    /// for it).
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// The generation a mailbox write about to happen carries (for a mailbox writer of a
    /// mark that never applies here: the write-back epochs).
    pub fn stamp(&self) -> u64 {
        self.state.lock().wanted.generation
    }

    /// A mailbox write carrying generation `carried` succeeded (see [`stamp`](Self::stamp)).
    pub fn written(&self, carried: u64) {
        self.written_stamp(OwnLogStamp {
            generation: carried,
            applied_here: false,
        });
    }

    /// What a mailbox write about to happen carries (for the mailbox writer).
    pub fn stamp_log(&self) -> OwnLogStamp {
        self.state.lock().wanted
    }

    /// A mailbox write carrying `carried` succeeded (for the mailbox writer).
    pub fn written_stamp(&self, carried: OwnLogStamp) {
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
    /// The partner's record says its own recovery applied records of generation
    /// `partner_log_generation` itself while this node's copy did not follow
    /// ([`OwnLogStamp::applied_here`]): the copy's checkpoint lags what was applied, so no
    /// record of that generation is replayed from it (only a forced takeover gets here: the
    /// recovery voided the copy's confirmation first).
    pub partner_log_applied_here: bool,
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

    #[test]
    fn applied_here_is_durable_once_carried_and_goes_with_the_next_generation() {
        let here = |generation, applied_here| OwnLogStamp {
            generation,
            applied_here,
        };
        let m = OwnLogMark::new(7);
        m.applying_here();
        assert!(!m.is_durable());
        assert_eq!(m.stamp_log(), here(7, true));
        // A write taken before the ask carried the generation alone: not durable.
        m.written_stamp(here(7, false));
        assert!(!m.is_durable());
        m.written_stamp(m.stamp_log());
        assert!(m.is_durable());
        // A restart keeps it (inherited from the own record).
        let restarted = OwnLogMark::inherit(here(7, true));
        assert_eq!(restarted.stamp_log(), here(7, true));
        // The next generation clears it in the same write that names the generation.
        m.record(8);
        assert_eq!(m.stamp_log(), here(8, false));
        assert!(!m.is_durable());
        m.written_stamp(here(8, true));
        assert!(!m.is_durable(), "the flag must go with the new generation");
        m.written_stamp(m.stamp_log());
        assert!(m.is_durable());
    }
}
