//! What happens to a log when a node fails: the survivor's takeover replay and the writer's
//! recovery at start (F5.2, F5.6), as the product carries them out (`ShadowMirror::replay_hook`
//! and `shadow/recovery.rs`), with a death possible between any two of their steps.
//!
//! - **Takeover replay** (the partner's `ReplayPartnerLog` hook): `replay(region, after =
//!   stored cursor)`; each record is applied (ledger), then the cursor is stored after it; at
//!   the end an empty replay stores the checkpoint it started from. The cursor is what the
//!   partner's mailbox records publish as `replayed_partner_log` (stamped by the simulated
//!   driver, asked at its start and after each replay, as the real one does).
//! - **Own recovery** (right before the node serves its own set; given the partner's
//!   record's `replayed_partner_log`): the library's `plan_recovery(image, own cursor,
//!   partner's cursor)`. `ReplayHere` re-opens the log, applies each record, stores the own
//!   cursor after it and a checkpoint through it (with the path up the mirror follows at
//!   once); then `next_generation` and a format of the new generation. `ReplayedByPartner`
//!   formats a new generation at once. Either closes the old generation in the ledger.
//! - **Start** with what the writer's mailbox record says of its log (own log generation,
//!   outdated mark, copy confirmation): the library's `plan_start`, and on a lost NVRAM
//!   (blank or corrupt image) `plan_fetched` on the partner's copy (its region, read from
//!   its running incarnation; the recovery waits while the partner is down). No valid copy
//!   anywhere: the node refuses to serve; an operator
//!   accepts the loss and it formats a first generation; the ledger counts every
//!   acknowledged record nobody applied as *unavailable* (never silently dropped).
//!
//! Deaths: after an application and before its cursor store (the one record the product may
//! hand again), after the cursor store, and inside the format of the new generation (a
//! torn superblock or slot).
//!
//! A recovery that cannot run (the partner's record unreadable, or its copy out of reach) is
//! retried at every step while the node serves its own set; the log appends nothing until
//! then (the product's shadow log refuses appends until it is recovered).

use super::ledger::Applier;
use super::log::{LogLane, LOG_LEN};
use super::nvram::CrashNvram;
use crate::giveback_sim::{LogService, A};
use crate::mirror_log_sim::{check_image, Oracle};
use interlink::clients::giveback::{CopyGap, CopyStamp, LogMark, OwnLogStamp, ReplayedMark};
use interlink::clients::mirror::{
    next_generation, plan_fetched, plan_start, replay, LogPosition, NvramBacking, OwnLogKnowledge,
    RecoveryPlan, ReplayCursor, ReplayedRecord, ShadowLog,
};
use rand::Rng;
use std::cell::RefCell;
use std::rc::Rc;

fn mark_pos(m: LogMark) -> LogPosition {
    LogPosition {
        generation: m.generation,
        seq: m.seq,
    }
}

/// The death point of one hook call: after this many steps (None: none).
fn death_point(lane: &mut LogLane, steps: usize) -> Option<usize> {
    let p = lane.faults.hook_crash;
    (p > 0.0 && lane.rng.gen_bool(p)).then(|| lane.rng.gen_range(0..=steps))
}

