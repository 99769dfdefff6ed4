//! The metrics this library records through the [`metrics`] facade: their names, and the
//! handles each link and client registers once at setup.
//!
//! Nothing here installs a recorder: an application that wants the values installs one
//! (`interlink node --metrics ADDR` installs a Prometheus recorder); without one every
//! handle is a no-op that neither allocates nor locks. The table of names, types, labels and
//! meanings is in docs/operations.md ("Metrics"); [`describe`] gives a recorder the same
//! descriptions.
//!
//! Handles are registered once per link or client with their labels (`node`, and `link` or
//! `client`), so recording on a hot path is an atomic update on a handle, never a label
//! string or a map lookup. Totals that a sans-IO core already counts are carried over by the
//! driver with `CounterTotal` (the increase since the last carry-over).

use crate::manager::{ClientState, LinkId, LinkState};
use crate::messaging::WindowStats;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Unit};
use std::sync::atomic::{AtomicU64, Ordering};

/// Link state (gauge): 0 down, 1 connecting, 2 handshaking, 3 ready, 4 refused.
pub const LINK_STATE: &str = "interlink_link_state";
/// Round trip of the heartbeat's RDMA READ of the partner's health block (histogram, seconds).
pub const LINK_HEARTBEAT_RTT: &str = "interlink_link_heartbeat_rtt_seconds";
/// Heartbeat intervals that passed without a new partner block (counter).
pub const LINK_HEARTBEAT_MISSES: &str = "interlink_link_heartbeat_misses_total";
/// Times the link went from ready to down (counter).
pub const LINK_FAILURES: &str = "interlink_link_failures_total";
/// Failed link attempts and failed links (counter).
pub const LINK_ERRORS: &str = "interlink_link_errors_total";
/// Work requests posted by the clients placed on the link (counter, sampled every 500 ms).
pub const LINK_OPS: &str = "interlink_link_ops_total";
/// Bytes posted by the clients placed on the link (counter, sampled every 500 ms).
pub const LINK_BYTES: &str = "interlink_link_bytes_total";
/// Client state (gauge): 0 waiting, 1 connecting, 2 ready, 3 suspended, 4 closed, 5 refused.
pub const CLIENT_STATE: &str = "interlink_client_state";
/// Times the client became ready: the first connection and every re-connection (counter).
pub const CLIENT_READY: &str = "interlink_client_ready_total";
/// Messages a messenger put into frames (counter).
pub const MESSAGING_SENT: &str = "interlink_messaging_messages_sent_total";
/// Messages a messenger delivered to its handlers (counter).
pub const MESSAGING_RECEIVED: &str = "interlink_messaging_messages_received_total";
/// Calls started with `Messenger::call` or `call_async` (counter).
pub const MESSAGING_CALLS: &str = "interlink_messaging_calls_total";
/// Call latency, start to response (histogram, seconds).
pub const MESSAGING_CALL_LATENCY: &str = "interlink_messaging_call_seconds";
/// Calls that ended without a response: partner inoperative, no handler, timeout (counter).
pub const MESSAGING_CALL_FAILURES: &str = "interlink_messaging_call_failures_total";
/// Frames in flight in the messenger's window (gauge).
pub const MESSAGING_IN_FLIGHT: &str = "interlink_messaging_window_in_flight";
/// Records appended to the shadow log (counter).
pub const SHADOW_APPENDS: &str = "interlink_shadow_appends_total";
/// Append latency, start to acknowledgement (histogram, seconds).
pub const SHADOW_APPEND_LATENCY: &str = "interlink_shadow_append_seconds";
/// Bytes of mirror writes posted into the partner (counter).
pub const SHADOW_MIRRORED_BYTES: &str = "interlink_shadow_mirrored_bytes_total";
/// Highest sequence number acknowledged (gauge).
pub const SHADOW_ACKNOWLEDGED_SEQ: &str = "interlink_shadow_acknowledged_seq";
/// Records acknowledged unmirrored, the partner being absent (counter).
pub const SHADOW_UNMIRRORED: &str = "interlink_shadow_unmirrored_total";
/// Times the partner was declared absent: appends then complete unmirrored (counter).
pub const SHADOW_SUSPENSIONS: &str = "interlink_shadow_partner_absences_total";
/// Host writes the mirrored write-back took (counter).
pub const WRITEBACK_WRITES: &str = "interlink_writeback_writes_total";
/// Writes completed mirrored (counter).
pub const WRITEBACK_MIRRORED: &str = "interlink_writeback_mirrored_total";
/// Writes completed with the mirror lost or rejected (counter).
pub const WRITEBACK_MIRROR_LOST: &str = "interlink_writeback_mirror_lost_total";
/// Bytes of RDMA WRITEs posted into the partner's mirror (counter).
pub const WRITEBACK_MIRRORED_BYTES: &str = "interlink_writeback_mirrored_bytes_total";
/// Whether the partner's mirror is in sync with this node's writes (gauge, 0 or 1).
pub const WRITEBACK_IN_SYNC: &str = "interlink_writeback_in_sync";
/// Giveback state of this node (gauge): 1 booting, 2 givewait, 3 mbwait, 4 up, 5 takeover,
/// 6 halted.
pub const GIVEBACK_STATE: &str = "interlink_giveback_state";
/// Takeovers completed (counter).
pub const GIVEBACK_TAKEOVERS: &str = "interlink_giveback_takeovers_total";
/// Givebacks completed (counter).
pub const GIVEBACK_GIVEBACKS: &str = "interlink_giveback_givebacks_total";
/// Times the partner was declared failed (counter).
pub const GIVEBACK_PARTNER_FAILURES: &str = "interlink_giveback_partner_failures_total";

