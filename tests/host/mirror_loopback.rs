//! The shadow log driver on two in-process managers over loopback (soft provider): appends
//! complete only once mirrored, and the partner's `shadow-mirror` image replays exactly the
//! acknowledged records in order (also after the writer is gone); checkpoints reclaim space
//! over many laps of a small log; concurrent appenders; the partner restarting mid-stream
//! (the live log is re-sent to its fresh region) and staying away (appends complete
//! unmirrored, then are mirrored when it returns); a second replay returns nothing.
//! (Link cuts and kill -9 between node processes: tests/pair/mirror_netns.rs.)

use crate::executor;
use crate::manager_pair;

use interlink::clients::giveback::{CopyGap, CopyStamp, PartnerLogContext};
use interlink::clients::mirror::shadow::{
    check_payload, file_backings, writer_payload, CursorStore, RecoveryOutcome, ShadowWriter,
    WriterConfig,
};
use interlink::clients::mirror::{
    LogError, LogPosition, MemoryNvram, Replay, ReplayedRecord, ShadowConfig, ShadowError,
    ShadowMirror, ShadowStats,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{Manager, NodeConfig};
use manager_pair::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn managers() -> (NodeConfig, NodeConfig, Arc<Manager>, Arc<Manager>) {
    init_logs();
    let dir = temp_dir("shadow");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a.clone()).expect("start A"));
    let mb = Arc::new(Manager::start(b.clone()).expect("start B"));
    (a, b, ma, mb)
}

fn shadow(m: &Arc<Manager>, log_len: usize, cfg: ShadowConfig) -> Arc<ShadowMirror> {
    let s = ShadowMirror::start(
        m,
        cfg,
        Box::new(MemoryNvram::new(log_len)),
        Box::new(MemoryNvram::new(CursorStore::LEN)),
    )
    .expect("start shadow mirror");
    let r = s.recover(None, |_| Ok(())).expect("recover a fresh log");
    assert_eq!(r.outcome, RecoveryOutcome::Fresh);
    Arc::new(s)
}

fn connected(s: &ShadowMirror) {
    assert!(
        s.wait_connected_timeout(WAIT).is_ok(),
        "not connected: {:#?}",
        s.stats()
    );
}

fn seqs(r: &Replay) -> Vec<u64> {
    r.records.iter().map(|r| r.seq).collect()
}

