//! The fabric layer's error type.

use super::types::{Access, EndpointError, ProviderKind};

/// Why a fabric operation failed. Variants are named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The libibverbs provider failed (the verb, errno and context are inside).
    #[cfg(feature = "verbs")]
    #[error(transparent)]
    Verbs(#[from] super::verbs::VerbsError),
    /// The verbs provider was asked for, and this build has none (the crate's `verbs` feature
    /// is off: soft provider only).
    #[error(
        "open device: this build has no verbs provider (the interlink crate's `verbs` feature \
         is off); use the soft provider or build with `--features verbs`"
    )]
    VerbsNotBuilt,
    /// The soft provider failed.
    #[error(transparent)]
    Soft(#[from] super::soft::SoftError),
    /// No device has the requested name.
    #[error("open device: no {provider} device named {name:?} (available: {available:?})")]
    OpenDeviceByName {
        /// Provider searched.
        provider: ProviderKind,
        /// Requested name.
        name: String,
        /// Names that do exist.
        available: Vec<String>,
    },
    /// No device serves the requested local address.
    #[error(
        "open device: no RDMA device has a GID for {addr} (is the address configured on an \
         interface with a Soft-RoCE/RoCE device? `rdma link add rxe0 type rxe netdev IFACE`)"
    )]
    OpenDeviceByAddr {
        /// Requested address.
        addr: std::net::IpAddr,
    },
    /// The device configuration names neither a device nor an address.
    #[error("open device: {0}")]
    DeviceConfig(String),
    /// Objects from two different devices or providers were combined.
    #[error("{op}: objects belong to different devices or providers")]
    ProviderMismatch {
        /// The operation attempted.
        op: &'static str,
    },
    /// A local buffer lies outside its region.
    #[error("{op}: local range {offset}+{len} is outside the {region_len}-byte region")]
    LocalBounds {
        /// The operation attempted.
        op: &'static str,
        /// Start offset.
        offset: usize,
        /// Length.
        len: usize,
        /// Region length.
        region_len: usize,
    },
    /// A local buffer lacks an access right the operation needs.
    #[error("{op}: region registered with {have} lacks {need}")]
    LocalAccess {
        /// The operation attempted.
        op: &'static str,
        /// Rights the region has.
        have: Access,
        /// Rights the operation needs.
        need: Access,
    },
    /// A work request names a buffer in a region that was revoked
    /// ([`MemoryRegion::revoke`](super::MemoryRegion::revoke)).
    #[error("{op}: the buffer's memory region was revoked (deregistered)")]
    Revoked {
        /// The operation attempted.
        op: &'static str,
    },
    /// Posting would exceed the queue depth.
    #[error("{op}: queue full ({outstanding} outstanding of {depth}); poll completions first")]
    QueueFull {
        /// The operation attempted.
        op: &'static str,
        /// Requests outstanding.
        outstanding: usize,
        /// Queue depth.
        depth: usize,
    },
    /// The peer's endpoint descriptor is malformed.
    #[error("connect: malformed peer endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// The queue pair is in the wrong state for the operation.
    #[error("{op}: queue pair {qpn} is in state {state:?}")]
    QpState {
        /// The operation attempted.
        op: &'static str,
        /// Queue pair number.
        qpn: u32,
        /// Its state.
        state: super::types::QpState,
    },
    /// An RDMA FLUSH posted on a queue pair without FLUSH support.
    #[error(
        "post send: queue pair {qpn} has no RDMA FLUSH (soft provider, or a verbs library, \
         provider or device without it: see QueuePair::supports_flush)"
    )]
    FlushUnsupported {
        /// Queue pair number.
        qpn: u32,
    },
    /// A message larger than the 2 GiB verbs limit.
    #[error("{op}: length {len} exceeds 2^31 bytes")]
    Length {
        /// The operation attempted.
        op: &'static str,
        /// Requested length.
        len: usize,
    },
}

/// Result of fabric operations.
pub type Result<T> = std::result::Result<T, FabricError>;
