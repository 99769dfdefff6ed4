//! The provider-neutral handles: device, protection domain, regions, completion queues and
//! queue pairs. Each dispatches to the provider that created it.

use super::raw::{RawCompletion, RawOp, RawRecv, RawSend, RawSge};
use super::soft::{self, SimNet};
use super::tracker::{Queue, Tracker};
use super::types::*;
#[cfg(feature = "verbs")]
use super::verbs;
use super::{DeviceConfig, FabricError, ProviderChoice, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// One object of either provider.
enum Provider<V, S> {
    #[cfg(feature = "verbs")]
    Verbs(V),
    /// Without the `verbs` feature no verbs object can exist: [`Absent`] has no values.
    #[cfg(not(feature = "verbs"))]
    #[allow(dead_code)]
    Verbs(Absent<V>),
    Soft(S),
}

/// The payload of a verbs object in a build without the `verbs` feature: it has no values,
/// so the code that would use one is statically unreachable.
#[cfg(not(feature = "verbs"))]
struct Absent<V>(std::convert::Infallible, std::marker::PhantomData<V>);

#[cfg(not(feature = "verbs"))]
impl<V> Absent<V> {
    fn absurd<T>(&self) -> T {
        match self.0 {}
    }
}

/// The verbs objects' names in a build without the `verbs` feature (none can exist).
#[cfg(not(feature = "verbs"))]
mod verbs {
    pub enum VerbsDevice {}
    pub enum VerbsPd {}
    pub enum VerbsCq {}
    pub enum VerbsMr {}
    pub enum VerbsQp {}
}

macro_rules! dispatch {
    ($value:expr, $bind:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "verbs")]
            Provider::Verbs($bind) => $body,
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(absent) => absent.absurd(),
            Provider::Soft($bind) => $body,
        }
    };
}

/// An opened RDMA device (one port of it), of either provider.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Provider<Arc<verbs::VerbsDevice>, Arc<soft::SoftDevice>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("provider", &self.provider())
            .field("name", &self.name())
            .field("gid", &self.gid())
            .finish()
    }
}

impl Device {
    /// Opens the device a configuration selects (see [`ProviderChoice`] for the fallback).
    pub fn open(cfg: &DeviceConfig) -> Result<Device> {
        match cfg.provider {
            ProviderChoice::Verbs => Self::open_verbs(cfg),
            ProviderChoice::Soft => Self::open_soft(cfg),
            ProviderChoice::Auto => match Self::open_verbs(cfg) {
                Ok(dev) => Ok(dev),
                Err(e) => {
                    tracing::info!(error = %e, "no verbs device for this config; using the soft provider");
                    Self::open_soft(cfg)
                }
            },
        }
    }

    #[cfg(not(feature = "verbs"))]
    fn open_verbs(_: &DeviceConfig) -> Result<Device> {
        Err(FabricError::VerbsNotBuilt)
    }

    #[cfg(feature = "verbs")]
    fn open_verbs(cfg: &DeviceConfig) -> Result<Device> {
        let dev = match (&cfg.name, cfg.addr) {
            (Some(name), _) => verbs::VerbsDevice::open_by_name(name, cfg.port)?,
            (None, Some(addr)) => verbs::VerbsDevice::open_by_addr(addr, Some(cfg.port))?,
            (None, None) => {
                return Err(FabricError::DeviceConfig(
                    "name a device or the local address it serves".into(),
                ))
            }
        };
        if !dev.port_active()? {
            tracing::warn!(device = dev.name(), port = dev.port(), "port is not active");
        }
        tracing::info!(device = dev.name(), gid = %dev.gid(), "opened verbs device");
        Ok(Device {
            inner: Arc::new(Provider::Verbs(dev)),
        })
    }

