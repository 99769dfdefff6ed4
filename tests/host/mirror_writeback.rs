//! Atomic multi-block write (F5.4) and mirrored write-back (F5.3, F5.5), host only and
//! deterministic: the [0097] table against a reference model under random interleavings and
//! crashes; a crash at every persisted store of a write on the primary and on the mirror; two
//! machines exchanging messages in memory (the "RDMA WRITE" is a copy between backings) with
//! path changes injected at every step and stale messages lost, delivered late or twice.
//!
//! `WRITEBACK_SEEDS=N` sets how many random schedules the two-machine test runs.

use interlink::clients::mirror::atomic::{BufferEntry, MAX_ATOMIC_BLOCKS};
use interlink::clients::mirror::{
    ultimate_state, AtomicError, AtomicGeometry, AtomicWriteTable, BufferState, CompletionStatus,
    Disposition, MemoryNvram, Message, NvramBacking, NvramError, PrimaryAction, RejectReason,
    RequestRef, RequestState, Rqr, WriteBackError, WriteBackMirror, WriteBackPrimary,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Instant;

const BS: usize = 512;

fn geometry(buffers: u32, ries: u32) -> AtomicGeometry {
    AtomicGeometry {
        block_size: BS as u32,
        buffers,
        ries,
    }
}

/// The content of `block` of `unit` as written by write `version`: the whole block is
/// checked, so a torn or mixed block shows.
fn pattern(version: u64, unit: u16, block: u64) -> Vec<u8> {
    let mut b = vec![(version.wrapping_mul(31) ^ block) as u8; BS];
    b[..8].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b[16..18].copy_from_slice(&unit.to_le_bytes());
    b
}

fn version_of<B: NvramBacking>(t: &AtomicWriteTable<B>, unit: u16, block: u64) -> Option<u64> {
    let data = t.read_block(unit, block)?;
    let version = u64::from_le_bytes(data[..8].try_into().unwrap());
    assert_eq!(
        data,
        pattern(version, unit, block),
        "block {unit}:{block} torn"
    );
    Some(version)
}

// ---------------------------------------------------------------------- recording NVRAM

/// NVRAM that tells what was persisted from what was only written, and logs every persist:
/// the durable image after any store can be rebuilt (a crash there).
#[derive(Clone)]
struct RecordingNvram {
    live: Vec<u8>,
    origin: Vec<u8>,
    log: Vec<(usize, Vec<u8>)>,
    meta_end: usize,
    bad_meta_stores: usize,
}

impl RecordingNvram {
    fn new(image: Vec<u8>, meta_end: usize) -> RecordingNvram {
        RecordingNvram {
            live: image.clone(),
            origin: image,
            log: Vec::new(),
            meta_end,
            bad_meta_stores: 0,
        }
    }

    fn formatted(g: AtomicGeometry) -> AtomicWriteTable<RecordingNvram> {
        let nv = RecordingNvram::new(vec![0; g.required_len()], 0);
        let mut t = AtomicWriteTable::format(nv, g).unwrap();
        t.backing_mut().meta_end = g.data_offset();
        t
    }

    fn stores(&self) -> usize {
        self.log.len()
    }

    /// Calls `f(k, image)` with the durable image after each store `k` in `from..=to`.
    fn for_each_image(&self, from: usize, to: usize, mut f: impl FnMut(usize, &[u8])) {
        let mut image = self.origin.clone();
        for (k, (offset, bytes)) in self.log.iter().enumerate().take(to + 1) {
            if k >= from {
                f(k, &image);
            }
            image[*offset..*offset + bytes.len()].copy_from_slice(bytes);
        }
        if to == self.log.len() {
            f(to, &image);
        }
    }

    fn image_at(&self, k: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.for_each_image(k, k, |_, img| out = img.to_vec());
        out
    }
}

impl NvramBacking for RecordingNvram {
    fn bytes(&self) -> &[u8] {
        &self.live
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.live
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        let size = self.live.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(NvramError::OutOfRange { offset, len, size });
        }
        if offset < self.meta_end && (len != 8 || offset % 8 != 0) {
            self.bad_meta_stores += 1;
        }
        self.log
            .push((offset, self.live[offset..offset + len].to_vec()));
        Ok(())
    }
}

fn reopen(image: Vec<u8>, g: AtomicGeometry) -> AtomicWriteTable<RecordingNvram> {
    let nv = RecordingNvram::new(image, g.data_offset());
    AtomicWriteTable::open(nv).expect("crash image opens").0
}

