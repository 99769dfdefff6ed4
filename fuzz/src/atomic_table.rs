//! Crash recovery of the atomic-write table (src/clients/mirror/atomic.rs) from arbitrary
//! NVRAM bytes: [`AtomicWriteTable::open`] loads the metadata and resolves every request a
//! crash left in progress.
//!
//! Input: selector byte, then
//! - `0`: the whole NVRAM image, as is;
//! - `1`: a small geometry (block size 512, 1..=32 buffers, 1..=8 RIEs) with a valid header
//!   and metadata words picked by the fuzzer: each BMAE and RIE word is either a well-formed
//!   entry with small fields or 8 raw bytes, so the fuzzer explores inconsistent tables
//!   (orphan provisional buffers, duplicate blocks, out-of-range offsets...).
//!
//! After a successful open: no request is left in progress, every buffer is Free or WB Valid,
//! no block has two valid buffers, a second open resolves nothing and finds the same blocks,
//! and a new atomic write runs begin → commit → finish on the recovered table.

use crate::{rejected, tagged};
use arbitrary::Unstructured;
use interlink::clients::mirror::atomic::*;
use interlink::clients::mirror::{MemoryNvram, NvramBacking};
use std::collections::HashSet;

const BLOCK: u32 = 512;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let image = match selector % 2 {
        0 => rest.to_vec(),
        _ => match structured(rest) {
            Some(i) => i,
            None => return,
        },
    };
    check(image);
}

fn structured(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let buffers = 1 + u32::from(u.arbitrary::<u8>().ok()? % 32);
    let ries = 1 + u32::from(u.arbitrary::<u8>().ok()? % 8);
    let geometry = AtomicGeometry {
        block_size: BLOCK,
        buffers,
        ries,
    };
    let table = AtomicWriteTable::format(MemoryNvram::new(geometry.required_len()), geometry)
        .expect("format a small table");
    let mut image = table.into_backing().bytes().to_vec();
    image[24..32].copy_from_slice(&u.arbitrary::<u64>().unwrap_or(0).to_le_bytes());
    for b in 0..buffers as usize {
        let word = match u.arbitrary::<u8>().unwrap_or(0) % 5 {
            0 => BufferEntry::Free.encode(),
            1 => BufferEntry::WbValid {
                unit: u16::from(u.arbitrary::<u8>().unwrap_or(0) % 4),
                block: u64::from(u.arbitrary::<u8>().unwrap_or(0)),
            }
            .encode(),
            2 => BufferEntry::ProvisionalWb {
                rie: u32::from(u.arbitrary::<u8>().unwrap_or(0) % 10),
                offset: u.arbitrary::<u8>().unwrap_or(0) % 8,
            }
            .encode(),
            3 => BufferEntry::ProvisionalWbNot {
                rie: u32::from(u.arbitrary::<u8>().unwrap_or(0) % 10),
                offset: u.arbitrary::<u8>().unwrap_or(0) % 8,
            }
            .encode(),
            _ => u.arbitrary::<u64>().unwrap_or(0),
        };
        let at = HEADER_LEN + BMAE_LEN * b;
        image[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }
    for r in 0..ries as usize {
        let at = geometry.rie_offset() + RIE_LEN * r;
        let words: [u64; 4] = if u.arbitrary::<bool>().unwrap_or(false) {
            let w0 = RieWord {
                tag: u64::from(u.arbitrary::<u8>().unwrap_or(0)),
                in_use: u.arbitrary().unwrap_or(false),
                state: if u.arbitrary().unwrap_or(false) {
                    RequestState::Valid
                } else {
                    RequestState::Free
                },
            };
            let first = u64::from(u.arbitrary::<u8>().unwrap_or(0));
            let unit = u64::from(u.arbitrary::<u8>().unwrap_or(0) % 4);
            let blocks = u64::from(u.arbitrary::<u8>().unwrap_or(0) % 9);
            [w0.encode(), first, unit | blocks << 16, 0]
        } else {
            [0; 4].map(|_| u.arbitrary::<u64>().unwrap_or(0))
        };
        for (i, w) in words.iter().enumerate() {
            image[at + 8 * i..at + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    Some(image)
}

fn blocks(table: &AtomicWriteTable<MemoryNvram>) -> Vec<(u16, u64, u32)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for b in 0..table.geometry().buffers {
        match table.buffer_entry(b).expect("entry of an existing buffer") {
            BufferEntry::Free => {}
            BufferEntry::WbValid { unit, block } => {
                assert!(
                    seen.insert((unit, block)),
                    "block {unit}:{block} valid twice"
                );
                assert_eq!(table.lookup(unit, block), Some(b));
                out.push((unit, block, b));
            }
            e => panic!("buffer {b} still {e:?} after recovery"),
        }
    }
    out
}

fn check(image: Vec<u8>) {
    let (table, _resolved) = match AtomicWriteTable::open(MemoryNvram::from_bytes(image)) {
        Ok(t) => t,
        Err(e) => return rejected(&e),
    };
    assert_eq!(table.requests().count(), 0, "requests left after recovery");
    let before = blocks(&table);
    let (mut table, resolved) =
        AtomicWriteTable::open(table.into_backing()).expect("a recovered table opens again");
    assert!(resolved.is_empty(), "second recovery resolved {resolved:?}");
    assert_eq!(blocks(&table), before);
    // One more atomic write on the recovered table.
    let tag = table.max_tag().saturating_add(1).min(MAX_REQUEST_TAG);
    match table.begin(tag, 0, 1000, 1) {
        Ok((rie, _)) => {
            table.commit(rie).expect("commit a begun write");
            let r = table.finish(rie).expect("finish a committed write");
            assert_eq!(r.state, RequestState::Valid);
            assert!(table.lookup(0, 1000).is_some());
        }
        Err(e) => rejected(&e),
    }
}

/// A formatted table, a table with a write in progress at each step, and scripts.
pub fn seeds() -> Vec<Vec<u8>> {
    let geometry = AtomicGeometry {
        block_size: BLOCK,
        buffers: 8,
        ries: 2,
    };
    let fresh = || {
        AtomicWriteTable::format(MemoryNvram::new(geometry.required_len()), geometry)
            .expect("format")
    };
    let mut out = vec![tagged(0, fresh().backing().bytes())];
    // Crashed after begin, and after commit, of a write over a valid block.
    for commit in [false, true] {
        let mut t = fresh();
        let (rie, _) = t.begin(1, 0, 5, 2).expect("begin");
        t.commit(rie).expect("commit");
        t.finish(rie).expect("finish");
        let (rie, _) = t.begin(2, 0, 5, 3).expect("begin");
        if commit {
            t.commit(rie).expect("commit");
        }
        out.push(tagged(0, t.backing().bytes()));
    }
    out.push(tagged(
        1,
        &[7, 1, 1, 0, 5, 2, 0, 0, 3, 0, 0, 1, 1, 2, 1, 0, 5, 0, 2],
    ));
    out.push(tagged(1, &[3, 0, 4, 0, 0, 1, 0, 9, 2, 0, 1]));
    out
}
