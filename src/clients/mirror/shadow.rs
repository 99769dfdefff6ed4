//! The shadow log driver (F5.1, F5.2, F5.5): binds a [`ShadowLog`](crate::clients::mirror::ShadowLog) to a manager client so
//! every append is durable in local NVRAM **and** complete in the partner's memory before it
//! returns. Both nodes run one: each is the writer of its own log and the mirror of the
//! partner's.
//!
//! # Resources
//!
//! A manager client (`"shadow"` by default, [`BandwidthClass::High`], so placement gives it
//! a link of its own) with one RC queue pair and two regions of the log's size:
//!
//! - `shadow-mirror` ([`SHADOW_MIRROR_ACCESS`]): the partner's log image lands here. This
//!   node's CPU never touches it until a takeover, when [`ShadowMirror::replay_partner`]
//!   reads it (the manager carries region contents across failovers, and a clone of the last
//!   region stays readable after the manager revoked it). The partner READs it back when its
//!   own NVRAM lost the log (recovery at start, F5.6).
//! - `shadow-fetch` (local write only, [`FETCH_CHUNK`] bytes): where those READs of the
//!   partner's copy of this node's log land, a chunk at a time.
//! - `shadow-tx` (no remote rights): staging. A mirror write `[offset, offset + len)` of the
//!   local image is copied into the same offsets of `shadow-tx` and goes out as one RDMA
//!   WRITE to the same offsets of the partner's `shadow-mirror`. The writer lays out both
//!   images (mirror memory linked to primary memory); no partner CPU on the data path.
//!
//! # Appending
//!
//! [`ShadowMirror::append`] (or [`append_start`](ShadowMirror::append_start) and
//! [`wait`](ShadowMirror::wait) to keep several in flight, or
//! [`append_many`](ShadowMirror::append_many)) writes the record into the local log (which
//! persists it), posts its mirror writes, and returns once the log reports it acknowledged:
//! durable locally and complete on the mirror. Several threads may append at once; their
//! writes are in flight together and acknowledgements come in append order. Whichever thread
//! holds the driver's lock polls the completion queue (a waiting appender busy-polls for
//! [`ShadowConfig::spin`], then sleeps, and the driver thread blocks on the completion
//! queue and wakes it).
//!
//! # Link failure (F5.5)
//!
//! On `Suspended` the log rewinds its unacknowledged writes; appends wait (up to
//! [`ShadowConfig::link_timeout`] before anything is appended, see
//! [`ShadowError::AppendNoLink`]). On every `Ready` with a new queue pair the driver
//! **re-sends the live log**: it re-opens the local log ([`ShadowLog::open`](crate::clients::mirror::ShadowLog::open)), which queues
//! the superblock, the checkpoint slots and every record after the checkpoint in force, in
//! order; every write that was in flight is among them. Re-posting only the pending writes
//! would be enough when the partner's region was carried over intact, but the driver cannot
//! always tell: a partner that restarted while this client was already suspended comes back
//! with an empty region and no `PartnerRestarted` event reaches this client. Re-sending the
//! live log is idempotent (the bytes are the same), costs at most one log's worth of WRITEs
//! per reconnection, and is correct in every case. Nothing acknowledged is lost: it is in
//! both images, or re-sent before anything newer is acknowledged.
//!
//! # Partner failure
//!
//! When no connection exists for [`ShadowConfig::partner_timeout`] (counted from start or
//! from the last suspension, like the messenger's), the partner is declared absent: pending
//! and new appends complete at once with [`Appended::mirrored`] `== false`. They are durable
//! in this node's NVRAM only and would be lost with this node; a record is not refused
//! (an error would tell the caller the record was not appended, yet it is in the log and
//! will be mirrored when the partner returns). When the partner returns, the live log is
//! re-sent as above, so it holds those records too. Status counts them (`unmirrored`).
//!
//! # Replay on takeover
//!
//! [`ShadowMirror::replay_partner`] reads the local `shadow-mirror` region and returns the
//! partner's records after its last mirrored checkpoint and after the position already
//! replayed, in order; that position (a [`ReplayCursor`]) is kept in a small NVRAM backing
//! (two alternating slots, a file next to the log in a node) so a second takeover replays
//! nothing twice. [`ShadowMirror::replay_hook`] plugs it into
//! [`JournalHooks::with_replay`](crate::clients::giveback::JournalHooks::with_replay).
//!
//! # Start: recovery, then a new generation
//!
//! [`ShadowMirror::start`] opens the local NVRAM without formatting it; nothing is appended
//! ([`ShadowError::NotRecovered`]) until [`ShadowMirror::recover`] decided what the previous
//! run's records owe ([`plan_recovery`](super::recovery_plan::plan_recovery): replayed by the
//! partner's takeover, or applied here exactly once through the caller's sink) and formatted
//! a new generation (unix time in nanoseconds, raised above the previous log's and the
//! partner's replay cursor), which makes every old record in the partner's region stale for
//! the scan. With the giveback client, `interlink node` runs it from
//! [`ServiceHooks::recover_own_log`](crate::clients::giveback::ServiceHooks::recover_own_log),
//! right before this node serves its own disks (docs/architecture.md, "Recovery at start").

#![deny(missing_docs)]

mod attempt;
mod cursor;
mod driver;
mod fetch;
mod recovery;
mod waiting;
mod writer;