impl LogLane {
    /// The partner takes this writer over and replays its region after its stored cursor.
    /// `forced`: what the machine says the takeover an operator forced went past (an
    /// outdated copy marked at a position, or a copy not confirmed complete on the partner's
    /// incarnation: whatever is not in it). Returns whether the partner died inside.
    pub fn takeover_replay(
        &mut self,
        forced: Option<CopyGap>,
        partner_log_generation: u64,
        applied_here: bool,
    ) -> bool {
        let forced_loss = match forced {
            Some(CopyGap::Outdated { from }) => Some(from),
            _ => None,
        };
        let unconfirmed = matches!(forced, Some(CopyGap::Unconfirmed { .. }));
        self.counts.replays_checked += 1;
        let what = format!("takeover replay of node {}'s log", self.writer);
        let r = check_image(
            &self.mirror,
            &self.oracle(),
            self.generation,
            &self.payloads,
            &what,
        )
        .map(|_| ());
        // The writer's outdated mark was durable in its record, yet the takeover was not
        // refused (the machine checks the record it reads right after the reservation too).
        let past_mark = self
            .sync
            .mark
            .get()
            .filter(|_| self.sync.mark.is_durable() && forced.is_none());
        if let Some(m) = past_mark {
            self.violate(Err(format!(
                "takeover of node {}'s log past its durable outdated mark {m}",
                self.writer
            )));
        }
        if forced.is_none() {
            self.violate(r);
        }
        if let Some(m) = forced_loss {
            self.ledger.forced(mark_pos(m));
        }
        let mut after = self.partner_cursor.map(|c| c.position);
        if self.bugs.cursor_off_by_one {
            after = after.map(|c| LogPosition {
                seq: c.seq.saturating_sub(1),
                ..c
            });
        }
        let Ok(mut r) = replay(&self.mirror, after) else {
            // No region ever came, or no log in it: nothing to replay, no cursor.
            if unconfirmed {
                self.ledger.forced_unless(|_| false);
            }
            return false;
        };
        if unconfirmed {
            let gen = r.generation;
            let in_copy: std::collections::BTreeSet<u64> =
                r.records.iter().map(|rec| rec.seq).collect();
            let done = after;
            self.ledger.forced_unless(|pos| {
                done.is_some_and(|c| pos <= c)
                    || (pos.generation == gen && in_copy.contains(&pos.seq))
            });
        }
        if r.generation != 0 && r.generation < partner_log_generation {
            // As the product: a copy of a generation the writer recovered itself is not
            // replayed; the cursor says the newer one was taken over with nothing of it
            // replayed, and the forced takeover lost all of that generation's records.
            self.counts.stale_copies_skipped += 1;
            self.ledger.forced(LogPosition {
                generation: partner_log_generation,
                seq: 0,
            });
            let at = ReplayCursor {
                position: LogPosition {
                    generation: partner_log_generation,
                    seq: 0,
                },
                complete: true,
            };
            if self.partner_cursor.is_none_or(|c| c < at) {
                self.partner_cursor = Some(at);
            }
            return false;
        }
        if applied_here && r.generation != 0 && r.generation == partner_log_generation {
            // As the product: the writer's record says its own recovery applied records of
            // this generation itself with the copy not following: nothing of it is replayed;
            // the cursor says it was taken over at the copy's checkpoint, and whatever the
            // writer did not apply is the forced takeover's loss.
            self.counts.applied_here_copies_skipped += 1;
            self.ledger.forced(LogPosition {
                generation: r.generation,
                seq: 0,
            });
            let at = ReplayCursor {
                position: LogPosition {
                    generation: r.generation,
                    seq: r.checkpoint,
                },
                complete: true,
            };
            if self.partner_cursor.is_none_or(|c| c < at) {
                self.partner_cursor = Some(at);
            }
            return false;
        }
        if let Some(skip) = self.bugs.replay_skips {
            r.records.retain(|rec| rec.seq != skip);
        }
        if after.is_some_and(|c| c.generation == r.generation) {
            self.counts.replays_after_cursor += 1;
        }
        let dies = match self.faults.replay_dies_after.take() {
            Some(n) => Some(2 * n.saturating_sub(1) + 1),
            None => death_point(self, 2 * r.records.len()),
        };
        for (k, rec) in r.records.iter().enumerate() {
            let pos = LogPosition {
                generation: r.generation,
                seq: rec.seq,
            };
            let a = self.ledger.apply(pos, &rec.payload, Applier::Partner);
            self.violate(a);
            if dies == Some(2 * k) {
                self.counts.hook_crashes += 1;
                return true;
            }
            self.partner_cursor = Some(ReplayCursor {
                position: pos,
                complete: false,
            });
            self.ledger.confirm(pos);
            if dies == Some(2 * k + 1) {
                self.counts.hook_crashes += 1;
                return true;
            }
        }
        // The end of the replay stores the cursor once more, complete (at the checkpoint
        // when no record followed it: the product's `commit_replay`).
        let last = r.records.last().map(|rec| rec.seq);
        if r.generation != 0 {
            let at = ReplayCursor {
                position: LogPosition {
                    generation: r.generation,
                    seq: last.unwrap_or(r.checkpoint),
                },
                complete: true,
            };
            if self.partner_cursor.is_none_or(|c| c < at) {
                self.partner_cursor = Some(at);
            }
        }
        false
    }

    /// The replay cursor the partner publishes.
    pub fn published_cursor(&self) -> Option<ReplayedMark> {
        self.partner_cursor.map(Into::into)
    }

