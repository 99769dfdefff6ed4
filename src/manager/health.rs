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

/// Why a health block copy was not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthDecodeError {
    /// Wrong magic: not a health block (or never written).
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    /// Unknown layout version.
    #[error("unknown layout version {0}")]
    Version(u16),
    /// Checksum mismatch: a torn or corrupt copy.
    #[error("checksum mismatch (torn or corrupt copy)")]
    Checksum,
    /// Fewer than 64 bytes.
    #[error("short block: {0} bytes")]
    Short(usize),
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
    pub fn decode(b: &[u8]) -> Result<HealthBlock, HealthDecodeError> {
        if b.len() < HEALTH_BLOCK_LEN {
            return Err(HealthDecodeError::Short(b.len()));
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&b[0..4]);
        if magic != MAGIC {
            return Err(HealthDecodeError::Magic(magic));
        }
        let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let be64 = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(x)
        };
        if crc32c::crc32c(&b[0..60]) != be32(60) {
            return Err(HealthDecodeError::Checksum);
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if version != LAYOUT_VERSION {
            return Err(HealthDecodeError::Version(version));
        }
        let mut extension = [0u8; HEALTH_EXTENSION_LEN];
        extension.copy_from_slice(&b[28..60]);
        Ok(HealthBlock {
            state: u16::from_be_bytes([b[6], b[7]]),
            progress: be64(8),
            incarnation: be64(16),
            node_id: be32(24),
            extension,
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
    pub fn handle_read(&mut self, copy: Result<HealthBlock, HealthDecodeError>) {
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
            Err(HealthDecodeError::Short(10))
        );
        assert!(matches!(
            HealthBlock::decode(&[0u8; 64]),
            Err(HealthDecodeError::Magic(_))
        ));
    }

    #[test]
    fn monitor_counts_intervals_without_progress() {
        let mut m = HeartbeatMonitor::new(3);
        m.handle_read(Ok(block(1)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Alive);
        m.handle_read(Ok(block(1)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(1));
        m.handle_read(Err(HealthDecodeError::Checksum));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(2));
        m.handle_read(Ok(block(2)));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Alive);
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(1));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Missed(2));
        assert_eq!(m.handle_interval(), HeartbeatVerdict::Dead);
        assert_eq!(m.total_misses(), 5);
    }
}
