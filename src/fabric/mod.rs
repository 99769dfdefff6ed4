//! Fabric layer (F1): a provider-neutral, verbs-shaped RDMA API.
//!
//! [`Device`] → [`ProtectionDomain`] → [`MemoryRegion`] / [`QueuePair`], with
//! [`CompletionQueue`]s for completions. Two providers implement it: libibverbs
//! (`verbs`, hardware RDMA and Soft-RoCE) and a userspace provider (`soft`, over TCP or an
//! in-process simulated network with fault injection).
//!
//! Safety of buffers: memory regions own their memory. A work request names a [`LocalBuf`],
//! which holds a reference to its region; the queue pair keeps that reference until the
//! request's completion is polled (or the queue pair is reset or destroyed, after which the
//! device no longer touches it). So from safe code no buffer can be freed while the device may
//! still read or write it.

mod busy_poll;
mod error;
mod handles;
pub mod raw;
pub mod soft;
mod tracker;
pub mod types;
pub mod verbs;

pub use busy_poll::BusyPoll;
pub use error::{FabricError, Result};
pub use handles::{
    CompletionQueue, Device, LocalBuf, MemoryRegion, ProtectionDomain, QueuePair, RecvRequest,
    SendOp, SendRequest,
};
pub use soft::{FaultConfig, SimNet};
pub use types::*;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Which provider to use when opening a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// Verbs when an RDMA device serves the configured address (or name), else soft.
    #[default]
    Auto,
    /// libibverbs only; fail when no device matches.
    Verbs,
    /// The userspace provider over TCP.
    Soft,
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ProviderChoice::Auto),
            "verbs" => Ok(ProviderChoice::Verbs),
            "soft" => Ok(ProviderChoice::Soft),
            other => Err(format!("unknown fabric {other:?}: use auto, verbs or soft")),
        }
    }
}

/// How to find and open a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Provider selection.
    pub provider: ProviderChoice,
    /// Device name (verbs: e.g. `rxe_a0`, `mlx5_0`); optional when `addr` is given.
    pub name: Option<String>,
    /// The local IP address the device serves (verbs: RoCEv2 GID lookup; soft: bind address).
    pub addr: Option<IpAddr>,
    /// Port number on the device (verbs), usually 1.
    pub port: u8,
    /// TCP port the soft provider listens on (0: any free port).
    pub soft_port: u16,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            provider: ProviderChoice::Auto,
            name: None,
            addr: None,
            port: 1,
            soft_port: 0,
        }
    }
}

impl DeviceConfig {
    /// A config that selects by local address with automatic provider choice.
    pub fn for_addr(addr: IpAddr) -> DeviceConfig {
        DeviceConfig {
            addr: Some(addr),
            ..Default::default()
        }
    }
    /// The same config with an explicit provider.
    pub fn with_provider(mut self, provider: ProviderChoice) -> DeviceConfig {
        self.provider = provider;
        self
    }
}

/// Names of the verbs devices on this machine (empty when libibverbs finds none, or when the
/// crate is built without its `verbs` feature: see [`VERBS_BUILT`]).
pub fn verbs_devices() -> Vec<String> {
    #[cfg(feature = "verbs")]
    return verbs::VerbsDevice::list().unwrap_or_default();
    #[cfg(not(feature = "verbs"))]
    Vec::new()
}

/// Whether this build has the libibverbs provider (the crate's `verbs` feature).
pub const VERBS_BUILT: bool = cfg!(feature = "verbs");

/// Makes `parking_lot`'s per-thread parking record for the calling thread now. The library
/// allocates it (and may grow its global table) the first time a thread blocks on one of its
/// locks; threads of the data path call this when they start, so that one-time allocation
/// does not land in the middle of their operations.
pub(crate) fn prime_thread_parking() {
    let m = parking_lot::Mutex::new(());
    let mut g = m.lock();
    // Parks with an immediate timeout: only the thread record is made.
    parking_lot::Condvar::new().wait_for(&mut g, std::time::Duration::ZERO);
}
