//! Recovery of this node's own log at start (F5.6): what the records the previous run left in
//! the local NVRAM still owe, decided before anything is formatted or appended (the decision
//! itself is the sans-IO [`plan_recovery`](crate::clients::mirror::recovery_plan::plan_recovery);
//! this module carries it out).
//!
//! [`ShadowMirror::start`] leaves the own log untouched; [`ShadowMirror::recover`] is the one
//! way to make it appendable, and does exactly one of:
//!
//! - **Fresh**: the backing holds no log (no superblock magic): a first start. A log of a
//!   new generation is formatted.
//! - **Replayed by the partner**: the partner's replay cursor (what it replayed of this
//!   node's log at a takeover, published in its mailbox record) names this log's generation
//!   or a newer one. Its records were applied there; the ones after the cursor were never
//!   replayed by anyone and are dropped (counted in [`Recovered::dropped`]). A new
//!   generation is formatted.
//! - **Replayed here**: nobody applied the records after the log's checkpoint (a restart
//!   inside the failure-detection window, a power loss of both nodes, a node without a
//!   giveback client). The log is re-opened (the partner's mirror receives the same bytes
//!   again), every record after the checkpoint and after the own-replay cursor is handed to
//!   the service's sink in order, and after each one the own-replay cursor (in the cursor
//!   NVRAM) and a checkpoint through it are stored. While a connection is up, the next
//!   record waits until that checkpoint is complete on the partner's mirror, so a takeover
//!   after a crash in the middle of this recovery replays only what this node did not
//!   apply. Then a new generation is formatted.
//!
//! A crash while the sink applies a record may hand that one record to the sink again at the
//! next recovery (the cursor moves after the sink returned): a service recognises it by its
//! (generation, sequence) position. A log that exists but cannot be read is never formatted
//! over ([`ShadowError::RecoverUnreadable`]).
//!
//! A local NVRAM that lost the log (blank, unreadable, or an older log than the mailbox
//! records: [`ShadowMirror::recover_from_mailbox`]) is first filled with the partner's copy,
//! fetched by RDMA READ, when that copy stands for the log; then one of the three above runs
//! on it. Otherwise [`ShadowError::NoValidCopy`] and nothing is formatted (the rules:
//! [`plan_start`], [`plan_fetched`]).

use super::cursor::CursorKind;
use super::{now_ns, Nvram, ShadowMirror};
use crate::clients::giveback::OwnLogContext;
use crate::clients::mirror::error::ShadowError;
use crate::clients::mirror::log::ShadowLog;
use crate::clients::mirror::log_format::decode_superblock;
use crate::clients::mirror::log_replay::{LogPosition, ReplayCursor, ReplayedRecord};
use crate::clients::mirror::nvram::NvramBacking as _;
use crate::clients::mirror::recovery_plan::{
    next_generation, plan_fetched, plan_recovery, plan_start, OwnLogKnowledge, RecoveryPlan,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest the recovery waits for a first connection before it applies records with the
/// partner's mirror not following (the partner may be down too).
const FIRST_LINK_WAIT: Duration = Duration::from_secs(3);
/// How long the own recovery waits for a mailbox write to void the confirmation of the
/// partner's copy (the giveback driver writes its record every interval, during hooks too).
const UNCONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Where the recovery of the own log is.
pub(super) enum RecoveryState {
    /// Not decided: the backing as the previous run left it.
    Unrecovered(Nvram),
    /// The previous run's log is installed and its records are being applied.
    Replaying {
        /// Its checkpoint in force at start.
        checkpoint: u64,
        /// The own-replay cursor found at start.
        resumed_after: Option<u64>,
    },
    /// Done: appends go to a log of a new generation.
    Recovered(Recovered),
    /// Taken out for a moment (a format failed: the backing is gone).
    Lost,
}

impl RecoveryState {
    pub(super) fn is_recovered(&self) -> bool {
        matches!(self, RecoveryState::Recovered(_))
    }

    pub(super) fn report(&self) -> Option<Recovered> {
        match self {
            RecoveryState::Recovered(r) => Some(r.clone()),
            _ => None,
        }
    }
}

/// Which of the three recoveries ran (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryOutcome {
    /// No log in the backing: a first start.
    Fresh,
    /// The partner replayed the previous log at a takeover.
    ReplayedByPartner,
    /// This node applied the previous log's records itself.
    ReplayedHere,
}

