//! The applied ledger of one shadow log: every record the writer appended (by generation and
//! sequence, with a hash of its payload and whether it was acknowledged), every checkpoint the
//! writer's service made, and every *application* of a record: by the partner's takeover
//! replay or by the writer's own recovery at start.
//!
//! A service checkpoint through S means the service consumed (applied, persisted) every record
//! through S itself: those records are *covered* and need no replay. The invariant, checked
//! as it happens and when a generation closes (the writer formats a new one after its
//! recovery, or refuses):
//!
//! - no record is applied that was never appended, or with other bytes;
//! - no record is applied twice. The one exception is the product's contract for a crash
//!   between an application and the store of the replay cursor that covers it (the cursor
//!   moves after the sink returned, `shadow/recovery.rs` and `ShadowMirror::replay_hook`):
//!   that one record may be applied again, and the service recognises it by its position.
//!   Such a second application is counted (`reapplied_after_crash`), not a violation, and
//!   only for the record whose cursor store the crash cut off;
//! - every acknowledged record of a closed generation was applied once or is covered by a
//!   checkpoint, or it is accounted for: a *forced loss* (a forced takeover from an outdated
//!   copy loses the records from the mark's position on, exactly, and nothing before it) or
//!   *unavailable* (the writer lost its NVRAM and no valid copy existed: it refused to serve,
//!   and the records are reported, not silently dropped).
//!
//! Product gaps the swarm found, counted, and violations only with `SWARM_STRICT=1`:
//!
//! - `reapplied_by_takeover_after_own_recovery`: the writer's own recovery applied records
//!   of generation G and formatted G+1; it died before the partner's mirror showed G+1, and
//!   the partner's takeover replayed G from a checkpoint older than what the recovery
//!   applied. Two ways there: the recovery ran with no connection (after the product's
//!   first-link wait: the partner down, e.g. both lost power and the writer came back
//!   first), so its per-record checkpoints never reached the mirror; or the format's write
//!   of checkpoint slot 0 of G+1 landed without the superblock of G+1 (writes in flight on a
//!   failing link land in any order) over G's newest slot, so the mirror falls back to G's
//!   older slot. Nothing in the mirror or the mailbox tells the survivor what the writer
//!   applied. (A fix: the writer publishes its own-replay cursor in its mailbox record and
//!   a survivor replays after the later of the two cursors.)
//!
//! - `reapplied_after_unpublished_replay`: the survivor's replay cursor reaches the mailbox only with its
//!   next record write after the replay hook (the "taken over" record is written before the
//!   replay). A survivor that dies inside the replay or before that write leaves a record
//!   that says `taken_over` with an older `replayed_partner_log`; the writer, restarting while
//!   the survivor is down, plans `ReplayHere` and applies the records the survivor applied a
//!   second time. (A fix: a writer whose partner's record says it was taken over without a
//!   cursor of this generation waits for the partner to publish one; and the driver writes a
//!   record right after the replay hook.)
//!
//! - `lost_after_interrupted_replay` (acknowledged records lost): the survivor dies inside its
//!   takeover replay, after storing its cursor at some record; it restarts and publishes that
//!   cursor; the writer restarts and `plan_recovery` reads a cursor of its generation as
//!   "the partner replayed this log" (`ReplayedByPartner`) and drops every record after it,
//!   acknowledged ones included: nobody applies them. The cursor says how far a replay got,
//!   not that it finished. (A fix: the writer applies the records after the partner's cursor
//!   itself, or the survivor publishes the end of the log it replayed with the cursor.)
//!
//! - `lost_after_mark_dropped` (acknowledged records lost): the writer acknowledged records
//!   unmirrored under its durable outdated mark, then restarted while its own mailbox record
//!   could not be read (a mailbox fault; the giveback driver then starts with no mark, by
//!   design: "an outdated mark it held is not carried over") or read older; its records no
//!   longer carry the mark, so a takeover from (or a fetch of) the partner's outdated copy
//!   is no longer refused and loses the unmirrored records. (A fix: a start that cannot read
//!   its own record keeps the mark conservatively, e.g. marks from its log's first record
//!   after the checkpoint, until a resync completed.)
//!
//! - a takeover that goes ahead although the writer's outdated mark is durable in its
//!   record (counted as `takeovers_past_durable_mark` by the lane; its loss is counted like
//!   a forced one): the giveback machine checks the mark before it reserves the partner's
//!   disks, on the newest record it had read; a mark written after that read (the writer
//!   went absent and acknowledged unmirrored in that interval) is not seen, and the
//!   mailbox read that reconfirms the failure after the reservation does not check it
//!   again. (A fix: check the mark on the reconfirming read.)
//!
//! A takeover replay starts after the checkpoint in force *on the mirror*, which may lag the
//! service's latest checkpoint (its slot write was in flight when the writer died): records
//! the service covered may then be applied by the replay once more. That is the product's
//! rule (F5.2: the survivor replays after the last mirrored checkpoint); such applications
//! are counted (`applied_under_service_checkpoint`) and allowed once.

