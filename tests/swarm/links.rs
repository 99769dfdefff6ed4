//! The two links of the pair and the manager's link policy on them.
//!
//! Each link can be cut (port down: both directions, noticed at once) or one-way partitioned
//! (one direction loses everything, no port event). A reliable connection over a one-way
//! partition keeps retransmitting and fails after [`RC_TIMEOUT`]; until then the traffic of
//! that direction is simply lost. An RDMA READ needs both directions.
//!
//! The lower node's manager watches each link with a [`HeartbeatMonitor`] (a READ of the
//! partner's progress each interval) plus the port state, and its placement [`Planner`] puts
//! the two clients of the pair on links: `messages` (low bandwidth) and `mirror` (high: a link
//! of its own). A client on a failed link fails over to a healthy one; it returns home after
//! the planner's hysteresis.

use interlink::manager::health::{HealthBlock, HeartbeatMonitor, HeartbeatVerdict};
use interlink::manager::placement::{ClientView, LinkView, Move, Planner};
use interlink::manager::{BalanceConfig, BandwidthClass, LinkId};
use std::time::Duration;

/// A reliable connection whose packets one direction loses fails after this long.
pub const RC_TIMEOUT: Duration = Duration::from_millis(60);
/// Heartbeat intervals without progress before a link is declared dead.
pub const MISS_LIMIT: u32 = 3;

/// The clients the planner places.
pub const CLIENTS: [(&str, BandwidthClass); 2] = [
    ("messages", BandwidthClass::Low),
    ("mirror", BandwidthClass::High),
];
/// Index of the messaging client in [`CLIENTS`].
pub const MESSAGES: usize = 0;
/// Index of the mirror client (shadow log and write-back) in [`CLIENTS`].
pub const MIRROR: usize = 1;

/// Link state, link health and client placement.
pub struct Links {
    /// Port up (not cut).
    pub up: [bool; 2],
    /// `oneway[link][from]`: since when that direction of the link loses everything.
    pub oneway: [[Option<Duration>; 2]; 2],
    monitors: [HeartbeatMonitor; 2],
    healthy: [bool; 2],
    healthy_since_ms: [u64; 2],
    planner: Planner,
    /// The link each client is on.
    pub client_link: [Option<LinkId>; 2],
    progress: u64,
    /// Planner moves so far, by reason: initial, failover, return, rebalance.
    pub moves: [u64; 4],
}

impl Links {
    pub fn new() -> Links {
        Links {
            up: [true, true],
            oneway: [[None; 2]; 2],
            monitors: [
                HeartbeatMonitor::new(MISS_LIMIT),
                HeartbeatMonitor::new(MISS_LIMIT),
            ],
            healthy: [true, true],
            healthy_since_ms: [0, 0],
            planner: Planner::new(BalanceConfig::default(), &[0, 1]),
            client_link: [None, None],
            progress: 0,
            moves: [0; 4],
        }
    }

    /// Both directions pass (an RDMA READ or a reliable connection works).
    pub fn usable(&self, l: usize) -> bool {
        self.up[l] && self.oneway[l].iter().all(Option::is_none)
    }

    /// A reliable connection on link `l` has failed (port down, or a one-way partition older
    /// than [`RC_TIMEOUT`]).
    pub fn rc_failed(&self, l: usize, now: Duration) -> bool {
        !self.up[l]
            || self.oneway[l]
                .iter()
                .flatten()
                .any(|since| now.saturating_sub(*since) >= RC_TIMEOUT)
    }

    /// The link client `c` is on, if its connection there works.
    pub fn path(&self, c: usize, now: Duration) -> Option<LinkId> {
        self.client_link[c].filter(|l| !self.rc_failed(usize::from(*l), now))
    }

    /// Directions of client `c`'s link that lose traffic now: `[from A, from B]`.
    pub fn blocked(&self, c: usize) -> [bool; 2] {
        match self.client_link[c] {
            Some(l) => [
                self.oneway[usize::from(l)][0].is_some(),
                self.oneway[usize::from(l)][1].is_some(),
            ],
            None => [false, false],
        }
    }

    /// One heartbeat interval of the planning node: READs over every usable link (when the
    /// partner is alive to answer), verdicts, then a placement round. Returns the moves.
    pub fn interval(&mut self, now: Duration, partner_alive: bool) -> Vec<Move> {
        self.progress += 1;
        let now_ms = now.as_millis() as u64;
        for l in 0..2 {
            if partner_alive && self.usable(l) {
                self.monitors[l].handle_read(Ok(HealthBlock {
                    state: 0,
                    progress: self.progress,
                    incarnation: 1,
                    node_id: 2,
                    extension: [0; 32],
                }));
            }
            let alive = self.monitors[l].handle_interval() != HeartbeatVerdict::Dead;
            let healthy = self.up[l] && alive;
            if healthy && !self.healthy[l] {
                self.healthy_since_ms[l] = now_ms;
            }
            self.healthy[l] = healthy;
        }
        let links: Vec<LinkView> = (0..2u8)
            .map(|l| LinkView {
                id: l,
                healthy: self.healthy[usize::from(l)],
                healthy_since_ms: self.healthy_since_ms[usize::from(l)],
            })
            .collect();
        let clients: Vec<ClientView> = CLIENTS
            .iter()
            .enumerate()
            .map(|(i, (name, class))| ClientView {
                name: (*name).to_string(),
                class: *class,
                link: self.client_link[i],
                rate_bps: 0.0,
                movable: true,
            })
            .collect();
        let moves = self.planner.plan(now_ms, &links, &clients);
        for m in &moves {
            if let Some(i) = CLIENTS.iter().position(|(n, _)| *n == m.client) {
                self.client_link[i] = Some(m.to);
            }
            self.moves[m.reason as usize] += 1;
        }
        moves
    }

    /// Every fault healed.
    pub fn heal_all(&mut self) {
        self.up = [true, true];
        self.oneway = [[None; 2]; 2];
    }
}
