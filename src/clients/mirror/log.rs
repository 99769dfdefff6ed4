//! The shadow log writer (F5.1, F5.2): a sans-IO state machine that appends records to a log
//! in local NVRAM and tells its driver which byte ranges to copy, by RDMA WRITE at the same
//! offsets, into the partner's mirror region. The writer lays out both images (mirror memory
//! linked to primary memory): the partner's CPU takes no part in the data path, and reads the
//! region only after a takeover, with [`replay`](super::log_replay::replay).
//!
//! No clock, thread or socket: the driver calls [`ShadowLog::poll_mirror_write`] and posts
//! each range it returns, reports completions with [`ShadowLog::handle_mirror_complete`],
//! calls [`ShadowLog::rewind_unacknowledged`] when the link fails (and then re-posts what
//! `poll_mirror_write` returns again, on the surviving link), and answers the callers whose
//! appends [`ShadowLog::poll_acknowledged`] returns: those records are durable in local NVRAM
//! and complete in the partner's region.
//!
//! The layout is in [`log_format`](super::log_format).
//!
//! # Rules that keep every crash point recoverable
//!
//! The mirror holds, after a crash or a link failure, every completed write plus any part of
//! the writes that were in flight (a failing link may place them partly, and in any order).
//! The writer keeps these rules:
//!
//! 1. **Space reclaim.** Data-area space before a checkpoint becomes reusable only after the
//!    write of that checkpoint's slot completed on the mirror, and only once every write of
//!    the records before it completed too. Until then a survivor might replay from the
//!    previous checkpoint, over those bytes. The writer never overwrites a record that is not
//!    checkpointed.
//! 2. **One checkpoint write in flight.** A checkpoint slot write is handed out only when no
//!    other checkpoint write is posted and not completed (the writes behind it wait). So at
//!    most one slot of the mirror can be torn at any time (even after a link failure left
//!    writes of the old link half done), and the other holds a completed checkpoint no older
//!    than the one space was reclaimed for.
//! 3. **Stable bytes.** Local bytes of a posted, not yet completed write never change, so the
//!    RDMA WRITE reads the bytes the writer meant whenever it reads them, and re-sending after
//!    a rewind writes the same bytes again. A checkpoint asked for while the latest checkpoint
//!    write is still queued (not posted) updates that write's slot in place instead of queueing
//!    another.
//! 4. **Reopening.** A writer made by [`ShadowLog::open`] does not know which mirror slot is
//!    good. It re-sends the older valid local slot, then the newer one, byte for byte as the
//!    mirror holds or was receiving them, and touches neither (nor reclaims any space, nor
//!    vouches for any checkpoint) until the newer one completed.
//!
//! A checkpoint becomes the one a survivor replays from only when its write completed
//! ([`ShadowLog::checkpointed`]); records between that checkpoint and a later one not yet
//! mirrored may be replayed again, so consumers should recognise work they already did (the
//! replay says which checkpoint it started from).

use super::error::{LogError, NvramError};
use super::log_format::{
    decode_checkpoint, decode_superblock, encode_checkpoint, encode_record_header,
    encode_superblock, max_payload, record_size, CheckpointSlot, Superblock, CHECKPOINT_SLOT_LEN,
    CHECKPOINT_SLOT_OFFSETS, DATA_OFFSET, MIN_IMAGE_LEN, RECORD_ALIGN, RECORD_FLAG_WRAP,
    RECORD_HEADER_LEN, SUPERBLOCK_LEN,
};
use super::log_replay::{replay_from_scan, scan, LogPosition, Replay};
use super::nvram::NvramBacking;
use std::collections::VecDeque;

/// A byte range of the local image to copy to the same offset of the partner's mirror region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorWrite {
    /// Consecutive from 1; completions are reported by id.
    pub id: u64,
    /// Offset in both images.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Counters and levels of a [`ShadowLog`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Generation of the log.
    pub generation: u64,
    /// Length of the data area.
    pub data_len: usize,
    /// Data-area bytes not reusable yet (records not reclaimed, wrap gaps).
    pub used_bytes: u64,
    /// Data-area bytes free for appends.
    pub free_bytes: u64,
    /// Sequence number of the last record appended (0: none).
    pub appended: u64,
    /// Records appended and not yet reclaimed.
    pub live_records: usize,
    /// Highest sequence number durable locally and on the mirror.
    pub acknowledged: u64,
    /// `through` of the latest checkpoint asked for.
    pub checkpoint_requested: u64,
    /// `through` of the latest checkpoint whose slot write completed on the mirror.
    pub checkpoint_mirrored: u64,
    /// Mirror writes queued and not handed out yet.
    pub writes_queued: usize,
    /// Mirror writes handed out and not completed.
    pub writes_in_flight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    /// Superblock, or data ranges re-sent after an open.
    Plain,
    /// A checkpoint slot.
    Checkpoint { slot: usize },
}