    /// The writer recovers its log before serving its own set. `partner_replayed`: the
    /// partner's record's cursor (None: the record could not be read; the recovery waits).
    /// `partner_incarnation`: the partner's running incarnation (its copy can be fetched). `partner_took_over`: the partner's
    /// record says it took this node over (a replay beyond its published cursor is possible:
    /// the product waits for the cursor, `ShadowError::PartnerReplayUnknown`). Returns
    /// whether the writer died inside.
    pub fn recover(
        &mut self,
        partner_replayed: Option<Option<ReplayedMark>>,
        partner_incarnation: Option<u64>,
        partner_took_over: bool,
    ) -> bool {
        let partner_up = partner_incarnation.is_some();
        if !self.needs_recovery || self.log.is_some() {
            return false;
        }
        let Some(partner_replayed) = partner_replayed else {
            self.counts.recoveries_deferred += 1;
            return false;
        };
        let partner = partner_replayed.map(ReplayCursor::from);
        let image = self.local.take().unwrap_or_else(|| vec![0; LOG_LEN]);
        // The product's decision (`plan_start`, then `plan_fetched` on the partner's copy),
        // with what this writer's mailbox record says of its log.
        let known = OwnLogKnowledge::Recorded {
            generation: self.own_log.recorded(),
            copy_outdated: self.sync.mark.get().map(mark_pos),
            copy_complete_for: self.sync.mark.stamp().complete_for,
        };
        let (plan, from_copy) = match plan_start(&image, self.own_cursor, partner, known) {
            Ok(RecoveryPlan::FetchFromPartner { local, .. }) => {
                // The own NVRAM cannot stand for the log: the partner's copy, read from its
                // running incarnation, if the mailbox says it stands for it.
                let Some(fetched_from) = partner_incarnation else {
                    self.counts.recoveries_deferred += 1;
                    self.local = Some(image);
                    return false;
                };
                match plan_fetched(
                    &self.mirror,
                    fetched_from,
                    self.own_cursor,
                    partner,
                    known,
                    &local,
                ) {
                    Ok(p) => (p, true),
                    Err(e) => {
                        self.trail = format!("refused: {e}");
                        self.refuse();
                        return false;
                    }
                }
            }
            Ok(p) => (p, false),
            Err(_) => {
                // A corrupt image the mailbox says held nothing acknowledged: the product
                // withholds the disks for an operator, who starts a first generation.
                self.refuse();
                return false;
            }
        };
        let source = if from_copy {
            self.mirror.clone()
        } else {
            image.clone()
        };
        match plan {
            RecoveryPlan::FetchFromPartner { .. } => {
                unreachable!("plan_fetched decides on the copy, it never asks for another")
            }
            RecoveryPlan::Fresh => {
                self.counts.recoveries_fresh += 1;
                self.format_next(source, None, partner.map(|p| p.position), usize::MAX)
            }
            RecoveryPlan::ReplayedByPartner { generation, .. } => {
                self.counts.recoveries_replayed_by_partner += 1;
                if from_copy {
                    self.counts.recoveries_from_partner_copy += 1;
                }
                let r = self.ledger.close(generation, false).map_err(|e| {
                    format!("{e}: the partner's record says it replayed through {partner:?} (own cursor {:?}, from its copy: {from_copy})", self.own_cursor)
                });
                self.violate(r);
                let dies = death_point(self, 0).map(|_| 0);
                // As the product: above what a corrupt image's superblock still names.
                let previous = Some(generation).max(superblock_generation(&source));
                self.format_next(
                    source,
                    previous,
                    partner.map(|p| p.position),
                    dies.unwrap_or(usize::MAX),
                )
            }
            RecoveryPlan::ReplayHere {
                generation,
                records,
                checkpoint,
                resumed_after,
            } => {
                self.trail = format!(
                    "plan: replay here from checkpoint {checkpoint}, resumed after {resumed_after:?}, {} records, from the copy: {from_copy}; outdated mark {:?}, {} acknowledged unmirrored so far",
                    records.len(),
                    self.sync.mark.get(),
                    self.counts.acked_unmirrored,
                );
                if !records.is_empty() && partner_took_over {
                    // The partner's replay may have gone beyond its published cursor.
                    self.counts.recoveries_deferred += 1;
                    self.local = Some(image);
                    return false;
                }
                if !records.is_empty() {
                    // F5.7: the copy stops being a takeover source before anything is applied
                    // here (the product waits for a mailbox write that carries it).
                    self.sync.mark.unconfirm();
                    if !self.sync.mark.is_unconfirmed_durably() {
                        self.counts.recoveries_deferred += 1;
                        self.local = Some(image);
                        return false;
                    }
                }
                if !records.is_empty() && partner_up && !self.path_up {
                    // The product waits for a first connection (the partner is up).
                    self.counts.recoveries_deferred += 1;
                    self.local = Some(image);
                    return false;
                }
                if !records.is_empty() && !self.path_up {
                    // The product's mailbox record says it applies records here with the
                    // copy not following before the first one (a mailbox write carries it).
                    self.own_log.applying_here();
                    if !self.own_log.is_durable() {
                        self.counts.recoveries_deferred += 1;
                        self.local = Some(image);
                        return false;
                    }
                }
                self.counts.recoveries_replay_here += 1;
                if from_copy {
                    self.counts.recoveries_from_partner_copy += 1;
                }
                if let Some(seq) = resumed_after.filter(|&seq| {
                    self.own_cursor
                        .is_none_or(|c| c.generation != generation || c.seq < seq)
                }) {
                    // As the product: the own cursor covers what a stopped takeover replay
                    // applied before anything is applied here.
                    self.counts.recoveries_after_stopped_replay += 1;
                    self.own_cursor = Some(LogPosition { generation, seq });
                }
                self.replay_here(source, generation, records, partner.map(|p| p.position))
            }
        }
    }

