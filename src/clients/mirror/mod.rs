//! The mirror client (F5): NVRAM shadow log mirrored into the partner by RDMA WRITE, replay
//! on takeover, and mirrored write-back with atomic multi-block writes.

pub mod error;
pub mod nvram;

pub use error::MirrorError;
pub use nvram::{FileNvram, MemoryNvram, NvramBacking};
