//! A link's I/O: the bootstrap TCP connection, its RDMA device, and the heartbeat.
//!
//! The connector (initiator), acceptor (responder) and reader threads only move bytes: they
//! report [`IoEvent`]s, tagged with the link and the connection attempt, to the manager's event
//! loop, which parses and answers them. The connector binds the link's local address before
//! connecting, so the connection takes the link's path.
//!
//! [`LinkFabric`] (device, protection domain, async event subscription) is opened once per link
//! and kept across re-initialisations. A [`Heartbeat`] exists per session: a queue pair with its
//! own completion queue, our 64-byte health block (remote read only; layout in
//! [`crate::manager::health`]) and a landing region. Every interval the loop posts one RDMA READ of
//! the partner's block (never more than one outstanding); a failed READ, or `miss_count`
//! intervals without progress ([`HeartbeatMonitor`]), fails the link. Teardown resets the queue
//! pair and revokes the health block.

use crate::fabric::{
    AsyncEvent, CompletionQueue, ConnectOptions, Device, DeviceConfig, MemoryRegion,
    ProtectionDomain, ProviderChoice, QpCapacity, QueuePair, RegionDescriptor, SendOp, SendRequest,
};
use crate::manager::client::{new_histogram, record_us};
use crate::manager::config::LinkConfig;
use crate::manager::error::{ManagerError, Result};
use crate::manager::health::{
    HealthBlock, HeartbeatMonitor, HEALTH_BLOCK_ACCESS, HEALTH_BLOCK_LEN, HEALTH_LANDING_ACCESS,
};
use crate::manager::node::Command;
use crate::manager::types::LinkId;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What the I/O threads report to the event loop.
#[derive(Debug)]
pub(crate) enum IoEvent {
    /// The initiator's connect succeeded.
    Connected(TcpStream),
    /// The initiator's connect failed.
    ConnectFailed(io::Error),
    /// The responder accepted a connection.
    Accepted(TcpStream, SocketAddr),
    /// Bytes arrived on the connection.
    Bytes(Vec<u8>),
    /// The connection closed (EOF or error).
    Closed(Option<io::Error>),
}

/// An I/O report, tagged with the link and the connection attempt it belongs to.
#[derive(Debug)]
pub(crate) struct IoMsg {
    pub(crate) link: LinkId,
    pub(crate) conn: u64,
    pub(crate) event: IoEvent,
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| ManagerError::Spawn { name, source })
}

/// Connects to the partner's bootstrap port on a thread; reports `Connected` or `ConnectFailed`.
pub(crate) fn spawn_connector(
    link: LinkId,
    conn: u64,
    local: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
    tx: Sender<Command>,
) -> Result<()> {
    spawn(format!("il-connect-{link}"), move || {
        let event = match connect_from(local, addr, timeout) {
            Ok(s) => IoEvent::Connected(s),
            Err(e) => IoEvent::ConnectFailed(e),
        };
        let _ = tx.send(Command::Io(IoMsg { link, conn, event }));
    })
    .map(drop)
}