/// What [`ShadowMirror::recover`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// Which recovery ran.
    pub outcome: RecoveryOutcome,
    /// Generation of the previous run's log (None: fresh).
    pub previous_generation: Option<u64>,
    /// Its checkpoint in force.
    pub previous_checkpoint: u64,
    /// The own-replay cursor an interrupted recovery left (records through it were applied).
    pub resumed_after: Option<u64>,
    /// Records handed to the sink by this recovery.
    pub replayed: u64,
    /// The partner's replay cursor in this log's generation (what it applied at a takeover).
    pub partner_replayed_through: Option<u64>,
    /// Records after the partner's replay cursor that nobody applied (they were never
    /// mirrored, so never acknowledged as mirrored). Unknown (0) when the local NVRAM lost
    /// the log.
    pub dropped: u64,
    /// Generation of the new log.
    pub generation: u64,
    /// The local NVRAM had lost the log, and it was fetched from the partner's copy (F5.6).
    #[serde(default)]
    pub fetched_from_partner: bool,
}

impl ShadowMirror {
    /// Recovers this node's own log (see `shadow/recovery.rs`) without a mailbox (no
    /// giveback client): `partner_replayed` is the partner's replay cursor of this node's log
    /// (`None` if the partner never replayed it, or with no partner able to take over);
    /// `sink` applies a record of the previous run that nobody applied, in order. Returns
    /// once appends go to a log of a new generation.
    ///
    /// Without a mailbox nothing says whether a log ever held acknowledged records: a blank
    /// NVRAM starts fresh, and a corrupt one is fetched from the partner's copy if it holds
    /// a readable log ([`ShadowError::RecoverUnreadable`] if not). With the giveback client,
    /// use [`recover_from_mailbox`](ShadowMirror::recover_from_mailbox).
    ///
    /// On an error nothing is formatted; a [`ShadowError::RecoverSink`] leaves every record
    /// before the refused one applied and covered by the own-replay cursor, and `recover`
    /// may be called again.
    pub fn recover(
        &self,
        partner_replayed: Option<ReplayCursor>,
        sink: impl FnMut(ReplayedRecord) -> Result<(), String>,
    ) -> Result<Recovered, ShadowError> {
        self.recover_knowing(partner_replayed, false, OwnLogKnowledge::Unknown, sink)
    }

    /// Recovers this node's own log (see `shadow/recovery.rs`) with what the giveback
    /// client hands the own-log recovery hook: the partner's replay cursor, and the marks of
    /// this node's mailbox record, which the shadow log keeps from then on (the generation of
    /// each new log is recorded there before anything is appended to it; the outdated mark
    /// of the partner's copy as [`set_partner_copy_mark`](ShadowMirror::set_partner_copy_mark)).
    /// A log the mailbox records and the local NVRAM lost or cannot read is fetched from
    /// the partner's copy ([`ShadowConfig::fetch_timeout`](super::ShadowConfig::fetch_timeout))
    /// and recovered like a local one; [`ShadowError::NoValidCopy`] when that copy does not
    /// stand for it, [`ShadowError::FetchNoPartner`] when no connection read it in time.
    pub fn recover_from_mailbox(
        &self,
        context: &OwnLogContext,
        sink: impl FnMut(ReplayedRecord) -> Result<(), String>,
    ) -> Result<Recovered, ShadowError> {
        self.set_partner_copy_mark(context.copy_mark.clone());
        self.set_serving_lease(context.serving_lease.clone());
        {
            // A log recovered in an earlier run of the protocol (a halt since: the node may
            // have been taken over) is recovered again, from the NVRAM.
            let mut st = self.shared.inner.lock();
            let earlier = st.recovered_for.is_some_and(|i| i != context.incarnation);
            if st.recovery.is_recovered() && earlier {
                self.shared.give_up(
                    &mut st,
                    "the giveback protocol restarted since its recovery",
                );
            }
        }
        let mark = self.shared.own_log.get_or_init(|| context.own_log.clone());
        if !Arc::ptr_eq(mark, &context.own_log) {
            tracing::warn!(client = %self.name(), "another own log mark was given already; keeping it");
        }
        let known = OwnLogKnowledge::Recorded {
            generation: mark.recorded(),
            copy_outdated: context.copy_mark.get().map(|m| LogPosition {
                generation: m.generation,
                seq: m.seq,
            }),
            copy_complete_for: context.copy_mark.stamp().complete_for,
        };
        let partner = context.partner_replayed.map(ReplayCursor::from);
        let r = self.recover_knowing(partner, context.partner_took_over, known, sink);
        if r.is_ok() {
            self.shared.inner.lock().recovered_for = Some(context.incarnation);
        }
        r
    }

