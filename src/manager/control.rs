//! The local control socket of a running node: what `interlink status` talks to.
//!
//! Protocol: a Unix stream socket. Each request is one line of JSON ([`ControlRequest`]), each
//! response one line of JSON ([`ControlResponse`]); a connection may carry several requests,
//! answered in order. A line that does not parse gets an [`ControlResponse::Error`] and the
//! connection stays open; a line longer than [`MAX_LINE`] bytes is refused and the connection
//! closed.
//!
//! The socket file is created with mode 0600 (owner only), its parent directory (mode 0755) when
//! missing. A socket file left behind by a dead node is replaced; one a live process answers on is
//! not ([`ControlError::InUse`]).
//!
//! ```
//! use interlink::manager::control::{request, ControlRequest, ControlResponse, render_status};
//! use std::{path::Path, time::Duration};
//!
//! # let dir = std::env::temp_dir().join(format!("interlink-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let (config, _) = interlink::manager::loopback_pair(&dir)?;
//! # let manager = interlink::manager::Manager::start(config)?;
//! # let socket = dir.join("node.sock");
//! # // What `interlink node` serves on its control socket (here the status only).
//! # let _server = interlink::manager::control::ControlServer::start(
//! #     &socket,
//! #     std::sync::Arc::new(move |_| match manager.status() {
//! #         Ok(status) => ControlResponse::Status { status },
//! #         Err(e) => ControlResponse::Error { message: e.to_string() },
//! #     }),
//! # )?;
//! # let path: &Path = &socket;
//! // path: the node's control_socket (`interlink node` serves it), /run/interlink/node.sock say
//! match request(path, &ControlRequest::Status, Duration::from_secs(5))? {
//!     ControlResponse::Status { status } => print!("{}", render_status(&status)),
//!     other => eprintln!("unexpected answer: {other:?}"),
//! }
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::manager::types::{ClientStatus, LatencySummary, LinkStatus, NodeStatus};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request line the server accepts, in bytes (without the newline).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest response line a client accepts, in bytes (without the newline).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Connections served at once; further ones get an error and are closed.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for a client to take a response before it gives up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the accept loop and connection threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Read timeout slice of a connection thread (it checks the stop flag between slices).
const READ_SLICE: Duration = Duration::from_millis(100);

/// A request sent to a node's control socket (one JSON line, tagged by `cmd`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// A status snapshot: answered by [`ControlResponse::Status`].
    Status,
    /// A command for one client of the node (its format is the client's business).
    Client {
        /// Client name.
        name: String,
        /// The command.
        command: serde_json::Value,
    },
    /// Stop the node.
    Shutdown,
}

/// A response from a node's control socket (one JSON line, tagged by `result`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    /// The node's status.
    Status {
        /// The snapshot.
        status: NodeStatus,
    },
    /// Done; a command-specific value (`null` when there is none).
    Ok {
        /// The value.
        value: serde_json::Value,
    },
    /// The request was malformed or failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl ControlResponse {
    /// An error response.
    pub fn error(message: impl Into<String>) -> ControlResponse {
        ControlResponse::Error {
            message: message.into(),
        }
    }
}

/// Answers control requests; implemented by the node (or by a test double).
///
/// Called from the server's connection threads, possibly concurrently. A panic inside `handle`
/// is caught and answered with an error.
pub trait ControlHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: ControlRequest) -> ControlResponse;
}

impl<F> ControlHandler for F
where
    F: Fn(ControlRequest) -> ControlResponse + Send + Sync + 'static,
{
    fn handle(&self, request: ControlRequest) -> ControlResponse {
        self(request)
    }
}

/// Errors of the control socket, on the server and the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket (or its directory) could not be created.
    #[error("cannot create control socket {}: {source}", path.display())]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A live process answers on the socket path.
    #[error("control socket {} is in use: another node is running", path.display())]
    InUse {
        /// Socket path.
        path: PathBuf,
    },
    /// Something that is not a socket exists at the path; it is left alone.
    #[error("{} exists and is not a socket; not replacing it", path.display())]
    NotSocket {
        /// Socket path.
        path: PathBuf,
    },
    /// Nothing listens on the socket path (no file, or a stale one).
    #[error("no node listening on {}", path.display())]
    NotRunning {
        /// Socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason (for example permission denied).
    #[error("cannot connect to control socket {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The node did not answer in time.
    #[error("no answer on {} within {} ms", path.display(), after.as_millis())]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The node closed the connection without a complete answer.
    #[error("node closed the connection on {} without answering", path.display())]
    Closed {
        /// Socket path.
        path: PathBuf,
    },
    /// A message could not be encoded or decoded.
    #[error("malformed control message: {message}")]
    Decode {
        /// What was wrong.
        message: String,
    },
}

