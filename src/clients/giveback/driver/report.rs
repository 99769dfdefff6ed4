//! The serialisable status of a running giveback client and its text rendering.

use super::{DriverCounters, GivebackNode};
use crate::clients::giveback::actions::{Command, CommandOutcome, CopyGap};
use crate::clients::giveback::error::GivebackError;
use crate::clients::giveback::mailbox::LogMark;
use std::time::Duration;

/// A serialisable view of a node's giveback state (control socket, `interlink status`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GivebackReport {
    /// This node.
    pub me: u32,
    /// The partner.
    pub partner: u32,
    /// This node's protocol incarnation.
    pub incarnation: u64,
    /// This node's state (BOOTING, GIVEWAIT, MBWAIT, UP, TAKEOVER, HALTED).
    pub state: String,
    /// Milliseconds in that state.
    pub in_state_ms: u64,
    /// The partner's state in the last believed read.
    pub partner_state: Option<String>,
    /// Age of that read, milliseconds.
    pub partner_read_age_ms: Option<u64>,
    /// Milliseconds since the partner's last sign of life (link or mailbox).
    pub partner_silent_ms: u64,
    /// The partner is considered failed.
    pub partner_failed: bool,
    /// Disk sets served here.
    pub serving: Vec<u32>,
    /// Disk sets this node holds reserved.
    pub reservations_held: Vec<u32>,
    /// The partner's service identity is assumed here.
    pub identity_assumed: bool,
    /// Every link silent while the partner's mailbox is alive (no takeover: alert).
    pub interconnect_down: bool,
    /// Automatic giveback.
    pub auto_giveback: bool,
    /// The partner's disks are served after an operator's takeover that waits for an
    /// operator's giveback.
    #[serde(default)]
    pub operator_hold: bool,
    /// Kill messages are being sent.
    pub killing: bool,
    /// Takeovers completed by this incarnation.
    pub takeovers: u32,
    /// Givebacks started by this incarnation.
    pub givebacks: u32,
    /// Last failure detection time, milliseconds (partner's last sign of life to decision).
    pub last_detection_ms: Option<f64>,
    /// Last giveback outage window, milliseconds (giveback to the first read showing the
    /// partner UP).
    pub last_outage_ms: Option<f64>,
    /// The poll interval, milliseconds.
    pub interval_ms: f64,
    /// Torn or corrupt partner reads (never believed).
    pub torn_reads: u64,
    /// Mailbox reads that failed.
    pub mailbox_read_failures: u64,
    /// Driver actions that failed.
    pub io_failures: u64,
    /// The last driver failure.
    pub last_error: Option<String>,
    /// What the partner's mailbox record says this node's copy of its shadow log may lack
    /// (F5.7; None: in sync and complete, or no shadow log).
    #[serde(default)]
    pub partner_copy_gap: Option<CopyGap>,
    /// An automatic takeover was refused for that.
    #[serde(default)]
    pub takeover_refused: bool,
    /// What the last forced takeover went past: the partner's records this copy lacked.
    #[serde(default)]
    pub forced_loss: Option<CopyGap>,
    /// This node's mailbox record says the partner's copy of this node's log is outdated
    /// from this position on.
    #[serde(default)]
    pub own_copy_outdated: Option<LogMark>,
    /// The partner incarnation this node's mailbox record names as holding a complete copy
    /// of this node's log (Some(0): none yet; None: no shadow log attached).
    #[serde(default)]
    pub own_copy_complete_for: Option<u64>,
    /// This node's mailbox record says the partner's write-back mirror of this node is
    /// outdated (until a resync completes).
    #[serde(default)]
    pub own_writeback_outdated: bool,
    /// Why this node's own disk set is withheld from the service: its log's recovery at
    /// start failed (tried again every interval).
    #[serde(default)]
    pub own_recovery_error: Option<String>,
    /// Why the partner's disk set, taken over, is withheld from the service: the replay of
    /// its log or the destage of its write-back blocks failed (tried again every interval).
    #[serde(default)]
    pub partner_replay_error: Option<String>,
    /// This node's mailbox record names this generation of its own shadow log as the newest
    /// that may hold an acknowledged record (0: none; F5.6).
    #[serde(default)]
    pub own_log_generation: u64,
    /// The epoch of this node's write-back table its mailbox record names (0: none).
    #[serde(default)]
    pub own_writeback_epoch: u64,
    /// The partner's write-back epoch this node took over whole (0: none).
    #[serde(default)]
    pub took_over_writeback: u64,
    /// Driver counters.
    pub driver: DriverCounters,
}

/// A serialisable command reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandReport {
    /// `done`, `started`, `allowed` or `refused`.
    pub outcome: String,
    /// Why.
    pub reason: String,
}

