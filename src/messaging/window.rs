//! The sliding window (F3.3): a sans-IO state machine that frames queued messages, numbers
//! the frames, delivers received frames in order exactly once, acknowledges, retransmits, and
//! resynchronises after a link failover or a partner reset. No clock, socket or thread: the
//! driver feeds it `handle_*` inputs with the current (possibly virtual) time and carries out
//! what `poll_*` returns.
//!
//! Frames live in rings of `slots` equal slots: the sender builds frame `seq` in slot
//! `seq % slots` of its local transmit ring and writes it to the same slot of the partner's
//! receive ring (the named resources of F3.2), so a slot is reused only after the partner
//! acknowledged the frame that used it. The transmit copy stays until then: retransmission
//! re-sends it from there.

use super::error::{MessagingError, Result};
use super::outbox::{
    pending_prefix, AckStatus, Body, CallFailure, CallId, Class, Handler, IncomingCall, Message,
    Outbox, Pending,
};
use super::wire::{
    self, FrameHeader, Imm, MessageKind, Messages, ResponseStatus, WireError, FLAG_CALL,
    FLAG_CONTROL, FRAME_FLAG_CONTROL, FRAME_FLAG_RETRANSMIT, FRAME_HEADER_LEN, MESSAGE_HEADER_LEN,
    RESPONSE_PREFIX_LEN,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Window parameters. Both sides must agree on `slots` and `frame_size` (they size the
/// partner's receive ring; the driver takes them from the partner's region).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Frame slots in each ring: the most frames in flight.
    pub slots: u16,
    /// Of those, slots only frames carrying control messages may use.
    pub control_slots: u16,
    /// Bytes per slot (the largest frame).
    pub frame_size: u16,
    /// Largest payload of one message (the seed's "approximately 2000 bytes").
    pub max_payload: u16,
    /// Pack several messages into one frame when they fit.
    pub aggregate: bool,
    /// Re-send unacknowledged frames after this long without progress.
    pub retransmit_after: Duration,
    /// Most messages waiting for frame space before `send` refuses more.
    pub max_queued: usize,
}

impl Default for WindowConfig {
    fn default() -> WindowConfig {
        WindowConfig {
            slots: 32,
            control_slots: 4,
            frame_size: 4096,
            max_payload: 2000,
            aggregate: true,
            retransmit_after: Duration::from_millis(200),
            max_queued: 65_536,
        }
    }
}

impl WindowConfig {
    /// Checks the values; every error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MessagingError::Config(m));
        if self.slots == 0 || u64::from(self.slots) > wire::IMM_MAX_WINDOW {
            return bad(format!("slots = {} (1..=65535)", self.slots));
        }
        if self.control_slots >= self.slots {
            return bad(format!(
                "control_slots = {} must be below slots = {}",
                self.control_slots, self.slots
            ));
        }
        // The largest message is a response: message header, response prefix, payload.
        let need = FRAME_HEADER_LEN
            + MESSAGE_HEADER_LEN
            + RESPONSE_PREFIX_LEN
            + usize::from(self.max_payload);
        if usize::from(self.frame_size) < need {
            return bad(format!(
                "frame_size = {} cannot hold one message of max_payload = {} (needs {need})",
                self.frame_size, self.max_payload
            ));
        }
        if self.retransmit_after.is_zero() {
            return bad("retransmit_after = 0".into());
        }
        if self.max_queued == 0 {
            return bad("max_queued = 0".into());
        }
        Ok(())
    }

    /// Bytes of one ring.
    pub fn ring_len(&self) -> usize {
        usize::from(self.slots) * usize::from(self.frame_size)
    }
}

/// Something for the driver to put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// RDMA WRITE `len` bytes at `offset` of the transmit ring to the same offset of the
    /// partner's receive ring, with immediate `imm`.
    Frame {
        /// Frame sequence number.
        seq: u64,
        /// Ring slot.
        slot: u32,
        /// Byte offset of the slot in both rings.
        offset: usize,
        /// Frame length.
        len: usize,
        /// Immediate value.
        imm: u32,
        /// Whether this is a retransmission.
        retransmit: bool,
    },
    /// A zero-length RDMA WRITE with immediate `imm` (an ack or a nak; no slot).
    Signal {
        /// Immediate value.
        imm: u32,
    },
}

