//! Packet format of the soft provider (one packet per message; every field big-endian).
//!
//! ```text
//! 0   u8   version (1)
//! 1   u8   opcode: 1 SEND, 2 SEND_IMM, 3 WRITE, 4 WRITE_IMM, 5 READ_REQ, 6 READ_RESP, 7 ACK
//! 2   u16  reserved (0)
//! 4   u32  destination QP number
//! 8   u32  source QP number
//! 12  u32  packet sequence number (24 bits used)
//! 16  ...  opcode-specific:
//!     SEND       payload
//!     SEND_IMM   imm u32, payload
//!     WRITE      remote addr u64, rkey u32, payload
//!     WRITE_IMM  remote addr u64, rkey u32, imm u32, payload
//!     READ_REQ   remote addr u64, rkey u32, length u32
//!     READ_RESP  payload
//!     ACK        syndrome u8 (0 ACK, 1 RNR NAK, 2 NAK sequence error, 3 NAK invalid request,
//!                4 NAK remote access error, 5 NAK remote operation error), 3 reserved bytes
//! ```

/// The destination queue pair of an encoded packet (None: shorter than a header, or another
/// version), read before the packet is authenticated and decoded.
pub fn dst_qpn(b: &[u8]) -> Option<u32> {
    (b.len() >= HEADER_LEN && b[0] == VERSION).then(|| be32(b, 4))
}

/// Protocol version carried in byte 0.
pub const VERSION: u8 = 1;
/// Size of the common header.
pub const HEADER_LEN: usize = 16;

/// A decoded packet; payloads borrow from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Destination queue pair.
    pub dst_qpn: u32,
    /// Source queue pair.
    pub src_qpn: u32,
    /// Packet sequence number.
    pub psn: u32,
    /// Operation.
    pub body: Body<'a>,
}

/// ACK syndromes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syndrome {
    /// Positive acknowledgement of every PSN up to this one.
    Ack,
    /// Receiver not ready: no receive posted for this PSN.
    RnrNak,
    /// Sequence error: the responder expects this PSN.
    NakSequence,
    /// The request was malformed (e.g. longer than the receive buffer).
    NakInvalidRequest,
    /// Remote access error: rkey, bounds or rights.
    NakRemoteAccess,
    /// The responder could not complete the operation.
    NakRemoteOperation,
}

impl Syndrome {
    fn code(self) -> u8 {
        match self {
            Syndrome::Ack => 0,
            Syndrome::RnrNak => 1,
            Syndrome::NakSequence => 2,
            Syndrome::NakInvalidRequest => 3,
            Syndrome::NakRemoteAccess => 4,
            Syndrome::NakRemoteOperation => 5,
        }
    }
    fn from_code(c: u8) -> Option<Syndrome> {
        Some(match c {
            0 => Syndrome::Ack,
            1 => Syndrome::RnrNak,
            2 => Syndrome::NakSequence,
            3 => Syndrome::NakInvalidRequest,
            4 => Syndrome::NakRemoteAccess,
            5 => Syndrome::NakRemoteOperation,
            _ => return None,
        })
    }
}

