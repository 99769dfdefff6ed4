//! The shared disks of the simulated pair: two mailbox copies (fault-injectable) and the
//! disk reservations (which survive a node crash), behind the library's `Mailbox` and
//! `Reservations` traits.

use interlink::clients::giveback::mailbox::MAILBOX_RECORD_LEN;
use interlink::clients::giveback::{
    newest_record, DiskSet, GivebackError, Mailbox, MailboxRecord, MailboxWrite, OwnRecord,
    Reservations,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// What is wrong with one mailbox copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFault {
    /// Healthy.
    None,
    /// Reads and writes fail with I/O errors.
    Lost,
    /// Writes are acknowledged but silently dropped (the copy goes stale).
    Stale,
    /// The next write stores only the first half of the record, then the copy is healthy.
    TearNextWrite,
}

/// One mailbox copy: a 64-byte slot per node.
#[derive(Clone, Debug)]
pub struct MemCopy {
    pub slots: BTreeMap<u32, [u8; MAILBOX_RECORD_LEN]>,
    pub fault: CopyFault,
}

/// Everything both nodes share.
#[derive(Debug)]
pub struct Disks {
    pub copies: [MemCopy; 2],
    pub reservations: BTreeMap<DiskSet, u32>,
    /// Nodes that cannot reach the mailbox disks at all.
    pub no_mailbox_access: BTreeSet<u32>,
    /// Nodes whose mailbox reads fail (writes still work).
    pub mailbox_read_fails: BTreeSet<u32>,
    /// Reservation commands fail with I/O errors.
    pub reservation_errors: bool,
    /// (node, disk set): that node's path to that set is down, its reservation commands for
    /// the set fail with I/O errors.
    pub reservation_path_down: BTreeSet<(u32, DiskSet)>,
    /// Torn writes so far (test coverage).
    pub torn_writes: u64,
}

impl Disks {
    /// Whether the two copies hold the same bytes in every slot. A copy that missed writes
    /// (lost, silently dropped, torn) stays faulty after its fault is lifted, until each
    /// owner's next write: the mailbox is a redundant pair, it survives one faulty copy at a
    /// time, so a second fault starts only once both copies agree again (a node that is down
    /// rewrites nothing, so its slot can stay degraded until it restarts).
    pub fn copies_agree(&self) -> bool {
        self.copies[0].slots == self.copies[1].slots
    }

    pub fn new() -> Disks {
        let copy = MemCopy {
            slots: BTreeMap::new(),
            fault: CopyFault::None,
        };
        Disks {
            copies: [copy.clone(), copy],
            reservations: BTreeMap::new(),
            no_mailbox_access: BTreeSet::new(),
            mailbox_read_fails: BTreeSet::new(),
            reservation_errors: false,
            reservation_path_down: BTreeSet::new(),
            torn_writes: 0,
        }
    }
}

pub type SharedDisks = Arc<Mutex<Disks>>;

fn lock(d: &SharedDisks) -> MutexGuard<'_, Disks> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

/// One node's view of the mailbox copies.
pub struct SimMailbox {
    pub disks: SharedDisks,
    pub me: u32,
    pub partner: u32,
}

impl SimMailbox {
    fn read_node(&self, node: u32) -> Result<OwnRecord, GivebackError> {
        let d = lock(&self.disks);
        let unreachable =
            d.no_mailbox_access.contains(&self.me) || d.mailbox_read_fails.contains(&self.me);
        let mut errors = Vec::new();
        let mut valid = [None, None];
        let mut whole = true;
        for (i, c) in d.copies.iter().enumerate() {
            if unreachable || c.fault == CopyFault::Lost {
                errors.push(eio("read"));
                whole = false;
                continue;
            }
            // As the file mailbox: a slot never written is empty (whole), a torn or foreign
            // one is not.
            if let Some(b) = c.slots.get(&node) {
                valid[i] = MailboxRecord::decode(b).ok().filter(|r| r.node == node);
                whole &= valid[i].is_some();
            }
        }
        if errors.len() == 2 {
            let backup_error = errors.pop().unwrap_or_else(|| eio("read"));
            let source = errors.pop().unwrap_or_else(|| eio("read"));
            return Err(GivebackError::ReadMailbox {
                primary: PathBuf::from("sim/mailbox-primary"),
                source,
                backup: PathBuf::from("sim/mailbox-backup"),
                backup_error,
            });
        }
        Ok(OwnRecord {
            newest: newest_record(valid[0], valid[1]),
            whole,
        })
    }
}

