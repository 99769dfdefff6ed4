//! Packet buffers of the soft provider, recycled through a process-wide pool so the data path
//! does not allocate per packet once the pool holds as many buffers as are ever in flight
//! (queued for retransmission, on a transport queue, in an engine's inbox).
//!
//! Small packets (up to `SMALL` bytes: every request or response of up to about 8 KiB of
//! payload, every ACK) take a buffer of that fixed capacity; larger ones take the smallest
//! pooled large buffer that fits, or grow one. The pool keeps at most `MAX_SMALL` small and
//! `MAX_LARGE` large buffers of up to `MAX_KEPT` bytes (a packet of a 1 MiB message);
//! buffers beyond that are freed.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;

/// Capacity of a small buffer.
pub(crate) const SMALL: usize = 8192;
/// Small buffers kept at most (8 MiB).
const MAX_SMALL: usize = 1024;
/// Large buffers kept at most.
const MAX_LARGE: usize = 16;
/// Largest buffer kept: a packet of a 1 MiB message.
const MAX_KEPT: usize = (1 << 20) + 64;

/// Small buffers made at first use (512 KiB), so a burst of packets in flight (a TCP writer
/// thread that falls behind, a retransmission) finds buffers without allocating.
const PREFILL: usize = 64;

struct Pool {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
    primed: bool,
}

impl Pool {
    /// Reserves the free lists at their largest (they never grow after this) and makes
    /// `PREFILL` small buffers.
    fn prime(&mut self) {
        if !self.primed {
            self.primed = true;
            self.small.reserve_exact(MAX_SMALL);
            self.large.reserve_exact(MAX_LARGE);
            self.small
                .extend((0..PREFILL).map(|_| Vec::with_capacity(SMALL)));
        }
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    small: Vec::new(),
    large: Vec::new(),
    primed: false,
});

/// One packet's bytes; its memory returns to the pool when dropped.
#[derive(Debug, Default)]
pub(crate) struct PacketBuf(Vec<u8>);

impl PacketBuf {
    /// An empty buffer with room for at least `cap` bytes.
    pub(crate) fn with_capacity(cap: usize) -> PacketBuf {
        let mut pool = POOL.lock();
        pool.prime();
        if cap <= SMALL {
            let v = pool.small.pop();
            drop(pool);
            return PacketBuf(v.unwrap_or_else(|| Vec::with_capacity(SMALL)));
        }
        let fit = pool
            .large
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= cap)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut v = match fit {
            Some(i) => pool.large.swap_remove(i),
            None => pool.large.pop().unwrap_or_default(),
        };
        drop(pool);
        v.reserve_exact(cap);
        PacketBuf(v)
    }

    /// A copy of `bytes`.
    pub(crate) fn copy_of(bytes: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::with_capacity(bytes.len());
        b.0.extend_from_slice(bytes);
        b
    }

    /// The bytes, to fill (cleared when taken from the pool).
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl std::ops::Deref for PacketBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Clone for PacketBuf {
    fn clone(&self) -> PacketBuf {
        PacketBuf::copy_of(&self.0)
    }
}

impl Drop for PacketBuf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        let cap = v.capacity();
        if cap < SMALL {
            return;
        }
        v.clear();
        let mut pool = POOL.lock();
        pool.prime();
        if cap == SMALL {
            if pool.small.len() < MAX_SMALL {
                pool.small.push(v);
            }
        } else if cap <= MAX_KEPT && pool.large.len() < MAX_LARGE {
            pool.large.push(v);
        }
    }
}

/// Packets an inbox holds before its ring first grows.
const INBOX_RING: usize = 1024;

/// A device's queue of inbound packets: unbounded, and allocation-free while the backlog
/// stays within the largest seen (at least `INBOX_RING`).
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<PacketBuf>>,
    ready: parking_lot::Condvar,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            queue: Mutex::new(VecDeque::with_capacity(INBOX_RING)),
            ready: parking_lot::Condvar::new(),
        }
    }
}

impl Inbox {
    /// Queues a packet and wakes the engine.
    pub(crate) fn push(&self, pkt: PacketBuf) {
        self.queue.lock().push_back(pkt);
        self.ready.notify_one();
    }

    /// The oldest packet, waiting up to `timeout` for one.
    pub(crate) fn pop_timeout(&self, timeout: Duration) -> Option<PacketBuf> {
        let mut q = self.queue.lock();
        if q.is_empty() {
            self.ready.wait_for(&mut q, timeout);
        }
        q.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled_and_fit() {
        let mut a = PacketBuf::with_capacity(100);
        a.vec_mut().extend_from_slice(b"hello");
        let b = a.clone();
        assert_eq!(&*b, b"hello");
        drop(a);
        let c = PacketBuf::with_capacity(10);
        assert!(c.is_empty(), "a recycled buffer comes back empty");
        let big = PacketBuf::with_capacity(100_000);
        assert!(big.0.capacity() >= 100_000);
        drop(big);
        let again = PacketBuf::with_capacity(50_000);
        assert!(again.0.capacity() >= 50_000 && again.is_empty());
    }

    #[test]
    fn inbox_is_fifo_and_times_out() {
        let inbox = Inbox::default();
        assert!(inbox.pop_timeout(Duration::from_millis(1)).is_none());
        inbox.push(PacketBuf::copy_of(b"1"));
        inbox.push(PacketBuf::copy_of(b"2"));
        assert_eq!(&*inbox.pop_timeout(Duration::ZERO).unwrap(), b"1");
        assert_eq!(&*inbox.pop_timeout(Duration::ZERO).unwrap(), b"2");
    }
}