pub use cursor::{CursorKind, CursorStore};
pub use recovery::{Recovered, RecoveryOutcome};
pub use waiting::AppendFuture;
pub use writer::{
    check_payload, fill_payload, writer_payload, ShadowWriter, WriterConfig, WriterStats,
};

use super::error::{LogError, ShadowError};
use super::log_format::{max_payload, DATA_OFFSET, MIN_IMAGE_LEN, RECORD_ALIGN};
use super::log_replay::{LogPosition, Replay, ReplayCursor, ReplayedRecord};
use super::nvram::{NvramBacking, NvramKind};
use crate::clients::giveback::service::ReplayHook;
use crate::clients::giveback::PartnerLogContext;
use crate::fabric::{Access, BusyPoll, ProviderKind};
use crate::manager::{BandwidthClass, ClientSpec, LinkId, Manager, ReadGrant};
use crate::recorded_metrics::ShadowMetrics;
use attempt::try_append;
use driver::{drive, Counters, Inner, Shared, Sleeper, POLL_BATCH};
use parking_lot::{Condvar, Mutex, MutexGuard};
use recovery::RecoveryState;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default client name.
pub const CLIENT_NAME: &str = "shadow";
/// Purpose of the region the partner's log image lands in.
pub const MIRROR_REGION: &str = "shadow-mirror";
/// Purpose of the staging region mirror writes are posted from.
pub const TX_REGION: &str = "shadow-tx";
/// Purpose of the small region the partner READs behind its mirror writes
/// ([`Durability::Read`]); it holds nothing but zeros.
pub const FLUSH_REGION: &str = "shadow-flush";
/// Purpose of the local region those READs land in.
pub const FLUSH_LANDING: &str = "shadow-landing";
/// Purpose of the local region the READs fetching this node's own log from the partner's
/// copy land in, a chunk at a time (F5.6).
pub const FETCH_LANDING: &str = "shadow-fetch";
/// Bytes one fetch READ moves at most (the size of [`FETCH_LANDING`], or the log's if
/// smaller).
pub const FETCH_CHUNK: usize = 256 * 1024;
/// Bytes a durability READ reads.
pub const FLUSH_LEN: usize = 8;
/// The rights of [`FLUSH_REGION`]: the partner may READ it and nothing else.
pub const FLUSH_REGION_ACCESS: Access = Access::REMOTE_READ;
/// The rights of [`MIRROR_REGION`]: the partner WRITEs its log into it, and READs it back
/// when its own NVRAM lost the log (F5.6). The region holds that partner's log and nothing
/// else.
pub const SHADOW_MIRROR_ACCESS: Access = Access::REMOTE_WRITE.union(Access::REMOTE_READ);

/// When a mirror write counts as done (F5.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// When its completion arrives: the partner's adapter acknowledged it (which on RC does
    /// not say the data reached the partner's memory).
    Delivered,
    /// When an RDMA READ posted after it on the same queue pair returned: the responder
    /// executes the READ after the WRITEs before it, so they are placed in the partner's
    /// memory. One READ covers a batch of writes.
    #[default]
    Read,
    /// When an RDMA FLUSH (global visibility) of the range of the partner's mirror region the
    /// batch of writes wrote, posted after them on the same queue pair, completed: the
    /// responder acknowledges a FLUSH only once the WRITEs before it are placed. One FLUSH
    /// covers a batch of writes. Verbs only, and only
    /// where the device, the verbs library and its provider support FLUSH (rdma-core 45 or
    /// later; rxe on Linux 6.2 or later) on both nodes: the partner grants the right on its
    /// mirror region only if its device has FLUSH. Otherwise (the soft provider, an older
    /// library, a device without it) the connection uses [`Durability::Read`], which this
    /// setting also registers for; [`ShadowStats::durability_in_use`] and
    /// [`ShadowStats::flush_unavailable`] say which and why, and a warning is logged.
    Flush,
}

/// A backing chosen at run time.
pub type Nvram = Box<dyn NvramBacking>;

/// How a [`ShadowMirror`] runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowConfig {
    /// Manager client name (the partner runs one of the same name, with a log of the same
    /// size).
    pub name: String,
    /// Bandwidth class for placement.
    pub class: BandwidthClass,
    /// Generation of the fresh log (None: unix time in nanoseconds).
    pub generation: Option<u64>,
    /// Longest an append waits for a link before appending anything (or for log space the
    /// mirror is about to reclaim). Keep it at or above `partner_timeout`, so an append
    /// during an outage ends mirrored or unmirrored rather than with an error.
    pub link_timeout: Duration,
    /// Without a connection for this long, the partner is declared absent and appends
    /// complete unmirrored.
    pub partner_timeout: Duration,
    /// Mirror writes in flight at most (send queue depth).
    pub send_depth: u32,
    /// A waiting appender busy-polls this long before it sleeps (the first
    /// [`pure_spin`](Self::pure_spin) back to back, then yielding the CPU on every round). A
    /// completion reaped by the waiter itself saves two thread wake-ups; on real hardware a
    /// mirror write completes long before this.
    pub spin: Duration,
    /// How long a waiting appender polls back to back before it yields the CPU between
    /// polls ([`BusyPoll`]); `None`: the link's provider's default.
    /// Default: [`BusyPoll::CLIENT_PURE`] (20 µs).
    #[serde(default = "crate::fabric::BusyPoll::client_default")]
    pub pure_spin: Option<Duration>,
    /// When a mirror write counts as done (both nodes must use the same).
    #[serde(default)]
    pub durability: Durability,
    /// Longest the recovery waits for a connection that reads the partner's copy of this
    /// node's log, when the local NVRAM lost it (F5.6; [`ShadowError::FetchNoPartner`]).
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Duration,
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ShadowConfig {
    /// Defaults: client `"shadow"`, class high, a 30 s link timeout, a 5 s partner timeout,
    /// 128 writes in flight, 1 ms of spinning (the first 20 µs back to back), a 30 s fetch
    /// timeout.
    pub fn new() -> ShadowConfig {
        ShadowConfig {
            name: CLIENT_NAME.into(),
            class: BandwidthClass::High,
            generation: None,
            link_timeout: Duration::from_secs(30),
            partner_timeout: Duration::from_secs(5),
            send_depth: 128,
            spin: Duration::from_millis(1),
            pure_spin: crate::fabric::BusyPoll::client_default(),
            durability: Durability::Read,
            fetch_timeout: default_fetch_timeout(),
        }
    }
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig::new()
    }
}