impl Mailbox for SimMailbox {
    fn write_own(&mut self, rec: &MailboxRecord) -> Result<MailboxWrite, GivebackError> {
        let mut d = lock(&self.disks);
        let unreachable = d.no_mailbox_access.contains(&self.me);
        let bytes = rec.encode();
        let mut ok = [false, false];
        let mut torn = 0;
        for (i, c) in d.copies.iter_mut().enumerate() {
            if unreachable || c.fault == CopyFault::Lost {
                continue;
            }
            ok[i] = true;
            match c.fault {
                CopyFault::Stale => {}
                CopyFault::TearNextWrite => {
                    let slot = c.slots.entry(self.me).or_insert([0; MAILBOX_RECORD_LEN]);
                    slot[..MAILBOX_RECORD_LEN / 2]
                        .copy_from_slice(&bytes[..MAILBOX_RECORD_LEN / 2]);
                    c.fault = CopyFault::None;
                    torn += 1;
                }
                _ => {
                    c.slots.insert(self.me, bytes);
                }
            }
        }
        d.torn_writes += torn;
        if !ok[0] && !ok[1] {
            return Err(GivebackError::WriteMailbox {
                primary: PathBuf::from("sim/mailbox-primary"),
                source: eio("write"),
                backup: PathBuf::from("sim/mailbox-backup"),
                backup_error: eio("write"),
            });
        }
        Ok(MailboxWrite {
            primary: ok[0],
            backup: ok[1],
            failure: (!ok[0] || !ok[1]).then(|| "one copy lost".to_string()),
        })
    }

    fn read_partner(&mut self) -> Result<Option<MailboxRecord>, GivebackError> {
        self.read_node(self.partner).map(|r| r.newest)
    }

    fn read_own(&mut self) -> Result<OwnRecord, GivebackError> {
        self.read_node(self.me)
    }
}

/// One node's handle on the reservations.
pub struct SimReservations {
    pub disks: SharedDisks,
    pub me: u32,
}

impl SimReservations {
    fn fail(&self, set: DiskSet, what: &str) -> Option<io::Error> {
        let d = lock(&self.disks);
        (d.reservation_errors || d.reservation_path_down.contains(&(self.me, set)))
            .then(|| eio(&format!("{what} {set}")))
    }
}

impl Reservations for SimReservations {
    fn reserve(&mut self, set: DiskSet, preempt: bool) -> Result<Option<u32>, GivebackError> {
        if let Some(source) = self.fail(set, "reserve") {
            return Err(GivebackError::Reserve {
                set,
                path: PathBuf::from("sim/reservation"),
                source,
            });
        }
        let mut d = lock(&self.disks);
        let holder = d.reservations.get(&set).copied();
        match holder {
            Some(h) if h != self.me && !preempt => Ok(Some(h)),
            _ => {
                d.reservations.insert(set, self.me);
                Ok(Some(self.me))
            }
        }
    }

    fn release(&mut self, set: DiskSet) -> Result<(), GivebackError> {
        if let Some(source) = self.fail(set, "release") {
            return Err(GivebackError::Release {
                set,
                path: PathBuf::from("sim/reservation"),
                source,
            });
        }
        let mut d = lock(&self.disks);
        if d.reservations.get(&set) == Some(&self.me) {
            d.reservations.remove(&set);
        }
        Ok(())
    }

    fn check(&mut self, set: DiskSet) -> Result<Option<u32>, GivebackError> {
        if let Some(source) = self.fail(set, "check") {
            return Err(GivebackError::CheckReservation {
                set,
                path: PathBuf::from("sim/reservation"),
                source,
            });
        }
        Ok(lock(&self.disks).reservations.get(&set).copied())
    }
}

/// Direct access for fault injection and assertions.
pub fn disks(d: &SharedDisks) -> MutexGuard<'_, Disks> {
    lock(d)
}
