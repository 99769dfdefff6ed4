//! Clients of the manager. [`probe`] exercises a connection end to end (ordered SENDs and
//! RDMA WRITEs with sequence checks); [`message_probe`] exercises the messaging layer (streams,
//! calls, floods); the giveback and mirror clients build on the same API.

pub mod message_probe;
pub mod probe;