/// Opcode-specific part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// SEND, optionally with immediate.
    Send {
        /// Immediate data.
        imm: Option<u32>,
        /// Payload.
        payload: &'a [u8],
    },
    /// RDMA WRITE, optionally with immediate.
    Write {
        /// Target address.
        addr: u64,
        /// Target rkey.
        rkey: u32,
        /// Immediate data.
        imm: Option<u32>,
        /// Payload.
        payload: &'a [u8],
    },
    /// RDMA READ request.
    ReadRequest {
        /// Source address.
        addr: u64,
        /// Source rkey.
        rkey: u32,
        /// Bytes to read.
        len: u32,
    },
    /// RDMA READ response.
    ReadResponse {
        /// The data.
        payload: &'a [u8],
    },
    /// Acknowledgement or negative acknowledgement.
    Ack {
        /// Kind.
        syndrome: Syndrome,
    },
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header.
    #[error("packet of {0} bytes is truncated")]
    Truncated(usize),
    /// Unknown version.
    #[error("packet version {0} is not supported")]
    Version(u8),
    /// Unknown opcode.
    #[error("packet opcode {0} is unknown")]
    Opcode(u8),
    /// Unknown ACK syndrome.
    #[error("ack syndrome {0} is unknown")]
    Syndrome(u8),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl<'a> Packet<'a> {
    /// Decodes a packet; never panics on any input.
    pub fn decode(b: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated(b.len()));
        }
        if b[0] != VERSION {
            return Err(DecodeError::Version(b[0]));
        }
        let need = |n: usize| {
            if b.len() < HEADER_LEN + n {
                Err(DecodeError::Truncated(b.len()))
            } else {
                Ok(())
            }
        };
        let rest = HEADER_LEN;
        let body = match b[1] {
            1 => Body::Send {
                imm: None,
                payload: &b[rest..],
            },
            2 => {
                need(4)?;
                Body::Send {
                    imm: Some(be32(b, rest)),
                    payload: &b[rest + 4..],
                }
            }
            3 => {
                need(12)?;
                Body::Write {
                    addr: be64(b, rest),
                    rkey: be32(b, rest + 8),
                    imm: None,
                    payload: &b[rest + 12..],
                }
            }
            4 => {
                need(16)?;
                Body::Write {
                    addr: be64(b, rest),
                    rkey: be32(b, rest + 8),
                    imm: Some(be32(b, rest + 12)),
                    payload: &b[rest + 16..],
                }
            }
            5 => {
                need(16)?;
                Body::ReadRequest {
                    addr: be64(b, rest),
                    rkey: be32(b, rest + 8),
                    len: be32(b, rest + 12),
                }
            }
            6 => Body::ReadResponse {
                payload: &b[rest..],
            },
            7 => {
                need(4)?;
                Body::Ack {
                    syndrome: Syndrome::from_code(b[rest]).ok_or(DecodeError::Syndrome(b[rest]))?,
                }
            }
            op => return Err(DecodeError::Opcode(op)),
        };
        Ok(Packet {
            dst_qpn: be32(b, 4),
            src_qpn: be32(b, 8),
            psn: be32(b, 12) & 0x00ff_ffff,
            body,
        })
    }

    /// Encodes the packet into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let op = match &self.body {
            Body::Send { imm: None, .. } => 1,
            Body::Send { imm: Some(_), .. } => 2,
            Body::Write { imm: None, .. } => 3,
            Body::Write { imm: Some(_), .. } => 4,
            Body::ReadRequest { .. } => 5,
            Body::ReadResponse { .. } => 6,
            Body::Ack { .. } => 7,
        };
        out.extend_from_slice(&[VERSION, op, 0, 0]);
        out.extend_from_slice(&self.dst_qpn.to_be_bytes());
        out.extend_from_slice(&self.src_qpn.to_be_bytes());
        out.extend_from_slice(&(self.psn & 0x00ff_ffff).to_be_bytes());
        match &self.body {
            Body::Send { imm, payload } => {
                if let Some(i) = imm {
                    out.extend_from_slice(&i.to_be_bytes());
                }
                out.extend_from_slice(payload);
            }
            Body::Write {
                addr,
                rkey,
                imm,
                payload,
            } => {
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&rkey.to_be_bytes());
                if let Some(i) = imm {
                    out.extend_from_slice(&i.to_be_bytes());
                }
                out.extend_from_slice(payload);
            }
            Body::ReadRequest { addr, rkey, len } => {
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&rkey.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Body::ReadResponse { payload } => out.extend_from_slice(payload),
            Body::Ack { syndrome } => out.extend_from_slice(&[syndrome.code(), 0, 0, 0]),
        }
    }
}

/// PSN arithmetic modulo 2^24.
pub fn psn_add(psn: u32, n: u32) -> u32 {
    psn.wrapping_add(n) & 0x00ff_ffff
}

/// Signed distance `a - b` modulo 2^24, in -2^23..2^23.
pub fn psn_diff(a: u32, b: u32) -> i32 {
    let d = a.wrapping_sub(b) & 0x00ff_ffff;
    if d >= 0x0080_0000 {
        d as i32 - 0x0100_0000
    } else {
        d as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_each_opcode() {
        let bodies = [
            Body::Send {
                imm: None,
                payload: b"hi",
            },
            Body::Send {
                imm: Some(7),
                payload: b"",
            },
            Body::Write {
                addr: 1 << 40,
                rkey: 9,
                imm: None,
                payload: b"abc",
            },
            Body::Write {
                addr: 5,
                rkey: 9,
                imm: Some(0xdead_beef),
                payload: b"x",
            },
            Body::ReadRequest {
                addr: 77,
                rkey: 3,
                len: 1 << 20,
            },
            Body::ReadResponse { payload: b"data" },
            Body::Ack {
                syndrome: Syndrome::NakRemoteAccess,
            },
        ];
        let mut buf = Vec::new();
        for body in bodies {
            let p = Packet {
                dst_qpn: 0x12,
                src_qpn: 0x34,
                psn: 0xff_fffe,
                body,
            };
            p.encode(&mut buf);
            assert_eq!(Packet::decode(&buf).unwrap(), p);
        }
    }

    #[test]
    fn psn_wraps() {
        assert_eq!(psn_add(0xff_ffff, 1), 0);
        assert_eq!(psn_diff(0, 0xff_ffff), 1);
        assert_eq!(psn_diff(0xff_ffff, 0), -1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Packet::decode(&bytes);
        }
    }
}
