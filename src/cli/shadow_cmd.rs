//! `interlink node --shadow DIR[:SIZE[:PARTNER_TIMEOUT_MS]]`: the node's shadow log (F5) with its NVRAM log file
//! `DIR/shadow-<node>.nvram`, its replay cursor `DIR/shadow-<node>.cursor`, a background
//! writer driven through the control socket (client name `shadow`) that records what was
//! acknowledged in `DIR/acked-<node>.log`, and a replay hook (for `--giveback`) that writes
//! the partner's replayed records to `DIR/replayed-<node>.log`: per replay a line
//! `replay GENERATION CHECKPOINT` (the partner's log generation and the checkpoint in force),
//! then one line per record: `seq len crc32c-hex`. The recovery of the node's own log at
//! start (records nobody applied: a restart before a takeover, a power loss of both nodes)
//! writes to the same file, its view headed `replay GENERATION AFTER own` (this node's log
//! generation, and the position the view starts after).

use anyhow::{bail, Context};
use interlink::clients::giveback::service::{RecoverHook, ReplayHook, ReplayedHook};
use interlink::clients::giveback::{GivebackNode, OwnLogContext};
use interlink::clients::mirror::shadow::{
    backings, check_payload, ShadowConfig, ShadowMirror, ShadowWriter, WriterConfig,
};
use interlink::clients::mirror::{NvramKind, Persistence, Recovered, ReplayedRecord};
use interlink::manager::control::ControlResponse;
use interlink::manager::Manager;
use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default log size (4 MiB).
const DEFAULT_SIZE: usize = 4 << 20;

/// What `--shadow DIR[:SIZE[:PARTNER_TIMEOUT_MS]]` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowSpec {
    /// The directory of the NVRAM file, cursor and logs.
    pub dir: PathBuf,
    /// Log size in bytes.
    pub size: usize,
    /// The partner timeout (None: the default).
    pub partner_timeout: Option<Duration>,
    /// The NVRAM backing of the log and cursor (`--nvram`).
    pub nvram: NvramKind,
}

/// Parses `DIR[:SIZE[:PARTNER_TIMEOUT_MS]]` (SIZE in bytes, or with a K, M or G suffix;
/// DIR without `:`).
pub fn parse_spec(s: &str) -> anyhow::Result<ShadowSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 3 || parts[0].is_empty() {
        bail!("--shadow {s:?}: expected DIR[:SIZE[:PARTNER_TIMEOUT_MS]]");
    }
    let size = match parts.get(1).filter(|z| !z.is_empty()) {
        None => DEFAULT_SIZE,
        Some(z) => {
            let (num, mult) = match z.chars().last().map(|c| c.to_ascii_uppercase()) {
                Some('K') => (&z[..z.len() - 1], 1usize << 10),
                Some('M') => (&z[..z.len() - 1], 1 << 20),
                Some('G') => (&z[..z.len() - 1], 1 << 30),
                _ => (*z, 1),
            };
            let n: usize = num
                .parse()
                .with_context(|| format!("--shadow {s:?}: size"))?;
            n.checked_mul(mult)
                .with_context(|| format!("--shadow {s:?}: size overflows"))?
        }
    };
    let partner_timeout = parts
        .get(2)
        .map(|ms| {
            ms.parse::<u64>()
                .map(Duration::from_millis)
                .with_context(|| format!("--shadow {s:?}: partner timeout"))
        })
        .transpose()?;
    Ok(ShadowSpec {
        dir: PathBuf::from(parts[0]),
        size,
        partner_timeout,
        nvram: NvramKind::File,
    })
}

/// The acknowledged log of `node` in `dir`.
pub fn acked_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("acked-{node}.log"))
}

/// The replayed log of `node` in `dir` (what it replayed of its partner's log).
pub fn replayed_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("replayed-{node}.log"))
}

