//! Reliable-connected queue pairs of the soft provider.
//!
//! Requester: every request is one packet with the next PSN, transmitted at post time and kept
//! until acknowledged. ACKs are cumulative; a READ completes when its response arrives. After
//! the ACK timeout everything unacknowledged is retransmitted (go-back-N) up to `retry_count`
//! times, then the oldest request completes with `RetryExceeded` and the queue pair moves to
//! error, flushing the rest. An RNR NAK pauses for the RNR delay and retransmits, up to
//! `rnr_retry` times (7: forever). Any other NAK completes the request with the matching
//! remote error and moves the queue pair to error.
//!
//! Responder: executes the packet with the expected PSN, acknowledges duplicates without
//! executing them again (READs are re-read), and answers a gap with one sequence NAK.

use super::packet_auth::{is_sealed, PacketAuth, TAG_LEN};
use super::packet_buf::PacketBuf;
use super::wire::{psn_add, psn_diff, Body, Packet, Syndrome, HEADER_LEN};
use super::{DeviceShared, PeerAddr, RegionMem, SoftCq, SoftError, SoftPd};
use crate::fabric::raw::{RawCompletion, RawOp, RawRecv, RawSend, RawSge};
use crate::fabric::types::*;
use crate::fabric::{FabricError, Result};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

struct SqEntry {
    token: u64,
    op: RawOp,
    sge: RawSge,
    signaled: bool,
    psn: u32,
    pkt: PacketBuf,
}

impl CoreState {
    /// Back to RESET: everything outstanding is discarded without completions.
    fn discard(&mut self) {
        self.sq.clear();
        self.rq.clear();
        self.remote = None;
        self.timer = None;
        self.rnr_until = None;
        self.nak_seq_sent = false;
        self.auth = None;
        self.state = QpState::Reset;
    }
}

struct CoreState {
    state: QpState,
    remote: Option<(Endpoint, PeerAddr)>,
    opts: ConnectOptions,
    next_psn: u32,
    sq: VecDeque<SqEntry>,
    retries_left: u8,
    rnr_left: u8,
    timer: Option<Instant>,
    rnr_until: Option<Instant>,
    epsn: u32,
    rq: VecDeque<RawRecv>,
    nak_seq_sent: bool,
    /// The connection's packet keys (`ConnectOptions::packet_key`): every packet sent is
    /// sealed, every packet received must be (packet_auth.rs).
    auth: Option<PacketAuth>,
}

/// Protocol state of one queue pair, shared between its handle and the device engine.
pub(crate) struct QpCore {
    qpn: u32,
    pd: u32,
    send_cq: Arc<SoftCq>,
    recv_cq: Arc<SoftCq>,
    st: Mutex<CoreState>,
}

/// A soft reliable-connected queue pair.
pub struct SoftQp {
    core: Arc<QpCore>,
    pd: Arc<SoftPd>,
}

impl Drop for SoftQp {
    fn drop(&mut self) {
        self.pd.device.shared.qps.write().remove(&self.core.qpn);
        self.core.st.lock().discard();
    }
}

fn op_of(op: &RawOp) -> CompletionOp {
    match op {
        RawOp::Send | RawOp::SendImm(_) => CompletionOp::Send,
        RawOp::Write(_) | RawOp::WriteImm(..) => CompletionOp::Write,
        RawOp::Read(_) => CompletionOp::Read,
        RawOp::Flush(..) => CompletionOp::Flush,
    }
}

/// Resolves a local scatter entry to its region and offset, if the key, domain and bounds
/// allow it (and local write when `write`).
fn local(
    dev: &DeviceShared,
    pd: u32,
    sge: &RawSge,
    write: bool,
) -> Option<(Arc<RegionMem>, usize)> {
    let r = dev.region(sge.lkey)?;
    // Remote write implies local write, as on verbs.
    let writable =
        r.access.contains(Access::LOCAL_WRITE) || r.access.contains(Access::REMOTE_WRITE);
    if r.pd != pd || (write && !writable) {
        return None;
    }
    let off = r.offset_of(sge.addr, sge.len as usize)?;
    Some((r, off))
}

/// Checks a remote access against the target's regions.
fn remote(
    dev: &DeviceShared,
    pd: u32,
    addr: u64,
    rkey: u32,
    len: usize,
    need: Access,
) -> Option<(Arc<RegionMem>, usize)> {
    let r = dev.region(rkey)?;
    if r.pd != pd || !r.access.contains(need) {
        return None;
    }
    let off = r.offset_of(addr, len)?;
    Some((r, off))
}

