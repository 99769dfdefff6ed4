//! The TCP transport of the soft provider: one listener per device; packets to a peer device
//! travel over this device's own outgoing connection to it, framed as a u32 big-endian length
//! followed by the packet. A per-peer writer thread owns each outgoing connection, so senders
//! never block; when the connection cannot be made or breaks, queued packets are dropped (the
//! reliable-connection protocol above retransmits, as RoCE does over a lossy link).
//!
//! Inbound, one thread serves the listener and every accepted connection with `poll`: at most
//! [`MAX_INBOUND`] connections per device (a new one beyond evicts the one idle the longest),
//! each closed after [`IDLE`] without a byte; a frame's buffer grows with the bytes that
//! arrived, never to the length a header announces; every closed connection's descriptor is
//! released at once. The real partner's connection carries traffic every heartbeat, so a
//! flood of connections, idle holders or huge announced frames neither starves it nor grows
//! the process's descriptors, threads or memory beyond those bounds.

use super::packet_buf::{Inbox, PacketBuf};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest frame accepted (a 1 MiB message plus headers, with room to spare).
pub const MAX_FRAME: usize = 16 << 20;
/// Packets queued towards one peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Inbound connections served at once per device.
pub const MAX_INBOUND: usize = 32;
/// An inbound connection that delivered no byte for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 << 10;
/// Frames up to this long get their whole buffer when their header arrives (the pooled
/// packet buffers go up to it; no reallocation on the data path); longer ones grow with the
/// bytes that arrive.
const PREALLOC: usize = (1 << 20) + (64 << 10);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct TcpTransport {
    local: SocketAddr,
    peers: Mutex<HashMap<SocketAddr, Sender<PacketBuf>>>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    stats: Arc<InboundStats>,
    netns: Option<Arc<std::fs::File>>,
}

/// Counters of a device's inbound connections.
#[derive(Debug, Default)]
pub(crate) struct InboundStats {
    /// Connections open now.
    pub(crate) open: std::sync::atomic::AtomicUsize,
    /// Connections accepted in total.
    pub(crate) accepted: std::sync::atomic::AtomicU64,
    /// Connections closed to make room ([`MAX_INBOUND`]), idle ([`IDLE`]), or for an
    /// oversized frame.
    pub(crate) evicted: std::sync::atomic::AtomicU64,
    pub(crate) idle_closed: std::sync::atomic::AtomicU64,
    pub(crate) oversized: std::sync::atomic::AtomicU64,
}

/// The network namespace of the calling thread, so threads started later (writers, the link
/// monitor) join the namespace the device was opened in.
pub(crate) fn current_netns() -> Option<Arc<std::fs::File>> {
    std::fs::File::open("/proc/thread-self/ns/net")
        .ok()
        .map(Arc::new)
}

/// Moves the calling thread into `ns` (no-op when `None`).
pub(crate) fn enter_netns(ns: Option<&std::fs::File>) {
    if let Some(ns) = ns {
        if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET) {
            tracing::warn!(error = %e, "cannot enter the device's network namespace");
        }
    }
}

impl TcpTransport {
    /// Binds the listener and starts accepting; inbound packets go to `inbox`.
    pub(crate) fn bind(addr: SocketAddr, inbox: Arc<Inbox>) -> std::io::Result<TcpTransport> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(InboundStats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let server = std::thread::Builder::new()
            .name(format!("interlink-soft-rx-{}", local.port()))
            .spawn(move || {
                crate::fabric::prime_thread_parking();
                serve(&listener, &inbox, &s, &st)
            })?;
        Ok(TcpTransport {
            local,
            peers: Mutex::new(HashMap::new()),
            stop,
            server: Some(server),
            stats,
            netns: current_netns(),
        })
    }

