//! The shadow mirror's driver: the state behind the lock, and the work whichever thread holds
//! it does (follow manager events, reap completions, post queued writes, note
//! acknowledgements, check the partner timeout, re-send the live log on a new connection),
//! plus the driver thread.

use super::recovery::RecoveryState;
use super::{
    Durability, Nvram, ShadowConfig, FETCH_LANDING, FLUSH_LANDING, FLUSH_LEN, FLUSH_REGION,
    MIRROR_REGION, TX_REGION,
};
use crate::clients::giveback::{LogMark, OwnLogMark, PartnerCopyMark, ServingLease};
use crate::clients::mirror::error::{LogError, ShadowError};
use crate::clients::mirror::log::ShadowLog;
use crate::clients::mirror::log_format::LogImageError;
use crate::clients::mirror::log_replay::{replay, LogPosition, Replay, ScanStop};
use crate::clients::mirror::shadow::cursor::CursorStore;
use crate::fabric::{
    Access, Completion, LocalBuf, MemoryRegion, RegionDescriptor, SendOp, SendRequest,
};
use crate::manager::{ClientEvent, ClientHandle, ClientQp, Connection, LinkId, TermMismatch};
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const POLL_BATCH: usize = 64;
/// Longest the driver thread waits when idle (nothing in flight): manager events wake it at
/// once, so this only bounds how late it notices a partner timeout.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How often the driver pumps while writes are in flight and no waiter sleeps.
const BUSY_WAIT: Duration = Duration::from_millis(2);
/// Writes in flight without any completion for this long mean a lost connection (an RC queue
/// pair completes them, in error at worst, within its transport timeout: well under a second
/// with the manager's connect options).
const STALL: Duration = Duration::from_secs(5);
/// Longest unmirrored ranges kept for waiters (one range per partner absence).
const UNMIRRORED_RANGES: usize = 1024;

/// Work request ids of durability READs and FLUSHes carry this bit (mirror write ids never
/// do).
const FLUSH_TAG: u64 = 1 << 63;
/// Work request ids of the READs fetching the own log from the partner's copy (F5.6) carry
/// this bit.
pub(super) const FETCH_TAG: u64 = 1 << 62;

/// What is posted behind a batch of mirror writes before they count as done.
pub(super) enum Barrier {
    /// [`Durability::Read`]: an RDMA READ of the partner's `shadow-flush` region into the
    /// local landing region.
    Read(RegionDescriptor, MemoryRegion),
    /// [`Durability::Flush`]: an RDMA FLUSH of the range of the partner's mirror region the
    /// batch wrote (the local buffer is an empty one, unused).
    Flush(RegionDescriptor, LocalBuf),
}

impl Barrier {
    fn name(&self) -> &'static str {
        match self {
            Barrier::Read(..) => "durability READ",
            Barrier::Flush(..) => "durability FLUSH",
        }
    }
}

pub(super) struct Link {
    pub(super) id: LinkId,
    pub(super) qp: ClientQp,
    pub(super) qpn: u32,
    /// The queue pair's epoch when activated: a new one (a re-connect in place) discarded
    /// the writes in flight, as a new connection does.
    pub(super) epoch: u64,
    pub(super) tx: MemoryRegion,
    pub(super) partner: RegionDescriptor,
    /// What follows each batch of writes (none with [`Durability::Delivered`]).
    pub(super) flush: Option<Barrier>,
    /// Durability READs / FLUSHes in flight: (work request id, the last mirror write posted
    /// before it).
    pub(super) flushes: VecDeque<(u64, u64)>,
    pub(super) next_flush: u64,
    /// Where the READs fetching the own log from the partner's copy land (F5.6, see
    /// `fetch.rs`).
    pub(super) fetch_landing: MemoryRegion,
    /// Fetch READs of this connection completed successfully.
    pub(super) fetched: u64,
    pub(super) outstanding: usize,
    pub(super) broken: bool,
    /// Which connection of this driver it is (1, 2, ...): completions taken from a completion
    /// queue by a blocking wait are counted only if the link is still the same one. Queue pair
    /// numbers cannot tell: the old and the new link's devices may number their queue pairs
    /// alike (and a device may reuse a number).
    pub(super) serial: u64,
    /// The manager's generation of the connection, for [`ClientHandle::report_failure_of`].
    pub(super) generation: u32,
    /// The partner manager's incarnation: its `shadow-mirror` region's contents live as long
    /// as it does, so a full send completed here makes the copy complete for it (F5.7).
    pub(super) partner_incarnation: u64,
    /// Last time a write completed, or writes were posted with none in flight.
    pub(super) progress_at: Instant,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) connections: u64,
    /// Connections given up because writes stopped completing ([`STALL`]).
    pub(super) stalls: u64,
    pub(super) partner_absences: u64,
    pub(super) appends: u64,
    pub(super) bytes: u64,
    pub(super) acknowledged: u64,
    pub(super) unmirrored: u64,
    pub(super) mirror_writes: u64,
    pub(super) mirror_bytes: u64,
    pub(super) resyncs: u64,
    pub(super) resent_writes: u64,
    pub(super) write_errors: u64,
    /// Durability READs posted behind mirror writes.
    pub(super) durability_reads: u64,
    /// Durability FLUSHes posted behind mirror writes.
    pub(super) durability_flushes: u64,
    pub(super) replays: u64,
    pub(super) replayed_records: u64,
    pub(super) not_replayed_applied_here: u64,
    /// Times acknowledgements were held because the serving lease had run out.
    pub(super) lease_holds: u64,
}

