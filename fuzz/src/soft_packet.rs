//! Packets of the soft provider's transport (src/fabric/soft/wire.rs), what a device receives
//! from the network (TCP or the simulated network). Input: one packet. An accepted packet is
//! encoded again and must decode to the same packet (the encoding is not canonical: reserved
//! header bytes and the PSN's top byte are ignored, so bytes are not compared).

use crate::rejected;
use interlink::fabric::soft::wire::{Body, Packet, Syndrome};

/// Runs one input.
pub fn run(data: &[u8]) {
    match Packet::decode(data) {
        Ok(p) => {
            let mut out = Vec::new();
            p.encode(&mut out);
            assert!(out.len() <= data.len(), "encoding grew the packet");
            let back = Packet::decode(&out).expect("an encoded packet decodes");
            assert_eq!(back, p);
        }
        Err(e) => rejected(&e),
    }
}

/// One packet of every opcode.
pub fn seeds() -> Vec<Vec<u8>> {
    let bodies = [
        Body::Send {
            imm: None,
            payload: b"send",
        },
        Body::Send {
            imm: Some(7),
            payload: b"send+imm",
        },
        Body::Write {
            addr: 0x1000,
            rkey: 3,
            imm: None,
            payload: b"write",
        },
        Body::Write {
            addr: 0x2000,
            rkey: 4,
            imm: Some(9),
            payload: b"write+imm",
        },
        Body::ReadRequest {
            addr: 0x3000,
            rkey: 5,
            len: 64,
        },
        Body::ReadResponse {
            payload: b"response",
        },
        Body::Ack {
            syndrome: Syndrome::NakRemoteAccess,
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut out = Vec::new();
            Packet {
                dst_qpn: 0x11,
                src_qpn: 0x22,
                psn: 100 + i as u32,
                body,
            }
            .encode(&mut out);
            out
        })
        .collect()
}
