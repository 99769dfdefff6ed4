//! Waiting on a [`ShadowMirror`]: for a connection, for a checkpoint to be mirrored, and
//! for an append without blocking a thread ([`AppendFuture`]).

use super::driver::Shared;
use super::{try_append, AppendTicket, Appended, ShadowMirror, Sleeper};
use crate::clients::mirror::error::ShadowError;
use crate::clients::mirror::log_replay::LogPosition;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

impl ShadowMirror {
    /// Waits for a connection, at most [`ShadowConfig::link_timeout`](super::ShadowConfig::link_timeout).
    pub fn wait_connected(&self) -> Result<(), ShadowError> {
        self.wait_connected_timeout(self.shared.cfg.link_timeout)
    }

    /// Waits at most `timeout` for a connection: [`ShadowError::NotConnected`] says how long,
    /// whether the partner is declared absent and the last connection error.
    pub fn wait_connected_timeout(&self, timeout: Duration) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let start = Instant::now();
        let mut st = shared.inner.lock();
        loop {
            shared.pump(&mut st);
            if st.link_up() {
                return Ok(());
            }
            if shared.stop.load(Ordering::Relaxed) {
                return Err(shared.stopped());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ShadowError::NotConnected {
                    name: shared.cfg.name.clone(),
                    waited,
                    partner_absent: st.absent,
                    last_error: st.last_error.clone(),
                });
            }
            shared
                .changed
                .wait_for(&mut st, (timeout - waited).min(Duration::from_millis(5)));
        }
    }

    /// Waits until a checkpoint through `through` (or a later one) is mirrored, at most
    /// [`ShadowConfig::link_timeout`](super::ShadowConfig::link_timeout) plus
    /// [`ShadowConfig::partner_timeout`](super::ShadowConfig::partner_timeout) (as
    /// [`wait`](Self::wait)); see [`wait_checkpointed_timeout`](Self::wait_checkpointed_timeout).
    pub fn wait_checkpointed(&self, through: LogPosition) -> Result<(), ShadowError> {
        let limit = self.shared.cfg.link_timeout + self.shared.cfg.partner_timeout;
        self.wait_checkpointed_timeout(through, limit)
    }

    /// Waits at most `timeout` until a checkpoint through `through` (or a later one), asked
    /// for with [`checkpoint`](Self::checkpoint), is durable in this node's NVRAM **and**
    /// complete in the partner's copy of the log (under the connection's
    /// [`Durability`](super::Durability), like an append; what
    /// [`checkpointed`](Self::checkpointed) reports). From then on a takeover by the partner
    /// replays no record at or before `through`, and the space before it is reclaimed.
    ///
    /// The partner's CPU learns of the checkpoint only when it reads its copy (at a
    /// takeover): there is no message. While the partner is absent the checkpoint cannot be
    /// mirrored (it is, with the live log, when the partner returns): the wait ends with
    /// [`ShadowError::CheckpointTimeout`], which says whether the partner is absent;
    /// [`ShadowError::Relinquished`] when `through` is not of the current generation.
    pub fn wait_checkpointed_timeout(
        &self,
        through: LogPosition,
        timeout: Duration,
    ) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let start = Instant::now();
        let mut st = shared.inner.lock();
        let mut asleep = None;
        loop {
            if through.generation != shared.generation.load(Ordering::Acquire) {
                return Err(ShadowError::Relinquished {
                    name: shared.cfg.name.clone(),
                    generation: through.generation,
                    seq: through.seq,
                });
            }
            if st.checkpointed >= through.seq {
                return Ok(());
            }
            if shared.stop.load(Ordering::Relaxed) {
                return Err(shared.stopped());
            }
            if shared.pump(&mut st) {
                continue;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ShadowError::CheckpointTimeout {
                    generation: through.generation,
                    seq: through.seq,
                    mirrored: st.checkpointed,
                    partner_absent: st.absent,
                    waited,
                });
            }
            // The driver blocks on the completion queue while a waiter sleeps.
            asleep.get_or_insert_with(|| Sleeper::new(shared));
            shared
                .changed
                .wait_for(&mut st, (timeout - waited).min(Duration::from_millis(1)));
        }
    }

    /// An append as a [`Future`] for any executor: it resolves when the record is
    /// acknowledged, as [`append`](Self::append) returns (see [`AppendFuture`]).
    pub fn append_future(&self, payload: &[u8]) -> AppendFuture {
        AppendFuture {
            shared: Arc::downgrade(&self.shared),
            name: self.shared.cfg.name.clone(),
            stage: Stage::Start(payload.to_vec()),
            started: Instant::now(),
            counted: None,
        }
    }
}

enum Stage {
    /// Not appended yet: the payload.
    Start(Vec<u8>),
    /// Appended: waiting for the acknowledgement.
    Wait(AppendTicket),
    Done,
}

