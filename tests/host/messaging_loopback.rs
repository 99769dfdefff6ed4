//! The messenger on the soft provider over loopback, two managers in one process: calls both
//! ways, ordered streams, build on demand, ack callbacks, partner restart and partner loss.
//! (Link cuts need namespaces or the Soft-RoCE VM: tests/pair/messaging_netns.rs.)

use crate::executor;
use crate::manager_pair;

use interlink::fabric::ProviderChoice;
use interlink::manager::{BandwidthClass, Manager};
use interlink::messaging::{
    AckStatus, CallError, CallFailure, Head, IncomingCall, MessagingError, Messenger,
    MessengerConfig,
};
use manager_pair::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const ECHO: u8 = 1;
const STREAM: u8 = 2;

fn start_pair(links: u8) -> (Arc<Manager>, Arc<Manager>, std::path::PathBuf) {
    init_logs();
    let dir = temp_dir("msg");
    let (a, b) = pair(&dir, links, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a).expect("start A"));
    let mb = Arc::new(Manager::start(b).expect("start B"));
    (ma, mb, dir)
}

fn messenger(m: &Arc<Manager>, timeout: Duration) -> Messenger {
    let mut cfg = MessengerConfig::new("msg", BandwidthClass::Low);
    cfg.partner_timeout = timeout;
    let ms = Messenger::start(m, cfg).expect("messenger");
    ms.on(ECHO, |msg, out| {
        if let Some(call) = msg.call {
            out.respond(call, msg.payload).expect("respond");
        }
    })
    .expect("handler");
    ms
}

fn collect(ms: &Messenger) -> Arc<Mutex<Vec<u64>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    ms.on(STREAM, move |msg, _| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg.payload[..8]);
        g.lock().push(u64::from_le_bytes(b));
    })
    .expect("handler");
    got
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn calls_both_ways_and_ordered_stream() {
    let (a, b, _dir) = start_pair(1);
    let ma = messenger(&a, Duration::from_secs(10));
    let mb = messenger(&b, Duration::from_secs(10));
    let got_b = collect(&mb);
    ma.wait_connected_timeout(WAIT).expect("A connected");
    mb.wait_connected_timeout(WAIT).expect("B connected");
    for i in 0..200u32 {
        let r = ma
            .call_timeout(Head::control(ECHO), &i.to_le_bytes(), WAIT)
            .expect("call A→B");
        assert_eq!(r, i.to_le_bytes());
        let r = mb
            .call_timeout(Head::control(ECHO), &[7u8; 1500], WAIT)
            .expect("call B→A");
        assert_eq!(r.len(), 1500);
    }
    let n = 20_000u64;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for i in 0..n {
        loop {
            let r = if i % 1000 == 999 {
                let acked = acked.clone();
                ma.send_acked(Head::bulk(STREAM), &i.to_le_bytes(), move |s| {
                    acked.lock().push((i, s))
                })
            } else if i % 3 == 0 {
                ma.build(Head::bulk(STREAM), move |buf| {
                    buf.get_mut(..8)?.copy_from_slice(&i.to_le_bytes());
                    Some(8)
                })
            } else {
                ma.send(Head::bulk(STREAM), &i.to_le_bytes())
            };
            match r {
                Ok(_) => break,
                Err(interlink::messaging::MessagingError::QueueFull { .. }) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => panic!("send {i}: {e}"),
            }
        }
    }
    wait_for("stream delivered", || got_b.lock().len() as u64 >= n);
    let got = got_b.lock().clone();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    wait_for("acks", || acked.lock().len() == 20);
    assert!(acked.lock().iter().all(|(_, s)| *s == AckStatus::Acked));
    let s = ma.stats();
    assert!(
        s.window.frames_sent < s.window.messages_sent,
        "aggregation packs small messages: {s:?}"
    );
    // No handler for a code: the call fails with NoHandler.
    match ma.call_timeout(Head::control(99), b"x", WAIT) {
        Err(CallError::Failed(CallFailure::NoHandler)) => {}
        other => panic!("expected NoHandler, got {other:?}"),
    }
}

