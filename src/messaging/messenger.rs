//! The messaging driver: binds a [`Window`] to a manager client.
//!
//! The client has one RC queue pair and two regions: `msg-rx`, the receive ring the partner
//! writes frames into (remote write only), and `msg-tx`, the transmit ring frames are built in
//! (no remote rights). The partner's `msg-rx` descriptor arrives in the manager's PeerInfo:
//! those are the named resources (F3.2), so a frame goes out as one RDMA WRITE with immediate
//! into the slot its sequence number names, with no per-message negotiation. Acks and naks
//! are zero-length WRITEs with immediate.
//!
//! Threads: a driver thread polls the completion queues, runs handlers and timers, and
//! follows the manager's events (a failover suspends the window and resumes it on the new
//! link, where unacknowledged frames are re-sent). API calls queue under a lock and transmit
//! at once from the caller's thread. A synchronous call busy-polls for its response for a
//! while (like perftest), then blocks.

use super::error::{MessagingError, Result};
use super::outbox::{AckStatus, CallFailure, CallId, Handler, Head, Message, MessageId, Outbox};
use super::window::{Transmit, Window, WindowConfig, WindowStats};
use super::wire::Imm;
use crate::fabric::{
    Access, BusyPoll, Completion, MemoryRegion, ProviderKind, RecvRequest, RegionDescriptor,
    SendOp, SendRequest,
};
use crate::manager::{
    BandwidthClass, ClientEvent, ClientHandle, ClientQp, ClientSpec, Connection, LinkId, Manager,
    SuspendReason, TermMismatch,
};
use crate::recorded_metrics::MessagingMetrics;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Purpose of the receive ring region.
pub const RX_REGION: &str = "msg-rx";
/// The rights of the receive ring: the partner RDMA WRITEs frames into it (never reads it).
pub const RX_REGION_ACCESS: Access = Access::LOCAL_WRITE.union(Access::REMOTE_WRITE);
/// Purpose of the transmit ring region.
pub const TX_REGION: &str = "msg-tx";
const WR_SIGNAL: u64 = 1 << 63;
const POLL_BATCH: usize = 64;
/// How long the driver sleeps at a time while a synchronous call busy-polls in its place.
const STEP_ASIDE: Duration = Duration::from_micros(500);
/// Longest a pure ack is held back for a frame to carry it instead (delayed ack).
const ACK_DELAY: Duration = Duration::from_micros(200);

mod waiting;

/// How a messenger runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessengerConfig {
    /// Manager client name (the partner runs a messenger of the same name).
    pub name: String,
    /// Bandwidth class for placement.
    pub class: BandwidthClass,
    /// Window parameters: the partner's messenger must use the same `slots`,
    /// `control_slots`, `frame_size` and `max_payload` (else both are refused at connect:
    /// [`MessagingError::Refused`]).
    pub window: WindowConfig,
    /// Without a connection for this long, the partner is declared failed: pending calls and
    /// notified messages complete with "partner inoperative".
    pub partner_timeout: Duration,
    /// After activity, the driver busy-polls this long before it blocks (latency vs. CPU).
    pub spin: Duration,
    /// How long a busy poll (the driver's and a synchronous call's) polls back to back before
    /// it yields the CPU between polls: the [`BusyPoll`] setting, `None`
    /// for the link's provider's default. Default:
    /// [`BusyPoll::CLIENT_PURE`] (20 µs, and why).
    #[serde(default = "BusyPoll::client_default")]
    pub pure_spin: Option<Duration>,
    /// The deadline of the blocking calls without one ([`Messenger::call`],
    /// [`Messenger::wait_connected`]); their `_timeout` variants take their own.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: Duration,
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}

impl MessengerConfig {
    /// Defaults: the default window with a 1 s retransmission backstop (frames are only lost
    /// with a link, which the manager reports), a 5 s partner timeout, 100 µs of spinning (the
    /// first 20 µs without yielding) and a 10 s call timeout.
    pub fn new(name: impl Into<String>, class: BandwidthClass) -> MessengerConfig {
        MessengerConfig {
            name: name.into(),
            class,
            window: WindowConfig {
                retransmit_after: Duration::from_secs(1),
                ..WindowConfig::default()
            },
            partner_timeout: Duration::from_secs(5),
            spin: Duration::from_micros(100),
            pure_spin: BusyPoll::client_default(),
            call_timeout: default_call_timeout(),
        }
    }
}

/// Why a synchronous call returned no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call completed without a response.
    #[error("call failed: {0}")]
    Failed(CallFailure),
    /// No response within the timeout (a late response is discarded).
    #[error("call: no response within {0:?}")]
    Timeout(Duration),
    /// The call could not be queued.
    #[error(transparent)]
    Messaging(#[from] MessagingError),
}