/// Every metric: name, unit, description (what [`describe`] registers).
pub const ALL: &[(&str, Option<Unit>, &str)] = &[
    (
        LINK_STATE,
        None,
        "link state: 0 down, 1 connecting, 2 handshaking, 3 ready, 4 refused",
    ),
    (
        LINK_HEARTBEAT_RTT,
        Some(Unit::Seconds),
        "heartbeat RDMA READ round trip",
    ),
    (
        LINK_HEARTBEAT_MISSES,
        None,
        "heartbeat intervals without a new partner block",
    ),
    (
        LINK_FAILURES,
        None,
        "times the link went from ready to down",
    ),
    (LINK_ERRORS, None, "failed link attempts and failed links"),
    (
        LINK_OPS,
        None,
        "work requests posted by the clients on the link",
    ),
    (
        LINK_BYTES,
        Some(Unit::Bytes),
        "bytes posted by the clients on the link",
    ),
    (
        CLIENT_STATE,
        None,
        "client state: 0 waiting, 1 connecting, 2 ready, 3 suspended, 4 closed, 5 refused",
    ),
    (
        CLIENT_READY,
        None,
        "times the client became ready (first connection and re-connections)",
    ),
    (MESSAGING_SENT, None, "messages sent"),
    (MESSAGING_RECEIVED, None, "messages delivered to handlers"),
    (MESSAGING_CALLS, None, "calls started"),
    (
        MESSAGING_CALL_LATENCY,
        Some(Unit::Seconds),
        "call latency, start to response",
    ),
    (
        MESSAGING_CALL_FAILURES,
        None,
        "calls that ended without a response",
    ),
    (MESSAGING_IN_FLIGHT, None, "frames in flight in the window"),
    (SHADOW_APPENDS, None, "records appended to the shadow log"),
    (
        SHADOW_APPEND_LATENCY,
        Some(Unit::Seconds),
        "append latency, start to acknowledgement",
    ),
    (
        SHADOW_MIRRORED_BYTES,
        Some(Unit::Bytes),
        "bytes of mirror writes posted",
    ),
    (
        SHADOW_ACKNOWLEDGED_SEQ,
        None,
        "highest sequence number acknowledged",
    ),
    (SHADOW_UNMIRRORED, None, "records acknowledged unmirrored"),
    (
        SHADOW_SUSPENSIONS,
        None,
        "times the partner was declared absent",
    ),
    (WRITEBACK_WRITES, None, "host writes taken"),
    (WRITEBACK_MIRRORED, None, "writes completed mirrored"),
    (
        WRITEBACK_MIRROR_LOST,
        None,
        "writes completed with the mirror lost or rejected",
    ),
    (
        WRITEBACK_MIRRORED_BYTES,
        Some(Unit::Bytes),
        "bytes of RDMA WRITEs into the mirror",
    ),
    (
        WRITEBACK_IN_SYNC,
        None,
        "1 when the partner's mirror is in sync",
    ),
    (
        GIVEBACK_STATE,
        None,
        "giveback state: 1 booting, 2 givewait, 3 mbwait, 4 up, 5 takeover, 6 halted",
    ),
    (GIVEBACK_TAKEOVERS, None, "takeovers completed"),
    (GIVEBACK_GIVEBACKS, None, "givebacks completed"),
    (
        GIVEBACK_PARTNER_FAILURES,
        None,
        "times the partner was declared failed",
    ),
];

