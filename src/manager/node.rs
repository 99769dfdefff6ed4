//! The manager: a public handle and the event loop thread that owns all state.
//!
//! One thread runs the loop; it receives client requests, status queries and the I/O
//! threads' reports on one crossbeam channel, and wakes at least every few milliseconds to
//! poll heartbeats, device events and timers. Link sessions, heartbeats and placement are
//! all driven from here; the protocol logic lives in the sans-IO [`Session`] and
//! [`Planner`].

use crate::fabric::{ConnectOptions, PacketKey};
use crate::manager::client::{ClientCells, ClientEvent, ClientHandle, ClientRequest};
use crate::manager::config::NodeConfig;
use crate::manager::error::{ManagerError, Result};
use crate::manager::health::HEALTH_EXTENSION_LEN;
use crate::manager::link::{IoMsg, LinkFabric};
use crate::manager::partner_state::{PartnerObservation, StateCells};
use crate::manager::types::{ClientSpec, LinkId, NodeStatus};
use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) use crate::manager::runtime::Runtime;

/// Messages into the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Register {
        spec: ClientSpec,
        reply: Sender<Result<(Receiver<ClientEvent>, std::sync::Arc<ClientCells>)>>,
    },
    Client(ClientRequest),
    Status(Sender<NodeStatus>),
    /// The published state changed: publish now.
    PublishState,
    /// Read the partner's health block now on every ready link.
    ReadPartnerNow,
    /// Time `count` partner-state READs on a link.
    TimePartnerReads {
        link: LinkId,
        count: usize,
        reply: Sender<Result<Vec<Duration>>>,
    },
    Shutdown,
    Io(IoMsg),
}

/// A running cluster connection manager, shared behind an `Arc`: every client of this crate
/// takes `&Arc<Manager>` and keeps a clone, so the manager runs while any of them does;
/// dropping the last clone shuts it down (clients are told `Suspended { reason: Shutdown }`).
pub struct Manager {
    tx: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    config: NodeConfig,
    cells: Arc<StateCells>,
    incarnation: u64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node_id", &self.config.node_id)
            .finish()
    }
}

impl Manager {
    /// Validates the configuration, reads the secret, opens every link's device, binds the
    /// bootstrap listeners (at the node that listens: the higher id) and starts the event
    /// loop. What fails here is this call's error: an absent device or a verbs provider this
    /// build lacks ([`ManagerError::OpenDevice`]), a bootstrap port in use, for instance by a
    /// second instance of this node ([`ManagerError::Listen`]). The partner is reached in
    /// the background (links re-initialised with backoff whenever they fail), so this returns
    /// before it is; clients may register at once.
    pub fn start(config: NodeConfig) -> Result<Manager> {
        config.validate()?;
        let secret = config.read_secret()?;
        let (tx, rx) = unbounded();
        let ids: Vec<LinkId> = config.links.iter().map(|l| l.id).collect();
        let cells = Arc::new(StateCells::new(&ids));
        let mut rt = Runtime::new(config.clone(), secret, tx.clone(), cells.clone());
        rt.open_links()?;
        let incarnation = rt.incarnation();
        let thread = std::thread::Builder::new()
            .name(format!("il-manager-{}", config.node_id))
            .spawn(move || rt.run(rx))
            .map_err(|source| ManagerError::Spawn {
                name: "manager".into(),
                source,
            })?;
        Ok(Manager {
            tx,
            thread: Mutex::new(Some(thread)),
            config,
            cells,
            incarnation,
        })
    }

    /// The configuration the manager runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Registers a client. Its resources are created on the link placement picks, exchanged
    /// with the partner and connected; `ClientEvent::Ready` arrives when the partner's client
    /// of the same name is connected too.
    pub fn register(&self, spec: ClientSpec) -> Result<ClientHandle> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let name = spec.name.clone();
        let wait_timeout = spec.wait_timeout;
        self.tx
            .send(Command::Register { spec, reply })
            .map_err(|_| ManagerError::Stopped)?;
        let (events, cells) = rx.recv().map_err(|_| ManagerError::Stopped)??;
        Ok(ClientHandle {
            name,
            events,
            requests: self.tx.clone(),
            cells,
            closed: false,
            wait_timeout,
        })
    }

    /// A snapshot of links, clients, placement and counters.
    pub fn status(&self) -> Result<NodeStatus> {
        request_status(&self.tx)
    }

    /// This manager's incarnation: chosen at start, carried in the health block and the
    /// bootstrap exchange; a restarted node has a new one.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sets the state word and extension of this node's health block (the partner reads them
    /// by RDMA READ on every link's heartbeat). The block is republished at once on every
    /// ready link, with a checksum, so the partner's next READ sees the change. One client owns
    /// them: the giveback client (F4.1).
    pub fn publish_state(&self, state: u16, extension: [u8; HEALTH_EXTENSION_LEN]) {
        self.cells.set_local(state, extension);
        let _ = self.tx.send(Command::PublishState);
    }

    /// Per link, the partner's last health block the heartbeat believed, when it was read,
    /// and how many copies were believed and how many were torn. Does not wait for the loop.
    pub fn partner_state(&self) -> Vec<PartnerObservation> {
        self.cells.partner()
    }

    /// Asks for a READ of the partner's health block on every ready link now, beside the
    /// periodic one (a client waiting for the partner's next state, such as the giveback
    /// survivor waiting for UP, polls faster this way). Results show in
    /// [`Manager::partner_state`] within a loop tick of the READ's completion.
    pub fn read_partner_now(&self) {
        let _ = self.tx.send(Command::ReadPartnerNow);
    }

    /// Reads the partner's health block `count` times back to back on `link`'s heartbeat
    /// queue pair and returns each READ's round trip: the latency of a partner-state read
    /// (benchmarks; the loop does nothing else meanwhile, so keep `count` to a few thousand).
    pub fn time_partner_reads(&self, link: LinkId, count: usize) -> Result<Vec<Duration>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Command::TimePartnerReads { link, count, reply })
            .map_err(|_| ManagerError::Stopped)?;
        rx.recv().map_err(|_| ManagerError::Stopped)?
    }

    /// Waits until `pred` holds for the status, or `timeout` passes; returns the last status.
    pub fn wait_status(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&NodeStatus) -> bool,
    ) -> Result<(bool, NodeStatus)> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if pred(&s) {
                return Ok((true, s));
            }
            if Instant::now() >= deadline {
                return Ok((false, s));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the event loop: says goodbye to the partner on every link, tells clients
    /// `Suspended { reason: Shutdown }` and tears everything down.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("manager thread panicked");
            }
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Asks the event loop behind `tx` for a status snapshot (waits up to 10 s).
pub(crate) fn request_status(tx: &Sender<Command>) -> Result<NodeStatus> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(Command::Status(reply))
        .map_err(|_| ManagerError::Stopped)?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| ManagerError::Stopped)
}

/// The connect options used for every queue pair the manager connects: the soft provider
/// seals their packets under the link session's `packet_key`.
pub(crate) fn connect_options(packet_key: Option<PacketKey>) -> ConnectOptions {
    ConnectOptions {
        packet_key,
        ..ConnectOptions::default()
    }
}

/// Opens a link's device (helper so the runtime can retry it).
pub(crate) fn open_fabric(cfg: &NodeConfig, link: usize) -> Result<LinkFabric> {
    LinkFabric::open(&cfg.links[link], cfg.fabric)
}