fn wait_stats(s: &ShadowMirror, what: &str, mut pred: impl FnMut(&ShadowStats) -> bool) {
    let t0 = Instant::now();
    loop {
        let st = s.stats();
        if pred(&st) {
            return;
        }
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}: {st:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn appends_complete_and_the_partner_replays_exactly_the_acknowledged_records() {
    let (_, _, ma, mb) = managers();
    let a = shadow(&ma, 256 * 1024, ShadowConfig::new());
    let b = shadow(&mb, 256 * 1024, ShadowConfig::new());
    connected(&a);
    connected(&b);
    let mut acked = Vec::new();
    for seq in 1..=300u64 {
        let r = a
            .append(&writer_payload(seq, 16 + (seq as usize * 7) % 400))
            .unwrap();
        assert!(r.mirrored);
        assert_eq!(r.position.seq, seq);
        assert_eq!(r.position.generation, a.generation());
        acked.push(seq);
    }
    // Several in flight at once, and the other direction.
    let payloads: Vec<Vec<u8>> = (301..=340).map(|s| writer_payload(s, 100)).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let many = a.append_many(&refs).unwrap();
    assert_eq!(
        many.iter().map(|r| r.position.seq).collect::<Vec<_>>(),
        (301..=340).collect::<Vec<_>>()
    );
    acked.extend(301..=340);
    for seq in 1..=5 {
        assert!(b.append(&writer_payload(seq, 32)).unwrap().mirrored);
    }
    // B's image of A's log, read while A runs: exactly the acknowledged records.
    let peek = b.read_partner().unwrap();
    assert_eq!(peek.generation, a.generation());
    assert_eq!(seqs(&peek), acked);
    for r in &peek.records {
        assert_eq!(check_payload(&r.payload), Some(r.seq));
    }
    assert_eq!(seqs(&a.read_partner().unwrap()), vec![1, 2, 3, 4, 5]);
    let st = a.stats();
    assert_eq!((st.appends, st.acknowledged, st.in_flight), (340, 340, 0));
    assert_eq!(st.unmirrored, 0);
    assert!(st.latency_p50_us > 0.0);
    eprintln!(
        "append latency p50 {} µs, p99 {} µs",
        st.latency_p50_us, st.latency_p99_us
    );

    // A goes away for good; B takes over and replays from its (revoked) region, once.
    drop(a);
    ma.shutdown();
    wait_stats(&b, "B suspended", |s| !s.connected);
    let replayed = b.replay_partner().unwrap();
    assert_eq!(replayed.iter().map(|r| r.seq).collect::<Vec<_>>(), acked);
    assert!(b.replay_partner().unwrap().is_empty(), "replayed twice");
    let st = b.stats();
    assert_eq!(st.replayed_records, acked.len() as u64);
    // The empty second replay counts as a replay (a takeover whose records were all covered
    // by the checkpoint is a replay too: a caller waiting for one must see it).
    assert_eq!(st.replays, 2);
}

#[test]
fn checkpoints_reclaim_space_over_many_laps_of_a_small_log() {
    let (_, _, ma, mb) = managers();
    let len = 4096;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow(&mb, len, ShadowConfig::new());
    connected(&a);
    connected(&b);
    let mut last = None;
    let total = 2000u64;
    for seq in 1..=total {
        let r = a.append(&writer_payload(seq, 100)).unwrap();
        last = Some(r.position);
        if seq % 8 == 0 {
            a.checkpoint(r.position).unwrap();
        }
    }
    let st = a.stats();
    // 2000 records of 136 bytes: about 70 laps of the 3.9 KiB data area.
    assert!(st.mirror_bytes > 60 * len as u64, "{st:#?}");
    // The last checkpoint's write may still be in flight: B's image can hold it before A
    // has reaped its completion. Compare once A has.
    let t0 = Instant::now();
    while a.checkpointed().seq < total {
        assert!(t0.elapsed() < WAIT, "last checkpoint never mirrored");
        std::thread::sleep(Duration::from_millis(1));
    }
    let cp = a.checkpointed().seq;
    let r = b.read_partner().unwrap();
    assert_eq!(
        r.checkpoint, cp,
        "the mirror's checkpoint is the last mirrored"
    );
    assert_eq!(seqs(&r), (cp + 1..=total).collect::<Vec<_>>());
    assert!(cp >= total - 16, "checkpoint {cp}");
    // Appending without checkpoints fills the log: LogFull, not a hang.
    let mut n = 0;
    let err = loop {
        match a.append(&writer_payload(0, 100)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "the log never filled");
    };
    assert!(
        matches!(err, ShadowError::Log(LogError::Full { .. })),
        "{err}"
    );
    a.checkpoint(LogPosition {
        generation: a.generation(),
        seq: last.unwrap().seq + n,
    })
    .unwrap();
    let t0 = Instant::now();
    while a.append(&writer_payload(1, 100)).is_err() {
        assert!(t0.elapsed() < WAIT, "space never reclaimed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrent_appenders_are_acknowledged_in_order_and_replayed_once() {
    let (_, _, ma, mb) = managers();
    let a = shadow(&ma, 1 << 20, ShadowConfig::new());
    let b = shadow(&mb, 1 << 20, ShadowConfig::new());
    connected(&a);
    connected(&b);
    let threads = 4u64;
    let each = 400u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..each {
                    let mut p = writer_payload(t * 1_000_000 + i, 64);
                    p[63] = t as u8;
                    let r = a.append(&p).unwrap();
                    assert!(r.mirrored);
                    got.push(r.position.seq);
                }
                got
            })
        })
        .collect();
    let mut per_thread = Vec::new();
    for h in handles {
        let got = h.join().unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "a thread's appends in order"
        );
        per_thread.push(got);
    }
    let mut all: Vec<u64> = per_thread.concat();
    all.sort_unstable();
    assert_eq!(all, (1..=threads * each).collect::<Vec<_>>());
    let r = b.replay_partner().unwrap();
    assert_eq!(r.len() as u64, threads * each);
    for rec in &r {
        let t = u64::from(rec.payload[63]);
        assert!(per_thread[t as usize].binary_search(&rec.seq).is_ok());
    }
    // Each thread's records are replayed in its own order.
    for t in 0..threads {
        let mine: Vec<u64> = r
            .iter()
            .filter(|rec| u64::from(rec.payload[63]) == t)
            .map(|rec| u64::from_le_bytes(rec.payload[..8].try_into().unwrap()))
            .collect();
        assert_eq!(
            mine,
            (0..each).map(|i| t * 1_000_000 + i).collect::<Vec<_>>()
        );
    }
    assert!(b.replay_partner().unwrap().is_empty());
    let st = a.stats();
    assert_eq!(st.acknowledged, threads * each);
    eprintln!(
        "{} concurrent appends: p50 {} µs p99 {} µs, {} mirror writes",
        st.acknowledged, st.latency_p50_us, st.latency_p99_us, st.mirror_writes
    );
}

/// Reads the writer's acked log: acknowledged seqs, and the last `checkpoint` and
/// `checkpoint-asked` values.
fn acked_log(path: &std::path::Path) -> (Vec<u64>, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut acked, mut cp, mut asked) = (Vec::new(), 0, 0);
    for l in text.lines() {
        let mut it = l.split_whitespace();
        match (it.next(), it.next()) {
            (Some("checkpoint"), Some(n)) => cp = n.parse().unwrap(),
            (Some("checkpoint-asked"), Some(n)) => asked = n.parse().unwrap(),
            (Some("unmirrored"), Some(n)) => acked.push(n.parse().unwrap()),
            (Some("generation"), _) => {}
            (Some(n), None) => acked.push(n.parse().unwrap()),
            other => panic!("bad acked log line {other:?}"),
        }
    }
    (acked, cp, asked)
}

