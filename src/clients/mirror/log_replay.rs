//! Reading a shadow log image (F5.2): the survivor replays the partner's mirror region after a
//! takeover, and a restarted writer reads its own NVRAM. The image was written by another node
//! (or torn by a crash), so nothing in it is trusted: every length and offset is checked before
//! it is used, and the scan stops at the first record that is not the next one of the log.
//!
//! The scan starts at the checkpoint in force (see [`log_format`](super::log_format)) and
//! follows records of the superblock's generation with consecutive sequence numbers, through
//! wrap markers and implicit wraps, for at most one lap of the data area. It stops at the first
//! position that holds no record ([`ScanStop::Absent`]), a partly written one
//! ([`ScanStop::Torn`]), a valid record of an older lap or generation ([`ScanStop::Stale`]), a
//! record that checks but breaks the layout rules ([`ScanStop::Invalid`]), or when the records
//! read fill the data area ([`ScanStop::Lapped`]).

use super::error::LogError;
use super::log_format::{
    decode_record_header, decode_superblock, latest_checkpoint, record_crc_matches, record_size,
    CheckpointSlot, LogImageError, Superblock, RECORD_FLAG_WRAP, RECORD_HEADER_LEN,
};

/// A place in the log: a record's generation and sequence number. Positions order by
/// generation, then seq (generations increase from one life of a log to the next).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// Generation of the log.
    pub generation: u64,
    /// Sequence number within the generation (records count from 1; 0 is "before the first").
    pub seq: u64,
}

/// Why a scan ended. Offsets are byte offsets in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// No record magic where the next record would be (never written, or cleared).
    Absent {
        /// Where the next record would start.
        offset: usize,
    },
    /// A record header whose CRC does not match, or whose length runs past the end of the
    /// data area: it was partly written when the writer or the link failed.
    Torn {
        /// Where the record starts.
        offset: usize,
    },
    /// A complete record that is not the next one: another generation, or a sequence number
    /// of an older lap of the circular area.
    Stale {
        /// Where the record starts.
        offset: usize,
        /// Its generation.
        generation: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A record whose CRC matches but that breaks the layout rules (unknown flags, non-zero
    /// reserved bits, a wrap marker with a payload or right after another one).
    Invalid {
        /// Where the record starts.
        offset: usize,
    },
    /// The records read fill the data area, up to less than one header: a log that full has
    /// no room for another record.
    Lapped {
        /// Where the scan would have continued.
        offset: usize,
    },
}

/// One record found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScannedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Distance from the checkpoint's offset to where this append began (its wrap marker or
    /// implicit wrap, if any), counted along the circular area.
    pub start: u64,
    /// Distance from the checkpoint's offset to the record header.
    pub pos: u64,
    /// Distance from the checkpoint's offset to the end of the record (padding included).
    pub end: u64,
    /// Offset of the payload in the image.
    pub payload_offset: usize,
    /// Payload length.
    pub len: usize,
}

/// What a scan found.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    pub superblock: Superblock,
    pub checkpoint: CheckpointSlot,
    pub records: Vec<ScannedRecord>,
    /// Distance from the checkpoint's offset to where the next append begins.
    pub end: u64,
    pub stop: ScanStop,
}

