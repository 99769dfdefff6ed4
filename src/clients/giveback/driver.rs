//! The giveback driver: binds a [`GivebackMachine`] to the manager's health block (the state
//! block is published through it and the partner's is read by the heartbeat's RDMA READs on
//! every link), the mailbox, the disk reservations, the storage service's hooks, kill
//! messages over the manager's messaging, and the clock.
//!
//! One thread runs the loop: it feeds the machine every partner-state copy the heartbeat
//! read, every kill message and every operator command, fires its timer, and executes its
//! actions in order, feeding results (mailbox contents, reservation holders, failures) back.
//! While a service hook runs (a replay may take seconds), a second, scoped thread keeps the
//! machine's mailbox heartbeat going ([`GivebackMachine::keepalive`]) so the partner does not
//! see this node as failed meanwhile.

use crate::clients::giveback::actions::{
    Action, Command, CommandReply, GivebackConfig, GivebackEvent, GivebackStatus,
};
use crate::clients::giveback::copy_mark::PartnerCopyMark;
use crate::clients::giveback::error::GivebackError;
use crate::clients::giveback::lease::ServingLease;
use crate::clients::giveback::machine::GivebackMachine;
use crate::clients::giveback::mailbox::{
    Mailbox, MailboxRecord, MailboxWrite, OwnRecord, ReplayedMark,
};
use crate::clients::giveback::own_log_mark::{
    OwnLogContext, OwnLogMark, OwnLogStamp, PartnerLogContext,
};
use crate::clients::giveback::reservation::{DiskSet, Reservations};
use crate::clients::giveback::state::{PartnerRead, StateBlock};
use crate::clients::giveback::writeback_epochs::WriteBackEpochs;
use crate::manager::{BandwidthClass, LinkId, Manager};
use crate::messaging::{Head, Messenger, MessengerConfig};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod report;

pub use report::{render_report, CommandReport, GivebackReport};

/// Period of the extra partner-state READs while waiting on a partner transition.
const FAST_READ_PERIOD: Duration = Duration::from_millis(2);

/// Messaging client name of the giveback driver (both nodes run one).
pub const GIVEBACK_CLIENT: &str = "giveback";
/// Function code of a kill message.
pub const KILL_CODE: u8 = 1;
/// Length of a kill message: target incarnation and sender incarnation, big-endian u64s.
pub const KILL_LEN: usize = 16;

/// What the storage service does when the protocol says so. Each call is made from the
/// driver's thread, in protocol order; an error is logged and counted (the protocol goes on:
/// the service must make its own operations safe to retry). Two failures also withhold a
/// disk set from the service until a retry succeeds: the own log's recovery (the own set)
/// and the replay of the partner's log at a takeover (the partner's set, see
/// [`ServiceHooks::replay_partner_log`]).
pub trait ServiceHooks: Send {
    /// Start serving a disk set (own set at the end of bring-up; the partner's at takeover).
    fn start_serving(&mut self, set: DiskSet) -> Result<(), String>;
    /// Stop serving a disk set (giveback of the partner's; all of them when halted).
    fn stop_serving(&mut self, set: DiskSet) -> Result<(), String>;
    /// Assume the partner's service identity (its network addresses, names).
    fn assume_identity(&mut self, partner: u32) -> Result<(), String>;
    /// Release the partner's service identity.
    fn release_identity(&mut self, partner: u32) -> Result<(), String>;
    /// Replay the partner's shadow log since its last consistency point (the mirror client)
    /// and destage its mirrored write-back blocks, given what the partner's mailbox record
    /// says of it ([`PartnerLogContext`]). On an error the partner's disk set is taken over
    /// (reserved, the partner fenced) but not served: [`ServiceHooks::start_serving`] is
    /// withheld and this hook called again every interval (at least every second) until it
    /// succeeds or the set is given back, so it must resume where it stopped (the shadow
    /// log's replay cursor and the write-back's takeover do).
    fn replay_partner_log(&mut self, context: &PartnerLogContext) -> Result<(), String>;
    /// Recover this node's own shadow log before it serves its own disks (F5.6), given what
    /// the partner's mailbox record says it replayed of that log at a takeover and the marks
    /// of this node's own mailbox record (the generation of its own log, whether the
    /// partner's copy is outdated), which the shadow log keeps up to date from then on.
    /// Called once per serving of the own disk set, right before
    /// [`ServiceHooks::start_serving`]. The default has no log to recover.
    fn recover_own_log(&mut self, context: &OwnLogContext) -> Result<(), String> {
        let _ = context;
        Ok(())
    }
    /// What this node replayed of the partner's shadow log at takeovers (its replay cursor:
    /// the last position, and whether the replay went through the whole copy), written into
    /// every mailbox record of this node so a restarted partner learns it. The default
    /// replays no log.
    fn replayed_partner_log(&mut self) -> Option<ReplayedMark> {
        None
    }
}

