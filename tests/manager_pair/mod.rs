//! Shared set-up for manager tests: a pair of node configurations with a secret file.

#![allow(dead_code)]

use interlink::fabric::ProviderChoice;
use interlink::manager::{
    BalanceConfig, ClientState, LinkConfig, LinkState, NodeConfig, NodeStatus,
};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU16 = AtomicU16::new(0);
    let d = std::env::temp_dir().join(format!(
        "interlink-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Writes a secret file.
pub fn secret(dir: &std::path::Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
    p
}

/// Addresses of link `l` at node A and node B.
pub type Addrs = fn(u8) -> (IpAddr, IpAddr);

/// Loopback addresses (in-process tests on the host).
pub fn loopback(l: u8) -> (IpAddr, IpAddr) {
    (
        format!("127.77.{l}.1").parse().expect("ip"),
        format!("127.77.{l}.2").parse().expect("ip"),
    )
}

/// The ilA/ilB namespace topology of soft-roce/netns-up.
pub fn netns(l: u8) -> (IpAddr, IpAddr) {
    (
        format!("198.18.{l}.1").parse().expect("ip"),
        format!("198.18.{l}.2").parse().expect("ip"),
    )
}

/// A port base for one pair (`port_base() + l` for link `l`, ten links at most) that no test
/// running beside it has: each call takes the next of 2,000 bases in 20000..40000, walked in
/// steps of ten from a start chosen by the process id, so the tests of one binary never share
/// one; a base with a port another process listens on (any address) is skipped.
pub fn port_base() -> u16 {
    static N: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 200) as u16 * 100;
    for _ in 0..2000 {
        let step = N.fetch_add(1, Ordering::Relaxed) % 2000;
        let base = 20000 + (start + step * 10) % 20000;
        let free = (base..base + 10).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port base in 20000..40000");
}

/// Configurations for node 1 (A, initiator) and node 2 (B).
pub fn pair(
    dir: &std::path::Path,
    links: u8,
    addrs: Addrs,
    fabric: ProviderChoice,
    port: u16,
) -> (NodeConfig, NodeConfig) {
    let s = secret(dir, "secret", "0123456789abcdef0123456789abcdef\n");
    let balance = BalanceConfig {
        hysteresis_ms: 1500,
        ..BalanceConfig::default()
    };
    let mut a = NodeConfig::new(7, 1, 2, &s)
        .with_fabric(fabric)
        .with_heartbeat(100, 5)
        .with_balance(balance);
    let mut b = NodeConfig::new(7, 2, 1, &s)
        .with_fabric(fabric)
        .with_heartbeat(100, 5)
        .with_balance(balance);
    for l in 0..links {
        let (la, lb) = addrs(l);
        a = a.with_link(LinkConfig::new(l, la, lb).with_bootstrap_port(port + u16::from(l)));
        b = b.with_link(LinkConfig::new(l, lb, la).with_bootstrap_port(port + u16::from(l)));
    }
    (a, b)
}

/// Whether every link is ready.
pub fn links_ready(s: &NodeStatus) -> bool {
    s.links.iter().all(|l| l.state == LinkState::Ready)
}

/// Whether these clients are ready.
pub fn clients_ready(s: &NodeStatus, names: &[&str]) -> bool {
    names.iter().all(|n| {
        s.clients
            .iter()
            .any(|c| c.name == *n && c.state == ClientState::Ready)
    })
}

/// The link a client is on.
pub fn link_of(s: &NodeStatus, name: &str) -> Option<u8> {
    s.clients
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.link)
}

/// Logs to the test output when `INTERLINK_LOG` is set (e.g. `INTERLINK_LOG=info`).
pub fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("INTERLINK_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
