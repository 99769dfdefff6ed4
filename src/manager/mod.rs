//! Cluster connection manager (F2): per-link sessions, batch slam connect, client registry,
//! live client events, link health, multi-link failover and load balancing.
//!
//! A [`Manager`] runs one event-loop thread. Clients [`Manager::register`] with a
//! [`ClientSpec`]; the manager creates their queue pairs and regions on the link placement
//! picks, exchanges them with the partner in the link's PeerInfo (or a live Attach), slam
//! connects them and hands the client a [`Connection`] in [`ClientEvent::Ready`].

mod attachment;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod health;
mod link;
mod node;
pub mod placement;
mod runtime;
pub mod session;
pub mod types;
pub mod wire;

pub use client::{ClientEvent, ClientHandle, ClientQp, ClientRegion, Connection, SuspendReason};
pub use config::*;
pub use error::ManagerError;
pub use node::Manager;
pub use types::*;