/// Which of the driver's counters a pending future is counted in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// [`Shared::blocked_starts`]: the append waits for a state without a notification.
    Blocked,
    /// [`Shared::sleepers`]: the acknowledgement is awaited (the driver reaps for it).
    Sleeping,
}

/// An append made by [`ShadowMirror::append_future`]: the record is appended (durable in
/// local NVRAM, its mirror writes posted) on the first poll that can (a link is up or the
/// partner is declared absent, the own log is recovered), and the future resolves with its
/// [`Appended`] once acknowledged (`mirrored == false` when the partner was declared absent
/// meanwhile) or with the error [`append`](ShadowMirror::append) would return.
///
/// No thread waits for it: the shadow driver wakes its task when acknowledgements advance,
/// a link comes up, the partner is declared absent or the driver stops (an append waiting
/// for the recovery's mailbox records or log space is re-polled at the driver's pace). It
/// has no deadline of its own: wrap it in the executor's timeout (e.g.
/// `tokio::time::timeout`). Dropping it cancels the wait, not the append: a record already
/// appended stays in the log and is mirrored like any other.
#[must_use = "a future does nothing unless polled"]
pub struct AppendFuture {
    /// The mirror's state: not kept alive by the future (dropping the mirror closes its
    /// client even while futures exist; they resolve with `AppendStopped`).
    shared: Weak<Shared>,
    name: String,
    stage: Stage,
    started: Instant,
    counted: Option<Counted>,
}

impl std::fmt::Debug for AppendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Start(_) => "start",
            Stage::Wait(_) => "wait",
            Stage::Done => "done",
        };
        f.debug_struct("AppendFuture")
            .field("client", &self.name)
            .field("stage", &stage)
            .finish()
    }
}

impl AppendFuture {
    fn count(&mut self, counted: Option<Counted>) {
        if self.counted == counted {
            return;
        }
        self.uncount();
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match counted {
            Some(Counted::Blocked) => {
                shared.blocked_starts.fetch_add(1, Ordering::SeqCst);
            }
            Some(Counted::Sleeping) => {
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                let _ = shared.kick.0.try_send(());
            }
            None => {}
        }
        self.counted = counted;
    }

    fn uncount(&mut self) {
        let Some(counted) = self.counted.take() else {
            return;
        };
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match counted {
            Counted::Blocked => shared.blocked_starts.fetch_sub(1, Ordering::SeqCst),
            Counted::Sleeping => shared.sleepers.fetch_sub(1, Ordering::SeqCst),
        };
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Appended, ShadowError>> {
        let Some(shared) = self.shared.upgrade() else {
            return Poll::Ready(Err(ShadowError::AppendStopped {
                name: self.name.clone(),
            }));
        };
        let mut st = shared.inner.lock();
        // Registered before looking, under the lock every notification takes first: a
        // change after the look wakes this task.
        {
            let mut wakers = shared.wakers.lock();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        loop {
            match &self.stage {
                Stage::Start(payload) => {
                    if shared.stop.load(Ordering::Relaxed) {
                        return Poll::Ready(Err(shared.stopped()));
                    }
                    match try_append(&shared, &mut st, payload, self.started)? {
                        Ok(ticket) => self.stage = Stage::Wait(ticket),
                        Err(blocked) => {
                            // A link coming up or the partner declared absent notifies; the
                            // other states are re-polled by the driver.
                            let notified = blocked.recovered
                                && blocked.in_mailbox
                                && blocked.recorded
                                && blocked.full.is_none();
                            drop(st);
                            self.count((!notified).then_some(Counted::Blocked));
                            return Poll::Pending;
                        }
                    }
                }
                Stage::Wait(ticket) => {
                    let ticket = *ticket;
                    if shared.generation.load(Ordering::Acquire) != ticket.position.generation {
                        return Poll::Ready(Err(ShadowError::Relinquished {
                            name: shared.cfg.name.clone(),
                            generation: ticket.position.generation,
                            seq: ticket.position.seq,
                        }));
                    }
                    if st.acked >= ticket.position.seq {
                        let mirrored = !st.is_unmirrored(ticket.position.seq);
                        crate::manager::client::record_us(&mut st.latency, self.started.elapsed());
                        return Poll::Ready(Ok(Appended {
                            position: ticket.position,
                            mirrored,
                        }));
                    }
                    if shared.stop.load(Ordering::Relaxed) {
                        return Poll::Ready(Err(shared.stopped()));
                    }
                    if shared.pump(&mut st) {
                        continue;
                    }
                    drop(st);
                    self.count(Some(Counted::Sleeping));
                    return Poll::Pending;
                }
                Stage::Done => return Poll::Ready(Err(shared.stopped())),
            }
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<Appended, ShadowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = self.step(cx);
        if r.is_ready() {
            self.uncount();
            self.stage = Stage::Done;
        }
        r
    }
}

impl Drop for AppendFuture {
    fn drop(&mut self) {
        self.uncount();
    }
}
