//! Plain data shared by every provider: access rights, addresses, endpoint and region
//! descriptors, work requests and completions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Access rights of a memory region. Registration asks for exactly these and no more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Access(u8);

impl Access {
    /// No rights beyond local read (the source of SEND and WRITE).
    pub const NONE: Access = Access(0);
    /// The local device may write into the region (RECV and READ destinations).
    pub const LOCAL_WRITE: Access = Access(1);
    /// The partner may RDMA READ the region.
    pub const REMOTE_READ: Access = Access(2);
    /// The partner may RDMA WRITE the region (implies `LOCAL_WRITE` on verbs).
    pub const REMOTE_WRITE: Access = Access(4);
    /// The partner may RDMA FLUSH the region to global visibility (verbs
    /// `IBV_ACCESS_FLUSH_GLOBAL`). Granted only where the device supports FLUSH: a region
    /// registered on a device without it has this right dropped, so
    /// [`MemoryRegion::access`](super::MemoryRegion::access) (and what the partner is told)
    /// says whether the partner may FLUSH it.
    pub const REMOTE_FLUSH: Access = Access(8);

    /// Whether every right in `other` is also in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
    /// The raw bits (bit 0 local write, bit 1 remote read, bit 2 remote write, bit 3 remote
    /// flush).
    pub fn bits(self) -> u8 {
        self.0
    }
    /// These rights without those in `other`.
    pub const fn without(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }
    /// Both sets of rights (`|` in a `const`).
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
    /// Rights from raw bits; unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Access {
        Access(bits & 15)
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.contains(Access::LOCAL_WRITE) {
            parts.push("LOCAL_WRITE");
        }
        if self.contains(Access::REMOTE_READ) {
            parts.push("REMOTE_READ");
        }
        if self.contains(Access::REMOTE_WRITE) {
            parts.push("REMOTE_WRITE");
        }
        if self.contains(Access::REMOTE_FLUSH) {
            parts.push("REMOTE_FLUSH");
        }
        if parts.is_empty() {
            parts.push("NONE");
        }
        write!(f, "{}", parts.join("|"))
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A 128-bit RoCE/InfiniBand global identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The IPv4-mapped GID `::ffff:a.b.c.d` that RoCEv2 uses for an IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> Gid {
        Gid(ip.to_ipv6_mapped().octets())
    }
    /// The GID for an IP address (IPv4-mapped for IPv4, the address itself for IPv6).
    pub fn from_ip(ip: IpAddr) -> Gid {
        match ip {
            IpAddr::V4(v4) => Gid::from_ipv4(v4),
            IpAddr::V6(v6) => Gid(v6.octets()),
        }
    }
    /// The IP address this GID stands for (IPv4 when IPv4-mapped).
    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
    /// Whether every byte is zero (an unset GID table entry).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Ipv6Addr::from(self.0))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Path MTU of a connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Mtu {
    /// 256 bytes.
    M256,
    /// 512 bytes.
    M512,
    /// 1024 bytes (the usual RoCE MTU over a 1500-byte Ethernet).
    M1024,
    /// 2048 bytes.
    M2048,
    /// 4096 bytes.
    M4096,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> u32 {
        match self {
            Mtu::M256 => 256,
            Mtu::M512 => 512,
            Mtu::M1024 => 1024,
            Mtu::M2048 => 2048,
            Mtu::M4096 => 4096,
        }
    }
    /// The verbs enumeration value (`IBV_MTU_256` = 1 ... `IBV_MTU_4096` = 5).
    pub fn code(self) -> u8 {
        match self {
            Mtu::M256 => 1,
            Mtu::M512 => 2,
            Mtu::M1024 => 3,
            Mtu::M2048 => 4,
            Mtu::M4096 => 5,
        }
    }
    /// The MTU for a verbs enumeration value, if valid.
    pub fn from_code(code: u8) -> Option<Mtu> {
        Some(match code {
            1 => Mtu::M256,
            2 => Mtu::M512,
            3 => Mtu::M1024,
            4 => Mtu::M2048,
            5 => Mtu::M4096,
            _ => return None,
        })
    }
    /// The largest MTU that is at most `bytes` (at least 256).
    pub fn at_most(bytes: u32) -> Mtu {
        match bytes {
            b if b >= 4096 => Mtu::M4096,
            b if b >= 2048 => Mtu::M2048,
            b if b >= 1024 => Mtu::M1024,
            b if b >= 512 => Mtu::M512,
            _ => Mtu::M256,
        }
    }
}

