//! The giveback client on two in-process managers over loopback (soft provider): both nodes
//! come up serving their own disks; node B stops (its manager says goodbye, its mailbox goes
//! quiet); A detects the failure, takes over and replays; B restarts, finds its disks
//! reserved, and the coordinated giveback (GIVEWAIT, MBWAIT) hands them back. The service
//! journals prove that no disk set was ever served by both nodes at once. A slow replay hook
//! does not stop the taker's mailbox heartbeat.
//! (Two node processes in namespaces, and verbs: tests/pair/giveback_netns.rs.)

use crate::giveback_journal;
use crate::manager_pair;

use giveback_journal::{assert_never_served_twice, note_crash};
use interlink::clients::giveback::service::read_journal;
use interlink::clients::giveback::{
    Command, CommandOutcome, FileMailbox, FileReservations, GivebackEvent, GivebackNode,
    GivebackOptions, JournalHooks, Mailbox, NodeState, Reservations,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{Manager, NodeConfig};
use manager_pair::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    manager: Arc<Manager>,
    giveback: GivebackNode,
    replays: Arc<AtomicU32>,
}

fn start(cfg: &NodeConfig, dir: &Path, options: GivebackOptions) -> Node {
    start_with_replay(
        cfg,
        dir,
        options,
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
    )
}

/// A node whose replay hook sets `in_replay` and runs until `release` is set (at most
/// `WAIT`).
fn start_with_replay(
    cfg: &NodeConfig,
    dir: &Path,
    options: GivebackOptions,
    release: Arc<AtomicBool>,
    in_replay: Arc<AtomicBool>,
) -> Node {
    start_with_hook(cfg, dir, options, move || {
        in_replay.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while !release.load(Ordering::SeqCst) && t0.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(2));
        }
        in_replay.store(false, Ordering::SeqCst);
        Ok(())
    })
}

/// A node whose replay hook is `replay` (counted in `replays`).
fn start_with_hook(
    cfg: &NodeConfig,
    dir: &Path,
    options: GivebackOptions,
    mut replay: impl FnMut() -> Result<(), String> + Send + 'static,
) -> Node {
    let manager = Arc::new(Manager::start(cfg.clone()).expect("start manager"));
    let me = cfg.node_id;
    let replays = Arc::new(AtomicU32::new(0));
    let r = replays.clone();
    let hooks = JournalHooks::new(dir, me).with_replay(Box::new(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        replay()
    }));
    let giveback = GivebackNode::start(
        &manager,
        options,
        Box::new(FileMailbox::open(dir, me, cfg.partner_id).expect("mailbox")),
        Box::new(FileReservations::open(dir, me).expect("reservations")),
        Box::new(hooks),
    )
    .expect("start giveback");
    Node {
        manager,
        giveback,
        replays,
    }
}

/// Stops a node as a crash would: nothing is released. Its journal gets a `crashed` line (a
/// crashed node serves nothing from then on).
fn crash(n: Node, dir: &Path) {
    let me = n.manager.config().node_id;
    n.giveback.stop();
    n.manager.shutdown();
    note_crash(dir, me);
}

fn stop(n: Node) {
    n.giveback.stop();
    n.manager.shutdown();
}

