//! The NVRAM layout of an [`AtomicWriteTable`](super::AtomicWriteTable) (all integers
//! little-endian) and the words it stores: every metadata change is one aligned u64.
//!
//! | offset                         | size          | content                               |
//! |--------------------------------|---------------|---------------------------------------|
//! | 0                              | 8             | magic `ILATOMW1`                      |
//! | 8                              | 4             | layout version (1)                    |
//! | 12                             | 4             | block size in bytes (power of two, 512..=65536) |
//! | 16                             | 4             | number of buffers `N`                 |
//! | 20                             | 4             | number of RIEs `R`                    |
//! | 24                             | 8             | incarnation (the write-back mirror's path incarnation, F5.3; 0 if unused) |
//! | 32                             | 32            | zero                                  |
//! | 64                             | 8 × N         | Buffer Metadata Array: BMAE of buffer i at 64 + 8i |
//! | 64 + 8N                        | 32 × R        | RIE array: RIE j at 64 + 8N + 32j     |
//! | align(64 + 8N + 32R, block)    | block × N     | data area: block of buffer i at data + block × i |
//!
//! BMAE (one u64; state, address and RIE index change together in one store, \[0096\]):
//! | state              | bits 0..2 | bits 2..64                                                     |
//! |--------------------|-----------|----------------------------------------------------------------|
//! | Free               | 0         | zero                                                           |
//! | WB Valid           | 1         | bits 2..18 unit; bits 18..64 block address (46 bits)           |
//! | Provisional WB     | 2         | bits 2..34 RIE index; bits 34..42 block offset in the request (0..=255); bits 42..64 zero |
//! | Provisional WB Not | 3         | as Provisional WB                                              |
//!
//! That is: WB Valid = `1 | unit << 2 | block << 18`; provisional = `state | rie << 2 | offset
//! << 34`. Any other pattern is corrupt. A buffer holds exactly one block, so the seed's
//! valid-block count is implicit.
//!
//! RIE (32 bytes):
//! | offset | size | content                                                               |
//! |--------|------|-----------------------------------------------------------------------|
//! | 0      | 8    | word 0: bit 0 sub-state (0 Free, 1 Valid), bit 1 in use, bits 2..64 request tag |
//! | 8      | 8    | word 1: first block                                                   |
//! | 16     | 8    | word 2: bits 0..16 unit, bits 16..32 block count (1..=256), rest 0     |
//! | 24     | 8    | zero                                                                  |
//!
//! A released RIE (in use = 0) keeps the tag and sub-state of its last request: the write-back
//! mirror answers a repeated request from them (Valid: absorbed; Free: aborted).

use crate::clients::mirror::error::AtomicError;

/// Index of a cache buffer (and of its BMAE).
pub type BufferIndex = u32;
/// Index of a request entry (RIE).
pub type RieIndex = u32;
/// A cached unit (the seed's NCAE index of a virtual disk).
pub type UnitId = u16;
/// The caller's id of the request an RIE serves (1..=[`MAX_REQUEST_TAG`]).
pub type RequestTag = u64;

/// The atomic write size: most blocks of one atomic write.
pub const MAX_ATOMIC_BLOCKS: usize = 256;
/// The largest block address a BMAE holds (46 bits).
pub const MAX_BLOCK_ADDRESS: u64 = (1 << 46) - 1;
/// The largest request tag an RIE holds (62 bits).
pub const MAX_REQUEST_TAG: RequestTag = (1 << 62) - 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 64;
/// Bytes of one BMAE.
pub const BMAE_LEN: usize = 8;
/// Bytes of one RIE.
pub const RIE_LEN: usize = 32;
/// The header's magic.
pub const MAGIC: [u8; 8] = *b"ILATOMW1";
/// The layout version this code reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// Offset of the incarnation word in the header.
pub(super) const INCARNATION_OFFSET: usize = 24;

/// State of a buffer (BMAE), \[0097\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferState {
    /// Holds nothing and is not used by a request.
    Free,
    /// Holds the current data of a block.
    WbValid,
    /// New data of a request: valid once the request's RIE is Valid.
    ProvisionalWb,
    /// Old data a request replaces: valid until the request's RIE is Valid.
    ProvisionalWbNot,
}

