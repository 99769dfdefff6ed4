//! Placement planner: which link each registered client uses.
//!
//! The node with the lower id runs a [`Planner`] and tells the partner the resulting moves. The
//! planner is pure, deterministic and sans-IO: it owns no clock (callers pass `now_ms`, a
//! virtual time in milliseconds), does no I/O and only answers "which clients should move where"
//! from a snapshot of link health ([`LinkView`]) and client positions and rates ([`ClientView`]).
//! Applying a [`Move`] (suspending the client, re-attaching it on the new link) is the caller's
//! business; until that is done the caller reports the client as not `movable`.
//!
//! # Homes
//!
//! Every client has a *home* link, assigned the first time [`Planner::plan`] sees it and
//! independent of link health. New clients of one call are homed in the order (class
//! descending, name), so the result does not depend on the order of the `clients` slice.
//!
//! * [`BalancePolicy::Class`]: a [`BandwidthClass::High`] client gets a link of its own: an
//!   *empty* link (no client homed there), preferring the highest id so link 0 stays the shared
//!   link. At most `n - 1` of `n` links are dedicated this way; when none is free the high client
//!   shares like the others (nobody is re-homed to make room). Low and medium clients, and high
//!   clients that share, are homed on the *shared* (non-dedicated) links, on the one with the
//!   smallest weight of homed low/medium clients (medium 2, low 1), ties to the lowest id.
//!   With 2 links and clients `M` (high), `A`, `B` (low) seen together, `A` and `B` are homed on
//!   link 0 and `M` on link 1. Clients seen in later calls are homed against the homes that
//!   exist by then: a high client that comes after low clients have spread over every link
//!   finds no empty link and shares.
//! * [`BalancePolicy::Standby`]: every home is the lowest link id; the other links are standby.
//!
//! A client keeps its home (even while absent from `clients`) until [`Planner::forget`]; the
//! class it had when first seen decides its home. Only an adaptive move (below) changes a home.
//!
//! # Moves, each `plan` call
//!
//! Only clients reported `movable` are moved, at most once per call; the others still count in
//! the link loads. A link is healthy when it was given to [`Planner::new`] and its first entry in
//! `links` says healthy; links unknown to `new` are ignored, and a client on such a link is
//! treated as being on an unhealthy link.
//!
//! 1. **Initial / Failover**: a client with no link, or on an unhealthy link, goes to its home if
//!    the home is healthy, else to a fallback link: under `Class` the least-utilised healthy link
//!    (utilisation = sum of the rates of the clients on it, counting the moves already planned in
//!    this call; ties to fewer clients, then the lower id); under `Standby` the lowest healthy
//!    link ("everything on the lowest healthy link"). The reason is [`MoveReason::Initial`] when
//!    the client had no link, [`MoveReason::Failover`] otherwise. No healthy link: no move.
//! 2. **Return**: a client on a healthy link other than its home goes home once the home has
//!    been healthy for `hysteresis_ms` (`now_ms - healthy_since_ms >= hysteresis_ms`).
//!    Returns are decided before failovers, so failover targets see the returning clients' load.
//! 3. **Rebalance** (adaptive; `Class` policy with `adaptive` on; at most one per call): with the
//!    loads after the moves above, let B be the busiest healthy link and L the lightest (ties to
//!    the lower id). If `load(B) >= rebalance_min_bps`, `load(B) > rebalance_ratio * load(L)` and
//!    B carries at least two movable clients not yet moved in this call, the lightest of them
//!    whose cooldown has expired (`now_ms - last rebalance >= rebalance_cooldown_ms`) moves to L
//!    and L becomes its home, so a Return does not undo it. The heaviest client on B never moves
//!    (it is the one that needs the bandwidth), and a move must help: the client's rate is
//!    positive and `load(L) + rate < load(B)`. `Standby` never rebalances: its spare links stay
//!    idle for failover.
//!
//! The output lists Initial/Failover moves, then Returns, then the Rebalance, each group in
//! client-name order. No move targets an unhealthy link, none has `from == to`, and no client
//! moves twice in one call. Rates that are negative or not finite count as 0.

