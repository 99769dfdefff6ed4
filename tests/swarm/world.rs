//! The simulated pair: every sans-IO core of both nodes on two simulated links, in virtual
//! time, stepped together.
//!
//! - giveback: `giveback_sim`'s world (both machines, the shared mailbox copies and disk
//!   reservations, kill messages, torn state-block READs, crash at any action), which checks
//!   after every action that at most one node serves each disk set, that a giveback goes only
//!   to a partner truly in MBWAIT and that a preempt never hits a served set;
//! - manager policy: link health by heartbeat and placement of the `messages` and `mirror`
//!   clients ([`super::links`]);
//! - messaging: `messaging_sim`'s two windows and ledger (every delivery, ack and response
//!   checked: exactly once, in order) on the `messages` client's link;
//! - mirror: a shadow log per node ([`super::log`]) and a mirrored write-back per node
//!   ([`super::writeback`]) on the `mirror` client's link.
//!
//! A node is alive for the data layers while its giveback machine runs and is not Halted; a
//! kill or a fence halts it, which ends its process like a crash.

use super::links::{Links, MESSAGES, MIRROR};
use super::log::{LaneFaults, LogLane};
use super::plan::{Counts, Plan};
use super::recovery::{Lanes, LogHooks};
use super::writeback::WbLane;
use crate::giveback_sim::disks::CopyFault;
use crate::giveback_sim::sweep::{set_mailbox_fault, MailboxFault};
use crate::giveback_sim::{World as GbWorld, A, B, I, K};
use crate::messaging_sim::{Action as MsgAction, Mix, Sim, US};
use interlink::clients::giveback::{Command, CommandOutcome, CopyGap, GivebackEvent, NodeState};
use interlink::manager::placement::MoveReason;
use interlink::manager::LinkId;
use interlink::messaging::WindowConfig;
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// One step of virtual time.
pub const STEP: Duration = Duration::from_millis(25);
/// Steps the liveness phase may take (120 giveback intervals).
pub const LIVENESS_STEPS: u64 = 480;
const IDS: [u32; 2] = [A, B];
const FAR: u64 = u64::MAX / 4;

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// The whole pair.
pub struct World {
    pub plan: Plan,
    pub rng: SmallRng,
    pub gb: Box<GbWorld>,
    pub msg: Sim,
    pub links: Links,
    /// The shadow logs (shared with the giveback drivers' hooks).
    pub logs: Lanes,
    pub wbs: [WbLane; 2],
    pub now: Duration,
    /// Incarnation each node's data layers run as (`None`: down).
    alive: [Option<u64>; 2],
    msg_link: Option<LinkId>,
    mirror_link: Option<LinkId>,
    mailbox_fault: Option<(MailboxFault, Duration)>,
    mailbox_quiet_until: Duration,
    events_seen: [usize; 2],
    /// Host workload (log appends, write-back writes, messages) on.
    pub workload: bool,
    pub counts: Counts,
    pub violations: Vec<String>,
}

