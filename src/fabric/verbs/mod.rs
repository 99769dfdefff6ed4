//! The libibverbs provider: hardware RDMA NICs and Soft-RoCE (`rdma_rxe`) through `rdma-sys`.
//!
//! Object graph (each child holds an `Arc` of its parent, so the parent outlives it and the
//! destroy order libibverbs requires falls out of `Drop`):
//!
//! `VerbsDevice` (context, port, GID, async-event thread) → `VerbsPd` → `VerbsMr`
//! (owns its page-aligned memory); `VerbsDevice` → `VerbsCq` (with its completion channel);
//! `VerbsPd` + 2 × `VerbsCq` → `VerbsQp` (RC).
//!
//! Thread safety: libibverbs documents every verb as thread safe, so the raw handles are shared
//! between threads behind `Handle`; the few multi-step sequences (QP state changes, waiting
//! on a completion channel) are serialised with a mutex here.
//!
//! Errors: every failed verb has its own `VerbsError` variant carrying the errno and the
//! context needed to act on it.
//!
//! Only with the crate's `verbs` feature (the default): without it nothing here links
//! libibverbs, and the module holds just the NVRAM file mapping (which lives here because it
//! is the other place the crate needs `unsafe`).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod nvram;
pub use nvram::{map_nvram_file, CacheFlush, DaxMapping};

#[cfg(feature = "verbs")]
mod cq;
#[cfg(feature = "verbs")]
mod device;
#[cfg(feature = "verbs")]
mod flush;
#[cfg(feature = "verbs")]
mod ibv;
#[cfg(feature = "verbs")]
mod mr;
#[cfg(feature = "verbs")]
mod qp;

#[cfg(feature = "verbs")]
pub use cq::VerbsCq;
#[cfg(feature = "verbs")]
pub use device::VerbsDevice;
#[cfg(feature = "verbs")]
pub use ibv::*;
#[cfg(feature = "verbs")]
pub use mr::{VerbsMr, VerbsPd};
#[cfg(feature = "verbs")]
pub use qp::VerbsQp;
