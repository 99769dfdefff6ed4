//! Wire format of the messaging layer: frames, the messages packed into them, and the 32-bit
//! immediate value that accompanies every RDMA WRITE. Every byte is described in
//! `docs/wire-formats.md` ("Messaging"); all integers are little-endian.
//!
//! Decoders take bytes written by the partner and never panic: anything malformed is a typed
//! [`WireError`].

/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 40;
/// Bytes of a message header (function code, flags, length).
pub const MESSAGE_HEADER_LEN: usize = 4;
/// Bytes a call adds in front of its payload (the call id).
pub const CALL_ID_LEN: usize = 8;
/// Bytes a response adds in front of its payload (call id, status, three reserved bytes).
pub const RESPONSE_PREFIX_LEN: usize = 12;
/// Frame magic: the bytes `I` `M`.
pub const FRAME_MAGIC: u16 = u16::from_le_bytes(*b"IM");
/// [`FRAME_MAGIC`] as it appears in the frame.
const FRAME_MAGIC_BYTES: [u8; 2] = *b"IM";
/// Frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Function code reserved for responses to calls.
pub const RESPONSE_CODE: u8 = 0;

/// Message flag: the payload starts with an 8-byte call id and the sender expects a response.
pub const FLAG_CALL: u8 = 0x01;
/// Message flag: the message was sent in the control class.
pub const FLAG_CONTROL: u8 = 0x02;
/// Message flags reserved (must be zero).
pub const FLAGS_RESERVED: u8 = 0x0c;
/// Message flags passed through to handlers untouched.
pub const FLAGS_USER: u8 = 0xf0;

/// Frame flag: the frame carries at least one control-class message.
pub const FRAME_FLAG_CONTROL: u8 = 0x01;
/// Frame flag: this copy is a retransmission.
pub const FRAME_FLAG_RETRANSMIT: u8 = 0x02;

pub use crate::codec::WireError;
use crate::codec::{
    check_crc32c, check_length, check_magic, check_reserved, check_version, Reader,
};

/// The format name errors give.
const FORMAT: &str = "messaging frame";

/// The fixed header at the start of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame flags (`FRAME_FLAG_*`).
    pub flags: u8,
    /// Total frame length including this header.
    pub len: u16,
    /// Messages in the frame.
    pub count: u16,
    /// Sender's conversation id (never 0).
    pub session: u32,
    /// The sender's view of the receiver's conversation id (0: not known yet).
    pub peer_session: u32,
    /// Frame sequence number (the first frame of a conversation is 1).
    pub seq: u64,
    /// Cumulative acknowledgement: every frame of the receiver's stream below this was
    /// delivered.
    pub ack: u64,
}

