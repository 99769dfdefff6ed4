//! Manager bootstrap wire (src/manager/wire.rs): Hello, Refuse, PeerInfo, Ready, Attach,
//! ClientReady, Detach, Goodbye bodies and the frames around them.
//!
//! Input: selector byte, then
//! - `0`: message type byte and a body for [`decode_body`];
//! - `1`: a whole frame for [`decode_frame`] (with and without the session key);
//! - `2`: a frame whose CRC32C and (authenticated types) HMAC the harness fixes first, so the
//!   fuzzer reaches the body decoder through the frame path.
//!
//! Accepted bodies must re-encode to the same bytes, and frames must round-trip.

use crate::{rejected, tagged};
use interlink::fabric::{Access, Endpoint, Gid, Mtu, RegionDescriptor};
use interlink::manager::capabilities;
use interlink::manager::wire::*;
use interlink::manager::{BandwidthClass, ClientInfo, QpInfo, RegionInfo, Term};
use std::net::Ipv4Addr;

/// The session key the harness signs and checks frames with.
pub fn key() -> SessionKey {
    SessionKey::from_bytes([0x5a; 32])
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let Some((&ty, body)) = rest.split_first() else {
                return;
            };
            body_round_trip(ty, body);
        }
        1 => frame(rest),
        _ => frame(&fix_frame(rest, &key())),
    }
}

fn body_round_trip(ty: u8, body: &[u8]) {
    match decode_body(ty, body) {
        Ok(msg) => {
            assert_eq!(msg.message_type().code(), ty);
            let again = encode_body(&msg).expect("a decoded message encodes");
            assert_eq!(
                again, body,
                "decode then encode changed the body of {msg:?}"
            );
            let seq = u32::from(msg.is_authenticated());
            let f = encode_frame(&msg, seq, Some(&key())).expect("a decoded message frames");
            let back = decode_frame(&f, Some(&key())).expect("an encoded frame decodes");
            assert_eq!(back.message, msg);
            assert_eq!(back.seq, seq);
        }
        Err(e) => rejected(&e),
    }
}

fn frame(bytes: &[u8]) {
    match frame_len(bytes) {
        Ok(Some(n)) => assert!(n >= HEADER_LEN + CRC_LEN),
        Ok(None) => assert!(bytes.len() < HEADER_LEN),
        Err(e) => rejected(&e),
    }
    if let Err(e) = decode_frame(bytes, None) {
        rejected(&e);
    }
    match decode_frame(bytes, Some(&key())) {
        Ok(f) => {
            let again = encode_frame(&f.message, f.seq, Some(&key())).expect("re-encode");
            assert_eq!(again, bytes, "frame did not re-encode to itself");
        }
        Err(e) => rejected(&e),
    }
}

/// `bytes` with the CRC32C and HMAC trailers recomputed where the header says they are (the
/// bytes unchanged when the header is unreadable or the frame short).
pub fn fix_frame(bytes: &[u8], key: &SessionKey) -> Vec<u8> {
    let mut f = bytes.to_vec();
    let Ok(Some(h)) = parse_header(&f) else {
        return f;
    };
    let crc_at = HEADER_LEN + h.body_len;
    if f.len() < crc_at + CRC_LEN {
        return f;
    }
    let crc = crc32c::crc32c(&f[..crc_at]);
    f[crc_at..crc_at + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
    let mac_at = crc_at + CRC_LEN;
    if h.msg_type.is_authenticated() && f.len() >= mac_at + MAC_LEN {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(&f[..mac_at]);
        f[mac_at..mac_at + MAC_LEN].copy_from_slice(&mac.finalize().into_bytes());
    }
    f
}

fn ep(qpn: u32) -> Endpoint {
    Endpoint {
        qpn,
        psn: 0x12_3456,
        gid: Gid::from_ipv4(Ipv4Addr::new(198, 18, 0, 1)),
        lid: 0,
        mtu: Mtu::M1024,
    }
}

fn client(name: &str, generation: u32) -> ClientInfo {
    ClientInfo {
        name: name.into(),
        class: BandwidthClass::High,
        generation,
        qps: vec![QpInfo {
            index: 0,
            endpoint: ep(0x100),
        }],
        regions: vec![RegionInfo {
            id: 3,
            purpose: "mirror".into(),
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            descriptor: RegionDescriptor {
                addr: 0x7f00_0000_1000,
                len: 1 << 20,
                rkey: 0xabcd,
            },
        }],
        terms: vec![Term {
            name: "window slots".into(),
            value: 64,
        }],
    }
}

/// One message of every type.
pub fn samples() -> Vec<Message> {
    let hello = Hello {
        version_min: 1,
        version_max: 1,
        cluster_id: 7,
        node_id: 1,
        partner_id: 2,
        link_id: 0,
        incarnation: 1001,
        capabilities: capabilities::ALL,
        nonce: [0x11; 32],
    };
    vec![
        Message::Hello(hello),
        Message::Refuse(Refuse::new(RefuseReason::Cluster, "cluster id 7 != 8")),
        Message::PeerInfo(PeerInfo {
            version: 1,
            cluster_id: 7,
            node_id: 1,
            link_id: 0,
            incarnation: 1001,
            capabilities: capabilities::ALL,
            health: RegionDescriptor {
                addr: 0x1000,
                len: 64,
                rkey: 9,
            },
            heartbeat: ep(0x41),
            clients: vec![client("nvram", 1), client("ctl", 4)],
        }),
        Message::Ready {
            link_id: 0,
            clients: vec![ReadyClient {
                name: "nvram".into(),
                generation: 1,
            }],
        },
        Message::Attach(client("late", 2)),
        Message::ClientReady {
            name: "late".into(),
            generation: 2,
        },
        Message::Detach {
            name: "late".into(),
            generation: 2,
            reason: DetachReason::Moving,
        },
        Message::Goodbye {
            reason: GoodbyeReason::Shutdown,
            detail: "stopping".into(),
        },
    ]
}

/// Every sample as a body, a frame and a frame to be fixed.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for msg in samples() {
        let mut body = vec![msg.message_type().code()];
        body.extend(encode_body(&msg).expect("sample encodes"));
        out.push(tagged(0, &body));
        let seq = u32::from(msg.is_authenticated());
        let f = encode_frame(&msg, seq, Some(&key())).expect("sample frames");
        out.push(tagged(1, &f));
        out.push(tagged(2, &f));
    }
    out
}
