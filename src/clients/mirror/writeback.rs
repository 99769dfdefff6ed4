//! Mirrored write-back (F5.3, F5.5; seed 004 Fig. 5, \[0075\]-\[0088\]) as two sans-IO state
//! machines: [`WriteBackPrimary`] on the node that took the host write, [`WriteBackMirror`] on
//! its partner. No clock, socket or thread: the driver feeds `handle_*` inputs, carries out
//! what `poll_*` returns, and moves the [`Message`]s (over the messaging layer) and the data
//! (RDMA WRITE from the primary's data area into the mirror's).
//!
//! Each side keeps an [`AtomicWriteTable`] in its NVRAM with the same geometry: primary
//! buffer `i` is mirrored in mirror buffer `i` and primary RIE `j` in mirror RIE `j` (mirror
//! memory linked to primary memory, \[0054\]; named remote resources, \[0070\]), so the primary
//! names the mirror's resources itself and the partner's CPU allocates nothing.
//!
//! # One write
//! 1. `handle_host_write`: the primary starts an atomic write (RIE + new buffers), copies the
//!    data into its buffers and commits it locally (\[0082\]: the data is valid on the primary
//!    before it is mirrored), then sends [`Message::Rqr`] (request, RIE, unit, blocks, new
//!    buffers).
//! 2. The mirror starts the same atomic write in the same RIE and buffers (its new buffers
//!    Provisional WB, its old ones Provisional WB Not, RIE sub-state Free), remembers that it
//!    set the request up in its current incarnation, and answers [`Message::Rtr`] with that
//!    incarnation.
//! 3. The primary answers an RTR with [`PrimaryAction::WriteData`]: RDMA WRITEs of the new
//!    buffers into the same buffers of the mirror. When the driver reports them complete
//!    (`handle_data_written`) it sends [`Message::DataSent`] with the RTR's incarnation.
//! 4. The mirror, on a DataSent of its current incarnation for a request it set up in that
//!    incarnation, persists the data, commits (one store) and finishes its atomic write, then
//!    answers [`Message::Mda`].
//! 5. The primary, on the MDA, finishes its atomic write and reports
//!    [`PrimaryAction::Complete`] with [`CompletionStatus::Mirrored`]: status to the host only
//!    after the mirror absorbed the data and the local write was committed.
//!
//! # Incarnations and redo (path failover, \[0081\]-\[0087\])
//! Both sides hold a path incarnation: the mirror's is persisted in its table's header; it
//! only grows. The mirror adds one on every path change (`handle_path_changed`) and on every
//! start, and adopts a higher one an RQR carries. The primary adds one on every link loss
//! (`handle_link_down`) and adopts the highest one it sees in a message of the mirror.
//! - A message carrying an incarnation below the receiver's is stale and ignored (RTR, MDA
//!   and reject at the primary; DataSent at the mirror). The mirror answers a stale DataSent
//!   for a request it holds with a fresh RTR (or MDA if absorbed), so a side that missed a
//!   path change catches up.
//! - When the link comes back (or the primary learns a higher incarnation), every request not
//!   yet completed is redone from the RQR, in request order. The mirror answers a repeated RQR
//!   from its RIE: in progress with that request, it sets it up again and sends an RTR of the
//!   current incarnation; released with that request absorbed (the RIE keeps the tag and
//!   outcome of its last request), it sends the MDA again; otherwise it starts the write. An
//!   RQR older than the RIE's request is stale; a newer one means the primary gave up the
//!   old request (partner failure), which is aborted first.
//! - The mirror absorbs only on a DataSent of its current incarnation for a request it set up
//!   in that incarnation, and the primary sends DataSent only for the transfer of the RTR it
//!   is acting on: a data completion of an earlier transfer (earlier incarnation) is ignored.
//!   The driver must tear down a failed path's queue pairs before reporting the path change,
//!   so no RDMA WRITE of it lands later.
//!
//! So a path change at any point ends with every write either completed once (both sides
//! absorbed it) or in progress and redone: the primary completes only on an MDA, and the
//! mirror sends an MDA only after its commit and finish are persisted.
//!
//! # Partner failure
//! `handle_partner_failed` on the primary completes every write in progress with
//! [`CompletionStatus::MirrorLost`]: it is atomically absorbed in the primary's NVRAM (it was
//! committed locally in step 1) but not on the mirror. Later host writes complete the same
//! way, at once, until `handle_partner_restored`. The storage service decides what a lost
//! mirror means for the host (write through to disk, or report degraded). On the mirror it
//! aborts every write in progress (none was acknowledged).
//!
//! A partner that restarted without its NVRAM is a failed one. A mirror that restarted with
//! its NVRAM (its table reopened, so recovered, and a new incarnation) may instead be treated
//! by the primary as a path change: the redone RQRs are answered from its RIEs (absorbed
//! writes get their MDA again, the others are taken again). A restarted primary is a failed
//! partner for its mirror: the mirror's writes in progress belong to requests the primary
//! forgot.
//!
//! # Messages
//! See [`message`]: every message starts with request, RIE and incarnation; an RQR adds the
//! unit, the block range and the new buffers.

