//! Properties of the placement planner over random link health, clients, rates and times:
//! every call's moves are well formed (rule 4), the planner is deterministic, homes are stable,
//! and after applying a call's moves no movable client is left off a healthy link.
use interlink::manager::placement::{ClientView, LinkView, Move, MoveReason, Planner};
use interlink::manager::{BalanceConfig, BalancePolicy, BandwidthClass, LinkId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// One client's report in one step.
#[derive(Clone, Debug)]
struct ClientStep {
    present: bool,
    class: BandwidthClass,
    rate: f64,
    movable: bool,
    /// Moved by something outside the planner (or a duplicate entry) this step.
    displaced: Option<Option<LinkId>>,
    duplicate: bool,
}

#[derive(Clone, Debug)]
struct Step {
    advance_ms: u64,
    links: Vec<LinkView>,
    clients: Vec<ClientStep>,
    forget: Option<usize>,
}

#[derive(Clone, Debug)]
struct Scenario {
    config: BalanceConfig,
    links: Vec<LinkId>,
    start: Vec<Option<LinkId>>,
    steps: Vec<Step>,
}

fn class() -> impl Strategy<Value = BandwidthClass> {
    prop_oneof![
        Just(BandwidthClass::Low),
        Just(BandwidthClass::Medium),
        Just(BandwidthClass::High)
    ]
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => Just(0.0),
        6 => 0.0..200e6f64,
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(1e308)],
    ]
}

/// Link ids 0..6: the planner knows some prefix of them (or a scattered set).
fn link_id() -> impl Strategy<Value = LinkId> {
    0u8..6
}