/// What became of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Delivered: its messages went to the handler in order.
    Delivered {
        /// Messages delivered.
        messages: usize,
    },
    /// Already delivered earlier; discarded (and acknowledged again).
    Duplicate,
    /// Ahead of the next expected frame; discarded (a nak asks for the gap).
    OutOfOrder,
    /// Addressed to an earlier conversation of this side; discarded.
    Stale,
}

/// Counters of one window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Frames sent for the first time.
    pub frames_sent: u64,
    /// Frames sent again.
    pub frames_retransmitted: u64,
    /// Frames delivered.
    pub frames_delivered: u64,
    /// Messages put into frames.
    pub messages_sent: u64,
    /// Messages delivered to the handler.
    pub messages_delivered: u64,
    /// Pure acks and naks sent.
    pub signals_sent: u64,
    /// Duplicate frames discarded.
    pub duplicates: u64,
    /// Frames discarded for arriving ahead of a gap.
    pub out_of_order: u64,
    /// Frames or immediates that failed to decode (garbled, torn).
    pub corrupt: u64,
    /// Frames and acks of earlier conversations discarded.
    pub stale: u64,
    /// Malformed messages inside well-formed frames (the rest of such a frame is skipped).
    pub malformed: u64,
    /// Messages with no handler.
    pub unhandled: u64,
    /// Responses that matched no pending call.
    pub unmatched_responses: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Conversation resets (partner declared failed, restarted, or reset by the partner).
    pub resets: u64,
}

#[derive(Clone, Copy, Debug)]
struct SentFrame {
    len: u16,
    count: u16,
    flags: u8,
}

/// The sliding window of one messaging conversation (both directions).
pub struct Window {
    cfg: WindowConfig,
    out: Outbox,
    /// This side's conversation id (never 0); `out.session` mirrors it.
    session: u32,
    /// The partner's conversation id (0: not known yet).
    peer_session: u32,
    /// The latest partner conversation this side heard of (kept when the partner is declared
    /// failed and `peer_session` forgotten): frames of its predecessors are stale.
    peer_latest: u32,
    send_base: u64,
    send_next: u64,
    sent: VecDeque<SentFrame>,
    /// (frame seq, message) for messages whose head asked for an ack notification.
    notify: VecDeque<(u64, super::outbox::MessageId)>,
    resend_next: Option<u64>,
    rto_anchor: Option<Instant>,
    last_nak: Option<(u64, Instant)>,
    resync_owed: bool,
    /// A partner conversation a stale frame named (0: none): frames go to it instead of
    /// `peer_session` until a frame of the partner's is accepted.
    announce_to: u32,
    expected: u64,
    ack_owed: bool,
    nak_owed: bool,
    link_up: bool,
    stats: WindowStats,
    failed: Vec<(Pending, AckStatus)>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("session", &format_args!("{:#010x}", self.session))
            .field("peer_session", &format_args!("{:#010x}", self.peer_session))
            .field("send_base", &self.send_base)
            .field("send_next", &self.send_next)
            .field("expected", &self.expected)
            .field("link_up", &self.link_up)
            .finish()
    }
}