impl FrameHeader {
    /// Writes the header into `buf[..FRAME_HEADER_LEN]` and the checksum over
    /// `buf[..self.len]`. `buf` must hold `len` bytes.
    pub fn seal(&self, buf: &mut [u8]) {
        let len = usize::from(self.len);
        buf[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        buf[2] = FRAME_VERSION;
        buf[3] = self.flags;
        buf[4..6].copy_from_slice(&self.len.to_le_bytes());
        buf[6..8].copy_from_slice(&self.count.to_le_bytes());
        buf[8..12].copy_from_slice(&self.session.to_le_bytes());
        buf[12..16].copy_from_slice(&self.peer_session.to_le_bytes());
        buf[16..24].copy_from_slice(&self.seq.to_le_bytes());
        buf[24..32].copy_from_slice(&self.ack.to_le_bytes());
        buf[32..40].fill(0);
        let crc = crc32c::crc32c(&buf[..len]);
        buf[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and verifies a frame: header fields, length and checksum. Returns the header;
    /// the frame is `buf[..header.len]`.
    pub fn open(buf: &[u8]) -> Result<FrameHeader, WireError> {
        let mut r = Reader::le(buf);
        let magic: [u8; 2] = r.array("frame magic")?;
        check_magic(FORMAT, &magic, &FRAME_MAGIC_BYTES)?;
        let version = r.u8("frame version")?;
        check_version(
            FORMAT,
            u32::from(version),
            |v| v == u32::from(FRAME_VERSION),
            "1",
        )?;
        let flags = r.u8("frame flags")?;
        let len = r.u16("frame length")?;
        check_length("frame", usize::from(len), FRAME_HEADER_LEN, buf.len())?;
        let count = r.u16("frame message count")?;
        let session = r.u32("sender session")?;
        let peer_session = r.u32("receiver session")?;
        let seq = r.u64("frame sequence number")?;
        let ack = r.u64("frame acknowledgement")?;
        let found = r.u32("frame checksum")?;
        let reserved = r.u32("frame reserved word")?;
        // The checksum covers the whole frame with its own field taken as zero.
        let mut crc = crc32c::crc32c(&buf[..32]);
        crc = crc32c::crc32c_append(crc, &[0u8; 4]);
        crc = crc32c::crc32c_append(crc, &buf[36..usize::from(len)]);
        check_crc32c(FORMAT, found, crc)?;
        check_reserved("frame reserved word", u64::from(reserved))?;
        if session == 0 {
            return Err(WireError::Zero {
                field: "sender session",
            });
        }
        Ok(FrameHeader {
            flags,
            len,
            count,
            session,
            peer_session,
            seq,
            ack,
        })
    }
}

/// What a message is, from its header and prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A one-way message (acknowledged at the frame level only).
    Plain,
    /// A call: the receiver responds, quoting the call id.
    Call {
        /// The caller's id for the call.
        call_id: u64,
    },
    /// A response to a call.
    Response {
        /// The call answered.
        call_id: u64,
        /// Response status (see [`ResponseStatus`]).
        status: u8,
    },
}

/// Status byte of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ResponseStatus {
    /// The handler ran and this is its response.
    Ok = 0,
    /// The receiver has no handler for the function code.
    NoHandler = 1,
    /// The handler failed the call: the payload is its error, a 4-byte little-endian error
    /// code and a UTF-8 reason (see [`encode_handler_error`]).
    HandlerError = 2,
}

/// Bytes of a handler error's code, ahead of its reason in a [`ResponseStatus::HandlerError`]
/// payload.
pub const HANDLER_ERROR_CODE_LEN: usize = 4;

/// Writes a handler error's payload: `code` (4 bytes, little-endian), then as much of
/// `reason` as fits `max_payload` (cut at a character boundary).
pub fn encode_handler_error(code: u32, reason: &str, max_payload: usize) -> Vec<u8> {
    let room = max_payload.saturating_sub(HANDLER_ERROR_CODE_LEN);
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(HANDLER_ERROR_CODE_LEN + end);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// Reads a handler error's payload: its code and reason. A payload shorter than the code
/// reads as code 0 with the bytes as reason; bytes that are not UTF-8 are replaced (the
/// payload is the partner's input: never refused, never a panic).
pub fn decode_handler_error(payload: &[u8]) -> (u32, String) {
    match payload.split_first_chunk::<HANDLER_ERROR_CODE_LEN>() {
        Some((code, reason)) => (
            u32::from_le_bytes(*code),
            String::from_utf8_lossy(reason).into_owned(),
        ),
        None => (0, String::from_utf8_lossy(payload).into_owned()),
    }
}

/// One message as found in a frame: header fields and the payload (after any call or response
/// prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMessage<'a> {
    /// Function code.
    pub code: u8,
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// Kind and prefix fields.
    pub kind: MessageKind,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Iterates over the messages of a verified frame.
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    frame: &'a [u8],
    offset: usize,
    index: usize,
    count: usize,
    failed: bool,
}

impl<'a> Messages<'a> {
    /// Messages of `frame` (a whole frame, as delimited by its verified header).
    pub fn new(frame: &'a [u8], header: &FrameHeader) -> Messages<'a> {
        Messages {
            frame,
            offset: FRAME_HEADER_LEN,
            index: 0,
            count: usize::from(header.count),
            failed: false,
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<RawMessage<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let frame_len = self.frame.len();
        if self.offset >= frame_len {
            if self.index != self.count {
                self.failed = true;
                return Some(Err(WireError::CountMismatch {
                    field: "frame message count",
                    count: self.count,
                    found: self.index,
                }));
            }
            return None;
        }
        let fail = |s: &mut Self, e: WireError| {
            s.failed = true;
            Some(Err(e))
        };
        let o = self.offset;
        if self.index >= self.count || o + MESSAGE_HEADER_LEN > frame_len {
            let found = self.index + 1;
            return fail(
                self,
                WireError::CountMismatch {
                    field: "frame message count",
                    count: self.count,
                    found,
                },
            );
        }
        let code = self.frame[o];
        let flags = self.frame[o + 1];
        let len = usize::from(u16::from_le_bytes([self.frame[o + 2], self.frame[o + 3]]));
        if len < MESSAGE_HEADER_LEN || o + len > frame_len {
            let e = WireError::MessageLength {
                index: self.index,
                len,
                offset: o,
                frame_len,
            };
            return fail(self, e);
        }
        let body = &self.frame[o + MESSAGE_HEADER_LEN..o + len];
        let bad_flags = WireError::MessageFlags {
            index: self.index,
            code,
            flags,
        };
        if flags & FLAGS_RESERVED != 0 {
            return fail(self, bad_flags);
        }
        let short = WireError::MessageLength {
            index: self.index,
            len,
            offset: o,
            frame_len,
        };
        let (kind, payload) = if code == RESPONSE_CODE {
            if flags & FLAG_CALL != 0 {
                return fail(self, bad_flags);
            }
            if body.len() < RESPONSE_PREFIX_LEN {
                return fail(self, short);
            }
            let kind = MessageKind::Response {
                call_id: le_u64(body),
                status: body[8],
            };
            (kind, &body[RESPONSE_PREFIX_LEN..])
        } else if flags & FLAG_CALL != 0 {
            if body.len() < CALL_ID_LEN {
                return fail(self, short);
            }
            let kind = MessageKind::Call {
                call_id: le_u64(body),
            };
            (kind, &body[CALL_ID_LEN..])
        } else {
            (MessageKind::Plain, body)
        };
        self.offset += len;
        self.index += 1;
        Some(Ok(RawMessage {
            code,
            flags,
            kind,
            payload,
        }))
    }
}

/// The little-endian u64 at the start of `b` (the caller checked it holds 8 bytes).
fn le_u64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    u64::from_le_bytes(v)
}

/// Writes a message header (and call or response prefix, [`prefix_len`] bytes in all) at the
/// start of `buf`. `total` is the whole message length.
pub fn put_message_header(buf: &mut [u8], code: u8, flags: u8, kind: MessageKind, total: u16) {
    buf[0] = code;
    buf[1] = flags;
    buf[2..4].copy_from_slice(&total.to_le_bytes());
    match kind {
        MessageKind::Plain => {}
        MessageKind::Call { call_id } => buf[4..12].copy_from_slice(&call_id.to_le_bytes()),
        MessageKind::Response { call_id, status } => {
            buf[4..12].copy_from_slice(&call_id.to_le_bytes());
            buf[12] = status;
            buf[13..16].fill(0);
        }
    }
}

/// Length of the prefix (message header plus call or response fields) for a kind.
pub fn prefix_len(kind: MessageKind) -> usize {
    MESSAGE_HEADER_LEN
        + match kind {
            MessageKind::Plain => 0,
            MessageKind::Call { .. } => CALL_ID_LEN,
            MessageKind::Response { .. } => RESPONSE_PREFIX_LEN,
        }
}

const IMM_KIND_SHIFT: u32 = 30;
const IMM_TAG_SHIFT: u32 = 22;
const IMM_VALUE_MASK: u32 = (1 << IMM_TAG_SHIFT) - 1;
/// Largest window (in frames) the 22-bit acknowledgement field can disambiguate.
pub const IMM_MAX_WINDOW: u64 = 1 << 20;

/// The 32-bit immediate value of every messaging WRITE. Bits 31..30 are the kind, bits 29..22
/// a session tag (the low byte of the conversation id the value refers to), bits 21..0 the
/// value: the slot for a frame, the low 22 bits of a frame sequence number for an ack or a
/// nak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imm {
    /// A frame was written into `slot` of the receive ring; `tag` is the sender's session.
    Frame {
        /// Receive-ring slot.
        slot: u32,
        /// Low byte of the sender's session.
        tag: u8,
    },
    /// Cumulative acknowledgement: every frame below `ack` (low 22 bits) was delivered; `tag`
    /// is the low byte of the acknowledged sender's session.
    Ack {
        /// Low 22 bits of the acknowledgement.
        ack: u32,
        /// Low byte of the session being acknowledged.
        tag: u8,
    },
    /// Negative acknowledgement: frames from `expected` (low 22 bits) on must be sent again
    /// (everything below is acknowledged).
    Nak {
        /// Low 22 bits of the next frame expected.
        expected: u32,
        /// Low byte of the session being acknowledged.
        tag: u8,
    },
}

impl Imm {
    /// Encodes.
    pub fn encode(self) -> u32 {
        let (kind, tag, value) = match self {
            Imm::Frame { slot, tag } => (0u32, tag, slot),
            Imm::Ack { ack, tag } => (1, tag, ack),
            Imm::Nak { expected, tag } => (2, tag, expected),
        };
        (kind << IMM_KIND_SHIFT) | (u32::from(tag) << IMM_TAG_SHIFT) | (value & IMM_VALUE_MASK)
    }