/// A mailbox read tried up to five times, 10, 20, 40 and 80 ms apart: both copies of a record
/// may be torn for a moment while its node writes them.
fn read_with_retries<T>(
    mut read: impl FnMut() -> Result<T, GivebackError>,
) -> Result<T, GivebackError> {
    let mut r = read();
    for attempt in 0..4 {
        if r.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10 << attempt));
        r = read();
    }
    r
}

/// Identity before any side effect (F4.1): another live process writing this node's mailbox
/// slot (the same node id on the other controller, or a second instance) makes its record
/// advance. The start reads the slot again after two intervals (the other writer's period)
/// and refuses if it moved, before it registers anything with the partner.
fn refuse_a_live_twin(
    mailbox: &mut dyn Mailbox,
    node: u32,
    first: OwnRecord,
    interval: Duration,
) -> Result<(), GivebackError> {
    let Some(seen) = first.newest else {
        return Ok(());
    };
    std::thread::sleep(2 * interval);
    let again = read_with_retries(|| mailbox.read_own())?;
    match again.newest.filter(|r| r.key() > seen.key()) {
        None => Ok(()),
        Some(r) => {
            tracing::error!(node, incarnation = r.incarnation, heartbeat = r.heartbeat, "another live process writes this node's mailbox record: the same node id runs elsewhere; not starting");
            Err(GivebackError::IdentityInUse {
                node,
                incarnation: r.incarnation,
                heartbeat: r.heartbeat,
            })
        }
    }
}

/// The least time between two tries of a failed own-log recovery or partner-log replay (a
/// try may fetch the whole log from the partner).
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// The partner's disk set is taken over but its log replay (or write-back destage) failed:
/// the service does not serve the set until a retry succeeds.
struct PartnerReplayPending {
    /// What the failed try was given.
    context: PartnerLogContext,
    /// The next try.
    retry_at: Instant,
    /// The machine started serving the set; the start-serving hook was withheld.
    start_withheld: bool,
}

/// The driver's mailbox: every record written carries the replayed partner log of the last
/// ask of the hooks ([`ServiceHooks::replayed_partner_log`]), the keepalive writes during a
/// hook included.
struct StampingMailbox {
    inner: Box<dyn Mailbox>,
    replayed: Option<ReplayedMark>,
    /// The outdated mark of the partner's copy of this node's log (F5.7).
    copy_mark: Arc<PartnerCopyMark>,
    /// The generation of this node's own log (F5.6).
    own_log: Arc<OwnLogMark>,
    /// The write-back epochs of this node's record (kept across restarts from the own
    /// record) and the partner's as last read.
    writeback: Arc<WriteBackEpochs>,
}

impl Mailbox for StampingMailbox {
    fn write_own(&mut self, rec: &MailboxRecord) -> Result<MailboxWrite, GivebackError> {
        let stamp = self.copy_mark.stamp();
        let own_log = self.own_log.stamp_log();
        let own_writeback_epoch = self.writeback.own().stamp();
        let took_over_writeback = self.writeback.took_over().stamp();
        let rec = MailboxRecord {
            replayed_partner_log: self.replayed,
            partner_copy_outdated: stamp.outdated,
            partner_copy_complete_for: stamp.complete_for,
            writeback_copy_outdated: stamp.writeback_outdated,
            own_log_generation: own_log.generation,
            own_log_applied_here: own_log.applied_here,
            own_writeback_epoch,
            took_over_writeback,
            ..*rec
        };
        let w = self.inner.write_own(&rec)?;
        // A mark is durable once both copies hold it: a later fault of one copy must not
        // lose it (a write that reached one copy counts for the heartbeat, not for marks).
        if w.primary && w.backup {
            self.copy_mark.written(stamp);
            self.own_log.written_stamp(own_log);
            self.writeback.own().written(own_writeback_epoch);
            self.writeback.took_over().written(took_over_writeback);
        }
        Ok(w)
    }
    fn read_partner(&mut self) -> Result<Option<MailboxRecord>, GivebackError> {
        self.inner.read_partner()
    }
    fn read_own(&mut self) -> Result<OwnRecord, GivebackError> {
        self.inner.read_own()
    }
}

/// Settings of a [`GivebackNode`].
#[derive(Clone, Debug)]
pub struct GivebackOptions {
    /// Poll interval: state block reads, mailbox writes and reads, reservation checks. `None`
    /// takes the manager's heartbeat interval (the partner's block is read that often).
    pub interval: Option<Duration>,
    /// Intervals without partner progress on every link and in the mailbox before the partner
    /// is declared failed.
    pub miss_intervals: u32,
    /// Give back automatically when the repaired partner reaches MBWAIT.
    pub auto_giveback: bool,
    /// How long the partner waits in MBWAIT before the automatic giveback.
    pub giveback_delay: Duration,
    /// After an operator's takeover, give back only on an operator's giveback.
    pub hold_operator_takeover: bool,
    /// The deadline of [`GivebackNode::command`] (its `_timeout` variant takes its own).
    pub command_timeout: Duration,
}

