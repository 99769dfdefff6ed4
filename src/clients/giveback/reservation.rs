//! Disk reservations: the stand-in for SCSI persistent reservations.
//!
//! A node holding the reservation of a disk set is the only one that may bring it into
//! service. A reservation persists when its holder dies (like a SCSI persistent reservation),
//! which is how a repaired node finds its own disks reserved by the survivor (step 525). Only a
//! preempting reserve takes a set from another holder.
//!
//! The reference implementation, [`FileReservations`], keeps one file `reservation-<set>` per
//! set in a directory both nodes see:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ILRV` |
//! | 4 | 2 | layout version (1) |
//! | 6 | 2 | reserved, zero |
//! | 8 | 4 | holder's node id |
//! | 12 | 4 | CRC32C of bytes 0..12 |
//!
//! No file means nobody holds the set. A reserve or release takes an exclusive `flock` on
//! `reservation-<set>.lock` for the duration of the one call, writes a temporary file and
//! renames it over the reservation (or unlinks it), then syncs the directory; a check reads
//! the file without the lock (the rename is atomic).

use super::error::{FormatError, GivebackError};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A disk set, named by the node id that owns it normally.
pub type DiskSet = u32;

const MAGIC: [u8; 4] = *b"ILRV";
const LAYOUT_VERSION: u16 = 1;
/// Size of a reservation file.
pub const RESERVATION_LEN: usize = 16;

/// Reservations of disk sets, shared by both nodes.
pub trait Reservations: Send {
    /// Tries to reserve `set`; with `preempt` it is taken from any other holder. Returns the
    /// holder after the attempt: `Some(me)` = granted, `Some(other)` = held by the other node
    /// (only possible without `preempt`).
    fn reserve(&mut self, set: DiskSet, preempt: bool) -> Result<Option<u32>, GivebackError>;
    /// Releases `set` if this node holds it (otherwise does nothing).
    fn release(&mut self, set: DiskSet) -> Result<(), GivebackError>;
    /// Who holds `set` (`None` = nobody).
    fn check(&mut self, set: DiskSet) -> Result<Option<u32>, GivebackError>;
}

/// Encodes a reservation file naming `holder`.
pub fn encode_reservation(holder: u32) -> [u8; RESERVATION_LEN] {
    let mut b = [0u8; RESERVATION_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&LAYOUT_VERSION.to_be_bytes());
    b[8..12].copy_from_slice(&holder.to_be_bytes());
    let crc = crc32c::crc32c(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Decodes a reservation file: the holder's node id.
pub fn decode_reservation(b: &[u8]) -> Result<u32, FormatError> {
    if b.len() != RESERVATION_LEN {
        return Err(FormatError::Short {
            got: b.len(),
            need: RESERVATION_LEN,
        });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&b[0..4]);
    if magic != MAGIC {
        return Err(FormatError::Magic(magic));
    }
    let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if crc32c::crc32c(&b[0..12]) != be32(12) {
        return Err(FormatError::Checksum);
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != LAYOUT_VERSION {
        return Err(FormatError::Version(version));
    }
    if let Some((i, &value)) = b[6..8].iter().enumerate().find(|(_, v)| **v != 0) {
        return Err(FormatError::Reserved {
            offset: 6 + i,
            value,
        });
    }
    Ok(be32(8))
}

/// The reference reservations: one file per disk set in a shared directory.
#[derive(Debug)]
pub struct FileReservations {
    dir: PathBuf,
    me: u32,
}

/// What a reservation file said.
enum Holder {
    Nobody,
    Node(u32),
    Corrupt(FormatError),
}

impl FileReservations {
    /// Reservations kept in `dir` (created if missing) on behalf of node `me`.
    pub fn open(dir: &Path, me: u32) -> Result<FileReservations, GivebackError> {
        std::fs::create_dir_all(dir).map_err(|source| GivebackError::OpenReservations {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(FileReservations {
            dir: dir.to_path_buf(),
            me,
        })
    }

    /// The file holding the reservation of `set`.
    pub fn path(&self, set: DiskSet) -> PathBuf {
        self.dir.join(format!("reservation-{set}"))
    }

    fn lock_path(&self, set: DiskSet) -> PathBuf {
        self.dir.join(format!("reservation-{set}.lock"))
    }

    /// Takes the per-set lock for the duration of one call (released when dropped).
    fn lock(&self, set: DiskSet) -> std::io::Result<Flock<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.lock_path(set))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno.into())
    }

    fn read_holder(&self, set: DiskSet) -> std::io::Result<Holder> {
        let file = match File::open(self.path(set)) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Holder::Nobody),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::with_capacity(RESERVATION_LEN);
        file.take(RESERVATION_LEN as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(match decode_reservation(&bytes) {
            Ok(node) => Holder::Node(node),
            Err(f) => Holder::Corrupt(f),
        })
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn write_holder(&self, set: DiskSet) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("reservation-{set}.tmp-{}", self.me));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode_reservation(self.me))?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(set))?;
        self.sync_dir()
    }

    fn corrupt(&self, set: DiskSet, reason: FormatError) -> GivebackError {
        tracing::warn!(set, path = ?self.path(set), %reason, "reservation file not believed");
        GivebackError::DecodeReservation {
            set,
            path: self.path(set),
            reason,
        }
    }
}

impl Reservations for FileReservations {
    fn reserve(&mut self, set: DiskSet, preempt: bool) -> Result<Option<u32>, GivebackError> {
        let err = |source| GivebackError::Reserve {
            set,
            path: self.path(set),
            source,
        };
        let _lock = self.lock(set).map_err(err)?;
        match self.read_holder(set).map_err(err)? {
            Holder::Node(n) if n == self.me => return Ok(Some(n)),
            Holder::Node(n) if !preempt => return Ok(Some(n)),
            Holder::Corrupt(reason) if !preempt => return Err(self.corrupt(set, reason)),
            _ => {}
        }
        self.write_holder(set).map_err(err)?;
        Ok(Some(self.me))
    }

