//! The survivor's replay cursor in NVRAM: what it already replayed of the partner's log, in
//! two alternating [`ReplayCursor`] slots so a torn write leaves the previous one in force.

use super::Nvram;
use crate::clients::mirror::error::MirrorError;
use crate::clients::mirror::log_replay::ReplayCursor;

/// Two alternating cursor slots in a small NVRAM backing.
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
    pub const LEN: usize = 2 * ReplayCursor::ENCODED_LEN;

    /// Uses `backing` (at least [`CursorStore::LEN`] bytes; what it holds is kept).
    pub fn open(backing: Nvram) -> Result<CursorStore, MirrorError> {
        if backing.len() < Self::LEN {
            return Err(MirrorError::OutOfRange {
                offset: 0,
                len: Self::LEN,
                size: backing.len(),
            });
        }
        Ok(CursorStore { backing })
    }

    fn slot(&self, i: usize) -> &[u8] {
        let n = ReplayCursor::ENCODED_LEN;
        &self.backing.bytes()[i * n..(i + 1) * n]
    }

    /// The newest valid cursor, if any.
    pub fn load(&self) -> Option<ReplayCursor> {
        ReplayCursor::latest(self.slot(0), self.slot(1))
    }

    /// Stores `cursor` (persisted) in the slot not holding the newest one.
    pub fn store(&mut self, cursor: ReplayCursor) -> Result<(), MirrorError> {
        let n = ReplayCursor::ENCODED_LEN;
        let a = ReplayCursor::decode(self.slot(0)).ok();
        let b = ReplayCursor::decode(self.slot(1)).ok();
        // Overwrite the older (or an invalid) slot; the newer stays in force until this
        // write is complete.
        let i = match (a, b) {
            (Some(a), Some(b)) if a > b => 1,
            (Some(_), None) => 1,
            _ => 0,
        };
        self.backing.bytes_mut()[i * n..(i + 1) * n].copy_from_slice(&cursor.encode());
        self.backing.persist(i * n, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::log_replay::LogPosition;
    use crate::clients::mirror::nvram::MemoryNvram;

    fn at(generation: u64, seq: u64) -> ReplayCursor {
        ReplayCursor {
            position: LogPosition { generation, seq },
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
            .find(|&i| ReplayCursor::decode(s.slot(i)).ok() == Some(at(4, 1)))
            .unwrap();
        s.backing.bytes_mut()[newest * ReplayCursor::ENCODED_LEN + 20] ^= 0xff;
        assert_eq!(s.load(), Some(at(3, 20)));
        s.store(at(4, 2)).unwrap();
        assert_eq!(s.load(), Some(at(4, 2)));
        assert!(CursorStore::open(Box::new(MemoryNvram::new(10))).is_err());
    }
}
