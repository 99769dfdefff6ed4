//! Errors of the mirror client (shadow log, mirrored write-back, atomic write).

use std::path::PathBuf;

/// Why a mirror operation failed. Variants are named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Opening or mapping the NVRAM file failed.
    #[error("open NVRAM {path:?}: {source}")]
    OpenNvram {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Flushing an NVRAM range to its file failed.
    #[error("persist NVRAM {path:?} [{offset}, +{len}): {source}")]
    PersistNvram {
        /// The file.
        path: PathBuf,
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A range outside the backing.
    #[error("range [{offset}, +{len}) outside a backing of {size} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the backing.
        size: usize,
    },
}
