//! [`WriteBackStats`]: the counters of a [`MirroredWriteBack`](super::MirroredWriteBack).

use super::state::Core;
use crate::manager::LinkId;
use serde::{Deserialize, Serialize};

/// Counters and state of a [`MirroredWriteBack`](super::MirroredWriteBack).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteBackStats {
    /// Whether the data connection is up now.
    pub connected: bool,
    /// Its link.
    pub link: Option<LinkId>,
    /// Data connections established.
    pub connections: u64,
    /// Whether the partner is declared failed now.
    pub partner_failed: bool,
    /// Times it was declared failed.
    pub partner_failures: u64,
    /// Times it was restored.
    pub restorations: u64,
    /// The primary's path incarnation.
    pub incarnation: u64,
    /// The mirror's path incarnation.
    pub mirror_incarnation: u64,
    /// Host writes taken.
    pub writes: u64,
    /// Writes in progress.
    pub pending: u64,
    /// Completed mirrored.
    pub mirrored: u64,
    /// Completed with the mirror lost.
    pub mirror_lost: u64,
    /// Completed after the mirror rejected them.
    pub rejected: u64,
    /// RQRs sent again (redo).
    pub redone: u64,
    /// Redo after no progress.
    pub redo_timeouts: u64,
    /// Data transfers started.
    pub transfers: u64,
    /// RDMA WRITEs posted.
    pub data_writes: u64,
    /// Bytes of RDMA WRITEs posted.
    pub data_bytes: u64,
    /// Failed WRITEs (each fails the connection).
    pub write_errors: u64,
    /// Stale inputs the primary ignored.
    pub stale: u64,
    /// Partner writes absorbed by the mirror.
    pub absorbed: u64,
    /// Bytes copied from `wb-mirror` into the mirror table.
    pub absorbed_bytes: u64,
    /// Partner writes aborted by the mirror.
    pub aborted: u64,
    /// RQRs the mirror rejected.
    pub mirror_rejects: u64,
    /// Stale inputs the mirror ignored.
    pub mirror_stale: u64,
    /// Mirror messages held for a data connection.
    pub held: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Undecodable messages.
    pub bad_messages: u64,
    /// NVRAM failures.
    pub nvram_errors: u64,
    /// Free buffers in this node's table.
    pub free_buffers: u64,
    /// Dirty blocks in this node's table (settled).
    pub dirty_blocks: u64,
    /// Blocks of the partner's image (settled).
    pub mirror_blocks: u64,
    /// Whether the partner's image holds every dirty block of this node (partner reachable,
    /// no resync due or running).
    pub in_sync: bool,
    /// Blocks the resync still has to copy (every dirty block while one is due).
    pub resync_pending_blocks: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Blocks copied by resyncs.
    pub resync_blocks: u64,
    /// Blocks freed after destage.
    pub destaged: u64,
    /// Destaged blocks refused (written again since the snapshot, or not dirty).
    pub destage_stale: u64,
    /// Destaged blocks refused while a write held them.
    pub destage_busy: u64,
    /// Destaged notices the mirror has not acknowledged.
    pub destage_notices: u64,
    /// Partner blocks the mirror freed on Destaged notices.
    pub mirror_freed: u64,
    /// Partner RQRs this node's mirror answered with Held (a new buffer holds its copy).
    pub mirror_held: u64,
    /// Buffers of this node held out of allocation: the partner keeps copies there until
    /// their blocks are mirrored again or destaged.
    pub held_buffers: u64,
    /// Partner blocks handed over at takeovers.
    pub taken_over: u64,
    /// The epoch of this node's table (0: the write-back does not follow takeovers, or is
    /// not recovered yet).
    #[serde(default)]
    pub epoch: u64,
    /// Blocks of this node discarded because the partner took them over.
    #[serde(default)]
    pub discarded_blocks: u64,
    /// Host writes discarded with them (their callers got `WriteDiscarded`).
    #[serde(default)]
    pub discarded_writes: u64,
    /// Partner RQRs dropped: they wrote a table this node took over.
    #[serde(default)]
    pub refused_taken_over: u64,
    /// Write latency (start to status), median, in µs.
    pub latency_p50_us: f64,
    /// 99th percentile, in µs.
    pub latency_p99_us: f64,
    /// Maximum, in µs.
    pub latency_max_us: f64,
    /// The last error seen.
    pub last_error: Option<String>,
}

impl WriteBackStats {
    /// A snapshot of the driver's state.
    pub(super) fn of(c: &Core) -> WriteBackStats {
        let p = c.primary.stats().clone();
        let m = c.mirror.stats().clone();
        let k = &c.counters;
        let lat = crate::manager::client::summarize(&c.latency);
        WriteBackStats {
            connected: c.link_up(),
            link: c.link.as_ref().map(|l| l.id),
            connections: k.connections,
            partner_failed: c.partner_failed(),
            partner_failures: k.partner_failures,
            restorations: k.restorations,
            incarnation: c.primary.incarnation(),
            mirror_incarnation: c.mirror.incarnation(),
            writes: p.writes,
            pending: c.primary.pending() as u64,
            mirrored: p.mirrored,
            mirror_lost: p.mirror_lost,
            rejected: p.rejected,
            redone: p.redone,
            redo_timeouts: k.redo_timeouts,
            transfers: p.transfers,
            data_writes: k.data_writes,
            data_bytes: k.data_bytes,
            write_errors: k.write_errors,
            stale: p.stale,
            absorbed: m.absorbed,
            absorbed_bytes: k.absorbed_bytes,
            aborted: m.aborted,
            mirror_rejects: m.rejected,
            mirror_stale: m.stale,
            held: k.held,
            messages_in: k.messages_in,
            messages_out: k.messages_out,
            bad_messages: k.bad_messages,
            nvram_errors: k.nvram_errors,
            free_buffers: c.primary.table().free_buffer_count() as u64,
            dirty_blocks: c.primary.table().valid_block_count() as u64,
            mirror_blocks: c.mirror.table().valid_block_count() as u64,
            in_sync: c.primary.in_sync(),
            resync_pending_blocks: c.primary.resync_pending_blocks() as u64,
            resyncs: p.resyncs,
            resync_blocks: p.resync_blocks,
            destaged: p.destaged,
            destage_stale: p.destage_stale,
            destage_busy: p.destage_busy,
            destage_notices: c.primary.destage_notices() as u64,
            mirror_freed: m.freed,
            mirror_held: m.held,
            held_buffers: c.primary.held_buffers() as u64,
            taken_over: m.taken_over,
            epoch: c
                .recovered_for
                .and(c.epochs.as_ref())
                .map_or(0, |e| e.own().recorded()),
            discarded_blocks: p.discarded,
            discarded_writes: k.discarded_writes,
            refused_taken_over: m.refused_taken_over,
            latency_p50_us: lat.p50_us,
            latency_p99_us: lat.p99_us,
            latency_max_us: lat.max_us,
            last_error: c.last_error.clone(),
        }
    }
}