impl Default for GivebackOptions {
    fn default() -> GivebackOptions {
        GivebackOptions {
            interval: None,
            miss_intervals: 5,
            auto_giveback: true,
            giveback_delay: Duration::ZERO,
            hold_operator_takeover: true,
            command_timeout: Duration::from_secs(10),
        }
    }
}

enum Request {
    Command(Command, Sender<CommandReply>),
    Stop,
}

struct Shared {
    status: GivebackStatus,
    interval: Duration,
    events: Vec<Sender<GivebackEvent>>,
    hook_failures: u64,
    kills_sent: u64,
    kills_received: u64,
    reboots: u64,
    /// Why the own disk set is withheld: the own log's recovery failed (None: recovered, or
    /// not due yet).
    own_recovery_error: Option<String>,
    /// Why the partner's disk set is withheld after a takeover: the replay of its log (or
    /// the destage of its write-back blocks) failed (tried again every interval).
    partner_replay_error: Option<String>,
}

/// A running giveback client: partner state, failure detection, takeover and coordinated
/// giveback for this node.
pub struct GivebackNode {
    requests: Sender<Request>,
    shared: Arc<Mutex<Shared>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    messenger: Arc<Messenger>,
    copy_mark: Arc<PartnerCopyMark>,
    own_log: Arc<OwnLogMark>,
    serving_lease: Arc<ServingLease>,
    writeback: Arc<WriteBackEpochs>,
    command_timeout: Duration,
}

impl std::fmt::Debug for GivebackNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GivebackNode").finish_non_exhaustive()
    }
}

impl GivebackNode {
    /// Starts the client on `manager` (it keeps a clone: the manager runs while the client
    /// does): registers the `giveback` messenger for kill messages and starts the driver
    /// thread, whose machine begins in BOOTING.
    pub fn start(
        manager: &Arc<Manager>,
        options: GivebackOptions,
        mailbox: Box<dyn Mailbox>,
        reservations: Box<dyn Reservations>,
        hooks: Box<dyn ServiceHooks>,
    ) -> Result<GivebackNode, GivebackError> {
        let cfg = manager.config();
        let interval = options.interval.unwrap_or_else(|| cfg.heartbeat.interval());
        let machine_cfg = GivebackConfig {
            me: cfg.node_id,
            partner: cfg.partner_id,
            interval,
            miss_intervals: options.miss_intervals.max(1),
            auto_giveback: options.auto_giveback,
            giveback_delay: options.giveback_delay,
            hold_operator_takeover: options.hold_operator_takeover,
            ..GivebackConfig::new(cfg.node_id, cfg.partner_id)
        };
        let mut mailbox = mailbox;
        // The copy's sync state and the own log generation survive restarts: the newest own
        // record holds what this node marked durably, and a start that cannot read it does
        // not start.
        let own = read_with_retries(|| mailbox.read_own()).inspect_err(|e| {
            tracing::error!(error = %e, "own mailbox record unreadable at start: not starting (what it marked cannot be carried over)");
        })?;
        refuse_a_live_twin(&mut *mailbox, cfg.node_id, own, interval)?;
        let messenger = Arc::new(
            Messenger::start(
                manager,
                MessengerConfig::new(GIVEBACK_CLIENT, BandwidthClass::Low),
            )
            .map_err(GivebackError::StartMessenger)?,
        );
        let (kill_tx, kill_rx) = unbounded();
        messenger
            .on(KILL_CODE, move |msg, _out| {
                if let Some(target) = decode_kill(msg.payload) {
                    let _ = kill_tx.send(target);
                } else {
                    tracing::warn!(len = msg.payload.len(), "malformed kill message ignored");
                }
            })
            .map_err(GivebackError::StartMessenger)?;
        let incarnation = manager.incarnation();
        let machine = GivebackMachine::new(machine_cfg.clone(), incarnation, Instant::now());
        let shared = Arc::new(Mutex::new(Shared {
            status: machine.status(),
            interval,
            events: Vec::new(),
            hook_failures: 0,
            kills_sent: 0,
            kills_received: 0,
            reboots: 0,
            own_recovery_error: None,
            partner_replay_error: None,
        }));
        let (requests, request_rx) = unbounded();
        let mut hooks = hooks;
        let inherited = own
            .inherited_stamp()
            .ok_or(GivebackError::OwnRecordUnknown)?;
        if !own.whole {
            tracing::warn!(?inherited, "own mailbox record read from one copy only: the partner's copy of this node's log counts as confirmed on no incarnation until re-sent");
        }
        let copy_mark = Arc::new(PartnerCopyMark::new(inherited));
        let own_log = Arc::new(OwnLogMark::inherit(own.newest.map_or(
            OwnLogStamp::default(),
            |r| OwnLogStamp {
                generation: r.own_log_generation,
                applied_here: r.own_log_applied_here,
            },
        )));
        let writeback = Arc::new(WriteBackEpochs::new(
            own.newest.map_or(0, |r| r.own_writeback_epoch),
            own.newest.map_or(0, |r| r.took_over_writeback),
        ));
        let mailbox = Box::new(StampingMailbox {
            // What the own record published stays published if the replay cursor in NVRAM
            // was lost (a replaced controller): the partner must not apply those records
            // again.
            replayed: hooks
                .replayed_partner_log()
                .max(own.newest.and_then(|r| r.replayed_partner_log)),
            inner: mailbox,
            copy_mark: copy_mark.clone(),
            own_log: own_log.clone(),
            writeback: writeback.clone(),
        });
        let serving_lease = Arc::new(ServingLease::new());
        let mut driver = Driver {
            manager: manager.clone(),
            machine,
            machine_cfg,
            incarnation,
            mailbox,
            reservations,
            hooks,
            messenger: messenger.clone(),
            kills: kill_rx,
            requests: request_rx,
            shared: shared.clone(),
            seen: HashMap::new(),
            awaiting_partner_up: false,
            last_fast_read: Instant::now(),
            own_start_pending: None,
            partner_replay: None,
            serving_lease: serving_lease.clone(),
            metrics: crate::recorded_metrics::GivebackMetrics::new(cfg.node_id),
        };
        let thread = std::thread::Builder::new()
            .name("il-giveback".into())
            .spawn(move || driver.run())
            .map_err(|source| GivebackError::Spawn { source })?;
        Ok(GivebackNode {
            requests,
            shared,
            thread: Mutex::new(Some(thread)),
            messenger,
            copy_mark,
            own_log,
            serving_lease,
            writeback,
            command_timeout: options.command_timeout,
        })
    }

