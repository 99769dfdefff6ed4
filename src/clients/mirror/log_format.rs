//! Byte layout of the shadow log (F5.1, F5.2): the image that exists twice, in the writer's
//! local NVRAM and in the partner's mirror region, at the same offsets.
//!
//! All integers are little-endian. Every CRC is CRC32C (Castagnoli). Offsets in the tables are
//! relative to the start of the structure.
//!
//! # Image
//!
//! | offset         | length     | content                                            |
//! |----------------|------------|----------------------------------------------------|
//! | 0              | 64         | superblock                                         |
//! | 64             | 64         | checkpoint slot 0                                  |
//! | 128            | 64         | checkpoint slot 1                                  |
//! | 192            | `data_len` | circular data area of records                      |
//! | 192+`data_len` | 0..7       | unused (`data_len` = image length − 192, rounded down to 8) |
//!
//! A reader takes the data area's offset and length from the superblock (the offset at
//! least 192, both multiples of 8, the area at least 128 bytes and inside the image).
//!
//! # Superblock (64 bytes at offset 0)
//!
//! | offset | size | field                                                          |
//! |--------|------|----------------------------------------------------------------|
//! | 0      | 4    | magic `ILSL`                                                   |
//! | 4      | 2    | layout version, 1                                              |
//! | 6      | 2    | flags, 0                                                       |
//! | 8      | 8    | total length of the image in bytes                             |
//! | 16     | 8    | data area offset (192)                                         |
//! | 24     | 8    | data area length `L` (multiple of 8, at least 128)             |
//! | 32     | 8    | generation                                                     |
//! | 40     | 20   | reserved, 0                                                    |
//! | 60     | 4    | CRC32C of bytes 0..60                                          |
//!
//! The generation names one life of the log: a writer formatting a fresh log (after a reboot
//! that followed a giveback, say) uses a generation greater than any before it. Checkpoints and
//! records of another generation are never replayed, so the data area need not be cleared.
//!
//! # Checkpoint slot (64 bytes at offset 64 + 64 × slot)
//!
//! | offset | size | field                                                          |
//! |--------|------|----------------------------------------------------------------|
//! | 0      | 4    | magic `ILCP`                                                   |
//! | 4      | 4    | slot index (0 or 1), must match the slot's place               |
//! | 8      | 8    | generation (must equal the superblock's)                       |
//! | 16     | 8    | checkpoint number (0 at format, then +1; slot = number mod 2)  |
//! | 24     | 8    | `through`: every record with seq ≤ this is consumed             |
//! | 32     | 8    | offset in the data area where the scan for seq `through`+1 starts |
//! | 40     | 20   | reserved, 0                                                    |
//! | 60     | 4    | CRC32C of bytes 0..60                                          |
//!
//! Checkpoints are written alternately into the two slots; a reader takes the valid slot of
//! the superblock's generation with the higher number, so a torn checkpoint write leaves the
//! previous checkpoint in force.
//!
//! # Record (in the data area, 8-byte aligned)
//!
//! | offset | size  | field                                                        |
//! |--------|-------|--------------------------------------------------------------|
//! | 0      | 4     | magic `ILRC`                                                 |
//! | 4      | 2     | flags: bit 0 = wrap marker; other bits 0                     |
//! | 6      | 2     | reserved, 0                                                  |
//! | 8      | 8     | generation                                                   |
//! | 16     | 8     | seq (consecutive from 1 within a generation)                 |
//! | 24     | 4     | payload length `n`                                           |
//! | 28     | 4     | CRC32C of header bytes 0..28 followed by the payload         |
//! | 32     | `n`   | payload                                                      |
//! | 32+`n` | 0..7  | zero padding to the next multiple of 8 (not covered by the CRC) |
//!
//! Records are 8-byte aligned: the u64 header fields stay aligned and a small record wastes at
//! most 7 bytes (64-byte alignment would waste up to 63 per record and buys nothing: RDMA
//! WRITEs and the CRC are byte-granular).
//!
//! Wrap-around: a record never crosses the end of the data area. If fewer than 32 bytes
//! (one header) remain before the end, the next record starts at data offset 0 (an implicit
//! wrap, nothing written). Otherwise, if the record does not fit before the end, a **wrap
//! marker** is written where it would have started: a header with flag bit 0, payload length 0,
//! and the seq of the record that follows it at data offset 0. A reader that meets a valid
//! marker carrying the seq it expects continues at data offset 0.
//!
//! The largest record (header, payload and padding) is half the data area, so a record fits in
//! an empty log wherever the log's head happens to be.