/// The survivor's replay holds exactly the acknowledged records after the checkpoint it
/// starts from, which is between the last one logged and the last one asked for.
fn assert_replay_matches(r: &Replay, acked: &[u64], cp: u64, asked: u64) {
    assert!(
        acked.windows(2).all(|w| w[1] == w[0] + 1) && acked.first() == Some(&1),
        "the writer's acknowledgements are 1.. without gaps"
    );
    assert!(
        cp <= r.checkpoint && r.checkpoint <= asked.max(cp),
        "replay from {} (logged {cp}, asked {asked})",
        r.checkpoint
    );
    let last = *acked.last().unwrap();
    assert_eq!(seqs(r), (r.checkpoint + 1..=last).collect::<Vec<_>>());
    for rec in &r.records {
        assert_eq!(check_payload(&rec.payload), Some(rec.seq));
    }
}

#[test]
fn partner_restart_mid_stream_loses_nothing_acknowledged() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("shadow-restart");
    let len = 64 * 1024;
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_secs(60);
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    connected(&b);
    let path = dir.join("acked-1.log");
    let mut wcfg = WriterConfig::new(u64::MAX, 200);
    wcfg.window = 8;
    wcfg.checkpoint_every = 32;
    wcfg.acked_log = Some(path.clone());
    let mut writer = ShadowWriter::start(a.clone(), wcfg).unwrap();
    let t0 = Instant::now();
    while writer.stats().acknowledged < 2000 {
        assert!(t0.elapsed() < WAIT, "{:#?}", writer.stats());
        std::thread::sleep(Duration::from_millis(2));
    }

    // B restarts (a new process: a fresh, empty mirror region) while A keeps writing.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let at_stop = writer.stats().acknowledged;
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let b = shadow(&mb, len, cfg.clone());
    connected(&b);
    let t0 = Instant::now();
    while writer.stats().acknowledged < at_stop + 2000 {
        assert!(t0.elapsed() < WAIT, "{:#?}", writer.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    let ws = writer.stop();
    assert_eq!((ws.errors, ws.unmirrored), (0, 0), "{ws:#?}");
    let st = a.stats();
    assert!(st.resyncs >= 1 && st.connections >= 2, "{st:#?}");
    let (acked, cp, asked) = acked_log(&path);
    assert_eq!(acked.len() as u64, ws.acknowledged);
    assert_replay_matches(&b.read_partner().unwrap(), &acked, cp, asked);
    eprintln!(
        "B restarted with {at_stop} acknowledged; {} in all, {} writes re-sent",
        ws.acknowledged, st.resent_writes
    );
}

#[test]
fn partner_absent_appends_complete_unmirrored_then_are_mirrored_when_it_returns() {
    let (_, bcfg, ma, mb) = managers();
    let len = 64 * 1024;
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(300);
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    connected(&b);
    for seq in 1..=10 {
        assert!(a.append(&writer_payload(seq, 50)).unwrap().mirrored);
    }
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    // Blocks until the partner is declared absent, then completes unmirrored.
    let r = a.append(&writer_payload(11, 50)).unwrap();
    assert!(!r.mirrored);
    for seq in 12..=20 {
        assert!(!a.append(&writer_payload(seq, 50)).unwrap().mirrored);
    }
    let st = a.stats();
    assert!(st.partner_absent && st.unmirrored == 10, "{st:#?}");
    // B returns: the live log (records 1..=20) is re-sent; appends are mirrored again.
    let mb = Arc::new(Manager::start(bcfg).expect("restart B"));
    let b = shadow(&mb, len, cfg);
    connected(&a);
    let r = a.append(&writer_payload(21, 50)).unwrap();
    assert!(r.mirrored);
    assert_eq!(
        seqs(&b.read_partner().unwrap()),
        (1..=21).collect::<Vec<_>>()
    );
    assert!(!a.stats().partner_absent);
}

/// A shadow mirror on NVRAM files in `dir` (they outlive the mirror: a restart re-opens them),
/// not recovered yet.
fn shadow_on_files(
    m: &Arc<Manager>,
    dir: &std::path::Path,
    len: usize,
    cfg: ShadowConfig,
) -> ShadowMirror {
    let node = m.config().node_id;
    let (log, cursor) = file_backings(dir, node, len).expect("NVRAM files");
    ShadowMirror::start(m, cfg, log, cursor).expect("start shadow mirror")
}

/// Records handed to a recovery sink.
fn collect(into: &mut Vec<u64>) -> impl FnMut(ReplayedRecord) -> Result<(), String> + '_ {
    move |r| {
        assert_eq!(
            check_payload(&r.payload),
            Some(r.seq),
            "payload of {}",
            r.seq
        );
        into.push(r.seq);
        Ok(())
    }
}

