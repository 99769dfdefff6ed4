//! The ledger: what each side queued, and checks of everything the windows report back.
//!
//! Every message of the random traffic carries, in its first 8 bytes, its sequence number in
//! its (direction, class) stream plus the class and direction; the rest of the payload is a
//! pattern derived from those. The ledger remembers each message's length, code, flags,
//! kind and conversation, so a delivery is checked byte for byte, for exactly-once and for
//! order; acks and responses are checked against deliveries.

use super::{Mix, Ns};
use interlink::messaging::{
    AckStatus, CallFailure, CallId, Class, Handler, Head, IncomingCall, Message, MessageId,
    MessagingError, Outbox,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

/// A sender's conversation: (incarnation of the side, resets of its window so far).
pub type Conv = (u32, u64);

const SEQ_MASK: u64 = (1 << 48) - 1;
/// Function code no handler answers.
pub const UNHANDLED: u8 = 99;

fn class_index(c: Class) -> usize {
    match c {
        Class::Control => 0,
        Class::Bulk => 1,
    }
}

/// What kind of message to queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecKind {
    Send,
    Build,
    Call,
    CallBuild,
    /// A build callback that never fits (NotBuilt).
    Unbuildable,
    /// A call whose build callback never fits (NotBuilt).
    UnbuildableCall,
}

/// One message to queue.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub class: Class,
    pub kind: SpecKind,
    pub len: usize,
    /// For built messages: space the callback insists on (>= len).
    pub need: usize,
    pub notify: bool,
    pub unhandled: bool,
}

impl Spec {
    pub fn random(rng: &mut StdRng, mix: &Mix, max_payload: usize) -> Spec {
        let class = if rng.gen_bool(mix.control) {
            Class::Control
        } else {
            Class::Bulk
        };
        let call = rng.gen_bool(mix.call);
        let kind = if mix.unbuildable > 0.0 && rng.gen_bool(mix.unbuildable) {
            if call {
                SpecKind::UnbuildableCall
            } else {
                SpecKind::Unbuildable
            }
        } else {
            match (call, rng.gen_bool(mix.build)) {
                (false, false) => SpecKind::Send,
                (false, true) => SpecKind::Build,
                (true, false) => SpecKind::Call,
                (true, true) => SpecKind::CallBuild,
            }
        };
        let len = if rng.gen_bool(mix.small) {
            rng.gen_range(8..=24.min(max_payload))
        } else if rng.gen_bool(0.15) {
            max_payload
        } else {
            rng.gen_range(8..=max_payload)
        };
        let need = if rng.gen_bool(mix.needy) {
            rng.gen_range(len..=max_payload)
        } else {
            len
        };
        Spec {
            class,
            kind,
            len,
            need,
            notify: rng.gen_bool(mix.notify),
            unhandled: mix.unhandled > 0.0 && rng.gen_bool(mix.unhandled),
        }
    }
}

/// One queued message of a stream.
#[derive(Clone, Debug)]
pub struct Meta {
    pub len: usize,
    pub code: u8,
    pub flags: u8,
    pub call: Option<CallId>,
    pub unhandled: bool,
    pub notify: bool,
    /// None while the handler callback that queued it is still running.
    pub conv: Option<Conv>,
    pub resp_len: usize,
}

/// One (direction, class) stream.
#[derive(Default)]
pub struct Stream {
    pub metas: Vec<Meta>,
    pub delivered: Vec<bool>,
    /// Receiver epoch of each message's (latest) delivery.
    pub delivered_in: Vec<u32>,
    /// May be delivered once more, to a later receiver epoch (see `Ledger::receiver_reset`).
    pub redeliverable: Vec<bool>,
    /// Sequence number of the latest delivery, and the receiver epoch it happened in.
    pub last: u64,
    pub last_epoch: u32,
    pub count: u64,
}

