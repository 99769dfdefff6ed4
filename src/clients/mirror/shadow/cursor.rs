//! Replay cursors in NVRAM, each in two alternating [`ReplayCursor`] slots so a torn write
//! leaves the previous one in force:
//!
//! - the **partner cursor** (bytes 0..64): what this node, as survivor, already replayed of
//!   the partner's log at takeovers; published in the mailbox so a restarted partner learns
//!   that its records were applied;
//! - the **own cursor** (bytes 64..128): what this node's recovery at start already applied
//!   of its own log, so recovery interrupted by a crash resumes after the last record it
//!   applied instead of applying it again.
//!
//! A 64-byte file of an older release reads as holding no own cursor.

use super::Nvram;
use crate::clients::giveback::{LogMark, ReplayedMark};
use crate::clients::mirror::error::{NvramError, ShadowError};
use crate::clients::mirror::log_replay::{LogPosition, ReplayCursor};

/// The partner cursor as the giveback client's mailbox record carries it.
impl From<ReplayCursor> for ReplayedMark {
    fn from(c: ReplayCursor) -> ReplayedMark {
        ReplayedMark {
            at: LogMark {
                generation: c.position.generation,
                seq: c.position.seq,
            },
            complete: c.complete,
        }
    }
}

/// The partner's replay cursor as its mailbox record carries it.
impl From<ReplayedMark> for ReplayCursor {
    fn from(m: ReplayedMark) -> ReplayCursor {
        ReplayCursor {
            position: LogPosition {
                generation: m.at.generation,
                seq: m.at.seq,
            },
            complete: m.complete,
        }
    }
}

/// Which cursor of a [`CursorStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorKind {
    /// What this node replayed of its partner's log (takeovers).
    Partner,
    /// What this node's recovery at start applied of its own log.
    Own,
}

impl CursorKind {
    fn base(self) -> usize {
        match self {
            CursorKind::Partner => 0,
            CursorKind::Own => 2 * ReplayCursor::ENCODED_LEN,
        }
    }
}

/// Two cursors, two alternating slots each, in a small NVRAM backing.
pub struct CursorStore {
    backing: Nvram,
}

impl std::fmt::Debug for CursorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorStore")
            .field("cursor", &self.load())
            .finish()
    }
}

impl CursorStore {
    /// Bytes a cursor store needs.
    pub const LEN: usize = 4 * ReplayCursor::ENCODED_LEN;

    /// Uses `backing` (at least [`CursorStore::LEN`] bytes; what it holds is kept).
    pub fn open(backing: Nvram) -> Result<CursorStore, ShadowError> {
        if backing.len() < Self::LEN {
            return Err(NvramError::OutOfRange {
                offset: 0,
                len: Self::LEN,
                size: backing.len(),
            }
            .into());
        }
        Ok(CursorStore { backing })
    }

    fn slot(&self, kind: CursorKind, i: usize) -> &[u8] {
        let n = ReplayCursor::ENCODED_LEN;
        let at = kind.base() + i * n;
        &self.backing.bytes()[at..at + n]
    }

    /// The newest valid partner cursor, if any.
    pub fn load(&self) -> Option<ReplayCursor> {
        self.load_kind(CursorKind::Partner)
    }

    /// Stores the partner cursor (see [`CursorStore::store_kind`]).
    pub fn store(&mut self, cursor: ReplayCursor) -> Result<(), ShadowError> {
        self.store_kind(CursorKind::Partner, cursor)
    }

    /// Stores the own-replay cursor at `position` (what this node's recovery applied).
    pub fn store_own(&mut self, position: LogPosition) -> Result<(), ShadowError> {
        self.store_kind(
            CursorKind::Own,
            ReplayCursor {
                position,
                complete: false,
            },
        )
    }

    /// The newest valid cursor of `kind`, if any.
    pub fn load_kind(&self, kind: CursorKind) -> Option<ReplayCursor> {
        ReplayCursor::latest(self.slot(kind, 0), self.slot(kind, 1))
    }

    /// Stores a cursor of `kind` (persisted) in the slot not holding the newest one.
    pub fn store_kind(
        &mut self,
        kind: CursorKind,
        cursor: ReplayCursor,
    ) -> Result<(), ShadowError> {
        let n = ReplayCursor::ENCODED_LEN;
        let a = ReplayCursor::decode(self.slot(kind, 0)).ok();
        let b = ReplayCursor::decode(self.slot(kind, 1)).ok();
        // Overwrite the older (or an invalid) slot; the newer stays in force until this
        // write is complete.
        let i = match (a, b) {
            (Some(a), Some(b)) if a > b => 1,
            (Some(_), None) => 1,
            _ => 0,
        };
        let at = kind.base() + i * n;
        self.backing.bytes_mut()[at..at + n].copy_from_slice(&cursor.encode());
        Ok(self.backing.persist(at, n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::nvram::MemoryNvram;

    fn at(generation: u64, seq: u64) -> ReplayCursor {
        ReplayCursor {
            position: LogPosition { generation, seq },
            complete: false,
        }
    }

    #[test]
    fn alternates_and_survives_a_torn_slot() {
        let mut s = CursorStore::open(Box::new(MemoryNvram::new(CursorStore::LEN))).unwrap();
        assert_eq!(s.load(), None);
        s.store(at(3, 10)).unwrap();
        s.store(at(3, 20)).unwrap();
        s.store(at(4, 1)).unwrap();
        assert_eq!(s.load(), Some(at(4, 1)));
        // Tear the newest slot: the previous one is in force.
        let newest = (0..2)
            .find(|&i| ReplayCursor::decode(s.slot(CursorKind::Partner, i)).ok() == Some(at(4, 1)))
            .unwrap();
        s.backing.bytes_mut()[newest * ReplayCursor::ENCODED_LEN + 20] ^= 0xff;
        assert_eq!(s.load(), Some(at(3, 20)));
        s.store(at(4, 2)).unwrap();
        assert_eq!(s.load(), Some(at(4, 2)));
        assert!(CursorStore::open(Box::new(MemoryNvram::new(10))).is_err());
    }

    #[test]
    fn the_two_cursors_are_independent() {
        let mut s = CursorStore::open(Box::new(MemoryNvram::new(CursorStore::LEN))).unwrap();
        s.store_kind(CursorKind::Own, at(9, 4)).unwrap();
        assert_eq!(s.load(), None);
        assert_eq!(s.load_kind(CursorKind::Own), Some(at(9, 4)));
        s.store(at(2, 7)).unwrap();
        s.store_kind(CursorKind::Own, at(9, 5)).unwrap();
        assert_eq!(s.load(), Some(at(2, 7)));
        assert_eq!(s.load_kind(CursorKind::Own), Some(at(9, 5)));
    }
}
