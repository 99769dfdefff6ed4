//! Two windows wired back to back without faults, and a handler that records everything:
//! for targeted tests of single behaviours.

use interlink::messaging::{
    AckStatus, Arrival, CallFailure, CallId, Class, Handler, Message, MessageId, Outbox, Transmit,
    Window, WindowConfig,
};
use std::time::{Duration, Instant};

/// Records what a window delivers.
#[derive(Default)]
pub struct Collect {
    pub messages: Vec<(u8, u8, Class, Vec<u8>, bool)>,
    pub acks: Vec<(MessageId, AckStatus)>,
    pub responses: Vec<(CallId, Result<Vec<u8>, CallFailure>)>,
    /// Function codes without a handler (a call to one is answered NoHandler).
    pub refuse: Vec<u8>,
    /// Answer calls at once with "pong".
    pub respond: bool,
    /// Function codes whose calls the handler fails (`Outbox::fail`, error code 500 + the
    /// function code, reason "refused").
    pub fail: Vec<u8>,
}

impl Handler for Collect {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Outbox) -> bool {
        self.messages.push((
            msg.code,
            msg.flags,
            msg.class,
            msg.payload.to_vec(),
            msg.call.is_some(),
        ));
        if self.refuse.contains(&msg.code) {
            return false;
        }
        if let (Some(call), true) = (msg.call, self.fail.contains(&msg.code)) {
            out.fail(call, 500 + u32::from(msg.code), "refused")
                .unwrap();
            return true;
        }
        if let (Some(call), true) = (msg.call, self.respond) {
            out.respond(call, b"pong").unwrap();
        }
        true
    }
    fn on_ack(&mut self, id: MessageId, status: AckStatus, _out: &mut Outbox) {
        self.acks.push((id, status));
    }
    fn on_response(&mut self, call: CallId, result: Result<&[u8], CallFailure>, _out: &mut Outbox) {
        self.responses.push((call, result.map(|b| b.to_vec())));
    }
}

/// Two windows wired back to back without faults.
pub struct Pair {
    pub t0: Instant,
    pub w: [Window; 2],
    pub h: [Collect; 2],
    pub tx: [Vec<u8>; 2],
    pub rx: [Vec<u8>; 2],
}

impl Pair {
    pub fn new(cfg: WindowConfig) -> Pair {
        let t0 = Instant::now();
        let mut w = [
            Window::new(cfg.clone(), 0x1111_1111).unwrap(),
            Window::new(cfg.clone(), 0x2222_2222).unwrap(),
        ];
        for x in &mut w {
            x.handle_link_up(t0);
        }
        let n = cfg.ring_len();
        let mut h: [Collect; 2] = Default::default();
        h[0].respond = true;
        h[1].respond = true;
        Pair {
            t0,
            w,
            h,
            tx: [vec![0; n], vec![0; n]],
            rx: [vec![0; n], vec![0; n]],
        }
    }

    /// Everything side `i` transmits now, as (transmit, bytes).
    pub fn transmit(&mut self, i: usize) -> Vec<(Transmit, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(t) = self.w[i].poll_transmit(self.t0, &mut self.tx[i], &mut self.h[i]) {
            let bytes = match t {
                Transmit::Frame { offset, len, .. } => self.tx[i][offset..offset + len].to_vec(),
                Transmit::Signal { .. } => Vec::new(),
            };
            v.push((t, bytes));
        }
        v
    }

    /// Delivers one transmit of side `i` to the other side.
    pub fn deliver(&mut self, i: usize, t: Transmit, bytes: &[u8]) -> Option<Arrival> {
        let j = 1 - i;
        match t {
            Transmit::Frame { offset, slot, .. } => {
                self.rx[j][offset..offset + bytes.len()].copy_from_slice(bytes);
                let fs = usize::from(self.w[j].config().frame_size);
                let off = slot as usize * fs;
                Some(
                    self.w[j]
                        .handle_frame(self.t0, &self.rx[j][off..off + fs], &mut self.h[j])
                        .unwrap(),
                )
            }
            Transmit::Signal { imm } => {
                self.w[j]
                    .handle_signal(self.t0, imm, &mut self.h[j])
                    .unwrap();
                None
            }
        }
    }

    /// Exchanges everything until both sides are quiet.
    pub fn run(&mut self) {
        for _ in 0..1000 {
            let mut any = false;
            for i in 0..2 {
                for (t, b) in self.transmit(i) {
                    any = true;
                    self.deliver(i, t, &b);
                }
            }
            if !any {
                return;
            }
        }
        panic!("the pair never went quiet");
    }
}

/// A small configuration for targeted tests.
pub fn small_cfg() -> WindowConfig {
    WindowConfig {
        slots: 8,
        control_slots: 2,
        frame_size: 512,
        max_payload: 160,
        aggregate: true,
        retransmit_after: Duration::from_millis(1),
        max_queued: 1000,
    }
}
