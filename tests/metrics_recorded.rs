//! The library's metrics through a Prometheus recorder (a test binary of its own: the
//! recorder is global): two managers on loopback with the soft provider, a messenger and a
//! shadow log on each; the rendered exposition must show the calls, link states, client
//! states and shadow appends that happened, with the right values, then a link failure.

mod manager_pair;

use interlink::clients::mirror::{MemoryNvram, ShadowConfig, ShadowMirror};
use interlink::fabric::ProviderChoice;
use interlink::manager::{BandwidthClass, Manager};
use interlink::messaging::{Head, Messenger, MessengerConfig};
use interlink::recorded_metrics as names;
use manager_pair::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
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
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("install the recorder");
    names::describe();
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
    assert!(xa.wait_connected(WAIT) && xb.wait_connected(WAIT));
    assert!(sa.wait_connected(WAIT) && sb.wait_connected(WAIT));

    let calls = 25;
    for i in 0..calls {
        let r = xa
            .call(Head::control(ECHO), &[i; 100], WAIT)
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
    wait_sample(&handle, names::MESSAGING_CALLS, &a_msg, exact(calls));
    wait_sample(&handle, names::MESSAGING_CALL_FAILURES, &a_msg, exact(0));
    let latency_count = format!("{}_count", names::MESSAGING_CALL_LATENCY);
    wait_sample(&handle, &latency_count, &a_msg, exact(calls));
    // Every call is one message each way (B's handler responds from its outbox).
    wait_sample(&handle, names::MESSAGING_SENT, &a_msg, |v| {
        v >= f64::from(calls)
    });
    wait_sample(&handle, names::MESSAGING_RECEIVED, &b_msg, |v| {
        v >= f64::from(calls)
    });
    assert!(sample(&handle.render(), names::MESSAGING_CALLS, &b_msg) == Some(0.0));

    let link_a = [("node", "1"), ("link", "0")];
    let link_b = [("node", "2"), ("link", "0")];
    wait_sample(&handle, names::LINK_STATE, &link_a, |v| v == 3.0);
    wait_sample(&handle, names::LINK_STATE, &link_b, |v| v == 3.0);
    let rtt_count = format!("{}_count", names::LINK_HEARTBEAT_RTT);
    wait_sample(&handle, &rtt_count, &link_a, |v| v >= 1.0);
    wait_sample(&handle, names::LINK_FAILURES, &link_a, exact(0));

    wait_sample(&handle, names::CLIENT_STATE, &a_msg, |v| v == 2.0);
    wait_sample(&handle, names::CLIENT_READY, &a_msg, exact(1));

    let shadow_a = [("node", "1"), ("client", "shadow")];
    wait_sample(&handle, names::SHADOW_APPENDS, &shadow_a, exact(appends));
    wait_sample(
        &handle,
        names::SHADOW_ACKNOWLEDGED_SEQ,
        &shadow_a,
        exact(appends),
    );
    let append_count = format!("{}_count", names::SHADOW_APPEND_LATENCY);
    wait_sample(&handle, &append_count, &shadow_a, exact(appends));
    wait_sample(&handle, names::SHADOW_MIRRORED_BYTES, &shadow_a, |v| {
        v >= f64::from(appends) * 300.0
    });
    wait_sample(&handle, names::SHADOW_UNMIRRORED, &shadow_a, exact(0));

    // B goes away: A's link fails once and is no longer ready; its clients are not ready.
    drop((xb, sb));
    mb.shutdown();
    wait_sample(&handle, names::LINK_FAILURES, &link_a, exact(1));
    wait_sample(&handle, names::LINK_STATE, &link_a, |v| v != 3.0);
    wait_sample(&handle, names::CLIENT_STATE, &a_msg, |v| v != 2.0);
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
    drop((xa, sa));
    ma.shutdown();
}
