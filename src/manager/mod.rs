//! Cluster connection manager (F2): per-link sessions, batch slam connect, client registry,
//! live client events, link health, multi-link failover and load balancing.

pub mod config;
pub mod control;
pub mod placement;
pub mod session;
pub mod types;
pub mod wire;

pub use config::*;
pub use types::*;
