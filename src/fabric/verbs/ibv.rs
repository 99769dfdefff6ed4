//! What the verbs objects share: the error type, the raw handle wrapper, and the
//! conversions between libibverbs codes and the fabric's types.

use crate::fabric::types::{
    Access, AsyncEvent, CompletionOp, CompletionStatus, QpCapacity, QpState,
};
use rdma_sys::{ibv_access_flags, ibv_event_type, ibv_qp_state, ibv_wc_opcode, ibv_wc_status};
use std::io;
use std::ptr::NonNull;

/// Why a libibverbs operation failed. Variants are named after the verb that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// `ibv_get_device_list` failed (no `ib_uverbs` module or no permission on /dev/infiniband).
    #[error("ibv_get_device_list: {source}")]
    IbvGetDeviceList {
        /// errno.
        source: io::Error,
    },
    /// `ibv_open_device` failed.
    #[error("ibv_open_device({device}): {source}")]
    IbvOpenDevice {
        /// Device name.
        device: String,
        /// errno.
        source: io::Error,
    },
    /// `ibv_query_device` failed.
    #[error("ibv_query_device({device}): {source}")]
    IbvQueryDevice {
        /// Device name.
        device: String,
        /// errno.
        source: io::Error,
    },
    /// `ibv_query_port` failed (often: the port number does not exist).
    #[error("ibv_query_port({device}, port {port}): {source}")]
    IbvQueryPort {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
        /// errno.
        source: io::Error,
    },
    /// `ibv_query_gid` failed for the GID index the device was opened with.
    #[error("ibv_query_gid({device}, port {port}, index {index}): {source}")]
    IbvQueryGid {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
        /// GID table index.
        index: u8,
        /// errno.
        source: io::Error,
    },
    /// The port's GID table has no usable (non-zero) entry: no IP address on its netdev.
    #[error("{device} port {port}: GID table has no usable entry (is an IP address configured on its netdev?)")]
    NoGid {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
    },
    /// The port is not `ACTIVE` (netdev down, cable out, or no subnet manager on InfiniBand).
    #[error(
        "{device} port {port} is {state}, not ACTIVE: check the link (`rdma link`, `ip link`)"
    )]
    PortDown {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
        /// The port state reported.
        state: String,
    },
    /// The port reported an MTU code outside 1..=5.
    #[error("{device} port {port}: unexpected active MTU code {code}")]
    UnexpectedMtu {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
        /// The raw `ibv_mtu` value.
        code: u32,
    },
    /// The async-event thread could not be started.
    #[error("spawn async event thread for {device}: {source}")]
    EventThread {
        /// Device name.
        device: String,
        /// OS error.
        source: io::Error,
    },
    /// `ibv_alloc_pd` failed.
    #[error("ibv_alloc_pd({device}): {source}")]
    IbvAllocPd {
        /// Device name.
        device: String,
        /// errno.
        source: io::Error,
    },
    /// A memory region length of zero, or too large to allocate.
    #[error(
        "register memory region: invalid length {len} (must be 1..=isize::MAX rounded to pages)"
    )]
    InvalidLength {
        /// Requested length.
        len: usize,
    },
    /// Allocating the region's memory failed.
    #[error("register memory region: allocating {len} page-aligned bytes failed")]
    Alloc {
        /// Requested length.
        len: usize,
    },
    /// `ibv_reg_mr` failed.
    #[error("ibv_reg_mr({len} bytes, {access}): {source}{hint}")]
    IbvRegMr {
        /// Region length.
        len: usize,
        /// Requested rights.
        access: Access,
        /// errno.
        source: io::Error,
        /// What to do about it (empty when there is no advice).
        hint: &'static str,
    },
    /// `ibv_dereg_mr` failed while revoking a region (it stays registered).
    #[error("ibv_dereg_mr({len} bytes) to revoke the region: {source}")]
    IbvDeregMr {
        /// Region length.
        len: usize,
        /// errno.
        source: io::Error,
    },
    /// `ibv_create_comp_channel` failed.
    #[error("ibv_create_comp_channel({device}): {source}")]
    IbvCreateCompChannel {
        /// Device name.
        device: String,
        /// errno.
        source: io::Error,
    },
    /// Making a completion-channel or async-event fd non-blocking failed.
    #[error("fcntl(O_NONBLOCK) on a verbs file descriptor: {source}")]
    SetNonBlocking {
        /// errno.
        source: io::Error,
    },
    /// `ibv_create_cq` failed.
    #[error("ibv_create_cq({device}, depth {depth}): {source}")]
    IbvCreateCq {
        /// Device name.
        device: String,
        /// Requested depth.
        depth: u32,
        /// errno.
        source: io::Error,
    },
    /// `ibv_poll_cq` returned a negative value (the CQ is broken or overran).
    #[error("ibv_poll_cq returned {ret}")]
    IbvPollCq {
        /// The return value.
        ret: i32,
    },
    /// `ibv_req_notify_cq` failed.
    #[error("ibv_req_notify_cq: {source}")]
    IbvReqNotifyCq {
        /// errno.
        source: io::Error,
    },
    /// `poll(2)` on a completion channel failed.
    #[error("poll(2) on the completion channel: {source}")]
    PollChannel {
        /// errno.
        source: io::Error,
    },
    /// `ibv_get_cq_event` failed.
    #[error("ibv_get_cq_event: {source}")]
    IbvGetCqEvent {
        /// errno.
        source: io::Error,
    },
    /// `ibv_create_qp` failed (often: capacity larger than the device supports).
    #[error("ibv_create_qp({device}, {cap:?}): {source}")]
    IbvCreateQp {
        /// Device name.
        device: String,
        /// Requested capacity.
        cap: QpCapacity,
        /// errno.
        source: io::Error,
    },
    /// `ibv_modify_qp` failed.
    #[error("ibv_modify_qp(qpn {qpn:#x} -> {to}): {source}")]
    IbvModifyQp {
        /// Queue pair number.
        qpn: u32,
        /// Target state: "INIT", "RTR", "RTS", "RESET" or "ERR".
        to: &'static str,
        /// errno.
        source: io::Error,
    },
    /// `ibv_query_qp` failed.
    #[error("ibv_query_qp(qpn {qpn:#x}): {source}")]
    IbvQueryQp {
        /// Queue pair number.
        qpn: u32,
        /// errno.
        source: io::Error,
    },
    /// `ibv_post_send` failed; the first `posted` requests of the batch were posted.
    #[error("ibv_post_send(qpn {qpn:#x}): request {posted} of the batch refused: {source}")]
    IbvPostSend {
        /// Queue pair number.
        qpn: u32,
        /// Requests before the refused one (these were posted and will complete).
        posted: usize,
        /// errno.
        source: io::Error,
    },
    /// `ibv_post_recv` failed; the first `posted` requests of the batch were posted.
    #[error("ibv_post_recv(qpn {qpn:#x}): request {posted} of the batch refused: {source}")]
    IbvPostRecv {
        /// Queue pair number.
        qpn: u32,
        /// Requests before the refused one (these were posted and will complete).
        posted: usize,
        /// errno.
        source: io::Error,
    },
}