/// Traffic one side sends.
#[derive(Default)]
pub struct Dir {
    pub streams: [Stream; 2],
    /// Notified messages waiting for `on_ack`: (class, seq), None for unbuildable ones.
    pub notify: HashMap<MessageId, Option<(usize, u64)>>,
    /// Calls waiting for `on_response`.
    pub calls: HashMap<CallId, Option<(usize, u64)>>,
    pub call_issued: HashMap<CallId, Ns>,
    /// Messages queued by a handler callback whose conversation is settled after the call.
    pub unsettled: Vec<(usize, u64)>,
    pub acked: u64,
    pub inoperative_acks: u64,
    pub not_built: u64,
    pub responses: u64,
    pub no_handler: u64,
    pub failed_calls: u64,
    pub queue_full: u64,
}

/// A completed call of side `side`: latency and outcome.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub side: usize,
    pub call: CallId,
    pub latency: Ns,
    pub ok: bool,
}

/// Shared by both handlers.
pub struct Ledger {
    pub seed: u64,
    pub now: Ns,
    pub dirs: [Dir; 2],
    /// Partner failures and restarts are part of the scenario.
    pub allow_inoperative: bool,
    pub max_payload: usize,
    /// Calls a handler keeps for a later response: (call, class, seq) of the partner's stream.
    pub stash: [Vec<(IncomingCall, usize, u64)>; 2],
    /// Probability a handler stashes a call instead of answering at once.
    pub stash_prob: f64,
    /// Messages handlers may still queue from inside callbacks.
    pub handler_sends: u32,
    /// Incarnation of each side (a restart makes a new one).
    pub inc: [u32; 2],
    /// Receiver epoch of each side: bumped when it forgets what it received (it declares the
    /// partner failed, or restarts).
    pub epoch: [u32; 2],
    pub redeliveries: u64,
    pub rng: StdRng,
    /// First violation seen inside a callback.
    pub failure: Option<String>,
    pub completions: Vec<Completion>,
    /// Calls that must fail with PartnerInoperative (the partner restarted under them).
    pub doomed: HashSet<(usize, CallId)>,
    /// Per direction and class, sequence numbers from which every message must arrive.
    pub required_from: [[u64; 2]; 2],
    pub delivered_total: u64,
}

macro_rules! bad {
    ($l:expr, $($t:tt)*) => {{
        let m = format!($($t)*);
        if $l.failure.is_none() {
            $l.failure = Some(m);
        }
    }};
}

impl Ledger {
    pub fn new(seed: u64, max_payload: usize, rng_seed: u64) -> Ledger {
        Ledger {
            seed,
            now: 0,
            dirs: Default::default(),
            allow_inoperative: false,
            max_payload,
            stash: Default::default(),
            stash_prob: 0.3,
            handler_sends: 0,
            inc: [0, 0],
            epoch: [0, 0],
            redeliveries: 0,
            rng: StdRng::seed_from_u64(rng_seed),
            failure: None,
            completions: Vec::new(),
            doomed: HashSet::new(),
            required_from: [[1, 1], [1, 1]],
            delivered_total: 0,
        }
    }

    /// Messages queued from callbacks of side `i`'s last call belong to conversation `c`.
    pub fn settle(&mut self, i: usize, c: Conv) {
        for (class, seq) in std::mem::take(&mut self.dirs[i].unsettled) {
            self.dirs[i].streams[class].metas[seq as usize - 1].conv = Some(c);
        }
    }

    /// Side `i` restarted: what its old incarnation waited for is abandoned. If the survivor
    /// knew a conversation of it, its frames are refused by the new incarnation and every call
    /// pending now must fail.
    pub fn restart(&mut self, i: usize, survivor_knew: bool) {
        let d = &mut self.dirs[i];
        d.notify.clear();
        d.calls.clear();
        d.call_issued.clear();
        d.unsettled.clear();
        self.stash[i].clear();
        self.inc[i] += 1;
        self.doomed.retain(|(side, _)| *side != i);
        if survivor_knew {
            let calls = &self.dirs[1 - i].calls;
            let survivor: Vec<CallId> = calls
                .iter()
                .filter(|(_, e)| e.is_some()) // an unbuildable one may be NotBuilt first
                .map(|(c, _)| *c)
                .collect();
            for c in survivor {
                self.doomed.insert((1 - i, c));
            }
        }
    }