/// A running control socket: an accept thread serving a [`ControlHandler`].
///
/// Dropping it stops the accept thread and the connection threads (within a fraction of a
/// second; a handler call in progress is waited for) and removes the socket file, if the file
/// at the path is still the one this server created.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file, to remove only our own.
    identity: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ControlServer {
    /// Creates the socket at `path` and starts serving `handler` on a thread of its own.
    ///
    /// Creates the parent directory (mode 0755) if missing. An existing socket file that nobody
    /// answers on is removed first; one that answers gives [`ControlError::InUse`]; a file that
    /// is not a socket gives [`ControlError::NotSocket`].
    pub fn start(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
    ) -> Result<ControlServer, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if path.file_name().is_none() {
            return Err(bind_err(io::Error::new(
                ErrorKind::InvalidInput,
                "the path has no file name",
            )));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&parent)
                .map_err(bind_err)?;
        }
        let listener = bind_private(path, &parent)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("interlink-control".into())
                .spawn(move || accept_loop(listener, handler, stop, path))
                .map_err(bind_err)?
        };
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            identity,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ours = match (std::fs::symlink_metadata(&self.path), self.identity) {
            (Ok(m), Some(id)) => (m.dev(), m.ino()) == id,
            _ => false,
        };
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove control socket");
            }
        }
        tracing::debug!(path = %self.path.display(), "control socket closed");
    }
}

/// Binds a listener reachable at `path` whose file has mode 0600 from the start.
///
/// The socket is bound under a temporary name in the same directory, restricted to its owner,
/// then hard-linked to `path` (which fails if `path` appeared meanwhile: no live socket is ever
/// replaced), and the temporary name removed. If the temporary name cannot be bound (for
/// example it would exceed the socket path limit), binds `path` directly and restricts it
/// right after.
fn bind_private(path: &Path, parent: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let private = std::fs::Permissions::from_mode(0o600);
    let tmp = parent.join(format!(
        ".il{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = match UnixListener::bind(&tmp) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(tmp = %tmp.display(), error = %e, "cannot bind temporary name; binding directly");
            clear_stale(path)?;
            let l = UnixListener::bind(path).map_err(|e| match e.kind() {
                ErrorKind::AddrInUse => ControlError::InUse {
                    path: path.to_path_buf(),
                },
                _ => bind_err(e),
            })?;
            std::fs::set_permissions(path, private).map_err(bind_err)?;
            return Ok(l);
        }
    };
    let result = (|| {
        std::fs::set_permissions(&tmp, private.clone()).map_err(bind_err)?;
        // Two rounds: the second after removing a stale file found by the first.
        for _ in 0..2 {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => clear_stale(path)?,
                Err(e) => return Err(bind_err(e)),
            }
        }
        Err(ControlError::InUse {
            path: path.to_path_buf(),
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map(|()| listener)
}

/// Removes a socket file nobody answers on; errors if something answers or it is no socket.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::Bind {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotSocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "removing stale control socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ControlError::Bind {
                    path: path.to_path_buf(),
                    source: e,
                }),
            }
        }
        Err(e) => Err(ControlError::Bind {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                conns.retain(|c| !c.is_finished());
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    tracing::warn!(path = %path.display(), "too many control connections; refusing one");
                    refuse(stream, "too many control connections");
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (handler, stop, active_c) = (handler.clone(), stop.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("interlink-control-conn".into())
                    .spawn(move || {
                        serve(stream, &*handler, &stop);
                        active_c.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(e) => {
                        active.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!(error = %e, "cannot start a control connection thread");
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "control socket accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn refuse(stream: UnixStream, message: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut stream = stream;
    let _ = write_response(&mut stream, &ControlResponse::error(message));
}

fn write_response(stream: &mut UnixStream, response: &ControlResponse) -> io::Result<()> {
    let mut line = serde_json::to_string(response).unwrap_or_else(|e| {
        serde_json::to_string(&ControlResponse::error(format!(
            "cannot encode the response: {e}"
        )))
        .unwrap_or_else(|_| r#"{"result":"error","message":"cannot encode the response"}"#.into())
    });
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

/// Decodes one request line (without its newline; a trailing carriage return is allowed), as
/// the server does with every line a client sends. Anything that is not a request is a
/// [`ControlError::Decode`].
pub fn decode_request(line: &[u8]) -> Result<ControlRequest, ControlError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| ControlError::Decode {
        message: format!("request: {e}"),
    })
}

/// Answers one request line.
fn answer(line: &[u8], handler: &dyn ControlHandler) -> ControlResponse {
    let request = match decode_request(line) {
        Ok(r) => r,
        Err(e) => return ControlResponse::error(e.to_string()),
    };
    match catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("control handler panicked");
            ControlResponse::error("internal error: the handler panicked")
        }
    }
}

/// Serves one connection until the peer closes it, it idles too long, misbehaves, or the
/// server stops.
fn serve(mut stream: UnixStream, handler: &dyn ControlHandler, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(READ_SLICE)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut chunk = [0u8; 8192];
    let mut last_request = Instant::now();
    loop {
        // Answer every complete line in the buffer.
        while let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + pos;
            if end > MAX_LINE {
                break;
            }
            let response = answer(&buf[..end], handler);
            if write_response(&mut stream, &response).is_err() {
                return;
            }
            buf.drain(..=end);
            scanned = 0;
            last_request = Instant::now();
        }
        scanned = buf.len();
        if buf.len() > MAX_LINE {
            let _ = write_response(
                &mut stream,
                &ControlResponse::error(format!(
                    "request line longer than {MAX_LINE} bytes; closing the connection"
                )),
            );
            return;
        }
        if stop.load(Ordering::SeqCst) || last_request.elapsed() > IDLE_TIMEOUT {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// A client connection to a node's control socket; several requests may be sent on it.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl ControlClient {
    /// Connects to the socket at `path`; `timeout` bounds each later [`call`](Self::call).
    pub fn connect(path: &Path, timeout: Duration) -> Result<ControlClient, ControlError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => ControlError::NotRunning {
                path: path.to_path_buf(),
            },
            _ => ControlError::Connect {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        Ok(ControlClient {
            path: path.to_path_buf(),
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let deadline = Instant::now() + self.timeout;
        let mut line = serde_json::to_string(req).map_err(|e| ControlError::Decode {
            message: e.to_string(),
        })?;
        line.push('\n');
        self.set_timeouts(deadline)?;
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| self.io_error(e))?;
        let mut chunk = [0u8; 8192];
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let parsed = serde_json::from_slice::<ControlResponse>(&self.buf[..end]);
                self.buf.drain(..=end);
                return parsed.map_err(|e| ControlError::Decode {
                    message: format!("response: {e}"),
                });
            }
            scanned = self.buf.len();
            if self.buf.len() > MAX_RESPONSE {
                return Err(ControlError::Decode {
                    message: format!("response longer than {MAX_RESPONSE} bytes"),
                });
            }
            self.set_timeouts(deadline)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ControlError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn set_timeouts(&self, deadline: Instant) -> Result<(), ControlError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ControlError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
            });
        }
        self.stream
            .set_read_timeout(Some(left))
            .and_then(|()| self.stream.set_write_timeout(Some(left)))
            .map_err(|e| self.io_error(e))
    }

    fn io_error(&self, e: io::Error) -> ControlError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ControlError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
            },
            _ => ControlError::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }
}

