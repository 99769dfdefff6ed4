//! Mirrored write-back of one primary node into its partner (F5.3-F5.5): the library's
//! [`WriteBackPrimary`] and [`WriteBackMirror`], each on its node's [`CrashNvram`], messages
//! and RDMA WRITEs over the mirror client's link with the seed's delays, in order per
//! direction (a reliable connection).
//!
//! A path failure (cut, move, either node down) loses what is in flight (a transfer lands
//! half of each range), the primary's link goes down and the mirror's path changes; when the
//! path is back the primary redoes its writes. A crashed mirror is, every other time, a failed
//! partner for the primary (its writes complete with the mirror lost until the mirror is back,
//! then a resync re-mirrors every dirty block), else a path change; a restarted primary
//! (table reopened) is a failed partner for the mirror, and resyncs. The primary runs its
//! resync at every step (as the driver's timer does), and now and then destages a random part
//! of a snapshot of its dirty blocks to a modelled disk (the product's rules: a block written
//! again since the snapshot stays dirty; a freed one is freed at the mirror by a notice).
//!
//! Takeovers run as the product's (`MirroredWriteBack::take_over_partner_for` and
//! `recover`, the mailbox's write-back epochs): the survivor hands every block of its image to
//! the disk, records the primary's epoch as taken over, and serves: it writes newer versions
//! of some blocks to the disk. From then on its image drops the primary's RQRs until the
//! primary's epoch moves on. The primary's recovery, right before it serves again, discards
//! its table when the epoch it runs was taken over (`discard_taken_over`) and moves to the
//! next epoch.
//!
//! Checks: each write completes once; after a crash of either side the reopened table holds,
//! for every block, a version no newer than the last one issued, whole, and, with the disk, at
//! least as new as the last one acknowledged as mirrored (a destaged block may be gone from
//! NVRAM: its version is on disk); a write in progress at the crash shows on all of its blocks
//! or on none (never mixed); a takeover finds every mirrored write in the partner's copy or on
//! disk; the disk is written last-writer-wins, and no destage or takeover writes a version
//! older than the newest acknowledged one (the survivor's writes included).

use super::nvram::{CrashNvram, Fuse};
use interlink::clients::giveback::WriteBackEpochs;
use interlink::clients::mirror::{
    AtomicError, AtomicGeometry, AtomicWriteTable, CompletionStatus, DataRange, Message,
    NvramBacking, PrimaryAction, RequestId, WriteBackError, WriteBackMirror, WriteBackPrimary,
};
use rand::rngs::SmallRng;
use rand::Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: usize = 512;
/// Blocks of the one unit written.
pub const SPACE: u64 = 24;
const GEOMETRY: AtomicGeometry = AtomicGeometry {
    block_size: BS as u32,
    buffers: 64,
    ries: 4,
};

/// The content of `block` as written by write `version`: a torn or mixed block shows.
pub fn block_bytes(version: u64, block: u64) -> Vec<u8> {
    let mut b = vec![(version ^ block.rotate_left(7)) as u8; BS];
    b[..8].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b
}

/// The version a table holds for `block` (`Some(0)`: never written); an error if the block's
/// bytes are not one write's.
pub fn version_in<B: NvramBacking>(t: &AtomicWriteTable<B>, block: u64) -> Result<u64, String> {
    let Some(data) = t.read_block(0, block) else {
        return Ok(0);
    };
    let v = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if data != block_bytes(v, block).as_slice() {
        return Err(format!("block {block} is torn (claims version {v})"));
    }
    Ok(v)
}

/// A host write in progress.
#[derive(Clone, Copy, Debug)]
pub struct Issued {
    pub first: u64,
    pub blocks: u64,
    pub version: u64,
}