fn wait_state(
    n: &Node,
    what: &str,
    mut pred: impl FnMut(&interlink::clients::giveback::GivebackStatus) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let s = n.giveback.status();
        if pred(&s) {
            return;
        }
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn takeover_then_coordinated_giveback() {
    init_logs();
    let dir = temp_dir("giveback");
    let (a, b) = pair(&dir, 2, loopback, ProviderChoice::Soft, port_base());
    let options = GivebackOptions::default();
    let na = start(&a, &dir, options.clone());
    let nb = start(&b, &dir, options.clone());
    for n in [&na, &nb] {
        wait_state(n, "both nodes up", |s| {
            s.state == NodeState::Up && s.partner_state == Some(NodeState::Up)
        });
    }
    let events = na.giveback.subscribe();

    // B fails: A takes over B's disks, identity and log.
    let failed_at = Instant::now();
    crash(nb, &dir);
    wait_state(&na, "takeover", |s| {
        s.state == NodeState::Takeover && s.serving.contains(&2) && s.identity_assumed
    });
    let took = failed_at.elapsed();
    assert_eq!(
        na.replays.load(Ordering::SeqCst),
        1,
        "B's log replayed once"
    );
    let mut check = FileReservations::open(&dir, 9).unwrap();
    assert_eq!(check.check(2).unwrap(), Some(1), "A holds B's disks");
    let st = na.giveback.status();
    let detection = st.last_detection.expect("detection time");
    let window = Duration::from_millis(100) * 5;
    assert!(
        detection >= window,
        "declared failed before the window: {detection:?}"
    );
    eprintln!("takeover {took:?} after B stopped; detection {detection:?}");

    // B restarts: GIVEWAIT, A releases, MBWAIT, A gives back, B serves.
    let nb = start(&b, &dir, options.clone());
    wait_state(&nb, "B up again", |s| {
        s.state == NodeState::Up && s.serving == vec![2]
    });
    wait_state(&na, "giveback done", |s| {
        s.state == NodeState::Up && s.serving == vec![1] && s.last_outage().is_some()
    });
    let outage = na.giveback.status().last_outage().unwrap();
    eprintln!("giveback outage window {outage:?}");
    assert_eq!(check.check(2).unwrap(), Some(2), "B holds its disks again");
    assert_eq!(check.check(1).unwrap(), Some(1));
    // The events A saw, in order.
    let seen: Vec<GivebackEvent> = events.try_iter().collect();
    let pos = |pred: &dyn Fn(&GivebackEvent) -> bool| {
        seen.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("event missing: {seen:#?}"))
    };
    let failed = pos(&|e| matches!(e, GivebackEvent::PartnerFailed { .. }));
    let done = pos(&|e| matches!(e, GivebackEvent::TakeoverDone { .. }));
    let gw = pos(&|e| {
        matches!(
            e,
            GivebackEvent::PartnerStateChanged {
                state: NodeState::GiveWait,
                ..
            }
        )
    });
    let mb = pos(&|e| {
        matches!(
            e,
            GivebackEvent::PartnerStateChanged {
                state: NodeState::MbWait,
                ..
            }
        )
    });
    let given = pos(&|e| matches!(e, GivebackEvent::GivebackStarted));
    let back = pos(&|e| matches!(e, GivebackEvent::GivebackDone { .. }));
    assert!(
        failed < done && done < gw && gw < mb && mb < given && given < back,
        "{seen:#?}"
    );
    assert_never_served_twice(&dir);
    stop(na);
    stop(nb);
}

#[test]
fn manual_takeover_and_giveback_with_auto_giveback_off() {
    init_logs();
    let dir = temp_dir("giveback-manual");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let options = GivebackOptions {
        auto_giveback: false,
        ..GivebackOptions::default()
    };
    let na = start(&a, &dir, options.clone());
    let nb = start(&b, &dir, options.clone());
    for n in [&na, &nb] {
        wait_state(n, "both up", |s| {
            s.state == NodeState::Up && s.partner_state == Some(NodeState::Up)
        });
    }
    // Check-only changes nothing.
    let r = na
        .giveback
        .command(Command::Takeover { check_only: true })
        .unwrap();
    assert_eq!(r.outcome, CommandOutcome::Allowed, "{r:?}");
    let r = na
        .giveback
        .command(Command::Giveback { check_only: true })
        .unwrap();
    assert_eq!(r.outcome, CommandOutcome::Refused, "{r:?}");
    assert_eq!(na.giveback.status().state, NodeState::Up);

    // Manual takeover of a live partner: B is killed, halts, reboots into GIVEWAIT, then
    // MBWAIT; A serves both and waits for the operator.
    let r = na
        .giveback
        .command(Command::Takeover { check_only: false })
        .unwrap();
    assert_eq!(r.outcome, CommandOutcome::Started, "{r:?}");
    wait_state(&na, "takeover", |s| {
        s.state == NodeState::Takeover && s.serving.contains(&2)
    });
    wait_state(&nb, "B waits for the mailbox", |s| {
        s.state == NodeState::MbWait
    });
    assert!(nb.giveback.driver_counters().kills_received >= 1);
    assert_eq!(nb.giveback.driver_counters().reboots, 1);
    // A decides at the read that shows B in MBWAIT: once its status shows that read, an
    // automatic giveback would have started.
    wait_state(&na, "A reads B in MBWAIT", |s| {
        s.partner_state == Some(NodeState::MbWait)
    });
    assert_eq!(
        na.giveback.status().state,
        NodeState::Takeover,
        "auto giveback is off"
    );
    // A command needs a READ of the partner no older than one interval; on a loaded host the
    // last one may be older when the command comes, and the answer is "no fresh read" (an
    // operator asks again): ask until a fresh read answers, for up to 5 s.
    let fresh = |check_only| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = na
                .giveback
                .command(Command::Giveback { check_only })
                .unwrap();
            if !r.reason.starts_with("no fresh read") || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let r = fresh(true);
    assert_eq!(r.outcome, CommandOutcome::Allowed, "{r:?}");
    let r = fresh(false);
    assert!(
        matches!(r.outcome, CommandOutcome::Done | CommandOutcome::Started),
        "{r:?}"
    );
    wait_state(&nb, "B serves again", |s| {
        s.state == NodeState::Up && s.serving == vec![2]
    });
    wait_state(&na, "A back to its own", |s| {
        s.state == NodeState::Up && s.serving == vec![1]
    });
    assert_never_served_twice(&dir);
    stop(na);
    stop(nb);
}

