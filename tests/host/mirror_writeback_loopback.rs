//! The mirrored write-back driver on two in-process managers over loopback (soft provider):
//! writes of 1, 16 and 256 blocks complete only once mirrored, and the mirror's table holds
//! the same block contents as the primary's (both directions at once); several writes in
//! flight (tickets, and threads); the partner restarting mid-stream from its NVRAM files
//! (every write completes, `MirrorLost` or mirrored, and every one reported mirrored is in
//! the restarted mirror's table); more than 256 blocks refused; the resync after the mirror
//! was lost (every dirty block in the partner's image before "in sync"), destage on both
//! sides, and the partner's takeover of the dirty blocks, once.

use crate::executor;
use crate::manager_pair;

use interlink::clients::giveback::{
    CopyStamp, OwnLogContext, OwnLogMark, PartnerCopyMark, PartnerLogContext, ServingLease,
    WriteBackEpochs,
};
use interlink::clients::mirror::{
    AtomicError, AtomicGeometry, CompletionStatus, MemoryNvram, MirroredWriteBack, WriteBackConfig,
    WriteBackError, WriteBackStats,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{Manager, NodeConfig};
use manager_pair::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
const BS: usize = 512;

fn geometry() -> AtomicGeometry {
    AtomicGeometry {
        block_size: BS as u32,
        buffers: 8192,
        ries: 64,
    }
}

fn config() -> WriteBackConfig {
    WriteBackConfig {
        geometry: geometry(),
        ..WriteBackConfig::new()
    }
}

fn managers() -> (NodeConfig, NodeConfig, Arc<Manager>, Arc<Manager>) {
    init_logs();
    let dir = temp_dir("wb");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a.clone()).expect("start A"));
    let mb = Arc::new(Manager::start(b.clone()).expect("start B"));
    (a, b, ma, mb)
}

fn in_memory(m: &Arc<Manager>, cfg: WriteBackConfig) -> Arc<MirroredWriteBack> {
    let len = cfg.geometry.required_len();
    let wb = MirroredWriteBack::start(
        m,
        cfg,
        Box::new(MemoryNvram::new(len)),
        Box::new(MemoryNvram::new(len)),
    )
    .expect("start write-back");
    Arc::new(wb)
}

fn in_files(
    m: &Arc<Manager>,
    cfg: WriteBackConfig,
    dir: &Path,
    node: u32,
) -> Arc<MirroredWriteBack> {
    Arc::new(MirroredWriteBack::open(m, cfg, dir, node).expect("open write-back"))
}

fn connected(wb: &MirroredWriteBack) {
    assert!(
        wb.wait_connected_timeout(WAIT).is_ok(),
        "not connected: {:#?}",
        wb.stats()
    );
}