#[derive(Clone, Copy, Debug)]
struct QueuedWrite {
    write: MirrorWrite,
    kind: WriteKind,
}

/// What a checkpoint slot holds locally. `pos` is the logical position (see [`ShadowLog`])
/// where the scan for `through + 1` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CheckpointState {
    number: u64,
    through: u64,
    pos: u64,
}

/// A record appended and not yet reclaimed.
#[derive(Clone, Copy, Debug)]
struct LiveRecord {
    seq: u64,
    /// Where its append began (its wrap marker or wrap gap, if any).
    start: u64,
    /// Where its header is.
    pos: u64,
    /// Id of the last mirror write carrying it.
    last_write: u64,
}

/// The writer of a shadow log in the local NVRAM `B`, mirrored by its driver.
///
/// Positions in the data area are logical byte counts that only grow; the data offset of a
/// logical position is that position modulo the area's length (a wrap gap is counted, so a
/// record after a wrap starts at a multiple of the length).
pub struct ShadowLog<B: NvramBacking> {
    backing: B,
    data_offset: usize,
    data_len: usize,
    generation: u64,
    next_seq: u64,
    /// Logical position of the next append.
    head: u64,
    records: VecDeque<LiveRecord>,
    /// Mirror writes not completed, in id order; the first `posted` were handed out.
    writes: VecDeque<QueuedWrite>,
    posted: usize,
    next_write_id: u64,
    /// Highest id completed.
    completed: u64,
    /// The checkpoint write handed out and not completed.
    checkpoint_in_flight: Option<u64>,
    /// What each local slot holds.
    slots: [CheckpointState; 2],
    /// The slot of the latest checkpoint.
    latest_slot: usize,
    /// The write of the latest checkpoint, until it completes.
    latest_checkpoint_write: Option<u64>,
    /// The latest checkpoint whose slot write completed (space before `pos` is reusable).
    mirrored: CheckpointState,
    /// `through` of the latest checkpoint asked for.
    requested: u64,
    /// `through` of the latest checkpoint written to a local slot.
    written: u64,
    /// After an open: the re-sent write of the checkpoint in force, until it completes.
    resent_checkpoint: Option<u64>,
    durable: u64,
    reported: u64,
}

impl<B: NvramBacking> std::fmt::Debug for ShadowLog<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowLog")
            .field("generation", &self.generation)
            .field("next_seq", &self.next_seq)
            .field("head", &self.head)
            .field("mirrored", &self.mirrored)
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

impl<B: NvramBacking> ShadowLog<B> {
    /// Formats a fresh log of `generation` in `backing` (the data area is all of it after the
    /// 192 bytes of superblock and slots) and queues the superblock and checkpoint 0 as
    /// mirror writes. `generation` must be above that of any log the backing (or the
    /// partner's region) held before; a log of the same or a newer generation in the backing
    /// is refused.
    pub fn format(mut backing: B, generation: u64) -> Result<Self, LogError> {
        let size = backing.len();
        if size < MIN_IMAGE_LEN {
            return Err(LogError::FormatTooSmall {
                size,
                min: MIN_IMAGE_LEN,
            });
        }
        if let Ok(existing) = decode_superblock(backing.bytes()) {
            if existing.generation >= generation {
                return Err(LogError::FormatStaleGeneration {
                    existing: existing.generation,
                    requested: generation,
                });
            }
        }
        let sb = Superblock {
            total_len: size,
            data_offset: DATA_OFFSET,
            data_len: (size - DATA_OFFSET) & !(RECORD_ALIGN - 1),
            generation,
        };
        write_persist(&mut backing, 0, &encode_superblock(&sb))?;
        let first = CheckpointState {
            number: 0,
            through: 0,
            pos: 0,
        };
        let mut log = ShadowLog::empty(backing, &sb, first, 0);
        log.write_slot(0, first)?;
        log.queue(0, SUPERBLOCK_LEN, WriteKind::Plain);
        let id = log.queue(
            CHECKPOINT_SLOT_OFFSETS[0],
            CHECKPOINT_SLOT_LEN,
            WriteKind::Checkpoint { slot: 0 },
        );
        log.latest_checkpoint_write = Some(id);
        Ok(log)
    }