impl SoftQp {
    /// Creates a queue pair in RESET.
    pub fn new(
        pd: &Arc<SoftPd>,
        send_cq: &Arc<SoftCq>,
        recv_cq: &Arc<SoftCq>,
        cap: QpCapacity,
    ) -> Result<SoftQp> {
        let dev = &pd.device.shared;
        let qpn = dev.next_qpn.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let core = Arc::new(QpCore {
            qpn,
            pd: pd.id,
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            st: Mutex::new(CoreState {
                state: QpState::Reset,
                remote: None,
                opts: ConnectOptions::default(),
                next_psn: 0,
                // At their largest from the start: posting never grows them.
                sq: VecDeque::with_capacity(cap.max_send_wr as usize),
                retries_left: 0,
                rnr_left: 0,
                timer: None,
                rnr_until: None,
                epsn: 0,
                rq: VecDeque::with_capacity(cap.max_recv_wr as usize),
                nak_seq_sent: false,
                auth: None,
            }),
        });
        dev.qps.write().insert(qpn, core.clone());
        Ok(SoftQp {
            core,
            pd: pd.clone(),
        })
    }

    fn dev(&self) -> &DeviceShared {
        &self.pd.device.shared
    }

    /// Queue pair number.
    pub fn qpn(&self) -> u32 {
        self.core.qpn
    }

    /// Our endpoint descriptor.
    pub fn local_endpoint(&self, psn: u32) -> Result<Endpoint> {
        let dev = self.dev();
        Ok(Endpoint {
            qpn: self.core.qpn,
            psn: psn & 0x00ff_ffff,
            gid: dev.gid,
            lid: dev.lid,
            mtu: Mtu::M4096,
        })
    }

    /// Slam connect: straight to RTS towards `remote`.
    pub fn connect(&self, local_psn: u32, remote: &Endpoint, opts: &ConnectOptions) -> Result<()> {
        let dev = self.dev();
        let addr = dev.transport.resolve(remote)?;
        if !dev.port_active() {
            return Err(SoftError::PortDown {
                device: dev.name.clone(),
            }
            .into());
        }
        let mut st = self.core.st.lock();
        st.discard();
        st.remote = Some((*remote, addr));
        st.opts = *opts;
        st.auth = opts
            .packet_key
            .map(|k| PacketAuth::derive(&k, (dev.gid, self.core.qpn), (remote.gid, remote.qpn)));
        st.next_psn = local_psn & 0x00ff_ffff;
        st.epsn = remote.psn;
        st.retries_left = opts.retry_count.min(7);
        st.rnr_left = opts.rnr_retry.min(7);
        st.state = QpState::ReadyToSend;
        Ok(())
    }

    /// To RESET: everything outstanding is discarded without completions.
    pub fn reset(&self) -> Result<()> {
        self.core.st.lock().discard();
        Ok(())
    }

    /// To ERROR, flushing everything outstanding.
    pub fn set_error(&self) -> Result<()> {
        let mut st = self.core.st.lock();
        self.core.fail(&mut st, None);
        Ok(())
    }

    /// Current state.
    pub fn state(&self) -> Result<QpState> {
        Ok(self.core.st.lock().state)
    }