pub mod message;
mod sync;

pub use message::{BlockRef, Message, RejectReason, RequestRef, Rqr};
pub use sync::{DirtyBlock, DirtyRef, TakeoverReport, RESYNC_WINDOW};

use super::atomic::{
    AtomicWriteTable, BufferIndex, RequestState, RieIndex, UnitId, MAX_REQUEST_TAG,
};
use super::error::{AtomicError, WriteBackError};
use super::nvram::NvramBacking;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// A write request's id (its tag in both sides' RIEs).
pub type RequestId = u64;

/// What became of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Acted on.
    Accepted,
    /// A repeat of something already acted on (answered again where that helps).
    Duplicate,
    /// From an earlier incarnation or an earlier request of the RIE; ignored.
    Stale,
    /// Names no request this side knows; ignored.
    Unknown,
    /// A message this side never receives (e.g. an MDA at the mirror); ignored.
    Unexpected,
}

/// How a host write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompletionStatus {
    /// Absorbed atomically on both sides.
    Mirrored,
    /// Absorbed atomically in the primary's NVRAM only: the partner failed.
    MirrorLost,
    /// Absorbed atomically in the primary's NVRAM only: the mirror refused it.
    MirrorRejected(RejectReason),
}

/// One RDMA WRITE of a transfer: `len` bytes at `local_offset` of the primary's backing to
/// `remote_offset` of the mirror's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataRange {
    /// Offset in the primary's backing.
    pub local_offset: usize,
    /// Offset in the mirror's backing.
    pub remote_offset: usize,
    /// Bytes.
    pub len: usize,
}

/// Something for the primary's driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryAction {
    /// Send a message to the mirror.
    Send(Message),
    /// RDMA WRITE these ranges, then report `handle_data_written(request, incarnation)`.
    WriteData {
        /// The request.
        request: RequestId,
        /// The transfer's incarnation (the RTR's).
        incarnation: u64,
        /// The writes.
        ranges: Vec<DataRange>,
    },
    /// Give the host its status.
    Complete {
        /// The request.
        request: RequestId,
        /// How it ended.
        status: CompletionStatus,
        /// From `handle_host_write` to the completion.
        latency: Duration,
    },
}

/// Counters of a primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStats {
    /// Host writes taken.
    pub writes: u64,
    /// Completed mirrored.
    pub mirrored: u64,
    /// Completed with the mirror lost.
    pub mirror_lost: u64,
    /// Completed after a reject.
    pub rejected: u64,
    /// RQRs sent again (redo after a path change).
    pub redone: u64,
    /// Data transfers started.
    pub transfers: u64,
    /// Stale inputs ignored.
    pub stale: u64,
    /// Repeated inputs.
    pub duplicates: u64,
    /// Inputs naming no request.
    pub unknown: u64,
    /// Messages of the wrong direction.
    pub unexpected: u64,
    /// Blocks freed by [`WriteBackPrimary::handle_destaged`].
    pub destaged: u64,
    /// Destaged blocks refused: re-written since the snapshot, or not dirty.
    pub destage_stale: u64,
    /// Destaged blocks refused while a write held them.
    pub destage_busy: u64,
    /// Destaged notices acknowledged by the mirror.
    pub notices_acked: u64,
    /// Resyncs completed (every dirty block re-mirrored).
    pub resyncs: u64,
    /// Blocks re-mirrored by resyncs.
    pub resync_blocks: u64,
    /// RQRs the mirror answered with [`Message::Held`] (it keeps a copy in a new buffer).
    pub held: u64,
    /// Blocks discarded because the partner took them over
    /// ([`WriteBackPrimary::discard_taken_over`]).
    pub discarded: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No RQR on the current link yet.
    Queued,
    /// RQR sent; waiting for an RTR (or an MDA).
    AwaitRtr,
    /// Data transfer of this incarnation in progress.
    Writing(u64),
    /// DataSent of this incarnation sent; waiting for the MDA.
    AwaitMda(u64),
}

