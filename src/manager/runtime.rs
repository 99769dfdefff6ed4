//! The event loop's state and its handling of links, sessions and clients.
//!
//! [`Runtime::run`] is the body of the manager thread. It takes [`Command`]s (client
//! registrations and requests, status queries, shutdown, the I/O threads' reports) from one
//! crossbeam channel or a device's async events, until the earliest of its deadlines at the
//! latest (`wake.rs`), then does the periodic work in `tick`: device async events, link
//! (re)initialisation with backoff, heartbeat completions and intervals, publishing the health
//! block, rate sampling, planned moves and, on the initiator, placement. All link, session,
//! heartbeat and client state lives here and nowhere else.
//!
//! - this file: links (attempts, backoff, device events, heartbeat, failure detection), the
//!   bootstrap connection and its [`Session`], partner incarnation changes;
//! - `messages.rs`: PeerInfo, Ready, Attach, ClientReady, Detach and Goodbye handling, link
//!   teardown and client failure;
//! - `clients.rs`: registration, live changes, offers, attachment creation, delivery of client
//!   events, placement and the phases of a planned move (drain ≤ 300 ms, Detach(Moving) and its
//!   acknowledgement, Attach on the target);
//! - `status.rs`: status snapshots and rate sampling;
//! - `wake.rs`: when the loop wakes next.
//!
//! The message sequences are in docs/wire-formats.md ("Client attachment exchanges").

use crate::fabric::AsyncEvent;
use crate::manager::attachment::{Attachment, Carry};
use crate::manager::client::{summarize, ClientCells, ClientEvent, ClientRequest, SuspendReason};
use crate::manager::config::NodeConfig;
use crate::manager::error::{ManagerError, Result};
use crate::manager::health::{HealthBlock, HeartbeatVerdict};
use crate::manager::link::{
    spawn_acceptor, spawn_connector, spawn_reader, Acceptor, Heartbeat, HeartbeatPoll, IoEvent,
    IoMsg, LinkFabric,
};
use crate::manager::node::{connect_options, open_fabric, Command};
use crate::manager::partner_state::StateCells;
use crate::manager::placement::{ClientView, LinkView, MoveReason, Planner};
use crate::manager::session::{
    fresh_nonce, Role, Session, SessionError, SessionEvent, SessionParams,
};
use crate::manager::types::{
    capabilities, ClientCounters, ClientInfo, ClientSpec, ClientState, ClientStatus, LinkCounters,
    LinkId, LinkState, LinkStatus, NodeStatus, RegionSpec, TermMismatch, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};
use crate::manager::wire::{DetachReason, GoodbyeReason, Message, PeerInfo, ReadyClient};
use crate::recorded_metrics::{client_state_code, link_state_code, ClientMetrics, LinkMetrics};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use super::STARTUP_GATHER;
/// Longest a planned move waits for the client's outstanding sends to drain.
const DRAIN_LIMIT: Duration = Duration::from_millis(300);
/// Longest a planned move waits for the partner's detach acknowledgement.
const DETACH_ACK_LIMIT: Duration = Duration::from_millis(1000);
/// Client rate sampling period.
const RATE_PERIOD: Duration = Duration::from_millis(500);

struct Conn {
    id: u64,
    stream: TcpStream,
    session: Session,
    established: bool,
    sent_peer_info: bool,
    /// Clients offered in our PeerInfo (initiator).
    offered: Vec<String>,
}

struct Link {
    id: LinkId,
    state: LinkState,
    since: Instant,
    last_error: Option<String>,
    fabric: Option<LinkFabric>,
    acceptor: Option<Acceptor>,
    conn: Option<Conn>,
    /// A newer bootstrap connection from the partner's address while `conn` exists: it
    /// replaces `conn` only once its session authenticated (a connection that does not
    /// never disturbs the link).
    pending: Option<Conn>,
    connecting: Option<u64>,
    attempt: u32,
    next_attempt: Instant,
    heartbeat: Option<Heartbeat>,
    /// The device's event channel was closed (not waited on any more).
    events_closed: bool,
    next_interval: Instant,
    healthy_since_ms: u64,
    counters: LinkCounters,
    rate_bps: f64,
    metrics: LinkMetrics,
}

