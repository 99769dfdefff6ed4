//! `interlink node --shadow DIR[:SIZE]`: the node's shadow log (F5) with its NVRAM log file
//! `DIR/shadow-<node>.nvram`, its replay cursor `DIR/shadow-<node>.cursor`, a background
//! writer driven through the control socket (client name `shadow`) that records what was
//! acknowledged in `DIR/acked-<node>.log`, and a replay hook (for `--giveback`) that writes
//! the partner's replayed records to `DIR/replayed-<node>.log`, one line per record:
//! `seq len crc32c-hex`.

use anyhow::{bail, Context};
use interlink::clients::giveback::service::ReplayHook;
use interlink::clients::mirror::shadow::{
    check_payload, file_backings, ShadowConfig, ShadowMirror, ShadowWriter, WriterConfig,
};
use interlink::manager::control::ControlResponse;
use interlink::manager::Manager;
use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default log size (4 MiB).
const DEFAULT_SIZE: usize = 4 << 20;

/// Parses `DIR[:SIZE]` (SIZE in bytes, or with a K, M or G suffix).
pub fn parse_spec(s: &str) -> anyhow::Result<(PathBuf, usize)> {
    let (dir, size) = match s.rsplit_once(':') {
        Some((d, z)) if !d.is_empty() => (d, Some(z)),
        _ => (s, None),
    };
    if dir.is_empty() {
        bail!("--shadow {s:?}: expected DIR[:SIZE]");
    }
    let size = match size {
        None => DEFAULT_SIZE,
        Some(z) => {
            let (num, mult) = match z.chars().last().map(|c| c.to_ascii_uppercase()) {
                Some('K') => (&z[..z.len() - 1], 1usize << 10),
                Some('M') => (&z[..z.len() - 1], 1 << 20),
                Some('G') => (&z[..z.len() - 1], 1 << 30),
                _ => (z, 1),
            };
            let n: usize = num
                .parse()
                .with_context(|| format!("--shadow {s:?}: size"))?;
            n.checked_mul(mult)
                .with_context(|| format!("--shadow {s:?}: size overflows"))?
        }
    };
    Ok((PathBuf::from(dir), size))
}

/// The acknowledged log of `node` in `dir`.
pub fn acked_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("acked-{node}.log"))
}

/// The replayed log of `node` in `dir` (what it replayed of its partner's log).
pub fn replayed_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("replayed-{node}.log"))
}

/// The node's shadow log and its writer.
pub struct ShadowNode {
    mirror: Arc<ShadowMirror>,
    writer: Mutex<Option<ShadowWriter>>,
    dir: PathBuf,
    node: u32,
}

impl ShadowNode {
    /// Starts the shadow log of this node (a fresh generation in its NVRAM file).
    pub fn start(manager: &Manager, dir: &Path, size: usize) -> anyhow::Result<ShadowNode> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let node = manager.config().node_id;
        let (log, cursor) = file_backings(dir, node, size)?;
        let mirror = ShadowMirror::start(manager, ShadowConfig::new(), log, cursor)?;
        Ok(ShadowNode {
            mirror: Arc::new(mirror),
            writer: Mutex::new(None),
            dir: dir.to_path_buf(),
            node,
        })
    }

    /// The replay hook for the giveback client: the partner's records go to
    /// `replayed-<node>.log`, one line (`seq len crc32c-hex`) written per record before the
    /// replay cursor moves past it.
    pub fn replay_hook(&self) -> ReplayHook {
        let path = replayed_path(&self.dir, self.node);
        self.mirror.replay_hook(move |rec| {
            let line = format!(
                "{} {} {:08x}\n",
                rec.seq,
                rec.payload.len(),
                crc32c::crc32c(&rec.payload)
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| format!("append to {}: {e}", path.display()))
        })
    }

    /// A control command: `{"write": {"count": N, "size": S, "window": W,
    /// "checkpoint_every": K}}` starts the writer, `{"stop": true}` stops it, `{"replay":
    /// true}` summarises the partner's replayable records (without consuming them); the
    /// answer always carries the stats: `{"shadow": .., "writer": .., "replay": ..}`.
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
            if writer.as_ref().is_some_and(|w| w.stats().running) {
                bail!("a writer is running (stop it first)");
            }
            let get = |k: &str| w.get(k).and_then(|v| v.as_u64());
            let mut cfg = WriterConfig::new(
                get("count").unwrap_or(u64::MAX),
                get("size").unwrap_or(64) as usize,
            );
            if let Some(n) = get("window") {
                cfg.window = n as usize;
            }
            if let Some(n) = get("checkpoint_every") {
                cfg.checkpoint_every = n;
            }
            cfg.acked_log = Some(acked_path(&self.dir, self.node));
            *writer = Some(ShadowWriter::start(self.mirror.clone(), cfg)?);
        }
        let replay = if command.get("replay").and_then(|v| v.as_bool()) == Some(true) {
            let r = self.mirror.read_partner()?;
            let seqs: Vec<u64> = r.records.iter().map(|r| r.seq).collect();
            let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
            let bad = r
                .records
                .iter()
                .filter(|r| check_payload(&r.payload) != Some(r.seq))
                .count();
            Some(serde_json::json!({
                "generation": r.generation,
                "checkpoint": r.checkpoint,
                "count": seqs.len(),
                "first": seqs.first(),
                "last": seqs.last(),
                "gaps": gaps,
                "bad_payloads": bad,
                "torn_tail": r.torn_tail,
            }))
        } else {
            None
        };
        Ok(serde_json::json!({
            "shadow": self.mirror.stats(),
            "writer": writer.as_ref().map(|w| w.stats()),
            "replay": replay,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse_spec("/x/y").unwrap(),
            (PathBuf::from("/x/y"), DEFAULT_SIZE)
        );
        assert_eq!(
            parse_spec("/x:64K").unwrap(),
            (PathBuf::from("/x"), 64 << 10)
        );
        assert_eq!(parse_spec("d:1m").unwrap(), (PathBuf::from("d"), 1 << 20));
        assert_eq!(parse_spec("d:4096").unwrap(), (PathBuf::from("d"), 4096));
        assert!(parse_spec("d:x").is_err());
        assert!(parse_spec("").is_err());
    }
}
