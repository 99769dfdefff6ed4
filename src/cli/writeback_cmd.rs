//! `interlink node --writeback DIR[:PARTNER_TIMEOUT_MS[:BUFFERS[:BLOCK_SIZE]]]`: the node's
//! mirrored write-back
//! (F5.3-F5.5) over its NVRAM files `DIR/writeback-<node>.nvram` (its writes) and
//! `DIR/writeback-<node>.mirror.nvram` (the image of its partner's), with a background writer
//! driven through the control socket (client name `writeback`) that records every completed
//! write in `DIR/wb-acked-<node>.log`, and a check that compares the partner's log with this
//! node's mirror image.
//!
//! The writer writes `blocks` blocks at a time to unit `<node>`, cycling over the first
//! `range` blocks (so blocks are overwritten and buffers reused), `window` writes in flight;
//! write `v` (from 1) starts at block `((v - 1) * blocks) % range` and fills every block with
//! [`fill_block`]`(v, unit, block)`. The acknowledged log has one line per completed write,
//! in completion order: `v first blocks status` with status `M` (mirrored), `L` (mirror
//! lost) or `R` (rejected by the mirror).
//!
//! Destaged blocks go to the ledger `DIR/destaged-<node>.log` ([`destaged_path`]), one line
//! per block, `unit block crc32c-hex` (the CRC-32C of the block's data, 8 hex digits), written
//! and synced before the block is freed: by the `{"destage": true}` command (this node's
//! dirty blocks; unit = this node) and, with `--giveback`, at a takeover (the partner's
//! mirrored dirty blocks; unit = the partner). A crash between a line and the free of its
//! block writes that line again at the next destage or takeover.

use anyhow::{bail, Context};
use interlink::clients::giveback::service::{RecoverHook, ReplayHook};
use interlink::clients::giveback::GivebackNode;
use interlink::clients::mirror::writeback_driver::backings;
use interlink::clients::mirror::{
    BlockRef, CompletionStatus, DirtyRef, MirroredWriteBack, NvramKind, Persistence,
    WriteBackConfig,
};
use interlink::manager::control::ControlResponse;
use interlink::manager::Manager;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Default buffers per table.
const DEFAULT_BUFFERS: u32 = 1024;
/// Default block size.
const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// What `--writeback DIR[:PARTNER_TIMEOUT_MS[:BUFFERS[:BLOCK_SIZE]]]` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteBackSpec {
    /// The directory of the NVRAM files and logs.
    pub dir: PathBuf,
    /// The partner timeout (None: the default).
    pub partner_timeout: Option<Duration>,
    /// Buffers (blocks) per table.
    pub buffers: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// The NVRAM backing of the table and the partner's image (`--nvram`).
    pub nvram: NvramKind,
}

/// Parses `DIR[:PARTNER_TIMEOUT_MS[:BUFFERS[:BLOCK_SIZE]]]` (DIR without `:`; an empty
/// field takes its default: 5000 ms, 1024 buffers of 4096 bytes).
pub fn parse_spec(s: &str) -> anyhow::Result<WriteBackSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 4 || parts[0].is_empty() {
        bail!("--writeback {s:?}: expected DIR[:PARTNER_TIMEOUT_MS[:BUFFERS[:BLOCK_SIZE]]]");
    }
    let field = |i: usize, what: &str| {
        parts
            .get(i)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>()
                    .with_context(|| format!("--writeback {s:?}: {what}"))
            })
            .transpose()
    };
    let partner_timeout = field(1, "partner timeout")?.map(Duration::from_millis);
    let buffers = field(2, "buffers")?.map_or(Ok(DEFAULT_BUFFERS), u32::try_from)?;
    let block_size = field(3, "block size")?.map_or(Ok(DEFAULT_BLOCK_SIZE), u32::try_from)?;
    Ok(WriteBackSpec {
        dir: PathBuf::from(parts[0]),
        partner_timeout,
        buffers,
        block_size,
        nvram: NvramKind::File,
    })
}

/// The destage ledger of `node` in `dir`.
pub fn destaged_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("destaged-{node}.log"))
}

/// Appends `unit block crc32c-hex` lines to a destage ledger, each synced before it returns.
struct Ledger {
    path: PathBuf,
    file: std::fs::File,
}

impl Ledger {
    fn open(path: PathBuf) -> Result<Ledger, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(Ledger { path, file })
    }

    fn record(&mut self, at: BlockRef, data: &[u8]) -> Result<(), String> {
        let line = format!("{} {} {:08x}\n", at.unit, at.block, crc32c::crc32c(data));
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("append to {}: {e}", self.path.display()))
    }
}

