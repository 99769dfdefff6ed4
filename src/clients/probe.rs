//! An interconnect probe: a manager client that streams sequence-numbered SENDs to its peer
//! of the same name and checks what arrives (in order, no duplicates; gaps only where a link
//! failed with messages in flight), writes its latest sequence number into the peer's region
//! by RDMA WRITE, and measures round trips. `interlink node --probe NAME:CLASS` runs probes so
//! operators (and the integration tests) can watch a pair carry traffic through failures.

use crate::fabric::{
    Access, CompletionStatus, LocalBuf, MemoryRegion, RecvRequest, RegionDescriptor, SendOp,
    SendRequest,
};
use crate::manager::{
    BandwidthClass, ClientEvent, ClientHandle, ClientSpec, Connection, LinkId, Manager,
    ManagerError,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RX_REGION: &str = "probe-rx";
const TX_REGION: &str = "probe-tx";
const MEM_REGION: &str = "probe-mem";
const WR_SEND: u64 = 1 << 62;
const WR_WRITE: u64 = 2 << 62;
const WR_STALE: u64 = 3 << 62;

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Client name (the partner must run a probe of the same name).
    pub name: String,
    /// Bandwidth class.
    pub class: BandwidthClass,
    /// Message size in bytes (at least 16).
    pub msg_size: usize,
    /// Messages in flight at most.
    pub window: usize,
    /// Target send rate in bytes per second (None: as fast as the window allows).
    pub rate_bps: Option<f64>,
}

impl ProbeConfig {
    /// A probe with 256-byte messages, a window of 16 and a modest default rate (64 KiB/s).
    pub fn new(name: impl Into<String>, class: BandwidthClass) -> ProbeConfig {
        ProbeConfig {
            name: name.into(),
            class,
            msg_size: 256,
            window: 16,
            rate_bps: Some(64.0 * 1024.0),
        }
    }
}

/// What a probe has seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeStats {
    /// Whether the connection is ready now.
    pub ready: bool,
    /// Link of the current connection.
    pub link: Option<LinkId>,
    /// Times it became ready.
    pub connections: u64,
    /// Messages sent (completed successfully).
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Highest sequence number received.
    pub last_seq: u64,
    /// Received with a sequence number at or below one already seen (must stay 0).
    pub out_of_order: u64,
    /// Sequence numbers skipped (messages lost in flight when a link failed).
    pub gaps: u64,
    /// RDMA WRITEs completed.
    pub writes: u64,
    /// Failed completions while ready.
    pub errors: u64,
    /// Milliseconds since the last message arrived (None: none yet).
    pub last_rx_ms_ago: Option<u64>,
    /// Outcome of the last stale-key write (see [`Probe::write_stale`]).
    pub stale_write: Option<String>,
    /// Partner `probe-mem` descriptors used on earlier connections, per link.
    pub stale_keys: usize,
    /// Queue pairs of the current connection.
    pub qps: usize,
    /// Live updates of the connection received (`Updated` events).
    pub updates: u64,
}

struct Shared {
    stats: Mutex<ProbeStats>,
    rate: Mutex<Option<f64>>,
    stale_request: AtomicBool,
    add_qp_request: AtomicBool,
    stop: AtomicBool,
    last_rx: Mutex<Option<Instant>>,
}

/// A running probe; dropping it stops it and closes its client.
pub struct Probe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    name: String,
    /// The manager this client runs on: kept alive while the client lives (every client
    /// holds what it needs; dropped last).
    _manager: Arc<Manager>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("name", &self.name).finish()
    }
}