/// An acknowledged append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Appended {
    /// Where the record is.
    pub position: LogPosition,
    /// Whether the record is complete in the partner's memory. `false`: the partner was
    /// declared absent, the record is durable on this node only (and is mirrored when the
    /// partner returns).
    pub mirrored: bool,
}

/// An append written locally and in flight to the mirror; [`ShadowMirror::wait`] for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendTicket {
    position: LogPosition,
    started: Instant,
}

impl AppendTicket {
    /// Where the record is.
    pub fn position(&self) -> LogPosition {
        self.position
    }
}

/// Counters and state of a [`ShadowMirror`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowStats {
    /// Whether a connection is up now.
    pub connected: bool,
    /// Its link.
    pub link: Option<LinkId>,
    /// Connections established (the first and every failover).
    pub connections: u64,
    /// Whether the partner is declared absent now (appends complete unmirrored).
    pub partner_absent: bool,
    /// Times the partner was declared absent.
    pub partner_absences: u64,
    /// Generation of the local log (0 before the recovery).
    pub generation: u64,
    /// What the recovery of the own log at start did (None before it completed).
    #[serde(default)]
    pub recovery: Option<Recovered>,
    /// Records appended.
    pub appends: u64,
    /// Payload bytes appended.
    pub bytes: u64,
    /// Records acknowledged (mirrored or not).
    pub acknowledged: u64,
    /// Highest sequence number acknowledged.
    pub acknowledged_seq: u64,
    /// Records appended and not acknowledged yet.
    pub in_flight: u64,
    /// Records acknowledged unmirrored (the partner was absent).
    pub unmirrored: u64,
    /// Mirror writes posted.
    pub mirror_writes: u64,
    /// Bytes of mirror writes posted.
    pub mirror_bytes: u64,
    /// Times the live log was re-sent on a new connection.
    pub resyncs: u64,
    /// Mirror writes re-sent on new connections.
    pub resent_writes: u64,
    /// Failed mirror writes (each fails the connection).
    pub write_errors: u64,
    /// Durability READs posted behind mirror writes ([`Durability::Read`]).
    #[serde(default)]
    pub durability_reads: u64,
    /// Durability FLUSHes posted behind mirror writes ([`Durability::Flush`]).
    #[serde(default)]
    pub durability_flushes: u64,
    /// The durability point of the current (or last) connection: the configured one, except
    /// [`Durability::Read`] where [`Durability::Flush`] is unavailable. `None` before the
    /// first connection.
    #[serde(default)]
    pub durability_in_use: Option<Durability>,
    /// Why [`Durability::Flush`] is not in use on the current (or last) connection.
    #[serde(default)]
    pub flush_unavailable: Option<String>,
    /// Connections given up because their writes stopped completing (5 s without one).
    #[serde(default)]
    pub stalls: u64,
    /// The latest checkpoint complete on the mirror.
    pub checkpoint_mirrored: u64,
    /// Data-area bytes free for appends.
    pub free_bytes: u64,
    /// Append latency (start to acknowledgement), median, in µs.
    pub latency_p50_us: f64,
    /// 99th percentile, in µs.
    pub latency_p99_us: f64,
    /// Maximum, in µs.
    pub latency_max_us: f64,
    /// Partner log replays done (takeovers that read the partner's log, including those
    /// that found no record after its checkpoint).
    pub replays: u64,
    /// Partner records replayed.
    pub replayed_records: u64,
    /// Partner records a forced takeover did not replay because the partner's record says
    /// its own recovery applied records of that generation itself with this copy not
    /// following (see [`replay_hook`](ShadowMirror::replay_hook)).
    #[serde(default)]
    pub not_replayed_applied_here: u64,
    /// Times acknowledgements were held because the giveback client's serving lease did not
    /// run ([`set_serving_lease`](ShadowMirror::set_serving_lease)).
    #[serde(default)]
    pub lease_holds: u64,
    /// Whether they are held now.
    #[serde(default)]
    pub lease_held: bool,
    /// The last error seen (connection failure, unusable connection).
    pub last_error: Option<String>,
}

