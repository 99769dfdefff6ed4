//! Outstanding work requests of one queue pair: maps provider tokens back to the caller's
//! `wr_id` and keeps every named buffer alive until its completion is polled.

use super::handles::LocalBuf;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bit 0 of a token says which queue it belongs to.
const RECV_BIT: u64 = 1;

struct Entry {
    token: u64,
    wr_id: u64,
    _buf: LocalBuf,
}

/// The outstanding requests of one queue pair, per queue, in posting order.
pub(crate) struct Tracker {
    next: AtomicU64,
    send: Mutex<VecDeque<Entry>>,
    recv: Mutex<VecDeque<Entry>>,
    send_depth: usize,
    recv_depth: usize,
}

/// Which queue a token belongs to.
pub(crate) enum Queue {
    Send,
    Recv,
}

impl Tracker {
    pub(crate) fn new(send_depth: usize, recv_depth: usize) -> Tracker {
        Tracker {
            next: AtomicU64::new(2),
            send: Mutex::new(VecDeque::with_capacity(send_depth)),
            recv: Mutex::new(VecDeque::with_capacity(recv_depth)),
            send_depth,
            recv_depth,
        }
    }

    fn queue(&self, q: &Queue) -> (&Mutex<VecDeque<Entry>>, usize, u64) {
        match q {
            Queue::Send => (&self.send, self.send_depth, 0),
            Queue::Recv => (&self.recv, self.recv_depth, RECV_BIT),
        }
    }

    /// Reserves room for `n` requests and returns the guard to push them with; fails when
    /// the queue would overflow.
    pub(crate) fn admit(
        &self,
        q: Queue,
        n: usize,
        op: &'static str,
    ) -> Result<Admission<'_>, super::FabricError> {
        let (m, depth, bit) = self.queue(&q);
        let guard = m.lock();
        if guard.len() + n > depth {
            return Err(super::FabricError::QueueFull {
                op,
                outstanding: guard.len(),
                depth,
            });
        }
        Ok(Admission {
            tracker: self,
            guard,
            bit,
        })
    }

    /// Resolves a completion token to the caller's `wr_id`, releasing its buffer and, on the
    /// send queue, those of unsignaled requests posted before it (which are complete too).
    pub(crate) fn complete(&self, token: u64) -> Option<u64> {
        let q = if token & RECV_BIT != 0 {
            &self.recv
        } else {
            &self.send
        };
        let mut g = q.lock();
        while let Some(front) = g.front() {
            if front.token > token {
                return None;
            }
            let e = g.pop_front()?;
            if e.token == token {
                return Some(e.wr_id);
            }
        }
        None
    }

    /// Number of outstanding requests (send, recv).
    pub(crate) fn outstanding(&self) -> (usize, usize) {
        (self.send.lock().len(), self.recv.lock().len())
    }

    /// Forgets every outstanding request; only after the provider guarantees the device no
    /// longer touches their buffers (reset or destroy).
    pub(crate) fn clear(&self) {
        self.send.lock().clear();
        self.recv.lock().clear();
    }
}

/// Room reserved in one queue, held locked while the requests are posted so tokens follow
/// posting order. Entries stay even when the post fails part way: a request the device may
/// have accepted keeps its buffer until a later completion passes it.
pub(crate) struct Admission<'a> {
    tracker: &'a Tracker,
    guard: parking_lot::MutexGuard<'a, VecDeque<Entry>>,
    bit: u64,
}

impl<'a> Admission<'a> {
    /// Records one request and returns its provider token.
    pub(crate) fn push(&mut self, wr_id: u64, buf: LocalBuf) -> u64 {
        let token = (self.tracker.next.fetch_add(1, Ordering::Relaxed) << 1) | self.bit;
        self.guard.push_back(Entry {
            token,
            wr_id,
            _buf: buf,
        });
        token
    }
}