impl Probe {
    /// Registers the probe's client with the manager and starts its thread.
    pub fn start(manager: &Arc<Manager>, cfg: ProbeConfig) -> Result<Probe, ManagerError> {
        let msg = cfg.msg_size.max(16);
        let window = cfg.window.clamp(1, 64);
        let spec = ClientSpec::new(cfg.name.clone(), cfg.class, 1)
            .region(RX_REGION, msg * window * 2, Access::LOCAL_WRITE)
            .region(TX_REGION, msg * window, Access::NONE)
            .region(MEM_REGION, 4096, Access::REMOTE_WRITE)
            .term("probe message bytes", msg as u64)
            .term("probe window", window as u64);
        let mut spec = spec;
        spec.qp_capacity.max_send_wr = (window * 2 + 4) as u32;
        spec.qp_capacity.max_recv_wr = (window * 2) as u32;
        let handle = manager.register(spec)?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(ProbeStats::default()),
            rate: Mutex::new(cfg.rate_bps),
            stale_request: AtomicBool::new(false),
            add_qp_request: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            last_rx: Mutex::new(None),
        });
        let s = shared.clone();
        let name = cfg.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("il-probe-{name}"))
            .spawn(move || Runner::new(handle, s, msg, window).run())
            .map_err(|source| ManagerError::Spawn {
                name: format!("probe {}", cfg.name),
                source,
            })?;
        Ok(Probe {
            shared,
            thread: Some(thread),
            name,
            _manager: manager.clone(),
        })
    }

    /// The probe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current statistics.
    pub fn stats(&self) -> ProbeStats {
        let mut s = self.shared.stats.lock().clone();
        s.last_rx_ms_ago = self
            .shared
            .last_rx
            .lock()
            .map(|t| t.elapsed().as_millis() as u64);
        s
    }

    /// Changes the send rate (None: unlimited within the window).
    pub fn set_rate(&self, rate_bps: Option<f64>) {
        *self.shared.rate.lock() = rate_bps;
    }

    /// Asks the probe to RDMA WRITE through its current queue pair to the partner region it
    /// used on an earlier connection over the same link, whose remote key the manager
    /// revoked: the outcome (expected: a remote access error) lands in `stale_write`.
    pub fn write_stale(&self) {
        self.shared.stale_request.store(true, Ordering::Relaxed);
    }
}

impl Probe {
    /// Asks the manager for one more queue pair for this probe's client, live (the partner
    /// mirrors it; traffic keeps using queue pair 0). `qps` in the stats shows the result.
    pub fn add_qp(&self) {
        self.shared.add_qp_request.store(true, Ordering::Relaxed);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(probe = %self.name, "probe thread panicked");
            }
        }
    }
}

struct Active {
    conn: Connection,
    rx: MemoryRegion,
    tx: MemoryRegion,
    mem: MemoryRegion,
    partner_mem: RegionDescriptor,
    in_flight: usize,
    slot: usize,
    /// Queue pair 0's epoch when activated (a re-connect in place discarded its receives).
    epoch: u64,
}

struct Runner {
    handle: ClientHandle,
    shared: Arc<Shared>,
    msg: usize,
    window: usize,
    active: Option<Active>,
    next_seq: u64,
    last_seq: u64,
    /// Partner `probe-mem` descriptors of earlier connections, per link.
    history: HashMap<LinkId, Vec<RegionDescriptor>>,
    budget: f64,
    last_refill: Instant,
    /// Post times of the SENDs in flight, in order (completions are in order per queue pair).
    posted: std::collections::VecDeque<Instant>,
}

impl Runner {
    fn new(handle: ClientHandle, shared: Arc<Shared>, msg: usize, window: usize) -> Runner {
        Runner {
            handle,
            shared,
            msg,
            window,
            active: None,
            next_seq: 1,
            last_seq: 0,
            history: HashMap::new(),
            budget: 0.0,
            last_refill: Instant::now(),
            posted: std::collections::VecDeque::new(),
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            while let Ok(ev) = self.handle.events().try_recv() {
                self.event(ev);
            }
            if self.shared.add_qp_request.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.handle.add_qp() {
                    tracing::warn!(probe = %self.handle.name(), error = %e, "add queue pair");
                }
            }
            if self.active.is_some() {
                if let Err(why) = self.step() {
                    tracing::warn!(probe = %self.handle.name(), error = %why, "probe connection failed");
                    self.shared.stats.lock().errors += 1;
                    self.handle.record_error();
                    self.handle.report_failure(&why);
                    self.deactivate();
                }
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    fn event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Updated(conn) => {
                self.shared.stats.lock().updates += 1;
                if let Err(why) = self.activate(conn) {
                    tracing::warn!(probe = %self.handle.name(), error = %why, "probe update failed");
                    self.handle.report_failure(&why);
                }
            }
            ClientEvent::Ready(conn) => {
                if let Err(why) = self.activate(conn) {
                    tracing::warn!(probe = %self.handle.name(), error = %why, "probe activation failed");
                    self.handle.report_failure(&why);
                }
            }
            ClientEvent::Suspended { .. } | ClientEvent::Refused(_) => {
                self.drain_stale_completion();
                self.deactivate();
            }
        }
    }

