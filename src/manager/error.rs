//! Errors of the manager layer: one variant per failed operation, with its context.

use crate::fabric::FabricError;
use crate::manager::config::ConfigError;
use crate::manager::session::SessionError;
use crate::manager::types::LinkId;
use std::io;

/// What went wrong in the cluster connection manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// Binding a link's bootstrap listener failed.
    #[error("link {link}: listen on {addr} for the bootstrap exchange: {source}")]
    Listen {
        /// Link.
        link: LinkId,
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// Opening a link's RDMA device failed.
    #[error("link {link}: open device: {source}")]
    OpenDevice {
        /// Link.
        link: LinkId,
        /// Fabric error.
        source: FabricError,
    },
    /// Creating a client's or the heartbeat's queue pairs, queues or regions failed.
    #[error("link {link}: create resources for {owner}: {source}")]
    CreateResources {
        /// Link.
        link: LinkId,
        /// Client name or "heartbeat".
        owner: String,
        /// Fabric error.
        source: FabricError,
    },
    /// Slam-connecting a queue pair failed.
    #[error("link {link}: connect queue pair {index} of {owner}: {source}")]
    ConnectQp {
        /// Link.
        link: LinkId,
        /// Client name or "heartbeat".
        owner: String,
        /// Queue pair index.
        index: u16,
        /// Fabric error.
        source: FabricError,
    },
    /// The bootstrap session failed (refused, authentication, malformed input).
    #[error("link {link}: bootstrap session: {source}")]
    Session {
        /// Link.
        link: LinkId,
        /// Session error.
        source: SessionError,
    },
    /// Writing to or reading from the bootstrap connection failed.
    #[error("link {link}: bootstrap connection: {source}")]
    Bootstrap {
        /// Link.
        link: LinkId,
        /// OS error.
        source: io::Error,
    },
    /// A client registration was refused.
    #[error("register client {name:?}: {reason}")]
    Register {
        /// Client name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A client request named something that does not exist.
    #[error("client {name:?}: {what}")]
    ClientRequest {
        /// Client name.
        name: String,
        /// What was wrong.
        what: String,
    },
    /// Timing partner-state READs failed (link not ready, READ error).
    #[error("link {link}: read the partner's state block: {reason}")]
    ReadPartnerState {
        /// Link.
        link: LinkId,
        /// Why.
        reason: String,
    },
    /// The manager has stopped.
    #[error("the manager has stopped")]
    Stopped,
    /// A client did not become ready in time. `why` is the manager's view at the deadline:
    /// each link's state and last error (a refused partner names the cluster id, secret or
    /// version mismatch with both values) and the client's state.
    #[error("client {client}: not ready after {waited:?}: {why}")]
    NotReady {
        /// Client name.
        client: String,
        /// How long it was waited for.
        waited: std::time::Duration,
        /// The links' and the client's states and last errors.
        why: String,
    },
    /// The partner's client of the same name states different terms
    /// ([`ClientSpec::term`](crate::manager::ClientSpec::term)): refused at connect, at both nodes.
    #[error("client {client}: refused by the partner's client: {mismatch}")]
    Refused {
        /// Client name.
        client: String,
        /// The term and both values.
        mismatch: crate::manager::TermMismatch,
    },
    /// No event for the client came within the deadline of a wait for one.
    #[error("client {client}: no event within {waited:?}")]
    NoEvent {
        /// Client name.
        client: String,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// Starting a manager thread failed.
    #[error("spawn thread {name}: {source}")]
    Spawn {
        /// Thread name.
        name: String,
        /// OS error.
        source: io::Error,
    },
}

/// Result alias of the manager layer.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
