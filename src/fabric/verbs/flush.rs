//! RDMA FLUSH (rdma-core 45 and later) on top of bindings generated from older headers.
//!
//! `rdma-sys` generates its bindings from the build host's libibverbs headers. Debian bookworm
//! ships rdma-core 44: its `struct ibv_qp_ex` ends with `wr_atomic_write` and has no FLUSH
//! verb, and its enums lack the FLUSH constants. rdma-core 45 appended exactly one member to
//! `struct ibv_qp_ex`, `wr_flush`, right after `wr_atomic_write` (the struct is allocated by the
//! provider and only ever grows at its end), and added:
//!
//! * `IBV_QP_EX_WITH_FLUSH` (`1 << 11`) for `ibv_qp_init_attr_ex::send_ops_flags`,
//! * `IBV_ACCESS_FLUSH_GLOBAL` (`1 << 8`) for memory registration,
//! * `IBV_FLUSH_GLOBAL` (placement type 1) and `IBV_FLUSH_RANGE` (selectivity 0),
//! * `IBV_WC_FLUSH` (8) as a work completion opcode;
//!
//! and the kernel reports the device capability as `IB_UVERBS_DEVICE_FLUSH_GLOBAL` (bit 38 of
//! `device_cap_flags_ex`). This module declares that much of the newer ABI.
//!
//! `wr_flush` is read only from a queue pair whose provider accepted `IBV_QP_EX_WITH_FLUSH` at
//! creation. A provider accepts the flag only if it was built against headers that have the
//! member and it set the member (rdma-core providers refuse unknown `send_ops_flags` with
//! `EOPNOTSUPP`), so with an older library at run time creation fails and the queue pair is
//! created without FLUSH instead: the slot past the old struct is never read there.

use super::{Handle, VerbsPd};
use crate::fabric::types::RemoteAddr;
use parking_lot::{Mutex, MutexGuard};
use rdma_sys::{
    ibv_context, ibv_device_attr_ex, ibv_qp, ibv_qp_create_send_ops_flags as S, ibv_qp_ex,
    ibv_qp_init_attr, ibv_qp_init_attr_ex, ibv_qp_init_attr_mask, ibv_qp_to_qp_ex, ibv_send_flags,
    verbs_context,
};
use std::io;
use std::mem::{offset_of, size_of};

/// `IB_UVERBS_DEVICE_FLUSH_GLOBAL` in `ibv_device_attr_ex::device_cap_flags_ex`.
const DEVICE_FLUSH_GLOBAL: u64 = 1 << 38;
/// `IBV_QP_EX_WITH_FLUSH` (rdma-core 45).
const QP_EX_WITH_FLUSH: u64 = 1 << 11;
/// `IBV_ACCESS_FLUSH_GLOBAL` (rdma-core 45; the kernel's `IB_UVERBS_ACCESS_FLUSH_GLOBAL`).
pub(super) const ACCESS_FLUSH_GLOBAL: u32 = 1 << 8;
/// `IBV_FLUSH_GLOBAL`: make the range globally visible (not persistent).
const PLACEMENT_GLOBAL: u8 = 1;
/// `IBV_FLUSH_RANGE`: flush the given range (not the whole region).
const SELECTIVITY_RANGE: u8 = 0;
/// `IBV_WC_FLUSH` (rdma-core 45).
pub(super) const WC_FLUSH: u32 = 8;

/// `ibv_qp_ex::wr_flush` of rdma-core 45 and later.
// SAFETY: a function pointer type only (the calls, in FlushOps::post, carry their own).
type WrFlush = unsafe extern "C" fn(*mut ibv_qp_ex, u32, u64, usize, u8, u8);
/// `ibv_qp_ex::wr_start`.
// SAFETY: a function pointer type only.
type WrStart = unsafe extern "C" fn(*mut ibv_qp_ex);
/// `ibv_qp_ex::wr_complete`.
// SAFETY: a function pointer type only.
type WrComplete = unsafe extern "C" fn(*mut ibv_qp_ex) -> libc::c_int;

/// `struct ibv_qp_ex` as rdma-core 45 and later lay it out: the generated (rdma-core 44)
/// struct followed by `wr_flush`.
#[repr(C)]
struct QpExFlush {
    base: ibv_qp_ex,
    wr_flush: Option<WrFlush>,
}

