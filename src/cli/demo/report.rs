//! The demo's report: what the scenario measured (serialised for `--json`), rendered as text
//! for the terminal and as Markdown (with the SVG pictures) for the output folder.

use super::replay_check::WritesCheck;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One phase of the scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Phase {
    /// Short name (`connect`, `workload`, `cut`, `restore`, `kill`, `restart`).
    pub name: String,
    /// What happened, one line.
    pub summary: String,
    /// Start, milliseconds since the demo started.
    pub start_ms: f64,
    /// Length, milliseconds.
    pub duration_ms: f64,
    /// Shadowed writes acknowledged in the phase (by the writer's latencies).
    pub writes: u64,
    /// Append latency median, µs (None without writes).
    pub p50_us: Option<u64>,
    /// 99th percentile, µs.
    pub p99_us: Option<u64>,
    /// Maximum, µs.
    pub max_us: Option<u64>,
    /// The latency distribution: `[µs, count]` pairs.
    pub latencies: Vec<[u64; 2]>,
    /// Bytes the clients posted on each link during the phase (both nodes).
    pub bytes_per_link: Vec<u64>,
}

impl Phase {
    /// Fills the latency fields from `[µs, count]` pairs.
    pub fn set_latencies(&mut self, pairs: Vec<[u64; 2]>) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("valid constant histogram bounds");
        for [us, n] in &pairs {
            let _ = h.record_n((*us).clamp(1, 60_000_000), *n);
        }
        self.writes = h.len();
        if !h.is_empty() {
            self.p50_us = Some(h.value_at_quantile(0.5));
            self.p99_us = Some(h.value_at_quantile(0.99));
            self.max_us = Some(h.max());
        }
        self.latencies = pairs;
    }
}

/// A moment on the timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the demo started.
    pub at_ms: f64,
    /// What.
    pub what: String,
}

/// A stretch of the timeline (link cut, node B down, giveback).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Span {
    /// What.
    pub what: String,
    /// Start, milliseconds since the demo started.
    pub from_ms: f64,
    /// End.
    pub to_ms: f64,
}

/// The headline figures, milliseconds (None when not measured).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Start of the nodes to every link ready, every client placed, both nodes UP.
    pub connect_ms: Option<f64>,
    /// Link cut to the link seen down by node B.
    pub link_detection_ms: Option<f64>,
    /// Link cut to every client ready again on the other link (node B's view).
    pub failover_ms: Option<f64>,
    /// Link restored to the link ready again on both nodes.
    pub link_restore_ms: Option<f64>,
    /// Link restored to every client back on it.
    pub return_ms: Option<f64>,
    /// Partner failure detection at A: B's last sign of life to the decision
    /// (`last_detection_ms` of the giveback client).
    pub detection_ms: Option<f64>,
    /// kill -9 of B to A serving both disk sets.
    pub takeover_ms: Option<f64>,
    /// kill -9 of B to the end of A's replay of B's log.
    pub replay_ms: Option<f64>,
    /// Restart of B to B serving again.
    pub giveback_ms: Option<f64>,
    /// The giveback outage window at A (`last_outage_ms`: giveback to the first read showing
    /// B UP).
    pub outage_ms: Option<f64>,
    /// Power loss of both nodes: restart of both to both UP with their logs recovered.
    #[serde(default)]
    pub power_loss_recovery_ms: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Provider of the links (`soft` or `verbs`).
    pub fabric: String,
    /// `namespaces ilA/ilB` or `loopback`.
    pub topology: String,
    /// Links.
    pub links: u8,
    /// Manager clients on each node.
    pub clients: Vec<String>,
    /// Shadowed writes per traffic phase.
    pub writes_per_phase: u64,
    /// Record size, bytes.
    pub record_size: usize,
    /// Writes started per second.
    pub rate: u64,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// The timeline.
    pub events: Vec<Event>,
    /// The stretches shaded on the timeline.
    pub spans: Vec<Span>,
    /// Writes acknowledged by B's writer over time: `[ms, count]` (the count starts again
    /// from 0 with the writer started after the giveback).
    pub acked_over_time: Vec<[f64; 2]>,
    /// Headline figures.
    pub figures: Figures,
    /// Acknowledged vs. found after the replay.
    pub writes: WritesCheck,
    /// After the giveback: B's new writer's acknowledged records, and those in A's mirror of
    /// B's new log.
    pub after_giveback: [u64; 2],
    /// After the power loss of both nodes: B's acknowledged records of its log then against
    /// what its own recovery at start (or a takeover by A) applied.
    #[serde(default)]
    pub power_loss: WritesCheck,
    /// Bytes posted on each link over the whole run (both nodes).
    pub bytes_per_link: Vec<u64>,
    /// Acknowledged = found (and the after-giveback writes all mirrored).
    pub ok: bool,
    /// Files written into the output folder.
    pub files: Vec<String>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