    fn release(&mut self, set: DiskSet) -> Result<(), GivebackError> {
        let err = |source| GivebackError::Release {
            set,
            path: self.path(set),
            source,
        };
        let _lock = self.lock(set).map_err(err)?;
        match self.read_holder(set).map_err(err)? {
            Holder::Node(n) if n == self.me => {
                std::fs::remove_file(self.path(set)).map_err(err)?;
                self.sync_dir().map_err(err)
            }
            Holder::Corrupt(reason) => Err(self.corrupt(set, reason)),
            _ => Ok(()),
        }
    }

    fn check(&mut self, set: DiskSet) -> Result<Option<u32>, GivebackError> {
        match self.read_holder(set) {
            Ok(Holder::Nobody) => Ok(None),
            Ok(Holder::Node(n)) => Ok(Some(n)),
            Ok(Holder::Corrupt(reason)) => Err(self.corrupt(set, reason)),
            Err(source) => Err(GivebackError::CheckReservation {
                set,
                path: self.path(set),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "interlink-giveback-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn giveback_reservation_file_round_trips_and_rejects_damage() {
        let b = encode_reservation(7);
        assert_eq!(decode_reservation(&b), Ok(7));
        for i in 0..RESERVATION_LEN * 8 {
            let mut t = b;
            t[i / 8] ^= 1 << (i % 8);
            assert!(decode_reservation(&t).is_err(), "flip of bit {i} believed");
        }
        for len in 0..RESERVATION_LEN {
            assert_eq!(
                decode_reservation(&b[..len]),
                Err(FormatError::Short { got: len, need: 16 })
            );
        }
    }

    #[test]
    fn giveback_reservations_grant_refuse_preempt_and_release() {
        let dir = tempdir("resv");
        let mut one = FileReservations::open(&dir, 1).unwrap();
        let mut two = FileReservations::open(&dir, 2).unwrap();
        assert_eq!(one.check(2).unwrap(), None);
        assert_eq!(two.reserve(2, false).unwrap(), Some(2));
        assert_eq!(two.reserve(2, false).unwrap(), Some(2), "idempotent");
        assert_eq!(one.reserve(2, false).unwrap(), Some(2), "held by the other");
        assert_eq!(one.check(2).unwrap(), Some(2));
        one.release(2).unwrap();
        assert_eq!(
            one.check(2).unwrap(),
            Some(2),
            "release only releases my own"
        );
        assert_eq!(one.reserve(2, true).unwrap(), Some(1), "preempt");
        assert_eq!(two.check(2).unwrap(), Some(1));
        assert_eq!(std::fs::read(one.path(2)).unwrap(), encode_reservation(1));
        one.release(2).unwrap();
        assert!(!one.path(2).exists());
        assert_eq!(two.check(2).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giveback_reservations_persist_across_process_death() {
        let dir = tempdir("resv-persist");
        {
            let mut one = FileReservations::open(&dir, 1).unwrap();
            assert_eq!(one.reserve(1, false).unwrap(), Some(1));
            assert_eq!(one.reserve(2, true).unwrap(), Some(1));
            // The "process" dies here without releasing anything.
        }
        let mut two = FileReservations::open(&dir, 2).unwrap();
        assert_eq!(
            two.check(2).unwrap(),
            Some(1),
            "the repaired node finds its set reserved"
        );
        assert_eq!(two.reserve(2, false).unwrap(), Some(1));
        let mut one_again = FileReservations::open(&dir, 1).unwrap();
        assert_eq!(one_again.check(1).unwrap(), Some(1));
        one_again.release(2).unwrap();
        assert_eq!(two.reserve(2, false).unwrap(), Some(2));
        // No lock is left held between calls: another handle can take the lock at once.
        let probe = File::open(dir.join("reservation-2.lock")).unwrap();
        assert!(Flock::lock(probe, FlockArg::LockExclusiveNonblock).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giveback_reservations_are_exclusive_under_concurrent_handles() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let dir = tempdir("resv-race");
        std::fs::create_dir_all(&dir).unwrap();
        let inside = AtomicU32::new(0);
        let grants = AtomicU32::new(0);
        std::thread::scope(|s| {
            for node in 1..=4u32 {
                let (dir, inside, grants) = (&dir, &inside, &grants);
                s.spawn(move || {
                    let mut r = FileReservations::open(dir, node).unwrap();
                    for _ in 0..50 {
                        if r.reserve(9, false).unwrap() == Some(node) {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                            grants.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(r.check(9).unwrap(), Some(node));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            r.release(9).unwrap();
                        }
                    }
                });
            }
        });
        assert!(grants.load(Ordering::SeqCst) > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giveback_corrupt_reservation_is_an_error_unless_preempted() {
        let dir = tempdir("resv-corrupt");
        let mut one = FileReservations::open(&dir, 1).unwrap();
        std::fs::write(one.path(2), b"garbage").unwrap();
        assert!(matches!(
            one.check(2),
            Err(GivebackError::DecodeReservation {
                set: 2,
                reason: FormatError::Short { .. },
                ..
            })
        ));
        assert!(matches!(
            one.reserve(2, false),
            Err(GivebackError::DecodeReservation { .. })
        ));
        assert!(matches!(
            one.release(2),
            Err(GivebackError::DecodeReservation { .. })
        ));
        assert_eq!(one.reserve(2, true).unwrap(), Some(1));
        assert_eq!(one.check(2).unwrap(), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