use crate::manager::config::{BalanceConfig, BalancePolicy};
use crate::manager::types::{BandwidthClass, LinkId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A link as the planner sees it in one `plan` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkView {
    /// Link id.
    pub id: LinkId,
    /// Whether clients may be placed on it now.
    pub healthy: bool,
    /// Virtual time (ms) when it last became healthy (meaningful while `healthy`).
    pub healthy_since_ms: u64,
}

/// A registered client as the planner sees it in one `plan` call.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientView {
    /// Client name (unique; a later entry with the same name in one call is ignored).
    pub name: String,
    /// Bandwidth class.
    pub class: BandwidthClass,
    /// Link it is on now, if attached.
    pub link: Option<LinkId>,
    /// Measured traffic, bytes per second.
    pub rate_bps: f64,
    /// False while a move is in progress or the client is not yet matched with its peer: the
    /// planner then leaves it where it is (its rate still counts on its link).
    pub movable: bool,
}

/// Why a client is moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoveReason {
    /// First placement of a client that had no link.
    Initial,
    /// Off an unhealthy link.
    Failover,
    /// Back home after the home link stayed healthy for the hysteresis time.
    Return,
    /// Adaptive migration off the busiest link.
    Rebalance,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoveReason::Initial => "initial",
            MoveReason::Failover => "failover",
            MoveReason::Return => "return",
            MoveReason::Rebalance => "rebalance",
        })
    }
}

/// One planned move of a client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Move {
    /// Client name.
    pub client: String,
    /// Link it is on now (`None`: not attached).
    pub from: Option<LinkId>,
    /// Link to attach it on (always healthy, never equal to `from`).
    pub to: LinkId,
    /// Why.
    pub reason: MoveReason,
}

/// A client's home link and how it got it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Home {
    link: LinkId,
    class: BandwidthClass,
    /// A high client that was given an empty link of its own.
    dedicated: bool,
}

/// The placement planner (see the module documentation for the rules).
#[derive(Clone, Debug, PartialEq)]
pub struct Planner {
    config: BalanceConfig,
    /// Configured links, sorted, without duplicates.
    links: Vec<LinkId>,
    homes: BTreeMap<String, Home>,
    /// Virtual time of each client's last Rebalance move.
    rebalanced_at: BTreeMap<String, u64>,
}

/// Health of the known links in one call: id -> healthy_since_ms, healthy links only.
type Health = BTreeMap<LinkId, u64>;

/// A client's rate as used in loads: negative or non-finite rates count as 0.
fn rate_of(client: &ClientView) -> f64 {
    if client.rate_bps.is_finite() && client.rate_bps > 0.0 {
        client.rate_bps
    } else {
        0.0
    }
}

/// Weight of a homed client when choosing a shared link (high clients do not count).
fn share_weight(class: BandwidthClass) -> u32 {
    match class {
        BandwidthClass::Low => 1,
        BandwidthClass::Medium => 2,
        BandwidthClass::High => 0,
    }
}

/// Where the clients of one call are, updated as moves are planned.
struct Positions<'a> {
    /// Clients by name (first entry per name).
    clients: BTreeMap<&'a str, &'a ClientView>,
    at: BTreeMap<&'a str, Option<LinkId>>,
    moved: BTreeSet<&'a str>,
}

impl<'a> Positions<'a> {
    fn new(clients: &'a [ClientView]) -> Positions<'a> {
        let mut by_name = BTreeMap::new();
        for c in clients {
            by_name.entry(c.name.as_str()).or_insert(c);
        }
        let at = by_name.iter().map(|(n, c)| (*n, c.link)).collect();
        Positions {
            clients: by_name,
            at,
            moved: BTreeSet::new(),
        }
    }

    /// (load, client count) on `link`, summed in name order.
    fn load(&self, link: LinkId) -> (f64, usize) {
        self.clients
            .iter()
            .filter(|(n, _)| self.at[*n] == Some(link))
            .fold((0.0, 0), |(l, k), (_, c)| (l + rate_of(c), k + 1))
    }

    /// Movable clients not moved yet in this call, in name order.
    fn candidates(&self) -> Vec<&'a ClientView> {
        self.clients
            .values()
            .filter(|c| c.movable && !self.moved.contains(c.name.as_str()))
            .copied()
            .collect()
    }

    fn record(
        &mut self,
        out: &mut Vec<Move>,
        client: &'a ClientView,
        to: LinkId,
        reason: MoveReason,
    ) {
        let name = client.name.as_str();
        let m = Move {
            client: client.name.clone(),
            from: self.at[name],
            to,
            reason,
        };
        tracing::debug!(client = %m.client, from = ?m.from, to = m.to, reason = %m.reason, "placement move");
        self.at.insert(name, Some(to));
        self.moved.insert(name);
        out.push(m);
    }
}

