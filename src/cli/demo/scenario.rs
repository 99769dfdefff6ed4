//! The demo's scenario, one phase after the other, each narrated by one progress line:
//! connect, shadowed writes, link cut (failover), link restored, kill -9 of node B (takeover
//! and replay of B's log by A), restart of B (coordinated giveback, B writes again), power
//! loss of both nodes mid-stream and their restart (B applies its own log's records).
//!
//! The workload's writer runs in node B (`interlink node --shadow`, control client `shadow`):
//! it logs every acknowledged record in its own file before counting it, and survivor A's
//! replay hook logs what it replays; [`super::replay_check`] compares the two.

use super::node::NodeProc;
use super::replay_check;
use super::report::{Event, Phase, Report, Span};
use super::topology::{Topology, LINKS};
use super::DemoArgs;
use anyhow::{bail, Context, Result};
use interlink::manager::{ClientState, LinkState, NodeStatus};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest wait for any one condition (the emulated VM is slow).
const WAIT: Duration = Duration::from_secs(90);
/// The link that is cut: every client's home under the standby policy.
const CUT: u8 = 0;
/// The phases, for the progress lines.
const PHASES: usize = 7;

/// The running scenario.
pub struct Scenario<'a> {
    args: &'a DemoArgs,
    topo: &'a Topology,
    /// Node A (node 1, survivor).
    pub a: NodeProc,
    /// Node B (node 2, writer, killed and restarted).
    pub b: NodeProc,
    shared: PathBuf,
    clients: Vec<String>,
    t0: Instant,
    /// B runs a writer whose progress is sampled.
    b_writing: bool,
    /// B's process is running.
    b_alive: bool,
    /// Bytes per link counted before a boundary, added to the phase that ends next.
    pending_bytes: Vec<u64>,
    last_sample: Option<Instant>,
    /// Per node, the link byte counters at the last phase boundary.
    bytes_seen: [Vec<u64>; 2],
    /// The report being filled.
    pub report: Report,
}

fn link_ready(s: &NodeStatus, l: u8) -> bool {
    s.links
        .iter()
        .any(|x| x.id == l && x.state == LinkState::Ready)
}