    /// Decodes.
    pub fn decode(imm: u32) -> Result<Imm, WireError> {
        let tag = ((imm >> IMM_TAG_SHIFT) & 0xff) as u8;
        let value = imm & IMM_VALUE_MASK;
        match imm >> IMM_KIND_SHIFT {
            0 => Ok(Imm::Frame { slot: value, tag }),
            1 => Ok(Imm::Ack { ack: value, tag }),
            2 => Ok(Imm::Nak {
                expected: value,
                tag,
            }),
            _ => Err(WireError::Code {
                field: "immediate kind",
                code: u64::from(imm),
            }),
        }
    }

    /// The low 22 bits of a sequence number, as carried.
    pub fn low_bits(seq: u64) -> u32 {
        (seq as u32) & IMM_VALUE_MASK
    }

    /// Expands carried low bits to the one sequence number in `lo..=hi` with those bits
    /// (None if there is none; the range must be narrower than 2^22).
    pub fn expand(low: u32, lo: u64, hi: u64) -> Option<u64> {
        let m = u64::from(IMM_VALUE_MASK) + 1;
        let low = u64::from(low & IMM_VALUE_MASK);
        let base = lo - lo % m;
        [base.checked_add(low), base.checked_add(m + low)]
            .into_iter()
            .flatten()
            .find(|v| *v >= lo && *v <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with(msgs: &[(u8, u8, MessageKind, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut o = FRAME_HEADER_LEN;
        for (code, flags, kind, payload) in msgs {
            let p = prefix_len(*kind);
            let total = p + payload.len();
            put_message_header(&mut buf[o..], *code, *flags, *kind, total as u16);
            buf[o + p..o + total].copy_from_slice(payload);
            o += total;
        }
        let h = FrameHeader {
            flags: 0,
            len: o as u16,
            count: msgs.len() as u16,
            session: 7,
            peer_session: 9,
            seq: 42,
            ack: 17,
        };
        h.seal(&mut buf);
        buf.truncate(o);
        buf
    }

    /// Found by fuzzing (messaging_wire): a window at the top of the u64 range overflowed.
    #[test]
    fn expand_at_the_end_of_the_sequence_space() {
        let lo = u64::MAX - 10;
        assert_eq!(
            Imm::expand(Imm::low_bits(u64::MAX), lo, u64::MAX),
            Some(u64::MAX)
        );
        assert_eq!(Imm::expand(Imm::low_bits(lo) - 1, lo, u64::MAX), None);
    }

    #[test]
    fn frame_round_trip() {
        let f = frame_with(&[
            (5, 0x10, MessageKind::Plain, b"hello"),
            (6, FLAG_CALL, MessageKind::Call { call_id: 99 }, b"x"),
            (
                RESPONSE_CODE,
                0,
                MessageKind::Response {
                    call_id: 3,
                    status: 1,
                },
                b"",
            ),
        ]);
        let h = FrameHeader::open(&f).unwrap();
        assert_eq!((h.seq, h.ack, h.session, h.peer_session), (42, 17, 7, 9));
        let msgs: Vec<_> = Messages::new(&f, &h).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].payload, b"hello");
        assert_eq!(msgs[0].flags, 0x10);
        assert_eq!(msgs[1].kind, MessageKind::Call { call_id: 99 });
        assert_eq!(msgs[1].payload, b"x");
        assert_eq!(
            msgs[2].kind,
            MessageKind::Response {
                call_id: 3,
                status: 1
            }
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let f = frame_with(&[(5, 0, MessageKind::Plain, b"payload")]);
        for i in 0..f.len() * 8 {
            let mut g = f.clone();
            g[i / 8] ^= 1 << (i % 8);
            assert!(FrameHeader::open(&g).is_err(), "bit {i}");
        }
    }

    #[test]
    fn truncations_and_bad_lengths_are_errors_not_panics() {
        let f = frame_with(&[
            (5, 0, MessageKind::Plain, b"payload"),
            (6, 0, MessageKind::Plain, b""),
        ]);
        for n in 0..f.len() {
            assert!(FrameHeader::open(&f[..n]).is_err());
        }
        // A sealed frame whose message length runs past the end.
        let mut g = f.clone();
        g[FRAME_HEADER_LEN + 2] = 200;
        let h = FrameHeader {
            flags: 0,
            len: g.len() as u16,
            count: 2,
            session: 1,
            peer_session: 0,
            seq: 1,
            ack: 1,
        };
        h.seal(&mut g);
        let h = FrameHeader::open(&g).unwrap();
        let r: Result<Vec<_>, _> = Messages::new(&g, &h).collect();
        assert!(matches!(r, Err(WireError::MessageLength { .. })));
    }

    #[test]
    fn imm_round_trip_and_expand() {
        for imm in [
            Imm::Frame {
                slot: 31,
                tag: 0xab,
            },
            Imm::Ack {
                ack: Imm::low_bits(5_000_000),
                tag: 1,
            },
            Imm::Nak {
                expected: 77,
                tag: 255,
            },
        ] {
            assert_eq!(Imm::decode(imm.encode()), Ok(imm));
        }
        assert!(Imm::decode(3 << 30).is_err());
        let seq = (1u64 << 22) * 3 + 5;
        assert_eq!(
            Imm::expand(Imm::low_bits(seq), seq - 10, seq + 10),
            Some(seq)
        );
        assert_eq!(Imm::expand(Imm::low_bits(seq), seq + 1, seq + 10), None);
        let edge = (1u64 << 22) - 2;
        assert_eq!(
            Imm::expand(Imm::low_bits(edge + 4), edge, edge + 8),
            Some(edge + 4)
        );
    }

    #[test]
    fn a_handler_error_round_trips_and_is_cut_to_fit() {
        let full = encode_handler_error(42, "no such volume", 2000);
        assert_eq!(&full[..4], &42u32.to_le_bytes());
        assert_eq!(decode_handler_error(&full), (42, "no such volume".into()));
        // Cut at a character boundary: "é" is two bytes, 4 + 5 leaves room for two of them.
        let cut = encode_handler_error(7, "ééé", 9);
        assert_eq!(cut.len(), 8);
        assert_eq!(decode_handler_error(&cut), (7, "éé".into()));
        assert_eq!(
            encode_handler_error(7, "x", 2).len(),
            4,
            "the code always fits"
        );
        // The partner's bytes: short or not UTF-8, never a panic.
        assert_eq!(decode_handler_error(b"ab"), (0, "ab".into()));
        assert_eq!(
            decode_handler_error(&[1, 0, 0, 0, 0xff]),
            (1, "\u{fffd}".into())
        );
    }
}