impl Window {
    /// A window for a new conversation with id `session` (any value but 0; drivers pick a
    /// random one so a restarted process is recognised). The link starts down; the first frame
    /// on it (empty if nothing is queued) announces the conversation, so a partner that talked
    /// to an earlier process learns of the restart even when neither side has traffic.
    pub fn new(cfg: WindowConfig, session: u32) -> Result<Window> {
        cfg.validate()?;
        if session == 0 {
            return Err(MessagingError::Config("session = 0".into()));
        }
        let slots = usize::from(cfg.slots);
        Ok(Window {
            out: Outbox::new(session, usize::from(cfg.max_payload), cfg.max_queued),
            cfg,
            session,
            peer_session: 0,
            peer_latest: 0,
            send_base: 1,
            send_next: 1,
            // Never more frames in flight than slots: sending does not grow it.
            sent: VecDeque::with_capacity(slots),
            notify: VecDeque::new(),
            resend_next: None,
            rto_anchor: None,
            last_nak: None,
            resync_owed: true,
            announce_to: 0,
            expected: 1,
            ack_owed: false,
            nak_owed: false,
            link_up: false,
            stats: WindowStats::default(),
            failed: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }
    /// The send queues: queue messages, calls and responses here.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }
    /// Counters.
    pub fn stats(&self) -> &WindowStats {
        &self.stats
    }
    /// This side's conversation id.
    pub fn session(&self) -> u32 {
        self.session
    }
    /// The partner's conversation id, once known.
    pub fn peer_session(&self) -> Option<u32> {
        (self.peer_session != 0).then_some(self.peer_session)
    }
    /// Frames sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }
    /// Calls waiting for their response.
    pub fn pending_calls(&self) -> usize {
        self.out.pending_calls()
    }
    /// Messages waiting for frame space.
    pub fn queued(&self) -> usize {
        self.out.queued()
    }
    /// The next frame sequence number expected from the partner.
    pub fn expected(&self) -> u64 {
        self.expected
    }
    /// Whether the driver told the window the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }
    /// Whether nothing is queued, in flight, or owed to the partner.
    pub fn is_idle(&self) -> bool {
        self.sent.is_empty() && self.out.queued() == 0 && !self.ack_owed && !self.nak_owed
    }

    // ---------------------------------------------------------------- inputs

    /// The link is gone (the manager suspended the connection): nothing is transmitted until
    /// [`handle_link_up`](Window::handle_link_up); frames in flight count as lost.
    pub fn handle_link_down(&mut self) {
        self.link_up = false;
    }

    /// A (new) link is ready: every unacknowledged frame is re-sent on it, in order, and the
    /// partner is told what arrived here. The partner discards what it already has.
    pub fn handle_link_up(&mut self, now: Instant) {
        self.link_up = true;
        if !self.sent.is_empty() {
            self.resend_next = Some(self.send_base);
        }
        self.rto_anchor = Some(now);
        self.ack_owed = true;
    }

    /// Retransmission timer: if frames have been unacknowledged for `retransmit_after`,
    /// re-send them all (go-back-N).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.link_up || self.sent.is_empty() {
            return;
        }
        let due = self
            .rto_anchor
            .map_or(now, |a| a + self.cfg.retransmit_after);
        if now >= due {
            self.stats.timeouts += 1;
            self.resend_next = Some(self.send_base);
            self.rto_anchor = Some(now);
        }
    }

    /// The partner is declared failed: the conversation ends. Every message waiting or in
    /// flight with a notification gets [`AckStatus::PartnerInoperative`], every pending call
    /// [`CallFailure::PartnerInoperative`], each exactly once; then a new conversation (with id
    /// derived from the old) starts from sequence 1. Its first frame goes out as soon as a
    /// link is up (now or later), so the partner learns of it even without traffic.
    pub fn handle_partner_failed(&mut self, handler: &mut dyn Handler) {
        self.reset(0, handler);
    }

