//! Node configuration: the example files, TOML round trips, every validation rule, unknown
//! keys, secret reading, relative paths and the backoff schedule.

use interlink::fabric::ProviderChoice;
use interlink::manager::{
    BackoffConfig, BalanceConfig, BalancePolicy, ConfigError, GivebackPolicy, HeartbeatConfig,
    LinkConfig, NodeConfig, DEFAULT_BOOTSTRAP_PORT, MAX_LINKS, MIN_SECRET_LEN,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Link `l` of the test topology as seen from node A (198.18.l.1 -> 198.18.l.2).
fn link_a(l: u8) -> LinkConfig {
    LinkConfig::new(l, v4(198, 18, l, 1), v4(198, 18, l, 2))
}

/// A valid two-link configuration built in code.
fn valid() -> NodeConfig {
    NodeConfig::new(7, 1, 2, "/etc/interlink/secret")
        .with_link(link_a(0))
        .with_link(link_a(1))
}

/// A fresh, empty directory under the system temp dir (removed by the caller when done).
fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "interlink-manager-config-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `contents` to `dir/name` with mode 0600 and returns the path.
fn write_private(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    #[cfg(unix)]
    chmod(&path, 0o600);
    path
}

/// Asserts that `result` is `Invalid` for exactly `field`, and that the message starts with it.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, ConfigError>, field: &str) {
    match result {
        Err(e @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { field: f, reason } = &e else {
                unreachable!()
            };
            assert_eq!(f, field, "wrong field; reason: {reason}");
            assert!(!reason.is_empty());
            assert!(
                e.to_string().starts_with(&format!("{field}: ")),
                "message {e} does not start with {field}"
            );
        }
        other => panic!("expected Invalid for {field}, got {other:?}"),
    }
}

#[track_caller]
fn assert_rejected(cfg: NodeConfig, field: &str) {
    assert_invalid(cfg.validate(), field);
}

/// Asserts that parsing `text` fails with a parse error whose message mentions `needle`.
#[track_caller]
fn assert_parse_error(text: &str, needle: &str) {
    match NodeConfig::from_toml_str(text, None) {
        Err(ConfigError::Parse { path, message }) => {
            assert_eq!(path, None);
            assert!(
                message.contains(needle),
                "message {message:?} lacks {needle:?}"
            );
        }
        other => panic!("expected a parse error mentioning {needle:?}, got {other:?}"),
    }
}

const MINIMAL: &str = r#"
cluster_id = 7
node_id = 1
partner_id = 2
secret_file = "/etc/interlink/secret"

[[link]]
id = 0
local = "198.18.0.1"
peer = "198.18.0.2"
"#;

// ---------------------------------------------------------------------------------------------
// Example files

#[test]
fn example_files_parse_and_mirror_each_other() {
    let dir = examples_dir();
    let a = NodeConfig::load(&dir.join("node-a.toml")).expect("node-a.toml");
    let b = NodeConfig::load(&dir.join("node-b.toml")).expect("node-b.toml");

    assert_eq!((a.cluster_id, a.node_id, a.partner_id), (7, 1, 2));
    assert_eq!((b.cluster_id, b.node_id, b.partner_id), (7, 2, 1));
    assert!(a.is_initiator());
    assert!(!b.is_initiator());
    // secret_file = "secret" is relative: resolved against the examples directory.
    assert!(a.secret_file.is_absolute());
    assert!(a.secret_file.ends_with("examples/secret"));
    assert_eq!(a.secret_file, b.secret_file);
    assert_eq!(
        a.control_socket.as_deref(),
        Some(Path::new("/run/interlink/node-a.sock"))
    );
    assert_eq!(
        b.control_socket.as_deref(),
        Some(Path::new("/run/interlink/node-b.sock"))
    );
    assert_eq!(a.fabric, ProviderChoice::Auto);

    assert_eq!(a.links.len(), 2);
    assert_eq!(b.links.len(), 2);
    for l in 0..2u8 {
        let (la, lb) = (&a.links[usize::from(l)], &b.links[usize::from(l)]);
        assert_eq!(la.id, l);
        assert_eq!(lb.id, l);
        assert_eq!(la.local, v4(198, 18, l, 1));
        assert_eq!(la.peer, v4(198, 18, l, 2));
        assert_eq!((lb.local, lb.peer), (la.peer, la.local));
        assert_eq!(la.device.as_deref(), Some(format!("rxe_a{l}").as_str()));
        assert_eq!(lb.device.as_deref(), Some(format!("rxe_b{l}").as_str()));
        assert_eq!(la.bootstrap_port, lb.bootstrap_port);
        // Only the test range 198.18.0.0/15.
        for addr in [la.local, la.peer] {
            let IpAddr::V4(v) = addr else {
                panic!("{addr} is not IPv4")
            };
            assert_eq!(v.octets()[0], 198);
            assert!(v.octets()[1] == 18 || v.octets()[1] == 19);
        }
    }
    assert_eq!(a.heartbeat, b.heartbeat);
    assert_eq!(a.backoff, b.backoff);
    assert_eq!(a.balance, b.balance);
    assert_eq!(a.heartbeat.detection_bound(), Duration::from_millis(600));
}

