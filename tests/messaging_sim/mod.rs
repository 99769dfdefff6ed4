//! A deterministic in-process simulation of two messaging windows talking over RDMA-like
//! writes, with virtual time and seeded faults (drop, duplicate, reorder, delay, corruption,
//! link cuts), plus a ledger that checks every delivery, ack and response against what was
//! sent.
//!
//! Model of the transport: each direction carries *writes* = (destination-ring offset, bytes
//! copied from the sender's transmit ring when the window handed them out, 32-bit immediate).
//! At delivery time a frame write copies its bytes into the receiver's receive ring at the
//! same offset (like RDMA WRITE) and queues the immediate on the receiver's completion queue;
//! the receiver's driver polls that queue a little later and reads the slot the immediate
//! names from its receive ring, so a late or duplicate write may have overwritten the slot
//! in between. Nothing here reads the real clock: time is `base + virtual nanoseconds`.
#![allow(dead_code)]

pub mod ledger;
pub mod pair;
pub mod seeds;

pub use ledger::{Conv, Ledger, Peer, Spec, SpecKind};

use interlink::messaging::wire::{FrameHeader, Imm, FRAME_FLAG_CONTROL};
use interlink::messaging::{Transmit, Window, WindowConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Virtual nanoseconds since the simulation's base instant.
pub type Ns = u64;

pub const US: Ns = 1_000;
pub const MS: Ns = 1_000_000;

/// The one-line replay hint included in every failure message.
pub fn replay_hint(seed: u64) -> String {
    format!("SEED={seed} cargo test --test host messaging_window::replay")
}

/// Network faults of one phase. Probabilities are per write.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Probability of an extra random delay of up to `reorder_max`.
    pub reorder: f64,
    pub reorder_max: Ns,
    pub delay_min: Ns,
    pub delay_max: Ns,
    /// Probability that one byte of a frame's copied bytes is flipped.
    pub corrupt: f64,
    /// Deliver each direction in send order (RDMA reliable-connected order); duplicates then
    /// follow their original.
    pub fifo: bool,
    /// Serialisation time per byte (0: infinite bandwidth).
    pub ns_per_byte: Ns,
    /// The receiving driver polls its completion queue up to this long after a completion.
    pub poll_max: Ns,
}

impl Faults {
    /// No loss, duplication, reordering or corruption; small delays.
    pub fn clean() -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_max: 0,
            delay_min: 2 * US,
            delay_max: 10 * US,
            corrupt: 0.0,
            fifo: true,
            ns_per_byte: 0,
            poll_max: 2 * US,
        }
    }

    /// The same delays with every fault switched off.
    pub fn quiet(&self) -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            ..self.clone()
        }
    }

    /// Random faults for one seed: some seeds are clean, most mix several faults.
    pub fn random(rng: &mut StdRng, fifo: bool) -> Faults {
        let pick = |rng: &mut StdRng, p: f64, max: f64| {
            if rng.gen_bool(p) {
                rng.gen_range(0.0..max)
            } else {
                0.0
            }
        };
        let delay_min = rng.gen_range(1..=20) * US;
        let delay_max = delay_min + rng.gen_range(0..=150) * US;
        Faults {
            drop: pick(rng, 0.6, 0.2),
            duplicate: pick(rng, 0.4, 0.15),
            reorder: if fifo { 0.0 } else { pick(rng, 0.5, 0.3) },
            reorder_max: rng.gen_range(1..=400) * US,
            delay_min,
            delay_max,
            corrupt: pick(rng, 0.3, 0.05),
            fifo,
            ns_per_byte: 0,
            poll_max: rng.gen_range(0..=20) * US,
        }
    }
}

/// One RDMA write in flight.
#[derive(Clone, Debug)]
pub struct Write {
    pub offset: usize,
    /// Empty for a zero-length write (ack or nak).
    pub bytes: Vec<u8>,
    pub imm: u32,
}

/// One direction of the network.
#[derive(Default)]
pub struct Lane {
    pub q: BTreeMap<(Ns, u64), Write>,
    /// Latest scheduled delivery (FIFO order).
    pub last_at: Ns,
    /// When the wire is free again (serialisation).
    pub wire_free: Ns,
}