impl World {
    pub fn new(seed: u64) -> World {
        let plan = Plan::new(seed, I);
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x0073_7761_726d);
        let mut gb = Box::new(GbWorld::new(seed));
        gb.trace_limit = 200;
        gb.tear_probability = plan.torn_reads;
        gb.restart_delay = plan.restart_delay;
        gb.halt_linger = plan.halt_linger;
        let cfg = WindowConfig {
            slots: 8,
            control_slots: 2,
            frame_size: 512,
            max_payload: 160,
            aggregate: true,
            retransmit_after: Duration::from_nanos(
                2 * (plan.wire.delay_max + plan.wire.poll_max) + rng.gen_range(50..=2000) * US,
            ),
            max_queued: 100_000,
        };
        let mut mix_rng = StdRng::seed_from_u64(rng.gen());
        let msg = Sim::new(seed, cfg, plan.wire.clone(), Mix::random(&mut mix_rng));
        {
            let mut l = msg.ledger.borrow_mut();
            l.allow_inoperative = true;
            l.handler_sends = rng.gen_range(0..=10);
            l.stash_prob = rng.gen_range(0.0..0.5);
        }
        let mut lanes = [LogLane::new(0, seed), LogLane::new(1, seed)];
        for l in &mut lanes {
            l.faults = LaneFaults {
                hook_crash: plan.hook_crash,
                nvram_loss: plan.nvram_loss,
                partner_timeout: plan.partner_timeout,
                replay_dies_after: None,
            };
        }
        let logs: Lanes = Rc::new(RefCell::new(lanes));
        gb.log_service = Some(Box::new(LogHooks {
            lanes: logs.clone(),
        }));
        World {
            plan,
            rng,
            gb,
            msg,
            links: Links::new(),
            logs,
            wbs: [WbLane::new(0), WbLane::new(1)],
            now: Duration::ZERO,
            alive: [None, None],
            msg_link: None,
            mirror_link: None,
            mailbox_fault: None,
            mailbox_quiet_until: Duration::ZERO,
            events_seen: [0, 0],
            workload: true,
            counts: Counts::default(),
            violations: Vec::new(),
        }
    }

    fn violate(&mut self, what: String) {
        self.violations.push(format!("t={:?}: {what}", self.now));
    }

    fn result(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.violate(e);
        }
    }

    /// Node `i`'s process is stopped now.
    fn stalled(&self, i: usize) -> bool {
        self.gb.node(IDS[i]).stalled_until.is_some()
    }

    /// Node `i`'s serving lease runs now (its machine's `poll_lease`).
    fn lease_runs(&self, i: usize) -> bool {
        let now = self.gb.at(self.now);
        self.gb
            .node(IDS[i])
            .machine
            .as_ref()
            .and_then(|m| m.poll_lease())
            .is_some_and(|until| now < until)
    }

    /// Node `i` serves its own disk set.
    pub fn serving_own(&self, i: usize) -> bool {
        self.alive[i].is_some() && self.gb.node(IDS[i]).serving.contains(&IDS[i])
    }

    /// Both nodes' data layers run.
    pub fn both_alive(&self) -> bool {
        self.alive.iter().all(Option::is_some)
    }

    // ------------------------------------------------------------------ stepping

    /// One step: faults (in the fault phase), then every layer, then the checks.
    pub fn step(&mut self, faults: bool) {
        self.now += STEP;
        self.counts.steps += 1;
        if faults {
            self.inject();
        }
        self.operator_gives_back(!faults);
        self.gb.links = [self.links.usable(0), self.links.usable(1)];
        self.resume_data_first();
        self.gb.run_until(self.now);
        for v in std::mem::take(&mut self.gb.violations) {
            self.violate(format!("giveback: {v}"));
        }
        self.sync_nodes();
        self.gb_events();
        if self.now.as_nanos() % I.as_nanos() == 0 {
            let both = self.both_alive();
            for m in self.links.interval(self.now, both) {
                match m.reason {
                    MoveReason::Failover => self.counts.failover_moves += 1,
                    MoveReason::Return => self.counts.return_moves += 1,
                    _ => {}
                }
            }
        }
        for (_, node) in std::mem::take(&mut self.gb.replays) {
            let partner = usize::from(node == A);
            let r = self.wbs[partner].take_over(&mut self.rng);
            self.result(r);
        }
        self.retry_recoveries();
        self.msg_step();
        self.mirror_step();
        self.log_violations();
        for (i, &id) in IDS.iter().enumerate() {
            let died =
                self.logs.borrow()[i].died() || self.wbs[i].died(i) || self.wbs[1 - i].died(i);
            if died {
                self.counts.crashes_in_nvram_writes += 1;
                self.gb.crash(id);
                self.sync_nodes();
            }
        }
        let r = self.check_serving();
        self.result(r);
    }

    fn log_violations(&mut self) {
        for i in 0..2 {
            let v = std::mem::take(&mut self.logs.borrow_mut()[i].violations);
            for e in v {
                self.violate(e);
            }
        }
    }

    /// A recovery that could not run (the partner's record unreadable, its copy out of
    /// reach) runs again while its node serves its own set.
    fn retry_recoveries(&mut self) {
        for (i, &id) in IDS.iter().enumerate() {
            let waiting = self.logs.borrow()[i].needs_recovery;
            if !waiting || !self.serving_own(i) || self.stalled(i) {
                continue;
            }
            let record = self.gb.read_partner_record(id);
            let took_over = record.flatten().is_some_and(|r| r.taken_over);
            let read = record.map(|r| r.and_then(|r| r.replayed_partner_log));
            let died = {
                let mut lanes = self.logs.borrow_mut();
                let partner = lanes[1 - i].incarnation;
                lanes[i].recover(read, partner, took_over)
            };
            if died {
                self.gb.crash(id);
                self.sync_nodes();
            }
        }
    }

    /// At most one node serves each disk set (ground truth of the serving hooks).
    pub fn check_serving(&self) -> Result<(), String> {
        for set in IDS {
            let servers: Vec<u32> = IDS
                .iter()
                .copied()
                .filter(|&id| self.gb.serves(usize::from(id != A), set))
                .collect();
            if servers.len() > 1 {
                return Err(format!("disk set {set} served by nodes {servers:?}"));
            }
        }
        Ok(())
    }

    /// Data layers follow the giveback machines: a node that stopped running (crash, halt)
    /// loses its processes; one that started reopens its NVRAM.
    fn sync_nodes(&mut self) {
        for (i, &id) in IDS.iter().enumerate() {
            let node = self.gb.node(id);
            let cur = node
                .machine
                .as_ref()
                .filter(|m| m.state() != NodeState::Halted)
                .map(|_| node.incarnation);
            if cur == self.alive[i] {
                continue;
            }
            if let Some(inc) = self.alive[i] {
                self.crash_data(i, inc);
            }
            self.alive[i] = cur;
            if cur.is_some() {
                // The log started with the node's driver (its hooks) and recovers before
                // the node serves its own set.
                self.wbs[i].start(i);
                self.wbs[1 - i].start(i);
            }
        }
    }

    fn crash_data(&mut self, i: usize, incarnation: u64) {
        {
            let mut lanes = self.logs.borrow_mut();
            lanes[i].crash_incarnation(incarnation, &mut self.rng);
            lanes[1 - i].fail_path(&mut self.rng);
            // The copy of the partner's log lived in this node's memory (a region of its
            // process): gone with it, blank in the next incarnation's region.
            lanes[1 - i].mirror_lost();
        }
        for lane in 0..2 {
            let r = self.wbs[lane].crash(i);
            self.result(r);
        }
        self.msg.restart(i, true, FAR);
        for s in &mut self.msg.sides {
            s.link_up_at = None;
        }
        self.msg_link = None;
    }

    fn gb_events(&mut self) {
        for (i, &id) in IDS.iter().enumerate() {
            let events = &self.gb.node(id).events;
            let new: Vec<GivebackEvent> = events[self.events_seen[i]..]
                .iter()
                .map(|(_, e)| e.clone())
                .collect();
            self.events_seen[i] = events.len();
            for e in new {
                match e {
                    GivebackEvent::TakeoverDone { .. } => self.counts.takeovers += 1,
                    GivebackEvent::TakeoverRefused { gap } => {
                        self.counts.takeovers_refused += 1;
                        // Sometimes, with faults on, an operator accepts the loss of an
                        // outdated copy (counted exactly). An unconfirmed copy is never
                        // forced here: its loss is not a known range (the writer's own
                        // recovery, once it restarts, applies its log instead).
                        let outdated = matches!(gap, CopyGap::Outdated { .. });
                        let p = if self.workload && outdated {
                            self.plan.force_takeover
                        } else {
                            0.0
                        };
                        let running = self.gb.node(id).machine.is_some();
                        if running && p > 0.0 && self.rng.gen_bool(p) {
                            let r = self.gb.command(id, Command::ForceTakeover);
                            if r.outcome == CommandOutcome::Started {
                                self.counts.forced_takeovers += 1;
                            }
                        }
                    }
                    GivebackEvent::GivebackDone { .. } => self.counts.givebacks += 1,
                    GivebackEvent::Killed | GivebackEvent::Fenced => {
                        self.counts.kills_and_fences += 1
                    }
                    GivebackEvent::PartnerFailed { .. }
                        if self.plan.declare_failed && self.alive[i].is_some() =>
                    {
                        self.counts.partner_declared_failed += 1;
                        self.msg.partner_failed(i);
                    }
                    _ => {}
                }
            }
        }
    }

    fn msg_step(&mut self) {
        let blocked = self.links.blocked(MESSAGES);
        let rc_broken = !self.plan.lossy && blocked.iter().any(|b| *b);
        let want = if self.both_alive() && !rc_broken {
            self.links.path(MESSAGES, self.now)
        } else {
            None
        };
        if self.msg_link.is_some() && want != self.msg_link {
            self.msg.cut(FAR, 0);
            for s in &mut self.msg.sides {
                s.link_up_at = None;
            }
            self.msg_link = None;
        }
        let now = ns(self.now);
        if self.msg_link.is_none() && want.is_some() {
            for s in &mut self.msg.sides {
                s.link_up_at = Some(now + self.rng.gen_range(0..=50) * US);
            }
            self.msg_link = want;
        }
        self.msg.blocked = if self.plan.lossy { blocked } else { [false; 2] };
        if self.workload {
            let from = ns(self.now - STEP);
            for side in 0..2 {
                if self.alive[side].is_none() || !self.rng.gen_bool(0.3) {
                    continue;
                }
                let at = self.rng.gen_range(from..now).max(self.msg.now);
                let n = self.rng.gen_range(1..=3);
                self.msg.schedule(at, MsgAction::Burst { side, n });
                if self.rng.gen_bool(0.3) {
                    self.msg.schedule(at, MsgAction::Drain { side });
                }
            }
        }
        self.msg.run_until(now);
    }

    fn mirror_step(&mut self) {
        let path = if self.both_alive() {
            self.links.path(MIRROR, self.now)
        } else {
            None
        };
        if self.mirror_link.is_some() && path != self.mirror_link {
            for w in 0..2 {
                self.logs.borrow_mut()[w].fail_path(&mut self.rng);
                self.wbs[w].fail_path();
            }
        }
        self.mirror_link = path;
        for w in 0..2 {
            if self.stalled(w) {
                // Its process does nothing (what it had in flight lands once it resumes);
                // a connection that failed meanwhile is found failed when it resumes.
                if path.is_none() {
                    self.logs.borrow_mut()[w].path_up = false;
                }
                continue;
            }
            self.lane_step(w);
        }
    }

    /// One step of node `w`'s data lanes on the current mirror path.
    fn lane_step(&mut self, w: usize) {
        let plan = self.plan.clone();
        let path = self.mirror_link;
        let serving = self.workload && self.serving_own(w);
        let partner = self.logs.borrow()[1 - w].incarnation;
        let may_ack = self.lease_runs(w);
        self.logs.borrow_mut()[w].step(
            self.now,
            &mut self.rng,
            serving,
            path.is_some(),
            partner,
            may_ack,
            |r| plan.delay(r),
        );
        let serves = self.serving_own(w);
        let r = self.wbs[w].step(
            self.now,
            &mut self.rng,
            serves,
            self.workload,
            may_ack,
            path.is_some(),
            |r| plan.delay(r),
        );
        self.result(r);
    }

    /// A process resuming from a stall runs all its threads at once: its data path may
    /// complete and acknowledge what was in flight before its giveback driver has read the
    /// mailbox, so the lanes of a node resuming in this step go first.
    fn resume_data_first(&mut self) {
        for (w, &id) in IDS.iter().enumerate() {
            let resumes = self
                .gb
                .node(id)
                .stalled_until
                .is_some_and(|t| t <= self.now);
            if resumes && self.mirror_link.is_some() {
                self.lane_step(w);
            }
        }
    }

    // ------------------------------------------------------------------ faults

    fn inject(&mut self) {
        let (p, now) = (self.plan.clone(), self.now);
        for l in 0..2 {
            if self.links.up[l] && p.cut > 0.0 && self.rng.gen_bool(p.cut) {
                self.links.up[l] = false;
                self.counts.link_cuts += 1;
            } else if !self.links.up[l] && self.rng.gen_bool(p.heal) {
                self.links.up[l] = true;
                self.counts.link_heals += 1;
            }
            for from in 0..2 {
                match self.links.oneway[l][from] {
                    None if p.oneway > 0.0 && self.rng.gen_bool(p.oneway) => {
                        self.links.oneway[l][from] = Some(now);
                        self.counts.oneway_partitions += 1;
                    }
                    Some(_) if self.rng.gen_bool(p.oneway_end) => {
                        self.links.oneway[l][from] = None;
                    }
                    _ => {}
                }
            }
        }
        for (i, &id) in IDS.iter().enumerate() {
            if self.gb.node(id).machine.is_none() || p.crash == 0.0 || !self.rng.gen_bool(p.crash) {
                continue;
            }
            match self.rng.gen_range(0..3) {
                0 => {
                    self.counts.crashes_between_steps += 1;
                    self.gb.crash(id);
                    if p.fast_restart > 0.0 && self.rng.gen_bool(p.fast_restart) {
                        self.counts.fast_restarts += 1;
                        let window = ns(I) * u64::from(K) * 2;
                        let after = Duration::from_nanos(self.rng.gen_range(0..=window));
                        self.gb.node_mut(id).restart_at = Some(now + after);
                    }
                    self.sync_nodes();
                }
                1 => {
                    self.counts.crashes_in_actions += 1;
                    let at = self.gb.node(id).actions_done + self.rng.gen_range(0..25);
                    self.gb.node_mut(id).crash_at_action = Some(at);
                }
                _ => {
                    // Dies inside one of its NVRAM writes (counted when it happens).
                    let fuses: Vec<_> = [
                        self.logs.borrow()[i].fuse(),
                        self.wbs[i].fuses().0,
                        self.wbs[1 - i].fuses().1,
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    if !fuses.is_empty() {
                        let f = &fuses[self.rng.gen_range(0..fuses.len())];
                        f.arm(self.rng.gen_range(0..6), self.rng.gen());
                    }
                }
            }
        }
        if p.power_loss > 0.0
            && self.rng.gen_bool(p.power_loss)
            && IDS.iter().all(|&id| self.gb.node(id).machine.is_some())
        {
            // Both nodes lose power in this step and come back in either order, each within
            // twice the detection time.
            self.counts.power_losses += 1;
            self.gb.crash(A);
            self.gb.crash(B);
            let window = ns(I) * u64::from(K) * 2;
            let mut at = [0, 0].map(|_| Duration::from_nanos(self.rng.gen_range(0..=window)));
            if at[0] == at[1] {
                at[1] += STEP;
            }
            if at[0] < at[1] {
                self.counts.power_losses_a_first += 1;
            } else {
                self.counts.power_losses_b_first += 1;
            }
            for (k, &id) in IDS.iter().enumerate() {
                self.gb.node_mut(id).restart_at = Some(now + at[k]);
            }
            self.sync_nodes();
        }
        for (i, &id) in IDS.iter().enumerate() {
            if p.stall == 0.0 || self.stalled(i) || !self.rng.gen_bool(p.stall) {
                continue;
            }
            // Shorter or longer than the failure detection (a takeover may happen meanwhile).
            let k = self.rng.gen_range(1..=3 * K);
            if self.gb.stall(id, I * k) {
                self.counts.stalls += 1;
                if k > K {
                    self.counts.stalls_past_detection += 1;
                }
            }
        }
        self.mailbox_faults();
        if p.operator_takeover > 0.0 && self.rng.gen_bool(p.operator_takeover) {
            let i = self.rng.gen_range(0..2);
            let id = IDS[i];
            if self.gb.state(id) == Some(NodeState::Up) && !self.stalled(i) {
                self.counts.operator_takeovers += 1;
                self.gb.command(id, Command::Takeover { check_only: false });
            }
        }
    }

    /// An operator's takeover is held until an operator gives back: the operator does so now
    /// and then (at every step once the faults are off); refused until the partner waits.
    fn operator_gives_back(&mut self, always: bool) {
        let held = IDS.iter().any(|&id| self.gb.operator_hold(id));
        if held && (always || self.rng.gen_bool(0.02)) {
            self.counts.operator_givebacks += self.gb.operator_gives_back();
        }
    }

    /// One mailbox fault at a time (the mailbox is a redundant pair of disks), healed after a
    /// while, with a quiet gap before the next, which waits until both copies agree again
    /// (`Disks::copies_agree`: a copy that missed writes is still faulty).
    fn mailbox_faults(&mut self) {
        let now = self.now;
        match self.mailbox_fault {
            Some((f, until)) => {
                let torn_done = matches!(f, MailboxFault::Copy(c, CopyFault::TearNextWrite)
                    if self.gb.disks().copies[c].fault == CopyFault::None);
                if now >= until || torn_done {
                    set_mailbox_fault(&self.gb, f, false);
                    self.mailbox_fault = None;
                    self.mailbox_quiet_until = now + 3 * I;
                }
            }
            None if now >= self.mailbox_quiet_until
                && self.gb.disks().copies_agree()
                && self.plan.mailbox > 0.0
                && self.rng.gen_bool(self.plan.mailbox) =>
            {
                let node = IDS[self.rng.gen_range(0..2)];
                let copy = self.rng.gen_range(0..2);
                let f = match self.rng.gen_range(0..6) {
                    0 | 1 => MailboxFault::Copy(copy, CopyFault::TearNextWrite),
                    2 => MailboxFault::Copy(copy, CopyFault::Lost),
                    3 => MailboxFault::Copy(copy, CopyFault::Stale),
                    4 => MailboxFault::NoAccess(node),
                    _ => MailboxFault::ReadFails(node),
                };
                if matches!(f, MailboxFault::Copy(_, CopyFault::TearNextWrite)) {
                    self.counts.mailbox_torn_writes += 1;
                } else {
                    self.counts.mailbox_other_faults += 1;
                }
                set_mailbox_fault(&self.gb, f, true);
                self.mailbox_fault = Some((f, now + I * self.rng.gen_range(1..=30)));
            }
            None => {}
        }
    }

    /// Every fault off: links healed, mailbox healthy, no torn reads, no armed crash, a quiet
    /// wire.
    pub fn heal(&mut self) {
        self.links.heal_all();
        if let Some((f, _)) = self.mailbox_fault.take() {
            set_mailbox_fault(&self.gb, f, false);
        }
        self.gb.tear_probability = 0.0;
        for id in IDS {
            self.gb.node_mut(id).crash_at_action = None;
        }
        for i in 0..2 {
            let fuses = [
                self.logs.borrow()[i].fuse(),
                self.wbs[i].fuses().0,
                self.wbs[i].fuses().1,
            ];
            for f in fuses.into_iter().flatten() {
                f.disarm();
            }
        }
        for l in self.logs.borrow_mut().iter_mut() {
            l.faults.hook_crash = 0.0;
            l.faults.nvram_loss = 0.0;
        }
        self.msg.faults = self.msg.faults.quiet();
        self.msg.blocked = [false, false];
    }

    /// The pair is back to normal: both UP serving their own sets, links and clients up,
    /// mirrors idle.
    pub fn converged(&self) -> bool {
        self.gb.converged()
            && self.both_alive()
            && self.msg_link.is_some()
            && self.mirror_link.is_some()
            && self.logs.borrow().iter().all(LogLane::idle)
            && self.wbs.iter().all(WbLane::idle)
    }

    /// Runs the fault phase (`steps` steps); stops at the first violation.
    pub fn fault_phase(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step(true);
            if !self.violations.is_empty() {
                return;
            }
        }
    }

    /// Liveness: faults off, workload off; the pair must converge within `max_steps`, the
    /// logs then agree, every write completed, and the windows deliver fresh traffic.
    pub fn liveness(&mut self, max_steps: u64) -> Result<u64, String> {
        self.heal();
        self.workload = false;
        let mut took = None;
        for k in 0..=max_steps {
            if !self.violations.is_empty() {
                return Err(self.violations.join("; "));
            }
            if self.converged() {
                took = Some(k);
                break;
            }
            self.step(false);
        }
        let Some(took) = took else {
            return Err(format!(
                "no convergence within {max_steps} steps: giveback {:?}/{:?}, alive {:?}, messages on {:?}, mirror on {:?}, logs idle {:?}, write-back idle {:?}",
                self.gb.state(A),
                self.gb.state(B),
                self.alive,
                self.msg_link,
                self.mirror_link,
                [self.logs.borrow()[0].idle(), self.logs.borrow()[1].idle()],
                [self.wbs[0].idle(), self.wbs[1].idle()],
            ));
        };
        for w in 0..2 {
            self.logs.borrow()[w].check_agree()?;
            if !self.wbs[w].inflight.is_empty() {
                return Err(format!(
                    "write-back of node {w}: requests {:?} never completed",
                    self.wbs[w].inflight.keys().collect::<Vec<_>>()
                ));
            }
        }
        self.msg_liveness();
        Ok(took)
    }

    /// The windows: everything pending settles, then fresh traffic both ways arrives exactly
    /// once, in order, in one conversation (the ledger panics otherwise).
    fn msg_liveness(&mut self) {
        let sim = &mut self.msg;
        sim.settle_down("liveness");
        sim.ledger.borrow_mut().require_from_now();
        sim.check_complete("liveness");
        for side in 0..2 {
            sim.schedule(sim.now, MsgAction::Burst { side, n: 2 });
        }
        sim.settle_down("fresh traffic");
        sim.check_complete("fresh traffic");
        let (a, b) = (&sim.sides[0].win, &sim.sides[1].win);
        if a.peer_session() != Some(b.session()) || b.peer_session() != Some(a.session()) {
            sim.fail("the windows did not converge to one conversation");
        }
    }

    /// Adds what this run did to the counters.
    pub fn finish_counts(&mut self) {
        let c = &mut self.counts;
        c.seeds = 1;
        c.torn_state_reads = self.gb.torn_reads;
        c.wire_dropped = self.msg.dropped;
        c.wire_duplicated = self.msg.duplicated;
        c.wire_corrupted = self.msg.corrupted;
        c.wire_blocked = self.msg.blocked_drops;
        c.messages_delivered = self.msg.ledger.borrow().delivered_total;
        for l in self.logs.borrow().iter() {
            let (n, d) = (&l.counts, &l.ledger.counts);
            c.log_torn_landings += n.torn_landings;
            c.log_path_failures += n.path_failures;
            c.log_records_acked += n.acked;
            c.log_replays_checked += n.replays_checked;
            c.hook_crashes += n.hook_crashes;
            c.nvram_losses += n.nvram_losses;
            c.nvram_refusals += n.nvram_refusals;
            c.recoveries_fresh += n.recoveries_fresh;
            c.recoveries_replayed_by_partner += n.recoveries_replayed_by_partner;
            c.recoveries_replay_here += n.recoveries_replay_here;
            c.recoveries_after_stopped_replay += n.recoveries_after_stopped_replay;
            c.recoveries_from_partner_copy += n.recoveries_from_partner_copy;
            c.recoveries_deferred += n.recoveries_deferred;
            c.log_acked_unmirrored += n.acked_unmirrored;
            c.log_resends += n.resends;
            c.log_marks_cleared += n.marks_cleared;
            c.replays_after_cursor += n.replays_after_cursor;
            c.stale_copies_skipped += n.stale_copies_skipped;
            c.applied_here_copies_skipped += n.applied_here_copies_skipped;
            c.mirrors_lost += n.mirrors_lost;
            c.lease_holds += n.lease_holds;
            c.applied_by_partner += d.applied_by_partner;
            c.applied_by_own += d.applied_by_own;
            c.reapplied_after_crash += d.reapplied_after_crash;
            c.applied_under_service_checkpoint += d.applied_under_service_checkpoint;
            c.records_forced_lost += d.records_forced_lost;
            c.records_unavailable += d.records_unavailable;
            c.generations_closed += d.generations_closed;
            c.marks_dropped_at_start += n.marks_dropped_at_start;
        }
        for w in &self.wbs {
            c.wb_path_changes += w.counts.path_changes;
            c.wb_writes_mirrored += w.counts.mirrored;
            c.wb_writes_rejected += w.counts.rejected;
            c.wb_reopens_checked += w.counts.primary_reopens + w.counts.mirror_reopens;
            let (resyncs, blocks, held) = w.resync_stats();
            c.wb_blocks_destaged += w.counts.destaged;
            c.wb_partner_failures += w.counts.partner_failures;
            c.wb_resyncs += w.counts.resyncs + resyncs;
            c.wb_resync_blocks += w.counts.resync_blocks + blocks;
            c.wb_held += w.counts.held + held;
            c.wb_taken_over_blocks += w.counts.taken_over_blocks;
            c.wb_survivor_writes += w.counts.survivor_writes;
            c.wb_discarded_blocks += w.counts.discarded_blocks;
            c.wb_refused_taken_over += w.counts.refused_taken_over
                + w.mirror
                    .as_ref()
                    .map_or(0, |m| m.stats().refused_taken_over);
        }
    }
}
