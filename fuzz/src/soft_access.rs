//! Remote access checks of the soft provider (src/fabric/soft): RDMA READs and WRITEs with
//! arbitrary rkey, address and length against the regions of a peer on an in-process network.
//!
//! The target side holds regions with every kind of right: read and write, read only (like a
//! health block), write only (like a mirror region), none, full rights in another protection
//! domain, revoked, and deregistered (dropped). A model says whether each access must be
//! refused (unknown or dead rkey, other domain, missing right, any byte outside the region);
//! the harness checks that refused accesses complete with the typed
//! [`CompletionStatus::RemoteAccessError`], allowed ones succeed, a READ returns exactly the
//! region's bytes, and after every access every region holds exactly what the model says (so
//! nothing was written outside the accessed range or into a region that refused it).
//!
//! Input: a list of 16-byte operations (shorter tails are padded with zeros):
//! byte 0 bit 0 READ/WRITE, bit 1 address relative to the region or absolute; byte 1 target
//! region (index `% 8`, 7 = the rkey in bytes 4..8); byte 2 length - 1; byte 3 fill byte;
//! bytes 4..8 rkey; bytes 8..16 offset from the region's address (wrapping) or the address.

use interlink::fabric::*;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const OP_LEN: usize = 16;
const MAX_LEN: usize = 256;

struct Target {
    desc: RegionDescriptor,
    access: Access,
    /// Reachable by the requester's queue pair (same domain, registered, not revoked).
    live: bool,
    /// Kept for local reads (`None` once dropped).
    mr: Option<MemoryRegion>,
    model: Vec<u8>,
}

struct Rig {
    _net: SimNet,
    _devs: (Device, Device),
    cq: CompletionQueue,
    qa: QueuePair,
    qb: QueuePair,
    local: MemoryRegion,
    targets: Vec<Target>,
    opts: ConnectOptions,
    next_wr: u64,
}

fn rig() -> &'static Mutex<Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| Mutex::new(Rig::new()))
}

impl Rig {
    fn new() -> Rig {
        let net = SimNet::new(11);
        let a = Device::open_sim(&net, "req").expect("open requester");
        let b = Device::open_sim(&net, "tgt").expect("open target");
        let pa = a.alloc_pd().expect("pd a");
        let pb = b.alloc_pd().expect("pd b");
        let other_pd = b.alloc_pd().expect("second pd b");
        let cq = a.create_cq(64).expect("cq a");
        let rcq = a.create_cq(64).expect("rcq a");
        let cqb = b.create_cq(64).expect("cq b");
        let rcqb = b.create_cq(64).expect("rcq b");
        let qa = pa
            .create_qp(&cq, &rcq, QpCapacity::default())
            .expect("qp a");
        let qb = pb
            .create_qp(&cqb, &rcqb, QpCapacity::default())
            .expect("qp b");
        let local = pa
            .register(MAX_LEN, Access::LOCAL_WRITE)
            .expect("local region");
        let rw = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        let mut targets = Vec::new();
        let mut add = |pd: &ProtectionDomain, len: usize, access: Access, same_pd: bool| {
            let mr = pd.register(len, access).expect("target region");
            let model: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
                .collect();
            mr.write(0, &model).expect("initial contents");
            targets.push(Target {
                desc: mr.descriptor(),
                access,
                live: same_pd,
                mr: Some(mr),
                model,
            });
        };
        add(&pb, 64, rw, true);
        add(&pb, 40, Access::REMOTE_READ, true);
        add(&pb, 24, Access::REMOTE_WRITE, true);
        add(&pb, 16, Access::NONE, true);
        add(&other_pd, 32, rw, false);
        add(&pb, 32, rw, true);
        add(&pb, 48, rw, true);
        // Revoked: registration gone, memory still readable locally.
        targets[5]
            .mr
            .as_ref()
            .expect("mr")
            .revoke()
            .expect("revoke");
        targets[5].live = false;
        // Deregistered by drop.
        targets[6].mr = None;
        targets[6].live = false;
        // A generous ACK timeout (about 1 s, 6 retries): a long run is niced on a busy host,
        // and a starved engine thread must not turn a refusal into `RetryExceeded`.
        let opts = ConnectOptions {
            ack_timeout: 18,
            retry_count: 6,
            ..ConnectOptions::default()
        };
        let rig = Rig {
            _net: net,
            _devs: (a, b),
            cq,
            qa,
            qb,
            local,
            targets,
            opts,
            next_wr: 1,
        };
        rig.connect();
        rig
    }

    fn connect(&self) {
        self.qa.reset().expect("reset a");
        self.qb.reset().expect("reset b");
        let ea = self.qa.endpoint().expect("endpoint a");
        let eb = self.qb.endpoint().expect("endpoint b");
        self.qa.connect(&eb, &self.opts).expect("connect a");
        self.qb.connect(&ea, &self.opts).expect("connect b");
    }