    /// A received frame (the bytes of the slot its immediate named; trailing bytes beyond
    /// the frame's length are ignored). Messages go to `handler` in order; a corrupt frame is
    /// an error and changes nothing.
    ///
    /// The driver passes the slot only if the frame's session matches the immediate's tag
    /// (its low byte): the first frame of a newer conversation of the partner may have
    /// overwritten the slot before the completion was polled, and has its own immediate
    /// further on; handing it over early would take it out of order.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        bytes: &[u8],
        handler: &mut dyn Handler,
    ) -> std::result::Result<Arrival, WireError> {
        let h = match FrameHeader::open(bytes) {
            Ok(h) => h,
            Err(e) => {
                self.stats.corrupt += 1;
                return Err(e);
            }
        };
        let frame = &bytes[..usize::from(h.len)];
        if h.session != self.peer_session && self.is_earlier_partner_conversation(h.session) {
            // From a conversation the partner has left (a late retransmission or a write the
            // wire held back): adopting it would take up a stream the partner abandoned and
            // deliver its frames again. The partner knows its newer conversation: nothing to
            // announce.
            self.stats.stale += 1;
            return Ok(Arrival::Stale);
        }
        if h.peer_session != 0 && h.peer_session != self.session {
            // Sent to an earlier conversation of ours: make sure the partner learns this one.
            self.stats.stale += 1;
            self.resync_owed = true;
            if self.peer_session != 0 && h.session != self.peer_session {
                // From a partner conversation other than the one we address: both sides may
                // have started over at once, each in answer to the other's previous
                // conversation, so that each announces to a conversation the other has left.
                // Address the one named here until a frame of the partner's is accepted (it
                // then knows ours). Nothing else changes: a slot overwritten before it was
                // read can show frames of different conversations out of order. (A window
                // that addresses none announces to none: its partner must start over.)
                self.announce_to = h.session;
            }
            return Ok(Arrival::Stale);
        }
        if h.session != self.peer_session {
            self.meet(&h, handler);
        }
        self.announce_to = 0;
        self.process_ack(now, h.ack, handler);
        if h.seq < self.expected {
            self.stats.duplicates += 1;
            self.ack_owed = true;
            return Ok(Arrival::Duplicate);
        }
        if h.seq > self.expected {
            self.stats.out_of_order += 1;
            self.nak_owed = true;
            return Ok(Arrival::OutOfOrder);
        }
        self.expected += 1;
        self.ack_owed = true;
        self.stats.frames_delivered += 1;
        let mut delivered = 0;
        for m in Messages::new(frame, &h) {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::warn!(seq = h.seq, error = %e, "malformed message skipped with the rest of its frame");
                    break;
                }
            };
            delivered += 1;
            self.stats.messages_delivered += 1;
            let class = if m.flags & FLAG_CONTROL != 0 {
                Class::Control
            } else {
                Class::Bulk
            };
            match m.kind {
                MessageKind::Response { call_id, status } => {
                    if !self.out.calls.remove(&call_id) {
                        self.stats.unmatched_responses += 1;
                        continue;
                    }
                    let result = match status {
                        s if s == ResponseStatus::Ok as u8 => Ok(m.payload),
                        s if s == ResponseStatus::NoHandler as u8 => Err(CallFailure::NoHandler),
                        s if s == ResponseStatus::HandlerError as u8 => {
                            let (code, reason) = wire::decode_handler_error(m.payload);
                            Err(CallFailure::Handler { code, reason })
                        }
                        s => Err(CallFailure::Status(s)),
                    };
                    handler.on_response(CallId(call_id), result, &mut self.out);
                }
                kind => {
                    let call = match kind {
                        MessageKind::Call { call_id } => Some(IncomingCall {
                            call_id,
                            session: self.session,
                        }),
                        _ => None,
                    };
                    let msg = Message {
                        code: m.code,
                        flags: m.flags & wire::FLAGS_USER,
                        class,
                        payload: m.payload,
                        call,
                    };
                    if !handler.on_message(&msg, &mut self.out) {
                        self.stats.unhandled += 1;
                        if let Some(call) = call {
                            // Cannot fail: the call is of the current conversation.
                            let _ = self
                                .out
                                .respond_status(call, ResponseStatus::NoHandler, &[]);
                        }
                    }
                }
            }
        }
        Ok(Arrival::Delivered {
            messages: delivered,
        })
    }

    /// A zero-length WRITE's immediate (an ack or a nak). A frame immediate is ignored here
    /// (its bytes go to [`handle_frame`](Window::handle_frame)).
    pub fn handle_signal(
        &mut self,
        now: Instant,
        imm: u32,
        handler: &mut dyn Handler,
    ) -> std::result::Result<(), WireError> {
        let imm = match Imm::decode(imm) {
            Ok(i) => i,
            Err(e) => {
                self.stats.corrupt += 1;
                return Err(e);
            }
        };
        let (low, tag, nak) = match imm {
            Imm::Frame { .. } => return Ok(()),
            Imm::Ack { ack, tag } => (ack, tag, false),
            Imm::Nak { expected, tag } => (expected, tag, true),
        };
        if tag != self.session as u8 {
            self.stats.stale += 1;
            return Ok(());
        }
        let Some(value) = Imm::expand(low, self.send_base, self.send_next) else {
            self.stats.stale += 1;
            return Ok(());
        };
        self.process_ack(now, value, handler);
        if nak && value < self.send_next {
            let recent = self
                .last_nak
                .is_some_and(|(seq, at)| seq == value && now < at + self.cfg.retransmit_after / 2);
            if !recent {
                self.last_nak = Some((value, now));
                let from = self.resend_next.map_or(value, |r| r.min(value));
                self.resend_next = Some(from.max(self.send_base));
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing to transmit, if any: a retransmission, a new frame built into `ring` (the
    /// local transmit ring, `slots * frame_size` bytes) from the queues, or an ack. Call until
    /// it returns `None`. Messages whose build callback cannot produce them are reported to
    /// `handler` as [`AckStatus::NotBuilt`] / [`CallFailure::NotBuilt`].
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        ring: &mut [u8],
        handler: &mut dyn Handler,
    ) -> Option<Transmit> {
        let t = self.next_transmit(now, ring);
        self.report_failed(handler);
        t
    }

    /// When [`handle_timeout`](Window::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.link_up || self.sent.is_empty() {
            return None;
        }
        self.rto_anchor.map(|a| a + self.cfg.retransmit_after)
    }

    // ---------------------------------------------------------------- internals

    /// The partner conversation outgoing frames name.
    fn addressee(&self) -> u32 {
        if self.announce_to != 0 {
            self.announce_to
        } else {
            self.peer_session
        }
    }

    /// Whether `session` is one of the conversations the partner had before the latest one
    /// this side heard of: a window's ids follow [`next_session`], so those are the latest
    /// one's predecessors (at most [`LINEAGE`] back; a restarted partner's random id is one of
    /// them only by a chance of `LINEAGE` in 2^32).
    fn is_earlier_partner_conversation(&self, session: u32) -> bool {
        if self.peer_latest == 0 {
            return false;
        }
        let mut s = self.peer_latest;
        for _ in 0..LINEAGE {
            s = predecessor(s);
            if s == session {
                return true;
            }
        }
        false
    }

    /// The acknowledgement outgoing frames carry: for the conversation they name, so 1
    /// (nothing received) when that is not the one this side receives from.
    fn frame_ack(&self) -> u64 {
        if self.announce_to != 0 {
            1
        } else {
            self.expected
        }
    }

    fn slots(&self) -> u64 {
        u64::from(self.cfg.slots)
    }

    fn next_transmit(&mut self, now: Instant, ring: &mut [u8]) -> Option<Transmit> {
        if !self.link_up {
            return None;
        }
        if let Some(t) = self.retransmit(ring) {
            return Some(t);
        }
        let room = self.sent.len() < usize::from(self.cfg.slots);
        let bulk_room = self.sent.len() < usize::from(self.cfg.slots - self.cfg.control_slots);
        if room
            && (!self.out.control.is_empty()
                || (bulk_room && !self.out.bulk.is_empty())
                || self.resync_owed)
        {
            if let Some(t) = self.build_frame(now, ring, bulk_room) {
                return Some(t);
            }
        }
        let tag = self.peer_session as u8;
        if self.nak_owed {
            self.nak_owed = false;
            self.ack_owed = false;
            self.stats.signals_sent += 1;
            let expected = Imm::low_bits(self.expected);
            return Some(Transmit::Signal {
                imm: Imm::Nak { expected, tag }.encode(),
            });
        }
        if self.ack_owed {
            self.ack_owed = false;
            self.stats.signals_sent += 1;
            let ack = Imm::low_bits(self.expected);
            return Some(Transmit::Signal {
                imm: Imm::Ack { ack, tag }.encode(),
            });
        }
        None
    }

    fn slot_range(&self, seq: u64) -> (u32, usize) {
        let slot = (seq % self.slots()) as u32;
        (slot, slot as usize * usize::from(self.cfg.frame_size))
    }

    fn retransmit(&mut self, ring: &mut [u8]) -> Option<Transmit> {
        let r = self.resend_next?;
        if r < self.send_base || r >= self.send_next {
            self.resend_next = None;
            return None;
        }
        let rec = self.sent[(r - self.send_base) as usize];
        let (slot, offset) = self.slot_range(r);
        let len = usize::from(rec.len);
        let buf = ring.get_mut(offset..offset + len)?;
        let header = FrameHeader {
            flags: rec.flags | FRAME_FLAG_RETRANSMIT,
            len: rec.len,
            count: rec.count,
            session: self.session,
            peer_session: self.addressee(),
            seq: r,
            ack: self.frame_ack(),
        };
        header.seal(buf);
        self.resend_next = (r + 1 < self.send_next).then_some(r + 1);
        self.ack_owed = false;
        self.stats.frames_retransmitted += 1;
        Some(Transmit::Frame {
            seq: r,
            slot,
            offset,
            len,
            imm: Imm::Frame {
                slot,
                tag: self.session as u8,
            }
            .encode(),
            retransmit: true,
        })
    }

    fn build_frame(&mut self, now: Instant, ring: &mut [u8], bulk_room: bool) -> Option<Transmit> {
        let seq = self.send_next;
        let (slot, offset) = self.slot_range(seq);
        let fs = usize::from(self.cfg.frame_size);
        let frame = ring.get_mut(offset..offset + fs)?;
        let max_payload = usize::from(self.cfg.max_payload);
        let mut o = FRAME_HEADER_LEN;
        let mut count: u16 = 0;
        let mut control = false;
        loop {
            let from_control = !self.out.control.is_empty();
            let queue = if from_control {
                &mut self.out.control
            } else if bulk_room || control {
                &mut self.out.bulk
            } else {
                break;
            };
            let Some(p) = queue.front_mut() else {
                break;
            };
            let prefix = pending_prefix(p);
            if fs - o < prefix {
                break;
            }
            let avail = (fs - o - prefix).min(max_payload);
            let body_at = o + prefix;
            let used = match &mut p.body {
                Body::Bytes(v) => {
                    if v.len() > avail {
                        break;
                    }
                    frame[body_at..body_at + v.len()].copy_from_slice(v);
                    Some(v.len())
                }
                Body::Build(f) => match f(&mut frame[body_at..body_at + avail]) {
                    Some(n) if n <= avail => Some(n),
                    Some(_) => None,
                    None if count > 0 || avail < max_payload => break,
                    None => None,
                },
            };
            let p = queue.pop_front()?;
            let Some(used) = used else {
                tracing::warn!(
                    code = p.head.code,
                    "message build callback could not fill an empty frame; dropped"
                );
                self.failed.push((p, AckStatus::NotBuilt));
                continue;
            };
            let total = prefix + used;
            let mut flags = p.head.flags;
            if p.call().is_some() {
                flags |= FLAG_CALL;
            }
            if p.head.class == Class::Control {
                flags |= FLAG_CONTROL;
                control = true;
            }
            wire::put_message_header(&mut frame[o..], p.head.code, flags, p.kind, total as u16);
            o += total;
            count += 1;
            self.stats.messages_sent += 1;
            if p.head.notify {
                self.notify.push_back((seq, p.id));
            }
            self.out.recycle(p.body);
            if !self.cfg.aggregate {
                break;
            }
        }
        if count == 0 && !self.resync_owed {
            return None;
        }
        self.resync_owed = false;
        let flags = if control { FRAME_FLAG_CONTROL } else { 0 };
        let header = FrameHeader {
            flags,
            len: o as u16,
            count,
            session: self.session,
            peer_session: self.addressee(),
            seq,
            ack: self.frame_ack(),
        };
        header.seal(&mut frame[..o]);
        if self.sent.is_empty() {
            self.rto_anchor = Some(now);
        }
        self.sent.push_back(SentFrame {
            len: o as u16,
            count,
            flags,
        });
        self.send_next += 1;
        self.ack_owed = false;
        self.stats.frames_sent += 1;
        Some(Transmit::Frame {
            seq,
            slot,
            offset,
            len: o,
            imm: Imm::Frame {
                slot,
                tag: self.session as u8,
            }
            .encode(),
            retransmit: false,
        })
    }

    fn report_failed(&mut self, handler: &mut dyn Handler) {
        for (p, status) in std::mem::take(&mut self.failed) {
            if let Some(call_id) = p.call() {
                if self.out.calls.remove(&call_id) {
                    let failure = match status {
                        AckStatus::NotBuilt => CallFailure::NotBuilt,
                        _ => CallFailure::PartnerInoperative,
                    };
                    handler.on_response(CallId(call_id), Err(failure), &mut self.out);
                }
            }
            if p.head.notify {
                handler.on_ack(p.id, status, &mut self.out);
            }
        }
    }

    fn process_ack(&mut self, now: Instant, ack: u64, handler: &mut dyn Handler) {
        if ack <= self.send_base || ack > self.send_next {
            return;
        }
        while self.send_base < ack {
            self.sent.pop_front();
            self.send_base += 1;
        }
        self.rto_anchor = Some(now);
        if let Some(r) = self.resend_next {
            if r < self.send_base {
                self.resend_next = (self.send_base < self.send_next).then_some(self.send_base);
            }
        }
        while let Some(&(seq, id)) = self.notify.front() {
            if seq >= ack {
                break;
            }
            self.notify.pop_front();
            handler.on_ack(id, AckStatus::Acked, &mut self.out);
        }
    }

    /// The first frame of a partner conversation this side has not heard from. The first
    /// partner of a window that never reset is simply adopted. After that, ours carries on if
    /// the partner's view of our stream matches ours: the frame names our conversation and
    /// acknowledges part of it, at least what we count as acknowledged (the partner started
    /// over in answer to ours; if neither side has received anything of the other's, only the
    /// side with the larger id carries on), or it names none and nothing of ours was
    /// acknowledged yet. Otherwise the partner lost what it had of ours (it declared us failed
    /// or restarted, or our acknowledged frames went to an earlier conversation of it, which a
    /// partner that knew none of ours cannot tell): ours ends too and a new one starts,
    /// announced to the partner.
    ///
    /// Starting over in answer to a partner that itself started over in answer to us would
    /// never end; the match test is what stops it. It relies on frames and acknowledgements
    /// of a new conversation arriving after the old one's, as an RDMA reliable connection
    /// delivers them (a failover loses what was in flight). A late frame of a conversation the
    /// partner has left is recognised whatever the wire does (see
    /// `is_earlier_partner_conversation`) and never gets here.
    fn meet(&mut self, h: &FrameHeader, handler: &mut dyn Handler) {
        let matches = if self.peer_session == 0 && self.stats.resets == 0 {
            true
        } else if h.peer_session == self.session {
            // Nothing received either way: both just started over, crossing; one carries on.
            h.ack >= self.send_base && (h.ack > 1 || self.session > h.session)
        } else {
            self.peer_session == 0 && self.send_base == 1
        };
        if matches {
            if self.peer_session != 0 {
                tracing::info!(
                    old = %format_args!("{:#010x}", self.peer_session),
                    new = %format_args!("{:#010x}", h.session),
                    "messaging partner started a new conversation in answer to this one"
                );
            }
            self.peer_session = h.session;
            self.peer_latest = h.session;
            self.expected = 1;
        } else {
            tracing::info!(
                old = %format_args!("{:#010x}", self.peer_session),
                new = %format_args!("{:#010x}", h.session),
                "messaging partner started a new conversation"
            );
            self.reset(h.session, handler);
        }
    }

    /// Ends the conversation: fails everything outstanding, starts a new one. `peer` is the
    /// partner's new conversation id when it is the partner that reset (0: unknown).
    fn reset(&mut self, peer: u32, handler: &mut dyn Handler) {
        self.stats.resets += 1;
        let next = next_session(self.session, peer);
        self.session = next;
        self.peer_session = peer;
        if peer != 0 {
            self.peer_latest = peer;
        }
        self.announce_to = 0;
        let notified: Vec<_> = self.notify.drain(..).map(|(_, id)| id).collect();
        let (pending, calls) = self.out.take_all(next);
        self.send_base = 1;
        self.send_next = 1;
        self.sent.clear();
        self.resend_next = None;
        self.rto_anchor = None;
        self.last_nak = None;
        self.expected = 1;
        self.ack_owed = false;
        self.nak_owed = false;
        // Announce the new conversation with a frame (empty if nothing is queued): the partner
        // must learn it to fail what it waits for from the old one, and to address this one.
        self.resync_owed = true;
        // Callbacks run last: whatever they queue belongs to the new conversation.
        for id in notified {
            handler.on_ack(id, AckStatus::PartnerInoperative, &mut self.out);
        }
        for p in pending {
            if p.head.notify {
                handler.on_ack(p.id, AckStatus::PartnerInoperative, &mut self.out);
            }
        }
        for call_id in calls {
            handler.on_response(
                CallId(call_id),
                Err(CallFailure::PartnerInoperative),
                &mut self.out,
            );
        }
    }
}

