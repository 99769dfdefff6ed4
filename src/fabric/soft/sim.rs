//! The in-process transport: a simulated network between soft devices in one process, with
//! seeded fault injection (drop, delay, duplicate, cut, partition, heal).

use super::super::types::{AsyncEvent, Gid};
use super::packet_buf::{Inbox, PacketBuf};
use parking_lot::{Condvar, Mutex};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Random faults applied to every packet. Decisions come from the network's seeded RNG.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct FaultConfig {
    /// Probability a packet is dropped.
    pub drop: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Smallest extra delay.
    pub delay_min: Duration,
    /// Largest extra delay (packets with different delays are reordered).
    pub delay_max: Duration,
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Packets handed to the network.
    pub sent: u64,
    /// Packets delivered (duplicates count twice).
    pub delivered: u64,
    /// Dropped at random.
    pub dropped: u64,
    /// Dropped by a cut or partition.
    pub blocked: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets delayed.
    pub delayed: u64,
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) events: Arc<dyn Fn(AsyncEvent) + Send + Sync>,
}

struct State {
    rng: SmallRng,
    faults: FaultConfig,
    nodes: HashMap<Gid, Node>,
    by_name: HashMap<String, Gid>,
    cuts: HashSet<(Gid, Gid)>,
    partitions: HashSet<(Gid, Gid)>,
    stats: SimStats,
    pending: BinaryHeap<Reverse<(Instant, u64, GidKey)>>,
    payloads: HashMap<u64, PacketBuf>,
    seq: u64,
    next_index: u16,
    stopped: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
struct GidKey([u8; 16]);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// An in-process network for soft devices. Clones share the network.
#[derive(Clone)]
pub struct SimNet {
    shared: Arc<Shared>,
    _timer: Arc<TimerThread>,
}

struct TimerThread {
    shared: Arc<Shared>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.shared.state.lock().stopped = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.handle.lock().take() {
            if h.join().is_err() {
                tracing::warn!("sim network timer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet")
            .field("stats", &self.stats())
            .finish()
    }
}

fn pair(a: Gid, b: Gid) -> (Gid, Gid) {
    if a.0 <= b.0 {
        (a, b)
    } else {
        (b, a)
    }
}

impl SimNet {
    /// A network whose random decisions follow `seed`.
    pub fn new(seed: u64) -> SimNet {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: SmallRng::seed_from_u64(seed),
                faults: FaultConfig::default(),
                nodes: HashMap::new(),
                by_name: HashMap::new(),
                cuts: HashSet::new(),
                partitions: HashSet::new(),
                stats: SimStats::default(),
                pending: BinaryHeap::new(),
                payloads: HashMap::new(),
                seq: 0,
                next_index: 1,
                stopped: false,
            }),
            wake: Condvar::new(),
        });
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name("interlink-simnet".into())
            .spawn(move || {
                crate::fabric::prime_thread_parking();
                timer_loop(&s2)
            })
            .ok();
        SimNet {
            _timer: Arc::new(TimerThread {
                shared: shared.clone(),
                handle: Mutex::new(handle),
            }),
            shared,
        }
    }

    /// Sets the random faults.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.shared.state.lock().faults = faults;
    }

    /// What the network has done so far.
    pub fn stats(&self) -> SimStats {
        self.shared.state.lock().stats
    }

    fn gids(&self, a: &str, b: &str) -> Option<(Gid, Gid)> {
        let st = self.shared.state.lock();
        Some((*st.by_name.get(a)?, *st.by_name.get(b)?))
    }

    /// Cuts the link between devices `a` and `b`: packets are lost and both ports go down
    /// (each device gets a `PortDown` event). Unknown names are ignored.
    pub fn cut(&self, a: &str, b: &str) {
        let Some((ga, gb)) = self.gids(a, b) else {
            return;
        };
        let mut st = self.shared.state.lock();
        if st.cuts.insert(pair(ga, gb)) {
            for g in [ga, gb] {
                if let Some(n) = st.nodes.get(&g) {
                    (n.events)(AsyncEvent::PortDown { port: 1 });
                }
            }
        }
    }

    /// Silently drops every packet between the two groups (no port events: a failed switch).
    pub fn partition(&self, left: &[&str], right: &[&str]) {
        let mut st = self.shared.state.lock();
        for l in left {
            for r in right {
                if let (Some(a), Some(b)) = (st.by_name.get(*l), st.by_name.get(*r)) {
                    let p = pair(*a, *b);
                    st.partitions.insert(p);
                }
            }
        }
    }

    /// Restores the link between `a` and `b` (cut or partitioned); ports come back up.
    pub fn heal(&self, a: &str, b: &str) {
        let Some((ga, gb)) = self.gids(a, b) else {
            return;
        };
        let mut st = self.shared.state.lock();
        st.partitions.remove(&pair(ga, gb));
        if st.cuts.remove(&pair(ga, gb)) {
            for g in [ga, gb] {
                if let Some(n) = st.nodes.get(&g) {
                    (n.events)(AsyncEvent::PortActive { port: 1 });
                }
            }
        }
    }

    /// Restores every link and clears the random faults.
    pub fn heal_all(&self) {
        let cuts: Vec<(Gid, Gid)> = {
            let mut st = self.shared.state.lock();
            st.partitions.clear();
            st.faults = FaultConfig::default();
            st.cuts.drain().collect()
        };
        let st = self.shared.state.lock();
        for (a, b) in cuts {
            for g in [a, b] {
                if let Some(n) = st.nodes.get(&g) {
                    (n.events)(AsyncEvent::PortActive { port: 1 });
                }
            }
        }
    }

    /// Whether device `name` has any cut link (its port is down).
    pub(crate) fn port_down(&self, gid: Gid) -> bool {
        let st = self.shared.state.lock();
        st.cuts.iter().any(|(a, b)| *a == gid || *b == gid)
    }

    pub(crate) fn attach(&self, node: Node) -> Result<Gid, String> {
        let mut st = self.shared.state.lock();
        if st.by_name.contains_key(&node.name) {
            return Err(format!(
                "a device named {:?} is already attached",
                node.name
            ));
        }
        let idx = st.next_index;
        st.next_index = st.next_index.wrapping_add(1);
        // fd00::/8 unique-local GIDs stand for simulated ports.
        let mut g = [0u8; 16];
        g[0] = 0xfd;
        g[14..16].copy_from_slice(&idx.to_be_bytes());
        let gid = Gid(g);
        st.by_name.insert(node.name.clone(), gid);
        st.nodes.insert(gid, node);
        Ok(gid)
    }

    pub(crate) fn detach(&self, gid: Gid) {
        let mut st = self.shared.state.lock();
        if let Some(n) = st.nodes.remove(&gid) {
            st.by_name.remove(&n.name);
        }
    }

    pub(crate) fn send(&self, from: Gid, to: Gid, mut pkt: PacketBuf) {
        let mut st = self.shared.state.lock();
        st.stats.sent += 1;
        let p = pair(from, to);
        if st.cuts.contains(&p) || st.partitions.contains(&p) {
            st.stats.blocked += 1;
            return;
        }
        let f = st.faults;
        if f.drop > 0.0 && st.rng.gen_bool(f.drop.min(1.0)) {
            st.stats.dropped += 1;
            return;
        }
        let copies = if f.duplicate > 0.0 && st.rng.gen_bool(f.duplicate.min(1.0)) {
            st.stats.duplicated += 1;
            2
        } else {
            1
        };
        for i in 0..copies {
            let delay = if f.delay_max > Duration::ZERO {
                let lo = f.delay_min.min(f.delay_max).as_nanos() as u64;
                let hi = f.delay_max.as_nanos() as u64;
                Duration::from_nanos(st.rng.gen_range(lo..=hi))
            } else {
                Duration::ZERO
            };
            let bytes = if i + 1 == copies {
                std::mem::take(&mut pkt)
            } else {
                pkt.clone()
            };
            if delay.is_zero() {
                deliver(&mut st, to, bytes);
            } else {
                st.stats.delayed += 1;
                st.seq += 1;
                let seq = st.seq;
                st.payloads.insert(seq, bytes);
                st.pending
                    .push(Reverse((Instant::now() + delay, seq, GidKey(to.0))));
                self.shared.wake.notify_all();
            }
        }
    }
}

fn deliver(st: &mut State, to: Gid, bytes: PacketBuf) {
    if let Some(n) = st.nodes.get(&to) {
        n.inbox.push(bytes);
        st.stats.delivered += 1;
    }
}

fn timer_loop(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if st.stopped {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((at, seq, to))) = st.pending.peek().copied() {
            if at > now {
                break;
            }
            st.pending.pop();
            if let Some(bytes) = st.payloads.remove(&seq) {
                deliver(&mut st, Gid(to.0), bytes);
            }
        }
        match st.pending.peek() {
            Some(Reverse((at, _, _))) => {
                let at = *at;
                shared.wake.wait_until(&mut st, at);
            }
            None => {
                shared.wake.wait_for(&mut st, Duration::from_millis(50));
            }
        }
    }
}
