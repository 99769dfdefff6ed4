//! Node configuration: what a node is, who its partner is, its links and its policies.
//!
//! Loaded from TOML ([`NodeConfig::load`], [`NodeConfig::from_toml_str`]) or built in code
//! ([`NodeConfig::new`] and the `with_*` methods), checked by [`NodeConfig::validate`] and
//! written back by [`NodeConfig::to_toml_string`]. `docs/configuration.md` is the reference
//! for every key.
//!
//! ```
//! use interlink::manager::{LinkConfig, NodeConfig};
//! use std::net::{IpAddr, Ipv4Addr};
//!
//! let a = |l, h| IpAddr::V4(Ipv4Addr::new(198, 18, l, h));
//! let cfg = NodeConfig::new(7, 1, 2, "/etc/interlink/secret")
//!     .with_link(LinkConfig::new(0, a(0, 1), a(0, 2)).with_device("rxe_a0"))
//!     .with_link(LinkConfig::new(1, a(1, 1), a(1, 2)).with_device("rxe_a1"))
//!     .with_heartbeat(100, 5);
//! cfg.validate().unwrap();
//! assert!(cfg.is_initiator());
//! let text = cfg.to_toml_string();
//! assert_eq!(NodeConfig::from_toml_str(&text, None).unwrap(), cfg);
//! ```

use crate::fabric::ProviderChoice;
use crate::manager::types::{LinkId, NodeId};
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bootstrap port of a link whose configuration does not name one.
pub const DEFAULT_BOOTSTRAP_PORT: u16 = 18515;
/// Most links a node may have to its partner.
pub const MAX_LINKS: usize = 16;
/// Fewest bytes the cluster secret may have (after the trailing newline is stripped).
pub const MIN_SECRET_LEN: usize = 16;

/// Largest `heartbeat.interval_ms`.
const MAX_HEARTBEAT_INTERVAL_MS: u64 = 60_000;
/// Largest `heartbeat.miss_count`.
const MAX_MISS_COUNT: u32 = 1000;
/// Largest `backoff.multiplier`.
const MAX_BACKOFF_MULTIPLIER: f64 = 100.0;
/// Largest `balance.hysteresis_ms` (one hour).
const MAX_HYSTERESIS_MS: u64 = 3_600_000;
/// Largest integer a TOML file can hold (TOML integers are signed 64-bit).
const TOML_INT_MAX: u64 = i64::MAX as u64;

/// Why a configuration could not be loaded, parsed or accepted, or its secret not read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The text is not valid TOML or does not fit the configuration's shape (wrong type,
    /// missing or unknown key).
    #[error("cannot parse configuration{}: {message}", parse_location(path.as_deref()))]
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending key, as written in the file (for example `link[1].local`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The secret file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The secret file holds fewer than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "secret file {} holds {len} bytes (without its trailing newline); at least {MIN_SECRET_LEN} are needed",
        path.display()
    )]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// Its length in bytes, trailing newline stripped.
        len: usize,
    },
}

fn parse_location(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

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
    /// A relative path in a file loaded by [`NodeConfig::load`] is relative to that file's
    /// directory.
    pub secret_file: PathBuf,
    /// Provider for every link: auto, verbs or soft.
    #[serde(default)]
    pub fabric: ProviderChoice,
    /// Unix socket for `interlink status` (none: no control socket), served by `interlink
    /// node`; [`Manager::start`](crate::manager::Manager::start) does not open it (a service
    /// serves it with [`ControlServer`](crate::manager::control::ControlServer)). Relative
    /// paths are resolved like `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Address `interlink node` serves its Prometheus metrics on (`http://ADDR/metrics`;
    /// none: no metrics endpoint). The library itself only records through the `metrics`
    /// facade ([`crate::recorded_metrics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Links to the partner, in id order (`[[link]]` tables in TOML).
    #[serde(rename = "link", default)]
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
    /// When the giveback client gives the partner's disks back (`interlink node --giveback`).
    #[serde(default)]
    pub giveback: GivebackPolicy,
    /// Restricts the manager protocol versions this node advertises, `[min, max]` (default:
    /// everything the build speaks). For rolling upgrades and for testing refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_versions: Option<[u16; 2]>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// TCP port of the bootstrap exchange: the higher node listens on it, the lower one
    /// connects to it.
    #[serde(default = "default_bootstrap_port")]
    pub bootstrap_port: u16,
    /// TCP port of the soft provider's data connections on this link (0: any).
    #[serde(default)]
    pub soft_port: u16,
}

