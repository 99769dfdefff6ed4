//! The send side's queues and the vocabulary shared by the window and its users: message
//! heads, ids, outcomes, the [`Handler`] a window delivers into, and the [`Outbox`] through
//! which anyone (including a handler, while it runs) queues messages, calls and responses.

use super::error::{MessagingError, Result};
use super::wire::{self, MessageKind, ResponseStatus, FLAGS_USER, RESPONSE_CODE};
use std::collections::{HashSet, VecDeque};

/// Payload copies kept for reuse at most.
const POOL_MAX: usize = 1024;
/// Queued messages the outbox has room for before its queues first grow.
const PRESIZED: usize = 1024;

/// Traffic class of a message. Control messages overtake queued bulk messages and may use
/// the frame slots reserved for them, so bulk data never starves commands and responses
/// (F3.6). Order is kept within a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Commands, responses and other latency-sensitive traffic.
    Control,
    /// Bulk data.
    Bulk,
}

/// What to send: function code, user flags, class, and whether the sender wants an ack
/// notification ([`Handler::on_ack`]) for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Function code (1..=255; 0 is reserved for responses).
    pub code: u8,
    /// User flags (only the high nibble, `wire::FLAGS_USER`, is allowed).
    pub flags: u8,
    /// Traffic class.
    pub class: Class,
    /// Whether [`Handler::on_ack`] reports this message's fate.
    pub notify: bool,
}

impl Head {
    /// A control-class message with function `code`.
    pub fn control(code: u8) -> Head {
        Head {
            code,
            flags: 0,
            class: Class::Control,
            notify: false,
        }
    }
    /// A bulk-class message with function `code`.
    pub fn bulk(code: u8) -> Head {
        Head {
            code,
            flags: 0,
            class: Class::Bulk,
            notify: false,
        }
    }
    /// The same head, asking for an ack notification.
    pub fn notify(mut self) -> Head {
        self.notify = true;
        self
    }
    /// The same head with user flags (high nibble only).
    pub fn flags(mut self, flags: u8) -> Head {
        self.flags = flags;
        self
    }
}

/// Identifies a queued message (for ack notifications).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Identifies a call this side made (for its response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// A call the partner made, to be answered with [`Outbox::respond`] (now or later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IncomingCall {
    /// The caller's id.
    pub call_id: u64,
    /// This side's conversation when the call arrived (a response after a reset is refused).
    pub session: u32,
}

/// Fate of a message whose head asked for notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// The partner received it and its handler was invoked.
    Acked,
    /// The partner was declared failed (or restarted) before acknowledging it; it may or may
    /// not have been delivered.
    PartnerInoperative,
    /// Its build callback never produced it (it did not fit an empty frame).
    NotBuilt,
}

/// Why a call has no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// The partner was declared failed (or restarted) before responding.
    PartnerInoperative,
    /// The partner has no handler for the function code.
    NoHandler,
    /// The partner's handler failed the call ([`Outbox::fail`]).
    Handler {
        /// The handler's error code (the application's numbering).
        code: u32,
        /// Its reason (cut to fit one message).
        reason: String,
    },
    /// The partner answered with a status this version does not know.
    Status(u8),
    /// Its build callback never produced it.
    NotBuilt,
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::PartnerInoperative => write!(f, "partner inoperative"),
            CallFailure::NoHandler => write!(f, "no handler at the partner"),
            CallFailure::Handler { code, reason } => {
                write!(f, "the partner's handler failed (code {code}): {reason}")
            }
            CallFailure::Status(s) => write!(f, "unknown response status {s}"),
            CallFailure::NotBuilt => write!(f, "request could not be built"),
        }
    }
}

/// A message delivered to a handler. The payload borrows the receive buffer: it is valid only
/// during the handler call (copy what must outlive it).
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Function code.
    pub code: u8,
    /// User flags (high nibble).
    pub flags: u8,
    /// Class the sender used.
    pub class: Class,
    /// Payload.
    pub payload: &'a [u8],
    /// Set for a call: answer it with [`Outbox::respond`].
    pub call: Option<IncomingCall>,
}

