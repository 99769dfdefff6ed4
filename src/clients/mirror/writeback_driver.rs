//! The mirrored write-back driver (F5.3-F5.5): binds the sans-IO cores of
//! [`writeback`](super::writeback) ([`WriteBackPrimary`], [`WriteBackMirror`]) to a messenger
//! and a manager client. One [`MirroredWriteBack`] runs on each node: it is the primary of
//! its own writes and the mirror of its partner's.
//!
//! # Resources
//!
//! - A [`Messenger`] (`"writeback"` by default, [`BandwidthClass::Low`]) carrying the
//!   write-back messages, all under function code [`MESSAGE_CODE`] in the control class; the
//!   message's own kind byte tells RQR, RTR, DataSent, MDA and Reject apart.
//! - A manager client (`"wb-data"` by default, [`BandwidthClass::High`], one RC queue pair)
//!   with two regions the size of the tables' data area:
//!   - `wb-mirror` ([`Access::REMOTE_WRITE`]): the partner's primary RDMA WRITEs the data of
//!     its writes here, at the offsets of its own data area (the geometry is the same on
//!     both nodes, so a [`DataRange`](super::writeback::DataRange)'s remote offset, less the
//!     data area's offset, is the region offset);
//!   - `wb-tx` (no remote rights): staging. The new buffers of a transfer are copied from
//!     the primary's NVRAM to the same offsets of `wb-tx` and posted from there.
//!
//! # NVRAM
//!
//! Both tables are [`AtomicWriteTable`]s in NVRAM backings: in a node, the files
//! `DIR/writeback-<node>.nvram` (this node's writes, [`table_path`]) and
//! `DIR/writeback-<node>.mirror.nvram` (the image of the partner's, [`mirror_path`]).
//! [`MirroredWriteBack::start`] opens a table it finds (crash processing resolves every
//! write a crash left in progress) or formats an empty one.
//!
//! **Data copy at the mirror.** The manager allocates and registers client regions itself
//! (and carries their contents across failovers), so the mirror's table cannot live in
//! `wb-mirror`: the data lands in the region, and when the DataSent of the current
//! incarnation arrives for a request the mirror set up, the driver copies the request's new
//! buffers from `wb-mirror` into the table's data buffers, and the core then persists and
//! commits them. The mirror's CPU takes part in every write anyway (RQR, RTR, MDA), and the
//! copy happens only once the primary says the data is complete, so a torn transfer never
//! reaches NVRAM. The cost is one memory copy of the data at the mirror.
//!
//! # Writing
//!
//! [`MirroredWriteBack::write`] (or [`write_start`](MirroredWriteBack::write_start) then
//! [`wait`](MirroredWriteBack::wait), to keep several in flight) copies the data into local
//! NVRAM buffers and commits it there, sends the RQR, and returns the
//! [`CompletionStatus`] once the mirror absorbed the data (its MDA): `Mirrored`; or
//! `MirrorLost` when the partner failed (the write is in this node's NVRAM only). At most
//! [`MAX_ATOMIC_BLOCKS`] blocks a write ([`AtomicError::BlockCount`] otherwise).
//!
//! # Threads and locks
//!
//! The driver's state (`state::Core`) is behind one lock. Messenger handlers run with the
//! messenger's lock held and take the driver's; everything else that sends takes the
//! messenger's outbox first ([`Messenger::with_outbox`]) and the driver's lock inside, so the
//! lock order is always messenger, then driver. Messages for the partner queue in the
//! driver's state and whoever holds both locks drains them, in order. A driver thread
//! follows the data client's events, reaps WRITE completions (blocking on the send queue
//! while WRITEs are in flight), runs the timers and watches the messenger's counters;
//! waiting writers busy-poll the same work for [`WriteBackConfig::spin`] before they sleep.
//!
//! # Path changes and partner failure (F5.5)
//!
//! - Data client `Suspended`, or a WRITE completing in error: the primary's link is down
//!   (`handle_link_down`: incarnation + 1, nothing is sent). Messages for the mirror role
//!   are held until the next `Ready` (their data may be in a region this side has not been
//!   given yet).
//! - Data client `Ready` with a new queue pair: the mirror's path changed
//!   (`handle_path_changed`: its incarnation moves on, set-ups of the old path are void),
//!   the primary's link is up (`handle_link_up`: every write in progress is redone from its
//!   RQR), then the held messages are handled (stale ones are answered with a fresh RTR).
//!   The manager tears the old queue pair down before it hands out a new one.
//! - The messenger reconnected: its window re-sends unacknowledged frames, but a reset
//!   conversation drops them, so the primary redoes its writes in progress
//!   (`handle_path_changed`) when the data connection is up.
//! - No progress on writes in progress for [`WriteBackConfig::redo_after`]: redone the same
//!   way (a lost message cannot stall a write).
//! - Partner failure: the data client suspended for `PartnerRestarted`, `PartnerReleased`
//!   or `Shutdown`, no data connection for [`WriteBackConfig::partner_timeout`], or the
//!   messenger declared the partner failed. The primary completes its writes in progress
//!   and later ones with `MirrorLost` (`handle_partner_failed`); the mirror aborts the
//!   partner's writes in progress (none was acknowledged). When the data connection and the
//!   messenger are up again the partner is restored (`handle_partner_restored`) and writes
//!   are mirrored again.
//!
//! # Destage, resync and takeover
//!
//! The rules are in [`writeback`](super::writeback)'s `sync` module; here is the binding.
//! [`MirroredWriteBack::dirty_blocks`] and [`MirroredWriteBack::destaged`] run the
//! primary's destage (the Destaged notices go out with the other messages). The timer work
//! of the driver thread ([`WriteBackStats::in_sync`] false and the link up) runs the resync,
//! so it starts after every start and every partner restoration and goes on when a destage
//! frees buffers. [`MirroredWriteBack::take_over_partner`] runs the mirror's takeover under
//! the driver's lock.

