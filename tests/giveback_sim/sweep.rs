//! The randomized part of the simulator: one seed = a fault phase mixing crashes (between
//! steps and inside action sequences), link cuts, torn READs, mailbox faults, reservation
//! errors and operator commands, then a liveness phase without faults.

use super::disks::CopyFault;
use super::{World, A, B, I, K};
use interlink::clients::giveback::{Command, GivebackEvent, NodeState};
use std::time::Duration;

/// What the sweep exercised, summed over seeds.
#[derive(Default, Debug)]
pub struct Coverage {
    pub seeds: u64,
    pub crashes: u64,
    pub takeovers: u64,
    pub givebacks_done: u64,
    pub fences: u64,
    pub kills_obeyed: u64,
    pub torn_reads: u64,
    pub torn_writes: u64,
    pub interconnect_alarms: u64,
    pub max_recovery_intervals: u32,
}

/// A single mailbox fault at a time (the mailbox is the redundant pair of disks: one copy or
/// one node's path to them fails, then heals; the next fault waits until every live node has
/// rewritten its slot).
#[derive(Clone, Copy, Debug)]
pub enum MailboxFault {
    Copy(usize, CopyFault),
    NoAccess(u32),
    ReadFails(u32),
}

pub fn set_mailbox_fault(w: &World, f: MailboxFault, on: bool) {
    let mut d = w.disks();
    match f {
        MailboxFault::Copy(c, kind) => {
            d.copies[c].fault = if on { kind } else { CopyFault::None };
        }
        MailboxFault::NoAccess(n) if on => {
            d.no_mailbox_access.insert(n);
        }
        MailboxFault::NoAccess(n) => {
            d.no_mailbox_access.remove(&n);
        }
        MailboxFault::ReadFails(n) if on => {
            d.mailbox_read_fails.insert(n);
        }
        MailboxFault::ReadFails(n) => {
            d.mailbox_read_fails.remove(&n);
        }
    }
}