/// Gives the installed recorder the description and unit of every metric (the `# HELP`
/// lines of a Prometheus exposition). Call it once after installing the recorder.
pub fn describe() {
    for &(name, unit, text) in ALL {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else if name.ends_with("_seconds") {
            Kind::Histogram
        } else {
            Kind::Gauge
        };
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, text),
            (Kind::Counter, None) => metrics::describe_counter!(name, text),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, text),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, text),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, text),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, text),
        }
    }
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A counter fed from a running total another part keeps (a core's statistics): each
/// [`set`](CounterTotal::set) adds the increase since the last one.
pub(crate) struct CounterTotal {
    counter: Counter,
    last: AtomicU64,
}

impl CounterTotal {
    fn new(counter: Counter) -> CounterTotal {
        CounterTotal {
            counter,
            last: AtomicU64::new(0),
        }
    }

    /// The total is now `total`.
    pub(crate) fn set(&self, total: u64) {
        let before = self.last.swap(total, Ordering::Relaxed);
        if total > before {
            self.counter.increment(total - before);
        }
    }
}

/// The value of a link's [`LINK_STATE`] gauge.
pub(crate) fn link_state_code(state: LinkState) -> f64 {
    match state {
        LinkState::Down => 0.0,
        LinkState::Connecting => 1.0,
        LinkState::Handshaking => 2.0,
        LinkState::Ready => 3.0,
        LinkState::Refused => 4.0,
    }
}

/// The value of a client's [`CLIENT_STATE`] gauge.
pub(crate) fn client_state_code(state: ClientState) -> f64 {
    match state {
        ClientState::Waiting => 0.0,
        ClientState::Connecting => 1.0,
        ClientState::Ready => 2.0,
        ClientState::Suspended => 3.0,
        ClientState::Closed => 4.0,
        ClientState::Refused => 5.0,
    }
}

/// The handles of one link (labels `node`, `link`).
pub(crate) struct LinkMetrics {
    pub(crate) state: Gauge,
    pub(crate) heartbeat_rtt: Histogram,
    pub(crate) heartbeat_misses: Counter,
    pub(crate) failures: Counter,
    pub(crate) errors: Counter,
    pub(crate) ops: Counter,
    pub(crate) bytes: Counter,
}

impl LinkMetrics {
    pub(crate) fn new(node: u32, link: LinkId) -> LinkMetrics {
        let labels = [("node", node.to_string()), ("link", link.to_string())];
        LinkMetrics {
            state: gauge!(LINK_STATE, &labels),
            heartbeat_rtt: histogram!(LINK_HEARTBEAT_RTT, &labels),
            heartbeat_misses: counter!(LINK_HEARTBEAT_MISSES, &labels),
            failures: counter!(LINK_FAILURES, &labels),
            errors: counter!(LINK_ERRORS, &labels),
            ops: counter!(LINK_OPS, &labels),
            bytes: counter!(LINK_BYTES, &labels),
        }
    }
}

fn client_labels(node: u32, client: &str) -> [(&'static str, String); 2] {
    [("node", node.to_string()), ("client", client.to_string())]
}

/// The manager's handles of one registered client (labels `node`, `client`).
pub(crate) struct ClientMetrics {
    pub(crate) state: Gauge,
    pub(crate) ready: Counter,
}

impl ClientMetrics {
    pub(crate) fn new(node: u32, client: &str) -> ClientMetrics {
        let labels = client_labels(node, client);
        ClientMetrics {
            state: gauge!(CLIENT_STATE, &labels),
            ready: counter!(CLIENT_READY, &labels),
        }
    }
}

/// The handles of one messenger (labels `node`, `client`).
pub(crate) struct MessagingMetrics {
    pub(crate) sent: CounterTotal,
    pub(crate) received: CounterTotal,
    pub(crate) calls: Counter,
    pub(crate) call_latency: Histogram,
    pub(crate) call_failures: Counter,
    pub(crate) in_flight: Gauge,
}

impl MessagingMetrics {
    pub(crate) fn new(node: u32, client: &str) -> MessagingMetrics {
        let labels = client_labels(node, client);
        MessagingMetrics {
            sent: CounterTotal::new(counter!(MESSAGING_SENT, &labels)),
            received: CounterTotal::new(counter!(MESSAGING_RECEIVED, &labels)),
            calls: counter!(MESSAGING_CALLS, &labels),
            call_latency: histogram!(MESSAGING_CALL_LATENCY, &labels),
            call_failures: counter!(MESSAGING_CALL_FAILURES, &labels),
            in_flight: gauge!(MESSAGING_IN_FLIGHT, &labels),
        }
    }

    /// Carries the window's counters over.
    pub(crate) fn record_window(&self, stats: &WindowStats, in_flight: usize) {
        self.sent.set(stats.messages_sent);
        self.received.set(stats.messages_delivered);
        self.in_flight.set(in_flight as f64);
    }
}

/// The handles of one shadow log (labels `node`, `client`).
pub(crate) struct ShadowMetrics {
    pub(crate) appends: Counter,
    pub(crate) append_latency: Histogram,
    pub(crate) mirrored_bytes: CounterTotal,
    pub(crate) acknowledged_seq: Gauge,
    pub(crate) unmirrored: CounterTotal,
    pub(crate) suspensions: CounterTotal,
}

impl ShadowMetrics {
    pub(crate) fn new(node: u32, client: &str) -> ShadowMetrics {
        let labels = client_labels(node, client);
        ShadowMetrics {
            appends: counter!(SHADOW_APPENDS, &labels),
            append_latency: histogram!(SHADOW_APPEND_LATENCY, &labels),
            mirrored_bytes: CounterTotal::new(counter!(SHADOW_MIRRORED_BYTES, &labels)),
            acknowledged_seq: gauge!(SHADOW_ACKNOWLEDGED_SEQ, &labels),
            unmirrored: CounterTotal::new(counter!(SHADOW_UNMIRRORED, &labels)),
            suspensions: CounterTotal::new(counter!(SHADOW_SUSPENSIONS, &labels)),
        }
    }
}

/// The handles of one mirrored write-back (labels `node`, `client`).
pub(crate) struct WriteBackMetrics {
    pub(crate) writes: CounterTotal,
    pub(crate) mirrored: CounterTotal,
    pub(crate) mirror_lost: CounterTotal,
    pub(crate) mirrored_bytes: CounterTotal,
    pub(crate) in_sync: Gauge,
}

impl WriteBackMetrics {
    pub(crate) fn new(node: u32, client: &str) -> WriteBackMetrics {
        let labels = client_labels(node, client);
        WriteBackMetrics {
            writes: CounterTotal::new(counter!(WRITEBACK_WRITES, &labels)),
            mirrored: CounterTotal::new(counter!(WRITEBACK_MIRRORED, &labels)),
            mirror_lost: CounterTotal::new(counter!(WRITEBACK_MIRROR_LOST, &labels)),
            mirrored_bytes: CounterTotal::new(counter!(WRITEBACK_MIRRORED_BYTES, &labels)),
            in_sync: gauge!(WRITEBACK_IN_SYNC, &labels),
        }
    }
}

/// The handles of the giveback client (label `node`).
pub(crate) struct GivebackMetrics {
    pub(crate) state: Gauge,
    pub(crate) takeovers: Counter,
    pub(crate) givebacks: Counter,
    pub(crate) partner_failures: Counter,
}

impl GivebackMetrics {
    pub(crate) fn new(node: u32) -> GivebackMetrics {
        let labels = [("node", node.to_string())];
        GivebackMetrics {
            state: gauge!(GIVEBACK_STATE, &labels),
            takeovers: counter!(GIVEBACK_TAKEOVERS, &labels),
            givebacks: counter!(GIVEBACK_GIVEBACKS, &labels),
            partner_failures: counter!(GIVEBACK_PARTNER_FAILURES, &labels),
        }
    }
}