#![deny(missing_docs)]

mod state;
mod stats;
mod waiting;

use self::state::{Core, POLL_BATCH};
pub use self::stats::WriteBackStats;
pub use self::waiting::WriteFuture;
use super::atomic::{AtomicGeometry, AtomicWriteTable, UnitId, MAGIC, MAX_ATOMIC_BLOCKS};
use super::error::{AtomicError, WriteBackError};
use super::nvram::NvramKind;
use super::shadow::Nvram;
use super::writeback::message::MAX_MESSAGE_LEN;
use super::writeback::{
    BlockRef, CompletionStatus, DirtyBlock, DirtyRef, Message, RequestId, TakeoverReport,
    WriteBackMirror, WriteBackPrimary,
};
use crate::clients::giveback::{
    OwnLogContext, OwnLogMark, PartnerCopyMark, PartnerLogContext, WriteBackEpochs,
};
use crate::fabric::{Access, BusyPoll, ProviderKind};
use crate::manager::{BandwidthClass, ClientHandle, ClientSpec, Manager};
use crate::messaging::{Head, Messenger, MessengerConfig, Outbox};
use crate::recorded_metrics::WriteBackMetrics;
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default messenger name.
pub const MESSENGER_NAME: &str = "writeback";
/// Default data client name.
pub const DATA_CLIENT: &str = "wb-data";
/// Purpose of the region the partner's data lands in.
pub const MIRROR_REGION: &str = "wb-mirror";
/// Purpose of the staging region transfers are posted from.
pub const TX_REGION: &str = "wb-tx";
/// Function code of the write-back messages.
pub const MESSAGE_CODE: u8 = 1;
/// How often the driver reads the messenger's counters.
const MESSENGER_CHECK: Duration = Duration::from_millis(1);

/// How a [`MirroredWriteBack`] runs. Both nodes must use the same names and geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteBackConfig {
    /// Messenger name.
    pub name: String,
    /// Data client name.
    pub data_client: String,
    /// Geometry of both tables.
    pub geometry: AtomicGeometry,
    /// Without a data connection for this long (or when the messenger declares it), the
    /// partner is failed: writes complete with the mirror lost.
    pub partner_timeout: Duration,
    /// Longest [`MirroredWriteBack::write`] and [`MirroredWriteBack::wait`] wait.
    pub write_timeout: Duration,
    /// Writes in progress are redone when nothing progressed for this long.
    pub redo_after: Duration,
    /// WRITEs in flight at most (send queue depth).
    pub send_depth: u32,
    /// A waiting writer busy-polls this long before it sleeps.
    pub spin: Duration,
    /// How long a waiting writer polls back to back before it yields the CPU between polls
    /// ([`BusyPoll`]); `None`: the data link's provider's default.
    /// Default: [`BusyPoll::CLIENT_PURE`] (20 µs).
    #[serde(default = "crate::fabric::BusyPoll::client_default")]
    pub pure_spin: Option<Duration>,
    /// The messenger's driver busy-polls this long after activity before it blocks.
    pub messenger_spin: Duration,
}

impl WriteBackConfig {
    /// Defaults: `"writeback"` and `"wb-data"`, 1024 blocks of 4 KiB and 256 request
    /// entries, a 5 s partner timeout, a 30 s write timeout, redo after 2 s without
    /// progress, 128 WRITEs in flight, 50 µs of spinning (the messenger's default 100 µs),
    /// the provider's default pure spin.
    pub fn new() -> WriteBackConfig {
        WriteBackConfig {
            name: MESSENGER_NAME.into(),
            data_client: DATA_CLIENT.into(),
            geometry: AtomicGeometry {
                block_size: 4096,
                buffers: 1024,
                ries: 256,
            },
            partner_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            redo_after: Duration::from_secs(2),
            send_depth: 128,
            spin: Duration::from_micros(50),
            pure_spin: crate::fabric::BusyPoll::client_default(),
            messenger_spin: Duration::from_micros(100),
        }
    }
}

impl Default for WriteBackConfig {
    fn default() -> Self {
        WriteBackConfig::new()
    }
}

/// A write committed locally and in progress to the mirror; [`MirroredWriteBack::wait`]
/// for it (once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTicket {
    request: RequestId,
    started: Instant,
}

impl WriteTicket {
    /// The request id.
    pub fn request(&self) -> RequestId {
        self.request
    }
}

/// This node's table file in `dir`.
pub fn table_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("writeback-{node}.nvram"))
}

/// The partner's mirror image file in `dir`.
pub fn mirror_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("writeback-{node}.mirror.nvram"))
}

