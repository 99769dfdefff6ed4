//! A minimal executor for the futures of the clients: it polls on the test's thread and
//! parks it until a waker fires, so a future that is never woken fails the test at the
//! deadline instead of hanging it (no runtime, no polling loop).

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Wakes the thread that runs the executor, and counts the wake-ups.
pub struct ThreadWaker {
    thread: Thread,
    pub wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// A waker for the current thread.
pub fn thread_waker() -> (Arc<ThreadWaker>, Waker) {
    let w = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    });
    (w.clone(), Waker::from(w))
}

/// Polls `f` once with `waker`.
pub fn poll_once<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

/// Runs all `futures` to completion together; panics if they are not all done `within`.
/// Between rounds the thread sleeps until one of them is woken: a future that is ready but
/// was never woken fails the test too (it is polled again only after a wake-up).
pub fn block_on_all<F: Future + Unpin>(futures: Vec<F>, within: Duration) -> Vec<F::Output> {
    let (wakes, waker) = thread_waker();
    let deadline = Instant::now() + within;
    let mut pending: Vec<Option<F>> = futures.into_iter().map(Some).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    loop {
        let seen = wakes.wakes.load(Ordering::SeqCst);
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                if let Poll::Ready(r) = poll_once(f, &waker) {
                    *result = Some(r);
                    *slot = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            return out.into_iter().map(|r| r.expect("ready")).collect();
        }
        // Sleep until woken (a wake-up since the round began counts).
        while wakes.wakes.load(Ordering::SeqCst) == seen {
            let now = Instant::now();
            assert!(
                now < deadline,
                "{} futures not woken within {within:?}",
                pending.iter().flatten().count()
            );
            std::thread::park_timeout(deadline - now);
        }
    }
}

/// Runs one future to completion (see [`block_on_all`]).
pub fn block_on<F: Future + Unpin>(f: F, within: Duration) -> F::Output {
    block_on_all(vec![f], within).pop().expect("one output")
}
