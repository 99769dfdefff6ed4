//! Waiting on a [`MirroredWriteBack`]: for the connections, for the partner's image to be
//! in sync, and for a write without blocking a thread ([`WriteFuture`]).

use super::state::Core;
use super::{MirroredWriteBack, Shared, WriteTicket};
use crate::clients::mirror::atomic::UnitId;
use crate::clients::mirror::error::{AtomicError, WriteBackError};
use crate::clients::mirror::writeback::CompletionStatus;
use crate::clients::mirror::writeback::RequestId;
use crate::messaging::Messenger;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

impl MirroredWriteBack {
    /// Waits for the partner's image to hold every dirty block of this node
    /// ([`WriteBackStats::in_sync`](super::WriteBackStats::in_sync)), at most
    /// [`WriteBackConfig::write_timeout`](super::WriteBackConfig::write_timeout).
    pub fn wait_in_sync(&self) -> Result<(), WriteBackError> {
        self.wait_in_sync_timeout(self.shared.cfg.write_timeout)
    }

    /// Waits at most `timeout` for the partner's image to be in sync
    /// ([`WriteBackError::NotInSync`] past it, with the writes in progress and whether the
    /// partner is declared failed).
    pub fn wait_in_sync_timeout(&self, timeout: Duration) -> Result<(), WriteBackError> {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if stats.in_sync {
                return Ok(());
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(self.shared.stopped());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(WriteBackError::NotInSync {
                    name: self.shared.cfg.name.clone(),
                    waited,
                    pending: stats.pending,
                    partner_failed: stats.partner_failed,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the data connection and the messenger, at most
    /// [`WriteBackConfig::write_timeout`](super::WriteBackConfig::write_timeout).
    pub fn wait_connected(&self) -> Result<(), WriteBackError> {
        self.wait_connected_timeout(self.shared.cfg.write_timeout)
    }

    /// Waits at most `timeout` for the data connection and the messenger
    /// ([`WriteBackError::NotConnected`] past it, with whether the partner is declared failed
    /// and the last error).
    pub fn wait_connected_timeout(&self, timeout: Duration) -> Result<(), WriteBackError> {
        let start = Instant::now();
        loop {
            let messenger = self.messenger.as_ref().is_some_and(|m| m.stats().connected);
            let (data, absent, last_error) = {
                let mut c = self.shared.core.lock();
                self.shared.pump(&mut c, &mut Vec::new());
                (
                    c.link_up() && !c.partner_failed(),
                    c.partner_failed(),
                    c.last_error.clone(),
                )
            };
            if messenger && data {
                return Ok(());
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(self.shared.stopped());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let last_error = match (messenger, last_error) {
                    (false, e) => Some(format!(
                        "messenger not connected{}",
                        e.map(|e| format!("; data client: {e}")).unwrap_or_default()
                    )),
                    (true, e) => e,
                };
                return Err(WriteBackError::NotConnected {
                    name: self.shared.cfg.name.clone(),
                    waited,
                    partner_absent: absent,
                    last_error,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A write as a [`Future`] for any executor: it resolves with the write's status, as
    /// [`write`](Self::write) returns (see [`WriteFuture`]).
    pub fn write_future(&self, unit: UnitId, first_block: u64, data: &[u8]) -> WriteFuture {
        let mut future = WriteFuture {
            shared: Arc::downgrade(&self.shared),
            name: self.shared.cfg.name.clone(),
            messenger: self
                .messenger
                .as_ref()
                .map_or_else(Weak::new, Arc::downgrade),
            stage: Stage::Start {
                unit,
                first_block,
                data: Vec::new(),
            },
        };
        // The first attempt from here: usually the write is started at once and the copy
        // of `data` not needed.
        future.stage = match self.write_start(unit, first_block, data) {
            Ok(ticket) => Stage::Wait(ticket),
            Err(e) if busy(&e) => Stage::Start {
                unit,
                first_block,
                data: data.to_vec(),
            },
            Err(e) => Stage::Failed(e),
        };
        future
    }
}

impl Shared {
    /// The ticket's outcome if it is in and may be returned (see [`MirroredWriteBack::wait`]);
    /// collected (removed) then.
    pub(super) fn collect(
        &self,
        c: &mut Core,
        request: RequestId,
    ) -> Option<Result<CompletionStatus, WriteBackError>> {
        if let Some(epoch) = c.discarded.remove(&request) {
            return Some(Err(WriteBackError::WriteDiscarded { request, epoch }));
        }
        let status = *c.done.get(&request)?;
        // F5.7: a write completed without the partner's mirror (the partner failed, or the
        // mirror refused it: it is re-mirrored by a resync) is acknowledged only once the
        // mailbox marks that mirror outdated (no automatic takeover from it).
        let marked = status == CompletionStatus::Mirrored
            || self.copy_mark.get().is_none_or(|m| {
                m.mark_writeback();
                m.is_writeback_durable()
            });
        // And only while this node may still serve its disks (a node that stalled may have
        // been taken over meanwhile, its mirrored blocks destaged by the partner: the
        // giveback client's serving lease).
        let leased = self.lease_runs();
        // And only once the mailbox records the table's epoch (a takeover names it; the
        // recovery waits for it, so this holds from then on).
        let recorded = c.epochs.as_ref().is_none_or(|e| e.own().is_durable());
        if marked && leased && recorded {
            c.done.remove(&request);
            return Some(Ok(status));
        }
        None
    }
}

/// Errors that end when writes in progress complete.
fn busy(e: &WriteBackError) -> bool {
    matches!(
        e,
        WriteBackError::Atomic(
            AtomicError::RangeBusy { .. }
                | AtomicError::NoFreeBuffers { .. }
                | AtomicError::NoFreeRie { .. }
        )
    )
}

enum Stage {
    /// Not started yet: it waits for blocks, buffers or request entries other writes hold.
    Start {
        unit: UnitId,
        first_block: u64,
        data: Vec<u8>,
    },
    /// Started: waiting for its status.
    Wait(WriteTicket),
    /// Failed at the start.
    Failed(WriteBackError),
    Done,
}

/// A write made by [`MirroredWriteBack::write_future`]: committed in local NVRAM and sent
/// to the mirror (once blocks, buffers or request entries held by writes in progress are
/// free), it resolves with the write's [`CompletionStatus`] (`MirrorLost` when the partner
/// failed meanwhile) or with the error [`write`](MirroredWriteBack::write) would return.
///
/// No thread waits for it: the write-back driver wakes its task when statuses come in or it
/// stops. It has no deadline of its own: wrap it in the executor's timeout (e.g.
/// `tokio::time::timeout`). Dropping it cancels the wait, not the write: a write already
/// started completes as any other, and its status is not kept.
#[must_use = "a future does nothing unless polled"]
pub struct WriteFuture {
    /// The write-back's state: not kept alive by the future (dropping the write-back closes
    /// its clients even while futures exist; they resolve with `WriteStopped`).
    shared: Weak<Shared>,
    name: String,
    /// To send the request's messages when the start is retried from a poll.
    messenger: Weak<Messenger>,
    stage: Stage,
}

impl std::fmt::Debug for WriteFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Start { .. } => "start",
            Stage::Wait(_) => "wait",
            Stage::Failed(_) => "failed",
            Stage::Done => "done",
        };
        f.debug_struct("WriteFuture")
            .field("name", &self.name)
            .field("stage", &stage)
            .finish()
    }
}

impl WriteFuture {
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<CompletionStatus, WriteBackError>> {
        let Some(shared) = self.shared.upgrade() else {
            return Poll::Ready(Err(WriteBackError::WriteStopped {
                name: self.name.clone(),
            }));
        };
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Failed(e) => return Poll::Ready(Err(e)),
                Stage::Done => return Poll::Ready(Err(shared.stopped())),
                Stage::Start {
                    unit,
                    first_block,
                    data,
                } => {
                    let c = shared.core.lock();
                    // Registered under the lock the statuses are recorded under: a write
                    // completing after the look below wakes this task.
                    register(&shared, cx);
                    let pending = c.primary.pending();
                    drop(c);
                    match shared.start_write(unit, first_block, &data) {
                        Ok((ticket, flush)) => {
                            if flush {
                                match self.messenger.upgrade() {
                                    Some(m) => shared.flush(&m),
                                    None => return Poll::Ready(Err(shared.stopped())),
                                }
                            }
                            self.stage = Stage::Wait(ticket);
                        }
                        Err(e) if busy(&e) && pending > 0 => {
                            self.stage = Stage::Start {
                                unit,
                                first_block,
                                data,
                            };
                            return Poll::Pending;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Stage::Wait(ticket) => {
                    let mut c = shared.core.lock();
                    register(&shared, cx);
                    if let Some(outcome) = shared.collect(&mut c, ticket.request) {
                        return Poll::Ready(outcome);
                    }
                    if shared.stop.load(Ordering::Relaxed) {
                        return Poll::Ready(Err(shared.stopped()));
                    }
                    self.stage = Stage::Wait(ticket);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Registers the task's waker (once).
fn register(shared: &Shared, cx: &Context<'_>) {
    let mut wakers = shared.wakers.lock();
    if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
        wakers.push(cx.waker().clone());
    }
}

impl Future for WriteFuture {
    type Output = Result<CompletionStatus, WriteBackError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.step(cx)
    }
}

impl Drop for WriteFuture {
    fn drop(&mut self) {
        if let (Stage::Wait(ticket), Some(shared)) = (&self.stage, self.shared.upgrade()) {
            // Not collected: its status (in or to come) is not kept.
            let mut c = shared.core.lock();
            let request = ticket.request;
            if c.done.remove(&request).is_none() && c.discarded.remove(&request).is_none() {
                c.abandoned.insert(request);
            }
        }
    }
}
