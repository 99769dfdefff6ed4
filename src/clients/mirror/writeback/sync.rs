//! Destage, resync and takeover of the mirrored write-back (F5.3): the parts of
//! [`WriteBackPrimary`] and [`WriteBackMirror`] that keep the mirror image equal to the
//! primary's dirty blocks over time, sans-IO like the rest of the cores.
//!
//! # Destage (primary → mirror)
//! The storage service takes a snapshot of the dirty blocks ([`WriteBackPrimary::dirty_blocks`],
//! each with its write sequence: the request that wrote its data, 0 for data from before this
//! start), writes them to disk, and reports them ([`WriteBackPrimary::handle_destaged`]). A
//! reported block is freed (one BMAE store,
//! [`AtomicWriteTable::free_block`](crate::clients::mirror::atomic::AtomicWriteTable::free_block)) only if it was
//! not written again since the snapshot (same sequence) and no write holds it; the others are
//! refused and come back in the next snapshot. Each freed block gets a Destaged notice (a
//! [`Message::Destaged`] with a notice id), sent while the mirror is reachable and again on
//! every new link or higher incarnation until a [`Message::DestageAck`] of the incarnation it
//! was sent in comes back. A host write of the block drops its notice: the write replaces the
//! mirror's copy itself (mirrored), or the next resync does (mirror lost).
//!
//! The mirror frees its settled copy of the block on a Destaged of its current incarnation
//! (adopting a higher one, as for an RQR) and acknowledges it; a Destaged of an older
//! incarnation is ignored and answered with a DestageAck of the current one, which tells the
//! primary to send it again.
//!
//! # Copies the mirror keeps in buffers free on the primary (Held)
//! A buffer the primary names as a new buffer in an RQR is free on the primary, but the
//! mirror may still hold a settled copy there: the old copy of a block the primary wrote
//! again without the mirror (a rejected or lost write, a restart), or of a block destaged
//! while its notice was lost (with a primary restart). The mirror cannot tell which: in the
//! first case that copy is the newest one acknowledged as mirrored, and freeing it before the
//! newer data is committed at the mirror would lose it if the primary died. So the mirror
//! never frees it for an RQR: it refuses the RQR with a [`Message::Held`] naming the buffer
//! and the block (the write completes as rejected for a bad buffer). The primary holds the
//! buffer out of allocation and gets rid of the copy: a block dirty here is copied again
//! (resync; the copy's commit at the mirror frees the old copy), any other block gets a
//! Destaged notice. The buffer is given back when a write of the block is mirrored or the
//! notice is acknowledged. A write the mirror rejects (bad buffer, range busy) leaves the
//! mirror without its data: its blocks are copied again. (A block not dirty here is taken to
//! be on disk: true for a primary that reopened its own table. A node that starts with a new,
//! formatted table must not mirror into its partner's image of the old one before that image
//! is taken over.)
//!
//! # Resync (after a start or a partner failure)
//! The primary cannot tell a partner that kept its NVRAM from one that lost it, and it does
//! not know which of its notices and writes the mirror missed, so the set of blocks to
//! re-mirror is every dirty block (recomputed from the table; nothing else is persisted). A
//! resync is due at every start and every partner failure; it runs once the link is up and
//! the partner not failed: each settled dirty block is copied, at most [`RESYNC_WINDOW`] at a
//! time, by an atomic write of its own data into a new buffer (the write sequence stays),
//! which goes through the normal RQR, RTR, data, MDA flow with no host status. A block a host
//! write holds is skipped (that write mirrors its newest data), and a host write of a block
//! being copied waits for the copy (the block is busy). The mirror is in sync when no resync
//! is due or running and the partner is reachable; a partner failure mid-resync starts it
//! over at the next restoration.
//!
//! # Takeover (mirror)
//! [`WriteBackMirror::take_over`]: the partner is gone for good; its writes in progress are
//! aborted (none was acknowledged: the mirror commits only on the DataSent), then every
//! settled block of the image, in block order, goes to the sink and its buffer is freed right
//! after the sink returns. The freed buffers are the persistent marker: a second takeover or a
//! restart hands only what is left. A crash between the sink's return and the free hands that
//! one block again (the sink must take a block twice).
//!
//! # After a takeover (primary)
//! The blocks a takeover handed to the partner's sink are on disk, and the partner served
//! the disks since: it may have written newer data over them. A primary whose table was taken
//! over must never destage or re-mirror those blocks again:
//! [`WriteBackPrimary::discard_taken_over`] frees every block of the table (writes in progress
//! resolved as a crash would, then dropped) before the node serves again. The partner's image
//! freed them at the takeover and takes no write of the taken table from then on (the
//! mailbox's write-back epochs, `giveback/writeback_epochs.rs`). An RQR the primary sent
//! before it discarded may still reach the mirror after its new epoch: the mirror sets it up,
//! and the primary never finishes it. A later RQR that holds one of its blocks or new
//! buffers and is newer aborts it (the primary never has two writes of one block in
//! progress, and numbers its requests in order).

