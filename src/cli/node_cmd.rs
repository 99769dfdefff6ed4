//! `interlink node --config F`: runs one node of the pair until SIGINT/SIGTERM or a
//! `shutdown` request on the control socket, with optional probe clients, the giveback
//! client, the shadow log and the mirrored write-back.

use crate::metrics_endpoint::{self, MetricsServer};
use crate::node_lock;
use crate::shadow_cmd::{self, ShadowNode};
use crate::writeback_cmd::{self, WriteBackNode};
use anyhow::{bail, Context};
use interlink::clients::giveback::service::{RecoverHook, ReplayHook};
use interlink::clients::giveback::{
    Command as GivebackCommand, FileMailbox, FileReservations, GivebackNode, GivebackOptions,
    JournalHooks,
};
use interlink::clients::message_probe::{self, MessageProbe};
use interlink::clients::mirror::NvramKind;
use interlink::clients::probe::{Probe, ProbeConfig};
use interlink::manager::control::{ControlHandler, ControlRequest, ControlResponse, ControlServer};
use interlink::manager::{BandwidthClass, Manager, NodeConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Parses `NAME:CLASS[:RATE]` (RATE in bytes per second, or `max`).
pub fn parse_probe(s: &str) -> anyhow::Result<ProbeConfig> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 || parts[0].is_empty() {
        bail!("--probe {s:?}: expected NAME:CLASS[:RATE]");
    }
    let class: BandwidthClass = parts[1].parse().map_err(anyhow::Error::msg)?;
    let mut cfg = ProbeConfig::new(parts[0], class);
    if let Some(rate) = parts.get(2) {
        cfg.rate_bps = if *rate == "max" {
            None
        } else {
            Some(
                rate.parse::<f64>()
                    .with_context(|| format!("--probe {s:?}: rate"))?,
            )
        };
    }
    Ok(cfg)
}

/// `--giveback` settings of `interlink node`.
#[derive(Clone, Debug, Default)]
pub struct GivebackArgs {
    /// The shared directory (mailbox copies, reservation files, service journals).
    pub dir: Option<PathBuf>,
    /// Automatic giveback on or off (None: the config file's `[giveback] auto`).
    pub auto: Option<bool>,
    /// Delay of the automatic giveback, milliseconds (None: `[giveback] delay_ms`).
    pub delay_ms: Option<u64>,
    /// Hold an operator's takeover until an operator's giveback (None: the config file's).
    pub hold_operator_takeover: Option<bool>,
    /// Missed intervals before the partner is declared failed.
    pub miss_intervals: Option<u32>,
    /// Shell command to assume the partner's identity.
    pub on_assume: Option<String>,
    /// Shell command to release it.
    pub on_release: Option<String>,
}

/// Name under which the giveback client answers on the control socket.
const GIVEBACK: &str = "giveback";
/// Name under which the shadow log answers on the control socket.
const SHADOW: &str = "shadow";
/// Name under which the mirrored write-back answers on the control socket.
const WRITEBACK: &str = "writeback";
/// Name under which the simulated link cut answers on the control socket.
const LINK: &str = "link";
/// Name under which the metrics answer on the control socket.
pub const METRICS: &str = "metrics";

struct Handler {
    manager: Arc<Manager>,
    giveback: Option<GivebackNode>,
    shadow: Option<ShadowNode>,
    writeback: Option<WriteBackNode>,
    probes: BTreeMap<String, Probe>,
    messengers: BTreeMap<String, MessageProbe>,
    /// The Prometheus recorder's handle, with `--metrics`.
    metrics: Option<PrometheusHandle>,
    stop: Arc<AtomicBool>,
}