#[test]
fn partner_lost_with_calls_pending_fails_them_all_once() {
    let (a, b, _dir) = start_pair(1);
    let ma = messenger(&a, Duration::from_millis(1500));
    let mb = messenger(&b, Duration::from_millis(1500));
    // B holds every call without answering.
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    mb.on(3, move |msg, _| h.lock().extend(msg.call))
        .expect("handler");
    ma.wait_connected_timeout(WAIT).expect("A connected");
    mb.wait_connected_timeout(WAIT).expect("B connected");
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    for i in 0..50u32 {
        let o = outcomes.clone();
        ma.call_async(Head::control(3), &i.to_le_bytes(), move |r| {
            o.lock().push((i, r.map(<[u8]>::to_vec)))
        })
        .expect("call");
    }
    wait_for("calls held at B", || held.lock().len() == 50);
    drop(mb);
    b.shutdown();
    drop(b);
    wait_for("callbacks", || outcomes.lock().len() == 50);
    // Nothing is left that could call back a second time.
    wait_for("no pending call", || ma.stats().pending_calls == 0);
    let o = outcomes.lock();
    assert_eq!(o.len(), 50, "each callback exactly once");
    assert!(o
        .iter()
        .all(|(_, r)| *r == Err(CallFailure::PartnerInoperative)));
    assert_eq!(ma.stats().partner_failures, 1);
}

/// Every client keeps its manager alive: messengers started on handles nobody else keeps
/// connect and answer calls (with the manager borrowed, `Messenger::start(&Manager::start(..)?)`
/// compiled, the manager shut down at the end of the statement and nothing ever connected).
#[test]
fn a_client_keeps_its_manager_alive() {
    init_logs();
    let dir = temp_dir("msg-keep");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let ma = messenger(
        &Arc::new(Manager::start(a).expect("start A")),
        Duration::from_secs(5),
    );
    let mb = messenger(
        &Arc::new(Manager::start(b).expect("start B")),
        Duration::from_secs(5),
    );
    ma.wait_connected_timeout(WAIT).expect("A connected");
    mb.wait_connected_timeout(WAIT).expect("B connected");
    let reply = ma
        .call_timeout(Head::control(ECHO), b"alive", Duration::from_secs(10))
        .expect("call");
    assert_eq!(reply, b"alive");
}

#[test]
fn a_window_mismatch_is_refused_at_connect_and_calls_fail_with_both_values() {
    let (a, b, _dir) = start_pair(1);
    let ma = messenger(&a, Duration::from_secs(10));
    let mut cfg = MessengerConfig::new("msg", BandwidthClass::Low);
    cfg.window.slots /= 2;
    let half = u64::from(cfg.window.slots);
    let full = 2 * half;
    let mb = Messenger::start(&b, cfg).expect("messenger B");
    // Calls fail with the reason, from the refusal on (before it a call may wait its 200 ms
    // and time out: the refusal comes with the partner's client info).
    let refusal = |m: &Messenger| {
        let deadline = Instant::now() + WAIT;
        loop {
            match m.call_timeout(Head::control(ECHO), b"x", Duration::from_millis(200)) {
                Err(CallError::Messaging(MessagingError::Refused { mismatch, .. })) => {
                    return mismatch
                }
                Err(CallError::Timeout(_))
                | Err(CallError::Failed(CallFailure::PartnerInoperative)) => {
                    assert!(Instant::now() < deadline, "no refusal within {WAIT:?}")
                }
                other => panic!("a call across disagreeing windows: {other:?}"),
            }
        }
    };
    let on_a = refusal(&ma);
    assert_eq!(
        (on_a.term.as_str(), on_a.ours, on_a.theirs),
        ("window slots", Some(full), Some(half))
    );
    let on_b = refusal(&mb);
    assert_eq!((on_b.ours, on_b.theirs), (Some(half), Some(full)));
    assert!(!ma.stats().connected && !mb.stats().connected);
    // B restarts its messenger with the same window as A: calls go through both ways.
    drop(mb);
    let mb = messenger(&b, Duration::from_secs(10));
    wait_for("calls after the fix", || {
        ma.call_timeout(Head::control(ECHO), b"y", Duration::from_millis(500))
            .is_ok_and(|r| r == b"y")
    });
    assert_eq!(
        mb.call_timeout(Head::control(ECHO), b"z", WAIT)
            .expect("B to A"),
        b"z"
    );
}