    /// Opens the log a previous writer left in `backing` (after a restart of this node) and
    /// returns what it holds after its checkpoint. The writer continues the same generation
    /// after the last good record (a torn tail is overwritten). The superblock, both valid
    /// checkpoint slots (the older first) and the records after the checkpoint in force are
    /// queued again as mirror writes (the partner may hold only part of them); space is
    /// reclaimed again once the checkpoint write completed, so appends may report
    /// [`LogError::Full`] until then.
    pub fn open(backing: B) -> Result<(Self, Replay), LogError> {
        let found = scan(backing.bytes()).map_err(LogError::Open)?;
        let replayed = replay_from_scan(backing.bytes(), &found, None);
        let sb = found.superblock;
        let cp = found.checkpoint;
        let lap = sb.data_len as u64;
        // Two laps of room below, so `head - lap` stays positive.
        let cp_pos = 2 * lap + cp.next_offset as u64;
        let state = CheckpointState {
            number: cp.number,
            through: cp.through,
            pos: cp_pos,
        };
        let head = cp_pos + found.end;
        // The other slot, if it is valid locally, may be the one whose write was in flight
        // when the previous writer stopped (its newer checkpoint was not posted yet): it is
        // re-sent first, and the newer slot only once that completed (rule 2). Re-sending
        // it cannot tear a good mirror slot: the mirror holds these bytes or was receiving
        // them. An invalid local slot was being written when the writer stopped and was
        // never sent; it is left alone.
        let other = 1 - cp.slot;
        let older = decode_checkpoint(backing.bytes(), &sb, other).filter(|o| o.number < cp.number);
        // Nothing is reusable until the checkpoint is complete on the mirror again, and the
        // writer vouches for no checkpoint before a re-sent slot completed (either may be
        // the one that was torn).
        let barrier = CheckpointState {
            number: 0,
            through: 0,
            pos: head - lap,
        };
        let mut log = ShadowLog::empty(backing, &sb, barrier, cp.through);
        // Completing the older slot's write vouches for it but leaves the barrier in place.
        log.slots = [barrier; 2];
        if let Some(o) = older {
            log.slots[other] = CheckpointState {
                number: o.number,
                through: o.through.min(cp.through),
                pos: barrier.pos,
            };
        }
        log.slots[cp.slot] = state;
        log.latest_slot = cp.slot;
        log.head = head;
        log.queue(0, SUPERBLOCK_LEN, WriteKind::Plain);
        if older.is_some() {
            log.queue(
                CHECKPOINT_SLOT_OFFSETS[other],
                CHECKPOINT_SLOT_LEN,
                WriteKind::Checkpoint { slot: other },
            );
        }
        let id = log.queue(
            CHECKPOINT_SLOT_OFFSETS[cp.slot],
            CHECKPOINT_SLOT_LEN,
            WriteKind::Checkpoint { slot: cp.slot },
        );
        log.latest_checkpoint_write = Some(id);
        log.resent_checkpoint = Some(id);
        let mut last_write = id;
        let mut from = cp_pos;
        while from < head {
            let lap_end = (from / lap + 1) * lap;
            let to = head.min(lap_end);
            last_write = log.queue(
                sb.data_offset + (from % lap) as usize,
                (to - from) as usize,
                WriteKind::Plain,
            );
            from = to;
        }
        for r in &found.records {
            log.records.push_back(LiveRecord {
                seq: r.seq,
                start: cp_pos + r.start,
                pos: cp_pos + r.pos,
                last_write,
            });
        }
        if let Some(last) = found.records.last() {
            log.next_seq = last.seq.saturating_add(1);
            log.reported = last.seq;
        }
        Ok((log, replayed))
    }