use thiserror::Error;

/// Magic of the superblock.
pub const SUPERBLOCK_MAGIC: [u8; 4] = *b"ILSL";
/// Magic of a checkpoint slot.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"ILCP";
/// Magic of a record header (and of a wrap marker).
pub const RECORD_MAGIC: [u8; 4] = *b"ILRC";
/// The layout version this code writes and reads.
pub const LAYOUT_VERSION: u16 = 1;
/// Length of the superblock (at offset 0).
pub const SUPERBLOCK_LEN: usize = 64;
/// Length of one checkpoint slot.
pub const CHECKPOINT_SLOT_LEN: usize = 64;
/// Offsets of the two checkpoint slots.
pub const CHECKPOINT_SLOT_OFFSETS: [usize; 2] = [64, 128];
/// Offset of the data area in images this code formats.
pub const DATA_OFFSET: usize = 192;
/// Length of a record header (and of a wrap marker).
pub const RECORD_HEADER_LEN: usize = 32;
/// Alignment of records in the data area.
pub const RECORD_ALIGN: usize = 8;
/// Record flag: a wrap marker (the record with this seq starts at data offset 0).
pub const RECORD_FLAG_WRAP: u16 = 1;
/// The smallest data area.
pub const MIN_DATA_LEN: usize = 128;
/// The smallest image a shadow log can be formatted in.
pub const MIN_IMAGE_LEN: usize = DATA_OFFSET + MIN_DATA_LEN;

/// Why an image holds no readable shadow log.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LogImageError {
    /// The image is shorter than the layout needs.
    #[error("image of {len} bytes is shorter than the {need} the layout needs")]
    TooShort {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// No superblock magic at offset 0 (never formatted).
    #[error("no superblock magic")]
    SuperblockMagic,
    /// The superblock's CRC does not match (torn or corrupted).
    #[error("superblock checksum mismatch")]
    SuperblockChecksum,
    /// A layout version this code does not read.
    #[error("layout version {found} (this code reads {LAYOUT_VERSION})")]
    SuperblockVersion {
        /// The version found.
        found: u16,
    },
    /// A reserved superblock byte (40..60) is not zero.
    #[error("superblock reserved byte {offset} is {value:#04x}, not 0")]
    SuperblockReserved {
        /// Offset of the first non-zero reserved byte.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// Lengths or offsets in the superblock that do not describe a usable data area.
    #[error(
        "superblock geometry: total {total_len}, data area [{data_offset}, +{data_len}), \
         image {image_len}"
    )]
    SuperblockGeometry {
        /// Total length claimed.
        total_len: u64,
        /// Data area offset claimed.
        data_offset: u64,
        /// Data area length claimed.
        data_len: u64,
        /// Length of the image.
        image_len: usize,
    },
    /// Neither checkpoint slot is valid for the superblock's generation.
    #[error("no valid checkpoint of generation {generation}")]
    NoCheckpoint {
        /// The superblock's generation.
        generation: u64,
    },
}

/// A decoded superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Total image length.
    pub total_len: usize,
    /// Data area offset.
    pub data_offset: usize,
    /// Data area length.
    pub data_len: usize,
    /// Generation of the log.
    pub generation: u64,
}