/// `blocks` blocks of data, each block naming `version`, its block address and its offset.
fn data(version: u64, first: u64, blocks: usize) -> Vec<u8> {
    let mut d = vec![0u8; blocks * BS];
    for (k, chunk) in d.chunks_exact_mut(BS).enumerate() {
        let block = first + k as u64;
        for (i, w) in chunk.chunks_exact_mut(8).enumerate() {
            let v = version
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(block << 16)
                .wrapping_add(i as u64);
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    d
}

/// Both tables hold `expected` at `[first, +blocks)` of `unit`.
fn assert_mirrored(
    p: &MirroredWriteBack,
    m: &MirroredWriteBack,
    unit: u16,
    first: u64,
    expected: &[u8],
) {
    for (k, want) in expected.chunks_exact(BS).enumerate() {
        let block = first + k as u64;
        let own = p.read_block(unit, block);
        assert_eq!(
            own.as_deref(),
            Some(want),
            "primary, unit {unit} block {block}"
        );
        let image = m.read_mirror_block(unit, block);
        assert_eq!(
            image.as_deref(),
            Some(want),
            "mirror, unit {unit} block {block}"
        );
    }
}

fn wait_stats(wb: &MirroredWriteBack, what: &str, mut pred: impl FnMut(&WriteBackStats) -> bool) {
    let t0 = Instant::now();
    loop {
        let st = wb.stats();
        if pred(&st) {
            return;
        }
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}: {st:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn writes_of_1_16_and_256_blocks_are_mirrored_block_for_block() {
    let (_, _, ma, mb) = managers();
    let a = in_memory(&ma, config());
    let b = in_memory(&mb, config());
    connected(&a);
    connected(&b);
    let mut version = 1;
    for (first, blocks) in [(0u64, 1usize), (100, 16), (1000, 256)] {
        let d = data(version, first, blocks);
        let t0 = Instant::now();
        assert_eq!(a.write(1, first, &d).unwrap(), CompletionStatus::Mirrored);
        eprintln!("{blocks:>3} blocks of {BS} B: {:?}", t0.elapsed());
        assert_mirrored(&a, &b, 1, first, &d);
        version += 1;
    }
    // The other direction, and overwrites (old buffers freed on both sides).
    let d = data(version, 7, 16);
    assert_eq!(b.write(2, 7, &d).unwrap(), CompletionStatus::Mirrored);
    assert_mirrored(&b, &a, 2, 7, &d);
    for round in 0..20 {
        version += 1;
        let d = data(version, 90 + round, 32);
        assert_eq!(
            a.write(1, 90 + round, &d).unwrap(),
            CompletionStatus::Mirrored
        );
        assert_mirrored(&a, &b, 1, 90 + round, &d);
    }
    assert_eq!(
        a.read_block(1, 99).unwrap(),
        b.read_mirror_block(1, 99).unwrap()
    );
    // Too many blocks, or not whole blocks: refused, nothing written.
    let err = a.write(1, 5000, &data(0, 5000, 257)).unwrap_err();
    assert!(
        matches!(
            err,
            WriteBackError::Atomic(AtomicError::BlockCount {
                blocks: 257,
                max: 256
            })
        ),
        "{err}"
    );
    let err = a.write(1, 5000, &[0u8; BS + 1]).unwrap_err();
    assert!(
        matches!(err, WriteBackError::Atomic(AtomicError::DataLength { .. })),
        "{err}"
    );
    assert!(a.read_block(1, 5000).is_none() && b.read_mirror_block(1, 5000).is_none());
    let st = a.stats();
    assert_eq!((st.writes, st.mirrored, st.pending), (23, 23, 0), "{st:#?}");
    assert_eq!(
        (st.mirror_lost, st.rejected, st.nvram_errors),
        (0, 0, 0),
        "{st:#?}"
    );
    let sb = b.stats();
    assert_eq!(sb.absorbed, 23, "{sb:#?}");
    assert_eq!(sb.mirror_rejects, 0, "{sb:#?}");
    eprintln!(
        "write latency p50 {} µs, p99 {} µs",
        st.latency_p50_us, st.latency_p99_us
    );
}

#[test]
fn several_writes_in_flight_complete_mirrored() {
    let (_, _, ma, mb) = managers();
    let a = in_memory(&ma, config());
    let b = in_memory(&mb, config());
    connected(&a);
    connected(&b);
    // Tickets: 48 writes of 8 blocks in flight together.
    let writes: Vec<(u64, Vec<u8>)> = (0..48u64).map(|i| (i * 8, data(i + 1, i * 8, 8))).collect();
    let tickets: Vec<_> = writes
        .iter()
        .map(|(first, d)| a.write_start(3, *first, d).unwrap())
        .collect();
    for t in &tickets {
        assert_eq!(a.wait(t).unwrap(), CompletionStatus::Mirrored);
    }
    for (first, d) in &writes {
        assert_mirrored(&a, &b, 3, *first, d);
    }
    // A write to a block held by a write in progress is refused by write_start...
    let t = a.write_start(4, 0, &data(1, 0, 4)).unwrap();
    match a.write_start(4, 2, &data(2, 2, 4)) {
        Err(WriteBackError::Atomic(AtomicError::RangeBusy { .. })) => {}
        Ok(t2) => {
            // ... unless the first one already completed.
            assert!(a.is_complete(&t));
            a.wait(&t2).unwrap();
        }
        Err(e) => panic!("{e}"),
    }
    a.wait(&t).unwrap();
    // Threads writing both ways at once (write waits for busy ranges itself).
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let (w, unit) = if t % 2 == 0 {
                (a.clone(), 5)
            } else {
                (b.clone(), 6)
            };
            std::thread::spawn(move || {
                let mut last = Vec::new();
                for i in 0..60u64 {
                    let first = t * 1000 + (i % 20) * 4;
                    let d = data(i + 10, first, 1 + (i as usize % 16));
                    assert_eq!(
                        w.write(unit, first, &d).unwrap(),
                        CompletionStatus::Mirrored
                    );
                    last.push((unit, first, d));
                }
                last
            })
        })
        .collect();
    let mut last = std::collections::HashMap::new();
    for h in handles {
        for (unit, first, d) in h.join().unwrap() {
            for (k, block) in d.chunks_exact(BS).enumerate() {
                last.insert((unit, first + k as u64), block.to_vec());
            }
        }
    }
    for ((unit, block), want) in &last {
        let (p, m) = if *unit == 5 { (&a, &b) } else { (&b, &a) };
        assert_eq!(p.read_block(*unit, *block).as_deref(), Some(&want[..]));
        assert_eq!(
            m.read_mirror_block(*unit, *block).as_deref(),
            Some(&want[..])
        );
    }
    let st = a.stats();
    assert_eq!(st.mirrored, st.writes, "{st:#?}");
    eprintln!(
        "{} writes: p50 {} µs p99 {} µs, {} data writes",
        st.writes, st.latency_p50_us, st.latency_p99_us, st.data_writes
    );
}

#[test]
fn partner_restart_mid_stream_keeps_every_mirrored_write() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("wb-restart");
    let a = in_files(&ma, config(), &dir, 1);
    let b = in_files(&mb, config(), &dir, 2);
    connected(&a);
    connected(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut first = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && first < 7000 {
                let blocks = 1 + (i as usize % 6);
                let d = data(i + 1, first, blocks);
                let status = a.write(1, first, &d).unwrap();
                done.push((first, d, status));
                first += blocks as u64;
                i += 1;
            }
            done
        })
    };
    wait_stats(&a, "writes before the restart", |s| s.mirrored >= 200);

    // B restarts (a new process over its NVRAM files) while A keeps writing.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let at_stop = a.stats().mirrored;
    let mb = Arc::new(Manager::start(bcfg).expect("restart B"));
    let b = in_files(&mb, config(), &dir, 2);
    connected(&b);
    wait_stats(&a, "writes after the restart", |s| {
        s.mirrored >= at_stop + 200
    });
    stop.store(true, Ordering::Relaxed);
    let done = writer.join().unwrap();
    let (mut mirrored, mut lost) = (0, 0);
    for (first, d, status) in &done {
        match status {
            CompletionStatus::Mirrored => {
                assert_mirrored(&a, &b, 1, *first, d);
                mirrored += 1;
            }
            CompletionStatus::MirrorLost => {
                assert_eq!(a.read_block(1, *first).as_deref(), Some(&d[..BS]));
                lost += 1;
            }
            other => panic!("write at {first}: {other:?}"),
        }
    }
    let st = a.stats();
    assert!(st.connections >= 2, "{st:#?}");
    assert_eq!(st.pending, 0);
    eprintln!(
        "B restarted after {at_stop} mirrored writes; {mirrored} mirrored, {lost} with the mirror lost, {} redone, {} partner failures",
        st.redone, st.partner_failures
    );
}

