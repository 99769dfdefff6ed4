//! Messaging wire (src/messaging/wire.rs): frames, the messages packed in them, and the
//! 32-bit immediate value.
//!
//! Input: selector byte, then
//! - `0`: a frame for [`FrameHeader::open`] and, if it opens, its [`Messages`];
//! - `1`: the same with the checksum fixed first (reaches the message decoder);
//! - `2`: an immediate value (4 bytes) and a window `lo` (8 bytes) and width (4 bytes) for
//!   [`Imm::decode`] and [`Imm::expand`].
//!
//! An accepted frame is rebuilt from what was decoded ([`FrameHeader::seal`],
//! [`put_message_header`]) and must decode to the same header and messages; a handler
//! error's payload ([`decode_handler_error`]) must encode back to the same bytes.

use crate::{rejected, tagged};
use interlink::messaging::wire::*;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => frame(rest),
        1 => frame(&fix_crc(rest)),
        _ => imm(rest),
    }
}

fn fix_crc(bytes: &[u8]) -> Vec<u8> {
    let mut f = bytes.to_vec();
    if f.len() < FRAME_HEADER_LEN {
        return f;
    }
    let len = usize::from(u16::from_le_bytes([f[4], f[5]])).clamp(FRAME_HEADER_LEN, f.len());
    let mut crc = crc32c::crc32c(&f[..32]);
    crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc = crc32c::crc32c_append(crc, &f[36..len]);
    f[32..36].copy_from_slice(&crc.to_le_bytes());
    f
}

type Owned = (u8, u8, MessageKind, Vec<u8>);

fn frame(bytes: &[u8]) {
    let h = match FrameHeader::open(bytes) {
        Ok(h) => h,
        Err(e) => return rejected(&e),
    };
    assert!(usize::from(h.len) <= bytes.len() && usize::from(h.len) >= FRAME_HEADER_LEN);
    let f = &bytes[..usize::from(h.len)];
    let mut msgs: Vec<Owned> = Vec::new();
    for m in Messages::new(f, &h) {
        match m {
            Ok(m) => msgs.push((m.code, m.flags, m.kind, m.payload.to_vec())),
            Err(e) => return rejected(&e),
        }
    }
    assert_eq!(msgs.len(), usize::from(h.count));
    // Rebuild and decode again.
    let mut out = vec![0u8; usize::from(h.len)];
    let mut at = FRAME_HEADER_LEN;
    for (code, flags, kind, payload) in &msgs {
        let total = prefix_len(*kind) + payload.len();
        put_message_header(&mut out[at..], *code, *flags, *kind, total as u16);
        out[at + prefix_len(*kind)..at + total].copy_from_slice(payload);
        at += total;
    }
    assert_eq!(at, out.len(), "messages do not fill the frame");
    h.seal(&mut out);
    let h2 = FrameHeader::open(&out).expect("a rebuilt frame opens");
    assert_eq!(h2, h);
    let again: Vec<Owned> = Messages::new(&out, &h2)
        .map(|m| m.expect("a rebuilt message decodes"))
        .map(|m| (m.code, m.flags, m.kind, m.payload.to_vec()))
        .collect();
    assert_eq!(again, msgs);
    for (_, _, kind, payload) in &msgs {
        if let MessageKind::Response { status, .. } = kind {
            if *status == ResponseStatus::HandlerError as u8 {
                handler_error(payload);
            }
        }
    }
}

/// A handler error's payload decodes without a panic, and one that is a code and a UTF-8
/// reason encodes back to the same bytes.
fn handler_error(payload: &[u8]) {
    let (code, reason) = decode_handler_error(payload);
    if payload.len() >= HANDLER_ERROR_CODE_LEN
        && std::str::from_utf8(&payload[HANDLER_ERROR_CODE_LEN..]).is_ok()
    {
        assert_eq!(encode_handler_error(code, &reason, usize::MAX), payload);
    }
}

fn imm(b: &[u8]) {
    let mut w = [0u8; 16];
    let n = b.len().min(16);
    w[..n].copy_from_slice(&b[..n]);
    let value = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    match Imm::decode(value) {
        Ok(i) => assert_eq!(Imm::decode(i.encode()), Ok(i)),
        Err(e) => rejected(&e),
    }
    let mut lo = [0u8; 8];
    lo.copy_from_slice(&w[4..12]);
    let lo = u64::from_le_bytes(lo);
    let width = u64::from(u32::from_le_bytes([w[12], w[13], w[14], w[15]])) % IMM_MAX_WINDOW;
    let hi = lo.saturating_add(width);
    if let Some(seq) = Imm::expand(value, lo, hi) {
        assert!(seq >= lo && seq <= hi);
        assert_eq!(Imm::low_bits(seq), Imm::low_bits(u64::from(value)));
    }
}

fn build(session: u32, seq: u64, msgs: &[(u8, u8, MessageKind, &[u8])]) -> Vec<u8> {
    let len = FRAME_HEADER_LEN
        + msgs
            .iter()
            .map(|(_, _, k, p)| prefix_len(*k) + p.len())
            .sum::<usize>();
    let mut out = vec![0u8; len];
    let mut at = FRAME_HEADER_LEN;
    for (code, flags, kind, payload) in msgs {
        let total = prefix_len(*kind) + payload.len();
        put_message_header(&mut out[at..], *code, *flags, *kind, total as u16);
        out[at + prefix_len(*kind)..at + total].copy_from_slice(payload);
        at += total;
    }
    let h = FrameHeader {
        flags: FRAME_FLAG_CONTROL,
        len: len as u16,
        count: msgs.len() as u16,
        session,
        peer_session: 3,
        seq,
        ack: seq - 1,
    };
    h.seal(&mut out);
    out
}

/// Frames of plain, call and response messages; immediate values of each kind.
pub fn seeds() -> Vec<Vec<u8>> {
    let frames = [
        build(9, 1, &[]),
        build(9, 2, &[(7, 0, MessageKind::Plain, b"hello")]),
        build(
            9,
            3,
            &[
                (8, FLAG_CALL, MessageKind::Call { call_id: 77 }, b"ping"),
                (
                    RESPONSE_CODE,
                    FLAG_CONTROL,
                    MessageKind::Response {
                        call_id: 76,
                        status: ResponseStatus::Ok as u8,
                    },
                    b"pong",
                ),
                (9, 0x30, MessageKind::Plain, &[0u8; 40]),
                (
                    RESPONSE_CODE,
                    FLAG_CONTROL,
                    MessageKind::Response {
                        call_id: 75,
                        status: ResponseStatus::HandlerError as u8,
                    },
                    b"\x2a\0\0\0no such volume",
                ),
            ],
        ),
    ];
    let mut out = Vec::new();
    for f in &frames {
        out.push(tagged(0, f));
        out.push(tagged(1, f));
    }
    for i in [
        Imm::Frame { slot: 5, tag: 9 },
        Imm::Ack {
            ack: 1 << 21,
            tag: 9,
        },
        Imm::Nak {
            expected: 3,
            tag: 1,
        },
    ] {
        let mut b = i.encode().to_le_bytes().to_vec();
        b.extend_from_slice(&((1u64 << 22) - 5).to_le_bytes());
        b.extend_from_slice(&64u32.to_le_bytes());
        out.push(tagged(2, &b));
    }
    out
}
