//! Packet authentication of the soft provider's reliable connections (docs/security.md P16).
//!
//! A queue pair connected with a [`PacketKey`] (the cluster manager derives one from each
//! link's authenticated bootstrap session, `Session::packet_key`) seals every packet it sends
//! and accepts only packets sealed for it:
//!
//! - one key per direction: HMAC-SHA256 under the packet key over [`DIRECTION_LABEL`] ‖ the
//!   sender's GID and QPN ‖ the receiver's GID and QPN (both ends derive the same two keys, in
//!   opposite roles, so a packet reflected to its sender does not verify);
//! - the tag: the first [`TAG_LEN`] bytes of HMAC-SHA256 under the direction key over the
//!   whole packet as sent, header included, with [`FLAG_TAG`] set in header byte 3; it is
//!   appended to the packet (wire.rs);
//! - on receipt the queue pair named by the header checks the tag in constant time before
//!   the packet is decoded; a packet without a valid tag for a keyed queue pair, or with a tag
//!   for one connected without a key, is dropped and counted
//!   ([`SoftDevice::unauthenticated`](super::SoftDevice::unauthenticated)).
//!
//! The tag covers the PSN, so a recorded packet replayed into the same connection is a
//! duplicate (acknowledged, never executed twice: rc.rs) and one replayed into another
//! connection or session does not verify (other QPNs, GIDs or session key).

use super::wire::HEADER_LEN;
use crate::fabric::types::{Gid, PacketKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag appended to a sealed packet.
pub const TAG_LEN: usize = 16;
/// Header byte 3, bit 0: the packet carries a tag.
pub const FLAG_TAG: u8 = 1;
/// Label of the direction keys.
pub const DIRECTION_LABEL: &[u8] = b"interlink soft packet direction v1";

/// The two direction keys of one connected queue pair, keyed MACs ready to clone.
#[derive(Clone)]
pub(crate) struct PacketAuth {
    send: HmacSha256,
    recv: HmacSha256,
}

impl std::fmt::Debug for PacketAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketAuth(<keys>)")
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn direction(key: &PacketKey, from: (Gid, u32), to: (Gid, u32)) -> HmacSha256 {
    let mut m = keyed(key.as_bytes());
    m.update(DIRECTION_LABEL);
    m.update(&from.0 .0);
    m.update(&from.1.to_be_bytes());
    m.update(&to.0 .0);
    m.update(&to.1.to_be_bytes());
    keyed(&m.finalize().into_bytes())
}

impl PacketAuth {
    /// The keys of the queue pair `local` (GID, QPN) connected to `remote` under `key`.
    pub(crate) fn derive(key: &PacketKey, local: (Gid, u32), remote: (Gid, u32)) -> PacketAuth {
        PacketAuth {
            send: direction(key, local, remote),
            recv: direction(key, remote, local),
        }
    }

    /// Seals an encoded packet: sets [`FLAG_TAG`] and appends its tag.
    pub(crate) fn seal(&self, pkt: &mut Vec<u8>) {
        if pkt.len() < HEADER_LEN {
            return; // never an encoded packet
        }
        pkt[3] |= FLAG_TAG;
        let mut m = self.send.clone();
        m.update(pkt);
        let tag = m.finalize().into_bytes();
        pkt.extend_from_slice(&tag[..TAG_LEN]);
    }

    /// The packet without its tag if the tag is valid (constant-time check).
    pub(crate) fn open<'a>(&self, pkt: &'a [u8]) -> Option<&'a [u8]> {
        if pkt.len() < HEADER_LEN + TAG_LEN || pkt[3] & FLAG_TAG == 0 {
            return None;
        }
        let (body, tag) = pkt.split_at(pkt.len() - TAG_LEN);
        let mut m = self.recv.clone();
        m.update(body);
        m.verify_truncated_left(tag).ok()?;
        Some(body)
    }
}

/// Whether an inbound packet carries a tag (header byte 3).
pub(crate) fn is_sealed(pkt: &[u8]) -> bool {
    pkt.len() > 3 && pkt[3] & FLAG_TAG != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> ((Gid, u32), (Gid, u32)) {
        let mut a = Gid::default();
        a.0[15] = 1;
        let mut b = Gid::default();
        b.0[15] = 2;
        ((a, 0x11), (b, 0x22))
    }

    fn packet(len: usize) -> Vec<u8> {
        let mut p = vec![1u8, 3, 0, 0];
        p.extend((0..len - 4).map(|i| i as u8));
        p
    }

    #[test]
    fn a_sealed_packet_opens_at_its_peer_only() {
        let key = PacketKey::from_bytes([7; 32]);
        let (a, b) = ends();
        let at_a = PacketAuth::derive(&key, a, b);
        let at_b = PacketAuth::derive(&key, b, a);
        let plain = packet(100);
        let mut p = plain.clone();
        at_a.seal(&mut p);
        assert_eq!(p.len(), plain.len() + TAG_LEN);
        assert!(is_sealed(&p));
        let opened = at_b.open(&p).expect("the peer opens it");
        assert_eq!(opened[4..], plain[4..]);
        // Reflected to its sender, or opened under another key or pair: refused.
        assert!(at_a.open(&p).is_none());
        let other = PacketAuth::derive(&PacketKey::from_bytes([8; 32]), b, a);
        assert!(other.open(&p).is_none());
        let (c, _) = ends();
        let third = PacketAuth::derive(&key, b, (c.0, 0x12));
        assert!(third.open(&p).is_none());
    }

    #[test]
    fn every_bit_flip_and_a_missing_tag_are_refused() {
        let key = PacketKey::from_bytes([9; 32]);
        let (a, b) = ends();
        let (at_a, at_b) = (
            PacketAuth::derive(&key, a, b),
            PacketAuth::derive(&key, b, a),
        );
        let mut p = packet(40);
        at_a.seal(&mut p);
        for byte in 0..p.len() {
            for bit in 0..8 {
                let mut q = p.clone();
                q[byte] ^= 1 << bit;
                assert!(at_b.open(&q).is_none(), "flip of byte {byte} bit {bit}");
            }
        }
        assert!(at_b.open(&packet(40)).is_none(), "no tag");
        assert!(at_b.open(&p[..p.len() - 1]).is_none(), "short tag");
    }
}