/// A message handler in the dispatch table: gets the message and the outbox (to respond or
/// send). It runs on whichever thread is polling; it must not block, and must not call the
/// [`Messenger`] (use the outbox).
pub type MessageHandler = Box<dyn FnMut(&Message<'_>, &mut Outbox) + Send>;
type CallOutcome = std::result::Result<Vec<u8>, CallFailure>;
type AckCallback = Box<dyn FnOnce(AckStatus) + Send>;
type ResponseCallback = Box<dyn FnOnce(std::result::Result<&[u8], CallFailure>) + Send>;

/// Counters and state of a messenger.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessengerStats {
    /// Whether a connection is up now.
    pub connected: bool,
    /// Its link.
    pub link: Option<LinkId>,
    /// Connections established (the first and every failover).
    pub connections: u64,
    /// Times the partner was declared failed.
    pub partner_failures: u64,
    /// Failed send completions while connected.
    pub send_errors: u64,
    /// Frames in flight.
    pub in_flight: usize,
    /// Messages waiting for frame space.
    pub queued: usize,
    /// Calls waiting for a response.
    pub pending_calls: usize,
    /// The window's counters.
    pub window: WindowStats,
}

struct Callbacks {
    table: Vec<Option<MessageHandler>>,
    acks: HashMap<MessageId, AckCallback>,
    responses: HashMap<CallId, ResponseCallback>,
}

impl Handler for Callbacks {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Outbox) -> bool {
        match self.table.get_mut(usize::from(msg.code)) {
            Some(Some(h)) => {
                h(msg, out);
                true
            }
            _ => false,
        }
    }
    fn on_ack(&mut self, id: MessageId, status: AckStatus, _out: &mut Outbox) {
        if let Some(cb) = self.acks.remove(&id) {
            cb(status);
        }
    }
    fn on_response(
        &mut self,
        call: CallId,
        result: std::result::Result<&[u8], CallFailure>,
        _out: &mut Outbox,
    ) {
        if let Some(cb) = self.responses.remove(&call) {
            cb(result);
        }
    }
}

struct Link {
    conn: Connection,
    qp: ClientQp,
    tx: MemoryRegion,
    rx: MemoryRegion,
    partner_rx: RegionDescriptor,
    sends_outstanding: usize,
    max_send: usize,
    broken: bool,
    /// The queue pair's [`QueuePair::epoch`](crate::fabric::QueuePair::epoch) when activated.
    epoch: u64,
}

struct State {
    window: Window,
    callbacks: Callbacks,
    link: Option<Link>,
    transmits: Vec<Transmit>,
    posts: Vec<SendRequest>,
    recvs: Vec<RecvRequest>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    /// A pure ack held back (delayed ack): its immediate, and since when.
    held_ack: Option<(u32, Instant)>,
    /// Frames received since this side last transmitted (a frame or a signal).
    rx_since_tx: u32,
    suspended_since: Option<Instant>,
    declared_failed: bool,
    connections: u64,
    partner_failures: u64,
    send_errors: u64,
    /// The partner's messenger disagrees on a term ([`MessagingError::Refused`]).
    refused: Option<TermMismatch>,
}

struct Shared {
    name: String,
    cfg: MessengerConfig,
    handle: ClientHandle,
    state: Mutex<State>,
    stop: AtomicBool,
    /// Synchronous calls busy-polling the completion queues now (the driver steps aside).
    pollers: AtomicUsize,
    /// The driver thread (to wake it when a call stops busy-polling).
    driver: OnceLock<std::thread::Thread>,
    /// Whether the current link's device is a verbs one (the provider of [`Shared::busy_poll`]).
    verbs: AtomicBool,
    metrics: MessagingMetrics,
}

/// A synchronous call's busy-polling phase. While one exists the driver thread sleeps instead
/// of polling the same queues alongside it (competing for the state lock and for a CPU,
/// which matters where CPUs are few and the fabric's own threads need them); the caller's
/// [`pump`] does everything the driver's would. The driver still follows manager events and
/// the partner timeout meanwhile.
struct Polling<'a>(&'a Shared);

impl<'a> Polling<'a> {
    fn start(shared: &'a Shared) -> Polling<'a> {
        shared.pollers.fetch_add(1, Ordering::AcqRel);
        Polling(shared)
    }

    /// The call stops polling without its response: wake the driver to take over at once.
    fn hand_over(self) {
        let shared = self.0;
        drop(self);
        if let Some(t) = shared.driver.get() {
            t.unpark();
        }
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.pollers.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// Set while this thread holds a messenger's state (handlers and callbacks run then).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

struct Held<'a> {
    guard: MutexGuard<'a, State>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Shared {
    /// The busy-polling policy for the current link's provider.
    fn busy_poll(&self) -> BusyPoll {
        let provider = if self.verbs.load(Ordering::Relaxed) {
            ProviderKind::Verbs
        } else {
            ProviderKind::Soft
        };
        BusyPoll::configured(provider, self.cfg.pure_spin)
    }

    fn lock(&self, code: u8) -> Result<Held<'_>> {
        if HOLDING.with(Cell::get) {
            return Err(MessagingError::Reentrant {
                code,
                name: self.name.clone(),
            });
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(MessagingError::Stopped {
                name: self.name.clone(),
            });
        }
        let guard = self.state.lock();
        HOLDING.with(|h| h.set(true));
        Ok(Held { guard })
    }

    /// [`lock`](Self::lock) for sending: refused while the partner's messenger disagrees on
    /// a term.
    fn lock_for_traffic(&self, code: u8) -> Result<Held<'_>> {
        let held = self.lock(code)?;
        if let Some(mismatch) = &held.guard.refused {
            return Err(MessagingError::Refused {
                name: self.name.clone(),
                mismatch: mismatch.clone(),
            });
        }
        Ok(held)
    }

