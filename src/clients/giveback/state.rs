//! Node states and the giveback state block (F4.1).
//!
//! The state block travels inside the manager's 64-byte health block
//! ([`crate::manager::health::HealthBlock`]), which the partner READs by RDMA every heartbeat
//! interval on every link. The health block already carries the magic, its layout version,
//! the progress counter, the incarnation, the node id and a CRC32C over all of it, so a torn
//! or corrupt copy is rejected before the state block is looked at. The giveback client owns
//! the health block's `state` word (a [`NodeState`]) and its 32-byte `extension`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | giveback layout version (1) |
//! | 2 | 2 | flags: bit 0 AUTO_GIVEBACK, bit 1 SERVING_OWN, bit 2 SERVING_PARTNER, bit 3 PARTNER_DISKS_RESERVED, bit 4 INTERCONNECT_ALERT; other bits zero |
//! | 4 | 4 | takeovers completed by this incarnation |
//! | 8 | 4 | givebacks started by this incarnation |
//! | 12 | 8 | last outage window (giveback to partner serving), microseconds; 0 = none |
//! | 20 | 8 | last detection time (partner's last sign of life to takeover decision), microseconds; 0 = none |
//! | 28 | 2 | state changes of this incarnation (wrapping) |
//! | 30 | 2 | reserved, zero |
//!
//! Offsets are within the extension (add 28 for the offset in the health block). All integers
//! big-endian. Decoding rejects an unknown version, an unknown state word, unknown flag bits and
//! non-zero reserved bytes with a typed error. There is no wall-clock field: the block changes
//! only when something in it changes, so the owner publishes it only then.

use super::error::{FormatError, GivebackError};
use crate::manager::health::{HealthBlock, HEALTH_EXTENSION_LEN};
use std::fmt;

/// Layout version of the extension written by this code.
pub const STATE_BLOCK_VERSION: u16 = 1;

/// Flag: automatic giveback is on.
pub const FLAG_AUTO_GIVEBACK: u16 = 1 << 0;
/// Flag: the node serves its own disk set.
pub const FLAG_SERVING_OWN: u16 = 1 << 1;
/// Flag: the node serves its partner's disk set (it has taken over).
pub const FLAG_SERVING_PARTNER: u16 = 1 << 2;
/// Flag: the node holds the reservation of its partner's disk set.
pub const FLAG_PARTNER_DISKS_RESERVED: u16 = 1 << 3;
/// Flag: every link to the partner is silent while its mailbox is alive.
pub const FLAG_INTERCONNECT_ALERT: u16 = 1 << 4;
/// All flags of layout version 1.
pub const STATE_FLAGS_KNOWN: u16 = 0x1f;

/// Where a node is in its life (the `state` word of its health block).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Started; checking its disk reservations and the mailbox (steps 505-525).
    Booting = 1,
    /// Its disks are reserved by the partner; waits for their release (step 530).
    GiveWait = 2,
    /// Disks initialised; the mailbox says it is taken over; waits for the giveback
    /// (step 550).
    MbWait = 3,
    /// Serving its own disk set.
    Up = 4,
    /// Serving its own and its partner's disk sets.
    Takeover = 5,
    /// Stopped serving after a kill message or after finding its own disks reserved by the
    /// partner (fenced); about to reboot.
    Halted = 6,
}

impl NodeState {
    /// Every state, in numeric order.
    pub const ALL: [NodeState; 6] = [
        NodeState::Booting,
        NodeState::GiveWait,
        NodeState::MbWait,
        NodeState::Up,
        NodeState::Takeover,
        NodeState::Halted,
    ];

    /// The state of a state word; an unknown word is a typed error.
    pub fn from_u16(word: u16) -> Result<NodeState, FormatError> {
        NodeState::ALL
            .into_iter()
            .find(|s| *s as u16 == word)
            .ok_or(FormatError::State(word))
    }

