//! The health block the partner READs (src/manager/health.rs), the giveback state block in
//! its extension (src/clients/giveback/state.rs), the mailbox record
//! (src/clients/giveback/mailbox.rs) and the reservation record
//! (src/clients/giveback/reservation.rs).
//!
//! Input: selector byte, then the bytes to decode. Selector `% 6`: 0 health block (and the
//! partner read of it), 1 the same with its CRC fixed, 2 mailbox record, 3 the same with its
//! CRC fixed (where its layout version puts it), 4 reservation record, 5 the same with its CRC
//! fixed. Every accepted record must re-encode to the bytes it came from; a mailbox record of
//! layout 1 or 2 (an earlier release's) re-encodes in the current layout with the same
//! meaning.

use crate::{rejected, tagged};
use interlink::clients::giveback::reservation::{decode_reservation, encode_reservation};
use interlink::clients::giveback::state::{FLAG_AUTO_GIVEBACK, FLAG_SERVING_OWN};
use interlink::clients::giveback::{MailboxRecord, NodeState, PartnerRead, StateBlock};
use interlink::manager::health::{HealthBlock, HEALTH_BLOCK_LEN};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => health(rest),
        1 => health(&fix_crc_be(rest, 60)),
        2 => mailbox(rest),
        3 => {
            let at = match rest.get(4..6) {
                Some([0, 1]) => 60,
                Some([0, 2]) => 92,
                _ => 108,
            };
            mailbox(&fix_crc_be(rest, at))
        }
        4 => reservation(rest),
        _ => reservation(&fix_crc_be(rest, 12)),
    }
}

/// `b` with the big-endian CRC32C of `b[..at]` written at `at` (unchanged if too short).
fn fix_crc_be(b: &[u8], at: usize) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.len() >= at + 4 {
        let crc = crc32c::crc32c(&v[..at]);
        v[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    v
}

fn health(b: &[u8]) {
    match HealthBlock::decode(b) {
        Ok(h) => {
            assert_eq!(&h.encode()[..], &b[..HEALTH_BLOCK_LEN]);
            match StateBlock::decode(h.state, &h.extension) {
                Ok(s) => assert_eq!(s.encode(), (h.state, h.extension)),
                Err(e) => rejected(&e),
            }
            match PartnerRead::decode(b, h.node_id) {
                Ok(p) => {
                    assert_eq!((p.incarnation, p.progress), (h.incarnation, h.progress));
                    let back = p.block.to_health(h.node_id, h.incarnation, h.progress);
                    assert_eq!(back, h);
                }
                Err(e) => rejected(&e),
            }
            if let Err(e) = PartnerRead::decode(b, h.node_id.wrapping_add(1)) {
                rejected(&e);
            } else {
                panic!(
                    "a health block of node {} read as another node's",
                    h.node_id
                );
            }
        }
        Err(e) => {
            rejected(&e);
            if let Err(e) = PartnerRead::decode(b, 2) {
                rejected(&e);
            } else {
                panic!("PartnerRead accepted a health block HealthBlock refused");
            }
        }
    }
}

fn mailbox(b: &[u8]) {
    match MailboxRecord::decode(b) {
        Ok(r) => {
            let e = r.encode();
            if b.get(4..6) == Some(&[0, 1][..]) {
                let again = MailboxRecord::decode(&e).expect("a re-encoded layout 1 record");
                assert_eq!(again, r);
                assert_eq!(
                    (
                        r.replayed_partner_log,
                        r.partner_copy_outdated,
                        r.partner_copy_complete_for,
                        r.writeback_copy_outdated,
                        r.own_log_generation
                    ),
                    (None, None, None, false, 0)
                );
            } else if b.get(4..6) == Some(&[0, 2][..]) {
                let again = MailboxRecord::decode(&e).expect("a re-encoded layout 2 record");
                assert_eq!(again, r);
                assert_eq!((r.own_writeback_epoch, r.took_over_writeback), (0, 0));
                assert_eq!(&e[6..88], &b[6..88]);
            } else {
                assert_eq!(&e[..], &b[..e.len()]);
            }
        }
        Err(e) => rejected(&e),
    }
}

fn reservation(b: &[u8]) {
    match decode_reservation(b) {
        Ok(holder) => assert_eq!(&encode_reservation(holder)[..], b),
        Err(e) => rejected(&e),
    }
}

/// Encoded health blocks (with state blocks), mailbox records and reservations.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = StateBlock::new(NodeState::Up);
    block.flags = FLAG_AUTO_GIVEBACK | FLAG_SERVING_OWN;
    block.takeovers = 2;
    block.last_outage_us = 1234;
    let h = block.to_health(2, 1002, 77);
    out.push(tagged(0, &h.encode()));
    out.push(tagged(
        1,
        &StateBlock::new(NodeState::Takeover)
            .to_health(1, 5, 1)
            .encode(),
    ));
    let rec = MailboxRecord {
        node: 1,
        incarnation: 1001,
        state: NodeState::Up,
        taken_over: true,
        takeover_pending: false,
        heartbeat: 42,
        partner_incarnation: 1002,
        replayed_partner_log: None,
        partner_copy_outdated: None,
        partner_copy_complete_for: None,
        writeback_copy_outdated: false,
        own_log_generation: 0,
        own_log_applied_here: false,
        own_writeback_epoch: 0,
        took_over_writeback: 0,
    };
    out.push(tagged(2, &rec.encode()));
    out.push(tagged(3, &rec.encode()));
    let marked = MailboxRecord {
        replayed_partner_log: Some(interlink::clients::giveback::ReplayedMark {
            at: interlink::clients::giveback::LogMark {
                generation: 7,
                seq: 40,
            },
            complete: true,
        }),
        partner_copy_outdated: Some(interlink::clients::giveback::LogMark {
            generation: 9,
            seq: 3,
        }),
        partner_copy_complete_for: Some(1002),
        writeback_copy_outdated: true,
        own_log_generation: 9,
        own_log_applied_here: true,
        own_writeback_epoch: 4,
        took_over_writeback: 3,
        ..rec
    };
    out.push(tagged(2, &marked.encode()));
    out.push(tagged(4, &encode_reservation(2)));
    out.push(tagged(5, &encode_reservation(1)));
    out
}