    /// The write-back epochs of this node's mailbox record and the partner's as last read
    /// (see `writeback_epochs.rs` in the giveback module): give them to the mirrored
    /// write-back
    /// ([`MirroredWriteBack::set_writeback_epochs`](crate::clients::mirror::MirroredWriteBack::set_writeback_epochs)).
    /// The own-log recovery hook's [`OwnLogContext`] carries them as well.
    pub fn writeback_epochs(&self) -> Arc<WriteBackEpochs> {
        self.writeback.clone()
    }

    /// The serving lease (see `lease.rs` in the giveback module): give it to the shadow log
    /// ([`ShadowMirror::set_serving_lease`](crate::clients::mirror::ShadowMirror::set_serving_lease)),
    /// which acknowledges a record only while it runs. The own-log recovery hook's
    /// [`OwnLogContext`] carries it as well.
    pub fn serving_lease(&self) -> Arc<ServingLease> {
        self.serving_lease.clone()
    }

    /// The outdated mark of the partner's copy of this node's shadow log, which this node's
    /// mailbox record carries (F5.7): give it to the shadow log
    /// ([`ShadowMirror::set_partner_copy_mark`](crate::clients::mirror::ShadowMirror::set_partner_copy_mark)).
    pub fn partner_copy_mark(&self) -> Arc<PartnerCopyMark> {
        self.copy_mark.clone()
    }

    /// The machine's latest status (this node and the partner as last read).
    pub fn status(&self) -> GivebackStatus {
        self.shared.lock().status.clone()
    }

    /// Counters kept by the driver: hook failures, kill messages sent and received, reboots.
    pub fn driver_counters(&self) -> DriverCounters {
        let s = self.shared.lock();
        DriverCounters {
            hook_failures: s.hook_failures,
            kills_sent: s.kills_sent,
            kills_received: s.kills_received,
            reboots: s.reboots,
        }
    }

    /// Runs an operator command (takeover, giveback, check-only variants, auto-giveback),
    /// waiting for its reply at most [`GivebackOptions::command_timeout`].
    pub fn command(&self, cmd: Command) -> Result<CommandReply, GivebackError> {
        self.command_timeout(cmd, self.command_timeout)
    }