/// Recovers `mirror`'s own log, writing what it applies to the replayed log at `path`: with
/// the giveback client's context (the mailbox's marks), or without a mailbox.
fn recover(
    mirror: &ShadowMirror,
    path: &Path,
    context: Option<&OwnLogContext>,
) -> anyhow::Result<Recovered> {
    let mut headed = false;
    let sink = |rec: ReplayedRecord| {
        if !headed {
            // The log being replayed is the one the recovery installed.
            let g = mirror.generation();
            append_line(path, &format!("replay {g} {} own\n", rec.seq - 1))?;
            headed = true;
        }
        append_line(path, &record_line(&rec))
    };
    let r = match context {
        Some(c) => mirror.recover_from_mailbox(c, sink)?,
        None => mirror.recover(None, sink)?,
    };
    println!(
        "shadow log recovered: {:?}, previous generation {:?}, {} records applied here, {} dropped, generation {}{}",
        r.outcome,
        r.previous_generation,
        r.replayed,
        r.dropped,
        r.generation,
        if r.fetched_from_partner {
            " (the log was fetched from the partner's copy)"
        } else {
            ""
        }
    );
    Ok(r)
}

/// The replayed log's line for a record applied: `seq len crc32c-hex`.
fn record_line(rec: &ReplayedRecord) -> String {
    format!(
        "{} {} {:08x}\n",
        rec.seq,
        rec.payload.len(),
        crc32c::crc32c(&rec.payload)
    )
}

/// Appends `line` to the replayed log at `path`.
fn append_line(path: &Path, line: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("append to {}: {e}", path.display()))
}

/// The node's shadow log and its writer.
pub struct ShadowNode {
    mirror: Arc<ShadowMirror>,
    writer: Mutex<Option<ShadowWriter>>,
    dir: PathBuf,
    node: u32,
    /// How the log's NVRAM persists (status `nvram`).
    persistence: Persistence,
}

