//! Crash tests of the shadow log (F5.1, F5.2, F5.5): a long scripted run of a writer and its
//! mirror (random record sizes 1..=4096, checkpoints every few records, several laps of the
//! circular area, link failures that tear a write and re-send after a rewind), then every
//! event of the run (each persisted local range, each landing on the mirror) is cut at several
//! byte offsets, and the local and mirror crash images at that point are replayed and checked
//! against what the writer had promised then (see `mirror_log_sim`). Some crash points also
//! restart the writer from its local image and check the mirror converges.

use crate::mirror_log_sim;

use interlink::clients::mirror::{replay, LogError, ReplayCursor, ScanStop};
use mirror_log_sim::{
    check_image, check_restart, old_generation_image, Driver, Event, Oracle, Target,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: usize = 64 * 1024;
const OLD_GENERATION: u64 = 3;
const GENERATION: u64 = 4;

/// The scripted run: returns the driver (with its timeline) and the starting images.
fn scripted_run(seed: u64, appends: u64) -> (Driver, Vec<u8>) {
    let start = old_generation_image(SIZE, OLD_GENERATION);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut d = Driver::format(start.clone(), start.clone(), GENERATION, seed);
    let mut full = 0;
    while d.log.stats().appended < appends {
        match rng.gen_range(0..100) {
            0..=39 => {
                let len = rng.gen_range(1..=4096);
                if let Err(LogError::Full { .. }) = d.append(len) {
                    full += 1;
                    // Either make room at once, or only ask for a checkpoint (possibly of
                    // records whose writes are pending) and let the random steps complete it.
                    let s = d.log.stats();
                    if rng.gen_bool(0.3) {
                        d.drain();
                    } else if s.appended > s.checkpoint_requested {
                        let through = if rng.gen_bool(0.5) {
                            s.appended
                        } else {
                            d.acked
                        };
                        if through > s.checkpoint_requested {
                            d.checkpoint(through).expect("checkpoint");
                        }
                    }
                }
            }
            40..=59 => {
                d.post(rng.gen_range(1..6));
            }
            60..=74 => {
                d.land(rng.gen_range(1..6));
            }
            75..=89 => d.complete(rng.gen_range(1..6)),
            90..=96 => {
                let s = d.log.stats();
                let through = if rng.gen_bool(0.2) {
                    s.appended
                } else {
                    d.acked
                };
                if through > s.checkpoint_requested {
                    d.checkpoint(through).expect("checkpoint");
                }
            }
            _ => {
                d.link_failure(&mut rng);
            }
        }
    }
    d.drain();
    assert!(full > 0, "the log never filled up");
    assert!(d.link_failures > 5 && d.torn_landings > 3);
    let laps = d.log.stats().appended * 2048 / SIZE as u64;
    assert!(laps > 5, "only about {laps} laps");
    (d, start)
}

/// Byte offsets at which to cut an event of `len` bytes (0: just before it).
fn cuts(len: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut v = vec![0];
    if len > 1 {
        v.push(rng.gen_range(1..len));
        v.push(len - 1);
        if len > 32 {
            v.push(rng.gen_range(1..32)); // inside a header
        }
    }
    v
}

fn image<'a>(t: Target, local: &'a mut [u8], mirror: &'a mut [u8]) -> &'a mut [u8] {
    match t {
        Target::Local => local,
        Target::Mirror => mirror,
    }
}

/// Replays every cut of every event of `d`'s timeline; returns how many crash images were
/// checked and how many restarts.
fn sweep(d: &Driver, start: &[u8], restart_every: usize, seed: u64) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let mut local = start.to_vec();
    let mut mirror = start.to_vec();
    let (mut checked, mut restarts) = (0, 0);
    let check = |local: &[u8], mirror: &[u8], o: &Oracle, at: &str| {
        for (img, what) in [(mirror, "mirror"), (local, "local")] {
            if let Err(e) = check_image(img, o, GENERATION, &d.payloads, what) {
                panic!("{at}: {e}");
            }
        }
    };
    for (i, ev) in d.events.iter().enumerate() {
        let Event {
            target,
            offset,
            bytes,
            oracle,
        } = ev;
        for cut in cuts(bytes.len(), &mut rng) {
            let img = image(*target, &mut local, &mut mirror);
            let saved = img[*offset..offset + cut].to_vec();
            img[*offset..offset + cut].copy_from_slice(&bytes[..cut]);
            let at = format!(
                "event {i} ({target:?} [{offset}, +{}]) cut at {cut}",
                bytes.len()
            );
            check(&local, &mirror, oracle, &at);
            checked += 1;
            if restart_every > 0 && (i + cut) % restart_every == 0 {
                let r = check_restart(
                    &local,
                    &mirror,
                    oracle,
                    GENERATION,
                    seed,
                    &d.payloads,
                    &mut rng,
                );
                if let Err(e) = r {
                    panic!("{at}: {e}");
                }
                restarts += 1;
            }
            let img = image(*target, &mut local, &mut mirror);
            img[*offset..offset + cut].copy_from_slice(&saved);
        }
        let img = image(*target, &mut local, &mut mirror);
        img[*offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    let end = d.oracle();
    check(&local, &mirror, &end, "end");
    // The timeline rebuilds both images exactly.
    assert!(
        local == d.log.local().bytes,
        "local timeline differs from the NVRAM"
    );
    assert!(
        mirror == d.mirror,
        "mirror timeline differs from the mirror"
    );
    (checked + 1, restarts)
}

#[test]
fn every_cut_of_a_long_run_replays_what_was_acknowledged() {
    for seed in [1, 2] {
        let (d, start) = scripted_run(seed, 700);
        let (checked, restarts) = sweep(&d, &start, 37, seed);
        eprintln!(
            "seed {seed}: {} events, {checked} crash images, {restarts} restarts, {:?}",
            d.events.len(),
            d.log.stats()
        );
        assert!(checked > 5000, "{checked} crash images");
        assert!(restarts > 100, "{restarts} restarts");
        // After the final drain everything acknowledged is checkpointed.
        let r = replay(&d.mirror, None).unwrap();
        assert_eq!(r.generation, GENERATION);
        assert_eq!(r.checkpoint, d.acked);
        assert!(r.records.is_empty());
    }
}

#[test]
fn a_second_takeover_replays_nothing_twice() {
    let start = vec![0u8; 16 * 1024];
    let mut d = Driver::format(start.clone(), start, GENERATION, 77);
    let mut cursor: Option<ReplayCursor> = None;
    let mut replayed = Vec::new();
    for round in 0..30u64 {
        for _ in 0..3 {
            d.append(1 + (round as usize * 97) % 1500).unwrap();
        }
        d.sync();
        // A takeover reads the mirror, skipping what an earlier takeover replayed.
        let r = replay(&d.mirror, cursor.map(|c| c.position)).unwrap();
        assert!(!r.torn_tail);
        assert!(matches!(
            r.stop,
            ScanStop::Absent { .. } | ScanStop::Stale { .. }
        ));
        for rec in &r.records {
            assert!(
                replayed.last().is_none_or(|&l| rec.seq > l),
                "seq {} twice",
                rec.seq
            );
            replayed.push(rec.seq);
        }
        if let Some(c) = ReplayCursor::after(&r) {
            // The survivor stores the cursor in two alternating slots.
            let mut slots = [[0u8; ReplayCursor::ENCODED_LEN]; 2];
            slots[(round % 2) as usize] = c.encode();
            cursor = ReplayCursor::latest(&slots[0], &slots[1]);
            assert_eq!(cursor, Some(c));
        }
        if round % 2 == 1 {
            d.checkpoint(d.acked - 1).unwrap();
            d.sync();
        }
    }
    assert_eq!(replayed, (1..=90).collect::<Vec<_>>());
}