    /// [`command`](Self::command) waiting at most `timeout` for the reply
    /// ([`GivebackError::CommandTimeout`] past it: the driver may still run the command).
    pub fn command_timeout(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandReply, GivebackError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let what = format!("{cmd:?}");
        self.requests
            .send(Request::Command(cmd, tx))
            .map_err(|_| GivebackError::Stopped)?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => GivebackError::CommandTimeout {
                command: what,
                waited: timeout,
            },
            crossbeam_channel::RecvTimeoutError::Disconnected => GivebackError::Stopped,
        })
    }

    /// A channel of the protocol's events from now on (partner failed, takeover done,
    /// giveback done with its outage window, ...).
    pub fn subscribe(&self) -> Receiver<GivebackEvent> {
        let (tx, rx) = unbounded();
        self.shared.lock().events.push(tx);
        rx
    }

    /// Follows the failure detector for a mirror client (F5.7 item "appends stop waiting"):
    /// on a thread of its own, calls `declare(why)` whenever this node declares the partner
    /// failed or starts taking it over, so the client stops waiting for its mirror at once
    /// instead of after its own partner timeout. `declare` returns false once its client is
    /// gone; the thread then ends.
    pub fn on_partner_failed(
        &self,
        declare: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<(), GivebackError> {
        let events = self.subscribe();
        std::thread::Builder::new()
            .name("il-giveback-follow".into())
            .spawn(move || {
                for ev in events {
                    let why = match ev {
                        GivebackEvent::PartnerFailed { silent_for } => format!(
                            "the giveback client declared the partner failed (silent for {silent_for:?})"
                        ),
                        GivebackEvent::TakeoverStarted { .. } => "taking the partner over".into(),
                        _ => continue,
                    };
                    if !declare(&why) {
                        return;
                    }
                }
            })
            .map(|_| ())
            .map_err(|source| GivebackError::Spawn { source })
    }

    /// The messenger kill messages travel on.
    pub fn messenger(&self) -> &Messenger {
        &self.messenger
    }

    /// Stops the driver thread (the node stops taking part in the protocol; nothing is
    /// released: a stopped node looks like a failed one to the partner).
    pub fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("giveback driver thread panicked");
            }
        }
    }
}

impl Drop for GivebackNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counters of the driver (beside the machine's own in [`GivebackStatus`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverCounters {
    /// Service hook calls that returned an error.
    pub hook_failures: u64,
    /// Kill messages sent.
    pub kills_sent: u64,
    /// Kill messages received.
    pub kills_received: u64,
    /// Protocol restarts after HALTED.
    pub reboots: u64,
}

struct Driver {
    manager: Arc<Manager>,
    machine: GivebackMachine,
    machine_cfg: GivebackConfig,
    incarnation: u64,
    mailbox: Box<StampingMailbox>,
    reservations: Box<dyn Reservations>,
    hooks: Box<dyn ServiceHooks>,
    messenger: Arc<Messenger>,
    kills: Receiver<u64>,
    requests: Receiver<Request>,
    shared: Arc<Mutex<Shared>>,
    /// Per link: (believed reads, torn reads) already fed to the machine.
    seen: HashMap<LinkId, (u64, u64)>,
    /// A giveback started and the partner has not been read UP yet.
    awaiting_partner_up: bool,
    /// Last extra partner read asked of the manager.
    last_fast_read: Instant,
    /// The own disk set is to be served but its log is not recovered: the next try.
    own_start_pending: Option<Instant>,
    /// The partner's log replay at the last takeover failed: its set is not served yet.
    partner_replay: Option<PartnerReplayPending>,
    /// The machine's serving lease as last published.
    serving_lease: Arc<ServingLease>,
    metrics: crate::recorded_metrics::GivebackMetrics,
}