fn default_bootstrap_port() -> u16 {
    DEFAULT_BOOTSTRAP_PORT
}

/// Heartbeat settings: a link is declared down after `miss_count` intervals without progress.
/// Keys left out of the `[heartbeat]` table keep their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
    /// Upper bound on the time from a silent failure to the link being declared down:
    /// `interval × (miss_count + 1)` (saturating).
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(
            self.interval_ms
                .saturating_mul(u64::from(self.miss_count).saturating_add(1)),
        )
    }
}

/// Exponential backoff between link re-initialisation attempts.
/// Keys left out of the `[backoff]` table keep their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
            initial_ms: 25,
            max_ms: 5000,
            multiplier: 2.0,
        }
    }
}

impl BackoffConfig {
    /// The delay before retry number `attempt` (0-based): `initial_ms × multiplier^attempt`,
    /// capped at `max_ms`, truncated to whole milliseconds. Attempt 0 waits `initial_ms`.
    ///
    /// Never overflows: huge attempts give `max_ms`. A multiplier below 1 or NaN (which
    /// [`NodeConfig::validate`] rejects) counts as 1.
    pub fn delay(&self, attempt: u32) -> Duration {
        let max = self.max_ms;
        let initial = self.initial_ms.min(max);
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0 // below 1 or NaN
        };
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let ms = initial as f64 * multiplier.powi(exponent);
        // Also catches infinity, and NaN from 0 × infinity.
        if ms.is_nan() || ms >= max as f64 {
            Duration::from_millis(max)
        } else {
            // In range 0..max here, so the cast neither saturates nor wraps.
            Duration::from_millis((ms as u64).max(initial))
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
/// Keys left out of the `[balance]` table keep their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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

/// When the giveback client gives the partner's disks back after a takeover.
/// Keys left out of the `[giveback]` table keep their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GivebackPolicy {
    /// Give back automatically once the repaired partner waits in MBWAIT.
    pub auto: bool,
    /// ... after it has waited there this long, milliseconds.
    pub delay_ms: u64,
    /// After an operator's takeover, give back only on an operator's giveback
    /// (`interlink giveback`), whatever `auto` says.
    pub hold_operator_takeover: bool,
}

impl Default for GivebackPolicy {
    fn default() -> Self {
        GivebackPolicy {
            auto: true,
            delay_ms: 0,
            hold_operator_takeover: true,
        }
    }
}

impl GivebackPolicy {
    /// The delay as a duration.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }
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

impl LinkConfig {
    /// Link `id` from `local` to the partner's `peer`, with the default bootstrap port, no
    /// device name (found by address) and any soft port.
    pub fn new(id: LinkId, local: IpAddr, peer: IpAddr) -> LinkConfig {
        LinkConfig {
            id,
            local,
            peer,
            device: None,
            bootstrap_port: DEFAULT_BOOTSTRAP_PORT,
            soft_port: 0,
        }
    }
    /// The same link served by the named verbs device.
    pub fn with_device(mut self, name: impl Into<String>) -> LinkConfig {
        self.device = Some(name.into());
        self
    }
    /// The same link with another bootstrap port.
    pub fn with_bootstrap_port(mut self, port: u16) -> LinkConfig {
        self.bootstrap_port = port;
        self
    }
    /// The same link with a fixed soft-provider data port.
    pub fn with_soft_port(mut self, port: u16) -> LinkConfig {
        self.soft_port = port;
        self
    }
}

impl NodeConfig {
    /// A configuration for node `node_id` of cluster `cluster_id`, paired with `partner_id`,
    /// reading its secret from `secret_file`; default provider and policies, no control
    /// socket and no links yet (add them with [`with_link`](Self::with_link)).
    pub fn new(
        cluster_id: u64,
        node_id: NodeId,
        partner_id: NodeId,
        secret_file: impl Into<PathBuf>,
    ) -> NodeConfig {
        NodeConfig {
            cluster_id,
            node_id,
            partner_id,
            secret_file: secret_file.into(),
            fabric: ProviderChoice::default(),
            control_socket: None,
            metrics_listen: None,
            links: Vec::new(),
            heartbeat: HeartbeatConfig::default(),
            backoff: BackoffConfig::default(),
            balance: BalanceConfig::default(),
            giveback: GivebackPolicy::default(),
            protocol_versions: None,
        }
    }
    /// The same configuration with `link` appended (its id should be its position).
    pub fn with_link(mut self, link: LinkConfig) -> NodeConfig {
        self.links.push(link);
        self
    }
    /// The same configuration with another provider choice.
    pub fn with_fabric(mut self, fabric: ProviderChoice) -> NodeConfig {
        self.fabric = fabric;
        self
    }
    /// The same configuration with another heartbeat interval (milliseconds) and miss count.
    pub fn with_heartbeat(mut self, interval_ms: u64, miss_count: u32) -> NodeConfig {
        self.heartbeat = HeartbeatConfig {
            interval_ms,
            miss_count,
        };
        self
    }
    /// The same configuration with other backoff settings.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> NodeConfig {
        self.backoff = backoff;
        self
    }
    /// The same configuration with other placement settings.
    pub fn with_balance(mut self, balance: BalanceConfig) -> NodeConfig {
        self.balance = balance;
        self
    }
    /// The same configuration with a control socket at `path`.
    pub fn with_control_socket(mut self, path: impl Into<PathBuf>) -> NodeConfig {
        self.control_socket = Some(path.into());
        self
    }