impl ControlHandler for Handler {
    fn handle(&self, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::Status => match self.manager.status() {
                Ok(status) => ControlResponse::Status { status },
                Err(e) => ControlResponse::Error {
                    message: e.to_string(),
                },
            },
            ControlRequest::Shutdown => {
                self.stop.store(true, Ordering::Relaxed);
                ControlResponse::Ok {
                    value: serde_json::Value::Null,
                }
            }
            ControlRequest::Client { name, command } => {
                if name == GIVEBACK {
                    return match &self.giveback {
                        Some(g) => giveback_command(g, &command),
                        None => ControlResponse::Error {
                            message:
                                "this node runs no giveback client (start it with --giveback DIR)"
                                    .into(),
                        },
                    };
                }
                if name == LINK {
                    return link_command(&self.manager, &command);
                }
                if name == METRICS {
                    // The exposition `/metrics` serves: `{"text": "..."}`.
                    return match &self.metrics {
                        Some(h) => ControlResponse::Ok {
                            value: serde_json::json!({ "text": h.render() }),
                        },
                        None => ControlResponse::error(
                            "this node records no metrics (start it with --metrics ADDR)",
                        ),
                    };
                }
                if name == SHADOW {
                    return match &self.shadow {
                        Some(s) => s.command(&command),
                        None => ControlResponse::Error {
                            message: "this node runs no shadow log (start it with --shadow DIR)"
                                .into(),
                        },
                    };
                }
                if name == WRITEBACK {
                    return match &self.writeback {
                        Some(w) => w.command(&command),
                        None => ControlResponse::Error {
                            message: "this node runs no write-back (start it with --writeback DIR)"
                                .into(),
                        },
                    };
                }
                if let Some(m) = self.messengers.get(&name) {
                    return match serde_json::to_value(m.command(&command)) {
                        Ok(value) => ControlResponse::Ok { value },
                        Err(e) => ControlResponse::Error {
                            message: e.to_string(),
                        },
                    };
                }
                let Some(p) = self.probes.get(&name) else {
                    return ControlResponse::Error {
                        message: format!("no probe named {name:?}"),
                    };
                };
                if let Some(rate) = command.get("rate_bps") {
                    p.set_rate(rate.as_f64());
                }
                if command.get("write_stale").and_then(|v| v.as_bool()) == Some(true) {
                    p.write_stale();
                }
                if command.get("add_qp").and_then(|v| v.as_bool()) == Some(true) {
                    p.add_qp();
                }
                match serde_json::to_value(p.stats()) {
                    Ok(value) => ControlResponse::Ok { value },
                    Err(e) => ControlResponse::Error {
                        message: e.to_string(),
                    },
                }
            }
        }
    }
}

/// A giveback control command: `{"takeover": {"check": bool, "force": bool}}`, `{"giveback": {"check":
/// bool}}`, `{"auto_giveback": bool}`, or anything else for the status. Answers
/// `{"reply": {...} or null, "status": GivebackReport}`.
fn giveback_command(g: &GivebackNode, command: &serde_json::Value) -> ControlResponse {
    let check = |v: &serde_json::Value| v.get("check").and_then(|c| c.as_bool()) == Some(true);
    let force = |v: &serde_json::Value| v.get("force").and_then(|c| c.as_bool()) == Some(true);
    let cmd = if let Some(t) = command.get("takeover") {
        Some(if force(t) && !check(t) {
            GivebackCommand::ForceTakeover
        } else {
            GivebackCommand::Takeover {
                check_only: check(t),
            }
        })
    } else if let Some(t) = command.get("giveback") {
        Some(GivebackCommand::Giveback {
            check_only: check(t),
        })
    } else {
        command
            .get("auto_giveback")
            .and_then(|v| v.as_bool())
            .map(GivebackCommand::SetAutoGiveback)
    };
    let reply = match cmd.map(|c| g.command_report(c)) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            return ControlResponse::Error {
                message: e.to_string(),
            }
        }
    };
    match serde_json::to_value(serde_json::json!({ "reply": reply, "status": g.report() })) {
        Ok(value) => ControlResponse::Ok { value },
        Err(e) => ControlResponse::Error {
            message: e.to_string(),
        },
    }
}