impl Driver {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.feed_partner_reads(now);
            while let Ok(target) = self.kills.try_recv() {
                self.shared.lock().kills_received += 1;
                self.machine.handle_kill(now, target);
            }
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
            }
            self.execute_actions();
            if self.own_start_pending.is_some_and(|t| t <= Instant::now()) {
                self.serve_own_when_recovered();
            }
            if self
                .partner_replay
                .as_ref()
                .is_some_and(|p| p.start_withheld && p.retry_at <= Instant::now())
            {
                self.replay_partner_log(None);
            }
            self.publish_status();
            self.fast_partner_reads();
            // Wait for a request, or until the timer, or a short poll period (partner reads
            // and kill messages arrive without a wake-up).
            let poll = Duration::from_millis(2);
            let wait = self
                .machine
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()).min(poll))
                .unwrap_or(poll);
            match self.requests.recv_timeout(wait) {
                Ok(Request::Command(cmd, reply)) => {
                    let r = self.machine.handle_command(Instant::now(), cmd);
                    let _ = reply.send(r);
                }
                Ok(Request::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn feed_partner_reads(&mut self, now: Instant) {
        let partner = self.machine_cfg.partner;
        for obs in self.manager.partner_state() {
            let seen = self.seen.entry(obs.link).or_insert((0, 0));
            if obs.torn > seen.1 {
                for _ in seen.1..obs.torn {
                    self.machine.handle_partner_torn(now, obs.link);
                }
                seen.1 = obs.torn;
            }
            if obs.reads > seen.0 {
                seen.0 = obs.reads;
                let Some(block) = obs.block else { continue };
                if block.node_id != partner {
                    tracing::warn!(
                        link = obs.link,
                        node = block.node_id,
                        "state block of an unexpected node"
                    );
                    continue;
                }
                match StateBlock::decode(block.state, &block.extension) {
                    Ok(state) => self.machine.handle_partner_read(
                        now,
                        obs.link,
                        PartnerRead {
                            incarnation: block.incarnation,
                            progress: block.progress,
                            block: state,
                        },
                    ),
                    // A partner that has not published a giveback state yet (state word 0)
                    // or an unknown layout: progress only counts once the block decodes.
                    Err(e) => {
                        tracing::debug!(link = obs.link, error = %e, "partner state block not decoded");
                        self.machine.handle_partner_torn(now, obs.link);
                    }
                }
            }
        }
    }

    fn execute_actions(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            let now = Instant::now();
            let partner = self.machine_cfg.partner;
            match &action {
                Action::Publish(block) => {
                    let (state, ext) = block.encode();
                    self.manager.publish_state(state, ext);
                }
                Action::ReadMailbox => match self.mailbox.read_partner() {
                    Ok(rec) => {
                        if let Some(r) = rec {
                            self.mailbox.writeback.saw_partner(r.own_writeback_epoch);
                        }
                        self.machine.handle_mailbox(now, rec)
                    }
                    Err(e) => self.machine.handle_io_failed(now, &action, e.to_string()),
                },
                Action::WriteMailbox(rec) => match self.mailbox.write_own(rec) {
                    Ok(w) => self.machine.handle_mailbox_written(now, w),
                    Err(e) => self.machine.handle_io_failed(now, &action, e.to_string()),
                },
                Action::Reserve { set, preempt } => {
                    match self.reservations.reserve(*set, *preempt) {
                        Ok(holder) => self.machine.handle_reservation(now, *set, holder),
                        Err(e) => self.machine.handle_io_failed(now, &action, e.to_string()),
                    }
                }
                Action::Release { set } => {
                    if let Err(e) = self.reservations.release(*set) {
                        self.machine.handle_io_failed(now, &action, e.to_string());
                    }
                }
                Action::CheckReservation { set } => match self.reservations.check(*set) {
                    Ok(holder) => self.machine.handle_reservation(now, *set, holder),
                    Err(e) => self.machine.handle_io_failed(now, &action, e.to_string()),
                },
                Action::StartServing { set } => {
                    if *set == self.machine_cfg.me {
                        self.serve_own_when_recovered();
                    } else if let Some(p) = &mut self.partner_replay {
                        tracing::error!(set, "the partner's disks are taken over but not served: its log is not replayed (tried again every interval)");
                        p.start_withheld = true;
                    } else {
                        let _ = self.run_hook("start serving", |h| h.start_serving(*set));
                    }
                }
                Action::StopServing { set } => {
                    if *set == self.machine_cfg.me && self.own_start_pending.take().is_some() {
                        // Never started: nothing to stop.
                        continue;
                    }
                    if *set != self.machine_cfg.me {
                        // A replay still pending is given up with the set (the partner
                        // applies what the replay cursor does not cover itself).
                        if self.end_partner_replay().is_some_and(|p| p.start_withheld) {
                            continue; // never started
                        }
                    }
                    let _ = self.run_hook("stop serving", |h| h.stop_serving(*set));
                }
                Action::AssumeIdentity => {
                    let _ = self.run_hook("assume identity", |h| h.assume_identity(partner));
                }
                Action::ReleaseIdentity => {
                    let _ = self.run_hook("release identity", |h| h.release_identity(partner));
                }
                Action::ReplayPartnerLog {
                    partner_log_generation,
                    partner_writeback_epoch,
                    partner_log_applied_here,
                } => {
                    let context = PartnerLogContext {
                        partner,
                        partner_log_generation: *partner_log_generation,
                        forced_loss: self.machine.status().forced_loss,
                        partner_writeback_epoch: *partner_writeback_epoch,
                        partner_log_applied_here: *partner_log_applied_here,
                    };
                    self.replay_partner_log(Some(context));
                }
                Action::SendKill { target_incarnation } => {
                    let msg = encode_kill(*target_incarnation, self.incarnation);
                    match self.messenger.send(Head::control(KILL_CODE), &msg) {
                        Ok(_) => self.shared.lock().kills_sent += 1,
                        Err(e) => tracing::debug!(error = %e, "kill message not queued"),
                    }
                }
                Action::Reboot => {
                    // The protocol restarts as a new incarnation (its mailbox records must
                    // read as newer than the halted one's); the partner learns it from the
                    // mailbox and targets kill messages at it.
                    self.incarnation = self.incarnation.wrapping_add(1);
                    tracing::warn!(
                        incarnation = self.incarnation,
                        "giveback: restarting the protocol (reboot)"
                    );
                    self.shared.lock().reboots += 1;
                    self.end_partner_replay();
                    self.machine =
                        GivebackMachine::new(self.machine_cfg.clone(), self.incarnation, now);
                }
            }
            self.drain_events();
        }
        self.drain_events();
    }

    /// While the partner is in a transition this node waits on (it took over and the partner
    /// is booting, in GIVEWAIT or MBWAIT; or a giveback waits for the partner's UP), READ the
    /// partner's block every couple of milliseconds instead of once per heartbeat interval:
    /// the survivor sees GIVEWAIT, MBWAIT and UP sooner, which shortens the outage window.
    fn fast_partner_reads(&mut self) {
        use crate::clients::giveback::state::NodeState;
        let waiting = self.awaiting_partner_up
            || (self.machine.state() == NodeState::Takeover
                && self.machine.status().partner_state.is_some_and(|s| {
                    matches!(
                        s,
                        NodeState::Booting | NodeState::GiveWait | NodeState::MbWait
                    )
                }));
        if waiting && self.last_fast_read.elapsed() >= FAST_READ_PERIOD {
            self.last_fast_read = Instant::now();
            self.manager.read_partner_now();
        }
    }

    /// Runs the partner-log replay hook: with `context` at a takeover, without it to retry a
    /// failed one (then the partner's set, withheld until now, is served once it succeeds).
    fn replay_partner_log(&mut self, context: Option<PartnerLogContext>) {
        let (context, withheld) = match (context, &self.partner_replay) {
            (Some(c), _) => (c, false),
            (None, Some(p)) => (p.context.clone(), p.start_withheld),
            (None, None) => return,
        };
        let r = self.run_hook("replay partner log", |h| h.replay_partner_log(&context));
        let now_replayed = self.hooks.replayed_partner_log();
        self.mailbox.replayed = self.mailbox.replayed.max(now_replayed);
        match r {
            Ok(()) => {
                self.end_partner_replay();
                if withheld {
                    let partner = self.machine_cfg.partner;
                    tracing::info!(partner, "the partner's log is replayed: serving its disks");
                    let _ = self.run_hook("start serving", |h| h.start_serving(partner));
                }
            }
            Err(e) => {
                self.shared.lock().partner_replay_error = Some(e);
                self.partner_replay = Some(PartnerReplayPending {
                    context,
                    retry_at: self.next_recovery_try(),
                    start_withheld: withheld,
                });
            }
        }
    }

    /// No replay of the partner's log is pending any more (it succeeded, or the set or the
    /// protocol run it was for is gone): the pending one, if any.
    fn end_partner_replay(&mut self) -> Option<PartnerReplayPending> {
        self.shared.lock().partner_replay_error = None;
        self.partner_replay.take()
    }

    /// When a failed own-log recovery or partner-log replay is tried again.
    fn next_recovery_try(&self) -> Instant {
        Instant::now() + self.machine_cfg.interval.max(RECOVERY_RETRY)
    }

    /// Serves the own disk set once the own log is recovered: until the recovery succeeded,
    /// the set is withheld from the service (the start-serving hook is not called; the
    /// status says why), and the recovery is tried again every interval (at least
    /// [`RECOVERY_RETRY`]).
    fn serve_own_when_recovered(&mut self) {
        match self.recover_own_log() {
            Ok(()) => {
                self.shared.lock().own_recovery_error = None;
                self.own_start_pending = None;
                let me = self.machine_cfg.me;
                let _ = self.run_hook("start serving", |h| h.start_serving(me));
            }
            Err(e) => {
                tracing::error!(error = %e, "own log not recovered: this node's disks are not served until it is (tried again every interval)");
                self.shared.lock().own_recovery_error = Some(e);
                self.own_start_pending = Some(self.next_recovery_try());
            }
        }
    }

    /// Before serving the own disk set: reads what the partner's mailbox record says it
    /// replayed of this node's log (a few tries: both copies may be torn for a moment) and
    /// runs the own-log recovery hook with it. Without a readable record the recovery is not
    /// run: the hook failure is counted and returned.
    fn recover_own_log(&mut self) -> Result<(), String> {
        match read_with_retries(|| self.mailbox.read_partner()) {
            Ok(rec) => {
                let partner_replayed = rec.and_then(|r| r.replayed_partner_log);
                let partner_took_over = rec.is_some_and(|r| r.taken_over);
                let context = OwnLogContext {
                    partner_took_over_writeback: rec.map_or(0, |r| r.took_over_writeback),
                    writeback: self.mailbox.writeback.clone(),
                    partner_replayed,
                    partner_took_over,
                    own_log: self.mailbox.own_log.clone(),
                    copy_mark: self.mailbox.copy_mark.clone(),
                    serving_lease: self.serving_lease.clone(),
                    incarnation: self.incarnation,
                };
                self.run_hook("recover own log", |h| h.recover_own_log(&context))
            }
            Err(e) => self.hook_result(
                "recover own log",
                Err(format!(
                    "the partner's mailbox record cannot be read ({e}): whether a takeover replayed this node's log is unknown"
                )),
            ),
        }
    }

    /// Calls a service hook on this thread while a scoped thread keeps the mailbox heartbeat
    /// going ([`keep_alive`]); the hook's other effects on the machine (a fence after failed
    /// heartbeat writes) show as queued actions once it returns.
    fn run_hook(
        &mut self,
        what: &str,
        hook: impl FnOnce(&mut dyn ServiceHooks) -> Result<(), String>,
    ) -> Result<(), String> {
        let Driver {
            machine,
            mailbox,
            hooks,
            serving_lease,
            ..
        } = self;
        let lease = &**serving_lease;
        let (done, done_rx) = crossbeam_channel::bounded::<()>(0);
        let r = std::thread::scope(|s| {
            let keeper = std::thread::Builder::new()
                .name("il-giveback-keepalive".into())
                .spawn_scoped(s, move || {
                    keep_alive(machine, mailbox.as_mut(), lease, &done_rx)
                });
            let r = hook(hooks.as_mut());
            drop(done);
            match keeper {
                Ok(k) => {
                    if k.join().is_err() {
                        tracing::error!("giveback keepalive thread panicked");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no keepalive thread during a service hook"),
            }
            r
        });
        self.hook_result(what, r)
    }

    /// Counts a failed hook; returns its error.
    fn hook_result(&mut self, what: &str, r: Result<(), String>) -> Result<(), String> {
        if let Err(e) = &r {
            tracing::error!(hook = what, error = %e, "service hook failed");
            self.shared.lock().hook_failures += 1;
        }
        r
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.machine.poll_event() {
            tracing::info!(event = ?ev, "giveback");
            match ev {
                GivebackEvent::TakeoverDone { .. } => self.metrics.takeovers.increment(1),
                GivebackEvent::GivebackDone { .. } => self.metrics.givebacks.increment(1),
                _ => {}
            }
            match ev {
                GivebackEvent::GivebackStarted => self.awaiting_partner_up = true,
                GivebackEvent::GivebackDone { outage } => {
                    self.awaiting_partner_up = false;
                    tracing::info!(
                        outage_ms = outage.as_secs_f64() * 1e3,
                        intervals = outage.as_secs_f64() / self.machine_cfg.interval.as_secs_f64(),
                        "giveback complete: partner serves again"
                    );
                }
                GivebackEvent::PartnerFailed { .. } => {
                    self.awaiting_partner_up = false;
                    self.metrics.partner_failures.increment(1);
                }
                _ => {}
            }
            let mut s = self.shared.lock();
            s.events.retain(|tx| tx.send(ev.clone()).is_ok());
        }
    }

    fn publish_status(&mut self) {
        self.serving_lease
            .set(self.machine.poll_lease(), self.machine.serves_own());
        let status = self.machine.status();
        self.metrics.state.set(f64::from(status.state as u16));
        self.shared.lock().status = status;
    }
}

/// The mailbox heartbeat while the driver thread is in a service hook: at every due interval,
/// the machine's keepalive record is written and its result fed back, until `done` is dropped.
fn keep_alive(
    machine: &mut GivebackMachine,
    mailbox: &mut dyn Mailbox,
    lease: &ServingLease,
    done: &Receiver<()>,
) {
    loop {
        let woke = match machine.poll_timeout() {
            Some(t) => done.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => done.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if !matches!(woke, Err(RecvTimeoutError::Timeout)) {
            return;
        }
        let now = Instant::now();
        if let Some(rec) = machine.keepalive(now) {
            tracing::debug!(
                heartbeat = rec.heartbeat,
                "mailbox heartbeat during a service hook"
            );
            match mailbox.write_own(&rec) {
                Ok(w) => machine.handle_mailbox_written(now, w),
                Err(e) => machine.handle_io_failed(now, &Action::WriteMailbox(rec), e.to_string()),
            }
            lease.set(machine.poll_lease(), machine.serves_own());
        }
    }
}

/// Encodes a kill message.
pub fn encode_kill(target_incarnation: u64, sender_incarnation: u64) -> [u8; KILL_LEN] {
    let mut b = [0u8; KILL_LEN];
    b[0..8].copy_from_slice(&target_incarnation.to_be_bytes());
    b[8..16].copy_from_slice(&sender_incarnation.to_be_bytes());
    b
}

/// Decodes a kill message: the target incarnation, or `None` if malformed.
pub fn decode_kill(b: &[u8]) -> Option<u64> {
    if b.len() != KILL_LEN {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&b[0..8]);
    Some(u64::from_be_bytes(t))
}
