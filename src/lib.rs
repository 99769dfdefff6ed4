//! interlink: the RDMA cluster interconnect for the two controllers of a high-availability
//! storage pair.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod fabric;
