//! Errors of the giveback client (partner state block, mailbox, reservations).

use crate::codec::WireError;
use std::path::PathBuf;

/// Why a fixed-layout record (state block, mailbox record, reservation file) was not
/// believed. Every rejection of untrusted bytes names one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    #[error("short record: {got} bytes, need {need}")]
    Short {
        /// Bytes present.
        got: usize,
        /// Bytes the layout needs.
        need: usize,
    },
    /// Wrong magic: not this kind of record (or never written).
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    /// Unknown layout version.
    #[error("unknown layout version {0}")]
    Version(u16),
    /// Checksum mismatch: a torn or corrupt copy.
    #[error("checksum mismatch (torn or corrupt copy)")]
    Checksum,
    /// A node state word outside the known states.
    #[error("unknown node state {0}")]
    State(u16),
    /// Flag bits this layout version does not define.
    #[error("unknown flag bits {0:#06x}")]
    Flags(u32),
    /// A reserved byte that is not zero.
    #[error("reserved byte {offset} is {value:#04x}, not zero")]
    Reserved {
        /// Offset of the byte in the record.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// The record names a node other than the one whose slot it occupies.
    #[error("record of node {found} in the slot of node {expected}")]
    Node {
        /// The node owning the slot.
        expected: u32,
        /// The node the record names.
        found: u32,
    },
}

/// Why a giveback operation failed. Variants are named after the failed operation and carry
/// the OS error with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum GivebackError {
    /// Decoding the giveback state out of a health block's state word and extension failed.
    #[error("decode partner state block: {0}")]
    DecodeStateBlock(FormatError),
    /// The health block carrying the state block was not believed (torn, corrupt, short).
    #[error("decode partner health block: {0}")]
    DecodeHealthBlock(WireError),
    /// Decoding a mailbox record failed.
    #[error("decode mailbox record: {0}")]
    DecodeMailboxRecord(FormatError),
    /// Opening the mailbox failed (directory missing, bad node ids).
    #[error("open mailbox in {dir:?}: {reason}")]
    OpenMailbox {
        /// The mailbox directory.
        dir: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Writing this node's slot failed on both copies.
    #[error("write mailbox: {primary:?}: {source}; {backup:?}: {backup_error}")]
    WriteMailbox {
        /// The primary copy.
        primary: PathBuf,
        /// The primary copy's error.
        source: std::io::Error,
        /// The backup copy.
        backup: PathBuf,
        /// The backup copy's error.
        backup_error: std::io::Error,
    },
    /// Reading a slot failed on both copies with I/O errors (a missing, short or corrupt copy
    /// is not an error: it is an invalid copy).
    #[error("read mailbox: {primary:?}: {source}; {backup:?}: {backup_error}")]
    ReadMailbox {
        /// The primary copy.
        primary: PathBuf,
        /// The primary copy's error.
        source: std::io::Error,
        /// The backup copy.
        backup: PathBuf,
        /// The backup copy's error.
        backup_error: std::io::Error,
    },
    /// At start, this node's mailbox record advanced while the node was not running: another
    /// live process writes it (the same node id on the other controller, or a second
    /// instance).
    #[error("node id {node} is in use: its mailbox record advanced to incarnation {incarnation} heartbeat {heartbeat} while this node was starting; another process runs as node {node}")]
    IdentityInUse {
        /// The node id.
        node: u32,
        /// The other writer's incarnation.
        incarnation: u64,
        /// Its heartbeat as read.
        heartbeat: u64,
    },
    /// At start, no copy of the mailbox held a valid record of this node, and one copy
    /// could not be read or held a torn record: what this node marked there is unknown.
    #[error(
        "own mailbox record unknown: no copy holds a valid one, and one copy is unreadable or torn"
    )]
    OwnRecordUnknown,
    /// Opening the reservation directory failed.
    #[error("open reservations in {dir:?}: {source}")]
    OpenReservations {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reserving a disk set failed.
    #[error("reserve disk set {set} ({path:?}): {source}")]
    Reserve {
        /// The disk set.
        set: u32,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Releasing a disk set failed.
    #[error("release disk set {set} ({path:?}): {source}")]
    Release {
        /// The disk set.
        set: u32,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading who holds a disk set failed.
    #[error("check reservation of disk set {set} ({path:?}): {source}")]
    CheckReservation {
        /// The disk set.
        set: u32,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A reservation file holds bytes that are not a reservation (only a preempting reserve
    /// overwrites it).
    #[error("decode reservation of disk set {set} ({path:?}): {reason}")]
    DecodeReservation {
        /// The disk set.
        set: u32,
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: FormatError,
    },
    /// Starting the giveback messenger (kill messages) failed.
    #[error("start the giveback messenger: {0}")]
    StartMessenger(crate::messaging::MessagingError),
    /// Starting the driver thread failed.
    #[error("spawn the giveback driver thread: {source}")]
    Spawn {
        /// The OS error.
        source: std::io::Error,
    },
    /// The driver has stopped.
    #[error("the giveback driver has stopped")]
    Stopped,
    /// An operator command got no reply within the deadline.
    #[error("giveback command {command}: no reply within {waited:?}")]
    CommandTimeout {
        /// The command.
        command: String,
        /// How long the call waited.
        waited: std::time::Duration,
    },
}
