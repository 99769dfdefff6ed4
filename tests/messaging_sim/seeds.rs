//! Seed loops: fixed seeds plus a range, spread over all cores; the first failure is
//! re-raised with its seed and replay hint.

use super::{replay_hint, Sim};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seeds every run includes (earlier failures and corner cases).
pub const FIXED_SEEDS: &[u64] = &[0, 1, 2, 3, 7, 42, 1234, 0xdead_beef, u64::MAX];

/// Random seeds of the main loop (`MESSAGING_SEEDS` overrides).
pub fn main_seed_count() -> u64 {
    std::env::var("MESSAGING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

/// What a scenario exercised, summed over seeds (printed, and checked to be non-trivial).
#[derive(Default)]
pub struct Coverage {
    pub seeds: AtomicU64,
    pub messages: AtomicU64,
    pub frames: AtomicU64,
    pub retransmitted: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub corrupt: AtomicU64,
    pub stale: AtomicU64,
    pub resets: AtomicU64,
    pub timeouts: AtomicU64,
}

impl Coverage {
    pub fn add(&self, sim: &Sim) {
        self.seeds.fetch_add(1, Ordering::Relaxed);
        for s in &sim.sides {
            let st = s.win.stats();
            self.messages
                .fetch_add(st.messages_delivered, Ordering::Relaxed);
            self.frames.fetch_add(st.frames_sent, Ordering::Relaxed);
            self.retransmitted
                .fetch_add(st.frames_retransmitted, Ordering::Relaxed);
            self.duplicates.fetch_add(st.duplicates, Ordering::Relaxed);
            self.out_of_order
                .fetch_add(st.out_of_order, Ordering::Relaxed);
            self.corrupt.fetch_add(st.corrupt, Ordering::Relaxed);
            self.stale.fetch_add(st.stale, Ordering::Relaxed);
            self.resets.fetch_add(st.resets, Ordering::Relaxed);
            self.timeouts.fetch_add(st.timeouts, Ordering::Relaxed);
        }
    }

    pub fn get(&self, f: &AtomicU64) -> u64 {
        f.load(Ordering::Relaxed)
    }

    pub fn line(&self) -> String {
        let g = |f: &AtomicU64| self.get(f);
        format!(
            "{} seeds: {} messages delivered, {} frames (+{} again), {} duplicates, {} out of order, {} corrupt rejected, {} stale, {} resets, {} timeouts",
            g(&self.seeds),
            g(&self.messages),
            g(&self.frames),
            g(&self.retransmitted),
            g(&self.duplicates),
            g(&self.out_of_order),
            g(&self.corrupt),
            g(&self.stale),
            g(&self.resets),
            g(&self.timeouts)
        )
    }
}

/// Runs `scenario` for the fixed seeds and `n` seeds from `first`, on all cores; the first
/// failure stops the loop and is re-raised with its seed and replay hint.
pub fn run_seeds(name: &str, first: u64, n: u64, scenario: fn(u64) -> Sim) -> Coverage {
    let start = Instant::now();
    let seeds: Vec<u64> = FIXED_SEEDS
        .iter()
        .copied()
        .chain(first..first + n)
        .collect();
    let cov = Coverage::default();
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(k) else {
                    return;
                };
                let r = std::panic::catch_unwind(|| scenario(seed));
                match r {
                    Ok(sim) => cov.add(&sim),
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        stop.store(true, Ordering::Relaxed);
                        let mut f = failure.lock().unwrap();
                        if f.as_ref().is_none_or(|(s, _)| seed < *s) {
                            *f = Some((seed, msg));
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some((seed, msg)) = failure.into_inner().unwrap() {
        panic!(
            "{name}: seed {seed} failed\n  replay: {}\n{msg}",
            replay_hint(seed)
        );
    }
    println!("{name}: {} in {:.1?}", cov.line(), start.elapsed());
    cov
}