#[derive(Debug)]
struct PendingWrite {
    rie: RieIndex,
    unit: UnitId,
    first_block: u64,
    old_blocks: u16,
    new_buffers: Vec<BufferIndex>,
    phase: Phase,
    rqrs_sent: u32,
    started: Instant,
    /// A resync copy (no host status).
    resync: bool,
}

/// A Destaged notice not acknowledged yet.
#[derive(Debug)]
struct Notice {
    at: BlockRef,
    /// The incarnation it was last sent in (None: not sent on the current link).
    sent: Option<u64>,
}

/// The primary side of mirrored write-back; see the module docs.
pub struct WriteBackPrimary<B: NvramBacking> {
    table: AtomicWriteTable<B>,
    pending: BTreeMap<RequestId, PendingWrite>,
    actions: VecDeque<PrimaryAction>,
    incarnation: u64,
    link_up: bool,
    partner_failed: bool,
    next_request: RequestId,
    stats: PrimaryStats,
    /// Write sequence of each dirty block: the request that wrote its data (0: written
    /// before this start).
    gens: HashMap<BlockRef, RequestId>,
    /// Destaged notices by id, until the mirror acknowledges them.
    notices: BTreeMap<u64, Notice>,
    notice_of: HashMap<BlockRef, u64>,
    next_notice: u64,
    /// The mirror may miss dirty blocks (start, partner failure): a resync is due.
    resync_needed: bool,
    /// A resync is running: blocks still to copy.
    resync_queue: Option<VecDeque<BlockRef>>,
    /// Blocks of resync copies in progress.
    resyncing: HashSet<BlockRef>,
    /// Buffers kept out of allocation because the mirror keeps a copy of the block there
    /// ([`Message::Held`]), by that block: given back once the block is mirrored again or
    /// its Destaged notice is acknowledged.
    holds: HashMap<BlockRef, Vec<BufferIndex>>,
}

impl<B: NvramBacking> WriteBackPrimary<B> {
    /// A primary over an opened (so recovered) table. Request ids continue after the highest
    /// one the table holds. The link starts down.
    pub fn new(table: AtomicWriteTable<B>) -> WriteBackPrimary<B> {
        WriteBackPrimary {
            next_request: table.max_tag() + 1,
            table,
            pending: BTreeMap::new(),
            actions: VecDeque::new(),
            incarnation: 0,
            link_up: false,
            partner_failed: false,
            stats: PrimaryStats::default(),
            gens: HashMap::new(),
            notices: BTreeMap::new(),
            notice_of: HashMap::new(),
            next_notice: 1,
            resync_needed: true,
            resync_queue: None,
            resyncing: HashSet::new(),
            holds: HashMap::new(),
        }
    }

    /// A host write of `data` (a whole number of blocks, 1..=256 of them) at `first_block` of
    /// `unit`. The data is copied into local NVRAM buffers and committed locally before this
    /// returns; the status comes later as [`PrimaryAction::Complete`]. Fails, with nothing
    /// written, if another write holds one of the blocks ([`AtomicError::RangeBusy`]: retry
    /// after it completes) or buffers or RIEs run out.
    pub fn handle_host_write(
        &mut self,
        now: Instant,
        unit: UnitId,
        first_block: u64,
        data: &[u8],
    ) -> Result<RequestId, WriteBackError> {
        let block_size = self.table.geometry().block_size as usize;
        if data.len() % block_size != 0 {
            return Err(AtomicError::DataLength {
                len: data.len(),
                block_size,
            }
            .into());
        }
        let request = self.next_request;
        if request > MAX_REQUEST_TAG {
            return Err(AtomicError::RequestIdsExhausted.into());
        }
        let blocks = data.len() / block_size;
        let (rie, new_buffers) = self.table.begin(request, unit, first_block, blocks)?;
        self.next_request += 1;
        for (buffer, chunk) in new_buffers.iter().zip(data.chunks_exact(block_size)) {
            self.table.block_data_mut(*buffer)?.copy_from_slice(chunk);
        }
        self.table.commit(rie)?;
        self.stats.writes += 1;
        self.written(unit, first_block, blocks, request);
        if self.partner_failed {
            self.table.finish(rie)?;
            self.complete(request, CompletionStatus::MirrorLost, Duration::ZERO);
            return Ok(request);
        }
        let old_blocks = self
            .table
            .request(rie)
            .map_or(0, |r| r.old_buffers.iter().flatten().count() as u16);
        self.pending.insert(
            request,
            PendingWrite {
                rie,
                unit,
                first_block,
                old_blocks,
                new_buffers,
                phase: Phase::Queued,
                rqrs_sent: 0,
                started: now,
                resync: false,
            },
        );
        if self.link_up {
            self.send_rqr(request);
        }
        Ok(request)
    }

