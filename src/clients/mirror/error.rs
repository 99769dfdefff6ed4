//! Errors of the mirror client, one enum per component: the NVRAM backing ([`NvramError`]),
//! the shadow log core ([`LogError`]), the atomic-write table ([`AtomicError`]), the write-back
//! messages ([`WriteBackMessageError`]), and the two drivers a service calls: [`ShadowError`]
//! (`ShadowMirror`) and [`WriteBackError`] (`MirroredWriteBack` and the write-back cores). A
//! driver's error wraps the error of the component below it (`ShadowError::Log`, ...), so the
//! call that failed names the component that refused.

use super::log_format::LogImageError;
use super::log_replay::ReplayCursorError;
use std::path::PathBuf;

/// Why an NVRAM backing could not be opened, mapped or persisted.
#[derive(Debug, thiserror::Error)]
pub enum NvramError {
    /// Opening or mapping the NVRAM file failed.
    #[error("open NVRAM {path:?}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The DAX backing was asked for, but `path` cannot be mapped as persistent memory: the
    /// kernel refused `MAP_SYNC` (the file is not on a filesystem mounted `-o dax`), or it is
    /// neither a regular file nor a devdax device.
    #[error("open NVRAM {path:?} as DAX: {source} (not a file on a filesystem mounted -o dax nor a devdax device; use the file backing, or auto)")]
    NotDax {
        /// The file or device.
        path: PathBuf,
        /// The OS error (`EOPNOTSUPP`: not DAX; `EINVAL`: a kernel without `MAP_SYNC`).
        source: std::io::Error,
    },
    /// The devdax device is smaller than the backing asked for (its length rounded up to
    /// the device's alignment).
    #[error("open NVRAM {path:?}: devdax device holds {size} bytes, {needed} needed ({len} rounded up to its alignment {align})")]
    DevDaxTooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The length asked for.
        len: usize,
        /// Its mapping alignment.
        align: usize,
        /// `len` rounded up to `align`.
        needed: u64,
    },
    /// Flushing an NVRAM range to its file failed.
    #[error("persist NVRAM {path:?} [{offset}, +{len}): {source}")]
    Persist {
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

/// Why a shadow log operation (format, open, replay, append, checkpoint) failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Formatting a shadow log refused: the backing is smaller than the layout needs.
    #[error("format shadow log: backing of {size} bytes, the layout needs at least {min}")]
    FormatTooSmall {
        /// Size of the backing.
        size: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// Formatting a shadow log refused: the backing already holds a log of the same or a newer
    /// generation (records of the new log could be mistaken for the old one's).
    #[error("format shadow log: generation {requested} is not above the existing {existing}")]
    FormatStaleGeneration {
        /// Generation of the log found in the backing.
        existing: u64,
        /// Generation asked for.
        requested: u64,
    },
    /// Opening a writer's own shadow log failed: its NVRAM holds no readable log.
    #[error("open shadow log: {0}")]
    Open(#[source] LogImageError),
    /// Replaying a shadow log image failed: it holds no readable log.
    #[error("replay shadow log: {0}")]
    Replay(#[source] LogImageError),
    /// Appending refused: not enough reclaimed space (checkpoint, and let the mirror complete
    /// the checkpoint write, to free some).
    #[error("append to shadow log: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the record needs (wrap included).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Appending refused: the log's sequence numbers are used up (a log opened at the last
    /// one: a new generation starts them again).
    #[error("append to shadow log: generation {generation} has used every sequence number")]
    SequenceExhausted {
        /// Generation of the log.
        generation: u64,
    },
    /// Checkpoint refused: the checkpoint slots' numbers are used up (an image opened with a
    /// slot at the last number: a new generation starts them again).
    #[error("checkpoint of shadow log: generation {generation} has used every checkpoint number")]
    CheckpointsExhausted {
        /// Generation of the log.
        generation: u64,
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
    Checkpoint {
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
    /// An NVRAM operation under the log failed.
    #[error(transparent)]
    Nvram(#[from] NvramError),
}

/// Why an atomic-write table operation (F5.4) failed.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// An atomic write of a block count outside `1..=max`.
    #[error("an atomic write of {blocks} blocks (1..={max})")]
    BlockCount {
        /// Blocks asked for.
        blocks: usize,
        /// The atomic write size.
        max: usize,
    },
    /// Write data that is not a whole number of blocks.
    #[error("{len} bytes of data are not a whole number of {block_size}-byte blocks")]
    DataLength {
        /// Bytes given.
        len: usize,
        /// The block size.
        block_size: usize,
    },
    /// A block range that passes the largest block address.
    #[error("blocks [{first}, +{blocks}) pass the largest block address {max}")]
    BlockAddress {
        /// First block.
        first: u64,
        /// Block count.
        blocks: usize,
        /// The largest block address.
        max: u64,
    },
    /// Another atomic write holds a block of the range (the cache lock of the seed).
    #[error("block {block} of unit {unit} is held by the atomic write in RIE {rie}")]
    RangeBusy {
        /// The unit.
        unit: u16,
        /// The held block.
        block: u64,
        /// The request entry holding it.
        rie: u32,
    },
    /// Not enough free buffers for the write.
    #[error("{needed} buffers needed, {free} free")]
    NoFreeBuffers {
        /// Buffers needed.
        needed: usize,
        /// Buffers free.
        free: usize,
    },
    /// Every request entry is in use.
    #[error("all {ries} request entries (RIEs) are in use")]
    NoFreeRie {
        /// Number of request entries.
        ries: u32,
    },
    /// A buffer index that cannot be used as asked.
    #[error("buffer {buffer}: {reason}")]
    BadBuffer {
        /// The buffer index.
        buffer: u32,
        /// Why.
        reason: &'static str,
    },
    /// A request entry index that cannot be used as asked.
    #[error("request entry (RIE) {rie}: {reason}")]
    BadRie {
        /// The request entry index.
        rie: u32,
        /// Why.
        reason: &'static str,
    },
    /// An atomic-write geometry that does not work (or does not fit the backing).
    #[error("atomic-write geometry: {0}")]
    Geometry(String),
    /// The atomic-write metadata area is corrupt or was never formatted.
    #[error("atomic-write metadata: {what} (index {index})")]
    CorruptMetadata {
        /// What is wrong.
        what: &'static str,
        /// Index of the entry (0 for the header).
        index: u64,
    },
    /// The 62-bit request ids ran out.
    #[error("request ids exhausted")]
    RequestIdsExhausted,
    /// An NVRAM operation under the table failed.
    #[error(transparent)]
    Nvram(#[from] NvramError),
}

/// Why a write-back message could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackMessageError {
    /// A write-back message with the wrong length for its kind.
    #[error("write-back message of kind {kind}: {len} bytes, expected {expected}")]
    Length {
        /// The kind byte (0 when the message is too short to have one).
        kind: u8,
        /// Bytes received.
        len: usize,
        /// Bytes the kind (and its counts) call for.
        expected: usize,
    },
    /// A write-back message of an unknown kind.
    #[error("write-back message of unknown kind {kind}")]
    Kind {
        /// The kind byte.
        kind: u8,
    },
    /// A write-back message field with a value out of range.
    #[error("write-back message field {field} = {value} is out of range")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Not enough space to encode a write-back message.
    #[error("write-back message needs {need} bytes, {space} available")]
    Space {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        space: usize,
    },
}

/// Why a [`ShadowMirror`](crate::clients::mirror::ShadowMirror) call failed.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// The log was given up at a halt of this node (it stopped serving its disks: it may have
    /// been taken over): the record was not acknowledged, and the recovery the restarted
    /// protocol runs before serving again decides whether it is applied (here, or by the
    /// partner's replay) or dropped. Appends are refused with it until that recovery.
    #[error("shadow log {name}: given up at a halt (this node stopped serving its disks); record {generation}:{seq} not acknowledged, the next recovery decides its fate")]
    Relinquished {
        /// Client name.
        name: String,
        /// Generation of the record.
        generation: u64,
        /// Its sequence number (0: an append).
        seq: u64,
    },
    /// The partner's client states different terms (the log size): refused at connect,
    /// nothing was written. Both nodes must be configured alike.
    #[error("{name}: refused by the partner: {mismatch}")]
    Refused {
        /// The client.
        name: String,
        /// The term and both values.
        mismatch: crate::manager::TermMismatch,
    },
    /// Registering the shadow log's manager client failed.
    #[error("register shadow client {name:?}: {source}")]
    Register {
        /// Client name.
        name: String,
        /// The manager's error.
        source: crate::manager::ManagerError,
    },
    /// Starting the shadow log's driver thread failed.
    #[error("start shadow driver {name:?}: {source}")]
    Start {
        /// Client name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Appending refused: no link to the partner came up within the link timeout (and the
    /// partner was not declared absent). Nothing was appended.
    #[error("append to shadow log: no link to the partner within {waited:?}; nothing appended")]
    AppendNoLink {
        /// How long the append waited.
        waited: std::time::Duration,
    },
    /// An append was written to the local log but its mirror write was not confirmed in
    /// time (neither completed nor declared unmirrored). The record is in the local log and
    /// may still reach the partner.
    #[error("append to shadow log: record {seq} (generation {generation}) is durable locally, its mirror write unconfirmed after {waited:?}")]
    AppendTimeout {
        /// Generation of the record.
        generation: u64,
        /// Sequence number of the record.
        seq: u64,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// No connection came up within the deadline of a wait for one.
    #[error("wait for a connection of {name:?}: none within {waited:?} (partner declared absent: {partner_absent}; last error: {})", last_error.as_deref().unwrap_or("none"))]
    NotConnected {
        /// Client name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// Whether the partner is declared absent.
        partner_absent: bool,
        /// The last connection error seen.
        last_error: Option<String>,
    },
    /// A checkpoint was not mirrored within the deadline of a wait for it.
    #[error("wait for the checkpoint through record {seq} (generation {generation}) of the shadow log: not mirrored after {waited:?} (mirrored through {mirrored}; partner declared absent: {partner_absent})")]
    CheckpointTimeout {
        /// Generation of the checkpoint waited for.
        generation: u64,
        /// The record it goes through.
        seq: u64,
        /// The latest checkpoint mirrored.
        mirrored: u64,
        /// Whether the partner is declared absent (nothing is mirrored until it returns).
        partner_absent: bool,
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// Appending, or waiting for an append, ended because the shadow driver stopped.
    #[error("append to shadow log: the shadow driver {name:?} stopped")]
    AppendStopped {
        /// Client name.
        name: String,
    },
    /// Appending refused: the node's own log has not been recovered yet
    /// ([`ShadowMirror::recover`](crate::clients::mirror::ShadowMirror::recover) decides,
    /// before anything is appended, what the log left by the previous run still owes).
    #[error("append to shadow log {name:?}: the log is not recovered after {waited:?} (recovery decides what the previous run's records owe before anything is appended)")]
    NotRecovered {
        /// Client name.
        name: String,
        /// How long the append waited for the recovery.
        waited: std::time::Duration,
    },
    /// The mailbox did not record the state of the partner's copy this step needs (F5.7):
    /// that this node runs a shadow log, before an append (so a survivor knows to require a
    /// confirmed copy), or that the copy is no takeover source, before the own recovery
    /// applies records. No mailbox write carried it within the deadline.
    #[error("shadow log {name:?}: no mailbox write recorded the state of the partner's copy after {waited:?} (a survivor must know it before this node acknowledges or applies records; is the giveback client writing its mailbox?)")]
    NotInMailbox {
        /// Client name.
        name: String,
        /// How long the append waited.
        waited: std::time::Duration,
    },
    /// Recovery at start waits: the partner's mailbox record says it took this node over,
    /// but not how far it replayed this log's generation (it failed before it published its
    /// replay cursor). Applying the records here could apply some a second time; the partner
    /// publishes its cursor from its NVRAM when it runs again.
    #[error("recover shadow log: the partner took this node over but has not published how far it replayed generation {generation}; waiting for it to run again (its replay cursor is in its NVRAM)")]
    PartnerReplayUnknown {
        /// Generation of the local log.
        generation: u64,
    },
    /// Recovery at start refused: the local log is not empty, yet it cannot be read. Its
    /// records may exist only in the partner's mirror; it is not formatted over.
    #[error("recover shadow log: the local NVRAM holds a log that cannot be read ({reason}); it is not formatted over: its acknowledged records may exist only in the partner's mirror")]
    RecoverUnreadable {
        /// Why it cannot be read.
        reason: String,
    },
    /// Recovery at start refused (F5.6, lost NVRAM): this node's mailbox records that a log
    /// of `generation` held acknowledged records, the local NVRAM does not hold it, and
    /// neither does the partner's copy. Nothing is formatted: the node does not serve.
    #[error("recover shadow log: no valid copy of this node's log exists: the mailbox records generation {generation} as holding acknowledged records, the local NVRAM {local}, and {why}; nothing was formatted and the node does not serve its disks (see docs/operations.md, \"Lost NVRAM\")")]
    NoValidCopy {
        /// The generation the mailbox records.
        generation: u64,
        /// What the local NVRAM holds instead.
        local: String,
        /// Why the partner's copy does not do.
        why: String,
    },
    /// Recovery at start refused (F5.6, lost NVRAM): the log must be fetched from the
    /// partner's copy, and no connection to the partner read it before the deadline.
    /// Nothing is formatted; recovery may be retried once the partner is up.
    #[error("recover shadow log: the local NVRAM {local}; its copy at the partner could not be fetched within {waited:?}{}; nothing was formatted (start the partner, then restart this node)", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    FetchNoPartner {
        /// What the local NVRAM holds instead.
        local: String,
        /// How long the recovery waited.
        waited: std::time::Duration,
        /// The last connection error seen, if any.
        last_error: Option<String>,
    },
    /// Appending refused: the mailbox did not record the generation of the log installed by
    /// the recovery before the deadline (F5.6: no record of a generation is acknowledged
    /// before the mailbox knows a log of it may hold acknowledged records).
    #[error("append to shadow log {name:?}: the mailbox has not recorded log generation {generation} after {waited:?} (check the mailbox disks)")]
    OwnLogUnrecorded {
        /// Client name.
        name: String,
        /// The generation of the installed log.
        generation: u64,
        /// How long the append waited.
        waited: std::time::Duration,
    },
    /// Recovery at start stopped: the service's replay sink refused a record. Every record
    /// before it is applied and covered by the own-replay cursor; recovery may be retried.
    #[error("recover shadow log: the replay sink refused record {seq} of generation {generation}: {reason}")]
    RecoverSink {
        /// Generation of the log.
        generation: u64,
        /// The record refused.
        seq: u64,
        /// The sink's reason.
        reason: String,
    },
    /// [`ShadowMirror::recover`](crate::clients::mirror::ShadowMirror::recover) was called
    /// on a log already recovered.
    #[error("recover shadow log {name:?}: already recovered")]
    AlreadyRecovered {
        /// Client name.
        name: String,
    },
    /// Reading the local mirror region (the partner's log image) failed.
    #[error("read the partner's mirror region: {0}")]
    ReadMirror(#[source] crate::fabric::FabricError),
    /// Re-opening the local shadow log after a reconnection failed: the driver can no longer
    /// append (restart the node; the log is still in its NVRAM).
    #[error("re-open shadow log: {reason}")]
    ReopenLog {
        /// Why.
        reason: String,
    },
    /// The shadow log refused the operation.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Opening or persisting the NVRAM failed.
    #[error(transparent)]
    Nvram(#[from] NvramError),
}

/// Why a [`MirroredWriteBack`](crate::clients::mirror::MirroredWriteBack) call or a write-back core step failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    /// The partner's client states different terms (the write-back geometry, message size):
    /// refused at connect, nothing was written. Both nodes must be configured alike.
    #[error("{name}: refused by the partner: {mismatch}")]
    Refused {
        /// The client.
        name: String,
        /// The term and both values.
        mismatch: crate::manager::TermMismatch,
    },
    /// Registering the mirrored write-back's data client failed.
    #[error("register write-back data client {name:?}: {source}")]
    Register {
        /// Client name.
        name: String,
        /// The manager's error.
        source: Box<crate::manager::ManagerError>,
    },
    /// Starting the mirrored write-back's messenger failed.
    #[error("start write-back messenger {name:?}: {source}")]
    StartMessenger {
        /// Messenger name.
        name: String,
        /// The messaging layer's error.
        source: Box<crate::messaging::MessagingError>,
    },
    /// Starting the mirrored write-back's driver thread failed.
    #[error("start write-back driver {name:?}: {source}")]
    Start {
        /// Messenger name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No connection came up within the deadline of a wait for one.
    #[error("wait for a connection of {name:?}: none within {waited:?} (partner declared absent: {partner_absent}; last error: {})", last_error.as_deref().unwrap_or("none"))]
    NotConnected {
        /// Client name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// Whether the partner is declared absent.
        partner_absent: bool,
        /// The last connection error seen.
        last_error: Option<String>,
    },
    /// A mirrored write is committed in local NVRAM, but its mirror status did not come
    /// within the write timeout (neither the mirror's MDA nor a partner failure). It may still
    /// complete: wait for the ticket again.
    #[error("write request {request}: committed locally, no mirror status after {waited:?}")]
    WriteTimeout {
        /// The request.
        request: u64,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// The partner's write-back image was not in sync within the deadline of a wait for it.
    #[error("wait for the write-back {name:?} to be in sync: not after {waited:?} ({pending} writes in progress; partner declared failed: {partner_failed})")]
    NotInSync {
        /// Messenger name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// Writes in progress.
        pending: u64,
        /// Whether the partner is declared failed.
        partner_failed: bool,
    },
    /// Writing, or waiting for a write, ended because the write-back driver stopped.
    #[error("write: the write-back driver {name:?} stopped")]
    WriteStopped {
        /// Messenger name.
        name: String,
    },
    /// A write was started before the write-back's recovery decided whether the partner
    /// took its blocks over
    /// ([`MirroredWriteBack::recover`](crate::clients::mirror::MirroredWriteBack::recover)):
    /// nothing was written.
    #[error("write: the write-back {name:?} is not recovered yet (it follows takeovers: its recovery, right before the node serves its disks, decides whether the partner took its blocks over); nothing written")]
    NotRecovered {
        /// Messenger name.
        name: String,
    },
    /// The partner took this node's write-back blocks over before the write's status was
    /// returned: its recovery discarded the write with the table (it is not acknowledged).
    #[error("write request {request}: discarded, not acknowledged: the partner took this node's write-back table (epoch {epoch}) over before its status was returned")]
    WriteDiscarded {
        /// The request.
        request: u64,
        /// The epoch of the table taken over.
        epoch: u64,
    },
    /// A destage snapshot was asked while this node may not write its disks.
    #[error("destage from write-back {name:?} withheld: {why}")]
    DestageWithheld {
        /// Messenger name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A write-back epoch was asked of the mailbox and no mailbox write carried it in time.
    #[error("write-back: the mailbox has not recorded {what} {epoch} after {waited:?} (check the mailbox disks; is the giveback client writing its mailbox?)")]
    EpochUnrecorded {
        /// Which epoch (`"this node's epoch"`, `"the partner's epoch taken over"`).
        what: &'static str,
        /// The epoch.
        epoch: u64,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// A takeover's sink refused a block of the partner's image (that block and the ones
    /// after it stay in the image for the next takeover).
    #[error("takeover of the partner's block {block} of unit {unit}: {reason}")]
    TakeoverSink {
        /// The unit.
        unit: u16,
        /// The block.
        block: u64,
        /// The sink's error.
        reason: String,
    },
    /// The atomic-write table refused the operation.
    #[error(transparent)]
    Atomic(#[from] AtomicError),
    /// A write-back message was malformed.
    #[error(transparent)]
    Message(#[from] WriteBackMessageError),
    /// Opening or persisting the NVRAM failed.
    #[error(transparent)]
    Nvram(#[from] NvramError),
}
