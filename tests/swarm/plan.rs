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
    /// A crash between steps comes back fast: after a delay uniform in 0 to twice the
    /// failure-detection time (before, during or after the partner's takeover).
    pub fast_restart: f64,
    /// Both nodes lose power in the same step (per step) and come back in either order.
    pub power_loss: f64,
    /// A replay or recovery hook dies at a random point inside (per call).
    pub hook_crash: f64,
    /// A start finds its log's NVRAM blank or corrupt.
    pub nvram_loss: f64,
    /// Steps without a mirror path before a writer declares its partner absent and
    /// acknowledges unmirrored (0: never).
    pub partner_timeout: u32,
    /// An operator forces a takeover the machine refused (outdated copy).
    pub force_takeover: f64,
    /// A node's whole process stops (per node and step) for 1 to 3 detection windows, and
    /// resumes.
    pub stall: f64,
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
            fast_restart: 0.0,
            power_loss: 0.0,
            hook_crash: 0.0,
            nvram_loss: 0.0,
            partner_timeout: 0,
            force_takeover: 0.0,
            stall: 0.0,
        };
        // The restart orders and durability faults (drawn from their own stream so the rest
        // of a seed's plan stays as it was).
        let mut d = SmallRng::seed_from_u64(seed ^ 0x6475_7261);
        plan.fast_restart = some(&mut d, 0.6, 1.0);
        plan.power_loss = some(&mut d, 0.4, 0.003);
        plan.hook_crash = some(&mut d, 0.5, 0.5);
        plan.nvram_loss = some(&mut d, 0.3, 0.3);
        plan.partner_timeout = if d.gen_bool(0.6) {
            d.gen_range(2..=40)
        } else {
            0
        };
        plan.force_takeover = some(&mut d, 0.5, 1.0);
        let mut s = SmallRng::seed_from_u64(seed ^ 0x7374_616c);
        plan.stall = some(&mut s, 0.5, 0.004);
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
    /// Operator giveback commands started (an operator's takeover is held until one).
    pub operator_givebacks: u64,
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
    pub wb_writes_mirrored: u64,
    pub wb_writes_rejected: u64,
    pub wb_reopens_checked: u64,
    pub wb_blocks_destaged: u64,
    pub wb_partner_failures: u64,
    pub wb_resyncs: u64,
    pub wb_resync_blocks: u64,
    pub wb_held: u64,
    pub wb_taken_over_blocks: u64,
    pub wb_survivor_writes: u64,
    pub wb_discarded_blocks: u64,
    pub wb_refused_taken_over: u64,
    // Restart orders and durability.
    pub fast_restarts: u64,
    pub power_losses: u64,
    pub power_losses_a_first: u64,
    pub power_losses_b_first: u64,
    pub takeovers_refused: u64,
    pub forced_takeovers: u64,
    pub hook_crashes: u64,
    pub nvram_losses: u64,
    pub nvram_refusals: u64,
    pub recoveries_fresh: u64,
    pub recoveries_replayed_by_partner: u64,
    pub recoveries_replay_here: u64,
    pub recoveries_after_stopped_replay: u64,
    pub recoveries_from_partner_copy: u64,
    pub recoveries_deferred: u64,
    pub log_acked_unmirrored: u64,
    pub log_resends: u64,
    pub log_marks_cleared: u64,
    pub replays_after_cursor: u64,
    pub stale_copies_skipped: u64,
    pub applied_here_copies_skipped: u64,
    pub mirrors_lost: u64,
    pub stalls: u64,
    pub stalls_past_detection: u64,
    pub lease_holds: u64,
    pub applied_by_partner: u64,
    pub applied_by_own: u64,
    pub reapplied_after_crash: u64,
    pub applied_under_service_checkpoint: u64,
    pub records_forced_lost: u64,
    pub records_unavailable: u64,
    pub generations_closed: u64,
    pub marks_dropped_at_start: u64,
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
            operator_givebacks,
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
            wb_writes_mirrored,
            wb_writes_rejected,
            wb_reopens_checked,
            wb_blocks_destaged,
            wb_partner_failures,
            wb_resyncs,
            wb_resync_blocks,
            wb_held,
            wb_taken_over_blocks,
            wb_survivor_writes,
            wb_discarded_blocks,
            wb_refused_taken_over,
            fast_restarts,
            power_losses,
            power_losses_a_first,
            power_losses_b_first,
            takeovers_refused,
            forced_takeovers,
            hook_crashes,
            nvram_losses,
            nvram_refusals,
            recoveries_fresh,
            recoveries_replayed_by_partner,
            recoveries_replay_here,
            recoveries_after_stopped_replay,
            recoveries_from_partner_copy,
            recoveries_deferred,
            log_acked_unmirrored,
            log_resends,
            log_marks_cleared,
            replays_after_cursor,
            stale_copies_skipped,
            applied_here_copies_skipped,
            mirrors_lost,
            stalls,
            stalls_past_detection,
            lease_holds,
            applied_by_partner,
            applied_by_own,
            reapplied_after_crash,
            applied_under_service_checkpoint,
            records_forced_lost,
            records_unavailable,
            generations_closed,
            marks_dropped_at_start
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
            + self.fast_restarts
            + self.power_losses
            + self.hook_crashes
            + self.nvram_losses
            + self.forced_takeovers
            + self.stalls
    }
}