/// Everything a peer needs to slam-connect a queue pair to ours: plain, serialisable data.
///
/// On the soft provider over TCP, `lid` carries the TCP port the device listens on (RoCE has
/// no LIDs, so the field is otherwise zero); on the in-process transport it is zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// The port's global identifier (RoCEv2: IPv4-mapped address).
    pub gid: Gid,
    /// Local identifier (InfiniBand); 0 on RoCE.
    pub lid: u16,
    /// Path MTU the owner supports.
    pub mtu: Mtu,
}

/// Size of [`Endpoint::to_bytes`].
pub const ENDPOINT_WIRE_LEN: usize = 28;

impl Endpoint {
    /// Encodes the endpoint as 28 bytes: qpn u32 BE, psn u32 BE, gid 16 bytes, lid u16 BE,
    /// mtu code u8, one zero byte.
    pub fn to_bytes(&self) -> [u8; ENDPOINT_WIRE_LEN] {
        let mut b = [0u8; ENDPOINT_WIRE_LEN];
        b[0..4].copy_from_slice(&self.qpn.to_be_bytes());
        b[4..8].copy_from_slice(&self.psn.to_be_bytes());
        b[8..24].copy_from_slice(&self.gid.0);
        b[24..26].copy_from_slice(&self.lid.to_be_bytes());
        b[26] = self.mtu.code();
        b
    }
    /// Decodes and validates [`Endpoint::to_bytes`] output.
    pub fn from_bytes(b: &[u8]) -> Result<Endpoint, EndpointError> {
        if b.len() != ENDPOINT_WIRE_LEN {
            return Err(EndpointError::Length(b.len()));
        }
        let qpn = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let psn = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[8..24]);
        let lid = u16::from_be_bytes([b[24], b[25]]);
        let mtu = Mtu::from_code(b[26]).ok_or(EndpointError::Mtu(b[26]))?;
        let ep = Endpoint {
            qpn,
            psn,
            gid: Gid(gid),
            lid,
            mtu,
        };
        ep.validate()?;
        Ok(ep)
    }
    /// Checks the fields are within their wire widths and the GID is set.
    pub fn validate(&self) -> Result<(), EndpointError> {
        if self.qpn == 0 || self.qpn > 0x00ff_ffff {
            return Err(EndpointError::Qpn(self.qpn));
        }
        if self.psn > 0x00ff_ffff {
            return Err(EndpointError::Psn(self.psn));
        }
        if self.gid.is_zero() {
            return Err(EndpointError::ZeroGid);
        }
        Ok(())
    }
}

/// What is wrong with an endpoint descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The encoding is not 28 bytes long.
    #[error("endpoint descriptor is {0} bytes, expected {ENDPOINT_WIRE_LEN}")]
    Length(usize),
    /// The QP number is zero or wider than 24 bits.
    #[error("endpoint qpn {0:#x} is not a valid 24-bit queue pair number (1..=0xffffff)")]
    Qpn(u32),
    /// The PSN is wider than 24 bits.
    #[error("endpoint psn {0:#x} is wider than 24 bits")]
    Psn(u32),
    /// The MTU code is not 1..=5.
    #[error("endpoint mtu code {0} is not one of 1..=5 (256..4096 bytes)")]
    Mtu(u8),
    /// The GID is all zeros.
    #[error("endpoint gid is all zeros: the peer's port has no address")]
    ZeroGid,
}

/// Where a region lives and how to reach it remotely: plain, serialisable data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct RegionDescriptor {
    /// Virtual address of the first byte (what remote operations address).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

impl RegionDescriptor {
    /// A remote address `offset` bytes into this region, for READ/WRITE targets.
    pub fn at(&self, offset: u64) -> RemoteAddr {
        RemoteAddr {
            addr: self.addr.wrapping_add(offset),
            rkey: self.rkey,
        }
    }
}

/// Target of an RDMA READ or WRITE in the peer's memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct RemoteAddr {
    /// Remote virtual address.
    pub addr: u64,
    /// Remote key of the region containing it.
    pub rkey: u32,
}

/// A 32-byte key under which the soft provider seals and checks every packet of a connection
/// ([`ConnectOptions::packet_key`]). `Debug` never prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PacketKey([u8; 32]);

impl PacketKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PacketKey {
        PacketKey(bytes)
    }
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(<redacted>)")
    }
}