    fn open_soft(cfg: &DeviceConfig) -> Result<Device> {
        let addr = cfg.addr.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let dev = soft::SoftDevice::open_tcp(addr, cfg.soft_port)?;
        tracing::info!(device = dev.name(), gid = %dev.gid(), port = dev.lid(), "opened soft device");
        Ok(Device {
            inner: Arc::new(Provider::Soft(dev)),
        })
    }

    /// Opens a soft device attached to an in-process simulated network.
    pub fn open_sim(net: &SimNet, name: &str) -> Result<Device> {
        let dev = soft::SoftDevice::open_sim(net, name)?;
        Ok(Device {
            inner: Arc::new(Provider::Soft(dev)),
        })
    }

    /// The provider behind this device.
    pub fn provider(&self) -> ProviderKind {
        match &*self.inner {
            Provider::Verbs(_) => ProviderKind::Verbs,
            Provider::Soft(_) => ProviderKind::Soft,
        }
    }

    /// The device name.
    pub fn name(&self) -> String {
        dispatch!(&*self.inner, d => d.name().to_string())
    }

    /// The port's GID used for connections.
    pub fn gid(&self) -> Gid {
        dispatch!(&*self.inner, d => d.gid())
    }

    /// The soft provider's inbound TCP connections (None on verbs and on the in-process
    /// network).
    pub fn soft_inbound(&self) -> Option<soft::InboundCounters> {
        match &*self.inner {
            Provider::Soft(d) => d.inbound(),
            Provider::Verbs(_) => None,
        }
    }

    /// Acknowledgements and READ responses the soft provider dropped for naming no
    /// outstanding request (None on verbs).
    pub fn soft_stale_responses(&self) -> Option<u64> {
        match &*self.inner {
            Provider::Soft(d) => Some(d.stale_responses()),
            Provider::Verbs(_) => None,
        }
    }

    /// RNR NAKs the soft provider received: SENDs its peer had no receive posted for,
    /// retransmitted after the RNR delay (None on verbs).
    pub fn soft_rnr_naks(&self) -> Option<u64> {
        match &*self.inner {
            Provider::Soft(d) => Some(d.rnr_naks()),
            Provider::Verbs(_) => None,
        }
    }

    /// Packets the soft provider dropped for want of a valid tag for their connection
    /// (`ConnectOptions::packet_key`; None on verbs).
    pub fn soft_unauthenticated(&self) -> Option<u64> {
        match &*self.inner {
            Provider::Soft(d) => Some(d.unauthenticated()),
            Provider::Verbs(_) => None,
        }
    }

    /// Whether the port is active.
    pub fn port_active(&self) -> Result<bool> {
        dispatch!(&*self.inner, d => d.port_active())
    }

    /// A new receiver of the device's asynchronous events (port up/down, QP fatal, ...).
    pub fn subscribe_events(&self) -> crossbeam_channel::Receiver<AsyncEvent> {
        dispatch!(&*self.inner, d => d.subscribe_events())
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        let inner = match &*self.inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(d) => Provider::Verbs(verbs::VerbsPd::new(d)?),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(d) => d.absurd(),
            Provider::Soft(d) => Provider::Soft(soft::SoftPd::new(d)),
        };
        Ok(ProtectionDomain {
            inner: Arc::new(inner),
            device: self.clone(),
        })
    }

    /// Creates a completion queue with room for `depth` completions.
    pub fn create_cq(&self, depth: u32) -> Result<CompletionQueue> {
        let inner = match &*self.inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(d) => Provider::Verbs(verbs::VerbsCq::new(d, depth)?),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(d) => d.absurd(),
            Provider::Soft(d) => Provider::Soft(soft::SoftCq::new(d, depth)),
        };
        Ok(CompletionQueue {
            shared: Arc::new(CqShared {
                inner,
                qps: Mutex::new(HashMap::new()),
                scratch: Mutex::new(Vec::with_capacity(64)),
                device: self.clone(),
            }),
        })
    }
}