    /// Posts send-queue requests (transmitted immediately).
    pub fn post_send(&self, wrs: &[RawSend]) -> Result<()> {
        let dev = self.dev();
        let core = &self.core;
        // No RDMA FLUSH here (QueuePair::supports_flush is false): refused before anything goes.
        if wrs.iter().any(|w| matches!(w.op, RawOp::Flush(..))) {
            return Err(FabricError::FlushUnsupported { qpn: core.qpn });
        }
        let mut st = core.st.lock();
        match st.state {
            QpState::ReadyToSend => {}
            QpState::Error => {
                for w in wrs {
                    core.send_cq.push(core.flushed(w.token));
                }
                return Ok(());
            }
            state => {
                return Err(FabricError::QpState {
                    op: "post send",
                    qpn: core.qpn,
                    state,
                })
            }
        }
        let now = Instant::now();
        for w in wrs {
            let psn = st.next_psn;
            let Some((dst_qpn, peer)) = st.remote.map(|(ep, a)| (ep.qpn, a)) else {
                break;
            };
            let payload_needed = !matches!(w.op, RawOp::Read(_));
            let region = local(dev, core.pd, &w.sge, !payload_needed);
            let Some((region, off)) = region else {
                // The neutral layer validated the buffer; a failure here means it was
                // deregistered underneath us: a local protection error, as verbs reports.
                core.send_cq
                    .push(core.error(w.token, CompletionStatus::LocalProtectionError));
                core.fail(&mut st, None);
                return Ok(());
            };
            let mut pkt;
            {
                let data = region.data.read();
                let payload: &[u8] = if payload_needed {
                    &data[off..off + w.sge.len as usize]
                } else {
                    &[]
                };
                let body = match w.op {
                    RawOp::Send => Body::Send { imm: None, payload },
                    RawOp::SendImm(i) => Body::Send {
                        imm: Some(i),
                        payload,
                    },
                    RawOp::Write(a) => Body::Write {
                        addr: a.addr,
                        rkey: a.rkey,
                        imm: None,
                        payload,
                    },
                    RawOp::WriteImm(a, i) => Body::Write {
                        addr: a.addr,
                        rkey: a.rkey,
                        imm: Some(i),
                        payload,
                    },
                    RawOp::Read(a) => Body::ReadRequest {
                        addr: a.addr,
                        rkey: a.rkey,
                        len: w.sge.len,
                    },
                    // Refused above.
                    RawOp::Flush(..) => {
                        return Err(FabricError::FlushUnsupported { qpn: core.qpn })
                    }
                };
                pkt = PacketBuf::with_capacity(HEADER_LEN + 16 + payload.len() + TAG_LEN);
                Packet {
                    dst_qpn,
                    src_qpn: core.qpn,
                    psn,
                    body,
                }
                .encode(pkt.vec_mut());
                if let Some(auth) = &st.auth {
                    auth.seal(pkt.vec_mut());
                }
            }
            st.next_psn = psn_add(psn, 1);
            if st.rnr_until.is_none() {
                dev.transport.send(peer, pkt.clone());
            }
            st.sq.push_back(SqEntry {
                token: w.token,
                op: w.op,
                sge: w.sge,
                signaled: w.signaled,
                psn,
                pkt,
            });
            if st.timer.is_none() && st.rnr_until.is_none() {
                st.timer = st.opts.ack_timeout_duration().map(|t| now + t);
            }
        }
        Ok(())
    }

    /// Posts receives.
    pub fn post_recv(&self, wrs: &[RawRecv]) -> Result<()> {
        let core = &self.core;
        let mut st = core.st.lock();
        match st.state {
            QpState::Reset => Err(FabricError::QpState {
                op: "post recv",
                qpn: core.qpn,
                state: QpState::Reset,
            }),
            QpState::Error => {
                for w in wrs {
                    core.recv_cq.push(core.flushed(w.token));
                }
                Ok(())
            }
            _ => {
                st.rq.extend(wrs.iter().copied());
                Ok(())
            }
        }
    }
}

impl QpCore {
    /// An error completion (the opcode of an error completion is undefined, as on verbs).
    fn error(&self, token: u64, status: CompletionStatus) -> RawCompletion {
        RawCompletion {
            token,
            qpn: self.qpn,
            status,
            op: CompletionOp::Unknown,
            byte_len: 0,
            imm: None,
        }
    }

    fn flushed(&self, token: u64) -> RawCompletion {
        self.error(token, CompletionStatus::WorkRequestFlushed)
    }

    /// Moves to ERROR: the head request gets `head_status` (if any), the rest are flushed.
    fn fail(&self, st: &mut CoreState, head_status: Option<CompletionStatus>) {
        if let Some(status) = head_status {
            if let Some(e) = st.sq.pop_front() {
                self.send_cq.push(self.error(e.token, status));
            }
        }
        for e in st.sq.drain(..) {
            self.send_cq.push(self.flushed(e.token));
        }
        for r in st.rq.drain(..) {
            self.recv_cq.push(self.flushed(r.token));
        }
        st.timer = None;
        st.rnr_until = None;
        if st.state != QpState::Error {
            tracing::debug!(qpn = self.qpn, status = ?head_status, "soft queue pair to error");
        }
        st.state = QpState::Error;
    }

    fn complete_head(&self, st: &mut CoreState, byte_len: u32) {
        if let Some(e) = st.sq.pop_front() {
            if e.signaled {
                self.send_cq.push(RawCompletion {
                    token: e.token,
                    qpn: self.qpn,
                    status: CompletionStatus::Success,
                    op: op_of(&e.op),
                    byte_len,
                    imm: None,
                });
            }
        }
    }