    /// True when this node has the lower id: it initiates every link's bootstrap connection
    /// and decides placement.
    pub fn is_initiator(&self) -> bool {
        self.node_id < self.partner_id
    }

    /// Reads, parses and validates the TOML file at `path`. A relative `secret_file` or
    /// `control_socket` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = read_config_text(path)?;
        // An absolute base keeps the resolved paths valid if the process changes directory.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = absolute.parent().unwrap_or_else(|| Path::new(""));
        NodeConfig::from_toml_str(&text, Some(base)).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text. With `base_dir`, a relative `secret_file` or
    /// `control_socket` is resolved against it; without, paths are kept as written.
    pub fn from_toml_str(s: &str, base_dir: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(s).map_err(|e| ConfigError::Parse {
            path: None,
            message: one_line(e.message()) + &location(s, e.span()),
        })?;
        if let Some(base) = base_dir {
            cfg.resolve_paths(base);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes a relative `secret_file` and `control_socket` relative to `base` instead of to
    /// the current directory. Absolute and empty paths are left alone.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.secret_file);
        if let Some(sock) = self.control_socket.as_mut() {
            resolve(sock);
        }
    }

    /// The configuration as TOML that [`from_toml_str`](Self::from_toml_str) reads back to an
    /// equal value (for a configuration that passes [`validate`](Self::validate)).
    ///
    /// What TOML cannot hold is approximated instead of failing: paths that are not UTF-8
    /// are converted lossily, and integers above `i64::MAX` (which `validate` rejects) are
    /// written as `i64::MAX`.
    pub fn to_toml_string(&self) -> String {
        let mut cfg = self.clone();
        let lossy = |p: &mut PathBuf| {
            if p.to_str().is_none() {
                *p = PathBuf::from(p.to_string_lossy().into_owned());
            }
        };
        lossy(&mut cfg.secret_file);
        if let Some(sock) = cfg.control_socket.as_mut() {
            lossy(sock);
        }
        for v in [
            &mut cfg.cluster_id,
            &mut cfg.heartbeat.interval_ms,
            &mut cfg.backoff.initial_ms,
            &mut cfg.backoff.max_ms,
            &mut cfg.balance.hysteresis_ms,
            &mut cfg.balance.rebalance_cooldown_ms,
            &mut cfg.giveback.delay_ms,
        ] {
            *v = (*v).min(TOML_INT_MAX);
        }
        match toml::to_string(&cfg) {
            Ok(s) => s,
            // Not reachable with the adjustments above; a comment keeps the promise of no panic.
            Err(e) => format!("# interlink: this configuration cannot be written as TOML: {e}\n"),
        }
    }

    /// Checks every value's range and the relations between values; the error names the
    /// first offending key (for example `link[1].local`). See `docs/configuration.md`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_toml_int("cluster_id", self.cluster_id)?;
        if self.node_id == self.partner_id {
            return Err(invalid(
                "partner_id",
                format!("must differ from node_id (both are {})", self.node_id),
            ));
        }
        if let Some([lo, hi]) = self.protocol_versions {
            if lo == 0 || lo > hi {
                return Err(invalid(
                    "protocol_versions",
                    format!("[{lo}, {hi}] is not a range of versions (1 <= min <= max)"),
                ));
            }
        }
        if self.secret_file.as_os_str().is_empty() {
            return Err(invalid("secret_file", "must not be empty"));
        }
        if let Some(sock) = &self.control_socket {
            if sock.as_os_str().is_empty() {
                return Err(invalid("control_socket", "must not be empty"));
            }
            let len = sock.as_os_str().len();
            if len > MAX_SOCKET_PATH_LEN {
                return Err(invalid(
                    "control_socket",
                    format!(
                        "{} is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH_LEN}",
                        sock.display()
                    ),
                ));
            }
        }
        self.validate_links()?;
        self.validate_heartbeat()?;
        self.validate_backoff()?;
        self.validate_balance()
    }