impl Planner {
    /// A planner for the configured links `link_ids` (healthy or not; duplicates ignored).
    pub fn new(config: BalanceConfig, link_ids: &[LinkId]) -> Planner {
        let links: BTreeSet<LinkId> = link_ids.iter().copied().collect();
        Planner {
            config,
            links: links.into_iter().collect(),
            homes: BTreeMap::new(),
            rebalanced_at: BTreeMap::new(),
        }
    }

    /// The policy settings.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// The configured links, ascending.
    pub fn links(&self) -> &[LinkId] {
        &self.links
    }

    /// The client's home link, if it has been seen (and not forgotten).
    pub fn home(&self, client: &str) -> Option<LinkId> {
        self.homes.get(client).map(|h| h.link)
    }

    /// Forgets a released client: its home and its rebalance cooldown. Seen again, it is homed
    /// afresh.
    pub fn forget(&mut self, client: &str) {
        self.homes.remove(client);
        self.rebalanced_at.remove(client);
    }

    /// Every client's home, in name order.
    pub fn homes(&self) -> Vec<(String, LinkId)> {
        self.homes
            .iter()
            .map(|(n, h)| (n.clone(), h.link))
            .collect()
    }

    /// Plans the moves for this instant: homes new clients, then decides Initial/Failover,
    /// Return and (adaptive) Rebalance moves as described in the module documentation. The
    /// caller applies the moves and reports the new positions in later calls.
    pub fn plan(&mut self, now_ms: u64, links: &[LinkView], clients: &[ClientView]) -> Vec<Move> {
        let health = self.health(links);
        let mut pos = Positions::new(clients);
        self.assign_homes(&pos);

        let mut failovers = Vec::new();
        let mut returns = Vec::new();
        // Returns first: their targets are fixed, and failover targets should see their load.
        for c in pos.candidates() {
            let (Some(link), Some(home)) = (c.link, self.home(&c.name)) else {
                continue;
            };
            if link == home || !health.contains_key(&link) {
                continue;
            }
            if let Some(&since) = health.get(&home) {
                if now_ms.saturating_sub(since) >= self.config.hysteresis_ms {
                    pos.record(&mut returns, c, home, MoveReason::Return);
                }
            }
        }
        for c in pos.candidates() {
            if c.link.is_some_and(|l| health.contains_key(&l)) {
                continue;
            }
            let home = self.home(&c.name).filter(|h| health.contains_key(h));
            let Some(to) = home.or_else(|| self.fallback(&health, &pos)) else {
                continue;
            };
            let reason = if c.link.is_none() {
                MoveReason::Initial
            } else {
                MoveReason::Failover
            };
            pos.record(&mut failovers, c, to, reason);
        }
        failovers.extend(returns);
        if self.config.adaptive && self.config.policy == BalancePolicy::Class {
            self.rebalance(now_ms, &health, &mut pos, &mut failovers);
        }
        failovers
    }

    /// Healthy known links (first view per id wins) with the time they became healthy.
    fn health(&self, links: &[LinkView]) -> Health {
        let mut seen = BTreeSet::new();
        let mut health = Health::new();
        for l in links {
            if !self.links.contains(&l.id) || !seen.insert(l.id) {
                continue;
            }
            if l.healthy {
                health.insert(l.id, l.healthy_since_ms);
            }
        }
        health
    }

    /// Homes the clients seen for the first time, in (class descending, name) order.
    fn assign_homes(&mut self, pos: &Positions<'_>) {
        let mut new: Vec<&ClientView> = pos
            .clients
            .values()
            .filter(|c| !self.homes.contains_key(&c.name))
            .copied()
            .collect();
        new.sort_by(|a, b| b.class.cmp(&a.class).then_with(|| a.name.cmp(&b.name)));
        for c in new {
            let Some(home) = self.choose_home(c.class) else {
                return; // no configured link at all
            };
            self.homes.insert(c.name.clone(), home);
        }
    }