    /// A message from the mirror.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &Message,
    ) -> Result<Disposition, WriteBackError> {
        let at = *message.request_ref();
        if matches!(
            message,
            Message::Rqr(_) | Message::DataSent(_) | Message::Destaged(..)
        ) {
            return Ok(self.count(Disposition::Unexpected));
        }
        if !self.link_up || self.partner_failed || at.incarnation < self.incarnation {
            return Ok(self.count(Disposition::Stale));
        }
        if let Message::DestageAck(_) = message {
            return Ok(self.on_destage_ack(at));
        }
        if at.incarnation > self.incarnation {
            self.raise_incarnation(at.incarnation, at.request);
        }
        let Some(write) = self
            .pending
            .get_mut(&at.request)
            .filter(|w| w.rie == at.rie)
        else {
            return Ok(self.count(Disposition::Unknown));
        };
        match message {
            Message::Rtr(_) => {
                if matches!(write.phase, Phase::Writing(k) | Phase::AwaitMda(k) if k == at.incarnation)
                {
                    return Ok(self.count(Disposition::Duplicate));
                }
                write.phase = Phase::Writing(at.incarnation);
                let ranges = self
                    .table
                    .data_ranges(&write.new_buffers)
                    .into_iter()
                    .map(|(offset, len)| DataRange {
                        local_offset: offset,
                        remote_offset: offset,
                        len,
                    })
                    .collect();
                self.stats.transfers += 1;
                self.actions.push_back(PrimaryAction::WriteData {
                    request: at.request,
                    incarnation: at.incarnation,
                    ranges,
                });
            }
            Message::Mda(_) => {
                self.end(now, at.request, CompletionStatus::Mirrored)?;
                self.continue_resync(now)?;
            }
            Message::Reject(_, reason) => {
                tracing::warn!(request = at.request, ?reason, "mirror rejected a write");
                self.end(now, at.request, CompletionStatus::MirrorRejected(*reason))?;
                self.continue_resync(now)?;
            }
            Message::Held(_, block, buffer) => {
                tracing::info!(
                    request = at.request,
                    buffer,
                    ?block,
                    "the mirror keeps a copy in a new buffer"
                );
                let status = CompletionStatus::MirrorRejected(RejectReason::BadBuffer);
                self.end(now, at.request, status)?;
                self.on_held(*block, *buffer);
                self.continue_resync(now)?;
            }
            Message::Rqr(_)
            | Message::DataSent(_)
            | Message::Destaged(..)
            | Message::DestageAck(_) => {}
        }
        Ok(Disposition::Accepted)
    }

    /// The driver's RDMA WRITEs of the transfer `(request, incarnation)` all completed.
    pub fn handle_data_written(&mut self, request: RequestId, incarnation: u64) -> Disposition {
        if !self.link_up || self.partner_failed {
            return self.count(Disposition::Stale);
        }
        let Some(write) = self.pending.get_mut(&request) else {
            return self.count(Disposition::Unknown);
        };
        match write.phase {
            Phase::Writing(k) if k == incarnation => {
                write.phase = Phase::AwaitMda(k);
                let at = RequestRef {
                    request,
                    rie: write.rie,
                    incarnation,
                };
                self.actions
                    .push_back(PrimaryAction::Send(Message::DataSent(at)));
                Disposition::Accepted
            }
            Phase::AwaitMda(k) if k == incarnation => self.count(Disposition::Duplicate),
            _ => self.count(Disposition::Stale),
        }
    }

    /// The mirror path is gone: nothing is sent until [`handle_link_up`](Self::handle_link_up);
    /// queued sends and transfers are dropped and the incarnation moves on, so anything of
    /// the old path that still arrives is stale.
    pub fn handle_link_down(&mut self) {
        self.link_up = false;
        self.incarnation += 1;
        self.actions
            .retain(|a| matches!(a, PrimaryAction::Complete { .. }));
        for write in self.pending.values_mut() {
            write.phase = Phase::Queued;
        }
    }

    /// A (new) mirror path is ready: every Destaged notice not acknowledged is sent again,
    /// then every write not completed is redone from its RQR, in request order (a resync that
    /// is due starts at the next [`handle_resync`](Self::handle_resync)).
    pub fn handle_link_up(&mut self) {
        self.link_up = true;
        if self.partner_failed {
            return;
        }
        // Notices first: a redone RQR may name a buffer a notice frees at the mirror.
        for notice in self.notices.values_mut() {
            notice.sent = None;
        }
        self.send_notices();
        let requests: Vec<RequestId> = self.pending.keys().copied().collect();
        for request in requests {
            self.send_rqr(request);
        }
    }

    /// The mirror path changed (down and up at once).
    pub fn handle_path_changed(&mut self) {
        self.handle_link_down();
        self.handle_link_up();
    }

    /// The partner failed (or restarted): every write in progress completes with
    /// [`CompletionStatus::MirrorLost`] (it is committed locally), and so do later writes
    /// until [`handle_partner_restored`](Self::handle_partner_restored).
    pub fn handle_partner_failed(&mut self, now: Instant) -> Result<(), WriteBackError> {
        self.partner_failed = true;
        self.resync_needed = true;
        self.resync_queue = None;
        self.actions
            .retain(|a| matches!(a, PrimaryAction::Complete { .. }));
        let requests: Vec<RequestId> = self.pending.keys().copied().collect();
        for request in requests {
            self.end(now, request, CompletionStatus::MirrorLost)?;
        }
        Ok(())
    }

    /// The partner is back as a mirror: writes are mirrored again, and once the link is up
    /// a resync brings its image of every dirty block up to date
    /// ([`handle_resync`](Self::handle_resync)).
    pub fn handle_partner_restored(&mut self) {
        self.partner_failed = false;
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<PrimaryAction> {
        self.actions.pop_front()
    }

    /// The atomic-write table (the primary's data and metadata).
    pub fn table(&self) -> &AtomicWriteTable<B> {
        &self.table
    }

    /// Writes not completed yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The path incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Whether the partner is marked failed.
    pub fn partner_failed(&self) -> bool {
        self.partner_failed
    }

    /// Counters.
    pub fn stats(&self) -> &PrimaryStats {
        &self.stats
    }

    /// The table, giving up the primary.
    pub fn into_table(self) -> AtomicWriteTable<B> {
        self.table
    }

    fn send_rqr(&mut self, request: RequestId) {
        let Some(write) = self.pending.get_mut(&request) else {
            return;
        };
        write.phase = Phase::AwaitRtr;
        if write.rqrs_sent > 0 {
            self.stats.redone += 1;
        }
        write.rqrs_sent += 1;
        let rqr = Rqr {
            at: RequestRef {
                request,
                rie: write.rie,
                incarnation: self.incarnation,
            },
            unit: write.unit,
            first_block: write.first_block,
            old_blocks: write.old_blocks,
            new_buffers: write.new_buffers.clone(),
        };
        self.actions
            .push_back(PrimaryAction::Send(Message::Rqr(rqr)));
    }

    /// The mirror is at a higher incarnation than this side knew: transfers of lower ones
    /// will not be absorbed, so their requests are redone (except `current`, which the
    /// message at hand moves on).
    fn raise_incarnation(&mut self, incarnation: u64, current: RequestId) {
        self.incarnation = incarnation;
        for notice in self.notices.values_mut() {
            notice.sent = notice.sent.filter(|&k| k >= incarnation);
        }
        self.send_notices();
        self.actions.retain(|a| match a {
            PrimaryAction::WriteData { incarnation: k, .. } => *k >= incarnation,
            PrimaryAction::Send(m @ Message::DataSent(_)) => {
                m.request_ref().incarnation >= incarnation
            }
            _ => true,
        });
        let redo: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(r, w)| {
                **r != current
                    && matches!(w.phase, Phase::Writing(k) | Phase::AwaitMda(k) if k < incarnation)
            })
            .map(|(r, _)| *r)
            .collect();
        for request in redo {
            self.send_rqr(request);
        }
    }

    fn end(
        &mut self,
        now: Instant,
        request: RequestId,
        status: CompletionStatus,
    ) -> Result<(), WriteBackError> {
        let Some(write) = self.pending.get(&request) else {
            return Ok(());
        };
        self.table.finish(write.rie)?;
        let latency = now.saturating_duration_since(write.started);
        let Some(write) = self.pending.remove(&request) else {
            return Ok(());
        };
        let blocks =
            (write.first_block..write.first_block + write.new_buffers.len() as u64).map(|block| {
                BlockRef {
                    unit: write.unit,
                    block,
                }
            });
        match status {
            // The mirror replaced its copies of these blocks: buffers held for them are free
            // there now.
            CompletionStatus::Mirrored => blocks.for_each(|at| self.release_holds(at)),
            // The mirror kept its older copies: the blocks are copied again (a bad RIE or range
            // is a geometry mismatch: copies would not fare better).
            CompletionStatus::MirrorRejected(RejectReason::BadBuffer | RejectReason::RangeBusy) => {
                blocks.for_each(|at| self.enqueue_resync(at));
            }
            CompletionStatus::MirrorRejected(_) => {}
            // A resync is due.
            CompletionStatus::MirrorLost => {}
        }
        if write.resync {
            self.resync_done(write.unit, write.first_block, status);
            return Ok(());
        }
        self.complete(request, status, latency);
        Ok(())
    }

    fn complete(&mut self, request: RequestId, status: CompletionStatus, latency: Duration) {
        match status {
            CompletionStatus::Mirrored => self.stats.mirrored += 1,
            CompletionStatus::MirrorLost => self.stats.mirror_lost += 1,
            CompletionStatus::MirrorRejected(_) => self.stats.rejected += 1,
        }
        self.actions.push_back(PrimaryAction::Complete {
            request,
            status,
            latency,
        });
    }

    fn count(&mut self, d: Disposition) -> Disposition {
        match d {
            Disposition::Accepted => {}
            Disposition::Duplicate => self.stats.duplicates += 1,
            Disposition::Stale => self.stats.stale += 1,
            Disposition::Unknown => self.stats.unknown += 1,
            Disposition::Unexpected => self.stats.unexpected += 1,
        }
        d
    }
}