/// How many conversations back a window recognises frames of its partner's earlier
/// conversations (a window resets at most a few times while a frame can be on the wire).
const LINEAGE: usize = 64;

const MASK24: u32 = 0x00ff_ffff;
/// An odd multiplier mod 2^24 and its inverse.
const MUL24: u32 = 0x009e_3779;
const MUL24_INV: u32 = inverse24(MUL24);

const fn inverse24(m: u32) -> u32 {
    // Newton's iteration: each step doubles the correct low bits (3 -> 6 -> 12 -> 24).
    let mut x = m;
    let mut i = 0;
    while i < 4 {
        x = x.wrapping_mul(2u32.wrapping_sub(m.wrapping_mul(x))) & MASK24;
        i += 1;
    }
    x
}

/// A 24-bit value derived from a conversation id's low byte.
fn spread(low: u32) -> u32 {
    low.wrapping_mul(0x006f_4f2d).rotate_left(11) & MASK24
}

/// The step from one conversation id to the next: a permutation of the u32 values that adds
/// one to the low byte (so consecutive ids differ there, and no cycle is shorter than 256) and
/// mixes the rest. Being a permutation, it has an inverse ([`predecessor`]), and two different
/// ids never have the same successor.
fn successor(x: u32) -> u32 {
    let low = (x.wrapping_add(1)) & 0xff;
    let mut hi = (x >> 8).wrapping_mul(MUL24) & MASK24;
    hi ^= hi >> 12;
    hi ^= spread(low);
    hi << 8 | low
}

