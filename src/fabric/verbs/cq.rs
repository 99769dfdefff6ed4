//! Completion queues with a completion channel for blocking waits.

use super::device::{poll_readable, set_nonblocking};
use super::{map_opcode, map_status, Handle, VerbsDevice, VerbsError};
use crate::fabric::raw::RawCompletion;
use crate::fabric::types::CompletionOp;
use crate::fabric::Result;
use parking_lot::Mutex;
use rdma_sys::{
    ibv_ack_cq_events, ibv_comp_channel, ibv_cq, ibv_create_comp_channel, ibv_create_cq,
    ibv_destroy_comp_channel, ibv_destroy_cq, ibv_get_cq_event, ibv_poll_cq, ibv_req_notify_cq,
    ibv_wc, ibv_wc_flags,
};
use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

/// Completions fetched per `ibv_poll_cq` call.
const BATCH: usize = 16;

/// A completion queue.
pub struct VerbsCq {
    cq: Handle<ibv_cq>,
    channel: Handle<ibv_comp_channel>,
    depth: u32,
    /// Serialises `wait` (arm, re-poll, sleep on the channel, take and ack the event); holds
    /// the reused buffer of its re-poll, so waiting does not allocate.
    waiter: Mutex<Vec<RawCompletion>>,
    /// A completion `wait` took off the CQ while checking, after arming, that it is still
    /// empty. It is older than anything left in the CQ, so `poll` hands it out first; the lock
    /// is held across every `ibv_poll_cq` so that order holds between threads too.
    stash: Mutex<Option<RawCompletion>>,
    dev: Arc<VerbsDevice>,
}

impl std::fmt::Debug for VerbsCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsCq")
            .field("device", &self.dev.name())
            .field("depth", &self.depth)
            .finish()
    }
}

impl VerbsCq {
    /// Creates a completion queue of at least `depth` entries with its own (non-blocking)
    /// completion channel.
    pub fn new(dev: &Arc<VerbsDevice>, depth: u32) -> Result<Arc<VerbsCq>> {
        // SAFETY: the context is open while `dev` lives; the result is checked for null.
        let ch = unsafe { ibv_create_comp_channel(dev.ctx()) };
        let channel = Handle::new(ch).ok_or_else(|| VerbsError::IbvCreateCompChannel {
            device: dev.name().to_string(),
            source: io::Error::last_os_error(),
        })?;
        let destroy_channel = |ch: &Handle<ibv_comp_channel>| {
            // SAFETY: created above, no CQ uses it, destroyed once on this error path.
            unsafe { ibv_destroy_comp_channel(ch.ptr()) };
        };
        // SAFETY: the channel is live; fd is a plain field.
        let fd = unsafe { (*channel.ptr()).fd };
        if let Err(e) = set_nonblocking(fd) {
            destroy_channel(&channel);
            return Err(e.into());
        }
        let cqe = libc::c_int::try_from(depth).unwrap_or(libc::c_int::MAX);
        // SAFETY: the context and the channel are live; no cq_context; comp_vector 0 exists on
        // every device.
        let cq = unsafe { ibv_create_cq(dev.ctx(), cqe, std::ptr::null_mut(), channel.ptr(), 0) };
        let Some(cq) = Handle::new(cq) else {
            let source = io::Error::last_os_error();
            destroy_channel(&channel);
            return Err(VerbsError::IbvCreateCq {
                device: dev.name().to_string(),
                depth,
                source,
            }
            .into());
        };
        Ok(Arc::new(VerbsCq {
            cq,
            channel,
            depth,
            waiter: Mutex::new(Vec::with_capacity(1)),
            stash: Mutex::new(None),
            dev: Arc::clone(dev),
        }))
    }

    /// The device.
    pub fn device(&self) -> &Arc<VerbsDevice> {
        &self.dev
    }
    pub(super) fn ptr(&self) -> *mut ibv_cq {
        self.cq.ptr()
    }

    /// Appends up to `max` completions to `out`; returns how many were appended.
    pub fn poll(&self, out: &mut Vec<RawCompletion>, max: usize) -> Result<usize> {
        let mut stash = self.stash.lock();
        let mut total = 0;
        if max > 0 {
            if let Some(c) = stash.take() {
                out.push(c);
                total = 1;
            }
        }
        Ok(total + self.poll_cq(out, max - total)?)
    }

