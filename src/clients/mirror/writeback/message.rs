//! The write-back messages (RQR, RTR, DataSent, MDA, Reject, Destaged, DestageAck, Held) and
//! their encoding (all integers little-endian). Decoding checks every field: a partner's message is never trusted.
//!
//! Every message starts with the same 24 bytes:
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0      | 1    | kind: 1 RQR, 2 RTR, 3 DataSent, 4 MDA, 5 Reject, 6 Destaged, 7 DestageAck, 8 Held |
//! | 1      | 3    | zero                                                          |
//! | 4      | 4    | RIE index (the primary's, and the mirror RIE reserved for it) |
//! | 8      | 8    | request id (1..=2^62-1)                                       |
//! | 16     | 8    | incarnation                                                   |
//!
//! RTR, DataSent and MDA are exactly those 24 bytes. RQR (`40 + 4 × blocks` bytes, at most
//! 1064) goes on:
//!
//! | offset | size        | field                                                     |
//! |--------|-------------|-----------------------------------------------------------|
//! | 24     | 8           | first block (first + blocks - 1 <= 2^46 - 1)              |
//! | 32     | 2           | unit                                                      |
//! | 34     | 2           | block count (1..=256)                                     |
//! | 36     | 2           | old blocks: how many blocks had data on the primary (<= count; a cross-check) |
//! | 38     | 2           | zero                                                      |
//! | 40     | 4 × count   | new buffer index of each block, in block order            |
//!
//! Reject (32 bytes): offset 24 the [`RejectReason`] (1 bad RIE, 2 bad buffer, 3 range busy,
//! 4 bad range), then 7 zero bytes.
//!
//! Destaged and DestageAck name no RIE (RIE index 0) and, in the request field, the primary's
//! destage notice id. DestageAck is the 24 bytes; Destaged (40 bytes) goes on: offset 24 the
//! block (<= 2^46 - 1, 8 bytes), offset 32 the unit (2 bytes), then 6 zero bytes.
//!
//! Held (40 bytes) answers an RQR (its request and RIE) like a reject: offset 24 the block
//! (<= 2^46 - 1, 8 bytes), offset 32 the unit (2 bytes), 2 zero bytes, offset 36 the buffer
//! (4 bytes): a new buffer of the RQR that holds the mirror's settled copy of that block.
//!
//! Any other length, kind, reason, non-zero padding or out-of-range field is a typed error.

use super::RequestId;
use crate::clients::mirror::atomic::{
    BufferIndex, RieIndex, UnitId, MAX_ATOMIC_BLOCKS, MAX_BLOCK_ADDRESS, MAX_REQUEST_TAG,
};
use crate::clients::mirror::error::WriteBackMessageError;

/// Kind byte of [`Message::Rqr`].
pub const KIND_RQR: u8 = 1;
/// Kind byte of [`Message::Rtr`].
pub const KIND_RTR: u8 = 2;
/// Kind byte of [`Message::DataSent`].
pub const KIND_DATA_SENT: u8 = 3;
/// Kind byte of [`Message::Mda`].
pub const KIND_MDA: u8 = 4;
/// Kind byte of [`Message::Reject`].
pub const KIND_REJECT: u8 = 5;
/// Bytes of the common head (and of RTR, DataSent and MDA).
pub const HEAD_LEN: usize = 24;
/// Bytes of an RQR before its buffer list.
pub const RQR_FIXED_LEN: usize = 40;
/// Bytes of a reject.
pub const REJECT_LEN: usize = 32;
/// Kind byte of [`Message::Destaged`].
pub const KIND_DESTAGED: u8 = 6;
/// Kind byte of [`Message::DestageAck`].
pub const KIND_DESTAGE_ACK: u8 = 7;
/// Bytes of a Destaged.
pub const DESTAGED_LEN: usize = 40;
/// Kind byte of [`Message::Held`].
pub const KIND_HELD: u8 = 8;
/// Bytes of a Held.
pub const HELD_LEN: usize = 40;
/// Bytes of the longest message (an RQR of 256 blocks).
pub const MAX_MESSAGE_LEN: usize = RQR_FIXED_LEN + 4 * MAX_ATOMIC_BLOCKS;

/// The request, RIE and incarnation every message names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestRef {
    /// The request.
    pub request: RequestId,
    /// Its RIE on both sides.
    pub rie: RieIndex,
    /// The sender's path incarnation.
    pub incarnation: u64,
}