use super::message::BlockRef;
use super::{
    CompletionStatus, Disposition, Message, Notice, PendingWrite, Phase, PrimaryAction, RequestId,
    RequestRef, WriteBackMirror, WriteBackPrimary,
};
use crate::clients::mirror::atomic::{BufferIndex, UnitId, MAX_REQUEST_TAG};
use crate::clients::mirror::error::{AtomicError, WriteBackError};
use crate::clients::mirror::nvram::NvramBacking;
use std::collections::VecDeque;
use std::time::Instant;

/// Resync copies in progress at most.
pub const RESYNC_WINDOW: usize = 16;

/// A dirty block and its write sequence (see `writeback/sync.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirtyRef {
    /// The unit.
    pub unit: UnitId,
    /// The block.
    pub block: u64,
    /// The request that wrote its current data (0: before this start).
    pub seq: RequestId,
}

/// A dirty block of a snapshot, with its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBlock {
    /// The block and its write sequence.
    pub at: DirtyRef,
    /// Its data.
    pub data: Vec<u8>,
}

/// What a takeover did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakeoverReport {
    /// Partner writes in progress aborted.
    pub aborted: usize,
    /// Blocks handed to the sink (and freed).
    pub blocks: usize,
}

impl<B: NvramBacking> WriteBackPrimary<B> {
    /// The partner took this table's blocks over (see `writeback/sync.rs`): every write
    /// in progress is resolved as a crash would resolve it and dropped, every block is freed,
    /// and the notices, holds and resync state go with them. Returns the host writes that
    /// never got their status (queued or in progress: their callers learn they were
    /// discarded) and how many blocks were freed.
    pub fn discard_taken_over(&mut self) -> Result<(Vec<RequestId>, usize), WriteBackError> {
        let mut unreturned: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, w)| !w.resync)
            .map(|(r, _)| *r)
            .collect();
        for a in self.actions.drain(..) {
            if let PrimaryAction::Complete { request, .. } = a {
                unreturned.push(request);
            }
        }
        self.table.recover()?;
        self.pending.clear();
        let mut freed = 0;
        for (unit, block, _) in self.table.valid_blocks() {
            if self.table.free_block(unit, block)?.is_some() {
                freed += 1;
            }
        }
        for (_, buffers) in self.holds.drain() {
            for buffer in buffers {
                self.table.release_buffer(buffer);
            }
        }
        self.gens.clear();
        self.notices.clear();
        self.notice_of.clear();
        self.resync_queue = None;
        self.resyncing.clear();
        self.resync_needed = true;
        self.stats.discarded += freed as u64;
        Ok((unreturned, freed))
    }

    /// The settled dirty blocks, in block order, with their write sequences and data (blocks
    /// of writes in progress come in a later snapshot).
    pub fn dirty_blocks(&self) -> Vec<DirtyBlock> {
        let table = &self.table;
        table
            .valid_blocks()
            .into_iter()
            .filter_map(|(unit, block, buffer)| {
                let data = table.block_data(buffer).ok()?.to_vec();
                let seq = self.seq_of(BlockRef { unit, block });
                Some(DirtyBlock {
                    at: DirtyRef { unit, block, seq },
                    data,
                })
            })
            .collect()
    }

    /// The write sequence of a dirty block (0: written before this start, or not dirty).
    pub fn seq_of(&self, at: BlockRef) -> RequestId {
        self.gens.get(&at).copied().unwrap_or(0)
    }

    /// The storage service wrote these blocks to disk: each one still at its sequence and
    /// held by no write is freed here and at the mirror (a Destaged notice). Returns how many
    /// were freed; the others are counted (stale or busy) and left dirty.
    pub fn handle_destaged(&mut self, blocks: &[DirtyRef]) -> Result<usize, WriteBackError> {
        let mut freed = 0;
        for d in blocks {
            let at = BlockRef {
                unit: d.unit,
                block: d.block,
            };
            if self.table.is_locked(d.unit, d.block) {
                self.stats.destage_busy += 1;
                continue;
            }
            if self.seq_of(at) != d.seq || self.table.free_block(d.unit, d.block)?.is_none() {
                self.stats.destage_stale += 1;
                continue;
            }
            self.gens.remove(&at);
            self.stats.destaged += 1;
            freed += 1;
            self.add_notice(at);
        }
        self.send_notices();
        Ok(freed)
    }

    /// A Destaged notice for `at` (replacing one not acknowledged yet), sent by
    /// [`send_notices`](Self::send_notices).
    fn add_notice(&mut self, at: BlockRef) {
        let id = self.next_notice;
        self.next_notice += 1;
        if let Some(old) = self.notice_of.insert(at, id) {
            self.notices.remove(&old);
        }
        self.notices.insert(id, Notice { at, sent: None });
    }

    /// The mirror keeps its settled copy of `block` in `buffer`, a buffer free here (see the
    /// [module docs](self)): the buffer is held out of allocation, and the copy goes by a
    /// resync copy of the block if it is dirty here (its commit at the mirror frees the old
    /// copy), else by a Destaged notice (the block is on disk).
    pub(super) fn on_held(&mut self, block: BlockRef, buffer: BufferIndex) {
        self.stats.held += 1;
        if self.table.hold_buffer(buffer) {
            self.holds.entry(block).or_default().push(buffer);
        }
        let dirty = self.table.is_locked(block.unit, block.block)
            || self.table.lookup(block.unit, block.block).is_some();
        if dirty {
            self.enqueue_resync(block);
        } else if !self.notice_of.contains_key(&block) {
            self.add_notice(block);
            self.send_notices();
        }
    }

    /// The mirror no longer keeps a copy of `at` in a buffer held for it: the buffers are
    /// given back.
    pub(super) fn release_holds(&mut self, at: BlockRef) {
        for buffer in self.holds.remove(&at).unwrap_or_default() {
            self.table.release_buffer(buffer);
        }
    }

    /// Buffers held out of allocation (the mirror keeps copies there).
    pub fn held_buffers(&self) -> usize {
        self.table.held_buffer_count()
    }

    /// The mirror lacks the current data of `at`: it is copied by the running resync, or
    /// by one started for it (a resync that is due copies every dirty block anyway).
    pub(super) fn enqueue_resync(&mut self, at: BlockRef) {
        if self.resync_needed {
            return;
        }
        let queue = self.resync_queue.get_or_insert_with(VecDeque::new);
        if !queue.contains(&at) {
            queue.push_back(at);
        }
    }

    /// Runs the resync: starts one that is due and copies blocks while the window has room.
    /// The driver calls it on its timer (so also when buffers came free); a running resync
    /// goes on by itself on every MDA or reject.
    pub fn handle_resync(&mut self, now: Instant) -> Result<(), WriteBackError> {
        self.advance_resync(now)
    }

    /// Goes on with a running resync (starts none).
    pub(super) fn continue_resync(&mut self, now: Instant) -> Result<(), WriteBackError> {
        if self.resync_queue.is_some() {
            self.advance_resync(now)?;
        }
        Ok(())
    }

    /// Whether the mirror holds every dirty block: the partner is reachable and no resync
    /// is due or running.
    pub fn in_sync(&self) -> bool {
        self.link_up && !self.partner_failed && !self.resync_needed && self.resync_queue.is_none()
    }

    /// Blocks a resync still has to copy (all dirty blocks while one is due).
    pub fn resync_pending_blocks(&self) -> usize {
        if self.resync_needed {
            return self.table.valid_block_count();
        }
        self.resync_queue
            .as_ref()
            .map_or(0, |q| q.len() + self.resyncing.len())
    }

    /// Destaged notices the mirror has not acknowledged.
    pub fn destage_notices(&self) -> usize {
        self.notices.len()
    }

    /// A host write of `blocks` blocks at `first` by `request`: their sequence, and no
    /// notice for them any more.
    pub(super) fn written(&mut self, unit: UnitId, first: u64, blocks: usize, request: RequestId) {
        for block in first..first + blocks as u64 {
            let at = BlockRef { unit, block };
            self.gens.insert(at, request);
            if let Some(id) = self.notice_of.remove(&at) {
                self.notices.remove(&id);
            }
        }
    }

    /// Sends the notices not sent on the current link and incarnation.
    pub(super) fn send_notices(&mut self) {
        if !self.link_up || self.partner_failed {
            return;
        }
        let incarnation = self.incarnation;
        for (&id, notice) in self.notices.iter_mut().filter(|(_, n)| n.sent.is_none()) {
            notice.sent = Some(incarnation);
            let at = RequestRef {
                request: id,
                rie: 0,
                incarnation,
            };
            self.actions
                .push_back(super::PrimaryAction::Send(Message::Destaged(at, notice.at)));
        }
    }

    /// A DestageAck of an incarnation not below this side's: the notice is done if it was
    /// sent in that incarnation; a higher one means the mirror ignored it (it is sent again).
    pub(super) fn on_destage_ack(&mut self, at: RequestRef) -> Disposition {
        let done = self
            .notices
            .get(&at.request)
            .is_some_and(|n| n.sent == Some(at.incarnation));
        if done {
            if let Some(n) = self.notices.remove(&at.request) {
                self.notice_of.remove(&n.at);
                // The mirror freed its copy of the block wherever it was.
                self.release_holds(n.at);
            }
            self.stats.notices_acked += 1;
        }
        if at.incarnation > self.incarnation {
            self.raise_incarnation(at.incarnation, 0);
        }
        if done {
            Disposition::Accepted
        } else {
            self.count(Disposition::Stale)
        }
    }

    pub(super) fn advance_resync(&mut self, now: Instant) -> Result<(), WriteBackError> {
        if !self.link_up || self.partner_failed {
            return Ok(());
        }
        if self.resync_needed {
            self.resync_needed = false;
            let all: VecDeque<BlockRef> = self
                .table
                .valid_blocks()
                .into_iter()
                .map(|(unit, block, _)| BlockRef { unit, block })
                .collect();
            tracing::info!(blocks = all.len(), "write-back resync started");
            self.resync_queue = Some(all);
        }
        let Some(mut queue) = self.resync_queue.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        while self.resyncing.len() < RESYNC_WINDOW {
            let Some(at) = queue.pop_front() else { break };
            if self.table.is_locked(at.unit, at.block)
                || self.table.lookup(at.unit, at.block).is_none()
            {
                continue; // a host write mirrors it, or it was destaged
            }
            match self.copy_block(now, at) {
                Ok(()) => {}
                Err(WriteBackError::Atomic(
                    AtomicError::NoFreeBuffers { .. } | AtomicError::NoFreeRie { .. },
                )) => {
                    queue.push_front(at);
                    break;
                }
                Err(e) => {
                    queue.push_front(at);
                    result = Err(e);
                    break;
                }
            }
        }
        if queue.is_empty() && self.resyncing.is_empty() {
            self.stats.resyncs += 1;
            tracing::info!(
                resyncs = self.stats.resyncs,
                "write-back resync done: the mirror is in sync"
            );
        } else {
            self.resync_queue = Some(queue);
        }
        result
    }

    /// A resync copy of `at`: an atomic write of its own data into a new buffer, committed
    /// here, then mirrored like a host write.
    fn copy_block(&mut self, now: Instant, at: BlockRef) -> Result<(), WriteBackError> {
        let request = self.next_request;
        if request > MAX_REQUEST_TAG {
            return Err(AtomicError::RequestIdsExhausted.into());
        }
        let (rie, new_buffers) = self.table.begin(request, at.unit, at.block, 1)?;
        self.next_request += 1;
        let old = self
            .table
            .request(rie)
            .and_then(|r| r.old_buffers.first().copied().flatten());
        let Some(old) = old else {
            self.table.finish(rie)?; // nothing to copy: an abort
            return Ok(());
        };
        let geometry = *self.table.geometry();
        let len = geometry.block_size as usize;
        let src = geometry.buffer_offset(old);
        let dst = geometry.buffer_offset(new_buffers[0]);
        self.table
            .backing_mut()
            .bytes_mut()
            .copy_within(src..src + len, dst);
        self.table.commit(rie)?;
        self.pending.insert(
            request,
            PendingWrite {
                rie,
                unit: at.unit,
                first_block: at.block,
                old_blocks: 1,
                new_buffers,
                phase: Phase::Queued,
                rqrs_sent: 0,
                started: now,
                resync: true,
            },
        );
        self.resyncing.insert(at);
        self.send_rqr(request);
        Ok(())
    }

    /// A resync copy ended.
    pub(super) fn resync_done(&mut self, unit: UnitId, block: u64, status: CompletionStatus) {
        self.resyncing.remove(&BlockRef { unit, block });
        match status {
            CompletionStatus::Mirrored => self.stats.resync_blocks += 1,
            CompletionStatus::MirrorLost => {} // the partner failed: a resync is due again
            CompletionStatus::MirrorRejected(reason) => {
                // Queued again if the mirror may take it later (see `end`).
                tracing::warn!(unit, block, ?reason, "the mirror rejected a resync copy");
            }
        }
    }
}

