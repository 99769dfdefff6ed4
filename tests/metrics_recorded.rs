//! The library's metrics through a Prometheus recorder (a test binary of its own: the
//! recorder is global; each test's nodes have their own ids, so their labels differ): two
//! managers on loopback with the soft provider, a messenger, a shadow log and the mirrored
//! write-back on each; the rendered exposition must show the calls, link states, client
//! states, shadow appends and writes that happened, with the right values, then a link
//! failure. A second pair runs the giveback client through a takeover and a giveback.

mod manager_pair;

use interlink::clients::giveback::{
    FileMailbox, FileReservations, GivebackNode, GivebackOptions, JournalHooks,
};
use interlink::clients::mirror::{
    AtomicGeometry, CompletionStatus, MemoryNvram, MirroredWriteBack, ShadowConfig, ShadowMirror,
    WriteBackConfig,
};
use interlink::fabric::ProviderChoice;
use interlink::manager::{BandwidthClass, Manager, NodeConfig};
use interlink::messaging::{Head, Messenger, MessengerConfig};
use interlink::recorded_metrics as names;
use manager_pair::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const ECHO: u8 = 1;

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels in any
/// order; every given pair must be present).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Waits until `name{labels}` satisfies `ok`; fails with the exposition otherwise.
fn wait_sample(
    handle: &PrometheusHandle,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = handle.render();
        if let Some(v) = sample(&text, name, labels).filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never satisfied the condition; exposition:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process's recorder, installed by the first test that asks.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("install the recorder");
        names::describe();
        handle
    })
}

fn shadow(m: &Arc<Manager>) -> ShadowMirror {
    let s = ShadowMirror::start(
        m,
        ShadowConfig::new(),
        Box::new(MemoryNvram::new(1 << 20)),
        Box::new(MemoryNvram::new(
            interlink::clients::mirror::shadow::CursorStore::LEN,
        )),
    )
    .expect("start shadow mirror");
    s.recover(None, |_| Ok(())).expect("recover a fresh log");
    s
}

