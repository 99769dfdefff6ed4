//! The narrow interface between the provider-neutral handles and a provider.
//!
//! Providers see work requests already validated (bounds and local access checked against the
//! region) and translated to raw scatter entries; each request carries an opaque `token` that the
//! provider hands back in its completion. The neutral layer maps tokens back to the caller's
//! `wr_id` and keeps every buffer a request names alive until its completion is polled.

use super::types::{CompletionOp, CompletionStatus, RemoteAddr};

/// One local scatter/gather entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSge {
    /// Virtual address of the first byte (the region's address plus offset).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the region.
    pub lkey: u32,
}

/// Operation of a send-queue request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawOp {
    /// SEND.
    Send,
    /// SEND with immediate (host order; providers convert to network order).
    SendImm(u32),
    /// RDMA WRITE.
    Write(RemoteAddr),
    /// RDMA WRITE with immediate.
    WriteImm(RemoteAddr, u32),
    /// RDMA READ into the local entry.
    Read(RemoteAddr),
    /// RDMA FLUSH (global visibility) of a remote range of this many bytes; no local entry.
    Flush(RemoteAddr, u64),
}

/// A send-queue work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSend {
    /// Opaque token returned in the completion (the verbs `wr_id`).
    pub token: u64,
    /// Operation.
    pub op: RawOp,
    /// Local buffer: source of SEND/WRITE, destination of READ.
    pub sge: RawSge,
    /// Whether a successful completion is generated.
    pub signaled: bool,
    /// Whether to post the payload inline (copied at post time).
    pub inline: bool,
}

/// A receive-queue work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecv {
    /// Opaque token returned in the completion.
    pub token: u64,
    /// Destination buffer.
    pub sge: RawSge,
}

/// A completion as a provider reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCompletion {
    /// The token of the request.
    pub token: u64,
    /// Local queue pair number.
    pub qpn: u32,
    /// Outcome.
    pub status: CompletionStatus,
    /// Operation.
    pub op: CompletionOp,
    /// Bytes transferred (receives and READs).
    pub byte_len: u32,
    /// Immediate data (host order).
    pub imm: Option<u32>,
}
