//! Cluster connection manager (F2): per-link sessions, batch slam connect, client registry,
//! live client events, link health, multi-link failover and load balancing.
//!
//! A [`Manager`] runs one event-loop thread that owns all state; per link, I/O threads only move
//! the bootstrap connection's bytes to it. The node with the lower id is the initiator: it
//! connects every link and decides placement ([`placement`]); the other node follows.
//!
//! Clients [`Manager::register`] with a [`ClientSpec`]; the manager creates their queue pairs and
//! regions on the link placement picks, exchanges them with the partner in the link's PeerInfo
//! (or a live Attach), slam connects them and hands the client a [`Connection`] in
//! [`ClientEvent::Ready`]. Live changes ([`ClientHandle::add_qp`] and friends) arrive as
//! [`ClientEvent::Updated`]. When a link fails (port down, heartbeat READ error or silence, lost
//! bootstrap connection, Goodbye) or a client moves, the client gets [`ClientEvent::Suspended`],
//! its regions are revoked so the partner's old rkeys die at once, and their contents are carried
//! into the regions of its next attachment.
//!
//! ```
//! use interlink::manager::{BandwidthClass, ClientSpec, Manager, NodeConfig};
//! use std::time::Duration;
//!
//! # let dir = std::env::temp_dir().join(format!("interlink-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let (config, partner) = interlink::manager::loopback_pair(&dir)?;
//! # let partner = Manager::start(partner)?;
//! # let _peer = partner.register(ClientSpec::new("cfo", BandwidthClass::Low, 1))?;
//! // config: NodeConfig::load(Path::new("/etc/interlink/node.toml"))? on a node
//! let manager = Manager::start(config)?;
//! let client = manager.register(ClientSpec::new("cfo", BandwidthClass::Low, 1))?;
//! let conn = client.wait_ready_timeout(Duration::from_secs(30))?; // the error says why not
//! let qp = conn.qp(0).expect("queue pair 0");
//! # let _ = qp;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! docs/architecture.md ("Manager") describes threads, link and client life cycles, failover and
//! planned moves; docs/wire-formats.md the bootstrap messages, the health block and the client
//! attachment exchanges; docs/configuration.md the node file; docs/operations.md running a node.

mod attachment;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod health;
mod link;
pub mod loopback;
mod node;
pub mod partner_state;
pub mod placement;
mod runtime;
pub mod session;
pub mod types;
pub mod wire;

/// How long the initiator waits after its start for every link's session before it places
/// clients (so that the first placement sees all links). Until then, or until every link is
/// ready, nothing is placed: a link that fails this early delays the failover to this point.
pub const STARTUP_GATHER: std::time::Duration = std::time::Duration::from_millis(1500);

pub use client::{
    ClientEvent, ClientHandle, ClientQp, ClientRegion, Connection, EventWait, SuspendReason,
};
pub use config::*;
pub use error::ManagerError;
pub use loopback::loopback_pair;
pub use node::Manager;
pub use partner_state::PartnerObservation;
pub use types::*;
