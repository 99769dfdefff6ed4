//! Clients of the manager. [`probe`] exercises a connection end to end (ordered SENDs and
//! RDMA WRITEs with sequence checks); [`message_probe`] exercises the messaging layer (streams,
//! calls, floods); [`giveback`] is partner state, takeover and coordinated giveback (F4);
//! [`mirror`] is NVRAM shadowing and mirrored write-back (F5).

pub mod giveback;
pub mod message_probe;
pub mod mirror;
pub mod probe;