fn config() -> impl Strategy<Value = BalanceConfig> {
    (
        prop_oneof![Just(BalancePolicy::Class), Just(BalancePolicy::Standby)],
        0u64..5_000,
        any::<bool>(),
        0.5f64..6.0,
        prop_oneof![Just(0.0), 0.0..50e6f64],
        0u64..20_000,
    )
        .prop_map(
            |(policy, hysteresis_ms, adaptive, ratio, min, cooldown)| BalanceConfig {
                policy,
                hysteresis_ms,
                adaptive,
                rebalance_ratio: ratio,
                rebalance_min_bps: min,
                rebalance_cooldown_ms: cooldown,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    let link =
        (link_id(), prop::bool::weighted(0.7), 0u64..100_000).prop_map(|(id, healthy, since)| {
            LinkView {
                id,
                healthy,
                healthy_since_ms: since,
            }
        });
    let client = (
        prop::bool::weighted(0.85),
        class(),
        rate(),
        prop::bool::weighted(0.8),
        prop::option::weighted(0.1, prop::option::of(link_id())),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(present, class, rate, movable, displaced, duplicate)| ClientStep {
                present,
                class,
                rate,
                movable,
                displaced,
                duplicate,
            },
        );
    (
        0u64..8_000,
        prop::collection::vec(link, 0..8),
        prop::collection::vec(client, NAMES.len()),
        prop::option::weighted(0.1, 0..NAMES.len()),
    )
        .prop_map(|(advance_ms, links, clients, forget)| Step {
            advance_ms,
            links,
            clients,
            forget,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        config(),
        prop::collection::vec(link_id(), 0..5),
        prop::collection::vec(prop::option::of(link_id()), NAMES.len()),
        prop::collection::vec(step(), 1..12),
    )
        .prop_map(|(config, links, start, steps)| Scenario {
            config,
            links,
            start,
            steps,
        })
}

/// Healthy links as the planner must see them: known to `new`, first view per id.
fn healthy(known: &BTreeSet<LinkId>, links: &[LinkView]) -> BTreeSet<LinkId> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeSet::new();
    for l in links {
        if known.contains(&l.id) && seen.insert(l.id) && l.healthy {
            out.insert(l.id);
        }
    }
    out
}

fn group(reason: MoveReason) -> u8 {
    match reason {
        MoveReason::Initial | MoveReason::Failover => 0,
        MoveReason::Return => 1,
        MoveReason::Rebalance => 2,
    }
}

/// Rule 4 and friends, for one call.
fn check_moves(
    moves: &[Move],
    clients: &[ClientView],
    healthy: &BTreeSet<LinkId>,
    homes_after: &BTreeMap<String, LinkId>,
) -> Result<(), TestCaseError> {
    let mut first: BTreeMap<&str, &ClientView> = BTreeMap::new();
    for c in clients {
        first.entry(c.name.as_str()).or_insert(c);
    }
    let mut seen = BTreeSet::new();
    for m in moves {
        prop_assert!(healthy.contains(&m.to), "move to unhealthy link: {m:?}");
        prop_assert_ne!(m.from, Some(m.to), "move to the same link: {:?}", m);
        prop_assert!(seen.insert(m.client.as_str()), "two moves for {}", m.client);
        let c = first.get(m.client.as_str());
        prop_assert!(c.is_some(), "move for an absent client: {m:?}");
        let c = c.unwrap();
        prop_assert!(c.movable, "moved a non-movable client: {m:?}");
        prop_assert_eq!(m.from, c.link, "from is not where the client is: {:?}", m);
        match m.reason {
            MoveReason::Initial => prop_assert!(m.from.is_none()),
            MoveReason::Failover => {
                prop_assert!(m.from.is_some_and(|l| !healthy.contains(&l)))
            }
            MoveReason::Return => {
                prop_assert!(m.from.is_some_and(|l| healthy.contains(&l)));
                prop_assert_eq!(Some(&m.to), homes_after.get(&m.client));
            }
            MoveReason::Rebalance => {
                prop_assert!(m.from.is_some_and(|l| healthy.contains(&l)));
                prop_assert_eq!(Some(&m.to), homes_after.get(&m.client));
            }
        }
        if matches!(m.reason, MoveReason::Initial | MoveReason::Failover) {
            // Home when the home is usable.
            if let Some(home) = homes_after.get(&m.client).filter(|h| healthy.contains(h)) {
                prop_assert_eq!(m.to, *home);
            }
        }
    }
    prop_assert!(
        moves
            .iter()
            .filter(|m| m.reason == MoveReason::Rebalance)
            .count()
            <= 1
    );
    let order: Vec<(u8, &str)> = moves
        .iter()
        .map(|m| (group(m.reason), m.client.as_str()))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    prop_assert_eq!(order, sorted, "moves not in (rule, name) order");
    Ok(())
}

fn run(s: Scenario) -> Result<(), TestCaseError> {
    let known: BTreeSet<LinkId> = s.links.iter().copied().collect();
    let mut planner = Planner::new(s.config, &s.links);
    let mut at: Vec<Option<LinkId>> = s.start.clone();
    let mut now = 0u64;
    for step in &s.steps {
        now += step.advance_ms;
        if let Some(i) = step.forget {
            planner.forget(NAMES[i]);
            prop_assert_eq!(planner.home(NAMES[i]), None);
        }
        let mut clients = Vec::new();
        for (i, c) in step.clients.iter().enumerate() {
            if let Some(link) = c.displaced {
                at[i] = link;
            }
            if !c.present {
                continue;
            }
            let view = ClientView {
                name: NAMES[i].to_string(),
                class: c.class,
                link: at[i],
                rate_bps: c.rate,
                movable: c.movable,
            };
            if c.duplicate {
                // A later entry with the same name, somewhere else: ignored by the planner.
                clients.push(view.clone());
                clients.push(ClientView {
                    link: Some(5),
                    movable: !view.movable,
                    ..view
                });
            } else {
                clients.push(view);
            }
        }
        let healthy = healthy(&known, &step.links);
        let homes_before: BTreeMap<String, LinkId> = planner.homes().into_iter().collect();

        let mut twin = planner.clone();
        let moves = planner.plan(now, &step.links, &clients);
        let twin_moves = twin.plan(now, &step.links, &clients);
        prop_assert_eq!(&moves, &twin_moves, "not deterministic");
        prop_assert_eq!(planner.homes(), twin.homes());
        prop_assert!(planner == twin);

        let homes_after: BTreeMap<String, LinkId> = planner.homes().into_iter().collect();
        check_moves(&moves, &clients, &healthy, &homes_after)?;

        // Homes: on known links, stable except for the client rebalanced, and every client
        // seen has one (when any link is configured).
        let rebalanced: Option<&str> = moves
            .iter()
            .find(|m| m.reason == MoveReason::Rebalance)
            .map(|m| m.client.as_str());
        for (name, link) in &homes_after {
            prop_assert!(known.contains(link), "home {link} of {name} unknown");
            if let Some(before) = homes_before.get(name) {
                if Some(name.as_str()) != rebalanced {
                    prop_assert_eq!(before, link, "home of {} changed", name);
                }
            }
        }
        for c in &clients {
            prop_assert_eq!(homes_after.contains_key(&c.name), !known.is_empty());
        }
        if s.config.policy == BalancePolicy::Standby {
            let lowest = known.iter().next();
            prop_assert!(homes_after.values().all(|h| Some(h) == lowest));
            prop_assert!(rebalanced.is_none());
        }
        if !s.config.adaptive {
            prop_assert!(rebalanced.is_none());
        }

        // Apply, then: no movable client off a healthy link while one exists.
        for m in &moves {
            let i = NAMES.iter().position(|n| *n == m.client).unwrap();
            at[i] = Some(m.to);
        }
        if !healthy.is_empty() {
            let mut checked = BTreeSet::new();
            for c in &clients {
                if !checked.insert(c.name.as_str()) || !c.movable {
                    continue;
                }
                let i = NAMES.iter().position(|n| *n == c.name).unwrap();
                prop_assert!(
                    at[i].is_some_and(|l| healthy.contains(&l)),
                    "{} left on {:?} with healthy links {:?}",
                    c.name,
                    at[i],
                    healthy
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn planner_properties(s in scenario()) {
        run(s)?;
    }

    /// Homes of clients presented together do not depend on the order of the slice.
    #[test]
    fn homes_ignore_slice_order(
        config in config(),
        n in 1u8..5,
        classes in prop::collection::vec(class(), 1..NAMES.len()),
        seed in any::<u64>(),
    ) {
        let links: Vec<LinkId> = (0..n).collect();
        let clients: Vec<ClientView> = classes
            .iter()
            .enumerate()
            .map(|(i, &class)| ClientView {
                name: NAMES[i].to_string(),
                class,
                link: None,
                rate_bps: 0.0,
                movable: true,
            })
            .collect();
        let mut shuffled = clients.clone();
        // A deterministic shuffle driven by the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let views: Vec<LinkView> = links
            .iter()
            .map(|&id| LinkView { id, healthy: true, healthy_since_ms: 0 })
            .collect();
        let mut p1 = Planner::new(config, &links);
        let mut p2 = Planner::new(config, &links);
        let m1 = p1.plan(0, &views, &clients);
        let m2 = p2.plan(0, &views, &shuffled);
        prop_assert_eq!(p1.homes(), p2.homes());
        prop_assert_eq!(m1, m2);
        // Class policy: with more links than high clients, every high client has a link of
        // its own and nobody else is homed there.
        let highs = classes.iter().filter(|c| **c == BandwidthClass::High).count();
        if config.policy == BalancePolicy::Class && highs < usize::from(n) {
            let homes: BTreeMap<String, LinkId> = p1.homes().into_iter().collect();
            for c in clients.iter().filter(|c| c.class == BandwidthClass::High) {
                let home = homes[&c.name];
                prop_assert_eq!(homes.values().filter(|h| **h == home).count(), 1);
            }
        }
    }
}
