//! What the giveback machine and its driver exchange: configuration, actions for the driver,
//! events, operator commands and their replies, and the status snapshot.

use super::mailbox::{LogMark, MailboxRecord};
use super::reservation::DiskSet;
use super::state::{NodeState, StateBlock};
use std::time::{Duration, Instant};

/// Parameters of one node's giveback machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivebackConfig {
    /// This node's id (and the name of its own disk set).
    pub me: u32,
    /// The partner's id (and the name of its disk set).
    pub partner: u32,
    /// Poll interval: mailbox write and read, reservation check, kill messages.
    pub interval: Duration,
    /// K: intervals without any sign of life (on every link and in the mailbox) before the
    /// partner is declared failed.
    pub miss_intervals: u32,
    /// Give back automatically when the partner reaches MBWAIT.
    pub auto_giveback: bool,
    /// How long the partner waits in MBWAIT before the automatic giveback (zero: at the first
    /// read that shows it there). An operator's giveback does not wait.
    pub giveback_delay: Duration,
    /// After an operator's takeover, give back only when an operator says so: the automatic
    /// giveback is for takeovers after a failure. Held for this incarnation (a restart of
    /// the node that took over falls back to `auto_giveback`).
    pub hold_operator_takeover: bool,
    /// Mailbox reads per interval while in MBWAIT (the outage window ends with the read that
    /// sees the partner's giveback); 1 reads only at the interval tick.
    pub mbwait_reads_per_interval: u32,
}

impl GivebackConfig {
    /// Defaults for `me` and `partner`: a 100 ms interval, K = 5, automatic giveback on,
    /// without delay, except after an operator's takeover.
    pub fn new(me: u32, partner: u32) -> GivebackConfig {
        GivebackConfig {
            me,
            partner,
            interval: Duration::from_millis(100),
            miss_intervals: 5,
            auto_giveback: true,
            giveback_delay: Duration::ZERO,
            hold_operator_takeover: true,
            mbwait_reads_per_interval: 10,
        }
    }

    /// The failure-detection window: `miss_intervals × interval`.
    pub fn detection_window(&self) -> Duration {
        self.interval * self.miss_intervals.max(1)
    }
}

/// Something for the driver to do. The driver takes actions one at a time with
/// [`super::GivebackMachine::poll_action`], carries each out in order, and reports its result
/// (`handle_mailbox`, `handle_mailbox_written`, `handle_reservation`) or its failure
/// (`handle_io_failed`) before taking the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put this state block into the health block the partner READs.
    Publish(StateBlock),
    /// Read the partner's mailbox record; report with `handle_mailbox`.
    ReadMailbox,
    /// Write this node's mailbox record to both copies; report with `handle_mailbox_written`.
    WriteMailbox(MailboxRecord),
    /// Reserve a disk set; report the holder afterwards with `handle_reservation`.
    Reserve {
        /// The disk set.
        set: DiskSet,
        /// Take it from any other holder.
        preempt: bool,
    },
    /// Release a disk set if this node holds it (no result to report).
    Release {
        /// The disk set.
        set: DiskSet,
    },
    /// Look up who holds a disk set; report with `handle_reservation`.
    CheckReservation {
        /// The disk set.
        set: DiskSet,
    },
    /// Bring a disk set into service (the storage service's hook).
    StartServing {
        /// The disk set.
        set: DiskSet,
    },
    /// Take a disk set out of service.
    StopServing {
        /// The disk set.
        set: DiskSet,
    },
    /// Assume the partner's service identity (addresses, names: the storage service's hook).
    AssumeIdentity,
    /// Give the partner's service identity back.
    ReleaseIdentity,
    /// Replay the partner's shadow log since its last consistency point (the mirror client's
    /// hook, F5.2).
    ReplayPartnerLog {
        /// The newest generation of the partner's own log that may hold an acknowledged
        /// record, as its mailbox record (read after the reservation) says (0: none
        /// recorded): a copy of an older generation was recovered by the partner itself,
        /// and is not replayed again.
        partner_log_generation: u64,
        /// The epoch of the partner's write-back table, as the same record says (0: none
        /// recorded): named in this node's record once the partner's mirrored blocks were
        /// taken over whole.
        partner_writeback_epoch: u64,
        /// The same record says the partner applied records of that generation itself with
        /// this node's copy not following: nothing of it is replayed from the copy.
        partner_log_applied_here: bool,
    },
    /// Send a kill message to the partner incarnation (over any link).
    SendKill {
        /// The incarnation to kill; other incarnations ignore it.
        target_incarnation: u64,
    },
    /// Restart this node: the machine is Halted; the driver starts a new one (a new
    /// incarnation) in Booting.
    Reboot,
}