    /// Records on the blank image, a refusal: every acknowledged record nobody applied is
    /// unavailable; the operator accepts and the node starts a first generation.
    fn refuse(&mut self) {
        self.counts.nvram_refusals += 1;
        let r = self.ledger.close(self.generation, true);
        self.violate(r);
        self.format_next(vec![0; LOG_LEN], None, None, usize::MAX);
    }

    fn replay_here(
        &mut self,
        source: Vec<u8>,
        generation: u64,
        mut records: Vec<ReplayedRecord>,
        partner: Option<LogPosition>,
    ) -> bool {
        let (mut log, _) = match ShadowLog::open(CrashNvram::new(source)) {
            Ok(x) => x,
            Err(e) => panic!("a log plan_recovery read does not open: {e}"),
        };
        if self.bugs.own_applies_twice && !records.is_empty() {
            let first = records[0].clone();
            records.insert(1, first);
        }
        let n = records.len();
        let dies = death_point(self, 2 * n + 1);
        for (k, rec) in records.into_iter().enumerate() {
            let pos = LogPosition {
                generation,
                seq: rec.seq,
            };
            let by = if self.path_up {
                Applier::Own
            } else {
                Applier::OwnUnfollowed
            };
            let a = self.ledger.apply(pos, &rec.payload, by);
            self.violate(a);
            if dies == Some(2 * k) {
                return self.die_in_hook(log.into_local().crash_image());
            }
            self.own_cursor = Some(pos);
            self.ledger.confirm(pos);
            // The record's checkpoint is on the partner's mirror before the next one (with
            // the path up).
            let _ = log.checkpoint(pos);
            let o = &mut self.crash_oracle;
            o.requested_checkpoint = o.requested_checkpoint.max(pos.seq);
            if self.path_up {
                o.mirrored_checkpoint = o.mirrored_checkpoint.max(pos.seq);
            }
            self.land_all(&mut log);
            if dies == Some(2 * k + 1) {
                return self.die_in_hook(log.into_local().crash_image());
            }
        }
        self.land_all(&mut log);
        let r = self.ledger.close(generation, false).map_err(|e| {
            format!(
                "{e}: replayed here after the partner's {partner:?} ({})",
                self.trail
            )
        });
        self.violate(r);
        let fuse_at = if dies == Some(2 * n) { 0 } else { usize::MAX };
        self.format_next(
            log.into_local().crash_image(),
            Some(generation),
            partner,
            fuse_at,
        )
    }

    /// With the path up, every queued write of `log` lands and completes now.
    fn land_all(&mut self, log: &mut ShadowLog<CrashNvram>) {
        if !self.path_up {
            return;
        }
        while let Some(w) = log.poll_mirror_write() {
            let r = w.offset..w.offset + w.len;
            self.mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
            log.handle_mirror_complete(w.id);
        }
    }

