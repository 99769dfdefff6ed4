//! Reliable-connected queue pairs: creation, slam connect, state changes and posting.

use super::flush::{self, FlushOps};
use super::{map_qp_state, Handle, VerbsCq, VerbsError, VerbsPd};
use crate::fabric::raw::{RawOp, RawRecv, RawSend, RawSge};
use crate::fabric::types::{ConnectOptions, Endpoint, Mtu, QpCapacity, QpState};
use crate::fabric::{FabricError, Result};
use parking_lot::Mutex;
use rdma_sys::{
    ibv_access_flags, ibv_create_qp, ibv_destroy_qp, ibv_modify_qp, ibv_post_recv, ibv_post_send,
    ibv_qp, ibv_qp_attr, ibv_qp_attr_mask as M, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type,
    ibv_query_qp, ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode,
};
use std::io;
use std::sync::Arc;

/// Batches up to this size are built on the stack.
const STACK_BATCH: usize = 16;

/// Hop limit put in the GRH of our address vector.
const HOP_LIMIT: u8 = 64;

/// A reliable-connected queue pair.
pub struct VerbsQp {
    qp: Handle<ibv_qp>,
    qpn: u32,
    /// Serialises state-change sequences (connect / reset / set_error).
    transition: Mutex<()>,
    pd: Arc<VerbsPd>,
    send_cq: Arc<VerbsCq>,
    recv_cq: Arc<VerbsCq>,
    /// The extended-API view used to post RDMA FLUSH, when the queue pair has it.
    flush: Option<FlushOps>,
    /// Serve the partner's FLUSHes (asked for, and the device has FLUSH: the responder side is
    /// the kernel's, whatever the library).
    accept_flush: bool,
}

impl std::fmt::Debug for VerbsQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsQp")
            .field("device", &self.pd.device().name())
            .field("qpn", &self.qpn)
            .finish()
    }
}

fn zeroed_qp_attr() -> ibv_qp_attr {
    // SAFETY: ibv_qp_attr holds integers and plain-data unions/arrays only; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn zeroed_send_wr() -> ibv_send_wr {
    // SAFETY: ibv_send_wr holds integers, raw pointers (null is valid) and unions of those.
    unsafe { std::mem::zeroed() }
}

const fn zero_sge() -> ibv_sge {
    ibv_sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }
}

fn to_sge(s: &RawSge) -> ibv_sge {
    ibv_sge {
        addr: s.addr,
        length: s.len,
        lkey: s.lkey,
    }
}

/// Fills one send work request (links and sg_list are set by the caller).
fn fill_send(wr: &mut ibv_send_wr, r: &RawSend) {
    wr.wr_id = r.token;
    wr.num_sge = if r.sge.len == 0 { 0 } else { 1 };
    let mut flags = ibv_send_flags(0);
    if r.signaled {
        flags |= ibv_send_flags::IBV_SEND_SIGNALED;
    }
    if r.inline {
        flags |= ibv_send_flags::IBV_SEND_INLINE;
    }
    wr.send_flags = flags.0;
    let (opcode, imm, remote) = match r.op {
        RawOp::Send => (ibv_wr_opcode::IBV_WR_SEND, None, None),
        RawOp::SendImm(imm) => (ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, Some(imm), None),
        RawOp::Write(ra) => (ibv_wr_opcode::IBV_WR_RDMA_WRITE, None, Some(ra)),
        RawOp::WriteImm(ra, imm) => (
            ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
            Some(imm),
            Some(ra),
        ),
        RawOp::Read(ra) => (ibv_wr_opcode::IBV_WR_RDMA_READ, None, Some(ra)),
        // Posted through the extended API (post_send splits the list there); never filled.
        RawOp::Flush(ra, _) => (ibv_wr_opcode::IBV_WR_RDMA_READ, None, Some(ra)),
    };
    wr.opcode = opcode;
    if let Some(imm) = imm {
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
    }
    if let Some(ra) = remote {
        wr.wr.rdma = rdma_sys::rdma_t {
            remote_addr: ra.addr,
            rkey: ra.rkey,
        };
    }
}