// ---------------------------------------------------------------------- the [0097] table

#[test]
fn ultimate_state_is_the_table_of_0097() {
    use BufferState::*;
    use RequestState as R;
    let table = [
        (ProvisionalWb, R::Free, Free),
        (ProvisionalWb, R::Valid, WbValid),
        (ProvisionalWbNot, R::Free, WbValid),
        (ProvisionalWbNot, R::Valid, Free),
        (Free, R::Free, Free),
        (Free, R::Valid, Free),
        (WbValid, R::Free, WbValid),
        (WbValid, R::Valid, WbValid),
    ];
    for (buffer, request, ultimate) in table {
        assert_eq!(
            ultimate_state(buffer, request),
            ultimate,
            "{buffer:?} {request:?}"
        );
    }
}

// ---------------------------------------------------------------------- model test

const UNITS: u16 = 2;
const SPACE: u64 = 300;
const MODEL_GEO: AtomicGeometry = AtomicGeometry {
    block_size: BS as u32,
    buffers: 600,
    ries: 4,
};

#[derive(Clone, Debug)]
enum Op {
    Begin {
        unit: u16,
        first: u16,
        blocks: usize,
        crash: Option<u16>,
    },
    Commit {
        pick: usize,
        crash: Option<u16>,
    },
    Finish {
        pick: usize,
        crash: Option<u16>,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let crash = prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)];
    let blocks = prop_oneof![4 => 1usize..=8, 1 => 9usize..=64, 1 => 200usize..=256];
    prop_oneof![
        3 => (0..UNITS, any::<u16>(), blocks, crash.clone())
            .prop_map(|(unit, first, blocks, crash)| Op::Begin { unit, first, blocks, crash }),
        2 => (any::<usize>(), crash.clone()).prop_map(|(pick, crash)| Op::Commit { pick, crash }),
        2 => (any::<usize>(), crash).prop_map(|(pick, crash)| Op::Finish { pick, crash }),
        1 => Just(Op::Crash),
    ]
}

struct Flight {
    rie: u32,
    unit: u16,
    first: u64,
    blocks: usize,
    before: Vec<Option<u64>>,
    committed: bool,
}

#[derive(Default)]
struct Model {
    visible: HashMap<(u16, u64), u64>,
    flights: Vec<Flight>,
    next: u64,
}

impl Model {
    fn busy(&self, unit: u16, first: u64, blocks: usize) -> bool {
        let end = first + blocks as u64;
        self.flights
            .iter()
            .any(|f| f.unit == unit && f.first < end && first < f.first + f.blocks as u64)
    }

    /// A crash: committed writes stay (they are in `visible`), the others never happened.
    fn crash(&mut self) {
        self.flights.clear();
    }

    fn check(&self, t: &AtomicWriteTable<RecordingNvram>) {
        assert_eq!(
            t.backing().bad_meta_stores,
            0,
            "a metadata change was not one store"
        );
        assert_eq!(t.requests().count(), self.flights.len());
        for unit in 0..UNITS {
            for block in 0..SPACE {
                let want = self.visible.get(&(unit, block)).copied();
                assert_eq!(version_of(t, unit, block), want, "block {unit}:{block}");
            }
        }
        let in_flight = |unit: u16, block: u64| {
            self.flights
                .iter()
                .any(|f| f.unit == unit && (f.first..f.first + f.blocks as u64).contains(&block))
        };
        let settled = self
            .visible
            .keys()
            .filter(|(u, b)| !in_flight(*u, *b))
            .count();
        let held: usize = self
            .flights
            .iter()
            .map(|f| f.blocks + f.before.iter().flatten().count())
            .sum();
        assert_eq!(
            t.free_buffer_count(),
            MODEL_GEO.buffers as usize - settled - held,
            "buffers leaked or lost"
        );
    }
}

