//! One `interlink node` per identity and state: before it opens, formats or journals anything,
//! or starts its manager, a node takes an exclusive lock on `node-<id>.lock` in each state
//! directory it uses (the giveback directory, the shadow log's and the write-back's) and on
//! `<control socket>.lock`, and holds them for its lifetime. A second instance with the same
//! configuration, or a second controller started with the same node id on the same shared
//! directory, is refused with the holder's pid before it does any harm. (The lock is the
//! operating system's: it goes with the process, a crash leaves nothing to clean up.)

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The held locks (released when dropped, or when the process ends).
#[derive(Debug)]
pub struct InstanceLocks {
    _held: Vec<Flock<File>>,
}

/// The lock file of node `node` in state directory `dir`.
pub fn lock_path(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("node-{node}.lock"))
}

/// The lock file beside control socket `socket`.
pub fn socket_lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes every lock in `paths` (creating missing parent directories), or fails naming the
/// first one another process holds.
pub fn acquire(paths: &[PathBuf]) -> anyhow::Result<InstanceLocks> {
    // One lock per file: directories given twice (the shadow log and the giveback files in
    // one directory) must not conflict with this process itself.
    let mut unique: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    let mut held = Vec::with_capacity(unique.len());
    for path in &unique {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("open lock file {}", path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "another interlink node holds {} (pid {}): the same node id and state are in use; not starting",
                    path.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                );
            }
            Err((_, errno)) => {
                return Err(std::io::Error::from(errno))
                    .with_context(|| format!("lock {}", path.display()));
            }
        };
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("write lock file {}", path.display()))?;
        held.push(file);
    }
    Ok(InstanceLocks { _held: held })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_may_take_it_once_released() {
        let dir = std::env::temp_dir().join(format!("interlink-node-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let paths = vec![
            lock_path(&dir.join("giveback"), 1),
            socket_lock_path(&dir.join("node-1.sock")),
        ];
        let first = acquire(&[paths.clone(), paths.clone()].concat()).expect("first, twice");
        let e = acquire(&paths[1..]).expect_err("second").to_string();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        assert!(e.contains("node-1.sock.lock"), "{e}");
        // Another node id in the same shared directory is another lock.
        let other = acquire(&[lock_path(&dir.join("giveback"), 2)]).expect("node 2");
        drop(first);
        acquire(&paths).expect("after release");
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