enum MovePhase {
    Draining { until: Instant },
    AwaitAck { until: Instant },
}

struct PendingMove {
    from: LinkId,
    to: LinkId,
    reason: MoveReason,
    phase: MovePhase,
}

struct ClientRecord {
    spec: ClientSpec,
    regions: Vec<(u16, RegionSpec)>,
    next_region_id: u16,
    next_qp_index: u16,
    events: Sender<ClientEvent>,
    cells: Arc<ClientCells>,
    state: ClientState,
    attachment: Option<Attachment>,
    carry: Carry,
    displaced: bool,
    pending: Option<PendingMove>,
    generation: u32,
    counters: ClientCounters,
    last_sample: (u64, u64),
    rate_bps: f64,
    /// The partner's client disagrees on this term (the client was told once).
    refused: Option<TermMismatch>,
    metrics: ClientMetrics,
}

impl ClientRecord {
    fn qp_indices(&self) -> Vec<u16> {
        (0..self.next_qp_index).collect()
    }

    /// Sets the state (and its gauge); a transition to ready counts in the ready counter.
    fn set_state(&mut self, state: ClientState) {
        if state == ClientState::Ready && self.state != ClientState::Ready {
            self.metrics.ready.increment(1);
        }
        self.state = state;
        self.metrics.state.set(client_state_code(state));
    }

    fn suspend(&mut self, link: LinkId, reason: SuspendReason) {
        if self.state == ClientState::Ready {
            let _ = self.events.send(ClientEvent::Suspended { link, reason });
        }
        self.set_state(ClientState::Suspended);
    }

    /// Tears down the current attachment (its rkeys die), keeping region contents.
    fn detach(&mut self, reason: SuspendReason) -> Option<LinkId> {
        let att = self.attachment.take()?;
        let link = att.link;
        self.suspend(link, reason);
        let carry = att.teardown();
        for (id, r) in carry {
            self.carry.insert(id, r);
        }
        self.set_state(ClientState::Waiting);
        Some(link)
    }
}

/// The event loop's state.
pub(crate) struct Runtime {
    cfg: NodeConfig,
    secret: Vec<u8>,
    incarnation: u64,
    started: Instant,
    tx: Sender<Command>,
    links: Vec<Link>,
    clients: BTreeMap<String, ClientRecord>,
    /// Responder: clients the partner placed before ours registered (link, partner's info).
    offers: HashMap<String, (LinkId, ClientInfo)>,
    planner: Option<Planner>,
    partner_incarnation: Option<u64>,
    next_conn: u64,
    progress: u64,
    next_progress: Instant,
    next_rates: Instant,
    stop: bool,
    cells: Arc<StateCells>,
}

fn initiator(cfg: &NodeConfig) -> bool {
    cfg.node_id < cfg.partner_id
}

