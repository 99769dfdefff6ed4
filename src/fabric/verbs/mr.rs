//! Protection domains and memory regions that own their memory.

use super::{access_flags, reg_mr_hint, Handle, VerbsDevice, VerbsError};
use crate::fabric::types::{Access, RegionDescriptor};
use crate::fabric::Result;
use parking_lot::Mutex;
use rdma_sys::{ibv_alloc_pd, ibv_dealloc_pd, ibv_dereg_mr, ibv_mr, ibv_pd, ibv_reg_mr};
use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Alignment (and size granularity) of region memory.
const PAGE: usize = 4096;

/// A protection domain.
pub struct VerbsPd {
    pd: Handle<ibv_pd>,
    dev: Arc<VerbsDevice>,
}

impl std::fmt::Debug for VerbsPd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsPd")
            .field("device", &self.dev.name())
            .finish()
    }
}

impl VerbsPd {
    /// Allocates a protection domain on `dev`.
    pub fn new(dev: &Arc<VerbsDevice>) -> Result<Arc<VerbsPd>> {
        // SAFETY: the context is open while `dev` lives; the result is checked for null.
        let pd = unsafe { ibv_alloc_pd(dev.ctx()) };
        let pd = Handle::new(pd).ok_or_else(|| VerbsError::IbvAllocPd {
            device: dev.name().to_string(),
            source: io::Error::last_os_error(),
        })?;
        Ok(Arc::new(VerbsPd {
            pd,
            dev: Arc::clone(dev),
        }))
    }
    /// The device.
    pub fn device(&self) -> &Arc<VerbsDevice> {
        &self.dev
    }
    pub(super) fn ptr(&self) -> *mut ibv_pd {
        self.pd.ptr()
    }
}

impl Drop for VerbsPd {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_pd and freed once; every MR and QP on it holds an Arc
        // of this PD, so none is left.
        let ret = unsafe { ibv_dealloc_pd(self.pd.ptr()) };
        if ret != 0 {
            tracing::warn!(device = %self.dev.name(), error = %io::Error::from_raw_os_error(ret), "ibv_dealloc_pd failed");
        }
    }
}

/// A registered memory region that owns its (page-aligned, zeroed) memory.
///
/// The memory is only ever reached through raw pointers (by this type and by the device), never
/// through Rust references, so device DMA cannot invalidate a Rust borrow.
///
/// [`VerbsMr::revoke`] deregisters it early; the memory stays allocated (and locally readable
/// and writable) until drop, which then only frees it.
pub struct VerbsMr {
    /// The registration; `None` once revoked. The mutex makes revoke and drop deregister once,
    /// and the `ibv_mr` is never touched after `ibv_dereg_mr` (its keys are cached below).
    mr: Mutex<Option<Handle<ibv_mr>>>,
    lkey: u32,
    rkey: u32,
    mem: Handle<u8>,
    layout: Layout,
    len: usize,
    access: Access,
    pd: Arc<VerbsPd>,
    /// Serialises [`VerbsMr::fill`], the one place a Rust reference to the memory is made.
    fill_lock: Mutex<()>,
}