// ---------------------------------------------------------------------------------------------
// Round trips and defaults

#[test]
fn round_trip_examples() {
    for name in ["node-a.toml", "node-b.toml"] {
        let cfg = NodeConfig::load(&examples_dir().join(name)).unwrap();
        let text = cfg.to_toml_string();
        let back = NodeConfig::from_toml_str(&text, None)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(back, cfg, "{name}:\n{text}");
    }
}

#[test]
fn round_trip_everything_set() {
    let cfg = NodeConfig::new(u64::from(u32::MAX) + 5, 9, 3, "relative/secret")
        .with_fabric(ProviderChoice::Soft)
        .with_control_socket("/run/interlink/x.sock")
        .with_heartbeat(60_000, 1000)
        .with_backoff(BackoffConfig {
            initial_ms: 7,
            max_ms: 70_000,
            multiplier: 1.5,
        })
        .with_balance(BalanceConfig {
            policy: BalancePolicy::Standby,
            hysteresis_ms: 3_600_000,
            adaptive: false,
            rebalance_ratio: 1.25,
            rebalance_min_bps: 0.0,
            rebalance_cooldown_ms: 0,
        })
        .with_link(
            LinkConfig::new(0, v4(198, 18, 0, 2), v4(198, 18, 0, 1))
                .with_device("rxe_b0")
                .with_bootstrap_port(20000)
                .with_soft_port(20001),
        )
        .with_link(LinkConfig::new(
            1,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ));
    cfg.validate().unwrap();
    assert!(!cfg.is_initiator());
    let text = cfg.to_toml_string();
    assert_eq!(
        NodeConfig::from_toml_str(&text, None).unwrap(),
        cfg,
        "{text}"
    );

    // The minimal and the built form agree, and round trip too.
    let minimal = NodeConfig::from_toml_str(MINIMAL, None).unwrap();
    let built = NodeConfig::new(7, 1, 2, "/etc/interlink/secret").with_link(link_a(0));
    assert_eq!(minimal, built);
    assert_eq!(
        NodeConfig::from_toml_str(&minimal.to_toml_string(), None).unwrap(),
        minimal
    );
}

#[test]
fn defaults() {
    let cfg = NodeConfig::from_toml_str(MINIMAL, None).unwrap();
    assert_eq!(cfg.fabric, ProviderChoice::Auto);
    assert_eq!(cfg.control_socket, None);
    assert_eq!(cfg.heartbeat, HeartbeatConfig::default());
    assert_eq!(cfg.heartbeat.interval(), Duration::from_millis(100));
    assert_eq!(cfg.heartbeat.miss_count, 5);
    assert_eq!(cfg.backoff, BackoffConfig::default());
    assert_eq!(cfg.balance, BalanceConfig::default());
    assert_eq!(cfg.balance.policy, BalancePolicy::Class);
    let link = &cfg.links[0];
    assert_eq!(link.device, None);
    assert_eq!(link.bootstrap_port, DEFAULT_BOOTSTRAP_PORT);
    assert_eq!(link.bootstrap_port, 18515);
    assert_eq!(link.soft_port, 0);

    // A partly written table keeps the defaults of the keys left out.
    let text = format!("{MINIMAL}\n[heartbeat]\nmiss_count = 3\n\n[balance]\npolicy = \"standby\"\n\n[backoff]\nmax_ms = 800\n");
    let cfg = NodeConfig::from_toml_str(&text, None).unwrap();
    assert_eq!(cfg.heartbeat.interval_ms, 100);
    assert_eq!(cfg.heartbeat.miss_count, 3);
    assert_eq!(cfg.balance.policy, BalancePolicy::Standby);
    assert_eq!(cfg.balance.hysteresis_ms, 2000);
    assert_eq!(cfg.backoff.initial_ms, 25);
    assert_eq!(cfg.backoff.max_ms, 800);
}

