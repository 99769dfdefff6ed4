//! The soft provider: verbs semantics in userspace, over TCP between hosts or over an
//! in-process simulated network ([`SimNet`]).
//!
//! Each device runs one engine thread that takes inbound packets and drives retransmission
//! timers. Queue pairs implement the reliable-connected protocol in `rc.rs`: PSNs, cumulative
//! ACKs, go-back-N retransmission after the ACK timeout, RNR NAKs, and NAKs for remote access
//! violations. Every remote READ/WRITE is checked on the target against its regions (rkey,
//! protection domain, bounds, access right); a violation NAKs the initiator (remote-access error
//! completion, queue pair to error, as verbs does), moves the target queue pair to error (as
//! rxe does) and is counted in [`SoftDevice::access_violations`].

mod cut;
mod packet_auth;
mod packet_buf;
mod rc;
mod sim;
mod tcp;
pub use tcp::{IDLE as INBOUND_IDLE, MAX_FRAME, MAX_INBOUND};
pub mod wire;

pub use cut::{is_cut, set_cut};
pub use rc::SoftQp;
pub use sim::{FaultConfig, SimNet, SimStats};

use super::raw::RawCompletion;
use super::types::*;
use crossbeam_channel::{unbounded, Receiver, Sender};
use packet_buf::{Inbox, PacketBuf};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Why a soft-provider operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SoftError {
    /// Binding the TCP listener failed.
    #[error("soft open device: bind {addr}: {source} (is the address configured on this host/namespace?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Attaching to the simulated network failed.
    #[error("soft open device on sim network: {0}")]
    Attach(String),
    /// Starting a thread failed.
    #[error("soft {what}: spawn thread: {source}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// Registration of an empty region.
    #[error("soft register region: length 0 (regions must have at least one byte)")]
    RegisterEmpty,
    /// The peer endpoint cannot be reached by this device's transport.
    #[error(
        "soft connect: peer gid {gid} is not reachable over {transport} (expected {expected})"
    )]
    Unreachable {
        /// Peer GID.
        gid: Gid,
        /// Transport kind.
        transport: &'static str,
        /// What the transport needs.
        expected: &'static str,
    },
    /// The port is down.
    #[error("soft connect: port of device {device} is down")]
    PortDown {
        /// Device name.
        device: String,
    },
}

/// Where a device sends packets.
pub(crate) enum Transport {
    Tcp(tcp::TcpTransport),
    Sim(SimNet, Gid),
}

/// An address a packet goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerAddr {
    Tcp(SocketAddr),
    Sim(Gid),
}

impl Transport {
    fn resolve(&self, ep: &Endpoint) -> Result<PeerAddr, SoftError> {
        match self {
            Transport::Tcp(_) => {
                let ip = ep.gid.to_ip();
                if ep.lid == 0 || ep.gid.0[0] == 0xfd {
                    return Err(SoftError::Unreachable {
                        gid: ep.gid,
                        transport: "tcp",
                        expected: "an IP GID and the listener port in lid",
                    });
                }
                Ok(PeerAddr::Tcp(SocketAddr::new(ip, ep.lid)))
            }
            Transport::Sim(..) => {
                if ep.gid.0[0] != 0xfd {
                    return Err(SoftError::Unreachable {
                        gid: ep.gid,
                        transport: "sim",
                        expected: "a simulated-network GID (fd00::/8)",
                    });
                }
                Ok(PeerAddr::Sim(ep.gid))
            }
        }
    }

    pub(crate) fn send(&self, to: PeerAddr, pkt: PacketBuf) {
        match (self, to) {
            (Transport::Tcp(t), PeerAddr::Tcp(a)) => {
                if !is_cut(t.local_addr().ip()) {
                    t.send(a, pkt)
                }
            }
            (Transport::Sim(net, me), PeerAddr::Sim(g)) => net.send(*me, g, pkt),
            _ => tracing::warn!("soft transport: address of the wrong kind; packet dropped"),
        }
    }
}

/// Memory of a soft region, shared with the engine for remote access.
pub(crate) struct RegionMem {
    pub(crate) key: u32,
    pub(crate) addr: u64,
    pub(crate) access: Access,
    pub(crate) pd: u32,
    pub(crate) data: RwLock<Box<[u8]>>,
}

impl RegionMem {
    /// The byte range `[addr, addr+len)` as an offset, if inside the region.
    pub(crate) fn offset_of(&self, addr: u64, len: usize) -> Option<usize> {
        let off = addr.checked_sub(self.addr)?;
        let end = off.checked_add(len as u64)?;
        if end > self.data.read().len() as u64 {
            return None;
        }
        usize::try_from(off).ok()
    }
}

