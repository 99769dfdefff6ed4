//! The `interlink` command-line tool.
#![forbid(unsafe_code)]

mod demo;
mod metrics_endpoint;
mod node_cmd;
mod node_lock;
mod shadow_cmd;
mod writeback_cmd;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use interlink::clients::giveback::driver::{render_report, CommandReport, GivebackReport};
use interlink::clients::mirror::NvramKind;
use interlink::manager::control::{self, ControlRequest, ControlResponse};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "interlink",
    version,
    about = "RDMA cluster interconnect for an HA storage pair"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job: two node processes connect, write through the shadow log, survive a
    /// link cut, a kill -9 (takeover and replay) and a restart (giveback); then a report.
    Demo(demo::DemoArgs),
    /// List RDMA devices seen by libibverbs.
    Devices,
    /// Run one node of the pair: the cluster connection manager for the configured links,
    /// with optional probe clients, until SIGINT/SIGTERM.
    Node {
        /// The node's configuration file (TOML; see docs/configuration.md).
        #[arg(long)]
        config: PathBuf,
        /// Run a probe client NAME:CLASS[:RATE] (class low, medium or high; RATE bytes/s or
        /// `max`); the partner must run a probe of the same name. Repeatable.
        #[arg(long = "probe")]
        probes: Vec<String>,
        /// Run a messaging probe NAME:CLASS[:PARTNER_TIMEOUT_MS] (streams, echo calls, held
        /// calls, bulk flood; driven through the control socket); the partner must run one of
        /// the same name. Repeatable.
        #[arg(long = "messenger")]
        messengers: Vec<String>,
        /// Run the giveback client (partner state, takeover, coordinated giveback) with its
        /// mailbox copies, reservation files and service journal in DIR, a directory both
        /// nodes see (the stand-in for the shared disks).
        #[arg(long, value_name = "DIR")]
        giveback: Option<PathBuf>,
        /// Automatic giveback once the repaired partner waits in MBWAIT: on or off (off: give
        /// back with `interlink giveback`). Overrides the config file's `[giveback] auto`.
        #[arg(long, requires = "giveback", value_name = "on|off", value_parser = on_off)]
        auto_giveback: Option<bool>,
        /// Let the partner wait in MBWAIT this long before the automatic giveback, milliseconds.
        /// Overrides `[giveback] delay_ms`.
        #[arg(long, requires = "giveback", value_name = "MS")]
        giveback_delay_ms: Option<u64>,
        /// After an operator's takeover (`interlink takeover`), give back only on an operator's
        /// `interlink giveback` (on, the default) or automatically like after a failure (off).
        /// Overrides `[giveback] hold_operator_takeover`.
        #[arg(long, requires = "giveback", value_name = "on|off", value_parser = on_off)]
        hold_operator_takeover: Option<bool>,
        /// Missed poll intervals (on every link and in the mailbox) before the partner is
        /// declared failed (default 5).
        #[arg(long, requires = "giveback")]
        miss_intervals: Option<u32>,
        /// Shell command that assumes the partner's service identity at takeover (sees
        /// INTERLINK_NODE and INTERLINK_PARTNER).
        #[arg(long, requires = "giveback")]
        on_assume: Option<String>,
        /// Shell command that releases the partner's service identity at giveback.
        #[arg(long, requires = "giveback")]
        on_release: Option<String>,
        /// Run the shadow log (NVRAM log mirrored into the partner by RDMA WRITE) with its
        /// NVRAM file DIR/shadow-<node>.nvram of SIZE bytes (K, M, G suffixes; default 4M;
        /// both nodes must use the same size, else both are refused at connect); appends
        /// complete unmirrored once the partner is away for PARTNER_TIMEOUT_MS (default
        /// 5000). With --giveback, a takeover replays
        /// the partner's log into DIR/replayed-<node>.log. Driven through the control socket
        /// (client `shadow`).
        #[arg(long, value_name = "DIR[:SIZE[:PARTNER_TIMEOUT_MS]]")]
        shadow: Option<String>,
        /// Run the mirrored write-back (atomic writes of up to 256 blocks, mirrored into the
        /// partner's NVRAM before their status) over DIR/writeback-<node>.nvram and
        /// DIR/writeback-<node>.mirror.nvram, BUFFERS blocks of BLOCK_SIZE bytes each (default
        /// 1024 of 4096; both nodes must use the same); writes complete with the mirror lost
        /// once the partner is away for PARTNER_TIMEOUT_MS (default 5000). Driven through the
        /// control socket (client `writeback`).
        #[arg(long, value_name = "DIR[:PARTNER_TIMEOUT_MS[:BUFFERS[:BLOCK_SIZE]]]")]
        writeback: Option<String>,
        /// Record metrics and serve them for Prometheus on http://ADDR/metrics (ADDR is
        /// IP:PORT; port 0 picks one, printed at start); overrides the configuration's
        /// `metrics_listen`. `interlink status` then shows them too.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// NVRAM backing of the --shadow and --writeback files: `file` (mapped, msync per
        /// persist), `dax` (persistent memory: DIR on a filesystem mounted -o dax, mapped
        /// with MAP_SYNC, CPU cache flushes per persist; anything else fails to start) or
        /// `auto` (dax where DIR is DAX, else file).
        #[arg(long, value_name = "file|dax|auto", default_value = "file")]
        nvram: NvramKind,
    },
    /// Take over the partner (killing it first if it is alive); `--check` only says whether
    /// it would be allowed and why.
    Takeover {
        #[command(flatten)]
        node: NodeTarget,
        /// Only check; change nothing.
        #[arg(long)]
        check: bool,
        /// Take over even though this node's copy of the partner's shadow log is outdated
        /// (the partner acknowledged records without it): the reply names the records lost.
        #[arg(long, conflicts_with = "check")]
        force: bool,
    },
    /// Give the partner's disks back (it must wait in MBWAIT); `--check` only says whether it
    /// would be allowed and why.
    Giveback {
        #[command(flatten)]
        node: NodeTarget,
        /// Only check; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Show a running node's links and clients (asks its control socket).
    Status {
        #[command(flatten)]
        node: NodeTarget,
        /// Print the status as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// How long to wait for the answer, milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

/// Parses `on` or `off` (also true/false, yes/no, 1/0).
fn on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INTERLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Node {
            config,
            probes,
            messengers,
            giveback,
            auto_giveback,
            giveback_delay_ms,
            hold_operator_takeover,
            miss_intervals,
            on_assume,
            on_release,
            shadow,
            writeback,
            metrics,
            nvram,
        } => node_cmd::run(node_cmd::NodeArgs {
            config: &config,
            probes: &probes,
            messengers: &messengers,
            giveback: &node_cmd::GivebackArgs {
                dir: giveback,
                auto: auto_giveback,
                delay_ms: giveback_delay_ms,
                hold_operator_takeover,
                miss_intervals,
                on_assume,
                on_release,
            },
            shadow: shadow.as_deref(),
            writeback: writeback.as_deref(),
            metrics,
            nvram,
        }),
        Cmd::Takeover { node, check, force } => giveback_command(&node, "takeover", check, force),
        Cmd::Giveback { node, check } => giveback_command(&node, "giveback", check, false),
        Cmd::Devices => {
            if !interlink::fabric::VERBS_BUILT {
                eprintln!(
                    "interlink: built without the verbs provider (cargo feature `verbs`): \
                     soft provider only"
                );
            }
            for d in interlink::fabric::verbs_devices() {
                println!("{d}");
            }
            Ok(())
        }
        Cmd::Status {
            node,
            json,
            timeout_ms,
        } => status(&node, json, Duration::from_millis(timeout_ms)),
    };
    if let Err(e) = result {
        eprintln!("interlink: {e:#}");
        std::process::exit(1);
    }
}