/// File backings of `node` in `dir` for `geometry`: its table and its partner's image
/// ([`backings`] with [`NvramKind::File`]).
pub fn file_backings(
    dir: &Path,
    node: u32,
    geometry: AtomicGeometry,
) -> Result<(Nvram, Nvram), WriteBackError> {
    backings(dir, node, geometry, NvramKind::File)
}

/// The backings of `node` in `dir` for `geometry` of `kind`: its table and its partner's
/// image. With [`NvramKind::Dax`], `dir` is on a filesystem mounted `-o dax`.
pub fn backings(
    dir: &Path,
    node: u32,
    geometry: AtomicGeometry,
    kind: NvramKind,
) -> Result<(Nvram, Nvram), WriteBackError> {
    geometry.validate()?;
    let len = geometry.required_len();
    let own = kind.open(&table_path(dir, node), len)?;
    let partner = kind.open(&mirror_path(dir, node), len)?;
    Ok((own, partner))
}

/// Opens the table in `backing` (crash processing included) or, if it holds none, formats
/// an empty one of `geometry`. Returns the table and how many writes recovery resolved. A
/// table of another geometry is an error (nothing is overwritten).
pub fn open_table(
    backing: Nvram,
    geometry: AtomicGeometry,
) -> Result<(AtomicWriteTable<Nvram>, usize), WriteBackError> {
    if backing.bytes().get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Ok((AtomicWriteTable::format(backing, geometry)?, 0));
    }
    let (table, resolved) = AtomicWriteTable::open(backing)?;
    if *table.geometry() != geometry {
        return Err(AtomicError::Geometry(format!(
            "the NVRAM holds a table of {:?}, configured {geometry:?}",
            table.geometry()
        ))
        .into());
    }
    Ok((table, resolved.len()))
}

struct Shared {
    cfg: WriteBackConfig,
    handle: ClientHandle,
    core: Mutex<Core>,
    /// The sync state of the partner's mirror of this node (F5.7), once given.
    copy_mark: std::sync::OnceLock<Arc<PartnerCopyMark>>,
    /// The giveback client's serving lease, once given: nothing is returned while it does
    /// not run.
    serving_lease: std::sync::OnceLock<Arc<crate::clients::giveback::ServingLease>>,
    /// Signalled when writes complete or the driver stops.
    changed: Condvar,
    stop: AtomicBool,
    kick: crossbeam_channel::Sender<()>,
    metrics: WriteBackMetrics,
    /// Tasks of pending [`WriteFuture`]s, woken with [`changed`](Self::changed) by
    /// [`notify`](Self::notify).
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl Shared {
    /// Follows data client events, reaps WRITE completions, runs the timers, reports a
    /// broken connection. Returns whether anything happened.
    fn pump(&self, c: &mut Core, waited: &mut Vec<crate::fabric::Completion>) -> bool {
        let mut progress = false;
        while let Ok(ev) = self.handle.events().try_recv() {
            c.on_event(&self.cfg, ev);
            progress = true;
        }
        progress |= c.reap(&self.cfg, waited);
        c.check_timers(&self.cfg, Instant::now());
        if let Some(why) = c.report.take() {
            self.handle.record_error();
            self.handle.report_failure(&why);
        }
        let in_sync = c.primary.in_sync();
        if in_sync {
            if let Some(mark) = self.copy_mark.get() {
                mark.writeback_synced();
            }
        }
        let (m, p) = (&self.metrics, c.primary.stats());
        m.writes.set(p.writes);
        m.mirrored.set(p.mirrored);
        m.mirror_lost.set(p.mirror_lost + p.rejected);
        m.mirrored_bytes.set(c.counters.data_bytes);
        m.in_sync.set(if in_sync { 1.0 } else { 0.0 });
        progress
    }

    /// Sends the queued messages (takes the messenger's outbox, then the driver's lock).
    fn flush(&self, messenger: &Messenger) {
        let r = messenger.with_outbox(MESSAGE_CODE, |out| drain(out, &mut self.core.lock()));
        if let Err(e) = r {
            tracing::debug!(name = %self.cfg.name, error = %e, "flush write-back messages");
        }
    }

    /// Whether this node may return writes and write its disks: the giveback client's serving
    /// lease runs (or none was given).
    fn lease_runs(&self) -> bool {
        self.serving_lease
            .get()
            .is_none_or(|l| l.is_valid(Instant::now()))
    }

    /// Wakes the threads waiting on [`changed`](Self::changed) and the tasks of pending
    /// futures.
    fn notify(&self) {
        self.changed.notify_all();
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers {
            w.wake();
        }
    }

    /// Starts a host write (see [`MirroredWriteBack::write_start`]); also returns whether
    /// messages wait to be sent.
    fn start_write(
        &self,
        unit: UnitId,
        first_block: u64,
        data: &[u8],
    ) -> Result<(WriteTicket, bool), WriteBackError> {
        let block_size = self.cfg.geometry.block_size as usize;
        if data.len() / block_size > MAX_ATOMIC_BLOCKS {
            return Err(AtomicError::BlockCount {
                blocks: data.len() / block_size,
                max: MAX_ATOMIC_BLOCKS,
            }
            .into());
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(self.stopped());
        }
        let started = Instant::now();
        let mut c = self.core.lock();
        if c.awaits_recovery() {
            return Err(WriteBackError::NotRecovered {
                name: self.cfg.name.clone(),
            });
        }
        if let Some(mismatch) = &c.refused {
            return Err(WriteBackError::Refused {
                name: self.cfg.data_client.clone(),
                mismatch: mismatch.clone(),
            });
        }
        let request = c
            .primary
            .handle_host_write(started, unit, first_block, data)?;
        c.run_primary(&self.cfg);
        let flush = !c.outgoing.is_empty();
        let busy = c.busy_cq().is_some();
        drop(c);
        if busy {
            let _ = self.kick.try_send(());
        }
        Ok((WriteTicket { request, started }, flush))
    }

    fn stopped(&self) -> WriteBackError {
        WriteBackError::WriteStopped {
            name: self.cfg.name.clone(),
        }
    }
}

/// Moves the queued messages into the outbox, in order (those that do not fit stay queued).
fn drain(out: &mut Outbox, c: &mut Core) {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    while let Some(m) = c.outgoing.front() {
        match m.encode_into(&mut buf) {
            Ok(n) => match out.send(Head::control(MESSAGE_CODE), &buf[..n]) {
                Ok(_) => c.counters.messages_out += 1,
                Err(e) => {
                    tracing::debug!(error = %e, "write-back message queued for later");
                    return;
                }
            },
            Err(e) => tracing::error!(error = %e, "encode write-back message"),
        }
        c.outgoing.pop_front();
    }
}

/// Mirrored write-back of this node's writes into the partner, and the image of the
/// partner's (see the [module docs](self)). Dropping it stops the driver, the messenger and
/// the data client.
pub struct MirroredWriteBack {
    shared: Arc<Shared>,
    messenger: Option<Arc<Messenger>>,
    thread: Option<JoinHandle<()>>,
    /// The manager this client runs on: kept alive while the client lives (every client
    /// holds what it needs; dropped last).
    _manager: Arc<Manager>,
}

impl std::fmt::Debug for MirroredWriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirroredWriteBack")
            .field("name", &self.shared.cfg.name)
            .finish_non_exhaustive()
    }
}