/// The inverse of [`successor`].
fn predecessor(y: u32) -> u32 {
    let low = y & 0xff;
    let mut hi = (y >> 8) ^ spread(low);
    hi ^= hi >> 12; // x ^= x >> 12 is its own inverse on 24 bits
    hi = hi.wrapping_mul(MUL24_INV) & MASK24;
    hi << 8 | (low.wrapping_sub(1) & 0xff)
}

/// The id of the conversation after `old`, started in answer to partner conversation `peer`
/// (0: none): the next [`successor`] of `old` that is neither 0 nor `peer`. So the partner can
/// tell this window's earlier conversations from later ones (it walks back with
/// [`predecessor`]), the low byte (all that acks and naks carry) differs from `old`'s, and two
/// windows that start over in answer to each other's conversation never pick the same id: their
/// successors differ (a permutation), and where one's successor is the other's id, that one
/// steps past the other's successor too.
fn next_session(old: u32, peer: u32) -> u32 {
    let mut next = successor(old);
    if next == peer && peer != 0 {
        // The partner answering us picks successor(peer) (or beyond): skip it.
        next = successor(successor(next));
    }
    while next == 0 || next == peer {
        next = successor(next);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::{next_session, predecessor, successor};

    #[test]
    fn next_session_is_never_shared_by_two_windows_answering_each_other() {
        let mut x: u32 = 0x1234_5678;
        for _ in 1..20_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let (a, b) = (x, x.rotate_left(13) ^ 0xdead_beef);
            let (na, nb) = (next_session(a, b), next_session(b, a));
            assert_ne!(na, nb, "{a:#x} {b:#x}");
            for (old, peer, next) in [(a, b, na), (b, a, nb), (a, 0, next_session(a, 0))] {
                assert_ne!(next, 0);
                assert_ne!(next, peer);
                assert_ne!(next as u8, old as u8);
            }
        }
        // The corner cases: one's successor is the other's id, or both are each other's.
        let a = 0x0bad_cafe;
        let b = successor(a);
        assert_ne!(next_session(a, b), next_session(b, a));
        assert_ne!(next_session(a, b), b);
        let zero_next = predecessor(0);
        assert_ne!(next_session(zero_next, 7), 0);
    }

    #[test]
    fn predecessor_inverts_successor() {
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            assert_eq!(predecessor(successor(x)), x, "{x:#x}");
            assert_eq!(successor(predecessor(x)), x, "{x:#x}");
            assert_eq!(successor(x) as u8, (x as u8).wrapping_add(1));
        }
        for x in [0, 1, 0xff, 0x100, u32::MAX, 0x00ff_ffff, 0xff00_0000] {
            assert_eq!(predecessor(successor(x)), x, "{x:#x}");
        }
    }
}
