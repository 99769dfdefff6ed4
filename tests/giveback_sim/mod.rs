//! A deterministic simulator of the HA pair in virtual time: two giveback machines, links
//! carrying RDMA READ snapshots of each other's health block (cuttable, tearable), kill
//! messages, the shared mailbox copies and reservations (`disks`), and a ground-truth model of
//! which node serves which disk set. Node crash = drop the machine (its reservations and
//! mailbox record stay); restart = a new machine with the next incarnation after a delay.
//! A slow replay hook blocks a node's driver: its machine gets no input (its manager still
//! advances the progress counter the partner READs), except the mailbox heartbeat the driver
//! keeps going during hooks (`GivebackMachine::keepalive`), unless turned off.
//!
//! The world checks the safety invariants after every action a driver carries out and records
//! violations; tests assert there are none (and print the trace tail when there are).

pub mod disks;
pub mod sweep;

use disks::{disks, Disks, SharedDisks, SimMailbox, SimReservations};
use interlink::clients::giveback::{
    Action, Command, CommandOutcome, CommandReply, CopyGap, CopyStamp, GivebackConfig,
    GivebackError, GivebackEvent, GivebackMachine, Mailbox, MailboxRecord, MailboxWrite, NodeState,
    OwnLogStamp, PartnerRead, ReplayedMark, Reservations, StateBlock,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Poll interval of both machines.
pub const I: Duration = Duration::from_millis(100);
/// Detection window in intervals.
pub const K: u32 = 5;
/// Node ids (and disk sets).
pub const A: u32 = 1;
/// Node ids (and disk sets).
pub const B: u32 = 2;

/// The shadow-log side of the service hooks (the swarm's log lanes), called where the giveback
/// driver calls its `ServiceHooks` and stamps its mailbox records (`StampingMailbox`): the
/// replay hook at `ReplayPartnerLog`, the own-log recovery right before the own set is served
/// (given the partner's record's `replayed_partner_log`; `None` when that record cannot be
/// read), and on every mailbox write the replay cursor and the outdated mark of the partner's
/// copy. Without one (the giveback tests) nothing is stamped and the hooks do nothing.
pub trait LogService {
    /// Node `me` replays its partner's log (takeover); `forced_loss` is what the machine
    /// records a forced takeover lost, `partner_log_generation` what the partner's record
    /// says of its own log (the action's), and `applied_here` whether that record says the
    /// partner applied records of it itself with the copy not following. Returns whether
    /// the node died inside the hook.
    fn replay_partner_log(
        &mut self,
        me: u32,
        forced_loss: Option<CopyGap>,
        partner_log_generation: u64,
        applied_here: bool,
    ) -> bool;
    /// Node `me` recovers its own log before serving its own set. Returns whether the node
    /// died inside the hook.
    /// `partner_took_over`: the partner's record says TAKEN_OVER.
    fn recover_own_log(
        &mut self,
        me: u32,
        partner_replayed: Option<Option<ReplayedMark>>,
        partner_took_over: bool,
    ) -> bool;
    /// The replay cursor `me`'s driver stamps (asked at its start and after each replay).
    fn replayed_partner_log(&mut self, me: u32) -> Option<ReplayedMark>;
    /// The outdated mark a write of `me`'s record carries now.
    fn copy_mark_stamp(&mut self, me: u32) -> CopyStamp;
    /// A write of `me`'s record carrying `carried` succeeded.
    fn copy_mark_written(&mut self, me: u32, carried: CopyStamp);
    /// The own log generation (and applied-here flag) a write of `me`'s record carries now.
    fn own_log_stamp(&mut self, me: u32) -> OwnLogStamp;
    /// A write of `me`'s record carrying own log `carried` reached both copies.
    fn own_log_written(&mut self, me: u32, carried: OwnLogStamp);
    /// Node `me`'s driver started and inherited `inherited` from its own record
    /// (`OwnRecord::inherited_stamp`; None: no record) and the own log generation and
    /// applied-here flag `own_log` it names.
    fn started(
        &mut self,
        me: u32,
        incarnation: u64,
        inherited: Option<CopyStamp>,
        own_log: OwnLogStamp,
    );
}

/// What fed the machine the input whose handling queued an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    New,
    Timeout,
    Read,
    Mailbox,
    Written,
    Reservation,
    IoFailed,
    Kill,
    Command,
}

