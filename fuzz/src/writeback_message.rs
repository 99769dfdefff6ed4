//! Write-back messages (src/clients/mirror/writeback/message.rs): RQR, RTR, DataSent, MDA,
//! Reject, Destaged, DestageAck and Held. Input: the message bytes. An accepted message must re-encode to the same
//! bytes.

use crate::rejected;
use interlink::clients::mirror::writeback::{BlockRef, Message, RejectReason, RequestRef, Rqr};

/// Runs one input.
pub fn run(data: &[u8]) {
    match Message::decode(data) {
        Ok(m) => {
            assert_eq!(m.encoded_len(), data.len());
            let again = m.to_bytes().expect("a decoded message encodes");
            assert_eq!(again, data, "decode then encode changed {m:?}");
            assert_eq!(m.kind(), data[0]);
        }
        Err(e) => rejected(&e),
    }
}

/// One message of every kind.
pub fn seeds() -> Vec<Vec<u8>> {
    let at = RequestRef {
        request: 17,
        rie: 3,
        incarnation: 2,
    };
    let msgs = [
        Message::Rqr(Rqr {
            at,
            unit: 1,
            first_block: 4096,
            old_blocks: 1,
            new_buffers: vec![7, 8, 9],
        }),
        Message::Rtr(at),
        Message::DataSent(at),
        Message::Mda(at),
        Message::Reject(at, RejectReason::RangeBusy),
        Message::Destaged(
            RequestRef { rie: 0, ..at },
            BlockRef {
                unit: 1,
                block: 4096,
            },
        ),
        Message::DestageAck(RequestRef { rie: 0, ..at }),
        Message::Held(
            at,
            BlockRef {
                unit: 1,
                block: 4096,
            },
            7,
        ),
    ];
    msgs.iter().map(|m| m.to_bytes().expect("encode")).collect()
}