    /// Side `r` forgets what it received (partner declared failed, or restart). If the
    /// sender never heard from any conversation of `r` (`sender_knew` false), its frames do not
    /// name the conversation they were meant for, so messages already delivered but not yet
    /// acknowledged may reach the next conversation of `r` once more: the sender cannot tell
    /// (it never got an answer). With `sender_knew`, its frames name the old conversation and
    /// are refused, so nothing may arrive twice.
    pub fn receiver_reset(&mut self, r: usize, sender_knew: bool) {
        self.epoch[r] += 1;
        if !sender_knew {
            for st in &mut self.dirs[1 - r].streams {
                for (d, x) in st.delivered.iter().zip(st.redeliverable.iter_mut()) {
                    *x = *x || *d;
                }
            }
        }
    }

    pub fn payload_bytes(dir: usize, class: usize, seq: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Self::write_payload(&mut v, dir, class, seq);
        v
    }

    fn write_payload(buf: &mut [u8], dir: usize, class: usize, seq: u64) {
        let head = seq | (class as u64) << 56 | (dir as u64) << 57;
        buf[..8].copy_from_slice(&head.to_le_bytes());
        for (i, b) in buf.iter_mut().enumerate().skip(8) {
            *b = pattern(seq, dir, class, i, 0x3c);
        }
    }

    /// The response the partner sends to call (dir, class, seq).
    pub fn response_bytes(&self, dir: usize, class: usize, seq: u64) -> Vec<u8> {
        let m = &self.dirs[dir].streams[class].metas[seq as usize - 1];
        (0..m.resp_len)
            .map(|i| pattern(seq, dir, class, i, 0xa5))
            .collect()
    }

    /// Queues one message from side `me` through `out`; false if the queue was full.
    /// `conv` is None when called from inside a handler callback.
    pub fn queue(
        &mut self,
        me: usize,
        out: &mut Outbox,
        spec: Spec,
        conv: Option<Conv>,
        ctx: &str,
    ) -> bool {
        let code = if spec.unhandled {
            UNHANDLED
        } else {
            loop {
                let c = self.rng.gen_range(1..=255u8);
                if c != UNHANDLED {
                    break c;
                }
            }
        };
        let flags = self.rng.gen_range(0..16u8) << 4;
        let mut head = match spec.class {
            Class::Control => Head::control(code),
            Class::Bulk => Head::bulk(code),
        }
        .flags(flags);
        if spec.notify {
            head = head.notify();
        }
        let class = class_index(spec.class);
        let mp = self.max_payload;
        let refused = |l: &mut Ledger, e: MessagingError| -> bool {
            match e {
                MessagingError::QueueFull { .. } => {
                    l.dirs[me].queue_full += 1;
                    false
                }
                e => panic!("{ctx}: queueing {spec:?} refused: {e}"),
            }
        };
        match spec.kind {
            SpecKind::Unbuildable | SpecKind::UnbuildableCall => {
                // Never fits, not even an empty frame: it wants more than the largest payload.
                let f = move |buf: &mut [u8]| {
                    if buf.len() > mp {
                        Some(0)
                    } else {
                        None
                    }
                };
                if spec.kind == SpecKind::Unbuildable {
                    match out.build(head, f) {
                        Ok(id) => {
                            if spec.notify {
                                self.dirs[me].notify.insert(id, None);
                            }
                            true
                        }
                        Err(e) => refused(self, e),
                    }
                } else {
                    match out.call_build(head, f) {
                        Ok((id, call)) => {
                            if spec.notify {
                                self.dirs[me].notify.insert(id, None);
                            }
                            self.dirs[me].calls.insert(call, None);
                            true
                        }
                        Err(e) => refused(self, e),
                    }
                }
            }
            kind => {
                let seq = self.dirs[me].streams[class].metas.len() as u64 + 1;
                let payload = Self::payload_bytes(me, class, seq, spec.len);
                let (len, need) = (spec.len, spec.need.max(spec.len));
                let build = move |buf: &mut [u8]| {
                    if buf.len() < need {
                        return None;
                    }
                    buf[..len].copy_from_slice(&payload[..len]);
                    Some(len)
                };
                let r = match kind {
                    SpecKind::Send => out
                        .send(head, &Self::payload_bytes(me, class, seq, len))
                        .map(|id| (id, None)),
                    SpecKind::Build => out.build(head, build).map(|id| (id, None)),
                    SpecKind::Call => out
                        .call(head, &Self::payload_bytes(me, class, seq, len))
                        .map(|(id, c)| (id, Some(c))),
                    _ => out.call_build(head, build).map(|(id, c)| (id, Some(c))),
                };
                let (id, call) = match r {
                    Ok(x) => x,
                    Err(e) => return refused(self, e),
                };
                let resp_len = if self.rng.gen_bool(0.2) {
                    mp
                } else {
                    self.rng.gen_range(0..=mp.min(64))
                };
                let d = &mut self.dirs[me];
                d.streams[class].metas.push(Meta {
                    len,
                    code,
                    flags,
                    call,
                    unhandled: spec.unhandled,
                    notify: spec.notify,
                    conv,
                    resp_len,
                });
                d.streams[class].delivered.push(false);
                d.streams[class].delivered_in.push(0);
                d.streams[class].redeliverable.push(false);
                if conv.is_none() {
                    d.unsettled.push((class, seq));
                }
                if spec.notify {
                    d.notify.insert(id, Some((class, seq)));
                }
                if let Some(c) = call {
                    d.calls.insert(c, Some((class, seq)));
                    d.call_issued.insert(c, self.now);
                }
                true
            }
        }
    }