pub(super) struct Inner {
    /// `None` before the recovery installed a log ([`RecoveryState`]), or after a re-open
    /// failed ([`ShadowError::ReopenLog`]).
    pub(super) log: Option<ShadowLog<Nvram>>,
    /// Where the recovery of the own log is; appends wait until it is recovered.
    pub(super) recovery: RecoveryState,
    pub(super) link: Option<Link>,
    /// The last local `shadow-mirror` region (readable after revocation).
    pub(super) mirror: Option<MemoryRegion>,
    pub(super) posts: Vec<SendRequest>,
    pub(super) completions: Vec<Completion>,
    pub(super) suspended_since: Option<Instant>,
    pub(super) absent: bool,
    /// Highest sequence number acknowledged.
    pub(super) acked: u64,
    /// Ranges of sequence numbers acknowledged while the partner was absent.
    pub(super) unmirrored: VecDeque<(u64, u64)>,
    pub(super) checkpointed: u64,
    pub(super) last_checkpoint: Option<LogPosition>,
    /// The last mirror write of the latest full (re)send of the log (a re-send on a new
    /// connection, or a log installed by the recovery): once it completed on a connection,
    /// the partner's copy is in sync (F5.7).
    pub(super) sync_target: Option<u64>,
    pub(super) connected_once: bool,
    pub(super) counters: Counters,
    pub(super) latency: Histogram<u64>,
    pub(super) last_error: Option<String>,
    /// The partner's client disagrees on a term: appends are refused until it re-registers.
    pub(super) refused: Option<TermMismatch>,
    /// The durability point of the current (or last) connection.
    pub(super) durability_in_use: Option<Durability>,
    /// Why [`Durability::Flush`] is not in use on it.
    pub(super) flush_unavailable: Option<String>,
    /// Acknowledgements are held: the serving lease does not run.
    pub(super) lease_held: bool,
    /// The giveback client said this node serves its disks while this log was installed.
    pub(super) served: bool,
    /// The log was given up at a halt and not recovered since.
    pub(super) relinquished: bool,
    /// The giveback incarnation the log was last recovered for
    /// ([`OwnLogContext::incarnation`](crate::clients::giveback::OwnLogContext::incarnation)).
    pub(super) recovered_for: Option<u64>,
}

impl Inner {
    pub(super) fn log(&mut self) -> Result<&mut ShadowLog<Nvram>, ShadowError> {
        self.log.as_mut().ok_or_else(|| ShadowError::ReopenLog {
            reason: "the local log could not be re-opened after a reconnection".into(),
        })
    }

    pub(super) fn link_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| !l.broken)
    }

    pub(super) fn is_unmirrored(&self, seq: u64) -> bool {
        self.unmirrored
            .iter()
            .rev()
            .any(|&(from, to)| from <= seq && seq <= to)
    }
}

pub(super) struct Shared {
    pub(super) cfg: ShadowConfig,
    pub(super) handle: ClientHandle,
    pub(super) log_len: usize,
    /// Generation of the installed log (0 before the recovery installed one).
    pub(super) generation: AtomicU64,
    pub(super) max_payload: usize,
    pub(super) inner: Mutex<Inner>,
    /// Signalled when acknowledgements advance, a link comes up or the driver stops.
    pub(super) changed: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) cursor: Mutex<CursorStore>,
    /// Held by [`ShadowMirror::recover`](super::ShadowMirror::recover): one recovery at a
    /// time.
    pub(super) recovering: Mutex<()>,
    /// The outdated mark of the partner's copy of this log (F5.7), once given.
    pub(super) copy_mark: std::sync::OnceLock<Arc<PartnerCopyMark>>,
    /// The own log generation of this node's mailbox record (F5.6), once given: a new
    /// generation is recorded there before anything is appended to it.
    pub(super) own_log: std::sync::OnceLock<Arc<OwnLogMark>>,
    /// The giveback client's serving lease, once given: nothing is acknowledged while it
    /// does not run.
    pub(super) serving_lease: std::sync::OnceLock<Arc<ServingLease>>,
    /// Waiters asleep on [`Shared::changed`] (they stopped spinning): while there are any
    /// and writes are in flight, the driver blocks on the completion queue (see [`drive`]).
    pub(super) sleepers: AtomicUsize,
    /// Wakes the driver thread when a waiter goes to sleep (or writes are posted while one
    /// sleeps), so it blocks on the completion queue at once (see [`drive`]). Capacity 1.
    pub(super) kick: (Sender<()>, Receiver<()>),
    pub(super) metrics: crate::recorded_metrics::ShadowMetrics,
    /// Tasks of pending futures ([`AppendFuture`](super::AppendFuture), ...), woken with
    /// [`changed`](Self::changed) by [`notify`](Self::notify).
    pub(super) wakers: Mutex<Vec<std::task::Waker>>,
    /// Futures whose append waits for a state that changes without a notification (the
    /// recovery's mailbox marks, log space): the driver wakes the tasks every round while
    /// there are any.
    pub(super) blocked_starts: AtomicUsize,
}