/// A simulated cable pull on the soft provider: `{"cut": L}` or `{"restore": L}` makes this
/// node's soft devices of link L drop every packet and report their port down, or undoes it
/// (`interlink::fabric::soft::set_cut`). Refused on links that run on verbs (take the
/// interface down instead).
fn link_command(manager: &Manager, command: &serde_json::Value) -> ControlResponse {
    let (id, cut) = match (command.get("cut"), command.get("restore")) {
        (Some(l), None) => (l.as_u64(), true),
        (None, Some(l)) => (l.as_u64(), false),
        _ => return ControlResponse::error(r#"expected {"cut": L} or {"restore": L}"#),
    };
    let Some(link) = manager
        .config()
        .links
        .iter()
        .find(|l| Some(u64::from(l.id)) == id)
    else {
        return ControlResponse::error(format!("no link {id:?}"));
    };
    let provider = manager.status().ok().and_then(|s| {
        s.links
            .into_iter()
            .find(|l| l.id == link.id)
            .map(|l| l.provider)
    });
    if provider.as_deref() == Some("verbs") {
        return ControlResponse::error(format!(
            "link {} runs on verbs: a simulated cut needs the soft provider",
            link.id
        ));
    }
    interlink::fabric::soft::set_cut(link.local, cut);
    ControlResponse::Ok {
        value: serde_json::json!({ "link": link.id, "cut": cut }),
    }
}

fn start_giveback(
    manager: &Arc<Manager>,
    args: &GivebackArgs,
    shadow: Option<&ShadowNode>,
    writeback: Option<&WriteBackNode>,
) -> anyhow::Result<Option<GivebackNode>> {
    let Some(dir) = &args.dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cfg = manager.config();
    let (me, partner) = (cfg.node_id, cfg.partner_id);
    let policy = cfg.giveback;
    let mut options = GivebackOptions {
        auto_giveback: args.auto.unwrap_or(policy.auto),
        giveback_delay: Duration::from_millis(args.delay_ms.unwrap_or(policy.delay_ms)),
        hold_operator_takeover: args
            .hold_operator_takeover
            .unwrap_or(policy.hold_operator_takeover),
        ..GivebackOptions::default()
    };
    if let Some(k) = args.miss_intervals {
        options.miss_intervals = k;
    }
    let mut hooks = JournalHooks::new(dir, me)
        .with_identity_commands(args.on_assume.clone(), args.on_release.clone());
    // At a takeover the partner's shadow log is replayed and its mirrored write-back blocks
    // destaged (both run; the first error is reported).
    let replay: Option<ReplayHook> = match (
        shadow.map(ShadowNode::replay_hook),
        writeback.map(WriteBackNode::takeover_hook),
    ) {
        (Some(mut log), Some(mut blocks)) => Some(Box::new(move |context| {
            let replayed = log(context);
            let destaged = blocks(context);
            replayed.and(destaged)
        })),
        (log, blocks) => log.or(blocks),
    };
    if let Some(replay) = replay {
        hooks = hooks.with_replay(replay);
    }
    // Before this node serves its own disks the shadow log is recovered, then the
    // write-back (both must succeed).
    let recover: Option<RecoverHook> = match (
        shadow.map(ShadowNode::recover_hook),
        writeback.map(WriteBackNode::recover_hook),
    ) {
        (Some(mut log), Some(mut blocks)) => Some(Box::new(move |context| {
            log(context)?;
            blocks(context)
        })),
        (log, blocks) => log.or(blocks),
    };
    if let Some(recover) = recover {
        hooks = hooks.with_recovery(recover, shadow.map(ShadowNode::replayed_mark));
    }
    let node = GivebackNode::start(
        manager,
        options,
        Box::new(FileMailbox::open(dir, me, partner)?),
        Box::new(FileReservations::open(dir, me)?),
        Box::new(hooks),
    )?;
    Ok(Some(node))
}

/// What `interlink node` was asked to run.
pub struct NodeArgs<'a> {
    /// The node's configuration file.
    pub config: &'a Path,
    /// `--probe` specs.
    pub probes: &'a [String],
    /// `--messenger` specs.
    pub messengers: &'a [String],
    /// `--giveback` and its options.
    pub giveback: &'a GivebackArgs,
    /// `--shadow` spec.
    pub shadow: Option<&'a str>,
    /// `--writeback` spec.
    pub writeback: Option<&'a str>,
    /// `--metrics` address.
    pub metrics: Option<SocketAddr>,
    /// `--nvram` backing.
    pub nvram: NvramKind,
}

