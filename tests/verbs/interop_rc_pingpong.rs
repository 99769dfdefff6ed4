//! Interoperability of `examples/rc_pingpong.rs` with rdma-core's unmodified
//! `ibv_rc_pingpong`, in both roles, across the Soft-RoCE namespaces ilA (`rxe_a0`,
//! 198.18.0.1) and ilB (`rxe_b0`, 198.18.0.2).
//!
//! The interop tests are ignored by default: run them inside the Soft-RoCE VM with
//! `--ignored` (see `soft-roce/test-all`). The example binary must be built first
//! (`cargo build --examples`); it is found next to this test binary, in
//! `target/<profile>/examples/`. One loopback test runs the example against itself over the
//! soft provider on any host.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long either program may run before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long to wait for a server to listen on its TCP port.
const LISTEN_LIMIT: Duration = Duration::from_secs(30);

/// Path of the `rc_pingpong` example built for this test's profile.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/<test> -> target/<profile>/examples/rc_pingpong
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("examples").join("rc_pingpong");
    assert!(
        bin.is_file(),
        "example binary {} is missing: build it with `cargo build --examples` (same profile as \
         the tests) first",
        bin.display()
    );
    bin
}

/// The sysfs form of the IPv4-mapped GID of `ip` (`0000:...:ffff:c612:0001`).
fn sysfs_gid(ip: Ipv4Addr) -> String {
    let o = ip.to_ipv6_mapped().octets();
    o.chunks(2)
        .map(|p| format!("{:02x}{:02x}", p[0], p[1]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The GID index of port 1 of `dev` that holds the IPv4-mapped GID of `ip`, preferring a
/// RoCE v2 entry.
fn gid_index(dev: &str, ip: Ipv4Addr) -> u32 {
    let want = sysfs_gid(ip);
    let port = format!("/sys/class/infiniband/{dev}/ports/1");
    let entries = std::fs::read_dir(format!("{port}/gids"))
        .unwrap_or_else(|e| panic!("no GID table for {dev} ({port}/gids): {e}"));
    let mut found: Vec<(u32, bool)> = Vec::new();
    for entry in entries.flatten() {
        let Some(idx) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let value = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if value.trim() != want {
            continue;
        }
        // Unused entries fail to read their type; that is fine, they never match above.
        let kind =
            std::fs::read_to_string(format!("{port}/gid_attrs/types/{idx}")).unwrap_or_default();
        found.push((idx, kind.trim().eq_ignore_ascii_case("RoCE v2")));
    }
    found.sort_by_key(|&(idx, v2)| (!v2, idx));
    found
        .first()
        .map(|&(idx, _)| idx)
        .unwrap_or_else(|| panic!("{dev} has no GID {want} ({ip}) on port 1"))
}

/// A started program whose output goes to files.
struct Run {
    name: &'static str,
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a program did.
struct Outcome {
    name: &'static str,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Panics unless the program exited 0 and printed the iterations summary.
    fn assert_ok(&self, iters: u32) {
        let ok = self.status.is_some_and(|s| s.success());
        let line = format!("{iters} iters in ");
        assert!(
            ok && self.stdout.lines().any(|l| l.starts_with(&line)),
            "{} failed ({}):\n--- stdout\n{}--- stderr\n{}",
            self.name,
            match self.status {
                Some(s) => format!("{s}"),
                None => format!("killed after {RUN_LIMIT:?}"),
            },
            self.stdout,
            self.stderr
        );
    }
}

/// Starts `argv` with stdout and stderr in fresh temporary files.
fn start(name: &'static str, tag: &str, argv: &[String]) -> Run {
    let dir = std::env::temp_dir();
    let base = format!("interop_rc_pingpong-{}-{tag}-{name}", std::process::id());
    let stdout = dir.join(format!("{base}.out"));
    let stderr = dir.join(format!("{base}.err"));
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("create stdout file"))
        .stderr(File::create(&stderr).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    Run {
        name,
        child,
        stdout,
        stderr,
    }
}

impl Run {
    /// Waits until the program exits or `deadline` passes (then kills it).
    fn finish(mut self, deadline: Instant) -> Outcome {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
        Outcome {
            name: self.name,
            status,
            stdout,
            stderr,
        }
    }

    /// Whether the program is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Whether a TCP socket listens on `port` in the network namespace `netns` (the current one
/// when `None`), from `/proc/net/tcp{,6}` as seen from inside that namespace.
fn listening(netns: Option<&str>, port: u16) -> bool {
    let table = match netns {
        Some(ns) => Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "cat",
                "/proc/net/tcp",
                "/proc/net/tcp6",
            ])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
        None => ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect(),
    };
    let suffix = format!(":{port:04X}");
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local_address rem_address st ...; st 0A is LISTEN.
        f.len() > 3 && f[1].ends_with(&suffix) && f[3] == "0A"
    })
}

/// Runs a server, waits for it to listen, runs the client; returns (server, client).
fn pingpong(
    tag: &str,
    server_ns: Option<&str>,
    port: u16,
    server: &[String],
    client: &[String],
) -> (Outcome, Outcome) {
    let deadline = Instant::now() + RUN_LIMIT;
    let mut srv = start("server", tag, server);
    let listen_by = Instant::now() + LISTEN_LIMIT;
    while !listening(server_ns, port) {
        if !srv.running() || Instant::now() > listen_by {
            let out = srv.finish(Instant::now());
            panic!(
                "server never listened on port {port} ({:?}):\n--- stdout\n{}--- stderr\n{}",
                out.status, out.stdout, out.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cli = start("client", tag, client);
    let cli = cli.finish(deadline);
    // A server whose client failed may wait for it forever: give it a short grace only.
    let client_ok = cli.status.is_some_and(|s| s.success());
    let srv_deadline = if client_ok {
        deadline
    } else {
        deadline.min(Instant::now() + Duration::from_secs(5))
    };
    let srv = srv.finish(srv_deadline);
    (srv, cli)
}

/// `ip netns exec NS PROGRAM ARGS...` as an argument vector.
fn in_ns(ns: &str, program: &str, args: &[&str]) -> Vec<String> {
    ["ip", "netns", "exec", ns, program]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

const ITERS: u32 = 100;
const SERVER_IP: &str = "198.18.0.2";

/// `-d DEV -g IDX -s 4096 -n 100 -p PORT` for device `dev` serving `ip`.
fn common_args(dev: &str, ip: Ipv4Addr, port: u16) -> Vec<String> {
    let idx = gid_index(dev, ip);
    let v = [
        "-d".to_string(),
        dev.to_string(),
        "-g".into(),
        idx.to_string(),
        "-s".into(),
        "4096".into(),
        "-n".into(),
        ITERS.to_string(),
        "-p".into(),
        port.to_string(),
    ];
    v.to_vec()
}

/// Runs one interop exchange across ilA (client, rxe_a0) and ilB (server, rxe_b0), with
/// `server` and `client` naming the program for each role; both must complete every iteration.
fn interop(tag: &str, port: u16, server: &str, client: &str) {
    let srv_args = common_args("rxe_b0", Ipv4Addr::new(198, 18, 0, 2), port);
    let mut cli_args = common_args("rxe_a0", Ipv4Addr::new(198, 18, 0, 1), port);
    cli_args.push(SERVER_IP.into());
    let srv_args: Vec<&str> = srv_args.iter().map(String::as_str).collect();
    let cli_args: Vec<&str> = cli_args.iter().map(String::as_str).collect();
    let (srv, cli) = pingpong(
        tag,
        Some("ilB"),
        port,
        &in_ns("ilB", server, &srv_args),
        &in_ns("ilA", client, &cli_args),
    );
    cli.assert_ok(ITERS);
    srv.assert_ok(ITERS);
}

#[test]
#[ignore = "needs Soft-RoCE: run inside soft-roce/vm with --ignored"]
fn ours_client_theirs_server() {
    let ours = example_bin();
    interop(
        "oc",
        18611,
        "ibv_rc_pingpong",
        ours.to_str().expect("utf-8 path"),
    );
}

#[test]
#[ignore = "needs Soft-RoCE: run inside soft-roce/vm with --ignored"]
fn theirs_client_ours_server() {
    let ours = example_bin();
    interop(
        "os",
        18612,
        ours.to_str().expect("utf-8 path"),
        "ibv_rc_pingpong",
    );
}

/// The example against itself over the soft provider on loopback: checks the exchange and
/// the ping-pong loop on any host.
#[test]
fn ours_both_roles_soft_loopback() {
    let ours = example_bin().to_str().expect("utf-8 path").to_string();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let args = |server: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [ours.as_str(), "--fabric", "soft", "-e", "-s", "4096", "-n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(ITERS.to_string());
        v.push("-p".into());
        v.push(port.to_string());
        v.extend(server.map(str::to_string));
        v
    };
    let (srv, cli) = pingpong("soft", None, port, &args(None), &args(Some("127.0.0.1")));
    srv.assert_ok(ITERS);
    cli.assert_ok(ITERS);
}

#[test]
fn sysfs_gid_format() {
    assert_eq!(
        sysfs_gid(Ipv4Addr::new(198, 18, 0, 1)),
        "0000:0000:0000:0000:0000:ffff:c612:0001"
    );
}