/// Which running node a command talks to: its control socket, or its configuration file.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct NodeTarget {
    /// The node's control socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The node's configuration file (its `control_socket` key names the socket).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl NodeTarget {
    /// The control socket's path.
    fn socket(&self) -> anyhow::Result<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(c)) => control_socket_from_config(c),
            _ => bail!("give exactly one of --socket and --config"),
        }
    }
}

/// The control socket named by a node configuration file: its `control_socket` key, relative
/// paths taken from the file's directory. Reads only that key, so it works with any valid config.
fn control_socket_from_config(config: &Path) -> anyhow::Result<PathBuf> {
    let text = interlink::manager::config::read_config_text(config)?;
    let value: toml::Value = toml::from_str(&text)
        .with_context(|| format!("config {} is not valid TOML", config.display()))?;
    let socket = match value.get("control_socket") {
        Some(toml::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(_) => bail!(
            "config {}: control_socket must be a non-empty path string",
            config.display()
        ),
        None => bail!(
            "config {} has no control_socket: the node has no control socket",
            config.display()
        ),
    };
    Ok(match config.parent() {
        Some(dir) if socket.is_relative() => dir.join(socket),
        _ => socket,
    })
}

/// `interlink takeover` / `interlink giveback`.
fn giveback_command(node: &NodeTarget, what: &str, check: bool, force: bool) -> anyhow::Result<()> {
    let path = node.socket()?;
    let req = ControlRequest::Client {
        name: "giveback".into(),
        command: serde_json::json!({ what: { "check": check, "force": force } }),
    };
    match control::request(&path, &req, Duration::from_secs(15))? {
        ControlResponse::Ok { value } => {
            let reply: CommandReport = serde_json::from_value(
                value
                    .get("reply")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            )?;
            let report: GivebackReport = serde_json::from_value(
                value
                    .get("status")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            )?;
            println!(
                "{what}{}: {} ({})",
                if check {
                    " --check"
                } else if force {
                    " --force"
                } else {
                    ""
                },
                reply.outcome,
                reply.reason
            );
            print!("{}", render_report(&report));
            if reply.outcome == "refused" {
                std::process::exit(3);
            }
            Ok(())
        }
        ControlResponse::Error { message } => {
            bail!("node on {} refused: {message}", path.display())
        }
        other => bail!(
            "unexpected answer from {}: {}",
            path.display(),
            serde_json::to_string(&other).unwrap_or_default()
        ),
    }
}

/// `interlink status`.
fn status(node: &NodeTarget, json: bool, timeout: Duration) -> anyhow::Result<()> {
    let path = node.socket()?;
    match control::request(&path, &ControlRequest::Status, timeout)? {
        ControlResponse::Status { status } => {
            // The giveback section, when the node runs the giveback client.
            let giveback = match control::request(
                &path,
                &ControlRequest::Client {
                    name: "giveback".into(),
                    command: serde_json::json!({}),
                },
                timeout,
            ) {
                Ok(ControlResponse::Ok { value }) => value.get("status").cloned(),
                _ => None,
            };
            // The metrics section, when the node records metrics (`--metrics`): the samples
            // of the exposition its /metrics serves, under the same names.
            let metrics = match control::request(
                &path,
                &ControlRequest::Client {
                    name: node_cmd::METRICS.into(),
                    command: serde_json::json!({}),
                },
                timeout,
            ) {
                Ok(ControlResponse::Ok { value }) => value
                    .get("text")
                    .and_then(|t| t.as_str())
                    .map(metrics_endpoint::samples),
                _ => None,
            };
            if json {
                let mut v = serde_json::to_value(&status)?;
                if let (Some(g), Some(obj)) = (giveback, v.as_object_mut()) {
                    obj.insert("giveback".into(), g);
                }
                if let (Some(m), Some(obj)) = (&metrics, v.as_object_mut()) {
                    let samples: serde_json::Map<String, serde_json::Value> = m
                        .iter()
                        .map(|(series, value)| (series.clone(), serde_json::json!(value)))
                        .collect();
                    obj.insert("metrics".into(), samples.into());
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", control::render_status(&status));
                if let Some(g) = giveback {
                    let report: GivebackReport = serde_json::from_value(g)?;
                    print!("{}", render_report(&report));
                }
                if let Some(m) = &metrics {
                    println!("metrics:");
                    for (series, value) in m {
                        println!("  {series} {value}");
                    }
                }
            }
            Ok(())
        }
        ControlResponse::Error { message } => {
            bail!("node on {} refused: {message}", path.display())
        }
        other => bail!(
            "unexpected answer from {}: {}",
            path.display(),
            serde_json::to_string(&other).unwrap_or_default()
        ),
    }
}
