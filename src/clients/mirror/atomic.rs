//! Atomic multi-block write (F5.4; seed 004 \[0089\]-\[0099\]): a write of up to
//! [`MAX_ATOMIC_BLOCKS`] blocks is absorbed all or nothing, across crashes, by the metadata of
//! an [`AtomicWriteTable`] kept in an [`NvramBacking`].
//!
//! Every cache buffer (one block of data) has a Buffer Metadata Array Entry (BMAE); every
//! write in progress has a Request Index Entry (RIE, the seed's "Redundancy Invalid Entry")
//! whose sub-state is Free or Valid. While a write is in progress its buffers name the RIE
//! instead of a block address, and their meaning follows the RIE's sub-state
//! ([`ultimate_state`], the table of \[0097\]):
//!
//! | buffer state        | RIE Free | RIE Valid |
//! |---------------------|----------|-----------|
//! | Provisional WB      | Free     | WB Valid  |
//! | Provisional WB Not  | WB Valid | Free      |
//!
//! so flipping the RIE from Free to Valid, one aligned 8-byte store, switches every new
//! buffer to valid and every old one to free at once.
//!
//! # Write sequence
//! Every metadata change is one aligned little-endian u64 store followed by a persist of
//! exactly those 8 bytes; a crash between any two of them is recovered by [`open`]
//! (crash processing), which resolves every buffer naming an RIE to its ultimate state and
//! releases every RIE. In order (\[0098\], \[0099\]):
//! 1. [`begin`]: RIE word 1 (first block), RIE word 2 (unit, block count), RIE word 0 (tag,
//!    in use, sub-state Free); then each old buffer's BMAE to Provisional WB Not; then each new
//!    buffer's BMAE to Provisional WB.
//! 2. The data goes into the new buffers' blocks of the data area (the caller writes it).
//! 3. [`commit`]: persists the new buffers' data, then RIE word 0 with sub-state Valid (the one
//!    store that makes the write happen).
//! 4. [`finish`]: each new then each old buffer's BMAE to its ultimate state, then RIE word 0
//!    without the in-use bit (the RIE remembers the tag and outcome of its last request). A
//!    `finish` without `commit` aborts: the old data stays.
//!
//! A settled WB Valid buffer is freed ([`free_block`]: destaged, or taken over) by
//! one BMAE store to Free: a crash leaves it either WB Valid or Free.
//!
//! # NVRAM layout
//! See [`layout`]: a header, the Buffer Metadata Array, the RIE array and the data area.
//!
//! [`open`]: AtomicWriteTable::open
//! [`begin`]: AtomicWriteTable::begin
//! [`commit`]: AtomicWriteTable::commit
//! [`finish`]: AtomicWriteTable::finish
//! [`free_block`]: AtomicWriteTable::free_block

pub mod layout;

pub use layout::{
    ultimate_state, AtomicGeometry, BufferEntry, BufferIndex, BufferState, RequestState,
    RequestTag, RieIndex, RieWord, UnitId, BMAE_LEN, HEADER_LEN, LAYOUT_VERSION, MAGIC,
    MAX_ATOMIC_BLOCKS, MAX_BLOCK_ADDRESS, MAX_REQUEST_TAG, RIE_LEN,
};

use super::error::AtomicError;
use super::nvram::NvramBacking;
use layout::{read_u64, INCARNATION_OFFSET};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// An atomic write in progress (or, after a crash, the part of one its BMAEs still show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtomicRequest {
    /// Its request entry.
    pub rie: RieIndex,
    /// The caller's tag.
    pub tag: RequestTag,
    /// The unit.
    pub unit: UnitId,
    /// First block.
    pub first_block: u64,
    /// Block count (1..=256).
    pub blocks: u16,
    /// The RIE's sub-state.
    pub state: RequestState,
    /// New buffer of each block offset (`None` only in a request rebuilt after a crash).
    pub new_buffers: Vec<Option<BufferIndex>>,
    /// Old buffer of each block offset, where the block had one.
    pub old_buffers: Vec<Option<BufferIndex>>,
}