/// Runs the node.
pub fn run(args: NodeArgs<'_>) -> anyhow::Result<()> {
    let NodeArgs {
        config,
        probes,
        messengers,
        giveback,
        shadow,
        writeback,
        metrics,
        nvram,
    } = args;
    let mut shadow_spec = shadow.map(shadow_cmd::parse_spec).transpose()?;
    let mut writeback_spec = writeback.map(writeback_cmd::parse_spec).transpose()?;
    if let Some(s) = shadow_spec.as_mut() {
        s.nvram = nvram;
    }
    if let Some(w) = writeback_spec.as_mut() {
        w.nvram = nvram;
    }
    let cfg = NodeConfig::load(config).with_context(|| format!("load {}", config.display()))?;
    // Identity before any side effect: nothing is opened, formatted, journaled or connected
    // while another instance holds this node's state.
    let mut locks: Vec<PathBuf> = [
        giveback.dir.as_deref(),
        shadow_spec.as_ref().map(|s| s.dir.as_path()),
        writeback_spec.as_ref().map(|w| w.dir.as_path()),
    ]
    .into_iter()
    .flatten()
    .map(|dir| node_lock::lock_path(dir, cfg.node_id))
    .collect();
    locks.extend(
        cfg.control_socket
            .as_deref()
            .map(node_lock::socket_lock_path),
    );
    let _locks = node_lock::acquire(&locks)?;
    let probe_cfgs = probes
        .iter()
        .map(|p| parse_probe(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let messenger_cfgs = messengers
        .iter()
        .map(|m| message_probe::parse_spec(m).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The recorder before the manager: the library registers its metric handles as links
    // and clients are set up, and handles registered without a recorder record nothing.
    let metrics_addr = metrics.or(cfg.metrics_listen);
    let recorder = metrics_addr
        .map(|_| metrics_endpoint::install_recorder())
        .transpose()?;
    let _metrics_server = match (metrics_addr, &recorder) {
        (Some(addr), Some(handle)) => Some(MetricsServer::start(addr, handle.clone())?),
        _ => None,
    };
    let manager = Arc::new(Manager::start(cfg.clone())?);
    let mut messaging = BTreeMap::new();
    for m in messenger_cfgs {
        let name = m.name.clone();
        messaging.insert(name, MessageProbe::start(&manager, m)?);
    }
    let mut running = BTreeMap::new();
    for p in probe_cfgs {
        let name = p.name.clone();
        running.insert(name, Probe::start(&manager, p)?);
    }
    let shadow = match &shadow_spec {
        Some(spec) => Some(ShadowNode::start(&manager, spec)?),
        None => None,
    };
    let writeback = match &writeback_spec {
        Some(spec) => Some(WriteBackNode::start(&manager, spec)?),
        None => None,
    };
    // The own shadow log is recovered before this node serves: with the giveback client,
    // when it is about to serve its own disks (it then knows whether the partner took this
    // node over and replayed the log); without one, nobody else can replay it: now.
    let giveback = start_giveback(&manager, giveback, shadow.as_ref(), writeback.as_ref())?;
    match (&giveback, &shadow) {
        (None, Some(s)) => {
            s.recover()?;
        }
        (Some(g), Some(s)) => s.attach_giveback(g),
        _ => {}
    }
    if let (Some(g), Some(w)) = (&giveback, &writeback) {
        w.attach_giveback(g);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("install signal handler")?;
    }
    let handler = Arc::new(Handler {
        manager: manager.clone(),
        giveback,
        shadow,
        writeback,
        probes: running,
        messengers: messaging,
        metrics: recorder,
        stop: stop.clone(),
    });
    let _server = match &cfg.control_socket {
        Some(path) => Some(ControlServer::start(path, handler.clone())?),
        None => None,
    };
    println!(
        "interlink node {} (partner {}, cluster {}) running with {} link(s){}",
        cfg.node_id,
        cfg.partner_id,
        cfg.cluster_id,
        cfg.links.len(),
        cfg.control_socket
            .as_ref()
            .map(|p| format!("; control socket {}", p.display()))
            .unwrap_or_default()
    );
    if let Some(server) = &_metrics_server {
        println!("metrics on http://{}/metrics", server.addr());
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(_server);
    drop(handler);
    manager.shutdown();
    println!("interlink node {} stopped", cfg.node_id);
    Ok(())
}
