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
//! Product faults the swarm found, fixed, and violations again: the writer applied records a
//! takeover had applied before publishing its cursor (the writer now waits while the
//! partner's record says TAKEN_OVER without a cursor of its generation,
//! `PartnerReplayUnknown`); a
//! takeover re-applied what the writer's own recovery applied (the own recovery voids the
//! copy's confirmation durably first, and the survivor refuses an unconfirmed copy); a
//! takeover went past an outdated mark written after the survivor's last read (checked
//! again on the read after the reservation, for manual takeovers too); a start whose own
//! mailbox record could not be read dropped its marks (it no longer starts; marks are
//! durable only once both mailbox copies hold them).
//!
//! A survivor that died inside its takeover replay, restarted and published its cursor made
//! the writer read that cursor as a replay of the log and drop the records after it (lost);
//! the cursor now says whether the replay went through the whole copy (`complete`), and the
//! writer applies the records after an incomplete one itself.
//!
//! An operator forcing a takeover past the gap the writer's own recovery left applied
//! records twice (counted as a product gap until it was fixed): the writer applied records
//! of its log itself with no connection (its checkpoints never reached the copy; it voided
//! the copy's confirmation first, so no automatic takeover starts from it) and died before
//! its mailbox record named its next generation; the forced replay of that same generation
//! applied them again. The writer's record now says, durably before the first such record,
//! that it applies records of its recorded generation itself (`OwnLogStamp::applied_here`),
//! and the survivor replays nothing of that generation (`applied_here_copies_skipped`; its
//! records the writer did not apply are a forced loss). A copy of a generation older than
//! the one the writer's record names is skipped likewise
//! (`PartnerLogContext::partner_log_generation`, `stale_copies_skipped`).

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
    /// Acknowledged and not applied when a takeover an operator forced went past it.
    forced_lost: bool,
    /// Acknowledged and not applied when the writer refused for want of a valid copy (the
    /// operator accepted the loss): accounted once, at that close.
    unavailable: bool,
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
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    records: BTreeMap<LogPosition, Appended>,
    /// Highest service checkpoint per generation.
    checkpoints: BTreeMap<u64, u64>,
    /// The first position a forced takeover lost (for messages).
    forced_from: Option<LogPosition>,
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
                forced_lost: false,
                unavailable: false,
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

    /// A forced takeover from an outdated copy marked at `from`: the records acknowledged
    /// from there on and not applied yet are lost to it (unless it finds them after all).
    pub fn forced(&mut self, from: LogPosition) {
        self.forced_unless(|pos| pos < from);
    }

    /// A forced takeover from a copy that holds what `in_copy` says: every record
    /// acknowledged and not applied yet that is not in it is lost to it. Records acknowledged
    /// later are not: a writer acknowledges nothing after its partner took it over.
    pub fn forced_unless(&mut self, in_copy: impl Fn(LogPosition) -> bool) {
        for (pos, r) in self.records.iter_mut() {
            if r.acked && r.applied.is_empty() && !in_copy(*pos) {
                r.forced_lost = true;
                self.forced_from = Some(self.forced_from.map_or(*pos, |f| f.min(*pos)));
            }
        }
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
        let checkpoints = &self.checkpoints;
        let covered = |pos: &LogPosition| {
            checkpoints
                .get(&pos.generation)
                .is_some_and(|&t| pos.seq <= t)
        };
        for (pos, r) in self.records.range_mut(from..=to) {
            if !r.acked || !r.applied.is_empty() || covered(pos) || r.unavailable {
                continue;
            }
            if r.forced_lost {
                self.counts.records_forced_lost += 1;
            } else if unavailable {
                // The generation may close again: a later start whose mailbox record still
                // names it (the refusal's new generation never reached the record) finds
                // nothing owed of it; the loss was accepted here.
                r.unavailable = true;
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