/// One thing that happened at one node.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Action(Action),
    State(NodeState),
    Event(GivebackEvent),
    Crash,
    Restart(u64),
}

/// A trace entry.
#[derive(Clone, Debug)]
pub struct TraceItem {
    pub at: Duration,
    pub node: u32,
    pub cause: Cause,
    /// The node's state when it was recorded.
    pub state: Option<NodeState>,
    pub step: Step,
}

/// One simulated node: its driver state and ground truth.
pub struct Node {
    pub id: u32,
    pub partner: u32,
    pub machine: Option<GivebackMachine>,
    pub incarnation: u64,
    pub progress: u64,
    pub published: Option<StateBlock>,
    /// Halted after a Reboot action: still readable until then, then dark.
    pub rebooting_until: Option<Duration>,
    pub restart_at: Option<Duration>,
    pub serving: BTreeSet<u32>,
    pub identity: bool,
    /// Crash right before carrying out this action (count of actions done by this node).
    pub crash_at_action: Option<u64>,
    pub actions_done: u64,
    pub auto_giveback: bool,
    /// The machine's giveback delay (default zero).
    pub giveback_delay: Duration,
    /// The machine's hold of an operator's takeover (default on, as in the product).
    pub hold_operator_takeover: bool,
    /// Mailbox reads per interval in MBWAIT (the machine's default is 10).
    pub mbwait_reads_per_interval: u32,
    /// The next ReplayPartnerLog hook blocks the driver this long (then cleared).
    pub slow_replay: Option<Duration>,
    /// The driver writes the machine's keepalive mailbox records while blocked in a hook
    /// (the real driver does; off = the driver before it, silent while blocked).
    pub keepalive_in_hooks: bool,
    /// Blocked in a hook until then.
    pub busy_until: Option<Duration>,
    /// The whole process stopped (SIGSTOP, a long pause) until then: no input reaches its
    /// machine, its progress counter stands still, its driver writes nothing.
    pub stalled_until: Option<Duration>,
    /// Stalled and not yet through an own reservation check since: what it serves is what
    /// it believed before the stall (its disk I/O is fenced by the reservation), so the
    /// serving checks leave it out.
    pub resuming: bool,
    /// Resuming, and its own reservation check done: it stops resuming once the actions that
    /// check queued are carried out.
    resume_checked: bool,
    /// When its last stall ended.
    resumed_at: Option<Duration>,
    /// The machine's giveback count at its last ReleaseIdentity.
    givebacks_seen: u32,
    /// While blocked: the next interval (progress advance, keepalive).
    beat_at: Duration,
    pub events: Vec<(Duration, GivebackEvent)>,
    /// The replay cursor the driver stamps on this node's records.
    pub stamp_replayed: Option<ReplayedMark>,
    mailbox: SimMailbox,
    reservations: SimReservations,
    tags: VecDeque<Cause>,
}

/// The simulated pair.
pub struct World {
    pub base: Instant,
    pub now: Duration,
    pub nodes: [Node; 2],
    pub links: [bool; 2],
    pub disks: SharedDisks,
    pub rng: SmallRng,
    /// Probability that a READ comes back torn.
    pub tear_probability: f64,
    /// Nodes whose block every READ sees torn (with a bogus MBWAIT state in it).
    pub tear_all_reads_of: BTreeSet<u32>,
    pub restart_delay: Duration,
    pub halt_linger: Duration,
    pub trace: Vec<TraceItem>,
    /// Keep only this many trace items (0 = all).
    pub trace_limit: usize,
    pub violations: Vec<String>,
    pub torn_reads: u64,
    pub kills_delivered: u64,
    /// Takeover replays carried out: (time, node that replayed its partner's log).
    pub replays: Vec<(Duration, u32)>,
    /// The shadow-log hooks (None: no log).
    pub log_service: Option<Box<dyn LogService>>,
    kills: VecDeque<(usize, u64)>,
}

fn index(id: u32) -> usize {
    if id == A {
        0
    } else {
        1
    }
}