/// The acknowledged log of `node` in `dir`.
pub fn acked_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("wb-acked-{node}.log"))
}

/// The content of `block` of `unit` written by write `version`.
pub fn fill_block(version: u64, unit: u16, block: u64, out: &mut [u8]) {
    let seed = version
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(u64::from(unit) << 48)
        .wrapping_add(block << 8);
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&seed.wrapping_add(i as u64).to_le_bytes());
    }
}

/// What the writer does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterConfig {
    /// Writes (u64::MAX: until stopped).
    pub count: u64,
    /// Blocks per write.
    pub blocks: u64,
    /// Writes in flight at most.
    pub window: usize,
    /// Blocks cycled over.
    pub range: u64,
}

/// Progress of the writer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterStats {
    /// Whether it is still running.
    pub running: bool,
    /// Writes started.
    pub started: u64,
    /// Writes completed.
    pub completed: u64,
    /// Completed mirrored.
    pub mirrored: u64,
    /// Completed with the mirror lost.
    pub lost: u64,
    /// Completed after a reject.
    pub rejected: u64,
    /// Errors (the writer stops at the first).
    pub errors: u64,
    /// The last error.
    pub last_error: Option<String>,
}

struct Writer {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WriterStats>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(
        wb: Arc<MirroredWriteBack>,
        cfg: WriterConfig,
        unit: u16,
        log: PathBuf,
    ) -> anyhow::Result<Writer> {
        if cfg.blocks == 0
            || cfg.window == 0
            || cfg.range % cfg.blocks != 0
            || cfg.range < cfg.blocks * cfg.window as u64 * 2
        {
            bail!("writer: blocks and window at least 1, range a multiple of blocks and at least 2 * blocks * window");
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WriterStats {
            running: true,
            ..WriterStats::default()
        }));
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("il-wb-writer".into())
            .spawn(move || {
                if let Err(e) = run_writer(&wb, &cfg, unit, &mut file, &s, &st) {
                    let mut st = st.lock();
                    st.errors += 1;
                    st.last_error = Some(format!("{e:#}"));
                    tracing::error!(error = %e, "write-back writer stopped");
                }
                st.lock().running = false;
            })
            .context("start the writer thread")?;
        Ok(Writer {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_writer(
    wb: &MirroredWriteBack,
    cfg: &WriterConfig,
    unit: u16,
    log: &mut std::fs::File,
    stop: &AtomicBool,
    stats: &Mutex<WriterStats>,
) -> anyhow::Result<()> {
    let bs = wb.config().geometry.block_size as usize;
    let mut data = vec![0u8; cfg.blocks as usize * bs];
    let mut in_flight = VecDeque::new();
    let mut version = 0u64;
    loop {
        let more = !stop.load(Ordering::Relaxed) && version < cfg.count;
        if more && in_flight.len() < cfg.window {
            version += 1;
            let first = ((version - 1) * cfg.blocks) % cfg.range;
            for (k, b) in data.chunks_exact_mut(bs).enumerate() {
                fill_block(version, unit, first + k as u64, b);
            }
            let t = wb.write_start(unit, first, &data)?;
            stats.lock().started += 1;
            in_flight.push_back((version, first, t));
            continue;
        }
        let Some((v, first, t)) = in_flight.pop_front() else {
            return Ok(());
        };
        let status = wb.wait(&t)?;
        let code = match status {
            CompletionStatus::Mirrored => 'M',
            CompletionStatus::MirrorLost => 'L',
            CompletionStatus::MirrorRejected(_) => 'R',
        };
        writeln!(log, "{v} {first} {} {code}", cfg.blocks).context("append to the acked log")?;
        let mut st = stats.lock();
        st.completed += 1;
        match code {
            'M' => st.mirrored += 1,
            'L' => st.lost += 1,
            _ => st.rejected += 1,
        }
    }
}

/// The node's mirrored write-back and its writer.
pub struct WriteBackNode {
    wb: Arc<MirroredWriteBack>,
    writer: Mutex<Option<Writer>>,
    dir: PathBuf,
    node: u32,
    partner: u32,
    /// How the table's NVRAM persists (status `nvram`).
    persistence: Persistence,
}

impl WriteBackNode {
    /// Starts the mirrored write-back of this node over its NVRAM files.
    pub fn start(manager: &Arc<Manager>, spec: &WriteBackSpec) -> anyhow::Result<WriteBackNode> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let (node, partner) = (manager.config().node_id, manager.config().partner_id);
        let mut cfg = WriteBackConfig::new();
        cfg.geometry.buffers = spec.buffers;
        cfg.geometry.block_size = spec.block_size;
        cfg.geometry.ries = 256.min(spec.buffers);
        if let Some(t) = spec.partner_timeout {
            cfg.partner_timeout = t;
            cfg.write_timeout = cfg.write_timeout.max(t * 2);
        }
        let (own, partner_image) = backings(dir, node, cfg.geometry, spec.nvram)?;
        let persistence = own.persistence();
        let wb = MirroredWriteBack::start(manager, cfg, own, partner_image)?;
        Ok(WriteBackNode {
            wb: Arc::new(wb),
            writer: Mutex::new(None),
            dir: dir.to_path_buf(),
            node,
            partner,
            persistence,
        })
    }

    /// Binds the write-back to the giveback client: the sync state of the partner's mirror
    /// goes into this node's mailbox record (F5.7), and the failure detector's verdicts
    /// reach the write-back at once.
    pub fn attach_giveback(&self, giveback: &GivebackNode) {
        self.wb.set_partner_copy_mark(giveback.partner_copy_mark());
        self.wb.set_serving_lease(giveback.serving_lease());
        self.wb.set_writeback_epochs(giveback.writeback_epochs());
        let wb = Arc::downgrade(&self.wb);
        let follow = giveback.on_partner_failed(move |why| {
            wb.upgrade()
                .map(|w| w.declare_partner_failed(why))
                .is_some()
        });
        if let Err(e) = follow {
            tracing::warn!(error = %e, "write-back: not following the failure detector");
        }
    }

    /// The takeover hook for the giveback client: the partner's mirrored dirty blocks go to
    /// the destage ledger (see the module docs) and are freed in the mirror image; the
    /// partner's epoch is recorded as taken over.
    pub fn takeover_hook(&self) -> ReplayHook {
        let wb = self.wb.clone();
        let path = destaged_path(&self.dir, self.node);
        Box::new(move |context| {
            let partner = context.partner;
            let mut ledger = Ledger::open(path.clone())?;
            let report = wb
                .take_over_partner_for(context, |at, data| ledger.record(at, data))
                .map_err(|e| e.to_string())?;
            tracing::info!(partner, blocks = report.blocks, aborted = report.aborted, ledger = %path.display(), "partner's write-back blocks destaged");
            Ok(())
        })
    }

    /// The recovery hook for the giveback client: before this node serves its disks, a
    /// table the partner took over is discarded ([`MirroredWriteBack::recover`]).
    pub fn recover_hook(&self) -> RecoverHook {
        let wb = self.wb.clone();
        Box::new(move |context| wb.recover(context).map(|_| ()).map_err(|e| e.to_string()))
    }

    /// Destages this node's dirty blocks into the ledger; returns how many were freed.
    fn destage(&self) -> anyhow::Result<usize> {
        let mut ledger =
            Ledger::open(destaged_path(&self.dir, self.node)).map_err(anyhow::Error::msg)?;
        let mut done: Vec<DirtyRef> = Vec::new();
        for d in self.wb.dirty_blocks()? {
            let at = BlockRef {
                unit: d.at.unit,
                block: d.at.block,
            };
            ledger.record(at, &d.data).map_err(anyhow::Error::msg)?;
            done.push(d.at);
        }
        Ok(self.wb.destaged(&done)?)
    }

    /// A control command: `{"write": {"count": N, "blocks": B, "window": W, "range": R}}`
    /// starts the writer, `{"stop": true}` stops it (waiting for its writes in flight),
    /// `{"destage": true}` destages this node's dirty blocks into the ledger,
    /// `{"check": true}` compares the partner's acked log with this node's mirror image,
    /// `{"reset_path": true}` drops the data connection (a path change on both nodes); the
    /// answer always carries the stats: `{"writeback": .., "writer": .., "check": ..,
    /// "destaged": ..}`.
    pub fn command(&self, command: &serde_json::Value) -> ControlResponse {
        match self.run_command(command) {
            Ok(value) => ControlResponse::Ok { value },
            Err(e) => ControlResponse::Error {
                message: format!("{e:#}"),
            },
        }
    }

    fn run_command(&self, command: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut writer = self.writer.lock();
        if command.get("stop").and_then(|v| v.as_bool()) == Some(true) {
            if let Some(w) = writer.as_mut() {
                w.stop();
            }
        }
        if let Some(w) = command.get("write") {
            if writer.as_ref().is_some_and(|w| w.stats.lock().running) {
                bail!("a writer is running (stop it first)");
            }
            let get = |k: &str| w.get(k).and_then(|v| v.as_u64());
            let buffers = u64::from(self.wb.config().geometry.buffers);
            let cfg = WriterConfig {
                count: get("count").unwrap_or(u64::MAX),
                blocks: get("blocks").unwrap_or(8),
                window: get("window").unwrap_or(8) as usize,
                range: get("range").unwrap_or(buffers / 4),
            };
            let unit = self.node as u16;
            let log = acked_path(&self.dir, self.node);
            *writer = Some(Writer::start(self.wb.clone(), cfg, unit, log)?);
        }
        if command.get("reset_path").and_then(|v| v.as_bool()) == Some(true) {
            self.wb.reset_data_path("asked on the control socket");
        }
        let destaged = if command.get("destage").and_then(|v| v.as_bool()) == Some(true) {
            Some(self.destage()?)
        } else {
            None
        };
        let check = if command.get("check").and_then(|v| v.as_bool()) == Some(true) {
            Some(self.check()?)
        } else {
            None
        };
        Ok(serde_json::json!({
            "nvram": self.persistence.to_string(),
            "writeback": self.wb.stats(),
            "writer": writer.as_ref().map(|w| w.stats.lock().clone()),
            "check": check,
            "destaged": destaged,
        }))
    }

    /// Every block whose last write in the partner's acked log completed mirrored holds that
    /// write's data in this node's mirror image.
    fn check(&self) -> anyhow::Result<serde_json::Value> {
        let path = acked_path(&self.dir, self.partner);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut last: HashMap<u64, (u64, char)> = HashMap::new();
        let mut writes = 0u64;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [v, first, blocks, status] = f[..] else {
                bail!("{}: bad line {line:?}", path.display());
            };
            let (v, first, blocks): (u64, u64, u64) = (v.parse()?, first.parse()?, blocks.parse()?);
            let status = status.chars().next().unwrap_or('?');
            writes += 1;
            for b in first..first + blocks {
                let e = last.entry(b).or_insert((v, status));
                if v >= e.0 {
                    *e = (v, status);
                }
            }
        }
        let unit = self.partner as u16;
        let bs = self.wb.config().geometry.block_size as usize;
        let mut want = vec![0u8; bs];
        let (mut checked, mut skipped, mut missing, mut wrong) = (0u64, 0u64, 0u64, 0u64);
        let mut first_bad = None;
        for (&block, &(v, status)) in &last {
            if status != 'M' {
                skipped += 1;
                continue;
            }
            fill_block(v, unit, block, &mut want);
            match self.wb.read_mirror_block(unit, block) {
                None => missing += 1,
                Some(got) if got != want => wrong += 1,
                Some(_) => {
                    checked += 1;
                    continue;
                }
            }
            first_bad.get_or_insert((block, v));
        }
        Ok(serde_json::json!({
            "writes": writes,
            "blocks": last.len(),
            "checked": checked,
            "skipped": skipped,
            "missing": missing,
            "wrong": wrong,
            "first_bad": first_bad,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let p =
            |s: &str| parse_spec(s).map(|x| (x.dir, x.partner_timeout, x.buffers, x.block_size));
        assert_eq!(
            p("/x/y").unwrap(),
            (PathBuf::from("/x/y"), None, 1024, 4096)
        );
        assert_eq!(
            p("d:250").unwrap(),
            (
                PathBuf::from("d"),
                Some(Duration::from_millis(250)),
                1024,
                4096
            )
        );
        assert_eq!(
            p("d::2048:512").unwrap(),
            (PathBuf::from("d"), None, 2048, 512)
        );
        assert!(p("d:x").is_err());
        assert!(p("").is_err());
        assert!(p("d:1:2:3:4").is_err());
    }

    #[test]
    fn the_ledger_has_one_synced_line_per_block() {
        let dir = std::env::temp_dir().join(format!("interlink-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = destaged_path(&dir, 2);
        assert!(path.ends_with("destaged-2.log"));
        let mut ledger = Ledger::open(path.clone()).unwrap();
        ledger
            .record(BlockRef { unit: 1, block: 7 }, b"123456789")
            .unwrap();
        ledger
            .record(BlockRef { unit: 1, block: 8 }, &[0; 512])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let crc = crc32c::crc32c(&[0; 512]);
        assert_eq!(text, format!("1 7 e3069283\n1 8 {crc:08x}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blocks_differ_by_version_unit_and_address() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill_block(1, 1, 0, &mut a);
        for (v, u, k) in [(2, 1, 0), (1, 2, 0), (1, 1, 1)] {
            fill_block(v, u, k, &mut b);
            assert_ne!(a, b);
        }
    }
}