/// The hint attached to an `ibv_reg_mr` failure.
pub(crate) fn reg_mr_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::EFAULT) => {
            " (registration pins memory and counts against RLIMIT_MEMLOCK: raise it with \
             `ulimit -l unlimited`, or LimitMEMLOCK=infinity in the systemd unit)"
        }
        _ => "",
    }
}

/// A libibverbs object pointer that may be shared between threads.
pub(crate) struct Handle<T>(NonNull<T>);

// SAFETY: libibverbs objects are thread safe ("all verbs are thread safe", libibverbs(3)); the
// pointee is only reached through verbs, never through Rust references that could alias.
unsafe impl<T> Send for Handle<T> {}
// SAFETY: as for Send: concurrent verbs calls on one object are allowed by libibverbs.
unsafe impl<T> Sync for Handle<T> {}

impl<T> Handle<T> {
    /// Wraps a pointer a verb returned; `None` when it is null.
    pub(crate) fn new(p: *mut T) -> Option<Handle<T>> {
        NonNull::new(p).map(Handle)
    }
    /// The raw pointer for passing to verbs.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

/// libibverbs access flags for a region's rights (remote write implies local write; remote
/// flush is `IBV_ACCESS_FLUSH_GLOBAL`, which the caller asks for only on a device with FLUSH).
pub(crate) fn access_flags(access: Access) -> u32 {
    let mut f = ibv_access_flags(0);
    if access.contains(Access::LOCAL_WRITE) {
        f |= ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
    }
    if access.contains(Access::REMOTE_READ) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_READ;
    }
    if access.contains(Access::REMOTE_WRITE) {
        f = f
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
    }
    if access.contains(Access::REMOTE_FLUSH) {
        f.0 |= super::flush::ACCESS_FLUSH_GLOBAL;
    }
    f.0
}