impl MirroredWriteBack {
    /// Opens (or formats) this node's table in `own` and the partner's image in `partner`
    /// (both of the configured geometry), registers the data client, starts the messenger
    /// and the driver thread.
    pub fn start(
        manager: &Arc<Manager>,
        cfg: WriteBackConfig,
        own: Nvram,
        partner: Nvram,
    ) -> Result<MirroredWriteBack, WriteBackError> {
        cfg.geometry.validate()?;
        let (table, own_resolved) = open_table(own, cfg.geometry)?;
        let (image, image_resolved) = open_table(partner, cfg.geometry)?;
        let primary = WriteBackPrimary::new(table);
        let mirror = WriteBackMirror::new(image)?;
        let core = Core::new(primary, mirror);
        let data_len = core.data_len();
        let depth = cfg.send_depth.max(4);
        let mut spec = ClientSpec::new(cfg.data_client.clone(), BandwidthClass::High, 1)
            .region(MIRROR_REGION, data_len, super::MIRROR_REGION_ACCESS)
            .region(TX_REGION, data_len, Access::NONE)
            .term("write-back block size", cfg.geometry.block_size.into())
            .term("write-back buffers", cfg.geometry.buffers.into())
            .term("write-back request entries", cfg.geometry.ries.into());
        spec.qp_capacity.max_send_wr = depth;
        spec.qp_capacity.max_recv_wr = 1;
        let handle = manager
            .register(spec)
            .map_err(|source| WriteBackError::Register {
                name: cfg.data_client.clone(),
                source: Box::new(source),
            })?;
        let mut mcfg = MessengerConfig::new(cfg.name.clone(), BandwidthClass::Low);
        mcfg.partner_timeout = cfg.partner_timeout;
        mcfg.spin = cfg.messenger_spin;
        let messenger_err = |source| WriteBackError::StartMessenger {
            name: cfg.name.clone(),
            source: Box::new(source),
        };
        let messenger = Arc::new(Messenger::start(manager, mcfg).map_err(messenger_err)?);
        let (kick, kicked) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            handle,
            core: Mutex::new(core),
            copy_mark: std::sync::OnceLock::new(),
            serving_lease: std::sync::OnceLock::new(),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            kick,
            metrics: WriteBackMetrics::new(manager.config().node_id, &cfg.name),
            wakers: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        messenger
            .on(MESSAGE_CODE, move |msg, out| {
                on_message(&s, msg.payload, out)
            })
            .map_err(messenger_err)?;
        let (s, m) = (shared.clone(), messenger.clone());
        let thread = std::thread::Builder::new()
            .name(format!("il-wb-{}", cfg.name))
            .spawn(move || drive(&s, &m, &kicked))
            .map_err(|source| WriteBackError::Start {
                name: cfg.name.clone(),
                source,
            })?;
        tracing::info!(name = %cfg.name, data_client = %cfg.data_client, geometry = ?cfg.geometry, own_resolved, image_resolved, "mirrored write-back started");
        Ok(MirroredWriteBack {
            shared,
            messenger: Some(messenger),
            thread: Some(thread),
            _manager: manager.clone(),
        })
    }

    /// [`start`](Self::start) over the node's NVRAM files in `dir` ([`file_backings`]).
    pub fn open(
        manager: &Arc<Manager>,
        cfg: WriteBackConfig,
        dir: &Path,
        node: u32,
    ) -> Result<MirroredWriteBack, WriteBackError> {
        let (own, partner) = file_backings(dir, node, cfg.geometry)?;
        MirroredWriteBack::start(manager, cfg, own, partner)
    }

