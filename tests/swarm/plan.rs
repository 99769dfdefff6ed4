//! The fault mix one seed picks, and the count of every fault injected.

use crate::messaging_sim::Faults;
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Rates are per step (per link or per node where it says so).
#[derive(Clone, Debug)]
pub struct Plan {
    /// Message-level faults of the messaging window's wire: loss, duplication, reordering,
    /// delay distribution, corruption.
    pub wire: Faults,
    /// Mirror path delays (log writes, write-back messages and transfers): uniform in
    /// `[delay_min, delay_max]`, and with probability `tail` up to `tail_max` more.
    pub delay_min: Duration,
    pub delay_max: Duration,
    pub tail: f64,
    pub tail_max: Duration,
    /// A link is cut (per link and step), or heals when cut.
    pub cut: f64,
    pub heal: f64,
    /// A one-way partition starts (per link and step), or ends.
    pub oneway: f64,
    pub oneway_end: f64,
    /// A node crashes (per node and step).
    pub crash: f64,
    /// Mailbox fault rate (one at a time), state-block READs torn.
    pub mailbox: f64,
    pub torn_reads: f64,
    /// An operator takes over a live partner (per step).
    pub operator_takeover: f64,
    /// The window's driver declares the partner failed when the giveback machine does.
    pub declare_failed: bool,
    /// The window's wire loses, duplicates, reorders and corrupts single writes (else it is a
    /// reliable connection: in order, delays only; a one-way partition fails it at once).
    pub lossy: bool,
    /// Intervals of the fault phase.
    pub fault_intervals: u32,
    /// A crashed or halted node comes back after this long.
    pub restart_delay: Duration,
    pub halt_linger: Duration,
}

impl Plan {
    /// The mix of `seed`. Some seeds leave whole kinds of fault out.
    pub fn new(seed: u64, interval: Duration) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x706c_616e);
        let mut wire_rng = StdRng::seed_from_u64(rng.gen());
        let some = |rng: &mut SmallRng, p: f64, max: f64| {
            if rng.gen_bool(p) {
                rng.gen_range(0.0..max)
            } else {
                0.0
            }
        };
        let delay_min = Duration::from_micros(rng.gen_range(5..=200));
        let mut plan = Plan {
            wire: Faults::random(&mut wire_rng, rng.gen_bool(0.3)),
            delay_min,
            delay_max: delay_min + Duration::from_micros(rng.gen_range(0..=20_000)),
            tail: some(&mut rng, 0.5, 0.2),
            tail_max: Duration::from_millis(rng.gen_range(1..=80)),
            cut: some(&mut rng, 0.8, 0.02),
            heal: rng.gen_range(0.02..0.3),
            oneway: some(&mut rng, 0.5, 0.01),
            oneway_end: rng.gen_range(0.02..0.5),
            crash: some(&mut rng, 0.8, 0.006),
            mailbox: some(&mut rng, 0.6, 0.02),
            torn_reads: [0.0, 0.05, 0.3][rng.gen_range(0..3)],
            operator_takeover: some(&mut rng, 0.3, 0.004),
            declare_failed: rng.gen_bool(0.5),
            lossy: true,
            fault_intervals: rng.gen_range(60..=150),
            restart_delay: interval * rng.gen_range(1..=20),
            halt_linger: interval * rng.gen_range(0..=3),
        };
        // Most seeds lose, duplicate, reorder and corrupt single writes of the window's wire,
        // across conversation changes too (restarts, declared partner failures); the others
        // keep the wire of a reliable connection (in order, delays only), which a one-way
        // partition fails at once. Drawn last, so the rest of a seed's plan does not depend
        // on it.
        if !rng.gen_bool(0.8) {
            plan.wire = Faults {
                fifo: true,
                ..plan.wire.quiet()
            };
            plan.lossy = false;
        }
        plan
    }

    /// One mirror-path delay.
    pub fn delay(&self, rng: &mut SmallRng) -> Duration {
        let mut d = rng.gen_range(self.delay_min..=self.delay_max);
        if self.tail > 0.0 && rng.gen_bool(self.tail) {
            d += rng.gen_range(Duration::ZERO..=self.tail_max);
        }
        d
    }
}

/// Faults injected, by kind.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub seeds: u64,
    pub steps: u64,
    pub link_cuts: u64,
    pub link_heals: u64,
    pub oneway_partitions: u64,
    pub crashes_between_steps: u64,
    pub crashes_in_actions: u64,
    pub crashes_in_nvram_writes: u64,
    pub kills_and_fences: u64,
    pub mailbox_torn_writes: u64,
    pub mailbox_other_faults: u64,
    pub torn_state_reads: u64,
    pub operator_takeovers: u64,
    pub partner_declared_failed: u64,
    pub wire_dropped: u64,
    pub wire_duplicated: u64,
    pub wire_corrupted: u64,
    pub wire_blocked: u64,
    pub log_torn_landings: u64,
    pub log_path_failures: u64,
    pub wb_path_changes: u64,
    // What the pair did under them.
    pub takeovers: u64,
    pub givebacks: u64,
    pub failover_moves: u64,
    pub return_moves: u64,
    pub messages_delivered: u64,
    pub log_records_acked: u64,
    pub log_replays_checked: u64,
    pub log_restarts_checked: u64,
    pub wb_writes_mirrored: u64,
    pub wb_writes_rejected: u64,
    pub wb_reopens_checked: u64,
    pub wb_blocks_destaged: u64,
    pub wb_partner_failures: u64,
    pub wb_resyncs: u64,
    pub wb_resync_blocks: u64,
    pub wb_held: u64,
    pub max_liveness_steps: u64,
}

impl Counts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Counts) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            seeds,
            steps,
            link_cuts,
            link_heals,
            oneway_partitions,
            crashes_between_steps,
            crashes_in_actions,
            crashes_in_nvram_writes,
            kills_and_fences,
            mailbox_torn_writes,
            mailbox_other_faults,
            torn_state_reads,
            operator_takeovers,
            partner_declared_failed,
            wire_dropped,
            wire_duplicated,
            wire_corrupted,
            wire_blocked,
            log_torn_landings,
            log_path_failures,
            wb_path_changes,
            takeovers,
            givebacks,
            failover_moves,
            return_moves,
            messages_delivered,
            log_records_acked,
            log_replays_checked,
            log_restarts_checked,
            wb_writes_mirrored,
            wb_writes_rejected,
            wb_reopens_checked,
            wb_blocks_destaged,
            wb_partner_failures,
            wb_resyncs,
            wb_resync_blocks,
            wb_held
        );
        self.max_liveness_steps = self.max_liveness_steps.max(o.max_liveness_steps);
    }

    /// Faults injected in total.
    pub fn faults(&self) -> u64 {
        self.link_cuts
            + self.oneway_partitions
            + self.crashes_between_steps
            + self.crashes_in_actions
            + self.crashes_in_nvram_writes
            + self.mailbox_torn_writes
            + self.mailbox_other_faults
            + self.torn_state_reads
            + self.operator_takeovers
            + self.wire_dropped
            + self.wire_duplicated
            + self.wire_corrupted
            + self.wire_blocked
            + self.log_torn_landings
    }
}
