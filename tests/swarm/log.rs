//! The shadow log of each node (F5.1, F5.2, F5.6, F5.7).
//!
//! The writer's [`ShadowLog`] runs on [`CrashNvram`]; its mirror writes travel over the mirror
//! client's link with the seed's delays and land (and complete) in order, as on a reliable
//! connection. When the path fails, whatever is in flight lands whole, torn or not at all, in
//! any order, and the writer rewinds. The partner's region is persistent memory: it survives
//! the partner's restarts. When the partner is absent (no path for the partner timeout), the
//! writer completes its writes unsent once the outdated mark of the partner's copy is durable
//! in its mailbox record (`swarm/copy_sync.rs`), and re-sends its live log whole on the next
//! connection.
//!
//! A started writer appends nothing until its node serves its own disks: right before, it
//! recovers its log (`swarm/recovery.rs`: the library's `plan_recovery` and
//! `next_generation`, the own-replay cursor, the partner's published replay cursor), and the
//! survivor of a takeover replays the log from its region after its stored replay cursor.
//! Every application goes into the log's applied ledger (`swarm/ledger.rs`).
//!
//! Checks: the ledger's (exactly once, or covered, or accounted for); a takeover replay's
//! image check (`mirror_log_sim`'s: the region replays every acknowledged record after the
//! checkpoint, once and in order); once the pair has converged the region replays exactly
//! what the writer's NVRAM does.

use super::copy_sync::MirrorSyncState;
use super::ledger::Ledger;
use super::nvram::{CrashNvram, Fuse};
use crate::mirror_log_sim::{payload, Oracle};
use interlink::clients::giveback::{CopyStamp, LogMark, OwnLogMark, OwnLogStamp};
use interlink::clients::mirror::{
    replay, LogError, LogPosition, MirrorWrite, NvramBacking, ReplayCursor, ShadowLog,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Size of each log image.
pub const LOG_LEN: usize = 16 * 1024;

/// Counters of one log lane.
#[derive(Default, Debug, Clone)]
pub struct LogCounts {
    pub appended: u64,
    pub acked: u64,
    pub acked_unmirrored: u64,
    pub checkpoints: u64,
    pub path_failures: u64,
    pub torn_landings: u64,
    pub replays_checked: u64,
    /// Takeover replays that started after a stored cursor of the same generation.
    pub replays_after_cursor: u64,
    /// Takeover replays that skipped a copy of a generation the writer recovered itself.
    pub stale_copies_skipped: u64,
    /// Forced takeover replays that skipped a copy of the generation the writer's record
    /// says its own recovery applied records of itself with the copy not following.
    pub applied_here_copies_skipped: u64,
    /// Copies lost with the partner's process.
    pub mirrors_lost: u64,
    /// Steps in which completed records waited for the writer's serving lease.
    pub lease_holds: u64,
    pub recoveries_fresh: u64,
    pub recoveries_replayed_by_partner: u64,
    pub recoveries_replay_here: u64,
    /// Own recoveries that applied the rest of a partner's takeover replay that stopped.
    pub recoveries_after_stopped_replay: u64,
    /// Own recoveries from the partner's copy (the own NVRAM lost).
    pub recoveries_from_partner_copy: u64,
    /// Recoveries deferred: the partner's record unreadable, or its copy out of reach.
    pub recoveries_deferred: u64,
    /// Starts with a blank or corrupt NVRAM image.
    pub nvram_losses: u64,
    /// Writers that refused to serve: no valid copy of their log anywhere.
    pub nvram_refusals: u64,
    /// Deaths inside a replay or recovery hook.
    pub hook_crashes: u64,
    pub resends: u64,
    pub marks_cleared: u64,
    /// Starts that lost a durable outdated mark (own mailbox record unreadable).
    pub marks_dropped_at_start: u64,
}

/// Fault rates of the lane (from the plan).
#[derive(Clone, Copy, Debug, Default)]
pub struct LaneFaults {
    /// A replay or recovery hook dies at a random point inside (per call).
    pub hook_crash: f64,
    /// A start finds the NVRAM image lost (blank or corrupt).
    pub nvram_loss: f64,
    /// Steps without a path before the partner is absent (0: never).
    pub partner_timeout: u32,
    /// A takeover replay dies right after storing its cursor past this many records (a
    /// checker test's deterministic interruption).
    pub replay_dies_after: Option<usize>,
}

/// Bugs a checker test plants (all off in the swarm).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    /// The takeover replays after `cursor.seq - 1` (an off-by-one in the stored cursor).
    pub cursor_off_by_one: bool,
    /// The own recovery applies its first record twice.
    pub own_applies_twice: bool,
    /// The takeover replay skips this record (a lost record).
    pub replay_skips: Option<u64>,
}

