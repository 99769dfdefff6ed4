//! This node's mark, in its mailbox record, that the partner's copy of its shadow log is
//! outdated (F5.7): set before the first record is acknowledged without the partner's copy,
//! cleared once a resync has completed on the partner, and kept across restarts (the driver
//! starts from what its own newest mailbox record says).
//!
//! The shadow log asks for the mark and waits until it is durable (a mailbox write carried it)
//! before it acknowledges anything unmirrored; the giveback driver stamps it on every mailbox
//! write of this node and reports back which writes carried what. The same stamp carries the
//! positive half: that this node runs a shadow log at all (durable before its first
//! acknowledgement), and the partner incarnation whose copy a full send last completed on.

use super::mailbox::LogMark;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What this node's mailbox record says of the partner's copy of its shadow log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStamp {
    /// Outdated from this position on (None: in sync).
    pub outdated: Option<LogMark>,
    /// The node runs a shadow log (Some) and the partner incarnation its copy is complete
    /// for (0: none yet); None: no shadow log.
    pub complete_for: Option<u64>,
    /// The partner's mirror of this node's write-back blocks is outdated: writes completed
    /// `MirrorLost` (in this node's NVRAM only) since its last resync.
    pub writeback_outdated: bool,
}

#[derive(Debug, Default)]
struct MarkState {
    /// What the next mailbox write must carry.
    wanted: CopyStamp,
    /// What the last successful mailbox write carried (None: no write yet).
    written: Option<CopyStamp>,
}

/// The sync state of the partner's copy of this node's log, shared by the shadow log (which
/// marks it outdated, and confirms it complete for a partner incarnation) and the giveback
/// driver (which writes it to the mailbox).
#[derive(Debug, Default)]
pub struct PartnerCopyMark {
    state: Mutex<MarkState>,
    marked: AtomicBool,
}

impl PartnerCopyMark {
    /// The state as the newest own mailbox record left it (`inherited`: durable already).
    /// Both halves are kept: the partner's copy is what the previous run left it until this
    /// run changes what the copy must hold (see [`unconfirm`](Self::unconfirm)), and the
    /// partner's restart voids a confirmation by itself (a new incarnation).
    pub fn new(inherited: CopyStamp) -> PartnerCopyMark {
        PartnerCopyMark {
            state: Mutex::new(MarkState {
                wanted: inherited,
                written: Some(inherited),
            }),
            marked: AtomicBool::new(inherited.outdated.is_some()),
        }
    }

    /// A shadow log mirrored to the partner is attached: from the next mailbox write on,
    /// the record says so, and a survivor takes over automatically only from a copy
    /// confirmed complete for its incarnation.
    pub fn attach(&self) {
        let mut s = self.state.lock();
        if s.wanted.complete_for.is_none() {
            s.wanted.complete_for = Some(0);
        }
    }

    /// Whether the mailbox says that this node runs a shadow log (see [`attach`](Self::attach)):
    /// the shadow log acknowledges nothing before.
    pub fn is_attached_durably(&self) -> bool {
        self.state
            .lock()
            .written
            .is_some_and(|w| w.complete_for.is_some())
    }

    /// The partner's copy is outdated from `from` on (an earlier mark in force is kept: the
    /// copy lacks everything from the first unmirrored record).
    pub fn mark(&self, from: LogMark) {
        let mut s = self.state.lock();
        if s.wanted.outdated.is_none() {
            tracing::warn!(outdated_from = %from, "marking the partner's copy of this node's log outdated");
            s.wanted.outdated = Some(from);
            self.marked.store(true, Ordering::Release);
        }
    }

    /// A full send of the log completed on partner incarnation `partner`: its copy is in
    /// sync and complete (the outdated mark goes, the confirmation names `partner`).
    pub fn synced(&self, partner: u64) {
        let mut s = self.state.lock();
        if let Some(from) = s.wanted.outdated.take() {
            tracing::info!(was_outdated_from = %from, "the partner's copy of this node's log is in sync again");
        }
        if s.wanted.complete_for != Some(partner) {
            tracing::info!(
                partner_incarnation = partner,
                "the partner's copy of this node's log is complete"
            );
            s.wanted.complete_for = Some(partner);
        }
        self.marked.store(false, Ordering::Release);
    }

    /// The partner's copy is about to stop being a safe takeover source although nothing
    /// was acknowledged without it (this node applies records of its own log itself, which
    /// a replay of the copy would apply again): the confirmation goes (complete on no
    /// incarnation) until the next full send completed. Wait for
    /// [`is_unconfirmed_durably`](Self::is_unconfirmed_durably) before going on.
    pub fn unconfirm(&self) {
        let mut s = self.state.lock();
        if let Some(c) = s.wanted.complete_for.filter(|&c| c != 0) {
            tracing::info!(
                was_complete_for = c,
                "the partner's copy of this node's log is no takeover source until resent"
            );
            s.wanted.complete_for = Some(0);
        }
    }