/// The neutral status of a work completion status code.
pub(crate) fn map_status(code: u32) -> CompletionStatus {
    use ibv_wc_status::*;
    match code {
        IBV_WC_SUCCESS => CompletionStatus::Success,
        IBV_WC_LOC_LEN_ERR => CompletionStatus::LocalLengthError,
        IBV_WC_LOC_QP_OP_ERR => CompletionStatus::LocalQpOperationError,
        IBV_WC_LOC_PROT_ERR => CompletionStatus::LocalProtectionError,
        IBV_WC_WR_FLUSH_ERR => CompletionStatus::WorkRequestFlushed,
        IBV_WC_REM_INV_REQ_ERR => CompletionStatus::RemoteInvalidRequest,
        IBV_WC_REM_ACCESS_ERR => CompletionStatus::RemoteAccessError,
        IBV_WC_REM_OP_ERR => CompletionStatus::RemoteOperationError,
        IBV_WC_RETRY_EXC_ERR => CompletionStatus::RetryExceeded,
        IBV_WC_RNR_RETRY_EXC_ERR => CompletionStatus::RnrRetryExceeded,
        IBV_WC_BAD_RESP_ERR => CompletionStatus::BadResponse,
        other => CompletionStatus::Other(other),
    }
}

/// The neutral operation of a completion (undefined, so `Unknown`, on error completions).
pub(crate) fn map_opcode(status: u32, opcode: u32) -> CompletionOp {
    use ibv_wc_opcode::*;
    if status != ibv_wc_status::IBV_WC_SUCCESS {
        return CompletionOp::Unknown;
    }
    match opcode {
        IBV_WC_SEND => CompletionOp::Send,
        IBV_WC_RDMA_WRITE => CompletionOp::Write,
        IBV_WC_RDMA_READ => CompletionOp::Read,
        super::flush::WC_FLUSH => CompletionOp::Flush,
        IBV_WC_RECV => CompletionOp::Recv,
        IBV_WC_RECV_RDMA_WITH_IMM => CompletionOp::RecvWithImm,
        _ => CompletionOp::Unknown,
    }
}

/// The neutral state of a verbs QP state code.
pub(crate) fn map_qp_state(code: u32) -> QpState {
    use ibv_qp_state::*;
    match code {
        IBV_QPS_RESET => QpState::Reset,
        IBV_QPS_INIT => QpState::Init,
        IBV_QPS_RTR => QpState::ReadyToReceive,
        IBV_QPS_RTS => QpState::ReadyToSend,
        IBV_QPS_SQD => QpState::SendQueueDrained,
        IBV_QPS_SQE => QpState::SendQueueError,
        // IBV_QPS_ERR and anything unknown: treat as unusable.
        _ => QpState::Error,
    }
}

/// What an async event's element is, decided by its raw type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventElement {
    /// `element.port_num` is valid.
    Port,
    /// `element.qp` is valid.
    Qp,
    /// Neither is needed.
    None,
}

/// Which union member of `ibv_async_event.element` a raw event code uses.
pub(crate) fn event_element(code: u32) -> EventElement {
    use ibv_event_type::*;
    const PORT: [u32; 7] = [
        IBV_EVENT_PORT_ACTIVE as u32,
        IBV_EVENT_PORT_ERR as u32,
        IBV_EVENT_LID_CHANGE as u32,
        IBV_EVENT_PKEY_CHANGE as u32,
        IBV_EVENT_SM_CHANGE as u32,
        IBV_EVENT_CLIENT_REREGISTER as u32,
        IBV_EVENT_GID_CHANGE as u32,
    ];
    const QP: [u32; 8] = [
        IBV_EVENT_QP_FATAL as u32,
        IBV_EVENT_QP_REQ_ERR as u32,
        IBV_EVENT_QP_ACCESS_ERR as u32,
        IBV_EVENT_COMM_EST as u32,
        IBV_EVENT_SQ_DRAINED as u32,
        IBV_EVENT_PATH_MIG as u32,
        IBV_EVENT_PATH_MIG_ERR as u32,
        IBV_EVENT_QP_LAST_WQE_REACHED as u32,
    ];
    if PORT.contains(&code) {
        EventElement::Port
    } else if QP.contains(&code) {
        EventElement::Qp
    } else {
        EventElement::None
    }
}