/// Scans `image`: superblock, checkpoint in force, then the records after it.
pub(crate) fn scan(image: &[u8]) -> Result<Scan, LogImageError> {
    let superblock = decode_superblock(image)?;
    let checkpoint = latest_checkpoint(image, &superblock)?;
    let data_offset = superblock.data_offset;
    // decode_superblock checked that the data area lies inside the image.
    let data = image
        .get(data_offset..data_offset + superblock.data_len)
        .ok_or(LogImageError::TooShort {
            len: image.len(),
            need: data_offset + superblock.data_len,
        })?;
    let lap = data.len() as u64;
    let mut off = checkpoint.next_offset;
    let mut dist = 0u64;
    let mut expected = checkpoint.through + 1;
    let mut records = Vec::new();
    let stop = 'scan: loop {
        let start = dist;
        let mut after_marker = false;
        // Find the header of record `expected`: follow at most one wrap (implicit or marker).
        let header = loop {
            if data.len() - off < RECORD_HEADER_LEN {
                dist += (data.len() - off) as u64;
                off = 0;
            }
            if dist + RECORD_HEADER_LEN as u64 > lap {
                break 'scan ScanStop::Lapped {
                    offset: data_offset + off,
                };
            }
            let at = data_offset + off;
            let header_bytes = data.get(off..off + RECORD_HEADER_LEN).unwrap_or_default();
            let Some(h) = decode_record_header(header_bytes) else {
                break 'scan ScanStop::Absent { offset: at };
            };
            let room = data.len() - off - RECORD_HEADER_LEN;
            let len = h.len as usize;
            if len > room {
                break 'scan ScanStop::Torn { offset: at };
            }
            let payload = data
                .get(off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + len)
                .unwrap_or_default();
            if !record_crc_matches(header_bytes, payload, h.crc) {
                break 'scan ScanStop::Torn { offset: at };
            }
            if h.flags & !RECORD_FLAG_WRAP != 0 || h.reserved != 0 || (h.is_wrap() && len != 0) {
                break 'scan ScanStop::Invalid { offset: at };
            }
            if h.generation != superblock.generation || h.seq != expected {
                break 'scan ScanStop::Stale {
                    offset: at,
                    generation: h.generation,
                    seq: h.seq,
                };
            }
            if !h.is_wrap() {
                break h;
            }
            if after_marker || off == 0 {
                break 'scan ScanStop::Invalid { offset: at };
            }
            after_marker = true;
            dist += (data.len() - off) as u64;
            off = 0;
        };
        let len = header.len as usize;
        // `off` and the area's length are multiples of 8 and the header and payload fit before
        // the end, so the padded record does too.
        let size = record_size(len).unwrap_or(usize::MAX);
        if dist + size as u64 > lap {
            break ScanStop::Lapped {
                offset: data_offset + off,
            };
        }
        records.push(ScannedRecord {
            seq: expected,
            start,
            pos: dist,
            end: dist + size as u64,
            payload_offset: data_offset + off + RECORD_HEADER_LEN,
            len,
        });
        dist += size as u64;
        off += size;
        if off == data.len() {
            off = 0;
        }
        let Some(next) = expected.checked_add(1) else {
            break ScanStop::Invalid {
                offset: data_offset + off,
            };
        };
        expected = next;
    };
    let end = records.last().map_or(0, |r| r.end);
    Ok(Scan {
        superblock,
        checkpoint,
        records,
        end,
        stop,
    })
}

/// A record found by [`replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Payload.
    pub payload: Vec<u8>,
}

/// What [`replay`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Generation of the log.
    pub generation: u64,
    /// `through` of the checkpoint in force: records up to this seq were consumed.
    pub checkpoint: u64,
    /// The records to replay, in order, with consecutive sequence numbers.
    pub records: Vec<ReplayedRecord>,
    /// Whether a record after the last good one was partly written (and discarded).
    pub torn_tail: bool,
    /// Why the scan ended.
    pub stop: ScanStop,
}

impl Replay {
    /// The position of the last record replayed, if any.
    pub fn last(&self) -> Option<LogPosition> {
        self.records.last().map(|r| LogPosition {
            generation: self.generation,
            seq: r.seq,
        })
    }
}

/// Reads the records to replay from a shadow log image (the partner's mirror region after a
/// takeover, or a writer's own NVRAM after a restart): those after the checkpoint in force and
/// after `after`, in order. `after` is the last position already replayed (see
/// [`ReplayCursor`]); records at or before it are skipped, so a second takeover does not
/// replay them again.
///
/// An image without a valid superblock or checkpoint gives [`LogError::Replay`]; an
/// image damaged further on only ends the scan early ([`Replay::stop`]).
pub fn replay(image: &[u8], after: Option<LogPosition>) -> Result<Replay, LogError> {
    let found = scan(image).map_err(LogError::Replay)?;
    Ok(replay_from_scan(image, &found, after))
}

