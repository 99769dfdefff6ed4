//! Two machines in memory for the write-back tests: a primary and a mirror exchanging encoded
//! messages through queues; a "RDMA WRITE" copies bytes from the primary's backing into the
//! mirror's. Every check a test relies on is an assertion here or in the caller.

use super::{pattern, reopen, version_of, RecordingNvram};
use interlink::clients::mirror::{
    AtomicError, AtomicWriteTable, CompletionStatus, DataRange, Disposition, Message, NvramBacking,
    PrimaryAction, RequestId, WriteBackError, WriteBackMirror, WriteBackPrimary,
};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Which sides see a path change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathChange {
    /// Both; the old path's messages and transfers are lost (or become stale).
    Both,
    /// Only the primary (it loses what was on the path).
    PrimaryOnly,
    /// Only the mirror (its incarnation moves on; nothing is lost).
    MirrorOnly,
}

/// What becomes of the old path's messages and transfer completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalePolicy {
    /// Never delivered.
    Drop,
    /// Delivered once, in order, right after the path change.
    Late,
    /// Delivered twice, in reverse order, right after the path change.
    Twice,
}

#[derive(Clone, Debug)]
enum Stale {
    ToMirror(Vec<u8>),
    ToPrimary(Vec<u8>),
    Written(RequestId, u64),
}

type Transfer = (RequestId, u64, Vec<DataRange>);

/// The two machines and the wires between them.
pub struct Pair<P: NvramBacking, M: NvramBacking> {
    pub primary: WriteBackPrimary<P>,
    pub mirror: WriteBackMirror<M>,
    pub to_mirror: VecDeque<Vec<u8>>,
    pub to_primary: VecDeque<Vec<u8>>,
    transfers: VecDeque<Transfer>,
    stale: Vec<Stale>,
    /// Completions, each exactly once.
    pub done: HashMap<RequestId, CompletionStatus>,
    /// The version each block must end with (the last write taken for it).
    expected: HashMap<(u16, u64), u64>,
    /// The last version written.
    pub versions: u64,
    pub now: Instant,
    /// Steps a scripted run took.
    pub steps: usize,
    link_down: bool,
}

impl<P: NvramBacking, M: NvramBacking> Pair<P, M> {
    pub fn new(primary: AtomicWriteTable<P>, mirror: AtomicWriteTable<M>) -> Pair<P, M> {
        Pair {
            primary: WriteBackPrimary::new(primary),
            mirror: WriteBackMirror::new(mirror).unwrap(),
            to_mirror: VecDeque::new(),
            to_primary: VecDeque::new(),
            transfers: VecDeque::new(),
            stale: Vec::new(),
            done: HashMap::new(),
            expected: HashMap::new(),
            versions: 1_000,
            now: Instant::now(),
            steps: 0,
            link_down: true,
        }
    }

    pub fn up(&mut self) {
        self.link_down = false;
        self.primary.handle_link_up();
        self.pump();
    }

    /// A host write of version `v` (returned with the request id).
    pub fn host_write(
        &mut self,
        unit: u16,
        first: u64,
        blocks: usize,
    ) -> Result<(RequestId, u64), WriteBackError> {
        self.versions += 1;
        let v = self.versions;
        let mut data = Vec::with_capacity(blocks * super::BS);
        for k in 0..blocks as u64 {
            data.extend_from_slice(&pattern(v, unit, first + k));
        }
        let request = self
            .primary
            .handle_host_write(self.now, unit, first, &data)?;
        for k in 0..blocks as u64 {
            self.expected.insert((unit, first + k), v);
        }
        self.pump();
        Ok((request, v))
    }

    pub fn pump(&mut self) {
        while let Some(action) = self.primary.poll_action() {
            match action {
                PrimaryAction::Send(m) => self.to_mirror.push_back(m.to_bytes().unwrap()),
                PrimaryAction::WriteData {
                    request,
                    incarnation,
                    ranges,
                } => self.transfers.push_back((request, incarnation, ranges)),
                PrimaryAction::Complete {
                    request, status, ..
                } => {
                    assert!(
                        self.done.insert(request, status).is_none(),
                        "request {request} completed twice"
                    );
                }
            }
        }
        while let Some(m) = self.mirror.poll_send() {
            self.to_primary.push_back(m.to_bytes().unwrap());
        }
    }

    pub fn deliver_to_mirror(&mut self) -> bool {
        let Some(bytes) = self.to_mirror.pop_front() else {
            return false;
        };
        let m = Message::decode(&bytes).unwrap();
        self.mirror.handle_message(&m).unwrap();
        self.pump();
        true
    }

    pub fn deliver_to_primary(&mut self) -> bool {
        let Some(bytes) = self.to_primary.pop_front() else {
            return false;
        };
        let m = Message::decode(&bytes).unwrap();
        self.primary.handle_message(self.now, &m).unwrap();
        self.pump();
        true
    }

