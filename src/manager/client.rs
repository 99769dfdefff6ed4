//! What a client of the manager holds: its handle, the events it receives, and the
//! connection (queue pairs, regions, the partner's region descriptors) it uses while ready.

use crate::fabric::{
    CompletionQueue, MemoryRegion, QueuePair, RecvRequest, Result as FabricResult, SendRequest,
};
use crate::manager::error::{ManagerError, Result};
use crate::manager::types::{
    ClientCounters, LatencySummary, LinkId, RegionInfo, RegionSpec, TermMismatch,
};
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a client must stop posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuspendReason {
    /// Its link failed (port down, heartbeat loss, QP error or lost bootstrap); it will be
    /// re-established on another healthy link or on this one when it recovers.
    LinkDown,
    /// A planned move to another link (back home after recovery, or load balancing).
    Moving {
        /// The link it is moving to (None at the node that follows the partner's decision).
        to: Option<LinkId>,
    },
    /// The partner restarted (new incarnation): everything is re-established.
    PartnerRestarted,
    /// The partner's client of the same name closed.
    PartnerReleased,
    /// The manager is shutting down.
    Shutdown,
}

/// Events delivered to a client, in order.
#[derive(Debug)]
pub enum ClientEvent {
    /// The partner is ready: traffic may flow on this connection. Sent on first connect,
    /// after every re-establishment and after every move.
    Ready(Connection),
    /// A live change (queue pair or region added or released, by either side) took effect; the
    /// connection is the same link, with the new set of queue pairs and regions.
    Updated(Connection),
    /// Stop posting: the queue pairs and regions of the last connection are being torn down
    /// (the partner's old remote keys stop working). A `Ready` follows when it is back.
    Suspended {
        /// The link the client was on.
        link: LinkId,
        /// Why.
        reason: SuspendReason,
    },
    /// The partner's client states different terms ([`ClientSpec::term`](crate::manager::ClientSpec::term)):
    /// no `Ready` follows until one side registers again with matching terms. Sent once per
    /// disagreement.
    Refused(TermMismatch),
}

/// Counters a client's operations update (shared with the manager).
#[derive(Debug)]
pub(crate) struct ClientCells {
    pub(crate) ops: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) latency: Mutex<Histogram<u64>>,
}

impl ClientCells {
    pub(crate) fn new() -> ClientCells {
        ClientCells {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }

    pub(crate) fn count(&self, ops: u64, bytes: u64) {
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, out: &mut ClientCounters) {
        out.ops = self.ops.load(Ordering::Relaxed);
        out.bytes = self.bytes.load(Ordering::Relaxed);
        out.errors = self.errors.load(Ordering::Relaxed);
        out.latency = summarize(&self.latency.lock());
    }
}

/// A latency histogram in microseconds (1 µs .. 60 s, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: low >= 1, high >= 2 * low, sigfig <= 5.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant histogram bounds")
}

/// Summary of a microsecond histogram.
pub(crate) fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        max_us: h.max() as f64,
    }
}

pub(crate) fn record_us(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 60_000_000);
    let _ = h.record(us);
}

/// One of a client's queue pairs, with its completion queues. Posts through it are counted
/// in the client's counters (ops and bytes), which drive adaptive load balancing.
#[derive(Clone)]
pub struct ClientQp {
    index: u16,
    qp: Arc<QueuePair>,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    cells: Arc<ClientCells>,
}

impl std::fmt::Debug for ClientQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientQp")
            .field("index", &self.index)
            .field("qpn", &self.qp.qpn())
            .finish()
    }
}