/// The shadow log of this node, mirrored into the partner, and the partner's log image
/// mirrored into this node (see the [module docs](self)). Dropping it stops the driver and
/// closes the client.
pub struct ShadowMirror {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The manager this client runs on: kept alive while the client lives (every client
    /// holds what it needs; dropped last).
    _manager: Arc<Manager>,
}

impl std::fmt::Debug for ShadowMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowMirror")
            .field("name", &self.shared.cfg.name)
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// The NVRAM file of `node`'s shadow log in `dir`.
pub fn log_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("shadow-{node}.nvram"))
}

/// The replay cursor file of `node` in `dir` (what it replayed of its partner's log).
pub fn cursor_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("shadow-{node}.cursor"))
}

/// File backings for `node` in `dir`: its log (`shadow-<node>.nvram`, `log_len` bytes) and
/// its replay cursor (`shadow-<node>.cursor`) ([`backings`] with [`NvramKind::File`]).
pub fn file_backings(dir: &Path, node: u32, log_len: usize) -> Result<(Nvram, Nvram), ShadowError> {
    backings(dir, node, log_len, NvramKind::File)
}

/// The backings of `node` in `dir` of `kind`: its log (`shadow-<node>.nvram`, `log_len`
/// bytes) and its replay cursor (`shadow-<node>.cursor`). With [`NvramKind::Dax`], `dir` is on
/// a filesystem mounted `-o dax`.
pub fn backings(
    dir: &Path,
    node: u32,
    log_len: usize,
    kind: NvramKind,
) -> Result<(Nvram, Nvram), ShadowError> {
    let log = kind.open(&log_path(dir, node), log_len)?;
    let cursor = kind.open(&cursor_path(dir, node), CursorStore::LEN)?;
    Ok((log, cursor))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl ShadowMirror {
    /// What the shadow log registers with the manager for a log of `log_len` bytes: the
    /// mirror region the partner WRITEs (and READs back only after its NVRAM lost its log:
    /// [`ReadGrant::ShadowLogFetch`]), the staging and fetch landing regions, and for the READ
    /// and FLUSH durability points the flush region the partner READs
    /// ([`ReadGrant::ShadowLogFlush`]) with its landing.
    pub fn client_spec(cfg: &ShadowConfig, log_len: usize) -> ClientSpec {
        let mirror_access = match cfg.durability {
            // Granted only where this node's device has FLUSH (the partner sees the rights).
            Durability::Flush => SHADOW_MIRROR_ACCESS | Access::REMOTE_FLUSH,
            Durability::Read | Durability::Delivered => SHADOW_MIRROR_ACCESS,
        };
        let mut spec = ClientSpec::new(cfg.name.clone(), cfg.class, 1)
            .readable_region(
                MIRROR_REGION,
                log_len,
                mirror_access,
                ReadGrant::ShadowLogFetch,
            )
            .region(TX_REGION, log_len, Access::NONE)
            .region(FETCH_LANDING, log_len.min(FETCH_CHUNK), Access::LOCAL_WRITE)
            .term("shadow log bytes", log_len as u64);
        // Flush falls back to Read where FLUSH is unavailable: both register the READ target.
        if cfg.durability != Durability::Delivered {
            spec = spec
                .readable_region(
                    FLUSH_REGION,
                    64,
                    FLUSH_REGION_ACCESS,
                    ReadGrant::ShadowLogFlush,
                )
                .region(FLUSH_LANDING, 64, Access::LOCAL_WRITE);
        }
        spec.qp_capacity.max_send_wr = cfg.send_depth.max(4);
        spec.qp_capacity.flush = cfg.durability == Durability::Flush;
        spec.qp_capacity.max_recv_wr = 1;
        spec
    }

    /// Registers the client with the manager and starts the driver thread, with this node's
    /// own log **not recovered**: `log` (its whole length; the partner must use the same) is
    /// neither formatted nor read yet, and appends wait for [`recover`](ShadowMirror::recover),
    /// which decides what the records the previous run left in it still owe (see the
    /// [module docs](self)). The partner's log is mirrored into this node from the first
    /// connection on, so a takeover can replay it before this node's own log is recovered.
    /// `cursor` (at least [`CursorStore::LEN`] bytes) holds the replay cursors.
    pub fn start(
        manager: &Arc<Manager>,
        cfg: ShadowConfig,
        log: Nvram,
        cursor: Nvram,
    ) -> Result<ShadowMirror, ShadowError> {
        let log_len = log.len();
        if log_len < MIN_IMAGE_LEN {
            return Err(LogError::FormatTooSmall {
                size: log_len,
                min: MIN_IMAGE_LEN,
            }
            .into());
        }
        let max_payload = max_payload((log_len - DATA_OFFSET) & !(RECORD_ALIGN - 1));
        let cursor = CursorStore::open(cursor)?;
        let depth = cfg.send_depth.max(4);
        let spec = ShadowMirror::client_spec(&cfg, log_len);
        let handle = manager
            .register(spec)
            .map_err(|source| ShadowError::Register {
                name: cfg.name.clone(),
                source,
            })?;
        let inner = Inner {
            log: None,
            recovery: RecoveryState::Unrecovered(log),
            link: None,
            mirror: None,
            posts: Vec::with_capacity(depth as usize),
            completions: Vec::with_capacity(POLL_BATCH),
            suspended_since: Some(Instant::now()),
            absent: false,
            acked: 0,
            unmirrored: VecDeque::new(),
            checkpointed: 0,
            last_checkpoint: None,
            sync_target: None,
            connected_once: false,
            counters: Counters::default(),
            latency: crate::manager::client::new_histogram(),
            last_error: None,
            refused: None,
            durability_in_use: None,
            flush_unavailable: None,
            lease_held: false,
            served: false,
            relinquished: false,
            recovered_for: None,
        };
        let name = cfg.name.clone();
        let shared = Arc::new(Shared {
            cfg,
            handle,
            log_len,
            generation: AtomicU64::new(0),
            max_payload,
            inner: Mutex::new(inner),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            cursor: Mutex::new(cursor),
            recovering: Mutex::new(()),
            copy_mark: std::sync::OnceLock::new(),
            own_log: std::sync::OnceLock::new(),
            serving_lease: std::sync::OnceLock::new(),
            sleepers: AtomicUsize::new(0),
            kick: crossbeam_channel::bounded(1),
            metrics: ShadowMetrics::new(manager.config().node_id, &name),
            wakers: Mutex::new(Vec::new()),
            blocked_starts: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("il-shadow-{name}"))
            .spawn(move || {
                crate::fabric::prime_thread_parking();
                drive(&s)
            })
            .map_err(|source| ShadowError::Start {
                name: name.clone(),
                source,
            })?;
        tracing::info!(client = %name, log_len, "shadow mirror driver started; own log awaits recovery");
        Ok(ShadowMirror {
            shared,
            thread: Mutex::new(Some(thread)),
            _manager: manager.clone(),
        })
    }

    /// The client name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// Generation of the local log (0 until [`recover`](ShadowMirror::recover) ran).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The sequence number the next append gets (1 before the recovery).
    pub fn next_seq(&self) -> u64 {
        let st = self.shared.inner.lock();
        st.log
            .as_ref()
            .filter(|_| st.recovery.is_recovered())
            .map_or(1, |l| l.stats().appended + 1)
    }

    /// The largest payload an append takes.
    pub fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    /// Appends a record and waits until it is durable locally and complete on the mirror
    /// (or, with the partner absent, durable locally: [`Appended::mirrored`] is `false`), at
    /// most [`ShadowConfig::link_timeout`] for the append and the link and partner timeouts
    /// for its acknowledgement.
    pub fn append(&self, payload: &[u8]) -> Result<Appended, ShadowError> {
        let t = self.append_start(payload)?;
        self.wait(&t)
    }

    /// [`append`](ShadowMirror::append) with a deadline `timeout` from now for the whole call:
    /// [`ShadowError::AppendNoLink`] or [`ShadowError::NotRecovered`] (nothing appended), or
    /// [`ShadowError::AppendTimeout`] (appended locally, its mirror write unconfirmed).
    pub fn append_timeout(
        &self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Appended, ShadowError> {
        let deadline = Instant::now() + timeout;
        let t = self.append_start_until(payload, deadline)?;
        self.wait_until(&t, deadline)
    }

    /// Appends several records (in flight together) and waits for all of them; results in
    /// order. On an error the records before it may have been appended. Each append and
    /// each wait has the deadline of [`append_start`](Self::append_start) and
    /// [`wait`](Self::wait).
    pub fn append_many(&self, payloads: &[&[u8]]) -> Result<Vec<Appended>, ShadowError> {
        let mut tickets = Vec::with_capacity(payloads.len());
        for p in payloads {
            tickets.push(self.append_start(p)?);
        }
        tickets.iter().map(|t| self.wait(t)).collect()
    }

    /// [`append_many`](Self::append_many) with a deadline `timeout` from now for the whole
    /// call (errors as [`append_timeout`](Self::append_timeout)).
    pub fn append_many_timeout(
        &self,
        payloads: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<Appended>, ShadowError> {
        let deadline = Instant::now() + timeout;
        let mut tickets = Vec::with_capacity(payloads.len());
        for p in payloads {
            tickets.push(self.append_start_until(p, deadline)?);
        }
        tickets
            .iter()
            .map(|t| self.wait_until(t, deadline))
            .collect()
    }

    /// Appends a record to the local log (durable when this returns) and posts its mirror
    /// writes, without waiting for them; [`wait`](ShadowMirror::wait) for the ticket. Waits
    /// for the recovery of the own log and for a link first (or for the partner to be
    /// declared absent), at most [`ShadowConfig::link_timeout`]: [`ShadowError::AppendNoLink`]
    /// and [`ShadowError::NotRecovered`] mean nothing was appended. [`LogError::Full`]
    /// comes at once when no checkpoint is on its way to free space, or after the link
    /// timeout when one is.
    pub fn append_start(&self, payload: &[u8]) -> Result<AppendTicket, ShadowError> {
        self.append_start_until(payload, Instant::now() + self.shared.cfg.link_timeout)
    }

    /// [`append_start`](ShadowMirror::append_start) waiting at most `timeout`.
    pub fn append_start_timeout(
        &self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<AppendTicket, ShadowError> {
        self.append_start_until(payload, Instant::now() + timeout)
    }

    fn append_start_until(
        &self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<AppendTicket, ShadowError> {
        let shared = &*self.shared;
        let started = Instant::now();
        let mut st = shared.lock_live()?;
        loop {
            let blocked = match try_append(shared, &mut st, payload, started)? {
                Ok(ticket) => return Ok(ticket),
                Err(blocked) => blocked,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(blocked.into_error(shared, now - started));
            }
            shared
                .changed
                .wait_for(&mut st, (deadline - now).min(Duration::from_millis(1)));
        }
    }

    /// Waits until the ticket's record is acknowledged, at most the link and partner timeouts
    /// (see [`wait_timeout`](ShadowMirror::wait_timeout)). Record its latency once: call it
    /// once per ticket.
    pub fn wait(&self, ticket: &AppendTicket) -> Result<Appended, ShadowError> {
        let limit = self.shared.cfg.link_timeout + self.shared.cfg.partner_timeout;
        self.wait_until(ticket, Instant::now() + limit)
    }

    /// Waits at most `timeout` until the ticket's record is acknowledged.
    /// [`ShadowError::AppendTimeout`] if neither its mirror write completed nor the partner
    /// was declared absent (by the partner timeout or
    /// [`declare_partner_failed`](ShadowMirror::declare_partner_failed)) by then; the record
    /// stays in the log and the ticket may be waited for again.
    pub fn wait_timeout(
        &self,
        ticket: &AppendTicket,
        timeout: Duration,
    ) -> Result<Appended, ShadowError> {
        self.wait_until(ticket, Instant::now() + timeout)
    }

    fn wait_until(
        &self,
        ticket: &AppendTicket,
        deadline: Instant,
    ) -> Result<Appended, ShadowError> {
        let shared = &*self.shared;
        let seq = ticket.position.seq;
        let begin = Instant::now();
        let spin_until = begin + shared.cfg.spin;
        let mut st = shared.inner.lock();
        let mut asleep = None;
        loop {
            if self.generation() != ticket.position.generation {
                // Given up at a halt (and maybe recovered again since).
                return Err(ShadowError::Relinquished {
                    name: shared.cfg.name.clone(),
                    generation: ticket.position.generation,
                    seq,
                });
            }
            if st.acked >= seq {
                let mirrored = !st.is_unmirrored(seq);
                let latency = ticket.started.elapsed();
                crate::manager::client::record_us(&mut st.latency, latency);
                shared.metrics.append_latency.record(latency);
                return Ok(Appended {
                    position: ticket.position,
                    mirrored,
                });
            }
            if shared.stop.load(Ordering::Relaxed) {
                return Err(shared.stopped());
            }
            if shared.pump(&mut st) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ShadowError::AppendTimeout {
                    generation: ticket.position.generation,
                    seq,
                    waited: now - begin,
                });
            }
            if now < spin_until {
                let provider = st
                    .link
                    .as_ref()
                    .map_or(ProviderKind::Soft, |l| l.qp.send_cq().device().provider());
                let poll = BusyPoll::configured(provider, shared.cfg.pure_spin);
                MutexGuard::unlocked(&mut st, || poll.round(begin, now));
            } else {
                // The driver blocks on the completion queue while a waiter sleeps.
                asleep.get_or_insert_with(|| Sleeper::new(shared));
                shared
                    .changed
                    .wait_for(&mut st, (deadline - now).min(Duration::from_millis(1)));
            }
        }
    }

    /// Gives the shadow log the sync state of the partner's copy of this log (F5.7; from
    /// [`GivebackNode::partner_copy_mark`](crate::clients::giveback::GivebackNode::partner_copy_mark)):
    /// from then on nothing is appended before the mailbox records that this node runs a
    /// shadow log ([`ShadowError::NotInMailbox`] past the deadline), nothing is acknowledged
    /// unmirrored before the outdated mark is durable in the mailbox, and once a full send
    /// completed on a connection the mark is cleared and the mailbox names the partner
    /// incarnation the copy is complete for. Only the first call counts.
    pub fn set_partner_copy_mark(&self, mark: Arc<crate::clients::giveback::PartnerCopyMark>) {
        self.attach_copy_mark(mark);
    }

    /// Binds acknowledgements to the giveback client's serving lease
    /// ([`GivebackNode::serving_lease`](crate::clients::giveback::GivebackNode::serving_lease);
    /// [`recover_from_mailbox`](Self::recover_from_mailbox) takes it from its context): a
    /// record durable where it must be is acknowledged only while the lease runs, so a node
    /// that stalled and was taken over meanwhile acknowledges nothing its partner's replay
    /// missed. Without a lease (no giveback client) nothing is held.
    pub fn set_serving_lease(&self, lease: Arc<crate::clients::giveback::ServingLease>) {
        if let Err(lease) = self.shared.serving_lease.set(lease) {
            if !self
                .shared
                .serving_lease
                .get()
                .is_some_and(|l| Arc::ptr_eq(l, &lease))
            {
                tracing::warn!(client = %self.name(), "a serving lease was given already; keeping it");
            }
        }
        let _ = self.shared.kick.0.try_send(());
    }

    fn attach_copy_mark(&self, mark: Arc<crate::clients::giveback::PartnerCopyMark>) {
        mark.attach();
        if let Err(mark) = self.shared.copy_mark.set(mark) {
            if self
                .shared
                .copy_mark
                .get()
                .is_some_and(|m| Arc::ptr_eq(m, &mark))
            {
                return;
            }
            tracing::warn!(client = %self.name(), "a partner copy mark was given already");
        }
        let _ = self.shared.kick.0.try_send(());
    }

    /// Follows the failure detector (the giveback client): the partner has failed or was
    /// taken over, so no mirror write will complete. Pending and new appends complete at once
    /// unmirrored (as after [`ShadowConfig::partner_timeout`]), and the connection is handed
    /// back to the manager, so the live log is re-sent as soon as the partner returns.
    pub fn declare_partner_failed(&self, why: &str) {
        let shared = &*self.shared;
        let mut st = shared.inner.lock();
        shared.link_failed(&mut st, why);
        shared.declare_absent(&mut st, why);
        shared.post(&mut st);
        shared.note_acks(&mut st);
        shared.notify();
    }

    /// Whether the ticket's record is acknowledged (does not wait or poll).
    pub fn is_acknowledged(&self, ticket: &AppendTicket) -> bool {
        self.shared.inner.lock().acked >= ticket.position.seq
    }

    /// Marks every record through `through` consumed (F5.2): the next checkpoint slot is
    /// written locally and mirrored; space before it is reclaimed once that write completed
    /// ([`checkpointed`](ShadowMirror::checkpointed) then reaches it). A survivor replays
    /// only records after the latest mirrored checkpoint.
    pub fn checkpoint(&self, through: LogPosition) -> Result<(), ShadowError> {
        let shared = &*self.shared;
        let mut st = shared.lock_live()?;
        if st.relinquished || through.generation != shared.generation.load(Ordering::Acquire) {
            return Err(ShadowError::Relinquished {
                name: shared.cfg.name.clone(),
                generation: through.generation,
                seq: through.seq,
            });
        }
        st.log()?.checkpoint(through)?;
        if st.last_checkpoint.is_none_or(|p| p < through) {
            st.last_checkpoint = Some(through);
        }
        shared.post(&mut st);
        Ok(())
    }

    /// The latest checkpoint complete on the mirror (0: none yet).
    pub fn checkpointed(&self) -> LogPosition {
        let mut st = self.shared.inner.lock();
        self.shared.pump(&mut st);
        LogPosition {
            generation: self.shared.generation.load(Ordering::Acquire),
            seq: st.checkpointed,
        }
    }

    /// Reads the partner's records from the local mirror region without recording them as
    /// replayed: those after the partner's mirrored checkpoint and after the stored replay
    /// cursor. An empty result when no connection ever brought a region, or the partner
    /// never wrote its log into it.
    pub fn read_partner(&self) -> Result<Replay, ShadowError> {
        let after = self.shared.cursor.lock().load().map(|c| c.position);
        self.shared.read_partner(after)
    }

    /// Replays the partner's log (takeover): returns its records after its last mirrored
    /// checkpoint, in order, exactly once across calls: the position of the last one is
    /// stored (in the cursor NVRAM) before they are returned.
    pub fn replay_partner(&self) -> Result<Vec<ReplayedRecord>, ShadowError> {
        let r = self.read_partner()?;
        let last = r.last();
        self.commit_replay(&r, last, r.records.len(), true)?;
        Ok(r.records)
    }

    /// A replay hook for
    /// [`JournalHooks::with_replay`](crate::clients::giveback::JournalHooks::with_replay):
    /// at takeover it hands every record of the partner's log to `sink` in order, storing the
    /// replay cursor after each, so a second takeover replays nothing twice. If `sink` fails,
    /// the cursor covers the records it consumed, and the hook reports the failure. The
    /// cursor is stored even when no record follows the partner's checkpoint: it tells the
    /// restarted partner that its log was taken over ([`ShadowMirror::recover`]).
    ///
    /// A copy of the generation the partner's record names, while that record says the
    /// partner's own recovery applied records of it itself with this copy not following
    /// ([`PartnerLogContext::partner_log_applied_here`]), is not replayed either: its
    /// checkpoint lags what the partner applied. The cursor says the generation was taken
    /// over at the copy's checkpoint, so the restarted partner drops what it did not apply
    /// (the loss the forced takeover accepted); the records not replayed are counted
    /// (`not_replayed_applied_here`).
    ///
    /// A copy of a generation older than the one the partner's mailbox record names
    /// ([`PartnerLogContext::partner_log_generation`]; only a forced takeover starts from
    /// one) is not replayed: the partner recovered that generation itself before it formatted
    /// the newer one, whose records the copy lacks. The cursor then says the newer generation
    /// was taken over with nothing of it replayed, so the restarted partner drops its records
    /// (the loss the forced takeover accepted) instead of applying them after the survivor
    /// served its disks.
    pub fn replay_hook(
        self: &Arc<Self>,
        mut sink: impl FnMut(ReplayedRecord) -> Result<(), String> + Send + 'static,
    ) -> ReplayHook {
        let me = self.clone();
        Box::new(move |context: &PartnerLogContext| {
            let partner = context.partner;
            let r = me.read_partner().map_err(|e| e.to_string())?;
            let generation = r.generation;
            let recorded = context.partner_log_generation;
            if generation != 0 && generation < recorded {
                tracing::error!(client = %me.name(), partner, copy_generation = generation, recorded, forced_loss = ?context.forced_loss, "the copy of the partner's log is of a generation it recovered itself: nothing replayed (the records of its newer generation are lost to this takeover)");
                let newer = Replay {
                    generation: recorded,
                    checkpoint: 0,
                    records: Vec::new(),
                    torn_tail: false,
                    stop: r.stop,
                };
                return me
                    .commit_replay(&newer, None, 0, true)
                    .map_err(|e| e.to_string());
            }
            if context.partner_log_applied_here && generation != 0 && generation == recorded {
                let not_replayed = r.records.len();
                tracing::error!(client = %me.name(), partner, generation, checkpoint = r.checkpoint, not_replayed, forced_loss = ?context.forced_loss, "the partner's own recovery applied records of this generation itself while this copy did not follow: nothing replayed (its records after the copy's checkpoint were applied by the partner or are lost to this takeover)");
                let none = Replay {
                    records: Vec::new(),
                    ..r
                };
                let mut st = me.shared.inner.lock();
                st.counters.not_replayed_applied_here += not_replayed as u64;
                drop(st);
                return me
                    .commit_replay(&none, None, 0, true)
                    .map_err(|e| e.to_string());
            }
            let total = r.records.len();
            let mut count: usize = 0;
            let mut failure = None;
            for rec in r.records.iter().cloned() {
                let seq = rec.seq;
                if let Err(e) = sink(rec) {
                    failure = Some(format!("replay sink, record {seq}: {e}"));
                    break;
                }
                count += 1;
                let position = LogPosition { generation, seq };
                me.shared
                    .cursor
                    .lock()
                    .store(ReplayCursor {
                        position,
                        complete: false,
                    })
                    .map_err(|e| e.to_string())?;
            }
            let done = r.records.get(count.wrapping_sub(1)).map(|rec| LogPosition {
                generation,
                seq: rec.seq,
            });
            me.commit_replay(&r, done, count, failure.is_none())
                .map_err(|e| e.to_string())?;
            tracing::info!(client = %me.name(), partner, generation, replayed = count, of = total, checkpoint = r.checkpoint, torn_tail = r.torn_tail, "partner shadow log replayed");
            failure.map_or(Ok(()), Err)
        })
    }

    /// Stores the cursor after `last` (if any record was replayed), or at the replayed
    /// log's checkpoint when none was (the partner learns its log was taken over), `complete`
    /// when the replay went through the whole copy, and counts the replay, an empty one
    /// included.
    fn commit_replay(
        &self,
        r: &Replay,
        last: Option<LogPosition>,
        count: usize,
        complete: bool,
    ) -> Result<(), ShadowError> {
        let position = last
            .or((r.generation != 0).then_some(LogPosition {
                generation: r.generation,
                seq: r.checkpoint,
            }))
            .map(|position| ReplayCursor { position, complete });
        if let Some(position) = position {
            let mut cursor = self.shared.cursor.lock();
            let stored = cursor.load();
            if stored.is_none_or(|c| c < position) {
                cursor.store(position)?;
            }
        }
        let mut st = self.shared.inner.lock();
        st.counters.replays += 1;
        st.counters.replayed_records += count as u64;
        Ok(())
    }

    /// Counters and state.
    pub fn stats(&self) -> ShadowStats {
        let shared = &*self.shared;
        let mut st = shared.inner.lock();
        shared.pump(&mut st);
        let log = st.log.as_ref().map(|l| l.stats()).unwrap_or_default();
        let c = &st.counters;
        let lat = crate::manager::client::summarize(&st.latency);
        ShadowStats {
            connected: st.link_up(),
            link: st.link.as_ref().map(|l| l.id),
            connections: c.connections,
            partner_absent: st.absent,
            partner_absences: c.partner_absences,
            generation: shared.generation.load(Ordering::Acquire),
            recovery: st.recovery.report(),
            appends: c.appends,
            bytes: c.bytes,
            acknowledged: c.acknowledged,
            acknowledged_seq: st.acked,
            in_flight: log.appended.saturating_sub(st.acked),
            unmirrored: c.unmirrored,
            mirror_writes: c.mirror_writes,
            mirror_bytes: c.mirror_bytes,
            resyncs: c.resyncs,
            resent_writes: c.resent_writes,
            write_errors: c.write_errors,
            durability_reads: c.durability_reads,
            durability_flushes: c.durability_flushes,
            durability_in_use: st.durability_in_use,
            flush_unavailable: st.flush_unavailable.clone(),
            stalls: c.stalls,
            checkpoint_mirrored: st.checkpointed,
            free_bytes: log.free_bytes,
            latency_p50_us: lat.p50_us,
            latency_p99_us: lat.p99_us,
            latency_max_us: lat.max_us,
            replays: c.replays,
            replayed_records: c.replayed_records,
            not_replayed_applied_here: c.not_replayed_applied_here,
            lease_holds: c.lease_holds,
            lease_held: st.lease_held,
            last_error: st.last_error.clone(),
        }
    }
}

impl Drop for ShadowMirror {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.notify();
        let _ = self.shared.kick.0.try_send(()); // an idle driver: stop now
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!(client = %self.shared.cfg.name, "shadow driver thread panicked");
            }
        }
        let st = self.shared.inner.lock();
        let log = st.log.as_ref().map(|l| l.stats()).unwrap_or_default();
        tracing::info!(
            client = %self.shared.cfg.name,
            appends = st.counters.appends,
            acknowledged = st.acked,
            unacknowledged = log.appended.saturating_sub(st.acked),
            unmirrored = st.counters.unmirrored,
            "shadow mirror stopped"
        );
    }
}