/// Whether every client in `names` is ready, on `link` if given.
fn clients_on(s: &NodeStatus, names: &[String], link: Option<u8>) -> bool {
    names.iter().all(|n| {
        s.clients.iter().any(|c| {
            &c.name == n && c.state == ClientState::Ready && link.is_none_or(|l| c.link == Some(l))
        })
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl<'a> Scenario<'a> {
    /// Prepares the two nodes (not started) in `dir`, with the shared directory inside it.
    pub fn new(args: &'a DemoArgs, topo: &'a Topology, dir: &std::path::Path) -> Result<Self> {
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)?;
        let (ca, cb) = topo.configs(dir, args.fabric)?;
        // Room for every write without a checkpoint: three traffic phases plus one more for
        // the writes during the transitions (the writer stops there), and the superblock.
        let record = 32 + args.size.div_ceil(8) * 8;
        let log = (192 + args.cap() as usize * record).div_ceil(4096) * 4096 + (64 << 10);
        let probes: Vec<String> = (1..=args.clients.saturating_sub(2))
            .map(|i| format!("probe-{i}"))
            .collect();
        let mut extra = vec![
            "--shadow".to_string(),
            // A long partner timeout: a failover is never taken for the partner's absence.
            format!("{}:{log}:60000", shared.display()),
            "--giveback".into(),
            shared.display().to_string(),
        ];
        for p in &probes {
            extra.extend(["--probe".into(), format!("{p}:low")]);
        }
        let mut clients = vec!["shadow".to_string(), "giveback".to_string()];
        clients.extend(probes);
        Ok(Scenario {
            a: NodeProc::new(dir, "A", topo.ns(false), ca, extra.clone())?,
            b: NodeProc::new(dir, "B", topo.ns(true), cb, extra)?,
            args,
            topo,
            shared,
            clients: clients.clone(),
            t0: Instant::now(),
            b_writing: false,
            b_alive: false,
            pending_bytes: Vec::new(),
            last_sample: None,
            bytes_seen: [Vec::new(), Vec::new()],
            report: Report {
                topology: topo.describe().into(),
                links: LINKS,
                clients,
                writes_per_phase: args.writes,
                record_size: args.size,
                rate: args.rate(),
                ..Report::default()
            },
        })
    }

    /// The shared directory (acked and replayed logs, mailbox, journals).
    pub fn shared(&self) -> &std::path::Path {
        &self.shared
    }

    fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    fn event(&mut self, what: impl Into<String>) -> f64 {
        let at_ms = self.now_ms();
        self.report.events.push(Event {
            at_ms,
            what: what.into(),
        });
        at_ms
    }

    /// Prints the start of a phase's progress line.
    fn begin(&self, n: usize, title: &str) -> (Instant, f64) {
        let mut out = self.args.progress();
        let _ = write!(out, "[{n}/{PHASES}] {title}: ");
        let _ = out.flush();
        (Instant::now(), self.now_ms())
    }

    /// Ends a phase: its line, its bytes per link, the latencies of its writes.
    fn end(
        &mut self,
        name: &str,
        start: (Instant, f64),
        summary: String,
        latencies: Option<Vec<[u64; 2]>>,
    ) {
        let mut bytes = self.link_bytes();
        for (b, p) in bytes
            .iter_mut()
            .zip(std::mem::take(&mut self.pending_bytes))
        {
            *b += p;
        }
        let mut phase = Phase {
            name: name.into(),
            summary: summary.clone(),
            start_ms: start.1,
            duration_ms: start.0.elapsed().as_secs_f64() * 1e3,
            bytes_per_link: bytes,
            ..Phase::default()
        };
        if let Some(pairs) = latencies {
            phase.set_latencies(pairs);
        }
        let lat = match (phase.p50_us, phase.p99_us) {
            (Some(p50), Some(p99)) => format!(
                "; {} writes acknowledged, append p50 {p50} µs, p99 {p99} µs",
                phase.writes
            ),
            _ => String::new(),
        };
        let mut out = self.args.progress();
        let _ = writeln!(out, "{summary}{lat}");
        self.report.phases.push(phase);
    }

    /// Ends a phase with B's writer's latencies since the last phase.
    fn end_with_writes(
        &mut self,
        name: &str,
        start: (Instant, f64),
        summary: String,
    ) -> Result<()> {
        let lat = self.take_latencies()?;
        self.end(name, start, summary, Some(lat));
        Ok(())
    }

    /// B's writer's latencies since the last call.
    fn take_latencies(&self) -> Result<Vec<[u64; 2]>> {
        let v = self.b.client("shadow", json!({"latencies": true}))?;
        serde_json::from_value(v["latencies"].clone()).context("latencies")
    }

    /// Bytes posted per link since the last call, summed over the running nodes (a restarted
    /// node's counters start again from 0).
    fn link_bytes(&mut self) -> Vec<u64> {
        let mut sum = vec![0u64; usize::from(LINKS)];
        for (i, node) in [&self.a, &self.b].into_iter().enumerate() {
            if i == 1 && !self.b_alive {
                continue;
            }
            let Ok(s) = node.status() else { continue };
            let now: Vec<u64> = (0..LINKS)
                .map(|l| {
                    s.links
                        .iter()
                        .find(|x| x.id == l)
                        .map_or(0, |x| x.counters.bytes)
                })
                .collect();
            let seen = &mut self.bytes_seen[i];
            for (l, n) in now.iter().enumerate() {
                let before = seen.get(l).copied().unwrap_or(0);
                sum[l] += if *n >= before { n - before } else { *n };
            }
            *seen = now;
        }
        sum
    }

    /// Polls `check` until it yields, sampling B's writer for the timeline meanwhile.
    fn wait<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let t = Instant::now();
        loop {
            self.sample()?;
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            if t.elapsed() > WAIT {
                bail!(
                    "timed out after {} s waiting for {what}\n--- node A ---\n{}\n--- node B ---\n{}",
                    WAIT.as_secs(),
                    self.a.log_tail(),
                    self.b.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// B's writer progress into the timeline, at most every 20 ms; fails if it stopped on an
    /// error.
    fn sample(&mut self) -> Result<()> {
        if !self.b_writing
            || self
                .last_sample
                .is_some_and(|t| t.elapsed() < Duration::from_millis(20))
        {
            return Ok(());
        }
        self.last_sample = Some(Instant::now());
        let w = self.b.client("shadow", json!({}))?["writer"].clone();
        if u(&w["errors"]) > 0 {
            bail!("node B's writer failed: {}", w["last_error"]);
        }
        let at = self.now_ms();
        self.report
            .acked_over_time
            .push([at, u(&w["acknowledged"]) as f64]);
        Ok(())
    }

    /// Waits until every client is ready on `link` on both nodes.
    fn wait_clients_on(&mut self, what: &str, link: u8) -> Result<()> {
        self.wait(what, |s| {
            let (sa, sb) = (s.a.status()?, s.b.status()?);
            Ok(
                (clients_on(&sa, &s.clients, Some(link))
                    && clients_on(&sb, &s.clients, Some(link)))
                .then_some(()),
            )
        })
    }

    fn writer(&self) -> Result<Value> {
        Ok(self.b.client("shadow", json!({}))?["writer"].clone())
    }

    /// Waits until B's writer acknowledged `n` records (or stopped: it wrote its count).
    fn acked_at_least(&mut self, n: u64) -> Result<u64> {
        self.wait(&format!("{n} writes acknowledged by B"), |s| {
            let w = s.writer()?;
            let acked = u(&w["acknowledged"]);
            Ok((acked >= n || w["running"] == json!(false)).then_some(acked))
        })
    }

    fn start_writer(&mut self, count: u64) -> Result<()> {
        let a = self.args;
        self.b.client(
            "shadow",
            json!({"write": {"count": count, "size": a.size, "window": a.window,
                             "checkpoint_every": 0, "rate": a.rate()}}),
        )?;
        self.b_writing = true;
        Ok(())
    }

    /// Runs every phase and fills the report.
    pub fn run(&mut self) -> Result<()> {
        self.connect()?;
        self.workload()?;
        self.cut()?;
        self.restore()?;
        self.kill()?;
        self.restart()?;
        self.power_loss()
    }

    fn connect(&mut self) -> Result<()> {
        let start = self.begin(1, "connect");
        self.t0 = Instant::now();
        self.a.start(WAIT)?;
        self.b.start(WAIT)?;
        self.b_alive = true;
        self.event("nodes A and B started");
        self.wait("links ready, clients placed, both nodes UP", |s| {
            for n in [&s.a, &s.b] {
                let st = n.status()?;
                let up = (0..LINKS).all(|l| link_ready(&st, l));
                let g = n.giveback()?;
                let shadow = n.client("shadow", json!({}))?;
                if !(up
                    && clients_on(&st, &s.clients, Some(CUT))
                    && g.state == "UP"
                    && g.partner_state.as_deref() == Some("UP")
                    && shadow["shadow"]["connected"] == json!(true))
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        let t = start.0.elapsed().as_secs_f64() * 1e3;
        self.report.figures.connect_ms = Some(t);
        let st = self.b.status()?;
        self.report.fabric = st
            .links
            .first()
            .map(|l| l.provider.clone())
            .unwrap_or_default();
        self.event("connected: links ready, clients on link 0, both nodes UP");
        let summary = format!(
            "{LINKS} links ready ({}), {} clients ({}) on link {CUT}, link 1 standby, both nodes UP, in {t:.0} ms",
            self.report.fabric,
            self.clients.len(),
            self.clients.join(", ")
        );
        self.end("connect", (start.0, 0.0), summary, None);
        Ok(())
    }

    fn workload(&mut self) -> Result<()> {
        let start = self.begin(2, "shadowed writes");
        self.start_writer(self.args.cap())?;
        self.event("B's writer started");
        self.acked_at_least(self.args.writes)?;
        let summary = format!(
            "node B appends {} B records to its shadow log, each mirrored into A by RDMA WRITE before it is acknowledged",
            self.args.size
        );
        self.end_with_writes("workload", start, summary)
    }

    fn cut(&mut self) -> Result<()> {
        let start = self.begin(3, &format!("cut link {CUT}"));
        // Past the initiator's start-up gather: a link failing earlier would wait for it.
        self.wait("the start-up gather over", |s| {
            let gather = interlink::manager::STARTUP_GATHER.as_millis() as u64;
            Ok((s.a.status()?.uptime_ms > gather).then_some(()))
        })?;
        let before = u(&self.writer()?["acknowledged"]);
        let cut_ms = self.event(format!("link {CUT} cut"));
        let cut_at = Instant::now();
        self.topo.set_link(CUT, true, &self.a, &self.b)?;
        self.wait("the link seen down", |s| {
            Ok((!link_ready(&s.b.status()?, CUT)).then_some(()))
        })?;
        let detect = cut_at.elapsed().as_secs_f64() * 1e3;
        self.event(format!("link {CUT} seen down by B"));
        let other = 1 - CUT;
        self.wait_clients_on("every client failed over", other)?;
        let failover = cut_at.elapsed().as_secs_f64() * 1e3;
        self.event(format!("every client ready on link {other}"));
        self.report.figures.link_detection_ms = Some(detect);
        self.report.figures.failover_ms = Some(failover);
        self.acked_at_least(before + self.args.writes)?;
        let resent = u(&self.b.client("shadow", json!({}))?["shadow"]["resent_writes"]);
        self.report.spans.push(Span {
            what: format!("link {CUT} cut"),
            from_ms: cut_ms,
            to_ms: cut_ms, // until restored
        });
        let summary = format!(
            "down after {detect:.0} ms, every client on link {other} after {failover:.0} ms ({resent} mirror writes re-sent), traffic continues"
        );
        self.end_with_writes("cut", start, summary)
    }

    fn restore(&mut self) -> Result<()> {
        let start = self.begin(4, &format!("restore link {CUT}"));
        let before = u(&self.writer()?["acknowledged"]);
        let at_ms = self.event(format!("link {CUT} restored"));
        if let Some(s) = self.report.spans.last_mut() {
            s.to_ms = at_ms;
        }
        let at = Instant::now();
        self.topo.set_link(CUT, false, &self.a, &self.b)?;
        self.wait("the link ready again", |s| {
            Ok((link_ready(&s.a.status()?, CUT) && link_ready(&s.b.status()?, CUT)).then_some(()))
        })?;
        let ready = at.elapsed().as_secs_f64() * 1e3;
        self.event(format!("link {CUT} ready again"));
        self.wait_clients_on("every client back home", CUT)?;
        let home = at.elapsed().as_secs_f64() * 1e3;
        self.event(format!("every client back on link {CUT}"));
        self.report.figures.link_restore_ms = Some(ready);
        self.report.figures.return_ms = Some(home);
        self.acked_at_least(before + self.args.writes)?;
        let summary = format!(
            "ready after {ready:.0} ms, every client back on link {CUT} after {home:.0} ms (1.5 s hysteresis)"
        );
        self.end_with_writes("restore", start, summary)
    }

    fn kill(&mut self) -> Result<()> {
        let start = self.begin(5, "kill -9 node B");
        // The writes since the last phase, and B's bytes, before B is gone.
        let lat = self.take_latencies()?;
        self.pending_bytes = self.link_bytes();
        let kill_ms = self.event("node B killed (-9) mid-stream");
        let at = Instant::now();
        self.b.kill();
        self.b_alive = false;
        self.b_writing = false;
        let report = self.wait("A's takeover", |s| {
            let r = s.a.giveback()?;
            Ok(
                (r.state == "TAKEOVER" && r.serving.contains(&1) && r.serving.contains(&2))
                    .then_some(r),
            )
        })?;
        let takeover = at.elapsed().as_secs_f64() * 1e3;
        self.event("A took over (serves both disk sets)");
        self.wait("A's replay of B's log", |s| {
            let v = s.a.client("shadow", json!({}))?;
            Ok((u(&v["shadow"]["replays"]) >= 1).then_some(()))
        })?;
        let replay = at.elapsed().as_secs_f64() * 1e3;
        self.event("A replayed B's log");
        let check = replay_check::check(&self.shared, self.args.size)?;
        self.report.figures.detection_ms = report.last_detection_ms;
        self.report.figures.takeover_ms = Some(takeover);
        self.report.figures.replay_ms = Some(replay);
        self.report.spans.push(Span {
            what: "node B down (A serves both)".into(),
            from_ms: kill_ms,
            to_ms: kill_ms, // until the giveback
        });
        let summary = format!(
            "detected in {} ms, A took over after {takeover:.0} ms and replayed B's log ({} records) after {replay:.0} ms: {} acknowledged, {} found",
            report.last_detection_ms.map_or("-".into(), |d| format!("{d:.0}")),
            check.replayed,
            check.acknowledged,
            check.found
        );
        self.report.writes = check;
        self.end("kill", start, summary, Some(lat));
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        let start = self.begin(6, "restart node B");
        self.event("node B restarted");
        let at = Instant::now();
        self.bytes_seen[1].clear();
        self.b.start(WAIT)?;
        self.b_alive = true;
        self.wait("B serving again", |s| {
            let b = s.b.giveback()?;
            Ok((b.state == "UP" && b.serving == vec![2]).then_some(()))
        })?;
        let giveback = at.elapsed().as_secs_f64() * 1e3;
        let a = self.wait("A's giveback done", |s| {
            let a = s.a.giveback()?;
            Ok(
                (a.state == "UP" && a.serving == vec![1] && a.last_outage_ms.is_some())
                    .then_some(a),
            )
        })?;
        let done_ms = self.event("giveback done: B serves its disk set again");
        if let Some(s) = self.report.spans.last_mut() {
            s.to_ms = done_ms;
        }
        self.report.figures.giveback_ms = Some(giveback);
        self.report.figures.outage_ms = a.last_outage_ms;
        self.wait("B's shadow log connected", |s| {
            let v = s.b.client("shadow", json!({}))?;
            Ok((v["shadow"]["connected"] == json!(true)).then_some(()))
        })?;
        self.start_writer(self.args.writes)?;
        self.event("B's new writer started");
        let w = self.wait("B's new writer done", |s| {
            let w = s.writer()?;
            Ok((w["running"] == json!(false)).then_some(w))
        })?;
        self.sample()?;
        self.b_writing = false;
        if u(&w["errors"]) > 0 {
            bail!("node B's writer failed: {}", w["last_error"]);
        }
        self.event("B's new writer done");
        let acked = u(&w["acknowledged"]);
        let mirror = self.a.client("shadow", json!({"replay": true}))?["replay"].clone();
        let in_mirror = if u(&mirror["gaps"]) == 0 && u(&mirror["bad_payloads"]) == 0 {
            u(&mirror["count"])
        } else {
            0
        };
        self.report.after_giveback = [acked, in_mirror];
        let summary = format!(
            "B serves again after {giveback:.0} ms (outage window {:.1} ms); its new writer: {acked} acknowledged, {in_mirror} in A's mirror",
            a.last_outage_ms.unwrap_or(f64::NAN)
        );
        self.end_with_writes("restart", start, summary)
    }

    fn power_loss(&mut self) -> Result<()> {
        let start = self.begin(7, "power loss of both nodes");
        let generation = u(&self.b.client("shadow", json!({}))?["shadow"]["generation"]);
        self.start_writer(self.args.writes)?;
        self.event("B's writer started");
        // Mid-stream: half the writer's records acknowledged.
        self.acked_at_least(self.args.writes.div_ceil(2))?;
        let lat = self.take_latencies()?;
        self.pending_bytes = self.link_bytes();
        let off_ms = self.event("power loss: A and B killed (-9)");
        self.a.kill();
        self.b.kill();
        self.b_alive = false;
        self.b_writing = false;
        let at = Instant::now();
        self.bytes_seen = [Vec::new(), Vec::new()];
        self.a.start(WAIT)?;
        self.b.start(WAIT)?;
        self.b_alive = true;
        self.event("A and B restarted");
        self.wait("both nodes UP, each serving its own disks", |s| {
            for (n, me) in [(&s.a, 1u32), (&s.b, 2u32)] {
                let g = n.giveback()?;
                let shadow = n.client("shadow", json!({}))?;
                if !(g.state == "UP"
                    && g.serving == vec![me]
                    && shadow["shadow"]["recovery"].is_object())
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        let recovered = at.elapsed().as_secs_f64() * 1e3;
        let done_ms = self.event("both UP, logs recovered");
        self.report.spans.push(Span {
            what: "power loss: both restarting".into(),
            from_ms: off_ms,
            to_ms: done_ms,
        });
        let rec = self.b.client("shadow", json!({}))?["shadow"]["recovery"].clone();
        let check = replay_check::check_power_loss(&self.shared, self.args.size, generation)?;
        self.report.figures.power_loss_recovery_ms = Some(recovered);
        let summary = format!(
            "both UP after {recovered:.0} ms; B's recovery: {}, {} records applied by B itself: {} acknowledged, {} found",
            rec["outcome"].as_str().unwrap_or("-"),
            check.replayed,
            check.acknowledged,
            check.found
        );
        self.report.power_loss = check;
        self.end("power loss", start, summary, Some(lat));
        Ok(())
    }
}