/// Counters of a mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Writes started (RQRs taken).
    pub started: u64,
    /// RTRs sent (set-ups, first or again).
    pub setups: u64,
    /// Writes absorbed (MDAs sent for the first time).
    pub absorbed: u64,
    /// MDAs sent again for an absorbed write.
    pub mda_repeated: u64,
    /// Writes aborted (abandoned by the primary, or partner failure).
    pub aborted: u64,
    /// RQRs rejected.
    pub rejected: u64,
    /// RQRs whose old-block count differs from this side's.
    pub divergent: u64,
    /// Higher incarnations adopted from RQRs.
    pub adopted: u64,
    /// Blocks freed on Destaged notices.
    pub freed: u64,
    /// RQRs answered with [`Message::Held`]: a new buffer holds a settled copy here.
    pub held: u64,
    /// Partner blocks handed over at takeovers.
    pub taken_over: u64,
    /// RQRs dropped: they wrote a table of the partner's this node took over
    /// ([`WriteBackMirror::set_partner_table_taken`]).
    pub refused_taken_over: u64,
    /// Stale inputs ignored.
    pub stale: u64,
    /// Inputs naming no request.
    pub unknown: u64,
    /// Messages of the wrong direction.
    pub unexpected: u64,
}

/// The mirror side of mirrored write-back; see the module docs.
pub struct WriteBackMirror<B: NvramBacking> {
    table: AtomicWriteTable<B>,
    /// Requests in progress set up (RTR sent) in an incarnation: RIE → incarnation (the
    /// seed's MNODE; the rest of its context is in the RIE).
    setups: HashMap<RieIndex, u64>,
    outbox: VecDeque<Message>,
    stats: MirrorStats,
    /// The partner runs a table this node took over: its RQRs are dropped.
    taken: bool,
}