/// A post error of a sub-list that started after `before` requests already posted.
fn posted_after(e: FabricError, before: usize) -> FabricError {
    match e {
        FabricError::Verbs(VerbsError::IbvPostSend {
            qpn,
            posted,
            source,
        }) => VerbsError::IbvPostSend {
            qpn,
            posted: before + posted,
            source,
        }
        .into(),
        e => e,
    }
}

/// The target-state name used in errors.
fn state_name(state: u32) -> &'static str {
    match state {
        ibv_qp_state::IBV_QPS_RESET => "RESET",
        ibv_qp_state::IBV_QPS_INIT => "INIT",
        ibv_qp_state::IBV_QPS_RTR => "RTR",
        ibv_qp_state::IBV_QPS_RTS => "RTS",
        _ => "ERR",
    }
}

impl VerbsQp {
    /// Creates an RC queue pair (one scatter entry per request, explicit signalling).
    pub fn new(
        pd: &Arc<VerbsPd>,
        send_cq: &Arc<VerbsCq>,
        recv_cq: &Arc<VerbsCq>,
        cap: QpCapacity,
    ) -> Result<VerbsQp> {
        let ctx = pd.device().ctx();
        if send_cq.device().ctx() != ctx || recv_cq.device().ctx() != ctx {
            return Err(FabricError::ProviderMismatch {
                op: "create queue pair",
            });
        }
        // SAFETY: plain data; null pointers and zero integers are valid.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.ptr();
        init.recv_cq = recv_cq.ptr();
        init.cap.max_send_wr = cap.max_send_wr;
        init.cap.max_recv_wr = cap.max_recv_wr;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.cap.max_inline_data = cap.max_inline_data;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        let mut flush = None;
        let mut qp = None;
        if cap.flush {
            let device = pd.device().name();
            if !pd.device().supports_flush() {
                tracing::info!(
                    device,
                    "queue pair without RDMA FLUSH: the device does not report it"
                );
            } else {
                match flush::create_qp(pd, &init) {
                    Ok((q, ops)) => {
                        qp = Some(q);
                        flush = Some(ops);
                    }
                    Err(error) => tracing::warn!(
                        device, %error,
                        "queue pair without RDMA FLUSH: the verbs library or provider refused it \
                         (rdma-core 45 or later is needed)"
                    ),
                }
            }
        }
        let qp = match qp {
            Some(q) => q,
            None => {
                // SAFETY: the PD and both CQs are live (we hold Arcs) and belong to one
                // context; init is a valid attribute block.
                let qp = unsafe { ibv_create_qp(pd.ptr(), &mut init) };
                Handle::new(qp).ok_or_else(|| VerbsError::IbvCreateQp {
                    device: pd.device().name().to_string(),
                    cap,
                    source: io::Error::last_os_error(),
                })?
            }
        };
        // SAFETY: the QP was just created; qp_num is a plain field.
        let qpn = unsafe { (*qp.ptr()).qp_num };
        Ok(VerbsQp {
            qp,
            qpn,
            transition: Mutex::new(()),
            pd: Arc::clone(pd),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
            flush,
            accept_flush: cap.flush && pd.device().supports_flush(),
        })
    }

    /// Whether RDMA FLUSH can be posted ([`RawOp::Flush`]): asked for at creation, reported by
    /// the device, and accepted by the verbs library and provider (rdma-core 45 or later).
    pub fn supports_flush(&self) -> bool {
        self.flush.is_some()
    }

    /// The completion queue of the send queue.
    pub fn send_cq(&self) -> &Arc<VerbsCq> {
        &self.send_cq
    }
    /// The completion queue of the receive queue.
    pub fn recv_cq(&self) -> &Arc<VerbsCq> {
        &self.recv_cq
    }
    /// The protection domain.
    pub fn pd(&self) -> &Arc<VerbsPd> {
        &self.pd
    }