/// A waiter asleep on [`Shared::changed`], counted in [`Shared::sleepers`] while it lives.
pub(super) struct Sleeper<'a>(&'a Shared);

impl<'a> Sleeper<'a> {
    /// Counts a sleeper and wakes the driver.
    pub(super) fn new(shared: &'a Shared) -> Sleeper<'a> {
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        let _ = shared.kick.0.try_send(());
        Sleeper(shared)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Wakes the threads waiting on [`changed`](Self::changed) and the tasks of pending
    /// futures.
    pub(super) fn notify(&self) {
        self.changed.notify_all();
        self.wake_tasks();
    }

    /// Wakes the tasks of pending futures (they poll again and re-register).
    pub(super) fn wake_tasks(&self) {
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers {
            w.wake();
        }
    }

    pub(super) fn stopped(&self) -> ShadowError {
        ShadowError::AppendStopped {
            name: self.cfg.name.clone(),
        }
    }

    pub(super) fn lock_live(&self) -> Result<MutexGuard<'_, Inner>, ShadowError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(self.stopped());
        }
        Ok(self.inner.lock())
    }

    /// Follows manager events, reaps completions, checks the partner timeout, posts queued
    /// writes and notes acknowledgements. Returns whether anything happened.
    pub(super) fn pump(&self, st: &mut Inner) -> bool {
        let mut progress = false;
        while let Ok(ev) = self.handle.events().try_recv() {
            self.on_event(st, ev);
            progress = true;
        }
        progress |= self.reap(st, &mut Vec::new(), None);
        self.check_stall(st);
        self.check_partner(st);
        progress |= self.post(st);
        progress |= self.note_acks(st);
        self.sync_copy_mark(st);
        progress |= self.follow_serving(st);
        self.record_metrics(st);
        progress
    }

    /// Carries the counters over to the shadow log's metrics.
    fn record_metrics(&self, st: &Inner) {
        let m = &self.metrics;
        m.mirrored_bytes.set(st.counters.mirror_bytes);
        m.unmirrored.set(st.counters.unmirrored);
        m.suspensions.set(st.counters.partner_absences);
        m.acknowledged_seq.set(st.acked as f64);
    }

    /// A node that stops serving its own disks (a halt of the giveback protocol: it may have
    /// been taken over) gives its log up: nothing more is acknowledged or appended, waiters
    /// get [`ShadowError::Relinquished`], and the recovery the restarted protocol runs
    /// before serving again decides from the NVRAM what is applied (as after a restart of
    /// the process, without losing the process). Returns whether it gave the log up.
    pub(super) fn follow_serving(&self, st: &mut Inner) -> bool {
        let Some(lease) = self.serving_lease.get() else {
            return false;
        };
        if !st.recovery.is_recovered() {
            return false;
        }
        if lease.serving() {
            st.served = true;
            return false;
        }
        if !st.served {
            return false;
        }
        self.give_up(st, "this node stopped serving its disks (a halt)")
    }

    /// Gives the installed log up (see [`follow_serving`](Self::follow_serving)).
    pub(super) fn give_up(&self, st: &mut Inner, why: &str) -> bool {
        let Some(log) = st.log.take() else {
            return false;
        };
        let generation = self.generation.swap(0, Ordering::AcqRel);
        tracing::warn!(client = %self.cfg.name, generation, acknowledged = st.acked, reason = why, "shadow log given up; the next recovery decides what is applied");
        // Completions of the old log's writes must not count for the next one's.
        self.link_failed(st, "the shadow log was given up at a halt");
        st.link = None;
        st.sync_target = None;
        st.served = false;
        st.relinquished = true;
        st.recovery = RecoveryState::Unrecovered(log.into_local());
        self.notify();
        true
    }