/// Counters of one write-back lane.
#[derive(Default, Debug, Clone)]
pub struct WbCounts {
    pub writes: u64,
    pub mirrored: u64,
    pub rejected: u64,
    pub path_changes: u64,
    pub primary_reopens: u64,
    pub mirror_reopens: u64,
    /// Blocks freed by destages.
    pub destaged: u64,
    /// Partner failures seen by the primary.
    pub partner_failures: u64,
    /// Resyncs completed, and blocks they copied.
    pub resyncs: u64,
    pub resync_blocks: u64,
    /// Held answers seen by primaries that crashed since.
    pub held: u64,
    /// Blocks taken over by survivors, and blocks the survivors wrote after.
    pub taken_over_blocks: u64,
    pub survivor_writes: u64,
    /// Blocks primaries discarded at their recovery (taken over), and RQRs survivors
    /// dropped (they wrote a table taken over).
    pub discarded_blocks: u64,
    pub refused_taken_over: u64,
}

/// One primary and its mirror.
pub struct WbLane {
    pub primary_node: usize,
    pub primary: Option<WriteBackPrimary<CrashNvram>>,
    p_image: Option<Vec<u8>>,
    pub mirror: Option<WriteBackMirror<CrashNvram>>,
    m_image: Option<Vec<u8>>,
    to_mirror: VecDeque<(Duration, Vec<u8>)>,
    to_primary: VecDeque<(Duration, Vec<u8>)>,
    transfers: VecDeque<(Duration, RequestId, u64, Vec<DataRange>)>,
    path_up: bool,
    pub done: HashMap<RequestId, CompletionStatus>,
    pub inflight: BTreeMap<RequestId, Issued>,
    /// Last version of each block acknowledged as mirrored.
    pub acked: HashMap<u64, u64>,
    /// Last version of each block issued.
    pub issued: HashMap<u64, u64>,
    /// Version of each block on disk: the last destage or takeover write (or the
    /// survivor's own write) wins.
    pub disk: HashMap<u64, u64>,
    /// The primary's write-back epoch (its mailbox record; 0 before its first recovery).
    pub epoch: u64,
    /// The primary recovered since its start (it serves only then).
    recovered: bool,
    /// The mirror node's write-back epochs (what it took over, the primary's epoch as read).
    survivor: WriteBackEpochs,
    /// The primary was told its partner failed (the mirror crashed); restored at its start.
    partner_failed: bool,
    /// Time of the last step.
    last: Instant,
    versions: u64,
    base: Instant,
    pub counts: WbCounts,
}

fn table(image: Option<Vec<u8>>) -> AtomicWriteTable<CrashNvram> {
    match image {
        Some(img) => {
            AtomicWriteTable::open(CrashNvram::new(img))
                .expect("crash image opens")
                .0
        }
        None => {
            AtomicWriteTable::format(CrashNvram::new(vec![0; GEOMETRY.required_len()]), GEOMETRY)
                .expect("format")
        }
    }
}

impl WbLane {
    pub fn new(primary_node: usize) -> WbLane {
        WbLane {
            primary_node,
            primary: None,
            p_image: None,
            mirror: None,
            m_image: None,
            to_mirror: VecDeque::new(),
            to_primary: VecDeque::new(),
            transfers: VecDeque::new(),
            path_up: false,
            done: HashMap::new(),
            inflight: BTreeMap::new(),
            acked: HashMap::new(),
            issued: HashMap::new(),
            disk: HashMap::new(),
            epoch: 0,
            recovered: false,
            survivor: WriteBackEpochs::new(0, 0),
            partner_failed: false,
            last: Instant::now(),
            versions: 0,
            base: Instant::now(),
            counts: WbCounts::default(),
        }
    }

    /// Fuses of the running sides' NVRAM: (primary, mirror).
    pub fn fuses(&self) -> (Option<Arc<Fuse>>, Option<Arc<Fuse>>) {
        (
            self.primary.as_ref().map(|p| p.table().backing().fuse()),
            self.mirror.as_ref().map(|m| m.table().backing().fuse()),
        )
    }

    /// Node `node` died inside an NVRAM write of this lane.
    pub fn died(&self, node: usize) -> bool {
        let (p, m) = self.fuses();
        let f = if node == self.primary_node { p } else { m };
        f.is_some_and(|f| f.dead())
    }

