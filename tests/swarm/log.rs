//! The shadow log of one writer node, mirrored into its partner's region (F5.1, F5.2).
//!
//! The writer's [`ShadowLog`] runs on [`CrashNvram`]; its mirror writes travel over the mirror
//! client's link with the seed's delays and land (and complete) in order, as on a reliable
//! connection. When the path fails, whatever is in flight lands whole, torn or not at all, in
//! any order, and the writer rewinds. The partner's region is persistent memory: it survives
//! the partner's restarts.
//!
//! Checks (the oracle and the replay checks are `mirror_log_sim`'s): a restarted writer
//! recovers every acknowledged record after its checkpoint, once and in order; a takeover
//! replay of the partner's region does the same; once the pair has converged the region
//! replays exactly what the writer's NVRAM does.

use super::nvram::{CrashNvram, Fuse};
use crate::mirror_log_sim::{check_image, check_replay, payload, Oracle};
use interlink::clients::mirror::{
    replay, LogPosition, MirrorError, MirrorWrite, NvramBacking, ShadowLog,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;
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
    pub checkpoints: u64,
    pub path_failures: u64,
    pub torn_landings: u64,
    pub restarts_checked: u64,
    pub replays_checked: u64,
}

/// One writer and its mirror.
pub struct LogLane {
    pub writer: usize,
    pub log: Option<ShadowLog<CrashNvram>>,
    /// The writer's NVRAM while it is down.
    pub local: Option<Vec<u8>>,
    /// The partner's mirror region.
    pub mirror: Vec<u8>,
    inflight: VecDeque<(MirrorWrite, Duration)>,
    pub payloads: BTreeMap<u64, Vec<u8>>,
    pub acked: u64,
    floor: u64,
    crash_oracle: Oracle,
    generation: u64,
    salt: u64,
    pub counts: LogCounts,
}

impl LogLane {
    /// A freshly formatted log of writer `writer` (not running until `start`).
    pub fn new(writer: usize, seed: u64) -> LogLane {
        let generation = 1 + writer as u64;
        let log =
            ShadowLog::format(CrashNvram::new(vec![0; LOG_LEN]), generation).expect("format log");
        LogLane {
            writer,
            local: Some(log.into_local().crash_image()),
            log: None,
            mirror: vec![0; LOG_LEN],
            inflight: VecDeque::new(),
            payloads: BTreeMap::new(),
            acked: 0,
            floor: 0,
            crash_oracle: Oracle::default(),
            generation,
            salt: seed ^ (writer as u64 + 1).wrapping_mul(0x5bd1_e995),
            counts: LogCounts::default(),
        }
    }

    /// What the writer has promised so far.
    pub fn oracle(&self) -> Oracle {
        match &self.log {
            Some(log) => {
                let s = log.stats();
                Oracle {
                    acked: self.acked,
                    mirrored_checkpoint: self.floor.max(log.checkpointed().seq),
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
    pub fn fail_path(&mut self, rng: &mut SmallRng) {
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

    /// The writer's node crashed.
    pub fn crash_writer(&mut self, rng: &mut SmallRng) {
        if self.log.is_none() {
            return;
        }
        self.fail_path(rng);
        self.crash_oracle = self.oracle();
        let log = self.log.take().expect("running");
        self.local = Some(log.into_local().crash_image());
    }

    /// The writer's node started: the log is reopened from its NVRAM and what it recovers is
    /// checked against what was acknowledged.
    pub fn start_writer(&mut self) -> Result<(), String> {
        let Some(image) = self.local.take() else {
            return Ok(());
        };
        let (log, recovered) = ShadowLog::open(CrashNvram::new(image))
            .map_err(|e| format!("log of node {}: reopen failed: {e}", self.writer))?;
        self.counts.restarts_checked += 1;
        let what = format!("log of node {}: restart recovery", self.writer);
        check_replay(&recovered, &self.crash_oracle, &self.payloads, &what)?;
        let last = recovered.last().map_or(recovered.checkpoint, |p| p.seq);
        self.payloads.retain(|&seq, _| seq <= last);
        self.floor = self.crash_oracle.mirrored_checkpoint;
        self.log = Some(log);
        Ok(())
    }

    /// A takeover: the partner replays this writer's log from its region.
    pub fn takeover_replay(&mut self) -> Result<(), String> {
        self.counts.replays_checked += 1;
        let what = format!("takeover replay of node {}'s log", self.writer);
        check_image(
            &self.mirror,
            &self.oracle(),
            self.generation,
            &self.payloads,
            &what,
        )
        .map(|_| ())
    }

    /// One step: appends while the writer serves, checkpoints, posts on the path, and lands
    /// and completes what is due.
    pub fn step(
        &mut self,
        now: Duration,
        rng: &mut SmallRng,
        serving: bool,
        path_up: bool,
        delay: impl Fn(&mut SmallRng) -> Duration,
    ) {
        let Some(log) = &mut self.log else { return };
        if serving {
            for _ in 0..rng.gen_range(0..=2) {
                let seq = log.stats().appended + 1;
                let p = payload(seq, rng.gen_range(1..=300), self.salt);
                match log.append(&p) {
                    Ok(pos) => {
                        debug_assert_eq!(pos.seq, seq);
                        self.payloads.insert(seq, p);
                        self.counts.appended += 1;
                    }
                    Err(MirrorError::LogFull { .. }) => {
                        Self::checkpoint(log, self.acked, self.generation, &mut self.counts);
                        break;
                    }
                    Err(e) => panic!("append: {e}"),
                }
                if log.local().fuse().dead() {
                    return;
                }
            }
            if rng.gen_bool(0.05) {
                Self::checkpoint(log, self.acked, self.generation, &mut self.counts);
            }
        }
        // A node that died inside a write posts nothing more.
        if !path_up || log.local().fuse().dead() {
            return;
        }
        let mut last = self.inflight.back().map_or(now, |(_, at)| *at);
        while let Some(w) = log.poll_mirror_write() {
            last = last.max(now + delay(rng));
            self.inflight.push_back((w, last));
        }
        while self.inflight.front().is_some_and(|(_, at)| *at <= now) {
            let (w, _) = self.inflight.pop_front().expect("due");
            let r = w.offset..w.offset + w.len;
            self.mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
            log.handle_mirror_complete(w.id);
            if log.local().fuse().dead() {
                return;
            }
            while let Some(pos) = log.poll_acknowledged() {
                assert!(pos.seq > self.acked, "ack {pos:?} after {}", self.acked);
                self.acked = pos.seq;
                self.counts.acked += 1;
            }
            self.floor = self.floor.max(log.checkpointed().seq);
        }
    }

    fn checkpoint(
        log: &mut ShadowLog<CrashNvram>,
        acked: u64,
        generation: u64,
        counts: &mut LogCounts,
    ) {
        if acked > log.stats().checkpoint_requested {
            let through = LogPosition {
                generation,
                seq: acked,
            };
            if log.checkpoint(through).is_ok() {
                counts.checkpoints += 1;
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