/// Runs one op; `crash` turns into a crash right after store `crash % (stores + 1)` of it.
fn run_op(t: &mut AtomicWriteTable<RecordingNvram>, m: &mut Model, op: &Op) {
    let mark = t.backing().stores();
    let crash = match *op {
        Op::Begin {
            unit,
            first,
            blocks,
            crash,
        } => {
            let first = u64::from(first) % (SPACE - blocks as u64 + 1);
            m.next += 1;
            let version = m.next;
            match t.begin(version, unit, first, blocks) {
                Err(AtomicError::RangeBusy { .. }) => {
                    assert!(m.busy(unit, first, blocks));
                    return;
                }
                Err(AtomicError::NoFreeRie { .. }) => {
                    assert_eq!(m.flights.len(), MODEL_GEO.ries as usize);
                    return;
                }
                Err(AtomicError::NoFreeBuffers { needed, free }) => {
                    assert!(free < needed && !m.busy(unit, first, blocks));
                    return;
                }
                Err(e) => panic!("begin: {e}"),
                Ok((rie, buffers)) => {
                    assert!(!m.busy(unit, first, blocks));
                    for (k, b) in buffers.iter().enumerate() {
                        let data = pattern(version, unit, first + k as u64);
                        t.block_data_mut(*b).unwrap().copy_from_slice(&data);
                    }
                    let before = (0..blocks as u64)
                        .map(|k| m.visible.get(&(unit, first + k)).copied())
                        .collect();
                    m.flights.push(Flight {
                        rie,
                        unit,
                        first,
                        blocks,
                        before,
                        committed: false,
                    });
                }
            }
            crash
        }
        Op::Commit { pick, crash } => {
            if m.flights.is_empty() {
                return;
            }
            let i = pick % m.flights.len();
            let f = &mut m.flights[i];
            if f.committed {
                assert!(t.commit(f.rie).is_err());
                return;
            }
            t.commit(f.rie).unwrap();
            f.committed = true;
            let version = {
                let rie = f.rie;
                t.request(rie).unwrap().tag
            };
            for k in 0..f.blocks as u64 {
                m.visible.insert((f.unit, f.first + k), version);
            }
            if let Some(x) = crash {
                let stores = t.backing().stores() - mark;
                let at = usize::from(x) % (stores + 1);
                if at < stores {
                    // Before the flip (the last store): the write never happened.
                    for (k, v) in f.before.iter().enumerate() {
                        match v {
                            Some(v) => m.visible.insert((f.unit, f.first + k as u64), *v),
                            None => m.visible.remove(&(f.unit, f.first + k as u64)),
                        };
                    }
                }
            }
            crash
        }
        Op::Finish { pick, crash } => {
            if m.flights.is_empty() {
                return;
            }
            let f = m.flights.remove(pick % m.flights.len());
            let r = t.finish(f.rie).unwrap();
            let want = if f.committed {
                RequestState::Valid
            } else {
                RequestState::Free
            };
            assert_eq!(r.state, want);
            crash
        }
        Op::Crash => Some(0),
    };
    if let Some(x) = crash {
        let stores = t.backing().stores() - mark;
        let at = mark + usize::from(x) % (stores + 1);
        let at = if matches!(op, Op::Crash) {
            t.backing().stores()
        } else {
            at
        };
        let image = t.backing().image_at(at);
        *t = reopen(image, MODEL_GEO);
        m.crash();
    }
}

proptest! {
    // A fixed seed: the same cases on every run.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: RngSeed::Fixed(0x5eed_f504),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random interleavings of begin, commit, finish and crashes (also in the middle of an
    /// operation) of overlapping writes of 1..=256 blocks: every block always shows exactly
    /// the write the model says (never a mix), committed writes survive crashes, uncommitted
    /// ones vanish, and no buffer leaks.
    #[test]
    fn atomic_writes_match_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut t = RecordingNvram::formatted(MODEL_GEO);
        let mut m = Model::default();
        for op in &ops {
            run_op(&mut t, &mut m, op);
            m.check(&t);
        }
        let image = t.backing().image_at(t.backing().stores());
        let t = reopen(image, MODEL_GEO);
        m.crash();
        m.check(&t);
    }

    /// Whatever bytes arrive, decoding gives a message or a typed error, and a message
    /// re-encodes to the same bytes.
    #[test]
    fn hostile_bytes_decode_to_a_message_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..80), kind in 0u8..9) {
        let mut bytes = bytes;
        if let Some(b) = bytes.first_mut() { *b = kind; }
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.to_bytes().unwrap(), bytes);
        }
    }
}

// ---------------------------------------------------------------------- crash at every store