    fn on_message(&mut self, me: usize, msg: &Message<'_>, out: &mut Outbox) -> bool {
        let sender = 1 - me;
        let p = msg.payload;
        if p.len() < 8 {
            bad!(
                self,
                "side {me} got a {}-byte payload (code {})",
                p.len(),
                msg.code
            );
            return true;
        }
        let head = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let seq = head & SEQ_MASK;
        let class = ((head >> 56) & 1) as usize;
        let dir = ((head >> 57) & 1) as usize;
        if dir != sender || class != class_index(msg.class) || seq == 0 {
            bad!(
                self,
                "side {me} got a message with header {head:#x} in class {:?}",
                msg.class
            );
            return true;
        }
        let st = &self.dirs[sender].streams[class];
        let Some(m) = st.metas.get(seq as usize - 1).cloned() else {
            bad!(self, "side {me} got unknown message {dir}/{class}/{seq}");
            return true;
        };
        let what = format!("message {}->{} class {:?} seq {seq}", sender, me, msg.class);
        if p.len() != m.len || p != Self::payload_bytes(sender, class, seq, m.len).as_slice() {
            bad!(
                self,
                "{what}: payload differs ({} bytes, sent {})",
                p.len(),
                m.len
            );
        }
        if msg.code != m.code || msg.flags != m.flags || msg.call.is_some() != m.call.is_some() {
            bad!(
                self,
                "{what}: code {} flags {:#x} call {:?}, sent code {} flags {:#x} call {:?}",
                msg.code,
                msg.flags,
                msg.call,
                m.code,
                m.flags,
                m.call
            );
        }
        let epoch = self.epoch[me];
        let k = seq as usize - 1;
        let again = st.delivered[k];
        if again && !(st.redeliverable[k] && st.delivered_in[k] != epoch) {
            bad!(self, "{what}: delivered twice");
            return !m.unhandled;
        }
        let conv = m.conv;
        if epoch == st.last_epoch {
            // In order within one receiver epoch; a gap only where the sender's conversation
            // ended (what it had queued was failed).
            if seq <= st.last {
                bad!(self, "{what}: out of order (after seq {})", st.last);
            }
            for s in st.last + 1..seq {
                let skipped = st.metas[s as usize - 1].conv;
                if skipped.is_none() || skipped == conv {
                    bad!(
                        self,
                        "{what}: seq {s} of the same sender conversation {conv:?} was skipped (last delivered {})",
                        st.last
                    );
                    break;
                }
            }
        } else {
            // The receiver forgot its stream position: order restarts, but nothing earlier of
            // the same sender conversation may have been skipped altogether.
            for s in 1..seq {
                let i = s as usize - 1;
                if st.metas[i].conv == conv && !st.delivered[i] {
                    bad!(self, "{what}: seq {s} of the same sender conversation {conv:?} was never delivered");
                    break;
                }
            }
        }
        let st = &mut self.dirs[sender].streams[class];
        st.delivered[k] = true;
        st.delivered_in[k] = epoch;
        st.last = seq;
        st.last_epoch = epoch;
        if again {
            st.redeliverable[k] = false;
            self.redeliveries += 1;
        } else {
            st.count += 1;
        }
        self.delivered_total += 1;
        if m.unhandled {
            return false;
        }
        if let Some(call) = msg.call {
            if self.rng.gen_bool(self.stash_prob) {
                self.stash[me].push((call, class, seq));
            } else {
                let bytes = self.response_bytes(sender, class, seq);
                if let Err(e) = out.respond(call, &bytes) {
                    bad!(self, "{what}: respond at once: {e}");
                }
            }
        }
        if self.handler_sends > 0 && self.rng.gen_bool(0.2) {
            self.handler_sends -= 1;
            let len = self.rng.gen_range(8..=self.max_payload.min(40));
            let spec = Spec {
                class: if self.rng.gen_bool(0.5) {
                    Class::Control
                } else {
                    Class::Bulk
                },
                kind: if self.rng.gen_bool(0.3) {
                    SpecKind::Call
                } else {
                    SpecKind::Send
                },
                len,
                need: len,
                notify: self.rng.gen_bool(0.5),
                unhandled: false,
            };
            let ctx = format!("seed {} (handler send)", self.seed);
            self.queue(me, out, spec, None, &ctx);
        }
        true
    }