    /// The path is lost: messages in flight are gone, a transfer lands half of each range.
    fn drop_in_flight(&mut self) {
        self.to_mirror.clear();
        self.to_primary.clear();
        for (_, _, _, ranges) in std::mem::take(&mut self.transfers) {
            self.land(&ranges, true);
        }
    }

    /// The path is lost; both sides (those running) are told.
    pub fn fail_path(&mut self) {
        self.drop_in_flight();
        if self.path_up {
            self.counts.path_changes += 1;
        }
        self.path_up = false;
        if let Some(p) = &mut self.primary {
            p.handle_link_down();
        }
        if let Some(m) = &mut self.mirror {
            m.handle_path_changed().expect("path change");
        }
    }

    fn land(&mut self, ranges: &[DataRange], torn: bool) {
        let (Some(p), Some(m)) = (&self.primary, &mut self.mirror) else {
            return;
        };
        for r in ranges {
            let len = if torn { r.len / 2 } else { r.len };
            let src = &p.table().backing().bytes()[r.local_offset..r.local_offset + len];
            m.table_mut()
                .backing_mut()
                .remote_write(r.remote_offset, src);
        }
    }

    /// Node `node` crashed: its side's table is kept as the crash left it.
    pub fn crash(&mut self, node: usize) -> Result<(), String> {
        self.drop_in_flight();
        let result = self.take_crashed(node);
        self.fail_path();
        result
    }

    fn take_crashed(&mut self, node: usize) -> Result<(), String> {
        if node == self.primary_node {
            if let Some(p) = self.primary.take() {
                let (resyncs, blocks, held) =
                    (p.stats().resyncs, p.stats().resync_blocks, p.stats().held);
                self.counts.resyncs += resyncs;
                self.counts.resync_blocks += blocks;
                self.counts.held += held;
                self.p_image = Some(p.into_table().into_backing().crash_image());
                let t = table(self.p_image.clone());
                self.check_table(&t, "primary after its crash", true)?;
                self.inflight.clear();
            }
        } else if let Some(m) = self.mirror.take() {
            self.counts.refused_taken_over += m.stats().refused_taken_over;
            self.m_image = Some(m.into_table().into_backing().crash_image());
            let t = table(self.m_image.clone());
            self.check_table(&t, "mirror after its crash", false)?;
            // Every other mirror crash is a partner failure for the primary.
            let fail = self.counts.mirror_reopens % 2 == 0;
            if let (true, false, Some(p)) = (fail, self.partner_failed, &mut self.primary) {
                p.handle_partner_failed(self.last).expect("partner failed");
                self.partner_failed = true;
                self.counts.partner_failures += 1;
            }
        }
        Ok(())
    }

    /// Node `node` started: its side reopens its table (or formats it the first time).
    pub fn start(&mut self, node: usize) {
        if node == self.primary_node {
            if self.primary.is_none() {
                let first = self.p_image.is_none();
                self.primary = Some(WriteBackPrimary::new(table(self.p_image.take())));
                self.recovered = false;
                if self.partner_failed {
                    // The new primary knows nothing of the failure: the mirror is down, so
                    // the link is, and it resyncs when the mirror is back.
                    self.partner_failed = false;
                }
                self.counts.primary_reopens += u64::from(!first);
                // A restarted primary is a failed partner for the mirror.
                if let (false, Some(m)) = (first, &mut self.mirror) {
                    m.handle_partner_failed().expect("partner failed");
                }
            }
        } else if self.mirror.is_none() {
            let first = self.m_image.is_none();
            self.mirror =
                Some(WriteBackMirror::new(table(self.m_image.take())).expect("mirror starts"));
            self.counts.mirror_reopens += u64::from(!first);
            if self.partner_failed {
                self.partner_failed = false;
                if let Some(p) = &mut self.primary {
                    p.handle_partner_restored();
                }
            }
        }
    }