/// The neutral event for a raw event code and its element (`port` or `qpn`, per
/// [`event_element`]).
pub(crate) fn map_event(code: u32, port: u8, qpn: u32) -> AsyncEvent {
    use ibv_event_type::*;
    match code {
        c if c == IBV_EVENT_PORT_ACTIVE as u32 => AsyncEvent::PortActive { port },
        c if c == IBV_EVENT_PORT_ERR as u32 => AsyncEvent::PortDown { port },
        c if c == IBV_EVENT_QP_FATAL as u32 => AsyncEvent::QpFatal { qpn },
        c if c == IBV_EVENT_QP_ACCESS_ERR as u32 => AsyncEvent::QpAccessError { qpn },
        c if c == IBV_EVENT_CQ_ERR as u32 => AsyncEvent::CqError,
        c if c == IBV_EVENT_DEVICE_FATAL as u32 => AsyncEvent::DeviceFatal,
        c if event_element(c) == EventElement::Qp => AsyncEvent::QpOther { qpn, code: c },
        c => AsyncEvent::Other { code: c },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::verbs::{VerbsCq, VerbsDevice, VerbsMr, VerbsPd, VerbsQp};
    use rdma_sys::ibv_access_flags as F;

    #[test]
    fn access_mapping_is_exact() {
        assert_eq!(access_flags(Access::NONE), 0);
        assert_eq!(
            access_flags(Access::LOCAL_WRITE),
            F::IBV_ACCESS_LOCAL_WRITE.0
        );
        assert_eq!(
            access_flags(Access::REMOTE_READ),
            F::IBV_ACCESS_REMOTE_READ.0
        );
        assert_eq!(
            access_flags(Access::REMOTE_WRITE),
            (F::IBV_ACCESS_REMOTE_WRITE | F::IBV_ACCESS_LOCAL_WRITE).0
        );
        assert_eq!(
            access_flags(Access::REMOTE_READ | Access::REMOTE_WRITE),
            (F::IBV_ACCESS_REMOTE_WRITE | F::IBV_ACCESS_LOCAL_WRITE | F::IBV_ACCESS_REMOTE_READ).0
        );
        assert_eq!(access_flags(Access::REMOTE_FLUSH), 1 << 8);
        // Never atomics, MW binding, zero-based, on-demand paging...
        assert_eq!(access_flags(Access::from_bits(0xff)) & !0x107, 0);
    }

    #[test]
    fn status_mapping() {
        use ibv_wc_status::*;
        let cases = [
            (IBV_WC_SUCCESS, CompletionStatus::Success),
            (IBV_WC_LOC_LEN_ERR, CompletionStatus::LocalLengthError),
            (
                IBV_WC_LOC_QP_OP_ERR,
                CompletionStatus::LocalQpOperationError,
            ),
            (IBV_WC_LOC_PROT_ERR, CompletionStatus::LocalProtectionError),
            (IBV_WC_WR_FLUSH_ERR, CompletionStatus::WorkRequestFlushed),
            (
                IBV_WC_REM_INV_REQ_ERR,
                CompletionStatus::RemoteInvalidRequest,
            ),
            (IBV_WC_REM_ACCESS_ERR, CompletionStatus::RemoteAccessError),
            (IBV_WC_REM_OP_ERR, CompletionStatus::RemoteOperationError),
            (IBV_WC_RETRY_EXC_ERR, CompletionStatus::RetryExceeded),
            (IBV_WC_RNR_RETRY_EXC_ERR, CompletionStatus::RnrRetryExceeded),
            (IBV_WC_BAD_RESP_ERR, CompletionStatus::BadResponse),
            (
                IBV_WC_GENERAL_ERR,
                CompletionStatus::Other(IBV_WC_GENERAL_ERR),
            ),
            (9999, CompletionStatus::Other(9999)),
        ];
        for (code, want) in cases {
            assert_eq!(map_status(code), want, "status {code}");
        }
    }

    #[test]
    fn opcode_mapping() {
        use ibv_wc_opcode::*;
        let ok = ibv_wc_status::IBV_WC_SUCCESS;
        assert_eq!(map_opcode(ok, IBV_WC_SEND), CompletionOp::Send);
        assert_eq!(map_opcode(ok, IBV_WC_RDMA_WRITE), CompletionOp::Write);
        assert_eq!(map_opcode(ok, IBV_WC_RDMA_READ), CompletionOp::Read);
        assert_eq!(map_opcode(ok, IBV_WC_RECV), CompletionOp::Recv);
        assert_eq!(
            map_opcode(ok, IBV_WC_RECV_RDMA_WITH_IMM),
            CompletionOp::RecvWithImm
        );
        assert_eq!(map_opcode(ok, IBV_WC_FETCH_ADD), CompletionOp::Unknown);
        // Error completions carry an undefined opcode.
        assert_eq!(
            map_opcode(ibv_wc_status::IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV),
            CompletionOp::Unknown
        );
    }

    #[test]
    fn qp_state_mapping() {
        use ibv_qp_state::*;
        assert_eq!(map_qp_state(IBV_QPS_RESET), QpState::Reset);
        assert_eq!(map_qp_state(IBV_QPS_INIT), QpState::Init);
        assert_eq!(map_qp_state(IBV_QPS_RTR), QpState::ReadyToReceive);
        assert_eq!(map_qp_state(IBV_QPS_RTS), QpState::ReadyToSend);
        assert_eq!(map_qp_state(IBV_QPS_ERR), QpState::Error);
        assert_eq!(map_qp_state(IBV_QPS_UNKNOWN), QpState::Error);
    }

    #[test]
    fn event_mapping() {
        use ibv_event_type::*;
        assert_eq!(
            map_event(IBV_EVENT_PORT_ERR as u32, 1, 0),
            AsyncEvent::PortDown { port: 1 }
        );
        assert_eq!(
            map_event(IBV_EVENT_PORT_ACTIVE as u32, 2, 0),
            AsyncEvent::PortActive { port: 2 }
        );
        assert_eq!(
            map_event(IBV_EVENT_QP_FATAL as u32, 0, 17),
            AsyncEvent::QpFatal { qpn: 17 }
        );
        assert_eq!(
            map_event(IBV_EVENT_QP_ACCESS_ERR as u32, 0, 17),
            AsyncEvent::QpAccessError { qpn: 17 }
        );
        assert_eq!(
            map_event(IBV_EVENT_QP_LAST_WQE_REACHED as u32, 0, 5),
            AsyncEvent::QpOther {
                qpn: 5,
                code: IBV_EVENT_QP_LAST_WQE_REACHED as u32
            }
        );
        assert_eq!(
            map_event(IBV_EVENT_CQ_ERR as u32, 0, 0),
            AsyncEvent::CqError
        );
        assert_eq!(
            map_event(IBV_EVENT_DEVICE_FATAL as u32, 0, 0),
            AsyncEvent::DeviceFatal
        );
        assert_eq!(map_event(1234, 0, 0), AsyncEvent::Other { code: 1234 });
        assert_eq!(
            event_element(IBV_EVENT_GID_CHANGE as u32),
            EventElement::Port
        );
        assert_eq!(event_element(IBV_EVENT_CQ_ERR as u32), EventElement::None);
        assert_eq!(event_element(99), EventElement::None);
    }

    #[test]
    fn reg_mr_hint_names_memlock() {
        assert!(reg_mr_hint(&io::Error::from_raw_os_error(libc::ENOMEM)).contains("ulimit -l"));
        assert!(reg_mr_hint(&io::Error::from_raw_os_error(libc::EPERM)).contains("LimitMEMLOCK"));
        assert_eq!(reg_mr_hint(&io::Error::from_raw_os_error(libc::EINVAL)), "");
    }

    #[test]
    fn handles_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<VerbsDevice>();
        check::<VerbsPd>();
        check::<VerbsMr>();
        check::<VerbsCq>();
        check::<VerbsQp>();
    }
}