    fn on_ack(&mut self, me: usize, id: MessageId, status: AckStatus) {
        let Some(entry) = self.dirs[me].notify.remove(&id) else {
            bad!(self, "side {me}: on_ack({id:?}, {status:?}) for a message not waiting for one (reported twice?)");
            return;
        };
        let d = &mut self.dirs[me];
        match (entry, status) {
            (Some((class, seq)), AckStatus::Acked) => {
                d.acked += 1;
                if !d.streams[class].delivered[seq as usize - 1] {
                    bad!(
                        self,
                        "side {me}: message class {class} seq {seq} acked but never delivered"
                    );
                }
            }
            (Some(_), AckStatus::PartnerInoperative) if self.allow_inoperative => {
                d.inoperative_acks += 1;
            }
            (None, AckStatus::NotBuilt) => d.not_built += 1,
            // Still queued when the conversation ended.
            (None, AckStatus::PartnerInoperative) if self.allow_inoperative => {
                d.inoperative_acks += 1;
            }
            (e, s) => bad!(self, "side {me}: on_ack({id:?}) {s:?} for {e:?}"),
        }
    }

    fn on_response(&mut self, me: usize, call: CallId, result: Result<&[u8], CallFailure>) {
        let Some(entry) = self.dirs[me].calls.remove(&call) else {
            bad!(
                self,
                "side {me}: on_response({call:?}) for a call not pending (reported twice?)"
            );
            return;
        };
        let doomed = self.doomed.remove(&(me, call));
        if doomed && result != Err(CallFailure::PartnerInoperative) {
            bad!(self, "side {me}: call {call:?} pending when the partner restarted completed with {result:?}");
        }
        let ok = result.is_ok();
        match entry {
            Some((class, seq)) => {
                let m = self.dirs[me].streams[class].metas[seq as usize - 1].clone();
                let delivered = self.dirs[me].streams[class].delivered[seq as usize - 1];
                match result {
                    Ok(bytes) => {
                        let want = self.response_bytes(me, class, seq);
                        if m.unhandled || !delivered || bytes != want.as_slice() {
                            bad!(
                                self,
                                "side {me}: call {call:?} (class {class} seq {seq}, delivered {delivered}, unhandled {}) got a response of {} bytes, expected {}",
                                m.unhandled,
                                bytes.len(),
                                want.len()
                            );
                        }
                        self.dirs[me].responses += 1;
                    }
                    Err(CallFailure::NoHandler) if m.unhandled && delivered => {
                        self.dirs[me].no_handler += 1;
                    }
                    Err(CallFailure::PartnerInoperative) if self.allow_inoperative => {
                        self.dirs[me].failed_calls += 1;
                    }
                    r => bad!(
                        self,
                        "side {me}: call {call:?} (class {class} seq {seq}) completed with {r:?}"
                    ),
                }
            }
            None if result == Err(CallFailure::PartnerInoperative) && self.allow_inoperative => {
                self.dirs[me].failed_calls += 1;
            }
            None => {
                if result != Err(CallFailure::NotBuilt) {
                    bad!(
                        self,
                        "side {me}: unbuildable call {call:?} completed with {result:?}"
                    );
                }
                self.dirs[me].not_built += 1;
            }
        }
        if let Some(t0) = self.dirs[me].call_issued.remove(&call) {
            self.completions.push(Completion {
                side: me,
                call,
                latency: self.now - t0,
                ok,
            });
        }
    }