/// Something that happened, for logs, counters and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GivebackEvent {
    /// This node's state changed.
    StateChanged {
        /// Old state.
        from: NodeState,
        /// New state.
        to: NodeState,
    },
    /// A believed read showed the partner in a new state.
    PartnerStateChanged {
        /// The partner incarnation read.
        incarnation: u64,
        /// Its state.
        state: NodeState,
    },
    /// No sign of life on any link nor in the mailbox for the detection window.
    PartnerFailed {
        /// Time since the partner's last observed change.
        silent_for: Duration,
    },
    /// The partner showed life again after being declared failed.
    PartnerAlive,
    /// Every link is silent while the partner's mailbox record keeps changing.
    InterconnectDown,
    /// A link brought a change of the partner's block again.
    InterconnectRestored,
    /// A takeover began (reserving the partner's disks, or killing a live partner first).
    TakeoverStarted {
        /// Started by an operator command.
        manual: bool,
    },
    /// The partner's disk set is served here.
    TakeoverDone {
        /// From the partner's last observed change to the takeover decision.
        detection: Duration,
    },
    /// A fresh read showed the partner waiting (GIVEWAIT or MBWAIT): no more kill messages.
    KillsStopped,
    /// The partner failed again during its bring-up: kill messages resume.
    KillsResumed,
    /// The partner's disk set and identity were given back (step 560).
    GivebackStarted,
    /// A fresh read showed the partner UP after a giveback.
    GivebackDone {
        /// From the giveback to that read: the partner's clients' outage window.
        outage: Duration,
    },
    /// This node found its own disks reserved by the partner, or could not write its mailbox
    /// with every link silent, and stopped serving.
    Fenced,
    /// A kill message for this incarnation arrived; this node stopped serving.
    Killed,
    /// The partner failed, but its mailbox record says this node's copy of its shadow log
    /// may lack acknowledged records (outdated, or not confirmed complete on this
    /// incarnation): no automatic takeover (an operator may force one).
    TakeoverRefused {
        /// What the copy may lack.
        gap: CopyGap,
    },
    /// A disk set was brought into service here.
    Serving {
        /// The disk set.
        set: DiskSet,
    },
    /// A disk set was taken out of service here.
    StoppedServing {
        /// The disk set.
        set: DiskSet,
    },
}

/// An operator command (F4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Take over the partner (killing it first if it is alive).
    Takeover {
        /// Only report whether it would be allowed and why; change nothing.
        check_only: bool,
    },
    /// Give the partner's disks back once it waits in MBWAIT.
    Giveback {
        /// Only report whether it would be allowed and why; change nothing.
        check_only: bool,
    },
    /// Turn automatic giveback on or off.
    SetAutoGiveback(bool),
    /// Take over the partner even though its mailbox record says this node's copy of its
    /// shadow log is outdated (F5.7): the records from the marked position on are lost to
    /// the takeover (they are in the partner's NVRAM only); the reply names them.
    ForceTakeover,
}

/// What became of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Done at once.
    Done,
    /// Under way; events report its completion.
    Started,
    /// A check-only command that would be carried out.
    Allowed,
    /// Refused; nothing changed.
    Refused,
}

/// The reply to a command: outcome, a human reason, and the facts it was based on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    /// What became of the command.
    pub outcome: CommandOutcome,
    /// Why, in words.
    pub reason: String,
    /// The status the decision was based on.
    pub facts: GivebackStatus,
}