impl Runtime {
    pub(crate) fn new(
        cfg: NodeConfig,
        secret: Vec<u8>,
        tx: Sender<Command>,
        cells: Arc<StateCells>,
    ) -> Runtime {
        let now = Instant::now();
        // Increases from one run to the next (the partner and the giveback client compare
        // incarnations to tell a restarted node's state from a stale copy): the start time in
        // nanoseconds, its low 16 bits replaced by the process id's to separate two nodes
        // started in the same instant.
        let incarnation = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            & !0xffff)
            | u64::from(std::process::id() & 0xffff);
        let links = cfg
            .links
            .iter()
            .map(|l| Link {
                id: l.id,
                state: LinkState::Down,
                since: now,
                last_error: None,
                fabric: None,
                acceptor: None,
                conn: None,
                pending: None,
                connecting: None,
                attempt: 0,
                next_attempt: now,
                heartbeat: None,
                events_closed: false,
                next_interval: now,
                healthy_since_ms: 0,
                counters: LinkCounters::default(),
                rate_bps: 0.0,
                metrics: {
                    let m = LinkMetrics::new(cfg.node_id, l.id);
                    m.state.set(link_state_code(LinkState::Down));
                    m
                },
            })
            .collect();
        let planner = initiator(&cfg).then(|| {
            let ids: Vec<LinkId> = cfg.links.iter().map(|l| l.id).collect();
            Planner::new(cfg.balance, &ids)
        });
        tracing::info!(
            node = cfg.node_id,
            partner = cfg.partner_id,
            incarnation,
            links = cfg.links.len(),
            role = if initiator(&cfg) {
                "initiator"
            } else {
                "responder"
            },
            "manager starting"
        );
        Runtime {
            cfg,
            secret,
            incarnation,
            started: now,
            tx,
            links,
            clients: BTreeMap::new(),
            offers: HashMap::new(),
            planner,
            partner_incarnation: None,
            next_conn: 1,
            progress: 0,
            next_progress: now,
            next_rates: now + RATE_PERIOD,
            stop: false,
            cells,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn run(&mut self, rx: Receiver<Command>) {
        let span = tracing::info_span!("manager", node = self.cfg.node_id);
        let _g = span.enter();
        while !self.stop {
            let timeout = self.wake_plan(Instant::now()).timeout();
            {
                // Wait for a command, a device event or the deadline; what is ready is taken
                // below (a readiness wait leaves the message in its channel).
                let mut sel = crossbeam_channel::Select::new();
                sel.recv(&rx);
                for l in &self.links {
                    if let (Some(f), false) = (&l.fabric, l.events_closed) {
                        sel.recv(&f.events);
                    }
                }
                let _ = sel.ready_timeout(timeout);
            }
            // Handle whatever is queued before the periodic work.
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.handle_command(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => self.stop = true,
                }
                if self.stop {
                    break;
                }
            }
            if !self.stop {
                self.tick();
            }
        }
        self.shutdown_all();
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Register { spec, reply } => {
                let _ = reply.send(self.register(spec));
            }
            Command::Client(req) => self.client_request(req),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::PublishState => self.publish_health(),
            Command::ReadPartnerNow => self.read_partner_now(),
            Command::TimePartnerReads { link, count, reply } => {
                let _ = reply.send(self.time_partner_reads(link, count));
            }
            Command::Shutdown => self.stop = true,
            Command::Io(msg) => self.handle_io(msg),
        }
    }

    // ---------------------------------------------------------------- periodic work

    fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.links.len() {
            self.tick_link(i, now);
        }
        if now >= self.next_progress {
            self.progress += 1;
            self.next_progress = now + self.cfg.heartbeat.interval();
            self.publish_health();
        } else if self.cells.take_dirty() {
            self.publish_health();
        }
        if now >= self.next_rates {
            self.sample_rates(now);
        }
        self.advance_moves(now);
        if self.planner.is_some() {
            self.plan();
        }
    }

    /// The incarnation chosen at start.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Writes our health block (progress, incarnation, and the published state and
    /// extension) into every link's heartbeat region.
    fn publish_health(&mut self) {
        self.cells.take_dirty();
        let (state, extension) = self.cells.local();
        let block = HealthBlock {
            state,
            progress: self.progress,
            incarnation: self.incarnation,
            node_id: self.cfg.node_id,
            extension,
        };
        for l in &self.links {
            if let Some(hb) = &l.heartbeat {
                hb.publish(&block);
            }
        }
    }

    fn read_partner_now(&mut self) {
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            if l.state != LinkState::Ready {
                continue;
            }
            let failed = match l.heartbeat.as_mut().map(|hb| hb.post_read()) {
                Some(HeartbeatPoll::Failed(why)) => Some(why),
                _ => None,
            };
            if let Some(why) = failed {
                self.fail_link(i, &why, false);
            }
        }
    }

    fn time_partner_reads(&mut self, link: LinkId, count: usize) -> Result<Vec<Duration>> {
        let err = |reason: String| ManagerError::ReadPartnerState { link, reason };
        let i = self
            .links
            .iter()
            .position(|l| l.id == link)
            .ok_or_else(|| err("no such link".into()))?;
        let l = &mut self.links[i];
        if l.state != LinkState::Ready {
            return Err(err(format!("link is {:?}", l.state)));
        }
        let hb = l
            .heartbeat
            .as_mut()
            .ok_or_else(|| err("link has no heartbeat".into()))?;
        let result = hb.timed_reads(count);
        let now = Instant::now();
        for copy in hb.take_copies() {
            self.cells.record_read(link, copy, now);
        }
        result.map_err(err)
    }

    fn tick_link(&mut self, i: usize, now: Instant) {
        // Device events.
        let mut events: Vec<AsyncEvent> = Vec::new();
        let mut closed = false;
        if let Some(f) = &self.links[i].fabric {
            loop {
                match f.events.try_recv() {
                    Ok(ev) => events.push(ev),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if closed && !self.links[i].events_closed {
            // Not waited on any more (a closed channel is always ready).
            tracing::warn!(link = self.links[i].id, "device event channel closed");
            self.links[i].events_closed = true;
        }
        for ev in events {
            self.device_event(i, ev);
        }
        // (Re)initialisation.
        let link = &mut self.links[i];
        if link.conn.is_none() && link.connecting.is_none() && now >= link.next_attempt {
            self.start_attempt(i);
        }
        // Initiator: send PeerInfo once the startup gather is over.
        if initiator(&self.cfg) {
            let gather_done = self.started.elapsed() >= STARTUP_GATHER
                || self
                    .links
                    .iter()
                    .all(|l| l.conn.as_ref().is_some_and(|c| c.established));
            let pending = self.links[i]
                .conn
                .as_ref()
                .is_some_and(|c| c.established && !c.sent_peer_info);
            if gather_done && pending {
                if let Err(e) = self.send_peer_info(i) {
                    self.fail_link(i, &e.to_string(), false);
                }
            }
        }
        // Heartbeat.
        let miss_count = self.cfg.heartbeat.miss_count;
        let interval = self.cfg.heartbeat.interval();
        let link = &mut self.links[i];
        self.cells.set_reading(
            link.id,
            link.state == LinkState::Ready && link.heartbeat.is_some(),
        );
        if link.state != LinkState::Ready {
            return;
        }
        let Some(hb) = link.heartbeat.as_mut() else {
            return;
        };
        let mut failure = None;
        if let HeartbeatPoll::Failed(why) = hb.poll() {
            failure = Some(why);
        }
        for copy in hb.take_copies() {
            self.cells.record_read(link.id, copy, now);
        }
        if failure.is_none() && now >= link.next_interval {
            link.next_interval = now + interval;
            match hb.monitor.handle_interval() {
                HeartbeatVerdict::Alive => {}
                HeartbeatVerdict::Missed(n) => {
                    link.metrics.heartbeat_misses.increment(1);
                    tracing::debug!(link = link.id, missed = n, "heartbeat interval missed")
                }
                HeartbeatVerdict::Dead => {
                    link.metrics.heartbeat_misses.increment(1);
                    failure = Some(format!(
                        "heartbeat lost: no progress for {miss_count} intervals of {} ms",
                        interval.as_millis()
                    ))
                }
            }
            if failure.is_none() {
                if let HeartbeatPoll::Failed(why) = hb.post_read() {
                    failure = Some(why);
                }
            }
        }
        link.counters.heartbeats = hb.reads;
        link.counters.heartbeat_misses = hb.monitor.total_misses();
        // heartbeat_rtt is summarized when a status is asked for (status.rs): quantiles of
        // the histogram cost a scan, too much for every turn of the loop.
        if let Some(why) = failure {
            self.fail_link(i, &why, false);
        }
    }

    fn device_event(&mut self, i: usize, ev: AsyncEvent) {
        let id = self.links[i].id;
        match ev {
            AsyncEvent::PortDown { port } => {
                tracing::warn!(link = id, port, "port down");
                if self.links[i].conn.is_some() || self.links[i].state == LinkState::Ready {
                    self.fail_link(i, &format!("port {port} down"), false);
                }
            }
            AsyncEvent::PortActive { port } => {
                tracing::info!(link = id, port, "port active");
                // Retry soon instead of waiting out a long backoff.
                let l = &mut self.links[i];
                if l.conn.is_none() {
                    l.next_attempt = l
                        .next_attempt
                        .min(Instant::now() + Duration::from_millis(50));
                }
            }
            AsyncEvent::QpFatal { qpn } | AsyncEvent::QpAccessError { qpn } => {
                if self.links[i]
                    .heartbeat
                    .as_ref()
                    .is_some_and(|h| h.has_qpn(qpn))
                {
                    self.fail_link(i, &format!("heartbeat queue pair {qpn} failed"), false);
                    return;
                }
                let owner = self.clients.iter().find_map(|(n, c)| {
                    c.attachment
                        .as_ref()
                        .filter(|a| a.link == id && a.has_qpn(qpn))
                        .map(|_| n.clone())
                });
                if let Some(name) = owner {
                    self.fail_client(&name, &format!("queue pair {qpn} failed ({ev:?})"), true);
                }
            }
            AsyncEvent::DeviceFatal => self.fail_link(i, "device fatal error", false),
            other => tracing::debug!(link = id, event = ?other, "device event"),
        }
    }

    /// The local half of every link's first attempt, done by `Manager::start` before the
    /// runtime thread runs so that its failures are the call's: each link's device opened
    /// and, at the node that listens, its bootstrap port bound (a port in use, a device that
    /// is absent or a verbs provider this build lacks fail the start, naming the link). Later
    /// failures (a device lost while running) are retried with the backoff.
    pub(crate) fn open_links(&mut self) -> Result<()> {
        let _g = tracing::info_span!("manager", node = self.cfg.node_id).entered();
        for i in 0..self.links.len() {
            if !initiator(&self.cfg) {
                self.listen(i)?;
            }
            self.open_device(i)?;
        }
        Ok(())
    }

    /// Binds link `i`'s bootstrap listener (the responder's).
    fn listen(&mut self, i: usize) -> Result<()> {
        let link_cfg = &self.cfg.links[i];
        let (id, addr) = (
            link_cfg.id,
            SocketAddr::new(link_cfg.local, link_cfg.bootstrap_port),
        );
        self.links[i].acceptor = Some(spawn_acceptor(id, addr, self.tx.clone())?);
        tracing::info!(link = id, %addr, "listening for the partner's bootstrap");
        self.set_state(i, LinkState::Connecting);
        Ok(())
    }

    /// Opens link `i`'s device and protection domain.
    fn open_device(&mut self, i: usize) -> Result<()> {
        let f = open_fabric(&self.cfg, i)?;
        tracing::info!(link = self.links[i].id, device = %f.device.name(), provider = %f.device.provider(), "link device open");
        self.links[i].fabric = Some(f);
        self.links[i].events_closed = false;
        Ok(())
    }

    fn start_attempt(&mut self, i: usize) {
        let link_cfg = self.cfg.links[i].clone();
        // The responder listens first, so the partner's first connect is not refused while
        // the device opens.
        if !initiator(&self.cfg) && self.links[i].acceptor.is_none() {
            if let Err(e) = self.listen(i) {
                self.backoff(i, &e.to_string(), LinkState::Down);
                return;
            }
        }
        if !self.ensure_fabric(i) {
            return;
        }
        // A port that is down (cable pulled) gets no attempt: its PortActive event retries soon.
        let port_down = self.links[i]
            .fabric
            .as_ref()
            .is_some_and(|f| matches!(f.device.port_active(), Ok(false)));
        if port_down && initiator(&self.cfg) {
            self.backoff(i, "port down", LinkState::Down);
            return;
        }
        if initiator(&self.cfg) {
            let conn = self.next_conn;
            self.next_conn += 1;
            let addr = SocketAddr::new(link_cfg.peer, link_cfg.bootstrap_port);
            match spawn_connector(
                link_cfg.id,
                conn,
                link_cfg.local,
                addr,
                Duration::from_secs(2),
                self.tx.clone(),
            ) {
                Ok(()) => {
                    self.links[i].connecting = Some(conn);
                    self.set_state(i, LinkState::Connecting);
                }
                Err(e) => self.backoff(i, &e.to_string(), LinkState::Down),
            }
        }
    }

    fn set_state(&mut self, i: usize, state: LinkState) {
        let l = &mut self.links[i];
        if l.state != state {
            tracing::info!(link = l.id, from = ?l.state, to = ?state, "link state");
            l.state = state;
            l.since = Instant::now();
            l.metrics.state.set(link_state_code(state));
        }
    }

    /// Opens the link's device if it is not open yet; on failure schedules a retry.
    fn ensure_fabric(&mut self, i: usize) -> bool {
        if self.links[i].fabric.is_some() {
            return true;
        }
        match self.open_device(i) {
            Ok(()) => true,
            Err(e) => {
                self.backoff(i, &e.to_string(), LinkState::Down);
                false
            }
        }
    }

    /// A link attempt failed: record why, count it, and retry after the backoff delay.
    fn backoff(&mut self, i: usize, why: &str, state: LinkState) {
        let l = &mut self.links[i];
        l.last_error = Some(why.to_string());
        l.counters.errors += 1;
        l.metrics.errors.increment(1);
        let delay = self.retry_later(i, state);
        tracing::warn!(
            link = self.links[i].id,
            error = why,
            retry_in_ms = delay.as_millis() as u64,
            "link attempt failed"
        );
    }

    /// Schedules the next attempt after the backoff delay and sets the state; returns the delay.
    pub(super) fn retry_later(&mut self, i: usize, state: LinkState) -> Duration {
        let delay = self.cfg.backoff.delay(self.links[i].attempt);
        let l = &mut self.links[i];
        l.attempt = l.attempt.saturating_add(1);
        l.next_attempt = Instant::now() + delay;
        self.set_state(i, state);
        delay
    }

    // ---------------------------------------------------------------- I/O

    /// The packet key of link `i`'s established session (None before it is established).
    fn packet_key(&self, i: usize) -> Option<crate::fabric::PacketKey> {
        self.links[i]
            .conn
            .as_ref()
            .and_then(|c| c.session.packet_key())
    }

    fn link_index(&self, id: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == id)
    }

    fn handle_io(&mut self, msg: IoMsg) {
        let Some(i) = self.link_index(msg.link) else {
            return;
        };
        match msg.event {
            IoEvent::Connected(stream) => {
                if self.links[i].connecting != Some(msg.conn) {
                    return;
                }
                self.links[i].connecting = None;
                self.begin_session(i, msg.conn, stream, Role::Initiator);
            }
            IoEvent::ConnectFailed(e) => {
                if self.links[i].connecting != Some(msg.conn) {
                    return;
                }
                self.links[i].connecting = None;
                self.backoff(i, &format!("connect to the partner: {e}"), LinkState::Down);
            }
            IoEvent::Accepted(stream, from) => {
                if from.ip() != self.cfg.links[i].peer {
                    tracing::warn!(link = msg.link, %from, "bootstrap connection from an unexpected address refused");
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                let conn = self.next_conn;
                self.next_conn += 1;
                if self.links[i].conn.is_some() {
                    // The link stays as it is until the new connection proves it knows the
                    // cluster secret (a restarted partner does; anyone else who can open a
                    // connection from its address does not).
                    match self.new_conn(i, conn, stream, Role::Responder) {
                        Ok(c) => {
                            self.drop_pending(i);
                            self.links[i].pending = Some(c);
                            self.flush_pending(i);
                        }
                        Err(e) => {
                            tracing::warn!(link = msg.link, error = %e, "new bootstrap connection dropped")
                        }
                    }
                    return;
                }
                if !self.ensure_fabric(i) {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                self.begin_session(i, conn, stream, Role::Responder);
            }
            IoEvent::Bytes(bytes)
                if self.links[i].pending.as_ref().map(|c| c.id) == Some(msg.conn) =>
            {
                self.pending_bytes(i, &bytes);
            }
            IoEvent::Closed(_)
                if self.links[i].pending.as_ref().map(|c| c.id) == Some(msg.conn) =>
            {
                self.drop_pending(i);
            }
            IoEvent::Bytes(bytes) => {
                if self.links[i].conn.as_ref().map(|c| c.id) != Some(msg.conn) {
                    return;
                }
                let result = match self.links[i].conn.as_mut() {
                    Some(c) => c.session.handle_bytes(&bytes),
                    None => return,
                };
                self.flush(i);
                self.drain_session(i);
                if let Err(e) = result {
                    self.session_failed(i, e);
                }
            }
            IoEvent::Closed(err) => {
                if self.links[i].conn.as_ref().map(|c| c.id) != Some(msg.conn) {
                    return;
                }
                let why = match err {
                    Some(e) => format!("bootstrap connection lost: {e}"),
                    None => "bootstrap connection closed by the partner".to_string(),
                };
                self.fail_link(i, &why, false);
            }
        }
    }

    fn begin_session(&mut self, i: usize, id: u64, stream: TcpStream, role: Role) {
        match self.new_conn(i, id, stream, role) {
            Ok(c) => {
                self.links[i].conn = Some(c);
                self.set_state(i, LinkState::Handshaking);
                self.flush(i);
            }
            Err(e) => self.backoff(i, &e, LinkState::Down),
        }
    }

    /// Bytes of the pending connection: its handshake goes on; once its session
    /// authenticated, it replaces the link's connection (the link is re-established on it);
    /// a session that fails is dropped and the link never notices.
    fn pending_bytes(&mut self, i: usize, bytes: &[u8]) {
        let Some(p) = self.links[i].pending.as_mut() else {
            return;
        };
        let result = p.session.handle_bytes(bytes);
        self.flush_pending(i);
        let Some(p) = self.links[i].pending.as_ref() else {
            return;
        };
        if result.is_err() || p.session.is_failed() {
            tracing::warn!(link = self.links[i].id, error = ?p.session.error(), "a new bootstrap connection failed its handshake; the link is kept");
            self.drop_pending(i);
            return;
        }
        if !p.session.is_established() {
            return;
        }
        let Some(p) = self.links[i].pending.take() else {
            return;
        };
        self.fail_link(
            i,
            "the partner authenticated a new bootstrap connection",
            false,
        );
        if !self.ensure_fabric(i) {
            let _ = p.stream.shutdown(Shutdown::Both);
            return;
        }
        self.links[i].conn = Some(p);
        self.set_state(i, LinkState::Handshaking);
        self.flush(i);
        self.drain_session(i);
    }

    /// Closes the pending connection, if any, and counts it (`pending_dropped`).
    fn drop_pending(&mut self, i: usize) {
        if let Some(p) = self.links[i].pending.take() {
            let _ = p.stream.shutdown(Shutdown::Both);
            self.links[i].counters.pending_dropped += 1;
        }
    }

    /// Writes every queued frame of the pending connection (dropped if it fails).
    fn flush_pending(&mut self, i: usize) {
        let Some(p) = self.links[i].pending.as_mut() else {
            return;
        };
        while let Some(frame) = p.session.poll_transmit() {
            if p.stream.write_all(&frame).is_err() {
                self.drop_pending(i);
                return;
            }
        }
    }

    /// A bootstrap connection with its session and reader thread.
    fn new_conn(
        &mut self,
        i: usize,
        id: u64,
        stream: TcpStream,
        role: Role,
    ) -> Result<Conn, String> {
        let link_id = self.links[i].id;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let reader = stream
            .try_clone()
            .map_err(|e| format!("clone bootstrap socket: {e}"))?;
        let session = Session::new(SessionParams {
            role,
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.node_id,
            partner_id: self.cfg.partner_id,
            link_id,
            incarnation: self.incarnation,
            capabilities: capabilities::ALL,
            version_min: self
                .cfg
                .protocol_versions
                .map_or(PROTOCOL_VERSION_MIN, |v| v[0]),
            version_max: self
                .cfg
                .protocol_versions
                .map_or(PROTOCOL_VERSION_MAX, |v| v[1]),
            secret: self.secret.clone(),
            nonce: fresh_nonce(),
        });
        spawn_reader(link_id, id, reader, self.tx.clone()).map_err(|e| e.to_string())?;
        Ok(Conn {
            id,
            stream,
            session,
            established: false,
            sent_peer_info: false,
            offered: Vec::new(),
        })
    }

    /// Writes every queued frame.
    fn flush(&mut self, i: usize) {
        let Some(c) = self.links[i].conn.as_mut() else {
            return;
        };
        let mut failed = None;
        while let Some(frame) = c.session.poll_transmit() {
            if let Err(e) = c.stream.write_all(&frame) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.fail_link(i, &format!("write to the bootstrap connection: {e}"), false);
        }
    }

    fn send(&mut self, i: usize, msg: Message) {
        let name = msg.name();
        let r = match self.links[i].conn.as_mut() {
            Some(c) => c.session.send(msg),
            None => return,
        };
        match r {
            Ok(()) => self.flush(i),
            Err(e) => {
                tracing::warn!(link = self.links[i].id, message = name, error = %e, "send on bootstrap session")
            }
        }
    }

    fn session_failed(&mut self, i: usize, e: SessionError) {
        let refused =
            e.refuse_reason().is_some() || matches!(e, SessionError::RefusedByPeer { .. });
        tracing::error!(link = self.links[i].id, error = %e, "bootstrap session failed");
        let why = format!("bootstrap session: {e}");
        self.fail_link(i, &why, refused);
    }

    fn drain_session(&mut self, i: usize) {
        loop {
            let ev = match self.links[i].conn.as_mut() {
                Some(c) => c.session.poll_event(),
                None => return,
            };
            let Some(ev) = ev else { return };
            match ev {
                SessionEvent::Established { peer, version } => {
                    tracing::info!(
                        link = self.links[i].id,
                        peer_node = peer.node_id,
                        peer_incarnation = peer.incarnation,
                        version,
                        "bootstrap session established"
                    );
                    if let Err(e) = self.established(i, peer.incarnation) {
                        self.fail_link(i, &e.to_string(), false);
                        return;
                    }
                }
                SessionEvent::Message(m) => {
                    if let Err(e) = self.handle_message(i, m) {
                        self.fail_link(i, &e.to_string(), false);
                        return;
                    }
                }
                SessionEvent::Failed(_) => {} // reported through handle_bytes' error
            }
        }
    }

    fn established(&mut self, i: usize, peer_incarnation: u64) -> Result<()> {
        if let Some(known) = self.partner_incarnation {
            if known != peer_incarnation {
                tracing::warn!(
                    old = known,
                    new = peer_incarnation,
                    "partner restarted: re-establishing every link"
                );
                for j in 0..self.links.len() {
                    if j != i && self.links[j].conn.is_some() {
                        self.teardown_link(j, "partner restarted", SuspendReason::PartnerRestarted);
                        self.schedule_retry(j, false);
                    }
                }
                let names: Vec<String> = self.clients.keys().cloned().collect();
                for n in names {
                    if let Some(c) = self.clients.get_mut(&n) {
                        c.detach(SuspendReason::PartnerRestarted);
                        c.pending = None;
                    }
                }
                self.offers.clear();
            }
        }
        self.partner_incarnation = Some(peer_incarnation);
        let id = self.links[i].id;
        let fabric = self.links[i]
            .fabric
            .as_ref()
            .ok_or(ManagerError::Register {
                name: "heartbeat".into(),
                reason: format!("link {id} has no device"),
            })?;
        let hb = Heartbeat::create(
            id,
            fabric,
            self.cfg.heartbeat.miss_count,
            self.links[i].metrics.heartbeat_rtt.clone(),
        )?;
        self.links[i].heartbeat = Some(hb);
        self.publish_health();
        if let Some(c) = self.links[i].conn.as_mut() {
            c.established = true;
        }
        Ok(())
    }
}

mod clients;
mod messages;
mod status;
mod wake;