    /// The queue pair number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// What the peer needs to connect to us, with initial PSN `psn` (masked to 24 bits).
    pub fn local_endpoint(&self, psn: u32) -> Result<Endpoint> {
        let dev = self.pd.device();
        Ok(Endpoint {
            qpn: self.qpn,
            psn: psn & 0x00ff_ffff,
            gid: dev.gid(),
            lid: dev.lid()?,
            mtu: dev.active_mtu()?,
        })
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: M) -> Result<()> {
        let to = state_name(attr.qp_state);
        // SAFETY: the QP is live; attr is a valid attribute block whose fields named in mask
        // are set; mask bits are valid ibv_qp_attr_mask values.
        let ret = unsafe { ibv_modify_qp(self.qp.ptr(), attr, mask.0 as libc::c_int) };
        if ret != 0 {
            return Err(VerbsError::IbvModifyQp {
                qpn: self.qpn,
                to,
                source: io::Error::from_raw_os_error(ret.abs()),
            }
            .into());
        }
        Ok(())
    }

    fn to_state(&self, state: u32) -> Result<()> {
        let mut a = zeroed_qp_attr();
        a.qp_state = state;
        self.modify(&mut a, M::IBV_QP_STATE)
    }

    /// Slam-connects to `remote`: RESET (if needed) → INIT → RTR → RTS with `opts`.
    pub fn connect(&self, local_psn: u32, remote: &Endpoint, opts: &ConnectOptions) -> Result<()> {
        let dev = self.pd.device();
        dev.require_active()?;
        remote.validate()?;
        let our_mtu = dev.active_mtu()?;
        let mtu = [opts.mtu, remote.mtu, our_mtu]
            .into_iter()
            .min_by_key(|m| m.code())
            .unwrap_or(Mtu::M256);
        let _g = self.transition.lock();
        if self.state()? != QpState::Reset {
            self.to_state(ibv_qp_state::IBV_QPS_RESET)?;
        }

        let mut a = zeroed_qp_attr();
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = dev.port();
        a.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        if self.accept_flush {
            // As a responder: the partner's FLUSHes need the right on the queue pair too.
            a.qp_access_flags |= flush::ACCESS_FLUSH_GLOBAL;
        }
        self.modify(
            &mut a,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
        )?;

        let mut a = zeroed_qp_attr();
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = u32::from(mtu.code());
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = opts.max_rd_atomic;
        a.min_rnr_timer = opts.min_rnr_timer;
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid.raw = remote.gid.0;
        a.ah_attr.grh.sgid_index = dev.gid_index();
        a.ah_attr.grh.hop_limit = HOP_LIMIT;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = dev.port();
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
        )?;