#[test]
fn a_restart_before_any_takeover_applies_its_own_log_exactly_once() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("shadow-own-recovery");
    let len = 64 * 1024;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
    b.recover(None, |_| panic!("a fresh log has nothing to apply"))
        .expect("recover");
    connected(&a);
    connected(&b);
    let old = b.generation();
    let mut last = None;
    for seq in 1..=40 {
        let r = b.append(&writer_payload(seq, 100)).unwrap();
        assert!(r.mirrored);
        last = Some(r.position);
        if seq == 15 {
            b.checkpoint(r.position).unwrap();
        }
    }
    assert_eq!(last.unwrap().seq, 40);
    wait_stats(&b, "checkpoint 15 mirrored", |s| {
        s.checkpoint_mirrored >= 15
    });

    // B stops (kill -9: its NVRAM file is all that is left) and restarts at once, before
    // anyone took it over: its records after the checkpoint are applied by B itself.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
    let err = b
        .append_timeout(&writer_payload(1, 100), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, ShadowError::NotRecovered { .. }), "{err}");
    // The sink refuses record 30: everything before it is applied and stays applied.
    let mut applied = Vec::new();
    let err = b
        .recover(None, |r| {
            if r.seq == 30 {
                return Err("disk full".into());
            }
            applied.push(r.seq);
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(err, ShadowError::RecoverSink { seq: 30, .. }),
        "{err}"
    );
    assert_eq!(applied, (16..30).collect::<Vec<_>>());
    // B dies again in the middle of its recovery and restarts: it resumes after record 29
    // (its checkpoint moved with the records it applied).
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B again"));
    let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
    let mut again = Vec::new();
    let r = b.recover(None, collect(&mut again)).expect("recover");
    assert_eq!(again, (30..=40).collect::<Vec<_>>());
    assert_eq!(r.outcome, RecoveryOutcome::ReplayedHere);
    assert_eq!(
        (
            r.previous_generation,
            r.previous_checkpoint,
            r.resumed_after,
            r.replayed
        ),
        (Some(old), 29, Some(29), 11)
    );
    assert!(r.generation > old);
    assert!(matches!(
        b.recover(None, |_| Ok(())),
        Err(ShadowError::AlreadyRecovered { .. })
    ));
    // The new generation is mirrored: A, taking B over now, would replay only it.
    connected(&b);
    assert!(b.append(&writer_payload(1, 100)).unwrap().mirrored);
    let rp = a.read_partner().unwrap();
    assert_eq!((rp.generation, seqs(&rp)), (r.generation, vec![1]));
    assert_eq!(b.stats().recovery, Some(r));
}

#[test]
fn a_restart_after_the_partner_replayed_applies_nothing_again() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("shadow-taken-over");
    let len = 64 * 1024;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
    b.recover(None, |_| Ok(())).expect("recover");
    connected(&a);
    connected(&b);
    let old = b.generation();
    for seq in 1..=12 {
        assert!(b.append(&writer_payload(seq, 64)).unwrap().mirrored);
    }
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    // A takes B over and replays its log; its cursor is what its mailbox record publishes.
    let replayed = a.replay_partner().unwrap();
    assert_eq!(replayed.len(), 12);
    let cursor = a.partner_replayed().expect("cursor stored");
    assert_eq!(
        (
            cursor.position.generation,
            cursor.position.seq,
            cursor.complete
        ),
        (old, 12, true)
    );
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
    let r = b
        .recover(Some(cursor), |rec| {
            panic!("record {} applied twice", rec.seq)
        })
        .expect("recover");
    assert_eq!(r.outcome, RecoveryOutcome::ReplayedByPartner);
    assert_eq!(
        (r.previous_generation, r.partner_replayed_through, r.dropped),
        (Some(old), Some(12), 0)
    );
    assert!(r.generation > old);
}

#[test]
fn an_empty_takeover_replay_still_tells_the_partner_it_was_taken_over() {
    let (_, _, ma, mb) = managers();
    let len = 64 * 1024;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow(&mb, len, ShadowConfig::new());
    connected(&a);
    connected(&b);
    let mut last = None;
    for seq in 1..=5 {
        last = Some(b.append(&writer_payload(seq, 64)).unwrap().position);
    }
    b.checkpoint(last.unwrap()).unwrap();
    wait_stats(&b, "checkpoint mirrored", |s| s.checkpoint_mirrored >= 5);
    assert!(a.replay_partner().unwrap().is_empty());
    let c = a.partner_replayed().expect("cursor at the checkpoint");
    assert_eq!(
        (c.position.generation, c.position.seq, c.complete),
        (b.generation(), 5, true)
    );
}