#[test]
fn giveback_policy_defaults_keys_and_round_trip() {
    let cfg = NodeConfig::from_toml_str(MINIMAL, None).unwrap();
    // Automatic giveback at once, except after an operator's takeover.
    assert_eq!(
        cfg.giveback,
        GivebackPolicy {
            auto: true,
            delay_ms: 0,
            hold_operator_takeover: true
        }
    );
    let text = format!("{MINIMAL}\n[giveback]\ndelay_ms = 30000\n");
    let cfg = NodeConfig::from_toml_str(&text, None).unwrap();
    assert_eq!(cfg.giveback.delay(), Duration::from_secs(30));
    assert!(cfg.giveback.auto && cfg.giveback.hold_operator_takeover);
    let text = format!("{MINIMAL}\n[giveback]\nauto = false\nhold_operator_takeover = false\n");
    let cfg = NodeConfig::from_toml_str(&text, None).unwrap();
    assert!(!cfg.giveback.auto && !cfg.giveback.hold_operator_takeover);
    assert_eq!(
        NodeConfig::from_toml_str(&cfg.to_toml_string(), None).unwrap(),
        cfg
    );
    assert_parse_error(&format!("{MINIMAL}\n[giveback]\ndelay = 5\n"), "delay");
    let mut big = cfg;
    big.giveback.delay_ms = u64::MAX;
    assert_rejected(big, "giveback.delay_ms");
}

#[test]
fn builders() {
    let link = LinkConfig::new(3, v4(198, 18, 3, 1), v4(198, 18, 3, 2));
    assert_eq!(link.id, 3);
    assert_eq!(link.device, None);
    assert_eq!(link.bootstrap_port, DEFAULT_BOOTSTRAP_PORT);
    assert_eq!(link.soft_port, 0);
    let link = link
        .with_device("rxe_a3")
        .with_bootstrap_port(1000)
        .with_soft_port(2000);
    assert_eq!(link.device.as_deref(), Some("rxe_a3"));
    assert_eq!((link.bootstrap_port, link.soft_port), (1000, 2000));

    let cfg = NodeConfig::new(1, 5, 4, "s");
    assert!(cfg.links.is_empty());
    assert_eq!(cfg.secret_file, PathBuf::from("s"));
    assert_eq!(cfg.fabric, ProviderChoice::Auto);
    assert_eq!(cfg.control_socket, None);
    assert!(!cfg.is_initiator());
    assert!(NodeConfig::new(1, 4, 5, "s").is_initiator());
    let cfg = cfg
        .with_heartbeat(20, 2)
        .with_fabric(ProviderChoice::Verbs)
        .with_control_socket("c.sock");
    assert_eq!(
        cfg.heartbeat,
        HeartbeatConfig {
            interval_ms: 20,
            miss_count: 2
        }
    );
    assert_eq!(cfg.heartbeat.detection_bound(), Duration::from_millis(60));
    assert_eq!(cfg.fabric, ProviderChoice::Verbs);
    assert_eq!(cfg.control_socket, Some(PathBuf::from("c.sock")));
}

// ---------------------------------------------------------------------------------------------
// Validation: one failing case (at least) per rule, each naming its field

#[test]
fn valid_base_passes() {
    valid().validate().unwrap();
}

#[test]
fn rule_partner_differs() {
    let mut cfg = valid();
    cfg.partner_id = cfg.node_id;
    assert_rejected(cfg, "partner_id");
}

#[test]
fn rule_link_count() {
    let mut cfg = valid();
    cfg.links.clear();
    assert_rejected(cfg, "link");

    let mut cfg = NodeConfig::new(7, 1, 2, "/s");
    for l in 0..MAX_LINKS as u8 {
        cfg = cfg.with_link(link_a(l));
    }
    cfg.validate().unwrap();
    let cfg = cfg.with_link(link_a(MAX_LINKS as u8));
    assert_rejected(cfg, "link");

    // Via TOML: no [[link]] at all.
    let text = "cluster_id = 7\nnode_id = 1\npartner_id = 2\nsecret_file = \"/s\"\n";
    assert_invalid(NodeConfig::from_toml_str(text, None), "link");
}

