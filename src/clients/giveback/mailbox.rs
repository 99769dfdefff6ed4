//! The mailbox (seed 003): a sector per node on each of two shared disks, primary and backup.
//!
//!
//! Each node writes its [`MailboxRecord`] to its own sector of both copies every interval and
//! reads its partner's sector; a record that stops changing is one half of the failure
//! evidence (F4.2), and the record's `taken_over` bit is what a repaired node checks before
//! it serves (steps 545-565). The record is 112 bytes at the start of the node's 512-byte
//! sector (the rest of the sector is zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ILMB` |
//! | 4 | 2 | layout version (3) |
//! | 6 | 2 | writer's state ([`NodeState`] word) |
//! | 8 | 4 | writer's node id |
//! | 12 | 2 | flags: bit 0 TAKEN_OVER (the writer serves its partner's disks), bit 1 TAKEOVER_PENDING (the writer is killing its partner to take over), bit 2 SHADOW_LOG (the writer runs a shadow log mirrored to the partner: bytes 72..80 say for which partner incarnation that copy is complete), bit 3 WRITEBACK_OUTDATED (the partner's mirror of the writer's write-back blocks lacks writes completed without it), bit 4 REPLAY_COMPLETE (the replay named at 40..56 went through the partner's whole copy; zero without that field); other bits zero |
//! | 14 | 2 | reserved, zero |
//! | 16 | 8 | writer's incarnation |
//! | 24 | 8 | heartbeat: incremented by every write of this incarnation |
//! | 32 | 8 | the partner incarnation the writer last saw (0 = none) |
//! | 40 | 8 | replayed partner log: generation of the partner's shadow log the writer replayed at a takeover (0 = none) |
//! | 48 | 8 | replayed partner log: the last sequence number replayed (or the checkpoint, if none followed it) |
//! | 56 | 8 | partner copy outdated: generation of the writer's own shadow log whose copy at the partner is outdated (0 = the partner's copy is in sync) |
//! | 64 | 8 | partner copy outdated: the first sequence number acknowledged without the partner's copy |
//! | 72 | 8 | partner copy complete for: the partner incarnation whose copy of the writer's shadow log a full send completed on (0 = none yet; zero without SHADOW_LOG) |
//! | 80 | 8 | own log generation: the newest generation of the writer's own shadow log that may hold an acknowledged record (0 = the writer never acknowledged one) |
//! | 88 | 8 | own write-back epoch: the epoch of the writer's own write-back table (0 = the writer runs no mirrored write-back, or has not recorded one yet) |
//! | 96 | 8 | took over partner write-back: the partner's write-back epoch whose mirrored blocks the writer took over whole at a takeover (0 = none) |
//! | 104 | 4 | reserved, zero |
//! | 108 | 4 | CRC32C of bytes 0..108 |
//!
//! All integers big-endian. A write that tears (half a record written) fails the checksum
//! and that copy is simply invalid until the next write; a reader never believes it. A
//! version 1 record (64 bytes, CRC32C of bytes 0..60 at 60, bytes 40..60 reserved) reads as
//! having replayed nothing and with the partner's copy in sync; a version 2 record (96 bytes,
//! CRC32C of bytes 0..92 at 92, bytes 88..92 reserved) reads with both write-back epochs 0.
//!
//! The replayed-log fields persist across the writer's restarts (they come from its replay
//! cursor in NVRAM): a restarted partner reads them before it serves to learn whether its
//! log's records were already applied by a takeover (F5.6). The outdated mark is written
//! before the writer acknowledges its first record without the partner's copy, and kept
//! (across the writer's restarts too) until a resync completed (F5.7): a survivor refuses an
//! automatic takeover while its partner's record carries it. The copy-complete field is the
//! positive half of the same rule: a mirror region lives as long as the partner's process, so
//! a partner that restarted holds an empty or partly re-sent copy until the writer's full
//! re-send completed on it; a survivor takes over automatically only if its partner's record
//! names the survivor's own incarnation there (or carries no SHADOW_LOG flag). The own log generation is written before the writer
//! acknowledges the first record of a new generation, and kept across restarts: a node whose
//! NVRAM is lost or corrupt learns from it that a log existed and fetches it from the
//! partner's copy instead of starting fresh (F5.6).
//!
//! The write-back epochs are the same rule for mirrored write-back: the own epoch is
//! written before the writer returns a write of that epoch, a survivor names it once it
//! took the partner's mirrored blocks over whole (it may write newer data to the partner's
//! disks from then on), and a restarted partner whose own epoch is named there discards its
//! table's dirty blocks (they are on disk, possibly overwritten since) before it serves, in
//! a new epoch (`MirroredWriteBack::recover`).

use super::copy_mark::CopyStamp;
use super::error::{FormatError, GivebackError};
use super::state::NodeState;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of a mailbox record.
pub const MAILBOX_RECORD_LEN: usize = 112;
/// Size of a layout version 1 record.
const RECORD_V1_LEN: usize = 64;
/// Size of a layout version 2 record.
const RECORD_V2_LEN: usize = 96;
/// Size of a node's sector in each mailbox copy.
pub const MAILBOX_SECTOR_LEN: usize = 512;
/// File name of the primary copy in the mailbox directory.
pub const MAILBOX_PRIMARY_FILE: &str = "mailbox-primary";
/// File name of the backup copy in the mailbox directory.
pub const MAILBOX_BACKUP_FILE: &str = "mailbox-backup";