/// Sub-state of a request entry (RIE), \[0095\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// The new data is not (yet) absorbed.
    Free,
    /// The new data is absorbed.
    Valid,
}

/// The ultimate state of a buffer in `buffer` state whose request is in sub-state `request`
/// (the table of \[0097\]). Free and WB Valid buffers name no request and stay as they are.
pub fn ultimate_state(buffer: BufferState, request: RequestState) -> BufferState {
    match (buffer, request) {
        (BufferState::ProvisionalWb, RequestState::Free) => BufferState::Free,
        (BufferState::ProvisionalWb, RequestState::Valid) => BufferState::WbValid,
        (BufferState::ProvisionalWbNot, RequestState::Free) => BufferState::WbValid,
        (BufferState::ProvisionalWbNot, RequestState::Valid) => BufferState::Free,
        (settled, _) => settled,
    }
}

/// A decoded BMAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferEntry {
    /// Free.
    Free,
    /// WB Valid: holds block `block` of unit `unit`.
    WbValid {
        /// The unit.
        unit: UnitId,
        /// The block address.
        block: u64,
    },
    /// Provisional WB: new data for block `offset` of the request in `rie`.
    ProvisionalWb {
        /// The request entry.
        rie: RieIndex,
        /// Block offset within the request.
        offset: u8,
    },
    /// Provisional WB Not: old data of block `offset` of the request in `rie`.
    ProvisionalWbNot {
        /// The request entry.
        rie: RieIndex,
        /// Block offset within the request.
        offset: u8,
    },
}

impl BufferEntry {
    /// The state.
    pub fn state(&self) -> BufferState {
        match self {
            BufferEntry::Free => BufferState::Free,
            BufferEntry::WbValid { .. } => BufferState::WbValid,
            BufferEntry::ProvisionalWb { .. } => BufferState::ProvisionalWb,
            BufferEntry::ProvisionalWbNot { .. } => BufferState::ProvisionalWbNot,
        }
    }

    /// The BMAE word (block addresses above [`MAX_BLOCK_ADDRESS`] are cut to 46 bits; the
    /// table never stores one).
    pub fn encode(&self) -> u64 {
        match *self {
            BufferEntry::Free => 0,
            BufferEntry::WbValid { unit, block } => {
                1 | u64::from(unit) << 2 | (block & MAX_BLOCK_ADDRESS) << 18
            }
            BufferEntry::ProvisionalWb { rie, offset } => {
                2 | u64::from(rie) << 2 | u64::from(offset) << 34
            }
            BufferEntry::ProvisionalWbNot { rie, offset } => {
                3 | u64::from(rie) << 2 | u64::from(offset) << 34
            }
        }
    }

    /// Decodes a BMAE word; `None` for a bit pattern no state has.
    pub fn decode(word: u64) -> Option<BufferEntry> {
        let rie = ((word >> 2) & 0xffff_ffff) as RieIndex;
        let offset = ((word >> 34) & 0xff) as u8;
        match word & 3 {
            0 => (word == 0).then_some(BufferEntry::Free),
            1 => Some(BufferEntry::WbValid {
                unit: ((word >> 2) & 0xffff) as UnitId,
                block: word >> 18,
            }),
            2 => (word >> 42 == 0).then_some(BufferEntry::ProvisionalWb { rie, offset }),
            _ => (word >> 42 == 0).then_some(BufferEntry::ProvisionalWbNot { rie, offset }),
        }
    }
}

/// A decoded RIE word 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RieWord {
    /// Tag of the request using the RIE (or of the last one that did; 0: never used).
    pub tag: RequestTag,
    /// Whether a request is using it.
    pub in_use: bool,
    /// The sub-state.
    pub state: RequestState,
}

impl RieWord {
    /// The word.
    pub fn encode(&self) -> u64 {
        let state = match self.state {
            RequestState::Free => 0,
            RequestState::Valid => 1,
        };
        state | u64::from(self.in_use) << 1 | (self.tag & MAX_REQUEST_TAG) << 2
    }