/// A protection domain: regions and queue pairs of one domain may be used together.
#[derive(Clone)]
pub struct ProtectionDomain {
    inner: Arc<Provider<Arc<verbs::VerbsPd>, Arc<soft::SoftPd>>>,
    device: Device,
}

impl ProtectionDomain {
    /// The device this domain belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Allocates `len` zeroed bytes and registers them with exactly `access`.
    pub fn register(&self, len: usize, access: Access) -> Result<MemoryRegion> {
        let inner = match &*self.inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(pd) => Provider::Verbs(verbs::VerbsMr::register(pd, len, access)?),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(pd) => pd.absurd(),
            Provider::Soft(pd) => Provider::Soft(soft::SoftMr::register(pd, len, access)?),
        };
        // As granted: providers drop REMOTE_FLUSH where the device cannot serve a FLUSH.
        let access = match &inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(m) => m.access(),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(m) => m.absurd(),
            Provider::Soft(m) => m.access(),
        };
        Ok(MemoryRegion {
            inner: Arc::new(MrShared {
                inner,
                access,
                pd: self.clone(),
            }),
        })
    }

    /// Creates a reliable-connected queue pair.
    pub fn create_qp(
        &self,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        cap: QpCapacity,
    ) -> Result<QueuePair> {
        let inner = match (&*self.inner, &send_cq.shared.inner, &recv_cq.shared.inner) {
            #[cfg(feature = "verbs")]
            (Provider::Verbs(pd), Provider::Verbs(s), Provider::Verbs(r)) => {
                Provider::Verbs(verbs::VerbsQp::new(pd, s, r, cap)?)
            }
            #[cfg(not(feature = "verbs"))]
            (Provider::Verbs(absent), ..) => absent.absurd(),
            (Provider::Soft(pd), Provider::Soft(s), Provider::Soft(r)) => {
                Provider::Soft(soft::SoftQp::new(pd, s, r, cap)?)
            }
            _ => return Err(FabricError::ProviderMismatch { op: "create qp" }),
        };
        let qpn = dispatch!(&inner, q => q.qpn());
        let tracker = Arc::new(Tracker::new(
            cap.max_send_wr as usize,
            cap.max_recv_wr as usize,
        ));
        send_cq.shared.attach(qpn, &tracker);
        recv_cq.shared.attach(qpn, &tracker);
        tracing::debug!(qpn, "created queue pair");
        Ok(QueuePair {
            inner,
            tracker,
            pd: self.clone(),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            local_psn: Mutex::new(initial_psn(qpn)),
            epoch: AtomicU64::new(0),
            cap,
            send_scratch: Mutex::new((Vec::new(), Vec::new())),
            recv_scratch: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    fn same(&self, other: &ProtectionDomain) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// A pseudo-random 24-bit initial packet sequence number.
/// A random first PSN (a blind forger must guess the outstanding window in 2^24).
fn initial_psn(qpn: u32) -> u32 {
    let _ = qpn;
    rand::random::<u32>() & 0x00ff_ffff
}

struct MrShared {
    // Field order: the provider region (deregistration and free) drops first.
    inner: Provider<verbs::VerbsMr, soft::SoftMr>,
    access: Access,
    pd: ProtectionDomain,
}

/// A registered memory region that owns its memory. Clones share the region; it is
/// deregistered and freed when the last clone and the last request naming it are gone, or
/// deregistered earlier by [`MemoryRegion::revoke`] and then freed when the last clone goes.
#[derive(Clone)]
pub struct MemoryRegion {
    inner: Arc<MrShared>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("descriptor", &self.descriptor())
            .field("access", &self.inner.access)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl MemoryRegion {
    /// Address, length and rkey: what the partner needs to READ or WRITE this region.
    ///
    /// After [`revoke`](MemoryRegion::revoke) it still returns the values the region was
    /// registered with, but they are dead: the rkey no longer grants remote access.
    pub fn descriptor(&self) -> RegionDescriptor {
        dispatch!(&self.inner.inner, m => m.descriptor())
    }
    /// Local key (as registered; dead after [`revoke`](MemoryRegion::revoke)).
    pub fn lkey(&self) -> u32 {
        dispatch!(&self.inner.inner, m => m.lkey())
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        dispatch!(&self.inner.inner, m => m.len())
    }
    /// Whether the region is empty (never: registration rejects length 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The rights it was registered with.
    pub fn access(&self) -> Access {
        self.inner.access
    }

    /// Deregisters the region from the device now, for every clone, so its keys stop working
    /// even while clones (e.g. a torn-down client's) are still held. Used to cut off a peer.
    ///
    /// Afterwards:
    /// - a remote READ or WRITE naming the old rkey fails at the requester with the provider's
    ///   remote access error (`RemoteAccessError`; the soft provider treats the key as unknown,
    ///   verbs has deregistered it with `ibv_dereg_mr`);
    /// - posting a work request whose [`LocalBuf`] lies in this region fails at once with
    ///   [`FabricError::Revoked`] (building the buffer with [`slice`](MemoryRegion::slice) or
    ///   [`whole`](MemoryRegion::whole) still works);
    /// - requests already outstanding that name the region (or posted concurrently with
    ///   `revoke`) and that the device has not yet processed complete with a local error and
    ///   the queue pair goes to error (a receive: `LocalProtectionError` on the soft provider,
    ///   `LocalQpOperationError` on Linux rxe; the sender then sees `RemoteOperationError`).
    ///   This is safe: the memory is still owned by the region, so the device can only have
    ///   touched memory that stays allocated;
    /// - [`descriptor`](MemoryRegion::descriptor) and [`lkey`](MemoryRegion::lkey) keep
    ///   returning the old, now dead, values;
    /// - the memory stays allocated and locally usable through [`read`](MemoryRegion::read),
    ///   [`write`](MemoryRegion::write), [`read_u64`](MemoryRegion::read_u64) and
    ///   [`write_u64`](MemoryRegion::write_u64) (e.g. to copy the contents elsewhere) until
    ///   the last clone (including those held by [`LocalBuf`]s and outstanding requests)
    ///   drops, which frees it without deregistering again.
    ///
    /// Idempotent: revoking a revoked region returns `Ok`. Fails only if the provider cannot
    /// deregister (verbs: `ibv_dereg_mr` returned an error), in which case the region stays
    /// registered and usable.
    pub fn revoke(&self) -> Result<()> {
        match &self.inner.inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(m) => m.revoke()?,
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(m) => m.absurd(),
            Provider::Soft(m) => m.revoke(),
        }
        tracing::debug!(
            rkey = self.descriptor().rkey,
            len = self.len(),
            "memory region revoked"
        );
        Ok(())
    }

    /// Whether [`revoke`](MemoryRegion::revoke) has deregistered the region (through any clone).
    pub fn is_revoked(&self) -> bool {
        dispatch!(&self.inner.inner, m => m.is_revoked())
    }

    fn check(&self, op: &'static str, offset: usize, len: usize) -> Result<()> {
        let region_len = self.len();
        if offset.checked_add(len).is_none_or(|end| end > region_len) {
            return Err(FabricError::LocalBounds {
                op,
                offset,
                len,
                region_len,
            });
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes out of the region starting at `offset`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check("read region", offset, dst.len())?;
        dispatch!(&self.inner.inner, m => m.read(offset, dst));
        Ok(())
    }
    /// Copies `src` into the region starting at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check("write region", offset, src.len())?;
        dispatch!(&self.inner.inner, m => m.write(offset, src));
        Ok(())
    }
    /// Builds data in place: runs `f` on `len` bytes at `offset` as a mutable slice and returns
    /// its result, with no staging copy. Only for regions the device may not write (registered
    /// without [`Access::LOCAL_WRITE`] or [`Access::REMOTE_WRITE`], such as the source of SENDs
    /// and WRITEs); others fail with [`FabricError::LocalAccess`]. Calls on one region are
    /// serialised. The caller must not change bytes that an outstanding request still sends.
    pub fn fill<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R> {
        self.check("fill region", offset, len)?;
        let access = self.access();
        if access.contains(Access::LOCAL_WRITE) || access.contains(Access::REMOTE_WRITE) {
            return Err(FabricError::LocalAccess {
                op: "fill region (device-writable regions cannot be borrowed)",
                have: access,
                need: Access::NONE,
            });
        }
        let out = dispatch!(&self.inner.inner, m => m.fill(offset, len, f));
        out.ok_or(FabricError::LocalBounds {
            op: "fill region",
            offset,
            len,
            region_len: self.len(),
        })
    }
    /// Atomically loads the aligned 8-byte word at `offset` (native byte order).
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        self.check("read word", offset, 8)?;
        Ok(dispatch!(&self.inner.inner, m => m.read_u64(offset)))
    }
    /// Atomically stores the aligned 8-byte word at `offset` (native byte order).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        self.check("write word", offset, 8)?;
        dispatch!(&self.inner.inner, m => m.write_u64(offset, value));
        Ok(())
    }

    /// A buffer naming `len` bytes at `offset`, for work requests.
    pub fn slice(&self, offset: usize, len: usize) -> Result<LocalBuf> {
        self.check("slice region", offset, len)?;
        if len > (1usize << 31) {
            return Err(FabricError::Length {
                op: "slice region",
                len,
            });
        }
        Ok(LocalBuf {
            region: self.clone(),
            offset,
            len,
        })
    }

    /// The whole region as a buffer.
    pub fn whole(&self) -> LocalBuf {
        LocalBuf {
            region: self.clone(),
            offset: 0,
            len: self.len(),
        }
    }
}

/// A range of a registered region named by a work request. It keeps the region alive until
/// the request completes.
#[derive(Clone, Debug)]
pub struct LocalBuf {
    region: MemoryRegion,
    offset: usize,
    len: usize,
}

impl LocalBuf {
    /// The region.
    pub fn region(&self) -> &MemoryRegion {
        &self.region
    }
    /// Offset into the region.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn sge(&self) -> RawSge {
        RawSge {
            addr: self.region.descriptor().addr + self.offset as u64,
            len: self.len as u32,
            lkey: self.region.lkey(),
        }
    }
}