const MAGIC: [u8; 4] = *b"ILMB";
const LAYOUT_VERSION: u16 = 3;
/// The layout before the write-back epochs (bytes 88..92 zero).
const LAYOUT_VERSION_2: u16 = 2;
/// The layout before the replayed-log fields (bytes 40..60 zero).
const LAYOUT_VERSION_1: u16 = 1;
const FLAG_TAKEN_OVER: u16 = 1 << 0;
const FLAG_TAKEOVER_PENDING: u16 = 1 << 1;
const FLAG_SHADOW_LOG: u16 = 1 << 2;
const FLAG_WRITEBACK_OUTDATED: u16 = 1 << 3;
const FLAG_REPLAY_COMPLETE: u16 = 1 << 4;
const FLAG_OWN_LOG_APPLIED_HERE: u16 = 1 << 5;
const FLAGS_KNOWN: u16 = 0x3f;
/// The flags a version 2 record knows.
const FLAGS_KNOWN_V2: u16 = 0x1f;
/// The flags a version 1 record knows.
const FLAGS_KNOWN_V1: u16 = 0x3;

/// One node's mailbox record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxRecord {
    /// The writer's node id.
    pub node: u32,
    /// The writer's incarnation.
    pub incarnation: u64,
    /// The writer's state.
    pub state: NodeState,
    /// "I have taken over my partner": the writer serves its partner's disk set.
    pub taken_over: bool,
    /// The writer is killing its partner for a manual takeover; a booting partner treats it
    /// like `taken_over` and waits.
    pub takeover_pending: bool,
    /// Incremented by each write of this incarnation.
    pub heartbeat: u64,
    /// The partner incarnation the writer last saw (0 = none).
    pub partner_incarnation: u64,
    /// The last position of the partner's shadow log the writer replayed at a takeover, and
    /// whether that replay completed (from its replay cursor; None: it never replayed one).
    pub replayed_partner_log: Option<ReplayedMark>,
    /// The partner's copy of the writer's shadow log is outdated from this position on
    /// (records from it were acknowledged without it); None: in sync.
    pub partner_copy_outdated: Option<LogMark>,
    /// The writer runs a shadow log mirrored to its partner (Some), and the partner
    /// incarnation whose copy a full send completed on (0: none yet); None: no shadow log.
    pub partner_copy_complete_for: Option<u64>,
    /// The partner's mirror of the writer's write-back blocks is outdated (writes completed
    /// `MirrorLost` since its last resync).
    pub writeback_copy_outdated: bool,
    /// The newest generation of the writer's own shadow log that may hold an acknowledged
    /// record (0: it never acknowledged one; a version 1 record reads as 0).
    pub own_log_generation: u64,
    /// The writer's own recovery applies (or applied) records of `own_log_generation` itself
    /// while its partner's copy did not follow: the copy is no replay source for that
    /// generation (layouts 1 and 2 read as false).
    pub own_log_applied_here: bool,
    /// The epoch of the writer's own write-back table (0: none recorded; older layouts read
    /// as 0).
    pub own_writeback_epoch: u64,
    /// The partner's write-back epoch whose mirrored blocks the writer took over whole at a
    /// takeover (0: none).
    pub took_over_writeback: u64,
}

/// A position in a node's shadow log: generation and sequence number (the `LogPosition` of
/// the mirror client, kept free of that layer here).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct LogMark {
    /// Generation of the log.
    pub generation: u64,
    /// A sequence number in it.
    pub seq: u64,
}

/// What a survivor replayed of its partner's log at a takeover (its replay cursor): the last
/// position applied, and whether the replay went through the whole copy (a survivor that
/// failed inside its replay leaves `complete` false: the records after `at` were applied by
/// nobody, and the partner applies them itself).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ReplayedMark {
    /// The last position replayed (or the copy's checkpoint, if no record followed it).
    pub at: LogMark,
    /// The replay went through the whole copy.
    pub complete: bool,
}

impl std::fmt::Display for ReplayedMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.complete {
            "complete"
        } else {
            "interrupted"
        };
        write!(f, "{} ({how})", self.at)
    }
}

impl std::fmt::Display for LogMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {} seq {}", self.generation, self.seq)
    }
}

impl MailboxRecord {
    /// The order of records of one node: a later incarnation, then a higher heartbeat, wins.
    pub fn key(&self) -> (u64, u64) {
        (self.incarnation, self.heartbeat)
    }

    /// Whether the writer claims its partner's disks (taken over or about to).
    pub fn claims_partner(&self) -> bool {
        self.taken_over || self.takeover_pending
    }