#[test]
fn rule_link_id_is_position() {
    let mut cfg = valid();
    cfg.links[1].id = 2;
    assert_rejected(cfg, "link[1].id");
    let mut cfg = valid();
    cfg.links[0].id = 1;
    assert_rejected(cfg, "link[0].id");
}

#[test]
fn rule_no_duplicate_local() {
    let mut cfg = valid();
    cfg.links[1].local = cfg.links[0].local;
    assert_rejected(cfg, "link[1].local");
}

#[test]
fn rule_no_duplicate_peer_and_port() {
    let mut cfg = valid();
    cfg.links[1].peer = cfg.links[0].peer;
    assert_rejected(cfg, "link[1].peer");
    // The same peer on another bootstrap port is fine.
    let mut cfg = valid();
    cfg.links[1].peer = cfg.links[0].peer;
    cfg.links[1].bootstrap_port = DEFAULT_BOOTSTRAP_PORT + 1;
    cfg.validate().unwrap();
}

#[test]
fn rule_same_family() {
    let mut cfg = valid();
    cfg.links[0].peer = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_rejected(cfg, "link[0].peer");
    // An IPv4-mapped IPv6 address is still IPv6.
    let mut cfg = valid();
    cfg.links[1].local = IpAddr::V6(Ipv4Addr::new(198, 18, 1, 1).to_ipv6_mapped());
    assert_rejected(cfg, "link[1].peer");
}

#[test]
fn rule_local_differs_from_peer() {
    let mut cfg = valid();
    cfg.links[1].peer = cfg.links[1].local;
    assert_rejected(cfg, "link[1].peer");
}

#[test]
fn rule_bootstrap_port_nonzero() {
    let mut cfg = valid();
    cfg.links[1].bootstrap_port = 0;
    assert_rejected(cfg, "link[1].bootstrap_port");
    let text = format!("{MINIMAL}bootstrap_port = 0\n");
    assert_invalid(
        NodeConfig::from_toml_str(&text, None),
        "link[0].bootstrap_port",
    );
}

#[test]
fn rule_heartbeat_interval() {
    for bad in [0, 60_001, u64::MAX] {
        assert_rejected(valid().with_heartbeat(bad, 5), "heartbeat.interval_ms");
    }
    for good in [1, 60_000] {
        valid().with_heartbeat(good, 5).validate().unwrap();
    }
    let text = format!("{MINIMAL}\n[heartbeat]\ninterval_ms = 0\n");
    assert_invalid(
        NodeConfig::from_toml_str(&text, None),
        "heartbeat.interval_ms",
    );
}

#[test]
fn rule_heartbeat_miss_count() {
    for bad in [0, 1001, u32::MAX] {
        assert_rejected(valid().with_heartbeat(100, bad), "heartbeat.miss_count");
    }
    for good in [1, 1000] {
        valid().with_heartbeat(100, good).validate().unwrap();
    }
}

fn backoff(initial_ms: u64, max_ms: u64, multiplier: f64) -> BackoffConfig {
    BackoffConfig {
        initial_ms,
        max_ms,
        multiplier,
    }
}

#[test]
fn rule_backoff() {
    assert_rejected(
        valid().with_backoff(backoff(0, 100, 2.0)),
        "backoff.initial_ms",
    );
    assert_rejected(
        valid().with_backoff(backoff(100, 99, 2.0)),
        "backoff.max_ms",
    );
    for bad in [
        0.99,
        0.0,
        -2.0,
        100.01,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        assert_rejected(
            valid().with_backoff(backoff(100, 1000, bad)),
            "backoff.multiplier",
        );
    }
    for good in [1.0, 100.0] {
        valid()
            .with_backoff(backoff(1, 1, good))
            .validate()
            .unwrap();
    }
    let text = format!("{MINIMAL}\n[backoff]\nmultiplier = nan\n");
    assert_invalid(NodeConfig::from_toml_str(&text, None), "backoff.multiplier");
}