/// The records of `found` (a scan of `image`) after `after`.
pub(crate) fn replay_from_scan(image: &[u8], found: &Scan, after: Option<LogPosition>) -> Replay {
    let generation = found.superblock.generation;
    let records = found
        .records
        .iter()
        .filter(|r| {
            after.is_none_or(|a| {
                LogPosition {
                    generation,
                    seq: r.seq,
                } > a
            })
        })
        .map(|r| ReplayedRecord {
            seq: r.seq,
            payload: image
                .get(r.payload_offset..r.payload_offset + r.len)
                .unwrap_or_default()
                .to_vec(),
        })
        .collect();
    Replay {
        generation,
        checkpoint: found.checkpoint.through,
        records,
        torn_tail: matches!(found.stop, ScanStop::Torn { .. }),
        stop: found.stop,
    }
}

/// The survivor's marker of what it already replayed: pass its position as `after` to
/// [`replay`].
///
/// The survivor stores the cursor in its own NVRAM together with (atomically with) the effect
/// of the records it replayed, e.g. in the same consistency point, in two alternating slots of
/// [`ReplayCursor::ENCODED_LEN`] bytes; [`ReplayCursor::latest`] picks the newer valid slot,
/// so a torn cursor write leaves the previous one in force.
///
/// A takeover replay stores the cursor after each record it applied, and once more with
/// `complete` when it went through the whole copy: a survivor that failed inside its replay
/// leaves an incomplete cursor, and its partner applies the records after it itself.
///
/// Encoding (32 bytes, little-endian): magic `ILRP` (4), flags (1: bit 0 complete, other bits
/// zero), reserved 0 (3), generation (8), seq (8), reserved 0 (4), CRC32C of bytes 0..28 (4).
/// Cursors order by position, then an incomplete one before a complete one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplayCursor {
    /// The last position replayed (or the copy's checkpoint, if no record followed it).
    pub position: LogPosition,
    /// The replay went through the whole copy (only a takeover's partner cursor says so).
    pub complete: bool,
}

/// Why bytes are not a replay cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayCursorError {
    /// Fewer than [`ReplayCursor::ENCODED_LEN`] bytes.
    #[error("{len} bytes, a cursor has {}", ReplayCursor::ENCODED_LEN)]
    Short {
        /// Bytes present.
        len: usize,
    },
    /// No cursor magic.
    #[error("no cursor magic")]
    Magic,
    /// CRC mismatch or non-zero reserved bytes (torn or corrupted).
    #[error("checksum mismatch")]
    Checksum,
}

impl ReplayCursor {
    /// Encoded length.
    pub const ENCODED_LEN: usize = 32;
    const MAGIC: [u8; 4] = *b"ILRP";

    /// The cursor after everything `replay` returned (incomplete: the caller says when the
    /// whole replay is done), or `None` if it returned nothing.
    pub fn after(replay: &Replay) -> Option<ReplayCursor> {
        replay.last().map(|position| ReplayCursor {
            position,
            complete: false,
        })
    }