// The generated struct must end with `wr_atomic_write` (rdma-core 44 headers): then the next
// pointer-sized slot is `wr_flush`. Bindings from newer headers (which have `wr_flush`
// themselves) fail here instead of silently mislaying it.
const _: () = assert!(
    std::mem::size_of::<ibv_qp_ex>()
        == std::mem::offset_of!(ibv_qp_ex, wr_atomic_write) + std::mem::size_of::<usize>()
);
const _: () =
    assert!(std::mem::offset_of!(QpExFlush, wr_flush) == std::mem::size_of::<ibv_qp_ex>());

/// The extended context (`struct verbs_context`) around `ctx`, if the library made one.
///
/// This is libibverbs' inline `verbs_get_ctx`, done here because `rdma-sys` 0.3's version
/// compares the marker with `u32::MAX` where libibverbs stores `(void *)UINTPTR_MAX`
/// (`__VERBS_ABI_IS_EXTENDED`), so its wrappers (`ibv_query_device_ex`, `ibv_create_qp_ex`)
/// never find an extended operation on 64-bit hosts.
fn verbs_ctx(ctx: *mut ibv_context) -> Option<*mut verbs_context> {
    // SAFETY: the caller passes an open context; abi_compat is a plain pointer-sized field.
    let marker = unsafe { (*ctx).abi_compat };
    if marker as usize != usize::MAX {
        return None;
    }
    // The ibv_context is the last member of the verbs_context that holds it.
    Some(
        ctx.cast::<u8>()
            .wrapping_sub(offset_of!(verbs_context, context))
            .cast::<verbs_context>(),
    )
}

/// Whether the library's extended context is large enough to hold the operation at `offset`
/// (`verbs_get_ctx_op`: the struct grows at its front, and `sz` is its size in this library).
fn has_op(vctx: *mut verbs_context, offset: usize) -> bool {
    // SAFETY: vctx came from verbs_ctx (an extended context); sz is a plain field.
    let sz = unsafe { (*vctx).sz };
    sz >= size_of::<verbs_context>() - offset
}

/// Whether the device reports global-visibility FLUSH (`IB_UVERBS_DEVICE_FLUSH_GLOBAL`).
pub(super) fn device_supports_flush(ctx: *mut ibv_context) -> bool {
    let Some(vctx) =
        verbs_ctx(ctx).filter(|v| has_op(*v, offset_of!(verbs_context, query_device_ex)))
    else {
        return false;
    };
    // SAFETY: the field lies within this library's verbs_context (has_op).
    let Some(query) = (unsafe { (*vctx).query_device_ex }) else {
        return false;
    };
    // SAFETY: ibv_device_attr_ex is plain integers and arrays; all-zero is valid.
    let mut attr: ibv_device_attr_ex = unsafe { std::mem::zeroed() };
    // SAFETY: the context is open; input may be null; attr is a valid out-pointer of the size
    // the call is told (the generated struct's; the library fills at most that much).
    let ret = unsafe {
        query(
            ctx,
            std::ptr::null(),
            &mut attr,
            size_of::<ibv_device_attr_ex>(),
        )
    };
    ret == 0 && attr.device_cap_flags_ex & DEVICE_FLUSH_GLOBAL != 0
}

/// The extended-API view of a queue pair created with FLUSH, and the verbs to post one.
pub(super) struct FlushOps {
    qpx: Handle<QpExFlush>,
    start: WrStart,
    flush: WrFlush,
    complete: WrComplete,
    /// Held by every post on the queue pair: one `wr_start` .. `wr_complete` sequence at a
    /// time (`wr_id` and `wr_flags` are fields of the shared struct), and no `ibv_post_send`
    /// inside one (ibv_wr_post(3): the two APIs' batches may interleave only outside each
    /// other's critical region; rxe happens to take the same lock for both, other providers
    /// need not).
    post: Mutex<()>,
}

