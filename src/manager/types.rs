//! Identifiers and plain data shared by the manager's parts: client specifications, the
//! client and region descriptions exchanged with the partner, and status snapshots.

use crate::fabric::{Access, Endpoint, QpCapacity, RegionDescriptor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's id within its cluster (the two controllers of a pair have different ids).
pub type NodeId = u32;
/// A link's id (its index in the node configuration, 0-based).
pub type LinkId = u8;

/// Lowest manager protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Highest manager protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Capability bits advertised in the handshake.
pub mod capabilities {
    /// Heartbeat by RDMA READ of the health block.
    pub const READ_HEARTBEAT: u64 = 1 << 0;
    /// Live client changes (attach, detach) after the link is ready.
    pub const LIVE_CLIENTS: u64 = 1 << 1;
    /// Region contents are carried over when a client moves between links.
    pub const REGION_CARRY_OVER: u64 = 1 << 2;
    /// Everything this build supports.
    pub const ALL: u64 = READ_HEARTBEAT | LIVE_CLIENTS | REGION_CARRY_OVER;
}

/// How much bandwidth a client needs; drives placement on links.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum BandwidthClass {
    /// Control traffic: shares a link with other low and medium clients.
    #[default]
    Low = 0,
    /// Moderate traffic: shares, but is spread before low clients.
    Medium = 1,
    /// Bulk traffic (for example NVRAM mirroring): gets a link of its own when one is free.
    High = 2,
}

impl BandwidthClass {
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// From the wire code.
    pub fn from_code(code: u8) -> Option<BandwidthClass> {
        match code {
            0 => Some(BandwidthClass::Low),
            1 => Some(BandwidthClass::Medium),
            2 => Some(BandwidthClass::High),
            _ => None,
        }
    }
}

impl fmt::Display for BandwidthClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BandwidthClass::Low => "low",
            BandwidthClass::Medium => "medium",
            BandwidthClass::High => "high",
        })
    }
}

impl std::str::FromStr for BandwidthClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(BandwidthClass::Low),
            "medium" => Ok(BandwidthClass::Medium),
            "high" => Ok(BandwidthClass::High),
            other => Err(format!(
                "unknown bandwidth class {other:?}: use low, medium or high"
            )),
        }
    }
}

/// Why a client region lets the partner READ it: a region with `Access::REMOTE_READ` is
/// registered only with one ([`ClientSpec::readable_region`]; the manager refuses it
/// otherwise), so every remote READ right a client grants is named by this type
/// (docs/security.md P4). The partner's WRITE rights need no reason: they are what a
/// mirror is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadGrant {
    /// The shadow log's flush region: 64 zero bytes the partner READs behind its mirror
    /// writes (its remote durability point).
    ShadowLogFlush,
    /// The shadow log's mirror region: the partner READs its own log back from it after its
    /// NVRAM lost it (F5.6), and nothing else lives there.
    ShadowLogFetch,
    /// A service's own client, with the reason (not used by interlink's clients).
    Service(String),
}

/// A memory region a client wants on every link it is placed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    /// What the region is for (unique within the client; the partner finds it by this name).
    pub purpose: String,
    /// Size in bytes.
    pub len: usize,
    /// Access rights (local write plus the remote rights the partner needs).
    pub access: Access,
    /// Why the partner may READ it: required with `Access::REMOTE_READ` (see [`ReadGrant`]).
    #[serde(default)]
    pub read_grant: Option<ReadGrant>,
}

impl RegionSpec {
    /// A region's rights as the manager accepts them: remote READ only with a [`ReadGrant`].
    pub fn check_rights(&self) -> Result<(), String> {
        if self.access.contains(Access::REMOTE_READ) && self.read_grant.is_none() {
            return Err(format!(
                "region {:?} grants the partner remote READ without a reason (ClientSpec::readable_region)",
                self.purpose
            ));
        }
        Ok(())
    }
}

/// What a client asks the manager for when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSpec {
    /// Client name; the partner's client of the same name is its peer.
    pub name: String,
    /// Bandwidth class (placement).
    pub class: BandwidthClass,
    /// Number of RC queue pairs.
    pub qp_count: u16,
    /// Depths of each queue pair's queues.
    pub qp_capacity: QpCapacity,
    /// Memory regions.
    pub regions: Vec<RegionSpec>,
    /// Values the partner's client must share (window size, log length ...): a client whose
    /// partner's terms differ is [`Refused`](ClientState::Refused) instead of made ready.
    #[serde(default)]
    pub terms: Vec<Term>,
    /// The deadline of the handle's blocking calls without one
    /// ([`ClientHandle::wait_ready`](crate::manager::ClientHandle::wait_ready),
    /// [`next_event`](crate::manager::ClientHandle::next_event)); default 10 s.
    #[serde(default = "default_wait_timeout")]
    pub wait_timeout: std::time::Duration,
}