fn us(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} µs"))
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Report {
    /// The figure rows: (name, value).
    fn figure_rows(&self) -> Vec<(&'static str, String)> {
        let f = &self.figures;
        vec![
            ("connect (links ready, clients placed)", ms(f.connect_ms)),
            ("link cut detected", ms(f.link_detection_ms)),
            (
                "failover (clients ready on the other link)",
                ms(f.failover_ms),
            ),
            ("link restored (ready on both nodes)", ms(f.link_restore_ms)),
            ("clients back on the restored link", ms(f.return_ms)),
            ("partner failure detection", ms(f.detection_ms)),
            ("takeover (kill -9 to serving both sets)", ms(f.takeover_ms)),
            ("replay of B's log done (from kill -9)", ms(f.replay_ms)),
            ("giveback (restart to B serving)", ms(f.giveback_ms)),
            ("giveback outage window", ms(f.outage_ms)),
            (
                "power loss of both: restart to both UP, logs recovered",
                ms(f.power_loss_recovery_ms),
            ),
        ]
    }

    fn writes_line(&self) -> String {
        Self::check_line(&self.writes)
    }

    fn check_line(w: &WritesCheck) -> String {
        format!(
            "{} acknowledged, {} found after replay ({} replayed, {} beyond the last acknowledgement, {} unmirrored, {} corrupt){}",
            w.acknowledged,
            w.found,
            w.replayed,
            w.beyond_acknowledged,
            w.unmirrored,
            w.corrupt,
            if w.missing.is_empty() {
                String::new()
            } else {
                format!("; missing {:?}", w.missing)
            }
        )
    }

    /// The terminal text.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ninterlink demo report: {} provider, {}, {} links, clients {}",
            self.fabric,
            self.topology,
            self.links,
            self.clients.join(", ")
        );
        let _ = writeln!(
            s,
            "  {:<10} {:>9} {:>7} {:>10} {:>10} {:>10}  {}",
            "phase",
            "time",
            "writes",
            "p50",
            "p99",
            "max",
            (0..self.links)
                .map(|l| format!("{:>10}", format!("link {l}")))
                .collect::<String>()
        );
        for p in &self.phases {
            let _ = writeln!(
                s,
                "  {:<10} {:>7.0}ms {:>7} {:>10} {:>10} {:>10}  {}",
                p.name,
                p.duration_ms,
                p.writes,
                us(p.p50_us),
                us(p.p99_us),
                us(p.max_us),
                p.bytes_per_link
                    .iter()
                    .map(|b| format!("{:>10}", bytes(*b)))
                    .collect::<String>()
            );
        }
        for (name, v) in self.figure_rows() {
            let _ = writeln!(s, "  {name:<44} {v}");
        }
        let _ = writeln!(s, "  writes: {}", self.writes_line());
        let _ = writeln!(
            s,
            "  power loss of both nodes: {}",
            Self::check_line(&self.power_loss)
        );
        let _ = writeln!(
            s,
            "  after the giveback: B acknowledged {}, A's mirror of B's new log holds {}",
            self.after_giveback[0], self.after_giveback[1]
        );
        let _ = writeln!(
            s,
            "  bytes per link: {}",
            self.bytes_per_link
                .iter()
                .enumerate()
                .map(|(l, b)| format!("link {l} {}", bytes(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "  result: {}",
            if self.ok {
                "OK (acknowledged = found)"
            } else {
                "FAILED (acknowledged writes lost)"
            }
        );
        s
    }

    /// The Markdown file (pictures by file name, in the same folder).
    pub fn render_markdown(&self, histogram: &str, timeline: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# interlink demo report\n");
        let _ = writeln!(
            s,
            "Two node processes ({}), {} provider, {} links; clients on each node: {}. \
             Shadowed writes of {} bytes at {} per second, {} per traffic phase, written by \
             node B's writer; B is killed with -9, A takes over and replays B's log, B restarts \
             and gets its disks back; then both nodes lose power mid-stream and restart, and B \
             applies its own log's records.\n",
            self.topology,
            self.fabric,
            self.links,
            self.clients.join(", "),
            self.record_size,
            self.rate,
            self.writes_per_phase
        );
        let _ = writeln!(
            s,
            "**Result: {}** — takeover: {}; power loss of both: {}.\n",
            if self.ok { "OK" } else { "FAILED" },
            self.writes_line(),
            Self::check_line(&self.power_loss)
        );
        let _ = writeln!(s, "## Phases\n");
        let _ = write!(
            s,
            "| phase | what happened | time | writes | p50 | p99 | max |"
        );
        for l in 0..self.links {
            let _ = write!(s, " link {l} |");
        }
        let _ = write!(s, "\n|---|---|---:|---:|---:|---:|---:|");
        for _ in 0..self.links {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for p in &self.phases {
            let _ = write!(
                s,
                "| {} | {} | {:.0} ms | {} | {} | {} | {} |",
                p.name,
                p.summary,
                p.duration_ms,
                p.writes,
                us(p.p50_us),
                us(p.p99_us),
                us(p.max_us)
            );
            for b in &p.bytes_per_link {
                let _ = write!(s, " {} |", bytes(*b));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n## Figures\n\n| figure | value |\n|---|---:|");
        for (name, v) in self.figure_rows() {
            let _ = writeln!(s, "| {name} | {v} |");
        }
        let _ = writeln!(
            s,
            "| after the giveback: B acknowledged / in A's mirror | {} / {} |",
            self.after_giveback[0], self.after_giveback[1]
        );
        for (l, b) in self.bytes_per_link.iter().enumerate() {
            let _ = writeln!(s, "| bytes posted on link {l} | {} |", bytes(*b));
        }
        let _ = writeln!(
            s,
            "\n## Append latency\n\n![append latency per phase]({histogram})\n"
        );
        let _ = writeln!(
            s,
            "## Timeline\n\n![failover and giveback timeline]({timeline})\n"
        );
        let _ = writeln!(s, "| at | event |\n|---:|---|");
        for e in &self.events {
            let _ = writeln!(s, "| {:.0} ms | {} |", e.at_ms, e.what);
        }
        s
    }
}