impl World {
    /// Both nodes start at time 0.
    pub fn new(seed: u64) -> World {
        let shared: SharedDisks = Arc::new(Mutex::new(Disks::new()));
        let node = |id: u32, partner: u32| Node {
            id,
            partner,
            machine: None,
            incarnation: 0,
            progress: 0,
            published: None,
            rebooting_until: None,
            restart_at: Some(Duration::ZERO),
            serving: BTreeSet::new(),
            identity: false,
            crash_at_action: None,
            actions_done: 0,
            auto_giveback: true,
            giveback_delay: Duration::ZERO,
            hold_operator_takeover: true,
            mbwait_reads_per_interval: 10,
            slow_replay: None,
            keepalive_in_hooks: true,
            busy_until: None,
            stalled_until: None,
            resuming: false,
            resume_checked: false,
            givebacks_seen: 0,
            resumed_at: None,
            beat_at: Duration::ZERO,
            events: Vec::new(),
            stamp_replayed: None,
            mailbox: SimMailbox {
                disks: shared.clone(),
                me: id,
                partner,
            },
            reservations: SimReservations {
                disks: shared.clone(),
                me: id,
            },
            tags: VecDeque::new(),
        };
        World {
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: [node(A, B), node(B, A)],
            links: [true, true],
            disks: shared.clone(),
            rng: SmallRng::seed_from_u64(seed),
            tear_probability: 0.0,
            tear_all_reads_of: BTreeSet::new(),
            restart_delay: I * 12,
            halt_linger: I * 2,
            trace: Vec::new(),
            trace_limit: 0,
            violations: Vec::new(),
            torn_reads: 0,
            kills_delivered: 0,
            replays: Vec::new(),
            log_service: None,
            kills: VecDeque::new(),
        }
    }

    pub fn node(&self, id: u32) -> &Node {
        &self.nodes[index(id)]
    }

