//! Opening a device, choosing its GID, port queries and the async-event thread.

use super::{event_element, map_event, EventElement, Handle, VerbsError};
use crate::fabric::types::{AsyncEvent, Gid, Mtu, ProviderKind};
use crate::fabric::{FabricError, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rdma_sys::{
    ___ibv_query_port, ibv_ack_async_event, ibv_async_event, ibv_close_device, ibv_context,
    ibv_device, ibv_device_attr, ibv_free_device_list, ibv_get_async_event, ibv_get_device_list,
    ibv_get_device_name, ibv_gid, ibv_open_device, ibv_port_attr, ibv_port_state, ibv_query_device,
    ibv_query_gid,
};
use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How long the event thread blocks in poll(2) before checking whether it should stop.
const EVENT_POLL_MS: libc::c_int = 100;

/// An open `ibv_context`, closed on drop.
struct OwnedCtx {
    ctx: Handle<ibv_context>,
    name: String,
}

impl Drop for OwnedCtx {
    fn drop(&mut self) {
        // SAFETY: the context came from ibv_open_device and is closed exactly once, here; every
        // object created on it holds an Arc of the device, so none is left.
        let ret = unsafe { ibv_close_device(self.ctx.ptr()) };
        if ret != 0 {
            tracing::warn!(device = %self.name, error = %io::Error::last_os_error(), "ibv_close_device failed");
        }
    }
}

/// The device list from `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: *mut *mut ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> std::result::Result<DeviceList, VerbsError> {
        let mut n: libc::c_int = 0;
        // SAFETY: n is a valid out-pointer; the result is checked for null.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            let source = io::Error::last_os_error();
            // ENOSYS: the kernel has no RDMA subsystem at all; that is "no devices".
            if source.raw_os_error() == Some(libc::ENOSYS) {
                return Ok(DeviceList {
                    list: std::ptr::null_mut(),
                    len: 0,
                });
            }
            return Err(VerbsError::IbvGetDeviceList { source });
        }
        Ok(DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    /// The device pointers (valid while `self` lives).
    fn devices(&self) -> Vec<*mut ibv_device> {
        (0..self.len)
            // SAFETY: the list holds `len` valid entries (plus a terminating null).
            .map(|i| unsafe { *self.list.add(i) })
            .filter(|d| !d.is_null())
            .collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        if self.list.is_null() {
            return;
        }
        // SAFETY: the list came from ibv_get_device_list and is freed once; contexts opened
        // from it stay valid after the list is freed.
        unsafe { ibv_free_device_list(self.list) };
    }
}