/// State shared by a device's handles and its engine thread.
pub(crate) struct DeviceShared {
    pub(crate) name: String,
    pub(crate) gid: Gid,
    pub(crate) lid: u16,
    pub(crate) transport: Transport,
    pub(crate) qps: RwLock<HashMap<u32, Arc<rc::QpCore>>>,
    /// Acknowledgements and READ responses dropped for naming no outstanding request.
    pub(crate) stale_responses: AtomicU64,
    /// Packets dropped for want of a valid tag for their queue pair's connection.
    pub(crate) unauthenticated: AtomicU64,
    /// RNR NAKs received: a SEND found no receive posted and waits to be retransmitted.
    pub(crate) rnr_naks: AtomicU64,
    pub(crate) regions: RwLock<HashMap<u32, Weak<RegionMem>>>,
    next_qpn: AtomicU32,
    next_key: AtomicU32,
    next_pd: AtomicU32,
    next_addr: AtomicU64,
    violations: AtomicU64,
    subscribers: Mutex<Vec<Sender<AsyncEvent>>>,
    port_up: AtomicBool,
    iface: Option<String>,
    stop: AtomicBool,
}

impl DeviceShared {
    pub(crate) fn emit(&self, ev: AsyncEvent) {
        match ev {
            AsyncEvent::PortDown { .. } => self.port_up.store(false, Ordering::SeqCst),
            AsyncEvent::PortActive { .. } => self.port_up.store(true, Ordering::SeqCst),
            _ => {}
        }
        tracing::debug!(device = %self.name, event = ?ev, "soft device event");
        self.subscribers.lock().retain(|s| s.send(ev).is_ok());
    }

    pub(crate) fn region(&self, key: u32) -> Option<Arc<RegionMem>> {
        self.regions.read().get(&key).and_then(Weak::upgrade)
    }

    /// Whether the port is up (no cut link on a sim network; interface flags on TCP, and no
    /// simulated cut: [`set_cut`]).
    pub(crate) fn port_active(&self) -> bool {
        match &self.transport {
            Transport::Sim(net, gid) => !net.port_down(*gid),
            Transport::Tcp(_) => self.port_up.load(Ordering::SeqCst),
        }
    }

    /// Whether this TCP device's address is cut ([`set_cut`]): packets are dropped both ways.
    fn is_cut(&self) -> bool {
        match &self.transport {
            Transport::Tcp(t) => is_cut(t.local_addr().ip()),
            Transport::Sim(..) => false,
        }
    }

    pub(crate) fn count_violation(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
    }
}

/// A soft device: one port with a GID, on TCP or a simulated network.
pub struct SoftDevice {
    shared: Arc<DeviceShared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for SoftDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Transport::Sim(net, gid) = &self.shared.transport {
            net.detach(*gid);
        }
        for h in self.threads.lock().drain(..) {
            if h.join().is_err() {
                tracing::warn!(device = %self.shared.name, "soft device thread panicked");
            }
        }
    }
}

fn iface_for(ip: IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let found = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip()) == ip
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip()) == ip
        } else {
            false
        };
        if found {
            return Some(a.interface_name);
        }
    }
    None
}

/// Whether the interface is administratively up with its carrier (lower layer) up, in the
/// calling thread's network namespace.
fn iface_up(iface: &str) -> bool {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return true;
    };
    let mut seen = false;
    for a in addrs.filter(|a| a.interface_name == iface) {
        seen = true;
        if a.flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING)
        {
            return true;
        }
    }
    !seen
}

