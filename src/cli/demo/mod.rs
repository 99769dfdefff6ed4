//! `interlink demo`: the main job. Two node processes (`interlink node` with the shadow log,
//! the giveback client and probe clients), in the namespaces ilA/ilB when run as root, else on
//! loopback, go through the scenario of [`scenario`] and the report of [`report`] is printed
//! and written (Markdown and SVG pictures) into the output folder.

mod node;
mod plots;
mod replay_check;
mod report;
mod scenario;
mod topology;

use anyhow::{bail, Context, Result};
use interlink::fabric::ProviderChoice;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Options of `interlink demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Fabric provider: soft (userspace, default), verbs (RDMA devices, e.g. Soft-RoCE inside
    /// soft-roce/vm; needs the namespaces, so root) or auto.
    #[arg(long, default_value = "soft")]
    pub fabric: ProviderChoice,
    /// Shadowed writes per traffic phase (workload, link cut, link restored, after giveback).
    #[arg(long, default_value_t = 1000)]
    pub writes: u64,
    /// Record size in bytes (8 to 65536).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Seconds per traffic phase: writes start at WRITES/DURATION per second.
    #[arg(long, default_value_t = 1.0)]
    pub duration: f64,
    /// Writes in flight at most.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Manager clients per node: the shadow log, the giveback client, and CLIENTS-2 probe
    /// clients streaming in the background (at least 2).
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Stay on loopback even when root (no namespaces).
    #[arg(long)]
    pub loopback: bool,
    /// Output folder for the report (default: target/interlink-demo when ./target exists,
    /// else ./interlink-demo).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON on stdout (the progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

impl DemoArgs {
    /// Writes started per second.
    pub fn rate(&self) -> u64 {
        ((self.writes as f64 / self.duration).ceil() as u64).max(1)
    }

    /// The first writer's count: three traffic phases and 30 s of writes for the transitions
    /// between them (failover, the return after the hysteresis), so B is killed mid-stream.
    pub fn cap(&self) -> u64 {
        self.writes
            .saturating_mul(3)
            .saturating_add(self.rate().saturating_mul(30))
    }

    /// Where the progress lines go: stdout, or stderr with `--json`.
    pub fn progress(&self) -> Box<dyn std::io::Write> {
        if self.json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    }

    fn validate(&self) -> Result<()> {
        if !(8..=65536).contains(&self.size) {
            bail!("--size {}: from 8 to 65536 bytes", self.size);
        }
        if self.writes == 0 || !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--writes and --duration must be positive");
        }
        if self.window == 0 || self.clients < 2 {
            bail!("--window must be positive and --clients at least 2");
        }
        let log = self.cap() as u128 * (32 + self.size as u128);
        if log > 1 << 30 {
            bail!(
                "--writes {} of {} bytes need a log over 1 GiB: fewer or smaller writes",
                self.writes,
                self.size
            );
        }
        Ok(())
    }

    fn fabric_name(&self) -> &'static str {
        match self.fabric {
            ProviderChoice::Auto => "auto",
            ProviderChoice::Verbs => "verbs",
            ProviderChoice::Soft => "soft",
        }
    }

    fn out_dir(&self) -> PathBuf {
        match &self.out {
            Some(p) => p.clone(),
            None if Path::new("target").is_dir() => PathBuf::from("target/interlink-demo"),
            None => PathBuf::from("interlink-demo"),
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs the demo; fails (exit status 1) when an acknowledged write is not found after the
/// replay, or a step does not complete.
pub fn run(args: &DemoArgs) -> Result<()> {
    args.validate()?;
    // Namespaces need root and iproute2; without them, loopback.
    let has_ip = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let netns = is_root() && !args.loopback && has_ip;
    if args.fabric == ProviderChoice::Verbs && !netns {
        bail!("--fabric verbs needs the namespaces ilA/ilB with RDMA devices: run as root (e.g. inside soft-roce/vm), without --loopback");
    }
    let out = args.out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    // Sockets, configurations and the shared directory: short paths in the temp directory.
    let run_dir = std::env::temp_dir().join(format!("interlink-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    let topo = topology::Topology::setup(netns)?;
    {
        let mut p = args.progress();
        let _ = writeln!(
            p,
            "interlink demo: two node processes ({}), {} provider, {} writes of {} B per phase at {}/s; node logs and report in {}",
            topo.describe(),
            args.fabric_name(),
            args.writes,
            args.size,
            args.rate(),
            out.display()
        );
    }
    let result = run_scenario(args, &topo, &run_dir, &out);
    topo.teardown();
    match result {
        Ok(report) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_text());
                println!("report: {}", out.join("report.md").display());
            }
            if !report.ok {
                bail!("acknowledged writes were not found after the replay (see the report)");
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "demo failed (node files kept in {})",
            run_dir.display()
        ))),
    }
}

fn run_scenario(
    args: &DemoArgs,
    topo: &topology::Topology,
    run_dir: &Path,
    out: &Path,
) -> Result<report::Report> {
    let mut sc = scenario::Scenario::new(args, topo, run_dir)?;
    let result = sc.run();
    if result.is_err() && topo.netns {
        // Leave the topology usable: links up again.
        let _ = topo.set_link(0, false, &sc.a, &sc.b);
    }
    sc.a.shutdown();
    sc.b.shutdown();
    for (from, to) in [
        (sc.a.log_path().to_path_buf(), "node-a.log"),
        (sc.b.log_path().to_path_buf(), "node-b.log"),
        (sc.shared().join("acked-2.log"), "acked-2.log"),
        (sc.shared().join("replayed-1.log"), "replayed-1.log"),
        (sc.shared().join("replayed-2.log"), "replayed-2.log"),
    ] {
        let _ = std::fs::copy(&from, out.join(to));
    }
    result?;
    let mut report = std::mem::take(&mut sc.report);
    report.ok = report.writes.ok()
        && report.after_giveback[0] == report.after_giveback[1]
        && report.power_loss.ok();
    report.bytes_per_link = (0..usize::from(topology::LINKS))
        .map(|l| report.phases.iter().map(|p| p.bytes_per_link[l]).sum())
        .collect();
    let (hist, timeline) = ("latency.svg", "timeline.svg");
    plots::histogram(&report, &out.join(hist))?;
    plots::timeline(&report, &out.join(timeline))?;
    report.files = [
        "report.md",
        hist,
        timeline,
        "report.json",
        "node-a.log",
        "node-b.log",
    ]
    .iter()
    .map(|f| out.join(f).display().to_string())
    .collect();
    std::fs::write(
        out.join("report.md"),
        report.render_markdown(hist, timeline),
    )?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