    /// Encodes the record with its checksum.
    pub fn encode(&self) -> [u8; MAILBOX_RECORD_LEN] {
        let mut b = [0u8; MAILBOX_RECORD_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&LAYOUT_VERSION.to_be_bytes());
        b[6..8].copy_from_slice(&self.state.as_u16().to_be_bytes());
        b[8..12].copy_from_slice(&self.node.to_be_bytes());
        let mut flags = 0u16;
        if self.taken_over {
            flags |= FLAG_TAKEN_OVER;
        }
        if self.takeover_pending {
            flags |= FLAG_TAKEOVER_PENDING;
        }
        if self.writeback_copy_outdated {
            flags |= FLAG_WRITEBACK_OUTDATED;
        }
        if self.own_log_applied_here {
            flags |= FLAG_OWN_LOG_APPLIED_HERE;
        }
        if let Some(inc) = self.partner_copy_complete_for {
            flags |= FLAG_SHADOW_LOG;
            b[72..80].copy_from_slice(&inc.to_be_bytes());
        }
        b[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        b[24..32].copy_from_slice(&self.heartbeat.to_be_bytes());
        b[32..40].copy_from_slice(&self.partner_incarnation.to_be_bytes());
        if self
            .replayed_partner_log
            .is_some_and(|r| r.complete && r.at.generation != 0)
        {
            flags |= FLAG_REPLAY_COMPLETE;
        }
        b[12..14].copy_from_slice(&flags.to_be_bytes());
        for (at, mark) in [
            (40, self.replayed_partner_log.map(|r| r.at)),
            (56, self.partner_copy_outdated),
        ] {
            if let Some(m) = mark.filter(|m| m.generation != 0) {
                b[at..at + 8].copy_from_slice(&m.generation.to_be_bytes());
                b[at + 8..at + 16].copy_from_slice(&m.seq.to_be_bytes());
            }
        }
        b[80..88].copy_from_slice(&self.own_log_generation.to_be_bytes());
        b[88..96].copy_from_slice(&self.own_writeback_epoch.to_be_bytes());
        b[96..104].copy_from_slice(&self.took_over_writeback.to_be_bytes());
        let crc = crc32c::crc32c(&b[0..108]);
        b[108..112].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and verifies a record; every rejection is a typed error.
    pub fn decode(b: &[u8]) -> Result<MailboxRecord, GivebackError> {
        Self::decode_fields(b).map_err(GivebackError::DecodeMailboxRecord)
    }

    fn decode_fields(b: &[u8]) -> Result<MailboxRecord, FormatError> {
        // The layout's length follows from its version (any version but 1 and 2 is checked
        // as the current layout, so a flipped version bit is a checksum error like any other).
        let v1 = b.len() >= 6 && b[4..6] == LAYOUT_VERSION_1.to_be_bytes();
        let v2 = b.len() >= 6 && b[4..6] == LAYOUT_VERSION_2.to_be_bytes();
        let len = if v1 {
            RECORD_V1_LEN
        } else if v2 {
            RECORD_V2_LEN
        } else {
            MAILBOX_RECORD_LEN
        };
        if b.len() < len {
            return Err(FormatError::Short {
                got: b.len(),
                need: len,
            });
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&b[0..4]);
        if magic != MAGIC {
            return Err(FormatError::Magic(magic));
        }
        let be16 = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let be64 = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(x)
        };
        if crc32c::crc32c(&b[0..len - 4]) != be32(len - 4) {
            return Err(FormatError::Checksum);
        }
        let version = be16(4);
        if version != LAYOUT_VERSION && !v1 && !v2 {
            return Err(FormatError::Version(version));
        }
        let reserved = if v1 {
            40..60
        } else if v2 {
            88..92
        } else {
            104..108
        };
        let state = NodeState::from_u16(be16(6))?;
        let flags = be16(12);
        let known = if v1 {
            FLAGS_KNOWN_V1
        } else if v2 {
            FLAGS_KNOWN_V2
        } else {
            FLAGS_KNOWN
        };
        if flags & !known != 0 {
            return Err(FormatError::Flags(u32::from(flags & !known)));
        }
        for offset in (14..16).chain(reserved) {
            if b[offset] != 0 {
                return Err(FormatError::Reserved {
                    offset,
                    value: b[offset],
                });
            }
        }
        // A mark of generation 0 is no mark: its sequence number must be zero too (one
        // encoding per record).
        if !v1 && flags & FLAG_SHADOW_LOG == 0 && be64(72) != 0 {
            // Without the flag the field is zero (one encoding per record).
            let offset = (72..80).find(|&o| b[o] != 0).unwrap_or(72);
            return Err(FormatError::Reserved {
                offset,
                value: b[offset],
            });
        }
        if !v1 && flags & FLAG_REPLAY_COMPLETE != 0 && be64(40) == 0 {
            // A complete replay names what it replayed (one encoding per record).
            return Err(FormatError::Flags(u32::from(FLAG_REPLAY_COMPLETE)));
        }
        for at in [40usize, 56] {
            if !v1 && be64(at) == 0 && be64(at + 8) != 0 {
                let offset = (at + 8..at + 16).find(|&o| b[o] != 0).unwrap_or(at + 8);
                return Err(FormatError::Reserved {
                    offset,
                    value: b[offset],
                });
            }
        }
        let mark = |at: usize| {
            (!v1 && be64(at) != 0).then(|| LogMark {
                generation: be64(at),
                seq: be64(at + 8),
            })
        };
        Ok(MailboxRecord {
            node: be32(8),
            incarnation: be64(16),
            state,
            taken_over: flags & FLAG_TAKEN_OVER != 0,
            takeover_pending: flags & FLAG_TAKEOVER_PENDING != 0,
            heartbeat: be64(24),
            partner_incarnation: be64(32),
            replayed_partner_log: mark(40).map(|at| ReplayedMark {
                at,
                complete: flags & FLAG_REPLAY_COMPLETE != 0,
            }),
            partner_copy_outdated: mark(56),
            partner_copy_complete_for: (flags & FLAG_SHADOW_LOG != 0).then(|| be64(72)),
            writeback_copy_outdated: flags & FLAG_WRITEBACK_OUTDATED != 0,
            own_log_generation: if v1 { 0 } else { be64(80) },
            own_log_applied_here: flags & FLAG_OWN_LOG_APPLIED_HERE != 0,
            own_writeback_epoch: if v1 || v2 { 0 } else { be64(88) },
            took_over_writeback: if v1 || v2 { 0 } else { be64(96) },
        })
    }
}

/// The newer of two (possibly missing) copies of one node's record.
pub fn newest_record(a: Option<MailboxRecord>, b: Option<MailboxRecord>) -> Option<MailboxRecord> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.key() > a.key() { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// This node's own record as a start reads it (F5.7): the newer valid copy, and whether the
/// read saw both copies whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnRecord {
    /// The newer valid copy (None: no copy holds a valid record of this node).
    pub newest: Option<MailboxRecord>,
    /// Both copies were read and each holds a valid record of this node or was never written
    /// (missing, short or all zeros): `newest` is the last record a write left. Otherwise (a
    /// copy unreadable, torn or foreign) the copy not seen may hold a newer record: a mark
    /// counts as durable once both copies acknowledged its write, and a copy that dropped it
    /// silently is then the only one left.
    pub whole: bool,
}

impl OwnRecord {
    /// What a starting node inherits of the partner's copy of its shadow log and write-back
    /// mirror (what its newest record marked). A read that was not whole cannot tell that no
    /// newer record marked the copy outdated: the copy is then confirmed on no incarnation (it
    /// is re-sent whole before a survivor takes over from it automatically), and with no
    /// valid record at all nothing can be inherited (None: the start does not go on).
    pub fn inherited_stamp(&self) -> Option<CopyStamp> {
        let stamp = self.newest.map_or(CopyStamp::default(), |r| CopyStamp {
            outdated: r.partner_copy_outdated,
            complete_for: r.partner_copy_complete_for,
            writeback_outdated: r.writeback_copy_outdated,
        });
        if self.whole {
            return Some(stamp);
        }
        self.newest?;
        Some(CopyStamp {
            complete_for: stamp.complete_for.map(|_| 0),
            ..stamp
        })
    }
}

/// Which copies a write reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxWrite {
    /// The primary copy was written and synced.
    pub primary: bool,
    /// The backup copy was written and synced.
    pub backup: bool,
    /// The error of the copy that failed, if one did.
    pub failure: Option<String>,
}