fn device_name(dev: *mut ibv_device) -> String {
    // SAFETY: dev is a live entry of a device list; the name is a NUL-terminated string owned
    // by the device and is copied before the list is freed.
    let p = unsafe { ibv_get_device_name(dev) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn open_ctx(dev: *mut ibv_device, name: &str) -> std::result::Result<OwnedCtx, VerbsError> {
    // SAFETY: dev is a live entry of a device list that has not been freed yet.
    let ctx = unsafe { ibv_open_device(dev) };
    match Handle::new(ctx) {
        Some(ctx) => Ok(OwnedCtx {
            ctx,
            name: name.to_string(),
        }),
        None => Err(VerbsError::IbvOpenDevice {
            device: name.to_string(),
            source: io::Error::last_os_error(),
        }),
    }
}

/// Queries a port's attributes.
pub(super) fn query_port(
    ctx: *mut ibv_context,
    name: &str,
    port: u8,
) -> std::result::Result<ibv_port_attr, VerbsError> {
    // SAFETY: ibv_port_attr is plain integers, so all-zero is a valid value.
    let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is an open context (the caller holds it); attr is a valid out-pointer of the
    // size the inline wrapper passes.
    let ret = unsafe { ___ibv_query_port(ctx, port, &mut attr) };
    if ret != 0 {
        // The wrapper returns the errno (provider op) or -1 with errno set (compat path).
        let source = if ret > 0 {
            io::Error::from_raw_os_error(ret)
        } else {
            io::Error::last_os_error()
        };
        return Err(VerbsError::IbvQueryPort {
            device: name.to_string(),
            port,
            source,
        });
    }
    Ok(attr)
}

fn query_gid(ctx: *mut ibv_context, port: u8, index: u8) -> io::Result<Gid> {
    let mut gid = MaybeUninit::<ibv_gid>::zeroed();
    // SAFETY: ctx is open; gid is a valid out-pointer for one ibv_gid.
    let ret = unsafe { ibv_query_gid(ctx, port, libc::c_int::from(index), gid.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and then filled by the verb; every bit pattern of the union's
    // `raw: [u8; 16]` member is valid.
    Ok(Gid(unsafe { gid.assume_init().raw }))
}

/// Whether the GID table entry is a RoCE v2 entry (sysfs; false when unknown).
fn is_roce_v2(name: &str, port: u8, index: u8) -> bool {
    let path = format!("/sys/class/infiniband/{name}/ports/{port}/gid_attrs/types/{index}");
    std::fs::read_to_string(path)
        .map(|s| s.trim().eq_ignore_ascii_case("RoCE v2"))
        .unwrap_or(false)
}

fn port_count(ctx: &OwnedCtx) -> std::result::Result<u8, VerbsError> {
    // SAFETY: ibv_device_attr is plain integers and arrays, so all-zero is valid.
    let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the context is open; attr is a valid out-pointer.
    let ret = unsafe { ibv_query_device(ctx.ctx.ptr(), &mut attr) };
    if ret != 0 {
        let source = if ret > 0 {
            io::Error::from_raw_os_error(ret)
        } else {
            io::Error::last_os_error()
        };
        return Err(VerbsError::IbvQueryDevice {
            device: ctx.name.clone(),
            source,
        });
    }
    Ok(attr.phys_port_cnt)
}

/// The GID entries of a port as (index, gid, is RoCE v2); failing or zero entries are skipped.
fn gid_table(ctx: &OwnedCtx, port: u8) -> std::result::Result<Vec<(u8, Gid, bool)>, VerbsError> {
    let attr = query_port(ctx.ctx.ptr(), &ctx.name, port)?;
    let len = attr.gid_tbl_len.clamp(0, 256);
    let mut out = Vec::new();
    for i in 0..len {
        let Ok(index) = u8::try_from(i) else { break };
        match query_gid(ctx.ctx.ptr(), port, index) {
            Ok(g) if !g.is_zero() => out.push((index, g, is_roce_v2(&ctx.name, port, index))),
            _ => {}
        }
    }
    Ok(out)
}

/// The entry `open_by_name` uses: the first RoCE v2 IPv4-mapped GID, else index 0.
fn default_gid(ctx: &OwnedCtx, port: u8) -> std::result::Result<(u8, Gid), VerbsError> {
    let table = gid_table(ctx, port)?;
    if let Some((i, g, _)) = table
        .iter()
        .find(|(_, g, v2)| *v2 && matches!(g.to_ip(), IpAddr::V4(_)))
    {
        return Ok((*i, *g));
    }
    match query_gid(ctx.ctx.ptr(), port, 0) {
        Ok(g) if !g.is_zero() => Ok((0, g)),
        Ok(_) => Err(VerbsError::NoGid {
            device: ctx.name.clone(),
            port,
        }),
        Err(source) => Err(VerbsError::IbvQueryGid {
            device: ctx.name.clone(),
            port,
            index: 0,
            source,
        }),
    }
}

/// State shared with the async-event thread.
struct EventShared {
    stop: AtomicBool,
    subscribers: Mutex<Vec<Sender<AsyncEvent>>>,
}

/// An open verbs device bound to one port and one GID table entry.
pub struct VerbsDevice {
    port: u8,
    gid: Gid,
    gid_index: u8,
    /// The device serves RDMA FLUSH to global visibility (probed once at open).
    flush: bool,
    events: Arc<EventShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    // Dropped last: closes the context after the event thread has stopped.
    ctx: OwnedCtx,
}

impl std::fmt::Debug for VerbsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsDevice")
            .field("name", &self.ctx.name)
            .field("port", &self.port)
            .field("gid", &self.gid)
            .field("gid_index", &self.gid_index)
            .finish()
    }
}

impl VerbsDevice {
    /// Names of the verbs devices on this machine.
    pub fn list() -> Result<Vec<String>> {
        let list = DeviceList::get()?;
        Ok(list.devices().into_iter().map(device_name).collect())
    }

    /// Opens the device called `name`, using `port` and the port's default GID (the first
    /// RoCE v2 IPv4-mapped entry, else index 0).
    pub fn open_by_name(name: &str, port: u8) -> Result<Arc<VerbsDevice>> {
        let list = DeviceList::get()?;
        let devs = list.devices();
        let Some(dev) = devs.iter().copied().find(|d| device_name(*d) == name) else {
            return Err(FabricError::OpenDeviceByName {
                provider: ProviderKind::Verbs,
                name: name.to_string(),
                available: devs.into_iter().map(device_name).collect(),
            });
        };
        let ctx = open_ctx(dev, name)?;
        drop(list);
        let (gid_index, gid) = default_gid(&ctx, port)?;
        Ok(Self::start(ctx, port, gid, gid_index)?)
    }

    /// Opens the device, port and GID entry whose GID is `addr` (IPv4-mapped for IPv4),
    /// preferring a RoCE v2 entry; searches every port unless `port` is given.
    pub fn open_by_addr(addr: IpAddr, port: Option<u8>) -> Result<Arc<VerbsDevice>> {
        let want = Gid::from_ip(addr);
        let list = DeviceList::get()?;
        for dev in list.devices() {
            let name = device_name(dev);
            let ctx = match open_ctx(dev, &name) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(device = %name, error = %e, "skipping device");
                    continue;
                }
            };
            let ports: Vec<u8> = match port {
                Some(p) => vec![p],
                None => match port_count(&ctx) {
                    Ok(n) => (1..=n).collect(),
                    Err(e) => {
                        tracing::debug!(device = %name, error = %e, "skipping device");
                        continue;
                    }
                },
            };
            for p in ports {
                let table = match gid_table(&ctx, p) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(device = %name, port = p, error = %e, "skipping port");
                        continue;
                    }
                };
                let mut matches = table.into_iter().filter(|(_, g, _)| *g == want);
                let first = matches.next();
                let best = first.and_then(|f| {
                    if f.2 {
                        Some(f)
                    } else {
                        matches.find(|m| m.2).or(Some(f))
                    }
                });
                if let Some((index, gid, _)) = best {
                    drop(list);
                    return Ok(Self::start(ctx, p, gid, index)?);
                }
            }
        }
        Err(FabricError::OpenDeviceByAddr { addr })
    }

    fn start(
        ctx: OwnedCtx,
        port: u8,
        gid: Gid,
        gid_index: u8,
    ) -> std::result::Result<Arc<VerbsDevice>, VerbsError> {
        // SAFETY: the context is open; async_fd is a plain int field set by ibv_open_device.
        let fd = unsafe { (*ctx.ctx.ptr()).async_fd };
        set_nonblocking(fd)?;
        let events = Arc::new(EventShared {
            stop: AtomicBool::new(false),
            subscribers: Mutex::new(Vec::new()),
        });
        let shared = Arc::clone(&events);
        let ctx_ptr = Handle::new(ctx.ctx.ptr()).ok_or_else(|| VerbsError::IbvOpenDevice {
            device: ctx.name.clone(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let name = ctx.name.clone();
        let flush = super::flush::device_supports_flush(ctx.ctx.ptr());
        let thread = std::thread::Builder::new()
            .name(format!("verbs-events-{name}"))
            .spawn(move || event_loop(ctx_ptr, fd, shared, name))
            .map_err(|source| VerbsError::EventThread {
                device: ctx.name.clone(),
                source,
            })?;
        Ok(Arc::new(VerbsDevice {
            port,
            gid,
            gid_index,
            flush,
            events,
            thread: Mutex::new(Some(thread)),
            ctx,
        }))
    }

    /// Whether the device reports RDMA FLUSH to global visibility
    /// (`IB_UVERBS_DEVICE_FLUSH_GLOBAL`; rxe on Linux 6.2 and later). Posting one also needs a
    /// libibverbs and provider of rdma-core 45 or later (see [`VerbsQp::supports_flush`]).
    ///
    /// [`VerbsQp::supports_flush`]: super::VerbsQp::supports_flush
    pub fn supports_flush(&self) -> bool {
        self.flush
    }

    /// The device name (e.g. `rxe_a0`, `mlx5_0`).
    pub fn name(&self) -> &str {
        &self.ctx.name
    }
    /// The port number in use.
    pub fn port(&self) -> u8 {
        self.port
    }
    /// The GID in use (RoCEv2: the IPv4-mapped address).
    pub fn gid(&self) -> Gid {
        self.gid
    }
    /// The GID table index in use (the `sgid_index` of our address vectors).
    pub fn gid_index(&self) -> u8 {
        self.gid_index
    }
    /// The port's LID (0 on RoCE).
    pub fn lid(&self) -> Result<u16> {
        Ok(self.port_attr()?.lid)
    }
    /// The port's active MTU.
    pub fn active_mtu(&self) -> Result<Mtu> {
        let code = self.port_attr()?.active_mtu;
        Ok(u8::try_from(code)
            .ok()
            .and_then(Mtu::from_code)
            .ok_or(VerbsError::UnexpectedMtu {
                device: self.ctx.name.clone(),
                port: self.port,
                code,
            })?)
    }
    /// Whether the port state is `ACTIVE`.
    pub fn port_active(&self) -> Result<bool> {
        Ok(self.port_attr()?.state == ibv_port_state::IBV_PORT_ACTIVE)
    }
    /// `Err(PortDown)` unless the port is active.
    pub(super) fn require_active(&self) -> Result<()> {
        let state = self.port_attr()?.state;
        if state == ibv_port_state::IBV_PORT_ACTIVE {
            return Ok(());
        }
        Err(VerbsError::PortDown {
            device: self.ctx.name.clone(),
            port: self.port,
            state: port_state_name(state),
        }
        .into())
    }
    /// A channel that receives every async event of the device from now on.
    pub fn subscribe_events(&self) -> Receiver<AsyncEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.events.subscribers.lock().push(tx);
        rx
    }

    fn port_attr(&self) -> std::result::Result<ibv_port_attr, VerbsError> {
        query_port(self.ctx.ctx.ptr(), &self.ctx.name, self.port)
    }
    /// The raw context.
    pub(super) fn ctx(&self) -> *mut ibv_context {
        self.ctx.ctx.ptr()
    }
}

impl Drop for VerbsDevice {
    fn drop(&mut self) {
        self.events.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::warn!(device = %self.ctx.name, "async event thread panicked");
            }
        }
        // `ctx` is dropped after this, closing the context.
    }
}