#[test]
fn rule_balance() {
    let with = |f: &dyn Fn(&mut BalanceConfig)| {
        let mut b = BalanceConfig::default();
        f(&mut b);
        valid().with_balance(b)
    };
    assert_rejected(
        with(&|b| b.hysteresis_ms = 3_600_001),
        "balance.hysteresis_ms",
    );
    with(&|b| b.hysteresis_ms = 3_600_000).validate().unwrap();
    with(&|b| b.hysteresis_ms = 0).validate().unwrap();
    for bad in [0.999, 0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_rejected(
            with(&|b| b.rebalance_ratio = bad),
            "balance.rebalance_ratio",
        );
    }
    with(&|b| b.rebalance_ratio = 1.0).validate().unwrap();
    for bad in [-1.0, -0.001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_rejected(
            with(&|b| b.rebalance_min_bps = bad),
            "balance.rebalance_min_bps",
        );
    }
    with(&|b| b.rebalance_min_bps = 0.0).validate().unwrap();
    let text = format!("{MINIMAL}\n[balance]\nrebalance_min_bps = inf\n");
    assert_invalid(
        NodeConfig::from_toml_str(&text, None),
        "balance.rebalance_min_bps",
    );
}

#[test]
fn rule_integers_fit_toml() {
    let mut cfg = valid();
    cfg.cluster_id = u64::MAX;
    assert_rejected(cfg.clone(), "cluster_id");
    // Still written without a panic (clamped), and what is written parses.
    let text = cfg.to_toml_string();
    let back = NodeConfig::from_toml_str(&text, None).unwrap();
    assert_eq!(back.cluster_id, i64::MAX as u64);

    let mut cfg = valid();
    cfg.cluster_id = i64::MAX as u64;
    cfg.validate().unwrap();

    assert_rejected(
        valid().with_backoff(backoff(1, u64::MAX, 2.0)),
        "backoff.max_ms",
    );
    assert_rejected(
        valid().with_balance(BalanceConfig {
            rebalance_cooldown_ms: u64::MAX,
            ..BalanceConfig::default()
        }),
        "balance.rebalance_cooldown_ms",
    );
}

#[test]
fn rule_paths_and_device_not_empty() {
    let mut cfg = valid();
    cfg.secret_file = PathBuf::new();
    assert_rejected(cfg, "secret_file");
    assert_rejected(valid().with_control_socket(""), "control_socket");
    let mut cfg = valid();
    cfg.links[1].device = Some(String::new());
    assert_rejected(cfg, "link[1].device");
}