    /// Checks a table after a crash (`primary`: the primary's, else the mirror's).
    pub fn check_table(
        &self,
        t: &AtomicWriteTable<CrashNvram>,
        what: &str,
        primary: bool,
    ) -> Result<(), String> {
        let p = self.primary_node;
        for block in 0..SPACE {
            let v =
                version_in(t, block).map_err(|e| format!("write-back of node {p}, {what}: {e}"))?;
            let acked = self.acked.get(&block).copied().unwrap_or(0);
            let issued = self.issued.get(&block).copied().unwrap_or(0);
            let disk = self.disk.get(&block).copied().unwrap_or(0);
            if v.max(disk) < acked || v > issued {
                return Err(format!(
                    "write-back of node {p}, {what}: block {block} holds version {v} (disk {disk}), acknowledged {acked}, last issued {issued}"
                ));
            }
        }
        for (r, w) in &self.inflight {
            let (mut with, mut without) = (0, 0);
            for b in w.first..w.first + w.blocks {
                // A block of it gone from the table and on disk in its version was destaged
                // (the write ended locally, its status not collected yet; at the mirror, freed
                // by the notice): it tells nothing.
                let v = version_in(t, b)?;
                let destaged = v == 0 && self.disk.get(&b) == Some(&w.version);
                if v == w.version {
                    with += 1;
                } else if !destaged {
                    without += 1;
                }
            }
            if with != 0 && without != 0 {
                return Err(format!(
                    "write-back of node {p}, {what}: request {r} (version {}) mixed: {with} of {} blocks new",
                    w.version, w.blocks
                ));
            }
        }
        let _ = primary;
        Ok(())
    }

    /// A takeover by the mirror node: its copy must hold every mirrored write.
    pub fn takeover_check(&self) -> Result<(), String> {
        match &self.mirror {
            Some(m) => self.check_table(m.table(), "takeover copy", false),
            None => Ok(()),
        }
    }

    /// The mirror node takes the primary over (its giveback replay hook): the copy is
    /// checked, every block goes to the disk, the primary's epoch is recorded as taken over,
    /// and the survivor, serving the primary's disks, writes newer versions of a few blocks.
    pub fn take_over(&mut self, rng: &mut SmallRng) -> Result<(), String> {
        self.takeover_check()?;
        let Some(m) = &mut self.mirror else {
            return Ok(());
        };
        let mut handed = Vec::new();
        m.take_over(|at, data| {
            handed.push((
                at.block,
                u64::from_le_bytes(data[..8].try_into().expect("8")),
            ));
            Ok(())
        })
        .map_err(|e| format!("takeover of node {}: {e}", self.primary_node))?;
        self.counts.taken_over_blocks += handed.len() as u64;
        for (block, v) in handed {
            self.write_disk(block, v, "a takeover")?;
        }
        if self.died(1 - self.primary_node) {
            // The survivor died inside the takeover (a free's NVRAM write): nothing is
            // recorded and it never serves; the world crashes it.
            return Ok(());
        }
        if self.epoch != 0 {
            // As the product: recorded before the survivor serves.
            let t = self.survivor.took_over();
            t.record(self.epoch);
            t.written(t.stamp());
        }
        for _ in 0..rng.gen_range(0..=3) {
            let block = rng.gen_range(0..SPACE);
            self.versions += 1;
            let v = self.versions;
            self.disk.insert(block, v);
            self.acked.insert(block, v);
            self.issued.insert(block, v);
            self.counts.survivor_writes += 1;
        }
        Ok(())
    }

    /// The disk takes version `v` of `block` from `who`: never older than the newest
    /// acknowledged one.
    fn write_disk(&mut self, block: u64, v: u64, who: &str) -> Result<(), String> {
        let acked = self.acked.get(&block).copied().unwrap_or(0);
        if v < acked {
            return Err(format!(
                "write-back of node {}: {who} wrote version {v} of block {block} over the acknowledged version {acked}",
                self.primary_node
            ));
        }
        self.disk.insert(block, v);
        Ok(())
    }

