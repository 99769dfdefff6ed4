//! Local files are the owner's (docs/security.md, "Local user"): the control socket, the NVRAM
//! (log, cursor, write-back tables), the mailbox copies, the reservation and lock files and
//! the service journal are created mode 0600, even under a umask of 0, so another local user
//! can neither drive the node nor read or forge its state. The whole binary runs with umask 0
//! (set once; every test here wants it): its own binary, as the umask is the whole process's
//! and would reach every other test's files and node processes.
use interlink::clients::giveback::{
    FileMailbox, FileReservations, JournalHooks, Mailbox, MailboxRecord, NodeState, Reservations,
    ServiceHooks,
};
use interlink::clients::mirror::FileNvram;
use interlink::manager::control::{ControlRequest, ControlResponse, ControlServer};
use nix::sys::stat::{umask, Mode};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

fn open_umask() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        umask(Mode::empty());
    });
}

fn dir(tag: &str) -> PathBuf {
    open_umask();
    let d = std::env::temp_dir().join(format!("il-sec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every file under `d` (not directories) with its permission bits.
fn modes(d: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(modes(&p));
        } else {
            out.push((p, m.permissions().mode() & 0o777));
        }
    }
    out
}

fn assert_owner_only(d: &Path, at_least: usize) {
    let found = modes(d);
    assert!(found.len() >= at_least, "{found:?}");
    for (p, m) in &found {
        assert_eq!(*m, 0o600, "{} is {m:o}", p.display());
    }
}

#[test]
fn control_socket_is_owner_only_under_an_open_umask() {
    let d = dir("ctl");
    let path = d.join("node.sock");
    let handler = |_: ControlRequest| ControlResponse::Ok {
        value: serde_json::Value::Null,
    };
    let server = ControlServer::start(&path, Arc::new(handler)).unwrap();
    assert_owner_only(&d, 1);
    drop(server);
}

#[test]
fn nvram_is_owner_only() {
    let d = dir("nvram");
    let _n = FileNvram::open(&d.join("log.nvram"), 4096).unwrap();
    assert_owner_only(&d, 1);
}

#[test]
fn mailbox_copies_are_owner_only() {
    let d = dir("mailbox");
    let mut mb = FileMailbox::open(&d, 1, 2).unwrap();
    mb.write_own(&MailboxRecord {
        own_log_applied_here: false,
        node: 1,
        incarnation: 5,
        state: NodeState::Up,
        taken_over: false,
        takeover_pending: false,
        heartbeat: 1,
        partner_incarnation: 0,
        replayed_partner_log: None,
        partner_copy_outdated: None,
        partner_copy_complete_for: None,
        writeback_copy_outdated: false,
        own_log_generation: 0,
        own_writeback_epoch: 0,
        took_over_writeback: 0,
    })
    .unwrap();
    assert_owner_only(&d, 2);
}

#[test]
fn reservation_files_are_owner_only() {
    let d = dir("resv");
    let mut r = FileReservations::open(&d, 1).unwrap();
    assert_eq!(r.reserve(2, false).unwrap(), Some(1), "held by us");
    assert_owner_only(&d, 2);
}

#[test]
fn service_journal_is_owner_only() {
    let d = dir("journal");
    let mut hooks = JournalHooks::new(&d, 1);
    hooks.start_serving(1).unwrap();
    assert_owner_only(&d, 1);
}