    fn die_in_hook(&mut self, image: Vec<u8>) -> bool {
        self.counts.hook_crashes += 1;
        self.local = Some(image);
        self.incarnation = None;
        true
    }

    /// Formats the generation after `previous` over `image` and runs it. `fuse_at` 0: the
    /// node dies inside the format (a torn write). Returns whether it died.
    fn format_next(
        &mut self,
        image: Vec<u8>,
        previous: Option<u64>,
        partner: Option<LogPosition>,
        fuse_at: usize,
    ) -> bool {
        let candidate = self.generation + self.rng.gen_range(1..=3);
        let gen = next_generation(candidate, previous.max(Some(self.generation)), partner);
        let nvram = CrashNvram::new(image);
        if fuse_at == 0 {
            nvram.fuse().arm(self.rng.gen_range(0..2), self.rng.gen());
        }
        let fuse = nvram.fuse();
        let log = match ShadowLog::format(nvram, gen) {
            Ok(log) => log,
            Err(e) => panic!(
                "format of generation {gen} (lane at {}, previous {previous:?}, partner {partner:?}): {e}",
                self.generation
            ),
        };
        if fuse.dead() {
            return self.die_in_hook(log.into_local().crash_image());
        }
        self.generation = gen;
        self.payloads.clear();
        self.acked = 0;
        self.floor = 0;
        self.unsent = false;
        self.crash_oracle = Oracle::default();
        self.inflight.clear();
        self.needs_recovery = false;
        self.sync
            .log_replaced(log.last_queued_write(), self.path_up);
        // As the product: the new generation goes into the mailbox record before anything
        // is appended to it.
        self.own_log.record(gen);
        self.log = Some(log);
        false
    }
}

/// Both log lanes, shared by the world and the simulated giveback drivers' hooks.
pub type Lanes = Rc<RefCell<[LogLane; 2]>>;

/// The shadow-log hooks of both simulated nodes (lane `i` is node `i`'s own log; node `i`
/// replays lane `1 - i` at its takeovers and publishes that lane's partner cursor).
pub struct LogHooks {
    pub lanes: Lanes,
}

/// The generation a (possibly corrupt) image's superblock names, as the product reads it
/// before it formats over a lost log.
fn superblock_generation(image: &[u8]) -> Option<u64> {
    interlink::clients::mirror::log_format::decode_superblock(image)
        .ok()
        .map(|sb| sb.generation)
}

fn lane_of(id: u32) -> usize {
    usize::from(id != A)
}

impl LogService for LogHooks {
    fn replay_partner_log(
        &mut self,
        me: u32,
        forced: Option<CopyGap>,
        partner_log_generation: u64,
        applied_here: bool,
    ) -> bool {
        self.lanes.borrow_mut()[1 - lane_of(me)].takeover_replay(
            forced,
            partner_log_generation,
            applied_here,
        )
    }

    fn recover_own_log(
        &mut self,
        me: u32,
        partner_replayed: Option<Option<ReplayedMark>>,
        partner_took_over: bool,
    ) -> bool {
        let i = lane_of(me);
        let mut lanes = self.lanes.borrow_mut();
        let partner = lanes[1 - i].incarnation;
        lanes[i].recover(partner_replayed, partner, partner_took_over)
    }

    fn replayed_partner_log(&mut self, me: u32) -> Option<ReplayedMark> {
        self.lanes.borrow()[1 - lane_of(me)].published_cursor()
    }

    fn copy_mark_stamp(&mut self, me: u32) -> CopyStamp {
        self.lanes.borrow()[lane_of(me)].sync.mark.stamp()
    }

    fn copy_mark_written(&mut self, me: u32, carried: CopyStamp) {
        self.lanes.borrow()[lane_of(me)].sync.mark.written(carried);
    }

    fn own_log_stamp(&mut self, me: u32) -> OwnLogStamp {
        self.lanes.borrow()[lane_of(me)].own_log.stamp_log()
    }

    fn own_log_written(&mut self, me: u32, carried: OwnLogStamp) {
        self.lanes.borrow()[lane_of(me)]
            .own_log
            .written_stamp(carried);
    }

    fn started(
        &mut self,
        me: u32,
        incarnation: u64,
        inherited: Option<CopyStamp>,
        own_log: OwnLogStamp,
    ) {
        self.lanes.borrow_mut()[lane_of(me)].writer_started(incarnation, inherited, own_log);
    }
}