/// Per-connection reliability settings applied by `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectOptions {
    /// Local ACK timeout exponent: 4.096 µs × 2^timeout (0 = infinite, 14 ≈ 67 ms).
    pub ack_timeout: u8,
    /// Transport retries before a `RetryExceeded` completion (0..=7). The default is 6: Linux
    /// rxe (Soft-RoCE) treats 7 like an infinite retry, so a vanished peer would never surface.
    pub retry_count: u8,
    /// Receiver-not-ready retries (0..=6, 7 = infinite).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code advertised to the peer (0..=31; 12 = 0.64 ms).
    pub min_rnr_timer: u8,
    /// Outstanding RDMA READs we may have in flight and accept (1..=16).
    pub max_rd_atomic: u8,
    /// Path MTU cap; the connection uses the smallest of this, ours and the peer's.
    pub mtu: Mtu,
    /// The soft provider seals every packet of the connection under this key and accepts only
    /// packets sealed for it (docs/security.md P16); both ends give the same key (the cluster
    /// manager derives it from the link's authenticated bootstrap session). None: packets are
    /// neither sealed nor checked. The verbs provider ignores it (RoCE carries no such MAC).
    #[serde(skip)]
    pub packet_key: Option<PacketKey>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            ack_timeout: 14,
            retry_count: 6,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 1,
            mtu: Mtu::M1024,
            packet_key: None,
        }
    }
}

impl ConnectOptions {
    /// The local ACK timeout as a duration (`None` when infinite).
    pub fn ack_timeout_duration(&self) -> Option<std::time::Duration> {
        if self.ack_timeout == 0 {
            None
        } else {
            let ns = 4096u64 << self.ack_timeout.min(31);
            Some(std::time::Duration::from_nanos(ns))
        }
    }
    /// The bounded time after which an unreachable peer yields `RetryExceeded`.
    pub fn give_up_after(&self) -> Option<std::time::Duration> {
        self.ack_timeout_duration()
            .map(|t| t * (u32::from(self.retry_count.min(7)) + 1))
    }
    /// The RNR back-off for [`ConnectOptions::min_rnr_timer`] (IBTA table, approximated).
    pub fn rnr_delay(&self) -> std::time::Duration {
        // Code 0 means 655.36 ms; codes 1..=31 grow roughly geometrically from 0.01 ms.
        const US: [u32; 32] = [
            655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560,
            3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920, 122880, 163840,
            245760, 327680, 491520,
        ];
        std::time::Duration::from_micros(u64::from(US[usize::from(self.min_rnr_timer & 31)]))
    }
}

/// State of a queue pair.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum QpState {
    /// Created, or reset after an error; no traffic.
    Reset,
    /// Receives may be posted.
    Init,
    /// Ready to receive.
    ReadyToReceive,
    /// Ready to send: connected.
    ReadyToSend,
    /// Send queue drained (unused by this crate).
    SendQueueDrained,
    /// Send queue error (unused on RC).
    SendQueueError,
    /// Error: every outstanding request is flushed.
    Error,
}

/// Outcome of a work request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CompletionStatus {
    /// The operation completed.
    Success,
    /// A receive buffer was too small for the incoming message.
    LocalLengthError,
    /// The local QP hit an internal consistency error.
    LocalQpOperationError,
    /// A local buffer or key was not valid for the operation.
    LocalProtectionError,
    /// Flushed because the QP is in the error state.
    WorkRequestFlushed,
    /// The responder found the request malformed or unsupported.
    RemoteInvalidRequest,
    /// The responder refused access: bad rkey, out of bounds or missing right.
    RemoteAccessError,
    /// The responder failed to complete the operation.
    RemoteOperationError,
    /// No acknowledgement after every transport retry: the peer or the path is gone.
    RetryExceeded,
    /// The responder had no receive posted after every RNR retry.
    RnrRetryExceeded,
    /// A response did not match the request.
    BadResponse,
    /// Any other status, with its verbs code.
    Other(u32),
}

impl CompletionStatus {
    /// Whether the request succeeded.
    pub fn is_ok(self) -> bool {
        self == CompletionStatus::Success
    }
}

/// What a completion was for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CompletionOp {
    /// A SEND (with or without immediate) left.
    Send,
    /// An RDMA WRITE (with or without immediate) was acknowledged.
    Write,
    /// An RDMA READ response arrived.
    Read,
    /// An RDMA FLUSH was acknowledged: the writes before it are placed at the partner.
    Flush,
    /// A RECV was filled by a SEND.
    Recv,
    /// A RECV was consumed by a WRITE with immediate.
    RecvWithImm,
    /// An error completion whose opcode is undefined.
    Unknown,
}