#[test]
fn a_takeover_replay_hook_marks_its_end_and_skips_a_copy_the_partner_recovered_itself() {
    let (_, _, ma, mb) = managers();
    let len = 64 * 1024;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow(&mb, len, ShadowConfig::new());
    connected(&a);
    connected(&b);
    for seq in 1..=4 {
        assert!(b.append(&writer_payload(seq, 64)).unwrap().mirrored);
    }
    let g = b.generation();
    let partner = mb.config().node_id;
    let context = |recorded| PartnerLogContext {
        partner_log_applied_here: false,
        partner,
        partner_log_generation: recorded,
        forced_loss: None,
        partner_writeback_epoch: 0,
    };
    let cursor = || {
        let c = a.partner_replayed().expect("cursor");
        (c.position.generation, c.position.seq, c.complete)
    };
    // The sink refuses record 3: the cursor covers 1 and 2 and says the replay stopped.
    let applied = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (sink, no) = (applied.clone(), refuse.clone());
    let mut hook = a.replay_hook(move |rec| {
        if rec.seq == 3 && no.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("refused".into());
        }
        sink.lock().push(rec.seq);
        Ok(())
    });
    assert!(hook(&context(g)).is_err());
    assert_eq!(cursor(), (g, 2, false));
    // Again: the rest, and the cursor says the replay went through the whole copy.
    refuse.store(false, std::sync::atomic::Ordering::Relaxed);
    hook(&context(g)).expect("replay");
    assert_eq!(*applied.lock(), vec![1, 2, 3, 4]);
    assert_eq!(cursor(), (g, 4, true));
    // B's mailbox record names a newer generation than the copy: B recovered this one
    // itself (only a forced takeover reaches here), so nothing of it is applied again, and
    // the cursor says that newer generation was taken over with nothing of it replayed.
    for seq in 5..=6 {
        assert!(b.append(&writer_payload(seq, 64)).unwrap().mirrored);
    }
    hook(&context(g + 1)).expect("stale copy skipped");
    assert_eq!(*applied.lock(), vec![1, 2, 3, 4]);
    assert_eq!(cursor(), (g + 1, 0, true));
}

/// The partner's record says its own recovery applied records of its recorded generation
/// itself with this copy not following (only a forced takeover gets here): the copy's
/// checkpoint lags what it applied, so nothing of that generation is replayed; the cursor
/// stands at the copy's checkpoint, complete, and the records after it are counted.
#[test]
fn a_takeover_replay_hook_skips_a_generation_the_partner_applied_itself() {
    let (_, _, ma, mb) = managers();
    let len = 64 * 1024;
    let a = shadow(&ma, len, ShadowConfig::new());
    let b = shadow(&mb, len, ShadowConfig::new());
    connected(&a);
    connected(&b);
    let mut at = None;
    for seq in 1..=5 {
        let r = b.append(&writer_payload(seq, 64)).unwrap();
        assert!(r.mirrored);
        if seq == 2 {
            at = Some(r.position);
        }
    }
    b.checkpoint(at.unwrap()).unwrap();
    wait_stats(&b, "checkpoint mirrored", |s| s.checkpoint_mirrored >= 2);
    let g = b.generation();
    let applied = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = applied.clone();
    let mut hook = a.replay_hook(move |rec| {
        sink.lock().push(rec.seq);
        Ok(())
    });
    hook(&PartnerLogContext {
        partner: mb.config().node_id,
        partner_log_generation: g,
        forced_loss: Some(CopyGap::Unconfirmed { complete_for: 0 }),
        partner_writeback_epoch: 0,
        partner_log_applied_here: true,
    })
    .expect("replay hook");
    assert!(
        applied.lock().is_empty(),
        "applied again: {:?}",
        applied.lock()
    );
    let c = a.partner_replayed().expect("cursor");
    assert_eq!(
        (c.position.generation, c.position.seq, c.complete),
        (g, 2, true)
    );
    assert_eq!(a.stats().not_replayed_applied_here, 3);
}

#[test]
fn an_unreadable_log_is_never_formatted_over() {
    let (_, _, _, mb) = managers();
    let dir = temp_dir("shadow-unreadable");
    let len = 64 * 1024;
    let node = mb.config().node_id;
    {
        let b = shadow_on_files(&mb, &dir, len, ShadowConfig::new());
        b.recover(None, |_| Ok(())).expect("recover");
    }
    // Corrupt the superblock (past its magic): the log exists but cannot be read.
    let path = interlink::clients::mirror::shadow::log_path(&dir, node);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // No partner runs: its copy cannot be fetched either (with one, see
    // tests/host/mirror_nvram_loss.rs).
    let mut cfg = ShadowConfig::new();
    cfg.fetch_timeout = Duration::from_millis(200);
    let b = shadow_on_files(&mb, &dir, len, cfg);
    let err = b.recover(None, |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ShadowError::FetchNoPartner { ref local, .. } if local.contains("cannot be read")),
        "{err}"
    );
    drop(b);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the log was touched");
}

#[test]
fn a_partner_declared_failed_stops_appends_waiting_at_once() {
    let (_, _, ma, mb) = managers();
    let len = 64 * 1024;
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_secs(600);
    cfg.link_timeout = Duration::from_secs(600);
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    connected(&b);
    assert!(a.append(&writer_payload(1, 50)).unwrap().mirrored);
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    // A deadline bounds an append while nobody has declared the partner failed yet.
    let t0 = Instant::now();
    let err = a
        .append_timeout(&writer_payload(2, 50), Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ShadowError::AppendNoLink { .. } | ShadowError::AppendTimeout { .. }
        ),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "deadline ignored");
    // The failure detector declares it failed: appends complete at once, unmirrored.
    a.declare_partner_failed("test: the partner failed");
    let r = a
        .append_timeout(&writer_payload(3, 50), Duration::from_secs(60))
        .unwrap();
    assert!(!r.mirrored);
    assert!(a.stats().partner_absent);
}