/// One writer, its mirror, its recovery state and its ledger.
pub struct LogLane {
    pub writer: usize,
    pub log: Option<ShadowLog<CrashNvram>>,
    /// The writer's NVRAM while its log is not running.
    pub local: Option<Vec<u8>>,
    /// The partner's mirror region.
    pub mirror: Vec<u8>,
    pub(super) inflight: VecDeque<(MirrorWrite, Duration)>,
    /// Payloads of the running (or last) generation.
    pub payloads: BTreeMap<u64, Vec<u8>>,
    pub acked: u64,
    pub(super) floor: u64,
    /// Writes of the running log completed unsent (partner absent) since it was opened or
    /// formatted: its checkpoint says nothing of the mirror until the re-send.
    pub(super) unsent: bool,
    pub(super) crash_oracle: Oracle,
    /// Generation of the running (or last) log (0: none formatted yet).
    pub generation: u64,
    salt: u64,
    pub counts: LogCounts,
    pub ledger: Ledger,
    /// The writer's own-replay cursor (its cursor NVRAM).
    pub own_cursor: Option<LogPosition>,
    /// The partner's replay cursor of this log (the partner's cursor NVRAM).
    pub partner_cursor: Option<ReplayCursor>,
    pub sync: MirrorSyncState,
    /// The own log generation of the writer's mailbox record (the library's type).
    pub own_log: Arc<OwnLogMark>,
    /// The incarnation of the writer's node that owns the lane (None: down).
    pub incarnation: Option<u64>,
    /// The writer started and has not recovered its log yet.
    pub needs_recovery: bool,
    pub(super) path_up: bool,
    /// The writer's serving lease ran at the last step.
    pub(super) may_ack: bool,
    pub faults: LaneFaults,
    pub bugs: PlantedBugs,
    pub(super) rng: SmallRng,
    pub violations: Vec<String>,
    /// What the last recovery decided (for a violation's message).
    pub(super) trail: String,
}

impl LogLane {
    /// Writer `writer`'s lane: blank NVRAM (a first start), not running until its node starts.
    pub fn new(writer: usize, seed: u64) -> LogLane {
        LogLane {
            writer,
            local: Some(vec![0; LOG_LEN]),
            log: None,
            mirror: vec![0; LOG_LEN],
            inflight: VecDeque::new(),
            payloads: BTreeMap::new(),
            acked: 0,
            floor: 0,
            unsent: false,
            crash_oracle: Oracle::default(),
            generation: 0,
            salt: seed ^ (writer as u64 + 1).wrapping_mul(0x5bd1_e995),
            counts: LogCounts::default(),
            ledger: Ledger::default(),
            own_cursor: None,
            partner_cursor: None,
            sync: MirrorSyncState::new(CopyStamp::default()),
            own_log: Arc::new(OwnLogMark::new(0)),
            incarnation: None,
            needs_recovery: false,
            path_up: false,
            may_ack: true,
            faults: LaneFaults::default(),
            bugs: PlantedBugs::default(),
            rng: SmallRng::seed_from_u64(seed ^ 0x6c61_6e65 ^ writer as u64),
            violations: Vec::new(),
            trail: String::new(),
        }
    }