/// A completion as the application sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completion {
    /// The caller's work request id.
    pub wr_id: u64,
    /// Outcome.
    pub status: CompletionStatus,
    /// Operation (meaningful only on success for send-queue entries on verbs).
    pub op: CompletionOp,
    /// Bytes received (receives and READs).
    pub byte_len: u32,
    /// Immediate data carried by a SEND or WRITE with immediate.
    pub imm: Option<u32>,
    /// Local queue pair number.
    pub qpn: u32,
}

/// Asynchronous device events.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AsyncEvent {
    /// A port became active.
    PortActive {
        /// Port number.
        port: u8,
    },
    /// A port went down.
    PortDown {
        /// Port number.
        port: u8,
    },
    /// A queue pair hit a fatal error and is in the error state.
    QpFatal {
        /// Queue pair number.
        qpn: u32,
    },
    /// A queue pair hit an access violation.
    QpAccessError {
        /// Queue pair number.
        qpn: u32,
    },
    /// A queue pair's send queue has drained / last WQE reached etc.
    QpOther {
        /// Queue pair number.
        qpn: u32,
        /// Provider event code.
        code: u32,
    },
    /// A completion queue overran or failed.
    CqError,
    /// The device failed.
    DeviceFatal,
    /// Any other event, with its provider code.
    Other {
        /// Provider event code.
        code: u32,
    },
}

/// Sizes of a queue pair's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpCapacity {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Largest payload posted inline (0 disables inline).
    pub max_inline_data: u32,
    /// Ask for RDMA FLUSH on the send queue ([`SendOp::Flush`](super::SendOp::Flush)). Granted
    /// only where the provider, the verbs library and the device support it: check
    /// [`QueuePair::supports_flush`](super::QueuePair::supports_flush).
    #[serde(default)]
    pub flush: bool,
}

impl Default for QpCapacity {
    fn default() -> Self {
        QpCapacity {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_inline_data: 0,
            flush: false,
        }
    }
}

/// Which provider backs a device.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ProviderKind {
    /// libibverbs (hardware RDMA, Soft-RoCE).
    Verbs,
    /// The userspace provider (TCP or in-process).
    Soft,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Verbs => "verbs",
            ProviderKind::Soft => "soft",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_maps_ipv4() {
        let gid = Gid::from_ipv4(Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(&gid.0[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(gid.to_ip(), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn endpoint_roundtrip_and_validation() {
        let ep = Endpoint {
            qpn: 0x11,
            psn: 0xabcdef,
            gid: Gid::from_ipv4(Ipv4Addr::new(198, 18, 1, 2)),
            lid: 7000,
            mtu: Mtu::M1024,
        };
        assert_eq!(Endpoint::from_bytes(&ep.to_bytes()).unwrap(), ep);
        let mut bad = ep.to_bytes();
        bad[26] = 9;
        assert_eq!(Endpoint::from_bytes(&bad), Err(EndpointError::Mtu(9)));
        assert_eq!(
            Endpoint::from_bytes(&bad[..5]),
            Err(EndpointError::Length(5))
        );
        let mut zero = ep;
        zero.qpn = 0;
        assert_eq!(zero.validate(), Err(EndpointError::Qpn(0)));
        zero.qpn = 1 << 24;
        assert!(zero.validate().is_err());
        let mut g = ep;
        g.gid = Gid::default();
        assert_eq!(g.validate(), Err(EndpointError::ZeroGid));
    }

    #[test]
    fn access_bits() {
        let a = Access::LOCAL_WRITE | Access::REMOTE_READ;
        assert!(a.contains(Access::REMOTE_READ));
        assert!(!a.contains(Access::REMOTE_WRITE));
        assert_eq!(Access::from_bits(a.bits()), a);
        assert_eq!(format!("{a:?}"), "LOCAL_WRITE|REMOTE_READ");
        let f = Access::REMOTE_WRITE | Access::REMOTE_FLUSH;
        assert_eq!(Access::from_bits(f.bits()), f);
        assert_eq!(f.without(Access::REMOTE_FLUSH), Access::REMOTE_WRITE);
        assert_eq!(format!("{f:?}"), "REMOTE_WRITE|REMOTE_FLUSH");
        assert_eq!(Access::from_bits(0xff).bits(), 15);
    }

    #[test]
    fn timeouts() {
        let o = ConnectOptions {
            ack_timeout: 14,
            retry_count: 3,
            ..Default::default()
        };
        let t = o.ack_timeout_duration().unwrap();
        assert!(
            t > std::time::Duration::from_millis(60) && t < std::time::Duration::from_millis(70)
        );
        assert_eq!(o.give_up_after().unwrap(), t * 4);
    }
}