#[test]
fn nothing_is_acknowledged_unmirrored_before_the_partner_copy_is_marked_outdated() {
    use interlink::clients::giveback::PartnerCopyMark;
    let (_, bcfg, ma, mb) = managers();
    let len = 64 * 1024;
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(300);
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    let mark = Arc::new(PartnerCopyMark::new(CopyStamp::default()));
    a.set_partner_copy_mark(mark.clone());
    connected(&a);
    connected(&b);
    // Nothing is appended before the mailbox says this node runs a shadow log.
    let err = a
        .append_timeout(&writer_payload(1, 50), Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, ShadowError::NotInMailbox { .. }), "{err}");
    mark.written(mark.stamp()); // the mailbox holds "shadow log, in sync"
    for seq in 1..=5 {
        assert!(a.append(&writer_payload(seq, 50)).unwrap().mirrored);
    }
    assert!(!mark.is_marked());
    // The full send completed on B's incarnation: the copy is confirmed complete for it.
    wait_confirmed(&mark, mb.incarnation());
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    // The partner is absent: the next append asks for the mark, and waits while no mailbox
    // write carried it.
    let t = a.append_start(&writer_payload(6, 50)).unwrap();
    let err = a.wait_timeout(&t, Duration::from_secs(2)).unwrap_err();
    assert!(matches!(err, ShadowError::AppendTimeout { .. }), "{err}");
    assert!(mark.is_marked() && !mark.is_durable());
    assert_eq!(
        mark.get().map(|m| (m.generation, m.seq)),
        Some((a.generation(), 6))
    );
    // The mailbox write carried it: acknowledged, unmirrored.
    mark.written(mark.stamp());
    let r = a.wait_timeout(&t, Duration::from_secs(30)).unwrap();
    assert!(!r.mirrored);
    assert!(!a.append(&writer_payload(7, 50)).unwrap().mirrored);
    // The partner returns: the live log is re-sent, and the mark goes once it is complete.
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    let t0 = Instant::now();
    while mark.is_marked() {
        assert!(t0.elapsed() < WAIT, "mark never cleared: {:#?}", a.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    // ... and the confirmation names the restarted B, whose region holds the re-sent log.
    assert!(mark.is_confirmed_for(mb.incarnation()));
    let rp = b.read_partner().unwrap();
    assert_eq!(seqs(&rp), (1..=7).collect::<Vec<_>>());
}

#[test]
fn nothing_is_acknowledged_while_the_serving_lease_does_not_run() {
    use interlink::clients::giveback::ServingLease;
    let (_, _, ma, mb) = managers();
    let len = 64 * 1024;
    let cfg = ShadowConfig::new();
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    let lease = Arc::new(ServingLease::new());
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    a.set_serving_lease(lease.clone());
    connected(&a);
    connected(&b);
    assert!(a.append(&writer_payload(1, 50)).unwrap().mirrored);
    // The lease ran out (a stall: the partner may be taking this node over): the record is
    // mirrored, and not acknowledged.
    lease.set(Some(Instant::now()), true);
    let t = a.append_start(&writer_payload(2, 50)).unwrap();
    let err = a.wait_timeout(&t, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, ShadowError::AppendTimeout { .. }), "{err}");
    let st = a.stats();
    assert!(st.lease_held && st.lease_holds == 1, "{st:#?}");
    assert_eq!(st.acknowledged_seq, 1);
    wait_stats(&b, "record 2 in B's region", |_| {
        b.read_partner().is_ok_and(|r| seqs(&r) == [1, 2])
    });
    // Renewed: acknowledged.
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    assert!(a.wait_timeout(&t, WAIT).unwrap().mirrored);
    assert!(!a.stats().lease_held);
}