    /// Completes every request before `psn` that an ACK covers; stops at an unanswered READ.
    /// Returns whether anything completed.
    fn ack_before(&self, st: &mut CoreState, psn: u32, inclusive: bool) -> bool {
        let mut progressed = false;
        while let Some(e) = st.sq.front() {
            let d = psn_diff(e.psn, psn);
            if d > 0 || (d == 0 && !inclusive) || matches!(e.op, RawOp::Read(_)) {
                break;
            }
            let len = e.sge.len;
            self.complete_head(st, len);
            progressed = true;
        }
        if progressed {
            st.retries_left = st.opts.retry_count.min(7);
            st.rnr_left = st.opts.rnr_retry.min(7);
        }
        progressed
    }

    fn restart_timer(&self, st: &mut CoreState, now: Instant) {
        st.timer = if st.sq.is_empty() {
            None
        } else {
            st.opts.ack_timeout_duration().map(|t| now + t)
        };
    }

    fn retransmit_all(&self, dev: &DeviceShared, st: &mut CoreState) {
        if let Some((_, peer)) = st.remote {
            for e in &st.sq {
                dev.transport.send(peer, e.pkt.clone());
            }
        }
    }

    fn reply(&self, dev: &DeviceShared, st: &CoreState, psn: u32, body: Body<'_>) {
        if let Some((ep, peer)) = st.remote {
            let payload = match body {
                Body::ReadResponse { payload } => payload.len(),
                _ => 0,
            };
            let mut pkt = PacketBuf::with_capacity(HEADER_LEN + 16 + payload + TAG_LEN);
            Packet {
                dst_qpn: ep.qpn,
                src_qpn: self.qpn,
                psn,
                body,
            }
            .encode(pkt.vec_mut());
            if let Some(auth) = &st.auth {
                auth.seal(pkt.vec_mut());
            }
            dev.transport.send(peer, pkt);
        }
    }

    fn ack(&self, dev: &DeviceShared, st: &CoreState, psn: u32, syndrome: Syndrome) {
        self.reply(dev, st, psn, Body::Ack { syndrome });
    }

    /// Takes one inbound packet addressed to this queue pair: checks its tag against the
    /// connection's packet keys (a keyed connection takes only packets sealed for it, one
    /// without keys only unsealed ones; others are dropped and counted), decodes it and
    /// handles it.
    pub(crate) fn receive(&self, dev: &DeviceShared, bytes: &[u8], now: Instant) {
        // One lock for the tag check and the handling.
        let mut st = self.st.lock();
        let opened = match &st.auth {
            Some(auth) => auth.open(bytes),
            None => (!is_sealed(bytes)).then_some(bytes),
        };
        let Some(bytes) = opened else {
            dev.unauthenticated.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(
                qpn = self.qpn,
                "packet without a valid tag for this connection dropped"
            );
            return;
        };
        match Packet::decode(bytes) {
            Ok(p) => self.handle_locked(dev, &mut st, &p, now),
            Err(e) => tracing::debug!(device = %dev.name, error = %e, "malformed packet dropped"),
        }
    }

    /// Handles one inbound packet (decoded and, where the connection is keyed, its tag
    /// already checked).
    #[cfg(test)]
    pub(crate) fn handle_packet(&self, dev: &DeviceShared, p: &Packet<'_>, now: Instant) {
        self.handle_locked(dev, &mut self.st.lock(), p, now)
    }

    fn handle_locked(&self, dev: &DeviceShared, st: &mut CoreState, p: &Packet<'_>, now: Instant) {
        if st.state != QpState::ReadyToSend {
            return;
        }
        match st.remote {
            Some((ep, _)) if ep.qpn == p.src_qpn => {}
            _ => {
                tracing::trace!(
                    qpn = self.qpn,
                    src = p.src_qpn,
                    "packet from a queue pair we are not connected to"
                );
                return;
            }
        }
        let response = matches!(p.body, Body::Ack { .. } | Body::ReadResponse { .. });
        if response && !Self::outstanding(st, p.psn) {
            // As rxe: an acknowledgement or response is taken only for a request sent and
            // not yet acknowledged (a forged one must name that PSN, not any PSN ahead).
            dev.stale_responses.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(
                qpn = self.qpn,
                psn = p.psn,
                "response outside the outstanding window dropped"
            );
            return;
        }
        match &p.body {
            Body::Ack { syndrome } => self.on_ack(dev, st, p.psn, *syndrome, now),
            Body::ReadResponse { payload } => self.on_read_response(dev, st, p.psn, payload, now),
            _ => self.on_request(dev, st, p),
        }
    }

