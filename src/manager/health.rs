//! The per-node health block the partner reads by RDMA READ as its heartbeat.
//!
//! 64 bytes in a region the partner may only read (layout in docs/wire-formats.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ILHB` |
//! | 4 | 2 | layout version (1) |
//! | 6 | 2 | state (owner-defined; 0 = up) |
//! | 8 | 8 | progress counter, incremented every heartbeat interval |
//! | 16 | 8 | incarnation of the writer |
//! | 24 | 4 | node id of the writer |
//! | 28 | 32 | extension area (zero; the giveback client puts its state here) |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! All integers big-endian. A READ that races with the owner's update may see a torn copy;
//! the checksum catches it and the reader simply reads again next interval.

pub use crate::codec::WireError;
use crate::codec::{check_crc32c, check_magic, check_version, Reader};
use crate::fabric::Access;
use crate::manager::types::NodeId;

/// Size of the health block.
pub const HEALTH_BLOCK_LEN: usize = 64;
/// The rights the health block is registered with: the partner may READ it, nothing else
/// (no remote write; the owner writes it locally through its mapping).
pub const HEALTH_BLOCK_ACCESS: Access = Access::REMOTE_READ;
/// The rights of the landing region a heartbeat READ fills: local write only.
pub const HEALTH_LANDING_ACCESS: Access = Access::LOCAL_WRITE;
const MAGIC: [u8; 4] = *b"ILHB";
const LAYOUT_VERSION: u16 = 1;
/// The format name errors give.
const FORMAT: &str = "health block";
/// Size of the extension area.
pub const HEALTH_EXTENSION_LEN: usize = 32;

/// A decoded health block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthBlock {
    /// Owner-defined state word (0 = up).
    pub state: u16,
    /// Progress counter.
    pub progress: u64,
    /// Writer's incarnation.
    pub incarnation: u64,
    /// Writer's node id.
    pub node_id: NodeId,
    /// Extension area.
    pub extension: [u8; HEALTH_EXTENSION_LEN],
}

impl HealthBlock {
    /// Encodes the block with its checksum.
    pub fn encode(&self) -> [u8; HEALTH_BLOCK_LEN] {
        let mut b = [0u8; HEALTH_BLOCK_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&LAYOUT_VERSION.to_be_bytes());
        b[6..8].copy_from_slice(&self.state.to_be_bytes());
        b[8..16].copy_from_slice(&self.progress.to_be_bytes());
        b[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        b[24..28].copy_from_slice(&self.node_id.to_be_bytes());
        b[28..60].copy_from_slice(&self.extension);
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and verifies a copy.
    pub fn decode(b: &[u8]) -> Result<HealthBlock, WireError> {
        let b = b.get(..HEALTH_BLOCK_LEN).ok_or(WireError::Truncated {
            field: "health block",
            needed: HEALTH_BLOCK_LEN,
            available: b.len(),
        })?;
        let mut r = Reader::be(b);
        let magic: [u8; 4] = r.array("health block magic")?;
        check_magic(FORMAT, &magic, &MAGIC)?;
        let mut trailer = Reader::be(&b[60..]);
        check_crc32c(
            FORMAT,
            trailer.u32("health block checksum")?,
            crc32c::crc32c(&b[0..60]),
        )?;
        let version = r.u16("health block version")?;
        check_version(
            FORMAT,
            u32::from(version),
            |v| v == u32::from(LAYOUT_VERSION),
            "1",
        )?;
        Ok(HealthBlock {
            state: r.u16("health block state")?,
            progress: r.u64("health block progress")?,
            incarnation: r.u64("health block incarnation")?,
            node_id: r.u32("health block node id")?,
            extension: r.array("health block extension")?,
        })
    }
}

/// Failure detection over successive heartbeat READs: counts intervals without progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatMonitor {
    miss_limit: u32,
    last_progress: Option<u64>,
    advanced_this_interval: bool,
    misses: u32,
    total_misses: u64,
}

/// Verdict after an interval boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatVerdict {
    /// Progress seen recently enough.
    Alive,
    /// This many consecutive intervals without progress, still under the limit.
    Missed(u32),
    /// The limit was reached: declare the link down.
    Dead,
}

impl HeartbeatMonitor {
    /// A monitor declaring death after `miss_limit` intervals without progress.
    pub fn new(miss_limit: u32) -> HeartbeatMonitor {
        HeartbeatMonitor {
            miss_limit: miss_limit.max(1),
            last_progress: None,
            advanced_this_interval: true,
            misses: 0,
            total_misses: 0,
        }
    }

    /// A READ completed with this decoded copy (or a torn one).
    pub fn handle_read(&mut self, copy: Result<HealthBlock, WireError>) {
        if let Ok(block) = copy {
            if self.last_progress.is_none_or(|p| block.progress > p) {
                self.last_progress = Some(block.progress);
                self.advanced_this_interval = true;
            }
        }
    }

    /// An interval ended.
    pub fn handle_interval(&mut self) -> HeartbeatVerdict {
        let verdict = if self.advanced_this_interval {
            self.misses = 0;
            HeartbeatVerdict::Alive
        } else {
            self.misses += 1;
            self.total_misses += 1;
            if self.misses >= self.miss_limit {
                HeartbeatVerdict::Dead
            } else {
                HeartbeatVerdict::Missed(self.misses)
            }
        };
        self.advanced_this_interval = false;
        verdict
    }

    /// Intervals missed in total.
    pub fn total_misses(&self) -> u64 {
        self.total_misses
    }

    /// Last progress value seen.
    pub fn last_progress(&self) -> Option<u64> {
        self.last_progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(progress: u64) -> HealthBlock {
        HealthBlock {
            state: 0,
            progress,
            incarnation: 9,
            node_id: 2,
            extension: [0; HEALTH_EXTENSION_LEN],
        }
    }

    #[test]
    fn round_trip_and_torn_copies() {
        let b = block(77).encode();
        assert_eq!(HealthBlock::decode(&b), Ok(block(77)));
        for i in 0..HEALTH_BLOCK_LEN {
            let mut t = b;
            t[i] ^= 0x10;
            assert!(HealthBlock::decode(&t).is_err(), "flip at {i} accepted");
        }
        assert_eq!(
            HealthBlock::decode(&b[..10]),
            Err(WireError::Truncated {
                field: "health block",
                needed: HEALTH_BLOCK_LEN,
                available: 10
            })
        );
        assert!(matches!(
            HealthBlock::decode(&[0u8; 64]),
            Err(WireError::Magic { .. })
        ));
    }

    #[test]
    fn monitor_counts_intervals_without_progress() {
        let mut m = HeartbeatMonitor::new(3);
        m.handle_read(Ok(block(1)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Alive);
        m.handle_read(Ok(block(1)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(1));
        m.handle_read(Err(WireError::Checksum {
            format: "health block",
            found: 0,
            computed: 1,
        }));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(2));
        m.handle_read(Ok(block(2)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Alive);
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(1));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(2));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Dead);
        assert_eq!(m.total_misses(), 5);
    }
}