/// Two shared copies of the per-node mailbox sectors.
pub trait Mailbox: Send {
    /// Writes this node's record to its sector of both copies; succeeds if at least one copy
    /// was written (the result says which).
    fn write_own(&mut self, rec: &MailboxRecord) -> Result<MailboxWrite, GivebackError>;
    /// The partner's record: the valid copy with the higher (incarnation, heartbeat); `None`
    /// if neither copy holds a valid record of the partner. An error only when no copy could
    /// be read at all.
    fn read_partner(&mut self) -> Result<Option<MailboxRecord>, GivebackError>;
    /// This node's own record, chosen like [`Mailbox::read_partner`], and whether both
    /// copies were read whole (a start inherits its marks from it: [`OwnRecord`]).
    fn read_own(&mut self) -> Result<OwnRecord, GivebackError>;
}

/// The reference mailbox: two files in a directory both node processes see, the stand-in for
/// two shared disks. Each file holds one 512-byte sector per node, the smaller node id's at
/// offset 0. Files are opened per call and never locked: each node writes only its own
/// sector, with one positioned write of the whole sector and `sync_data`.
#[derive(Debug)]
pub struct FileMailbox {
    dir: PathBuf,
    me: u32,
    partner: u32,
}

enum CopyRead {
    Valid(MailboxRecord),
    /// Never written: missing, too short for the slot, or all zeros.
    Empty,
    /// Torn, corrupt, or the record of another node.
    Invalid,
    Failed(std::io::Error),
}