impl<B: NvramBacking> WriteBackMirror<B> {
    /// The partner is gone for good: its writes in progress are aborted, then every settled
    /// block of its image goes to `sink` (in block order) and is freed once the sink
    /// returns (see `writeback/sync.rs`). The first sink error stops the takeover: that
    /// block and the ones after it stay for the next one.
    pub fn take_over(
        &mut self,
        mut sink: impl FnMut(BlockRef, &[u8]) -> Result<(), String>,
    ) -> Result<TakeoverReport, WriteBackError> {
        let aborted = self.handle_partner_failed()?;
        let mut report = TakeoverReport { aborted, blocks: 0 };
        for (unit, block, buffer) in self.table.valid_blocks() {
            sink(BlockRef { unit, block }, self.table.block_data(buffer)?).map_err(|reason| {
                WriteBackError::TakeoverSink {
                    unit,
                    block,
                    reason,
                }
            })?;
            self.table.free_block(unit, block)?;
            report.blocks += 1;
            self.stats.taken_over += 1;
        }
        Ok(report)
    }

    pub(super) fn on_destaged(
        &mut self,
        at: RequestRef,
        block: BlockRef,
    ) -> Result<Disposition, WriteBackError> {
        let current = self.table.incarnation();
        if at.incarnation < current {
            self.reply(Message::DestageAck, at);
            return Ok(self.count(Disposition::Stale));
        }
        if at.incarnation > current {
            self.adopt(at.incarnation)?;
            self.stats.adopted += 1;
        }
        match self.table.free_block(block.unit, block.block) {
            Ok(Some(_)) => self.stats.freed += 1,
            Ok(None) | Err(AtomicError::RangeBusy { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.reply(Message::DestageAck, at);
        Ok(Disposition::Accepted)
    }

    /// The first of `buffers` (new buffers of an RQR) that holds a settled copy here, and the
    /// block it holds.
    pub(super) fn held_copy(&self, buffers: &[u32]) -> Option<(u32, BlockRef)> {
        buffers.iter().find_map(|&buffer| {
            let (unit, block) = self.table.settled_block(buffer)?;
            Some((buffer, BlockRef { unit, block }))
        })
    }
}