impl ShadowNode {
    /// Starts the shadow log of this node: its NVRAM file is opened, not formatted; the log
    /// is recovered by [`ShadowNode::recover_hook`] (with `--giveback`, before the node
    /// serves) or [`ShadowNode::recover`].
    pub fn start(manager: &Arc<Manager>, spec: &ShadowSpec) -> anyhow::Result<ShadowNode> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let node = manager.config().node_id;
        let (log, cursor) = backings(dir, node, spec.size, spec.nvram)?;
        let persistence = log.persistence();
        let mut cfg = ShadowConfig::new();
        if let Some(t) = spec.partner_timeout {
            cfg.partner_timeout = t;
            cfg.link_timeout = cfg.link_timeout.max(t);
        }
        let mirror = ShadowMirror::start(manager, cfg, log, cursor)?;
        Ok(ShadowNode {
            mirror: Arc::new(mirror),
            writer: Mutex::new(None),
            dir: dir.to_path_buf(),
            node,
            persistence,
        })
    }

    /// Recovers the own log without a mailbox (see [`ShadowMirror::recover`]); records
    /// nobody applied go to `replayed-<node>.log` as an `own` view.
    pub fn recover(&self) -> anyhow::Result<Recovered> {
        recover(&self.mirror, &replayed_path(&self.dir, self.node), None)
    }

    /// The own-log recovery hook for the giveback client (before the node serves its disks,
    /// with the mailbox's marks: [`ShadowMirror::recover_from_mailbox`]); a log already
    /// recovered is left alone.
    pub fn recover_hook(&self) -> RecoverHook {
        let mirror = self.mirror.clone();
        let path = replayed_path(&self.dir, self.node);
        Box::new(move |context| {
            // Recovered already in this run of the giveback protocol: nothing to do (a log
            // recovered in an earlier run, before a halt, is recovered again).
            if mirror.recovered().is_some() && mirror.recovered_for() == Some(context.incarnation) {
                return Ok(());
            }
            recover(&mirror, &path, Some(context))
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
    }

    /// Binds the shadow log to the giveback client: the outdated mark of the partner's copy
    /// of this log goes into this node's mailbox record (F5.7), and appends stop waiting for
    /// a partner the giveback client declared failed (or takes over): they complete
    /// unmirrored at once instead of after the partner timeout.
    pub fn attach_giveback(&self, giveback: &GivebackNode) {
        self.mirror
            .set_partner_copy_mark(giveback.partner_copy_mark());
        self.mirror.set_serving_lease(giveback.serving_lease());
        let mirror = Arc::downgrade(&self.mirror);
        let follow = giveback.on_partner_failed(move |why| {
            mirror
                .upgrade()
                .map(|m| m.declare_partner_failed(why))
                .is_some()
        });
        if let Err(e) = follow {
            tracing::warn!(error = %e, "shadow log: not following the failure detector");
        }
    }

    /// What this node replayed of its partner's log, for its mailbox record.
    pub fn replayed_mark(&self) -> ReplayedHook {
        let mirror = self.mirror.clone();
        Box::new(move || mirror.partner_replayed().map(Into::into))
    }

    /// The replay hook for the giveback client: the partner's records go to
    /// `replayed-<node>.log` after a `replay GENERATION CHECKPOINT` line, one line (`seq len
    /// crc32c-hex`) written per record before the replay cursor moves past it.
    pub fn replay_hook(&self) -> ReplayHook {
        let path = replayed_path(&self.dir, self.node);
        let head = path.clone();
        let mirror = self.mirror.clone();
        let mut replay = self
            .mirror
            .replay_hook(move |rec| append_line(&path, &record_line(&rec)));
        Box::new(move |context| {
            // The partner is down or fenced: its image does not change between this read
            // and the replay's own.
            let r = mirror.read_partner().map_err(|e| e.to_string())?;
            append_line(
                &head,
                &format!("replay {} {}\n", r.generation, r.checkpoint),
            )?;
            replay(context)
        })
    }

    /// A control command: `{"write": {"count": N, "size": S, "window": W,
    /// "checkpoint_every": K, "rate": R}}` starts the writer, `{"stop": true}` stops it,
    /// `{"replay": true}` summarises the partner's replayable records (without consuming
    /// them), `{"latencies": true}` takes the writer's append latencies since the last ask;
    /// the answer always carries the stats: `{"shadow": .., "writer": .., "replay": ..,
    /// "latencies": ..}`.
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
            cfg.rate = get("rate");
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
        // The writer's append latencies since the last ask: [[µs, count], ...].
        let latencies = match writer.as_ref() {
            Some(w) if command.get("latencies").and_then(|v| v.as_bool()) == Some(true) => {
                let h = w.take_latencies();
                let pairs: Vec<[u64; 2]> = h
                    .iter_recorded()
                    .map(|v| {
                        [
                            h.highest_equivalent(v.value_iterated_to()),
                            v.count_at_value(),
                        ]
                    })
                    .collect();
                Some(pairs)
            }
            _ => None,
        };
        Ok(serde_json::json!({
            "nvram": self.persistence.to_string(),
            "shadow": self.mirror.stats(),
            "writer": writer.as_ref().map(|w| w.stats()),
            "replay": replay,
            "latencies": latencies,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let p = |s: &str| parse_spec(s).map(|x| (x.dir, x.size, x.partner_timeout));
        assert_eq!(
            p("/x/y").unwrap(),
            (PathBuf::from("/x/y"), DEFAULT_SIZE, None)
        );
        assert_eq!(p("/x:64K").unwrap(), (PathBuf::from("/x"), 64 << 10, None));
        assert_eq!(p("d:1m").unwrap(), (PathBuf::from("d"), 1 << 20, None));
        assert_eq!(
            p("d:4096:250").unwrap(),
            (PathBuf::from("d"), 4096, Some(Duration::from_millis(250)))
        );
        assert_eq!(
            p("d::250").unwrap(),
            (
                PathBuf::from("d"),
                DEFAULT_SIZE,
                Some(Duration::from_millis(250))
            )
        );
        assert!(p("d:x").is_err());
        assert!(p("").is_err());
        assert!(p("d:1:2:3").is_err());
    }
}