/// ReQuest Read: the primary asks the mirror to take a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rqr {
    /// Request, RIE, and the primary's incarnation (the least the mirror must be at).
    pub at: RequestRef,
    /// The unit.
    pub unit: UnitId,
    /// First block.
    pub first_block: u64,
    /// Blocks that had data on the primary (a cross-check of the mirror's own view).
    pub old_blocks: u16,
    /// New buffer of each block (the same index on both sides).
    pub new_buffers: Vec<BufferIndex>,
}

/// Why the mirror refused an RQR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The RIE index is out of the mirror's range.
    BadRie = 1,
    /// A buffer index is out of range, repeated, or not free on the mirror.
    BadBuffer = 2,
    /// A block is held by another write on the mirror.
    RangeBusy = 3,
    /// The block range is invalid.
    BadRange = 4,
}

impl RejectReason {
    fn from_byte(b: u8) -> Option<RejectReason> {
        Some(match b {
            1 => RejectReason::BadRie,
            2 => RejectReason::BadBuffer,
            3 => RejectReason::RangeBusy,
            4 => RejectReason::BadRange,
            _ => return None,
        })
    }
}

/// A write-back message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Primary → mirror: take this write.
    Rqr(Rqr),
    /// Mirror → primary: Ready To Receive the data.
    Rtr(RequestRef),
    /// Primary → mirror: the RDMA WRITEs of the data completed.
    DataSent(RequestRef),
    /// Mirror → primary: Mirror Data Absorbed.
    Mda(RequestRef),
    /// Mirror → primary: the RQR cannot be taken.
    Reject(RequestRef, RejectReason),
    /// Primary → mirror: the block is on disk; free its copy (notice id in `request`).
    Destaged(RequestRef, BlockRef),
    /// Mirror → primary: the Destaged notice was handled in the incarnation it carries.
    DestageAck(RequestRef),
    /// Mirror → primary: the RQR cannot be taken (like a [`Message::Reject`] of
    /// [`RejectReason::BadBuffer`]) because its new buffer `buffer` holds the mirror's settled
    /// copy of the block: a copy the primary no longer has in that buffer, which the mirror
    /// keeps until the primary mirrors the block again or destages it.
    Held(RequestRef, BlockRef, BufferIndex),
}

/// A block of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// The unit.
    pub unit: UnitId,
    /// The block address.
    pub block: u64,
}