impl<B: NvramBacking> WriteBackMirror<B> {
    /// A mirror over an opened (so recovered) table; a start is a new incarnation (persisted).
    pub fn new(mut table: AtomicWriteTable<B>) -> Result<WriteBackMirror<B>, WriteBackError> {
        table.set_incarnation(table.incarnation() + 1)?;
        Ok(WriteBackMirror {
            table,
            setups: HashMap::new(),
            outbox: VecDeque::new(),
            stats: MirrorStats::default(),
            taken: false,
        })
    }

    /// Whether the partner runs a table this node took over (the mailbox's write-back
    /// epochs: `giveback/writeback_epochs.rs`; the driver sets it before each message). While
    /// it does, every RQR is dropped (counted): a write of that table is late (its node
    /// resumed after the takeover, or has not recovered yet), and a copy of it here would
    /// come back at the next takeover, older than what this node wrote to the disks since.
    pub fn set_partner_table_taken(&mut self, taken: bool) {
        self.taken = taken;
    }

    /// A message from the primary. Errors are NVRAM failures only; a message that does not
    /// fit is ignored (counted) or rejected.
    pub fn handle_message(&mut self, message: &Message) -> Result<Disposition, WriteBackError> {
        match message {
            Message::Rqr(_) if self.taken => {
                self.stats.refused_taken_over += 1;
                Ok(Disposition::Stale)
            }
            Message::Rqr(q) => self.on_rqr(q),
            Message::DataSent(at) => self.on_data_sent(*at),
            Message::Destaged(at, block) => self.on_destaged(*at, *block),
            _ => Ok(self.count(Disposition::Unexpected)),
        }
    }