    fn empty(backing: B, sb: &Superblock, mirrored: CheckpointState, through: u64) -> Self {
        ShadowLog {
            backing,
            data_offset: sb.data_offset,
            data_len: sb.data_len,
            generation: sb.generation,
            next_seq: through.saturating_add(1),
            head: mirrored.pos,
            records: VecDeque::new(),
            writes: VecDeque::new(),
            posted: 0,
            next_write_id: 1,
            completed: 0,
            checkpoint_in_flight: None,
            slots: [mirrored; 2],
            latest_slot: 0,
            latest_checkpoint_write: None,
            mirrored,
            requested: through,
            written: through,
            resent_checkpoint: None,
            durable: through,
            reported: through,
        }
    }

    /// Appends a record: writes it (and a wrap marker before it, if it does not fit before
    /// the end of the data area) into the local NVRAM, persists it, and queues its ranges as
    /// mirror writes. It may be acknowledged to the caller once [`poll_acknowledged`]
    /// returns its position.
    ///
    /// [`poll_acknowledged`]: ShadowLog::poll_acknowledged
    pub fn append(&mut self, payload: &[u8]) -> Result<LogPosition, LogError> {
        if self.next_seq == u64::MAX {
            return Err(LogError::SequenceExhausted {
                generation: self.generation,
            });
        }
        self.write_requested_checkpoint()?;
        let max = max_payload(self.data_len);
        if payload.len() > max {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        let size = record_size(payload.len()).unwrap_or(usize::MAX) as u64;
        let lap = self.data_len as u64;
        let start = self.head;
        let room = lap - start % lap;
        let marker = room >= RECORD_HEADER_LEN as u64 && size > room;
        let pos = if size > room { start + room } else { start };
        let end = pos + size;
        let tail = self.tail();
        if end - tail > lap {
            return Err(LogError::Full {
                needed: end - start,
                free: lap - (start - tail),
            });
        }
        let seq = self.next_seq;
        // Both local writes first: nothing is queued if either fails.
        if marker {
            let header = encode_record_header(RECORD_FLAG_WRAP, self.generation, seq, &[]);
            self.write_record(start, &header, &[])?;
        }
        let header = encode_record_header(0, self.generation, seq, payload);
        self.write_record(pos, &header, payload)?;
        if marker {
            self.queue(self.data_at(start), RECORD_HEADER_LEN, WriteKind::Plain);
        }
        let last_write = self.queue(self.data_at(pos), size as usize, WriteKind::Plain);
        self.records.push_back(LiveRecord {
            seq,
            start,
            pos,
            last_write,
        });
        self.next_seq += 1;
        self.head = end;
        Ok(LogPosition {
            generation: self.generation,
            seq,
        })
    }

    /// Marks every record up to `through` consumed: writes the next checkpoint slot locally
    /// (persisted) and queues it as a mirror write, or, if the latest checkpoint write is
    /// still queued, updates that one in place. A position at or before the latest checkpoint
    /// asked for changes nothing.
    ///
    /// A writer made by [`open`](ShadowLog::open) leaves the slots alone until its re-sent
    /// checkpoint completed on the mirror (it does not know which mirror slot is good before
    /// that); a checkpoint asked for in between is written when that completion is handled.
    pub fn checkpoint(&mut self, through: LogPosition) -> Result<(), LogError> {
        if through.generation != self.generation || through.seq >= self.next_seq {
            return Err(LogError::Checkpoint {
                generation: through.generation,
                seq: through.seq,
                log_generation: self.generation,
                appended: self.next_seq - 1,
            });
        }
        self.requested = self.requested.max(through.seq);
        self.write_requested_checkpoint()
    }

    /// Writes the checkpoint asked for, if it is not written yet and the slots may be
    /// touched.
    fn write_requested_checkpoint(&mut self) -> Result<(), LogError> {
        if self.requested <= self.written || self.resent_checkpoint.is_some() {
            return Ok(());
        }
        let through = self.requested;
        let next = through.saturating_add(1);
        // Records after the latest checkpoint written are all live, so `next` is found.
        let pos = match self.records.front() {
            Some(front) if next < self.next_seq => next
                .checked_sub(front.seq)
                .and_then(|i| self.records.get(i as usize))
                .map_or(self.head, |r| r.pos),
            _ => self.head,
        };
        let first_unposted = self.writes.get(self.posted).map(|q| q.write.id);
        let queued = match (self.latest_checkpoint_write, first_unposted) {
            (Some(id), Some(first)) => id >= first,
            _ => false,
        };
        let (slot, number) = if queued {
            (self.latest_slot, self.slots[self.latest_slot].number)
        } else {
            let number = self.slots[self.latest_slot].number.checked_add(1).ok_or(
                LogError::CheckpointsExhausted {
                    generation: self.generation(),
                },
            )?;
            ((number % 2) as usize, number)
        };
        self.write_slot(
            slot,
            CheckpointState {
                number,
                through,
                pos,
            },
        )?;
        self.latest_slot = slot;
        self.written = through;
        if !queued {
            let id = self.queue(
                CHECKPOINT_SLOT_OFFSETS[slot],
                CHECKPOINT_SLOT_LEN,
                WriteKind::Checkpoint { slot },
            );
            self.latest_checkpoint_write = Some(id);
        }
        Ok(())
    }

    /// The next range to post, in order; each is returned once (until a rewind). `None` when
    /// nothing is queued, or when the next write is a checkpoint and another checkpoint write
    /// is still in flight (rule 2 of the module docs).
    pub fn poll_mirror_write(&mut self) -> Option<MirrorWrite> {
        let q = *self.writes.get(self.posted)?;
        if let WriteKind::Checkpoint { .. } = q.kind {
            if self.checkpoint_in_flight.is_some() {
                return None;
            }
            self.checkpoint_in_flight = Some(q.write.id);
        }
        self.posted += 1;
        Some(q.write)
    }

    /// Mirror write `id` completed on the partner, and with it every earlier one. Ids never
    /// handed out, or already completed, are ignored. May write a deferred checkpoint slot
    /// (see [`checkpoint`](ShadowLog::checkpoint)).
    pub fn handle_mirror_complete(&mut self, id: u64) {
        let Some(last_posted) = self
            .posted
            .checked_sub(1)
            .and_then(|i| self.writes.get(i))
            .map(|q| q.write.id)
        else {
            return;
        };
        let id = id.min(last_posted);
        while let Some(q) = self.writes.front().copied() {
            if q.write.id > id {
                break;
            }
            self.writes.pop_front();
            self.posted -= 1;
            self.completed = q.write.id;
            if let WriteKind::Checkpoint { slot } = q.kind {
                let state = self.slots[slot];
                if state.through >= self.mirrored.through {
                    self.mirrored = state;
                }
                if self.checkpoint_in_flight == Some(q.write.id) {
                    self.checkpoint_in_flight = None;
                }
                if self.latest_checkpoint_write == Some(q.write.id) {
                    self.latest_checkpoint_write = None;
                }
                if self.resent_checkpoint == Some(q.write.id) {
                    self.resent_checkpoint = None;
                }
            }
        }
        if let Some(front) = self.records.front() {
            let mut i = (self.durable + 1).saturating_sub(front.seq) as usize;
            while let Some(r) = self.records.get(i) {
                if r.last_write > self.completed {
                    break;
                }
                self.durable = r.seq;
                i += 1;
            }
        }
        while let Some(front) = self.records.front() {
            if front.seq > self.mirrored.through || front.last_write > self.completed {
                break;
            }
            self.records.pop_front();
        }
        // A checkpoint asked for while a reopened writer left the slots alone. If writing
        // it fails it stays pending: the next append or checkpoint retries and reports it.
        if let Err(e) = self.write_requested_checkpoint() {
            tracing::warn!(error = %e, "shadow log: deferred checkpoint not written");
        }
    }

    /// The link failed: every mirror write not completed is returned again by
    /// [`poll_mirror_write`](ShadowLog::poll_mirror_write), in the original order, to be
    /// re-sent on the surviving link. Their bytes are read again from the local image, which
    /// has not changed under them, so re-sending is idempotent.
    pub fn rewind_unacknowledged(&mut self) {
        self.posted = 0;
        self.checkpoint_in_flight = None;
    }

    /// The next append, in append order, whose record is durable in local NVRAM and complete
    /// on the mirror: only these may be acknowledged to their callers.
    pub fn poll_acknowledged(&mut self) -> Option<LogPosition> {
        (self.reported < self.durable).then(|| {
            self.reported += 1;
            LogPosition {
                generation: self.generation,
                seq: self.reported,
            }
        })
    }

    /// The last position durable locally and on the mirror, if any.
    pub fn acknowledged(&self) -> Option<LogPosition> {
        (self.durable > 0).then_some(LogPosition {
            generation: self.generation,
            seq: self.durable,
        })
    }

    /// The latest checkpoint complete on the mirror: a survivor replays from it or a newer
    /// one. After [`open`](ShadowLog::open), 0 until a re-sent checkpoint slot completed.
    pub fn checkpointed(&self) -> LogPosition {
        LogPosition {
            generation: self.generation,
            seq: self.mirrored.through,
        }
    }

    /// Generation of the log.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The largest payload [`append`](ShadowLog::append) takes.
    pub fn max_payload(&self) -> usize {
        max_payload(self.data_len)
    }

    /// The local NVRAM.
    pub fn local(&self) -> &B {
        &self.backing
    }

    /// The local NVRAM, to be given to [`ShadowLog::open`] again or dropped.
    pub fn into_local(self) -> B {
        self.backing
    }

    /// The id of the last mirror write queued so far (0: none).
    pub fn last_queued_write(&self) -> u64 {
        self.next_write_id - 1
    }

    /// The highest mirror write id completed (every earlier one completed too).
    pub fn completed_write(&self) -> u64 {
        self.completed
    }

    /// Counters and levels.
    pub fn stats(&self) -> LogStats {
        let used = self.head - self.tail();
        LogStats {
            generation: self.generation,
            data_len: self.data_len,
            used_bytes: used,
            free_bytes: self.data_len as u64 - used,
            appended: self.next_seq - 1,
            live_records: self.records.len(),
            acknowledged: self.durable,
            checkpoint_requested: self.requested,
            checkpoint_mirrored: self.mirrored.through,
            writes_queued: self.writes.len() - self.posted,
            writes_in_flight: self.posted,
        }
    }

    /// Logical position of the next append (tests).
    #[cfg(test)]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Logical position below which the data area may be overwritten (rule 1).
    fn tail(&self) -> u64 {
        match self.records.front() {
            Some(front) if front.last_write > self.completed => front.start.min(self.mirrored.pos),
            _ => self.mirrored.pos,
        }
    }

    fn data_at(&self, pos: u64) -> usize {
        self.data_offset + (pos % self.data_len as u64) as usize
    }

    fn queue(&mut self, offset: usize, len: usize, kind: WriteKind) -> u64 {
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.writes.push_back(QueuedWrite {
            write: MirrorWrite { id, offset, len },
            kind,
        });
        id
    }

    /// Writes a record (header, payload, zero padding) at logical position `pos` and persists
    /// it.
    fn write_record(&mut self, pos: u64, header: &[u8], payload: &[u8]) -> Result<(), LogError> {
        let at = self.data_at(pos);
        let size = record_size(payload.len()).unwrap_or(usize::MAX);
        let bytes_len = self.backing.len();
        let out_of_range = NvramError::OutOfRange {
            offset: at,
            len: size,
            size: bytes_len,
        };
        let dst = self
            .backing
            .bytes_mut()
            .get_mut(at..at.saturating_add(size))
            .ok_or(out_of_range)?;
        let (head, rest) = dst.split_at_mut(RECORD_HEADER_LEN);
        head.copy_from_slice(header);
        let (body, pad) = rest.split_at_mut(payload.len());
        body.copy_from_slice(payload);
        pad.fill(0);
        Ok(self.backing.persist(at, size)?)
    }

    fn write_slot(&mut self, slot: usize, state: CheckpointState) -> Result<(), LogError> {
        let encoded = encode_checkpoint(&CheckpointSlot {
            slot,
            generation: self.generation,
            number: state.number,
            through: state.through,
            next_offset: (state.pos % self.data_len as u64) as usize,
        });
        write_persist(&mut self.backing, CHECKPOINT_SLOT_OFFSETS[slot], &encoded)?;
        self.slots[slot] = state;
        Ok(())
    }
}

fn write_persist<B: NvramBacking>(
    backing: &mut B,
    offset: usize,
    bytes: &[u8],
) -> Result<(), LogError> {
    let size = backing.len();
    let dst = backing
        .bytes_mut()
        .get_mut(offset..offset + bytes.len())
        .ok_or(NvramError::OutOfRange {
            offset,
            len: bytes.len(),
            size,
        })?;
    dst.copy_from_slice(bytes);
    Ok(backing.persist(offset, bytes.len())?)
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