impl Message {
    /// The request, RIE and incarnation.
    pub fn request_ref(&self) -> &RequestRef {
        match self {
            Message::Rqr(q) => &q.at,
            Message::Rtr(r)
            | Message::DataSent(r)
            | Message::Mda(r)
            | Message::Reject(r, _)
            | Message::Destaged(r, _)
            | Message::DestageAck(r)
            | Message::Held(r, ..) => r,
        }
    }

    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Rqr(_) => KIND_RQR,
            Message::Rtr(_) => KIND_RTR,
            Message::DataSent(_) => KIND_DATA_SENT,
            Message::Mda(_) => KIND_MDA,
            Message::Reject(..) => KIND_REJECT,
            Message::Destaged(..) => KIND_DESTAGED,
            Message::DestageAck(_) => KIND_DESTAGE_ACK,
            Message::Held(..) => KIND_HELD,
        }
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Rqr(q) => RQR_FIXED_LEN + 4 * q.new_buffers.len(),
            Message::Reject(..) => REJECT_LEN,
            Message::Destaged(..) => DESTAGED_LEN,
            Message::Held(..) => HELD_LEN,
            _ => HEAD_LEN,
        }
    }

    /// Encodes into the front of `out` (frame space); returns the bytes used. An RQR with a
    /// block count outside 1..=256 or an old count above it is refused.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, WriteBackMessageError> {
        let need = self.encoded_len();
        if out.len() < need {
            return Err(WriteBackMessageError::Space {
                need,
                space: out.len(),
            });
        }
        let out = &mut out[..need];
        out.fill(0);
        let r = self.request_ref();
        out[0] = self.kind();
        out[4..8].copy_from_slice(&r.rie.to_le_bytes());
        out[8..16].copy_from_slice(&r.request.to_le_bytes());
        out[16..24].copy_from_slice(&r.incarnation.to_le_bytes());
        match self {
            Message::Rqr(q) => {
                let blocks = q.new_buffers.len();
                if !(1..=MAX_ATOMIC_BLOCKS).contains(&blocks) {
                    return Err(WriteBackMessageError::Field {
                        field: "RQR block count",
                        value: blocks as u64,
                    });
                }
                if usize::from(q.old_blocks) > blocks {
                    return Err(WriteBackMessageError::Field {
                        field: "old_blocks",
                        value: u64::from(q.old_blocks),
                    });
                }
                out[24..32].copy_from_slice(&q.first_block.to_le_bytes());
                out[32..34].copy_from_slice(&q.unit.to_le_bytes());
                out[34..36].copy_from_slice(&(blocks as u16).to_le_bytes());
                out[36..38].copy_from_slice(&q.old_blocks.to_le_bytes());
                for (chunk, b) in out[RQR_FIXED_LEN..].chunks_exact_mut(4).zip(&q.new_buffers) {
                    chunk.copy_from_slice(&b.to_le_bytes());
                }
            }
            Message::Reject(_, reason) => out[24] = *reason as u8,
            Message::Destaged(_, b) | Message::Held(_, b, _) => {
                if b.block > MAX_BLOCK_ADDRESS {
                    return Err(WriteBackMessageError::Field {
                        field: "block",
                        value: b.block,
                    });
                }
                out[24..32].copy_from_slice(&b.block.to_le_bytes());
                out[32..34].copy_from_slice(&b.unit.to_le_bytes());
                if let Message::Held(_, _, buffer) = self {
                    out[36..40].copy_from_slice(&buffer.to_le_bytes());
                }
            }
            _ => {}
        }
        Ok(need)
    }

    /// The encoded bytes (fails as [`encode_into`](Self::encode_into) does).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteBackMessageError> {
        let mut out = vec![0; self.encoded_len()];
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a message from exactly `bytes` (a partner's message: every field is checked).
    pub fn decode(bytes: &[u8]) -> Result<Message, WriteBackMessageError> {
        let kind = bytes.first().copied().unwrap_or(0);
        let length = |expected: usize| {
            if bytes.len() == expected {
                Ok(())
            } else {
                Err(WriteBackMessageError::Length {
                    kind,
                    len: bytes.len(),
                    expected,
                })
            }
        };
        if bytes.len() < HEAD_LEN {
            length(HEAD_LEN)?;
        }
        if !(KIND_RQR..=KIND_HELD).contains(&kind) {
            return Err(WriteBackMessageError::Kind { kind });
        }
        let zero =
            |range: std::ops::Range<usize>| {
                bytes[range].iter().all(|&b| b == 0).then_some(()).ok_or(
                    WriteBackMessageError::Field {
                        field: "padding",
                        value: 1,
                    },
                )
            };
        zero(1..4)?;
        let at = RequestRef {
            rie: u32::from_le_bytes(array(&bytes[4..8])),
            request: u64::from_le_bytes(array(&bytes[8..16])),
            incarnation: u64::from_le_bytes(array(&bytes[16..24])),
        };
        if at.request == 0 || at.request > MAX_REQUEST_TAG {
            return Err(WriteBackMessageError::Field {
                field: "request",
                value: at.request,
            });
        }
        match kind {
            KIND_RTR => length(HEAD_LEN).map(|_| Message::Rtr(at)),
            KIND_DATA_SENT => length(HEAD_LEN).map(|_| Message::DataSent(at)),
            KIND_MDA => length(HEAD_LEN).map(|_| Message::Mda(at)),
            KIND_DESTAGED | KIND_DESTAGE_ACK if at.rie != 0 => Err(WriteBackMessageError::Field {
                field: "rie",
                value: u64::from(at.rie),
            }),
            KIND_DESTAGE_ACK => length(HEAD_LEN).map(|_| Message::DestageAck(at)),
            KIND_DESTAGED | KIND_HELD => {
                length(DESTAGED_LEN)?;
                if kind == KIND_DESTAGED {
                    zero(34..40)?;
                } else {
                    zero(34..36)?;
                }
                let block = u64::from_le_bytes(array(&bytes[24..32]));
                if block > MAX_BLOCK_ADDRESS {
                    return Err(WriteBackMessageError::Field {
                        field: "block",
                        value: block,
                    });
                }
                let unit = u16::from_le_bytes(array(&bytes[32..34]));
                let at_block = BlockRef { unit, block };
                if kind == KIND_HELD {
                    let buffer = u32::from_le_bytes(array(&bytes[36..40]));
                    return Ok(Message::Held(at, at_block, buffer));
                }
                Ok(Message::Destaged(at, at_block))
            }
            KIND_REJECT => {
                length(REJECT_LEN)?;
                zero(25..32)?;
                let reason =
                    RejectReason::from_byte(bytes[24]).ok_or(WriteBackMessageError::Field {
                        field: "reason",
                        value: u64::from(bytes[24]),
                    })?;
                Ok(Message::Reject(at, reason))
            }
            _ => {
                if bytes.len() < RQR_FIXED_LEN {
                    length(RQR_FIXED_LEN)?;
                }
                let first_block = u64::from_le_bytes(array(&bytes[24..32]));
                let unit = u16::from_le_bytes(array(&bytes[32..34]));
                let blocks = u16::from_le_bytes(array(&bytes[34..36]));
                let old_blocks = u16::from_le_bytes(array(&bytes[36..38]));
                zero(38..40)?;
                if !(1..=MAX_ATOMIC_BLOCKS).contains(&usize::from(blocks)) {
                    return Err(WriteBackMessageError::Field {
                        field: "blocks",
                        value: u64::from(blocks),
                    });
                }
                if old_blocks > blocks {
                    return Err(WriteBackMessageError::Field {
                        field: "old_blocks",
                        value: u64::from(old_blocks),
                    });
                }
                if first_block > MAX_BLOCK_ADDRESS + 1 - u64::from(blocks) {
                    return Err(WriteBackMessageError::Field {
                        field: "first_block",
                        value: first_block,
                    });
                }
                length(RQR_FIXED_LEN + 4 * usize::from(blocks))?;
                let new_buffers = bytes[RQR_FIXED_LEN..]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(array(c)))
                    .collect();
                Ok(Message::Rqr(Rqr {
                    at,
                    unit,
                    first_block,
                    old_blocks,
                    new_buffers,
                }))
            }
        }
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(bytes);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_typed_errors() {
        let at = RequestRef {
            request: 7,
            rie: 3,
            incarnation: 9,
        };
        let rqr = Message::Rqr(Rqr {
            at,
            unit: 2,
            first_block: 100,
            old_blocks: 1,
            new_buffers: vec![4, 5, 6],
        });
        for m in [
            rqr.clone(),
            Message::Rtr(at),
            Message::DataSent(at),
            Message::Mda(at),
            Message::Reject(at, RejectReason::RangeBusy),
            Message::Destaged(
                RequestRef { rie: 0, ..at },
                BlockRef {
                    unit: 4,
                    block: MAX_BLOCK_ADDRESS,
                },
            ),
            Message::DestageAck(RequestRef { rie: 0, ..at }),
            Message::Held(
                at,
                BlockRef {
                    unit: 2,
                    block: MAX_BLOCK_ADDRESS,
                },
                u32::MAX,
            ),
        ] {
            let bytes = m.to_bytes().unwrap();
            assert_eq!(bytes.len(), m.encoded_len());
            assert_eq!(Message::decode(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(Message::decode(&long).is_err());
        }
        let bytes = rqr.to_bytes().unwrap();
        assert_eq!(bytes.len(), 52);
        assert_eq!(&bytes[..4], &[1, 0, 0, 0]);
        assert_eq!(bytes[36], 1);
        let mut bad = bytes.clone();
        bad[34] = 0; // zero blocks
        assert!(matches!(
            Message::decode(&bad),
            Err(WriteBackMessageError::Field {
                field: "blocks",
                ..
            })
        ));
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(
            Message::decode(&bad),
            Err(WriteBackMessageError::Kind { kind: 9 })
        ));
        let mut bad = bytes;
        bad[2] = 1;
        assert!(Message::decode(&bad).is_err());
        // Destaged: an RIE, a block beyond 46 bits or padding is refused.
        let notice = RequestRef { rie: 0, ..at };
        let d = Message::Destaged(notice, BlockRef { unit: 1, block: 9 });
        let bytes = d.to_bytes().unwrap();
        assert_eq!(bytes.len(), DESTAGED_LEN);
        assert_eq!(bytes[0], KIND_DESTAGED);
        for (at, value, field) in [(4, 1, "rie"), (31, 0x40, "block"), (35, 1, "padding")] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(
                matches!(Message::decode(&bad), Err(WriteBackMessageError::Field { field: f, .. }) if f == field),
                "{field}"
            );
        }
        let mut bad = Message::DestageAck(notice).to_bytes().unwrap();
        bad[5] = 1;
        assert!(Message::decode(&bad).is_err());
        assert!(Message::Destaged(
            notice,
            BlockRef {
                unit: 1,
                block: MAX_BLOCK_ADDRESS + 1
            }
        )
        .to_bytes()
        .is_err());
        let mut out = [0u8; 10];
        assert!(matches!(
            Message::Mda(at).encode_into(&mut out),
            Err(WriteBackMessageError::Space { need: 24, .. })
        ));
    }
}