/// One controller: its window, rings, completion queue and handler.
pub struct Side {
    pub win: Window,
    pub tx: Vec<u8>,
    pub rx: Vec<u8>,
    pub cq: VecDeque<u32>,
    pub cq_at: Option<Ns>,
    pub link_up_at: Option<Ns>,
    pub h: Peer,
    /// Frames in flight as this side sent them: (seq, carries only bulk messages).
    pub tracked: VecDeque<(u64, bool)>,
    /// Most bulk-only frames seen in flight at once.
    pub max_bulk_only: usize,
}

impl Side {
    fn new(win: Window, h: Peer) -> Side {
        let n = win.config().ring_len();
        Side {
            win,
            tx: vec![0; n],
            rx: vec![0; n],
            cq: VecDeque::new(),
            cq_at: None,
            link_up_at: None,
            h,
            tracked: VecDeque::new(),
            max_bulk_only: 0,
        }
    }
}

/// Something scheduled to happen at a virtual time.
#[derive(Clone, Debug)]
pub enum Action {
    /// Queue `n` random messages from `side`.
    Burst { side: usize, n: usize },
    /// Respond to some of the calls `side` stashed.
    Drain { side: usize },
    /// Cut the link: both windows go down, everything in flight is lost; the link comes back
    /// after `down_for` (each side's `handle_link_up` up to `stagger` later).
    Cut { down_for: Ns, stagger: Ns },
    /// `side` declares its partner failed.
    PartnerFailed { side: usize },
    /// `side` restarts: a brand-new window (new random session), handler and rings. With
    /// `cut`, the survivor's link goes down and up too (its queue pair went away).
    Restart {
        side: usize,
        cut: bool,
        down_for: Ns,
    },
    /// Keep `side`'s bulk queue at least this long (flooding).
    TopUpBulk {
        side: usize,
        queued: usize,
        every: Ns,
        until: Ns,
    },
    /// Issue a control call from `side`, then again every `every` until `until`.
    ControlCalls { side: usize, every: Ns, until: Ns },
}

/// Shape of the random traffic.
#[derive(Clone, Debug)]
pub struct Mix {
    pub control: f64,
    pub call: f64,
    pub build: f64,
    /// Of the built ones: the callback refuses space smaller than a random need above its
    /// length (so it is tried again on a fresh frame).
    pub needy: f64,
    /// Callbacks that can never fit (reported NotBuilt).
    pub unbuildable: f64,
    pub notify: f64,
    /// Function code without a handler at the receiver.
    pub unhandled: f64,
    /// Share of small (aggregatable) messages.
    pub small: f64,
}

impl Mix {
    pub fn random(rng: &mut StdRng) -> Mix {
        Mix {
            control: rng.gen_range(0.1..0.7),
            call: rng.gen_range(0.0..0.4),
            build: rng.gen_range(0.0..0.6),
            needy: rng.gen_range(0.0..0.5),
            unbuildable: if rng.gen_bool(0.3) { 0.03 } else { 0.0 },
            notify: rng.gen_range(0.0..0.7),
            unhandled: if rng.gen_bool(0.3) { 0.05 } else { 0.0 },
            small: rng.gen_range(0.2..0.9),
        }
    }
}

/// Limits against a livelocked window.
const MAX_STEPS: u64 = 3_000_000;

/// The simulation.
pub struct Sim {
    pub seed: u64,
    pub rng: StdRng,
    pub cfg: WindowConfig,
    pub base: Instant,
    pub now: Ns,
    pub sides: [Side; 2],
    pub lanes: [Lane; 2],
    pub faults: Faults,
    pub ledger: Rc<RefCell<Ledger>>,
    pub mix: Mix,
    pub actions: BTreeMap<(Ns, u64), Action>,
    next_id: u64,
    pub steps: u64,
    /// Writes whose bytes were corrupted (frame errors are legitimate only after one).
    pub corrupted: u64,
    pub frame_errors: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub writes: u64,
    /// Directions whose writes are lost (a one-way partition): `blocked[from]`.
    pub blocked: [bool; 2],
    /// Writes lost to `blocked`.
    pub blocked_drops: u64,
    /// Event log, kept with `MESSAGING_TRACE` (printed on failure: that many last lines,
    /// default 400).
    pub trace: Option<Vec<String>>,
}