/// One seed: a fault phase mixing crashes (between steps and inside action sequences), link
/// cuts, torn reads, mailbox faults, reservation errors and operator commands; then a
/// liveness phase without faults that must bring the pair back to normal.
pub fn random_run(seed: u64, keep_trace: bool) -> (Box<World>, Result<u32, String>) {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut w = Box::new(World::new(seed));
    w.trace_limit = if keep_trace { 0 } else { 200 };
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
    w.tear_probability = [0.0, 0.05, 0.3][rng.gen_range(0..3)];
    w.restart_delay = I * rng.gen_range(1..=20);
    w.halt_linger = I * rng.gen_range(0..=3);
    let fault_phase = I * rng.gen_range(100..=250);
    let step = I / 4;
    let mut mailbox_fault: Option<(MailboxFault, Duration)> = None;
    let mut quiet_until = Duration::ZERO;
    let mut t = Duration::ZERO;
    while t < fault_phase && w.violations.is_empty() {
        t += step;
        w.run_until(t);
        for id in [A, B] {
            if w.node(id).machine.is_some() && rng.gen_bool(0.003) {
                if rng.gen_bool(0.5) {
                    w.crash(id);
                } else {
                    let at = w.node(id).actions_done + rng.gen_range(0..25);
                    w.node_mut(id).crash_at_action = Some(at);
                }
            }
        }
        for l in 0..2 {
            if rng.gen_bool(if w.links[l] { 0.006 } else { 0.03 }) {
                w.links[l] = !w.links[l];
            }
        }
        match mailbox_fault {
            Some((f, until)) => {
                let torn_done = matches!(f, MailboxFault::Copy(c, CopyFault::TearNextWrite)
                    if w.disks().copies[c].fault == CopyFault::None);
                if t >= until || torn_done {
                    set_mailbox_fault(&w, f, false);
                    mailbox_fault = None;
                    quiet_until = t + 3 * I;
                }
            }
            None if t >= quiet_until && w.disks().copies_agree() && rng.gen_bool(0.01) => {
                let node = if rng.gen_bool(0.5) { A } else { B };
                let f = match rng.gen_range(0..5) {
                    0 => MailboxFault::Copy(rng.gen_range(0..2), CopyFault::Lost),
                    1 => MailboxFault::Copy(rng.gen_range(0..2), CopyFault::Stale),
                    2 => MailboxFault::Copy(rng.gen_range(0..2), CopyFault::TearNextWrite),
                    3 => MailboxFault::NoAccess(node),
                    _ => MailboxFault::ReadFails(node),
                };
                set_mailbox_fault(&w, f, true);
                mailbox_fault = Some((f, t + I * rng.gen_range(1..=30)));
            }
            None => {}
        }
        if rng.gen_bool(0.004) {
            let mut d = w.disks();
            d.reservation_errors = !d.reservation_errors;
        }
        if rng.gen_bool(0.002) {
            let id = if rng.gen_bool(0.5) { A } else { B };
            if w.state(id) == Some(NodeState::Up) {
                w.command(id, Command::Takeover { check_only: false });
            }
        }
        if rng.gen_bool(0.003) {
            let id = if rng.gen_bool(0.5) { A } else { B };
            let on = rng.gen_bool(0.5);
            w.node_mut(id).auto_giveback = on;
            if w.node(id).machine.is_some() {
                w.command(id, Command::SetAutoGiveback(on));
            }
            if !on && w.state(id) == Some(NodeState::Takeover) && rng.gen_bool(0.5) {
                w.command(id, Command::Giveback { check_only: false });
            }
        }
        // The operator gives back what an operator took over (held until then).
        if rng.gen_bool(0.02) {
            w.operator_gives_back();
        }
    }
    if !w.violations.is_empty() {
        let v = format!("{:?}", w.violations);
        return (w, Err(v));
    }
    // Liveness: every fault healed, automatic giveback on.
    w.links = [true, true];
    {
        let mut d = w.disks();
        d.copies[0].fault = CopyFault::None;
        d.copies[1].fault = CopyFault::None;
        d.no_mailbox_access.clear();
        d.mailbox_read_fails.clear();
        d.reservation_errors = false;
    }
    w.tear_probability = 0.0;
    for id in [A, B] {
        w.node_mut(id).crash_at_action = None;
        w.node_mut(id).auto_giveback = true;
        if w.node(id).machine.is_some() {
            w.command(id, Command::SetAutoGiveback(true));
        }
    }
    // Bound: a restart, a detection window, a takeover, a second restart and a bring-up.
    // An operator's takeover is held until an operator gives back: the operator asks at every
    // interval (refused until the partner waits for it).
    let bound = 2 * 20 + 2 * 3 + 3 * K + 20;
    let converged = (0..=bound).find(|_| {
        if w.converged() || !w.violations.is_empty() {
            return true;
        }
        w.operator_gives_back();
        w.run_for(I);
        false
    });
    let converged = converged.filter(|_| w.converged());
    match converged {
        Some(took) if w.violations.is_empty() => (w, Ok(took)),
        _ => {
            let v = if w.violations.is_empty() {
                format!("no convergence within {bound} intervals")
            } else {
                format!("{:?}", w.violations)
            };
            (w, Err(v))
        }
    }
}

pub fn add_coverage(c: &mut Coverage, w: &World, took: u32) {
    c.seeds += 1;
    c.max_recovery_intervals = c.max_recovery_intervals.max(took);
    c.torn_reads += w.torn_reads;
    c.torn_writes += w.disks().torn_writes;
    for id in [A, B] {
        for (_, e) in &w.node(id).events {
            match e {
                GivebackEvent::TakeoverDone { .. } => c.takeovers += 1,
                GivebackEvent::GivebackDone { .. } => c.givebacks_done += 1,
                GivebackEvent::Fenced => c.fences += 1,
                GivebackEvent::Killed => c.kills_obeyed += 1,
                GivebackEvent::InterconnectDown => c.interconnect_alarms += 1,
                _ => {}
            }
        }
        c.crashes += w.node(id).incarnation - 1;
    }
}