/// A named value both sides' clients must agree on (see [`ClientSpec::term`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    /// What the value is, as a user reads it ("window slots").
    pub name: String,
    /// The value.
    pub value: u64,
}

/// Two clients' terms disagree: the term, this side's and the partner's value (`None`: that
/// side does not state the term).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{term}: ours {}, partner's {}", show_term(.ours), show_term(.theirs))]
pub struct TermMismatch {
    /// The term's name.
    pub term: String,
    /// This side's value.
    pub ours: Option<u64>,
    /// The partner's value.
    pub theirs: Option<u64>,
}

fn show_term(v: &Option<u64>) -> String {
    v.map_or_else(|| "not stated".to_string(), |v| v.to_string())
}

impl TermMismatch {
    /// The first term on which `ours` and `theirs` differ (in `ours`' order, then terms only
    /// the partner states), if any.
    pub fn find(ours: &[Term], theirs: &[Term]) -> Option<TermMismatch> {
        let value =
            |list: &[Term], name: &str| list.iter().find(|t| t.name == name).map(|t| t.value);
        ours.iter()
            .chain(theirs.iter())
            .map(|t| TermMismatch {
                term: t.name.clone(),
                ours: value(ours, &t.name),
                theirs: value(theirs, &t.name),
            })
            .find(|m| m.ours != m.theirs)
    }
}

fn default_wait_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl ClientSpec {
    /// A spec with `qp_count` default-sized queue pairs and no regions.
    pub fn new(name: impl Into<String>, class: BandwidthClass, qp_count: u16) -> ClientSpec {
        ClientSpec {
            name: name.into(),
            class,
            qp_count,
            qp_capacity: QpCapacity::default(),
            regions: Vec::new(),
            terms: Vec::new(),
            wait_timeout: default_wait_timeout(),
        }
    }
    /// States a term the partner's client must share: with a different value (or without it)
    /// on the partner's side, both clients are refused at connect, and `wait_ready` says which
    /// term and both values. A later term of the same name replaces the earlier one.
    pub fn term(mut self, name: impl Into<String>, value: u64) -> ClientSpec {
        let name = name.into();
        self.terms.retain(|t| t.name != name);
        self.terms.push(Term { name, value });
        self
    }
    /// Adds a region. With `Access::REMOTE_READ` the registration is refused: use
    /// [`readable_region`](Self::readable_region).
    pub fn region(mut self, purpose: impl Into<String>, len: usize, access: Access) -> ClientSpec {
        self.regions.push(RegionSpec {
            purpose: purpose.into(),
            len,
            access,
            read_grant: None,
        });
        self
    }

    /// Adds a region the partner may READ (`access` includes `Access::REMOTE_READ`), for the
    /// reason `grant`.
    pub fn readable_region(
        mut self,
        purpose: impl Into<String>,
        len: usize,
        access: Access,
        grant: ReadGrant,
    ) -> ClientSpec {
        self.regions.push(RegionSpec {
            purpose: purpose.into(),
            len,
            access,
            read_grant: Some(grant),
        });
        self
    }
}

/// One queue pair of a client as exchanged with the partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpInfo {
    /// Index of the queue pair within the client (stable across moves).
    pub index: u16,
    /// Its endpoint.
    pub endpoint: Endpoint,
}

/// One memory region of a client as exchanged with the partner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Id of the region within the client (stable across moves).
    pub id: u16,
    /// Purpose (as registered).
    pub purpose: String,
    /// Access rights.
    pub access: Access,
    /// Where it is and its remote key.
    pub descriptor: RegionDescriptor,
}

/// A client's resources on one link, as exchanged in PeerInfo and Attach messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client name.
    pub name: String,
    /// Bandwidth class.
    pub class: BandwidthClass,
    /// Attachment generation: increases every time the client is (re)attached or changed.
    pub generation: u32,
    /// Queue pairs.
    pub qps: Vec<QpInfo>,
    /// Regions.
    pub regions: Vec<RegionInfo>,
    /// Terms the partner's client must share ([`ClientSpec::terms`]).
    #[serde(default)]
    pub terms: Vec<Term>,
}