/// Receives what a window delivers: messages in order, ack notifications, responses. Every
/// method gets the [`Outbox`] so it can send, call or respond at once.
pub trait Handler {
    /// A message arrived, in order. Return `false` if there is no handler for its code (a call
    /// is then answered with [`CallFailure::NoHandler`] automatically).
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Outbox) -> bool;
    /// A message whose head asked for notification was acknowledged, or will never be.
    fn on_ack(&mut self, id: MessageId, status: AckStatus, out: &mut Outbox) {
        let _ = (id, status, out);
    }
    /// A call completed: with the partner's response bytes, or failed. Runs exactly once per
    /// call.
    fn on_response(&mut self, call: CallId, result: Result<&[u8], CallFailure>, out: &mut Outbox) {
        let _ = (call, result, out);
    }
}

/// A build callback: given frame space (at most the maximum payload), writes the payload and
/// returns the bytes used, or `None` if it does not fit (it is called again with a fresh frame).
pub type BuildFn = Box<dyn FnMut(&mut [u8]) -> Option<usize> + Send>;

pub(crate) enum Body {
    Bytes(Vec<u8>),
    Build(BuildFn),
}

pub(crate) struct Pending {
    pub(crate) id: MessageId,
    pub(crate) head: Head,
    pub(crate) kind: MessageKind,
    pub(crate) body: Body,
}

impl Pending {
    pub(crate) fn call(&self) -> Option<u64> {
        match self.kind {
            MessageKind::Call { call_id } => Some(call_id),
            _ => None,
        }
    }
}

/// The queues of messages waiting for frame space, and the set of calls waiting for their
/// responses. Buffers of sent messages are recycled, so steady traffic does not allocate.
pub struct Outbox {
    pub(crate) control: VecDeque<Pending>,
    pub(crate) bulk: VecDeque<Pending>,
    pub(crate) calls: HashSet<u64>,
    pool: Vec<Vec<u8>>,
    next_message: u64,
    next_call: u64,
    pub(crate) session: u32,
    max_payload: usize,
    max_queued: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("control", &self.control.len())
            .field("bulk", &self.bulk.len())
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl Outbox {
    pub(crate) fn new(session: u32, max_payload: usize, max_queued: usize) -> Outbox {
        // Sized up front, so queuing and recycling do not allocate until a backlog exceeds
        // these (the payload copies themselves are recycled through `pool`).
        let ring = max_queued.min(PRESIZED);
        Outbox {
            control: VecDeque::with_capacity(ring),
            bulk: VecDeque::with_capacity(ring),
            calls: HashSet::new(),
            pool: Vec::with_capacity(POOL_MAX),
            next_message: 1,
            next_call: 1,
            session,
            max_payload,
            max_queued,
        }
    }

    /// Messages waiting for frame space.
    pub fn queued(&self) -> usize {
        self.control.len() + self.bulk.len()
    }

    /// Calls waiting for a response (sent or still queued).
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }

    /// The largest payload a message may carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn check(&self, head: &Head, len: Option<usize>) -> Result<()> {
        let refuse = |reason: String| {
            Err(MessagingError::Queue {
                code: head.code,
                reason,
            })
        };
        if head.code == RESPONSE_CODE {
            return refuse("function code 0 is reserved for responses".into());
        }
        if head.flags & !FLAGS_USER != 0 {
            return refuse(format!(
                "flags {:#04x} use bits reserved for the messaging layer (only {FLAGS_USER:#04x} are free)",
                head.flags
            ));
        }
        if let Some(len) = len {
            if len > self.max_payload {
                return refuse(format!(
                    "payload of {len} bytes exceeds the maximum of {}",
                    self.max_payload
                ));
            }
        }
        if self.queued() >= self.max_queued {
            return Err(MessagingError::QueueFull {
                code: head.code,
                queued: self.queued(),
            });
        }
        Ok(())
    }

    fn copy(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(payload);
        v
    }

    pub(crate) fn recycle(&mut self, body: Body) {
        if let Body::Bytes(v) = body {
            if self.pool.len() < POOL_MAX {
                self.pool.push(v);
            }
        }
    }

    fn push(&mut self, head: Head, kind: MessageKind, body: Body) -> MessageId {
        let id = MessageId(self.next_message);
        self.next_message += 1;
        let p = Pending {
            id,
            head,
            kind,
            body,
        };
        match head.class {
            Class::Control => self.control.push_back(p),
            Class::Bulk => self.bulk.push_back(p),
        }
        id
    }

    fn new_call(&mut self) -> u64 {
        let id = self.next_call;
        self.next_call += 1;
        self.calls.insert(id);
        id
    }

    /// Queues a message with a copy of `payload`.
    pub fn send(&mut self, head: Head, payload: &[u8]) -> Result<MessageId> {
        self.check(&head, Some(payload.len()))?;
        let body = Body::Bytes(self.copy(payload));
        Ok(self.push(head, MessageKind::Plain, body))
    }

    /// Queues a message that `build` writes straight into frame space when space is available
    /// (F3.4): no staging copy.
    pub fn build(
        &mut self,
        head: Head,
        build: impl FnMut(&mut [u8]) -> Option<usize> + Send + 'static,
    ) -> Result<MessageId> {
        self.check(&head, None)?;
        Ok(self.push(head, MessageKind::Plain, Body::Build(Box::new(build))))
    }

    /// Queues a call with a copy of `payload`; [`Handler::on_response`] reports its outcome
    /// exactly once.
    pub fn call(&mut self, head: Head, payload: &[u8]) -> Result<(MessageId, CallId)> {
        self.check(&head, Some(payload.len()))?;
        let body = Body::Bytes(self.copy(payload));
        let call_id = self.new_call();
        let id = self.push(head, MessageKind::Call { call_id }, body);
        Ok((id, CallId(call_id)))
    }

    /// Queues a call built in place.
    pub fn call_build(
        &mut self,
        head: Head,
        build: impl FnMut(&mut [u8]) -> Option<usize> + Send + 'static,
    ) -> Result<(MessageId, CallId)> {
        self.check(&head, None)?;
        let call_id = self.new_call();
        let id = self.push(
            head,
            MessageKind::Call { call_id },
            Body::Build(Box::new(build)),
        );
        Ok((id, CallId(call_id)))
    }

    /// Queues the response to a call of the partner (control class).
    pub fn respond(&mut self, call: IncomingCall, payload: &[u8]) -> Result<()> {
        self.respond_status(call, ResponseStatus::Ok, payload)
    }

    /// Answers a call of the partner with a failure instead of a response: its caller gets
    /// [`CallFailure::Handler`] with `code` and `reason` (cut to fit one message).
    pub fn fail(&mut self, call: IncomingCall, code: u32, reason: &str) -> Result<()> {
        let payload = wire::encode_handler_error(code, reason, self.max_payload);
        self.respond_status(call, ResponseStatus::HandlerError, &payload)
    }

    pub(crate) fn respond_status(
        &mut self,
        call: IncomingCall,
        status: ResponseStatus,
        payload: &[u8],
    ) -> Result<()> {
        if call.session != self.session {
            return Err(MessagingError::StaleCall {
                call_id: call.call_id,
            });
        }
        if payload.len() > self.max_payload {
            return Err(MessagingError::Queue {
                code: RESPONSE_CODE,
                reason: format!(
                    "response of {} bytes exceeds the maximum of {}",
                    payload.len(),
                    self.max_payload
                ),
            });
        }
        // Responses are never refused for a full queue: the call is already in progress.
        let head = Head {
            code: RESPONSE_CODE,
            flags: 0,
            class: Class::Control,
            notify: false,
        };
        let body = Body::Bytes(self.copy(payload));
        let kind = MessageKind::Response {
            call_id: call.call_id,
            status: status as u8,
        };
        self.push(head, kind, body);
        Ok(())
    }

    /// Empties the queues and the call set (a conversation ends); returns what was there.
    pub(crate) fn take_all(&mut self, new_session: u32) -> (Vec<Pending>, Vec<u64>) {
        let mut pending: Vec<Pending> = self.control.drain(..).collect();
        pending.extend(self.bulk.drain(..));
        let mut calls: Vec<u64> = self.calls.drain().collect();
        calls.sort_unstable();
        self.session = new_session;
        (pending, calls)
    }
}

/// Bytes the prefix of a pending message takes.
pub(crate) fn pending_prefix(p: &Pending) -> usize {
    wire::prefix_len(p.kind)
}