    /// Recovers, and keeps a refusal as the last error of the stats (`interlink status`).
    fn recover_knowing(
        &self,
        partner_replayed: Option<ReplayCursor>,
        partner_took_over: bool,
        known: OwnLogKnowledge,
        sink: impl FnMut(ReplayedRecord) -> Result<(), String>,
    ) -> Result<Recovered, ShadowError> {
        let r = self.recover_inner(partner_replayed, partner_took_over, known, sink);
        if let Err(e) = &r {
            tracing::error!(client = %self.name(), error = %e, "shadow log recovery failed");
            self.shared.inner.lock().last_error = Some(e.to_string());
        }
        r
    }

    fn recover_inner(
        &self,
        partner_replayed: Option<ReplayCursor>,
        partner_took_over: bool,
        known: OwnLogKnowledge,
        mut sink: impl FnMut(ReplayedRecord) -> Result<(), String>,
    ) -> Result<Recovered, ShadowError> {
        let shared = &*self.shared;
        let _one = shared.recovering.lock();
        let own_cursor = shared
            .cursor
            .lock()
            .load_kind(CursorKind::Own)
            .map(|c| c.position);
        let mut st = shared.lock_live()?;
        let mut fetched = false;
        let state = std::mem::replace(&mut st.recovery, RecoveryState::Lost);
        let (generation, records) = match state {
            RecoveryState::Recovered(r) => {
                st.recovery = RecoveryState::Recovered(r);
                return Err(ShadowError::AlreadyRecovered {
                    name: shared.cfg.name.clone(),
                });
            }
            RecoveryState::Lost => {
                return Err(ShadowError::ReopenLog {
                    reason: "an earlier recovery lost the local log".into(),
                })
            }
            RecoveryState::Replaying { .. } => {
                // An earlier call decided to apply here and stopped (its sink refused): the
                // installed log, after the own-replay cursor.
                st.recovery = state;
                let log = st.log()?;
                match plan_recovery(log.local().bytes(), own_cursor, None)? {
                    RecoveryPlan::ReplayHere {
                        generation,
                        records,
                        ..
                    } => (generation, records),
                    other => {
                        return Err(ShadowError::ReopenLog {
                            reason: format!("the installed log plans {other:?}"),
                        })
                    }
                }
            }
            RecoveryState::Unrecovered(mut backing) => {
                let planned = match plan_start(backing.bytes(), own_cursor, partner_replayed, known)
                {
                    Ok(RecoveryPlan::FetchFromPartner { local, .. }) => {
                        drop(st);
                        fetched = true;
                        let p = self.fetch_own(
                            &mut backing,
                            own_cursor,
                            partner_replayed,
                            known,
                            &local,
                        );
                        st = shared.inner.lock();
                        p
                    }
                    other => other,
                };
                match planned {
                    Err(e) => {
                        st.recovery = RecoveryState::Unrecovered(backing);
                        return Err(e);
                    }
                    Ok(RecoveryPlan::FetchFromPartner { .. }) => {
                        st.recovery = RecoveryState::Unrecovered(backing);
                        return Err(ShadowError::ReopenLog {
                            reason: "the partner's copy asks for another fetch".into(),
                        });
                    }
                    Ok(RecoveryPlan::Fresh) => {
                        drop(st);
                        let gen = self.new_generation(None, partner_replayed.map(|p| p.position));
                        let log = ShadowLog::format(backing, gen)?;
                        let r = Recovered {
                            outcome: RecoveryOutcome::Fresh,
                            previous_generation: None,
                            previous_checkpoint: 0,
                            resumed_after: None,
                            replayed: 0,
                            partner_replayed_through: None,
                            dropped: 0,
                            generation: gen,
                            fetched_from_partner: fetched,
                        };
                        self.install(log, r.clone());
                        return Ok(r);
                    }
                    Ok(RecoveryPlan::ReplayedByPartner {
                        generation: g,
                        checkpoint,
                        through,
                        dropped,
                    }) => {
                        drop(st);
                        if dropped > 0 {
                            tracing::warn!(client = %shared.cfg.name, generation = g, dropped, partner_replayed = ?through, "shadow log recovery: records after the partner's replay were never applied and are dropped");
                        }
                        // A corrupt image may still name a newer generation in its
                        // superblock: the new log goes above that too (format refuses a
                        // generation that is not, and the backing would be lost).
                        let existing = decode_superblock(backing.bytes())
                            .ok()
                            .map(|sb| sb.generation);
                        let gen = self.new_generation(
                            Some(g).max(existing),
                            partner_replayed.map(|p| p.position),
                        );
                        let log = ShadowLog::format(backing, gen)?;
                        let r = Recovered {
                            outcome: RecoveryOutcome::ReplayedByPartner,
                            previous_generation: Some(g),
                            previous_checkpoint: checkpoint,
                            resumed_after: None,
                            replayed: 0,
                            partner_replayed_through: through,
                            dropped,
                            generation: gen,
                            fetched_from_partner: fetched,
                        };
                        tracing::info!(client = %shared.cfg.name, previous = g, generation = gen, "shadow log recovered: the partner replayed it at its takeover");
                        self.install(log, r.clone());
                        return Ok(r);
                    }
                    Ok(RecoveryPlan::ReplayHere {
                        generation,
                        records,
                        ..
                    }) if partner_took_over && !records.is_empty() => {
                        // The partner took this node over and published no whole replay of
                        // this generation: its replay may have gone beyond the cursor it
                        // published (or none yet). Wait until it runs again and publishes
                        // the cursor in its NVRAM.
                        st.recovery = RecoveryState::Unrecovered(backing);
                        return Err(ShadowError::PartnerReplayUnknown { generation });
                    }
                    Ok(RecoveryPlan::ReplayHere {
                        generation,
                        checkpoint,
                        resumed_after,
                        records,
                    }) => {
                        if let Some(seq) = resumed_after.filter(|&seq| {
                            own_cursor.is_none_or(|c| c.generation != generation || c.seq < seq)
                        }) {
                            // The partner's takeover replay stopped after `seq`: the own
                            // cursor covers what it applied, so a later call (this one's sink
                            // refused) does not apply those records again.
                            shared
                                .cursor
                                .lock()
                                .store_own(LogPosition { generation, seq })?;
                        }
                        let (log, _) = ShadowLog::open(backing)?;
                        st.acked = log.stats().appended;
                        st.checkpointed = 0;
                        st.unmirrored.clear();
                        st.last_checkpoint = None;
                        st.log = Some(log);
                        shared.generation.store(generation, Ordering::Release);
                        st.recovery = RecoveryState::Replaying {
                            checkpoint,
                            resumed_after,
                        };
                        shared.post(&mut st);
                        (generation, records)
                    }
                }
            }
        };
        drop(st);
        let (checkpoint, resumed_after) = match &shared.inner.lock().recovery {
            RecoveryState::Replaying {
                checkpoint,
                resumed_after,
                ..
            } => (*checkpoint, *resumed_after),
            _ => (0, None),
        };
        let replayed = self.apply_own(generation, records, &mut sink)?;
        let gen = self.new_generation(Some(generation), partner_replayed.map(|p| p.position));
        let r = Recovered {
            outcome: RecoveryOutcome::ReplayedHere,
            previous_generation: Some(generation),
            previous_checkpoint: checkpoint,
            resumed_after,
            replayed,
            partner_replayed_through: partner_replayed
                .map(|p| p.position)
                .filter(|p| p.generation == generation)
                .map(|p| p.seq),
            dropped: 0,
            generation: gen,
            fetched_from_partner: fetched,
        };
        self.drain();
        let backing = {
            let mut st = shared.inner.lock();
            let log = st.log.take().ok_or_else(|| ShadowError::ReopenLog {
                reason: "the local log was lost during recovery".into(),
            })?;
            log.into_local()
        };
        let log = ShadowLog::format(backing, gen)?;
        tracing::info!(client = %shared.cfg.name, previous = generation, replayed, generation = gen, "shadow log recovered: its records were applied here");
        self.install(log, r.clone());
        Ok(r)
    }