/// Send-queue operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND the local buffer into the peer's next receive.
    Send,
    /// SEND with 32-bit immediate data.
    SendImm(u32),
    /// RDMA WRITE the local buffer to the remote address.
    Write(RemoteAddr),
    /// RDMA WRITE with immediate data (consumes a receive at the peer).
    WriteImm(RemoteAddr, u32),
    /// RDMA READ from the remote address into the local buffer.
    Read(RemoteAddr),
    /// RDMA FLUSH of `len` bytes at the remote address to global visibility: its completion
    /// says the WRITEs posted before it on this queue pair are placed in the partner's
    /// memory. The local buffer is not used (pass an empty one). Only on a queue pair that
    /// [supports it](QueuePair::supports_flush), into a region the partner registered with
    /// [`Access::REMOTE_FLUSH`].
    Flush(RemoteAddr, u64),
}

/// A send-queue work request.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// Caller's id, returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Local buffer: source of SEND/WRITE, destination of READ.
    pub local: LocalBuf,
    /// Whether a successful completion is generated (errors always are).
    pub signaled: bool,
}

impl SendRequest {
    /// A signaled request.
    pub fn new(wr_id: u64, op: SendOp, local: LocalBuf) -> SendRequest {
        SendRequest {
            wr_id,
            op,
            local,
            signaled: true,
        }
    }
    /// The same request, unsignaled.
    pub fn unsignaled(mut self) -> SendRequest {
        self.signaled = false;
        self
    }
}

