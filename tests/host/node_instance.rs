//! Identity before any side effect (docs/security.md, "Misconfiguration"): a second
//! `interlink node` with a running node's configuration, or a second controller started with
//! the same node id on the same shared giveback directory, is refused before it opens,
//! formats or journals anything: the running node's NVRAM file, journal and mailbox stay
//! byte for byte what they were.
use crate::manager_pair;

use interlink::fabric::ProviderChoice;
use manager_pair::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(config: &Path, giveback: &Path, shadow: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_interlink"));
    c.arg("node")
        .arg("--config")
        .arg(config)
        .arg("--giveback")
        .arg(giveback)
        .arg("--shadow")
        .arg(format!("{}:64K", shadow.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn signal(n: &Node, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(n.0.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits (generously: a loaded machine) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `d` with a digest of its bytes (lock files aside: they name the
/// holder's pid).
fn snapshot(d: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else if p.extension().is_none_or(|x| x != "lock" && x != "sock") {
            out.push((
                p.clone(),
                crc32c::crc32c(&std::fs::read(&p).unwrap_or_default()),
            ));
        }
    }
    out.sort();
    out
}

/// Runs `c` to its end (bounded) and returns its exit success and stderr.
fn refused(mut c: Command) -> (bool, String) {
    let mut child = c.spawn().expect("spawn");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the second instance did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status.success(), err)
}

#[test]
fn a_second_instance_or_a_second_controller_with_the_same_id_is_refused_before_any_side_effect() {
    let dir = temp_dir("node-instance");
    let (a, _) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let a = a.with_control_socket(dir.join("a.sock"));
    let config = dir.join("a.toml");
    std::fs::write(&config, a.to_toml_string()).unwrap();
    let (giveback, shadow) = (dir.join("shared"), dir.join("nvram-a"));
    let first = Node(node(&config, &giveback, &shadow).spawn().expect("spawn"));
    // Up: its control socket answers, and its giveback client wrote its mailbox record.
    wait_for("the first node's control socket", || {
        std::os::unix::net::UnixStream::connect(dir.join("a.sock")).is_ok()
    });
    wait_for("the first node's mailbox record", || {
        giveback.join("mailbox-primary").exists()
    });
    // The twin: a second controller with the same node id (its own socket and NVRAM, the
    // shared giveback directory).
    let twin = a.clone().with_control_socket(dir.join("twin.sock"));
    let twin_config = dir.join("twin.toml");
    std::fs::write(&twin_config, twin.to_toml_string()).unwrap();
    // Frozen (it keeps its locks), so every byte of its state stays put unless the second
    // instance touches it.
    signal(&first, "-STOP");
    let before = snapshot(&dir);

    // The same configuration again.
    let (ok, err) = refused(node(&config, &giveback, &shadow));
    assert!(!ok, "a second instance started: {err}");
    assert!(err.contains("another interlink node holds"), "{err}");
    let pid = first.0.id().to_string();
    assert!(
        err.contains(&pid),
        "the holder's pid {pid} not named: {err}"
    );

    // A second controller with the same node id: its own socket and NVRAM, the shared dir.
    let (ok, err) = refused(node(&twin_config, &giveback, &dir.join("nvram-twin")));
    assert!(!ok, "a second controller with node id 1 started: {err}");
    assert!(err.contains("node-1.lock"), "{err}");

    // Nothing the running node owns changed.
    assert_eq!(snapshot(&dir), before);
    assert!(
        !dir.join("nvram-twin").exists(),
        "the twin created its NVRAM directory"
    );
    signal(&first, "-CONT");
    drop(first);
    std::fs::remove_dir_all(&dir).unwrap();
}