    /// Carries out the next transfer: the RDMA WRITEs, then their completion.
    pub fn transfer(&mut self) -> bool {
        let Some((request, incarnation, ranges)) = self.transfers.pop_front() else {
            return false;
        };
        for r in &ranges {
            self.copy(r, r.len);
        }
        self.primary.handle_data_written(request, incarnation);
        self.pump();
        true
    }

    fn copy(&mut self, r: &DataRange, len: usize) {
        let src = self.primary.table().backing().bytes()[r.local_offset..][..len].to_vec();
        self.mirror.table_mut().backing_mut().bytes_mut()[r.remote_offset..][..len]
            .copy_from_slice(&src);
    }

    /// Runs every queue dry (bringing the link up first).
    pub fn settle(&mut self) {
        if self.link_down {
            self.up();
        }
        self.pump();
        for _ in 0..1_000_000 {
            if !(self.deliver_to_mirror() || self.deliver_to_primary() || self.transfer()) {
                return;
            }
        }
        panic!("no quiescence");
    }

    pub fn write_and_settle(&mut self, unit: u16, first: u64, blocks: usize) -> (RequestId, u64) {
        let w = self.host_write(unit, first, blocks).unwrap();
        self.settle();
        assert_eq!(self.done.get(&w.0), Some(&CompletionStatus::Mirrored));
        w
    }

    /// A path change seen by `change`'s sides. What was on the old path becomes stale; a
    /// transfer in progress lands half of each of its writes and its completion is stale.
    pub fn path_change(&mut self, change: PathChange, link_up_now: bool) {
        if change != PathChange::MirrorOnly {
            self.primary.handle_link_down();
            self.link_down = true;
            let mut stale: Vec<Stale> = self.to_mirror.drain(..).map(Stale::ToMirror).collect();
            stale.extend(self.to_primary.drain(..).map(Stale::ToPrimary));
            let transfers: Vec<Transfer> = self.transfers.drain(..).collect();
            for (request, incarnation, ranges) in transfers {
                for r in &ranges {
                    self.copy(r, r.len / 2);
                }
                stale.push(Stale::Written(request, incarnation));
            }
            self.stale.extend(stale);
        }
        if change != PathChange::PrimaryOnly {
            self.mirror.handle_path_changed().unwrap();
        }
        if link_up_now && self.link_down {
            self.up();
        }
        self.pump();
    }

    /// Delivers a stale item: whatever carries an incarnation below the receiver's is never
    /// acted on.
    fn deliver_stale(&mut self, item: Stale) {
        match item {
            Stale::ToMirror(bytes) => {
                let m = Message::decode(&bytes).unwrap();
                let old = m.request_ref().incarnation < self.mirror.incarnation();
                let d = self.mirror.handle_message(&m).unwrap();
                if old && matches!(m, Message::DataSent(_)) {
                    assert_ne!(d, Disposition::Accepted, "stale {m:?} absorbed");
                }
            }
            Stale::ToPrimary(bytes) => {
                let m = Message::decode(&bytes).unwrap();
                let old = m.request_ref().incarnation < self.primary.incarnation();
                let d = self.primary.handle_message(self.now, &m).unwrap();
                if old {
                    assert_eq!(d, Disposition::Stale, "stale {m:?} acted on");
                }
            }
            Stale::Written(request, incarnation) => {
                let old = incarnation < self.primary.incarnation();
                let d = self.primary.handle_data_written(request, incarnation);
                if old {
                    assert_ne!(d, Disposition::Accepted, "stale completion acted on");
                }
            }
        }
        self.pump();
    }

    fn flush_stale(&mut self, policy: StalePolicy) {
        let items = std::mem::take(&mut self.stale);
        match policy {
            StalePolicy::Drop => {}
            StalePolicy::Late => items.into_iter().for_each(|i| self.deliver_stale(i)),
            StalePolicy::Twice => {
                for item in items.into_iter().rev() {
                    self.deliver_stale(item.clone());
                    self.deliver_stale(item);
                }
            }
        }
    }

    /// Every write completed once and mirrored; both sides hold the same metadata, the
    /// expected data, and nothing in progress.
    pub fn check_converged(&self) {
        assert_eq!(self.primary.pending(), 0);
        assert_eq!(self.mirror.table().requests().count(), 0);
        assert_eq!(self.mirror.stats().divergent, 0);
        for (request, status) in &self.done {
            assert_eq!(*status, CompletionStatus::Mirrored, "request {request}");
        }
        for (&(unit, block), &v) in &self.expected {
            assert_eq!(version_of(self.primary.table(), unit, block), Some(v));
            assert_eq!(version_of(self.mirror.table(), unit, block), Some(v));
        }
        let (p, m) = (self.primary.table(), self.mirror.table());
        for buffer in 0..p.geometry().buffers {
            assert_eq!(
                p.buffer_entry(buffer).unwrap(),
                m.buffer_entry(buffer).unwrap()
            );
        }
        assert_eq!(p.free_buffer_count(), m.free_buffer_count());
    }