    fn validate_links(&self) -> Result<(), ConfigError> {
        if self.links.is_empty() {
            return Err(invalid("link", "at least one [[link]] is required"));
        }
        if self.links.len() > MAX_LINKS {
            return Err(invalid(
                "link",
                format!(
                    "at most {MAX_LINKS} links are supported ({} given)",
                    self.links.len()
                ),
            ));
        }
        for (i, link) in self.links.iter().enumerate() {
            let field = |key: &str| format!("link[{i}].{key}");
            if usize::from(link.id) != i {
                return Err(invalid(
                    field("id"),
                    format!(
                        "must equal the link's position {i} in the list (is {})",
                        link.id
                    ),
                ));
            }
            if link.local.is_ipv4() != link.peer.is_ipv4() {
                return Err(invalid(
                    field("peer"),
                    format!(
                        "{} is not of the same address family as local {}",
                        link.peer, link.local
                    ),
                ));
            }
            if link.local == link.peer {
                return Err(invalid(
                    field("peer"),
                    format!("must differ from local (both are {})", link.local),
                ));
            }
            if link.bootstrap_port == 0 {
                return Err(invalid(field("bootstrap_port"), "must not be 0"));
            }
            if let Some(dev) = &link.device {
                if dev.is_empty() {
                    return Err(invalid(
                        field("device"),
                        "must not be empty (leave it out to find the device by address)",
                    ));
                }
            }
            for (j, other) in self.links[..i].iter().enumerate() {
                if other.local == link.local {
                    return Err(invalid(
                        field("local"),
                        format!("{} is already the local address of link[{j}]", link.local),
                    ));
                }
                if other.peer == link.peer && other.bootstrap_port == link.bootstrap_port {
                    return Err(invalid(
                        field("peer"),
                        format!(
                            "{} with bootstrap_port {} is already used by link[{j}]",
                            link.peer, link.bootstrap_port
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_heartbeat(&self) -> Result<(), ConfigError> {
        let hb = &self.heartbeat;
        if !(1..=MAX_HEARTBEAT_INTERVAL_MS).contains(&hb.interval_ms) {
            return Err(invalid(
                "heartbeat.interval_ms",
                format!(
                    "must be in 1..={MAX_HEARTBEAT_INTERVAL_MS} (is {})",
                    hb.interval_ms
                ),
            ));
        }
        if !(1..=MAX_MISS_COUNT).contains(&hb.miss_count) {
            return Err(invalid(
                "heartbeat.miss_count",
                format!("must be in 1..={MAX_MISS_COUNT} (is {})", hb.miss_count),
            ));
        }
        Ok(())
    }

    fn validate_backoff(&self) -> Result<(), ConfigError> {
        let b = &self.backoff;
        if b.initial_ms < 1 {
            return Err(invalid("backoff.initial_ms", "must be at least 1"));
        }
        check_toml_int("backoff.initial_ms", b.initial_ms)?;
        if b.max_ms < b.initial_ms {
            return Err(invalid(
                "backoff.max_ms",
                format!(
                    "must be at least initial_ms {} (is {})",
                    b.initial_ms, b.max_ms
                ),
            ));
        }
        check_toml_int("backoff.max_ms", b.max_ms)?;
        if !(b.multiplier.is_finite() && (1.0..=MAX_BACKOFF_MULTIPLIER).contains(&b.multiplier)) {
            return Err(invalid(
                "backoff.multiplier",
                format!("must be a number in 1.0..=100.0 (is {})", b.multiplier),
            ));
        }
        Ok(())
    }

    fn validate_balance(&self) -> Result<(), ConfigError> {
        let b = &self.balance;
        if b.hysteresis_ms > MAX_HYSTERESIS_MS {
            return Err(invalid(
                "balance.hysteresis_ms",
                format!(
                    "must be at most {MAX_HYSTERESIS_MS} (one hour; is {})",
                    b.hysteresis_ms
                ),
            ));
        }
        if !(b.rebalance_ratio.is_finite() && b.rebalance_ratio >= 1.0) {
            return Err(invalid(
                "balance.rebalance_ratio",
                format!("must be a finite number >= 1.0 (is {})", b.rebalance_ratio),
            ));
        }
        if !(b.rebalance_min_bps.is_finite() && b.rebalance_min_bps >= 0.0) {
            return Err(invalid(
                "balance.rebalance_min_bps",
                format!("must be a finite number >= 0 (is {})", b.rebalance_min_bps),
            ));
        }
        check_toml_int("balance.rebalance_cooldown_ms", b.rebalance_cooldown_ms)?;
        check_toml_int("giveback.delay_ms", self.giveback.delay_ms)
    }

    /// Reads the cluster secret from `secret_file`: the file's bytes with one trailing `"\n"`
    /// or `"\r\n"` removed, at least [`MIN_SECRET_LEN`] of them. The bytes are used as they
    /// are (a base64 text is not decoded).
    ///
    /// Logs a warning, but does not fail, when the file is readable by its group or others.
    pub fn read_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let path = &self.secret_file;
        let read_err = |source| ConfigError::ReadSecret {
            path: path.clone(),
            source,
        };
        let mut secret = read_bounded(path, MAX_SECRET_FILE_LEN).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(read_err)?
                .permissions()
                .mode();
            if mode & 0o044 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "secret file is readable by group or others; restrict it with chmod 600"
                );
            }
        }
        if secret.ends_with(b"\r\n") {
            secret.truncate(secret.len() - 2);
        } else if secret.ends_with(b"\n") {
            secret.truncate(secret.len() - 1);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort {
                path: path.clone(),
                len: secret.len(),
            });
        }
        Ok(secret)
    }
}

/// The most bytes a configuration file may hold.
pub const MAX_CONFIG_LEN: u64 = 1 << 20;
/// The most bytes a secret file may hold.
pub const MAX_SECRET_FILE_LEN: u64 = 64 << 10;
/// The longest control socket path: a Unix socket address holds 108 bytes with the
/// terminating NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// The text of configuration file `path`: a regular file of at most [`MAX_CONFIG_LEN`]
/// bytes of UTF-8 (a FIFO, a device or a larger file is refused, without blocking).
pub fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = read_bounded(path, MAX_CONFIG_LEN).map_err(read_err)?;
    String::from_utf8(bytes).map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Reads a regular file of at most `limit` bytes. Anything else (a directory, a FIFO, a
/// device such as `/dev/zero`) is refused without blocking, and so is a larger file, before
/// more than `limit + 1` bytes are read.
fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_long = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes or more, larger than the {limit} allowed"),
        )
    };
    if meta.len() > limit {
        return Err(too_long(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_long(bytes.len() as u64));
    }
    Ok(bytes)
}

fn check_toml_int(field: &str, value: u64) -> Result<(), ConfigError> {
    if value > TOML_INT_MAX {
        return Err(invalid(
            field,
            format!("must be at most {TOML_INT_MAX} (TOML integers are signed 64-bit)"),
        ));
    }
    Ok(())
}

/// The parser's message on one line ("invalid string; expected ...").
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// " (at line L, column C)" for a byte span of `text`, or nothing without one.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" (at line {line}, column {column})")
}
