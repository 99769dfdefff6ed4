//! [`CallFuture`]: a call's response as a [`Future`], for any executor.
//!
//! The future shares a slot with the call's response callback (the one
//! [`Messenger::call_async`](super::Messenger::call_async) runs exactly once, on whichever
//! thread polls the messenger): the callback stores the outcome and wakes the task. No thread
//! per future, no polling: the messenger's driver completes it like any callback.

use super::error::MessagingError;
use super::messenger::CallError;
use super::outbox::CallFailure;
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

type Outcome = Result<Vec<u8>, CallError>;

#[derive(Default)]
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// The response of a call made by [`Messenger::call_future`](super::Messenger::call_future).
///
/// It resolves with the response bytes or the reason there is none: the call's
/// [`CallFailure`] (the partner's handler failed it, the partner was declared failed, ...),
/// or [`MessagingError::Stopped`] when the messenger stopped first. It has no deadline of
/// its own: wrap it in the executor's timeout (e.g. `tokio::time::timeout`). Dropping it
/// cancels the wait: the response, if it still comes, is discarded, and nothing else
/// changes (the messenger and its other calls go on).
#[must_use = "a future does nothing unless polled"]
pub struct CallFuture {
    slot: Arc<Mutex<Slot>>,
    /// Forgets the response callback (set while the call is pending).
    cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for CallFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture")
            .field("pending", &self.cancel.is_some())
            .finish()
    }
}

impl CallFuture {
    /// A pending future and the completer its call's response callback owns.
    pub(super) fn pending(name: &str) -> (CallFuture, Completer) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let completer = Completer {
            slot: slot.clone(),
            name: name.to_owned(),
            done: false,
        };
        (CallFuture { slot, cancel: None }, completer)
    }

    /// A future that resolves at once (the call could not be queued).
    pub(super) fn ready(outcome: Outcome) -> CallFuture {
        let slot = Slot {
            outcome: Some(outcome),
            waker: None,
        };
        CallFuture {
            slot: Arc::new(Mutex::new(slot)),
            cancel: None,
        }
    }

    /// What dropping the future before it resolved does.
    pub(super) fn on_cancel(&mut self, cancel: Box<dyn FnOnce() + Send>) {
        self.cancel = Some(cancel);
    }
}

impl Future for CallFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut slot = self.slot.lock();
        if let Some(outcome) = slot.outcome.take() {
            drop(slot);
            self.cancel = None; // resolved: nothing to forget
            return Poll::Ready(outcome);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            self.slot.lock().waker = None; // nobody to wake any more
            cancel();
        }
    }
}

/// The call's side of a [`CallFuture`]: completes it once. Dropped without completing (the
/// messenger stopped and dropped its callbacks), it resolves the future with
/// [`MessagingError::Stopped`], so no future waits for a messenger that is gone.
pub(super) struct Completer {
    slot: Arc<Mutex<Slot>>,
    name: String,
    done: bool,
}

impl Completer {
    /// Stores the call's outcome and wakes the future's task.
    pub(super) fn complete(mut self, result: Result<&[u8], CallFailure>) {
        self.done = true;
        self.set(result.map(<[u8]>::to_vec).map_err(CallError::Failed));
    }

    fn set(&self, outcome: Outcome) {
        let waker = {
            let mut slot = self.slot.lock();
            slot.outcome = Some(outcome);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if !self.done {
            let name = std::mem::take(&mut self.name);
            self.set(Err(CallError::Messaging(MessagingError::Stopped { name })));
        }
    }
}
