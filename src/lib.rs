#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod clients;
pub mod codec;
pub mod fabric;
pub mod manager;
pub mod messaging;
pub mod recorded_metrics;