/// Connects from the link's local address (so the partner sees the address it expects and
/// the connection takes this link's path).
fn connect_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// A running acceptor; dropping it stops the thread and waits for it (at most one poll
/// period), so the port is free again when the drop returns (a manager started again at
/// once binds it).
pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the bootstrap listener and accepts connections on a thread.
pub(crate) fn spawn_acceptor(
    link: LinkId,
    addr: SocketAddr,
    tx: Sender<Command>,
) -> Result<Acceptor> {
    let listener =
        TcpListener::bind(addr).map_err(|source| ManagerError::Listen { link, addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ManagerError::Listen { link, addr, source })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = spawn(format!("il-accept-{link}"), move || {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        while !flag.load(Ordering::Relaxed) {
            // Wait for a connection (at once) or 50 ms, to notice `stop`.
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::from(50u16)) {
                if e != nix::errno::Errno::EINTR {
                    tracing::warn!(link, error = %e, "poll on bootstrap listener");
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            match listener.accept() {
                Ok((s, from)) => {
                    let _ = s.set_nonblocking(false);
                    if tx
                        .send(Command::Io(IoMsg {
                            link,
                            conn: 0,
                            event: IoEvent::Accepted(s, from),
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!(link, error = %e, "accept on bootstrap listener");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(Acceptor {
        stop,
        thread: Some(thread),
    })
}

/// Reads the connection on a thread until it closes; reports `Bytes` and one `Closed`.
pub(crate) fn spawn_reader(
    link: LinkId,
    conn: u64,
    mut stream: TcpStream,
    tx: Sender<Command>,
) -> Result<()> {
    spawn(format!("il-read-{link}"), move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Command::Io(IoMsg {
                        link,
                        conn,
                        event: IoEvent::Closed(None),
                    }));
                    return;
                }
                Ok(n) => {
                    let ev = IoEvent::Bytes(buf[..n].to_vec());
                    if tx
                        .send(Command::Io(IoMsg {
                            link,
                            conn,
                            event: ev,
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Command::Io(IoMsg {
                        link,
                        conn,
                        event: IoEvent::Closed(Some(e)),
                    }));
                    return;
                }
            }
        }
    })
    .map(drop)
}

/// A link's device and protection domain, opened once and kept across re-initialisations.
pub(crate) struct LinkFabric {
    pub(crate) device: Device,
    pub(crate) pd: ProtectionDomain,
    pub(crate) events: Receiver<AsyncEvent>,
}

impl LinkFabric {
    pub(crate) fn open(cfg: &LinkConfig, provider: ProviderChoice) -> Result<LinkFabric> {
        let dc = DeviceConfig {
            provider,
            name: cfg.device.clone(),
            addr: Some(cfg.local),
            port: 1,
            soft_port: cfg.soft_port,
        };
        let err = |source| ManagerError::OpenDevice {
            link: cfg.id,
            source,
        };
        let device = Device::open(&dc).map_err(err)?;
        let pd = device.alloc_pd().map_err(err)?;
        let events = device.subscribe_events();
        Ok(LinkFabric { device, pd, events })
    }
}

/// The heartbeat of one link session: our health block the partner reads, and our READs of
/// the partner's.
pub(crate) struct Heartbeat {
    link: LinkId,
    cq: CompletionQueue,
    qp: QueuePair,
    /// Our health block (remote read only).
    pub(crate) health: MemoryRegion,
    landing: MemoryRegion,
    peer: Option<RegionDescriptor>,
    outstanding: Option<Instant>,
    next_wr: u64,
    pub(crate) monitor: HeartbeatMonitor,
    pub(crate) rtt: Histogram<u64>,
    /// The link's round-trip metric ([`crate::recorded_metrics::LINK_HEARTBEAT_RTT`]).
    rtt_metric: metrics::Histogram,
    pub(crate) reads: u64,
    /// The partner's last good block.
    pub(crate) last_block: Option<HealthBlock>,
    /// Copies read since the last [`Heartbeat::take_copies`]: `Some` believed, `None` torn.
    copies: Vec<Option<HealthBlock>>,
}

/// What a heartbeat poll found.
pub(crate) enum HeartbeatPoll {
    /// Nothing wrong.
    Fine,
    /// The READ failed: the path to the partner is broken.
    Failed(String),
}

impl Heartbeat {
    pub(crate) fn create(
        link: LinkId,
        fabric: &LinkFabric,
        miss_count: u32,
        rtt_metric: metrics::Histogram,
    ) -> Result<Heartbeat> {
        let err = |source| ManagerError::CreateResources {
            link,
            owner: "heartbeat".into(),
            source,
        };
        let cq = fabric.device.create_cq(16).map_err(err)?;
        let cap = QpCapacity {
            max_send_wr: 8,
            max_recv_wr: 1,
            max_inline_data: 0,
            flush: false,
        };
        let qp = fabric.pd.create_qp(&cq, &cq, cap).map_err(err)?;
        let health = fabric
            .pd
            .register(HEALTH_BLOCK_LEN, HEALTH_BLOCK_ACCESS)
            .map_err(err)?;
        let landing = fabric
            .pd
            .register(HEALTH_BLOCK_LEN, HEALTH_LANDING_ACCESS)
            .map_err(err)?;
        Ok(Heartbeat {
            link,
            cq,
            qp,
            health,
            landing,
            peer: None,
            outstanding: None,
            next_wr: 1,
            monitor: HeartbeatMonitor::new(miss_count),
            rtt: new_histogram(),
            rtt_metric,
            reads: 0,
            last_block: None,
            copies: Vec::new(),
        })
    }

    pub(crate) fn endpoint(&self) -> Result<crate::fabric::Endpoint> {
        self.qp
            .endpoint()
            .map_err(|source| ManagerError::CreateResources {
                link: self.link,
                owner: "heartbeat".into(),
                source,
            })
    }

    pub(crate) fn connect(
        &mut self,
        peer_qp: &crate::fabric::Endpoint,
        peer_health: RegionDescriptor,
        opts: &ConnectOptions,
    ) -> Result<()> {
        self.qp
            .connect(peer_qp, opts)
            .map_err(|source| ManagerError::ConnectQp {
                link: self.link,
                owner: "heartbeat".into(),
                index: 0,
                source,
            })?;
        self.peer = Some(peer_health);
        Ok(())
    }

    /// Writes our block.
    pub(crate) fn publish(&self, block: &HealthBlock) {
        if let Err(e) = self.health.write(0, &block.encode()) {
            tracing::warn!(link = self.link, error = %e, "write health block");
        }
    }

    /// Polls the READ's completion.
    pub(crate) fn poll(&mut self) -> HeartbeatPoll {
        let mut out = Vec::new();
        if let Err(e) = self.cq.poll(&mut out, 8) {
            return HeartbeatPoll::Failed(format!("poll heartbeat queue: {e}"));
        }
        for c in out {
            let started = self.outstanding.take();
            if !c.status.is_ok() {
                return HeartbeatPoll::Failed(format!("heartbeat READ failed: {:?}", c.status));
            }
            if let Some(t) = started {
                let rtt = t.elapsed();
                record_us(&mut self.rtt, rtt);
                self.rtt_metric.record(rtt);
            }
            self.absorb_landing();
        }
        HeartbeatPoll::Fine
    }

    /// The copies read since the last call (believed or torn), oldest first.
    pub(crate) fn take_copies(&mut self) -> std::vec::Drain<'_, Option<HealthBlock>> {
        self.copies.drain(..)
    }

    /// When the READ in flight was posted (None: none in flight).
    pub(crate) fn outstanding_since(&self) -> Option<Instant> {
        self.outstanding
    }

    /// Posts the next READ unless one is outstanding.
    pub(crate) fn post_read(&mut self) -> HeartbeatPoll {
        let Some(peer) = self.peer else {
            return HeartbeatPoll::Fine;
        };
        if self.outstanding.is_some() {
            return HeartbeatPoll::Fine;
        }
        let req = SendRequest::new(self.next_wr, SendOp::Read(peer.at(0)), self.landing.whole());
        self.next_wr += 1;
        match self.qp.post_send(req) {
            Ok(()) => {
                self.outstanding = Some(Instant::now());
                HeartbeatPoll::Fine
            }
            Err(e) => HeartbeatPoll::Failed(format!("post heartbeat READ: {e}")),
        }
    }

    /// Reads the partner's block `count` times back to back, each READ posted after the last
    /// completed, and returns each READ's round trip (the latency of a partner-state read).
    /// Every copy also counts as a heartbeat read.
    pub(crate) fn timed_reads(
        &mut self,
        count: usize,
    ) -> std::result::Result<Vec<Duration>, String> {
        let Some(peer) = self.peer else {
            return Err("the heartbeat is not connected yet".into());
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.outstanding.is_some() {
            if let HeartbeatPoll::Failed(why) = self.poll() {
                return Err(why);
            }
            if Instant::now() > deadline {
                return Err("an earlier heartbeat READ did not complete".into());
            }
        }
        let mut out = Vec::with_capacity(count);
        let mut completions = Vec::with_capacity(4);
        let busy_poll = crate::fabric::BusyPoll::for_provider(self.cq.device().provider());
        for _ in 0..count {
            let req =
                SendRequest::new(self.next_wr, SendOp::Read(peer.at(0)), self.landing.whole());
            self.next_wr += 1;
            let start = Instant::now();
            self.qp
                .post_send(req)
                .map_err(|e| format!("post heartbeat READ: {e}"))?;
            loop {
                completions.clear();
                self.cq
                    .poll(&mut completions, 4)
                    .map_err(|e| format!("poll heartbeat queue: {e}"))?;
                if let Some(c) = completions.first() {
                    if !c.status.is_ok() {
                        return Err(format!("heartbeat READ failed: {:?}", c.status));
                    }
                    break;
                }
                let now = Instant::now();
                if now.duration_since(start) > Duration::from_secs(5) {
                    return Err("heartbeat READ did not complete within 5 s".into());
                }
                busy_poll.round(start, now);
            }
            out.push(start.elapsed());
            self.absorb_landing();
        }
        Ok(out)
    }

    /// Decodes the copy a completed READ left in the landing buffer and records it.
    fn absorb_landing(&mut self) {
        self.reads += 1;
        let mut b = [0u8; HEALTH_BLOCK_LEN];
        let copy = self
            .landing
            .read(0, &mut b)
            .map_err(|_| crate::codec::WireError::Truncated {
                field: "health block landing buffer",
                needed: HEALTH_BLOCK_LEN,
                available: 0,
            })
            .and_then(|_| HealthBlock::decode(&b));
        match &copy {
            Ok(block) => self.last_block = Some(*block),
            Err(e) => {
                tracing::debug!(link = self.link, error = %e, "health block copy not believed; reading again")
            }
        }
        self.copies.push(copy.as_ref().ok().copied());
        self.monitor.handle_read(copy);
    }

    /// Whether this queue pair number is the heartbeat's.
    pub(crate) fn has_qpn(&self, qpn: u32) -> bool {
        self.qp.qpn() == qpn
    }

    /// Resets the queue pair and revokes the health block.
    pub(crate) fn teardown(self) {
        if let Err(e) = self.qp.reset() {
            tracing::warn!(link = self.link, error = %e, "reset heartbeat queue pair");
        }
        if let Err(e) = self.health.revoke() {
            tracing::warn!(link = self.link, error = %e, "revoke health block");
        }
    }
}