    pub fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[index(id)]
    }

    /// The machine's state (`None` while crashed or rebooting dark).
    pub fn state(&self, id: u32) -> Option<NodeState> {
        self.node(id).machine.as_ref().map(|m| m.state())
    }

    pub fn machine(&self, id: u32) -> &GivebackMachine {
        self.node(id).machine.as_ref().expect("node is running")
    }

    pub fn holder(&self, set: u32) -> Option<u32> {
        disks(&self.disks).reservations.get(&set).copied()
    }

    pub fn at(&self, d: Duration) -> Instant {
        self.base + d
    }

    // ------------------------------------------------------------------ running

    /// Runs every due event up to and including `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.violations.is_empty() {
            match self.next_event() {
                Some(t) if t <= until => {
                    self.now = t.max(self.now);
                    self.process_due();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs event by event until a trace item recorded from now on satisfies `pred`; returns
    /// whether one did within `limit`.
    pub fn run_until_trace(&mut self, limit: Duration, pred: impl Fn(&TraceItem) -> bool) -> bool {
        let until = self.now + limit;
        let mut seen = self.trace.len();
        while self.violations.is_empty() {
            if self.trace[seen.min(self.trace.len())..].iter().any(&pred) {
                return true;
            }
            seen = self.trace.len();
            match self.next_event() {
                Some(t) if t <= until => {
                    self.now = t.max(self.now);
                    self.process_due();
                }
                _ => return false,
            }
        }
        false
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs interval by interval until `done` holds (checked between intervals); returns the
    /// intervals it took, or `None` after `max_intervals`.
    pub fn run_until_true(
        &mut self,
        max_intervals: u32,
        mut done: impl FnMut(&World) -> bool,
    ) -> Option<u32> {
        for i in 0..=max_intervals {
            if done(self) {
                return Some(i);
            }
            if !self.violations.is_empty() {
                return None;
            }
            self.run_for(I);
        }
        None
    }

    fn next_event(&self) -> Option<Duration> {
        self.nodes
            .iter()
            .flat_map(|n| {
                if n.stalled_until.is_some() {
                    // Nothing of a stopped process is due before it resumes.
                    return [n.stalled_until, None, None, None, None];
                }
                let tick = match n.busy_until {
                    Some(_) => Some(n.beat_at),
                    None => n
                        .machine
                        .as_ref()
                        .and_then(|m| m.poll_timeout())
                        .map(|t| t.saturating_duration_since(self.base)),
                };
                [tick, n.restart_at, n.rebooting_until, n.busy_until, None]
            })
            .flatten()
            .min()
    }

    fn process_due(&mut self) {
        for i in 0..2 {
            if let Some(until) = self.nodes[i].stalled_until {
                if until > self.now {
                    continue;
                }
                self.nodes[i].stalled_until = None;
                self.nodes[i].resumed_at = Some(self.now);
            }
            if self.nodes[i].rebooting_until.is_some_and(|t| t <= self.now) {
                self.go_dark(i);
            }
            if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) {
                self.restart(i);
            }
            if let Some(until) = self.nodes[i].busy_until {
                if self.nodes[i].beat_at <= self.now {
                    self.beat_while_busy(i);
                }
                if until <= self.now {
                    self.nodes[i].busy_until = None;
                    self.drain(i, Cause::Written);
                }
                continue;
            }
            let due = self.nodes[i]
                .machine
                .as_ref()
                .and_then(|m| m.poll_timeout())
                .is_some_and(|t| t <= self.at(self.now));
            if due {
                self.tick(i);
            }
        }
    }

    fn restart(&mut self, i: usize) {
        let now = self.at(self.now);
        let n = &mut self.nodes[i];
        // As the driver: a start that cannot read its own record (what it marked there) does
        // not start; it is tried again.
        let Some((inherited, own)) = n
            .mailbox
            .read_own()
            .ok()
            .and_then(|own| Some((own.inherited_stamp()?, own)))
        else {
            n.restart_at = Some(self.now + I);
            return;
        };
        n.restart_at = None;
        n.incarnation += 1;
        n.givebacks_seen = 0;
        n.progress = 0;
        n.published = None;
        let cfg = GivebackConfig {
            me: n.id,
            partner: n.partner,
            interval: I,
            miss_intervals: K,
            auto_giveback: n.auto_giveback,
            giveback_delay: n.giveback_delay,
            hold_operator_takeover: n.hold_operator_takeover,
            mbwait_reads_per_interval: n.mbwait_reads_per_interval,
        };
        n.machine = Some(GivebackMachine::new(cfg, n.incarnation, now));
        if let Some(svc) = self.log_service.as_mut() {
            let me = n.id;
            let recorded = own.newest.map_or(OwnLogStamp::default(), |r| OwnLogStamp {
                generation: r.own_log_generation,
                applied_here: r.own_log_applied_here,
            });
            svc.started(me, n.incarnation, own.newest.map(|_| inherited), recorded);
            // As the driver: what the own record published stays published.
            n.stamp_replayed = svc
                .replayed_partner_log(me)
                .max(own.newest.and_then(|r| r.replayed_partner_log));
        }
        let inc = n.incarnation;
        self.record(i, Cause::New, Step::Restart(inc));
        self.drain(i, Cause::New);
    }

    /// An interval of a node blocked in a hook: its manager advances the progress counter;
    /// its driver writes the machine's keepalive mailbox record (if it does).
    fn beat_while_busy(&mut self, i: usize) {
        let now = self.at(self.now);
        let n = &mut self.nodes[i];
        n.progress += 1;
        n.beat_at = self.now + I;
        if !n.keepalive_in_hooks {
            return;
        }
        let Some(rec) = n.machine.as_mut().and_then(|m| m.keepalive(now)) else {
            return;
        };
        self.record(i, Cause::Timeout, Step::Action(Action::WriteMailbox(rec)));
        if self.nodes[i].machine.is_some() {
            let r = self.write_record(i, &rec);
            if let Some(m) = self.nodes[i].machine.as_mut() {
                match r {
                    Ok(w) => m.handle_mailbox_written(now, w),
                    Err(e) => m.handle_io_failed(now, &Action::WriteMailbox(rec), e.to_string()),
                }
            }
        }
        self.tag(i, Cause::Written);
        self.collect_events(i);
    }

    fn go_dark(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.rebooting_until = None;
        n.busy_until = None;
        n.stalled_until = None;
        n.resuming = false;
        n.resume_checked = false;
        n.machine = None;
        n.published = None;
        n.restart_at = Some(self.now + self.restart_delay);
    }

    /// Writes node `i`'s record, stamped as the driver's `StampingMailbox` does.
    fn write_record(
        &mut self,
        i: usize,
        rec: &MailboxRecord,
    ) -> Result<MailboxWrite, GivebackError> {
        let n = &mut self.nodes[i];
        let Some(svc) = self.log_service.as_mut() else {
            return n.mailbox.write_own(rec);
        };
        let stamp = svc.copy_mark_stamp(n.id);
        let own_log = svc.own_log_stamp(n.id);
        let stamped = MailboxRecord {
            replayed_partner_log: n.stamp_replayed,
            partner_copy_outdated: stamp.outdated,
            partner_copy_complete_for: stamp.complete_for,
            own_log_generation: own_log.generation,
            own_log_applied_here: own_log.applied_here,
            ..*rec
        };
        let w = n.mailbox.write_own(&stamped)?;
        // As the driver: a mark is durable once both copies hold it.
        if w.primary && w.backup {
            svc.copy_mark_written(n.id, stamp);
            svc.own_log_written(n.id, own_log);
        }
        Ok(w)
    }

    /// Node `id`'s read of its partner's mailbox record (None: the read failed).
    #[allow(dead_code)] // the swarm's
    pub fn read_partner_record(&mut self, id: u32) -> Option<Option<MailboxRecord>> {
        self.nodes[index(id)].mailbox.read_partner().ok()
    }

    /// Whether node `i` serves `set` for the serving checks: a node that stalled serves
    /// what it believed before until its first reservation check after, and then, while
    /// within a detection window of the stall, only under a running serving lease (its
    /// partner may have declared it failed meanwhile; the lease is what keeps the two apart,
    /// and its disk I/O is fenced by the reservation).
    pub fn serves(&self, i: usize, set: u32) -> bool {
        let n = &self.nodes[i];
        if n.resuming || !n.serving.contains(&set) {
            return false;
        }
        let recently = n
            .resumed_at
            .is_some_and(|t| self.now.saturating_sub(t) <= I * K);
        let lease = n
            .machine
            .as_ref()
            .and_then(|m| m.poll_lease())
            .is_some_and(|u| self.at(self.now) < u);
        !recently || lease
    }

    /// Stops node `id`'s whole process for `d` (between steps; not while its driver is
    /// blocked in a hook). Returns whether it stalled.
    #[allow(dead_code)] // the swarm's
    pub fn stall(&mut self, id: u32, d: Duration) -> bool {
        let now = self.now;
        let n = &mut self.nodes[index(id)];
        if n.machine.is_none() || n.busy_until.is_some() || n.stalled_until.is_some() {
            return false;
        }
        n.stalled_until = Some(now + d);
        n.resuming = true;
        true
    }

    /// Crashes node `id` now (between steps).
    pub fn crash(&mut self, id: u32) {
        self.crash_index(index(id));
    }

    fn crash_index(&mut self, i: usize) {
        if self.nodes[i].machine.is_none() {
            return;
        }
        self.record(i, Cause::New, Step::Crash);
        let n = &mut self.nodes[i];
        n.machine = None;
        n.published = None;
        n.serving.clear();
        n.identity = false;
        n.crash_at_action = None;
        n.rebooting_until = None;
        n.busy_until = None;
        n.stalled_until = None;
        n.resuming = false;
        n.resume_checked = false;
        n.tags.clear();
        n.restart_at = Some(self.now + self.restart_delay);
    }

    /// A node's interval: the manager advances its progress counter and READs the partner's
    /// block on every live link, then the machine's timer runs.
    fn tick(&mut self, i: usize) {
        self.nodes[i].progress += 1;
        let partner = 1 - i;
        for link in 0..2u8 {
            if !self.links[link as usize] || self.nodes[i].machine.is_none() {
                continue;
            }
            let Some(bytes) = self.read_block(partner) else {
                continue;
            };
            let now = self.at(self.now);
            let id = self.nodes[partner].id;
            let Some(m) = self.nodes[i].machine.as_mut() else {
                return;
            };
            let cause = match PartnerRead::decode(&bytes, id) {
                Ok(read) => {
                    m.handle_partner_read(now, link, read);
                    Cause::Read
                }
                Err(_) => {
                    m.handle_partner_torn(now, link);
                    Cause::Read
                }
            };
            self.tag(i, cause);
            self.drain(i, cause);
        }
        let now = self.at(self.now);
        if let Some(m) = self.nodes[i].machine.as_mut() {
            m.handle_timeout(now);
            self.tag(i, Cause::Timeout);
            self.drain(i, Cause::Timeout);
        }
    }

    /// The bytes one READ of node `p`'s health block returns (possibly torn).
    fn read_block(&mut self, p: usize) -> Option<[u8; 64]> {
        let n = &self.nodes[p];
        n.machine.as_ref()?;
        let block = n.published?;
        let mut bytes = block.to_health(n.id, n.incarnation, n.progress).encode();
        let torn_all = self.tear_all_reads_of.contains(&n.id);
        if torn_all || self.rng.gen_bool(self.tear_probability) {
            self.torn_reads += 1;
            // A bogus MBWAIT claim over a torn copy: the checksum no longer matches.
            let bogus = StateBlock {
                state: NodeState::MbWait,
                ..block
            }
            .to_health(n.id, n.incarnation, n.progress + 1)
            .encode();
            let cut = self.rng.gen_range(1..60);
            bytes[..cut].copy_from_slice(&bogus[..cut]);
            if bytes == bogus || self.rng.gen_bool(0.3) {
                let bit = self.rng.gen_range(0..60 * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            if bytes == block.to_health(n.id, n.incarnation, n.progress).encode() {
                bytes[61] ^= 0xff;
            }
        }
        Some(bytes)
    }

    /// Records how many actions the last input queued, tagged with its cause.
    fn tag(&mut self, i: usize, cause: Cause) {
        let n = &mut self.nodes[i];
        let pending = n.machine.as_ref().map_or(0, |m| m.pending_actions());
        if pending < n.tags.len() {
            // The machine dropped what it had queued (halt): everything left is this input's.
            n.tags = std::iter::repeat_n(cause, pending).collect();
        } else {
            let more = pending - n.tags.len();
            n.tags.extend(std::iter::repeat_n(cause, more));
        }
    }

    /// Carries out the node's actions one at a time, feeding results back.
    fn drain(&mut self, i: usize, first: Cause) {
        self.tag(i, first);
        loop {
            let Some(m) = self.nodes[i].machine.as_mut() else {
                return;
            };
            let Some(action) = m.poll_action() else {
                let n = &mut self.nodes[i];
                if n.resume_checked {
                    n.resume_checked = false;
                    n.resuming = false;
                    self.check_serving();
                }
                self.collect_events(i);
                break;
            };
            let cause = self.nodes[i].tags.pop_front().unwrap_or(first);
            self.collect_events(i);
            if self.nodes[i].crash_at_action == Some(self.nodes[i].actions_done) {
                self.crash_index(i);
                return;
            }
            self.nodes[i].actions_done += 1;
            if let Action::Publish(b) = &action {
                let old = self.nodes[i].published.map(|p| p.state);
                if old != Some(b.state) {
                    self.record(i, cause, Step::State(b.state));
                }
            } else {
                self.record(i, cause, Step::Action(action.clone()));
            }
            let result_cause = self.execute(i, &action);
            if let Some(c) = result_cause {
                self.tag(i, c);
            }
            self.check_serving();
            if !self.violations.is_empty() || self.nodes[i].busy_until.is_some() {
                return;
            }
        }
        self.deliver_kills();
    }

    fn collect_events(&mut self, i: usize) {
        let now = self.now;
        while let Some(e) = self.nodes[i].machine.as_mut().and_then(|m| m.poll_event()) {
            self.record(i, Cause::New, Step::Event(e.clone()));
            self.nodes[i].events.push((now, e));
        }
    }

    fn deliver_kills(&mut self) {
        // A driver blocked in a hook takes its kill messages when it returns.
        let mut held = VecDeque::new();
        while let Some((target, inc)) = self.kills.pop_front() {
            let now = self.at(self.now);
            let t = &self.nodes[target];
            if t.busy_until.is_some() || t.stalled_until.is_some() {
                held.push_back((target, inc));
                continue;
            }
            if let Some(m) = self.nodes[target].machine.as_mut() {
                self.kills_delivered += 1;
                m.handle_kill(now, inc);
                self.tag(target, Cause::Kill);
                self.drain(target, Cause::Kill);
            }
        }
        self.kills.extend(held);
    }

    /// Carries out one action; returns the cause of the input it fed back, if any.
    fn execute(&mut self, i: usize, action: &Action) -> Option<Cause> {
        let now = self.at(self.now);
        let p = 1 - i;
        let (me, partner) = (self.nodes[i].id, self.nodes[p].id);
        let n = &mut self.nodes[i];
        let m = n.machine.as_mut()?;
        match action {
            Action::Publish(b) => {
                n.published = Some(*b);
                None
            }
            Action::ReadMailbox => {
                let res = n.mailbox.read_partner();
                match res {
                    Ok(r) => m.handle_mailbox(now, r),
                    Err(e) => m.handle_io_failed(now, action, e.to_string()),
                }
                Some(Cause::Mailbox)
            }
            Action::WriteMailbox(r) => {
                let res = self.write_record(i, r);
                let m = self.nodes[i].machine.as_mut()?;
                match res {
                    Ok(w) => m.handle_mailbox_written(now, w),
                    Err(e) => m.handle_io_failed(now, action, e.to_string()),
                }
                Some(Cause::Written)
            }
            Action::Reserve { set, preempt } => {
                let result = n.reservations.reserve(*set, *preempt);
                // A reserve that fails at I/O takes nothing.
                if *preempt && result.is_ok() {
                    self.check_preempt(i, *set);
                }
                let m = self.nodes[i].machine.as_mut()?;
                match result {
                    Ok(h) => m.handle_reservation(now, *set, h),
                    Err(e) => m.handle_io_failed(now, action, e.to_string()),
                }
                Some(Cause::Reservation)
            }
            Action::Release { set } => {
                if let Err(e) = n.reservations.release(*set) {
                    m.handle_io_failed(now, action, e.to_string());
                    return Some(Cause::IoFailed);
                }
                None
            }
            Action::CheckReservation { set } => {
                match n.reservations.check(*set) {
                    Ok(h) => {
                        m.handle_reservation(now, *set, h);
                        if *set == me && n.resuming {
                            n.resume_checked = true;
                        }
                    }
                    Err(e) => m.handle_io_failed(now, action, e.to_string()),
                }
                Some(Cause::Reservation)
            }
            Action::StartServing { set } => {
                if *set == me {
                    if let Some(svc) = self.log_service.as_mut() {
                        // The driver reads the partner's record right before (a few tries).
                        let n = &mut self.nodes[i];
                        let read = (0..5).find_map(|_| n.mailbox.read_partner().ok());
                        let took_over = read.flatten().is_some_and(|r| r.taken_over);
                        let replayed = read.map(|r| r.and_then(|r| r.replayed_partner_log));
                        if svc.recover_own_log(me, replayed, took_over) {
                            self.crash_index(i);
                            return None;
                        }
                    }
                }
                self.nodes[i].serving.insert(*set);
                None
            }
            Action::StopServing { set } => {
                n.serving.remove(set);
                None
            }
            Action::AssumeIdentity => {
                n.identity = true;
                None
            }
            Action::ReleaseIdentity => {
                n.identity = false;
                let givebacks = m.status().givebacks;
                let giveback = givebacks != n.givebacks_seen;
                n.givebacks_seen = givebacks;
                if m.state() == NodeState::Up && giveback {
                    // A giveback: the partner must truly be waiting in MBWAIT right now.
                    let truth = self.state(partner);
                    if truth != Some(NodeState::MbWait) {
                        self.violate(format!(
                            "node {me} gave back while node {partner} is {truth:?}"
                        ));
                    }
                } else if m.state() == NodeState::Up {
                    // The partner took its disks back (it declared this node failed): they
                    // are reserved by it, not by this node.
                    let holder = self.nodes[p].reservations.check(partner).ok().flatten();
                    if holder == Some(me) {
                        self.violate(format!(
                            "node {me} stopped serving node {partner}'s disks it still holds"
                        ));
                    }
                }
                None
            }
            Action::ReplayPartnerLog {
                partner_log_generation,
                partner_log_applied_here,
                ..
            } => {
                if let Some(d) = n.slow_replay.take() {
                    n.busy_until = Some(self.now + d);
                    n.beat_at = m
                        .poll_timeout()
                        .map_or(self.now, |t| t.saturating_duration_since(self.base));
                }
                self.replays.push((self.now, me));
                // What a forced takeover went past (the lane accounts for the loss).
                let forced = m.status().forced_loss;
                if let Some(svc) = self.log_service.as_mut() {
                    if svc.replay_partner_log(
                        me,
                        forced,
                        *partner_log_generation,
                        *partner_log_applied_here,
                    ) {
                        self.crash_index(i);
                        return None;
                    }
                    let now = svc.replayed_partner_log(me);
                    let n = &mut self.nodes[i];
                    n.stamp_replayed = n.stamp_replayed.max(now);
                }
                None
            }
            Action::SendKill { target_incarnation } => {
                if self.links.iter().any(|l| *l) {
                    self.kills.push_back((p, *target_incarnation));
                }
                None
            }
            Action::Reboot => {
                n.rebooting_until = Some(self.now + self.halt_linger);
                None
            }
        }
    }

    // ------------------------------------------------------------------ invariants

    fn violate(&mut self, what: String) {
        self.violations.push(format!("t={:?}: {what}", self.now));
    }

    /// At most one node serves each disk set.
    fn check_serving(&mut self) {
        for set in [A, B] {
            let servers: Vec<u32> = (0..2)
                .filter(|&i| self.serves(i, set))
                .map(|i| &self.nodes[i])
                .map(|n| n.id)
                .collect();
            if servers.len() > 1 {
                self.violate(format!("split brain: disk set {set} served by {servers:?}"));
            }
        }
    }

    /// A preempting reserve of `set` by node `i` that went through (one failing at I/O takes
    /// nothing): nobody else serves that set, and a takeover never hits a live serving partner.
    fn check_preempt(&mut self, i: usize, set: u32) {
        let me = self.nodes[i].id;
        let other = &self.nodes[1 - i];
        let silent_stall = other
            .resumed_at
            .is_some_and(|t| self.now.saturating_sub(t) <= I * K);
        if other.resuming || silent_stall {
            // Stopped, or resumed and not yet through its reservation check: the preempt
            // fences its disk I/O. Or it resumed within the last detection window from a
            // stall as long as one: the partner's evidence of its failure was real, and the
            // takeover's reconfirming mailbox read (or its own next reservation check)
            // settles the race.
        } else if other.serving.contains(&set) {
            self.violate(format!(
                "node {me} preempts set {set} while node {} serves it",
                other.id
            ));
        } else if set == other.id && !other.serving.is_empty() {
            self.violate(format!(
                "node {me} takes over node {} which serves {:?}",
                other.id, other.serving
            ));
        }
    }

    /// The pair is back to normal: both UP, each serving exactly its own set, holding its own
    /// reservation, no identity assumed.
    pub fn converged(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.machine
                .as_ref()
                .is_some_and(|m| m.state() == NodeState::Up)
                && n.serving == BTreeSet::from([n.id])
                && !n.identity
                && self.holder(n.id) == Some(n.id)
        })
    }

    // ------------------------------------------------------------------ operator and faults

    /// Whether node `id` runs and serves the partner after an operator's takeover that waits
    /// for an operator's giveback.
    pub fn operator_hold(&self, id: u32) -> bool {
        self.node(id).machine.is_some() && self.machine(id).status().operator_hold
    }

    /// The operator gives back every held operator's takeover (refused until the partner
    /// waits for it); returns the givebacks started.
    pub fn operator_gives_back(&mut self) -> u64 {
        let mut started = 0;
        for id in [A, B] {
            if self.operator_hold(id)
                && self
                    .command(id, Command::Giveback { check_only: false })
                    .outcome
                    == CommandOutcome::Started
            {
                started += 1;
            }
        }
        started
    }

    pub fn command(&mut self, id: u32, cmd: Command) -> CommandReply {
        let i = index(id);
        let now = self.at(self.now);
        let m = self.nodes[i].machine.as_mut().expect("node is running");
        let reply = m.handle_command(now, cmd);
        self.tag(i, Cause::Command);
        self.drain(i, Cause::Command);
        reply
    }

    pub fn disks(&self) -> std::sync::MutexGuard<'_, Disks> {
        disks(&self.disks)
    }

    fn record(&mut self, i: usize, cause: Cause, step: Step) {
        let state = self.nodes[i].machine.as_ref().map(|m| m.state());
        self.trace.push(TraceItem {
            at: self.now,
            node: self.nodes[i].id,
            cause,
            state,
            step,
        });
        if self.trace_limit > 0 && self.trace.len() > 2 * self.trace_limit {
            self.trace.drain(..self.trace.len() - self.trace_limit);
        }
    }

    /// The last `n` trace items, one per line.
    pub fn trace_tail(&self, n: usize) -> String {
        let from = self.trace.len().saturating_sub(n);
        self.trace[from..]
            .iter()
            .map(|t| {
                format!(
                    "{:>9.1?} node {} [{:?}] {:?}: {:?}",
                    t.at, t.node, t.state, t.cause, t.step
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails the test with the violations and the trace tail.
    pub fn assert_safe(&self, context: &str) {
        assert!(
            self.violations.is_empty(),
            "{context}: {:?}\n--- last trace items ---\n{}",
            self.violations,
            self.trace_tail(60)
        );
    }

    /// Events of node `id` since time `from`.
    pub fn events_since(&self, id: u32, from: Duration) -> Vec<GivebackEvent> {
        self.node(id)
            .events
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, e)| e.clone())
            .collect()
    }
}