/// A write of `blocks` blocks over old data on every other block, crashed after each of its
/// stores: after recovery the range is all new (from the commit store on) or all old.
#[test]
fn table_crash_at_every_store_is_all_or_nothing() {
    for blocks in [1usize, 16, 256] {
        let g = geometry(2 * blocks as u32 + 8, 2);
        let mut t = RecordingNvram::formatted(g);
        let first = 1000;
        for k in (0..blocks as u64).step_by(2) {
            let (rie, b) = t.begin(1 + k, 0, first + k, 1).unwrap();
            t.block_data_mut(b[0])
                .unwrap()
                .copy_from_slice(&pattern(1 + k, 0, first + k));
            t.commit(rie).unwrap();
            t.finish(rie).unwrap();
        }
        let old = |k: u64| (k % 2 == 0).then_some(1 + k);
        let version = 10_000;
        let mark = t.backing().stores();
        let (rie, buffers) = t.begin(version, 0, first, blocks).unwrap();
        for (k, b) in buffers.iter().enumerate() {
            let data = pattern(version, 0, first + k as u64);
            t.block_data_mut(*b).unwrap().copy_from_slice(&data);
        }
        t.commit(rie).unwrap();
        let flip = t.backing().stores() - 1;
        t.finish(rie).unwrap();
        let end = t.backing().stores();
        assert_eq!(t.backing().bad_meta_stores, 0);
        let old_count = blocks.div_ceil(2);
        let (mut seen_old, mut seen_new) = (false, false);
        t.backing().for_each_image(mark, end, |k, image| {
            let r = reopen(image.to_vec(), g);
            assert_eq!(r.requests().count(), 0);
            let new = k > flip;
            for b in 0..blocks as u64 {
                let want = if new { Some(version) } else { old(b) };
                assert_eq!(
                    version_of(&r, 0, first + b),
                    want,
                    "{blocks} blocks, store {k}"
                );
            }
            let held = if new { blocks } else { old_count };
            assert_eq!(r.free_buffer_count(), g.buffers as usize - held);
            seen_old |= !new;
            seen_new |= new;
        });
        assert!(seen_old && seen_new);
    }
}

#[test]
fn more_than_256_blocks_are_refused() {
    let g = geometry(600, 2);
    let mut t = AtomicWriteTable::format(MemoryNvram::new(g.required_len()), g).unwrap();
    assert!(matches!(
        t.begin(1, 0, 0, MAX_ATOMIC_BLOCKS + 1),
        Err(AtomicError::BlockCount { blocks: 257, .. })
    ));
    assert!(matches!(
        t.begin(1, 0, 0, 0),
        Err(AtomicError::BlockCount { .. })
    ));
    let mut p = WriteBackPrimary::new(t);
    let now = Instant::now();
    assert!(matches!(
        p.handle_host_write(now, 0, 0, &vec![0; BS * 257]),
        Err(WriteBackError::Atomic(AtomicError::BlockCount {
            blocks: 257,
            ..
        }))
    ));
    assert!(matches!(
        p.handle_host_write(now, 0, 0, &[0; BS + 1]),
        Err(WriteBackError::Atomic(AtomicError::DataLength { .. }))
    ));
    assert!(p.handle_host_write(now, 0, 0, &vec![0; BS * 256]).is_ok());
    assert_eq!(p.table().free_buffer_count(), 600 - 256);
}

#[path = "mirror_writeback/pair.rs"]
mod pair;
#[path = "mirror_writeback/sync.rs"]
mod sync;
use pair::{Pair, PathChange, StalePolicy};

/// Crash the primary after each store of a mirrored write (begin, data, commit, and the
/// finish after the MDA): its recovered NVRAM holds the range all old or all new, and once
/// the write was acknowledged, the new data on both sides.
#[test]
fn primary_crash_at_every_store() {
    for blocks in [1usize, 16, 256] {
        let g = geometry(2 * blocks as u32 + 8, 4);
        let mut pair = Pair::new(RecordingNvram::formatted(g), mem_table(g));
        pair.up();
        let w1 = pair.write_and_settle(0, 100, blocks);
        let first2 = 100 + blocks as u64 / 2;
        let mark = pair.primary.table().backing().stores();
        let w2 = pair.write_and_settle(0, first2, blocks);
        assert_eq!(pair.done[&w2.0], CompletionStatus::Mirrored);
        let end = pair.primary.table().backing().stores();
        let (mut seen_old, mut seen_new) = (false, false);
        pair.primary
            .table()
            .backing()
            .for_each_image(mark, end, |k, image| {
                let t = reopen(image.to_vec(), g);
                let new = version_of(&t, 0, first2 + blocks as u64 - 1) == Some(w2.1);
                for b in 100..first2 + blocks as u64 {
                    let want = if b >= first2 && new {
                        Some(w2.1)
                    } else if b < 100 + blocks as u64 {
                        Some(w1.1)
                    } else {
                        None
                    };
                    assert_eq!(version_of(&t, 0, b), want, "{blocks} blocks, store {k}");
                }
                seen_old |= !new;
                seen_new |= new;
                if k == end {
                    assert!(new, "acknowledged write lost on the primary");
                }
            });
        assert!(seen_old && seen_new);
        for b in first2..first2 + blocks as u64 {
            assert_eq!(version_of(pair.mirror.table(), 0, b), Some(w2.1));
        }
    }
}