        let mut a = zeroed_qp_attr();
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = opts.ack_timeout;
        a.retry_cnt = opts.retry_count;
        a.rnr_retry = opts.rnr_retry;
        a.sq_psn = local_psn & 0x00ff_ffff;
        a.max_rd_atomic = opts.max_rd_atomic;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
        )
    }

    /// Moves to RESET: outstanding requests are discarded without completions.
    pub fn reset(&self) -> Result<()> {
        let _g = self.transition.lock();
        self.to_state(ibv_qp_state::IBV_QPS_RESET)
    }

    /// Moves to ERR: outstanding requests complete with `WorkRequestFlushed`.
    pub fn set_error(&self) -> Result<()> {
        let _g = self.transition.lock();
        self.to_state(ibv_qp_state::IBV_QPS_ERR)
    }

    /// The current state.
    pub fn state(&self) -> Result<QpState> {
        let mut a = zeroed_qp_attr();
        // SAFETY: plain data; all-zero is valid.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is live; a and init are valid out-pointers.
        let ret = unsafe {
            ibv_query_qp(
                self.qp.ptr(),
                &mut a,
                M::IBV_QP_STATE.0 as libc::c_int,
                &mut init,
            )
        };
        if ret != 0 {
            return Err(VerbsError::IbvQueryQp {
                qpn: self.qpn,
                source: io::Error::from_raw_os_error(ret.abs()),
            }
            .into());
        }
        Ok(map_qp_state(a.qp_state))
    }

    /// Posts send-queue requests as one linked list (a single `ibv_post_send`); a FLUSH is
    /// posted through the extended API between the lists before and after it, in order. On a
    /// queue pair with FLUSH every post holds its lock (see `FlushOps::post`).
    pub fn post_send(&self, wrs: &[RawSend]) -> Result<()> {
        let one = self.flush.as_ref().map(FlushOps::serialize);
        let mut done = 0;
        while let Some(at) = wrs[done..]
            .iter()
            .position(|w| matches!(w.op, RawOp::Flush(..)))
        {
            let at = done + at;
            self.post_list(&wrs[done..at])
                .map_err(|e| posted_after(e, done))?;
            let w = &wrs[at];
            let RawOp::Flush(remote, len) = w.op else {
                break;
            };
            let (Some(ops), Some(one)) = (self.flush.as_ref(), one.as_ref()) else {
                return Err(FabricError::FlushUnsupported { qpn: self.qpn });
            };
            ops.post(one, w.token, w.signaled, remote, len)
                .map_err(|source| {
                    FabricError::from(VerbsError::IbvPostSend {
                        qpn: self.qpn,
                        posted: at,
                        source,
                    })
                })?;
            done = at + 1;
        }
        self.post_list(&wrs[done..])
            .map_err(|e| posted_after(e, done))
    }

    /// Posts requests without FLUSH as one linked list.
    fn post_list(&self, wrs: &[RawSend]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        if wrs.len() <= STACK_BATCH {
            let mut sges = [zero_sge(); STACK_BATCH];
            let mut list: [ibv_send_wr; STACK_BATCH] = std::array::from_fn(|_| zeroed_send_wr());
            self.post_send_in(wrs, &mut sges[..wrs.len()], &mut list[..wrs.len()])
        } else {
            let mut sges = vec![zero_sge(); wrs.len()];
            let mut list: Vec<ibv_send_wr> = wrs.iter().map(|_| zeroed_send_wr()).collect();
            self.post_send_in(wrs, &mut sges, &mut list)
        }
    }

    fn post_send_in(
        &self,
        wrs: &[RawSend],
        sges: &mut [ibv_sge],
        list: &mut [ibv_send_wr],
    ) -> Result<()> {
        let n = wrs.len();
        for (i, r) in wrs.iter().enumerate() {
            sges[i] = to_sge(&r.sge);
            fill_send(&mut list[i], r);
        }
        let base = list.as_mut_ptr();
        for (i, wr) in list.iter_mut().enumerate() {
            wr.sg_list = &mut sges[i];
            // Element i + 1 of the same array (in bounds: i + 1 < n).
            wr.next = if i + 1 < n {
                base.wrapping_add(i + 1)
            } else {
                std::ptr::null_mut()
            };
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is live; the list is n linked, fully initialised requests whose
        // sg_list entries outlive the call; bad is a valid out-pointer. The buffers they name
        // are kept alive by the neutral layer until completion.
        let ret = unsafe { ibv_post_send(self.qp.ptr(), base, &mut bad) };
        if ret != 0 {
            let posted = index_of(base, bad, n);
            return Err(VerbsError::IbvPostSend {
                qpn: self.qpn,
                posted,
                source: io::Error::from_raw_os_error(ret.abs()),
            }
            .into());
        }
        Ok(())
    }

    /// Posts receive requests as one linked list (a single `ibv_post_recv`).
    pub fn post_recv(&self, wrs: &[RawRecv]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let empty = ibv_recv_wr {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
        };
        if wrs.len() <= STACK_BATCH {
            let mut sges = [zero_sge(); STACK_BATCH];
            let mut list = [empty; STACK_BATCH];
            self.post_recv_in(wrs, &mut sges[..wrs.len()], &mut list[..wrs.len()])
        } else {
            let mut sges = vec![zero_sge(); wrs.len()];
            let mut list = vec![empty; wrs.len()];
            self.post_recv_in(wrs, &mut sges, &mut list)
        }
    }

    fn post_recv_in(
        &self,
        wrs: &[RawRecv],
        sges: &mut [ibv_sge],
        list: &mut [ibv_recv_wr],
    ) -> Result<()> {
        let n = wrs.len();
        let base = list.as_mut_ptr();
        for (i, r) in wrs.iter().enumerate() {
            sges[i] = to_sge(&r.sge);
            let wr = &mut list[i];
            wr.wr_id = r.token;
            wr.sg_list = &mut sges[i];
            wr.num_sge = if r.sge.len == 0 { 0 } else { 1 };
            // Element i + 1 of the same array (in bounds: i + 1 < n).
            wr.next = if i + 1 < n {
                base.wrapping_add(i + 1)
            } else {
                std::ptr::null_mut()
            };
        }
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: as for post_send: live QP, n linked initialised requests, valid out-pointer.
        let ret = unsafe { ibv_post_recv(self.qp.ptr(), base, &mut bad) };
        if ret != 0 {
            let posted = index_of(base, bad, n);
            return Err(VerbsError::IbvPostRecv {
                qpn: self.qpn,
                posted,
                source: io::Error::from_raw_os_error(ret.abs()),
            }
            .into());
        }
        Ok(())
    }
}