    /// Decodes a word (every bit pattern is one).
    pub fn decode(word: u64) -> RieWord {
        RieWord {
            tag: word >> 2,
            in_use: word & 2 != 0,
            state: if word & 1 != 0 {
                RequestState::Valid
            } else {
                RequestState::Free
            },
        }
    }
}

/// Sizes of a table. Both sides of a mirrored pair use the same geometry: buffer `i` and RIE
/// `j` of the primary are mirrored in buffer `i` and RIE `j` of the mirror (\[0054\], \[0070\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AtomicGeometry {
    /// Bytes per block and buffer (a power of two, 512..=65536).
    pub block_size: u32,
    /// Number of buffers (1..).
    pub buffers: u32,
    /// Number of request entries (1..).
    pub ries: u32,
}

impl AtomicGeometry {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), AtomicError> {
        if !self.block_size.is_power_of_two() || !(512..=65536).contains(&self.block_size) {
            return Err(AtomicError::Geometry(format!(
                "block_size = {} (a power of two, 512..=65536)",
                self.block_size
            )));
        }
        if self.buffers == 0 || self.ries == 0 {
            return Err(AtomicError::Geometry(format!(
                "buffers = {}, ries = {} (both at least 1)",
                self.buffers, self.ries
            )));
        }
        self.checked_len()
            .map(|_| ())
            .ok_or_else(|| AtomicError::Geometry("the table does not fit in memory".into()))
    }

    /// Offset of the RIE array.
    pub fn rie_offset(&self) -> usize {
        HEADER_LEN + BMAE_LEN * self.buffers as usize
    }

    /// Offset of the data area (aligned to the block size).
    pub fn data_offset(&self) -> usize {
        let end = self.rie_offset() + RIE_LEN * self.ries as usize;
        end.next_multiple_of(self.block_size as usize)
    }

    /// Offset of buffer `buffer`'s block (no bounds check).
    pub fn buffer_offset(&self, buffer: BufferIndex) -> usize {
        self.data_offset() + self.block_size as usize * buffer as usize
    }

    /// Bytes the table needs in its backing.
    pub fn required_len(&self) -> usize {
        self.data_offset() + self.block_size as usize * self.buffers as usize
    }

    fn checked_len(&self) -> Option<usize> {
        let meta = (self.buffers as usize)
            .checked_mul(BMAE_LEN)?
            .checked_add((self.ries as usize).checked_mul(RIE_LEN)?)?
            .checked_add(HEADER_LEN)?;
        let data_start = meta.checked_next_multiple_of(self.block_size as usize)?;
        data_start.checked_add((self.block_size as usize).checked_mul(self.buffers as usize)?)
    }
}

/// The little-endian u64 at `offset`.
pub(super) fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: AtomicGeometry = AtomicGeometry {
        block_size: 512,
        buffers: 8,
        ries: 2,
    };

    #[test]
    fn words_round_trip() {
        for entry in [
            BufferEntry::Free,
            BufferEntry::WbValid {
                unit: 0xffff,
                block: MAX_BLOCK_ADDRESS,
            },
            BufferEntry::ProvisionalWb {
                rie: u32::MAX,
                offset: 255,
            },
            BufferEntry::ProvisionalWbNot { rie: 7, offset: 0 },
        ] {
            assert_eq!(BufferEntry::decode(entry.encode()), Some(entry));
        }
        assert_eq!(BufferEntry::decode(4), None);
        assert_eq!(BufferEntry::decode(2 | 1 << 42), None);
        let w = RieWord {
            tag: MAX_REQUEST_TAG,
            in_use: true,
            state: RequestState::Valid,
        };
        assert_eq!(RieWord::decode(w.encode()), w);
    }

    #[test]
    fn layout_offsets() {
        assert_eq!(GEO.rie_offset(), 64 + 64);
        assert_eq!(GEO.data_offset(), 512);
        assert_eq!(GEO.required_len(), 512 + 8 * 512);
        assert!(AtomicGeometry {
            block_size: 500,
            ..GEO
        }
        .validate()
        .is_err());
    }
}
