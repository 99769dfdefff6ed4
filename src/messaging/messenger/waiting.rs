//! Waiting on a [`Messenger`] without a thread ([`call_future`](Messenger::call_future)) and
//! for its connection.

use super::{Messenger, HOLDING};
use crate::messaging::call_future::CallFuture;
use crate::messaging::error::{MessagingError, Result};
use crate::messaging::outbox::Head;
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Messenger {
    /// An asynchronous call as a [`Future`](std::future::Future) for any executor: it
    /// resolves with the response or the reason there is none (see [`CallFuture`]; no
    /// deadline of its own, dropping it cancels the wait). Queueing does not block; a call
    /// that cannot be queued resolves at once with the error.
    pub fn call_future(&self, head: Head, payload: &[u8]) -> CallFuture {
        let (mut future, completer) = CallFuture::pending(&self.shared.name);
        let call = match self.call_async(head, payload, move |r| completer.complete(r)) {
            Ok(call) => call,
            Err(e) => return CallFuture::ready(Err(e.into())),
        };
        let shared = Arc::downgrade(&self.shared);
        future.on_cancel(Box::new(move || {
            // Forget the callback (a late response is then discarded like an unmatched
            // one); from a handler of this messenger its state is held: leave it, it runs
            // once into a slot nobody reads.
            if let Some(shared) = shared.upgrade().filter(|_| !HOLDING.with(Cell::get)) {
                let callback = shared.force_lock().callbacks.responses.remove(&call);
                drop(callback);
            }
        }));
        future
    }

    /// Waits for a connection, at most [`MessengerConfig::call_timeout`](super::MessengerConfig::call_timeout).
    pub fn wait_connected(&self) -> Result<()> {
        self.wait_connected_timeout(self.shared.cfg.call_timeout)
    }

    /// Waits at most `timeout` for a connection: [`MessagingError::NotConnected`] says how
    /// long and how many times the partner was declared failed meanwhile.
    pub fn wait_connected_timeout(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if stats.connected {
                return Ok(());
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(MessagingError::Stopped {
                    name: self.shared.name.clone(),
                });
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(MessagingError::NotConnected {
                    name: self.shared.name.clone(),
                    waited,
                    connections: stats.connections,
                    partner_failures: stats.partner_failures,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