    /// Whether `psn` names a request sent and not yet acknowledged (from the oldest one
    /// outstanding to the last one sent; a NAK sequence error names the one after the last
    /// the responder took, which is outstanding too).
    fn outstanding(st: &CoreState, psn: u32) -> bool {
        let Some(oldest) = st.sq.front() else {
            return false;
        };
        psn_diff(psn, oldest.psn) >= 0 && psn_diff(psn, st.next_psn) < 0
    }

    fn on_ack(
        &self,
        dev: &DeviceShared,
        st: &mut CoreState,
        psn: u32,
        syndrome: Syndrome,
        now: Instant,
    ) {
        match syndrome {
            Syndrome::Ack => {
                if self.ack_before(st, psn, true) {
                    self.restart_timer(st, now);
                }
            }
            Syndrome::RnrNak => {
                dev.rnr_naks.fetch_add(1, Ordering::Relaxed);
                self.ack_before(st, psn, false);
                if st.rnr_left == 0 {
                    self.fail(st, Some(CompletionStatus::RnrRetryExceeded));
                    return;
                }
                if st.rnr_left < 7 {
                    st.rnr_left -= 1;
                }
                st.timer = None;
                st.rnr_until = Some(now + st.opts.rnr_delay());
            }
            Syndrome::NakSequence => {
                self.ack_before(st, psn, false);
                if st.rnr_until.is_none() {
                    if let Some((_, peer)) = st.remote {
                        for e in st.sq.iter().filter(|e| psn_diff(e.psn, psn) >= 0) {
                            dev.transport.send(peer, e.pkt.clone());
                        }
                    }
                    self.restart_timer(st, now);
                }
            }
            Syndrome::NakInvalidRequest
            | Syndrome::NakRemoteAccess
            | Syndrome::NakRemoteOperation => {
                self.ack_before(st, psn, false);
                let matches_head = st.sq.front().is_some_and(|e| e.psn == psn);
                if !matches_head {
                    return;
                }
                let status = match syndrome {
                    Syndrome::NakInvalidRequest => CompletionStatus::RemoteInvalidRequest,
                    Syndrome::NakRemoteAccess => CompletionStatus::RemoteAccessError,
                    _ => CompletionStatus::RemoteOperationError,
                };
                self.fail(st, Some(status));
            }
        }
    }

    fn on_read_response(
        &self,
        dev: &DeviceShared,
        st: &mut CoreState,
        psn: u32,
        payload: &[u8],
        now: Instant,
    ) {
        // Requests before this READ are implicitly acknowledged, unless one is an unanswered
        // READ (its response was lost: wait for the retransmission).
        self.ack_before(st, psn, false);
        let Some(head) = st.sq.front() else { return };
        if head.psn != psn || !matches!(head.op, RawOp::Read(_)) {
            return;
        }
        let sge = head.sge;
        if payload.len() > sge.len as usize {
            self.fail(st, Some(CompletionStatus::BadResponse));
            return;
        }
        let Some((region, off)) = local(dev, self.pd, &sge, true) else {
            self.fail(st, Some(CompletionStatus::LocalProtectionError));
            return;
        };
        region.data.write()[off..off + payload.len()].copy_from_slice(payload);
        self.complete_head(st, payload.len() as u32);
        st.retries_left = st.opts.retry_count.min(7);
        self.restart_timer(st, now);
    }