/// Crash the mirror after each store of a mirrored write (its begin, commit and finish):
/// its recovered NVRAM holds the range all old or all new; restarted (a new incarnation) it
/// takes the redone write, which then completes once with both sides holding it.
#[test]
fn mirror_crash_at_every_store() {
    for blocks in [1usize, 16, 256] {
        let g = geometry(2 * blocks as u32 + 8, 4);
        let mut pair = Pair::new(mem_table(g), RecordingNvram::formatted(g));
        pair.up();
        let w1 = pair.write_and_settle(0, 100, blocks);
        let primary_image = pair.primary.table().backing().clone();
        // Everything the mirror wrote is persisted by now: its image, with an empty log.
        let mirror_image = RecordingNvram::new(
            pair.mirror.table().backing().bytes().to_vec(),
            g.data_offset(),
        );
        let first2 = 100 + blocks as u64 / 2;
        let mut k = 0;
        let (mut seen_old, mut seen_new) = (false, false);
        loop {
            let primary = AtomicWriteTable::open(primary_image.clone()).unwrap().0;
            let mirror = AtomicWriteTable::open(mirror_image.clone()).unwrap().0;
            let mut pair = Pair::new(primary, mirror);
            pair.versions = w1.1;
            pair.up();
            let mark = pair.mirror.table().backing().stores();
            let w2 = pair.host_write(0, first2, blocks).unwrap();
            let crashed = pair.run_until_mirror_store(mark + k);
            if !crashed {
                assert!(
                    seen_old && seen_new && k > 3,
                    "{blocks} blocks: {k} crash points"
                );
                break;
            }
            // The mirror restarted from its durable image: all old or all new, never mixed.
            let t = pair.mirror.table();
            let new = version_of(t, 0, first2) == Some(w2.1);
            seen_old |= !new;
            seen_new |= new;
            for b in first2..first2 + blocks as u64 {
                let want = if new {
                    Some(w2.1)
                } else if b < 100 + blocks as u64 {
                    Some(w1.1)
                } else {
                    None
                };
                assert_eq!(version_of(t, 0, b), want, "{blocks} blocks, store {k}");
            }
            pair.primary.handle_path_changed();
            pair.settle();
            assert_eq!(
                pair.done.get(&w2.0),
                Some(&CompletionStatus::Mirrored),
                "{blocks} blocks, store {k}: {:?} {:?}",
                pair.primary.stats(),
                pair.mirror.stats()
            );
            pair.check_converged();
            k += 1;
        }
    }
}

fn mem_table(g: AtomicGeometry) -> AtomicWriteTable<MemoryNvram> {
    AtomicWriteTable::format(MemoryNvram::new(g.required_len()), g).unwrap()
}

// ---------------------------------------------------------------------- two machines

/// A fixed workload (overlapping writes that must wait for each other, 1 to 16 blocks) run
/// by a fixed schedule, with a path change injected before each step in turn, seen by both
/// sides or one, and the old path's messages and completions dropped, delivered late, or
/// delivered twice in reverse order: each write completes exactly once, mirrored, and both
/// sides end with identical metadata and data.
#[test]
fn path_change_at_every_step() {
    let baseline = {
        let mut pair = Pair::new(mem_table(geometry(64, 4)), mem_table(geometry(64, 4)));
        pair.scripted(None);
        pair.steps
    };
    assert!(baseline > 20);
    let mut runs = 0;
    for step in 0..=baseline {
        for change in [
            PathChange::Both,
            PathChange::PrimaryOnly,
            PathChange::MirrorOnly,
        ] {
            for stale in [StalePolicy::Drop, StalePolicy::Late, StalePolicy::Twice] {
                let mut pair = Pair::new(mem_table(geometry(64, 4)), mem_table(geometry(64, 4)));
                pair.scripted(Some((step, change, stale)));
                runs += 1;
            }
        }
    }
    assert_eq!(runs, (baseline + 1) * 9);
}

