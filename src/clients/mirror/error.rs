//! Errors of the mirror client (shadow log, mirrored write-back, atomic write).

use super::log_format::LogImageError;
use super::log_replay::ReplayCursorError;
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
    /// Formatting a shadow log refused: the backing is smaller than the layout needs.
    #[error("format shadow log: backing of {size} bytes, the layout needs at least {min}")]
    FormatLogTooSmall {
        /// Size of the backing.
        size: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// Formatting a shadow log refused: the backing already holds a log of the same or a newer
    /// generation (records of the new log could be mistaken for the old one's).
    #[error("format shadow log: generation {requested} is not above the existing {existing}")]
    FormatLogStaleGeneration {
        /// Generation of the log found in the backing.
        existing: u64,
        /// Generation asked for.
        requested: u64,
    },
    /// Opening a writer's own shadow log failed: its NVRAM holds no readable log.
    #[error("open shadow log: {0}")]
    OpenLog(#[source] LogImageError),
    /// Replaying a shadow log image failed: it holds no readable log.
    #[error("replay shadow log: {0}")]
    ReplayLog(#[source] LogImageError),
    /// Appending refused: not enough reclaimed space (checkpoint, and let the mirror complete
    /// the checkpoint write, to free some).
    #[error("append to shadow log: {needed} bytes needed, {free} free")]
    LogFull {
        /// Bytes the record needs (wrap included).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Appending refused: the record is larger than half the data area.
    #[error("append to shadow log: payload of {len} bytes, at most {max}")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// The largest payload.
        max: usize,
    },
    /// Checkpointing refused: the position is of another generation or was never appended.
    #[error(
        "checkpoint shadow log through ({generation}, {seq}): log generation {log_generation}, \
         last appended {appended}"
    )]
    CheckpointLog {
        /// Generation asked for.
        generation: u64,
        /// Sequence number asked for.
        seq: u64,
        /// The log's generation.
        log_generation: u64,
        /// The last sequence number appended.
        appended: u64,
    },
    /// Decoding a replay cursor failed.
    #[error("decode replay cursor: {reason}")]
    DecodeReplayCursor {
        /// Why.
        reason: ReplayCursorError,
    },
}