    fn on_request(&self, dev: &DeviceShared, st: &mut CoreState, p: &Packet<'_>) {
        let d = psn_diff(p.psn, st.epsn);
        if d > 0 {
            if !st.nak_seq_sent {
                st.nak_seq_sent = true;
                let e = st.epsn;
                self.ack(dev, st, e, Syndrome::NakSequence);
            }
            return;
        }
        if d < 0 {
            // A duplicate: READs are answered again, everything else is acknowledged.
            if let Body::ReadRequest { addr, rkey, len } = p.body {
                match remote(dev, self.pd, addr, rkey, len as usize, Access::REMOTE_READ) {
                    Some((r, off)) => {
                        let data = r.data.read();
                        let payload = &data[off..off + len as usize];
                        self.reply(dev, st, p.psn, Body::ReadResponse { payload });
                    }
                    None => self.ack(dev, st, p.psn, Syndrome::NakRemoteAccess),
                }
            } else {
                let last = psn_add(st.epsn, 0xff_ffff);
                self.ack(dev, st, last, Syndrome::Ack);
            }
            return;
        }
        st.nak_seq_sent = false;
        match p.body {
            Body::Send { imm, payload } => {
                let Some(recv) = st.rq.front().copied() else {
                    self.ack(dev, st, p.psn, Syndrome::RnrNak);
                    return;
                };
                if payload.len() > recv.sge.len as usize {
                    st.rq.pop_front();
                    self.recv_cq
                        .push(self.error(recv.token, CompletionStatus::LocalLengthError));
                    self.ack(dev, st, p.psn, Syndrome::NakInvalidRequest);
                    self.fail(st, None);
                    return;
                }
                let Some((region, off)) = local(dev, self.pd, &recv.sge, true) else {
                    st.rq.pop_front();
                    self.recv_cq
                        .push(self.error(recv.token, CompletionStatus::LocalProtectionError));
                    self.ack(dev, st, p.psn, Syndrome::NakRemoteOperation);
                    self.fail(st, None);
                    return;
                };
                region.data.write()[off..off + payload.len()].copy_from_slice(payload);
                st.rq.pop_front();
                self.recv_cq.push(RawCompletion {
                    token: recv.token,
                    qpn: self.qpn,
                    status: CompletionStatus::Success,
                    op: CompletionOp::Recv,
                    byte_len: payload.len() as u32,
                    imm,
                });
            }
            Body::Write {
                addr,
                rkey,
                imm,
                payload,
            } => {
                if imm.is_some() && st.rq.is_empty() {
                    self.ack(dev, st, p.psn, Syndrome::RnrNak);
                    return;
                }
                let Some((region, off)) = remote(
                    dev,
                    self.pd,
                    addr,
                    rkey,
                    payload.len(),
                    Access::REMOTE_WRITE,
                ) else {
                    self.violation(dev, st, p.psn, "write", addr, rkey, payload.len());
                    return;
                };
                region.data.write()[off..off + payload.len()].copy_from_slice(payload);
                if imm.is_some() {
                    if let Some(recv) = st.rq.pop_front() {
                        self.recv_cq.push(RawCompletion {
                            token: recv.token,
                            qpn: self.qpn,
                            status: CompletionStatus::Success,
                            op: CompletionOp::RecvWithImm,
                            byte_len: payload.len() as u32,
                            imm,
                        });
                    }
                }
            }
            Body::ReadRequest { addr, rkey, len } => {
                let Some((region, off)) =
                    remote(dev, self.pd, addr, rkey, len as usize, Access::REMOTE_READ)
                else {
                    self.violation(dev, st, p.psn, "read", addr, rkey, len as usize);
                    return;
                };
                st.epsn = psn_add(st.epsn, 1);
                let data = region.data.read();
                let payload = &data[off..off + len as usize];
                self.reply(dev, st, p.psn, Body::ReadResponse { payload });
                return;
            }
            _ => return,
        }
        st.epsn = psn_add(st.epsn, 1);
        self.ack(dev, st, p.psn, Syndrome::Ack);
    }

    #[allow(clippy::too_many_arguments)]
    fn violation(
        &self,
        dev: &DeviceShared,
        st: &mut CoreState,
        psn: u32,
        what: &str,
        addr: u64,
        rkey: u32,
        len: usize,
    ) {
        dev.count_violation();
        tracing::warn!(
            device = %dev.name,
            qpn = self.qpn,
            op = what,
            addr = format_args!("{addr:#x}"),
            rkey = format_args!("{rkey:#x}"),
            len,
            "remote access refused: bad rkey, out of bounds or missing right"
        );
        self.ack(dev, st, psn, Syndrome::NakRemoteAccess);
        self.fail(st, None);
    }

    /// Fires retransmission and RNR timers.
    pub(crate) fn handle_timeout(&self, dev: &DeviceShared, now: Instant) {
        let mut st = self.st.lock();
        if st.state != QpState::ReadyToSend {
            return;
        }
        if let Some(at) = st.rnr_until {
            if now >= at {
                st.rnr_until = None;
                self.retransmit_all(dev, &mut st);
                self.restart_timer(&mut st, now);
            }
            return;
        }
        let Some(at) = st.timer else { return };
        if now < at || st.sq.is_empty() {
            return;
        }
        if st.retries_left == 0 {
            tracing::debug!(qpn = self.qpn, "transport retries exhausted");
            self.fail(&mut st, Some(CompletionStatus::RetryExceeded));
            return;
        }
        st.retries_left -= 1;
        self.retransmit_all(dev, &mut st);
        self.restart_timer(&mut st, now);
    }
}

#[cfg(test)]
#[path = "rc_tests.rs"]
mod rc_tests;