/// State of a link as reported in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not started, or waiting for the backoff delay before the next attempt.
    Down,
    /// Opening the bootstrap connection.
    Connecting,
    /// Exchanging Hello and PeerInfo.
    Handshaking,
    /// Heartbeat running; clients may be placed here.
    Ready,
    /// Refused by configuration (version, cluster id, secret): retried only after backoff.
    Refused,
}

/// State of a client as reported in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientState {
    /// Registered; no healthy link or the partner has not registered its peer client.
    Waiting,
    /// Being attached on a link.
    Connecting,
    /// Partner ready; traffic may flow.
    Ready,
    /// Being moved or torn down: the client must not post.
    Suspended,
    /// Connected, but the partner's client states different terms ([`ClientSpec::term`]):
    /// no traffic until one side registers again with matching terms.
    Refused,
    /// Closed by the client.
    Closed,
}

/// Latency histogram summary (microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Per-link counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// Work requests posted by clients placed on this link.
    pub ops: u64,
    /// Bytes posted by clients placed on this link.
    pub bytes: u64,
    /// Errors: failed completions, refused handshakes, heartbeat failures.
    pub errors: u64,
    /// Times the link went from ready to down.
    pub failures: u64,
    /// Successful (re)initialisations.
    pub reconnects: u64,
    /// Heartbeat READs completed.
    pub heartbeats: u64,
    /// Heartbeat intervals missed.
    pub heartbeat_misses: u64,
    /// Heartbeat READ round trip.
    pub heartbeat_rtt: LatencySummary,
    /// New bootstrap connections from the partner's address dropped without touching the
    /// link: their handshake failed or they closed before authenticating.
    #[serde(default)]
    pub pending_dropped: u64,
    /// Soft provider: packets the link's device dropped for want of a valid tag under their
    /// connection's packet key (forged, or sealed under another session's key; 0 on verbs).
    #[serde(default)]
    pub unauthenticated_packets: u64,
}

/// Per-client counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientCounters {
    /// Work requests posted.
    pub ops: u64,
    /// Bytes posted.
    pub bytes: u64,
    /// Failed completions reported by the client.
    pub errors: u64,
    /// Moves off a failed link.
    pub failovers: u64,
    /// Planned moves (back home after hysteresis, or adaptive).
    pub migrations: u64,
    /// Times the client became ready (first connect included).
    pub reconnects: u64,
    /// Operation latency recorded by the client.
    pub latency: LatencySummary,
}

/// One link in a status snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Link id.
    pub id: LinkId,
    /// Local address.
    pub local: String,
    /// Partner address.
    pub peer: String,
    /// Device name ("" before it is opened).
    pub device: String,
    /// Provider ("verbs" or "soft").
    pub provider: String,
    /// State.
    pub state: LinkState,
    /// Milliseconds since the last state change.
    pub since_ms: u64,
    /// Last error or refusal, if any.
    pub last_error: Option<String>,
    /// Clients placed on this link.
    pub clients: Vec<String>,
    /// Measured client traffic, bytes per second.
    pub rate_bps: f64,
    /// Counters.
    pub counters: LinkCounters,
}

/// One client in a status snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Name.
    pub name: String,
    /// Bandwidth class.
    pub class: BandwidthClass,
    /// State.
    pub state: ClientState,
    /// Link it is on, if attached.
    pub link: Option<LinkId>,
    /// Link the policy prefers for it.
    pub home: Option<LinkId>,
    /// Attachment generation.
    pub generation: u32,
    /// Queue pairs.
    pub qps: usize,
    /// Regions.
    pub regions: usize,
    /// Measured traffic, bytes per second.
    pub rate_bps: f64,
    /// Counters.
    pub counters: ClientCounters,
    /// Why the client is [`Refused`](ClientState::Refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<TermMismatch>,
}

/// A snapshot of a node: what `interlink status` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Cluster id.
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// The partner.
    pub partner_id: NodeId,
    /// This run's incarnation.
    pub incarnation: u64,
    /// The partner's incarnation as last seen.
    pub partner_incarnation: Option<u64>,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Links.
    pub links: Vec<LinkStatus>,
    /// Clients.
    pub clients: Vec<ClientStatus>,
}