    /// F5.7: the partner's copy is in sync and complete (connected, the own log recovered,
    /// and the latest full send of the live log complete on this connection; later appends
    /// are mirrored before they are acknowledged): the outdated mark goes, and the mailbox
    /// names the partner incarnation the copy is complete for. A partner that restarts comes
    /// back with an empty region and a new incarnation: the confirmation no longer names it
    /// until the re-send on the new connection completed.
    fn sync_copy_mark(&self, st: &Inner) {
        let Some(mark) = self.copy_mark.get() else {
            return;
        };
        let Some(link) = st.link.as_ref().filter(|l| !l.broken) else {
            return;
        };
        if link.partner_incarnation == 0
            || (!mark.is_marked() && mark.is_confirmed_for(link.partner_incarnation))
        {
            return;
        }
        let synced = !st.absent
            && st.recovery.is_recovered()
            && st
                .log
                .as_ref()
                .zip(st.sync_target)
                .is_some_and(|(l, target)| l.completed_write() >= target);
        if synced {
            mark.synced(link.partner_incarnation);
        }
    }

    /// Processes `waited` (completions a blocking wait took from the completion queue of the
    /// link with serial `from`; dropped if the link changed since) and polls for more.
    pub(super) fn reap(
        &self,
        st: &mut Inner,
        waited: &mut Vec<Completion>,
        from: Option<u64>,
    ) -> bool {
        let Inner {
            link,
            log,
            completions,
            ..
        } = st;
        let Some(l) = link.as_mut() else {
            waited.clear();
            return false;
        };
        if from.is_some_and(|serial| serial != l.serial) {
            // From an earlier connection's queue: its writes were rewound and are re-sent.
            waited.clear();
        }
        completions.append(waited);
        if !l.broken {
            if let Err(e) = l.qp.send_cq().poll(completions, POLL_BATCH) {
                tracing::warn!(client = %self.cfg.name, error = %e, "poll send queue");
            }
        }
        let got = !completions.is_empty();
        let mut failure = None;
        for c in completions.drain(..) {
            if l.broken || c.qpn != l.qpn {
                continue;
            }
            l.outstanding = l.outstanding.saturating_sub(1);
            l.progress_at = Instant::now();
            if c.wr_id & FETCH_TAG != 0 {
                if c.status.is_ok() {
                    l.fetched += 1;
                } else {
                    failure.get_or_insert_with(|| {
                        format!("fetch READ {}: {:?}", c.wr_id & !FETCH_TAG, c.status)
                    });
                }
                continue;
            }
            let flush = c.wr_id & FLUSH_TAG != 0;
            if !c.status.is_ok() {
                failure.get_or_insert_with(|| {
                    let what = match (&l.flush, flush) {
                        (Some(b), true) => b.name(),
                        _ => "mirror write",
                    };
                    format!("{what} {}: {:?}", c.wr_id & !FLUSH_TAG, c.status)
                });
                continue;
            }
            if failure.is_some() {
                continue;
            }
            // With a durability READ (FLUSH), a write counts once a READ (FLUSH) posted after
            // it completed: the partner placed it in its memory (RC executes the READ after the
            // WRITEs; a FLUSH is acknowledged once the WRITEs before it are placed).
            let through = match (flush, l.flush.is_some()) {
                (true, _) => {
                    let mut through = None;
                    while let Some(&(id, last)) = l.flushes.front() {
                        if id > c.wr_id {
                            break;
                        }
                        l.flushes.pop_front();
                        through = Some(last);
                    }
                    through
                }
                (false, true) => None,
                (false, false) => Some(c.wr_id),
            };
            if let (Some(id), Some(log)) = (through, log.as_mut()) {
                log.handle_mirror_complete(id);
            }
        }
        if let Some(why) = failure {
            st.counters.write_errors += 1;
            self.link_failed(st, &why);
        }
        got
    }

