//! A node whose own NVRAM is lost or corrupt (F5.6 case c: a replaced controller), on two
//! in-process managers over loopback (soft provider): the mailbox record says a log of which
//! generation existed; the node fetches it from the partner's copy by RDMA READ, applies the
//! records nobody applied exactly once through its sink, and appends on in a new generation.
//! No valid copy anywhere: it refuses, naming what is missing, and formats nothing. A
//! genuinely new node (the mailbox says no log ever) starts fresh.
//!
//! The mailbox here is an in-memory stand-in for the giveback client's: a thread writes the
//! own record every couple of milliseconds (stamping the own log generation, as the giveback
//! driver's `StampingMailbox` does), and a restarted node reads what it last wrote.

use crate::manager_pair;

use interlink::clients::giveback::{
    CopyStamp, OwnLogContext, OwnLogMark, OwnLogStamp, PartnerCopyMark, ServingLease,
};
use interlink::clients::mirror::shadow::{
    check_payload, cursor_path, file_backings, log_path, writer_payload, CursorStore,
    RecoveryOutcome,
};
use interlink::clients::mirror::{
    MemoryNvram, ReplayedRecord, ShadowConfig, ShadowError, ShadowMirror, ShadowStats,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{Manager, NodeConfig};
use manager_pair::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn managers() -> (NodeConfig, NodeConfig, Arc<Manager>, Arc<Manager>) {
    init_logs();
    let dir = temp_dir("nvram-loss");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a.clone()).expect("start A"));
    let mb = Arc::new(Manager::start(b.clone()).expect("start B"));
    (a, b, ma, mb)
}

/// A shadow mirror without a mailbox on memory NVRAM, recovered fresh.
fn plain(m: &Arc<Manager>, len: usize) -> Arc<ShadowMirror> {
    let s = ShadowMirror::start(
        m,
        ShadowConfig::new(),
        Box::new(MemoryNvram::new(len)),
        Box::new(MemoryNvram::new(CursorStore::LEN)),
    )
    .expect("start shadow mirror");
    let r = s.recover(None, |_| Ok(())).expect("recover a fresh log");
    assert_eq!(r.outcome, RecoveryOutcome::Fresh);
    Arc::new(s)
}

/// A shadow mirror on NVRAM files in `dir` (they outlive it), not recovered yet.
fn on_files(m: &Arc<Manager>, dir: &Path, len: usize, cfg: ShadowConfig) -> ShadowMirror {
    let node = m.config().node_id;
    let (log, cursor) = file_backings(dir, node, len).expect("NVRAM files");
    ShadowMirror::start(m, cfg, log, cursor).expect("start shadow mirror")
}

/// What the in-memory "mailbox disks" hold of one node's own record: its own log generation
/// and the state of the partner's copy of its log.
#[derive(Default)]
struct Disk(parking_lot::Mutex<(OwnLogStamp, CopyStamp)>);

impl Disk {
    fn generation(&self) -> u64 {
        self.0.lock().0.generation
    }

    /// Whether the record confirms the partner's copy complete for some partner incarnation.
    fn confirmed(&self) -> bool {
        self.0.lock().1.complete_for.is_some_and(|c| c != 0)
    }
}

/// The writer standing for the giveback driver's periodic mailbox writes of one node's run.
struct MemMailbox {
    mark: Arc<OwnLogMark>,
    copy_mark: Arc<PartnerCopyMark>,
    /// Renewed by every write, as the giveback machine's lease is (nobody takes this node
    /// over here).
    lease: Arc<ServingLease>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemMailbox {
    /// A node boots: it reads its own record from `disk`, then writes it periodically.
    fn boot(disk: &Arc<Disk>) -> MemMailbox {
        let (own_log, stamp) = *disk.0.lock();
        let mark = Arc::new(OwnLogMark::inherit(own_log));
        let copy_mark = Arc::new(PartnerCopyMark::new(stamp));
        let stop = Arc::new(AtomicBool::new(false));
        let lease = Arc::new(ServingLease::new());
        let (m, c, s, d) = (mark.clone(), copy_mark.clone(), stop.clone(), disk.clone());
        let l = lease.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                l.set(Some(Instant::now() + Duration::from_secs(5)), true);
                let carried = (m.stamp_log(), c.stamp());
                *d.0.lock() = carried;
                m.written_stamp(carried.0);
                c.written(carried.1);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        MemMailbox {
            mark,
            copy_mark,
            lease,
            stop,
            thread: Some(thread),
        }
    }

    fn context(&self) -> OwnLogContext {
        OwnLogContext {
            partner_replayed: None,
            partner_took_over: false,
            own_log: self.mark.clone(),
            copy_mark: self.copy_mark.clone(),
            serving_lease: self.lease.clone(),
            incarnation: 1,
            partner_took_over_writeback: 0,
            writeback: Arc::new(interlink::clients::giveback::WriteBackEpochs::new(0, 0)),
        }
    }
}

impl Drop for MemMailbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("mailbox writer");
        }
    }
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

