//! Node processes in the ilA/ilB namespaces for the integration tests: topology set-up via
//! soft-roce scripts, start/kill, control-socket status and client commands.
#![allow(dead_code)]

use crate::manager_pair::*;
use interlink::clients::giveback::driver::GivebackReport;
use interlink::clients::probe::ProbeStats;
use interlink::fabric::ProviderChoice;
use interlink::manager::control::{self, ControlRequest, ControlResponse};
use interlink::manager::{BalanceConfig, ClientState, NodeConfig, NodeStatus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fabric() -> ProviderChoice {
    match std::env::var("INTERLINK_TEST_FABRIC").as_deref() {
        Ok("verbs") => ProviderChoice::Verbs,
        _ => ProviderChoice::Soft,
    }
}

pub fn sh(script: &str, args: &[&str]) {
    let st = Command::new(repo().join("soft-roce").join(script))
        .args(args)
        .status()
        .expect("run soft-roce script");
    assert!(st.success(), "soft-roce/{script} {args:?} failed: {st}");
}

pub fn topology(links: u8) {
    sh("netns-up", &[&links.to_string()]);
}

pub struct Node {
    pub name: &'static str,
    pub ns: &'static str,
    config: PathBuf,
    socket: PathBuf,
    probes: Vec<String>,
    /// More arguments for `interlink node` (e.g. `--messenger NAME:CLASS`).
    pub extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    pub fn new(
        dir: &Path,
        name: &'static str,
        ns: &'static str,
        mut cfg: NodeConfig,
        probes: &[&str],
    ) -> Node {
        let socket = dir.join(format!("{name}.sock"));
        cfg.control_socket = Some(socket.clone());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, cfg.to_toml_string()).expect("write config");
        Node {
            name,
            ns,
            config,
            socket,
            probes: probes.iter().map(|s| s.to_string()).collect(),
            extra: Vec::new(),
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns,
            env!("CARGO_BIN_EXE_interlink"),
            "node",
            "--config",
        ])
        .arg(&self.config)
        .env("INTERLINK_LOG", "info")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log));
        for p in &self.probes {
            cmd.arg("--probe").arg(p);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().expect("spawn node"));
        let deadline = Instant::now() + WAIT;
        while control::request(
            &self.socket,
            &ControlRequest::Status,
            Duration::from_secs(2),
        )
        .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "node {} did not start; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL too; SIGCONT first anyway, harmlessly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the node process runs (started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` (a `kill -SIGNAL` name: `STOP`, `CONT`, ...) to the node process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("node running").id();
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{signal} {pid} ({}): {st}", self.name);
        if signal == "STOP" {
            self.wait_stopped(pid);
        }
    }

    /// Waits until every thread of `pid` is stopped: `kill` returns while a thread running
    /// on another CPU may still go on for a moment (and, say, acknowledge and log more).
    fn wait_stopped(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default();
            let all_stopped = !tasks.is_empty()
                && tasks.iter().all(|t| {
                    // `pid (comm) S ...`: the state follows the last ')'.
                    std::fs::read_to_string(t.join("stat")).is_ok_and(|s| {
                        s.rfind(')')
                            .and_then(|i| s[i + 1..].split_whitespace().next())
                            .is_some_and(|st| st == "T" || st == "t")
                    })
                });
            if all_stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {pid}) not stopped 10 s after SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The node's whole log.
    pub fn log_all(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn status(&self) -> NodeStatus {
        match control::request(
            &self.socket,
            &ControlRequest::Status,
            Duration::from_secs(5),
        ) {
            Ok(ControlResponse::Status { status }) => status,
            other => panic!("status of {}: {other:?}\n{}", self.name, self.log_text()),
        }
    }

    /// Sends a command to a client (probe or messenger) and returns its JSON answer.
    pub fn client(&self, name: &str, command: serde_json::Value) -> serde_json::Value {
        let req = ControlRequest::Client {
            name: name.into(),
            command,
        };
        match control::request(&self.socket, &req, Duration::from_secs(5)) {
            Ok(ControlResponse::Ok { value }) => value,
            other => panic!(
                "client {name} on {}: {other:?}\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    pub fn probe(&self, name: &str, command: serde_json::Value) -> ProbeStats {
        let req = ControlRequest::Client {
            name: name.into(),
            command,
        };
        match control::request(&self.socket, &req, Duration::from_secs(5)) {
            Ok(ControlResponse::Ok { value }) => {
                serde_json::from_value(value).expect("probe stats")
            }
            other => panic!("probe {name} on {}: {other:?}", self.name),
        }
    }

    pub fn wait(&self, what: &str, mut pred: impl FnMut(&NodeStatus) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < WAIT,
                "{}: timed out waiting for {what}: {s:#?}\nlog:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `fetch` until `pred` holds for its answer (panics after `limit`).
    pub fn poll<T: std::fmt::Debug>(
        &self,
        what: &str,
        limit: Duration,
        mut fetch: impl FnMut() -> T,
        mut pred: impl FnMut(&T) -> bool,
    ) -> T {
        let t0 = Instant::now();
        loop {
            let v = fetch();
            if pred(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < limit,
                "{}: timed out waiting for {what}: {v:#?}\nlog:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls client `name` with an empty command until `pred` holds for its answer (panics
    /// after `limit`).
    pub fn wait_client(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.poll(
            what,
            limit,
            || self.client(name, serde_json::json!({})),
            pred,
        )
    }

    /// The giveback client's report (`--giveback`).
    pub fn giveback(&self) -> GivebackReport {
        let v = self.client("giveback", serde_json::json!({}));
        serde_json::from_value(v["status"].clone()).expect("giveback report")
    }

    /// Polls the giveback report until `pred` holds (panics after [`WAIT`]).
    pub fn wait_giveback(
        &self,
        what: &str,
        pred: impl FnMut(&GivebackReport) -> bool,
    ) -> GivebackReport {
        self.poll(what, WAIT, || self.giveback(), pred)
    }

    pub fn wait_traffic(&self, probe: &str, more_than: u64) -> ProbeStats {
        let t0 = Instant::now();
        loop {
            let st = self.probe(probe, serde_json::json!({}));
            if st.received > more_than {
                return st;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{}: probe {probe} stuck at {st:?}\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn pair_nodes(
    tag: &str,
    links: u8,
    balance: BalanceConfig,
    probes: &[&str],
) -> (Node, Node, NodeConfig) {
    pair_nodes_with(tag, links, balance, probes, |_| {})
}

/// [`pair_nodes`], with `tweak` applied to both nodes' configurations first.
pub fn pair_nodes_with(
    tag: &str,
    links: u8,
    balance: BalanceConfig,
    probes: &[&str],
    tweak: impl Fn(&mut NodeConfig),
) -> (Node, Node, NodeConfig) {
    topology(links);
    let dir = temp_dir(tag);
    let (mut a, mut b) = pair(&dir, links, netns, fabric(), 18600);
    a.balance = balance;
    b.balance = balance;
    tweak(&mut a);
    tweak(&mut b);
    let cfg = a.clone();
    let mut na = Node::new(&dir, "a", "ilA", a, probes);
    let mut nb = Node::new(&dir, "b", "ilB", b, probes);
    na.start();
    nb.start();
    (na, nb, cfg)
}

pub fn on_link(s: &NodeStatus, client: &str, link: u8) -> bool {
    s.clients
        .iter()
        .any(|c| c.name == client && c.state == ClientState::Ready && c.link == Some(link))
}

pub fn balance() -> BalanceConfig {
    BalanceConfig {
        hysteresis_ms: 2000,
        adaptive: false,
        ..BalanceConfig::default()
    }
}