    /// The inbound connections' counters.
    pub(crate) fn inbound(&self) -> &InboundStats {
        &self.stats
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues a packet for `to`; drops it if the peer's queue is full.
    pub(crate) fn send(&self, to: SocketAddr, pkt: PacketBuf) {
        let mut peers = self.peers.lock();
        let tx = peers.entry(to).or_insert_with(|| {
            let (tx, rx) = bounded(QUEUE);
            let stop = self.stop.clone();
            let ns = self.netns.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("interlink-soft-tx-{to}"))
                .spawn(move || {
                    enter_netns(ns.as_deref());
                    crate::fabric::prime_thread_parking();
                    writer_loop(to, &rx, &stop)
                });
            if let Err(e) = spawned {
                tracing::warn!(peer = %to, error = %e, "cannot start soft transport writer");
            }
            tx
        });
        match tx.try_send(pkt) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::trace!(peer = %to, "soft transport queue full, packet dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                peers.remove(&to);
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.peers.lock().clear();
        // The server closes every inbound connection within one poll period.
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

/// One inbound connection: the frame being assembled and when a byte last came.
struct Inbound {
    stream: TcpStream,
    peer: SocketAddr,
    header: [u8; 4],
    /// Bytes of the header read so far (4: reading the body).
    have: usize,
    /// The announced body length, once the header is whole.
    want: usize,
    body: Option<PacketBuf>,
    last: Instant,
}

impl Inbound {
    fn new(stream: TcpStream, peer: SocketAddr) -> Inbound {
        Inbound {
            stream,
            peer,
            header: [0; 4],
            have: 0,
            want: 0,
            body: None,
            last: Instant::now(),
        }
    }

    /// Takes `data` into the frame being assembled; whole frames go to `inbox`. Err: the
    /// connection must close (an announced frame beyond [`MAX_FRAME`]).
    fn take(&mut self, mut data: &[u8], inbox: &Inbox) -> Result<(), usize> {
        while !data.is_empty() {
            if self.have < 4 {
                let n = (4 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 4 {
                    self.want = u32::from_be_bytes(self.header) as usize;
                    if self.want > MAX_FRAME {
                        return Err(self.want);
                    }
                    // Up to the largest packet the provider sends, room for the whole frame
                    // (reserved, not touched); beyond it, sized by what arrives, never by
                    // what the header announces.
                    let cap = if self.want <= PREALLOC {
                        self.want
                    } else {
                        READ_CHUNK
                    };
                    self.body = Some(PacketBuf::with_capacity(cap));
                }
            }
            if self.have == 4 {
                let body = self.body.get_or_insert_with(|| PacketBuf::with_capacity(0));
                let n = (self.want - body.len()).min(data.len());
                body.vec_mut().extend_from_slice(&data[..n]);
                data = &data[n..];
                if body.len() == self.want {
                    if let Some(pkt) = self.body.take() {
                        inbox.push(pkt);
                    }
                    self.have = 0;
                }
            }
        }
        Ok(())
    }
}

/// The inbound side of a device (see the module docs): accepts and reads every connection on
/// this thread until `stop`.
fn serve(listener: &TcpListener, inbox: &Inbox, stop: &AtomicBool, stats: &InboundStats) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    // Nothing here allocates per packet: the poll set is on the stack, the flags reuse their
    // buffers.
    let mut conns: Vec<Inbound> = Vec::with_capacity(MAX_INBOUND);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut ready: Vec<bool> = Vec::with_capacity(MAX_INBOUND + 1);
    let mut close: Vec<bool> = Vec::with_capacity(MAX_INBOUND);
    let set_open = |n: usize| stats.open.store(n, Ordering::Relaxed);
    while !stop.load(Ordering::SeqCst) {
        {
            let mut fds: [PollFd; MAX_INBOUND + 1] =
                std::array::from_fn(|_| PollFd::new(listener.as_fd(), PollFlags::empty()));
            fds[0] = PollFd::new(listener.as_fd(), PollFlags::POLLIN);
            for (k, c) in conns.iter().enumerate() {
                fds[k + 1] = PollFd::new(c.stream.as_fd(), PollFlags::POLLIN);
            }
            let fds = &mut fds[..conns.len() + 1];
            // 50 ms at most, to notice `stop` and idle connections.
            if let Err(e) = poll(fds, PollTimeout::from(50u16)) {
                if e != nix::errno::Errno::EINTR {
                    tracing::warn!(error = %e, "poll on the soft transport");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            ready.clear();
            ready.extend(
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty())),
            );
        }
        // Reads first (the indices match the poll set), then closes, then accepts.
        close.clear();
        close.resize(conns.len(), false);
        for (k, c) in conns.iter_mut().enumerate() {
            if !ready[k + 1] {
                continue;
            }
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        close[k] = true;
                        break;
                    }
                    Ok(n) => {
                        c.last = Instant::now();
                        if let Err(len) = c.take(&chunk[..n], inbox) {
                            tracing::warn!(peer = %c.peer, len, "oversized soft transport frame; closing");
                            stats.oversized.fetch_add(1, Ordering::Relaxed);
                            close[k] = true;
                            break;
                        }
                        if n < chunk.len() {
                            // Drained (poll reports the connection again if more came): no
                            // extra read that only returns WouldBlock.
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        close[k] = true;
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        for (k, c) in conns.iter().enumerate() {
            if !close[k] && now.duration_since(c.last) >= IDLE {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                close[k] = true;
            }
        }
        let mut k = 0;
        conns.retain(|_| {
            k += 1;
            !close[k - 1]
        });
        if ready[0] {
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        if conns.len() >= MAX_INBOUND {
                            // Room for the newcomer: the connection idle the longest goes.
                            if let Some(oldest) = (0..conns.len()).min_by_key(|&i| conns[i].last) {
                                let gone = conns.swap_remove(oldest);
                                let _ = gone.stream.shutdown(Shutdown::Both);
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        conns.push(Inbound::new(stream, peer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "soft transport accept failed");
                        break;
                    }
                }
            }
        }
        set_open(conns.len());
    }
}

fn writer_loop(to: SocketAddr, rx: &Receiver<PacketBuf>, stop: &AtomicBool) {
    let mut conn: Option<std::io::BufWriter<TcpStream>> = None;
    while let Ok(pkt) = rx.recv() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() {
            match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    conn = Some(std::io::BufWriter::with_capacity(256 << 10, s));
                }
                Err(e) => {
                    tracing::debug!(peer = %to, error = %e, "soft transport connect failed; packet dropped");
                    continue;
                }
            }
        }
        let Some(w) = conn.as_mut() else { continue };
        let mut ok =
            w.write_all(&(pkt.len() as u32).to_be_bytes()).is_ok() && w.write_all(&pkt).is_ok();
        // Batch whatever else is already queued, then flush once.
        while ok {
            match rx.try_recv() {
                Ok(more) => {
                    ok = w.write_all(&(more.len() as u32).to_be_bytes()).is_ok()
                        && w.write_all(&more).is_ok();
                }
                Err(_) => break,
            }
        }
        ok = ok && w.flush().is_ok();
        if !ok {
            tracing::debug!(peer = %to, "soft transport connection broke; reconnecting on next packet");
            if let Some(w) = conn.take() {
                if let Ok(s) = w.into_inner() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}