    /// Encodes the cursor.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[..4].copy_from_slice(&Self::MAGIC);
        b[4] = u8::from(self.complete);
        b[8..16].copy_from_slice(&self.position.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.position.seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a cursor from the first [`ReplayCursor::ENCODED_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ReplayCursor, LogError> {
        let err = |reason| LogError::DecodeReplayCursor { reason };
        let b: &[u8; Self::ENCODED_LEN] = bytes
            .get(..Self::ENCODED_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(err(ReplayCursorError::Short { len: bytes.len() }))?;
        if b[..4] != Self::MAGIC {
            return Err(err(ReplayCursorError::Magic));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[28..]);
        let reserved_zero = b[4] & !1 == 0 && b[5..8].iter().chain(&b[24..28]).all(|&x| x == 0);
        if crc32c::crc32c(&b[..28]) != u32::from_le_bytes(crc) || !reserved_zero {
            return Err(err(ReplayCursorError::Checksum));
        }
        Ok(ReplayCursor {
            position: LogPosition {
                generation: word(8),
                seq: word(16),
            },
            complete: b[4] & 1 != 0,
        })
    }

    /// The newer valid cursor of two alternating slots, if either is valid.
    pub fn latest(slot_a: &[u8], slot_b: &[u8]) -> Option<ReplayCursor> {
        let a = ReplayCursor::decode(slot_a).ok();
        let b = ReplayCursor::decode(slot_b).ok();
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::log::ShadowLog;
    use crate::clients::mirror::log_format::{
        encode_record_header, CHECKPOINT_SLOT_OFFSETS, DATA_OFFSET, RECORD_FLAG_WRAP,
    };
    use crate::clients::mirror::nvram::{MemoryNvram, NvramBacking};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Hands out, copies and completes every queued mirror write.
    fn sync(log: &mut ShadowLog<MemoryNvram>, mirror: &mut [u8]) {
        while let Some(w) = log.poll_mirror_write() {
            let range = w.offset..w.offset + w.len;
            mirror[range.clone()].copy_from_slice(&log.local().bytes()[range]);
            log.handle_mirror_complete(w.id);
        }
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
    }

    /// A log of `size` bytes with `lens.len()` records, mirrored.
    fn log_with(size: usize, lens: &[usize]) -> (ShadowLog<MemoryNvram>, Vec<u8>) {
        let mut log = ShadowLog::format(MemoryNvram::new(size), 5).unwrap();
        let mut mirror = vec![0u8; size];
        for (i, &len) in lens.iter().enumerate() {
            log.append(&payload(i as u64 + 1, len)).unwrap();
        }
        sync(&mut log, &mut mirror);
        (log, mirror)
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn round_trip_in_both_images() {
        let lens = [0, 1, 7, 8, 9, 100, 1000];
        let (log, mirror) = log_with(8192, &lens);
        for image in [&mirror[..], log.local().bytes()] {
            let r = replay(image, None).unwrap();
            assert_eq!(r.generation, 5);
            assert_eq!(r.checkpoint, 0);
            assert!(!r.torn_tail);
            assert!(matches!(r.stop, ScanStop::Absent { .. }));
            assert_eq!(seqs(&r), (1..=7).collect::<Vec<_>>());
            for (rec, &len) in r.records.iter().zip(&lens) {
                assert_eq!(rec.payload, payload(rec.seq, len));
            }
        }
        assert_eq!(mirror, log.local().bytes());
    }

    #[test]
    fn every_bit_flip_of_a_record_stops_the_scan_there() {
        let (_, mirror) = log_with(4096, &[10, 21, 5]);
        let second = DATA_OFFSET + 48; // the first record takes 32 + 10 -> 48 bytes
        let second_len = 32 + 21; // padding (3 bytes) is not covered
        for bit in 0..second_len * 8 {
            let mut bad = mirror.clone();
            bad[second + bit / 8] ^= 1 << (bit % 8);
            let r = replay(&bad, None).unwrap();
            assert_eq!(seqs(&r), vec![1], "bit {bit}");
            if bit < 32 {
                assert_eq!(r.stop, ScanStop::Absent { offset: second }, "bit {bit}");
                assert!(!r.torn_tail);
            } else {
                assert_eq!(r.stop, ScanStop::Torn { offset: second }, "bit {bit}");
                assert!(r.torn_tail);
            }
        }
        for pad in second + second_len..second + 56 {
            let mut bad = mirror.clone();
            bad[pad] ^= 0xff;
            assert_eq!(seqs(&replay(&bad, None).unwrap()), vec![1, 2, 3]);
        }
    }

    #[test]
    fn a_flipped_checkpoint_falls_back_to_the_other_slot() {
        let (mut log, mut mirror) = log_with(4096, &[10, 10, 10, 10]);
        log.checkpoint(LogPosition {
            generation: 5,
            seq: 2,
        })
        .unwrap();
        sync(&mut log, &mut mirror);
        assert_eq!(seqs(&replay(&mirror, None).unwrap()), vec![3, 4]);
        // Checkpoint 1 went to slot 1; without it, checkpoint 0 (slot 0) is in force.
        for bit in 0..64 * 8 {
            let mut bad = mirror.clone();
            bad[CHECKPOINT_SLOT_OFFSETS[1] + bit / 8] ^= 1 << (bit % 8);
            let r = replay(&bad, None).unwrap();
            assert_eq!((r.checkpoint, seqs(&r)), (0, vec![1, 2, 3, 4]), "bit {bit}");
        }
        let mut both = mirror.clone();
        both[CHECKPOINT_SLOT_OFFSETS[0]] ^= 1;
        both[CHECKPOINT_SLOT_OFFSETS[1] + 20] ^= 1;
        assert!(matches!(
            replay(&both, None),
            Err(LogError::Replay(LogImageError::NoCheckpoint {
                generation: 5
            }))
        ));
    }

    #[test]
    fn truncated_images_never_panic_and_are_refused() {
        let (_, mirror) = log_with(2048, &[100, 200, 300]);
        for len in 0..mirror.len() {
            assert!(replay(&mirror[..len], None).is_err(), "length {len}");
        }
        assert_eq!(seqs(&replay(&mirror, None).unwrap()), vec![1, 2, 3]);
        // A longer region than the log is fine.
        let mut longer = mirror.clone();
        longer.extend_from_slice(&[0xAB; 100]);
        assert_eq!(seqs(&replay(&longer, None).unwrap()), vec![1, 2, 3]);
    }

    /// Writes a header (and payload) at data offset `off` with a correct CRC.
    fn plant(image: &mut [u8], off: usize, flags: u16, generation: u64, seq: u64, p: &[u8]) {
        let h = encode_record_header(flags, generation, seq, p);
        let at = DATA_OFFSET + off;
        image[at..at + 32].copy_from_slice(&h);
        image[at + 32..at + 32 + p.len()].copy_from_slice(p);
    }

    #[test]
    fn hostile_and_stale_headers_stop_the_scan_with_their_reason() {
        let (_, mirror) = log_with(4096, &[8]);
        let next = 40; // data offset of seq 2
        let at = DATA_OFFSET + next;
        let data_len = 4096 - DATA_OFFSET;
        let case = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut image = mirror.clone();
            f(&mut image);
            let r = replay(&image, None).unwrap();
            assert_eq!(seqs(&r), vec![1]);
            r.stop
        };
        for len in [
            u32::MAX,
            u32::MAX - 31,
            (data_len - next - 31) as u32,
            1 << 31,
        ] {
            let stop = case(&|img| {
                plant(img, next, 0, 5, 2, &[]);
                img[at + 24..at + 28].copy_from_slice(&len.to_le_bytes());
            });
            assert_eq!(stop, ScanStop::Torn { offset: at }, "len {len}");
        }
        assert_eq!(
            case(&|img| plant(img, next, 2, 5, 2, b"x")),
            ScanStop::Invalid { offset: at }
        );
        assert_eq!(
            case(&|img| plant(img, next, RECORD_FLAG_WRAP, 5, 2, b"x")),
            ScanStop::Invalid { offset: at }
        );
        assert_eq!(
            case(&|img| plant(img, next, 0, 4, 2, b"x")),
            ScanStop::Stale {
                offset: at,
                generation: 4,
                seq: 2
            }
        );
        assert_eq!(
            case(&|img| plant(img, next, 0, 5, 1, b"x")),
            ScanStop::Stale {
                offset: at,
                generation: 5,
                seq: 1
            }
        );
        assert_eq!(
            case(&|img| plant(img, next, 0, 5, 3, b"x")),
            ScanStop::Stale {
                offset: at,
                generation: 5,
                seq: 3
            }
        );
        // A wrap marker followed by another marker at offset 0 (record 1 is checkpointed).
        let mut image = mirror.clone();
        let cp = crate::clients::mirror::log_format::CheckpointSlot {
            slot: 1,
            generation: 5,
            number: 9,
            through: 1,
            next_offset: next,
        };
        let enc = crate::clients::mirror::log_format::encode_checkpoint(&cp);
        image[128..192].copy_from_slice(&enc);
        plant(&mut image, next, RECORD_FLAG_WRAP, 5, 2, &[]);
        plant(&mut image, 0, RECORD_FLAG_WRAP, 5, 2, &[]);
        let r = replay(&image, None).unwrap();
        assert!(r.records.is_empty());
        assert_eq!(
            r.stop,
            ScanStop::Invalid {
                offset: DATA_OFFSET
            }
        );
        // A seq at the end of the number space does not overflow.
        let mut image = mirror.clone();
        let cp = crate::clients::mirror::log_format::CheckpointSlot {
            slot: 1,
            generation: 5,
            number: 9,
            through: u64::MAX - 1,
            next_offset: next,
        };
        let enc = crate::clients::mirror::log_format::encode_checkpoint(&cp);
        image[128..192].copy_from_slice(&enc);
        plant(&mut image, next, 0, 5, u64::MAX, b"z");
        let r = replay(&image, None).unwrap();
        assert_eq!(seqs(&r), vec![u64::MAX]);
        assert!(matches!(r.stop, ScanStop::Invalid { .. }));
    }

    #[test]
    fn random_garbage_never_panics() {
        let (_, mirror) = log_with(2048, &[50, 60, 70, 80]);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..3000 {
            let mut image = mirror.clone();
            let flips = rng.gen_range(1..16);
            for _ in 0..flips {
                let i = rng.gen_range(DATA_OFFSET..image.len());
                image[i] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                // A random header with a valid CRC somewhere.
                let off = rng.gen_range(0..(2048 - DATA_OFFSET - 40) / 8) * 8;
                let len = rng.gen_range(0..8);
                plant(
                    &mut image,
                    off,
                    rng.gen_range(0..2),
                    5,
                    rng.gen_range(0..8),
                    &[7; 8][..len],
                );
            }
            if let Ok(r) = replay(&image, None) {
                let s = seqs(&r);
                assert!(s.iter().copied().eq(1..=s.len() as u64));
            }
        }
        for _ in 0..300 {
            let mut image = vec![0u8; rng.gen_range(0..600)];
            rng.fill(&mut image[..]);
            assert!(replay(&image, None).is_err());
        }
    }

    #[test]
    fn wrap_markers_and_implicit_wraps_are_followed() {
        let size = DATA_OFFSET + 512;
        let lap = 512u64;
        let mut log = ShadowLog::format(MemoryNvram::new(size), 5).unwrap();
        let mut mirror = vec![0u8; size];
        let mut rng = StdRng::seed_from_u64(3);
        let (mut markers, mut implicit) = (0, 0);
        for _ in 0..400 {
            let len = rng.gen_range(0..=120);
            let room = lap - log.head() % lap;
            let rec = crate::clients::mirror::log_format::record_size(len).unwrap() as u64;
            let pos = log.append(&payload(log.stats().appended + 1, len)).unwrap();
            if room < 32 {
                implicit += 1;
            } else if rec > room {
                markers += 1;
            }
            sync(&mut log, &mut mirror);
            let r = replay(&mirror, None).unwrap();
            assert_eq!(seqs(&r), (r.checkpoint + 1..=pos.seq).collect::<Vec<_>>());
            assert!(
                matches!(
                    r.stop,
                    ScanStop::Stale { .. } | ScanStop::Absent { .. } | ScanStop::Lapped { .. }
                ),
                "{:?} head {} {:?}",
                r.stop,
                log.head() % lap,
                seqs(&r)
            );
            for rec in &r.records {
                assert_eq!(rec.payload, payload(rec.seq, rec.payload.len()));
            }
            // Keep one record live.
            if pos.seq > 1 {
                log.checkpoint(LogPosition {
                    generation: 5,
                    seq: pos.seq - 1,
                })
                .unwrap();
                sync(&mut log, &mut mirror);
            }
            assert_eq!(mirror, log.local().bytes());
        }
        assert!(
            markers > 10 && implicit > 3,
            "{markers} markers, {implicit} implicit"
        );
    }

    #[test]
    fn after_skips_what_was_replayed_and_cursors_round_trip() {
        let (_, mirror) = log_with(4096, &[5, 5, 5, 5, 5]);
        let first = replay(&mirror, None).unwrap();
        assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5]);
        let cursor = ReplayCursor {
            position: LogPosition {
                generation: 5,
                seq: 3,
            },
            complete: false,
        };
        let r = replay(&mirror, Some(cursor.position)).unwrap();
        assert_eq!(seqs(&r), vec![4, 5]);
        let done = ReplayCursor::after(&r).unwrap();
        assert!(replay(&mirror, Some(done.position))
            .unwrap()
            .records
            .is_empty());
        // Cursors of older generations skip nothing, of newer ones everything.
        let old = LogPosition {
            generation: 4,
            seq: 99,
        };
        assert_eq!(seqs(&replay(&mirror, Some(old)).unwrap()).len(), 5);
        let newer = LogPosition {
            generation: 6,
            seq: 0,
        };
        assert!(replay(&mirror, Some(newer)).unwrap().records.is_empty());

        let enc = cursor.encode();
        assert_eq!(ReplayCursor::decode(&enc).unwrap(), cursor);
        let whole = ReplayCursor {
            complete: true,
            ..cursor
        };
        assert_eq!(ReplayCursor::decode(&whole.encode()).unwrap(), whole);
        assert!(whole > cursor && whole < ReplayCursor::after(&first).unwrap());
        for bit in 0..ReplayCursor::ENCODED_LEN * 8 {
            let mut bad = enc;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(ReplayCursor::decode(&bad).is_err(), "bit {bit}");
        }
        for len in 0..ReplayCursor::ENCODED_LEN {
            assert!(matches!(
                ReplayCursor::decode(&enc[..len]),
                Err(LogError::DecodeReplayCursor {
                    reason: ReplayCursorError::Short { .. }
                })
            ));
        }
        let mut torn = done.encode();
        torn[20] ^= 0x40;
        assert_eq!(ReplayCursor::latest(&enc, &done.encode()), Some(done));
        assert_eq!(ReplayCursor::latest(&enc, &torn), Some(cursor));
        assert_eq!(ReplayCursor::latest(&torn, &[]), None);
    }

    #[test]
    fn an_exactly_full_log_ends_with_a_lap() {
        // Data area 256 bytes, records of 64 bytes: four fill it.
        let size = DATA_OFFSET + 256;
        let mut log = ShadowLog::format(MemoryNvram::new(size), 5).unwrap();
        let mut mirror = vec![0u8; size];
        for seq in 1..=4 {
            log.append(&payload(seq, 32)).unwrap();
        }
        assert!(matches!(
            log.append(&payload(5, 0)),
            Err(LogError::Full {
                needed: 32,
                free: 0
            })
        ));
        sync(&mut log, &mut mirror);
        let r = replay(&mirror, None).unwrap();
        assert_eq!(seqs(&r), vec![1, 2, 3, 4]);
        assert_eq!(
            r.stop,
            ScanStop::Lapped {
                offset: DATA_OFFSET
            }
        );
    }
}