#[test]
fn data_path_changes_mid_stream_lose_nothing() {
    let (_, _, ma, mb) = managers();
    let mut cfg = config();
    // A long partner timeout: a reset is a path change, never a partner failure.
    cfg.partner_timeout = Duration::from_secs(60);
    let a = in_memory(&ma, cfg.clone());
    let b = in_memory(&mb, cfg);
    connected(&a);
    connected(&b);
    let stop = Arc::new(AtomicBool::new(false));
    // Mirrored writes of both writers so far.
    let progress = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = [(a.clone(), 1u16), (b.clone(), 2u16)]
        .into_iter()
        .map(|(w, unit)| {
            let stop = stop.clone();
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut done = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Overwrites of a small range: old buffers are freed and reused.
                    let first = (i * 7) % 400;
                    let d = data(i + 1, first, 1 + (i as usize % 24));
                    let tickets: Vec<_> = (0..4u64)
                        .map(|k| {
                            let first = 1000 * (k + 1) + first;
                            let d = data(i + 1, first, d.len() / BS);
                            (first, w.write_start(unit, first, &d).unwrap(), d)
                        })
                        .collect();
                    for (first, t, d) in tickets {
                        assert_eq!(w.wait(&t).unwrap(), CompletionStatus::Mirrored);
                        done.push((first, d));
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                (unit, done)
            })
        })
        .collect();
    // Writes are mirrored before, between and after the path changes: each change lands
    // mid-stream (waited for on the writers' progress, not for a time).
    let writes_go_on = || {
        let from = progress.load(Ordering::Relaxed);
        let t0 = Instant::now();
        while progress.load(Ordering::Relaxed) < from + 16 {
            assert!(t0.elapsed() < WAIT, "writes stopped: {:#?}", a.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for round in 0..6 {
        writes_go_on();
        let who = if round % 2 == 0 { &a } else { &b };
        let before = who.stats().connections;
        who.reset_data_path("test: path change");
        // Each reset is a path change of its own: the next one waits for the new path.
        wait_stats(who, "the new data path", |s| {
            s.connections > before && s.connected
        });
    }
    writes_go_on();
    stop.store(true, Ordering::Relaxed);
    let mut last = std::collections::HashMap::new();
    for h in writers {
        let (unit, done) = h.join().unwrap();
        for (first, d) in done {
            for (k, block) in d.chunks_exact(BS).enumerate() {
                last.insert((unit, first + k as u64), block.to_vec());
            }
        }
    }
    for ((unit, block), want) in &last {
        let (p, m) = if *unit == 1 { (&a, &b) } else { (&b, &a) };
        assert_eq!(p.read_block(*unit, *block).as_deref(), Some(&want[..]));
        assert_eq!(
            m.read_mirror_block(*unit, *block).as_deref(),
            Some(&want[..]),
            "unit {unit} block {block}"
        );
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert!(
        sa.connections >= 7 && sb.connections >= 7,
        "{sa:#?} {sb:#?}"
    );
    assert_eq!(sa.partner_failures + sb.partner_failures, 0);
    eprintln!(
        "A: {} writes, {} redone, {} stale; B: {} writes, {} redone, {} stale; {} held",
        sa.writes,
        sa.redone,
        sa.stale,
        sb.writes,
        sb.redone,
        sb.stale,
        sa.held + sb.held
    );
}

/// The partner shuts down: writes complete with the mirror lost. It comes back (over its
/// NVRAM files): the resync re-mirrors every dirty block before A reports in sync, and B's
/// image of every block equals A's. Then A destages everything (both sides free), and B,
/// taking A over after more writes, hands exactly A's dirty blocks once.
#[test]
fn resync_after_mirror_lost_then_destage_and_takeover() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("wb-resync");
    let a = in_files(&ma, config(), &dir, 1);
    let b = in_files(&mb, config(), &dir, 2);
    connected(&a);
    connected(&b);
    assert!(a.wait_in_sync_timeout(WAIT).is_ok(), "{:#?}", a.stats());
    for i in 0..20u64 {
        let d = data(i + 1, i * 4, 4);
        assert_eq!(a.write(1, i * 4, &d).unwrap(), CompletionStatus::Mirrored);
    }
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    wait_stats(&a, "partner failed", |s| s.partner_failed);
    let mut lost = Vec::new();
    for i in 0..30u64 {
        // Over mirrored blocks and beyond them.
        let first = 40 + i * 3;
        let d = data(100 + i, first, 3);
        assert_eq!(a.write(1, first, &d).unwrap(), CompletionStatus::MirrorLost);
        lost.push((first, d));
    }
    let st = a.stats();
    assert!(!st.in_sync && st.resync_pending_blocks >= 130, "{st:#?}");
    let mb = Arc::new(Manager::start(bcfg).expect("restart B"));
    let b = in_files(&mb, config(), &dir, 2);
    connected(&b);
    // Writes during the resync stay correct.
    let mid = data(500, 41, 2);
    assert_eq!(a.write(1, 41, &mid).unwrap(), CompletionStatus::Mirrored);
    assert!(a.wait_in_sync_timeout(WAIT).is_ok(), "{:#?}", a.stats());
    let st = a.stats();
    // The resync skips a block a host write is mirroring: the write to 41..43 may have
    // mirrored those two before the resync reached them.
    assert!(st.resyncs >= 2 && st.resync_blocks >= 128, "{st:#?}");
    assert_eq!(st.resync_pending_blocks, 0);
    let dirty = a.dirty_blocks().unwrap();
    assert_eq!(dirty.len() as u64, st.dirty_blocks);
    for d in &dirty {
        assert_eq!(
            b.read_mirror_block(d.at.unit, d.at.block).as_deref(),
            Some(&d.data[..]),
            "block {}",
            d.at.block
        );
    }
    assert_eq!(b.stats().mirror_blocks, st.dirty_blocks);
    assert_eq!(a.read_block(1, 41).as_deref(), Some(&mid[..BS]));
    for (first, d) in &lost[1..] {
        assert_mirrored(&a, &b, 1, *first, d);
    }
    // Destage everything: both sides free it.
    let refs: Vec<_> = dirty.iter().map(|d| d.at).collect();
    assert_eq!(a.destaged(&refs).unwrap(), dirty.len());
    wait_stats(&a, "notices acknowledged", |s| s.destage_notices == 0);
    assert_eq!(a.stats().dirty_blocks, 0);
    assert_eq!(b.stats().mirror_blocks, 0);
    // Some more writes, then B takes A over: exactly those, once.
    let mut want = std::collections::BTreeMap::new();
    for i in 0..5u64 {
        let d = data(900 + i, 7 + i * 2, 2);
        assert_eq!(
            a.write(1, 7 + i * 2, &d).unwrap(),
            CompletionStatus::Mirrored
        );
        for (k, chunk) in d.chunks_exact(BS).enumerate() {
            want.insert(7 + i * 2 + k as u64, chunk.to_vec());
        }
    }
    drop(a);
    ma.shutdown();
    let mut got = std::collections::BTreeMap::new();
    let report = b
        .take_over_partner(|at, data| {
            assert_eq!(at.unit, 1);
            assert!(got.insert(at.block, data.to_vec()).is_none());
            Ok(())
        })
        .unwrap();
    assert_eq!(report.blocks, want.len());
    assert_eq!(got, want);
    assert_eq!(
        b.take_over_partner(|_, _| Err("again".into()))
            .unwrap()
            .blocks,
        0
    );
    assert_eq!(b.stats().taken_over, want.len() as u64);
}

/// A completed write is returned only while the giveback client's serving lease runs (a node
/// that stalled may have been taken over, its mirrored blocks destaged by the partner).
#[test]
fn a_write_is_returned_only_while_the_serving_lease_runs() {
    let (_, _, ma, mb) = managers();
    let mut cfg = config();
    cfg.write_timeout = Duration::from_millis(500);
    let a = in_memory(&ma, cfg.clone());
    let b = in_memory(&mb, cfg);
    let lease = Arc::new(ServingLease::new());
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    a.set_serving_lease(lease.clone());
    connected(&a);
    connected(&b);
    assert!(a.wait_in_sync_timeout(WAIT).is_ok(), "{:#?}", a.stats());
    assert_eq!(
        a.write(1, 0, &data(1, 0, 2)).unwrap(),
        CompletionStatus::Mirrored
    );
    lease.set(Some(Instant::now()), true);
    // Nothing is destaged while the lease does not run either.
    let err = a.dirty_blocks().unwrap_err();
    assert!(
        matches!(err, WriteBackError::DestageWithheld { .. }),
        "{err}"
    );
    let t = a.write_start(1, 8, &data(2, 8, 2)).unwrap();
    let err = a.wait(&t).unwrap_err();
    assert!(matches!(err, WriteBackError::WriteTimeout { .. }), "{err}");
    assert!(a.is_complete(&t), "mirrored, not returned");
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    assert_eq!(a.wait(&t).unwrap(), CompletionStatus::Mirrored);
}

/// F5.7 for write-back: a write completed without the partner's mirror is returned only once
/// the mailbox marks that mirror outdated; the mark goes once a resync completed.
#[test]
fn mirror_lost_is_returned_only_once_the_mirror_is_marked_outdated() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("wb-mark");
    let mut cfg = config();
    cfg.write_timeout = Duration::from_secs(1);
    let a = in_files(&ma, cfg.clone(), &dir, 1);
    let b = in_files(&mb, cfg.clone(), &dir, 2);
    let mark = Arc::new(PartnerCopyMark::new(CopyStamp::default()));
    a.set_partner_copy_mark(mark.clone());
    connected(&a);
    connected(&b);
    assert!(a.wait_in_sync_timeout(WAIT).is_ok(), "{:#?}", a.stats());
    assert_eq!(
        a.write(1, 0, &data(1, 0, 2)).unwrap(),
        CompletionStatus::Mirrored
    );
    // B shuts down (its data client says so: the partner failed at once). A write is
    // returned only once the mailbox marks B's mirror outdated.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    wait_stats(&a, "partner failed", |s| s.partner_failed);
    let t = a.write_start(1, 8, &data(2, 8, 2)).unwrap();
    let err = a.wait(&t).unwrap_err();
    assert!(matches!(err, WriteBackError::WriteTimeout { .. }), "{err}");
    assert!(
        a.is_complete(&t),
        "committed locally, MirrorLost, not yet returned"
    );
    assert!(mark.stamp().writeback_outdated && !mark.is_writeback_durable());
    // A mailbox write carried the mark: the write is acknowledged, MirrorLost.
    mark.written(mark.stamp());
    assert_eq!(a.wait(&t).unwrap(), CompletionStatus::MirrorLost);
    assert_eq!(
        a.write(1, 16, &data(3, 16, 1)).unwrap(),
        CompletionStatus::MirrorLost
    );
    // B restarts; the resync re-mirrors every dirty block and the mark goes.
    let mb = Arc::new(Manager::start(bcfg).expect("restart B"));
    let b = in_files(&mb, cfg, &dir, 2);
    connected(&b);
    assert!(a.wait_in_sync_timeout(WAIT).is_ok(), "{:#?}", a.stats());
    let t0 = std::time::Instant::now();
    while mark.stamp().writeback_outdated {
        assert!(t0.elapsed() < WAIT, "mark never cleared: {:#?}", a.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_mirrored(&a, &b, 1, 8, &data(2, 8, 2));
    assert_mirrored(&a, &b, 1, 16, &data(3, 16, 1));
}

/// The mailbox as the giveback drivers keep it, for two write-backs: every few milliseconds
/// each node's record carries what its marks ask for, and each node reads the other's epoch.
struct MailboxSim {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MailboxSim {
    fn start(a: Arc<WriteBackEpochs>, b: Arc<WriteBackEpochs>) -> MailboxSim {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for e in [&a, &b] {
                    e.own().written(e.own().stamp());
                    e.took_over().written(e.took_over().stamp());
                }
                b.saw_partner(a.own().recorded());
                a.saw_partner(b.own().recorded());
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        MailboxSim {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MailboxSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The recovery context of node A in giveback incarnation `incarnation`, its partner's record
/// naming `taken` as the epoch of A's table it took over.
fn own_context(epochs: &Arc<WriteBackEpochs>, incarnation: u64, taken: u64) -> OwnLogContext {
    OwnLogContext {
        partner_replayed: None,
        partner_took_over: false,
        own_log: Arc::new(OwnLogMark::new(0)),
        copy_mark: Arc::new(PartnerCopyMark::new(CopyStamp::default())),
        serving_lease: Arc::new(ServingLease::new()),
        incarnation,
        partner_took_over_writeback: taken,
        writeback: epochs.clone(),
    }
}

/// A table the partner took over is never destaged or mirrored again (the partner may have
/// written newer data over its blocks on disk): the partner's image takes no late write of
/// it, the node's recovery discards its blocks and every write whose status it had not
/// returned, and moves to a new epoch the partner mirrors again.
#[test]
fn a_table_taken_over_is_discarded_and_its_late_writes_never_mirrored() {
    let (_, _, ma, mb) = managers();
    let mut cfg = config();
    cfg.redo_after = Duration::from_millis(100);
    let a = in_memory(&ma, cfg.clone());
    let b = in_memory(&mb, cfg);
    let (ea, eb) = (
        Arc::new(WriteBackEpochs::new(0, 0)),
        Arc::new(WriteBackEpochs::new(0, 0)),
    );
    a.set_writeback_epochs(ea.clone());
    b.set_writeback_epochs(eb.clone());
    let _mailbox = MailboxSim::start(ea.clone(), eb.clone());
    connected(&a);
    connected(&b);
    let err = a.write_start(1, 0, &data(1, 0, 1)).unwrap_err();
    assert!(matches!(err, WriteBackError::NotRecovered { .. }), "{err}");
    // Nor is anything destaged before the recovery.
    let err = a.dirty_blocks().unwrap_err();
    assert!(
        matches!(err, WriteBackError::DestageWithheld { .. }),
        "{err}"
    );
    let first = a.recover(&own_context(&ea, 1, 0)).unwrap();
    assert_eq!((first.epoch, first.discarded_blocks), (1, 0));
    b.recover(&own_context(&eb, 1, 0)).unwrap();
    for i in 0..4u64 {
        assert_eq!(
            a.write(1, i * 2, &data(10 + i, i * 2, 2)).unwrap(),
            CompletionStatus::Mirrored
        );
    }
    // Completed, its status not collected yet when the partner takes the table over.
    let uncollected = a.write_start(1, 20, &data(20, 20, 1)).unwrap();
    wait_stats(&a, "the write mirrored", |s| s.mirrored == 5);
    assert!(a.is_complete(&uncollected));
    // B takes A over (A stalled): every block once, the epoch recorded before it returns.
    let takeover = PartnerLogContext {
        partner_log_applied_here: false,
        partner: 1,
        partner_log_generation: 0,
        forced_loss: None,
        partner_writeback_epoch: ea.own().recorded(),
    };
    let mut taken = std::collections::BTreeMap::new();
    let report = b
        .take_over_partner_for(&takeover, |at, d| {
            assert!(taken.insert(at.block, d.to_vec()).is_none());
            Ok(())
        })
        .unwrap();
    assert_eq!(report.blocks, 9);
    assert_eq!(eb.took_over().recorded(), 1);
    assert!(eb.partner_table_taken());
    // A resumes and writes on: B's image takes none of it.
    let late = a.write_start(1, 30, &data(30, 30, 2)).unwrap();
    wait_stats(&b, "the late write refused", |s| s.refused_taken_over >= 1);
    assert_eq!(b.stats().mirror_blocks, 0, "{:#?}", b.stats());
    assert!(!a.is_complete(&late));
    // A's protocol restarts (a halt); its recovery learns the takeover from B's record.
    let second = a
        .recover(&own_context(&ea, 2, eb.took_over().recorded()))
        .unwrap();
    assert_eq!(second.epoch, 2);
    assert_eq!(second.discarded_blocks, 11, "{second:?}");
    assert_eq!(second.discarded_writes, 2, "{second:?}");
    for t in [&uncollected, &late] {
        let err = a.wait(t).unwrap_err();
        assert!(
            matches!(err, WriteBackError::WriteDiscarded { epoch: 1, .. }),
            "{err}"
        );
    }
    assert!(a.dirty_blocks().unwrap().is_empty());
    assert_eq!(a.stats().epoch, 2);
    // B reads A's new epoch and mirrors again: exactly the new write.
    wait_stats(&a, "in sync", |s| s.in_sync);
    assert_eq!(
        a.write(1, 40, &data(40, 40, 1)).unwrap(),
        CompletionStatus::Mirrored
    );
    assert!(!eb.partner_table_taken());
    assert_mirrored(&a, &b, 1, 40, &data(40, 40, 1));
    assert_eq!(b.stats().mirror_blocks, 1, "{:#?}", b.stats());
    assert_eq!(a.stats().dirty_blocks, 1);
    // Recovering again in the same incarnation changes nothing.
    let again = a.recover(&own_context(&ea, 2, 1)).unwrap();
    assert_eq!((again.epoch, again.discarded_blocks), (2, 0));
}

/// Writes as futures on a hand-written executor (no runtime): several in flight at once
/// (two on the same blocks: the second waits for the first) resolve `Mirrored` with the
/// data in both tables; a future dropped while its write is in progress is harmless (its
/// status is not kept, later writes work); with the partner gone a pending write resolves
/// `MirrorLost`; and a wait for a connection that cannot come ends at its deadline.
#[test]
fn write_futures_resolve_on_any_executor() {
    let (_, _, ma, mb) = managers();
    let mut cfg = config();
    cfg.partner_timeout = Duration::from_millis(500);
    let a = in_memory(&ma, cfg.clone());
    let b = in_memory(&mb, cfg);
    connected(&a);
    connected(&b);
    let writes: Vec<(u64, Vec<u8>)> = (0..8u64)
        .map(|i| (i * 4, data(i, i * 4, 4)))
        .chain([(0, data(100, 0, 4))]) // the same blocks as the first
        .collect();
    let futures: Vec<_> = writes
        .iter()
        .map(|(first, d)| a.write_future(1, *first, d))
        .collect();
    for r in executor::block_on_all(futures, WAIT) {
        assert_eq!(r.expect("written"), CompletionStatus::Mirrored);
    }
    for (first, d) in &writes[1..] {
        assert_mirrored(&a, &b, 1, *first, d);
    }

    // Dropped while in progress: nothing waits for it, nothing is kept.
    let (_, waker) = executor::thread_waker();
    let mut dropped = a.write_future(1, 200, &data(1, 200, 2));
    let _ = executor::poll_once(&mut dropped, &waker);
    drop(dropped);
    let d = data(2, 300, 2);
    let r = executor::block_on(a.write_future(1, 300, &d), WAIT);
    assert_eq!(r.unwrap(), CompletionStatus::Mirrored);
    wait_stats(&a, "nothing pending", |s| s.pending == 0);
    assert_mirrored(&a, &b, 1, 300, &d);

    // The partner goes: a write completes with the mirror lost.
    drop(b);
    mb.shutdown();
    let r = executor::block_on(a.write_future(1, 400, &data(3, 400, 1)), WAIT);
    assert_eq!(r.unwrap(), CompletionStatus::MirrorLost);
    // And deadlines hold: an explicit one for a wait for a connection that cannot come.
    match a.wait_connected_timeout(Duration::from_millis(100)) {
        Err(WriteBackError::NotConnected { .. }) => {}
        other => panic!("expected NotConnected, got {other:?}"),
    }
}

/// Without a partner a write's status does not come: a pending write future ends with
/// `WriteStopped` when the write-back is dropped (the driver stops and wakes it), and does
/// not keep the write-back's clients open; `write_timeout` ends at its deadline.
#[test]
fn a_pending_write_future_ends_when_the_write_back_stops() {
    init_logs();
    let dir = temp_dir("wb-alone");
    let (acfg, _) = pair(&dir, 1, lone_loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(acfg).expect("start A"));
    let mut cfg = config();
    cfg.partner_timeout = Duration::from_secs(600); // never declared failed here
    let a = in_memory(&ma, cfg);
    match a.write_timeout(1, 0, &data(1, 0, 1), Duration::from_millis(200)) {
        Err(WriteBackError::WriteTimeout { waited, .. }) => {
            assert!(waited >= Duration::from_millis(200))
        }
        other => panic!("expected WriteTimeout, got {other:?}"),
    }
    let (_, waker) = executor::thread_waker();
    let mut pending = a.write_future(1, 10, &data(2, 10, 1));
    assert!(executor::poll_once(&mut pending, &waker).is_pending());
    drop(a);
    match executor::block_on(pending, WAIT) {
        Err(WriteBackError::WriteStopped { name }) => assert_eq!(name, "writeback"),
        other => panic!("expected WriteStopped, got {other:?}"),
    }
    let (gone, status) = ma
        .wait_status(WAIT, |s| {
            s.clients
                .iter()
                .all(|c| c.name != "writeback" && c.name != "wb-data")
        })
        .expect("status");
    assert!(gone, "the clients are closed: {status:#?}");
}

/// Loopback addresses no pair of another test uses: a node started alone must not find a
/// partner of some other test (in this or another test process) on its port.
fn lone_loopback(l: u8) -> (std::net::IpAddr, std::net::IpAddr) {
    (
        format!("127.78.{l}.1").parse().expect("ip"),
        format!("127.78.{l}.2").parse().expect("ip"),
    )
}