    fn choose_home(&self, class: BandwidthClass) -> Option<Home> {
        let lowest = *self.links.first()?;
        if self.config.policy == BalancePolicy::Standby {
            return Some(Home {
                link: lowest,
                class,
                dedicated: false,
            });
        }
        let dedicated: BTreeSet<LinkId> = self
            .homes
            .values()
            .filter(|h| h.dedicated)
            .map(|h| h.link)
            .collect();
        if class == BandwidthClass::High && dedicated.len() + 1 < self.links.len() {
            let used: BTreeSet<LinkId> = self.homes.values().map(|h| h.link).collect();
            if let Some(&link) = self.links.iter().rev().find(|l| !used.contains(l)) {
                return Some(Home {
                    link,
                    class,
                    dedicated: true,
                });
            }
        }
        // Shared links: the non-dedicated ones (at most n - 1 are dedicated, so one remains).
        let link = self
            .links
            .iter()
            .filter(|l| !dedicated.contains(l))
            .min_by_key(|&&l| {
                let weight: u32 = self
                    .homes
                    .values()
                    .filter(|h| h.link == l)
                    .map(|h| share_weight(h.class))
                    .sum();
                (weight, l)
            })
            .copied()
            .unwrap_or(lowest);
        Some(Home {
            link,
            class,
            dedicated: false,
        })
    }

    /// Where a client goes when its home is not healthy.
    fn fallback(&self, health: &Health, pos: &Positions<'_>) -> Option<LinkId> {
        match self.config.policy {
            BalancePolicy::Standby => health.keys().next().copied(),
            BalancePolicy::Class => health
                .keys()
                .map(|&l| (l, pos.load(l)))
                .min_by(|(la, (a, ka)), (lb, (b, kb))| {
                    a.total_cmp(b).then(ka.cmp(kb)).then(la.cmp(lb))
                })
                .map(|(l, _)| l),
        }
    }