    /// The configuration.
    pub fn config(&self) -> &WriteBackConfig {
        &self.shared.cfg
    }

    /// Writes `data` (a whole number of blocks, 1..=[`MAX_ATOMIC_BLOCKS`]) at `first_block`
    /// of `unit` and waits for its status: `Mirrored` once the mirror absorbed it,
    /// `MirrorLost` when the partner failed. While another write holds one of the blocks
    /// (or buffers or request entries are all taken by writes in progress), it waits for
    /// them. The whole call waits at most [`WriteBackConfig::write_timeout`].
    pub fn write(
        &self,
        unit: UnitId,
        first_block: u64,
        data: &[u8],
    ) -> Result<CompletionStatus, WriteBackError> {
        self.write_timeout(unit, first_block, data, self.shared.cfg.write_timeout)
    }

    /// [`write`](Self::write) waiting at most `timeout` for the whole call.
    pub fn write_timeout(
        &self,
        unit: UnitId,
        first_block: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<CompletionStatus, WriteBackError> {
        let begin = Instant::now();
        loop {
            match self.write_start(unit, first_block, data) {
                // The deadline, and the time a timeout reports, are the whole call's: starting
                // the write may have waited for buffers first.
                Ok(t) => return self.wait_since(&t, begin, timeout),
                Err(
                    e @ WriteBackError::Atomic(
                        AtomicError::RangeBusy { .. }
                        | AtomicError::NoFreeBuffers { .. }
                        | AtomicError::NoFreeRie { .. },
                    ),
                ) => {
                    let mut c = self.shared.core.lock();
                    if c.primary.pending() == 0 || begin.elapsed() >= timeout {
                        return Err(e);
                    }
                    self.shared.pump(&mut c, &mut Vec::new());
                    self.shared
                        .changed
                        .wait_for(&mut c, Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies `data` into local NVRAM buffers, commits it there and sends the request to the
    /// mirror, without waiting; [`wait`](Self::wait) for the ticket. Fails at once, with
    /// nothing written, for a bad block count ([`AtomicError::BlockCount`]: more than
    /// [`MAX_ATOMIC_BLOCKS`]) or length, a block held by a write in progress
    /// ([`AtomicError::RangeBusy`]), or no free buffers or request entries.
    pub fn write_start(
        &self,
        unit: UnitId,
        first_block: u64,
        data: &[u8],
    ) -> Result<WriteTicket, WriteBackError> {
        let (ticket, flush) = self.shared.start_write(unit, first_block, data)?;
        if flush {
            self.flush();
        }
        Ok(ticket)
    }

    /// Waits for the ticket's status (call it once per ticket), at most
    /// [`WriteBackConfig::write_timeout`] (see [`wait_timeout`](Self::wait_timeout)).
    pub fn wait(&self, ticket: &WriteTicket) -> Result<CompletionStatus, WriteBackError> {
        self.wait_timeout(ticket, self.shared.cfg.write_timeout)
    }

    /// Waits at most `timeout` for the ticket's status. [`WriteBackError::WriteTimeout`] if
    /// none came (the write is committed locally; waiting again may still see it complete).
    pub fn wait_timeout(
        &self,
        ticket: &WriteTicket,
        timeout: Duration,
    ) -> Result<CompletionStatus, WriteBackError> {
        self.wait_since(ticket, Instant::now(), timeout)
    }

    /// [`wait_timeout`](Self::wait_timeout) for a call that began at `begin`: `timeout` and
    /// the time a [`WriteBackError::WriteTimeout`] reports count from there; the busy poll
    /// counts from now.
    fn wait_since(
        &self,
        ticket: &WriteTicket,
        begin: Instant,
        timeout: Duration,
    ) -> Result<CompletionStatus, WriteBackError> {
        let shared = &*self.shared;
        let spin_begin = Instant::now();
        let spin_until = spin_begin + shared.cfg.spin;
        let mut waited = Vec::with_capacity(POLL_BATCH);
        let mut c = shared.core.lock();
        loop {
            if let Some(outcome) = shared.collect(&mut c, ticket.request) {
                return outcome;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return Err(shared.stopped());
            }
            let progress = shared.pump(&mut c, &mut waited);
            if !c.outgoing.is_empty() {
                MutexGuard::unlocked(&mut c, || self.flush());
                continue;
            }
            if progress {
                continue;
            }
            let now = Instant::now();
            if now.duration_since(begin) >= timeout {
                return Err(WriteBackError::WriteTimeout {
                    request: ticket.request,
                    waited: now - begin,
                });
            }
            if now < spin_until {
                let provider = c.link.as_ref().map_or(ProviderKind::Soft, |l| l.provider());
                let poll = BusyPoll::configured(provider, shared.cfg.pure_spin);
                MutexGuard::unlocked(&mut c, || poll.round(spin_begin, now));
            } else {
                shared.changed.wait_for(&mut c, Duration::from_millis(1));
            }
        }
    }

    /// Whether the ticket's status is in (does not wait; [`wait`](Self::wait) collects it).
    pub fn is_complete(&self, ticket: &WriteTicket) -> bool {
        self.shared.core.lock().done.contains_key(&ticket.request)
    }

    /// The current data of a block of this node's table (None: never written).
    pub fn read_block(&self, unit: UnitId, block: u64) -> Option<Vec<u8>> {
        let c = self.shared.core.lock();
        c.primary
            .table()
            .read_block(unit, block)
            .map(<[u8]>::to_vec)
    }

    /// The current data of a block of the partner's image (what this node absorbed as its
    /// mirror; None: never written).
    pub fn read_mirror_block(&self, unit: UnitId, block: u64) -> Option<Vec<u8>> {
        let c = self.shared.core.lock();
        c.mirror.table().read_block(unit, block).map(<[u8]>::to_vec)
    }

    /// A snapshot of this node's dirty blocks, with their write sequences and data, for the
    /// storage service to destage (see [`destaged`](Self::destaged)). Blocks of writes in
    /// progress come in a later snapshot. Refused ([`WriteBackError::DestageWithheld`]) while
    /// the node may not write its disks: before [`recover`](Self::recover) (the partner may
    /// have taken these blocks over and written newer data since), and while the serving
    /// lease does not run (the partner may be taking this node over).
    pub fn dirty_blocks(&self) -> Result<Vec<DirtyBlock>, WriteBackError> {
        let c = self.shared.core.lock();
        let why = if c.awaits_recovery() {
            Some("the write-back is not recovered yet (the partner may have taken these blocks over)")
        } else if !self.shared.lease_runs() {
            Some("the serving lease does not run (the partner may be taking this node over)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(WriteBackError::DestageWithheld {
                name: self.shared.cfg.name.clone(),
                why,
            });
        }
        Ok(c.primary.dirty_blocks())
    }

    /// The storage service wrote these blocks (from [`dirty_blocks`](Self::dirty_blocks)) to
    /// disk: each one not written again since and held by no write is freed here, and at
    /// the partner by a Destaged notice. Returns how many were freed (the others stay dirty
    /// and come back in the next snapshot).
    pub fn destaged(&self, blocks: &[DirtyRef]) -> Result<usize, WriteBackError> {
        let freed = {
            let mut c = self.shared.core.lock();
            let freed = c.primary.handle_destaged(blocks)?;
            c.run_primary(&self.shared.cfg);
            // Buffers came free: a resync waiting for them goes on.
            c.primary.handle_resync(Instant::now())?;
            c.run_primary(&self.shared.cfg);
            freed
        };
        self.flush();
        Ok(freed)
    }

    /// Gives the write-back the sync state of the partner's mirror of this node (F5.7; from
    /// [`GivebackNode::partner_copy_mark`](crate::clients::giveback::GivebackNode::partner_copy_mark)):
    /// from then on a write completed `MirrorLost` or `MirrorRejected` is returned only once a mailbox write
    /// marked the partner's mirror outdated (a survivor then refuses an automatic takeover),
    /// and the mark is cleared once a resync completed ([`WriteBackStats::in_sync`]). Only
    /// the first call counts.
    pub fn set_partner_copy_mark(&self, mark: Arc<PartnerCopyMark>) {
        if self.shared.copy_mark.set(mark).is_err() {
            tracing::warn!(name = %self.shared.cfg.name, "a partner copy mark was given already");
        }
    }

    /// Binds returned writes to the giveback client's serving lease
    /// ([`GivebackNode::serving_lease`](crate::clients::giveback::GivebackNode::serving_lease)):
    /// a completed write is returned only while it runs ([`WriteBackError::WriteTimeout`]
    /// otherwise; waiting again returns it once the lease is renewed). Only the first call
    /// counts.
    pub fn set_serving_lease(&self, lease: Arc<crate::clients::giveback::ServingLease>) {
        if self.shared.serving_lease.set(lease).is_err() {
            tracing::warn!(name = %self.shared.cfg.name, "a serving lease was given already");
        }
    }

    /// Makes the write-back follow takeovers through the mailbox's write-back epochs
    /// ([`GivebackNode::writeback_epochs`](crate::clients::giveback::GivebackNode::writeback_epochs),
    /// see `giveback/writeback_epochs.rs`): from then on host writes wait for
    /// [`recover`](Self::recover) ([`WriteBackError::NotRecovered`] before it), the
    /// partner's image here takes no write of a table this node took over, and
    /// [`take_over_partner_for`](Self::take_over_partner_for) records what it took over.
    /// Only the first call counts.
    pub fn set_writeback_epochs(&self, epochs: Arc<WriteBackEpochs>) {
        let mut c = self.shared.core.lock();
        if c.epochs.is_some() {
            tracing::warn!(name = %self.shared.cfg.name, "write-back epochs were given already");
            return;
        }
        c.epochs = Some(epochs);
    }

    /// The write-back's recovery before this node serves its disks (from the giveback
    /// client's own-log recovery hook, once per serving: again after a halt): if the
    /// partner's record says it took this node's table over in its current epoch, every
    /// block of the table is discarded (it is on disk, possibly overwritten since), and so is
    /// every host write whose status was not returned yet (its caller gets
    /// [`WriteBackError::WriteDiscarded`]); the table then moves to a new epoch. Returns once a
    /// mailbox write carried the epoch (at most the write timeout:
    /// [`WriteBackError::EpochUnrecorded`], and the recovery runs again). Without
    /// [`set_writeback_epochs`](Self::set_writeback_epochs) it takes them from the context.
    pub fn recover(&self, context: &OwnLogContext) -> Result<WriteBackRecovery, WriteBackError> {
        let shared = &*self.shared;
        let (epochs, outcome) = {
            let mut c = shared.core.lock();
            let epochs = c
                .epochs
                .get_or_insert_with(|| context.writeback.clone())
                .clone();
            if c.recovered_for == Some(context.incarnation) {
                return Ok(WriteBackRecovery {
                    epoch: epochs.own().recorded(),
                    ..WriteBackRecovery::default()
                });
            }
            let epoch = epochs.own().recorded();
            let taken = context.partner_took_over_writeback;
            let mut outcome = WriteBackRecovery::default();
            let next = if epoch != 0 && taken >= epoch {
                let (unreturned, freed) = c.primary.discard_taken_over()?;
                let done: Vec<RequestId> = c.done.drain().map(|(r, _)| r).collect();
                for r in unreturned.into_iter().chain(done) {
                    if !c.abandoned.remove(&r) {
                        c.discarded.insert(r, epoch);
                    }
                    outcome.discarded_writes += 1;
                }
                c.counters.discarded_writes += outcome.discarded_writes;
                outcome.discarded_blocks = freed as u64;
                c.run_primary(&shared.cfg);
                taken + 1
            } else {
                epoch.max(1)
            };
            epochs.own().record(next);
            outcome.epoch = next;
            (epochs, outcome)
        };
        shared.notify();
        wait_recorded(epochs.own(), shared.cfg.write_timeout, "this node's epoch")?;
        shared.core.lock().recovered_for = Some(context.incarnation);
        if outcome.discarded_blocks > 0 || outcome.discarded_writes > 0 {
            tracing::warn!(name = %shared.cfg.name, epoch = outcome.epoch, blocks = outcome.discarded_blocks, writes = outcome.discarded_writes, "write-back table taken over by the partner: its blocks are discarded");
        } else {
            tracing::info!(name = %shared.cfg.name, epoch = outcome.epoch, "write-back recovered");
        }
        Ok(outcome)
    }

    /// [`take_over_partner`](Self::take_over_partner) at a takeover the giveback client runs
    /// (`context` from its replay hook): once every block went to the sink, the partner's
    /// epoch the context names is recorded as taken over (the image here takes no write of
    /// that table from then on), and this returns once a mailbox write carried it, so the
    /// node never serves the partner's disks before its record says so (at most the write
    /// timeout: [`WriteBackError::EpochUnrecorded`]).
    pub fn take_over_partner_for(
        &self,
        context: &PartnerLogContext,
        sink: impl FnMut(BlockRef, &[u8]) -> Result<(), String>,
    ) -> Result<TakeoverReport, WriteBackError> {
        let (report, epochs) = {
            let mut c = self.shared.core.lock();
            let report = c.mirror.take_over(sink)?;
            let epochs = c
                .epochs
                .clone()
                .filter(|_| context.partner_writeback_epoch != 0);
            if let Some(e) = &epochs {
                e.took_over().record(context.partner_writeback_epoch);
            }
            (report, epochs)
        };
        tracing::info!(name = %self.shared.cfg.name, blocks = report.blocks, aborted = report.aborted, epoch = context.partner_writeback_epoch, "partner's write-back blocks taken over");
        if let Some(e) = epochs {
            wait_recorded(
                e.took_over(),
                self.shared.cfg.write_timeout,
                "the partner's epoch taken over",
            )?;
        }
        Ok(report)
    }

    /// Follows the failure detector (the giveback client): the partner failed or is taken
    /// over, so writes in progress and later ones complete `MirrorLost` at once instead of
    /// after [`WriteBackConfig::partner_timeout`]. The data connection is handed back to the
    /// manager too (a hung partner may keep it up): mirroring resumes on a new one.
    pub fn declare_partner_failed(&self, why: &str) {
        let mut c = self.shared.core.lock();
        c.fail_partner(&self.shared.cfg, why);
        c.fail_link(why);
        self.shared.pump(&mut c, &mut Vec::new());
        self.shared.notify();
    }

    /// Takes over the partner's mirrored dirty blocks (the partner is gone): its writes in
    /// progress are aborted, then every block of its image goes to `sink` once, in block
    /// order, and is freed right after (see [`WriteBackMirror::take_over`]).
    pub fn take_over_partner(
        &self,
        sink: impl FnMut(BlockRef, &[u8]) -> Result<(), String>,
    ) -> Result<TakeoverReport, WriteBackError> {
        let mut c = self.shared.core.lock();
        let report = c.mirror.take_over(sink)?;
        tracing::info!(name = %self.shared.cfg.name, blocks = report.blocks, aborted = report.aborted, "partner's write-back blocks taken over");
        Ok(report)
    }

    /// Drops the data connection and asks the manager to re-establish it, as a failed
    /// WRITE does: a path change on both nodes (writes in progress are redone on the new
    /// connection). For tests and operators.
    pub fn reset_data_path(&self, why: &str) {
        let mut c = self.shared.core.lock();
        c.fail_link(why);
        self.shared.pump(&mut c, &mut Vec::new());
    }

    /// Counters and state.
    pub fn stats(&self) -> WriteBackStats {
        let mut c = self.shared.core.lock();
        self.shared.pump(&mut c, &mut Vec::new());
        WriteBackStats::of(&c)
    }

    fn flush(&self) {
        if let Some(m) = self.messenger.as_ref() {
            self.shared.flush(m);
        }
    }
}

impl Drop for MirroredWriteBack {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.notify();
        let _ = self.shared.kick.try_send(());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(name = %self.shared.cfg.name, "write-back driver thread panicked");
            }
        }
        drop(self.messenger.take());
        let c = self.shared.core.lock();
        let p = c.primary.stats();
        tracing::info!(
            name = %self.shared.cfg.name,
            writes = p.writes,
            mirrored = p.mirrored,
            mirror_lost = p.mirror_lost,
            rejected = p.rejected,
            pending = c.primary.pending(),
            absorbed = c.mirror.stats().absorbed,
            "mirrored write-back stopped"
        );
    }
}

/// The messenger handler: a write-back message from the partner.
fn on_message(shared: &Shared, payload: &[u8], out: &mut Outbox) {
    let message = Message::decode(payload);
    let mut c = shared.core.lock();
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            c.counters.bad_messages += 1;
            tracing::warn!(name = %shared.cfg.name, error = %e, "bad write-back message dropped");
            return;
        }
    };
    // Data client events first: a DataSent must not be matched with an outdated region.
    shared.pump(&mut c, &mut Vec::new());
    c.on_message(&shared.cfg, Instant::now(), message);
    drain(out, &mut c);
    let busy = c.busy_cq().is_some();
    let done = !c.done.is_empty();
    drop(c);
    if done {
        shared.notify();
    }
    if busy {
        let _ = shared.kick.try_send(());
    }
}