    /// A fixed workload on a fixed schedule; `inject` puts a path change before one step.
    pub fn scripted(&mut self, inject: Option<(usize, PathChange, StalePolicy)>) {
        let writes = [
            (0u16, 0u64, 4usize),
            (0, 2, 4),
            (1, 0, 16),
            (0, 5, 1),
            (1, 8, 3),
        ];
        let mut next = 0;
        let mut taken = 0;
        self.up();
        loop {
            if let Some((at, change, policy)) = inject {
                if at == self.steps {
                    self.path_change(change, true);
                    self.flush_stale(policy);
                }
            }
            self.steps += 1;
            let want_write = next < writes.len() && self.steps % 4 == 1;
            if want_write && self.try_write(writes[next]) {
                next += 1;
                taken += 1;
                continue;
            }
            if self.deliver_to_mirror() || self.deliver_to_primary() || self.transfer() {
                continue;
            }
            if next < writes.len() {
                assert!(
                    self.try_write(writes[next]),
                    "write refused with nothing in flight"
                );
                next += 1;
                taken += 1;
                continue;
            }
            break;
        }
        self.settle();
        assert_eq!(self.done.len(), taken);
        self.check_converged();
    }

    fn try_write(&mut self, (unit, first, blocks): (u16, u64, usize)) -> bool {
        match self.host_write(unit, first, blocks) {
            Ok(_) => true,
            Err(WriteBackError::Atomic(
                AtomicError::RangeBusy { .. }
                | AtomicError::NoFreeBuffers { .. }
                | AtomicError::NoFreeRie { .. },
            )) => false,
            Err(e) => panic!("host write: {e}"),
        }
    }

    /// A random schedule of `writes` host writes with up to six path changes.
    pub fn random(&mut self, rng: &mut StdRng, writes: usize) {
        let mut left = writes;
        let mut faults = 6;
        let mut taken = 0;
        self.up();
        for _ in 0..5_000 {
            match rng.gen_range(0..100) {
                0..=19 if left > 0 => {
                    let blocks = match rng.gen_range(0..20) {
                        0 => 64,
                        1..=5 => rng.gen_range(5..=16),
                        _ => rng.gen_range(1..=4),
                    };
                    let first = rng.gen_range(0..40);
                    if self.try_write((rng.gen_range(0..2), first, blocks)) {
                        taken += 1;
                        left -= 1;
                    }
                }
                20..=44 => {
                    self.deliver_to_mirror();
                }
                45..=69 => {
                    self.deliver_to_primary();
                }
                70..=84 => {
                    self.transfer();
                }
                85..=89 if faults > 0 => {
                    faults -= 1;
                    let change = match rng.gen_range(0..5) {
                        0 => PathChange::PrimaryOnly,
                        1 => PathChange::MirrorOnly,
                        _ => PathChange::Both,
                    };
                    self.path_change(change, rng.gen_bool(0.5));
                }
                90..=93 if self.link_down => self.up(),
                94..=99 if !self.stale.is_empty() => {
                    let i = rng.gen_range(0..self.stale.len());
                    let item = if rng.gen_bool(0.5) {
                        self.stale.swap_remove(i)
                    } else {
                        self.stale[i].clone()
                    };
                    self.deliver_stale(item);
                }
                _ => {}
            }
            if left == 0 && self.done.len() == taken {
                break;
            }
        }
        self.flush_stale(StalePolicy::Late);
        self.settle();
        assert_eq!(self.done.len(), taken);
        self.check_converged();
    }
}

impl<P: NvramBacking> Pair<P, RecordingNvram> {
    /// Runs the pair until the mirror's durable stores pass `target`, then crashes it there
    /// (what it had not persisted and what it had not sent are lost) and restarts it from its
    /// NVRAM. Returns false if the run ended before.
    pub fn run_until_mirror_store(&mut self, target: usize) -> bool {
        for _ in 0..1_000_000 {
            if let Some(bytes) = self.to_mirror.pop_front() {
                let m = Message::decode(&bytes).unwrap();
                let before = self.mirror.table().backing().stores();
                self.mirror.handle_message(&m).unwrap();
                let after = self.mirror.table().backing().stores();
                if after > before && after >= target {
                    let g = *self.mirror.table().geometry();
                    let image = self.mirror.table().backing().image_at(target);
                    self.mirror = WriteBackMirror::new(reopen(image, g)).unwrap();
                    self.to_mirror.clear();
                    self.to_primary.clear();
                    self.transfers.clear();
                    return true;
                }
                self.pump();
            } else if !(self.deliver_to_primary() || self.transfer()) {
                return false;
            }
        }
        panic!("no quiescence");
    }
}