    /// Posts queued mirror writes within the send queue's room (or, with the partner absent,
    /// completes them at once: there is nobody to write to). Returns whether any went.
    pub(super) fn post(&self, st: &mut Inner) -> bool {
        if st.absent {
            let generation = self.generation.load(Ordering::Acquire);
            let first_unmirrored = st.acked + 1;
            let Some(log) = st.log.as_mut() else {
                return false;
            };
            if let Some(mark) = self.copy_mark.get() {
                // F5.7: the partner's copy is durably marked outdated before anything is
                // acknowledged without it.
                if log.stats().writes_queued == 0 {
                    return false;
                }
                mark.mark(LogMark {
                    generation,
                    seq: first_unmirrored,
                });
                if !mark.is_durable() {
                    return false;
                }
            }
            let mut any = false;
            while let Some(w) = log.poll_mirror_write() {
                log.handle_mirror_complete(w.id);
                any = true;
            }
            return any;
        }
        let depth = self.cfg.send_depth.max(4) as usize;
        let Inner {
            link,
            log,
            posts,
            counters,
            ..
        } = st;
        let (Some(l), Some(log)) = (link.as_mut().filter(|l| !l.broken), log.as_mut()) else {
            return false;
        };
        let mut failure = None;
        let mut bytes = 0u64;
        // One slot stays free for the durability READ / FLUSH behind the writes.
        let room = if l.flush.is_some() { depth - 1 } else { depth };
        let mut last_write = None;
        // The partner's range the batch writes (what a FLUSH behind it covers).
        let mut span = None;
        while l.outstanding + posts.len() < room {
            let Some(w) = log.poll_mirror_write() else {
                break;
            };
            let staged = match log.local().bytes().get(w.offset..w.offset + w.len) {
                Some(src) => {
                    l.tx.fill(w.offset, w.len, |dst| dst.copy_from_slice(src))
                        .and_then(|()| l.tx.slice(w.offset, w.len))
                }
                None => {
                    failure = Some(format!("mirror write {w:?} outside the local image"));
                    break;
                }
            };
            match staged {
                Ok(buf) => {
                    bytes += w.len as u64;
                    last_write = Some(w.id);
                    let (lo, hi) = (w.offset as u64, (w.offset + w.len) as u64);
                    span = Some(span.map_or((lo, hi), |(a, b): (u64, u64)| (a.min(lo), b.max(hi))));
                    posts.push(SendRequest::new(
                        w.id,
                        SendOp::Write(l.partner.at(w.offset as u64)),
                        buf,
                    ));
                }
                Err(e) => {
                    failure = Some(format!("stage mirror write {w:?}: {e}"));
                    break;
                }
            }
        }
        if let (Some(last), Some(barrier)) = (last_write, l.flush.as_ref()) {
            let id = FLUSH_TAG | l.next_flush;
            let req = match barrier {
                Barrier::Read(remote, landing) => landing
                    .slice(0, FLUSH_LEN)
                    .map(|buf| SendRequest::new(id, SendOp::Read(remote.at(0)), buf))
                    .map_err(|e| format!("durability READ landing: {e}")),
                Barrier::Flush(partner, none) => {
                    // The batch's range (the whole region would do for global visibility too,
                    // but a persistence FLUSH costs per byte).
                    let (lo, hi) = span.unwrap_or((0, partner.len));
                    Ok(SendRequest::new(
                        id,
                        SendOp::Flush(partner.at(lo), hi - lo),
                        none.clone(),
                    ))
                }
            };
            match req {
                Ok(req) => {
                    posts.push(req);
                    l.flushes.push_back((id, last));
                    l.next_flush += 1;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let n = posts.len();
        if n > 0 {
            match l.qp.post_send_all(posts) {
                Ok(()) => {
                    if self.sleepers.load(Ordering::SeqCst) > 0 {
                        // For a sleeping waiter (its write waited for room in the send queue):
                        // the driver may have found nothing in flight.
                        let _ = self.kick.0.try_send(());
                    }
                    if l.outstanding == 0 {
                        l.progress_at = Instant::now();
                    }
                    l.outstanding += n;
                    let barriers = u64::from(l.flush.is_some() && last_write.is_some());
                    counters.mirror_writes += n as u64 - barriers;
                    match l.flush {
                        Some(Barrier::Flush(..)) => counters.durability_flushes += barriers,
                        _ => counters.durability_reads += barriers,
                    }
                    counters.mirror_bytes += bytes;
                }
                Err(e) => {
                    posts.clear();
                    failure.get_or_insert(format!("post mirror writes: {e}"));
                }
            }
        }
        if let Some(why) = failure {
            self.link_failed(st, &why);
        }
        n > 0
    }

    /// Notes acknowledgements; wakes waiters when they advance.
    pub(super) fn note_acks(&self, st: &mut Inner) -> bool {
        let Some(log) = st.log.as_mut() else {
            return false;
        };
        while log.poll_acknowledged().is_some() {}
        let now = log.acknowledged().map_or(0, |p| p.seq);
        let checkpointed = log.checkpointed().seq;
        if now <= st.acked && checkpointed <= st.checkpointed {
            return false;
        }
        // Durable where it has to be; acknowledged (records, and checkpoints as mirrored)
        // only while this node may still serve its disks (a node that stalled may have been
        // taken over meanwhile: see the giveback client's serving lease).
        if let Some(lease) = self.serving_lease.get() {
            let valid = lease.is_valid(Instant::now());
            if valid == st.lease_held {
                st.lease_held = !valid;
                if valid {
                    tracing::info!(client = %self.cfg.name, "shadow log: serving lease back; acknowledging again");
                } else {
                    st.counters.lease_holds += 1;
                    tracing::warn!(client = %self.cfg.name, durable_unacknowledged = now.saturating_sub(st.acked), "shadow log: serving lease not running; acknowledgements held until the giveback client renews it");
                }
            }
            if !valid {
                return false;
            }
        }
        let advanced = checkpointed > st.checkpointed;
        st.checkpointed = st.checkpointed.max(checkpointed);
        if now <= st.acked {
            if advanced {
                self.notify(); // wait_checkpointed
            }
            return false;
        }
        let from = st.acked + 1;
        if st.absent {
            match st.unmirrored.back_mut() {
                Some(last) if last.1 + 1 == from => last.1 = now,
                _ => st.unmirrored.push_back((from, now)),
            }
            if st.unmirrored.len() > UNMIRRORED_RANGES {
                st.unmirrored.pop_front();
            }
            st.counters.unmirrored += now - st.acked;
        }
        st.counters.acknowledged += now - st.acked;
        st.acked = now;
        self.notify();
        true
    }

    /// Writes in flight with no completion for [`STALL`]: the queue pair lost them (its
    /// transport timeout would have completed them in error long before), so the connection
    /// is treated as failed and re-established, and the live log re-sent.
    pub(super) fn check_stall(&self, st: &mut Inner) {
        let stalled = st
            .link
            .as_ref()
            .filter(|l| !l.broken && l.outstanding > 0)
            .map(|l| (l.outstanding, l.progress_at.elapsed()))
            .filter(|(_, quiet)| *quiet >= STALL);
        if let Some((n, quiet)) = stalled {
            st.counters.stalls += 1;
            let why = format!("{n} mirror writes in flight without a completion for {quiet:?}");
            self.link_failed(st, &why);
        }
    }

    pub(super) fn check_partner(&self, st: &mut Inner) {
        // A refusing partner is there (misconfigured), not absent: no unmirrored appends.
        if st.absent || st.link_up() || st.refused.is_some() {
            return;
        }
        let Some(since) = st.suspended_since else {
            return;
        };
        if since.elapsed() < self.cfg.partner_timeout {
            return;
        }
        let why = format!("no connection for {:?}", self.cfg.partner_timeout);
        self.declare_absent(st, &why);
    }

    /// The partner is absent (timeout, or declared failed by the failure detector): mirror
    /// writes not completed are completed unmirrored.
    pub(super) fn declare_absent(&self, st: &mut Inner, why: &str) {
        if st.absent {
            return;
        }
        st.absent = true;
        st.link = None;
        // Writes are completed without being sent from now on: no earlier full send counts.
        st.sync_target = None;
        if let Some(log) = st.log.as_mut() {
            log.rewind_unacknowledged();
        }
        st.counters.partner_absences += 1;
        let pending = st
            .log
            .as_ref()
            .map_or(0, |l| l.stats().appended.saturating_sub(st.acked));
        tracing::warn!(
            client = %self.cfg.name,
            reason = why,
            pending,
            "shadow log: partner absent; appends complete unmirrored (durable on this node only) until it returns"
        );
        self.notify();
    }

    /// The current connection failed under us: stop using it and ask the manager to
    /// re-establish the client.
    pub(super) fn link_failed(&self, st: &mut Inner, why: &str) {
        let generation = match st.link.as_mut() {
            Some(l) if !l.broken => {
                l.broken = true;
                l.generation
            }
            _ => return,
        };
        if let Some(log) = st.log.as_mut() {
            log.rewind_unacknowledged();
        }
        st.suspended_since.get_or_insert_with(Instant::now);
        st.last_error = Some(why.to_string());
        tracing::warn!(client = %self.cfg.name, reason = why, "shadow mirror connection failed; asking the manager to re-establish it");
        self.handle.record_error();
        self.handle.report_failure_of(generation, why);
    }

    pub(super) fn on_event(&self, st: &mut Inner, ev: ClientEvent) {
        match ev {
            ClientEvent::Ready(conn) | ClientEvent::Updated(conn) => {
                st.refused = None;
                if let Err(why) = self.activate(st, conn) {
                    tracing::error!(client = %self.cfg.name, reason = %why, "shadow mirror connection unusable");
                    st.last_error = Some(why);
                }
                self.notify();
            }
            ClientEvent::Refused(mismatch) => {
                // The manager logged it; appends now fail with it (ShadowError::Refused).
                st.last_error = Some(mismatch.to_string());
                st.refused = Some(mismatch);
                self.changed.notify_all();
            }
            ClientEvent::Suspended { link, reason } => {
                tracing::info!(client = %self.cfg.name, link = %link, reason = ?reason, "shadow mirror suspended");
                st.link = None;
                if let Some(log) = st.log.as_mut() {
                    log.rewind_unacknowledged();
                }
                st.suspended_since.get_or_insert_with(Instant::now);
            }
        }
    }

    pub(super) fn activate(&self, st: &mut Inner, conn: Connection) -> Result<(), String> {
        let qp = conn.qp(0).ok_or("no queue pair 0")?.clone();
        let region = |p: &str| conn.region(p).cloned().ok_or(format!("no region {p}"));
        let tx = region(TX_REGION)?;
        let fetch_landing = region(FETCH_LANDING)?;
        let mirror = region(MIRROR_REGION)?;
        st.mirror = Some(mirror);
        let partner = conn
            .partner_region(MIRROR_REGION)
            .map(|r| r.descriptor)
            .ok_or(format!("partner has no {MIRROR_REGION} region"))?;
        if (partner.len as usize) < self.log_len || tx.len() < self.log_len {
            return Err(format!(
                "partner's {MIRROR_REGION} region is {} bytes, this node's log {} (both nodes must use the same log size)",
                partner.len, self.log_len
            ));
        }
        let mut unavailable = None;
        if self.cfg.durability == Durability::Flush {
            let flushable = conn
                .partner_region(MIRROR_REGION)
                .is_some_and(|r| r.access.contains(Access::REMOTE_FLUSH));
            unavailable = if !qp.queue_pair().supports_flush() {
                Some(format!(
                    "this node's queue pair on link {} has no RDMA FLUSH (soft provider, or a verbs \
                     library / provider older than rdma-core 45, or a device without FLUSH)",
                    conn.link
                ))
            } else if !flushable {
                Some(format!(
                    "the partner's {MIRROR_REGION} region does not grant FLUSH (its device or \
                     provider has none)"
                ))
            } else {
                None
            };
        }
        let flush = match (self.cfg.durability, &unavailable) {
            (Durability::Delivered, _) => None,
            (Durability::Flush, None) => {
                let none = tx
                    .slice(0, 0)
                    .map_err(|e| format!("empty buffer for FLUSH: {e}"))?;
                Some(Barrier::Flush(partner, none))
            }
            (Durability::Read | Durability::Flush, _) => {
                let remote = conn
                    .partner_region(FLUSH_REGION)
                    .map(|r| r.descriptor)
                    .ok_or(format!(
                        "partner has no {FLUSH_REGION} region (both nodes must use the same durability)"
                    ))?;
                if (remote.len as usize) < FLUSH_LEN {
                    return Err(format!(
                        "partner's {FLUSH_REGION} region is {} bytes",
                        remote.len
                    ));
                }
                Some(Barrier::Read(remote, region(FLUSH_LANDING)?))
            }
        };
        let in_use = match flush {
            None => Durability::Delivered,
            Some(Barrier::Read(..)) => Durability::Read,
            Some(Barrier::Flush(..)) => Durability::Flush,
        };
        if let Some(why) = &unavailable {
            if st.flush_unavailable.as_ref() != Some(why) {
                tracing::warn!(client = %self.cfg.name, link = %conn.link, reason = %why, "shadow mirror: RDMA FLUSH unavailable; durability READ behind the writes instead");
            }
        } else if in_use == Durability::Flush && st.durability_in_use != Some(Durability::Flush) {
            tracing::info!(client = %self.cfg.name, link = %conn.link, "shadow mirror: durability point is an RDMA FLUSH behind the writes");
        }
        st.durability_in_use = Some(in_use);
        st.flush_unavailable = unavailable;
        let qpn = qp.queue_pair().qpn();
        let epoch = qp.queue_pair().epoch();
        if let Some(l) = st.link.as_mut().filter(|l| {
            !l.broken
                && l.qpn == qpn
                && l.epoch == epoch
                && l.partner_incarnation == conn.partner_incarnation
        }) {
            // A live update: same queue pair, writes keep flowing.
            l.partner = partner;
            l.tx = tx;
            l.flush = flush;
            l.fetch_landing = fetch_landing;
            return Ok(());
        }
        st.link = Some(Link {
            id: conn.link,
            qp,
            qpn,
            epoch,
            tx,
            partner,
            flush,
            flushes: VecDeque::with_capacity(self.cfg.send_depth.max(4) as usize),
            next_flush: 1,
            fetch_landing,
            fetched: 0,
            outstanding: 0,
            broken: false,
            serial: st.counters.connections + 1,
            generation: conn.generation,
            partner_incarnation: conn.partner_incarnation,
            progress_at: Instant::now(),
        });
        // A new connection after an earlier one, or after the partner was absent (writes were
        // completed without being sent, even before any connection): the live log again.
        // (Before the recovery installed a log there is nothing to send: the installed log
        // queues all of itself.)
        if (st.connected_once || st.absent) && st.log.is_some() {
            self.resync(st)?;
        }
        st.connected_once = true;
        st.counters.connections += 1;
        st.suspended_since = None;
        if st.absent {
            st.absent = false;
            tracing::info!(client = %self.cfg.name, "shadow log: partner back; mirroring again");
        }
        tracing::info!(client = %self.cfg.name, link = %conn.link, "shadow mirror connected");
        self.post(st);
        Ok(())
    }

    /// Re-opens the local log so every live byte is queued again (see the module docs).
    pub(super) fn resync(&self, st: &mut Inner) -> Result<(), String> {
        let Some(log) = st.log.take() else {
            return Err("the local log is lost".into());
        };
        // Checked first so a failure keeps the log (open would consume it).
        if let Err(e) = replay(log.local().bytes(), None) {
            st.log = Some(log);
            return Err(format!("re-open the local log: {e}"));
        }
        let reopened = ShadowLog::open(log.into_local());
        let mut log = match reopened {
            Ok((log, _)) => log,
            Err(e) => {
                let why = format!("re-open the local log: {e}");
                tracing::error!(client = %self.cfg.name, reason = %why, "shadow log lost");
                return Err(why);
            }
        };
        if let Some(pos) = st.last_checkpoint {
            if let Err(e) = log.checkpoint(pos) {
                tracing::warn!(client = %self.cfg.name, error = %e, "checkpoint again after re-open");
            }
        }
        let queued = log.stats().writes_queued as u64;
        st.sync_target = Some(log.last_queued_write());
        st.counters.resyncs += 1;
        st.counters.resent_writes += queued;
        tracing::info!(client = %self.cfg.name, writes = queued, acknowledged = st.acked, "shadow log re-sent on the new connection");
        st.log = Some(log);
        Ok(())
    }

    pub(super) fn read_partner(&self, after: Option<LogPosition>) -> Result<Replay, ShadowError> {
        let region = self.inner.lock().mirror.clone();
        let empty = Replay {
            generation: 0,
            checkpoint: 0,
            records: Vec::new(),
            torn_tail: false,
            stop: ScanStop::Absent { offset: 0 },
        };
        let Some(region) = region else {
            tracing::warn!(client = %self.cfg.name, "no mirror region yet: nothing of the partner's log to replay");
            return Ok(empty);
        };
        let mut image = vec![0u8; region.len()];
        region
            .read(0, &mut image)
            .map_err(ShadowError::ReadMirror)?;
        match replay(&image, after) {
            Err(LogError::Replay(LogImageError::SuperblockMagic)) => {
                tracing::warn!(client = %self.cfg.name, "the partner never wrote its log here: nothing to replay");
                Ok(empty)
            }
            other => Ok(other?),
        }
    }
}

/// The driver thread: follows manager events, reaps completions, checks the partner timeout.
/// While writes are in flight and a waiter sleeps (it stopped spinning: [`Sleeper`]), it
/// blocks on the completion queue and wakes the waiters as it reaps. Otherwise it waits for
/// a manager event or a kick, and pumps every [`BUSY_WAIT`] while writes are in flight (so
/// completions nobody waits for, such as a checkpoint's, are reaped), every [`IDLE_WAIT`]
/// when nothing is. It does not block on the completion queue for a spinning waiter: that
/// waiter polls the queue itself, and the driver woken by every completion as well only
/// takes CPU from it (on Soft-RoCE under emulation, CPU that rxe's sending needs).
pub(super) fn drive(shared: &Arc<Shared>) {
    let mut waited = Vec::with_capacity(POLL_BATCH);
    let mut waited_on = None;
    let mut events = shared.handle.event_wait(&shared.kick.1);
    while !shared.stop.load(Ordering::Relaxed) {
        let (cq, in_flight) = {
            let mut st = shared.inner.lock();
            shared.reap(&mut st, &mut waited, waited_on.take());
            shared.pump(&mut st);
            let live = st.link.as_ref().filter(|l| !l.broken && l.outstanding > 0);
            let cq = live
                .filter(|_| shared.sleepers.load(Ordering::SeqCst) > 0)
                .map(|l| (l.qp.send_cq().clone(), l.serial));
            (cq, live.is_some())
        };
        match cq {
            Some((cq, serial)) => {
                waited_on = Some(serial);
                if let Err(e) = cq.wait(&mut waited, POLL_BATCH, Duration::from_millis(2)) {
                    tracing::debug!(client = %shared.cfg.name, error = %e, "wait on send queue");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None => {
                // Events are taken by the next round's pump, under the lock (an appender's
                // pump takes them too: taken here, one could be applied after a later one).
                let timeout = if in_flight { BUSY_WAIT } else { IDLE_WAIT };
                events.wait(timeout);
            }
        }
        if shared.blocked_starts.load(Ordering::SeqCst) > 0 {
            shared.wake_tasks();
        }
    }
    shared.notify();
}
