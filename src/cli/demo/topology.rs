//! Where the demo's two nodes run: the namespaces ilA/ilB of `soft-roce/netns-up` (two veth
//! links, 198.18.L.1 <-> 198.18.L.2) when root, else loopback addresses 127.77.L.1/.2; the
//! node configurations; and how a link is cut: `ip link set down` at both ends in the
//! namespaces, the soft provider's simulated cut (control client `link`) on loopback.

use super::node::NodeProc;
use anyhow::{bail, Context, Result};
use interlink::fabric::ProviderChoice;
use interlink::manager::{BalanceConfig, BalancePolicy, LinkConfig, NodeConfig};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Links between the two nodes.
pub const LINKS: u8 = 2;

/// The demo's network.
pub struct Topology {
    /// Nodes in namespaces ilA/ilB (else both on loopback).
    pub netns: bool,
    /// The demo created the namespaces (and removes them at the end).
    created: bool,
}

/// Runs a set-up command; its output goes to stderr (stdout may carry the JSON report).
fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

/// The repository's soft-roce scripts, when the binary runs from its build tree.
fn script(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("soft-roce")
        .join(name);
    p.is_file().then_some(p)
}

/// Whether ilA/ilB exist with both links.
fn namespaces_present() -> bool {
    (0..LINKS).all(|l| {
        Command::new("ip")
            .args(["-n", "ilA", "link", "show", &format!("il{l}a")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

impl Topology {
    /// Namespaces when `netns` (root), made by `soft-roce/netns-up 2` (or by the same `ip`
    /// commands when the script is not at hand) unless they exist; else loopback.
    pub fn setup(netns: bool) -> Result<Topology> {
        if !netns {
            return Ok(Topology {
                netns,
                created: false,
            });
        }
        let mut created = false;
        if !namespaces_present() {
            created = true;
            match script("netns-up") {
                Some(s) => run(Command::new(s).arg(LINKS.to_string()))?,
                None => {
                    ip(&["netns", "add", "ilA"])?;
                    ip(&["netns", "add", "ilB"])?;
                    for ns in ["ilA", "ilB"] {
                        ip(&["-n", ns, "link", "set", "lo", "up"])?;
                    }
                    for l in 0..LINKS {
                        let (a, b) = (format!("il{l}a"), format!("il{l}b"));
                        ip(&[
                            "-n", "ilA", "link", "add", &a, "type", "veth", "peer", "name", &b,
                            "netns", "ilB",
                        ])?;
                        ip(&[
                            "-n",
                            "ilA",
                            "addr",
                            "add",
                            &format!("198.18.{l}.1/24"),
                            "dev",
                            &a,
                        ])?;
                        ip(&[
                            "-n",
                            "ilB",
                            "addr",
                            "add",
                            &format!("198.18.{l}.2/24"),
                            "dev",
                            &b,
                        ])?;
                        ip(&["-n", "ilA", "link", "set", &a, "up"])?;
                        ip(&["-n", "ilB", "link", "set", &b, "up"])?;
                    }
                }
            }
        }
        Ok(Topology { netns, created })
    }

    /// Where it runs, for the report.
    pub fn describe(&self) -> &'static str {
        if self.netns {
            "namespaces ilA/ilB"
        } else {
            "loopback"
        }
    }

    /// Addresses of link `l` at node A and node B.
    pub fn addrs(&self, l: u8) -> (IpAddr, IpAddr) {
        let (a, b) = if self.netns {
            (format!("198.18.{l}.1"), format!("198.18.{l}.2"))
        } else {
            (format!("127.77.{l}.1"), format!("127.77.{l}.2"))
        };
        (
            a.parse().expect("valid constant address"),
            b.parse().expect("valid constant address"),
        )
    }

    /// The namespace of node A or B, if any.
    pub fn ns(&self, b: bool) -> Option<&'static str> {
        match (self.netns, b) {
            (false, _) => None,
            (true, false) => Some("ilA"),
            (true, true) => Some("ilB"),
        }
    }

    /// Configurations of node 1 (A) and node 2 (B): two links, heartbeat every 100 ms (down
    /// after 5 misses), every client on the lowest healthy link (the other is standby) and
    /// back home 1.5 s after it recovers. `dir` receives the shared secret.
    pub fn configs(&self, dir: &Path, fabric: ProviderChoice) -> Result<(NodeConfig, NodeConfig)> {
        use std::os::unix::fs::PermissionsExt;
        let secret = dir.join("secret");
        let bytes: [u8; 16] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&secret, format!("{hex}\n")).context("write the secret")?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        let balance = BalanceConfig {
            policy: BalancePolicy::Standby,
            hysteresis_ms: 1500,
            adaptive: false,
            ..BalanceConfig::default()
        };
        let port = 30000 + (std::process::id() % 800) as u16 * 8;
        let node = |me, partner| {
            NodeConfig::new(7, me, partner, &secret)
                .with_fabric(fabric)
                .with_heartbeat(100, 5)
                .with_balance(balance)
        };
        let (mut a, mut b) = (node(1, 2), node(2, 1));
        for l in 0..LINKS {
            let (la, lb) = self.addrs(l);
            let p = port + u16::from(l);
            a = a.with_link(LinkConfig::new(l, la, lb).with_bootstrap_port(p));
            b = b.with_link(LinkConfig::new(l, lb, la).with_bootstrap_port(p));
        }
        Ok((a, b))
    }

    /// Cuts (`down`) or restores link `l` at both ends.
    pub fn set_link(&self, l: u8, down: bool, a: &NodeProc, b: &NodeProc) -> Result<()> {
        let state = if down { "down" } else { "up" };
        if self.netns {
            ip(&["-n", "ilA", "link", "set", &format!("il{l}a"), state])?;
            ip(&["-n", "ilB", "link", "set", &format!("il{l}b"), state])?;
            return Ok(());
        }
        let key = if down { "cut" } else { "restore" };
        for n in [a, b] {
            n.client("link", serde_json::json!({ key: l }))?;
        }
        Ok(())
    }

    /// Removes the namespaces if the demo made them.
    pub fn teardown(&self) {
        if !self.created {
            return;
        }
        let done = match script("netns-down") {
            Some(s) => run(&mut Command::new(s)),
            None => ip(&["netns", "del", "ilA"]).and_then(|_| ip(&["netns", "del", "ilB"])),
        };
        if let Err(e) = done {
            eprintln!("interlink demo: removing the namespaces: {e:#}");
        }
    }
}