/// Random schedules: host writes, deliveries, transfers, path changes with the link down for
/// a while, stale messages and completions delivered late or twice.
#[test]
fn random_schedules_with_path_changes() {
    let seeds: u64 = std::env::var("WRITEBACK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    for seed in 0..seeds {
        let mut pair = Pair::new(mem_table(geometry(128, 8)), mem_table(geometry(128, 8)));
        pair.random(&mut StdRng::seed_from_u64(seed), 30);
    }
}

#[test]
fn partner_failure_completes_every_write_once_without_the_mirror() {
    let g = geometry(64, 4);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    let a = pair.host_write(0, 0, 4).unwrap();
    let b = pair.host_write(0, 10, 4).unwrap();
    let c = pair.host_write(0, 20, 4).unwrap();
    // A: absorbed on the mirror, its MDA still on the way. B: set up. C: RQR on the way.
    assert!(pair.deliver_to_mirror()); // RQR A
    assert!(pair.deliver_to_mirror()); // RQR B
    assert!(pair.deliver_to_primary()); // RTR A
    assert!(pair.transfer()); // data A
    assert!(pair.deliver_to_mirror()); // RQR C
    assert!(pair.deliver_to_mirror()); // DataSent A
    let mda_a = pair.to_primary.pop_back().unwrap();
    pair.to_mirror.clear();
    pair.to_primary.clear();
    pair.primary.handle_partner_failed(pair.now).unwrap();
    pair.pump();
    for (w, first) in [(a, 0), (b, 10), (c, 20)] {
        assert_eq!(pair.done[&w.0], CompletionStatus::MirrorLost);
        assert_eq!(version_of(pair.primary.table(), 0, first + 3), Some(w.1));
    }
    let d = pair.host_write(0, 30, 2).unwrap();
    pair.pump();
    assert_eq!(pair.done[&d.0], CompletionStatus::MirrorLost);
    let mda = Message::decode(&mda_a).unwrap();
    assert_eq!(
        pair.primary.handle_message(pair.now, &mda).unwrap(),
        Disposition::Stale
    );
    assert_eq!(pair.primary.pending(), 0);
    // The mirror drops what will never finish: B and C are not there, A is, whole.
    assert_eq!(pair.mirror.handle_partner_failed().unwrap(), 2);
    for blk in 0..4 {
        assert_eq!(version_of(pair.mirror.table(), 0, blk), Some(a.1));
        assert_eq!(version_of(pair.mirror.table(), 0, 10 + blk), None);
        assert_eq!(version_of(pair.mirror.table(), 0, 20 + blk), None);
    }
    assert_eq!(pair.mirror.table().requests().count(), 0);
    // Back as a mirror: writes are mirrored again.
    pair.primary.handle_partner_restored();
    let e = pair.host_write(1, 0, 3).unwrap();
    pair.settle();
    assert_eq!(pair.done[&e.0], CompletionStatus::Mirrored);
    assert_eq!(version_of(pair.mirror.table(), 1, 2), Some(e.1));
}