impl Sim {
    pub fn new(seed: u64, cfg: WindowConfig, faults: Faults, mix: Mix) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let ledger = Rc::new(RefCell::new(Ledger::new(
            seed,
            usize::from(cfg.max_payload),
            rng.gen(),
        )));
        let mk = |rng: &mut StdRng, me: usize| {
            let session = loop {
                let s: u32 = rng.gen();
                if s != 0 {
                    break s;
                }
            };
            let win = Window::new(cfg.clone(), session)
                .unwrap_or_else(|e| panic!("seed {seed}: window config {cfg:?}: {e}"));
            Side::new(
                win,
                Peer {
                    me,
                    ledger: ledger.clone(),
                },
            )
        };
        let a = mk(&mut rng, 0);
        let b = mk(&mut rng, 1);
        let trace = std::env::var("MESSAGING_TRACE").ok().map(|_| Vec::new());
        Sim {
            seed,
            rng,
            cfg,
            base: Instant::now(),
            now: 0,
            sides: [a, b],
            lanes: [Lane::default(), Lane::default()],
            faults,
            ledger,
            mix,
            actions: BTreeMap::new(),
            next_id: 0,
            steps: 0,
            corrupted: 0,
            frame_errors: 0,
            dropped: 0,
            duplicated: 0,
            writes: 0,
            blocked: [false, false],
            blocked_drops: 0,
            trace,
        }
    }

    pub fn at(&self, t: Ns) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    pub fn ns(&self, i: Instant) -> Ns {
        i.saturating_duration_since(self.base).as_nanos() as Ns
    }

    /// "seed N (replay: ...)", for failure messages.
    pub fn ctx(&self) -> String {
        format!(
            "seed {} at t={}us (replay: {})",
            self.seed,
            self.now / US,
            replay_hint(self.seed)
        )
    }

    pub fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let line = format!("{:>10}ns {}", self.now, f());
            t.push(line);
        }
    }

    /// Panics with the seed, the replay hint, the state of both windows and the message.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        if let Some(t) = &self.trace {
            let n = std::env::var("MESSAGING_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(400);
            for l in t.iter().rev().take(n).rev() {
                eprintln!("{l}");
            }
        }
        panic!("{}: {msg}\n{}", self.ctx(), self.dump());
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  config: {:?}", self.cfg);
        let _ = writeln!(s, "  faults: {:?}", self.faults);
        for (i, side) in self.sides.iter().enumerate() {
            let w = &side.win;
            let _ = writeln!(
                s,
                "  side {}: {:?} in_flight={} queued={} idle={} cq={} stats={:?}",
                ["A", "B"][i],
                w,
                w.in_flight(),
                w.queued(),
                w.is_idle(),
                side.cq.len(),
                w.stats()
            );
        }
        let _ = writeln!(
            s,
            "  net: in flight {}/{}, writes={} dropped={} duplicated={} corrupted={} frame_errors={}",
            self.lanes[0].q.len(),
            self.lanes[1].q.len(),
            self.writes,
            self.dropped,
            self.duplicated,
            self.corrupted,
            self.frame_errors
        );
        let _ = write!(s, "{}", self.ledger.borrow().summary());
        s
    }

    pub fn schedule(&mut self, at: Ns, a: Action) {
        self.next_id += 1;
        self.actions.insert((at, self.next_id), a);
    }

    /// Both links come up at `t` (each side's window within `stagger`).
    pub fn links_up(&mut self, t: Ns, stagger: Ns) {
        for i in 0..2 {
            let d = if stagger > 0 {
                self.rng.gen_range(0..=stagger)
            } else {
                0
            };
            self.sides[i].link_up_at = Some(t + d);
        }
    }

    /// Conversation of side `i` now (incarnation, resets so far).
    pub fn conv(&self, i: usize) -> Conv {
        let inc = self.ledger.borrow().inc[i];
        (inc, self.sides[i].win.stats().resets)
    }

    /// After any call into window `i`: messages its handler queued belong to the
    /// conversation in effect now (a reset always happens before any callback of a call).
    fn settle(&mut self, i: usize) {
        let c = self.conv(i);
        let failure = {
            let mut l = self.ledger.borrow_mut();
            l.settle(i, c);
            l.failure.take()
        };
        if let Some(f) = failure {
            self.fail(&f);
        }
    }

    fn ctx_short(&self) -> String {
        format!("seed {} (replay: {})", self.seed, replay_hint(self.seed))
    }

    // ------------------------------------------------------------------ network

    fn send_write(&mut self, from: usize, w: Write) {
        self.writes += 1;
        if self.blocked[from] {
            self.blocked_drops += 1;
            return;
        }
        let f = self.faults.clone();
        if f.drop > 0.0 && self.rng.gen_bool(f.drop) {
            self.dropped += 1;
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.gen_bool(f.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut w = w.clone();
            if !w.bytes.is_empty() && f.corrupt > 0.0 && self.rng.gen_bool(f.corrupt) {
                let i = self.rng.gen_range(0..w.bytes.len());
                w.bytes[i] ^= self.rng.gen_range(1..=255u8);
                self.corrupted += 1;
            }
            let mut delay = self
                .rng
                .gen_range(f.delay_min..=f.delay_max.max(f.delay_min));
            if f.reorder > 0.0 && self.rng.gen_bool(f.reorder) {
                delay += self.rng.gen_range(0..=f.reorder_max);
            }
            let lane = &mut self.lanes[from];
            let mut start = self.now;
            if f.ns_per_byte > 0 {
                lane.wire_free =
                    lane.wire_free.max(self.now) + (w.bytes.len() as Ns + 64) * f.ns_per_byte;
                start = lane.wire_free;
            }
            let mut at = start + delay;
            if f.fifo {
                at = at.max(lane.last_at);
            }
            lane.last_at = lane.last_at.max(at);
            self.next_id += 1;
            lane.q.insert((at, self.next_id), w);
        }
    }

    /// Delivers the writes due now.
    fn deliver(&mut self) {
        for from in 0..2 {
            let to = 1 - from;
            while let Some((&(at, id), _)) = self.lanes[from].q.first_key_value() {
                if at > self.now {
                    break;
                }
                let w = self.lanes[from].q.remove(&(at, id)).expect("present");
                let side = &mut self.sides[to];
                if !w.bytes.is_empty() {
                    let end = w.offset + w.bytes.len();
                    if end > side.rx.len() {
                        let msg = format!(
                            "write of {} bytes at offset {} overruns the {}-byte ring",
                            w.bytes.len(),
                            w.offset,
                            side.rx.len()
                        );
                        self.fail(&msg);
                    }
                    side.rx[w.offset..end].copy_from_slice(&w.bytes);
                }
                side.cq.push_back(w.imm);
                if side.cq_at.is_none() {
                    let d = if self.faults.poll_max > 0 {
                        self.rng.gen_range(0..=self.faults.poll_max)
                    } else {
                        0
                    };
                    self.sides[to].cq_at = Some(self.now + d);
                }
            }
        }
    }

    /// The driver of side `i` polls its completion queue.
    fn poll_cq(&mut self, i: usize, all: bool) {
        let n = self.sides[i].cq.len();
        let take = if !all && n > 1 && self.rng.gen_bool(0.3) {
            self.rng.gen_range(1..=n)
        } else {
            n
        };
        let now = self.at(self.now);
        let fs = usize::from(self.cfg.frame_size);
        for _ in 0..take {
            let imm = self.sides[i].cq.pop_front().expect("counted");
            match Imm::decode(imm) {
                Ok(Imm::Frame { slot, tag }) => {
                    let off = slot as usize * fs;
                    if off + fs > self.sides[i].rx.len() {
                        self.fail(&format!(
                            "frame immediate names slot {slot} beyond the ring"
                        ));
                    }
                    // The driver's duty: a later conversation's frame 1 may have overwritten the
                    // slot before this completion was polled; that frame has its own immediate
                    // further on, and reading it now would take it out of order.
                    if let Ok(h) = FrameHeader::open(&self.sides[i].rx[off..off + fs]) {
                        if h.session as u8 != tag {
                            let me = ["A", "B"][i];
                            self.log(|| format!("{me} slot {slot}: overwritten, skipped"));
                            continue;
                        }
                    }
                    let s = &mut self.sides[i];
                    let r = s.win.handle_frame(now, &s.rx[off..off + fs], &mut s.h);
                    self.settle(i);
                    let hdr = if self.trace.is_some() {
                        FrameHeader::open(&self.sides[i].rx[off..off + fs])
                            .map(|h| {
                                format!(
                                    " [session {:08x} peer {:08x} seq {} ack {} n {}]",
                                    h.session, h.peer_session, h.seq, h.ack, h.count
                                )
                            })
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    let me = ["A", "B"][i];
                    let (ss, ps) = (
                        self.sides[i].win.session(),
                        self.sides[i].win.peer_session(),
                    );
                    self.log(|| format!("{me} now {ss:08x} peer {:08x}", ps.unwrap_or(0)));
                    match r {
                        Ok(a) => self.log(|| format!("{me} slot {slot}: {a:?}{hdr}")),
                        Err(e) => {
                            self.frame_errors += 1;
                            self.log(|| format!("{} slot {slot}: rejected: {e}", ["A", "B"][i]));
                            if self.corrupted == 0 {
                                self.fail(&format!(
                                    "side {i} rejected a frame though no write was corrupted: {e}"
                                ));
                            }
                        }
                    }
                }
                Ok(sig) => {
                    let s = &mut self.sides[i];
                    let r = s.win.handle_signal(now, imm, &mut s.h);
                    self.settle(i);
                    self.log(|| format!("{} signal {sig:?}", ["A", "B"][i]));
                    if let Err(e) = r {
                        self.fail(&format!("side {i}: signal {imm:#x} refused: {e}"));
                    }
                }
                Err(e) => self.fail(&format!("side {i}: bad immediate {imm:#x}: {e}")),
            }
        }
        self.sides[i].cq_at = if self.sides[i].cq.is_empty() {
            None
        } else {
            Some(self.now + self.faults.poll_max.min(US))
        };
    }

    /// Everything side `i` has to send now.
    fn flush(&mut self, i: usize) {
        let now = self.at(self.now);
        for _ in 0..100_000 {
            let s = &mut self.sides[i];
            let t = s.win.poll_transmit(now, &mut s.tx, &mut s.h);
            self.settle(i);
            let Some(t) = t else {
                return;
            };
            match t {
                Transmit::Frame {
                    seq,
                    slot,
                    offset,
                    len,
                    imm,
                    retransmit,
                } => {
                    self.check_frame(i, seq, slot, offset, len, retransmit);
                    let bytes = self.sides[i].tx[offset..offset + len].to_vec();
                    self.log(|| {
                        format!(
                            "{} -> frame seq {seq} slot {slot} len {len}{}",
                            ["A", "B"][i],
                            if retransmit { " (again)" } else { "" }
                        )
                    });
                    self.send_write(i, Write { offset, bytes, imm });
                }
                Transmit::Signal { imm } => {
                    self.log(|| format!("{} -> signal {:?}", ["A", "B"][i], Imm::decode(imm)));
                    self.send_write(
                        i,
                        Write {
                            offset: 0,
                            bytes: Vec::new(),
                            imm,
                        },
                    );
                }
            }
        }
        self.fail(&format!("side {i}: poll_transmit never returned None"));
    }

    /// Checks a frame the window hands out: where it lives, what its header says, and that
    /// bulk-only frames never use the control slots.
    fn check_frame(
        &mut self,
        i: usize,
        seq: u64,
        slot: u32,
        offset: usize,
        len: usize,
        again: bool,
    ) {
        let fs = usize::from(self.cfg.frame_size);
        let slots = u64::from(self.cfg.slots);
        if u64::from(slot) != seq % slots || offset != slot as usize * fs || len > fs {
            self.fail(&format!(
                "side {i}: frame seq {seq} at slot {slot} offset {offset} len {len} (frame size {fs})"
            ));
        }
        let h = match FrameHeader::open(&self.sides[i].tx[offset..offset + len]) {
            Ok(h) => h,
            Err(e) => self.fail(&format!("side {i}: own frame seq {seq} does not open: {e}")),
        };
        let w = &self.sides[i].win;
        if h.seq != seq || h.session != w.session() || usize::from(h.len) != len {
            self.fail(&format!(
                "side {i}: frame header {h:?} for seq {seq} len {len}"
            ));
        }
        let in_flight = w.in_flight();
        if in_flight > usize::from(self.cfg.slots) {
            self.fail(&format!("side {i}: {in_flight} frames in flight"));
        }
        if again {
            return;
        }
        let bulk_only = h.count > 0 && h.flags & FRAME_FLAG_CONTROL == 0;
        let bulk_slots = usize::from(self.cfg.slots - self.cfg.control_slots);
        if bulk_only && in_flight > bulk_slots {
            self.fail(&format!(
                "side {i}: bulk-only frame seq {seq} sent with {in_flight} frames in flight (bulk may use {bulk_slots})"
            ));
        }
        let s = &mut self.sides[i];
        if s.tracked.back().is_some_and(|&(last, _)| last >= seq) {
            s.tracked.clear(); // a new conversation
        }
        s.tracked.push_back((seq, bulk_only));
        let first = seq + 1 - in_flight as u64;
        while s.tracked.front().is_some_and(|&(q, _)| q < first) {
            s.tracked.pop_front();
        }
        let n = s.tracked.iter().filter(|t| t.1).count();
        s.max_bulk_only = s.max_bulk_only.max(n);
        if n > bulk_slots {
            self.fail(&format!(
                "side {i}: {n} bulk-only frames in flight (bulk may use {bulk_slots})"
            ));
        }
    }

    // ------------------------------------------------------------------ time

    /// When something happens next, if anything will.
    pub fn next_time(&self) -> Option<Ns> {
        let mut t: Option<Ns> = None;
        let mut min = |x: Ns| t = Some(t.map_or(x, |t| t.min(x)));
        for l in &self.lanes {
            if let Some((&(at, _), _)) = l.q.first_key_value() {
                min(at);
            }
        }
        for s in &self.sides {
            if let Some(at) = s.cq_at {
                min(at);
            }
            if let Some(at) = s.link_up_at {
                min(at);
            }
            if let Some(at) = s.win.poll_timeout() {
                min(self.ns(at));
            }
        }
        if let Some((&(at, _), _)) = self.actions.first_key_value() {
            min(at);
        }
        t.map(|t| t.max(self.now))
    }

    /// Runs until virtual time `end` (or forever quiet before).
    pub fn run_until(&mut self, end: Ns) {
        self.kick();
        while let Some(t) = self.next_time() {
            if t > end {
                break;
            }
            self.now = t;
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Runs until nothing is scheduled, in flight or owed; false if `limit` passes first.
    pub fn run_quiet(&mut self, limit: Ns) -> bool {
        self.kick();
        while let Some(t) = self.next_time() {
            if t > limit {
                return false;
            }
            self.now = t;
            self.step();
        }
        true
    }

    /// Lets both windows transmit what inputs given outside a step (queued messages, a
    /// declared partner failure) produced.
    pub fn kick(&mut self) {
        for i in 0..2 {
            self.flush(i);
        }
    }

    /// Everything due at `self.now`.
    pub fn step(&mut self) {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            self.fail("too many simulation steps (livelock?)");
        }
        self.ledger.borrow_mut().now = self.now;
        while let Some((&(at, id), _)) = self.actions.first_key_value() {
            if at > self.now {
                break;
            }
            let a = self.actions.remove(&(at, id)).expect("present");
            self.act(a);
        }
        self.deliver();
        let now = self.at(self.now);
        for i in 0..2 {
            if self.sides[i].link_up_at.is_some_and(|t| t <= self.now) {
                self.sides[i].link_up_at = None;
                self.sides[i].win.handle_link_up(now);
                self.log(|| format!("{} link up", ["A", "B"][i]));
            }
        }
        for i in 0..2 {
            if self.sides[i].cq_at.is_some_and(|t| t <= self.now) {
                self.poll_cq(i, false);
            }
        }
        for i in 0..2 {
            let due = self.sides[i].win.poll_timeout().map(|t| self.ns(t));
            if due.is_some_and(|t| t <= self.now) {
                self.sides[i].win.handle_timeout(now);
                self.settle(i);
            }
        }
        for i in 0..2 {
            self.flush(i);
        }
    }

    // ------------------------------------------------------------------ actions

    fn act(&mut self, a: Action) {
        self.log(|| format!("action {a:?}"));
        match a {
            Action::Burst { side, n } => {
                for _ in 0..n {
                    let spec =
                        Spec::random(&mut self.rng, &self.mix, usize::from(self.cfg.max_payload));
                    self.queue(side, spec);
                }
            }
            Action::Drain { side } => self.drain(side, false),
            Action::Cut { down_for, stagger } => self.cut(down_for, stagger),
            Action::PartnerFailed { side } => self.partner_failed(side),
            Action::Restart {
                side,
                cut,
                down_for,
            } => self.restart(side, cut, down_for),
            Action::TopUpBulk {
                side,
                queued,
                every,
                until,
            } => {
                let mp = usize::from(self.cfg.max_payload);
                while self.sides[side].win.queued() < queued {
                    let len = self.rng.gen_range(mp / 2..=mp);
                    let spec = Spec {
                        class: interlink::messaging::Class::Bulk,
                        kind: SpecKind::Send,
                        len,
                        need: len,
                        notify: self.rng.gen_bool(0.2),
                        unhandled: false,
                    };
                    if !self.queue(side, spec) {
                        break;
                    }
                }
                if self.now + every < until {
                    self.schedule(
                        self.now + every,
                        Action::TopUpBulk {
                            side,
                            queued,
                            every,
                            until,
                        },
                    );
                }
            }
            Action::ControlCalls { side, every, until } => {
                let len = self.rng.gen_range(8..=64);
                let spec = Spec {
                    class: interlink::messaging::Class::Control,
                    kind: SpecKind::Call,
                    len,
                    need: len,
                    notify: false,
                    unhandled: false,
                };
                self.queue(side, spec);
                if self.now + every < until {
                    self.schedule(
                        self.now + every,
                        Action::ControlCalls { side, every, until },
                    );
                }
            }
        }
    }

    /// Queues one message from side `i`; false if the queue was full.
    pub fn queue(&mut self, i: usize, spec: Spec) -> bool {
        let conv = self.conv(i);
        let ctx = self.ctx_short();
        let ok =
            self.ledger
                .borrow_mut()
                .queue(i, self.sides[i].win.outbox(), spec, Some(conv), &ctx);
        ok
    }

    /// Responds to stashed calls of side `i` (all of them with `all`, else a random part).
    pub fn drain(&mut self, i: usize, all: bool) {
        let taken = {
            let mut l = self.ledger.borrow_mut();
            let stash = &mut l.stash[i];
            if all {
                std::mem::take(stash)
            } else {
                let n = self.rng.gen_range(0..=stash.len());
                stash.drain(..n).collect::<Vec<_>>()
            }
        };
        for entry in taken {
            let bytes = self.ledger.borrow().response_bytes(1 - i, entry.1, entry.2);
            let session = self.sides[i].win.session();
            let r = self.sides[i].win.outbox().respond(entry.0, &bytes);
            match r {
                Ok(()) => {}
                Err(interlink::messaging::MessagingError::StaleCall { .. })
                    if entry.0.session != session =>
                {
                    if !self.ledger.borrow().allow_inoperative {
                        self.fail("a stashed call became stale without any reset");
                    }
                }
                Err(e) => self.fail(&format!("side {i}: respond to a stashed call: {e}")),
            }
        }
    }

    pub fn cut(&mut self, down_for: Ns, stagger: Ns) {
        for i in 0..2 {
            self.sides[i].win.handle_link_down();
            self.sides[i].link_up_at = None;
        }
        for l in &mut self.lanes {
            l.q.clear();
        }
        self.links_up(self.now + down_for, stagger);
    }

    pub fn partner_failed(&mut self, i: usize) {
        let knew = self.sides[1 - i].win.peer_session().is_some();
        self.ledger.borrow_mut().receiver_reset(i, knew);
        let s = &mut self.sides[i];
        s.win.handle_partner_failed(&mut s.h);
        self.settle(i);
        let l = self.ledger.borrow();
        let d = &l.dirs[i];
        if !d.calls.is_empty() || !d.notify.is_empty() {
            drop(l);
            self.fail(&format!(
                "side {i} declared its partner failed but calls {:?} / notified messages {:?} are still pending",
                self.ledger.borrow().dirs[i].calls.keys().collect::<Vec<_>>(),
                self.ledger.borrow().dirs[i].notify.keys().collect::<Vec<_>>()
            ));
        }
    }

    pub fn restart(&mut self, i: usize, cut: bool, down_for: Ns) {
        let old = self.sides[i].win.session();
        let session = loop {
            let s: u32 = self.rng.gen();
            if s != 0 && s != old {
                break s;
            }
        };
        let win = Window::new(self.cfg.clone(), session).expect("config");
        // What the old process wrote before it died is in the survivor's ring already: let
        // the survivor's driver take it (a response there may complete a call).
        if !self.sides[1 - i].cq.is_empty() {
            self.poll_cq(1 - i, true);
        }
        let knew = self.sides[1 - i].win.peer_session().is_some();
        self.ledger.borrow_mut().restart(i, knew);
        self.ledger.borrow_mut().receiver_reset(i, knew);
        let h = Peer {
            me: i,
            ledger: self.ledger.clone(),
        };
        self.sides[i] = Side::new(win, h);
        // The old process's queue pair is gone: nothing in flight reaches either side.
        for l in &mut self.lanes {
            l.q.clear();
        }
        let up = self.now + down_for;
        if cut {
            self.sides[1 - i].win.handle_link_down();
            self.sides[1 - i].link_up_at = Some(up + self.rng.gen_range(0..=50 * US));
        }
        self.sides[i].link_up_at = Some(up);
    }

    /// Liveness: faults off, links up, stash answered at once; runs until quiet.
    pub fn settle_down(&mut self, what: &str) {
        self.faults = self.faults.quiet();
        self.actions.clear();
        for i in 0..2 {
            if !self.sides[i].win.link_up() && self.sides[i].link_up_at.is_none() {
                self.sides[i].link_up_at = Some(self.now);
            }
        }
        self.ledger.borrow_mut().stash_prob = 0.0;
        self.ledger.borrow_mut().handler_sends = 0;
        for i in 0..2 {
            self.drain(i, true);
            self.flush(i);
        }
        let limit = self.now + 200 * self.cfg.retransmit_after.as_nanos() as Ns + 50 * MS;
        if !self.run_quiet(limit) {
            self.fail(&format!("{what}: still busy after the faults stopped"));
        }
    }

    /// Final checks after `settle_down`: every message delivered, every call answered, every
    /// notification reported, both windows idle.
    pub fn check_complete(&mut self, what: &str) {
        let problems = self.ledger.borrow().incomplete();
        if !problems.is_empty() {
            self.fail(&format!("{what}: {}", problems.join("; ")));
        }
        for i in 0..2 {
            let calls = self.sides[i].win.outbox().pending_calls();
            let s = &self.sides[i];
            let w = &s.win;
            if !w.is_idle()
                || w.queued() != 0
                || w.in_flight() != 0
                || calls != 0
                || !w.link_up()
                || !s.cq.is_empty()
            {
                self.fail(&format!(
                    "{what}: side {i} is not idle ({calls} calls pending in its outbox)"
                ));
            }
        }
    }
}