    /// From now on, every message queued must be delivered (what is queued already may be
    /// lost to a conversation change).
    pub fn require_from_now(&mut self) {
        for d in 0..2 {
            for c in 0..2 {
                self.required_from[d][c] = self.dirs[d].streams[c].metas.len() as u64 + 1;
            }
        }
    }

    /// What is still missing: undelivered required messages, unreported acks and calls.
    pub fn incomplete(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (d, dir) in self.dirs.iter().enumerate() {
            for (c, st) in dir.streams.iter().enumerate() {
                let from = self.required_from[d][c];
                let missing: Vec<u64> = (from..=st.metas.len() as u64)
                    .filter(|s| !st.delivered[*s as usize - 1])
                    .collect();
                if !missing.is_empty() {
                    v.push(format!(
                        "direction {d} class {c}: {} of {} messages never delivered (first {:?})",
                        missing.len(),
                        st.metas.len(),
                        &missing[..missing.len().min(8)]
                    ));
                }
            }
            if !dir.notify.is_empty() {
                v.push(format!(
                    "side {d}: {} on_ack never reported",
                    dir.notify.len()
                ));
            }
            if !dir.calls.is_empty() {
                let mut c: Vec<_> = dir.calls.keys().collect();
                c.sort();
                v.push(format!("side {d}: calls never completed: {c:?}"));
            }
            if !self.stash[d].is_empty() {
                v.push(format!(
                    "side {d}: {} stashed calls unanswered",
                    self.stash[d].len()
                ));
            }
        }
        v
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (d, dir) in self.dirs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  traffic {}: control {}/{} bulk {}/{} delivered; acked {} inoperative {} not_built {} responses {} no_handler {} failed_calls {} queue_full {}; pending notify {} calls {}",
                ["A->B", "B->A"][d],
                dir.streams[0].count,
                dir.streams[0].metas.len(),
                dir.streams[1].count,
                dir.streams[1].metas.len(),
                dir.acked,
                dir.inoperative_acks,
                dir.not_built,
                dir.responses,
                dir.no_handler,
                dir.failed_calls,
                dir.queue_full,
                dir.notify.len(),
                dir.calls.len()
            );
        }
        s
    }
}

fn pattern(seq: u64, dir: usize, class: usize, i: usize, salt: u8) -> u8 {
    let x = seq
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
        ^ ((dir as u64) << 7 | (class as u64) << 3);
    ((x >> 29) as u8) ^ salt
}

/// The handler of one side: everything goes to the shared ledger.
pub struct Peer {
    pub me: usize,
    pub ledger: Rc<RefCell<Ledger>>,
}

impl Handler for Peer {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Outbox) -> bool {
        self.ledger.borrow_mut().on_message(self.me, msg, out)
    }

    fn on_ack(&mut self, id: MessageId, status: AckStatus, _out: &mut Outbox) {
        self.ledger.borrow_mut().on_ack(self.me, id, status);
    }

    fn on_response(&mut self, call: CallId, result: Result<&[u8], CallFailure>, _out: &mut Outbox) {
        self.ledger.borrow_mut().on_response(self.me, call, result);
    }
}