    /// The mirror path changed: the incarnation moves on (persisted), so set-ups and messages
    /// of the old path are void.
    pub fn handle_path_changed(&mut self) -> Result<(), WriteBackError> {
        self.adopt(self.table.incarnation() + 1)
    }

    /// The partner failed (or restarted): every write in progress is aborted (none was
    /// acknowledged to a host); returns how many.
    pub fn handle_partner_failed(&mut self) -> Result<usize, WriteBackError> {
        let resolved = self.table.recover()?;
        self.stats.aborted += resolved.len() as u64;
        self.setups.clear();
        self.outbox.clear();
        Ok(resolved.len())
    }

    /// Aborts every write in progress here, in another RIE, that an RQR overtook: older than
    /// it and holding one of its blocks or new buffers. The primary has at most one write in
    /// progress per block and numbers its requests in order, so such a write was abandoned
    /// (its RQR arrived after the primary discarded it: a table taken over) and would hold
    /// the blocks and buffers forever.
    fn abort_overtaken(&mut self, q: &Rqr) -> Result<(), WriteBackError> {
        let end = q.first_block + q.new_buffers.len() as u64;
        let overtaken: Vec<RieIndex> = self
            .table
            .requests()
            .filter(|r| {
                let blocks = r.unit == q.unit
                    && r.first_block < end
                    && q.first_block < r.first_block + u64::from(r.blocks);
                let buffers = r
                    .new_buffers
                    .iter()
                    .flatten()
                    .any(|b| q.new_buffers.contains(b));
                r.rie != q.at.rie && r.tag < q.at.request && (blocks || buffers)
            })
            .map(|r| r.rie)
            .collect();
        for rie in overtaken {
            tracing::info!(rie, new = q.at.request, "overtaken write aborted");
            self.table.finish(rie)?;
            self.setups.remove(&rie);
            self.stats.aborted += 1;
        }
        Ok(())
    }

    /// The next message for the primary.
    pub fn poll_send(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// The atomic-write table (the mirror image of the primary's data and metadata).
    pub fn table(&self) -> &AtomicWriteTable<B> {
        &self.table
    }

    /// The table, writable: the primary's RDMA WRITEs land in its backing's data area.
    pub fn table_mut(&mut self) -> &mut AtomicWriteTable<B> {
        &mut self.table
    }

    /// The current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.table.incarnation()
    }

    /// Counters.
    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// The table, giving up the mirror.
    pub fn into_table(self) -> AtomicWriteTable<B> {
        self.table
    }

