//! What one node knows of its partner: the latest believed READ of its state block, the
//! newest believed mailbox record, and the evidence behind failure detection (F4.2).
//!
//! The rule. The partner has failed when, at a successful mailbox read:
//! - no link brought a change of the partner's (incarnation, progress) for the detection
//!   window (K × interval; counted from this machine's start if no read ever arrived), and
//! - the mailbox reads have succeeded without interruption for the whole window and none of
//!   them showed a newer (incarnation, heartbeat) of the partner (a missing or invalid record
//!   counts as no change).
//!
//! A mailbox read that fails breaks the evidence: the window starts again at the next
//! successful read. So an unreadable mailbox can delay a takeover but never cause one. A
//! record older than the newest one seen (a stale copy) is not a change, and is never used
//! for decisions. Torn or corrupt READs are counted and otherwise ignored.

use super::mailbox::MailboxRecord;
use super::state::PartnerRead;
use std::time::{Duration, Instant};

/// A believed READ of the partner's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ObservedRead {
    /// What it said.
    pub read: PartnerRead,
    /// The link it came over.
    pub link: u8,
    /// When it was handled.
    pub at: Instant,
    /// The machine's input number that handled it.
    pub input: u64,
}

/// Evidence about the partner.
#[derive(Clone, Debug)]
pub(crate) struct PartnerView {
    interval: Duration,
    window: Duration,
    born: Instant,
    link_key: Option<(u64, u64)>,
    link_change_at: Option<Instant>,
    latest: Option<ObservedRead>,
    record: Option<MailboxRecord>,
    mailbox_change_at: Option<Instant>,
    mailbox_evidence_since: Option<Instant>,
    pub torn_reads: u64,
    pub mailbox_read_failures: u64,
}

impl PartnerView {
    pub fn new(interval: Duration, window: Duration, born: Instant) -> PartnerView {
        PartnerView {
            interval,
            window,
            born,
            link_key: None,
            link_change_at: None,
            latest: None,
            record: None,
            mailbox_change_at: None,
            mailbox_evidence_since: None,
            torn_reads: 0,
            mailbox_read_failures: 0,
        }
    }

    /// A believed READ; returns whether it showed a change (a sign of life).
    pub fn on_read(&mut self, now: Instant, link: u8, read: PartnerRead, input: u64) -> bool {
        let key = (read.incarnation, read.progress);
        let changed = self.link_key.is_none_or(|k| key > k);
        if changed {
            self.link_key = Some(key);
            self.link_change_at = Some(now);
        }
        // A lagging copy of an older incarnation is not the partner's current state.
        if self
            .latest
            .is_none_or(|l| read.incarnation >= l.read.incarnation)
        {
            self.latest = Some(ObservedRead {
                read,
                link,
                at: now,
                input,
            });
        }
        changed
    }

    /// A successful mailbox read; returns whether it showed a newer record.
    pub fn on_mailbox(&mut self, now: Instant, rec: Option<MailboxRecord>) -> bool {
        let newer = match rec {
            Some(r) => self.record.is_none_or(|old| r.key() > old.key()),
            None => false,
        };
        if newer {
            self.record = rec;
            self.mailbox_change_at = Some(now);
            self.mailbox_evidence_since = Some(now);
        } else if self.mailbox_evidence_since.is_none() {
            self.mailbox_evidence_since = Some(now);
        }
        newer
    }

    /// A failed mailbox read: the evidence of silence starts again.
    pub fn on_mailbox_failed(&mut self) {
        self.mailbox_read_failures += 1;
        self.mailbox_evidence_since = None;
    }

    /// The newest believed mailbox record.
    pub fn record(&self) -> Option<MailboxRecord> {
        self.record
    }

    /// The latest believed READ.
    pub fn latest(&self) -> Option<ObservedRead> {
        self.latest
    }