    /// Reads the partner's copy of this node's log (the local NVRAM `local`), decides on it
    /// ([`plan_fetched`]) and, when it stands for the log, writes it into the local NVRAM,
    /// persisted, before the plan is carried out.
    fn fetch_own(
        &self,
        backing: &mut Nvram,
        own_cursor: Option<LogPosition>,
        partner_replayed: Option<ReplayCursor>,
        known: OwnLogKnowledge,
        local: &str,
    ) -> Result<RecoveryPlan, ShadowError> {
        let shared = &*self.shared;
        let started = Instant::now();
        tracing::warn!(client = %shared.cfg.name, local, known = ?known, "shadow log recovery: the local NVRAM lost the log; fetching it from the partner's copy");
        let (copy, fetched_from) = shared
            .fetch_partner_copy(started + shared.cfg.fetch_timeout)
            .map_err(|last_error| ShadowError::FetchNoPartner {
                local: local.to_string(),
                waited: started.elapsed(),
                last_error,
            })?;
        let plan = plan_fetched(
            &copy,
            fetched_from,
            own_cursor,
            partner_replayed,
            known,
            local,
        )?;
        let len = copy.len().min(backing.len());
        backing.bytes_mut()[..len].copy_from_slice(&copy[..len]);
        backing.persist(0, len)?;
        tracing::info!(client = %shared.cfg.name, bytes = len, "shadow log recovery: the partner's copy is in the local NVRAM");
        Ok(plan)
    }