impl ClientQp {
    pub(crate) fn new(
        index: u16,
        qp: Arc<QueuePair>,
        send_cq: CompletionQueue,
        recv_cq: CompletionQueue,
        cells: Arc<ClientCells>,
    ) -> ClientQp {
        ClientQp {
            index,
            qp,
            send_cq,
            recv_cq,
            cells,
        }
    }
    /// Index within the client (the partner's queue pair of the same index is its peer).
    pub fn index(&self) -> u16 {
        self.index
    }
    /// The queue pair itself (posting directly bypasses the client's counters).
    pub fn queue_pair(&self) -> &QueuePair {
        &self.qp
    }
    /// Completion queue of the send queue.
    pub fn send_cq(&self) -> &CompletionQueue {
        &self.send_cq
    }
    /// Completion queue of the receive queue.
    pub fn recv_cq(&self) -> &CompletionQueue {
        &self.recv_cq
    }
    /// Posts one send-queue request, counting it.
    pub fn post_send(&self, req: SendRequest) -> FabricResult<()> {
        let bytes = req.local.len() as u64;
        self.qp.post_send(req)?;
        self.cells.count(1, bytes);
        Ok(())
    }
    /// Posts several send-queue requests (all or none), counting them.
    pub fn post_send_batch(&self, reqs: Vec<SendRequest>) -> FabricResult<()> {
        let ops = reqs.len() as u64;
        let bytes = reqs.iter().map(|r| r.local.len() as u64).sum();
        self.qp.post_send_batch(reqs)?;
        self.cells.count(ops, bytes);
        Ok(())
    }
    /// Posts every request in `reqs` (all or none), counting them, and leaves `reqs` empty
    /// with its capacity, so a caller that reuses the vector does not allocate per batch.
    pub fn post_send_all(&self, reqs: &mut Vec<SendRequest>) -> FabricResult<()> {
        let ops = reqs.len() as u64;
        let bytes = reqs.iter().map(|r| r.local.len() as u64).sum();
        let result = self.qp.post_send_batch(reqs.drain(..));
        result?;
        self.cells.count(ops, bytes);
        Ok(())
    }
    /// Posts every receive in `reqs` and leaves `reqs` empty with its capacity.
    pub fn post_recv_all(&self, reqs: &mut Vec<RecvRequest>) -> FabricResult<()> {
        self.qp.post_recv_batch(reqs.drain(..))
    }
    /// Posts a receive.
    pub fn post_recv(&self, req: RecvRequest) -> FabricResult<()> {
        self.qp.post_recv(req)
    }
    /// Posts several receives.
    pub fn post_recv_batch(&self, reqs: Vec<RecvRequest>) -> FabricResult<()> {
        self.qp.post_recv_batch(reqs)
    }
}

/// A local region of a client on its current link.
#[derive(Clone, Debug)]
pub struct ClientRegion {
    /// Id within the client (stable across moves).
    pub id: u16,
    /// Purpose.
    pub purpose: String,
    /// The registered region (its contents are carried over when the client moves).
    pub region: MemoryRegion,
}

/// What a ready client uses: its queue pairs and regions on one link, and the partner's
/// region descriptors.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The link.
    pub link: LinkId,
    /// Attachment generation (changes with every re-establishment, move or live change).
    pub generation: u32,
    /// Queue pairs, by index.
    pub qps: Vec<ClientQp>,
    /// Local regions.
    pub regions: Vec<ClientRegion>,
    /// The partner client's regions.
    pub partner_regions: Vec<RegionInfo>,
    /// The partner manager's incarnation (its process run) these regions belong to: a
    /// partner region's contents live as long as that incarnation (0: not known).
    pub partner_incarnation: u64,
}

impl Connection {
    /// Queue pair by index.
    pub fn qp(&self, index: u16) -> Option<&ClientQp> {
        self.qps.iter().find(|q| q.index == index)
    }
    /// Local region by purpose.
    pub fn region(&self, purpose: &str) -> Option<&MemoryRegion> {
        self.regions
            .iter()
            .find(|r| r.purpose == purpose)
            .map(|r| &r.region)
    }
    /// The partner's region by purpose.
    pub fn partner_region(&self, purpose: &str) -> Option<&RegionInfo> {
        self.partner_regions.iter().find(|r| r.purpose == purpose)
    }
}

/// Requests a client sends to the manager.
#[derive(Debug)]
pub(crate) enum ClientRequest {
    AddQp {
        name: String,
    },
    AddRegion {
        name: String,
        spec: RegionSpec,
    },
    ReleaseQp {
        name: String,
        index: u16,
    },
    ReleaseRegion {
        name: String,
        purpose: String,
    },
    Close {
        name: String,
    },
    Failed {
        name: String,
        reason: String,
        /// The generation of the connection that failed (`None`: whichever is current).
        generation: Option<u32>,
    },
}

/// Waits until a client's event is queued or a wake-up arrives, without taking the event
/// ([`ClientHandle::event_wait`]). A client that follows its events from more than one thread
/// takes them with `events().try_recv()` under its own lock, so they are applied in the
/// order sent: an event taken before the lock could be applied after a later one that
/// another thread took meanwhile (a `Suspended` after the `Ready` that followed it leaves the
/// client suspended on a live connection).
pub struct EventWait<'a> {
    select: crossbeam_channel::Select<'a>,
    events: &'a Receiver<ClientEvent>,
    wake: &'a Receiver<()>,
    event: usize,
}