/// Waits until `mark` names `partner` as holding a complete copy.
fn wait_confirmed(mark: &interlink::clients::giveback::PartnerCopyMark, partner: u64) {
    let t0 = Instant::now();
    while !mark.is_confirmed_for(partner) {
        assert!(
            t0.elapsed() < WAIT,
            "copy never confirmed for {partner:#x}: {:?}",
            mark.stamp()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_restarted_partner_holds_a_confirmed_copy_only_after_the_re_send_completed_on_it() {
    use interlink::clients::giveback::PartnerCopyMark;
    let (_, bcfg, ma, mb) = managers();
    let len = 64 * 1024;
    let cfg = ShadowConfig::new();
    let a = shadow(&ma, len, cfg.clone());
    let b = shadow(&mb, len, cfg.clone());
    let mark = Arc::new(PartnerCopyMark::new(CopyStamp::default()));
    a.set_partner_copy_mark(mark.clone());
    mark.written(mark.stamp());
    connected(&a);
    connected(&b);
    for seq in 1..=20 {
        assert!(a.append(&writer_payload(seq, 300)).unwrap().mirrored);
    }
    let first = mb.incarnation();
    wait_confirmed(&mark, first);
    // B restarts (its region comes back empty, within the partner timeout: A never goes
    // unmirrored). Until A's re-send completed on the new incarnation, the confirmation
    // names the old one: a survivor B would refuse an automatic takeover.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    assert_ne!(mb.incarnation(), first);
    assert!(!mark.is_confirmed_for(mb.incarnation()));
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    wait_confirmed(&mark, mb.incarnation());
    assert!(!mark.is_marked(), "no record went unmirrored");
    let rp = b.read_partner().unwrap();
    assert_eq!(seqs(&rp), (1..=20).collect::<Vec<_>>());
}

#[test]
fn the_durability_point_is_a_read_behind_the_writes_unless_delivery_is_enough() {
    use interlink::clients::mirror::shadow::Durability;
    for durability in [Durability::Read, Durability::Delivered, Durability::Flush] {
        let (_, _, ma, mb) = managers();
        let mut cfg = ShadowConfig::new();
        cfg.durability = durability;
        let a = shadow(&ma, 64 * 1024, cfg.clone());
        let b = shadow(&mb, 64 * 1024, cfg.clone());
        connected(&a);
        connected(&b);
        let payloads: Vec<Vec<u8>> = (1..=40).map(|s| writer_payload(s, 100)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        for r in a.append_many(&refs).unwrap() {
            assert!(r.mirrored);
        }
        let st = a.stats();
        match durability {
            // At least one READ, and never more than one per batch of writes.
            Durability::Read => assert!(
                st.durability_reads >= 1 && st.durability_reads <= st.mirror_writes,
                "{st:#?}"
            ),
            Durability::Delivered => assert_eq!(st.durability_reads, 0, "{st:#?}"),
            // The soft provider has no RDMA FLUSH: READs instead, and it says so.
            Durability::Flush => {
                assert_eq!(st.durability_in_use, Some(Durability::Read), "{st:#?}");
                assert!(st.flush_unavailable.is_some(), "{st:#?}");
                assert_eq!(st.durability_flushes, 0, "{st:#?}");
                assert!(st.durability_reads >= 1, "{st:#?}");
            }
        }
        if durability != Durability::Flush {
            assert_eq!(st.durability_in_use, Some(durability), "{st:#?}");
            assert_eq!(st.flush_unavailable, None, "{st:#?}");
        }
        assert_eq!(
            seqs(&b.read_partner().unwrap()),
            (1..=40).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_log_started_while_the_partner_is_absent_is_sent_whole_when_it_comes() {
    let (_, bcfg, ma, mb) = managers();
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let len = 64 * 1024;
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(300);
    let a = shadow(&ma, len, cfg.clone());
    // Never connected: the partner is declared absent, the fresh log's superblock and
    // checkpoint complete unsent, and so do these records.
    for seq in 1..=5 {
        assert!(!a.append(&writer_payload(seq, 40)).unwrap().mirrored);
    }
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("start B"));
    let b = shadow(&mb, len, cfg.clone());
    connected(&a);
    assert!(a.append(&writer_payload(6, 40)).unwrap().mirrored);
    // B's copy is a whole log of A's generation (the first connection re-sent it).
    let rp = b.read_partner().expect("B's copy replays");
    assert_eq!(rp.generation, a.generation());
    assert_eq!(seqs(&rp), (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_log_size_mismatch_is_refused_at_connect_and_appends_fail_with_both_values() {
    let (_, _, ma, mb) = managers();
    let a = shadow(&ma, 256 * 1024, ShadowConfig::new());
    let b = shadow(&mb, 128 * 1024, ShadowConfig::new());
    let refusal = |s: &ShadowMirror| {
        let deadline = Instant::now() + WAIT;
        loop {
            match s.append_timeout(b"record", Duration::from_millis(200)) {
                Err(ShadowError::Refused { mismatch, .. }) => return mismatch,
                Err(ShadowError::AppendNoLink { .. }) => {
                    assert!(Instant::now() < deadline, "no refusal within {WAIT:?}")
                }
                other => panic!("an append across disagreeing logs: {other:?}"),
            }
        }
    };
    let on_a = refusal(&a);
    assert_eq!(
        (on_a.term.as_str(), on_a.ours, on_a.theirs),
        ("shadow log bytes", Some(256 * 1024), Some(128 * 1024))
    );
    let on_b = refusal(&b);
    assert_eq!(
        (on_b.ours, on_b.theirs),
        (Some(128 * 1024), Some(256 * 1024))
    );
    // Nothing was acknowledged unmirrored, and the partner is not taken for absent.
    for s in [&a, &b] {
        let st = s.stats();
        assert_eq!((st.appends, st.partner_absent), (0, false), "{st:#?}");
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("shadow log bytes")),
            "{st:#?}"
        );
    }
}

/// Appends as futures on a hand-written executor (no runtime): 32 in flight together resolve
/// in order, mirrored; a checkpoint waited for with `wait_checkpointed` is in the partner's
/// copy when the wait returns (its replay starts after it); a future dropped after its first
/// poll leaves its record in the log and the appends after it work; with the partner gone,
/// a pending append future completes unmirrored after the partner timeout.
#[test]
fn append_futures_resolve_on_any_executor_and_checkpoints_can_be_waited_for() {
    let (_, _, ma, mb) = managers();
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(500);
    let a = shadow(&ma, 256 * 1024, cfg.clone());
    let b = shadow(&mb, 256 * 1024, cfg);
    connected(&a);
    connected(&b);
    let payloads: Vec<Vec<u8>> = (1..=32u64).map(|s| writer_payload(s, 64)).collect();
    let futures: Vec<_> = payloads.iter().map(|p| a.append_future(p)).collect();
    let appended = executor::block_on_all(futures, WAIT);
    for (i, r) in appended.iter().enumerate() {
        let r = r.as_ref().expect("appended");
        assert_eq!(r.position.seq, i as u64 + 1);
        assert!(r.mirrored);
    }
    assert_eq!(
        seqs(&b.read_partner().unwrap()),
        (1..=32).collect::<Vec<_>>()
    );

    let through = appended[15].as_ref().unwrap().position;
    a.checkpoint(through).unwrap();
    a.wait_checkpointed(through).expect("checkpoint mirrored");
    assert!(a.checkpointed().seq >= 16);
    let copy = b.read_partner().unwrap();
    assert!(
        copy.checkpoint >= 16,
        "the partner's copy holds the checkpoint"
    );
    assert_eq!(seqs(&copy), (17..=32).collect::<Vec<_>>());
    let other = LogPosition {
        generation: a.generation() + 1,
        seq: 1,
    };
    assert!(matches!(
        a.wait_checkpointed_timeout(other, Duration::from_millis(10)),
        Err(ShadowError::Relinquished { .. })
    ));

    // Dropped after its first poll: the record was appended (the append is not undone).
    let (_, waker) = executor::thread_waker();
    let mut dropped = a.append_future(&writer_payload(33, 64));
    let _ = executor::poll_once(&mut dropped, &waker);
    drop(dropped);
    let r = executor::block_on(a.append_future(&writer_payload(34, 64)), WAIT).unwrap();
    assert_eq!(r.position.seq, 34);
    wait_stats(&a, "nothing in flight", |s| s.in_flight == 0);
    assert_eq!(
        seqs(&b.read_partner().unwrap()),
        (17..=34).collect::<Vec<_>>()
    );

    // The partner goes: a pending future completes unmirrored once it is declared absent.
    drop(b);
    mb.shutdown();
    let r = executor::block_on(a.append_future(&writer_payload(35, 64)), WAIT).unwrap();
    assert_eq!(r.position.seq, 35);
    assert!(!r.mirrored);
}

/// Deadlines without a partner: an append with a short timeout ends with `AppendNoLink`
/// (nothing appended), the plain `append` at the configured link timeout, and a wait for a
/// connection with `NotConnected`: no call hangs. A pending append future ends with
/// `AppendStopped` when the mirror is dropped, and does not keep its client open.
#[test]
fn appends_without_a_partner_end_at_their_deadline() {
    init_logs();
    let dir = temp_dir("shadow-alone");
    let (acfg, _) = pair(&dir, 1, lone_loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(acfg).expect("start A"));
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_secs(600); // never declared absent here
    cfg.link_timeout = Duration::from_millis(300);
    let a = shadow(&ma, 64 * 1024, cfg);
    let t = Instant::now();
    match a.append_timeout(b"x", Duration::from_millis(200)) {
        Err(ShadowError::AppendNoLink { waited }) => {
            assert!(waited >= Duration::from_millis(200))
        }
        other => panic!("expected AppendNoLink, got {other:?}"),
    }
    match a.append(b"x") {
        Err(ShadowError::AppendNoLink { waited }) => {
            assert!(waited >= Duration::from_millis(300))
        }
        other => panic!("expected AppendNoLink, got {other:?}"),
    }
    match a.wait_connected_timeout(Duration::from_millis(100)) {
        Err(ShadowError::NotConnected {
            partner_absent: false,
            ..
        }) => {}
        other => panic!("expected NotConnected, got {other:?}"),
    }
    assert_eq!(a.stats().appends, 0, "nothing appended");
    assert!(t.elapsed() < WAIT, "the deadlines held");
    // A future waiting for a link ends when the mirror is dropped (it does not keep the
    // mirror's client alive): the driver stops and wakes it.
    let (_, waker) = executor::thread_waker();
    let mut pending = a.append_future(b"x");
    assert!(executor::poll_once(&mut pending, &waker).is_pending());
    drop(a);
    match executor::block_on(pending, WAIT) {
        Err(ShadowError::AppendStopped { name }) => assert_eq!(name, "shadow"),
        other => panic!("expected AppendStopped, got {other:?}"),
    }
    let (gone, status) = ma
        .wait_status(WAIT, |s| s.clients.iter().all(|c| c.name != "shadow"))
        .expect("status");
    assert!(gone, "the client is closed: {status:#?}");
}

/// Loopback addresses no pair of another test uses: a node started alone must not find a
/// partner of some other test (in this or another test process) on its port.
fn lone_loopback(l: u8) -> (std::net::IpAddr, std::net::IpAddr) {
    (
        format!("127.78.{l}.1").parse().expect("ip"),
        format!("127.78.{l}.2").parse().expect("ip"),
    )
}