/// A receive-queue work request.
#[derive(Clone, Debug)]
pub struct RecvRequest {
    /// Caller's id, returned in the completion.
    pub wr_id: u64,
    /// Destination buffer.
    pub local: LocalBuf,
}

struct CqShared {
    inner: Provider<Arc<verbs::VerbsCq>, Arc<soft::SoftCq>>,
    qps: Mutex<HashMap<u32, Weak<Tracker>>>,
    /// Reused buffer for raw completions, so polling does not allocate.
    scratch: Mutex<Vec<RawCompletion>>,
    device: Device,
}

impl CqShared {
    fn attach(&self, qpn: u32, tracker: &Arc<Tracker>) {
        let mut qps = self.qps.lock();
        qps.retain(|_, w| w.strong_count() > 0);
        qps.insert(qpn, Arc::downgrade(tracker));
    }

    fn translate(&self, raw: &RawCompletion) -> Option<Completion> {
        let tracker = self.qps.lock().get(&raw.qpn).and_then(Weak::upgrade);
        let Some(tracker) = tracker else {
            tracing::debug!(
                qpn = raw.qpn,
                "completion for a destroyed queue pair dropped"
            );
            return None;
        };
        let Some(wr_id) = tracker.complete(raw.token) else {
            tracing::debug!(
                qpn = raw.qpn,
                "completion for a request discarded by reset dropped"
            );
            return None;
        };
        Some(Completion {
            wr_id,
            status: raw.status,
            op: raw.op,
            byte_len: raw.byte_len,
            imm: raw.imm,
            qpn: raw.qpn,
        })
    }
}