/// The `ibv_port_state` name for messages.
pub(super) fn port_state_name(state: u32) -> String {
    match state {
        ibv_port_state::IBV_PORT_NOP => "NOP".into(),
        ibv_port_state::IBV_PORT_DOWN => "DOWN".into(),
        ibv_port_state::IBV_PORT_INIT => "INIT".into(),
        ibv_port_state::IBV_PORT_ARMED => "ARMED".into(),
        ibv_port_state::IBV_PORT_ACTIVE => "ACTIVE".into(),
        ibv_port_state::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER".into(),
        other => format!("state {other}"),
    }
}

pub(super) fn set_nonblocking(fd: libc::c_int) -> std::result::Result<(), VerbsError> {
    // SAFETY: fcntl on a descriptor owned by libibverbs; F_GETFL has no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above; only adds O_NONBLOCK to the file status flags.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(VerbsError::SetNonBlocking {
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to become readable: Ok(true) readable, Ok(false) timeout
/// or EINTR.
pub(super) fn poll_readable(fd: libc::c_int, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(ret > 0)
}

fn event_loop(ctx: Handle<ibv_context>, fd: libc::c_int, shared: Arc<EventShared>, name: String) {
    while !shared.stop.load(Ordering::Acquire) {
        match poll_readable(fd, EVENT_POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(device = %name, error = %e, "poll on async event fd failed; event thread stops");
                return;
            }
        }
        // Drain every queued event (the fd is non-blocking).
        loop {
            let mut ev = MaybeUninit::<ibv_async_event>::zeroed();
            // SAFETY: the context stays open until this thread is joined (VerbsDevice::drop);
            // ev is a valid out-pointer.
            let ret = unsafe { ibv_get_async_event(ctx.ptr(), ev.as_mut_ptr()) };
            if ret != 0 {
                break; // EAGAIN: drained
            }
            let p = ev.as_ptr();
            // SAFETY: filled by the verb. The type is read as a raw u32 rather than as the Rust
            // enum, so a code this binding does not know cannot form an invalid enum value.
            let code = unsafe { std::ptr::addr_of!((*p).event_type).cast::<u32>().read() };
            let (port, qpn) = match event_element(code) {
                // SAFETY: for port events the union holds port_num (an int).
                EventElement::Port => (
                    u8::try_from(unsafe { (*p).element.port_num }).unwrap_or(0),
                    0,
                ),
                EventElement::Qp => {
                    // SAFETY: for QP events the union holds the QP pointer, which stays valid
                    // until the event is acknowledged (ibv_destroy_qp waits for that).
                    let qp = unsafe { (*p).element.qp };
                    let qpn = if qp.is_null() {
                        0
                    } else {
                        // SAFETY: a non-null QP pointer from the event is live (see above).
                        unsafe { (*qp).qp_num }
                    };
                    (0, qpn)
                }
                EventElement::None => (0, 0),
            };
            // SAFETY: acknowledges the event obtained above exactly once.
            unsafe { ibv_ack_async_event(ev.as_mut_ptr()) };
            let event = map_event(code, port, qpn);
            tracing::debug!(device = %name, ?event, "async event");
            shared
                .subscribers
                .lock()
                .retain(|tx| tx.send(event).is_ok());
        }
    }
}