/// Sends one request to the node listening on `path` and returns its response; `timeout`
/// bounds the whole exchange after connecting.
pub fn request(
    path: &Path,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, ControlError> {
    ControlClient::connect(path, timeout)?.call(req)
}

// ---------------------------------------------------------------------------------------------
// Human rendering
// ---------------------------------------------------------------------------------------------

/// Renders a status snapshot as text for operators: a header line, then a LINKS table and a
/// CLIENTS table with aligned columns, human units and "-" for absent values.
pub fn render_status(status: &NodeStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  partner {}  cluster {}  incarnation {}  partner incarnation {}  uptime {}",
        status.node_id,
        status.partner_id,
        status.cluster_id,
        status.incarnation,
        opt(status.partner_incarnation),
        human_duration(status.uptime_ms),
    );
    out.push('\n');
    let _ = writeln!(out, "LINKS");
    if status.links.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&links_table(&status.links));
        for l in &status.links {
            if let Some(e) = &l.last_error {
                let _ = writeln!(out, "  link {} last error: {}", l.id, one_line(e));
            }
        }
    }
    out.push('\n');
    let _ = writeln!(out, "CLIENTS");
    if status.clients.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&clients_table(&status.clients));
    }
    out
}

fn links_table(links: &[LinkStatus]) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("STATE", Align::Left),
        ("SINCE", Align::Right),
        ("DEVICE", Align::Left),
        ("PROVIDER", Align::Left),
        ("LOCAL -> PEER", Align::Left),
        ("CLIENTS", Align::Left),
        ("RATE", Align::Right),
        ("OPS", Align::Right),
        ("BYTES", Align::Right),
        ("ERRORS", Align::Right),
        ("FAILURES", Align::Right),
        ("RECONNECTS", Align::Right),
        ("HB RTT P50/P99 µs", Align::Right),
        ("MISSES", Align::Right),
    ]);
    for l in links {
        let c = &l.counters;
        t.row(vec![
            l.id.to_string(),
            serde_name(&l.state),
            human_duration(l.since_ms),
            or_dash(&l.device),
            or_dash(&l.provider),
            format!("{} -> {}", or_dash(&l.local), or_dash(&l.peer)),
            if l.clients.is_empty() {
                "-".into()
            } else {
                l.clients.join(",")
            },
            human_rate(l.rate_bps),
            c.ops.to_string(),
            human_bytes(c.bytes),
            c.errors.to_string(),
            c.failures.to_string(),
            c.reconnects.to_string(),
            latency(&c.heartbeat_rtt),
            c.heartbeat_misses.to_string(),
        ]);
    }
    t.render()
}

