//! A messaging probe: a [`Messenger`] with a workload that operators and the integration
//! tests drive through the control socket (`interlink node --messenger NAME:CLASS[:TIMEOUT_MS]`):
//! numbered streams checked for exactly-once in-order delivery, echo calls with latency
//! percentiles, a bulk flood, and calls the partner holds unanswered (to watch them fail with
//! "partner inoperative" when the partner dies).

use crate::manager::{BandwidthClass, Manager};
use crate::messaging::{
    AckStatus, CallError, CallFailure, Class, Head, Message, MessagingError, Messenger,
    MessengerConfig, MessengerStats, Outbox,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Function code of numbered stream messages: payload = incarnation u64, sequence u64, fill.
pub const STREAM: u8 = 10;
/// Function code of echo calls (the response is the request).
pub const ECHO: u8 = 11;
/// Function code of calls the receiver holds without answering.
pub const HOLD: u8 = 12;
/// Function code of bulk flood messages (not checked, counted).
pub const FLOOD: u8 = 13;

/// What the probe has seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageProbeStats {
    /// The messenger's counters.
    pub messenger: MessengerStats,
    /// Stream messages queued by this side.
    pub stream_sent: u64,
    /// Of those, acknowledged by the partner.
    pub stream_acked: u64,
    /// Of those, reported partner inoperative.
    pub stream_inoperative: u64,
    /// Whether a stream this side started is still queueing.
    pub stream_running: bool,
    /// Stream messages received.
    pub received: u64,
    /// Highest sequence number received from the partner's current incarnation.
    pub last_seq: u64,
    /// Received at or below one already seen (must stay 0).
    pub duplicates: u64,
    /// Sequence numbers skipped (must stay 0 unless the partner was declared failed).
    pub gaps: u64,
    /// Echo calls answered correctly.
    pub calls_ok: u64,
    /// Calls that failed with partner inoperative (echo and held).
    pub calls_inoperative: u64,
    /// Calls that failed otherwise, timed out, or came back wrong.
    pub calls_failed: u64,
    /// Whether an echo call loop is running.
    pub calls_running: bool,
    /// Echo call round trip, median, microseconds.
    pub call_p50_us: f64,
    /// Echo call round trip, 99th percentile, microseconds.
    pub call_p99_us: f64,
    /// Held calls this side made and that are still unanswered.
    pub held_pending: u64,
    /// Calls of the partner this side holds unanswered.
    pub holding: u64,
    /// Flood messages sent and received.
    pub flood_sent: u64,
    /// Flood messages received.
    pub flood_received: u64,
    /// Whether the flood is on.
    pub flooding: bool,
}

struct Shared {
    stats: Mutex<MessageProbeStats>,
    latency: Mutex<Histogram<u64>>,
    peer_incarnation: Mutex<u64>,
    stop: AtomicBool,
    flood: AtomicBool,
}

/// A running message probe.
pub struct MessageProbe {
    messenger: Arc<Messenger>,
    shared: Arc<Shared>,
    incarnation: u64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for MessageProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageProbe")
            .field("name", &self.messenger.name())
            .finish()
    }
}

/// Parses `NAME:CLASS[:TIMEOUT_MS]` for `interlink node --messenger`.
pub fn parse_spec(s: &str) -> Result<MessengerConfig, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 || parts[0].is_empty() {
        return Err(format!(
            "--messenger {s:?}: expected NAME:CLASS[:TIMEOUT_MS]"
        ));
    }
    let class: BandwidthClass = parts[1].parse()?;
    let mut cfg = MessengerConfig::new(parts[0], class);
    if let Some(ms) = parts.get(2) {
        let ms: u64 = ms
            .parse()
            .map_err(|e| format!("--messenger {s:?}: timeout: {e}"))?;
        cfg.partner_timeout = Duration::from_millis(ms);
    }
    Ok(cfg)
}