const FAIL: u8 = 4;
const HOLD: u8 = 5;

/// Calls as futures on a hand-written executor (no runtime): several in flight at once
/// resolve with their own responses, a handler that fails the call with `Outbox::fail`
/// reaches the caller as `CallFailure::Handler` with its code and reason (the future and the
/// synchronous call alike), and a future dropped while pending is harmless: the calls after
/// it work and its late response is discarded.
#[test]
fn call_futures_resolve_on_any_executor_and_handler_errors_reach_the_caller() {
    let (a, b, _dir) = start_pair(1);
    let ma = messenger(&a, Duration::from_secs(10));
    let mb = messenger(&b, Duration::from_secs(10));
    mb.on(FAIL, |msg, out| {
        if let Some(call) = msg.call {
            let reason = format!("no such volume {}", String::from_utf8_lossy(msg.payload));
            out.fail(call, 42, &reason).expect("fail");
        }
    })
    .expect("handler");
    let held: Arc<Mutex<Vec<IncomingCall>>> = Arc::default();
    let h = held.clone();
    mb.on(HOLD, move |msg, _| h.lock().extend(msg.call))
        .expect("handler");
    ma.wait_connected_timeout(WAIT).expect("A connected");
    mb.wait_connected_timeout(WAIT).expect("B connected");

    let futures: Vec<_> = (0..16u32)
        .map(|i| ma.call_future(Head::control(ECHO), &i.to_le_bytes()))
        .collect();
    let replies = executor::block_on_all(futures, WAIT);
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.expect("response"), (i as u32).to_le_bytes());
    }

    let expected = CallFailure::Handler {
        code: 42,
        reason: "no such volume vol7".into(),
    };
    match executor::block_on(ma.call_future(Head::control(FAIL), b"vol7"), WAIT) {
        Err(CallError::Failed(f)) => assert_eq!(f, expected),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    match ma.call(Head::control(FAIL), b"vol7") {
        Err(CallError::Failed(f)) => assert_eq!(f, expected),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    // A reason longer than a message is cut to fit (at a character boundary).
    mb.on(FAIL, |msg, out| {
        if let Some(call) = msg.call {
            out.fail(call, 7, &"é".repeat(5000)).expect("fail");
        }
    })
    .expect("handler");
    match ma.call(Head::control(FAIL), b"") {
        Err(CallError::Failed(CallFailure::Handler { code: 7, reason })) => {
            assert!(reason.len() <= ma.max_payload() && !reason.is_empty());
            assert!(reason.chars().all(|c| c == 'é'));
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }

    // Dropped while pending: registered with the call, then forgotten.
    let (wakes, waker) = executor::thread_waker();
    let mut dropped = ma.call_future(Head::control(HOLD), b"never mind");
    assert!(executor::poll_once(&mut dropped, &waker).is_pending());
    wait_for("the held call", || held.lock().len() == 1);
    drop(dropped);
    // Its response comes after the drop: discarded, nobody woken.
    let call = held.lock().pop().expect("held call");
    mb.with_outbox(HOLD, |out| out.respond(call, b"late"))
        .expect("outbox")
        .expect("respond");
    wait_for("the late response", || ma.stats().pending_calls == 0);
    let r = executor::block_on(ma.call_future(Head::control(ECHO), b"after"), WAIT);
    assert_eq!(r.expect("a call after the drop"), b"after");
    assert_eq!(wakes.wakes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A call future pending when the partner's manager shuts down resolves with "partner
/// inoperative" (after the partner timeout), and so does one pending when the own messenger
/// is dropped (its driver fails every pending call as it stops): no future waits forever.
#[test]
fn pending_call_futures_fail_when_the_partner_or_the_messenger_goes() {
    let (a, b, _dir) = start_pair(1);
    let ma = messenger(&a, Duration::from_millis(1500));
    let mb = messenger(&b, Duration::from_millis(1500));
    let held: Arc<Mutex<Vec<IncomingCall>>> = Arc::default();
    let h = held.clone();
    mb.on(HOLD, move |msg, _| h.lock().extend(msg.call))
        .expect("handler");
    ma.wait_connected_timeout(WAIT).expect("A connected");
    mb.wait_connected_timeout(WAIT).expect("B connected");
    let (_, waker) = executor::thread_waker();
    let mut pending = ma.call_future(Head::control(HOLD), b"1");
    assert!(executor::poll_once(&mut pending, &waker).is_pending());
    wait_for("the held call", || held.lock().len() == 1);
    drop(mb);
    b.shutdown();
    match executor::block_on(pending, WAIT) {
        Err(CallError::Failed(CallFailure::PartnerInoperative)) => {}
        other => panic!("expected partner inoperative, got {other:?}"),
    }

    // With the partner gone for good (and a partner timeout that does not end it first),
    // dropping the messenger resolves a pending call.
    let mut cfg = MessengerConfig::new("msg2", BandwidthClass::Low);
    cfg.partner_timeout = Duration::from_secs(600);
    let lone = Messenger::start(&a, cfg).expect("messenger");
    let mut orphan = lone.call_future(Head::control(HOLD), b"2");
    assert!(executor::poll_once(&mut orphan, &waker).is_pending());
    drop(lone);
    match executor::block_on(orphan, WAIT) {
        Err(CallError::Failed(CallFailure::PartnerInoperative)) => {}
        other => panic!("expected partner inoperative, got {other:?}"),
    }
    drop(ma);
}

/// Deadlines: without a partner, a call with a short timeout ends with `Timeout` and a wait
/// for a connection with `NotConnected` (saying it never connected), not a hang; the plain
/// names use the configured `call_timeout`.
#[test]
fn calls_without_a_partner_end_at_their_deadline() {
    init_logs();
    let dir = temp_dir("msg-alone");
    let (a, _) = pair(&dir, 1, lone_loopback, ProviderChoice::Soft, port_base());
    let a = Arc::new(Manager::start(a).expect("start A"));
    let mut cfg = MessengerConfig::new("msg", BandwidthClass::Low);
    cfg.partner_timeout = Duration::from_secs(600); // never declared failed here
    cfg.call_timeout = Duration::from_millis(300);
    let ma = Messenger::start(&a, cfg).expect("messenger");
    let t = Instant::now();
    match ma.call_timeout(Head::control(ECHO), b"anyone?", Duration::from_millis(200)) {
        Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_millis(200)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    match ma.call(Head::control(ECHO), b"anyone?") {
        Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    match ma.wait_connected() {
        Err(MessagingError::NotConnected {
            waited,
            connections: 0,
            ..
        }) => assert!(waited >= Duration::from_millis(300)),
        other => panic!("expected not connected, got {other:?}"),
    }
    assert!(t.elapsed() < WAIT, "the deadlines held");
}

/// Loopback addresses no pair of another test uses: a node started alone must not find a
/// partner of some other test (in this or another test process) on its port.
fn lone_loopback(l: u8) -> (std::net::IpAddr, std::net::IpAddr) {
    (
        format!("127.78.{l}.1").parse().expect("ip"),
        format!("127.78.{l}.2").parse().expect("ip"),
    )
}