/// A completion queue: busy-poll it with [`CompletionQueue::poll`] or block with
/// [`CompletionQueue::wait`].
#[derive(Clone)]
pub struct CompletionQueue {
    shared: Arc<CqShared>,
}

impl CompletionQueue {
    /// The device.
    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// Appends up to `max` completions to `out` without blocking; returns how many.
    pub fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize> {
        let mut raw = self.shared.scratch.lock();
        let mut got = 0;
        while got < max {
            raw.clear();
            let n = dispatch!(&self.shared.inner, cq => cq.poll(&mut raw, (max - got).min(64)))?;
            if n == 0 {
                break;
            }
            for r in raw.iter() {
                if let Some(c) = self.shared.translate(r) {
                    out.push(c);
                    got += 1;
                }
            }
        }
        Ok(got)
    }

    /// Blocks until at least one completion is available or `timeout` passes; appends up to
    /// `max` to `out` and returns how many (0 on timeout).
    pub fn wait(&self, out: &mut Vec<Completion>, max: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.poll(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            dispatch!(&self.shared.inner, cq => cq.wait(deadline - now))?;
        }
    }

    /// Waits for one completion (blocking, up to `timeout`).
    pub fn next(&self, timeout: Duration) -> Result<Option<Completion>> {
        let mut out = Vec::with_capacity(1);
        self.wait(&mut out, 1, timeout)?;
        Ok(out.pop())
    }
}

/// A reliable-connected queue pair.
pub struct QueuePair {
    // Field order matters: the provider QP is destroyed before the tracker releases buffers.
    inner: Provider<verbs::VerbsQp, soft::SoftQp>,
    tracker: Arc<Tracker>,
    pd: ProtectionDomain,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    local_psn: Mutex<u32>,
    /// Bumped by every connect and reset (see [`QueuePair::epoch`]).
    epoch: AtomicU64,
    cap: QpCapacity,
    /// Reused request lists of a post, so posting does not allocate (always left empty).
    send_scratch: Mutex<(Vec<SendRequest>, Vec<RawSend>)>,
    recv_scratch: Mutex<(Vec<RecvRequest>, Vec<RawRecv>)>,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qpn", &self.qpn())
            .finish()
    }
}