impl EventWait<'_> {
    /// Waits up to `timeout`: true when an event is queued (still queued), false on a
    /// wake-up (taken) with no event queued or when the time passed.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        match self.select.ready_timeout(timeout) {
            Ok(i) if i == self.event => true,
            Ok(_) => {
                while self.wake.try_recv().is_ok() {}
                !self.events.is_empty()
            }
            Err(_) => false,
        }
    }
}

impl std::fmt::Debug for EventWait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWait")
            .field("queued", &self.events.len())
            .finish()
    }
}

/// A registered client: its events and its requests to the manager. Dropping it closes the
/// client (its resources are torn down at both nodes).
pub struct ClientHandle {
    pub(crate) name: String,
    pub(crate) events: Receiver<ClientEvent>,
    pub(crate) requests: Sender<crate::manager::node::Command>,
    pub(crate) cells: Arc<ClientCells>,
    pub(crate) closed: bool,
    /// [`ClientSpec::wait_timeout`](crate::manager::ClientSpec::wait_timeout).
    pub(crate) wait_timeout: Duration,
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl ClientHandle {
    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The event receiver. A client that follows its events from several threads takes them
    /// under its own lock (`try_recv`) and waits with [`ClientHandle::event_wait`].
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }
    /// A waiter for this client's events and `wake` that takes no event (see [`EventWait`]).
    /// Made once per thread: waiting through it does not allocate.
    pub fn event_wait<'a>(&'a self, wake: &'a Receiver<()>) -> EventWait<'a> {
        let mut select = crossbeam_channel::Select::new();
        let event = select.recv(&self.events);
        select.recv(wake);
        EventWait {
            select,
            events: &self.events,
            wake,
            event,
        }
    }
    /// Waits for the next event, at most
    /// [`ClientSpec::wait_timeout`](crate::manager::ClientSpec::wait_timeout).
    pub fn next_event(&self) -> Result<ClientEvent> {
        self.next_event_timeout(self.wait_timeout)
    }
    /// Waits at most `timeout` for the next event: [`ManagerError::NoEvent`] when none came,
    /// [`ManagerError::Stopped`] when the manager is gone.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<ClientEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(ev) => Ok(ev),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(ManagerError::NoEvent {
                client: self.name.clone(),
                waited: timeout,
            }),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ManagerError::Stopped),
        }
    }
    /// Waits for a `Ready` event, at most
    /// [`ClientSpec::wait_timeout`](crate::manager::ClientSpec::wait_timeout) (see
    /// [`wait_ready_timeout`](Self::wait_ready_timeout)).
    pub fn wait_ready(&self) -> Result<Connection> {
        self.wait_ready_timeout(self.wait_timeout)
    }
    /// Waits up to `timeout` for a `Ready` event, skipping others; returns its connection.
    /// When none came, the error says why from the manager's view
    /// ([`ManagerError::NotReady`]: each link's state and last error, such as a partner
    /// refused for its cluster id or secret, and this client's state).
    pub fn wait_ready_timeout(&self, timeout: Duration) -> Result<Connection> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ClientEvent::Ready(c)) => return Ok(c),
                Ok(ClientEvent::Refused(mismatch)) => {
                    return Err(ManagerError::Refused {
                        client: self.name.clone(),
                        mismatch,
                    })
                }
                Ok(_) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Err(ManagerError::NotReady {
                        client: self.name.clone(),
                        waited: timeout,
                        why: self.why_not_ready(),
                    })
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(ManagerError::Stopped)
                }
            }
        }
    }

    /// The links' and this client's states and last errors, from a status snapshot.
    fn why_not_ready(&self) -> String {
        let Ok(status) = crate::manager::node::request_status(&self.requests) else {
            return "the manager has stopped (no status within 10 s)".into();
        };
        let mut parts: Vec<String> = status
            .links
            .iter()
            .map(|l| match &l.last_error {
                Some(e) => format!("link {} {:?} ({e})", l.id, l.state),
                None => format!("link {} {:?}", l.id, l.state),
            })
            .collect();
        match status.clients.iter().find(|c| c.name == self.name) {
            Some(c) => match &c.refused {
                Some(m) => parts.push(format!("client {:?} ({m})", c.state)),
                None => parts.push(format!("client {:?}", c.state)),
            },
            None => parts.push("client not registered".into()),
        }
        parts.join("; ")
    }
    fn send(&self, req: ClientRequest) -> Result<()> {
        self.requests
            .send(crate::manager::node::Command::Client(req))
            .map_err(|_| ManagerError::Stopped)
    }
    /// Opens one more queue pair (same capacity as the others); the partner creates its
    /// counterpart. An `Updated` event follows.
    pub fn add_qp(&self) -> Result<()> {
        self.send(ClientRequest::AddQp {
            name: self.name.clone(),
        })
    }
    /// Registers one more region; the partner learns its descriptor. An `Updated` event
    /// follows (at both nodes).
    pub fn add_region(&self, spec: RegionSpec) -> Result<()> {
        // Refused here, by the call: remote READ only with a reason (`ReadGrant`).
        spec.check_rights()
            .map_err(|what| ManagerError::ClientRequest {
                name: self.name.clone(),
                what,
            })?;
        self.send(ClientRequest::AddRegion {
            name: self.name.clone(),
            spec,
        })
    }
    /// Releases a queue pair (and the partner's counterpart).
    pub fn release_qp(&self, index: u16) -> Result<()> {
        self.send(ClientRequest::ReleaseQp {
            name: self.name.clone(),
            index,
        })
    }
    /// Releases a region (its remote key stops working).
    pub fn release_region(&self, purpose: &str) -> Result<()> {
        self.send(ClientRequest::ReleaseRegion {
            name: self.name.clone(),
            purpose: purpose.to_string(),
        })
    }
    /// Records the latency of one client operation (reported in status).
    pub fn record_latency(&self, d: Duration) {
        record_us(&mut self.cells.latency.lock(), d);
    }
    /// Records a failed operation.
    pub fn record_error(&self) {
        self.cells.errors.fetch_add(1, Ordering::Relaxed);
    }
    /// Reports that the client's connection failed (a failed completion, a queue pair in
    /// the error state): the manager tears the client down at both nodes and re-establishes
    /// it; `Suspended` and then `Ready` follow.
    pub fn report_failure(&self, reason: &str) {
        let _ = self.send(ClientRequest::Failed {
            name: self.name.clone(),
            reason: reason.to_string(),
            generation: None,
        });
    }
    /// Reports that the connection of generation `generation` ([`Connection::generation`])
    /// failed. The manager ignores the report when the client has moved on to another
    /// connection meanwhile (the failure of an old queue pair, seen late, must not tear down
    /// the new one).
    pub fn report_failure_of(&self, generation: u32, reason: &str) {
        let _ = self.send(ClientRequest::Failed {
            name: self.name.clone(),
            reason: reason.to_string(),
            generation: Some(generation),
        });
    }
    /// Closes the client now (the same as dropping the handle).
    pub fn close(mut self) {
        self.do_close();
    }
    fn do_close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.send(ClientRequest::Close {
                name: self.name.clone(),
            });
        }
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.do_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (ClientHandle, Sender<ClientEvent>) {
        let (tx, events) = crossbeam_channel::unbounded();
        let (requests, _) = crossbeam_channel::unbounded();
        let handle = ClientHandle {
            name: "c".into(),
            events,
            requests,
            cells: Arc::new(ClientCells::new()),
            closed: true,
            wait_timeout: Duration::from_secs(10),
        };
        (handle, tx)
    }

    fn suspended() -> ClientEvent {
        ClientEvent::Suspended {
            link: 0,
            reason: SuspendReason::LinkDown,
        }
    }

    #[test]
    fn waiting_for_an_event_leaves_it_queued_in_order() {
        let (h, tx) = handle();
        let (kick, wake) = crossbeam_channel::bounded(1);
        let mut waiter = h.event_wait(&wake);
        assert!(!waiter.wait(Duration::from_millis(1)));
        kick.send(()).unwrap();
        assert!(!waiter.wait(Duration::from_millis(1)));
        assert!(wake.is_empty(), "the wake-up was taken");
        tx.send(suspended()).unwrap();
        tx.send(suspended()).unwrap();
        kick.send(()).unwrap();
        assert!(waiter.wait(Duration::from_millis(1)));
        assert!(waiter.wait(Duration::from_millis(1)));
        assert_eq!(h.events().len(), 2, "nothing taken while waiting");
        assert!(wake.is_empty());
    }

    #[test]
    fn waits_for_an_event_end_at_their_deadline() {
        let (mut h, tx) = handle();
        h.wait_timeout = Duration::from_millis(20);
        match h.next_event() {
            Err(ManagerError::NoEvent { client, waited }) => {
                assert_eq!((client.as_str(), waited), ("c", Duration::from_millis(20)))
            }
            other => panic!("expected NoEvent, got {other:?}"),
        }
        tx.send(suspended()).unwrap();
        assert!(matches!(
            h.next_event_timeout(Duration::ZERO),
            Ok(ClientEvent::Suspended { .. })
        ));
        drop(tx);
        assert!(matches!(
            h.next_event_timeout(Duration::from_secs(10)),
            Err(ManagerError::Stopped)
        ));
    }
}