/// Creates an RC queue pair like `init` with the extended API and `IBV_QP_EX_WITH_FLUSH`
/// among its send operations. Errors: the library or provider refused (errno), or the
/// provider accepted the flag without setting the FLUSH verb (`EOPNOTSUPP`; the queue pair is
/// destroyed again).
pub(super) fn create_qp(
    pd: &VerbsPd,
    init: &ibv_qp_init_attr,
) -> io::Result<(Handle<ibv_qp>, FlushOps)> {
    // SAFETY: plain data; null pointers and zero integers are valid.
    let mut ex: ibv_qp_init_attr_ex = unsafe { std::mem::zeroed() };
    ex.send_cq = init.send_cq;
    ex.recv_cq = init.recv_cq;
    ex.cap = init.cap;
    ex.qp_type = init.qp_type;
    ex.sq_sig_all = init.sq_sig_all;
    ex.pd = pd.ptr();
    ex.comp_mask = (ibv_qp_init_attr_mask::IBV_QP_INIT_ATTR_PD
        | ibv_qp_init_attr_mask::IBV_QP_INIT_ATTR_SEND_OPS_FLAGS)
        .0;
    ex.send_ops_flags = u64::from(
        (S::IBV_QP_EX_WITH_RDMA_WRITE
            | S::IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
            | S::IBV_QP_EX_WITH_SEND
            | S::IBV_QP_EX_WITH_SEND_WITH_IMM
            | S::IBV_QP_EX_WITH_RDMA_READ)
            .0,
    ) | QP_EX_WITH_FLUSH;
    let ctx = pd.device().ctx();
    let create = verbs_ctx(ctx)
        .filter(|v| has_op(*v, offset_of!(verbs_context, create_qp_ex)))
        // SAFETY: the field lies within this library's verbs_context (has_op).
        .and_then(|v| unsafe { (*v).create_qp_ex })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
    // SAFETY: the context, PD and CQs are live (the caller holds them) and belong to one
    // device; ex is a valid attribute block with the comp_mask fields set.
    let qp = unsafe { create(ctx, &mut ex) };
    let Some(qp) = Handle::new(qp) else {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(0) {
            io::Error::from_raw_os_error(libc::EOPNOTSUPP)
        } else {
            e
        });
    };
    // SAFETY: the QP was just created through the extended API, so ibv_qp_to_qp_ex returns
    // its ibv_qp_ex (or null).
    let qpx = unsafe { ibv_qp_to_qp_ex(qp.ptr()) };
    let ops = Handle::new(qpx.cast::<QpExFlush>()).and_then(|qpx| {
        // SAFETY: the provider accepted IBV_QP_EX_WITH_FLUSH, so it was built with the
        // rdma-core >= 45 layout of ibv_qp_ex, whose wr_flush member follows the generated
        // struct (asserted above); the fields are plain function pointers set at creation.
        let (start, flush, complete) = unsafe {
            let q = qpx.ptr();
            ((*q).base.wr_start, (*q).wr_flush, (*q).base.wr_complete)
        };
        Some(FlushOps {
            qpx,
            start: start?,
            flush: flush?,
            complete: complete?,
            post: Mutex::new(()),
        })
    });
    match ops {
        Some(ops) => Ok((qp, ops)),
        None => {
            // SAFETY: created above, used by nothing else yet.
            unsafe { rdma_sys::ibv_destroy_qp(qp.ptr()) };
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }
}

impl FlushOps {
    /// Serialises the posts on this queue pair (hold it across `ibv_post_send` too).
    pub(super) fn serialize(&self) -> MutexGuard<'_, ()> {
        self.post.lock()
    }

    /// Posts one FLUSH (global visibility) of `len` bytes at `remote`, under `_one` (from
    /// [`FlushOps::serialize`]). Returns the provider's error (`wr_complete`'s errno: queue
    /// full, bad state).
    pub(super) fn post(
        &self,
        _one: &MutexGuard<'_, ()>,
        token: u64,
        signaled: bool,
        remote: RemoteAddr,
        len: u64,
    ) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = if signaled {
            ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        let q = self.qpx.ptr();
        // SAFETY: q is the live queue pair's ibv_qp_ex (the owning VerbsQp destroys the QP
        // only after this struct is gone); the function pointers are its provider's; between
        // wr_start and wr_complete nothing else posts on the queue pair (the lock), and
        // wr_id / wr_flags are written through the raw pointer, no reference is formed.
        let ret = unsafe {
            let base = q.cast::<ibv_qp_ex>();
            (self.start)(base);
            (*q).base.wr_id = token;
            (*q).base.wr_flags = flags;
            (self.flush)(
                base,
                remote.rkey,
                remote.addr,
                len,
                PLACEMENT_GLOBAL,
                SELECTIVITY_RANGE,
            );
            (self.complete)(base)
        };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret.abs()));
        }
        Ok(())
    }
}