    /// The state word.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Upper-case name, as the seeds spell it ("GIVEWAIT", "MBWAIT", ...).
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Booting => "BOOTING",
            NodeState::GiveWait => "GIVEWAIT",
            NodeState::MbWait => "MBWAIT",
            NodeState::Up => "UP",
            NodeState::Takeover => "TAKEOVER",
            NodeState::Halted => "HALTED",
        }
    }

    /// Whether a node in this state may be serving a disk set.
    pub fn may_serve(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Takeover)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a node publishes about itself in its health block (layout in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateBlock {
    /// The node's state.
    pub state: NodeState,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Takeovers completed by this incarnation.
    pub takeovers: u32,
    /// Givebacks started by this incarnation.
    pub givebacks: u32,
    /// Last outage window (giveback to partner serving), microseconds; 0 = none yet.
    pub last_outage_us: u64,
    /// Last detection time (partner's last sign of life to takeover decision), microseconds;
    /// 0 = none yet.
    pub last_detection_us: u64,
    /// State changes of this incarnation (wrapping).
    pub state_changes: u16,
}

impl StateBlock {
    /// A block in `state` with everything else zero.
    pub fn new(state: NodeState) -> StateBlock {
        StateBlock {
            state,
            flags: 0,
            takeovers: 0,
            givebacks: 0,
            last_outage_us: 0,
            last_detection_us: 0,
            state_changes: 0,
        }
    }

    /// Whether `flag` (one of the `FLAG_*` bits) is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The health block's state word and extension carrying this block.
    pub fn encode(&self) -> (u16, [u8; HEALTH_EXTENSION_LEN]) {
        let mut e = [0u8; HEALTH_EXTENSION_LEN];
        e[0..2].copy_from_slice(&STATE_BLOCK_VERSION.to_be_bytes());
        e[2..4].copy_from_slice(&self.flags.to_be_bytes());
        e[4..8].copy_from_slice(&self.takeovers.to_be_bytes());
        e[8..12].copy_from_slice(&self.givebacks.to_be_bytes());
        e[12..20].copy_from_slice(&self.last_outage_us.to_be_bytes());
        e[20..28].copy_from_slice(&self.last_detection_us.to_be_bytes());
        e[28..30].copy_from_slice(&self.state_changes.to_be_bytes());
        (self.state.as_u16(), e)
    }

    /// Decodes a state word and extension; unknown version, state or flags and non-zero
    /// reserved bytes are typed errors.
    pub fn decode(
        state: u16,
        ext: &[u8; HEALTH_EXTENSION_LEN],
    ) -> Result<StateBlock, GivebackError> {
        Self::decode_fields(state, ext).map_err(GivebackError::DecodeStateBlock)
    }

    fn decode_fields(
        state: u16,
        e: &[u8; HEALTH_EXTENSION_LEN],
    ) -> Result<StateBlock, FormatError> {
        let be16 = |o: usize| u16::from_be_bytes([e[o], e[o + 1]]);
        let be32 = |o: usize| u32::from_be_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let be64 = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&e[o..o + 8]);
            u64::from_be_bytes(x)
        };
        let version = be16(0);
        if version != STATE_BLOCK_VERSION {
            return Err(FormatError::Version(version));
        }
        let state = NodeState::from_u16(state)?;
        let flags = be16(2);
        if flags & !STATE_FLAGS_KNOWN != 0 {
            return Err(FormatError::Flags(u32::from(flags & !STATE_FLAGS_KNOWN)));
        }
        for (offset, &value) in e.iter().enumerate().skip(30) {
            if value != 0 {
                return Err(FormatError::Reserved { offset, value });
            }
        }
        Ok(StateBlock {
            state,
            flags,
            takeovers: be32(4),
            givebacks: be32(8),
            last_outage_us: be64(12),
            last_detection_us: be64(20),
            state_changes: be16(28),
        })
    }

    /// The health block a node publishes with this state block.
    pub fn to_health(&self, node_id: u32, incarnation: u64, progress: u64) -> HealthBlock {
        let (state, extension) = self.encode();
        HealthBlock {
            state,
            progress,
            incarnation,
            node_id,
            extension,
        }
    }
}

/// What one believed RDMA READ of the partner's health block gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartnerRead {
    /// The partner's incarnation.
    pub incarnation: u64,
    /// The partner's progress counter.
    pub progress: u64,
    /// The partner's state block.
    pub block: StateBlock,
}

impl PartnerRead {
    /// The giveback view of a decoded health block.
    pub fn from_health(health: &HealthBlock) -> Result<PartnerRead, GivebackError> {
        Ok(PartnerRead {
            incarnation: health.incarnation,
            progress: health.progress,
            block: StateBlock::decode(health.state, &health.extension)?,
        })
    }

