//! The TCP transport of the soft provider: one listener per device; packets to a peer device
//! travel over this device's own outgoing connection to it, framed as a u32 big-endian length
//! followed by the packet. A per-peer writer thread owns each outgoing connection, so senders
//! never block; when the connection cannot be made or breaks, queued packets are dropped (the
//! reliable-connection protocol above retransmits, as RoCE does over a lossy link).

use super::packet_buf::{Inbox, PacketBuf};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest frame accepted (a 1 MiB message plus headers, with room to spare).
pub const MAX_FRAME: usize = 16 << 20;
/// Packets queued towards one peer before new ones are dropped.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct TcpTransport {
    local: SocketAddr,
    peers: Mutex<HashMap<SocketAddr, Sender<PacketBuf>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    netns: Option<Arc<std::fs::File>>,
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
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::Builder::new()
            .name(format!("interlink-soft-accept-{}", local.port()))
            .spawn(move || accept_loop(&listener, &inbox, &s, &a))?;
        Ok(TcpTransport {
            local,
            peers: Mutex::new(HashMap::new()),
            stop,
            accepted,
            netns: current_netns(),
        })
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
        for s in self.accepted.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    inbox: &Arc<Inbox>,
    stop: &AtomicBool,
    accepted: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                if let Ok(clone) = stream.try_clone() {
                    accepted.lock().push(clone);
                }
                let inbox = inbox.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("interlink-soft-rx-{peer}"))
                    .spawn(move || {
                        crate::fabric::prime_thread_parking();
                        reader_loop(stream, peer, &inbox)
                    });
                if let Err(e) = spawned {
                    tracing::warn!(peer = %peer, error = %e, "cannot start soft transport reader");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "soft transport accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn reader_loop(stream: TcpStream, peer: SocketAddr, inbox: &Inbox) {
    let mut r = BufReader::with_capacity(256 << 10, stream);
    let mut len = [0u8; 4];
    loop {
        if r.read_exact(&mut len).is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            tracing::warn!(peer = %peer, len = n, "oversized soft transport frame; closing");
            return;
        }
        let mut pkt = PacketBuf::with_capacity(n);
        pkt.vec_mut().resize(n, 0);
        if r.read_exact(pkt.vec_mut()).is_err() {
            return;
        }
        inbox.push(pkt);
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
