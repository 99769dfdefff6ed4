//! The state block a client publishes through the manager's health block, and what the
//! manager's heartbeat READs found in the partner's (F2.7, F4.1).
//!
//! The manager's health block (see [`crate::manager::health`]) carries a 16-bit state word and
//! a 32-byte extension that belong to one client: the giveback client (F4) puts the node's
//! protocol state there. [`crate::manager::Manager::publish_state`] changes them (the loop
//! republishes at once, not at the next interval), and
//! [`crate::manager::Manager::partner_state`] returns, per link, the partner's last block the
//! heartbeat believed, with counters of good and torn copies. Reading the cells takes a short
//! lock and never waits for the event loop.

use crate::manager::health::{HealthBlock, HEALTH_EXTENSION_LEN};
use crate::manager::types::LinkId;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the heartbeat of one link knows of the partner's health block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerObservation {
    /// The link.
    pub link: LinkId,
    /// Whether the link's session is ready (a heartbeat is reading).
    pub reading: bool,
    /// The last copy that passed its checksum, if any since the manager started.
    pub block: Option<HealthBlock>,
    /// When that copy's READ completed.
    pub at: Option<Instant>,
    /// READs completed with a believed copy (on this link, since the manager started).
    pub reads: u64,
    /// READs whose copy was not believed (torn or corrupt) and were read again.
    pub torn: u64,
}

/// Cells shared between the [`crate::manager::Manager`] handle and its event loop.
#[derive(Debug)]
pub(crate) struct StateCells {
    local: Mutex<(u16, [u8; HEALTH_EXTENSION_LEN])>,
    dirty: AtomicBool,
    partner: Mutex<Vec<PartnerObservation>>,
}

impl StateCells {
    pub(crate) fn new(links: &[LinkId]) -> StateCells {
        StateCells {
            local: Mutex::new((0, [0; HEALTH_EXTENSION_LEN])),
            dirty: AtomicBool::new(false),
            partner: Mutex::new(
                links
                    .iter()
                    .map(|&link| PartnerObservation {
                        link,
                        reading: false,
                        block: None,
                        at: None,
                        reads: 0,
                        torn: 0,
                    })
                    .collect(),
            ),
        }
    }

    /// Sets the published state word and extension; the loop republishes.
    pub(crate) fn set_local(&self, state: u16, extension: [u8; HEALTH_EXTENSION_LEN]) {
        *self.local.lock() = (state, extension);
        self.dirty.store(true, Ordering::Release);
    }

    /// The state word and extension to publish.
    pub(crate) fn local(&self) -> (u16, [u8; HEALTH_EXTENSION_LEN]) {
        *self.local.lock()
    }

    /// Whether a publish is pending (clears the flag).
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Records a heartbeat READ on `link`: a believed copy or a torn one.
    pub(crate) fn record_read(&self, link: LinkId, copy: Option<HealthBlock>, at: Instant) {
        let mut p = self.partner.lock();
        if let Some(o) = p.iter_mut().find(|o| o.link == link) {
            match copy {
                Some(b) => {
                    o.block = Some(b);
                    o.at = Some(at);
                    o.reads += 1;
                }
                None => o.torn += 1,
            }
        }
    }

    /// Marks whether `link` has a reading heartbeat.
    pub(crate) fn set_reading(&self, link: LinkId, reading: bool) {
        let mut p = self.partner.lock();
        if let Some(o) = p.iter_mut().find(|o| o.link == link) {
            o.reading = reading;
        }
    }

    /// A copy of every link's observation.
    pub(crate) fn partner(&self) -> Vec<PartnerObservation> {
        self.partner.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_torn_copies_are_counted_per_link() {
        let cells = StateCells::new(&[0, 1]);
        let block = HealthBlock {
            state: 4,
            progress: 9,
            incarnation: 3,
            node_id: 2,
            extension: [7; HEALTH_EXTENSION_LEN],
        };
        let now = Instant::now();
        cells.record_read(1, Some(block), now);
        cells.record_read(1, None, now);
        cells.record_read(5, Some(block), now);
        let p = cells.partner();
        assert_eq!(p[0].reads + p[0].torn, 0);
        assert_eq!((p[1].reads, p[1].torn), (1, 1));
        assert_eq!(p[1].block, Some(block));
        assert!(!cells.take_dirty());
        cells.set_local(5, [1; HEALTH_EXTENSION_LEN]);
        assert!(cells.take_dirty());
        assert!(!cells.take_dirty());
        assert_eq!(cells.local(), (5, [1; HEALTH_EXTENSION_LEN]));
    }
}
