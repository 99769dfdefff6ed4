//! A pair of node configurations on one host: both nodes on the loopback interface, over the
//! soft provider, sharing a fresh secret. For trying the library, the examples and tests; a
//! real pair loads each node's file ([`NodeConfig::load`]).

use crate::fabric::ProviderChoice;
use crate::manager::config::{LinkConfig, NodeConfig};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Node A's loopback address (node id 1).
pub const LOOPBACK_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Node B's loopback address (node id 2).
pub const LOOPBACK_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Why [`loopback_pair`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackPairError {
    /// The secret file could not be written.
    #[error("loopback pair: cannot write the secret file {}: {source}", path.display())]
    WriteSecret {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No free bootstrap port was found on node B's address.
    #[error("loopback pair: no free TCP port on {addr}: {source}")]
    FreePort {
        /// The address tried.
        addr: IpAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Configurations of node A (id 1) and node B (id 2) of cluster 7 with one link between
/// [`LOOPBACK_A`] and [`LOOPBACK_B`] on the soft provider: a fresh random secret is written
/// to `dir/secret` (mode 0600; `dir` must exist) and the bootstrap port is one the system
/// reports free on node B's address. Start a [`Manager`](crate::manager::Manager) on each
/// (in one process or two).
pub fn loopback_pair(dir: &Path) -> Result<(NodeConfig, NodeConfig), LoopbackPairError> {
    let secret = dir.join("secret");
    let hex: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&secret)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .map_err(|source| LoopbackPairError::WriteSecret {
            path: secret.clone(),
            source,
        })?;
    // Node B (the higher id) listens on the bootstrap port, node A connects to it.
    let port = TcpListener::bind((LOOPBACK_B, 0))
        .and_then(|l| l.local_addr())
        .map_err(|source| LoopbackPairError::FreePort {
            addr: LOOPBACK_B,
            source,
        })?
        .port();
    let node = |me, partner, local, peer| {
        NodeConfig::new(7, me, partner, &secret)
            .with_fabric(ProviderChoice::Soft)
            .with_link(LinkConfig::new(0, local, peer).with_bootstrap_port(port))
    };
    Ok((
        node(1, 2, LOOPBACK_A, LOOPBACK_B),
        node(2, 1, LOOPBACK_B, LOOPBACK_A),
    ))
}