    fn try_lock(&self) -> Option<Held<'_>> {
        if HOLDING.with(Cell::get) {
            return None;
        }
        let guard = self.state.try_lock()?;
        HOLDING.with(|h| h.set(true));
        Some(Held { guard })
    }

    fn force_lock(&self) -> Held<'_> {
        let guard = self.state.lock();
        HOLDING.with(|h| h.set(true));
        Held { guard }
    }
}

/// A running messaging endpoint: one manager client, one window, a dispatch table. Dropping
/// it stops the driver and closes the client.
pub struct Messenger {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The manager this client runs on: kept alive while the client lives (every client
    /// holds what it needs; dropped last).
    _manager: Arc<Manager>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl Messenger {
    /// Registers the messaging client with the manager and starts its driver. Handlers may be
    /// added before traffic arrives with [`Messenger::on`]; messages for a code without one
    /// are counted and dropped (calls get [`CallFailure::NoHandler`]).
    ///
    /// Like every client of this crate it takes the manager as `&Arc<Manager>` and keeps a
    /// clone: the manager runs at least as long as the client.
    pub fn start(manager: &Arc<Manager>, cfg: MessengerConfig) -> Result<Messenger> {
        let session = loop {
            let s: u32 = rand::random();
            if s != 0 {
                break s;
            }
        };
        let window = Window::new(cfg.window.clone(), session)?;
        let ring = cfg.window.ring_len();
        let depth = 2 * u32::from(cfg.window.slots) + 32;
        let mut spec = ClientSpec::new(cfg.name.clone(), cfg.class, 1)
            .region(RX_REGION, ring, RX_REGION_ACCESS)
            .region(TX_REGION, ring, Access::NONE)
            .term("window slots", cfg.window.slots.into())
            .term("control slots", cfg.window.control_slots.into())
            .term("frame size", cfg.window.frame_size.into())
            .term("max payload", cfg.window.max_payload.into());
        spec.qp_capacity.max_send_wr = depth;
        spec.qp_capacity.max_recv_wr = depth;
        spec.qp_capacity.max_inline_data = spec.qp_capacity.max_inline_data.min(256);
        let handle = manager
            .register(spec)
            .map_err(|source| MessagingError::Register {
                name: cfg.name.clone(),
                source,
            })?;
        let mut table = Vec::with_capacity(256);
        table.resize_with(256, || None);
        let state = State {
            window,
            callbacks: Callbacks {
                table,
                acks: HashMap::new(),
                responses: HashMap::new(),
            },
            link: None,
            transmits: Vec::with_capacity(usize::from(cfg.window.slots) * 2),
            posts: Vec::with_capacity(usize::from(cfg.window.slots) * 2),
            recvs: Vec::with_capacity(POLL_BATCH),
            completions: Vec::with_capacity(POLL_BATCH),
            scratch: vec![0u8; usize::from(cfg.window.frame_size)],
            held_ack: None,
            rx_since_tx: 0,
            refused: None,
            suspended_since: Some(Instant::now()),
            declared_failed: false,
            connections: 0,
            partner_failures: 0,
            send_errors: 0,
        };
        let name = cfg.name.clone();
        let shared = Arc::new(Shared {
            name: name.clone(),
            cfg,
            handle,
            state: Mutex::new(state),
            stop: AtomicBool::new(false),
            pollers: AtomicUsize::new(0),
            driver: OnceLock::new(),
            verbs: AtomicBool::new(false),
            metrics: MessagingMetrics::new(manager.config().node_id, &name),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("il-msg-{name}"))
            .spawn(move || {
                crate::fabric::prime_thread_parking();
                drive(&s)
            })
            .map_err(|source| MessagingError::Spawn {
                name: name.clone(),
                source,
            })?;
        let _ = shared.driver.set(thread.thread().clone());
        Ok(Messenger {
            shared,
            thread: Some(thread),
            _manager: manager.clone(),
        })
    }

    /// The client name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest payload one message may carry (the window's `max_payload`).
    pub fn max_payload(&self) -> usize {
        usize::from(self.shared.cfg.window.max_payload)
    }

    /// Installs (or replaces) the handler for function `code` (1..=255).
    pub fn on(
        &self,
        code: u8,
        handler: impl FnMut(&Message<'_>, &mut Outbox) + Send + 'static,
    ) -> Result<()> {
        if code == super::wire::RESPONSE_CODE {
            return Err(MessagingError::Queue {
                code,
                reason: "function code 0 is reserved for responses".into(),
            });
        }
        let mut st = self.shared.lock_for_traffic(code)?;
        st.callbacks.table[usize::from(code)] = Some(Box::new(handler));
        Ok(())
    }

    /// Sends a message (a copy of `payload`).
    pub fn send(&self, head: Head, payload: &[u8]) -> Result<MessageId> {
        self.with_outbox(head.code, |out| out.send(head, payload))?
    }

    /// Sends a message and runs `on_ack` exactly once with its fate: acked (the partner's
    /// handler was invoked) or partner inoperative.
    pub fn send_acked(
        &self,
        head: Head,
        payload: &[u8],
        on_ack: impl FnOnce(AckStatus) + Send + 'static,
    ) -> Result<MessageId> {
        let mut st = self.shared.lock_for_traffic(head.code)?;
        let id = st.window.outbox().send(head.notify(), payload)?;
        st.callbacks.acks.insert(id, Box::new(on_ack));
        flush(&mut st, &self.shared);
        Ok(id)
    }

    /// Sends a message built in place by `build` when frame space is available (F3.4).
    pub fn build(
        &self,
        head: Head,
        build: impl FnMut(&mut [u8]) -> Option<usize> + Send + 'static,
    ) -> Result<MessageId> {
        self.with_outbox(head.code, |out| out.build(head, build))?
    }

    /// Queues several messages under one lock and transmits them together (aggregation).
    pub fn with_outbox<R>(&self, code: u8, f: impl FnOnce(&mut Outbox) -> R) -> Result<R> {
        let mut st = self.shared.lock_for_traffic(code)?;
        let r = f(st.window.outbox());
        flush(&mut st, &self.shared);
        Ok(r)
    }

    /// An asynchronous call: `on_response` runs exactly once, with the response bytes or the
    /// reason there is none (partner inoperative, no handler).
    pub fn call_async(
        &self,
        head: Head,
        payload: &[u8],
        on_response: impl FnOnce(std::result::Result<&[u8], CallFailure>) + Send + 'static,
    ) -> Result<CallId> {
        let mut st = self.shared.lock_for_traffic(head.code)?;
        let (_, call) = st.window.outbox().call(head, payload)?;
        let metrics = &self.shared.metrics;
        metrics.calls.increment(1);
        let (latency, failures) = (metrics.call_latency.clone(), metrics.call_failures.clone());
        let started = Instant::now();
        st.callbacks.responses.insert(
            call,
            Box::new(move |r: std::result::Result<&[u8], CallFailure>| {
                match &r {
                    Ok(_) => latency.record(started.elapsed()),
                    Err(_) => failures.increment(1),
                }
                on_response(r)
            }),
        );
        flush(&mut st, &self.shared);
        Ok(call)
    }

    /// A synchronous call: sends `payload` to function `head.code` and waits for the
    /// response, at most [`MessengerConfig::call_timeout`]. Refused inside a handler (it
    /// would wait on itself).
    pub fn call(&self, head: Head, payload: &[u8]) -> std::result::Result<Vec<u8>, CallError> {
        self.call_timeout(head, payload, self.shared.cfg.call_timeout)
    }

    /// [`call`](Messenger::call) waiting at most `timeout` for the response.
    pub fn call_timeout(
        &self,
        head: Head,
        payload: &[u8],
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, CallError> {
        let slot: Arc<Mutex<Option<CallOutcome>>> = Arc::new(Mutex::new(None));
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let s = slot.clone();
        self.call_async(head, payload, move |r| {
            *s.lock() = Some(r.map(<[u8]>::to_vec));
            let _ = tx.try_send(());
        })?;
        let start = Instant::now();
        let deadline = start + timeout;
        let spin_until = start + self.shared.cfg.spin.max(Duration::from_micros(200));
        let mut polling = Some(Polling::start(&self.shared));
        let busy_poll = self.shared.busy_poll();
        loop {
            if let Some(r) = slot.lock().take() {
                return r.map_err(CallError::Failed);
            }
            let now = Instant::now();
            if now >= deadline {
                self.shared.metrics.call_failures.increment(1);
                return Err(CallError::Timeout(timeout));
            }
            if now < spin_until {
                // Busy-poll the completion queues from this thread, like perftest.
                if let Some(mut st) = self.shared.try_lock() {
                    if pump(&mut st, &self.shared) {
                        continue; // something arrived: look at the slot before yielding
                    }
                }
                busy_poll.round(start, now);
            } else {
                if let Some(p) = polling.take() {
                    p.hand_over();
                }
                let _ = rx.recv_timeout((deadline - now).min(Duration::from_millis(5)));
            }
        }
    }

    /// Declares the partner failed now (e.g. the failover monitor decided so): every pending
    /// call and notified message completes with "partner inoperative" exactly once, and a new
    /// conversation starts.
    pub fn declare_partner_failed(&self) -> Result<()> {
        let mut st = self.shared.lock(0)?;
        declare_failed(&mut st, &self.shared.name, "declared by the application");
        flush(&mut st, &self.shared);
        Ok(())
    }

    /// Current counters.
    ///
    /// Inside a handler or callback of this messenger (which run with its state locked) it
    /// returns default values instead of waiting on itself.
    pub fn stats(&self) -> MessengerStats {
        if HOLDING.with(Cell::get) {
            tracing::warn!(client = %self.shared.name, "Messenger::stats called from a handler; use the outbox");
            return MessengerStats::default();
        }
        let st = self.shared.state.lock();
        let window = st.window.stats().clone();
        MessengerStats {
            connected: st.link.as_ref().is_some_and(|l| !l.broken),
            link: st.link.as_ref().map(|l| l.conn.link),
            connections: st.connections,
            partner_failures: st.partner_failures,
            send_errors: st.send_errors,
            in_flight: st.window.in_flight(),
            queued: st.window.queued(),
            pending_calls: st.window.pending_calls(),
            window,
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(client = %self.shared.name, "messaging driver thread panicked");
            }
        }
    }
}

/// The driver thread.
fn drive(shared: &Arc<Shared>) {
    let mut last_activity = Instant::now();
    let mut waited = Vec::with_capacity(POLL_BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.pollers.load(Ordering::Acquire) > 0
            && waited.is_empty()
            && shared.handle.events().is_empty()
        {
            // A synchronous call busy-polls in our place (see `Polling`): step aside. It
            // wakes us when it stops polling without its response.
            std::thread::park_timeout(STEP_ASIDE);
            if let Some(mut st) = shared.try_lock() {
                check_partner(&mut st, shared);
            }
            last_activity = Instant::now();
            continue;
        }
        let mut active = false;
        {
            let mut st = shared.force_lock();
            while let Ok(ev) = shared.handle.events().try_recv() {
                on_event(&mut st, shared, ev);
                active = true;
            }
            for c in waited.drain(..) {
                receive(&mut st, shared, c);
                active = true;
            }
            active |= pump(&mut st, shared);
            check_partner(&mut st, shared);
        }
        let now = Instant::now();
        if active {
            last_activity = now;
            continue;
        }
        if now.duration_since(last_activity) < shared.cfg.spin {
            shared.busy_poll().round(last_activity, now);
            continue;
        }
        // Idle: block on the receive queue (or sleep when there is no link), briefly, so
        // manager events and timers are still seen promptly.
        let cq = {
            let mut st = shared.force_lock();
            if release_ack(&mut st, shared, true) {
                last_activity = Instant::now();
                continue; // the held ack went out instead of waiting for a frame
            }
            st.link.as_ref().map(|l| l.qp.recv_cq().clone())
        };
        match cq {
            Some(cq) => {
                if let Err(e) = cq.wait(&mut waited, POLL_BATCH, Duration::from_millis(2)) {
                    tracing::debug!(client = %shared.name, error = %e, "wait on receive queue");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None => {
                if let Ok(ev) = shared
                    .handle
                    .events()
                    .recv_timeout(Duration::from_millis(5))
                {
                    let mut st = shared.force_lock();
                    on_event(&mut st, shared, ev);
                }
            }
        }
    }
    let mut st = shared.force_lock();
    st.link = None;
    st.window.handle_link_down();
    let State {
        window, callbacks, ..
    } = &mut *st;
    window.handle_partner_failed(callbacks);
}

/// Polls both completion queues, runs timers, transmits. Returns whether anything happened.
fn pump(st: &mut State, shared: &Shared) -> bool {
    let Some(link) = st.link.as_ref() else {
        return false;
    };
    if link.broken {
        return false;
    }
    let cq = link.qp.recv_cq().clone();
    let mut completions = std::mem::take(&mut st.completions);
    if let Err(e) = cq.poll(&mut completions, POLL_BATCH) {
        tracing::warn!(client = %shared.name, error = %e, "poll receive queue");
    }
    let active = !completions.is_empty();
    for c in completions.drain(..) {
        receive(st, shared, c);
    }
    st.completions = completions;
    let now = Instant::now();
    if st.window.poll_timeout().is_some_and(|t| now >= t) {
        st.window.handle_timeout(now);
    }
    let sent = flush(st, shared);
    active || sent
}

/// One receive completion: a frame or a signal. Reposts the receive.
fn receive(st: &mut State, shared: &Shared, c: Completion) {
    let Some(link) = st.link.as_mut() else {
        return;
    };
    if link.broken || c.qpn != link.qp.queue_pair().qpn() {
        return;
    }
    if !c.status.is_ok() {
        link_failed(st, shared, &format!("receive completion: {:?}", c.status));
        return;
    }
    let now = Instant::now();
    let fs = usize::from(shared.cfg.window.frame_size);
    let slots = u32::from(shared.cfg.window.slots);
    let State {
        window,
        callbacks,
        scratch,
        link,
        recvs,
        rx_since_tx,
        ..
    } = st;
    let Some(link) = link.as_mut() else {
        return;
    };
    match c.imm.map(Imm::decode) {
        Some(Ok(Imm::Frame { slot, tag })) if slot < slots => {
            *rx_since_tx = rx_since_tx.saturating_add(1);
            let len = match c.byte_len as usize {
                0 => fs,
                n => n.min(fs),
            };
            let offset = slot as usize * fs;
            match link.rx.read(offset, &mut scratch[..len]) {
                Ok(()) if !session_tag_matches(&scratch[..len], tag) => {
                    // A newer conversation's frame overwrote the slot before this completion
                    // was polled; it has its own completion further on (see handle_frame).
                    tracing::debug!(client = %shared.name, slot, "slot rewritten by a newer conversation; skipped");
                }
                Ok(()) => {
                    if let Err(e) = window.handle_frame(now, &scratch[..len], callbacks) {
                        tracing::debug!(client = %shared.name, error = %e, "frame discarded");
                    }
                }
                Err(e) => tracing::warn!(client = %shared.name, error = %e, "read frame"),
            }
        }
        Some(Ok(Imm::Frame { slot, .. })) => {
            tracing::warn!(client = %shared.name, slot, "frame names a slot outside the ring; ignored");
        }
        Some(Ok(_)) => {
            if let Some(imm) = c.imm {
                let _ = window.handle_signal(now, imm, callbacks);
            }
        }
        Some(Err(e)) => tracing::warn!(client = %shared.name, error = %e, "bad immediate"),
        None => tracing::warn!(client = %shared.name, "receive completion without immediate"),
    }
    // The handler may have failed the link meanwhile (it cannot: handlers only queue).
    let Ok(local) = link.rx.slice(0, 0) else {
        return;
    };
    recvs.push(RecvRequest {
        wr_id: c.wr_id,
        local,
    });
    if let Err(e) = link.qp.post_recv_all(recvs) {
        recvs.clear();
        link_failed_inner(st, shared, &format!("post receive: {e}"));
    }
}

/// Whether the frame in `bytes` belongs to the sender conversation whose low byte the
/// immediate carried (a frame too short to tell goes to the window, which rejects it).
fn session_tag_matches(bytes: &[u8], tag: u8) -> bool {
    bytes.get(8).is_none_or(|b| *b == tag)
}

/// Frames received without this side transmitting after which a pure ack goes out at once.
fn ack_every(shared: &Shared) -> u32 {
    (u32::from(shared.cfg.window.slots) / 4).max(1)
}

/// Reaps send completions, then transmits whatever the window has, within the send queue's
/// room; sends a held-back ack when it is due. Returns whether anything was posted or
/// completed.
fn flush(st: &mut State, shared: &Shared) -> bool {
    let active = transmit(st, shared);
    let active = release_ack(st, shared, false) || active;
    shared
        .metrics
        .record_window(st.window.stats(), st.window.in_flight());
    active
}

/// Sends the pure ack held back by [`transmit`] once it has waited [`ACK_DELAY`] or enough
/// frames arrived meanwhile, or at once with `force` (the driver is about to block). Returns
/// whether it was posted.
fn release_ack(st: &mut State, shared: &Shared, force: bool) -> bool {
    let Some((imm, since)) = st.held_ack else {
        return false;
    };
    if !force && since.elapsed() < ACK_DELAY && st.rx_since_tx < ack_every(shared) {
        return false;
    }
    let State {
        window,
        link,
        posts,
        held_ack,
        rx_since_tx,
        ..
    } = st;
    let current = matches!(Imm::decode(imm), Ok(Imm::Ack { tag, .. })
        if window.peer_session().is_some_and(|p| p as u8 == tag));
    let Some(l) = link.as_mut().filter(|l| !l.broken && current) else {
        *held_ack = None; // no link, or the conversation was reset meanwhile
        return false;
    };
    if l.sends_outstanding >= l.max_send {
        return false; // the send queue is full: later
    }
    *held_ack = None;
    *rx_since_tx = 0;
    match l.tx.slice(0, 0) {
        Ok(buf) => posts.push(SendRequest::new(
            WR_SIGNAL,
            SendOp::WriteImm(l.partner_rx.at(0), imm),
            buf,
        )),
        Err(e) => {
            tracing::error!(client = %shared.name, error = %e, "transmit buffer");
            return false;
        }
    }
    if let Err(e) = l.qp.post_send_all(posts) {
        posts.clear();
        link_failed_inner(st, shared, &format!("post send: {e}"));
        return true;
    }
    l.sends_outstanding += 1;
    true
}

/// Reaps send completions, then transmits whatever the window has, within the send queue's
/// room. A pure ack is held back (delayed ack) while fewer than [`ack_every`] frames arrived
/// since this side last transmitted: a frame sent meanwhile carries the same or a later ack
/// in its header, so a call's response is not followed by an ack of its own when the next
/// call follows at once (each post is a system call, and on Soft-RoCE protocol work on the
/// critical path). [`release_ack`] sends it otherwise. Naks always go out at once.
fn transmit(st: &mut State, shared: &Shared) -> bool {
    let mut active = reap_sends(st, shared);
    let ring_len = shared.cfg.window.ring_len();
    let ack_every = ack_every(shared);
    loop {
        let now = Instant::now();
        let State {
            window,
            callbacks,
            link,
            transmits,
            posts,
            held_ack,
            rx_since_tx,
            ..
        } = st;
        let Some(l) = link.as_mut() else {
            return active;
        };
        if l.broken {
            return active;
        }
        let room = l.max_send.saturating_sub(l.sends_outstanding);
        if room == 0 {
            return active;
        }
        transmits.clear();
        let filled = l.tx.fill(0, ring_len, |ring| {
            while transmits.len() < room {
                match window.poll_transmit(now, ring, callbacks) {
                    Some(t) => transmits.push(t),
                    None => break,
                }
            }
        });
        if let Err(e) = filled {
            tracing::error!(client = %shared.name, error = %e, "transmit ring");
            return active;
        }
        if transmits.is_empty() {
            return active;
        }
        let full = transmits.len() == room;
        let mut deferred = false;
        for t in transmits.iter() {
            let req = match *t {
                Transmit::Frame {
                    seq,
                    offset,
                    len,
                    imm,
                    ..
                } => l.tx.slice(offset, len).map(|buf| {
                    SendRequest::new(
                        seq,
                        SendOp::WriteImm(l.partner_rx.at(offset as u64), imm),
                        buf,
                    )
                }),
                Transmit::Signal { imm } => {
                    if *rx_since_tx < ack_every && matches!(Imm::decode(imm), Ok(Imm::Ack { .. })) {
                        *held_ack = Some((imm, held_ack.map_or(now, |(_, since)| since)));
                        deferred = true;
                        continue;
                    }
                    l.tx.slice(0, 0).map(|buf| {
                        SendRequest::new(WR_SIGNAL, SendOp::WriteImm(l.partner_rx.at(0), imm), buf)
                    })
                }
            };
            match req {
                Ok(r) => posts.push(r),
                Err(e) => tracing::error!(client = %shared.name, error = %e, "transmit buffer"),
            }
        }
        let n = posts.len();
        if n == 0 {
            return active; // only an ack, held back
        }
        if !deferred {
            *held_ack = None; // what was posted carries the ack
        }
        *rx_since_tx = 0;
        if let Err(e) = l.qp.post_send_all(posts) {
            posts.clear();
            let why = format!("post send: {e}");
            link_failed_inner(st, shared, &why);
            return true;
        }
        l.sends_outstanding += n;
        active = true;
        if !full {
            return active;
        }
        reap_sends(st, shared);
    }
}

fn reap_sends(st: &mut State, shared: &Shared) -> bool {
    let Some(l) = st.link.as_mut() else {
        return false;
    };
    let mut out = std::mem::take(&mut st.completions);
    let polled = l.qp.send_cq().poll(&mut out, POLL_BATCH);
    let mut failure = None;
    let got = !out.is_empty();
    for c in out.drain(..) {
        if c.qpn != l.qp.queue_pair().qpn() {
            continue;
        }
        l.sends_outstanding = l.sends_outstanding.saturating_sub(1);
        if !c.status.is_ok() && failure.is_none() {
            failure = Some(format!("send completion: {:?}", c.status));
        }
    }
    st.completions = out;
    if let Err(e) = polled {
        tracing::warn!(client = %shared.name, error = %e, "poll send queue");
    }
    if let Some(why) = failure {
        st.send_errors += 1;
        link_failed(st, shared, &why);
    }
    got
}

/// The current connection failed under us: stop using it and ask the manager to re-establish
/// this client; the window resumes on the next connection.
fn link_failed(st: &mut State, shared: &Shared, why: &str) {
    if st.link.as_ref().is_some_and(|l| l.broken) {
        return;
    }
    link_failed_inner(st, shared, why);
}

fn link_failed_inner(st: &mut State, shared: &Shared, why: &str) {
    if let Some(l) = st.link.as_mut() {
        l.broken = true;
    }
    st.held_ack = None;
    st.window.handle_link_down();
    if st.suspended_since.is_none() {
        st.suspended_since = Some(Instant::now());
    }
    tracing::warn!(client = %shared.name, reason = why, "messaging connection failed; asking the manager to re-establish it");
    shared.handle.report_failure(why);
}

fn declare_failed(st: &mut State, name: &str, why: &str) {
    tracing::warn!(client = %name, reason = why, pending_calls = st.window.pending_calls(), "messaging partner declared inoperative");
    st.partner_failures += 1;
    st.declared_failed = true;
    st.held_ack = None;
    let State {
        window, callbacks, ..
    } = st;
    window.handle_partner_failed(callbacks);
}

fn check_partner(st: &mut State, shared: &Shared) {
    if st.declared_failed {
        return;
    }
    // Only a partner that was there, or one something is waiting for, can be declared failed.
    let waiting = st.connections > 0 || st.window.queued() > 0 || st.window.pending_calls() > 0;
    if let (Some(since), true) = (st.suspended_since, waiting) {
        if since.elapsed() >= shared.cfg.partner_timeout {
            let why = format!("no connection for {:?}", shared.cfg.partner_timeout);
            declare_failed(st, &shared.name, &why);
        }
    }
}

fn on_event(st: &mut State, shared: &Shared, ev: ClientEvent) {
    match ev {
        ClientEvent::Refused(mismatch) => {
            // The manager logged it. What waits for this partner completes now, and what is
            // sent from now on is refused with the reason (MessagingError::Refused).
            if st.window.queued() > 0 || st.window.pending_calls() > 0 {
                declare_failed(st, &shared.name, &mismatch.to_string());
            }
            st.refused = Some(mismatch);
        }
        ClientEvent::Ready(conn) | ClientEvent::Updated(conn) => {
            st.refused = None;
            if let Err(why) = activate(st, shared, conn) {
                tracing::error!(client = %shared.name, reason = %why, "messaging connection unusable");
                shared.handle.report_failure(&why);
            }
        }
        ClientEvent::Suspended { link, reason } => {
            tracing::info!(client = %shared.name, link = %link, reason = ?reason, "messaging suspended");
            st.link = None;
            st.held_ack = None;
            st.window.handle_link_down();
            if st.suspended_since.is_none() {
                st.suspended_since = Some(Instant::now());
            }
            match reason {
                SuspendReason::PartnerRestarted
                | SuspendReason::PartnerReleased
                | SuspendReason::Shutdown => {
                    declare_failed(st, &shared.name, &format!("{reason:?}"));
                }
                SuspendReason::LinkDown | SuspendReason::Moving { .. } => {}
            }
        }
    }
}

fn activate(st: &mut State, shared: &Shared, conn: Connection) -> std::result::Result<(), String> {
    let qp = conn.qp(0).ok_or("no queue pair 0")?.clone();
    let region = |p: &str| conn.region(p).cloned().ok_or(format!("no region {p}"));
    let tx = region(TX_REGION)?;
    let rx = region(RX_REGION)?;
    let partner_rx = conn
        .partner_region(RX_REGION)
        .map(|r| r.descriptor)
        .ok_or(format!("partner has no {RX_REGION} region"))?;
    let ring = shared.cfg.window.ring_len();
    if (partner_rx.len as usize) < ring {
        return Err(format!(
            "partner receive ring is {} bytes, this side's window needs {ring} (slots and frame_size must match)",
            partner_rx.len
        ));
    }
    let epoch = qp.queue_pair().epoch();
    shared.verbs.store(
        qp.send_cq().device().provider() == ProviderKind::Verbs,
        Ordering::Relaxed,
    );
    let same_qp = st.link.as_ref().is_some_and(|l| {
        !l.broken && l.qp.queue_pair().qpn() == qp.queue_pair().qpn() && l.epoch == epoch
    });
    if same_qp {
        // A live update (another region or queue pair): keep the window running.
        if let Some(l) = st.link.as_mut() {
            l.conn = conn;
            l.partner_rx = partner_rx;
        }
        return Ok(());
    }
    if st.link.take().is_some_and(|l| !l.broken) {
        // The queue pair in use was re-connected in place (the partner replaced its side):
        // what was posted on it is gone; the window re-sends on the new connection.
        tracing::info!(client = %shared.name, "messaging queue pair re-connected in place");
        st.held_ack = None;
        st.window.handle_link_down();
    }
    let depth = 2 * usize::from(shared.cfg.window.slots) + 32;
    // Receives posted since the queue pair's last (re)connect are still there.
    let (sends_outstanding, posted) = qp.queue_pair().outstanding();
    let mut recvs = Vec::with_capacity(depth);
    for i in 0..depth.saturating_sub(posted) {
        recvs.push(RecvRequest {
            wr_id: i as u64,
            local: rx.slice(0, 0).map_err(|e| e.to_string())?,
        });
    }
    qp.post_recv_all(&mut recvs)
        .map_err(|e| format!("post receives: {e}"))?;
    let link = conn.link;
    st.link = Some(Link {
        conn,
        qp,
        tx,
        rx,
        partner_rx,
        sends_outstanding,
        max_send: depth,
        broken: false,
        epoch,
    });
    st.connections += 1;
    st.held_ack = None;
    st.rx_since_tx = 0;
    st.suspended_since = None;
    st.declared_failed = false;
    st.window.handle_link_up(Instant::now());
    tracing::info!(client = %shared.name, link = %link, in_flight = st.window.in_flight(), "messaging connected");
    flush(st, shared);
    Ok(())
}