impl SoftDevice {
    fn start(
        name: String,
        gid: Gid,
        lid: u16,
        transport: Transport,
        inbox: Arc<Inbox>,
        iface: Option<String>,
    ) -> Result<Arc<SoftDevice>, SoftError> {
        let cut = match &transport {
            Transport::Tcp(t) => is_cut(t.local_addr().ip()),
            Transport::Sim(..) => false,
        };
        let port_up = iface.as_deref().is_none_or(iface_up) && !cut;
        let is_tcp = matches!(transport, Transport::Tcp(_));
        let netns = tcp::current_netns();
        let shared = Arc::new(DeviceShared {
            name,
            gid,
            lid,
            transport,
            qps: RwLock::new(HashMap::new()),
            regions: RwLock::new(HashMap::new()),
            // A random first QPN (above the 0x10 reserved ones): a stale or forged packet
            // must guess it.
            next_qpn: AtomicU32::new(0x11 + (rand::random::<u32>() >> 9)),
            stale_responses: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            rnr_naks: AtomicU64::new(0),
            // A random first index: a restarted process (a new device) does not hand out the
            // keys of its previous run again, so a stale peer's old descriptors do not address
            // the new run's regions.
            next_key: AtomicU32::new(rand::random::<u32>() >> 9 | 1),
            next_pd: AtomicU32::new(1),
            next_addr: AtomicU64::new(0x7f00_0000_0000 | (u64::from(lid) << 28)),
            violations: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            port_up: AtomicBool::new(port_up),
            iface,
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let engine = std::thread::Builder::new()
            .name(format!("interlink-soft-{}", shared.name))
            .spawn(move || {
                super::prime_thread_parking();
                engine_loop(&s, &inbox)
            })
            .map_err(|source| SoftError::Spawn {
                what: "engine",
                source,
            })?;
        let mut threads = vec![engine];
        if is_tcp {
            let s = shared.clone();
            let mon = std::thread::Builder::new()
                .name(format!("interlink-soft-link-{}", shared.name))
                .spawn(move || {
                    tcp::enter_netns(netns.as_deref());
                    link_monitor(&s)
                })
                .map_err(|source| SoftError::Spawn {
                    what: "link monitor",
                    source,
                })?;
            threads.push(mon);
        }
        Ok(Arc::new(SoftDevice {
            shared,
            threads: Mutex::new(threads),
        }))
    }

    /// Opens a device listening on `addr:port` (port 0: any free port).
    pub fn open_tcp(addr: IpAddr, port: u16) -> Result<Arc<SoftDevice>, SoftError> {
        let inbox = Arc::new(Inbox::default());
        let bind = SocketAddr::new(addr, port);
        let t = tcp::TcpTransport::bind(bind, inbox.clone())
            .map_err(|source| SoftError::Bind { addr: bind, source })?;
        let local = t.local_addr();
        let iface = if addr.is_loopback() {
            None
        } else {
            iface_for(addr)
        };
        Self::start(
            format!("soft-{}", local),
            Gid::from_ip(addr),
            local.port(),
            Transport::Tcp(t),
            inbox,
            iface,
        )
    }

    /// Opens a device named `name` on a simulated network.
    pub fn open_sim(net: &SimNet, name: &str) -> Result<Arc<SoftDevice>, SoftError> {
        let inbox = Arc::new(Inbox::default());
        // The event sink is filled in once the device exists.
        let sink: Arc<Mutex<Weak<DeviceShared>>> = Arc::new(Mutex::new(Weak::new()));
        let sink2 = sink.clone();
        let gid = net
            .attach(sim::Node {
                name: name.to_string(),
                inbox: inbox.clone(),
                events: Arc::new(move |ev| {
                    if let Some(d) = sink2.lock().upgrade() {
                        d.emit(ev);
                    }
                }),
            })
            .map_err(SoftError::Attach)?;
        let dev = Self::start(
            name.to_string(),
            gid,
            0,
            Transport::Sim(net.clone(), gid),
            inbox,
            None,
        )?;
        *sink.lock() = Arc::downgrade(&dev.shared);
        Ok(dev)
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// The port's GID.
    pub fn gid(&self) -> Gid {
        self.shared.gid
    }
    /// The listener port (TCP) carried in endpoint descriptors as `lid`; 0 on a sim network.
    pub fn lid(&self) -> u16 {
        self.shared.lid
    }
    /// Whether the port is up (interface operstate on TCP; no cut link on a sim network).
    pub fn port_active(&self) -> super::Result<bool> {
        Ok(self.shared.port_active())
    }
    /// A new receiver of the device's events.
    pub fn subscribe_events(&self) -> Receiver<AsyncEvent> {
        let (tx, rx) = unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }
    /// Remote accesses refused on this device (bad rkey, bounds, rights).
    pub fn access_violations(&self) -> u64 {
        self.shared.violations.load(Ordering::Relaxed)
    }

    /// Acknowledgements and READ responses dropped because they named no outstanding
    /// request (stale, duplicated, or forged).
    pub fn stale_responses(&self) -> u64 {
        self.shared.stale_responses.load(Ordering::Relaxed)
    }

    /// Packets dropped because their queue pair's connection is keyed and their tag is
    /// missing or wrong, or it is not keyed and they carry one (docs/security.md P16).
    pub fn unauthenticated(&self) -> u64 {
        self.shared.unauthenticated.load(Ordering::Relaxed)
    }

    /// RNR NAKs received: SENDs the responder had no receive posted for, retransmitted
    /// after the RNR delay.
    pub fn rnr_naks(&self) -> u64 {
        self.shared.rnr_naks.load(Ordering::Relaxed)
    }

    /// The inbound connections of the TCP transport (None on the in-process network).
    pub fn inbound(&self) -> Option<InboundCounters> {
        match &self.shared.transport {
            Transport::Tcp(t) => {
                let s = t.inbound();
                Some(InboundCounters {
                    open: s.open.load(Ordering::Relaxed),
                    accepted: s.accepted.load(Ordering::Relaxed),
                    evicted: s.evicted.load(Ordering::Relaxed),
                    idle_closed: s.idle_closed.load(Ordering::Relaxed),
                    oversized: s.oversized.load(Ordering::Relaxed),
                })
            }
            Transport::Sim(..) => None,
        }
    }
}

/// The inbound connections of a soft device's TCP transport (see `tcp.rs`: at most
/// [`MAX_INBOUND`] at once, idle ones closed after [`INBOUND_IDLE`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundCounters {
    /// Open now.
    pub open: usize,
    /// Accepted in total.
    pub accepted: u64,
    /// Closed to make room for a newer one.
    pub evicted: u64,
    /// Closed after a silence of [`INBOUND_IDLE`].
    pub idle_closed: u64,
    /// Closed for announcing a frame beyond [`MAX_FRAME`].
    pub oversized: u64,
}

fn engine_loop(dev: &Arc<DeviceShared>, inbox: &Inbox) {
    const TICK: Duration = Duration::from_millis(2);
    let mut next_scan = Instant::now() + TICK;
    // Reused every scan, so the timer scan does not allocate.
    let mut qps: Vec<Arc<rc::QpCore>> = Vec::new();
    while !dev.stop.load(Ordering::SeqCst) {
        // A cut device drops everything it receives.
        if let Some(pkt) = inbox.pop_timeout(TICK).filter(|_| !dev.is_cut()) {
            match wire::dst_qpn(&pkt) {
                Some(dst) => {
                    let qp = dev.qps.read().get(&dst).cloned();
                    match qp {
                        Some(qp) => qp.receive(dev, &pkt, Instant::now()),
                        None => tracing::trace!(qpn = dst, "packet for unknown queue pair"),
                    }
                }
                None => tracing::debug!(device = %dev.name, "truncated packet dropped"),
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            next_scan = now + TICK;
            qps.extend(dev.qps.read().values().cloned());
            for qp in qps.drain(..) {
                qp.handle_timeout(dev, now);
            }
        }
    }
}

fn link_monitor(dev: &DeviceShared) {
    while !dev.stop.load(Ordering::SeqCst) {
        let up = dev.iface.as_deref().is_none_or(iface_up) && !dev.is_cut();
        if up != dev.port_up.load(Ordering::SeqCst) {
            dev.emit(if up {
                AsyncEvent::PortActive { port: 1 }
            } else {
                AsyncEvent::PortDown { port: 1 }
            });
        }
        // 50 ms between checks, in slices so a dropped device stops at once.
        for _ in 0..5 {
            if dev.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A soft protection domain.
pub struct SoftPd {
    pub(crate) id: u32,
    pub(crate) device: Arc<SoftDevice>,
}

impl SoftPd {
    /// Allocates a protection domain on `device`.
    pub fn new(device: &Arc<SoftDevice>) -> Arc<SoftPd> {
        Arc::new(SoftPd {
            id: device.shared.next_pd.fetch_add(1, Ordering::Relaxed),
            device: device.clone(),
        })
    }
}

/// A soft memory region; owns its memory.
pub struct SoftMr {
    mem: Arc<RegionMem>,
    len: usize,
    /// Set (under the device's region-table lock) once the key left the table.
    revoked: AtomicBool,
    _pd: Arc<SoftPd>,
}

impl Drop for SoftMr {
    fn drop(&mut self) {
        if !*self.revoked.get_mut() {
            self._pd.device.shared.regions.write().remove(&self.mem.key);
        }
    }
}

impl SoftMr {
    /// Allocates and registers `len` zeroed bytes with `access`.
    pub fn register(pd: &Arc<SoftPd>, len: usize, access: Access) -> super::Result<SoftMr> {
        if len == 0 {
            return Err(SoftError::RegisterEmpty.into());
        }
        let dev = &pd.device.shared;
        let idx = dev.next_key.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        // Keys mix a per-device index (unique among live regions) with 8 random bits, as rxe
        // does, so stale or guessed keys fail.
        let key = (idx << 8) | u32::from(rand::random::<u8>());
        let pages = (len as u64).div_ceil(4096) + 1;
        let addr = dev.next_addr.fetch_add(pages * 4096, Ordering::Relaxed);
        // No RDMA FLUSH on this provider: the right is not granted (see Access::REMOTE_FLUSH).
        let access = access.without(Access::REMOTE_FLUSH);
        let mem = Arc::new(RegionMem {
            key,
            addr,
            access,
            pd: pd.id,
            data: RwLock::new(vec![0u8; len].into_boxed_slice()),
        });
        dev.regions.write().insert(key, Arc::downgrade(&mem));
        Ok(SoftMr {
            mem,
            len,
            revoked: AtomicBool::new(false),
            _pd: pd.clone(),
        })
    }

    /// Deregisters the region now: its key leaves the device's region table, so remote access
    /// naming it is refused exactly like an unknown rkey (remote access error at the
    /// initiator), and requests that name it locally and are processed later complete with a
    /// local protection error. The memory stays readable and writable through this handle.
    /// Idempotent.
    pub fn revoke(&self) {
        let mut regions = self._pd.device.shared.regions.write();
        if !self.revoked.load(Ordering::SeqCst) {
            regions.remove(&self.mem.key);
            self.revoked.store(true, Ordering::SeqCst);
        }
    }

    /// Whether [`SoftMr::revoke`] deregistered the region.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }
    /// The rights granted (never REMOTE_FLUSH).
    pub fn access(&self) -> Access {
        self.mem.access
    }

    /// Address, length and rkey.
    pub fn descriptor(&self) -> RegionDescriptor {
        RegionDescriptor {
            addr: self.mem.addr,
            len: self.len as u64,
            rkey: self.mem.key,
        }
    }
    /// Local key (equal to the rkey).
    pub fn lkey(&self) -> u32 {
        self.mem.key
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region is empty (never: registration rejects length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Copies out (bounds checked by the caller).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        if let Some(src) = self.mem.data.read().get(offset..offset + dst.len()) {
            dst.copy_from_slice(src);
        }
    }
    /// Runs `f` on a mutable slice of the memory (bounds checked by the caller).
    pub fn fill<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let mut data = self.mem.data.write();
        data.get_mut(offset..offset + len).map(f)
    }
    /// Copies in (bounds checked by the caller).
    pub fn write(&self, offset: usize, src: &[u8]) {
        if let Some(dst) = self.mem.data.write().get_mut(offset..offset + src.len()) {
            dst.copy_from_slice(src);
        }
    }
    /// Loads a word (native order).
    pub fn read_u64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(offset, &mut b);
        u64::from_ne_bytes(b)
    }
    /// Stores a word (native order); atomic with respect to remote access.
    pub fn write_u64(&self, offset: usize, v: u64) {
        self.write(offset, &v.to_ne_bytes());
    }
}

/// A soft completion queue.
pub struct SoftCq {
    queue: Mutex<VecDeque<RawCompletion>>,
    ready: Condvar,
    depth: usize,
    overflowed: AtomicBool,
}

impl SoftCq {
    /// A completion queue with room for `depth` entries.
    pub fn new(_device: &Arc<SoftDevice>, depth: u32) -> Arc<SoftCq> {
        Arc::new(SoftCq {
            queue: Mutex::new(VecDeque::with_capacity(depth as usize)),
            ready: Condvar::new(),
            depth: depth.max(1) as usize,
            overflowed: AtomicBool::new(false),
        })
    }

    pub(crate) fn push(&self, c: RawCompletion) {
        let mut q = self.queue.lock();
        if q.len() >= self.depth && !self.overflowed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                depth = self.depth,
                "soft completion queue overrun; keeping entries"
            );
        }
        q.push_back(c);
        drop(q);
        self.ready.notify_all();
    }

    /// Moves up to `max` completions to `out`.
    pub fn poll(&self, out: &mut Vec<RawCompletion>, max: usize) -> super::Result<usize> {
        let mut q = self.queue.lock();
        let n = max.min(q.len());
        out.extend(q.drain(..n));
        Ok(n)
    }

    /// Waits until the queue is non-empty or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> super::Result<()> {
        let mut q = self.queue.lock();
        if q.is_empty() {
            self.ready.wait_for(&mut q, timeout);
        }
        Ok(())
    }
}