    /// The giveback incarnation the log was last recovered for by
    /// [`recover_from_mailbox`](Self::recover_from_mailbox) (None: never, or another way).
    pub fn recovered_for(&self) -> Option<u64> {
        self.shared.inner.lock().recovered_for
    }

    /// Waits until the own log is recovered, at most
    /// [`ShadowConfig::link_timeout`](super::ShadowConfig::link_timeout).
    pub fn wait_recovered(&self) -> Result<(), ShadowError> {
        self.wait_recovered_timeout(self.shared.cfg.link_timeout)
    }

    /// Waits at most `timeout` until the own log is recovered
    /// ([`ShadowError::NotRecovered`] past it).
    pub fn wait_recovered_timeout(&self, timeout: Duration) -> Result<(), ShadowError> {
        let start = Instant::now();
        let mut st = self.shared.inner.lock();
        loop {
            if st.recovery.is_recovered() {
                return Ok(());
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(self.shared.stopped());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ShadowError::NotRecovered {
                    name: self.shared.cfg.name.clone(),
                    waited,
                });
            }
            self.shared
                .changed
                .wait_for(&mut st, (timeout - waited).min(Duration::from_millis(5)));
        }
    }

    /// What the recovery did (None before it completed).
    pub fn recovered(&self) -> Option<Recovered> {
        self.shared.inner.lock().recovery.report()
    }

    /// The partner cursor: what this node replayed of its partner's log at takeovers, and
    /// whether the last replay went through the whole copy (the partner's
    /// [`recover`](ShadowMirror::recover) takes it as `partner_replayed`).
    pub fn partner_replayed(&self) -> Option<ReplayCursor> {
        self.shared.cursor.lock().load()
    }

    /// Applies `records` of the installed log `generation` in order; after each, stores the
    /// own-replay cursor and a checkpoint through it, and while a connection is up waits
    /// until that checkpoint is complete on the mirror.
    fn apply_own(
        &self,
        generation: u64,
        records: Vec<ReplayedRecord>,
        sink: &mut impl FnMut(ReplayedRecord) -> Result<(), String>,
    ) -> Result<u64, ShadowError> {
        let shared = &*self.shared;
        if records.is_empty() {
            return Ok(0);
        }
        self.unconfirm_partner_copy()?;
        let follow = self
            .wait_connected_timeout(FIRST_LINK_WAIT.min(shared.cfg.partner_timeout))
            .is_ok();
        if !follow {
            tracing::warn!(client = %shared.cfg.name, generation, records = records.len(), "shadow log recovery: no connection to the partner; applying with its mirror not following");
        }
        let mut follow = follow;
        let mut applied = 0;
        for rec in records {
            let position = LogPosition {
                generation,
                seq: rec.seq,
            };
            if !follow {
                self.record_applying_here()?;
            }
            if let Err(reason) = sink(rec) {
                return Err(ShadowError::RecoverSink {
                    generation,
                    seq: position.seq,
                    reason,
                });
            }
            applied += 1;
            shared.cursor.lock().store_own(position)?;
            let mut st = shared.inner.lock();
            st.last_checkpoint = Some(position);
            st.log()?.checkpoint(position)?;
            shared.post(&mut st);
            if !follow {
                continue;
            }
            let deadline = Instant::now() + shared.cfg.link_timeout;
            loop {
                shared.pump(&mut st);
                if st.checkpointed >= position.seq || st.absent || !st.link_up() {
                    break;
                }
                if Instant::now() >= deadline || shared.stop.load(Ordering::Relaxed) {
                    tracing::warn!(client = %shared.cfg.name, seq = position.seq, "shadow log recovery: checkpoint not confirmed by the mirror; applying the rest with its mirror not following");
                    follow = false;
                    break;
                }
                shared.changed.wait_for(&mut st, Duration::from_millis(1));
            }
        }
        Ok(applied)
    }

    /// F5.7: before this node applies records of its own log, the mailbox stops naming the
    /// partner's copy complete: a takeover replaying it would apply them a second time (the
    /// checkpoint behind each applied record reaches the copy only after it is applied, and
    /// not at all without a connection). Waits until a mailbox write carried that, at most
    /// [`UNCONFIRM_WAIT`]; past it, nothing is applied.
    fn unconfirm_partner_copy(&self) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let Some(mark) = shared.copy_mark.get() else {
            return Ok(());
        };
        mark.unconfirm();
        self.wait_in_mailbox(|| mark.is_unconfirmed_durably())
    }

    /// Before this node applies a record of its own log with the partner's copy not
    /// following (no connection, or a checkpoint the mirror did not confirm), its mailbox
    /// record says so for the recorded generation
    /// ([`OwnLogMark::applying_here`](crate::clients::giveback::OwnLogMark::applying_here)): the copy's
    /// checkpoint lags from then on, and a forced takeover must not replay the generation from
    /// it. Waits until a mailbox write carried it, at most [`UNCONFIRM_WAIT`]; past it,
    /// nothing more is applied.
    fn record_applying_here(&self) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let Some(mark) = shared.own_log.get() else {
            return Ok(());
        };
        mark.applying_here();
        self.wait_in_mailbox(|| mark.is_durable())
    }

    /// Waits until `durable` says a mailbox write carried what was asked, at most
    /// [`UNCONFIRM_WAIT`] (`NotInMailbox` past it, or when the mirror stops).
    fn wait_in_mailbox(&self, durable: impl Fn() -> bool) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let t0 = Instant::now();
        let mut st = shared.inner.lock();
        while !durable() {
            if t0.elapsed() >= UNCONFIRM_WAIT || shared.stop.load(Ordering::Relaxed) {
                return Err(ShadowError::NotInMailbox {
                    name: shared.cfg.name.clone(),
                    waited: t0.elapsed(),
                });
            }
            shared.changed.wait_for(&mut st, Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits (at most the link timeout) until no write of the installed log is in flight, so
    /// a log of a new generation can take its place; a connection still busy then is handed
    /// back to the manager (its completions would name writes of the old log).
    fn drain(&self) {
        let shared = &*self.shared;
        let deadline = Instant::now() + shared.cfg.link_timeout;
        let mut st = shared.inner.lock();
        loop {
            shared.pump(&mut st);
            let busy = st.log.as_ref().is_some_and(|l| {
                let s = l.stats();
                s.writes_in_flight + s.writes_queued > 0
            });
            if !busy || st.absent || !st.link_up() {
                if st.link.as_ref().is_some_and(|l| l.outstanding > 0) {
                    shared.link_failed(
                        &mut st,
                        "recovery: a new log generation replaces writes in flight",
                    );
                }
                return;
            }
            if Instant::now() >= deadline || shared.stop.load(Ordering::Relaxed) {
                shared.link_failed(&mut st, "recovery: mirror writes did not drain");
                return;
            }
            shared.changed.wait_for(&mut st, Duration::from_millis(1));
        }
    }

    /// A generation above `previous` and above what the partner replayed.
    fn new_generation(&self, previous: Option<u64>, partner_replayed: Option<LogPosition>) -> u64 {
        let candidate = self.shared.cfg.generation.unwrap_or_else(now_ns);
        next_generation(candidate, previous, partner_replayed)
    }

    /// Installs a freshly formatted log: appends may start.
    fn install(&self, log: ShadowLog<Nvram>, r: Recovered) {
        let shared = &*self.shared;
        let mut st = shared.inner.lock();
        st.acked = 0;
        st.checkpointed = 0;
        st.unmirrored.clear();
        st.last_checkpoint = None;
        // With the partner absent the writes complete unsent: the re-send on its return sets
        // the target instead.
        st.sync_target = (!st.absent).then(|| log.last_queued_write());
        st.log = Some(log);
        shared.generation.store(r.generation, Ordering::Release);
        if let Some(mark) = shared.own_log.get() {
            // Appends wait until the mailbox records the new generation.
            mark.record(r.generation);
        }
        st.recovery = RecoveryState::Recovered(r);
        st.relinquished = false;
        st.served = false;
        shared.post(&mut st);
        shared.notify();
    }
}
