//! When the event loop wakes next.
//!
//! Between turns the loop waits for a command or a device event, or until the earliest of its
//! deadlines: the next heartbeat interval of every ready link, the next progress publish, the
//! next rate sample, the next link attempt, the end of the startup gather. It does not tick at
//! a fixed period, so a heartbeat interval of 1 ms is kept to the wake-up latency of the thread
//! and an idle node wakes a few times per interval instead of every few milliseconds. Work no
//! deadline announces is polled: a heartbeat READ in flight (re-polled after 200 µs, then after
//! twice as long each time, at most every [`BUSY_POLL`]), a bootstrap handshake in flight and
//! a planned move that drains ([`BUSY_POLL`]); nothing sleeps longer than [`IDLE_WAIT`], which
//! bounds how late the planner's hold-down timers (hysteresis, rebalance cooldown) are seen.
//! [`WakePlan`] is plain arithmetic on instants the loop passes in (no clock inside).

use super::{initiator, LinkState, Runtime, STARTUP_GATHER};
use std::time::{Duration, Instant};

/// Longest wait with nothing due sooner.
pub(super) const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Polling period of work in progress that no message or deadline announces.
pub(super) const BUSY_POLL: Duration = Duration::from_millis(5);
/// First re-poll of an outstanding heartbeat READ after it was posted.
pub(super) const READ_POLL_MIN: Duration = Duration::from_micros(200);

/// The earliest instant the loop must be awake at, gathered over one turn.
#[derive(Clone, Copy, Debug)]
pub(super) struct WakePlan {
    now: Instant,
    at: Instant,
}

impl WakePlan {
    /// Nothing due yet: wake after [`IDLE_WAIT`].
    pub(super) fn new(now: Instant) -> WakePlan {
        WakePlan {
            now,
            at: now + IDLE_WAIT,
        }
    }

    /// Wake by `t` (a deadline already past wakes at once).
    pub(super) fn deadline(&mut self, t: Instant) {
        self.at = self.at.min(t);
    }

    /// Work in progress is polled: wake within [`BUSY_POLL`].
    pub(super) fn busy(&mut self) {
        self.deadline(self.now + BUSY_POLL);
    }

    /// A heartbeat READ posted at `posted` has not completed: poll again after as long as it
    /// has been outstanding, at least [`READ_POLL_MIN`] and at most [`BUSY_POLL`].
    pub(super) fn read_outstanding(&mut self, posted: Instant) {
        let step = self
            .now
            .saturating_duration_since(posted)
            .clamp(READ_POLL_MIN, BUSY_POLL);
        self.deadline(self.now + step);
    }

    /// How long to wait from the instant the plan was made.
    pub(super) fn timeout(&self) -> Duration {
        self.at.saturating_duration_since(self.now)
    }
}

impl Runtime {
    /// The earliest instant the periodic work is due (see `wake.rs`).
    pub(super) fn wake_plan(&self, now: Instant) -> WakePlan {
        let mut w = WakePlan::new(now);
        w.deadline(self.next_progress);
        w.deadline(self.next_rates);
        let gather_end = self.started + STARTUP_GATHER;
        if gather_end > now {
            w.deadline(gather_end);
        }
        for l in &self.links {
            if l.conn.is_none() && l.connecting.is_none() {
                if l.next_attempt > now {
                    w.deadline(l.next_attempt);
                } else if initiator(&self.cfg) {
                    w.busy();
                }
            }
            if l.state == LinkState::Ready {
                if let Some(hb) = &l.heartbeat {
                    w.deadline(l.next_interval);
                    if let Some(posted) = hb.outstanding_since() {
                        w.read_outstanding(posted);
                    }
                }
            } else if l.conn.is_some() {
                w.busy();
            }
        }
        if self.clients.values().any(|c| c.pending.is_some()) {
            w.busy();
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_wait_when_nothing_is_due() {
        let t0 = Instant::now();
        assert_eq!(WakePlan::new(t0).timeout(), IDLE_WAIT);
    }

    #[test]
    fn wakes_at_the_earliest_deadline_not_on_a_fixed_tick() {
        let t0 = Instant::now();
        // A 1 ms heartbeat: the loop sleeps 1 ms, not a 5 ms tick.
        let mut w = WakePlan::new(t0);
        w.deadline(t0 + ms(100));
        w.deadline(t0 + ms(1));
        w.deadline(t0 + ms(500));
        assert_eq!(w.timeout(), ms(1));
        // A 100 ms heartbeat on an idle node: the next interval, capped by the idle wait.
        let mut w = WakePlan::new(t0);
        w.deadline(t0 + ms(100));
        assert_eq!(w.timeout(), IDLE_WAIT);
        let mut w = WakePlan::new(t0);
        w.deadline(t0 + ms(20));
        assert_eq!(w.timeout(), ms(20));
        // A deadline already past wakes at once.
        let mut w = WakePlan::new(t0 + ms(10));
        w.deadline(t0);
        assert_eq!(w.timeout(), Duration::ZERO);
    }

    #[test]
    fn busy_work_is_polled() {
        let t0 = Instant::now();
        let mut w = WakePlan::new(t0);
        w.busy();
        assert_eq!(w.timeout(), BUSY_POLL);
        w.deadline(t0 + ms(2));
        assert_eq!(w.timeout(), ms(2));
    }

    #[test]
    fn an_outstanding_read_is_polled_with_a_growing_step() {
        let t0 = Instant::now();
        let step = |outstanding: Duration| {
            let mut w = WakePlan::new(t0 + outstanding);
            w.read_outstanding(t0);
            w.timeout()
        };
        assert_eq!(step(Duration::ZERO), READ_POLL_MIN);
        assert_eq!(step(Duration::from_micros(100)), READ_POLL_MIN);
        assert_eq!(step(Duration::from_micros(800)), Duration::from_micros(800));
        assert_eq!(step(ms(2)), ms(2));
        assert_eq!(step(ms(40)), BUSY_POLL);
        // The next interval still comes first when it is sooner.
        let mut w = WakePlan::new(t0 + ms(3));
        w.read_outstanding(t0);
        w.deadline(t0 + ms(4));
        assert_eq!(w.timeout(), ms(1));
    }
}