/// The driver thread.
fn drive(shared: &Arc<Shared>, messenger: &Messenger, kicked: &crossbeam_channel::Receiver<()>) {
    let mut waited = Vec::with_capacity(POLL_BATCH);
    let mut checked = Instant::now() - MESSENGER_CHECK;
    let mut events = shared.handle.event_wait(kicked);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let counters = (now.duration_since(checked) >= MESSENGER_CHECK).then(|| {
            checked = now;
            messenger.stats()
        });
        let (cq, flush) = {
            let mut c = shared.core.lock();
            shared.pump(&mut c, &mut waited);
            if let Some(ms) = counters {
                c.check_messenger(
                    &shared.cfg,
                    ms.connected,
                    ms.connections,
                    ms.partner_failures,
                );
            }
            if !c.done.is_empty() {
                shared.notify();
            }
            (c.busy_cq(), !c.outgoing.is_empty())
        };
        if flush {
            shared.flush(messenger);
        }
        match cq {
            Some(cq) => {
                if let Err(e) = cq.wait(&mut waited, POLL_BATCH, Duration::from_millis(2)) {
                    tracing::debug!(name = %shared.cfg.name, error = %e, "wait on send queue");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None => {
                // Events are taken by the next round's pump, under the lock (a host write's
                // pump takes them too: taken here, one could be applied after a later one).
                events.wait(Duration::from_millis(2));
            }
        }
    }
    shared.notify();
}

/// Waits until a mailbox write carried what `mark` was last asked for.
fn wait_recorded(
    mark: &OwnLogMark,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WriteBackError> {
    let begin = Instant::now();
    while !mark.is_durable() {
        if begin.elapsed() >= timeout {
            return Err(WriteBackError::EpochUnrecorded {
                what,
                epoch: mark.stamp(),
                waited: begin.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// What [`MirroredWriteBack::recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackRecovery {
    /// The table's epoch from now on.
    pub epoch: u64,
    /// Blocks discarded (the partner took them over).
    pub discarded_blocks: u64,
    /// Host writes discarded whose status had not been returned.
    pub discarded_writes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::MemoryNvram;

    const GEO: AtomicGeometry = AtomicGeometry {
        block_size: 512,
        buffers: 16,
        ries: 4,
    };

    #[test]
    fn open_table_formats_reopens_and_refuses_another_geometry() {
        let (mut t, resolved) =
            open_table(Box::new(MemoryNvram::new(GEO.required_len())), GEO).expect("format");
        assert_eq!(resolved, 0);
        let (rie, bufs) = t.begin(1, 3, 10, 2).unwrap();
        for b in &bufs {
            t.block_data_mut(*b).unwrap().fill(7);
        }
        t.commit(rie).unwrap();
        // A crash before finish: reopening resolves the write (new data won).
        let image = t.into_backing();
        let (t, resolved) = open_table(image, GEO).expect("reopen");
        assert_eq!(resolved, 1);
        assert_eq!(t.read_block(3, 11), Some(&[7u8; 512][..]));
        let other = AtomicGeometry { buffers: 8, ..GEO };
        let err = open_table(t.into_backing(), other).err().expect("refused");
        assert!(
            matches!(err, WriteBackError::Atomic(AtomicError::Geometry(_))),
            "{err}"
        );
    }

    #[test]
    fn file_backings_are_named_after_the_node() {
        let dir = std::env::temp_dir().join(format!("interlink-wbfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (own, partner) = file_backings(&dir, 3, GEO).unwrap();
        assert_eq!(
            (own.len(), partner.len()),
            (GEO.required_len(), GEO.required_len())
        );
        assert!(dir.join("writeback-3.nvram").exists());
        assert!(dir.join("writeback-3.mirror.nvram").exists());
        drop((own, partner));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