impl QueuePair {
    /// Queue pair number.
    pub fn qpn(&self) -> u32 {
        dispatch!(&self.inner, q => q.qpn())
    }

    /// The descriptor the peer needs to connect to this queue pair.
    pub fn endpoint(&self) -> Result<Endpoint> {
        let psn = *self.local_psn.lock();
        dispatch!(&self.inner, q => q.local_endpoint(psn))
    }

    /// Slam-connects to the peer: RESET→INIT→RTR→RTS in one call, with no connection
    /// messages. From any state; outstanding requests are discarded first.
    pub fn connect(&self, remote: &Endpoint, opts: &ConnectOptions) -> Result<()> {
        remote.validate()?;
        let psn = *self.local_psn.lock();
        let r = dispatch!(&self.inner, q => q.connect(psn, remote, opts));
        // The provider reset the queue pair first: nothing outstanding is touched any more.
        self.tracker.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        r?;
        tracing::debug!(qpn = self.qpn(), peer_qpn = remote.qpn, peer = %remote.gid, "queue pair connected");
        Ok(())
    }

    /// Moves the queue pair to RESET; outstanding requests are discarded (no completions)
    /// and their buffers released. Pick a new PSN for the next connect.
    pub fn reset(&self) -> Result<()> {
        dispatch!(&self.inner, q => q.reset())?;
        self.tracker.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut psn = self.local_psn.lock();
        // At least 0x1000 from the last one (its stale packets never match), otherwise random.
        let jump = 0x1000 + rand::random::<u32>() % (0x0100_0000 - 0x2000);
        *psn = (*psn).wrapping_add(jump) & 0x00ff_ffff;
        Ok(())
    }

    /// How many times the queue pair was connected or reset. Requests posted before the
    /// epoch changed were discarded without completions, so a user that finds a new epoch on
    /// a queue pair it already uses (the cluster manager re-connects one in place when the
    /// partner replaced its side) must treat it as a new connection: post its receives
    /// again and re-send what was in flight.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Moves the queue pair to ERROR: every outstanding request completes as flushed.
    pub fn set_error(&self) -> Result<()> {
        dispatch!(&self.inner, q => q.set_error())
    }

    /// Current state.
    pub fn state(&self) -> Result<QpState> {
        dispatch!(&self.inner, q => q.state())
    }

    /// Requests outstanding (send, receive).
    pub fn outstanding(&self) -> (usize, usize) {
        self.tracker.outstanding()
    }

    /// Queue sizes.
    pub fn capacity(&self) -> QpCapacity {
        self.cap
    }

    /// Whether [`SendOp::Flush`] can be posted: the queue pair was created with
    /// [`QpCapacity::flush`] on a verbs device and library that support RDMA FLUSH. The soft
    /// provider has no FLUSH (a user that wants a durability point there READs behind its
    /// WRITEs, which the soft responder also executes in order).
    pub fn supports_flush(&self) -> bool {
        match &self.inner {
            #[cfg(feature = "verbs")]
            Provider::Verbs(q) => q.supports_flush(),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs(q) => q.absurd(),
            Provider::Soft(_) => false,
        }
    }

    /// The send completion queue.
    pub fn send_cq(&self) -> &CompletionQueue {
        &self.send_cq
    }

    /// The receive completion queue.
    pub fn recv_cq(&self) -> &CompletionQueue {
        &self.recv_cq
    }

    fn check_buf(&self, op: &'static str, buf: &LocalBuf, need: Access) -> Result<()> {
        if buf.region.is_revoked() {
            return Err(FabricError::Revoked { op });
        }
        if !buf.region.inner.pd.same(&self.pd) {
            return Err(FabricError::ProviderMismatch { op });
        }
        let mut have = buf.region.access();
        if have.contains(Access::REMOTE_WRITE) {
            // As on verbs, where remote write requires (and so grants) local write.
            have = have | Access::LOCAL_WRITE;
        }
        if !have.contains(need) {
            return Err(FabricError::LocalAccess { op, have, need });
        }
        Ok(())
    }