/// The chaos suite's slow replay (1.5 s under load): while A's driver is in the replay hook
/// its mailbox record keeps changing (a partner reading only the mailbox sees A alive) and
/// still says "taken over"; A serves B's disks only after the hook.
#[test]
fn a_slow_replay_keeps_the_mailbox_heartbeat_going() {
    init_logs();
    let dir = temp_dir("giveback-slow-replay");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let options = GivebackOptions::default();
    let in_replay = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let na = start_with_replay(
        &a,
        &dir,
        options.clone(),
        release.clone(),
        in_replay.clone(),
    );
    let nb = start(&b, &dir, options.clone());
    for n in [&na, &nb] {
        wait_state(n, "both nodes up", |s| {
            s.state == NodeState::Up && s.partner_state == Some(NodeState::Up)
        });
    }
    crash(nb, &dir);
    let t0 = Instant::now();
    while !in_replay.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < WAIT, "no replay");
        std::thread::sleep(Duration::from_millis(2));
    }
    // A's record as B's mailbox would read it.
    let mut as_b = FileMailbox::open(&dir, 2, 1).unwrap();
    let first = as_b.read_partner().unwrap().expect("A's record");
    // The hook runs until released: the record keeps beating meanwhile (interval 100 ms).
    let t1 = Instant::now();
    let later = loop {
        let r = as_b.read_partner().unwrap().expect("A's record");
        if r.heartbeat >= first.heartbeat + 5 {
            break r;
        }
        assert!(
            t1.elapsed() < WAIT,
            "mailbox heartbeat stuck at {}",
            r.heartbeat
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        in_replay.load(Ordering::SeqCst),
        "the hook is still running"
    );
    assert!(first.taken_over && later.taken_over, "{later:?}");
    assert_eq!(later.state, NodeState::Up, "not serving B's disks yet");
    assert!(!na.giveback.status().serving.contains(&2));
    release.store(true, Ordering::SeqCst);
    wait_state(&na, "takeover after the replay", |s| {
        s.state == NodeState::Takeover && s.serving.contains(&2)
    });
    assert_eq!(na.replays.load(Ordering::SeqCst), 1);
    assert_never_served_twice(&dir);
    stop(na);
}