fn clients_table(clients: &[ClientStatus]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("CLASS", Align::Left),
        ("STATE", Align::Left),
        ("LINK", Align::Right),
        ("HOME", Align::Right),
        ("GEN", Align::Right),
        ("QPS", Align::Right),
        ("REGIONS", Align::Right),
        ("RATE", Align::Right),
        ("OPS", Align::Right),
        ("BYTES", Align::Right),
        ("ERRORS", Align::Right),
        ("FAILOVERS", Align::Right),
        ("MIGRATIONS", Align::Right),
        ("RECONNECTS", Align::Right),
        ("LATENCY P50/P99 µs", Align::Right),
    ]);
    for cl in clients {
        let c = &cl.counters;
        t.row(vec![
            one_line(&cl.name),
            cl.class.to_string(),
            serde_name(&cl.state),
            opt(cl.link),
            opt(cl.home),
            cl.generation.to_string(),
            cl.qps.to_string(),
            cl.regions.to_string(),
            human_rate(cl.rate_bps),
            c.ops.to_string(),
            human_bytes(c.bytes),
            c.errors.to_string(),
            c.failovers.to_string(),
            c.migrations.to_string(),
            c.reconnects.to_string(),
            latency(&c.latency),
        ]);
    }
    let mut out = t.render();
    for cl in clients {
        if let Some(m) = &cl.refused {
            out.push_str(&format!(
                "{} refused: {}\n",
                one_line(&cl.name),
                one_line(&m.to_string())
            ));
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A text table whose columns are as wide as their widest cell.
struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&str, Align)]) -> Table {
        Table {
            headers: headers.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::from(" ");
            for ((cell, w), (_, align)) in cells.iter().zip(&widths).zip(&self.headers) {
                let pad = " ".repeat(w.saturating_sub(width(cell)));
                line.push(' ');
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
                line.push(' ');
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The serde name of a unit enum variant (`"ready"`), as the JSON form shows it.
fn serde_name<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}").to_lowercase(),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        one_line(s)
    }
}

/// Control characters (newlines, escapes) replaced so one value cannot break the layout.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn latency(l: &LatencySummary) -> String {
    if l.count == 0 || !l.p50_us.is_finite() || !l.p99_us.is_finite() {
        "-".into()
    } else {
        format!("{:.1}/{:.1}", l.p50_us, l.p99_us)
    }
}

const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A rate in bytes per second: `0 B/s`, `1.5 MiB/s`; "-" when not a finite, non-negative number.
pub fn human_rate(bps: f64) -> String {
    if !bps.is_finite() || bps < 0.0 {
        return "-".into();
    }
    if bps < 1024.0 {
        return format!("{bps:.0} B/s");
    }
    let mut v = bps / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}/s", UNITS[unit])
}

/// A duration in milliseconds for humans: `850ms`, `12.3s`, `5m03s`, `2h05m`, `3d04h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_rate(0.0), "0 B/s");
        assert_eq!(human_rate(2.5 * 1024.0 * 1024.0), "2.5 MiB/s");
        assert_eq!(human_rate(f64::NAN), "-");
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(303_000), "5m03s");
        assert_eq!(human_duration(7_500_000), "2h05m");
        assert_eq!(human_duration(273_600_000), "3d04h");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[("A", Align::Left), ("µs", Align::Right)]);
        t.row(vec!["long value".into(), "1".into()]);
        t.row(vec!["x".into(), "12345".into()]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "  A              µs");
        assert_eq!(lines[1], "  long value      1");
        assert_eq!(lines[2], "  x           12345");
    }

    #[test]
    fn request_wire_form() {
        let s = serde_json::to_string(&ControlRequest::Status).unwrap();
        assert_eq!(s, r#"{"cmd":"status"}"#);
        let r: ControlRequest =
            serde_json::from_str(r#"{"cmd":"client","name":"mirror","command":{"x":1}}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::Client {
                name: "mirror".into(),
                command: serde_json::json!({"x": 1})
            }
        );
        let s = serde_json::to_string(&ControlResponse::error("no")).unwrap();
        assert_eq!(s, r#"{"result":"error","message":"no"}"#);
    }
}