    /// Posts one send-queue request.
    pub fn post_send(&self, req: SendRequest) -> Result<()> {
        self.post_send_batch(std::iter::once(req))
    }

    /// Posts several send-queue requests with one doorbell, in order.
    pub fn post_send_batch<I: IntoIterator<Item = SendRequest>>(&self, reqs: I) -> Result<()> {
        with_scratch(&self.send_scratch, reqs, |r, raw| {
            self.post_send_scratch(r, raw)
        })
    }

    fn post_send_scratch(&self, reqs: &mut Vec<SendRequest>, raw: &mut Vec<RawSend>) -> Result<()> {
        for r in reqs.iter() {
            let need = match r.op {
                SendOp::Read(_) => Access::LOCAL_WRITE,
                _ => Access::NONE,
            };
            if matches!(r.op, SendOp::Flush(..)) && !self.supports_flush() {
                return Err(FabricError::FlushUnsupported { qpn: self.qpn() });
            }
            self.check_buf("post send", &r.local, need)?;
        }
        let mut adm = self.tracker.admit(Queue::Send, reqs.len(), "post send")?;
        for r in reqs.drain(..) {
            let sge = r.local.sge();
            let op = match r.op {
                SendOp::Send => RawOp::Send,
                SendOp::SendImm(i) => RawOp::SendImm(i),
                SendOp::Write(a) => RawOp::Write(a),
                SendOp::WriteImm(a, i) => RawOp::WriteImm(a, i),
                SendOp::Read(a) => RawOp::Read(a),
                SendOp::Flush(a, len) => RawOp::Flush(a, len),
            };
            let inline = !matches!(op, RawOp::Read(_) | RawOp::Flush(..))
                && sge.len > 0
                && sge.len <= self.cap.max_inline_data;
            let token = adm.push(r.wr_id, r.local);
            raw.push(RawSend {
                token,
                op,
                sge,
                signaled: r.signaled,
                inline,
            });
        }
        dispatch!(&self.inner, q => q.post_send(raw))
    }

    /// Posts one receive.
    pub fn post_recv(&self, req: RecvRequest) -> Result<()> {
        self.post_recv_batch(std::iter::once(req))
    }

    /// Posts several receives at once.
    pub fn post_recv_batch<I: IntoIterator<Item = RecvRequest>>(&self, reqs: I) -> Result<()> {
        with_scratch(&self.recv_scratch, reqs, |r, raw| {
            self.post_recv_scratch(r, raw)
        })
    }

    fn post_recv_scratch(&self, reqs: &mut Vec<RecvRequest>, raw: &mut Vec<RawRecv>) -> Result<()> {
        for r in reqs.iter() {
            self.check_buf("post recv", &r.local, Access::LOCAL_WRITE)?;
        }
        let mut adm = self.tracker.admit(Queue::Recv, reqs.len(), "post recv")?;
        for r in reqs.drain(..) {
            let sge = r.local.sge();
            let token = adm.push(r.wr_id, r.local);
            raw.push(RawRecv { token, sge });
        }
        dispatch!(&self.inner, q => q.post_recv(raw))
    }
}

/// Runs `post` on `scratch`'s lists, filled with `reqs`, and leaves them empty (keeping
/// their capacity, so posting does not allocate once they have grown to the largest batch).
fn with_scratch<R, W>(
    scratch: &Mutex<(Vec<R>, Vec<W>)>,
    reqs: impl IntoIterator<Item = R>,
    post: impl FnOnce(&mut Vec<R>, &mut Vec<W>) -> Result<()>,
) -> Result<()> {
    let mut guard = scratch.lock();
    let (reqs_buf, raw) = &mut *guard;
    reqs_buf.extend(reqs);
    let r = post(reqs_buf, raw);
    reqs_buf.clear();
    raw.clear();
    r
}
