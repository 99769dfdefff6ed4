//! Clients of the manager. [`probe`] exercises a connection end to end (ordered SENDs and
//! RDMA WRITEs with sequence checks); the giveback and mirror clients build on the same API.

pub mod message_probe;
pub mod probe;