    /// Whether the model allows `len` bytes at `addr` under `rkey` with `need`; the target
    /// region and offset if so.
    fn allowed(&self, rkey: u32, addr: u64, len: usize, need: Access) -> Option<(usize, usize)> {
        let (i, t) = self
            .targets
            .iter()
            .enumerate()
            .find(|(_, t)| t.desc.rkey == rkey && t.live)?;
        if !t.access.contains(need) {
            return None;
        }
        let off = addr.checked_sub(t.desc.addr)?;
        let end = off.checked_add(len as u64)?;
        (end <= t.desc.len).then_some((i, off as usize))
    }

    fn op(&mut self, op: &[u8; OP_LEN]) {
        let read = op[0] & 1 == 0;
        let relative = op[0] & 2 == 0;
        let len = usize::from(op[2]) + 1;
        let fill = op[3];
        let word = u64::from_le_bytes(op[8..16].try_into().expect("8 bytes"));
        let sel = usize::from(op[1] % 8);
        let (rkey, base) = match self.targets.get(sel) {
            Some(t) => (t.desc.rkey, t.desc.addr),
            None => (u32::from_le_bytes(op[4..8].try_into().expect("4 bytes")), 0),
        };
        let addr = if relative {
            // Small signed offsets around the region explore its edges.
            base.wrapping_add((word as i16) as i64 as u64)
        } else {
            word
        };
        let remote = RemoteAddr { addr, rkey };
        let need = if read {
            Access::REMOTE_READ
        } else {
            Access::REMOTE_WRITE
        };
        let expect = self.allowed(rkey, addr, len, need);
        let pattern: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        let marker = vec![!fill; len];
        self.local
            .write(0, if read { &marker } else { &pattern })
            .expect("stage local bytes");
        let buf = self.local.slice(0, len).expect("local slice");
        let wr = self.next_wr;
        self.next_wr += 1;
        let sop = if read {
            SendOp::Read(remote)
        } else {
            SendOp::Write(remote)
        };
        self.qa
            .post_send(SendRequest::new(wr, sop, buf))
            .expect("post a READ/WRITE");
        let c = self
            .cq
            .next(Duration::from_secs(20))
            .expect("poll")
            .unwrap_or_else(|| panic!("no completion for {remote:?} len {len}"));
        assert_eq!(c.wr_id, wr);
        match expect {
            Some((i, off)) => {
                assert_eq!(
                    c.status,
                    CompletionStatus::Success,
                    "allowed {} of {len} at {remote:?} (region {i}, offset {off}) failed",
                    if read { "READ" } else { "WRITE" }
                );
                if read {
                    let mut got = vec![0u8; len];
                    self.local.read(0, &mut got).expect("read local");
                    assert_eq!(
                        got,
                        self.targets[i].model[off..off + len],
                        "READ returned other bytes"
                    );
                } else {
                    self.targets[i].model[off..off + len].copy_from_slice(&pattern);
                }
            }
            None => {
                assert_eq!(
                    c.status,
                    CompletionStatus::RemoteAccessError,
                    "{} of {len} at {remote:?} must be refused",
                    if read { "READ" } else { "WRITE" }
                );
                if read {
                    let mut got = vec![0u8; len];
                    self.local.read(0, &mut got).expect("read local");
                    assert_eq!(got, marker, "a refused READ wrote local memory");
                }
                self.connect();
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Some(mr) = &t.mr {
                let mut now = vec![0u8; t.model.len()];
                mr.read(0, &mut now).expect("read target region");
                assert_eq!(now, t.model, "region {i} changed outside the model");
            }
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut rig = rig().lock().unwrap_or_else(|p| p.into_inner());
    for chunk in data.chunks(OP_LEN).take(64) {
        let mut op = [0u8; OP_LEN];
        op[..chunk.len()].copy_from_slice(chunk);
        rig.op(&op);
    }
}

fn op(flags: u8, sel: u8, len: u8, fill: u8, rkey: u32, word: u64) -> [u8; OP_LEN] {
    let mut o = [0u8; OP_LEN];
    o[0] = flags;
    o[1] = sel;
    o[2] = len;
    o[3] = fill;
    o[4..8].copy_from_slice(&rkey.to_le_bytes());
    o[8..16].copy_from_slice(&word.to_le_bytes());
    o
}

/// Edge cases of every region: whole, last byte, one past the end, one before the start,
/// wrong right, wrong domain, dead keys, an unknown key.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sel in 0..8u8 {
        let mut s = Vec::new();
        for (flags, len, off) in [
            (0, 15, 0u64),
            (1, 15, 0),
            (0, 0, 15),
            (1, 0, 63),
            (1, 1, 63),
            (0, 3, (-1i64) as u64),
        ] {
            s.extend(op(flags, sel, len, 0x40 + sel, 0x1234_5678, off));
        }
        out.push(s);
    }
    out.push(op(2, 7, 7, 1, 0, u64::MAX - 3).to_vec());
    out
}