impl FileMailbox {
    /// A mailbox in `dir` (which must exist) for node `me` and its partner.
    pub fn open(dir: &Path, me: u32, partner: u32) -> Result<FileMailbox, GivebackError> {
        if me == partner {
            return Err(GivebackError::OpenMailbox {
                dir: dir.to_path_buf(),
                reason: format!("node and partner are both {me}"),
            });
        }
        if !dir.is_dir() {
            return Err(GivebackError::OpenMailbox {
                dir: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        Ok(FileMailbox {
            dir: dir.to_path_buf(),
            me,
            partner,
        })
    }

    /// The primary copy's path.
    pub fn primary_path(&self) -> PathBuf {
        self.dir.join(MAILBOX_PRIMARY_FILE)
    }

    /// The backup copy's path.
    pub fn backup_path(&self) -> PathBuf {
        self.dir.join(MAILBOX_BACKUP_FILE)
    }

    /// Byte offset of `node`'s sector in each copy.
    pub fn sector_offset(&self, node: u32) -> u64 {
        let other = if node == self.me {
            self.partner
        } else {
            self.me
        };
        if node < other {
            0
        } else {
            MAILBOX_SECTOR_LEN as u64
        }
    }

    fn write_copy(&self, path: &Path, sector: &[u8]) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        file.write_all_at(sector, self.sector_offset(self.me))?;
        file.sync_data()
    }

    fn read_copy(&self, path: &Path, node: u32) -> CopyRead {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return CopyRead::Empty,
            Err(e) => return CopyRead::Failed(e),
        };
        let mut rec = [0u8; MAILBOX_RECORD_LEN];
        match file.read_exact_at(&mut rec, self.sector_offset(node)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                tracing::debug!(?path, node, "mailbox copy too short for the slot");
                return CopyRead::Empty;
            }
            Err(e) => return CopyRead::Failed(e),
        }
        if rec.iter().all(|&b| b == 0) {
            return CopyRead::Empty;
        }
        match MailboxRecord::decode(&rec) {
            Ok(r) if r.node == node => CopyRead::Valid(r),
            Ok(r) => {
                tracing::debug!(?path, node, found = r.node, "mailbox slot of another node");
                CopyRead::Invalid
            }
            Err(e) => {
                tracing::debug!(?path, node, error = %e, "mailbox copy not believed");
                CopyRead::Invalid
            }
        }
    }

    fn read_node(&self, node: u32) -> Result<OwnRecord, GivebackError> {
        let (primary, backup) = (self.primary_path(), self.backup_path());
        match (
            self.read_copy(&primary, node),
            self.read_copy(&backup, node),
        ) {
            (CopyRead::Failed(source), CopyRead::Failed(backup_error)) => {
                Err(GivebackError::ReadMailbox {
                    primary,
                    source,
                    backup,
                    backup_error,
                })
            }
            (a, b) => {
                let whole = |c: &CopyRead| matches!(c, CopyRead::Valid(_) | CopyRead::Empty);
                let whole = whole(&a) && whole(&b);
                let valid = |c: CopyRead| match c {
                    CopyRead::Valid(r) => Some(r),
                    CopyRead::Empty | CopyRead::Invalid => None,
                    CopyRead::Failed(e) => {
                        tracing::debug!(node, error = %e, "mailbox copy unreadable");
                        None
                    }
                };
                Ok(OwnRecord {
                    newest: newest_record(valid(a), valid(b)),
                    whole,
                })
            }
        }
    }
}

impl Mailbox for FileMailbox {
    fn write_own(&mut self, rec: &MailboxRecord) -> Result<MailboxWrite, GivebackError> {
        let mut sector = [0u8; MAILBOX_SECTOR_LEN];
        sector[..MAILBOX_RECORD_LEN].copy_from_slice(&rec.encode());
        let (primary, backup) = (self.primary_path(), self.backup_path());
        match (
            self.write_copy(&primary, &sector),
            self.write_copy(&backup, &sector),
        ) {
            (Err(source), Err(backup_error)) => Err(GivebackError::WriteMailbox {
                primary,
                source,
                backup,
                backup_error,
            }),
            (p, b) => Ok(MailboxWrite {
                primary: p.is_ok(),
                backup: b.is_ok(),
                failure: p
                    .err()
                    .map(|e| format!("{primary:?}: {e}"))
                    .or_else(|| b.err().map(|e| format!("{backup:?}: {e}"))),
            }),
        }
    }

    fn read_partner(&mut self) -> Result<Option<MailboxRecord>, GivebackError> {
        self.read_node(self.partner).map(|r| r.newest)
    }