/// B (on files in `dir`, with the mailbox on `disk`) starts fresh, appends 1..=40 mirrored
/// with a checkpoint through 15 mirrored, and is killed. Returns its log generation.
fn run_and_kill_b(mb: Arc<Manager>, dir: &Path, len: usize, disk: &Arc<Disk>) -> u64 {
    let mailbox = MemMailbox::boot(disk);
    let b = on_files(&mb, dir, len, ShadowConfig::new());
    let r = b
        .recover_from_mailbox(&mailbox.context(), |_| {
            panic!("a new node has nothing to apply")
        })
        .expect("recover");
    assert_eq!(
        (r.outcome, r.fetched_from_partner),
        (RecoveryOutcome::Fresh, false)
    );
    assert!(b.wait_connected_timeout(WAIT).is_ok(), "{:#?}", b.stats());
    for seq in 1..=40 {
        let a = b.append(&writer_payload(seq, 100)).unwrap();
        assert!(a.mirrored);
        if seq == 15 {
            b.checkpoint(a.position).unwrap();
        }
    }
    wait_stats(&b, "checkpoint 15 mirrored", |s| {
        s.checkpoint_mirrored >= 15
    });
    // The mailbox confirms the partner's copy complete (F5.7: a full send completed on it).
    let t0 = Instant::now();
    while !disk.confirmed() {
        assert!(t0.elapsed() < WAIT, "the copy was never confirmed complete");
        std::thread::sleep(Duration::from_millis(2));
    }
    let generation = b.generation();
    // The generation was on the mailbox before its first record was acknowledged.
    assert_eq!(disk.generation(), generation);
    drop(b);
    drop(mailbox);
    mb.shutdown();
    generation
}

