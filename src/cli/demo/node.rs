//! One node process of the demo: `interlink node` started in a namespace (`ip netns exec`) or
//! directly, its control socket (status, client commands) and kill -9.

use anyhow::{bail, Context, Result};
use interlink::clients::giveback::driver::GivebackReport;
use interlink::manager::control::{self, ControlRequest, ControlResponse};
use interlink::manager::{NodeConfig, NodeStatus};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node process and how to reach it.
pub struct NodeProc {
    /// "A" or "B".
    pub name: &'static str,
    /// Namespace to run in (`ip netns exec`), if any.
    ns: Option<&'static str>,
    config: PathBuf,
    socket: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// How long a control request may take.
const REQUEST: Duration = Duration::from_secs(5);

impl NodeProc {
    /// Writes the node's configuration into `dir` (with its control socket there too).
    pub fn new(
        dir: &Path,
        name: &'static str,
        ns: Option<&'static str>,
        mut cfg: NodeConfig,
        args: Vec<String>,
    ) -> Result<NodeProc> {
        let lower = name.to_ascii_lowercase();
        let socket = dir.join(format!("{lower}.sock"));
        cfg.control_socket = Some(socket.clone());
        let config = dir.join(format!("{lower}.toml"));
        std::fs::write(&config, cfg.to_toml_string())
            .with_context(|| format!("write {}", config.display()))?;
        Ok(NodeProc {
            name,
            ns,
            config,
            socket,
            args,
            log: dir.join(format!("node-{lower}.log")),
            child: None,
        })
    }

    /// The node's log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the process and waits (up to `limit`) until its control socket answers.
    pub fn start(&mut self, limit: Duration) -> Result<()> {
        let exe = std::env::current_exe().context("find own executable")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = match self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("node")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env(
                "INTERLINK_LOG",
                std::env::var("INTERLINK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("start node {}", self.name))?,
        );
        let t0 = Instant::now();
        while control::request(&self.socket, &ControlRequest::Status, REQUEST).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "node {} exited at start ({st}); its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if t0.elapsed() > limit {
                bail!(
                    "node {} did not start; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// kill -9 (`ip netns exec` execs the node, so the child is the node itself).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the node to stop and waits for it (kill -9 after 5 s).
    pub fn shutdown(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = control::request(&self.socket, &ControlRequest::Shutdown, REQUEST);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The last 40 lines of the node's log.
    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The manager's status.
    pub fn status(&self) -> Result<NodeStatus> {
        match control::request(&self.socket, &ControlRequest::Status, REQUEST) {
            Ok(ControlResponse::Status { status }) => Ok(status),
            Ok(other) => bail!("node {}: unexpected status answer {other:?}", self.name),
            Err(e) => bail!("node {}: status: {e}", self.name),
        }
    }

    /// A command for one of the node's clients; its answer.
    pub fn client(&self, name: &str, command: Value) -> Result<Value> {
        let req = ControlRequest::Client {
            name: name.into(),
            command,
        };
        match control::request(&self.socket, &req, REQUEST) {
            Ok(ControlResponse::Ok { value }) => Ok(value),
            Ok(ControlResponse::Error { message }) => {
                bail!("node {}, client {name}: {message}", self.name)
            }
            Ok(other) => bail!(
                "node {}, client {name}: unexpected answer {other:?}",
                self.name
            ),
            Err(e) => bail!("node {}, client {name}: {e}", self.name),
        }
    }

    /// The giveback client's report.
    pub fn giveback(&self) -> Result<GivebackReport> {
        let v = self.client("giveback", serde_json::json!({}))?;
        serde_json::from_value(v["status"].clone()).context("giveback report")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}