    /// Drops the connection, remembering the partner region it used on its link.
    fn deactivate(&mut self) {
        if let Some(a) = self.active.take() {
            let seen = self.history.entry(a.conn.link).or_default();
            if !seen.contains(&a.partner_mem) {
                seen.push(a.partner_mem);
            }
        }
        self.posted.clear();
        let mut s = self.shared.stats.lock();
        s.ready = false;
        s.stale_keys = self.history.values().map(Vec::len).sum();
    }

    fn activate(&mut self, conn: Connection) -> Result<(), String> {
        let region = |p: &str| conn.region(p).cloned().ok_or(format!("no region {p}"));
        let rx = region(RX_REGION)?;
        let tx = region(TX_REGION)?;
        let mem = region(MEM_REGION)?;
        let partner_mem = conn
            .partner_region(MEM_REGION)
            .map(|r| r.descriptor)
            .ok_or("partner has no probe-mem region")?;
        let qp = conn.qp(0).ok_or("no queue pair 0")?.clone();
        // A live update keeps queue pair 0; anything else (a first connection, or one that
        // replaced ours without a Suspended seen in between) is a fresh queue pair: it needs
        // its receives, and nothing is in flight on it.
        let same_qp = self.active.as_ref().is_some_and(|a| {
            a.epoch == qp.queue_pair().epoch()
                && a.conn.qp(0).map(|q| q.queue_pair().qpn()) == Some(qp.queue_pair().qpn())
        });
        if !same_qp {
            if self.active.is_some() {
                self.deactivate();
            }
            let recvs = (0..self.window * 2)
                .map(|i| -> Result<RecvRequest, String> {
                    Ok(RecvRequest {
                        wr_id: i as u64,
                        local: rx
                            .slice(i * self.msg, self.msg)
                            .map_err(|e| e.to_string())?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            qp.post_recv_batch(recvs).map_err(|e| e.to_string())?;
        }
        let (in_flight, slot) = self
            .active
            .as_ref()
            .map_or((0, 0), |a| (a.in_flight, a.slot));
        let link = conn.link;
        let qps = conn.qps.len();
        self.active = Some(Active {
            conn,
            rx,
            tx,
            mem,
            partner_mem,
            in_flight,
            slot,
            epoch: qp.queue_pair().epoch(),
        });
        let mut s = self.shared.stats.lock();
        if !s.ready {
            s.connections += 1;
        }
        s.ready = true;
        s.link = Some(link);
        s.qps = qps;
        Ok(())
    }

    fn buf(&self, a: &Active, slot: usize) -> Result<LocalBuf, String> {
        a.tx.slice(slot * self.msg, self.msg)
            .map_err(|e| e.to_string())
    }

    fn step(&mut self) -> Result<(), String> {
        self.poll_completions()?;
        if self.shared.stale_request.swap(false, Ordering::Relaxed) {
            self.stale_write()?;
        }
        // Refill the rate budget.
        let now = Instant::now();
        let rate = *self.shared.rate.lock();
        let dt = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        self.budget = match rate {
            Some(r) => (self.budget + r * dt).min((self.msg * self.window) as f64),
            None => f64::INFINITY,
        };
        let Some(a) = self.active.as_ref() else {
            return Ok(());
        };
        let mut posts = Vec::new();
        let mut in_flight = a.in_flight;
        let mut slot = a.slot;
        while in_flight < self.window && self.budget >= self.msg as f64 {
            let seq = self.next_seq;
            let buf = self.buf(a, slot)?;
            a.tx.write(slot * self.msg, &seq.to_be_bytes())
                .map_err(|e| e.to_string())?;
            posts.push(SendRequest::new(WR_SEND | seq, SendOp::Send, buf));
            self.posted.push_back(now);
            if seq % 8 == 0 {
                let src = a.mem.slice(0, 8).map_err(|e| e.to_string())?;
                a.mem.write_u64(0, seq).map_err(|e| e.to_string())?;
                posts.push(SendRequest::new(
                    WR_WRITE | seq,
                    SendOp::Write(a.partner_mem.at(8)),
                    src,
                ));
            }
            self.next_seq += 1;
            in_flight += 1;
            slot = (slot + 1) % self.window;
            if rate.is_some() {
                self.budget -= self.msg as f64;
            }
        }
        if !posts.is_empty() {
            let qp = a.conn.qp(0).ok_or("no queue pair 0")?;
            qp.post_send_batch(posts).map_err(|e| e.to_string())?;
        }
        if let Some(a) = self.active.as_mut() {
            a.in_flight = in_flight;
            a.slot = slot;
        }
        Ok(())
    }

    fn poll_completions(&mut self) -> Result<(), String> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let qp = a.conn.qp(0).ok_or("no queue pair 0")?.clone();
        let mut out = Vec::new();
        qp.send_cq().poll(&mut out, 64).map_err(|e| e.to_string())?;
        for c in out.drain(..) {
            match c.wr_id >> 62 {
                3 => {
                    let outcome = format!("{:?}", c.status);
                    tracing::info!(probe = %self.handle.name(), outcome = %outcome, "stale-key write completed");
                    self.shared.stats.lock().stale_write = Some(outcome);
                    if !c.status.is_ok() {
                        return Err(format!("stale-key write: {:?}", c.status));
                    }
                    continue;
                }
                _ if !c.status.is_ok() => return Err(format!("send completion: {:?}", c.status)),
                1 => {
                    a.in_flight = a.in_flight.saturating_sub(1);
                    self.shared.stats.lock().sent += 1;
                    if let Some(t) = self.posted.pop_front() {
                        // Post to completion: the partner's acknowledgement of the SEND.
                        self.handle.record_latency(t.elapsed());
                    }
                }
                2 => self.shared.stats.lock().writes += 1,
                _ => {}
            }
        }
        qp.recv_cq().poll(&mut out, 64).map_err(|e| e.to_string())?;
        let mut reposts = Vec::new();
        for c in out.drain(..) {
            if c.status != CompletionStatus::Success {
                return Err(format!("receive completion: {:?}", c.status));
            }
            let i = c.wr_id as usize;
            let mut be = [0u8; 8];
            a.rx.read(i * self.msg, &mut be)
                .map_err(|e| e.to_string())?;
            let seq_be = u64::from_be_bytes(be);
            {
                let mut s = self.shared.stats.lock();
                s.received += 1;
                if seq_be <= self.last_seq {
                    s.out_of_order += 1;
                } else {
                    s.gaps += seq_be - self.last_seq - 1;
                    self.last_seq = seq_be;
                    s.last_seq = seq_be;
                }
            }
            *self.shared.last_rx.lock() = Some(Instant::now());
            reposts.push(RecvRequest {
                wr_id: c.wr_id,
                local: a
                    .rx
                    .slice(i * self.msg, self.msg)
                    .map_err(|e| e.to_string())?,
            });
        }
        if !reposts.is_empty() {
            qp.post_recv_batch(reposts).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Before the connection goes away, records the outcome of a stale-key write that
    /// already completed (the partner may tear the client down as a result first).
    fn drain_stale_completion(&mut self) {
        let Some(qp) = self.active.as_ref().and_then(|a| a.conn.qp(0).cloned()) else {
            return;
        };
        let mut out = Vec::new();
        if qp.send_cq().poll(&mut out, 64).is_ok() {
            for c in out.iter().filter(|c| c.wr_id >> 62 == 3) {
                let outcome = format!("{:?}", c.status);
                tracing::info!(probe = %self.handle.name(), outcome = %outcome, "stale-key write completed");
                self.shared.stats.lock().stale_write = Some(outcome);
            }
        }
    }

    fn stale_write(&mut self) -> Result<(), String> {
        let Some(a) = self.active.as_ref() else {
            self.shared.stats.lock().stale_write = Some("not ready".into());
            return Ok(());
        };
        let is_old =
            |d: &&RegionDescriptor| d.rkey != a.partner_mem.rkey || d.addr != a.partner_mem.addr;
        // An old descriptor of this link's region; else (the client came back on another
        // link) the latest old one of any link: it names a region of the partner's earlier
        // run, which must not be reachable either.
        let stale = self
            .history
            .get(&a.conn.link)
            .and_then(|v| v.iter().rev().find(is_old))
            .or_else(|| {
                self.history
                    .values()
                    .flat_map(|v| v.iter().rev().find(is_old))
                    .next()
            })
            .copied();
        let Some(old) = stale else {
            self.shared.stats.lock().stale_write = Some("no stale key for this link".into());
            return Ok(());
        };
        let src = a.mem.slice(0, 8).map_err(|e| e.to_string())?;
        let qp = a.conn.qp(0).ok_or("no queue pair 0")?;
        qp.post_send(SendRequest::new(WR_STALE, SendOp::Write(old.at(0)), src))
            .map_err(|e| e.to_string())
    }
}