    fn read_own(&mut self) -> Result<OwnRecord, GivebackError> {
        self.read_node(self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: u32, incarnation: u64, heartbeat: u64) -> MailboxRecord {
        MailboxRecord {
            own_log_applied_here: false,
            node,
            incarnation,
            state: NodeState::Takeover,
            taken_over: true,
            takeover_pending: false,
            heartbeat,
            partner_incarnation: 41,
            replayed_partner_log: None,
            partner_copy_outdated: None,
            partner_copy_complete_for: None,
            writeback_copy_outdated: false,
            own_log_generation: 0,
            own_writeback_epoch: 0,
            took_over_writeback: 0,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "interlink-giveback-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn format_error(r: Result<MailboxRecord, GivebackError>) -> FormatError {
        match r {
            Err(GivebackError::DecodeMailboxRecord(f)) => f,
            other => panic!("expected a typed decode error, got {other:?}"),
        }
    }

    #[test]
    fn giveback_mailbox_record_round_trips() {
        let r = rec(2, 7, 1234);
        assert_eq!(MailboxRecord::decode(&r.encode()).unwrap(), r);
        let p = MailboxRecord {
            taken_over: false,
            takeover_pending: true,
            state: NodeState::MbWait,
            ..r
        };
        assert_eq!(MailboxRecord::decode(&p.encode()).unwrap(), p);
        assert!(p.claims_partner());
        assert_eq!(&r.encode()[0..4], b"ILMB");
    }

    #[test]
    fn giveback_mailbox_record_rejects_every_bit_flip_and_truncation() {
        let b = rec(2, 7, 1234).encode();
        for i in 0..MAILBOX_RECORD_LEN * 8 {
            let mut t = b;
            t[i / 8] ^= 1 << (i % 8);
            let f = format_error(MailboxRecord::decode(&t));
            if i < 32 {
                assert!(matches!(f, FormatError::Magic(_)), "bit {i}: {f}");
            } else {
                assert_eq!(f, FormatError::Checksum, "bit {i}");
            }
        }
        for len in 0..MAILBOX_RECORD_LEN {
            assert_eq!(
                format_error(MailboxRecord::decode(&b[..len])),
                FormatError::Short {
                    got: len,
                    need: MAILBOX_RECORD_LEN
                }
            );
        }
        // Well-formed checksums over bad fields: version, state, flags, reserved bytes.
        let reseal = |mut t: [u8; MAILBOX_RECORD_LEN]| {
            let crc = crc32c::crc32c(&t[0..108]);
            t[108..112].copy_from_slice(&crc.to_be_bytes());
            t
        };
        let mut t = b;
        t[5] = 4;
        assert_eq!(
            format_error(MailboxRecord::decode(&reseal(t))),
            FormatError::Version(4)
        );
        let mut t = b;
        t[7] = 9;
        assert_eq!(
            format_error(MailboxRecord::decode(&reseal(t))),
            FormatError::State(9)
        );
        let mut t = b;
        t[13] |= 0x80;
        assert_eq!(
            format_error(MailboxRecord::decode(&reseal(t))),
            FormatError::Flags(0x80)
        );
        for offset in [72, 79, 104, 107] {
            let mut t = b;
            t[offset] = 1;
            assert_eq!(
                format_error(MailboxRecord::decode(&reseal(t))),
                FormatError::Reserved { offset, value: 1 }
            );
        }
        // A sequence number without a generation is refused (the fuzzer found it re-encoding
        // differently).
        let mut t = b;
        t[50] = 0xa8;
        assert_eq!(
            format_error(MailboxRecord::decode(&reseal(t))),
            FormatError::Reserved {
                offset: 50,
                value: 0xa8
            }
        );
        // Version 1 (64 bytes, before the replayed-log fields) keeps bytes 40..60 reserved.
        let mut t = b;
        t[5] = 1;
        t[50] = 1;
        let crc = crc32c::crc32c(&t[0..60]);
        t[60..64].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            format_error(MailboxRecord::decode(&t[..64])),
            FormatError::Reserved {
                offset: 50,
                value: 1
            }
        );
    }

    #[test]
    fn giveback_mailbox_record_carries_the_replayed_log_and_the_outdated_mark() {
        let r = MailboxRecord {
            replayed_partner_log: Some(ReplayedMark {
                at: LogMark {
                    generation: 1_765_000_000_000_000_000,
                    seq: 4711,
                },
                complete: true,
            }),
            partner_copy_outdated: Some(LogMark {
                generation: 1_765_000_000_000_000_009,
                seq: 12,
            }),
            partner_copy_complete_for: Some(0x1122_3344_5566_7788),
            writeback_copy_outdated: true,
            own_log_generation: 1_765_000_000_000_000_011,
            ..rec(2, 7, 1234)
        };
        let b = r.encode();
        assert_eq!(b[80..88], 1_765_000_000_000_000_011u64.to_be_bytes());
        assert_eq!(MailboxRecord::decode(&b).unwrap(), r);
        // A replay that stopped midway is another record; a complete flag without the
        // replayed position is a format error.
        let stopped = MailboxRecord {
            replayed_partner_log: r.replayed_partner_log.map(|m| ReplayedMark {
                complete: false,
                ..m
            }),
            ..r
        };
        assert_eq!(MailboxRecord::decode(&stopped.encode()).unwrap(), stopped);
        assert_ne!(stopped.encode()[12..14], b[12..14]);
        let mut bad = rec(2, 7, 1234).encode();
        bad[13] |= 1 << 4;
        let crc = crc32c::crc32c(&bad[0..108]);
        bad[108..112].copy_from_slice(&crc.to_be_bytes());
        assert!(MailboxRecord::decode(&bad).is_err());
        // A shadow log whose copy is complete on no partner incarnation yet is not the same
        // record as one without a shadow log.
        let unconfirmed = MailboxRecord {
            partner_copy_complete_for: Some(0),
            ..rec(2, 7, 1234)
        };
        assert_eq!(
            MailboxRecord::decode(&unconfirmed.encode()).unwrap(),
            unconfirmed
        );
        assert_ne!(unconfirmed.encode(), rec(2, 7, 1234).encode());
        // The field without the flag is a format error, not a value.
        let mut bad = rec(2, 7, 1234).encode();
        bad[79] = 1;
        let crc = crc32c::crc32c(&bad[0..108]);
        bad[108..112].copy_from_slice(&crc.to_be_bytes());
        assert!(MailboxRecord::decode(&bad).is_err());
        // A version 1 record (as an older release wrote it) reads as having replayed
        // nothing, with the partner's copy in sync.
        let plain = rec(2, 7, 1234);
        let mut v1 = [0u8; 64];
        v1.copy_from_slice(&plain.encode()[..64]);
        v1[5] = 1;
        v1[40..64].fill(0);
        let crc = crc32c::crc32c(&v1[0..60]);
        v1[60..64].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(MailboxRecord::decode(&v1).unwrap(), plain);
        // A version 2 record reads with both write-back epochs 0; in version 3 they are
        // fields of their own.
        let epochs = MailboxRecord {
            own_writeback_epoch: 5,
            took_over_writeback: 3,
            ..r
        };
        let b3 = epochs.encode();
        assert_eq!(b3[88..96], 5u64.to_be_bytes());
        assert_eq!(b3[96..104], 3u64.to_be_bytes());
        assert_eq!(MailboxRecord::decode(&b3).unwrap(), epochs);
        let mut v2 = [0u8; 96];
        v2.copy_from_slice(&b3[..96]);
        v2[5] = 2;
        v2[88..92].fill(0);
        let crc = crc32c::crc32c(&v2[0..92]);
        v2[92..96].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(MailboxRecord::decode(&v2).unwrap(), r);
        let mut bad = b3;
        bad[104] = 1;
        let crc = crc32c::crc32c(&bad[0..108]);
        bad[108..112].copy_from_slice(&crc.to_be_bytes());
        assert!(MailboxRecord::decode(&bad).is_err());
    }

    #[test]
    fn giveback_newest_record_prefers_incarnation_then_heartbeat() {
        let (a, b, c) = (rec(2, 3, 100), rec(2, 4, 1), rec(2, 4, 2));
        assert_eq!(newest_record(Some(a), Some(b)), Some(b));
        assert_eq!(newest_record(Some(c), Some(b)), Some(c));
        assert_eq!(newest_record(None, Some(a)), Some(a));
        assert_eq!(newest_record(None, None), None);
    }

    #[test]
    fn giveback_file_mailbox_two_nodes_see_each_other() {
        let dir = tempdir("mb-pair");
        let mut one = FileMailbox::open(&dir, 1, 2).unwrap();
        let mut two = FileMailbox::open(&dir, 2, 1).unwrap();
        assert_eq!(one.read_partner().unwrap(), None, "nothing written yet");
        let w = one.write_own(&rec(1, 5, 1)).unwrap();
        assert!(w.primary && w.backup && w.failure.is_none());
        two.write_own(&rec(2, 9, 1)).unwrap();
        assert_eq!(two.read_partner().unwrap(), Some(rec(1, 5, 1)));
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 1)));
        assert_eq!(
            one.read_own().unwrap(),
            OwnRecord {
                newest: Some(rec(1, 5, 1)),
                whole: true
            }
        );
        assert_eq!(one.sector_offset(1), 0);
        assert_eq!(two.sector_offset(2), 512);
        let len = std::fs::metadata(one.primary_path()).unwrap().len();
        assert_eq!(len, 1024, "one sector per node");
        assert!(FileMailbox::open(&dir, 3, 3).is_err());
        assert!(FileMailbox::open(&dir.join("missing"), 1, 2).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giveback_a_start_from_one_copy_confirms_the_partners_copy_on_no_incarnation() {
        let dir = tempdir("mb-own-one-copy");
        let mut one = FileMailbox::open(&dir, 1, 2).unwrap();
        // Never written: whole, nothing inherited.
        let fresh = one.read_own().unwrap();
        assert_eq!(
            fresh,
            OwnRecord {
                newest: None,
                whole: true
            }
        );
        assert_eq!(fresh.inherited_stamp(), Some(CopyStamp::default()));
        let marked = MailboxRecord {
            partner_copy_outdated: Some(LogMark {
                generation: 3,
                seq: 7,
            }),
            partner_copy_complete_for: Some(41),
            ..rec(1, 5, 1)
        };
        let in_sync = MailboxRecord {
            partner_copy_outdated: None,
            ..marked
        };
        one.write_own(&in_sync).unwrap();
        let both = one.read_own().unwrap();
        assert!(both.whole);
        assert_eq!(both.inherited_stamp().unwrap().complete_for, Some(41));
        // The backup dropped the write that carried the mark, then the primary tore: the
        // backup's older record alone is read, and nothing it says is believed whole.
        one.write_own(&marked).unwrap();
        std::fs::write(one.backup_path(), {
            let mut sector = vec![0u8; 2 * MAILBOX_SECTOR_LEN];
            sector[..MAILBOX_RECORD_LEN].copy_from_slice(&in_sync.encode());
            sector
        })
        .unwrap();
        let mut torn = std::fs::read(one.primary_path()).unwrap();
        torn[MAILBOX_RECORD_LEN / 2..MAILBOX_RECORD_LEN].fill(0xa5);
        std::fs::write(one.primary_path(), &torn).unwrap();
        let partial = one.read_own().unwrap();
        assert_eq!(partial.newest, Some(in_sync));
        assert!(!partial.whole);
        let s = partial.inherited_stamp().unwrap();
        assert_eq!((s.outdated, s.complete_for), (None, Some(0)));
        // A node that never attached a shadow log inherits no shadow log.
        let plain = OwnRecord {
            newest: Some(rec(1, 5, 1)),
            whole: false,
        };
        assert_eq!(plain.inherited_stamp().unwrap().complete_for, None);
        // The only valid record lost with the other copy torn: nothing can be inherited.
        std::fs::remove_file(one.backup_path()).unwrap();
        let none = one.read_own().unwrap();
        assert_eq!(
            none,
            OwnRecord {
                newest: None,
                whole: false
            }
        );
        assert_eq!(none.inherited_stamp(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giveback_file_mailbox_survives_a_deleted_corrupt_or_torn_copy() {
        let dir = tempdir("mb-faults");
        let mut one = FileMailbox::open(&dir, 1, 2).unwrap();
        let mut two = FileMailbox::open(&dir, 2, 1).unwrap();
        two.write_own(&rec(2, 9, 1)).unwrap();
        two.write_own(&rec(2, 9, 2)).unwrap();

        // Deleted primary: the backup answers; the next write re-creates the primary.
        std::fs::remove_file(two.primary_path()).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 2)));
        let w = two.write_own(&rec(2, 9, 3)).unwrap();
        assert!(w.primary && w.backup);
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 3)));

        // Corrupt backup (a flipped bit in node 2's record): the primary answers.
        let f = OpenOptions::new()
            .write(true)
            .open(two.backup_path())
            .unwrap();
        f.write_all_at(&[0xff], 512 + 30).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 3)));

        // Torn primary: half of a newer record written over the old one. Never believed; with
        // the backup still corrupt no copy is valid until the next write.
        let newer = rec(2, 9, 4).encode();
        let f = OpenOptions::new()
            .write(true)
            .open(two.primary_path())
            .unwrap();
        f.write_all_at(&newer[..32], 512).unwrap();
        assert_eq!(
            one.read_partner().unwrap(),
            None,
            "torn + corrupt: no valid copy"
        );
        two.write_own(&rec(2, 9, 5)).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 5)));

        // Truncated backup (no room for node 2's sector): the primary answers.
        let f = OpenOptions::new()
            .write(true)
            .open(two.backup_path())
            .unwrap();
        f.set_len(520).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 5)));

        // A stale copy loses to the newer one, whichever file holds it.
        let f = OpenOptions::new()
            .write(true)
            .open(two.primary_path())
            .unwrap();
        f.write_all_at(&rec(2, 9, 1).encode(), 512).unwrap();
        two.write_own(&rec(2, 9, 6)).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(two.primary_path())
            .unwrap();
        f.write_all_at(&rec(2, 9, 1).encode(), 512).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 6)));

        // A record of the wrong node in the partner's slot is not believed.
        let f = OpenOptions::new()
            .write(true)
            .open(two.backup_path())
            .unwrap();
        f.write_all_at(&rec(1, 99, 99).encode(), 512).unwrap();
        assert_eq!(one.read_partner().unwrap(), Some(rec(2, 9, 1)));

        // Both copies gone: no record (not an error: missing copies are invalid copies).
        std::fs::remove_file(two.primary_path()).unwrap();
        std::fs::remove_file(two.backup_path()).unwrap();
        assert_eq!(one.read_partner().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_own_log_applied_here_flag_round_trips_and_is_refused_in_layout_2() {
        let r = MailboxRecord {
            own_log_generation: 9,
            own_log_applied_here: true,
            ..rec(2, 7, 1234)
        };
        let b = r.encode();
        assert_eq!(b[13] & (1 << 5), 1 << 5);
        assert_eq!(MailboxRecord::decode(&b).unwrap(), r);
        assert_ne!(rec(2, 7, 1234).encode()[12..14], b[12..14]);
        // Layout 2 (96 bytes) knows no bit 5.
        let v2 = |flags: u8| {
            let mut v = b[0..RECORD_V2_LEN].to_vec();
            v[4..6].copy_from_slice(&LAYOUT_VERSION_2.to_be_bytes());
            v[13] = flags;
            v[88..92].fill(0);
            let crc = crc32c::crc32c(&v[0..92]);
            v[92..96].copy_from_slice(&crc.to_be_bytes());
            v
        };
        let plain = MailboxRecord::decode(&v2(0)).unwrap();
        assert!(!plain.own_log_applied_here && plain.own_log_generation == 9);
        assert!(matches!(
            MailboxRecord::decode(&v2(1 << 5)),
            Err(GivebackError::DecodeMailboxRecord(FormatError::Flags(32)))
        ));
    }

    #[test]
    fn giveback_file_mailbox_write_fails_only_when_both_copies_fail() {
        let dir = tempdir("mb-write-fail");
        let mut one = FileMailbox::open(&dir, 1, 2).unwrap();
        // A directory where the primary file should be: that copy cannot be written.
        std::fs::create_dir(one.primary_path()).unwrap();
        let w = one.write_own(&rec(1, 1, 1)).unwrap();
        assert!(!w.primary && w.backup && w.failure.is_some());
        std::fs::remove_file(one.backup_path()).unwrap();
        std::fs::create_dir(one.backup_path()).unwrap();
        assert!(matches!(
            one.write_own(&rec(1, 1, 2)),
            Err(GivebackError::WriteMailbox { .. })
        ));
        // Reading a directory fails with an I/O error on both copies: a typed read error.
        assert!(matches!(
            one.read_partner(),
            Err(GivebackError::ReadMailbox { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
