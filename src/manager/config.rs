//! Node configuration: what a node is, who its partner is, its links and its policies.
//! Loaded from TOML (`NodeConfig::load`) or built in code.

use crate::fabric::ProviderChoice;
use crate::manager::types::{LinkId, NodeId};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A node's whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster id: both nodes of the pair must agree.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// The partner's id (must differ from `node_id`). The node with the lower id initiates
    /// every link's bootstrap connection and decides placement.
    pub partner_id: NodeId,
    /// File holding the shared cluster secret (at least 16 bytes; trailing newline ignored).
    pub secret_file: PathBuf,
    /// Provider for every link: auto, verbs or soft.
    #[serde(default)]
    pub fabric: ProviderChoice,
    /// Unix socket for `interlink status` (none: no control socket).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Links to the partner, in id order.
    #[serde(rename = "link")]
    pub links: Vec<LinkConfig>,
    /// Heartbeat and failure detection.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// Delays between link re-initialisation attempts.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Placement and migration policy.
    #[serde(default)]
    pub balance: BalanceConfig,
}

/// One link to the partner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Link id; must equal the link's position in the list (0, 1, ...).
    pub id: LinkId,
    /// Local address (the device serving it is used for this link).
    pub local: IpAddr,
    /// The partner's address on this link.
    pub peer: IpAddr,
    /// Verbs device name (default: the device whose GID is `local`).
    #[serde(default)]
    pub device: Option<String>,
    /// TCP port of the bootstrap exchange; both nodes listen on / connect to it.
    #[serde(default = "default_bootstrap_port")]
    pub bootstrap_port: u16,
    /// TCP port of the soft provider's data connections on this link (0: any).
    #[serde(default)]
    pub soft_port: u16,
}

fn default_bootstrap_port() -> u16 {
    18515
}

/// Heartbeat settings: a link is declared down after `miss_count` intervals without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Interval between heartbeat READs, milliseconds.
    pub interval_ms: u64,
    /// Missed intervals before the link is declared down.
    pub miss_count: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 100,
            miss_count: 5,
        }
    }
}

impl HeartbeatConfig {
    /// The interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// Upper bound on the time from a silent failure to the link being declared down.
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(self.interval_ms * (u64::from(self.miss_count) + 1))
    }
}

/// Exponential backoff between link re-initialisation attempts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay, milliseconds.
    pub initial_ms: u64,
    /// Largest delay, milliseconds.
    pub max_ms: u64,
    /// Factor applied after each failed attempt (>= 1).
    pub multiplier: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: 100,
            max_ms: 5000,
            multiplier: 2.0,
        }
    }
}

/// Which placement policy to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalancePolicy {
    /// By bandwidth class: high clients get a link of their own when one is free; the others
    /// share the remaining links, spread by load.
    #[default]
    Class,
    /// Everything on the lowest healthy link; other links are standby for failover.
    Standby,
}

/// Placement and migration settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    /// Policy.
    pub policy: BalancePolicy,
    /// A recovered link must stay healthy this long before clients move back, milliseconds.
    pub hysteresis_ms: u64,
    /// Adaptive migration: on when true.
    pub adaptive: bool,
    /// Adaptive migration triggers when a link's measured rate exceeds this factor times the
    /// lightest healthy link's rate.
    pub rebalance_ratio: f64,
    /// ... and the busier link carries at least this many bytes per second.
    pub rebalance_min_bps: f64,
    /// A client moved adaptively is not moved again for this long, milliseconds.
    pub rebalance_cooldown_ms: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            policy: BalancePolicy::Class,
            hysteresis_ms: 2000,
            adaptive: true,
            rebalance_ratio: 4.0,
            rebalance_min_bps: 1_000_000.0,
            rebalance_cooldown_ms: 10_000,
        }
    }
}