/// Index of `bad` in the array at `base` of `n` elements (0 when it is not in the array).
fn index_of<T>(base: *mut T, bad: *mut T, n: usize) -> usize {
    let size = std::mem::size_of::<T>().max(1);
    let off = (bad as usize).wrapping_sub(base as usize);
    if bad.is_null() || off % size != 0 || off / size >= n {
        0
    } else {
        off / size
    }
}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed once; the PD and CQs are kept alive by our
        // Arcs until after this.
        let ret = unsafe { ibv_destroy_qp(self.qp.ptr()) };
        if ret != 0 {
            tracing::warn!(qpn = self.qpn, error = %io::Error::from_raw_os_error(ret.abs()), "ibv_destroy_qp failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::types::RemoteAddr;

    #[test]
    fn send_wr_fields() {
        let mut wr = zeroed_send_wr();
        let ra = RemoteAddr {
            addr: 0x1000,
            rkey: 77,
        };
        let r = RawSend {
            token: 9,
            op: RawOp::WriteImm(ra, 0x0102_0304),
            sge: RawSge {
                addr: 1,
                len: 0,
                lkey: 2,
            },
            signaled: true,
            inline: false,
        };
        fill_send(&mut wr, &r);
        assert_eq!(wr.wr_id, 9);
        assert_eq!(wr.num_sge, 0);
        assert_eq!(wr.opcode, ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM);
        assert_eq!(wr.send_flags, ibv_send_flags::IBV_SEND_SIGNALED.0);
        // SAFETY: written as imm_data (u32) above; any u32 is valid.
        let imm = unsafe { wr.imm_data_invalidated_rkey_union.imm_data };
        assert_eq!(imm, 0x0102_0304u32.to_be());
        // SAFETY: written as rdma above.
        let rdma = unsafe { wr.wr.rdma };
        assert_eq!((rdma.remote_addr, rdma.rkey), (0x1000, 77));
    }

    #[test]
    fn bad_wr_index() {
        let mut a = [0u64; 4];
        let base = a.as_mut_ptr();
        // SAFETY: in bounds.
        assert_eq!(index_of(base, unsafe { base.add(2) }, 4), 2);
        assert_eq!(index_of(base, std::ptr::null_mut(), 4), 0);
    }
}