/// A takeover whose replay hook fails (the partner's log or write-back blocks not applied)
/// reserves the partner's disks but does not serve them: the start-serving hook waits until a
/// retry of the replay succeeds; the status says why meanwhile. The giveback then works as
/// usual.
#[test]
fn a_failed_replay_withholds_the_partners_disks_until_a_retry_succeeds() {
    init_logs();
    let dir = temp_dir("giveback-replay-fails");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let options = GivebackOptions::default();
    let allow = Arc::new(AtomicBool::new(false));
    let na = {
        let allow = allow.clone();
        start_with_hook(&a, &dir, options.clone(), move || {
            if allow.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the disk refused the destage".into())
            }
        })
    };
    let nb = start(&b, &dir, options.clone());
    for n in [&na, &nb] {
        wait_state(n, "both nodes up", |s| {
            s.state == NodeState::Up && s.partner_state == Some(NodeState::Up)
        });
    }
    crash(nb, &dir);
    // Taken over (reserved, the machine in TAKEOVER), the replay tried again at least once.
    wait_state(&na, "takeover", |s| {
        s.state == NodeState::Takeover && s.serving.contains(&2)
    });
    let t0 = Instant::now();
    while na.replays.load(Ordering::SeqCst) < 2 {
        assert!(t0.elapsed() < WAIT, "the failed replay is not tried again");
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = na.giveback.report();
    assert!(
        report
            .partner_replay_error
            .as_deref()
            .is_some_and(|e| e.contains("refused the destage")),
        "{report:#?}"
    );
    let journal = |event: &str| {
        read_journal(&giveback_journal_path(&dir, 1))
            .unwrap()
            .into_iter()
            .filter(|e| e.event == event && e.what == 2)
            .count()
    };
    assert_eq!(journal("start-serving"), 0, "served before the replay");
    let mut check = FileReservations::open(&dir, 9).unwrap();
    assert_eq!(check.check(2).unwrap(), Some(1), "A holds B's disks");
    // The replay succeeds at its next try: B's disks are served, once.
    allow.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    while journal("start-serving") == 0 {
        assert!(t0.elapsed() < WAIT, "not served after the replay succeeded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tries = na.replays.load(Ordering::SeqCst);
    assert_eq!(journal("replay-log"), tries as usize);
    assert!(na.giveback.report().partner_replay_error.is_none());
    // B comes back: the coordinated giveback as usual.
    let nb = start(&b, &dir, options.clone());
    wait_state(&nb, "B up again", |s| {
        s.state == NodeState::Up && s.serving == vec![2]
    });
    wait_state(&na, "giveback done", |s| {
        s.state == NodeState::Up && s.serving == vec![1]
    });
    assert_eq!(journal("start-serving"), 1);
    assert_eq!(
        na.replays.load(Ordering::SeqCst),
        tries,
        "no replay after success"
    );
    assert_never_served_twice(&dir);
    stop(na);
    stop(nb);
}

#[test]
fn a_start_refuses_a_node_id_another_live_process_writes_in_the_mailbox() {
    let dir = temp_dir("gb-twin");
    let (a, _) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    // The twin: the same node id running elsewhere, writing its mailbox record every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let twin = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut mb = FileMailbox::open(&dir, 1, 2).expect("mailbox");
            let mut heartbeat = 0;
            while !stop.load(Ordering::SeqCst) {
                heartbeat += 1;
                let rec = interlink::clients::giveback::MailboxRecord {
                    own_log_applied_here: false,
                    node: 1,
                    incarnation: 5,
                    state: NodeState::Up,
                    taken_over: false,
                    takeover_pending: false,
                    heartbeat,
                    partner_incarnation: 0,
                    replayed_partner_log: None,
                    partner_copy_outdated: None,
                    partner_copy_complete_for: None,
                    writeback_copy_outdated: false,
                    own_log_generation: 0,
                    own_writeback_epoch: 0,
                    took_over_writeback: 0,
                };
                mb.write_own(&rec).expect("twin write");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let deadline = Instant::now() + WAIT;
    while FileMailbox::open(&dir, 1, 2)
        .unwrap()
        .read_own()
        .unwrap()
        .newest
        .is_none()
    {
        assert!(Instant::now() < deadline, "the twin never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    let manager = Arc::new(Manager::start(a.clone()).expect("start manager"));
    let start = || {
        GivebackNode::start(
            &manager,
            GivebackOptions::default(),
            Box::new(FileMailbox::open(&dir, 1, 2).expect("mailbox")),
            Box::new(FileReservations::open(&dir, 1).expect("reservations")),
            Box::new(JournalHooks::new(&dir, 1)),
        )
    };
    let r = start();
    match r {
        Err(e @ interlink::clients::giveback::GivebackError::IdentityInUse { .. }) => {
            assert!(e.to_string().contains("node id 1 is in use"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started beside a live twin"),
    }
    // Nothing was journaled, nothing reserved.
    assert!(!giveback_journal_path(&dir, 1).exists());
    assert!(FileReservations::open(&dir, 1)
        .unwrap()
        .check(1)
        .unwrap()
        .is_none());
    // The twin stops (a crashed predecessor): the same start goes ahead.
    stop.store(true, Ordering::SeqCst);
    twin.join().unwrap();
    let n = start().expect("start after the twin stopped");
    drop(n);
    manager.shutdown();
}

fn giveback_journal_path(dir: &Path, node: u32) -> std::path::PathBuf {
    interlink::clients::giveback::service::journal_path(dir, node)
}