impl GivebackNode {
    /// The status as a [`GivebackReport`].
    pub fn report(&self) -> GivebackReport {
        let (status, driver, interval, own_recovery_error, partner_replay_error) = {
            let s = self.shared.lock();
            (
                s.status.clone(),
                DriverCounters {
                    hook_failures: s.hook_failures,
                    kills_sent: s.kills_sent,
                    kills_received: s.kills_received,
                    reboots: s.reboots,
                },
                s.interval,
                s.own_recovery_error.clone(),
                s.partner_replay_error.clone(),
            )
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        GivebackReport {
            me: status.me,
            partner: status.partner,
            incarnation: status.incarnation,
            state: status.state.name().into(),
            in_state_ms: status.in_state_for.as_millis() as u64,
            partner_state: status.partner_state.map(|s| s.name().into()),
            partner_read_age_ms: status.partner_read_age.map(|d| d.as_millis() as u64),
            partner_silent_ms: status.partner_silent_for.as_millis() as u64,
            partner_failed: status.partner_failed,
            serving: status.serving.clone(),
            reservations_held: status.reservations_held.clone(),
            identity_assumed: status.identity_assumed,
            interconnect_down: status.interconnect_down,
            auto_giveback: status.auto_giveback,
            operator_hold: status.operator_hold,
            killing: status.killing,
            takeovers: status.takeovers,
            givebacks: status.givebacks,
            last_detection_ms: status.last_detection.map(ms),
            last_outage_ms: status.last_outage().map(ms),
            interval_ms: ms(interval),
            torn_reads: status.torn_reads,
            mailbox_read_failures: status.mailbox_read_failures,
            io_failures: status.io_failures,
            last_error: status.last_error.clone(),
            partner_copy_gap: status.partner_copy_gap,
            takeover_refused: status.takeover_refused,
            forced_loss: status.forced_loss,
            own_copy_outdated: self.copy_mark.get(),
            own_copy_complete_for: self.copy_mark.stamp().complete_for,
            own_writeback_outdated: self.copy_mark.stamp().writeback_outdated,
            own_recovery_error,
            partner_replay_error,
            own_log_generation: self.own_log.recorded(),
            own_writeback_epoch: self.writeback.own().recorded(),
            took_over_writeback: self.writeback.took_over().recorded(),
            driver,
        }
    }

    /// Runs a command and returns a serialisable reply.
    pub fn command_report(&self, cmd: Command) -> Result<CommandReport, GivebackError> {
        let r = self.command(cmd)?;
        Ok(CommandReport {
            outcome: match r.outcome {
                CommandOutcome::Done => "done",
                CommandOutcome::Started => "started",
                CommandOutcome::Allowed => "allowed",
                CommandOutcome::Refused => "refused",
            }
            .into(),
            reason: r.reason,
        })
    }
}

/// Renders a report as the `giveback` section of `interlink status`.
pub fn render_report(r: &GivebackReport) -> String {
    let sets = |v: &[u32]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let opt_ms = |v: Option<f64>| {
        v.map(|x| format!("{x:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    out.push_str(&format!(
        "giveback: node {} {} for {} ms, serving {}, reserved {}{}{}{}\n",
        r.me,
        r.state,
        r.in_state_ms,
        sets(&r.serving),
        sets(&r.reservations_held),
        if r.identity_assumed {
            ", partner's identity assumed"
        } else {
            ""
        },
        if r.auto_giveback {
            ""
        } else {
            ", auto-giveback off"
        },
        if r.operator_hold {
            ", operator's takeover: held until `interlink giveback`"
        } else {
            ""
        },
    ));
    out.push_str(&format!(
        "  partner: node {} {}{}, last read {} ago, silent {} ms{}{}\n",
        r.partner,
        r.partner_state.as_deref().unwrap_or("unknown"),
        if r.partner_failed { " (failed)" } else { "" },
        r.partner_read_age_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "never".into()),
        r.partner_silent_ms,
        if r.killing {
            ", sending kill messages"
        } else {
            ""
        },
        if r.interconnect_down {
            ", ALERT: interconnect down (partner alive by mailbox)"
        } else {
            ""
        },
    ));
    out.push_str(&format!(
        "  takeovers {}, givebacks {}, last detection {}, last outage window {} (poll interval {:.0} ms); torn reads {}, mailbox read failures {}, I/O failures {}, kills sent {} received {}, reboots {}\n",
        r.takeovers,
        r.givebacks,
        opt_ms(r.last_detection_ms),
        opt_ms(r.last_outage_ms),
        r.interval_ms,
        r.torn_reads,
        r.mailbox_read_failures,
        r.io_failures,
        r.driver.kills_sent,
        r.driver.kills_received,
        r.driver.reboots,
    ));
    if let Some(g) = &r.partner_copy_gap {
        out.push_str(&format!(
            "  ALERT: this node's copy of the partner's data may lack acknowledged writes: {g}{}\n",
            if r.takeover_refused {
                ": automatic takeover refused (interlink takeover --force accepts the loss)"
            } else {
                ""
            }
        ));
    }
    if let Some(m) = &r.own_copy_outdated {
        out.push_str(&format!(
            "  the partner's copy of this node's log is outdated from {m} (until a resync completes)\n"
        ));
    }
    if let Some(e) = &r.own_recovery_error {
        out.push_str(&format!(
            "  ALERT: this node's disks are not served: its own log is not recovered ({e})\n"
        ));
    }
    if let Some(e) = &r.partner_replay_error {
        out.push_str(&format!(
            "  ALERT: the partner's disks are taken over but not served: its log is not replayed ({e})\n"
        ));
    }
    if r.own_writeback_outdated {
        out.push_str(
            "  the partner's write-back mirror of this node is outdated (until a resync completes)\n",
        );
    }
    if let Some(g) = &r.forced_loss {
        out.push_str(&format!(
            "  the last forced takeover went past a copy {g}: the partner's records it lacked are lost\n"
        ));
    }
    if let Some(e) = &r.last_error {
        out.push_str(&format!("  last error: {e}\n"));
    }
    out
}
