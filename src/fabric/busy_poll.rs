//! How a thread that waits for a completion busy-polls, per provider.
//!
//! Every waiter that polls a completion queue in a loop (the messenger's caller and driver,
//! the shadow log's and the write-back's writers, the manager's timed partner-state reads)
//! runs one [`BusyPoll::round`] between two empty polls. A round is either a *pure* round
//! (the waiter polls again at once, as perftest does) or a yield of the CPU. The first
//! [`BusyPoll::pure`] of a wait are pure rounds, every later round yields, until the waiter's
//! own spin budget runs out and it blocks (arms its completion channel, sleeps on a condition
//! variable); that budget is each client's `spin` setting, not this type's.
//!
//! The defaults follow what completes the work:
//! - **verbs** ([`BusyPoll::VERBS_PURE`], 1 ms, no pause hint): the device (or the kernel's
//!   rxe workers on Soft-RoCE) completes the work on its own, so the waiter polls back to
//!   back through a whole round trip. A yield costs a trip through the scheduler, which under
//!   emulation is most of a 64-byte READ's round trip; the pause hint makes the emulator
//!   leave its translated code on every round.
//! - **soft** ([`BusyPoll::SOFT_PURE`], 20 µs, with the pause hint): the soft provider's
//!   engine threads in this process complete the work, and where CPUs are few a waiter that
//!   does not yield keeps them from running (over loopback about 15x slower).
//!
//! A client configuration's `pure_spin` overrides the provider's default (`None` keeps it).

use super::ProviderKind;
use std::time::{Duration, Instant};

/// The busy-polling policy of one waiter: how long it polls back to back before it yields
/// the CPU between polls. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    pure: Duration,
    pause_hint: bool,
}

impl BusyPoll {
    /// The verbs provider's default pure polling: 1 ms.
    pub const VERBS_PURE: Duration = Duration::from_millis(1);
    /// The soft provider's default pure polling: 20 µs.
    pub const SOFT_PURE: Duration = Duration::from_micros(20);
    /// The default `pure_spin` of the crate's clients (messenger, shadow log, write-back): 20 µs
    /// on every provider. Their waiters poll on both nodes at once, and on the two emulated
    /// CPUs of Soft-RoCE a longer pure spin kept rxe's kernel workers waiting (a messaging
    /// call about 4x slower); on hardware with CPUs to spare, `None` (the provider's default)
    /// saves the scheduler round trip of each yield.
    pub const CLIENT_PURE: Duration = Duration::from_micros(20);

    /// [`BusyPoll::CLIENT_PURE`] as a client configuration's `pure_spin` default.
    pub fn client_default() -> Option<Duration> {
        Some(BusyPoll::CLIENT_PURE)
    }

    /// The default policy of `provider`.
    pub const fn for_provider(provider: ProviderKind) -> BusyPoll {
        BusyPoll::configured(provider, None)
    }

    /// The policy of `provider` with a client's `pure_spin` setting (`None`: the provider's
    /// default duration).
    pub const fn configured(provider: ProviderKind, pure_spin: Option<Duration>) -> BusyPoll {
        let (default, pause_hint) = match provider {
            ProviderKind::Verbs => (BusyPoll::VERBS_PURE, false),
            ProviderKind::Soft => (BusyPoll::SOFT_PURE, true),
        };
        let pure = match pure_spin {
            Some(d) => d,
            None => default,
        };
        BusyPoll { pure, pause_hint }
    }

    /// How long a wait polls back to back before it yields between polls.
    pub const fn pure(&self) -> Duration {
        self.pure
    }

    /// Whether a round at `now` of a wait that began at `since` is a pure one (a `now`
    /// before `since` counts as the start of the wait).
    pub fn is_pure_at(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) < self.pure
    }

    /// One round between two empty polls of a wait that began at `since` (`now` is the
    /// caller's current time): returns at once while the wait is younger than
    /// [`BusyPoll::pure`] (after the CPU's pause hint on the soft provider), else yields the
    /// CPU.
    #[inline]
    pub fn round(&self, since: Instant, now: Instant) {
        if self.is_pure_at(since, now) {
            if self.pause_hint {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_has_its_default_and_a_setting_overrides_it() {
        assert_eq!(
            BusyPoll::for_provider(ProviderKind::Verbs).pure(),
            BusyPoll::VERBS_PURE
        );
        assert_eq!(
            BusyPoll::for_provider(ProviderKind::Soft).pure(),
            BusyPoll::SOFT_PURE
        );
        let set = Duration::from_micros(300);
        assert_eq!(
            BusyPoll::configured(ProviderKind::Soft, Some(set)).pure(),
            set
        );
        assert_eq!(
            BusyPoll::configured(ProviderKind::Verbs, Some(Duration::ZERO)).pure(),
            Duration::ZERO
        );
    }

    #[test]
    fn a_round_yields_only_after_the_pure_budget() {
        // Decided on the two instants alone: no clock is read.
        let p = BusyPoll::configured(ProviderKind::Verbs, Some(Duration::from_micros(50)));
        let t0 = Instant::now();
        p.round(t0, t0 + Duration::from_micros(49)); // pure: returns at once
        p.round(t0, t0 + Duration::from_micros(51)); // yields: returns too
        assert!(p.is_pure_at(t0, t0 + Duration::from_micros(49)));
        assert!(!p.is_pure_at(t0, t0 + Duration::from_micros(50)));
        // A `now` before `since` (another thread's instant) counts as a fresh wait.
        assert!(p.is_pure_at(t0 + Duration::from_micros(10), t0));
    }
}