/// A snapshot of one node's giveback machine (as of its last input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivebackStatus {
    /// This node.
    pub me: u32,
    /// The partner.
    pub partner: u32,
    /// This node's incarnation.
    pub incarnation: u64,
    /// This node's state.
    pub state: NodeState,
    /// Time in that state.
    pub in_state_for: Duration,
    /// The partner's state in the last believed read.
    pub partner_state: Option<NodeState>,
    /// The newest partner incarnation seen (reads or mailbox).
    pub partner_incarnation: Option<u64>,
    /// Age of the last believed read of the partner's block.
    pub partner_read_age: Option<Duration>,
    /// Time since the partner's last observed change (link or mailbox).
    pub partner_silent_for: Duration,
    /// The partner is currently considered failed.
    pub partner_failed: bool,
    /// Disk sets served here.
    pub serving: Vec<DiskSet>,
    /// Disk sets this node believes it holds reserved.
    pub reservations_held: Vec<DiskSet>,
    /// The partner's service identity is assumed here.
    pub identity_assumed: bool,
    /// Every link silent while the partner's mailbox is alive.
    pub interconnect_down: bool,
    /// Automatic giveback on.
    pub auto_giveback: bool,
    /// The partner's disks are served after an operator's takeover that only an operator's
    /// giveback ends ([`GivebackConfig::hold_operator_takeover`]).
    pub operator_hold: bool,
    /// A takeover is under way (killing, reserving or writing the mailbox).
    pub takeover_in_progress: bool,
    /// An operator giveback waits for the partner's MBWAIT.
    pub giveback_requested: bool,
    /// Kill messages are being sent.
    pub killing: bool,
    /// Takeovers completed by this incarnation.
    pub takeovers: u32,
    /// Givebacks started by this incarnation.
    pub givebacks: u32,
    /// Last detection time (partner's last sign of life to takeover decision).
    pub last_detection: Option<Duration>,
    /// Last outage window: (giveback, first read showing the partner UP).
    pub last_outage_window: Option<(Instant, Instant)>,
    /// Torn or corrupt partner reads (never believed).
    pub torn_reads: u64,
    /// Mailbox reads that failed.
    pub mailbox_read_failures: u64,
    /// Mailbox writes that failed in a row.
    pub mailbox_write_failures: u32,
    /// Kill messages sent.
    pub kills_sent: u64,
    /// Driver actions that failed.
    pub io_failures: u64,
    /// The last driver failure.
    pub last_error: Option<String>,
    /// What the partner's mailbox record says this node's copy of its shadow log may lack
    /// (None: it is in sync and complete, or the partner runs no shadow log).
    pub partner_copy_gap: Option<CopyGap>,
    /// An automatic takeover was refused for that (until the partner is back or an operator
    /// forces one).
    pub takeover_refused: bool,
    /// What a forced takeover went past: the partner's records this node's copy lacked.
    pub forced_loss: Option<CopyGap>,
}

/// Why this node's copy of the partner's shadow log may lack records the partner
/// acknowledged (F5.7), as the partner's mailbox record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyGap {
    /// Records from this position on were acknowledged without the copy.
    Outdated {
        /// The first record the copy lacks.
        from: LogMark,
    },
    /// Write-back writes of the partner completed without this node's mirror (`MirrorLost`)
    /// since its last resync: its dirty blocks here lack them.
    WriteBackOutdated,
    /// No full send of the partner's log completed on this node's incarnation (this node
    /// restarted since, or the partner failed during the send after a restart of either):
    /// the copy may be partial, by an unknown number of records.
    Unconfirmed {
        /// The incarnation of this node the partner last confirmed its copy on (0: none).
        complete_for: u64,
    },
}

impl std::fmt::Display for CopyGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyGap::Outdated { from } => write!(f, "shadow log copy outdated from {from}"),
            CopyGap::WriteBackOutdated => {
                write!(f, "write-back mirror outdated (writes completed without it)")
            }
            CopyGap::Unconfirmed { complete_for: 0 } => write!(
                f,
                "shadow log copy not confirmed complete on any incarnation of this node"
            ),
            CopyGap::Unconfirmed { complete_for } => write!(
                f,
                "shadow log copy confirmed complete only on an earlier incarnation of this node ({complete_for:#x})"
            ),
        }
    }
}

impl GivebackStatus {
    /// The last outage window's length.
    pub fn last_outage(&self) -> Option<Duration> {
        self.last_outage_window
            .map(|(a, b)| b.saturating_duration_since(a))
    }
}