    /// Whether the mailbox says the copy is confirmed on no incarnation (or that this node
    /// runs no shadow log at all).
    pub fn is_unconfirmed_durably(&self) -> bool {
        self.state
            .lock()
            .written
            .is_some_and(|w| w.complete_for.is_none_or(|c| c == 0))
    }

    /// Write-back (F5.3): the partner's mirror of this node's dirty blocks lacks writes
    /// completed without it from now on, until a resync completed
    /// ([`writeback_synced`](Self::writeback_synced)).
    pub fn mark_writeback(&self) {
        let mut s = self.state.lock();
        if !s.wanted.writeback_outdated {
            tracing::warn!("marking the partner's write-back mirror of this node outdated");
            s.wanted.writeback_outdated = true;
        }
    }

    /// Write-back: a resync completed on the partner; its mirror holds every dirty block.
    pub fn writeback_synced(&self) {
        let mut s = self.state.lock();
        if s.wanted.writeback_outdated {
            tracing::info!("the partner's write-back mirror of this node is in sync again");
            s.wanted.writeback_outdated = false;
        }
    }

    /// Whether the mailbox holds the write-back mark last asked for.
    pub fn is_writeback_durable(&self) -> bool {
        let s = self.state.lock();
        s.written.map(|w| w.writeback_outdated) == Some(s.wanted.writeback_outdated)
    }

    /// Whether the outdated mark is set (asked for, durable or not).
    pub fn is_marked(&self) -> bool {
        self.marked.load(Ordering::Acquire)
    }

    /// Whether the partner incarnation named is what the mailbox will say (asked for).
    pub fn is_confirmed_for(&self, partner: u64) -> bool {
        self.state.lock().wanted.complete_for == Some(partner)
    }

    /// Whether the mailbox holds the outdated mark last asked for (set or cleared).
    pub fn is_durable(&self) -> bool {
        let s = self.state.lock();
        s.written.map(|w| w.outdated) == Some(s.wanted.outdated)
    }

    /// The outdated mark in force.
    pub fn get(&self) -> Option<LogMark> {
        self.state.lock().wanted.outdated
    }

    /// What a mailbox write about to happen carries (for the mailbox writer).
    pub fn stamp(&self) -> CopyStamp {
        self.state.lock().wanted
    }

    /// A mailbox write carrying `carried` succeeded (for the mailbox writer).
    pub fn written(&self, carried: CopyStamp) {
        self.state.lock().written = Some(carried);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> LogMark {
        LogMark { generation: 9, seq }
    }

    #[test]
    fn a_mark_is_durable_once_a_write_carried_it_and_keeps_the_first_position() {
        // As the own record left it: in sync, and that is on disk.
        let m = PartnerCopyMark::new(CopyStamp::default());
        assert!(!m.is_marked() && m.is_durable() && !m.is_attached_durably());
        m.attach();
        assert!(!m.is_attached_durably());
        m.mark(at(5));
        m.mark(at(8));
        assert!(m.is_marked() && !m.is_durable());
        assert_eq!(m.stamp().outdated, Some(at(5)));
        assert_eq!(m.stamp().complete_for, Some(0));
        m.written(m.stamp());
        assert!(m.is_durable() && m.is_attached_durably());
        m.synced(77);
        assert!(!m.is_marked() && !m.is_durable() && m.is_confirmed_for(77));
        m.written(m.stamp());
        assert!(m.is_durable());
        assert_eq!(
            m.stamp(),
            CopyStamp {
                outdated: None,
                complete_for: Some(77),
                writeback_outdated: false,
            }
        );
        // The write-back half is a mark of its own.
        m.mark_writeback();
        assert!(!m.is_writeback_durable() && m.is_durable());
        m.written(m.stamp());
        assert!(m.is_writeback_durable() && m.stamp().writeback_outdated);
        m.writeback_synced();
        assert!(!m.is_writeback_durable());
        m.written(m.stamp());
        // A restart inherits what its last record carried.
        let r = PartnerCopyMark::new(CopyStamp {
            outdated: Some(at(5)),
            complete_for: Some(77),
            writeback_outdated: false,
        });
        assert!(r.is_marked() && r.is_durable() && r.is_attached_durably());
        assert!(r.is_confirmed_for(77) && !r.is_unconfirmed_durably());
        // Applying its own records, the node voids the confirmation first.
        r.unconfirm();
        assert_eq!(r.stamp().complete_for, Some(0));
        assert!(!r.is_unconfirmed_durably());
        r.written(r.stamp());
        assert!(r.is_unconfirmed_durably());
    }
}