    /// No link change for the detection window.
    pub fn links_silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.link_change_at.unwrap_or(self.born)) >= self.window
    }

    /// Uninterrupted successful mailbox reads without a change for the detection window.
    pub fn mailbox_silent(&self, now: Instant) -> bool {
        self.mailbox_evidence_since
            .is_some_and(|s| now.saturating_duration_since(s) >= self.window)
    }

    /// A newer mailbox record within the detection window.
    pub fn mailbox_alive(&self, now: Instant) -> bool {
        self.mailbox_change_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.window)
    }

    /// Every link silent for the detection window while the mailbox kept changing: the
    /// mailbox changed within the window, and at least two intervals after the last link
    /// change (a partner that just died leaves a last mailbox change up to one interval after
    /// its last link change; that is no interconnect failure).
    pub fn interconnect_down(&self, now: Instant) -> bool {
        let links_quiet_since = self.link_change_at.unwrap_or(self.born);
        self.links_silent(now)
            && self.mailbox_alive(now)
            && self
                .mailbox_change_at
                .is_some_and(|t| t >= links_quiet_since + 2 * self.interval)
    }

    /// The failure rule (module docs).
    pub fn partner_failed(&self, now: Instant) -> bool {
        self.links_silent(now) && self.mailbox_silent(now)
    }

    /// Time since the partner's last observed change, link or mailbox, whichever later
    /// (since this machine's start if none).
    pub fn silent_for(&self, now: Instant) -> Duration {
        let last = [self.link_change_at, self.mailbox_change_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.born);
        now.saturating_duration_since(last)
    }

    /// The newest partner incarnation seen.
    pub fn partner_incarnation(&self) -> Option<u64> {
        let a = self.latest.map(|l| l.read.incarnation);
        let b = self.record.map(|r| r.incarnation);
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::giveback::state::{NodeState, StateBlock};

    const I: Duration = Duration::from_millis(100);

    fn read(inc: u64, progress: u64) -> PartnerRead {
        PartnerRead {
            incarnation: inc,
            progress,
            block: StateBlock::new(NodeState::Up),
        }
    }

    fn rec(inc: u64, hb: u64) -> Option<MailboxRecord> {
        Some(MailboxRecord {
            own_log_applied_here: false,
            node: 2,
            incarnation: inc,
            state: NodeState::Up,
            taken_over: false,
            takeover_pending: false,
            heartbeat: hb,
            partner_incarnation: 0,
            replayed_partner_log: None,
            partner_copy_outdated: None,
            partner_copy_complete_for: None,
            writeback_copy_outdated: false,
            own_log_generation: 0,
            own_writeback_epoch: 0,
            took_over_writeback: 0,
        })
    }

    #[test]
    fn giveback_detector_needs_silence_on_links_and_mailbox() {
        let t0 = Instant::now();
        let mut v = PartnerView::new(I, 5 * I, t0);
        assert!(v.on_read(t0, 0, read(1, 1), 1));
        assert!(
            !v.on_read(t0, 1, read(1, 1), 2),
            "same copy on the other link"
        );
        assert!(v.on_mailbox(t0, rec(1, 1)));
        for i in 1..=5u32 {
            let t = t0 + I * i;
            assert!(!v.on_mailbox(t, rec(1, 1)));
            assert_eq!(v.partner_failed(t), i == 5, "interval {i}");
        }
        assert_eq!(v.silent_for(t0 + I * 5), 5 * I);
        // A newer record: alive again (interconnect down, mailbox alive).
        let t = t0 + I * 6;
        assert!(v.on_mailbox(t, rec(1, 2)));
        assert!(!v.partner_failed(t) && v.interconnect_down(t));
        assert!(
            !v.interconnect_down(t0 + I * 2),
            "links not silent long enough"
        );
        // A stale copy is no change and is not kept.
        assert!(!v.on_mailbox(t + I, rec(1, 1)));
        assert_eq!(v.record(), rec(1, 2));
    }

    #[test]
    fn giveback_detector_never_counts_an_unreadable_mailbox_as_silence() {
        let t0 = Instant::now();
        let mut v = PartnerView::new(I, 5 * I, t0);
        v.on_mailbox(t0, None);
        for i in 1..20u32 {
            let t = t0 + I * i;
            if i % 4 == 0 {
                v.on_mailbox_failed();
            } else {
                v.on_mailbox(t, None);
            }
            assert!(
                !v.partner_failed(t),
                "interval {i}: evidence broken every 4"
            );
        }
        let t20 = t0 + I * 20;
        v.on_mailbox_failed();
        for i in 21..=26u32 {
            let t = t0 + I * i;
            v.on_mailbox(t, None);
            assert_eq!(v.partner_failed(t), t - t20 >= I * 6, "interval {i}");
        }
    }
}