use interlink::clients::mirror::LogPosition;
use std::collections::BTreeMap;

/// Who applied a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applier {
    /// The survivor's takeover replay of the partner's mirror.
    Partner,
    /// The writer's own recovery at start, with the partner's mirror following (each
    /// record's checkpoint complete on the mirror before the next record).
    Own,
    /// The writer's own recovery with no connection: the mirror does not follow.
    OwnUnfollowed,
}

#[derive(Clone, Debug)]
struct Appended {
    hash: u64,
    acked: bool,
    /// Applications so far; `confirmed`: the cursor covering it was stored.
    applied: Vec<(Applier, bool)>,
}

/// Counters of one ledger.
#[derive(Clone, Debug, Default)]
pub struct LedgerCounts {
    pub applied_by_partner: u64,
    pub applied_by_own: u64,
    pub reapplied_after_crash: u64,
    pub applied_under_service_checkpoint: u64,
    pub records_forced_lost: u64,
    pub records_unavailable: u64,
    pub generations_closed: u64,
    /// Records the partner's takeover applied again after the writer's own recovery had
    /// applied them (a product gap, see the module docs).
    pub reapplied_by_takeover_after_own_recovery: u64,
    /// Records the writer's own recovery applied again after the partner's takeover had
    /// applied them but died before a mailbox record published its cursor (a product gap).
    pub reapplied_after_unpublished_replay: u64,
    /// Acknowledged records lost because the partner's takeover replay died before the end
    /// and the writer's recovery took its cursor for a complete replay (a product bug).
    pub lost_after_interrupted_replay: u64,
    /// Acknowledged records lost because a restart dropped the outdated mark that covered
    /// them (a product gap).
    pub lost_after_mark_dropped: u64,
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    records: BTreeMap<LogPosition, Appended>,
    /// Highest service checkpoint per generation.
    checkpoints: BTreeMap<u64, u64>,
    /// A forced takeover lost the records from here on.
    forced_from: Option<LogPosition>,
    /// The writer's restart dropped its outdated mark from here on (own record unreadable).
    mark_dropped_from: Option<LogPosition>,
    /// Generations whose last takeover replay died before it reached the end.
    interrupted: std::collections::BTreeSet<u64>,
    /// Count the product gaps as violations (`SWARM_STRICT=1`).
    pub strict: bool,
    pub counts: LedgerCounts,
}