    fn on_rqr(&mut self, q: &Rqr) -> Result<Disposition, WriteBackError> {
        let at = q.at;
        if at.incarnation > self.table.incarnation() {
            self.adopt(at.incarnation)?;
            self.stats.adopted += 1;
        }
        let Some(word) = self.table.rie_word(at.rie) else {
            self.reply_reject(at, RejectReason::BadRie);
            return Ok(Disposition::Accepted);
        };
        if word.tag > at.request {
            return Ok(self.count(Disposition::Stale));
        }
        if word.tag == at.request {
            if word.in_use {
                self.setup(at);
                return Ok(Disposition::Duplicate);
            }
            if word.state == RequestState::Valid {
                self.stats.mda_repeated += 1;
                self.reply(Message::Mda, at);
                return Ok(Disposition::Duplicate);
            }
            // Aborted here earlier (partner failure, restart): take it again.
        } else if word.in_use {
            // The primary moved on from the request in this RIE: it will never finish.
            tracing::info!(
                rie = at.rie,
                old = word.tag,
                new = at.request,
                "abandoned write aborted"
            );
            self.table.finish(at.rie)?;
            self.setups.remove(&at.rie);
            self.stats.aborted += 1;
        }
        self.abort_overtaken(q)?;
        if let Some((buffer, block)) = self.held_copy(&q.new_buffers) {
            // A copy the primary no longer has there: it may be the only mirrored copy of a
            // block the primary wrote again without the mirror, so it stays.
            tracing::info!(
                request = at.request,
                buffer,
                ?block,
                "RQR names a buffer holding a copy"
            );
            self.stats.held += 1;
            let incarnation = self.table.incarnation();
            self.outbox.push_back(Message::Held(
                RequestRef { incarnation, ..at },
                block,
                buffer,
            ));
            return Ok(Disposition::Accepted);
        }
        let begun = self
            .table
            .begin_at(at.rie, at.request, q.unit, q.first_block, &q.new_buffers);
        let reason = match begun {
            Ok(()) => {
                self.stats.started += 1;
                let mine = self
                    .table
                    .request(at.rie)
                    .map_or(0, |r| r.old_buffers.iter().flatten().count());
                if mine != usize::from(q.old_blocks) {
                    self.stats.divergent += 1;
                }
                self.setup(at);
                return Ok(Disposition::Accepted);
            }
            Err(AtomicError::BadRie { .. }) => RejectReason::BadRie,
            Err(AtomicError::BadBuffer { .. }) => RejectReason::BadBuffer,
            Err(AtomicError::RangeBusy { .. }) => RejectReason::RangeBusy,
            Err(
                AtomicError::BlockCount { .. }
                | AtomicError::BlockAddress { .. }
                | AtomicError::RequestIdsExhausted,
            ) => RejectReason::BadRange,
            Err(e) => return Err(e.into()),
        };
        tracing::warn!(request = at.request, rie = at.rie, ?reason, "RQR rejected");
        self.reply_reject(at, reason);
        Ok(Disposition::Accepted)
    }

    fn on_data_sent(&mut self, at: RequestRef) -> Result<Disposition, WriteBackError> {
        let current = self.table.incarnation();
        let Some(word) = self.table.rie_word(at.rie) else {
            return Ok(self.count(Disposition::Unknown));
        };
        if word.tag != at.request {
            let d = if word.tag > at.request {
                Disposition::Stale
            } else {
                Disposition::Unknown
            };
            return Ok(self.count(d));
        }
        if !word.in_use {
            if word.state == RequestState::Valid {
                // Absorbed; the MDA went missing.
                self.stats.mda_repeated += 1;
                self.reply(Message::Mda, at);
                return Ok(Disposition::Duplicate);
            }
            return Ok(self.count(Disposition::Stale));
        }
        if at.incarnation != current || self.setups.get(&at.rie) != Some(&current) {
            if at.incarnation < current {
                // A transfer of an earlier path: ask for the data again on this one.
                self.setup(at);
            }
            return Ok(self.count(Disposition::Stale));
        }
        self.table.commit(at.rie)?;
        self.table.finish(at.rie)?;
        self.setups.remove(&at.rie);
        self.stats.absorbed += 1;
        self.reply(Message::Mda, at);
        Ok(Disposition::Accepted)
    }

    fn setup(&mut self, at: RequestRef) {
        let current = self.table.incarnation();
        self.setups.insert(at.rie, current);
        self.stats.setups += 1;
        self.reply(Message::Rtr, at);
    }

    fn adopt(&mut self, incarnation: u64) -> Result<(), WriteBackError> {
        self.table.set_incarnation(incarnation)?;
        self.setups.clear();
        self.outbox.clear();
        Ok(())
    }

    fn reply(&mut self, make: fn(RequestRef) -> Message, at: RequestRef) {
        let incarnation = self.table.incarnation();
        self.outbox
            .push_back(make(RequestRef { incarnation, ..at }));
    }

    fn reply_reject(&mut self, at: RequestRef, reason: RejectReason) {
        self.stats.rejected += 1;
        let incarnation = self.table.incarnation();
        self.outbox
            .push_back(Message::Reject(RequestRef { incarnation, ..at }, reason));
    }

    fn count(&mut self, d: Disposition) -> Disposition {
        match d {
            Disposition::Stale => self.stats.stale += 1,
            Disposition::Unknown => self.stats.unknown += 1,
            Disposition::Unexpected => self.stats.unexpected += 1,
            Disposition::Accepted | Disposition::Duplicate => {}
        }
        d
    }
}