#[test]
fn invalid_in_a_file_is_reported_by_load() {
    let dir = temp_dir("invalid");
    let path = dir.join("node.toml");
    std::fs::write(&path, MINIMAL.replace("partner_id = 2", "partner_id = 1")).unwrap();
    assert_invalid(NodeConfig::load(&path), "partner_id");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Parse errors and unknown keys

#[test]
fn unknown_keys_rejected() {
    assert_parse_error(&format!("colour = \"blue\"\n{MINIMAL}"), "colour");
    assert_parse_error(&format!("{MINIMAL}mtu = 1024\n"), "mtu");
    assert_parse_error(
        &format!("{MINIMAL}\n[heartbeat]\ntimeout_ms = 5\n"),
        "timeout_ms",
    );
    assert_parse_error(&format!("{MINIMAL}\n[backoff]\njitter = 0.1\n"), "jitter");
    assert_parse_error(&format!("{MINIMAL}\n[balance]\nweights = 2\n"), "weights");
    assert_parse_error(&format!("{MINIMAL}\n[extra]\nx = 1\n"), "extra");
    // The table is `link`, not `links`.
    assert_parse_error(&MINIMAL.replace("[[link]]", "[[links]]"), "links");
    // Unknown enum values.
    assert_parse_error(&format!("fabric = \"rdma\"\n{MINIMAL}"), "rdma");
    assert_parse_error(
        &format!("{MINIMAL}\n[balance]\npolicy = \"random\"\n"),
        "random",
    );
}

#[test]
fn malformed_text_rejected() {
    // Missing required key.
    assert_parse_error(&MINIMAL.replace("cluster_id = 7\n", ""), "cluster_id");
    assert_parse_error(&MINIMAL.replace("peer = \"198.18.0.2\"\n", ""), "peer");
    // Wrong types and values.
    assert_parse_error(&MINIMAL.replace("node_id = 1", "node_id = \"one\""), "");
    assert_parse_error(&MINIMAL.replace("node_id = 1", "node_id = -1"), "");
    assert_parse_error(&MINIMAL.replace("198.18.0.1", "198.18.0.300"), "");
    assert_parse_error(&MINIMAL.replace("id = 0", "id = 256"), "");
    assert_parse_error(&format!("{MINIMAL}bootstrap_port = 70000\n"), "");
    // Not TOML at all; the message says where.
    assert_parse_error("cluster_id = = 7", "line 1");
    assert_parse_error("\n\n[[link]\n", "line 3");
    assert_parse_error("\u{0}\u{ff}", "");
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir("load-errors");
    let missing = dir.join("missing.toml");
    match NodeConfig::load(&missing) {
        Err(e @ ConfigError::Read { .. }) => {
            assert!(e.to_string().contains("missing.toml"), "{e}");
        }
        other => panic!("expected Read, got {other:?}"),
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("{MINIMAL}colour = 1\n")).unwrap();
    match NodeConfig::load(&bad) {
        Err(e @ ConfigError::Parse { .. }) => {
            let ConfigError::Parse { path, message } = &e else {
                unreachable!()
            };
            assert_eq!(path.as_deref(), Some(bad.as_path()));
            assert!(message.contains("colour"), "{message}");
            assert!(e.to_string().contains("bad.toml"), "{e}");
        }
        other => panic!("expected Parse, got {other:?}"),
    }
    // Not UTF-8.
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    assert!(NodeConfig::load(&binary).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Relative paths

#[test]
fn relative_paths_resolved_against_base_dir() {
    let text = format!(
        "control_socket = \"run/node.sock\"\n{}",
        MINIMAL.replace("/etc/interlink/secret", "keys/secret")
    );
    let base = Path::new("/etc/interlink");
    let cfg = NodeConfig::from_toml_str(&text, Some(base)).unwrap();
    assert_eq!(cfg.secret_file, PathBuf::from("/etc/interlink/keys/secret"));
    assert_eq!(
        cfg.control_socket,
        Some(PathBuf::from("/etc/interlink/run/node.sock"))
    );
    // Without a base, paths stay as written.
    let cfg = NodeConfig::from_toml_str(&text, None).unwrap();
    assert_eq!(cfg.secret_file, PathBuf::from("keys/secret"));
    assert_eq!(cfg.control_socket, Some(PathBuf::from("run/node.sock")));
    // Absolute paths are kept.
    let cfg = NodeConfig::from_toml_str(MINIMAL, Some(Path::new("/elsewhere"))).unwrap();
    assert_eq!(cfg.secret_file, PathBuf::from("/etc/interlink/secret"));
}

#[test]
fn load_resolves_against_the_files_directory_and_reads_the_secret() {
    let dir = temp_dir("load-relative");
    write_private(&dir, "secret", b"0123456789abcdef0123456789abcdef\n");
    let text = format!(
        "control_socket = \"node.sock\"\n{}",
        MINIMAL.replace("/etc/interlink/secret", "secret")
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = NodeConfig::load(&path).unwrap();
    assert_eq!(cfg.secret_file, dir.join("secret"));
    assert_eq!(cfg.control_socket, Some(dir.join("node.sock")));
    assert_eq!(
        cfg.read_secret().unwrap(),
        b"0123456789abcdef0123456789abcdef"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Secret

fn secret_config(path: PathBuf) -> NodeConfig {
    NodeConfig::new(7, 1, 2, path).with_link(link_a(0))
}

#[test]
fn secret_newline_stripping() {
    let dir = temp_dir("secret-newline");
    let sixteen = b"0123456789abcdef";
    assert_eq!(sixteen.len(), MIN_SECRET_LEN);
    let cases: [(&[u8], &[u8]); 5] = [
        (b"0123456789abcdef", b"0123456789abcdef"),
        (b"0123456789abcdef\n", b"0123456789abcdef"),
        (b"0123456789abcdef\r\n", b"0123456789abcdef"),
        // Only one trailing newline is removed.
        (b"0123456789abcdef\n\n", b"0123456789abcdef\n"),
        // A lone carriage return is content.
        (b"0123456789abcdef\r", b"0123456789abcdef\r"),
    ];
    for (i, (contents, expected)) in cases.into_iter().enumerate() {
        let path = write_private(&dir, &format!("s{i}"), contents);
        assert_eq!(
            secret_config(path).read_secret().unwrap(),
            expected,
            "case {i}"
        );
    }
    // What the documented command writes (44 base64 characters and a newline).
    let path = write_private(
        &dir,
        "b64",
        b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n",
    );
    assert_eq!(secret_config(path).read_secret().unwrap().len(), 44);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn secret_too_short() {
    let dir = temp_dir("secret-short");
    for (name, contents, len) in [
        ("empty", &b""[..], 0),
        ("newline", b"\n", 0),
        ("fifteen", b"0123456789abcde\n", 15),
        ("fifteen-crlf", b"0123456789abcde\r\n", 15),
    ] {
        let path = write_private(&dir, name, contents);
        match secret_config(path.clone()).read_secret() {
            Err(e @ ConfigError::SecretTooShort { .. }) => {
                let ConfigError::SecretTooShort { path: p, len: l } = &e else {
                    unreachable!()
                };
                assert_eq!(p, &path);
                assert_eq!(*l, len, "{name}");
                assert!(e.to_string().contains(name), "{e}");
            }
            other => panic!("{name}: expected SecretTooShort, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn secret_missing() {
    let dir = temp_dir("secret-missing");
    let path = dir.join("absent");
    match secret_config(path.clone()).read_secret() {
        Err(ConfigError::ReadSecret { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected ReadSecret, got {other:?}"),
    }
    // A directory is not a secret either.
    assert!(matches!(
        secret_config(dir.clone()).read_secret(),
        Err(ConfigError::ReadSecret { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs `f` with a subscriber that captures warnings; returns `f`'s result and the log.
fn with_captured_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, captured.text())
}

#[cfg(unix)]
#[test]
fn secret_readable_by_others_warns_but_works() {
    let dir = temp_dir("secret-mode");
    let path = write_private(&dir, "secret", b"0123456789abcdef\n");
    let cfg = secret_config(path.clone());

    let (result, log) = with_captured_log(|| cfg.read_secret());
    assert_eq!(result.unwrap(), b"0123456789abcdef");
    assert!(!log.contains("secret file"), "0600 must not warn: {log}");

    for mode in [0o640, 0o604, 0o644] {
        chmod(&path, mode);
        let (result, log) = with_captured_log(|| cfg.read_secret());
        assert_eq!(result.unwrap(), b"0123456789abcdef", "mode {mode:o}");
        assert!(
            log.contains("WARN") && log.contains("readable by group or others"),
            "mode {mode:o}: {log}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Backoff

#[test]
fn backoff_growth_and_cap() {
    let b = BackoffConfig::default();
    let expected = [25, 50, 100, 200, 400, 800, 1600, 3200, 5000, 5000];
    for (attempt, ms) in expected.into_iter().enumerate() {
        assert_eq!(
            b.delay(attempt as u32),
            Duration::from_millis(ms),
            "attempt {attempt}"
        );
    }
    assert_eq!(b.delay(1000), Duration::from_millis(5000));
    assert_eq!(b.delay(u32::MAX), Duration::from_millis(5000));

    // Fractions are truncated to whole milliseconds.
    let b = backoff(100, 1000, 1.5);
    let got: Vec<u64> = (0..7).map(|a| b.delay(a).as_millis() as u64).collect();
    assert_eq!(got, [100, 150, 225, 337, 506, 759, 1000]);

    // Multiplier 1: constant.
    let b = backoff(250, 10_000, 1.0);
    for a in [0, 1, 10, u32::MAX] {
        assert_eq!(b.delay(a), Duration::from_millis(250));
    }

    // Largest values: no overflow, no NaN, never above the cap, never decreasing.
    let b = backoff(i64::MAX as u64, i64::MAX as u64, 100.0);
    assert_eq!(b.delay(u32::MAX), Duration::from_millis(i64::MAX as u64));
    let b = backoff(1, u64::MAX, 100.0);
    assert_eq!(b.delay(0), Duration::from_millis(1));
    assert_eq!(b.delay(u32::MAX), Duration::from_millis(u64::MAX));
    let mut last = Duration::ZERO;
    for a in 0..200 {
        let d = b.delay(a);
        assert!(d >= last, "attempt {a}: {d:?} < {last:?}");
        last = d;
    }

    // Out-of-range settings (rejected by validate) still give sane delays.
    assert_eq!(
        backoff(100, 1000, f64::NAN).delay(5),
        Duration::from_millis(100)
    );
    assert_eq!(backoff(100, 1000, 0.5).delay(5), Duration::from_millis(100));
    assert_eq!(
        backoff(100, 1000, f64::INFINITY).delay(1),
        Duration::from_millis(1000)
    );
    assert_eq!(
        backoff(5000, 1000, 2.0).delay(0),
        Duration::from_millis(1000)
    );
    assert_eq!(backoff(0, 0, 2.0).delay(3), Duration::ZERO);
}

#[test]
fn detection_bound_saturates() {
    let hb = HeartbeatConfig {
        interval_ms: u64::MAX,
        miss_count: u32::MAX,
    };
    assert_eq!(hb.detection_bound(), Duration::from_millis(u64::MAX));
}

#[test]
fn documented_example_matches_example_file() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let start = doc
        .find("```toml\n")
        .expect("a TOML block in docs/configuration.md")
        + 8;
    let len = doc[start..].find("```").unwrap();
    let documented = NodeConfig::from_toml_str(&doc[start..start + len], Some(&examples_dir()))
        .expect("the documented example is valid");
    let file = NodeConfig::load(&examples_dir().join("node-a.toml")).unwrap();
    assert_eq!(documented, file);
}

// ---------------------------------------------------------------------------------------------
// Input limits: files are read bounded, never block, and paths are checked at start

/// Runs `f` on another thread and fails if it does not return within a generous bound (a
/// read that blocks on a FIFO would hang the test instead of failing it).
fn returns_promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

fn read_error_text(result: Result<impl std::fmt::Debug, ConfigError>) -> String {
    match result {
        Err(e @ (ConfigError::Read { .. } | ConfigError::ReadSecret { .. })) => e.to_string(),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn config_and_secret_files_are_read_bounded_and_only_when_regular() {
    let dir = temp_dir("limits");
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    let big_config = dir.join("big.toml");
    std::fs::write(&big_config, vec![b'#'; 2 << 20]).unwrap();
    for (path, needle) in [
        (PathBuf::from("/dev/zero"), "not a regular file"),
        (fifo.clone(), "not a regular file"),
        (dir.clone(), "not a regular file"),
        (big_config, "larger than"),
    ] {
        let p = path.clone();
        let text = read_error_text(returns_promptly("config load", move || {
            NodeConfig::load(&p)
        }));
        assert!(text.contains(needle), "{}: {text}", path.display());
    }
    let big_secret = write_private(&dir, "big-secret", &vec![b'k'; 100 << 10]);
    for (path, needle) in [
        (PathBuf::from("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),
        (big_secret, "larger than"),
    ] {
        let cfg = NodeConfig::new(7, 1, 2, &path).with_link(link_a(0));
        let text = read_error_text(returns_promptly("secret read", move || cfg.read_secret()));
        assert!(text.contains(needle), "{}: {text}", path.display());
    }
    // At the limits both still read.
    let secret = write_private(&dir, "secret", &vec![b's'; 64 << 10]);
    let cfg = NodeConfig::new(7, 1, 2, &secret).with_link(link_a(0));
    assert_eq!(cfg.read_secret().unwrap().len(), 64 << 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_control_socket_path_longer_than_a_socket_address_holds_is_refused_at_load() {
    let fits = format!("/tmp/{}", "s".repeat(107 - 5));
    assert_eq!(fits.len(), 107);
    let cfg = valid().with_control_socket(&fits);
    cfg.validate().expect("107 bytes fit");
    let long = format!("{fits}x");
    assert_rejected(valid().with_control_socket(&long), "control_socket");
    let text = MINIMAL.replace(
        "secret_file = \"/etc/interlink/secret\"",
        &format!("secret_file = \"/etc/interlink/secret\"\ncontrol_socket = \"{long}\""),
    );
    match NodeConfig::from_toml_str(&text, None) {
        Err(e) => assert!(e.to_string().contains("at most 107"), "{e}"),
        Ok(_) => panic!("a 108-byte socket path was accepted"),
    }
}