    /// The primary's recovery right before it serves (its own-log recovery hook): a table
    /// whose epoch the survivor took over is discarded, and the epoch moves on.
    fn recover(&mut self) {
        let p = self.primary.as_mut().expect("primary");
        // What the survivor's record names as taken over.
        let taken = self.survivor.took_over().recorded();
        if self.epoch != 0 && taken >= self.epoch {
            let (unreturned, freed) = p.discard_taken_over().expect("discard");
            self.counts.discarded_blocks += freed as u64;
            for r in unreturned {
                self.inflight.remove(&r);
            }
            if self.died(self.primary_node) {
                // Died inside the discard: the mailbox still names the taken epoch, and the
                // next start discards what is left (the world crashes the node).
                return;
            }
            self.epoch = taken + 1;
        } else {
            self.epoch = self.epoch.max(1);
        }
        self.recovered = true;
    }

    fn pump(
        &mut self,
        now: Duration,
        rng: &mut SmallRng,
        delay: &impl Fn(&mut SmallRng) -> Duration,
    ) {
        let p = self.primary.as_mut().expect("primary");
        while let Some(a) = p.poll_action() {
            match a {
                PrimaryAction::Send(m) => {
                    let at = next_at(&self.to_mirror, now, delay(rng));
                    self.to_mirror
                        .push_back((at, m.to_bytes().expect("encode")));
                }
                PrimaryAction::WriteData {
                    request,
                    incarnation,
                    ranges,
                } => {
                    let at = self
                        .transfers
                        .back()
                        .map_or(now, |t| t.0)
                        .max(now + delay(rng));
                    self.transfers.push_back((at, request, incarnation, ranges));
                }
                PrimaryAction::Complete {
                    request, status, ..
                } => {
                    assert!(
                        self.done.insert(request, status).is_none(),
                        "write-back of node {}: request {request} completed twice",
                        self.primary_node
                    );
                    let w = self.inflight.remove(&request);
                    match status {
                        CompletionStatus::Mirrored => {
                            self.counts.mirrored += 1;
                            if let Some(w) = w {
                                // The newest acknowledged version (a survivor's write may
                                // be newer than a late completion).
                                for b in w.first..w.first + w.blocks {
                                    let a = self.acked.entry(b).or_insert(0);
                                    *a = (*a).max(w.version);
                                }
                            }
                        }
                        _ => self.counts.rejected += 1,
                    }
                }
            }
        }
        if let Some(m) = &mut self.mirror {
            while let Some(msg) = m.poll_send() {
                let at = next_at(&self.to_primary, now, delay(rng));
                self.to_primary
                    .push_back((at, msg.to_bytes().expect("encode")));
            }
        }
    }