#[test]
fn a_node_that_lost_its_nvram_fetches_its_log_from_the_partner_and_applies_it_once() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-lost");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let a = plain(&ma, len);
    let old = run_and_kill_b(mb, &dir, len, &disk);

    // The controller is replaced: its NVRAM (log and replay cursors) is gone.
    let node = bcfg.node_id;
    std::fs::remove_file(log_path(&dir, node)).unwrap();
    std::fs::remove_file(cursor_path(&dir, node)).unwrap();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let mailbox = MemMailbox::boot(&disk);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let mut applied = Vec::new();
    let r = b
        .recover_from_mailbox(&mailbox.context(), collect(&mut applied))
        .expect("recover from the partner's copy");
    assert_eq!(applied, (16..=40).collect::<Vec<_>>());
    assert_eq!(r.outcome, RecoveryOutcome::ReplayedHere);
    assert!(r.fetched_from_partner);
    assert_eq!(
        (r.previous_generation, r.previous_checkpoint, r.replayed),
        (Some(old), 15, 25)
    );
    assert!(r.generation > old);
    // Appends go on in the new generation, mirrored; the mailbox records it.
    assert!(b.wait_connected_timeout(WAIT).is_ok());
    for seq in 1..=3 {
        let ap = b.append(&writer_payload(seq, 100)).unwrap();
        assert!(ap.mirrored);
        assert_eq!(ap.position.generation, r.generation);
    }
    assert_eq!(disk.generation(), r.generation);
    let rp = a.read_partner().unwrap();
    assert_eq!(rp.generation, r.generation);
    assert_eq!(
        rp.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn a_corrupt_nvram_is_fetched_and_a_crash_in_the_middle_resumes_without_applying_twice() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-corrupt");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let _a = plain(&ma, len);
    let old = run_and_kill_b(mb, &dir, len, &disk);

    // Its superblock is corrupt (past the magic): the log exists but cannot be read.
    let path = log_path(&dir, bcfg.node_id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let mailbox = MemMailbox::boot(&disk);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    // The sink refuses record 30: everything before it is applied and stays applied.
    let mut applied = Vec::new();
    let err = b
        .recover_from_mailbox(&mailbox.context(), |r| {
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
    // B dies again: the fetched copy is in its NVRAM now, and its own-replay cursor says
    // where the recovery stopped.
    drop(b);
    drop(mailbox);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B again"));
    let mailbox = MemMailbox::boot(&disk);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let mut again = Vec::new();
    let r = b
        .recover_from_mailbox(&mailbox.context(), collect(&mut again))
        .expect("recover");
    assert_eq!(again, (30..=40).collect::<Vec<_>>());
    assert_eq!(
        (r.outcome, r.previous_generation, r.resumed_after),
        (RecoveryOutcome::ReplayedHere, Some(old), Some(29))
    );
    assert!(b.wait_connected_timeout(WAIT).is_ok());
    assert!(b.append(&writer_payload(1, 100)).unwrap().mirrored);
}

/// B restarts while A is down: it applies its own records with A's copy not following, and
/// before the first one its mailbox record says so (a forced takeover from A's copy then
/// replays nothing of that generation); the next generation clears it in the write that
/// names it.
#[test]
fn an_own_recovery_without_the_partner_says_so_in_the_mailbox_before_it_applies() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-applied-here");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let a = plain(&ma, len);
    let old = run_and_kill_b(mb, &dir, len, &disk);
    drop(a);
    ma.shutdown();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let mailbox = MemMailbox::boot(&disk);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let mut applied = Vec::new();
    let (d, mark) = (disk.clone(), mailbox.mark.clone());
    let r = b
        .recover_from_mailbox(&mailbox.context(), |rec| {
            let on_disk = d.0.lock().0;
            assert!(
                on_disk.applied_here && on_disk.generation == old && mark.is_durable(),
                "record {} applied before the mailbox said so: {on_disk:?}",
                rec.seq
            );
            applied.push(rec.seq);
            Ok(())
        })
        .expect("recover");
    assert_eq!(applied, (16..=40).collect::<Vec<_>>());
    assert_eq!(r.outcome, RecoveryOutcome::ReplayedHere);
    let t0 = Instant::now();
    while d.0.lock().0
        != (OwnLogStamp {
            generation: r.generation,
            applied_here: false,
        })
    {
        assert!(t0.elapsed() < WAIT, "{:?}", disk.0.lock());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn no_valid_copy_anywhere_refuses_to_serve_and_formats_nothing() {
    let (acfg, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-no-copy");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let a = plain(&ma, len);
    let old = run_and_kill_b(mb, &dir, len, &disk);
    // Both nodes restart together: A's copy of B's log went with A's memory.
    drop(a);
    ma.shutdown();
    ma.shutdown();
    drop(ma);
    let path = log_path(&dir, bcfg.node_id);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    let ma = Arc::new(Manager::start(acfg.clone()).expect("restart A"));
    let a = plain(&ma, len);
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let mailbox = MemMailbox::boot(&disk);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let err = b
        .recover_from_mailbox(&mailbox.context(), |r| {
            panic!("record {} from nowhere", r.seq)
        })
        .unwrap_err();
    match &err {
        ShadowError::NoValidCopy {
            generation,
            local,
            why,
        } => {
            assert_eq!(*generation, old);
            assert_eq!(local, "is blank");
            assert!(why.contains("blank"), "{why}");
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("no valid copy") && text.contains(&old.to_string()),
        "{text}"
    );
    // Nothing was formatted, nothing is appended, nothing was written into A's region.
    let err = b
        .append_timeout(&writer_payload(1, 100), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, ShadowError::NotRecovered { .. }), "{err}");
    let st = b.stats();
    assert_eq!(st.generation, 0);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no valid copy")),
        "{st:#?}"
    );
    assert_eq!(
        disk.generation(),
        old,
        "the mailbox still names the lost log"
    );
    assert!(a.wait_connected_timeout(WAIT).is_ok());
    assert_eq!(a.read_partner().unwrap().generation, 0);
    drop(b);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0u8; len],
        "the NVRAM was touched"
    );
}

#[test]
fn a_lost_log_without_the_partner_is_refused_after_the_fetch_deadline() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-no-partner");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let a = plain(&ma, len);
    let old = run_and_kill_b(mb, &dir, len, &disk);
    drop(a);
    ma.shutdown();
    std::fs::remove_file(log_path(&dir, bcfg.node_id)).unwrap();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let mailbox = MemMailbox::boot(&disk);
    let mut cfg = ShadowConfig::new();
    cfg.fetch_timeout = Duration::from_millis(300);
    let b = on_files(&mb, &dir, len, cfg);
    let err = b
        .recover_from_mailbox(&mailbox.context(), |_| Ok(()))
        .unwrap_err();
    assert!(
        matches!(err, ShadowError::FetchNoPartner { ref local, .. } if local == "is blank"),
        "{err}"
    );
    assert!(b.recovered().is_none());
    assert_eq!(disk.generation(), old);
}

#[test]
fn a_genuinely_new_node_starts_fresh_without_asking_the_partner() {
    let (_, _, _ma, mb) = managers();
    let dir = temp_dir("nvram-new");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let mailbox = MemMailbox::boot(&disk);
    // No partner shadow client runs: a fetch would end in FetchNoPartner.
    let mut cfg = ShadowConfig::new();
    cfg.fetch_timeout = Duration::from_millis(100);
    cfg.partner_timeout = Duration::from_millis(200);
    let b = on_files(&mb, &dir, len, cfg);
    let r = b
        .recover_from_mailbox(&mailbox.context(), |_| panic!("nothing to apply"))
        .expect("fresh");
    assert_eq!(
        (r.outcome, r.fetched_from_partner),
        (RecoveryOutcome::Fresh, false)
    );
    // Its first record waits for the mailbox to record the generation, then completes
    // (unmirrored: no partner).
    let ap = b
        .append_timeout(&writer_payload(1, 40), WAIT)
        .expect("append");
    assert!(!ap.mirrored);
    assert_eq!(disk.generation(), r.generation);
}

#[test]
fn without_a_mailbox_a_corrupt_log_is_fetched_but_a_blank_one_starts_fresh() {
    let (_, bcfg, ma, mb) = managers();
    let dir = temp_dir("nvram-no-mailbox");
    let len = 64 * 1024;
    let a = plain(&ma, len);
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    b.recover(None, |_| panic!("nothing to apply"))
        .expect("fresh");
    assert!(b.wait_connected_timeout(WAIT).is_ok());
    for seq in 1..=10 {
        assert!(b.append(&writer_payload(seq, 80)).unwrap().mirrored);
    }
    let old = b.generation();
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    let path = log_path(&dir, bcfg.node_id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B"));
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let mut applied = Vec::new();
    let r = b.recover(None, collect(&mut applied)).expect("fetched");
    assert_eq!(applied, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        (r.outcome, r.previous_generation, r.fetched_from_partner),
        (RecoveryOutcome::ReplayedHere, Some(old), true)
    );
    // A blank NVRAM without a mailbox cannot be told from a first start: fresh, as
    // documented, and the partner's copy of the new generation replaces the old one.
    drop(b);
    mb.shutdown();
    mb.shutdown();
    drop(mb);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    let mb = Arc::new(Manager::start(bcfg.clone()).expect("restart B again"));
    let b = on_files(&mb, &dir, len, ShadowConfig::new());
    let r = b
        .recover(None, |_| panic!("nothing to apply"))
        .expect("fresh");
    assert_eq!(
        (r.outcome, r.fetched_from_partner),
        (RecoveryOutcome::Fresh, false)
    );
    assert!(b.wait_connected_timeout(WAIT).is_ok());
    assert!(b.append(&writer_payload(1, 80)).unwrap().mirrored);
    assert_eq!(a.read_partner().unwrap().generation, r.generation);
}

/// A node of the pair with the giveback client on a file mailbox in `dir`: its shadow log on
/// NVRAM files in `dir/nvram`, recovered by the giveback client's hook before it serves (as
/// `interlink node --shadow --giveback` wires it).
struct GivebackPair {
    manager: Arc<Manager>,
    giveback: interlink::clients::giveback::GivebackNode,
    shadow: Arc<ShadowMirror>,
    applied: Arc<parking_lot::Mutex<Vec<u64>>>,
}

fn start_with_giveback(cfg: &NodeConfig, dir: &Path, len: usize) -> GivebackPair {
    use interlink::clients::giveback::{
        FileMailbox, FileReservations, GivebackNode, GivebackOptions, JournalHooks,
    };
    let manager = Arc::new(Manager::start(cfg.clone()).expect("start manager"));
    let shadow = Arc::new(on_files(
        &manager,
        &dir.join("nvram"),
        len,
        ShadowConfig::new(),
    ));
    let applied = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (s, got) = (shadow.clone(), applied.clone());
    let recover = Box::new(move |context: &OwnLogContext| {
        if s.recovered().is_some() {
            return Ok(());
        }
        s.recover_from_mailbox(context, |r| {
            assert_eq!(check_payload(&r.payload), Some(r.seq));
            got.lock().push(r.seq);
            Ok(())
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    let s = shadow.clone();
    let replayed = Box::new(move || s.partner_replayed().map(Into::into));
    let me = cfg.node_id;
    // The partner is never declared failed here: the restarted node must recover by itself.
    let options = GivebackOptions {
        miss_intervals: 10_000,
        ..GivebackOptions::default()
    };
    let giveback = GivebackNode::start(
        &manager,
        options,
        Box::new(FileMailbox::open(dir, me, cfg.partner_id).expect("mailbox")),
        Box::new(FileReservations::open(dir, me).expect("reservations")),
        Box::new(JournalHooks::new(dir, me).with_recovery(recover, Some(replayed))),
    )
    .expect("start giveback");
    GivebackPair {
        manager,
        giveback,
        shadow,
        applied,
    }
}

fn own_record(dir: &Path, cfg: &NodeConfig) -> Option<interlink::clients::giveback::MailboxRecord> {
    use interlink::clients::giveback::{FileMailbox, Mailbox};
    FileMailbox::open(dir, cfg.node_id, cfg.partner_id)
        .unwrap()
        .read_own()
        .unwrap()
        .newest
}

fn own_record_generation(dir: &Path, cfg: &NodeConfig) -> u64 {
    own_record(dir, cfg).map_or(0, |r| r.own_log_generation)
}

/// A pair with the giveback client on files under a fresh `tag` directory, both recovered and
/// connected, and `records` records acknowledged by B whose generation the mailbox holds
/// with a confirmed copy. Returns the shared directory, both configs and nodes, and B's
/// generation.
fn giveback_pair_with_records(
    tag: &str,
    records: u64,
) -> (
    PathBuf,
    NodeConfig,
    NodeConfig,
    GivebackPair,
    GivebackPair,
    u64,
) {
    init_logs();
    let dir = temp_dir(tag);
    let (acfg, bcfg) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    // One directory stands for the shared mailbox and reservation disks; each node's NVRAM
    // files (named by node id) are in its `nvram` folder.
    let shared = dir.join("shared");
    std::fs::create_dir_all(shared.join("nvram")).unwrap();
    let a = start_with_giveback(&acfg, &shared, LEN);
    let b = start_with_giveback(&bcfg, &shared, LEN);
    for n in [&a, &b] {
        assert!(
            n.shadow.wait_recovered_timeout(WAIT).is_ok(),
            "{:#?}",
            n.giveback.status()
        );
        assert!(n.shadow.wait_connected_timeout(WAIT).is_ok());
    }
    for seq in 1..=records {
        assert!(b.shadow.append(&writer_payload(seq, 100)).unwrap().mirrored);
    }
    let old = b.shadow.generation();
    let t0 = Instant::now();
    while own_record(&shared, &bcfg).is_none_or(|r| {
        r.own_log_generation != old || r.partner_copy_complete_for.is_none_or(|c| c == 0)
    }) {
        assert!(
            t0.elapsed() < WAIT,
            "the mailbox never recorded {old} with a confirmed copy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (shared, acfg, bcfg, a, b, old)
}

/// Bytes of the logs of the giveback tests.
const LEN: usize = 64 * 1024;

#[test]
fn with_the_giveback_client_the_mailbox_knows_the_lost_log_and_the_node_fetches_it() {
    let (shared, _acfg, bcfg, a, b, old) = giveback_pair_with_records("nvram-giveback", 20);
    let len = LEN;
    // B is killed and its NVRAM replaced, before A declares it failed.
    b.giveback.stop();
    drop(b.shadow);
    b.manager.shutdown();
    drop(b.giveback);
    std::fs::remove_file(log_path(&shared.join("nvram"), bcfg.node_id)).unwrap();
    let b = start_with_giveback(&bcfg, &shared, len);
    assert!(
        b.shadow.wait_recovered_timeout(WAIT).is_ok(),
        "{:#?}",
        b.giveback.status()
    );
    let r = b.shadow.recovered().unwrap();
    assert_eq!(*b.applied.lock(), (1..=20).collect::<Vec<_>>());
    assert_eq!(
        (r.outcome, r.previous_generation, r.fetched_from_partner),
        (RecoveryOutcome::ReplayedHere, Some(old), true)
    );
    assert!(b.shadow.append(&writer_payload(1, 100)).unwrap().mirrored);
    assert_eq!(own_record_generation(&shared, &bcfg), r.generation);
    assert_eq!(b.giveback.report().own_log_generation, r.generation);
    assert_eq!(a.shadow.read_partner().unwrap().generation, r.generation);
    drop(a);
}

#[test]
fn with_the_giveback_client_a_node_without_any_valid_copy_withholds_its_disks() {
    use interlink::clients::giveback::service::{journal_path, read_journal};
    let (shared, acfg, bcfg, a, b, _) = giveback_pair_with_records("nvram-giveback-none", 10);
    let len = LEN;
    // Both nodes go down; B's NVRAM is lost, and A's copy went with A's process (its region
    // lives as long as A's manager): no valid copy of B's log anywhere.
    for n in [b, a] {
        n.giveback.stop();
        drop(n.shadow);
        n.manager.shutdown();
    }
    std::fs::remove_file(log_path(&shared.join("nvram"), bcfg.node_id)).unwrap();
    let a = start_with_giveback(&acfg, &shared, len);
    let b = start_with_giveback(&bcfg, &shared, len);
    let t0 = Instant::now();
    let e = loop {
        if let Some(e) = b.giveback.report().own_recovery_error {
            break e;
        }
        assert!(t0.elapsed() < WAIT, "{:#?}", b.giveback.report());
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(e.contains("no valid copy"), "{e}");
    assert!(b.shadow.recovered().is_none());
    assert!(b.applied.lock().is_empty());
    // B's disks are withheld from the service: no start-serving of its own set in this run
    // (the journal's earlier run had one), and the status says why.
    let started = |node: u32| {
        read_journal(&journal_path(&shared, node))
            .unwrap()
            .iter()
            .filter(|e| e.event == "start-serving" && e.what == node)
            .count()
    };
    assert_eq!(
        started(bcfg.node_id),
        1,
        "B served its disks without its log"
    );
    assert!(a.shadow.wait_recovered_timeout(WAIT).is_ok());
    drop(a);
}

/// A crash inside the format of a new generation (after a takeover the partner replayed)
/// leaves a superblock of that generation over an unreadable log; the next start formats
/// above it instead of failing for good (`FormatLogStaleGeneration` lost the backing: the
/// swarm found it once the lanes ran the library's `plan_start`).
#[test]
fn a_log_torn_inside_its_format_is_formatted_over_above_its_generation() {
    use interlink::clients::giveback::{LogMark, ReplayedMark};
    use interlink::clients::mirror::log_format::CHECKPOINT_SLOT_OFFSETS;
    use interlink::clients::mirror::{NvramBacking, ShadowLog};
    let (_, _, _ma, mb) = managers();
    let dir = temp_dir("nvram-torn-format");
    let len = 64 * 1024;
    let node = mb.config().node_id;
    // The superblock of generation u64::MAX - 5 is written, its checkpoint slots are not.
    let torn_generation = u64::MAX - 5;
    let log = ShadowLog::format(MemoryNvram::new(len), torn_generation).unwrap();
    let mut image = log.into_local().bytes().to_vec();
    for at in CHECKPOINT_SLOT_OFFSETS {
        image[at..at + 64].fill(0xee);
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(log_path(&dir, node), &image).unwrap();
    // The mailbox records generation 7, which the partner replayed whole.
    let disk = Arc::new(Disk(parking_lot::Mutex::new((
        OwnLogStamp {
            generation: 7,
            applied_here: false,
        },
        CopyStamp {
            outdated: None,
            complete_for: Some(0),
            writeback_outdated: false,
        },
    ))));
    let mailbox = MemMailbox::boot(&disk);
    let context = OwnLogContext {
        partner_replayed: Some(ReplayedMark {
            at: LogMark {
                generation: 7,
                seq: 40,
            },
            complete: true,
        }),
        partner_took_over: false,
        ..mailbox.context()
    };
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(200);
    let b = on_files(&mb, &dir, len, cfg);
    let r = b
        .recover_from_mailbox(&context, |_| panic!("nothing to apply"))
        .expect("recovered");
    assert_eq!(r.outcome, RecoveryOutcome::ReplayedByPartner);
    assert!(r.generation > torn_generation, "{r:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A halt of the giveback protocol (the node stops serving its disks: it may have been taken
/// over) gives the log up: a record durable and held for the lease is never acknowledged,
/// appends are refused, and the recovery of the restarted protocol (a new incarnation)
/// decides again from the NVRAM; the same incarnation does not recover twice.
#[test]
fn a_halt_gives_the_log_up_and_the_restarted_protocol_recovers_it_again() {
    use interlink::clients::giveback::ServingLease;
    let (_, _, _ma, mb) = managers();
    let dir = temp_dir("nvram-halt");
    let len = 64 * 1024;
    let disk = Arc::new(Disk::default());
    let mailbox = MemMailbox::boot(&disk);
    let lease = Arc::new(ServingLease::new());
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    let context = |incarnation| OwnLogContext {
        serving_lease: lease.clone(),
        incarnation,
        ..mailbox.context()
    };
    let mut cfg = ShadowConfig::new();
    cfg.partner_timeout = Duration::from_millis(200);
    let b = on_files(&mb, &dir, len, cfg);
    let first = b
        .recover_from_mailbox(&context(1), |_| panic!("a first start applies nothing"))
        .expect("recovered");
    for seq in 1..=3 {
        let a = b.append(&writer_payload(seq, 40)).expect("acknowledged");
        assert_eq!(a.position.seq, seq);
    }
    // The lease runs out (a stall): record 4 is durable here, not acknowledged.
    lease.set(Some(Instant::now()), true);
    let t = b.append_start(&writer_payload(4, 40)).unwrap();
    let err = b.wait_timeout(&t, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, ShadowError::AppendTimeout { .. }), "{err}");
    // The protocol halts: the log is given up.
    lease.set(None, false);
    let err = b.wait_timeout(&t, WAIT).unwrap_err();
    assert!(matches!(err, ShadowError::Relinquished { .. }), "{err}");
    let err = b.append_start(&writer_payload(5, 40)).unwrap_err();
    assert!(matches!(err, ShadowError::Relinquished { .. }), "{err}");
    assert!(b.recovered().is_none());
    // The restarted protocol (a new incarnation) recovers it: nobody replayed it, so every
    // record after the checkpoint is applied here, the unacknowledged 4 included.
    let mut applied = Vec::new();
    let again = b
        .recover_from_mailbox(&context(2), |r| {
            applied.push(r.seq);
            Ok(())
        })
        .expect("recovered again");
    assert_eq!(again.outcome, RecoveryOutcome::ReplayedHere, "{again:?}");
    assert_eq!(applied, vec![1, 2, 3, 4]);
    assert!(again.generation > first.generation);
    lease.set(Some(Instant::now() + Duration::from_secs(600)), true);
    assert_eq!(
        b.append(&writer_payload(1, 40))
            .unwrap()
            .position
            .generation,
        again.generation
    );
    // The same run does not recover twice.
    let err = b.recover_from_mailbox(&context(2), |_| Ok(())).unwrap_err();
    assert!(matches!(err, ShadowError::AlreadyRecovered { .. }), "{err}");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}