#[test]
fn hostile_rqrs_are_rejected_and_complete_the_write() {
    let g = geometry(16, 2);
    let mut m = WriteBackMirror::new(mem_table(g)).unwrap();
    let inc = m.incarnation();
    let rqr = |request, rie, new_buffers: Vec<u32>, first_block| {
        Message::Rqr(Rqr {
            at: RequestRef {
                request,
                rie,
                incarnation: inc,
            },
            unit: 0,
            first_block,
            old_blocks: 0,
            new_buffers,
        })
    };
    let cases = [
        (rqr(1, 2, vec![0], 0), RejectReason::BadRie),
        (rqr(1, 0, vec![16], 0), RejectReason::BadBuffer),
        (rqr(1, 0, vec![3, 3], 0), RejectReason::BadBuffer),
    ];
    for (msg, reason) in cases {
        assert_eq!(m.handle_message(&msg).unwrap(), Disposition::Accepted);
        match m.poll_send() {
            Some(Message::Reject(_, r)) => assert_eq!(r, reason),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        m.handle_message(&rqr(2, 0, vec![0, 1], 5)).unwrap(),
        Disposition::Accepted
    );
    assert!(matches!(m.poll_send(), Some(Message::Rtr(_))));
    // An older request on a block the newer one holds: busy.
    assert_eq!(
        m.handle_message(&rqr(1, 1, vec![2], 6)).unwrap(),
        Disposition::Accepted
    );
    assert!(matches!(
        m.poll_send(),
        Some(Message::Reject(_, RejectReason::RangeBusy))
    ));
    // A newer one overtook it: the primary abandoned request 2 (it never has two writes of
    // one block in progress), which is aborted here instead of holding its blocks forever.
    let aborted = m.stats().aborted;
    assert_eq!(
        m.handle_message(&rqr(3, 1, vec![2], 6)).unwrap(),
        Disposition::Accepted
    );
    assert!(matches!(m.poll_send(), Some(Message::Rtr(_))));
    assert_eq!(m.stats().aborted, aborted + 1);
    assert!(m.table().request(0).is_none());
    // Stale: an RQR older than the request in the RIE; unexpected: an MDA at the mirror.
    assert_eq!(
        m.handle_message(&rqr(1, 1, vec![3], 70)).unwrap(),
        Disposition::Stale
    );
    let mda = Message::Mda(RequestRef {
        request: 3,
        rie: 1,
        incarnation: inc,
    });
    assert_eq!(m.handle_message(&mda).unwrap(), Disposition::Unexpected);

    // A reject completes the primary's write (absorbed locally only).
    let mut pair = Pair::new(mem_table(g), mem_table(geometry(16, 1)));
    pair.up();
    let _ok = pair.host_write(0, 0, 1).unwrap();
    let w = pair.host_write(0, 9, 1).unwrap(); // RIE 1: the mirror has only RIE 0
    pair.settle();
    assert_eq!(
        pair.done[&w.0],
        CompletionStatus::MirrorRejected(RejectReason::BadRie)
    );
    assert_eq!(version_of(pair.primary.table(), 0, 9), Some(w.1));
    assert_eq!(version_of(pair.mirror.table(), 0, 9), None);
}

#[test]
fn completion_reports_latency_and_actions_in_order() {
    let g = geometry(16, 2);
    let mut p = WriteBackPrimary::new(mem_table(g));
    let t0 = Instant::now();
    p.handle_link_up();
    let r = p.handle_host_write(t0, 0, 0, &pattern(1, 0, 0)).unwrap();
    let Some(PrimaryAction::Send(Message::Rqr(q))) = p.poll_action() else {
        panic!()
    };
    assert_eq!((q.at.request, q.new_buffers.len()), (r, 1));
    let rtr = Message::Rtr(RequestRef {
        incarnation: 5,
        ..q.at
    });
    assert_eq!(p.handle_message(t0, &rtr).unwrap(), Disposition::Accepted);
    assert_eq!(p.incarnation(), 5);
    assert!(matches!(
        p.poll_action(),
        Some(PrimaryAction::WriteData { incarnation: 5, .. })
    ));
    assert_eq!(p.handle_message(t0, &rtr).unwrap(), Disposition::Duplicate);
    assert_eq!(p.handle_data_written(r, 4), Disposition::Stale);
    assert_eq!(p.handle_data_written(r, 5), Disposition::Accepted);
    assert!(matches!(
        p.poll_action(),
        Some(PrimaryAction::Send(Message::DataSent(_)))
    ));
    let old_mda = Message::Mda(RequestRef {
        incarnation: 4,
        ..q.at
    });
    assert_eq!(p.handle_message(t0, &old_mda).unwrap(), Disposition::Stale);
    let later = t0 + std::time::Duration::from_millis(3);
    let mda = Message::Mda(RequestRef {
        incarnation: 5,
        ..q.at
    });
    assert_eq!(
        p.handle_message(later, &mda).unwrap(),
        Disposition::Accepted
    );
    assert_eq!(
        p.poll_action(),
        Some(PrimaryAction::Complete {
            request: r,
            status: CompletionStatus::Mirrored,
            latency: std::time::Duration::from_millis(3),
        })
    );
    assert_eq!(p.handle_message(later, &mda).unwrap(), Disposition::Unknown);
    assert_eq!(
        p.table().buffer_entry(0).unwrap(),
        BufferEntry::WbValid { unit: 0, block: 0 }
    );
}