/// A decoded checkpoint slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointSlot {
    /// Slot index (0 or 1).
    pub slot: usize,
    /// Generation.
    pub generation: u64,
    /// Checkpoint number.
    pub number: u64,
    /// Every record with seq ≤ `through` is consumed.
    pub through: u64,
    /// Offset in the data area where the scan for `through + 1` starts.
    pub next_offset: usize,
}

/// A decoded record header (or wrap marker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Flags ([`RECORD_FLAG_WRAP`]).
    pub flags: u16,
    /// The reserved field (0 when valid).
    pub reserved: u16,
    /// Generation.
    pub generation: u64,
    /// Sequence number.
    pub seq: u64,
    /// Payload length.
    pub len: u32,
    /// The stored CRC.
    pub crc: u32,
}

impl RecordHeader {
    /// Whether this is a wrap marker.
    pub fn is_wrap(&self) -> bool {
        self.flags & RECORD_FLAG_WRAP != 0
    }
}

/// Bytes a record with `payload_len` payload bytes occupies in the data area (header, payload,
/// padding), or `None` if that overflows.
pub fn record_size(payload_len: usize) -> Option<usize> {
    let raw = RECORD_HEADER_LEN.checked_add(payload_len)?;
    raw.checked_add(RECORD_ALIGN - 1)
        .map(|v| v & !(RECORD_ALIGN - 1))
}

/// The largest record size (header, payload, padding) a data area of `data_len` bytes takes.
pub fn max_record_size(data_len: usize) -> usize {
    (data_len / 2) & !(RECORD_ALIGN - 1)
}