/// What resolving a request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRequest {
    /// The request entry (now released).
    pub rie: RieIndex,
    /// The request's tag.
    pub tag: RequestTag,
    /// The unit.
    pub unit: UnitId,
    /// First block.
    pub first_block: u64,
    /// Block count.
    pub blocks: u16,
    /// Valid: the new data won; Free: the old data stayed.
    pub state: RequestState,
    /// BMAEs set to WB Valid.
    pub buffers_valid: usize,
    /// BMAEs set to Free.
    pub buffers_freed: usize,
}

/// The atomic-write metadata of one side, over its NVRAM backing; see the module docs.
pub struct AtomicWriteTable<B: NvramBacking> {
    backing: B,
    geometry: AtomicGeometry,
    incarnation: u64,
    rie_words: Vec<RieWord>,
    requests: BTreeMap<RieIndex, AtomicRequest>,
    /// Settled WB Valid buffers by block.
    valid: HashMap<(UnitId, u64), BufferIndex>,
    /// Blocks held by a request in progress (the cache lock).
    locks: HashMap<(UnitId, u64), RieIndex>,
    free_buffers: BTreeSet<BufferIndex>,
    /// Free buffers kept out of allocation ([`hold_buffer`](Self::hold_buffer); memory only).
    held_buffers: BTreeSet<BufferIndex>,
    free_ries: BTreeSet<RieIndex>,
}