    /// One step: the primary's recovery once it serves its disks; with the workload on, a
    /// host write now and then while it serves and a destage now and then while it also
    /// holds its serving lease (a node that may have been taken over writes nothing to the
    /// disks); then what is due on the path.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        now: Duration,
        rng: &mut SmallRng,
        serves: bool,
        workload: bool,
        leased: bool,
        path_up: bool,
        delay: impl Fn(&mut SmallRng) -> Duration,
    ) -> Result<(), String> {
        let both = self.primary.is_some() && self.mirror.is_some();
        if self.path_up && !(path_up && both) {
            self.fail_path();
        }
        if !self.path_up && path_up && both {
            self.path_up = true;
            self.primary.as_mut().expect("primary").handle_link_up();
        }
        if self.primary.is_none() {
            return Ok(());
        }
        let t = self.base + now;
        self.last = t;
        if serves && !self.recovered {
            self.recover();
            if self.died(self.primary_node) {
                return Ok(());
            }
        }
        let serving = serves && workload;
        if serving && rng.gen_bool(0.3) {
            let blocks = rng.gen_range(1..=4u64);
            let first = rng.gen_range(0..=SPACE - blocks);
            let version = self.versions + 1;
            let data: Vec<u8> = (first..first + blocks)
                .flat_map(|b| block_bytes(version, b))
                .collect();
            let p = self.primary.as_mut().expect("primary");
            match p.handle_host_write(t, 0, first, &data) {
                Ok(r) => {
                    self.versions = version;
                    self.counts.writes += 1;
                    self.inflight.insert(
                        r,
                        Issued {
                            first,
                            blocks,
                            version,
                        },
                    );
                    for b in first..first + blocks {
                        self.issued.insert(b, version);
                    }
                }
                Err(WriteBackError::Atomic(
                    AtomicError::RangeBusy { .. }
                    | AtomicError::NoFreeBuffers { .. }
                    | AtomicError::NoFreeRie { .. },
                )) => {}
                Err(e) => panic!("host write: {e}"),
            }
        }
        // A node that died inside a write sends nothing more.
        if self.died(0) || self.died(1) {
            return Ok(());
        }
        if serving && leased && self.recovered && rng.gen_bool(0.03) {
            self.destage(rng)?;
        }
        if self.died(0) || self.died(1) {
            return Ok(());
        }
        let p = self.primary.as_mut().expect("primary");
        p.handle_resync(t).expect("resync");
        if self.died(0) || self.died(1) {
            return Ok(());
        }
        self.pump(now, rng, &delay);
        if !self.path_up {
            return Ok(());
        }
        loop {
            let due = |q: Option<Duration>| q.is_some_and(|at| at <= now);
            if due(self.to_mirror.front().map(|x| x.0)) {
                let (_, bytes) = self.to_mirror.pop_front().expect("due");
                let m = Message::decode(&bytes).expect("decode");
                self.survivor.saw_partner(self.epoch);
                let taken = self.survivor.partner_table_taken();
                let mirror = self.mirror.as_mut().expect("mirror");
                mirror.set_partner_table_taken(taken);
                mirror.handle_message(&m).expect("mirror handles");
            } else if due(self.transfers.front().map(|x| x.0)) {
                let (_, request, inc, ranges) = self.transfers.pop_front().expect("due");
                self.land(&ranges, false);
                self.primary
                    .as_mut()
                    .expect("primary")
                    .handle_data_written(request, inc);
            } else if due(self.to_primary.front().map(|x| x.0)) {
                let (_, bytes) = self.to_primary.pop_front().expect("due");
                let m = Message::decode(&bytes).expect("decode");
                let p = self.primary.as_mut().expect("primary");
                p.handle_message(t, &m).expect("primary handles");
            } else {
                break;
            }
            if self.died(0) || self.died(1) {
                return Ok(());
            }
            self.pump(now, rng, &delay);
        }
        Ok(())
    }

    /// The storage service destages part of a snapshot of the primary's dirty blocks: each
    /// chosen block goes to disk, then the primary is told (it frees those not written again).
    fn destage(&mut self, rng: &mut SmallRng) -> Result<(), String> {
        let p = self.primary.as_mut().expect("primary");
        let snapshot = p.dirty_blocks();
        let mut chosen = Vec::new();
        let mut writes = Vec::new();
        for d in snapshot {
            if !rng.gen_bool(0.5) {
                continue;
            }
            let v = u64::from_le_bytes(d.data[..8].try_into().expect("8 bytes"));
            assert_eq!(
                d.data,
                block_bytes(v, d.at.block),
                "write-back of node {}: destaged block {} torn",
                self.primary_node,
                d.at.block
            );
            writes.push((d.at.block, v));
            chosen.push(d.at);
        }
        for (block, v) in writes {
            self.write_disk(block, v, "a destage")?;
        }
        let p = self.primary.as_mut().expect("primary");
        let freed = p.handle_destaged(&chosen).expect("destaged");
        self.counts.destaged += freed as u64;
        Ok(())
    }

    /// Resyncs, resync blocks and Held answers of the running primary (those of crashed ones
    /// are in the counts).
    pub fn resync_stats(&self) -> (u64, u64, u64) {
        self.primary.as_ref().map_or((0, 0, 0), |p| {
            let s = p.stats();
            (s.resyncs, s.resync_blocks, s.held)
        })
    }

    /// Nothing in progress or in flight, path up.
    pub fn idle(&self) -> bool {
        self.path_up
            && self.primary.as_ref().is_some_and(|p| p.pending() == 0)
            && self.to_mirror.is_empty()
            && self.to_primary.is_empty()
            && self.transfers.is_empty()
    }
}

fn next_at(q: &VecDeque<(Duration, Vec<u8>)>, now: Duration, d: Duration) -> Duration {
    q.back().map_or(now, |x| x.0).max(now + d)
}