    /// At most one adaptive move off the busiest healthy link.
    fn rebalance<'a>(
        &mut self,
        now_ms: u64,
        health: &Health,
        pos: &mut Positions<'a>,
        out: &mut Vec<Move>,
    ) {
        let loads: Vec<(LinkId, f64)> = health.keys().map(|&l| (l, pos.load(l).0)).collect();
        let mut busiest: Option<(LinkId, f64)> = None;
        let mut lightest: Option<(LinkId, f64)> = None;
        for &(l, load) in &loads {
            if busiest.is_none_or(|(_, b)| load > b) {
                busiest = Some((l, load));
            }
            if lightest.is_none_or(|(_, b)| load < b) {
                lightest = Some((l, load));
            }
        }
        let (Some((b, load_b)), Some((l, load_l))) = (busiest, lightest) else {
            return;
        };
        let cfg = &self.config;
        let unbalanced = load_b >= cfg.rebalance_min_bps && load_b > cfg.rebalance_ratio * load_l;
        if b == l || !unbalanced {
            return;
        }
        // Everything on B, lightest first (ties by name); the last one is the heaviest.
        let mut on_b: Vec<&'a ClientView> = pos
            .clients
            .iter()
            .filter(|(n, _)| pos.at[*n] == Some(b))
            .map(|(_, c)| *c)
            .collect();
        on_b.sort_by(|x, y| {
            rate_of(x)
                .total_cmp(&rate_of(y))
                .then_with(|| x.name.cmp(&y.name))
        });
        let heaviest = on_b.last().map(|c| c.name.as_str());
        let movable: Vec<&'a ClientView> = on_b
            .iter()
            .copied()
            .filter(|c| c.movable && !pos.moved.contains(c.name.as_str()))
            .collect();
        if movable.len() < 2 {
            return;
        }
        for c in movable {
            let rate = rate_of(c);
            if Some(c.name.as_str()) == heaviest || rate <= 0.0 {
                continue;
            }
            if load_l + rate >= load_b {
                break; // heavier clients would not help either
            }
            let cooled = self
                .rebalanced_at
                .get(&c.name)
                .is_none_or(|&t| now_ms.saturating_sub(t) >= cfg.rebalance_cooldown_ms);
            if !cooled {
                continue;
            }
            pos.record(out, c, l, MoveReason::Rebalance);
            self.rebalanced_at.insert(c.name.clone(), now_ms);
            if let Some(home) = self.homes.get_mut(&c.name) {
                home.link = l;
                home.dedicated = false;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BandwidthClass::{High, Low, Medium};

    const MB: f64 = 1_000_000.0;

    fn config(policy: BalancePolicy, adaptive: bool) -> BalanceConfig {
        BalanceConfig {
            policy,
            hysteresis_ms: 2000,
            adaptive,
            rebalance_ratio: 4.0,
            rebalance_min_bps: MB,
            rebalance_cooldown_ms: 10_000,
        }
    }

    fn link(id: LinkId, healthy: bool, healthy_since_ms: u64) -> LinkView {
        LinkView {
            id,
            healthy,
            healthy_since_ms,
        }
    }

    /// Links 0..n, all healthy since 0 except those in `cut`.
    fn links(n: LinkId, cut: &[LinkId]) -> Vec<LinkView> {
        (0..n).map(|id| link(id, !cut.contains(&id), 0)).collect()
    }

    fn cv(name: &str, class: BandwidthClass, link: Option<LinkId>, rate_mb: f64) -> ClientView {
        ClientView {
            name: name.into(),
            class,
            link,
            rate_bps: rate_mb * MB,
            movable: true,
        }
    }

    fn pinned(c: ClientView) -> ClientView {
        ClientView {
            movable: false,
            ..c
        }
    }

    /// Moves as "client from>to reason" ("-" for no link), comparable with array literals.
    fn show(moves: &[Move]) -> Vec<String> {
        let from = |f: Option<LinkId>| f.map_or("-".to_string(), |l| l.to_string());
        let show = |m: &Move| format!("{} {}>{} {}", m.client, from(m.from), m.to, m.reason);
        moves.iter().map(show).collect()
    }

    /// Homes as "client:link".
    fn homes(p: &Planner) -> Vec<String> {
        p.homes().iter().map(|(n, l)| format!("{n}:{l}")).collect()
    }

    fn apply(clients: &mut [ClientView], moves: &[Move]) {
        for m in moves {
            for c in clients.iter_mut().filter(|c| c.name == m.client) {
                c.link = Some(m.to);
            }
        }
    }

    fn planner(policy: BalancePolicy, adaptive: bool, n: LinkId) -> Planner {
        Planner::new(config(policy, adaptive), &(0..n).collect::<Vec<_>>())
    }

    #[test]
    fn class_homes_do_not_depend_on_slice_order() {
        let base = [
            cv("m", High, None, 0.0),
            cv("a", Low, None, 0.0),
            cv("b", Low, None, 0.0),
        ];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let clients: Vec<ClientView> = order.iter().map(|&i| base[i].clone()).collect();
            let mut p = planner(BalancePolicy::Class, true, 2);
            let moves = p.plan(0, &links(2, &[]), &clients);
            assert_eq!(homes(&p), ["a:0", "b:0", "m:1"], "{order:?}");
            assert_eq!(
                show(&moves),
                ["a ->0 initial", "b ->0 initial", "m ->1 initial"]
            );
        }
    }

    #[test]
    fn high_client_seen_later_shares_without_rehoming() {
        let mut p = planner(BalancePolicy::Class, false, 2);
        p.plan(0, &links(2, &[]), &[cv("a", Low, None, 0.0)]);
        // Link 1 is not dedicated, so b spreads there.
        p.plan(1, &links(2, &[]), &[cv("b", Low, None, 0.0)]);
        assert_eq!(homes(&p), ["a:0", "b:1"]);
        // No empty link left: m shares (weights 1 and 1: lowest id).
        p.plan(2, &links(2, &[]), &[cv("m", High, None, 0.0)]);
        assert_eq!(homes(&p), ["a:0", "b:1", "m:0"]);
    }

    #[test]
    fn medium_clients_weigh_double() {
        let mut p = planner(BalancePolicy::Class, false, 2);
        let names = [("a", Low), ("b", Low), ("c", Low), ("x", Medium)];
        let clients: Vec<ClientView> = names.iter().map(|&(n, c)| cv(n, c, None, 0.0)).collect();
        p.plan(0, &links(2, &[]), &clients);
        // x first (class descending) on 0; a, b on 1 (weights 2/0, 2/1); c on 0 (2/2).
        assert_eq!(homes(&p), ["a:1", "b:1", "c:0", "x:0"]);
    }

    #[test]
    fn at_most_all_but_one_link_dedicated() {
        let mut p = planner(BalancePolicy::Class, false, 3);
        let names = [("h1", High), ("h2", High), ("h3", High), ("a", Low)];
        let clients: Vec<ClientView> = names.iter().map(|&(n, c)| cv(n, c, None, 0.0)).collect();
        p.plan(0, &[], &clients);
        assert_eq!(homes(&p), ["a:0", "h1:2", "h2:1", "h3:0"]);
        let mut single = planner(BalancePolicy::Class, false, 1);
        single.plan(0, &links(1, &[]), &[cv("h", High, None, 0.0)]);
        assert_eq!(single.home("h"), Some(0));
    }

    #[test]
    fn forget_frees_a_dedicated_link_and_the_cooldown() {
        let mut p = planner(BalancePolicy::Class, false, 2);
        p.plan(0, &[], &[cv("m", High, None, 0.0), cv("a", Low, None, 0.0)]);
        assert_eq!(homes(&p), ["a:0", "m:1"]);
        p.rebalanced_at.insert("m".into(), 5);
        p.forget("m");
        assert_eq!(p.home("m"), None);
        assert!(p.rebalanced_at.is_empty());
        // Clients absent from a call keep their homes; the freed link goes to the next high.
        p.plan(1, &[], &[cv("n", High, None, 0.0)]);
        assert_eq!(homes(&p), ["a:0", "n:1"]);
    }

    #[test]
    fn failover_goes_to_least_utilised_survivor() {
        let mut p = planner(BalancePolicy::Class, false, 3);
        let mut clients = vec![
            cv("a", Low, None, 1.0),
            cv("b", Low, None, 2.0),
            cv("c", Low, None, 3.0),
            cv("h", High, None, 500.0),
        ];
        let moves = p.plan(0, &links(3, &[]), &clients);
        apply(&mut clients, &moves);
        assert_eq!(homes(&p), ["a:0", "b:1", "c:0", "h:2"]);
        // Cut link 0: a and c go to link 1 (2 MB/s) rather than the mirror's link 2.
        let moves = p.plan(100, &links(3, &[0]), &clients);
        assert_eq!(show(&moves), ["a 0>1 failover", "c 0>1 failover"]);
        assert_eq!(p.home("a"), Some(0)); // homes are health-independent
    }

    #[test]
    fn fallback_ties_prefer_fewer_clients_then_lower_id() {
        let mut p = planner(BalancePolicy::Class, false, 3);
        let clients: Vec<ClientView> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| cv(n, Low, None, 0.0))
            .collect();
        let moves = p.plan(0, &links(3, &[0]), &clients);
        assert_eq!(homes(&p), ["a:0", "b:1", "c:2", "d:0"]);
        // a: all empty, lowest id; d: one client on 2, two on 1.
        let expected = [
            "a ->1 initial",
            "b ->1 initial",
            "c ->2 initial",
            "d ->2 initial",
        ];
        assert_eq!(show(&moves), expected);
    }

    #[test]
    fn return_only_after_hysteresis_and_while_home_healthy() {
        let mut p = planner(BalancePolicy::Class, false, 2);
        let mut clients = vec![cv("a", Low, None, 1.0)];
        let moves = p.plan(0, &links(2, &[]), &clients);
        apply(&mut clients, &moves);
        let moves = p.plan(500, &links(2, &[0]), &clients);
        assert_eq!(show(&moves), ["a 0>1 failover"]);
        apply(&mut clients, &moves);
        // Home still down: stays on 1, whatever the time.
        assert!(p.plan(50_000, &links(2, &[0]), &clients).is_empty());
        // Home back at 60 000: not before 62 000.
        let back = [link(0, true, 60_000), link(1, true, 0)];
        assert!(p.plan(60_000, &back, &clients).is_empty());
        assert!(p.plan(61_999, &back, &clients).is_empty());
        assert_eq!(show(&p.plan(62_000, &back, &clients)), ["a 1>0 return"]);
    }

    #[test]
    fn returns_count_in_failover_utilisation() {
        let mut p = planner(BalancePolicy::Class, false, 3);
        let clients = [
            cv("a", Low, Some(2), 9.0), // away from home 0, which recovered long ago
            cv("b", Low, Some(1), 5.0), // on its home 1, which just failed
            cv("c", Low, Some(2), 0.0),
        ];
        let moves = p.plan(10_000, &links(3, &[1]), &clients);
        assert_eq!(homes(&p), ["a:0", "b:1", "c:2"]);
        // a returns to 0 first, so link 2 (c, 0 MB/s) is the lightest for b.
        assert_eq!(show(&moves), ["b 1>2 failover", "a 2>0 return"]);
    }

    #[test]
    fn adaptive_moves_the_lighter_client_and_keeps_the_heavy_one() {
        let mut p = planner(BalancePolicy::Class, true, 2);
        let mut clients = vec![
            cv("a", Low, Some(0), 50.0),
            cv("b", Low, Some(1), 0.0),
            cv("c", Low, Some(0), 1.0),
        ];
        let moves = p.plan(0, &links(2, &[]), &clients);
        assert_eq!(show(&moves), ["c 0>1 rebalance"]);
        assert_eq!(homes(&p), ["a:0", "b:1", "c:1"]);
        apply(&mut clients, &moves);
        // New home: no Return undoes it, and a alone on 0 is never moved.
        assert!(p.plan(100_000, &links(2, &[]), &clients).is_empty());
    }

    #[test]
    fn adaptive_thresholds() {
        let clients = [
            cv("a", Low, Some(0), 0.6),
            cv("b", Low, Some(1), 0.0),
            cv("c", Low, Some(0), 0.3),
        ];
        // Below rebalance_min_bps.
        let mut p = planner(BalancePolicy::Class, true, 2);
        assert!(p.plan(0, &links(2, &[]), &clients).is_empty());
        // Adaptive off.
        let mut cfg = config(BalancePolicy::Class, false);
        cfg.rebalance_min_bps = 0.0;
        assert!(Planner::new(cfg, &[0, 1])
            .plan(0, &links(2, &[]), &clients)
            .is_empty());
        // Ratio not exceeded: 0.9 MB/s is not more than 4 * 0.3 MB/s.
        cfg.adaptive = true;
        let mut p = Planner::new(cfg, &[0, 1]);
        let mut busy_b = clients.clone();
        busy_b[1].rate_bps = 0.3 * MB;
        assert!(p.plan(0, &links(2, &[]), &busy_b).is_empty());
        // Exceeded, but a single movable client on the busiest link stays.
        let mut one = clients.clone();
        one[2].movable = false;
        assert!(p.plan(0, &links(2, &[]), &one).is_empty());
        assert_eq!(
            show(&p.plan(0, &links(2, &[]), &clients)),
            ["c 0>1 rebalance"]
        );
    }

    #[test]
    fn cooldown_prevents_ping_pong_and_the_heaviest_never_moves() {
        let mut cfg = config(BalancePolicy::Class, true);
        cfg.rebalance_ratio = 1.5;
        cfg.rebalance_min_bps = 0.0;
        let mut p = Planner::new(cfg, &[0, 1]);
        let mut clients = vec![
            cv("a", Low, Some(0), 10.0),
            cv("b", Low, Some(1), 0.0),
            cv("c", Low, Some(0), 4.0),
        ];
        let moves = p.plan(0, &links(2, &[]), &clients);
        assert_eq!(show(&moves), ["c 0>1 rebalance"]);
        apply(&mut clients, &moves);
        // b grows: link 1 (16) > 1.5 * link 0 (10). c is cooling down and b is the heaviest.
        clients[1].rate_bps = 12.0 * MB;
        assert!(p.plan(1_000, &links(2, &[]), &clients).is_empty());
        assert!(p.plan(9_999, &links(2, &[]), &clients).is_empty());
        assert_eq!(
            show(&p.plan(10_000, &links(2, &[]), &clients)),
            ["c 1>0 rebalance"]
        );
        assert_eq!(p.home("c"), Some(0));
    }

    #[test]
    fn rebalance_only_when_it_helps() {
        let mut cfg = config(BalancePolicy::Class, true);
        cfg.rebalance_ratio = 1.1;
        // 10 on 0 (5 + 5), 6 on 1: moving 5 would leave 11 on link 1; z is idle.
        let clients = [
            cv("a", Low, Some(0), 5.0),
            cv("b", Low, Some(1), 6.0),
            cv("c", Low, Some(0), 5.0),
            cv("z", Low, Some(0), 0.0),
        ];
        assert!(Planner::new(cfg, &[0, 1])
            .plan(0, &links(2, &[]), &clients)
            .is_empty());
        // Rates that are not finite or negative count as 0.
        cfg.rebalance_min_bps = 0.0;
        let bad = [f64::NAN, 0.0, f64::INFINITY, -5.0];
        let clients: Vec<ClientView> = clients
            .iter()
            .zip(bad)
            .map(|(c, r)| ClientView {
                rate_bps: r,
                ..c.clone()
            })
            .collect();
        assert!(Planner::new(cfg, &[0, 1])
            .plan(0, &links(2, &[]), &clients)
            .is_empty());
    }

    #[test]
    fn standby_keeps_everything_on_the_lowest_healthy_link() {
        let mut p = planner(BalancePolicy::Standby, true, 3);
        let mut clients = vec![
            cv("a", Low, None, 30.0),
            cv("b", Medium, None, 20.0),
            cv("m", High, None, 500.0),
        ];
        let moves = p.plan(0, &links(3, &[]), &clients);
        assert_eq!(homes(&p), ["a:0", "b:0", "m:0"]);
        assert_eq!(
            show(&moves),
            ["a ->0 initial", "b ->0 initial", "m ->0 initial"]
        );
        apply(&mut clients, &moves);
        // Heavy and unbalanced, but standby never rebalances.
        assert!(p.plan(1_000, &links(3, &[]), &clients).is_empty());
        // Link 0 cut: everything to link 1, not spread by load.
        let moves = p.plan(2_000, &links(3, &[0]), &clients);
        assert_eq!(
            show(&moves),
            ["a 0>1 failover", "b 0>1 failover", "m 0>1 failover"]
        );
        apply(&mut clients, &moves);
        let back = [link(0, true, 3_000), link(1, true, 0), link(2, true, 0)];
        assert!(p.plan(4_999, &back, &clients).is_empty());
        assert_eq!(
            show(&p.plan(5_000, &back, &clients)),
            ["a 1>0 return", "b 1>0 return", "m 1>0 return"]
        );
    }

    #[test]
    fn no_healthy_link_no_moves() {
        let mut p = planner(BalancePolicy::Class, true, 2);
        let clients = [
            cv("a", Low, None, 1.0),
            cv("b", Low, Some(0), 90.0),
            cv("c", Low, Some(1), 1.0),
        ];
        assert!(p.plan(0, &links(2, &[0, 1]), &clients).is_empty());
        assert!(p.plan(0, &[], &clients).is_empty());
        assert_eq!(homes(&p), ["a:0", "b:1", "c:0"]); // assigned anyway
        let mut none = planner(BalancePolicy::Class, true, 0);
        assert!(none.plan(0, &links(1, &[]), &clients).is_empty());
        assert!(none.homes().is_empty());
    }

    #[test]
    fn non_movable_clients_are_untouched_but_count() {
        let mut p = planner(BalancePolicy::Class, true, 3);
        let clients = [
            pinned(cv("a", Low, None, 0.0)),      // not matched yet: no Initial
            cv("b", Low, Some(0), 1.0),           // on the cut link: fails over
            pinned(cv("c", Low, Some(0), 1.0)),   // on the cut link too, but moving already
            pinned(cv("x", Low, Some(2), 100.0)), // home 0
            pinned(cv("y", Low, Some(2), 1.0)),   // away from home 1, hysteresis long past
        ];
        let moves = p.plan(100_000, &links(3, &[0]), &clients);
        assert_eq!(homes(&p), ["a:0", "b:1", "c:2", "x:0", "y:1"]);
        assert_eq!(show(&moves), ["b 0>1 failover"]);
        // A pinned client's rate counts: b avoids link 1, busy with x.
        let mut p = planner(BalancePolicy::Class, false, 3);
        let clients = [
            cv("b", Low, Some(0), 1.0),
            pinned(cv("x", Low, Some(1), 100.0)),
            cv("z", Low, Some(2), 1.0),
        ];
        let moves = p.plan(0, &links(3, &[0]), &clients);
        assert_eq!(homes(&p), ["b:0", "x:1", "z:2"]);
        assert_eq!(show(&moves), ["b 0>2 failover"]);
    }

    #[test]
    fn unknown_and_duplicate_entries_are_ignored() {
        let mut p = planner(BalancePolicy::Class, false, 2);
        // Link 5 is unknown (a client on it is off any usable link); the first view of 0 wins.
        let views = [
            link(5, true, 0),
            link(0, true, 0),
            link(0, false, 0),
            link(1, true, 0),
        ];
        let clients = [
            cv("a", Low, Some(5), 1.0),
            cv("a", Low, Some(1), 1.0),
            cv("b", Low, Some(5), 1.0),
        ];
        let moves = p.plan(0, &views, &clients);
        assert_eq!(show(&moves), ["a 5>0 failover", "b 5>1 failover"]);
    }
}