impl<B: NvramBacking> AtomicWriteTable<B> {
    /// Writes an empty table (every buffer Free, every RIE unused, incarnation 0) of
    /// `geometry` into `backing`. The data area is left as it is.
    pub fn format(mut backing: B, geometry: AtomicGeometry) -> Result<Self, AtomicError> {
        geometry.validate()?;
        let need = geometry.required_len();
        if backing.len() < need {
            return Err(AtomicError::Geometry(format!(
                "needs {need} bytes, the backing has {}",
                backing.len()
            )));
        }
        let meta_end = geometry.data_offset();
        let bytes = backing.bytes_mut();
        bytes[..meta_end].fill(0);
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&geometry.block_size.to_le_bytes());
        bytes[16..20].copy_from_slice(&geometry.buffers.to_le_bytes());
        bytes[20..24].copy_from_slice(&geometry.ries.to_le_bytes());
        backing.persist(0, meta_end)?;
        Ok(Self::open(backing)?.0)
    }

    /// Opens the table in `backing` and runs crash processing: every request a crash left in
    /// progress is resolved to its ultimate state and its RIE released. Returns the table and
    /// what was resolved.
    pub fn open(backing: B) -> Result<(Self, Vec<ResolvedRequest>), AtomicError> {
        let mut table = Self::load(backing)?;
        let resolved = table.recover()?;
        Ok((table, resolved))
    }

    fn load(backing: B) -> Result<Self, AtomicError> {
        let bytes = backing.bytes();
        let corrupt = |what| AtomicError::CorruptMetadata { what, index: 0 };
        if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
            return Err(corrupt("no table (bad magic)"));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        if u32_at(8) != LAYOUT_VERSION {
            return Err(corrupt("unknown layout version"));
        }
        let geometry = AtomicGeometry {
            block_size: u32_at(12),
            buffers: u32_at(16),
            ries: u32_at(20),
        };
        geometry.validate()?;
        if bytes.len() < geometry.required_len() {
            return Err(AtomicError::Geometry(format!(
                "the header's geometry needs {} bytes, the backing has {}",
                geometry.required_len(),
                bytes.len()
            )));
        }
        let incarnation = read_u64(bytes, INCARNATION_OFFSET);
        let mut table = AtomicWriteTable {
            geometry,
            incarnation,
            rie_words: Vec::with_capacity(geometry.ries as usize),
            requests: BTreeMap::new(),
            valid: HashMap::new(),
            locks: HashMap::new(),
            free_buffers: BTreeSet::new(),
            held_buffers: BTreeSet::new(),
            free_ries: BTreeSet::new(),
            backing,
        };
        for rie in 0..geometry.ries {
            let at = table.rie_at(rie);
            let bytes = table.backing.bytes();
            let word = RieWord::decode(read_u64(bytes, at));
            table.rie_words.push(word);
            if !word.in_use {
                table.free_ries.insert(rie);
                continue;
            }
            let first_block = read_u64(bytes, at + 8);
            let w2 = read_u64(bytes, at + 16);
            let unit = (w2 & 0xffff) as UnitId;
            let blocks = (w2 >> 16) as usize;
            let index = u64::from(rie);
            if w2 >> 32 != 0 || !(1..=MAX_ATOMIC_BLOCKS).contains(&blocks) {
                return Err(AtomicError::CorruptMetadata {
                    what: "RIE block count",
                    index,
                });
            }
            if first_block > MAX_BLOCK_ADDRESS + 1 - blocks as u64 {
                return Err(AtomicError::CorruptMetadata {
                    what: "RIE block range",
                    index,
                });
            }
            for offset in 0..blocks as u64 {
                if table
                    .locks
                    .insert((unit, first_block + offset), rie)
                    .is_some()
                {
                    return Err(AtomicError::CorruptMetadata {
                        what: "two writes in progress over one block",
                        index,
                    });
                }
            }
            table.requests.insert(
                rie,
                AtomicRequest {
                    rie,
                    tag: word.tag,
                    unit,
                    first_block,
                    blocks: blocks as u16,
                    state: word.state,
                    new_buffers: vec![None; blocks],
                    old_buffers: vec![None; blocks],
                },
            );
        }
        for buffer in 0..geometry.buffers {
            let index = u64::from(buffer);
            let word = read_u64(
                table.backing.bytes(),
                HEADER_LEN + BMAE_LEN * buffer as usize,
            );
            let entry = BufferEntry::decode(word).ok_or(AtomicError::CorruptMetadata {
                what: "BMAE bit pattern",
                index,
            })?;
            match entry {
                BufferEntry::Free => {
                    table.free_buffers.insert(buffer);
                }
                BufferEntry::WbValid { unit, block } => {
                    if table.valid.insert((unit, block), buffer).is_some() {
                        return Err(AtomicError::CorruptMetadata {
                            what: "two WB Valid buffers of one block",
                            index,
                        });
                    }
                }
                BufferEntry::ProvisionalWb { rie, offset }
                | BufferEntry::ProvisionalWbNot { rie, offset } => {
                    let request =
                        table
                            .requests
                            .get_mut(&rie)
                            .ok_or(AtomicError::CorruptMetadata {
                                what: "BMAE names an RIE not in use",
                                index,
                            })?;
                    let slot = match entry.state() {
                        BufferState::ProvisionalWb => request.new_buffers.get_mut(offset as usize),
                        _ => request.old_buffers.get_mut(offset as usize),
                    };
                    match slot {
                        Some(slot @ None) => *slot = Some(buffer),
                        _ => {
                            return Err(AtomicError::CorruptMetadata {
                                what: "BMAE offset outside its request or taken twice",
                                index,
                            })
                        }
                    }
                }
            }
        }
        // Whichever side of a write in progress wins must not meet a settled WB Valid buffer
        // of the same block: `begin` turns that buffer into the write's old buffer, so only a
        // corrupt table has both (recovery would leave the block valid twice).
        for request in table.requests.values() {
            let winners = match request.state {
                RequestState::Valid => &request.new_buffers,
                RequestState::Free => &request.old_buffers,
            };
            for (k, buffer) in winners.iter().enumerate() {
                let block = (request.unit, request.first_block + k as u64);
                if let (Some(buffer), Some(_)) = (buffer, table.valid.get(&block)) {
                    return Err(AtomicError::CorruptMetadata {
                        what: "a write in progress and a WB Valid buffer hold one block",
                        index: u64::from(*buffer),
                    });
                }
            }
        }
        Ok(table)
    }

    /// Crash processing on the live table: resolves every request in progress to the ultimate
    /// state its RIE's sub-state gives (committed ones win, the others are discarded) and
    /// releases its RIE. [`open`](Self::open) runs it; a mirror whose partner failed runs it
    /// to drop what the partner will never finish.
    pub fn recover(&mut self) -> Result<Vec<ResolvedRequest>, AtomicError> {
        let ries: Vec<RieIndex> = self.requests.keys().copied().collect();
        ries.into_iter().map(|rie| self.finish(rie)).collect()
    }

    // ---------------------------------------------------------------- the write steps

    /// Starts an atomic write of `blocks` blocks at `first_block` of `unit` for request
    /// `tag`, in the lowest free RIE with the lowest free buffers; returns the RIE and the new
    /// buffers (buffer `k` takes block `first_block + k`).
    pub fn begin(
        &mut self,
        tag: RequestTag,
        unit: UnitId,
        first_block: u64,
        blocks: usize,
    ) -> Result<(RieIndex, Vec<BufferIndex>), AtomicError> {
        check_blocks(first_block, blocks)?;
        self.check_unlocked(unit, first_block, blocks)?;
        let rie = *self.free_ries.first().ok_or(AtomicError::NoFreeRie {
            ries: self.geometry.ries,
        })?;
        if self.free_buffers.len() < blocks {
            return Err(AtomicError::NoFreeBuffers {
                needed: blocks,
                free: self.free_buffers.len(),
            });
        }
        let buffers: Vec<BufferIndex> = self.free_buffers.iter().take(blocks).copied().collect();
        self.begin_at(rie, tag, unit, first_block, &buffers)?;
        Ok((rie, buffers))
    }

    /// Starts an atomic write in RIE `rie` with the given new buffers (buffer `k` takes block
    /// `first_block + k`; a mirror uses the buffers and RIE its primary chose). The blocks'
    /// current buffers become the old ones. Fails, changing nothing, if the RIE is in use, a
    /// buffer is not free, or another write holds one of the blocks.
    pub fn begin_at(
        &mut self,
        rie: RieIndex,
        tag: RequestTag,
        unit: UnitId,
        first_block: u64,
        new_buffers: &[BufferIndex],
    ) -> Result<(), AtomicError> {
        let blocks = new_buffers.len();
        check_blocks(first_block, blocks)?;
        if tag == 0 || tag > MAX_REQUEST_TAG {
            return Err(AtomicError::RequestIdsExhausted);
        }
        match self.rie_words.get(rie as usize) {
            None => {
                return Err(AtomicError::BadRie {
                    rie,
                    reason: "out of range",
                })
            }
            Some(w) if w.in_use => {
                return Err(AtomicError::BadRie {
                    rie,
                    reason: "in use",
                })
            }
            Some(_) => {}
        }
        let mut seen = HashSet::with_capacity(blocks);
        for &buffer in new_buffers {
            let reason = if buffer >= self.geometry.buffers {
                "out of range"
            } else if !self.free_buffers.contains(&buffer) {
                "not free"
            } else if !seen.insert(buffer) {
                "given twice"
            } else {
                continue;
            };
            return Err(AtomicError::BadBuffer { buffer, reason });
        }
        self.check_unlocked(unit, first_block, blocks)?;
        let old_buffers: Vec<Option<BufferIndex>> = (0..blocks as u64)
            .map(|k| self.valid.get(&(unit, first_block + k)).copied())
            .collect();

        let at = self.rie_at(rie);
        self.store(at + 8, first_block)?;
        self.store(at + 16, u64::from(unit) | (blocks as u64) << 16)?;
        let word = RieWord {
            tag,
            in_use: true,
            state: RequestState::Free,
        };
        self.store(at, word.encode())?;
        for (offset, old) in old_buffers.iter().enumerate() {
            if let Some(buffer) = *old {
                let entry = BufferEntry::ProvisionalWbNot {
                    rie,
                    offset: offset as u8,
                };
                self.store_bmae(buffer, entry)?;
            }
        }
        for (offset, &buffer) in new_buffers.iter().enumerate() {
            let entry = BufferEntry::ProvisionalWb {
                rie,
                offset: offset as u8,
            };
            self.store_bmae(buffer, entry)?;
        }

        self.rie_words[rie as usize] = word;
        self.free_ries.remove(&rie);
        for (k, old) in old_buffers.iter().enumerate() {
            let block = (unit, first_block + k as u64);
            self.locks.insert(block, rie);
            if old.is_some() {
                self.valid.remove(&block);
            }
        }
        for buffer in new_buffers {
            self.free_buffers.remove(buffer);
        }
        self.requests.insert(
            rie,
            AtomicRequest {
                rie,
                tag,
                unit,
                first_block,
                blocks: blocks as u16,
                state: RequestState::Free,
                new_buffers: new_buffers.iter().map(|&b| Some(b)).collect(),
                old_buffers,
            },
        );
        Ok(())
    }

    /// Makes the write in `rie` happen: persists its new buffers' data, then flips the RIE's
    /// sub-state to Valid with one store.
    pub fn commit(&mut self, rie: RieIndex) -> Result<(), AtomicError> {
        let request = self.requests.get(&rie).ok_or(AtomicError::BadRie {
            rie,
            reason: "no write in progress",
        })?;
        if request.state == RequestState::Valid {
            return Err(AtomicError::BadRie {
                rie,
                reason: "already committed",
            });
        }
        if request.new_buffers.iter().any(Option::is_none) {
            return Err(AtomicError::BadRie {
                rie,
                reason: "incomplete (rebuilt after a crash)",
            });
        }
        let buffers: Vec<BufferIndex> = request.new_buffers.iter().flatten().copied().collect();
        for (offset, len) in self.data_ranges(&buffers) {
            self.backing.persist(offset, len)?;
        }
        let word = RieWord {
            state: RequestState::Valid,
            ..self.rie_words[rie as usize]
        };
        self.store(self.rie_at(rie), word.encode())?;
        self.rie_words[rie as usize] = word;
        if let Some(request) = self.requests.get_mut(&rie) {
            request.state = RequestState::Valid;
        }
        Ok(())
    }

    /// Ends the write in `rie`: each of its buffers goes to its ultimate state (new data
    /// valid and old data free if committed, the reverse if not: an abort), then the RIE is
    /// released.
    pub fn finish(&mut self, rie: RieIndex) -> Result<ResolvedRequest, AtomicError> {
        let request = self
            .requests
            .get(&rie)
            .cloned()
            .ok_or(AtomicError::BadRie {
                rie,
                reason: "no write in progress",
            })?;
        let committed = request.state == RequestState::Valid;
        let block_of = |k: usize| (request.unit, request.first_block + k as u64);
        let (mut buffers_valid, mut buffers_freed) = (0, 0);
        for (list, new) in [(&request.new_buffers, true), (&request.old_buffers, false)] {
            for (k, buffer) in list.iter().enumerate() {
                let Some(buffer) = *buffer else { continue };
                let entry = if new == committed {
                    buffers_valid += 1;
                    let (unit, block) = block_of(k);
                    BufferEntry::WbValid { unit, block }
                } else {
                    buffers_freed += 1;
                    BufferEntry::Free
                };
                self.store_bmae(buffer, entry)?;
            }
        }
        let word = RieWord {
            in_use: false,
            ..self.rie_words[rie as usize]
        };
        self.store(self.rie_at(rie), word.encode())?;

        self.rie_words[rie as usize] = word;
        self.free_ries.insert(rie);
        self.requests.remove(&rie);
        let (winners, losers) = if committed {
            (&request.new_buffers, &request.old_buffers)
        } else {
            (&request.old_buffers, &request.new_buffers)
        };
        for k in 0..request.blocks as usize {
            self.locks.remove(&block_of(k));
            if let Some(buffer) = winners[k] {
                self.valid.insert(block_of(k), buffer);
            }
            if let Some(buffer) = losers[k] {
                self.free_buffers.insert(buffer);
            }
        }
        Ok(ResolvedRequest {
            rie,
            tag: request.tag,
            unit: request.unit,
            first_block: request.first_block,
            blocks: request.blocks,
            state: request.state,
            buffers_valid,
            buffers_freed,
        })
    }

    // ---------------------------------------------------------------- freeing

    /// Frees the settled WB Valid buffer of block `block` of `unit` (its data is on disk, or
    /// handed over at a takeover): one BMAE store, so a crash leaves the buffer either WB Valid or
    /// Free. Returns the buffer, or None (changing nothing) when the block has no settled
    /// buffer; [`AtomicError::RangeBusy`] while a write in progress holds the block.
    pub fn free_block(
        &mut self,
        unit: UnitId,
        block: u64,
    ) -> Result<Option<BufferIndex>, AtomicError> {
        if let Some(&rie) = self.locks.get(&(unit, block)) {
            return Err(AtomicError::RangeBusy { unit, block, rie });
        }
        let Some(&buffer) = self.valid.get(&(unit, block)) else {
            return Ok(None);
        };
        self.store_bmae(buffer, BufferEntry::Free)?;
        self.valid.remove(&(unit, block));
        self.free_buffers.insert(buffer);
        Ok(Some(buffer))
    }

    /// The block whose settled WB Valid buffer `buffer` is, if it is one (None for a Free
    /// buffer, one of a write in progress, or an index out of range).
    pub fn settled_block(&self, buffer: BufferIndex) -> Option<(UnitId, u64)> {
        match self.buffer_entry(buffer).ok()? {
            BufferEntry::WbValid { unit, block }
                if self.valid.get(&(unit, block)) == Some(&buffer) =>
            {
                Some((unit, block))
            }
            _ => None,
        }
    }

    /// Every settled WB Valid block as `(unit, block, buffer)`, in block order (blocks of
    /// writes in progress are not included).
    pub fn valid_blocks(&self) -> Vec<(UnitId, u64, BufferIndex)> {
        let mut all: Vec<(UnitId, u64, BufferIndex)> = self
            .valid
            .iter()
            .map(|(&(unit, block), &buffer)| (unit, block, buffer))
            .collect();
        all.sort_unstable();
        all
    }

    /// Whether a write in progress holds the block.
    pub fn is_locked(&self, unit: UnitId, block: u64) -> bool {
        self.locks.contains_key(&(unit, block))
    }

    /// Keeps the Free buffer `buffer` out of allocation ([`begin`](Self::begin) and
    /// [`begin_at`](Self::begin_at) do not take it) until
    /// [`release_buffer`](Self::release_buffer). Nothing is stored: a reopened table has it
    /// free again. Returns false (changing nothing) for a buffer that is not free.
    pub fn hold_buffer(&mut self, buffer: BufferIndex) -> bool {
        if !self.free_buffers.remove(&buffer) {
            return false;
        }
        self.held_buffers.insert(buffer);
        true
    }

    /// Gives a buffer kept by [`hold_buffer`](Self::hold_buffer) back to allocation.
    pub fn release_buffer(&mut self, buffer: BufferIndex) {
        if self.held_buffers.remove(&buffer) {
            self.free_buffers.insert(buffer);
        }
    }

    /// Free buffers kept out of allocation.
    pub fn held_buffer_count(&self) -> usize {
        self.held_buffers.len()
    }

    // ---------------------------------------------------------------- queries

    /// The buffer holding the current data of block `block` of `unit`: its WB Valid buffer,
    /// or, for a block of a write in progress, the buffer that is valid in ultimate terms
    /// (the old one until the commit, the new one after).
    pub fn lookup(&self, unit: UnitId, block: u64) -> Option<BufferIndex> {
        if let Some(rie) = self.locks.get(&(unit, block)) {
            if let Some(r) = self.requests.get(rie) {
                let k = (block - r.first_block) as usize;
                let list = match r.state {
                    RequestState::Valid => &r.new_buffers,
                    RequestState::Free => &r.old_buffers,
                };
                if let Some(buffer) = list[k] {
                    return Some(buffer);
                }
            }
        }
        self.valid.get(&(unit, block)).copied()
    }

    /// The current data of a block (see [`lookup`](Self::lookup)).
    pub fn read_block(&self, unit: UnitId, block: u64) -> Option<&[u8]> {
        self.lookup(unit, block).map(|b| self.block(b))
    }

    /// The data of buffer `buffer`.
    pub fn block_data(&self, buffer: BufferIndex) -> Result<&[u8], AtomicError> {
        self.check_buffer(buffer)?;
        Ok(self.block(buffer))
    }

    /// The data of buffer `buffer`, writable (new data goes here between `begin` and
    /// `commit`).
    pub fn block_data_mut(&mut self, buffer: BufferIndex) -> Result<&mut [u8], AtomicError> {
        self.check_buffer(buffer)?;
        let at = self.geometry.buffer_offset(buffer);
        let len = self.geometry.block_size as usize;
        Ok(&mut self.backing.bytes_mut()[at..at + len])
    }

    /// The data-area byte ranges `(offset, len)` of `buffers`, in their order, with adjacent
    /// buffers merged.
    pub fn data_ranges(&self, buffers: &[BufferIndex]) -> Vec<(usize, usize)> {
        let size = self.geometry.block_size as usize;
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for &buffer in buffers {
            let at = self.geometry.buffer_offset(buffer);
            match ranges.last_mut() {
                Some((start, len)) if *start + *len == at => *len += size,
                _ => ranges.push((at, size)),
            }
        }
        ranges
    }

    /// The write in progress in `rie`.
    pub fn request(&self, rie: RieIndex) -> Option<&AtomicRequest> {
        self.requests.get(&rie)
    }

    /// Every write in progress, by RIE.
    pub fn requests(&self) -> impl Iterator<Item = &AtomicRequest> {
        self.requests.values()
    }

    /// Word 0 of RIE `rie`: for a released RIE, the tag and outcome of its last request.
    pub fn rie_word(&self, rie: RieIndex) -> Option<RieWord> {
        self.rie_words.get(rie as usize).copied()
    }

    /// The highest tag any RIE holds (0 if none was used): a restarted primary numbers its
    /// requests after it.
    pub fn max_tag(&self) -> RequestTag {
        self.rie_words.iter().map(|w| w.tag).max().unwrap_or(0)
    }

    /// The BMAE of `buffer`, read from the backing.
    pub fn buffer_entry(&self, buffer: BufferIndex) -> Result<BufferEntry, AtomicError> {
        self.check_buffer(buffer)?;
        let word = read_u64(self.backing.bytes(), self.bmae_at(buffer));
        BufferEntry::decode(word).ok_or(AtomicError::CorruptMetadata {
            what: "BMAE bit pattern",
            index: u64::from(buffer),
        })
    }

    /// Buffers free for new writes (held ones not included).
    pub fn free_buffer_count(&self) -> usize {
        self.free_buffers.len()
    }

    /// Blocks holding valid data (settled, outside writes in progress).
    pub fn valid_block_count(&self) -> usize {
        self.valid.len()
    }

    /// The geometry.
    pub fn geometry(&self) -> &AtomicGeometry {
        &self.geometry
    }

    /// The persisted incarnation word of the header.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Stores and persists the incarnation word of the header.
    pub fn set_incarnation(&mut self, incarnation: u64) -> Result<(), AtomicError> {
        self.store(INCARNATION_OFFSET, incarnation)?;
        self.incarnation = incarnation;
        Ok(())
    }

    /// The backing.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// The backing, writable: RDMA WRITEs of mirrored data land in the data area. Writing
    /// into the metadata area breaks the table.
    pub fn backing_mut(&mut self) -> &mut B {
        &mut self.backing
    }

    /// The backing, giving up the table.
    pub fn into_backing(self) -> B {
        self.backing
    }

    // ---------------------------------------------------------------- internals

    fn rie_at(&self, rie: RieIndex) -> usize {
        self.geometry.rie_offset() + RIE_LEN * rie as usize
    }

    fn bmae_at(&self, buffer: BufferIndex) -> usize {
        HEADER_LEN + BMAE_LEN * buffer as usize
    }

    fn block(&self, buffer: BufferIndex) -> &[u8] {
        let at = self.geometry.buffer_offset(buffer);
        &self.backing.bytes()[at..at + self.geometry.block_size as usize]
    }

    fn check_buffer(&self, buffer: BufferIndex) -> Result<(), AtomicError> {
        if buffer < self.geometry.buffers {
            Ok(())
        } else {
            Err(AtomicError::BadBuffer {
                buffer,
                reason: "out of range",
            })
        }
    }

    /// The cache lock: no block of the range may belong to a write in progress.
    fn check_unlocked(&self, unit: UnitId, first: u64, blocks: usize) -> Result<(), AtomicError> {
        for block in first..first + blocks as u64 {
            if let Some(&rie) = self.locks.get(&(unit, block)) {
                return Err(AtomicError::RangeBusy { unit, block, rie });
            }
        }
        Ok(())
    }

    fn store_bmae(&mut self, buffer: BufferIndex, entry: BufferEntry) -> Result<(), AtomicError> {
        self.store(self.bmae_at(buffer), entry.encode())
    }

    /// One aligned 8-byte store, persisted.
    fn store(&mut self, offset: usize, word: u64) -> Result<(), AtomicError> {
        self.backing.bytes_mut()[offset..offset + 8].copy_from_slice(&word.to_le_bytes());
        Ok(self.backing.persist(offset, 8)?)
    }
}