/// The largest payload a data area of `data_len` bytes takes.
pub fn max_payload(data_len: usize) -> usize {
    max_record_size(data_len)
        .saturating_sub(RECORD_HEADER_LEN)
        .min(u32::MAX as usize)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Encodes a superblock.
pub fn encode_superblock(sb: &Superblock) -> [u8; SUPERBLOCK_LEN] {
    let mut b = [0u8; SUPERBLOCK_LEN];
    put(&mut b, 0, &SUPERBLOCK_MAGIC);
    put(&mut b, 4, &LAYOUT_VERSION.to_le_bytes());
    put(&mut b, 8, &(sb.total_len as u64).to_le_bytes());
    put(&mut b, 16, &(sb.data_offset as u64).to_le_bytes());
    put(&mut b, 24, &(sb.data_len as u64).to_le_bytes());
    put(&mut b, 32, &sb.generation.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    put(&mut b, 60, &crc.to_le_bytes());
    b
}

/// Decodes and checks the superblock at the start of `image`.
pub fn decode_superblock(image: &[u8]) -> Result<Superblock, LogImageError> {
    let b = image.get(..SUPERBLOCK_LEN).ok_or(LogImageError::TooShort {
        len: image.len(),
        need: SUPERBLOCK_LEN,
    })?;
    if b.get(..4) != Some(&SUPERBLOCK_MAGIC[..]) {
        return Err(LogImageError::SuperblockMagic);
    }
    if crc32c::crc32c(b.get(..60).unwrap_or_default()) != u32_at(b, 60) {
        return Err(LogImageError::SuperblockChecksum);
    }
    let version = u16_at(b, 4);
    if version != LAYOUT_VERSION {
        return Err(LogImageError::SuperblockVersion { found: version });
    }
    if let Some((i, &value)) = b
        .get(40..60)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .find(|(_, v)| **v != 0)
    {
        return Err(LogImageError::SuperblockReserved {
            offset: 40 + i,
            value,
        });
    }
    let (total_len, data_offset, data_len) = (u64_at(b, 8), u64_at(b, 16), u64_at(b, 24));
    let geometry = LogImageError::SuperblockGeometry {
        total_len,
        data_offset,
        data_len,
        image_len: image.len(),
    };
    let as_usize = |v: u64| usize::try_from(v).map_err(|_| geometry.clone());
    let (total, offset, len) = (
        as_usize(total_len)?,
        as_usize(data_offset)?,
        as_usize(data_len)?,
    );
    let end = offset.checked_add(len).ok_or_else(|| geometry.clone())?;
    let flags_ok = u16_at(b, 6) == 0;
    if !flags_ok
        || offset < DATA_OFFSET
        || offset % RECORD_ALIGN != 0
        || len % RECORD_ALIGN != 0
        || len < MIN_DATA_LEN
        || end > total
        || total > image.len()
    {
        return Err(geometry);
    }
    Ok(Superblock {
        total_len: total,
        data_offset: offset,
        data_len: len,
        generation: u64_at(b, 32),
    })
}

/// Encodes a checkpoint slot.
pub fn encode_checkpoint(cp: &CheckpointSlot) -> [u8; CHECKPOINT_SLOT_LEN] {
    let mut b = [0u8; CHECKPOINT_SLOT_LEN];
    put(&mut b, 0, &CHECKPOINT_MAGIC);
    put(&mut b, 4, &(cp.slot as u32).to_le_bytes());
    put(&mut b, 8, &cp.generation.to_le_bytes());
    put(&mut b, 16, &cp.number.to_le_bytes());
    put(&mut b, 24, &cp.through.to_le_bytes());
    put(&mut b, 32, &(cp.next_offset as u64).to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    put(&mut b, 60, &crc.to_le_bytes());
    b
}

/// Decodes checkpoint slot `slot` of `image` and checks it against the superblock: `None` if
/// it is absent, torn, of another generation, misplaced or points outside the data area.
pub fn decode_checkpoint(image: &[u8], sb: &Superblock, slot: usize) -> Option<CheckpointSlot> {
    let at = *CHECKPOINT_SLOT_OFFSETS.get(slot)?;
    let b = image.get(at..at + CHECKPOINT_SLOT_LEN)?;
    if b.get(..4) != Some(&CHECKPOINT_MAGIC[..])
        || crc32c::crc32c(b.get(..60)?) != u32_at(b, 60)
        || u32_at(b, 4) as usize != slot
        || b.get(40..60)?.iter().any(|&x| x != 0)
    {
        return None;
    }
    let next_offset = usize::try_from(u64_at(b, 32)).ok()?;
    let cp = CheckpointSlot {
        slot,
        generation: u64_at(b, 8),
        number: u64_at(b, 16),
        through: u64_at(b, 24),
        next_offset,
    };
    let placed = next_offset < sb.data_len && next_offset % RECORD_ALIGN == 0;
    (cp.generation == sb.generation && placed && cp.through < u64::MAX).then_some(cp)
}

/// The checkpoint in force: the valid slot with the higher number.
pub fn latest_checkpoint(image: &[u8], sb: &Superblock) -> Result<CheckpointSlot, LogImageError> {
    let slots = [0, 1].map(|s| decode_checkpoint(image, sb, s));
    match slots {
        [Some(a), Some(b)] => Ok(if b.number > a.number { b } else { a }),
        [Some(a), None] | [None, Some(a)] => Ok(a),
        [None, None] => Err(LogImageError::NoCheckpoint {
            generation: sb.generation,
        }),
    }
}

/// Encodes a record header; the CRC covers the header and `payload` (whose length it records).
pub fn encode_record_header(
    flags: u16,
    generation: u64,
    seq: u64,
    payload: &[u8],
) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    put(&mut b, 0, &RECORD_MAGIC);
    put(&mut b, 4, &flags.to_le_bytes());
    put(&mut b, 8, &generation.to_le_bytes());
    put(&mut b, 16, &seq.to_le_bytes());
    put(&mut b, 24, &(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..28]), payload);
    put(&mut b, 28, &crc.to_le_bytes());
    b
}

/// Decodes a record header from `bytes` (at least [`RECORD_HEADER_LEN`] long): `None` if the
/// magic is absent or the slice is short. Nothing is checked beyond the magic.
pub fn decode_record_header(bytes: &[u8]) -> Option<RecordHeader> {
    let b = bytes.get(..RECORD_HEADER_LEN)?;
    (b.get(..4) == Some(&RECORD_MAGIC[..])).then(|| RecordHeader {
        flags: u16_at(b, 4),
        reserved: u16_at(b, 6),
        generation: u64_at(b, 8),
        seq: u64_at(b, 16),
        len: u32_at(b, 24),
        crc: u32_at(b, 28),
    })
}

/// Whether `header_bytes` (the 32 header bytes) and `payload` match the header's CRC.
pub fn record_crc_matches(header_bytes: &[u8], payload: &[u8], stored: u32) -> bool {
    match header_bytes.get(..28) {
        Some(h) => crc32c::crc32c_append(crc32c::crc32c(h), payload) == stored,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            total_len: 4096,
            data_offset: DATA_OFFSET,
            data_len: 4096 - DATA_OFFSET,
            generation: 7,
        }
    }

    #[test]
    fn superblock_round_trips_and_every_bit_flip_is_rejected() {
        let mut image = vec![0u8; 4096];
        image[..SUPERBLOCK_LEN].copy_from_slice(&encode_superblock(&sb()));
        assert_eq!(decode_superblock(&image), Ok(sb()));
        for bit in 0..SUPERBLOCK_LEN * 8 {
            let mut bad = image.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = decode_superblock(&bad).expect_err("flipped bit accepted");
            if bit < 32 {
                assert_eq!(err, LogImageError::SuperblockMagic, "bit {bit}");
            } else {
                assert_eq!(err, LogImageError::SuperblockChecksum, "bit {bit}");
            }
        }
    }

    /// Found by fuzzing (log_image): non-zero reserved bytes were accepted (and a re-encoded
    /// superblock differed from the bytes it was read from).
    #[test]
    fn superblock_with_reserved_bytes_set_is_refused() {
        let mut image = vec![0u8; 4096];
        image[..SUPERBLOCK_LEN].copy_from_slice(&encode_superblock(&sb()));
        image[56] = 4;
        let crc = crc32c::crc32c(&image[..60]);
        image[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_superblock(&image),
            Err(LogImageError::SuperblockReserved {
                offset: 56,
                value: 4
            })
        );
    }

    #[test]
    fn superblock_with_hostile_geometry_is_refused() {
        let image_len = 4096;
        let cases = [
            (u64::MAX, DATA_OFFSET as u64, 1024),
            (4096, u64::MAX - 8, 1024),
            (4096, DATA_OFFSET as u64, u64::MAX - 7),
            (4096, 8, 1024),                      // overlaps the slots
            (4096, DATA_OFFSET as u64 + 4, 1024), // misaligned
            (4096, DATA_OFFSET as u64, 1020),     // length not a multiple of 8
            (4096, DATA_OFFSET as u64, 64),       // too small
            (8192, DATA_OFFSET as u64, 4096),     // longer than the image
            (4096, 4000, 1024),                   // past the total
        ];
        for (total, offset, len) in cases {
            let mut b = encode_superblock(&sb());
            b[8..16].copy_from_slice(&total.to_le_bytes());
            b[16..24].copy_from_slice(&offset.to_le_bytes());
            b[24..32].copy_from_slice(&len.to_le_bytes());
            let crc = crc32c::crc32c(&b[..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            let mut image = vec![0u8; image_len];
            image[..64].copy_from_slice(&b);
            assert!(
                matches!(
                    decode_superblock(&image),
                    Err(LogImageError::SuperblockGeometry { .. })
                ),
                "{total} {offset} {len}"
            );
        }
    }

    #[test]
    fn short_images_are_refused() {
        for len in 0..SUPERBLOCK_LEN {
            assert_eq!(
                decode_superblock(&vec![0; len]),
                Err(LogImageError::TooShort {
                    len,
                    need: SUPERBLOCK_LEN
                })
            );
        }
        // A valid superblock claiming more than the image holds.
        let image = encode_superblock(&sb());
        assert!(matches!(
            decode_superblock(&image),
            Err(LogImageError::SuperblockGeometry { .. })
        ));
    }

    #[test]
    fn checkpoint_slots_round_trip_and_every_bit_flip_invalidates_the_slot() {
        let sb = sb();
        let mut image = vec![0u8; 4096];
        image[..64].copy_from_slice(&encode_superblock(&sb));
        let cp = CheckpointSlot {
            slot: 1,
            generation: 7,
            number: 5,
            through: 42,
            next_offset: 800,
        };
        image[128..192].copy_from_slice(&encode_checkpoint(&cp));
        assert_eq!(decode_checkpoint(&image, &sb, 1), Some(cp));
        assert_eq!(decode_checkpoint(&image, &sb, 0), None);
        assert_eq!(latest_checkpoint(&image, &sb), Ok(cp));
        for bit in 0..CHECKPOINT_SLOT_LEN * 8 {
            let mut bad = image.clone();
            bad[128 + bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_checkpoint(&bad, &sb, 1), None, "bit {bit}");
            assert_eq!(
                latest_checkpoint(&bad, &sb),
                Err(LogImageError::NoCheckpoint { generation: 7 })
            );
        }
        // The same bytes in the other slot's place are not accepted there.
        let mut moved = image.clone();
        moved.copy_within(128..192, 64);
        assert_eq!(decode_checkpoint(&moved, &sb, 0), None);
        // Another generation, or an offset outside the data area, is ignored.
        for bad_cp in [
            CheckpointSlot {
                generation: 6,
                ..cp
            },
            CheckpointSlot {
                next_offset: sb.data_len,
                ..cp
            },
            CheckpointSlot {
                next_offset: 801,
                ..cp
            },
        ] {
            let mut bad = image.clone();
            bad[128..192].copy_from_slice(&encode_checkpoint(&bad_cp));
            assert_eq!(decode_checkpoint(&bad, &sb, 1), None);
        }
    }

    #[test]
    fn the_higher_checkpoint_number_wins() {
        let sb = sb();
        let mut image = vec![0u8; 4096];
        let a = CheckpointSlot {
            slot: 0,
            generation: 7,
            number: 8,
            through: 10,
            next_offset: 0,
        };
        let b = CheckpointSlot {
            slot: 1,
            number: 9,
            through: 12,
            ..a
        };
        image[64..128].copy_from_slice(&encode_checkpoint(&a));
        image[128..192].copy_from_slice(&encode_checkpoint(&b));
        assert_eq!(latest_checkpoint(&image, &sb), Ok(b));
        image[130] ^= 4;
        assert_eq!(latest_checkpoint(&image, &sb), Ok(a));
    }

    #[test]
    fn record_sizes() {
        assert_eq!(record_size(0), Some(32));
        assert_eq!(record_size(1), Some(40));
        assert_eq!(record_size(8), Some(40));
        assert_eq!(record_size(9), Some(48));
        assert_eq!(record_size(usize::MAX), None);
        assert_eq!(record_size(usize::MAX - 32), None);
        assert_eq!(max_record_size(1000), 496);
        assert_eq!(max_payload(1000), 464);
        assert_eq!(max_payload(16), 0);
    }

    #[test]
    fn record_header_round_trips() {
        let h = encode_record_header(0, 3, 99, b"hello");
        let d = decode_record_header(&h).unwrap();
        assert_eq!((d.generation, d.seq, d.len, d.flags), (3, 99, 5, 0));
        assert!(record_crc_matches(&h, b"hello", d.crc));
        assert!(!record_crc_matches(&h, b"hellp", d.crc));
        assert!(decode_record_header(&h[..31]).is_none());
        let w = encode_record_header(RECORD_FLAG_WRAP, 3, 100, &[]);
        assert!(decode_record_header(&w).unwrap().is_wrap());
    }
}
