//! This node's mark, in its mailbox record, that the partner's copy of its shadow log is
//! outdated (F5.7): set before the first record is acknowledged without the partner's copy,
//! cleared once a resync has completed on the partner, and kept across restarts (the driver
//! starts from what its own newest mailbox record says).
//!
//! The shadow log asks for the mark and waits until it is durable (a mailbox write carried it)
//! before it acknowledges anything unmirrored; the giveback driver stamps it on every mailbox
//! write of this node and reports back which writes carried what.

use super::mailbox::LogMark;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
struct MarkState {
    /// What the next mailbox write must carry.
    wanted: Option<LogMark>,
    /// What the last successful mailbox write carried (None: no write yet).
    written: Option<Option<LogMark>>,
}

/// The outdated mark of the partner's copy of this node's log, shared by the shadow log
/// (which sets and clears it) and the giveback driver (which writes it to the mailbox).
#[derive(Debug, Default)]
pub struct PartnerCopyMark {
    state: Mutex<MarkState>,
    marked: AtomicBool,
}

impl PartnerCopyMark {
    /// A mark as the newest own mailbox record left it (`inherited`: durable already).
    pub fn new(inherited: Option<LogMark>) -> PartnerCopyMark {
        PartnerCopyMark {
            state: Mutex::new(MarkState {
                wanted: inherited,
                written: Some(inherited),
            }),
            marked: AtomicBool::new(inherited.is_some()),
        }
    }

    /// The partner's copy is outdated from `from` on (an earlier mark in force is kept: the
    /// copy lacks everything from the first unmirrored record).
    pub fn mark(&self, from: LogMark) {
        let mut s = self.state.lock();
        if s.wanted.is_none() {
            tracing::warn!(outdated_from = %from, "marking the partner's copy of this node's log outdated");
            s.wanted = Some(from);
            self.marked.store(true, Ordering::Release);
        }
    }

    /// A resync completed on the partner: its copy is in sync again.
    pub fn clear(&self) {
        let mut s = self.state.lock();
        if let Some(from) = s.wanted.take() {
            tracing::info!(was_outdated_from = %from, "the partner's copy of this node's log is in sync again");
        }
        self.marked.store(false, Ordering::Release);
    }

    /// Whether the mark is set (asked for, durable or not).
    pub fn is_marked(&self) -> bool {
        self.marked.load(Ordering::Acquire)
    }

    /// Whether the mailbox holds what was last asked for (set or cleared).
    pub fn is_durable(&self) -> bool {
        let s = self.state.lock();
        s.written == Some(s.wanted)
    }

    /// The mark in force (what the next mailbox write carries).
    pub fn get(&self) -> Option<LogMark> {
        self.state.lock().wanted
    }

    /// What a mailbox write about to happen carries (for the mailbox writer).
    pub fn stamp(&self) -> Option<LogMark> {
        self.state.lock().wanted
    }

    /// A mailbox write carrying `carried` succeeded (for the mailbox writer).
    pub fn written(&self, carried: Option<LogMark>) {
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
        let m = PartnerCopyMark::new(None);
        assert!(!m.is_marked() && m.is_durable());
        m.mark(at(5));
        m.mark(at(8));
        assert!(m.is_marked() && !m.is_durable());
        assert_eq!(m.stamp(), Some(at(5)));
        m.written(m.stamp());
        assert!(m.is_durable());
        m.clear();
        assert!(!m.is_marked() && !m.is_durable());
        m.written(None);
        assert!(m.is_durable());
        // A restart inherits the mark its last record carried.
        let r = PartnerCopyMark::new(Some(at(5)));
        assert!(r.is_marked() && r.is_durable());
    }
}