fn check_blocks(first_block: u64, blocks: usize) -> Result<(), AtomicError> {
    if !(1..=MAX_ATOMIC_BLOCKS).contains(&blocks) {
        return Err(AtomicError::BlockCount {
            blocks,
            max: MAX_ATOMIC_BLOCKS,
        });
    }
    if first_block > MAX_BLOCK_ADDRESS + 1 - blocks as u64 {
        return Err(AtomicError::BlockAddress {
            first: first_block,
            blocks,
            max: MAX_BLOCK_ADDRESS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::MemoryNvram;

    const GEO: AtomicGeometry = AtomicGeometry {
        block_size: 512,
        buffers: 8,
        ries: 2,
    };

    #[test]
    fn a_write_replaces_old_data_and_frees_its_buffer() {
        let nv = MemoryNvram::new(GEO.required_len());
        let mut t = AtomicWriteTable::format(nv, GEO).unwrap();
        let (rie, bufs) = t.begin(1, 3, 10, 2).unwrap();
        t.block_data_mut(bufs[0]).unwrap().fill(1);
        t.block_data_mut(bufs[1]).unwrap().fill(1);
        t.commit(rie).unwrap();
        t.finish(rie).unwrap();
        assert_eq!(t.read_block(3, 11).unwrap()[0], 1);
        let (rie, bufs2) = t.begin(2, 3, 11, 1).unwrap();
        assert!(matches!(
            t.begin(3, 3, 11, 1),
            Err(AtomicError::RangeBusy { .. })
        ));
        t.block_data_mut(bufs2[0]).unwrap().fill(2);
        assert_eq!(t.read_block(3, 11).unwrap()[0], 1);
        t.commit(rie).unwrap();
        assert_eq!(t.read_block(3, 11).unwrap()[0], 2);
        let r = t.finish(rie).unwrap();
        assert_eq!((r.buffers_valid, r.buffers_freed), (1, 1));
        assert_eq!(t.free_buffer_count(), 6);
        assert_eq!(t.buffer_entry(bufs[1]).unwrap(), BufferEntry::Free);
        let nv = t.into_backing();
        let (t, resolved) = AtomicWriteTable::open(nv).unwrap();
        assert!(resolved.is_empty());
        assert_eq!(t.read_block(3, 10).unwrap()[0], 1);
        assert_eq!(t.read_block(3, 11).unwrap()[0], 2);
        assert_eq!(t.max_tag(), 2);
    }

    fn store_word(nv: &mut MemoryNvram, at: usize, word: u64) {
        nv.bytes_mut()[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }

    /// Found by fuzzing (atomic_table): a table in which a committed write's new buffer and a
    /// settled WB Valid buffer hold the same block, or two writes in progress cover one block,
    /// is corrupt; recovery used to accept it and leave the block valid twice.
    #[test]
    fn recovery_refuses_a_block_claimed_twice() {
        let mut t = AtomicWriteTable::format(MemoryNvram::new(GEO.required_len()), GEO).unwrap();
        let (rie, _) = t.begin(1, 3, 10, 1).unwrap();
        t.commit(rie).unwrap();
        t.finish(rie).unwrap();
        let (rie, new) = t.begin(2, 3, 20, 1).unwrap();
        t.commit(rie).unwrap();
        // The write in progress claims block 10, which a settled buffer holds.
        let mut nv = t.into_backing();
        store_word(&mut nv, GEO.rie_offset() + RIE_LEN * rie as usize + 8, 10);
        let err = AtomicWriteTable::open(nv.clone())
            .err()
            .expect("corrupt table");
        assert!(
            matches!(err, AtomicError::CorruptMetadata { what, index }
                if what.contains("WB Valid") && index == u64::from(new[0])),
            "{err}"
        );
        // Two writes in progress over block 20.
        let mut t = AtomicWriteTable::format(MemoryNvram::new(GEO.required_len()), GEO).unwrap();
        let (a, _) = t.begin(1, 3, 20, 1).unwrap();
        let (b, _) = t.begin(2, 3, 21, 1).unwrap();
        let mut nv = t.into_backing();
        store_word(&mut nv, GEO.rie_offset() + RIE_LEN * b as usize + 8, 20);
        let err = AtomicWriteTable::open(nv).err().expect("corrupt table");
        assert!(
            matches!(err, AtomicError::CorruptMetadata { what, index }
                if what.contains("two writes") && index == u64::from(a.max(b))),
            "{err}"
        );
    }
}
