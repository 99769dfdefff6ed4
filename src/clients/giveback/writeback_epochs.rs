//! The write-back epochs of the mailbox record (F5.3 under F5.6's rule): what tells a
//! restarted node that its partner took its mirrored write-back blocks over, destaged them
//! and may have written newer data to its disks since.
//!
//! - **Own epoch**: the epoch of this node's write-back table. The write-back asks for one
//!   at its recovery ([`OwnLogMark::record`]) and returns no write until a mailbox write
//!   carried it.
//! - **Took over**: the partner's epoch (from its record, read after the reservation) whose
//!   mirrored blocks this node handed to its takeover sink whole. The write-back records it
//!   at the end of the takeover and the takeover hook returns only once a mailbox write
//!   carried it, so the node never serves its partner's disks before its record says so.
//! - **Partner's epoch as last read**: while the partner's own epoch is not above the one
//!   taken over, the partner runs a table whose blocks are on disk already: its mirror image
//!   here takes no write of it (a resumed node's late writes would come back at the next
//!   takeover, older than what this node wrote meanwhile).
//!
//! A restarted node whose own epoch its partner's record names as taken over discards its
//! table's blocks and moves to a new epoch before it serves
//! ([`MirroredWriteBack::recover`](crate::clients::mirror::MirroredWriteBack::recover)).
//! The giveback driver stamps both own values on every mailbox write, inherits them from the
//! own newest record at start, and follows the partner's epoch on every mailbox read.

use super::own_log_mark::OwnLogMark;
use std::sync::atomic::{AtomicU64, Ordering};

/// See the module docs.
#[derive(Debug)]
pub struct WriteBackEpochs {
    own: OwnLogMark,
    took_over: OwnLogMark,
    partner: AtomicU64,
}

impl WriteBackEpochs {
    /// The epochs as the own newest mailbox record left them (durable already).
    pub fn new(own: u64, took_over: u64) -> WriteBackEpochs {
        WriteBackEpochs {
            own: OwnLogMark::new(own),
            took_over: OwnLogMark::new(took_over),
            partner: AtomicU64::new(0),
        }
    }

    /// This node's own write-back epoch (0: none recorded yet).
    pub fn own(&self) -> &OwnLogMark {
        &self.own
    }

    /// The partner's epoch this node took over whole (0: none).
    pub fn took_over(&self) -> &OwnLogMark {
        &self.took_over
    }

    /// The partner's own epoch as its record was last read (0: not read yet, or none).
    pub fn partner_epoch(&self) -> u64 {
        self.partner.load(Ordering::Acquire)
    }

    /// A read of the partner's record named `epoch` as its own (epochs only grow).
    pub fn saw_partner(&self, epoch: u64) {
        self.partner.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Whether the partner's write-back runs a table this node took over (its mirror image
    /// here takes no write of it, see the module docs): a takeover is recorded and the
    /// partner's record has not shown a newer epoch since.
    pub fn partner_table_taken(&self) -> bool {
        let taken = self.took_over.stamp();
        taken != 0 && self.partner_epoch() <= taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partner_table_stays_taken_until_its_record_names_a_newer_epoch() {
        let e = WriteBackEpochs::new(0, 0);
        assert!(!e.partner_table_taken());
        e.saw_partner(4);
        assert!(!e.partner_table_taken());
        e.took_over().record(4);
        assert!(e.partner_table_taken());
        // An older read does not move the partner's epoch back.
        e.saw_partner(3);
        assert!(e.partner_table_taken());
        e.saw_partner(5);
        assert!(!e.partner_table_taken());
        // Inherited at a restart, before the partner's record was read.
        let restarted = WriteBackEpochs::new(2, 4);
        assert!(restarted.partner_table_taken());
        assert_eq!(restarted.took_over().recorded(), 4);
    }
}