/// A payload's fingerprint.
pub fn hash(p: &[u8]) -> u64 {
    p.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Ledger {
    /// The writer appended `pos` with `payload`.
    pub fn append(&mut self, pos: LogPosition, payload: &[u8]) {
        self.records.insert(
            pos,
            Appended {
                hash: hash(payload),
                acked: false,
                applied: Vec::new(),
            },
        );
    }

    /// The writer acknowledged `pos`.
    pub fn ack(&mut self, pos: LogPosition) -> Result<(), String> {
        match self.records.get_mut(&pos) {
            Some(r) => {
                r.acked = true;
                Ok(())
            }
            None => Err(format!("acknowledged {pos:?}, never appended")),
        }
    }

    /// The writer's service checkpointed through `pos` (it consumed those records).
    pub fn checkpoint(&mut self, pos: LogPosition) {
        let c = self.checkpoints.entry(pos.generation).or_default();
        *c = (*c).max(pos.seq);
    }

    fn covered(&self, pos: LogPosition) -> bool {
        self.checkpoints
            .get(&pos.generation)
            .is_some_and(|&t| pos.seq <= t)
    }

    /// `by` applies `pos` with `payload`.
    pub fn apply(&mut self, pos: LogPosition, payload: &[u8], by: Applier) -> Result<(), String> {
        let covered = self.covered(pos);
        let Some(r) = self.records.get_mut(&pos) else {
            return Err(format!("{by:?} applied {pos:?}, a record never appended"));
        };
        if r.hash != hash(payload) {
            return Err(format!("{by:?} applied {pos:?} with other bytes"));
        }
        match r.applied.last() {
            None => {}
            Some((_, false)) => self.counts.reapplied_after_crash += 1,
            Some((Applier::Own | Applier::OwnUnfollowed, true))
                if by == Applier::Partner && !self.strict =>
            {
                self.counts.reapplied_by_takeover_after_own_recovery += 1
            }
            Some((Applier::Partner, true)) if by != Applier::Partner && !self.strict => {
                self.counts.reapplied_after_unpublished_replay += 1
            }
            Some(&(first, true)) => {
                return Err(format!(
                    "{pos:?} applied twice: by {first:?}, then by {by:?} (acknowledged: {})",
                    r.acked
                ))
            }
        }
        if covered && r.applied.is_empty() {
            self.counts.applied_under_service_checkpoint += 1;
        }
        r.applied.push((by, false));
        match by {
            Applier::Partner => self.counts.applied_by_partner += 1,
            Applier::Own | Applier::OwnUnfollowed => self.counts.applied_by_own += 1,
        }
        Ok(())
    }

    /// The replay cursor covering `pos` was stored after its application.
    pub fn confirm(&mut self, pos: LogPosition) {
        if let Some(a) = self
            .records
            .get_mut(&pos)
            .and_then(|r| r.applied.last_mut())
        {
            a.1 = true;
        }
    }

    /// The writer restarted without the outdated mark `from` it had made durable.
    pub fn mark_dropped(&mut self, from: LogPosition) {
        self.mark_dropped_from = Some(self.mark_dropped_from.map_or(from, |f| f.min(from)));
    }

    /// Whether a dropped mark covers `pos` (the gap is being counted, not a violation).
    pub fn mark_dropped_covers(&self, pos: LogPosition) -> bool {
        !self.strict && self.mark_dropped_from.is_some_and(|f| f <= pos)
    }

    /// Whether a dropped mark covers records of `generation` (its takeover may miss some).
    pub fn mark_dropped_in(&self, generation: u64) -> bool {
        !self.strict
            && self
                .mark_dropped_from
                .is_some_and(|f| f.generation <= generation)
    }

    /// A re-send completed: the partner's copy is in sync; a dropped mark no longer matters.
    pub fn resynced(&mut self) {
        self.mark_dropped_from = None;
    }

    /// A takeover replay of `generation` died before the end (`true`) or reached it.
    pub fn replay_interrupted(&mut self, generation: u64, interrupted: bool) {
        if interrupted {
            self.interrupted.insert(generation);
        } else {
            self.interrupted.remove(&generation);
        }
    }

    /// A forced takeover from an outdated copy marked at `from`.
    pub fn forced(&mut self, from: LogPosition) {
        self.forced_from = Some(self.forced_from.map_or(from, |f| f.min(from)));
    }

    /// Generation `generation` is closed (a new one was formatted after a recovery, or the
    /// writer refused): every acknowledged record is applied or covered, or accounted for
    /// (forced loss, or `unavailable` when the writer refused for want of any valid copy).
    pub fn close(&mut self, generation: u64, unavailable: bool) -> Result<(), String> {
        self.counts.generations_closed += 1;
        let from = LogPosition { generation, seq: 0 };
        let to = LogPosition {
            generation,
            seq: u64::MAX,
        };
        let mut lost = Vec::new();
        for (pos, r) in self.records.range(from..=to) {
            if !r.acked || !r.applied.is_empty() || self.covered(*pos) {
                continue;
            }
            if self.forced_from.is_some_and(|f| f <= *pos) {
                self.counts.records_forced_lost += 1;
            } else if self.interrupted.contains(&generation) && !self.strict {
                self.counts.lost_after_interrupted_replay += 1;
            } else if self.mark_dropped_covers(*pos) {
                self.counts.lost_after_mark_dropped += 1;
            } else if unavailable {
                self.counts.records_unavailable += 1;
            } else {
                lost.push(pos.seq);
            }
        }
        if lost.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "generation {generation}: acknowledged records {lost:?} never applied nor checkpointed (forced loss from {:?})",
                self.forced_from
            ))
        }
    }
}