#[test]
fn calls_links_clients_and_appends_show_up_with_their_values() {
    let handle = recorder();
    init_logs();
    let dir = temp_dir("metrics");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let ma = Arc::new(Manager::start(a).expect("start A"));
    let mb = Arc::new(Manager::start(b).expect("start B"));
    let start = |m: &Arc<Manager>| {
        let ms = Messenger::start(m, MessengerConfig::new("msg-metrics", BandwidthClass::Low))
            .expect("messenger");
        ms.on(ECHO, |msg, out| {
            if let Some(call) = msg.call {
                out.respond(call, msg.payload).expect("respond");
            }
        })
        .expect("handler");
        ms
    };
    let (xa, xb) = (start(&ma), start(&mb));
    let (sa, sb) = (shadow(&ma), shadow(&mb));
    let writeback = |m: &Arc<Manager>| {
        let cfg = WriteBackConfig {
            geometry: AtomicGeometry {
                block_size: 512,
                buffers: 256,
                ries: 16,
            },
            ..WriteBackConfig::new()
        };
        let len = cfg.geometry.required_len();
        MirroredWriteBack::start(
            m,
            cfg,
            Box::new(MemoryNvram::new(len)),
            Box::new(MemoryNvram::new(len)),
        )
        .expect("start write-back")
    };
    let (wa, wb) = (writeback(&ma), writeback(&mb));
    xa.wait_connected_timeout(WAIT).expect("connected");
    xb.wait_connected_timeout(WAIT).expect("connected");
    sa.wait_connected_timeout(WAIT).expect("connected");
    sb.wait_connected_timeout(WAIT).expect("connected");
    wa.wait_connected_timeout(WAIT).expect("connected");
    wb.wait_connected_timeout(WAIT).expect("connected");

    let calls = 25;
    for i in 0..calls {
        let r = xa
            .call_timeout(Head::control(ECHO), &[i; 100], WAIT)
            .expect("call A→B");
        assert_eq!(r, [i; 100]);
    }
    let appends = 10;
    for i in 0..appends {
        let r = sa.append(&[i; 300]).expect("append");
        assert!(r.mirrored);
    }

    let a_msg = [("node", "1"), ("client", "msg-metrics")];
    let b_msg = [("node", "2"), ("client", "msg-metrics")];
    let exact = |n: u8| move |v: f64| v == f64::from(n);
    wait_sample(handle, names::MESSAGING_CALLS, &a_msg, exact(calls));
    wait_sample(handle, names::MESSAGING_CALL_FAILURES, &a_msg, exact(0));
    let latency_count = format!("{}_count", names::MESSAGING_CALL_LATENCY);
    wait_sample(handle, &latency_count, &a_msg, exact(calls));
    // Every call is one message each way (B's handler responds from its outbox).
    wait_sample(handle, names::MESSAGING_SENT, &a_msg, |v| {
        v >= f64::from(calls)
    });
    wait_sample(handle, names::MESSAGING_RECEIVED, &b_msg, |v| {
        v >= f64::from(calls)
    });
    assert!(sample(&handle.render(), names::MESSAGING_CALLS, &b_msg) == Some(0.0));

    let link_a = [("node", "1"), ("link", "0")];
    let link_b = [("node", "2"), ("link", "0")];
    wait_sample(handle, names::LINK_STATE, &link_a, |v| v == 3.0);
    wait_sample(handle, names::LINK_STATE, &link_b, |v| v == 3.0);
    let rtt_count = format!("{}_count", names::LINK_HEARTBEAT_RTT);
    wait_sample(handle, &rtt_count, &link_a, |v| v >= 1.0);
    // Nothing failed so far unless the heartbeat missed on a loaded machine: what counts
    // below is the failure B's stop causes.
    let failures = wait_sample(handle, names::LINK_FAILURES, &link_a, |_| true);

    wait_sample(handle, names::CLIENT_STATE, &a_msg, |v| v == 2.0);
    wait_sample(handle, names::CLIENT_READY, &a_msg, |v| v >= 1.0);

    let shadow_a = [("node", "1"), ("client", "shadow")];
    wait_sample(handle, names::SHADOW_APPENDS, &shadow_a, exact(appends));
    wait_sample(
        handle,
        names::SHADOW_ACKNOWLEDGED_SEQ,
        &shadow_a,
        exact(appends),
    );
    let append_count = format!("{}_count", names::SHADOW_APPEND_LATENCY);
    wait_sample(handle, &append_count, &shadow_a, exact(appends));
    wait_sample(handle, names::SHADOW_MIRRORED_BYTES, &shadow_a, |v| {
        v >= f64::from(appends) * 300.0
    });
    wait_sample(handle, names::SHADOW_UNMIRRORED, &shadow_a, exact(0));

    let writes = 5;
    for i in 0..writes {
        let status = wa.write(1, u64::from(i) * 2, &[i; 1024]).expect("write");
        assert_eq!(status, CompletionStatus::Mirrored);
    }
    let wb_a = [("node", "1"), ("client", "writeback")];
    wait_sample(handle, names::WRITEBACK_WRITES, &wb_a, exact(writes));
    wait_sample(handle, names::WRITEBACK_MIRRORED, &wb_a, exact(writes));
    wait_sample(handle, names::WRITEBACK_MIRROR_LOST, &wb_a, exact(0));
    wait_sample(handle, names::WRITEBACK_MIRRORED_BYTES, &wb_a, |v| {
        v >= f64::from(writes) * 1024.0
    });
    wait_sample(handle, names::WRITEBACK_IN_SYNC, &wb_a, |v| v == 1.0);

    // B goes away: A's link fails once and is no longer ready; its clients are not ready.
    drop((xb, sb, wb));
    mb.shutdown();
    wait_sample(handle, names::LINK_FAILURES, &link_a, |v| {
        v >= failures + 1.0
    });
    wait_sample(handle, names::LINK_STATE, &link_a, |v| v != 3.0);
    wait_sample(handle, names::CLIENT_STATE, &a_msg, |v| v != 2.0);
    // Every name of the table is described (HELP line) once the recorder has it.
    let text = handle.render();
    for name in [
        names::LINK_STATE,
        names::MESSAGING_CALLS,
        names::SHADOW_APPENDS,
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
    drop((xa, sa, wa));
    ma.shutdown();
}

/// `cfg` as node `me` of a pair with `partner`.
fn renumber(mut cfg: NodeConfig, me: u32, partner: u32) -> NodeConfig {
    cfg.node_id = me;
    cfg.partner_id = partner;
    cfg
}

fn giveback_node(cfg: &NodeConfig, dir: &std::path::Path) -> (Arc<Manager>, GivebackNode) {
    let manager = Arc::new(Manager::start(cfg.clone()).expect("start manager"));
    let me = cfg.node_id;
    let node = GivebackNode::start(
        &manager,
        GivebackOptions::default(),
        Box::new(FileMailbox::open(dir, me, cfg.partner_id).expect("mailbox")),
        Box::new(FileReservations::open(dir, me).expect("reservations")),
        Box::new(JournalHooks::new(dir, me)),
    )
    .expect("start giveback");
    (manager, node)
}

#[test]
fn giveback_state_takeover_and_giveback_show_up() {
    let handle = recorder();
    init_logs();
    let dir = temp_dir("metrics-giveback");
    let (a, b) = pair(&dir, 1, loopback, ProviderChoice::Soft, port_base());
    let (a, b) = (renumber(a, 3, 4), renumber(b, 4, 3));
    let (ma, ga) = giveback_node(&a, &dir);
    let (mb, gb) = giveback_node(&b, &dir);
    let node_a = [("node", "3")];
    let up = 4.0;
    wait_sample(handle, names::GIVEBACK_STATE, &node_a, |v| v == up);
    wait_sample(handle, names::GIVEBACK_STATE, &[("node", "4")], |v| v == up);
    wait_sample(handle, names::GIVEBACK_TAKEOVERS, &node_a, |v| v == 0.0);

    // B stops: A declares it failed and takes over.
    gb.stop();
    mb.shutdown();
    drop(gb);
    let takeover = 5.0;
    wait_sample(handle, names::GIVEBACK_STATE, &node_a, |v| v == takeover);
    wait_sample(handle, names::GIVEBACK_PARTNER_FAILURES, &node_a, |v| {
        v == 1.0
    });
    wait_sample(handle, names::GIVEBACK_TAKEOVERS, &node_a, |v| v == 1.0);

    // B restarts: the coordinated giveback hands its disks back.
    let (mb, gb) = giveback_node(&b, &dir);
    wait_sample(handle, names::GIVEBACK_GIVEBACKS, &node_a, |v| v == 1.0);
    wait_sample(handle, names::GIVEBACK_STATE, &node_a, |v| v == up);
    wait_sample(handle, names::GIVEBACK_STATE, &[("node", "4")], |v| v == up);
    gb.stop();
    ga.stop();
    mb.shutdown();
    ma.shutdown();
}
