//! The manager's bootstrap handshake (src/manager/session.rs), fed by a peer the fuzzer
//! scripts. The harness knows the cluster secret, so besides raw bytes it can send frames
//! with a correct CRC, sequence number and HMAC under the derived session key: the fuzzer
//! reaches the session's message-order checks, not only the MAC check.
//!
//! Input: byte 0 bit 0 picks our session's role (the harness is the other end), bit 1 whether
//! the harness's Hello is the canonical one or fuzzer-chosen bytes; then a script of steps
//! (each a tag byte and operands, read with `arbitrary`):
//! - raw bytes, fed in one piece;
//! - a sealed frame (type byte, sequence: next or arbitrary, arbitrary body);
//! - a sealed frame of a valid sample message, fed in arbitrary-sized pieces.

use crate::manager_wire::{fix_frame, samples};
use crate::rejected;
use arbitrary::Unstructured;
use interlink::manager::capabilities;
use interlink::manager::session::{Role, Session, SessionParams};
use interlink::manager::wire::*;

const SECRET: &[u8] = b"fuzz-cluster-secret";

fn params(role: Role) -> SessionParams {
    let (node_id, partner_id, nonce) = match role {
        Role::Initiator => (1, 2, [0x11; 32]),
        Role::Responder => (2, 1, [0x22; 32]),
    };
    SessionParams {
        role,
        cluster_id: 7,
        node_id,
        partner_id,
        link_id: 0,
        incarnation: 1000 + u64::from(node_id),
        capabilities: capabilities::ALL,
        version_min: 1,
        version_max: 1,
        secret: SECRET.to_vec(),
        nonce,
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Initiator => Role::Responder,
        Role::Responder => Role::Initiator,
    }
}

fn feed(s: &mut Session, bytes: &[u8]) {
    if let Err(e) = s.handle_bytes(bytes) {
        rejected(&e);
    }
    while s.poll_transmit().is_some() {}
    while s.poll_event().is_some() {}
    if let Some(e) = s.error() {
        rejected(e);
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(flags) = u.arbitrary::<u8>() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Initiator
    } else {
        Role::Responder
    };
    let mut s = Session::new(params(role));
    let peer_hello = if flags & 2 == 0 {
        encode_frame(&Message::Hello(params(other(role)).hello()), 0, None).expect("hello")
    } else {
        let body: Vec<u8> = u.arbitrary().unwrap_or_default();
        fix_frame(
            &raw_frame(MessageType::Hello.code(), 0, &body),
            &SessionKey::from_bytes([0; 32]),
        )
    };
    // The Initiator speaks first; a Responder answers the peer's Hello.
    let ours = match role {
        Role::Initiator => s.poll_transmit(),
        Role::Responder => None,
    };
    feed_keep(&mut s, &peer_hello);
    let ours = ours.or_else(|| s.poll_transmit());
    while s.poll_transmit().is_some() {}
    while s.poll_event().is_some() {}
    let key = ours.map(|ours| match role {
        Role::Initiator => SessionKey::derive(SECRET, &ours, &peer_hello),
        Role::Responder => SessionKey::derive(SECRET, &peer_hello, &ours),
    });
    let key = key.unwrap_or_else(|| SessionKey::from_bytes([0; 32]));
    let mut seq = 1u32;
    while !u.is_empty() {
        let Ok(step) = u.arbitrary::<u8>() else { break };
        match step % 3 {
            0 => {
                let bytes: Vec<u8> = u.arbitrary().unwrap_or_default();
                feed(&mut s, &bytes);
            }
            1 => {
                let ty: u8 = u.arbitrary().unwrap_or(0);
                let arbitrary_seq: bool = u.arbitrary().unwrap_or(false);
                let frame_seq = if arbitrary_seq {
                    u.arbitrary().unwrap_or(0)
                } else {
                    seq
                };
                let body: Vec<u8> = u.arbitrary().unwrap_or_default();
                feed(&mut s, &fix_frame(&raw_frame(ty, frame_seq, &body), &key));
                seq = seq.wrapping_add(1);
            }
            _ => {
                let all = samples();
                let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % all.len();
                let msg = &all[i];
                let this_seq = if msg.is_authenticated() { seq } else { 0 };
                let Ok(f) = encode_frame(msg, this_seq, Some(&key)) else {
                    continue;
                };
                let piece = usize::from(u.arbitrary::<u8>().unwrap_or(0)).max(1);
                for c in f.chunks(piece) {
                    feed(&mut s, c);
                }
                if msg.is_authenticated() {
                    seq = seq.wrapping_add(1);
                }
            }
        }
    }
}

fn feed_keep(s: &mut Session, bytes: &[u8]) {
    if let Err(e) = s.handle_bytes(bytes) {
        rejected(&e);
    }
}

/// A frame with header fields as given and zero trailers (for [`fix_frame`] to fill).
fn raw_frame(ty: u8, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN + MAC_LEN);
    f.extend_from_slice(&FRAME_MAGIC);
    f.push(FRAME_VERSION);
    f.push(ty);
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f.extend_from_slice(&[0; CRC_LEN + MAC_LEN]);
    f.truncate(HEADER_LEN + body.len() + CRC_LEN + MAC_LEN);
    f
}

/// Scripts that complete the handshake and then send each sample, in both roles.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for role_bit in [0u8, 1] {
        // PeerInfo, Ready, then every sample in 7-byte pieces.
        let mut script = vec![role_bit, 2, 2, 1, 2, 3, 1];
        for i in 4..8u8 {
            script.extend([2, i, 7]);
        }
        out.push(script);
        // A raw-bytes step and a sealed frame step of a Ready body.
        let body = encode_body(&samples()[3]).expect("ready");
        let mut s2 = vec![role_bit, 2, 2, 1, 1];
        s2.push(MessageType::Ready.code());
        s2.push(0);
        s2.extend(arbitrary_vec(&body));
        out.push(s2);
    }
    out
}

/// How `arbitrary` reads a `Vec<u8>` that is not the last field: a length prefix is not
/// used; it takes bytes while a continuation byte says so. This builds that shape.
fn arbitrary_vec(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for &b in bytes {
        v.push(1);
        v.push(b);
    }
    v.push(0);
    v
}