impl std::fmt::Debug for VerbsMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsMr")
            .field("descriptor", &self.descriptor())
            .field("lkey", &self.lkey())
            .field("access", &self.access)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl VerbsMr {
    /// Allocates `len` zeroed bytes (rounded up to whole pages, page-aligned) and registers
    /// them with exactly the rights in `access`.
    pub fn register(pd: &Arc<VerbsPd>, len: usize, access: Access) -> Result<VerbsMr> {
        if len == 0 {
            return Err(VerbsError::InvalidLength { len }.into());
        }
        let size = len
            .checked_next_multiple_of(PAGE)
            .ok_or(VerbsError::InvalidLength { len })?;
        let layout =
            Layout::from_size_align(size, PAGE).map_err(|_| VerbsError::InvalidLength { len })?;
        // SAFETY: layout has a non-zero size.
        let mem = unsafe { std::alloc::alloc_zeroed(layout) };
        let mem = Handle::new(mem).ok_or(VerbsError::Alloc { len })?;
        // FLUSH rights only where the device serves FLUSH (the kernel refuses them otherwise);
        // the region's access then says what the partner may do.
        let access = if pd.device().supports_flush() {
            access
        } else {
            access.without(Access::REMOTE_FLUSH)
        };
        let flags = access_flags(access);
        // SAFETY: mem points at `size` >= len bytes owned by this region until after
        // ibv_dereg_mr in Drop; flags only holds valid access bits; the PD is live.
        let mr = unsafe { ibv_reg_mr(pd.ptr(), mem.ptr().cast(), len, flags as libc::c_int) };
        let Some(mr) = Handle::new(mr) else {
            let source = io::Error::last_os_error();
            // SAFETY: allocated above with this layout and not registered.
            unsafe { std::alloc::dealloc(mem.ptr(), layout) };
            let hint = reg_mr_hint(&source);
            return Err(VerbsError::IbvRegMr {
                len,
                access,
                source,
                hint,
            }
            .into());
        };
        // SAFETY: ibv_reg_mr returned a valid ibv_mr; lkey and rkey are plain fields set at
        // registration, read here once while it is certainly registered.
        let (lkey, rkey) = unsafe { ((*mr.ptr()).lkey, (*mr.ptr()).rkey) };
        Ok(VerbsMr {
            mr: Mutex::new(Some(mr)),
            lkey,
            rkey,
            mem,
            layout,
            len,
            access,
            pd: Arc::clone(pd),
            fill_lock: Mutex::new(()),
        })
    }

    /// Address, length and rkey for the peer (the keys as registered, dead after revoke).
    pub fn descriptor(&self) -> RegionDescriptor {
        RegionDescriptor {
            addr: self.mem.ptr() as u64,
            len: self.len as u64,
            rkey: self.rkey,
        }
    }
    /// The local key (as registered, dead after revoke).
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Deregisters the region now (`ibv_dereg_mr`), keeping its memory until drop. From then
    /// on the device rejects its keys: remote access with the rkey fails at the requester with
    /// a remote access error, and requests still outstanding that name the lkey complete with
    /// a local error (local protection; rxe reports a local QP operation error for a receive).
    /// Idempotent. If `ibv_dereg_mr` fails the region stays registered (and drop tries again).
    pub fn revoke(&self) -> Result<()> {
        let mut mr = self.mr.lock();
        let Some(handle) = mr.as_ref() else {
            return Ok(());
        };
        // SAFETY: registered in `register` and not yet deregistered (the mutex is held and the
        // handle is still present); the handle is removed below on success, so no path uses
        // the ibv_mr afterwards. The memory stays allocated until Drop.
        let ret = unsafe { ibv_dereg_mr(handle.ptr()) };
        if ret != 0 {
            return Err(VerbsError::IbvDeregMr {
                len: self.len,
                source: io::Error::from_raw_os_error(ret),
            }
            .into());
        }
        *mr = None;
        Ok(())
    }

    /// Whether [`VerbsMr::revoke`] deregistered the region.
    pub fn is_revoked(&self) -> bool {
        self.mr.lock().is_none()
    }
    /// The registered length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region is empty (never: zero-length registration is refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The rights it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The protection domain.
    pub fn pd(&self) -> &Arc<VerbsPd> {
        &self.pd
    }

    fn in_bounds(&self, op: &str, offset: usize, n: usize) -> bool {
        let ok = offset.checked_add(n).is_some_and(|end| end <= self.len);
        if !ok {
            tracing::warn!(
                op,
                offset,
                n,
                len = self.len,
                "memory region access out of bounds ignored"
            );
        }
        ok
    }

    /// Copies `dst.len()` bytes at `offset` out of the region (nothing, with a warning, if out
    /// of bounds).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        if !self.in_bounds("read", offset, dst.len()) {
            return;
        }
        // SAFETY: offset + dst.len() <= len (checked), the memory lives as long as self, and
        // dst is a distinct Rust allocation so the ranges do not overlap. Concurrent device
        // writes give unspecified bytes, not invalid values (u8 has no invalid patterns).
        unsafe {
            std::ptr::copy_nonoverlapping(self.mem.ptr().add(offset), dst.as_mut_ptr(), dst.len())
        };
    }

    /// Runs `f` on `len` bytes at `offset` as a mutable slice, to build data in place (None,
    /// with a warning, if out of bounds). The caller (the provider-neutral layer) only allows
    /// it on regions the device may not write (no local or remote write right), so the device
    /// can at most read these bytes while the slice lives.
    pub fn fill<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.in_bounds("fill", offset, len) {
            return None;
        }
        let _only_one = self.fill_lock.lock();
        // SAFETY: offset + len <= self.len (checked), the memory lives as long as self, and the
        // lock above makes this the only Rust reference into the region for its lifetime (every
        // other local access goes through raw-pointer copies). The neutral layer calls this only
        // for regions registered without write rights, so the device never writes these bytes
        // while the slice is alive; device reads of them do not invalidate it.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.mem.ptr().add(offset), len) };
        Some(f(slice))
    }

    /// Copies `src` into the region at `offset` (nothing, with a warning, if out of bounds).
    pub fn write(&self, offset: usize, src: &[u8]) {
        if !self.in_bounds("write", offset, src.len()) {
            return;
        }
        // SAFETY: bounds checked as in read; src cannot overlap memory we own exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.mem.ptr().add(offset), src.len())
        };
    }

    /// Loads the native-endian u64 at `offset` atomically when 8-aligned (bytewise otherwise;
    /// 0 with a warning if out of bounds).
    pub fn read_u64(&self, offset: usize) -> u64 {
        if !self.in_bounds("read_u64", offset, 8) {
            return 0;
        }
        if offset % 8 != 0 {
            let mut b = [0u8; 8];
            self.read(offset, &mut b);
            return u64::from_ne_bytes(b);
        }
        // SAFETY: in bounds; the base is page-aligned and offset is a multiple of 8, so the
        // pointer is aligned for AtomicU64; the memory lives as long as self and is only
        // accessed through raw pointers.
        let a = unsafe { AtomicU64::from_ptr(self.mem.ptr().add(offset).cast::<u64>()) };
        a.load(Ordering::Acquire)
    }

    /// Stores `v` (native endian) at `offset` atomically when 8-aligned (bytewise otherwise;
    /// nothing, with a warning, if out of bounds).
    pub fn write_u64(&self, offset: usize, v: u64) {
        if !self.in_bounds("write_u64", offset, 8) {
            return;
        }
        if offset % 8 != 0 {
            self.write(offset, &v.to_ne_bytes());
            return;
        }
        // SAFETY: as in read_u64.
        let a = unsafe { AtomicU64::from_ptr(self.mem.ptr().add(offset).cast::<u64>()) };
        a.store(v, Ordering::Release);
    }
}

impl Drop for VerbsMr {
    fn drop(&mut self) {
        if let Some(mr) = self.mr.get_mut().take() {
            // SAFETY: registered in `register` and not deregistered by `revoke` (the handle is
            // still present); deregistered once, here.
            let ret = unsafe { ibv_dereg_mr(mr.ptr()) };
            if ret != 0 {
                // The device may still map the pages: leaking them is the only safe choice.
                tracing::warn!(len = self.len, error = %io::Error::from_raw_os_error(ret), "ibv_dereg_mr failed; leaking the region's memory");
                return;
            }
        }
        // SAFETY: allocated with this layout in `register`; no longer registered (here or by
        // `revoke`), and the neutral layer keeps the region alive while any request naming it
        // is outstanding.
        unsafe { std::alloc::dealloc(self.mem.ptr(), self.layout) };
    }
}