impl MessageProbe {
    /// Starts the messenger and installs the probe's handlers.
    pub fn start(
        manager: &Arc<Manager>,
        cfg: MessengerConfig,
    ) -> Result<MessageProbe, MessagingError> {
        let messenger = Arc::new(Messenger::start(manager, cfg)?);
        let shared = Arc::new(Shared {
            stats: Mutex::new(MessageProbeStats::default()),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3)
                    .map_err(|e| MessagingError::Config(format!("latency histogram: {e}")))?,
            ),
            peer_incarnation: Mutex::new(0),
            stop: AtomicBool::new(false),
            flood: AtomicBool::new(false),
        });
        let s = shared.clone();
        messenger.on(STREAM, move |msg: &Message<'_>, _: &mut Outbox| {
            let word = |i: usize| {
                msg.payload
                    .get(i * 8..i * 8 + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            };
            let (Some(inc), Some(seq)) = (word(0), word(1)) else {
                return;
            };
            let mut peer = s.peer_incarnation.lock();
            let mut st = s.stats.lock();
            if *peer != inc {
                *peer = inc;
                st.last_seq = 0;
            }
            st.received += 1;
            if seq <= st.last_seq {
                st.duplicates += 1;
            } else {
                st.gaps += seq - st.last_seq - 1;
                st.last_seq = seq;
            }
        })?;
        messenger.on(ECHO, |msg: &Message<'_>, out: &mut Outbox| {
            if let Some(call) = msg.call {
                if let Err(e) = out.respond(call, msg.payload) {
                    tracing::warn!(error = %e, "echo response");
                }
            }
        })?;
        let s = shared.clone();
        messenger.on(HOLD, move |msg: &Message<'_>, _: &mut Outbox| {
            if msg.call.is_some() {
                s.stats.lock().holding += 1;
            }
        })?;
        let s = shared.clone();
        messenger.on(FLOOD, move |_: &Message<'_>, _: &mut Outbox| {
            s.stats.lock().flood_received += 1;
        })?;
        Ok(MessageProbe {
            messenger,
            shared,
            incarnation: rand::random::<u64>() | 1,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// The messenger (for direct use).
    pub fn messenger(&self) -> &Messenger {
        &self.messenger
    }

    /// Current statistics.
    pub fn stats(&self) -> MessageProbeStats {
        let mut st = self.shared.stats.lock().clone();
        st.messenger = self.messenger.stats();
        st.flooding = self.shared.flood.load(Ordering::Relaxed);
        let h = self.shared.latency.lock();
        if !h.is_empty() {
            st.call_p50_us = h.value_at_quantile(0.5) as f64;
            st.call_p99_us = h.value_at_quantile(0.99) as f64;
        }
        st
    }

    fn spawn(&self, what: &str, f: impl FnOnce() + Send + 'static) {
        match std::thread::Builder::new()
            .name(format!("il-mprobe-{what}"))
            .spawn(f)
        {
            Ok(t) => self.threads.lock().push(t),
            Err(e) => tracing::error!(error = %e, "message probe thread"),
        }
    }

    /// Queues `count` numbered stream messages of `size` bytes (at least 16) in `class`, each
    /// with an ack callback, from a background thread.
    pub fn stream(&self, count: u64, size: usize, class: Class) {
        let m = self.messenger.clone();
        let s = self.shared.clone();
        let inc = self.incarnation;
        let size = size.clamp(16, m.max_payload());
        s.stats.lock().stream_running = true;
        self.spawn("stream", move || {
            let mut buf = vec![0u8; size];
            let start = s.stats.lock().stream_sent;
            for seq in start + 1..=start + count {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                buf[..8].copy_from_slice(&inc.to_le_bytes());
                buf[8..16].copy_from_slice(&seq.to_le_bytes());
                let head = Head {
                    code: STREAM,
                    flags: 0,
                    class,
                    notify: false,
                };
                loop {
                    let s2 = s.clone();
                    let r = m.send_acked(head, &buf, move |status| {
                        let mut st = s2.stats.lock();
                        match status {
                            AckStatus::Acked => st.stream_acked += 1,
                            _ => st.stream_inoperative += 1,
                        }
                    });
                    match r {
                        Ok(_) => break,
                        Err(MessagingError::QueueFull { .. }) => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "stream send");
                            std::thread::sleep(Duration::from_millis(5));
                            if s.stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
                s.stats.lock().stream_sent = seq;
            }
            s.stats.lock().stream_running = false;
        });
    }

    /// Makes `count` synchronous echo calls of `size` bytes one after another from a background
    /// thread, recording round trips.
    pub fn calls(&self, count: u64, size: usize) {
        let m = self.messenger.clone();
        let s = self.shared.clone();
        let size = size.min(m.max_payload());
        s.stats.lock().calls_running = true;
        self.spawn("calls", move || {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            for _ in 0..count {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let r = m.call_timeout(Head::control(ECHO), &payload, Duration::from_secs(30));
                let dt = t0.elapsed();
                let mut st = s.stats.lock();
                match r {
                    Ok(v) if v == payload => {
                        st.calls_ok += 1;
                        drop(st);
                        let us = (dt.as_micros() as u64).clamp(1, 60_000_000);
                        let _ = s.latency.lock().record(us);
                    }
                    Err(CallError::Failed(CallFailure::PartnerInoperative)) => {
                        st.calls_inoperative += 1
                    }
                    Ok(_) | Err(_) => st.calls_failed += 1,
                }
            }
            s.stats.lock().calls_running = false;
        });
    }

    /// Makes `count` asynchronous calls the partner holds without answering.
    pub fn hold(&self, count: u64) {
        for i in 0..count {
            let s = self.shared.clone();
            let r = self
                .messenger
                .call_async(Head::control(HOLD), &i.to_le_bytes(), move |r| {
                    let mut st = s.stats.lock();
                    st.held_pending = st.held_pending.saturating_sub(1);
                    match r {
                        Err(CallFailure::PartnerInoperative) => st.calls_inoperative += 1,
                        _ => st.calls_failed += 1,
                    }
                });
            match r {
                Ok(_) => self.shared.stats.lock().held_pending += 1,
                Err(e) => tracing::warn!(error = %e, "held call"),
            }
        }
    }

    /// Turns the bulk flood (maximum-size bulk messages as fast as the window allows) on or
    /// off.
    pub fn flood(&self, on: bool) {
        let was = self.shared.flood.swap(on, Ordering::Relaxed);
        if !on || was {
            return;
        }
        let m = self.messenger.clone();
        let s = self.shared.clone();
        self.spawn("flood", move || {
            let payload = vec![0xa5u8; m.max_payload()];
            while s.flood.load(Ordering::Relaxed) && !s.stop.load(Ordering::Relaxed) {
                match m.send(Head::bulk(FLOOD), &payload) {
                    Ok(_) => s.stats.lock().flood_sent += 1,
                    Err(MessagingError::QueueFull { .. }) => {
                        std::thread::sleep(Duration::from_micros(100))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                // Keep the queue bounded: the flood saturates the window, not memory.
                while m.stats().queued > 256 && s.flood.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
    }

    /// Applies a control-socket command (`{"stream": {"count", "size", "class"}}`,
    /// `{"calls": {"count", "size"}}`, `{"hold": N}`, `{"flood": bool}`) and returns the stats.
    pub fn command(&self, command: &serde_json::Value) -> MessageProbeStats {
        if let Some(s) = command.get("stream") {
            let count = s.get("count").and_then(|v| v.as_u64()).unwrap_or(1000);
            let size = s.get("size").and_then(|v| v.as_u64()).unwrap_or(64) as usize;
            let class = match s.get("class").and_then(|v| v.as_str()) {
                Some("control") => Class::Control,
                _ => Class::Bulk,
            };
            self.stream(count, size, class);
        }
        if let Some(c) = command.get("calls") {
            let count = c.get("count").and_then(|v| v.as_u64()).unwrap_or(100);
            let size = c.get("size").and_then(|v| v.as_u64()).unwrap_or(32) as usize;
            self.calls(count, size);
        }
        if let Some(n) = command.get("hold").and_then(|v| v.as_u64()) {
            self.hold(n);
        }
        if let Some(on) = command.get("flood").and_then(|v| v.as_bool()) {
            self.flood(on);
        }
        self.stats()
    }
}

impl Drop for MessageProbe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.flood.store(false, Ordering::Relaxed);
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                tracing::error!("message probe thread panicked");
            }
        }
    }
}