    /// `ibv_poll_cq` into `out`, up to `max` entries. Callers hold the `stash` lock.
    fn poll_cq(&self, out: &mut Vec<RawCompletion>, max: usize) -> Result<usize> {
        let mut wcs: [MaybeUninit<ibv_wc>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut total = 0;
        while total < max {
            let want = (max - total).min(BATCH);
            // want <= 16 always fits an i32.
            let want_c = want as libc::c_int;
            // SAFETY: the CQ is live; wcs has room for `want` entries, which the provider
            // writes before returning their count.
            let n =
                unsafe { ibv_poll_cq(self.cq.ptr(), want_c, wcs.as_mut_ptr().cast::<ibv_wc>()) };
            if n < 0 {
                return Err(VerbsError::IbvPollCq { ret: n }.into());
            }
            let n = usize::try_from(n).unwrap_or(0).min(want);
            for slot in &wcs[..n] {
                // SAFETY: the first n entries were initialised by ibv_poll_cq.
                let wc = unsafe { slot.assume_init_ref() };
                out.push(to_raw(wc));
            }
            total += n;
            if n < want {
                break;
            }
        }
        Ok(total)
    }

    /// Returns once a completion is available to [`VerbsCq::poll`] or `timeout` passes (or
    /// early, spuriously: callers poll again afterwards and wait again if nothing came).
    ///
    /// The CQ is armed, then polled once more before sleeping on the channel, as rdma-core's
    /// `ibv_req_notify_cq(3)` / `ibv_get_cq_event(3)` prescribe: a completion that arrived
    /// after the caller's last poll but before arming raises no event, and would otherwise
    /// only be found once `timeout` expired. A completion found that way is kept for `poll`.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let mut found = self.waiter.lock();
        // SAFETY: the CQ is live.
        let ret = unsafe { ibv_req_notify_cq(self.cq.ptr(), 0) };
        if ret != 0 {
            return Err(VerbsError::IbvReqNotifyCq {
                source: io::Error::from_raw_os_error(ret.abs()),
            }
            .into());
        }
        {
            let mut stash = self.stash.lock();
            // Left by an earlier `wait` and not yet polled: a completion is available.
            if stash.is_some() {
                return Ok(());
            }
            // Anything completed before arming is visible now; anything after raises an event.
            found.clear();
            if self.poll_cq(&mut found, 1)? > 0 {
                *stash = found.pop();
                return Ok(());
            }
        }
        // Round up so a sub-millisecond timeout still waits a little.
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        // SAFETY: the channel is live; fd is a plain field.
        let fd = unsafe { (*self.channel.ptr()).fd };
        let readable =
            poll_readable(fd, ms).map_err(|source| VerbsError::PollChannel { source })?;
        if !readable {
            return Ok(());
        }
        let mut cq: *mut ibv_cq = std::ptr::null_mut();
        let mut ctx: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; cq and ctx are valid out-pointers.
        let ret = unsafe { ibv_get_cq_event(self.channel.ptr(), &mut cq, &mut ctx) };
        if ret != 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::WouldBlock
                || source.kind() == io::ErrorKind::Interrupted
            {
                return Ok(());
            }
            return Err(VerbsError::IbvGetCqEvent { source }.into());
        }
        // SAFETY: one event was obtained for a CQ on this channel (only ours uses it); it is
        // acknowledged exactly once.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(())
    }
}

fn to_raw(wc: &ibv_wc) -> RawCompletion {
    let op = map_opcode(wc.status, wc.opcode);
    // Immediate data belongs to receive completions only: rxe also sets IBV_WC_WITH_IMM (with
    // imm_data 0) on the requester's completion of SEND/WRITE with immediate, which hardware
    // does not; report it only where it is meaningful.
    let is_recv = matches!(op, CompletionOp::Recv | CompletionOp::RecvWithImm);
    let imm = if is_recv && wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
        // SAFETY: both union members are u32, so any bit pattern is a valid read.
        Some(u32::from_be(unsafe {
            wc.imm_data_invalidated_rkey_union.imm_data
        }))
    } else {
        None
    };
    RawCompletion {
        token: wc.wr_id,
        qpn: wc.qp_num,
        status: map_status(wc.status),
        op,
        byte_len: wc.byte_len,
        imm,
    }
}

impl Drop for VerbsCq {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; every QP using it holds an Arc of this CQ
        // and every channel event was acknowledged in `wait`.
        let ret = unsafe { ibv_destroy_cq(self.cq.ptr()) };
        if ret != 0 {
            tracing::warn!(device = %self.dev.name(), error = %io::Error::from_raw_os_error(ret), "ibv_destroy_cq failed");
            return; // the channel is still in use by the CQ
        }
        // SAFETY: its only CQ is gone; destroyed once.
        let ret = unsafe { ibv_destroy_comp_channel(self.channel.ptr()) };
        if ret != 0 {
            tracing::warn!(device = %self.dev.name(), error = %io::Error::from_raw_os_error(ret), "ibv_destroy_comp_channel failed");
        }
    }
}