    pub(super) fn violate(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.violations
                .push(format!("log of node {}: {e}", self.writer));
        }
    }

    /// What the writer has promised so far in its running (or last) generation.
    pub fn oracle(&self) -> Oracle {
        match &self.log {
            Some(log) => {
                let s = log.stats();
                Oracle {
                    acked: self.acked,
                    mirrored_checkpoint: if self.unsent {
                        self.floor
                    } else {
                        self.floor.max(log.checkpointed().seq)
                    },
                    requested_checkpoint: s
                        .checkpoint_requested
                        .max(self.crash_oracle.requested_checkpoint),
                    appended: s.appended,
                }
            }
            None => self.crash_oracle,
        }
    }

    /// The fuse of the running writer's NVRAM.
    pub fn fuse(&self) -> Option<Arc<Fuse>> {
        self.log.as_ref().map(|l| l.local().fuse())
    }

    /// The writer died inside its last NVRAM write.
    pub fn died(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.local().fuse().dead())
    }

    /// The path failed (or the client moved, or either node died): in-flight writes land
    /// whole, torn or not at all, in any order; the writer rewinds.
    pub fn fail_path<R: Rng>(&mut self, rng: &mut R) {
        if self.inflight.is_empty() {
            return;
        }
        self.counts.path_failures += 1;
        let mut pending: Vec<MirrorWrite> = self.inflight.drain(..).map(|(w, _)| w).collect();
        pending.shuffle(rng);
        if let Some(log) = &self.log {
            for w in pending {
                let take = match rng.gen_range(0..10) {
                    0..=3 => w.len,
                    4..=5 => {
                        self.counts.torn_landings += 1;
                        rng.gen_range(0..w.len)
                    }
                    _ => 0,
                };
                let r = w.offset..w.offset + take;
                self.mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
            }
        }
        if let Some(log) = &mut self.log {
            log.rewind_unacknowledged();
        }
    }

    /// The partner's process ended: its region holding this writer's copy is gone (the
    /// next incarnation's region is blank until the writer re-sends its log).
    pub fn mirror_lost(&mut self) {
        self.counts.mirrors_lost += 1;
        self.mirror.fill(0);
    }

    /// The writer's process ended (crash, halt, or death inside a hook): its NVRAM is what
    /// the crash leaves.
    pub fn crash_writer<R: Rng>(&mut self, rng: &mut R) {
        self.incarnation = None;
        if self.log.is_none() {
            return;
        }
        self.fail_path(rng);
        self.crash_oracle = self.oracle();
        let log = self.log.take().expect("running");
        self.local = Some(log.into_local().crash_image());
    }

    /// Incarnation `incarnation` of the writer's node ended (seen by the world after the
    /// fact: a later start already replaced it is left alone).
    pub fn crash_incarnation<R: Rng>(&mut self, incarnation: u64, rng: &mut R) {
        if self.incarnation == Some(incarnation) {
            self.crash_writer(rng);
        }
    }

    /// Incarnation `incarnation` of the writer's node started (its giveback driver: the
    /// outdated mark its newest own record carried is inherited). The log waits for the
    /// recovery; a start may find the NVRAM image lost.
    pub fn writer_started(
        &mut self,
        incarnation: u64,
        inherited: Option<CopyStamp>,
        own_log: OwnLogStamp,
    ) {
        if self.incarnation.is_some() {
            let mut rng = SmallRng::seed_from_u64(self.rng.gen());
            self.crash_writer(&mut rng);
        }
        self.incarnation = Some(incarnation);
        if let Some(m) = self.sync.mark.get().filter(|_| self.sync.mark.is_durable()) {
            let kept = inherited.and_then(|s| s.outdated).is_some_and(|i| i <= m);
            let unconfirmed = inherited.is_some_and(|s| s.complete_for == Some(0));
            if !kept && !unconfirmed {
                // The product starts only from its own record, and marks are durable once
                // both copies acknowledged them: a start keeps one, or (a record read from
                // one copy, the other may have dropped the write) confirms the copy on no
                // incarnation.
                self.counts.marks_dropped_at_start += 1;
                self.violations.push(format!(
                    "log of node {}: a start lost the durable outdated mark {m}",
                    self.writer
                ));
            }
        }
        self.sync = MirrorSyncState::new(inherited.unwrap_or_default());
        self.own_log = Arc::new(OwnLogMark::inherit(own_log));
        self.needs_recovery = true;
        let p = self.faults.nvram_loss;
        if self.generation > 0 && p > 0.0 && self.rng.gen_bool(p) {
            self.counts.nvram_losses += 1;
            let image = self.local.get_or_insert_with(|| vec![0; LOG_LEN]);
            if self.rng.gen_bool(0.5) {
                image.fill(0);
            } else {
                // Corruption a start can tell: the superblock (its checksum). A durable
                // checkpoint slot or record changed in place is media corruption the
                // format cannot tell from an older log.
                for _ in 0..self.rng.gen_range(1..8) {
                    let i = self.rng.gen_range(0..64);
                    image[i] ^= self.rng.gen_range(1..=255u8);
                }
            }
        }
    }

    /// One step: appends while the writer serves, checkpoints, posts on the path, and lands
    /// and completes what is due; with the partner absent, completes unsent once the mark is
    /// durable. `partner`: the partner's running incarnation (the mirror region's owner).
    /// `may_ack`: the writer's serving lease runs (the giveback machine's `poll_lease`):
    /// completed records are acknowledged only then, as the shadow log does.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        now: Duration,
        rng: &mut SmallRng,
        serving: bool,
        path_up: bool,
        partner: Option<u64>,
        may_ack: bool,
        delay: impl Fn(&mut SmallRng) -> Duration,
    ) {
        self.may_ack = may_ack;
        if may_ack {
            self.take_acks(false);
        }
        let reconnected = path_up && !self.path_up;
        self.path_up = path_up;
        let generation = self.generation;
        let Some(log) = &mut self.log else { return };
        self.sync.on_step(path_up, self.faults.partner_timeout);
        // Nothing is appended before the mailbox says this node runs a shadow log.
        // Nor to a new generation before the mailbox names it.
        if serving && self.sync.may_append() && self.own_log.is_durable() {
            for _ in 0..rng.gen_range(0..=2) {
                let seq = log.stats().appended + 1;
                let p = payload(seq, rng.gen_range(1..=300), self.salt ^ generation);
                match log.append(&p) {
                    Ok(pos) => {
                        debug_assert_eq!(pos.seq, seq);
                        self.ledger.append(pos, &p);
                        self.payloads.insert(seq, p);
                        self.counts.appended += 1;
                    }
                    Err(LogError::Full { .. }) => {
                        Self::checkpoint(
                            log,
                            self.acked,
                            generation,
                            &mut self.counts,
                            &mut self.ledger,
                        );
                        break;
                    }
                    Err(e) => panic!("append: {e}"),
                }
                if log.local().fuse().dead() {
                    return;
                }
            }
            if rng.gen_bool(0.05) {
                Self::checkpoint(
                    log,
                    self.acked,
                    generation,
                    &mut self.counts,
                    &mut self.ledger,
                );
            }
        }
        // A node that died inside a write posts nothing more.
        if log.local().fuse().dead() {
            return;
        }
        if !path_up {
            if self.sync.absent() && log.stats().writes_queued > 0 {
                self.sync.needs_mark(LogMark {
                    generation,
                    seq: self.acked + 1,
                });
                if self.sync.may_complete_unsent() {
                    while let Some(w) = log.poll_mirror_write() {
                        log.handle_mirror_complete(w.id);
                    }
                    self.collect_acks(true);
                }
            }
            return;
        }
        if reconnected && self.sync.on_reconnect(partner) {
            // The live log, whole, before anything newer.
            let log = self.log.take().expect("running");
            let (log, _) = ShadowLog::open(log.into_local()).expect("a running log reopens");
            self.sync.resending(log.last_queued_write());
            self.unsent = false;
            self.counts.resends += 1;
            self.inflight.clear();
            self.log = Some(log);
        }
        let log = self.log.as_mut().expect("running");
        let mut last = self.inflight.back().map_or(now, |(_, at)| *at);
        while let Some(w) = log.poll_mirror_write() {
            last = last.max(now + delay(rng));
            self.inflight.push_back((w, last));
        }
        while self.inflight.front().is_some_and(|(_, at)| *at <= now) {
            let log = self.log.as_mut().expect("running");
            let (w, _) = self.inflight.pop_front().expect("due");
            let r = w.offset..w.offset + w.len;
            self.mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
            log.handle_mirror_complete(w.id);
            if log.local().fuse().dead() {
                return;
            }
            let done = log.completed_write();
            let marked = self.sync.mark.is_marked();
            self.sync.on_complete(done, partner);
            if marked && !self.sync.mark.is_marked() {
                self.counts.marks_cleared += 1;
            }
            self.collect_acks(false);
        }
    }

    fn collect_acks(&mut self, unmirrored: bool) {
        if self.may_ack {
            self.take_acks(unmirrored);
        } else if self
            .log
            .as_ref()
            .is_some_and(|l| l.acknowledged().is_some_and(|p| p.seq > self.acked))
        {
            self.counts.lease_holds += 1;
        }
        let Some(log) = &mut self.log else { return };
        if unmirrored {
            self.unsent = true;
        } else if !self.unsent {
            self.floor = self.floor.max(log.checkpointed().seq);
        }
    }

    /// Acknowledges what the log completed.
    fn take_acks(&mut self, unmirrored: bool) {
        let Some(log) = &mut self.log else { return };
        while let Some(pos) = log.poll_acknowledged() {
            if pos.seq <= self.acked {
                continue; // a re-opened log acknowledges its records again
            }
            self.acked = pos.seq;
            self.counts.acked += 1;
            if unmirrored {
                self.counts.acked_unmirrored += 1;
            }
            let r = self.ledger.ack(pos);
            if let Err(e) = r {
                self.violations
                    .push(format!("log of node {}: {e}", self.writer));
            }
        }
    }

    fn checkpoint(
        log: &mut ShadowLog<CrashNvram>,
        acked: u64,
        generation: u64,
        counts: &mut LogCounts,
        ledger: &mut Ledger,
    ) {
        if acked > log.stats().checkpoint_requested {
            let through = LogPosition {
                generation,
                seq: acked,
            };
            if log.checkpoint(through).is_ok() {
                counts.checkpoints += 1;
                ledger.checkpoint(through);
            }
        }
    }

    /// Nothing queued or in flight, and the writer running.
    pub fn idle(&self) -> bool {
        self.log.as_ref().is_some_and(|l| {
            let s = l.stats();
            s.writes_queued == 0 && s.writes_in_flight == 0 && self.inflight.is_empty()
        })
    }

    /// Liveness: the region replays exactly what the writer's NVRAM does, and everything
    /// appended was acknowledged.
    pub fn check_agree(&self) -> Result<(), String> {
        let log = self.log.as_ref().ok_or("writer not running")?;
        let w = self.writer;
        if let Some(m) = self.sync.mark.get() {
            return Err(format!(
                "log of node {w}: the partner's copy is still marked outdated from {m} after convergence"
            ));
        }
        let local = replay(log.local().bytes(), None)
            .map_err(|e| format!("log of node {w}: local replay: {e}"))?;
        let mirror = replay(&self.mirror, None)
            .map_err(|e| format!("log of node {w}: mirror replay: {e}"))?;
        if local.checkpoint != mirror.checkpoint || local.records != mirror.records {
            return Err(format!(
                "log of node {w}: mirror replays {:?} after {}, local {:?} after {}",
                mirror.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
                mirror.checkpoint,
                local.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
                local.checkpoint
            ));
        }
        let appended = log.stats().appended;
        let durable = log.acknowledged().map_or(0, |p| p.seq);
        if durable != appended {
            return Err(format!(
                "log of node {w}: {appended} appended but only {durable} durable on both sides after convergence"
            ));
        }
        Ok(())
    }
}
