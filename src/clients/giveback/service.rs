//! The reference service hooks: a journal of what the node serves, and optional shell
//! commands that move a service identity (for example `ip addr add` of the partner's service
//! address in the demo).
//!
//! Every hook call appends one line to `service-<node>.journal` in the shared directory:
//! `<unix time µs> <node> <event> <set or partner>`, with event one of `start-serving`,
//! `stop-serving`, `assume-identity`, `release-identity`, `replay-log`. The tests read both
//! nodes' journals to check that at most one node served each disk set at any instant and to
//! measure the outage window from outside.

use crate::clients::giveback::driver::ServiceHooks;
use crate::clients::giveback::mailbox::ReplayedMark;
use crate::clients::giveback::own_log_mark::{OwnLogContext, PartnerLogContext};
use crate::clients::giveback::reservation::DiskSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// A replay hook: given the partner taken over and what its mailbox record says of its log,
/// replays its shadow log.
pub type ReplayHook = Box<dyn FnMut(&PartnerLogContext) -> Result<(), String> + Send>;

/// An own-log recovery hook: given what the partner replayed of this node's log at a
/// takeover and the marks of this node's mailbox record, recovers the log before this node
/// serves (F5.6).
pub type RecoverHook = Box<dyn FnMut(&OwnLogContext) -> Result<(), String> + Send>;

/// What this node replayed of its partner's log (its replay cursor), for the mailbox.
pub type ReplayedHook = Box<dyn FnMut() -> Option<ReplayedMark> + Send>;

/// Journal-writing service hooks with optional identity commands.
pub struct JournalHooks {
    node: u32,
    journal: PathBuf,
    on_assume: Option<String>,
    on_release: Option<String>,
    replay: Option<ReplayHook>,
    recover: Option<RecoverHook>,
    replayed: Option<ReplayedHook>,
}

impl std::fmt::Debug for JournalHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalHooks")
            .field("node", &self.node)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl JournalHooks {
    /// Hooks of node `node` journaling into `dir/service-<node>.journal`.
    pub fn new(dir: &Path, node: u32) -> JournalHooks {
        JournalHooks {
            node,
            journal: journal_path(dir, node),
            on_assume: None,
            on_release: None,
            replay: None,
            recover: None,
            replayed: None,
        }
    }

    /// Shell commands run (by `sh -c`) to assume and release the partner's identity; they see
    /// `INTERLINK_NODE` and `INTERLINK_PARTNER` in their environment.
    pub fn with_identity_commands(
        mut self,
        on_assume: Option<String>,
        on_release: Option<String>,
    ) -> JournalHooks {
        self.on_assume = on_assume;
        self.on_release = on_release;
        self
    }

    /// The hook that replays the partner's shadow log at takeover.
    pub fn with_replay(mut self, replay: ReplayHook) -> JournalHooks {
        self.replay = Some(replay);
        self
    }

    /// The recovery before this node serves (its own shadow log, its write-back table), and
    /// the shadow log's replay cursor of the partner's log for the mailbox (None: no shadow
    /// log).
    pub fn with_recovery(
        mut self,
        recover: RecoverHook,
        replayed: Option<ReplayedHook>,
    ) -> JournalHooks {
        self.recover = Some(recover);
        self.replayed = replayed;
        self
    }

    fn note(&self, event: &str, what: u32) -> Result<(), String> {
        let us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let line = format!("{us} {} {event} {what}\n", self.node);
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.journal)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("append to {}: {e}", self.journal.display()))
    }

    fn run(&self, cmd: &Option<String>, partner: u32) -> Result<(), String> {
        let Some(cmd) = cmd else { return Ok(()) };
        let status = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("INTERLINK_NODE", self.node.to_string())
            .env("INTERLINK_PARTNER", partner.to_string())
            .status()
            .map_err(|e| format!("run {cmd:?}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} exited with {status}"))
        }
    }
}

impl ServiceHooks for JournalHooks {
    fn start_serving(&mut self, set: DiskSet) -> Result<(), String> {
        self.note("start-serving", set)
    }
    fn stop_serving(&mut self, set: DiskSet) -> Result<(), String> {
        self.note("stop-serving", set)
    }
    fn assume_identity(&mut self, partner: u32) -> Result<(), String> {
        let r = self.run(&self.on_assume, partner);
        self.note("assume-identity", partner)?;
        r
    }
    fn release_identity(&mut self, partner: u32) -> Result<(), String> {
        let r = self.run(&self.on_release, partner);
        self.note("release-identity", partner)?;
        r
    }
    fn replay_partner_log(&mut self, context: &PartnerLogContext) -> Result<(), String> {
        let r = match self.replay.as_mut() {
            Some(replay) => replay(context),
            None => Ok(()),
        };
        self.note("replay-log", context.partner)?;
        r
    }
    fn recover_own_log(&mut self, context: &OwnLogContext) -> Result<(), String> {
        match self.recover.as_mut() {
            Some(recover) => recover(context),
            None => Ok(()),
        }
    }
    fn replayed_partner_log(&mut self) -> Option<ReplayedMark> {
        self.replayed.as_mut().and_then(|f| f())
    }
}

/// The journal file of `node` in `dir`.
pub fn journal_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("service-{node}.journal"))
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Unix time, microseconds.
    pub at_us: u128,
    /// The node that wrote it.
    pub node: u32,
    /// The event (`start-serving`, ...).
    pub event: String,
    /// The disk set or partner it concerns.
    pub what: u32,
}

/// Reads a journal; malformed lines (a line torn by a crash) are skipped.
pub fn read_journal(path: &Path) -> std::io::Result<Vec<JournalEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let at_us = it.next()?.parse().ok()?;
            let node = it.next()?.parse().ok()?;
            let event = it.next()?.to_string();
            let what = it.next()?.parse().ok()?;
            Some(JournalEntry {
                at_us,
                node,
                event,
                what,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_hooks_in_order_and_commands_run() {
        let dir = std::env::temp_dir().join(format!("interlink-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("identity");
        let mut h = JournalHooks::new(&dir, 2).with_identity_commands(
            Some(format!("echo $INTERLINK_PARTNER > {}", marker.display())),
            Some("exit 3".into()),
        );
        h.start_serving(2).unwrap();
        h.assume_identity(1).unwrap();
        assert!(h.release_identity(1).unwrap_err().contains("exit"));
        h.replay_partner_log(&PartnerLogContext {
            partner_log_applied_here: false,
            partner: 1,
            partner_log_generation: 0,
            forced_loss: None,
            partner_writeback_epoch: 0,
        })
        .unwrap();
        let j = read_journal(&journal_path(&dir, 2)).unwrap();
        let events: Vec<_> = j.iter().map(|e| (e.event.as_str(), e.what)).collect();
        assert_eq!(
            events,
            [
                ("start-serving", 2),
                ("assume-identity", 1),
                ("release-identity", 1),
                ("replay-log", 1)
            ]
        );
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