    /// Decodes the raw bytes of a READ of `partner`'s health block. A torn, corrupt, short or
    /// foreign copy is a typed error: the driver reports it with
    /// [`super::GivebackMachine::handle_partner_torn`] and never believes it.
    pub fn decode(bytes: &[u8], partner: u32) -> Result<PartnerRead, GivebackError> {
        let health = HealthBlock::decode(bytes).map_err(GivebackError::DecodeHealthBlock)?;
        if health.node_id != partner {
            return Err(GivebackError::DecodeStateBlock(FormatError::Node {
                expected: partner,
                found: health.node_id,
            }));
        }
        PartnerRead::from_health(&health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireError;
    use crate::manager::health::HEALTH_BLOCK_LEN;

    fn sample() -> StateBlock {
        StateBlock {
            state: NodeState::Takeover,
            flags: FLAG_AUTO_GIVEBACK | FLAG_SERVING_OWN | FLAG_SERVING_PARTNER,
            takeovers: 3,
            givebacks: 2,
            last_outage_us: 123_456,
            last_detection_us: 987_654_321,
            state_changes: 0xbeef,
        }
    }

    #[test]
    fn giveback_state_names_and_words_round_trip() {
        for s in NodeState::ALL {
            assert_eq!(NodeState::from_u16(s.as_u16()), Ok(s));
        }
        assert_eq!(NodeState::GiveWait.name(), "GIVEWAIT");
        assert_eq!(NodeState::MbWait.to_string(), "MBWAIT");
        assert_eq!(NodeState::from_u16(0), Err(FormatError::State(0)));
        assert_eq!(NodeState::from_u16(7), Err(FormatError::State(7)));
    }

    #[test]
    fn giveback_state_block_round_trips() {
        for s in NodeState::ALL {
            let b = StateBlock {
                state: s,
                ..sample()
            };
            let (word, ext) = b.encode();
            assert_eq!(StateBlock::decode(word, &ext).unwrap(), b);
        }
        let (_, ext) = sample().encode();
        assert_eq!(&ext[0..2], &[0, 1], "layout version 1, big-endian");
        assert_eq!(&ext[30..32], &[0, 0]);
    }

    #[test]
    fn giveback_state_block_rejects_unknown_version_state_flags_and_reserved() {
        let (word, ext) = sample().encode();
        let dec = |w: u16, e: &[u8; 32]| match StateBlock::decode(w, e) {
            Err(GivebackError::DecodeStateBlock(f)) => f,
            other => panic!("expected a decode error, got {other:?}"),
        };
        // Every single-bit flip of the version, the flags' unknown bits and the reserved bytes.
        for byte in [0usize, 1, 30, 31] {
            for bit in 0..8 {
                let mut e = ext;
                e[byte] ^= 1 << bit;
                let f = dec(word, &e);
                match byte {
                    0 | 1 => assert!(matches!(f, FormatError::Version(_)), "{byte}:{bit} {f}"),
                    _ => assert!(
                        matches!(f, FormatError::Reserved { .. }),
                        "{byte}:{bit} {f}"
                    ),
                }
            }
        }
        for bit in 5..16 {
            let mut e = ext;
            let flags = u16::from_be_bytes([e[2], e[3]]) ^ (1 << bit);
            e[2..4].copy_from_slice(&flags.to_be_bytes());
            assert!(matches!(dec(word, &e), FormatError::Flags(_)));
        }
        for bit in 0..16 {
            let w = word ^ (1 << bit);
            if NodeState::from_u16(w).is_err() {
                assert_eq!(dec(w, &ext), FormatError::State(w));
            }
        }
    }

    #[test]
    fn giveback_health_block_with_state_rejects_every_bit_flip_and_truncation() {
        let bytes = sample().to_health(2, 7, 99).encode();
        let read = PartnerRead::decode(&bytes, 2).unwrap();
        assert_eq!(read.block, sample());
        assert_eq!((read.incarnation, read.progress), (7, 99));
        for i in 0..HEALTH_BLOCK_LEN * 8 {
            let mut t = bytes;
            t[i / 8] ^= 1 << (i % 8);
            assert!(
                PartnerRead::decode(&t, 2).is_err(),
                "flip of bit {i} believed"
            );
        }
        for len in 0..HEALTH_BLOCK_LEN {
            assert!(matches!(
                PartnerRead::decode(&bytes[..len], 2),
                Err(GivebackError::DecodeHealthBlock(WireError::Truncated { available, .. })) if available == len
            ));
        }
        assert!(matches!(
            PartnerRead::decode(&bytes, 3),
            Err(GivebackError::DecodeStateBlock(FormatError::Node {
                expected: 3,
                found: 2
            }))
        ));
        // A manager block without the giveback client (state 0, zero extension).
        let bare = HealthBlock {
            state: 0,
            progress: 1,
            incarnation: 1,
            node_id: 2,
            extension: [0; HEALTH_EXTENSION_LEN],
        };
        assert!(matches!(
            PartnerRead::decode(&bare.encode(), 2),
            Err(GivebackError::DecodeStateBlock(FormatError::Version(0)))
        ));
    }
}
