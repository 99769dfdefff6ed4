//! The shadow log between two node processes in namespaces ilA and ilB (soft provider on the
//! host, verbs on Soft-RoCE in the VM with `INTERLINK_TEST_FABRIC=verbs`):
//!
//! - a writer on A appends continuously while the link the shadow client uses is cut: it
//!   moves to the other link, the live log is re-sent, and B's image of A's log holds exactly
//!   the records A acknowledged after its last checkpoint, in order (F5.5);
//! - with the giveback client on both nodes, A is killed (-9) mid-stream; B takes over and its
//!   replay hook writes `replayed-2.log`, which holds every record A acknowledged after the
//!   checkpoint B replayed from, in order, and at most the writer's window of records A
//!   appended without seeing their acknowledgement (F5.2); a second replay finds nothing.
//!
//! What A acknowledged comes from its writer's own file (`acked-1.log`, see
//! `interlink::clients::mirror::shadow::ShadowWriter`).
//!
//! Root only, so `#[ignore]`: `soft-roce/test-all` runs them. Each test builds its own
//! topology, so run them with `--test-threads=1`.

use crate::giveback_journal;
use crate::manager_pair;
use crate::netns_node;

use giveback_journal::note_crash;
use interlink::clients::mirror::shadow::writer_payload;
use interlink::manager::{ClientState, NodeStatus};
use manager_pair::*;
use netns_node::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHADOW: &str = "shadow";
const SIZE: u64 = 256;
const WINDOW: u64 = 16;

fn nodes(tag: &str, links: u8, giveback: bool) -> (Node, Node, PathBuf) {
    topology(links);
    let dir = temp_dir(tag);
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let (a, b) = pair(&dir, links, netns, fabric(), 18900);
    let mut na = Node::new(&dir, "a", "ilA", a, &[]);
    let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
    for n in [&mut na, &mut nb] {
        // A long partner timeout: a link cut is a failover, never a partner absence.
        n.extra = vec!["--shadow".into(), format!("{}:1M:60000", shared.display())];
        if giveback {
            n.extra
                .extend(["--giveback".into(), shared.display().to_string()]);
        }
        n.start();
    }
    for n in [&na, &nb] {
        wait_shadow(n, "shadow connected", WAIT, |v| {
            v["shadow"]["connected"] == json!(true)
        });
    }
    (na, nb, shared)
}

fn shadow(n: &Node, command: Value) -> Value {
    n.client(SHADOW, command)
}

fn wait_shadow(n: &Node, what: &str, limit: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
    n.wait_client(SHADOW, what, limit, pred)
}

fn acked_at_least(n: &Node, count: u64) -> Value {
    wait_shadow(n, &format!("{count} acknowledged"), WAIT, |v| {
        v["writer"]["acknowledged"].as_u64().unwrap_or(0) >= count
    })
}

fn shadow_link(s: &NodeStatus) -> Option<u8> {
    s.clients
        .iter()
        .find(|c| c.name == SHADOW && c.state == ClientState::Ready)
        .and_then(|c| c.link)
}

/// A's acked log: the acknowledged seqs, the last mirrored checkpoint and the last one asked
/// for.
fn acked_log(path: &Path) -> (Vec<u64>, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line torn by kill -9 can only be the last one, without its newline: skip it.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let (mut acked, mut cp, mut asked) = (Vec::new(), 0, 0);
    for l in complete.lines() {
        let mut it = l.split_whitespace();
        match (it.next(), it.next()) {
            (Some("checkpoint"), Some(n)) => cp = n.parse().unwrap(),
            (Some("checkpoint-asked"), Some(n)) => asked = n.parse().unwrap(),
            (Some("generation"), _) => {}
            (Some("unmirrored"), Some(n)) => panic!("record {n} acknowledged unmirrored"),
            (Some(n), None) => acked.push(n.parse::<u64>().unwrap()),
            other => panic!("bad acked log line {other:?}"),
        }
    }
    assert!(
        acked.first().is_none_or(|f| *f == 1) && acked.windows(2).all(|w| w[1] == w[0] + 1),
        "A's acknowledgements are 1.. without gaps or reordering"
    );
    (acked, cp, asked)
}

/// Checks a replay starting after checkpoint `from`: `from` is between the last checkpoint A
/// logged as mirrored and the last it asked for, and the replay holds every acknowledged
/// record after it, plus at most a window of records whose acknowledgement A never saw.
fn check_replay(from: u64, last: Option<u64>, acked: &[u64], cp: u64, asked: u64) {
    assert!(
        cp <= from && from <= asked.max(cp),
        "replay from checkpoint {from}; A logged checkpoint {cp}, asked {asked}"
    );
    let last_acked = acked.last().copied().unwrap_or(0);
    let last = last.unwrap_or(from);
    assert!(
        last >= last_acked,
        "acknowledged records lost: replay ends at {last}, A acknowledged {last_acked}"
    );
    assert!(
        last <= last_acked + WINDOW,
        "replay ends at {last}, A acknowledged {last_acked} with at most {WINDOW} in flight"
    );
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn link_cut_mid_stream_loses_no_acknowledged_record() {
    let (a, b, shared) = nodes("shadow-cut", 2, false);
    let settled = |s: &NodeStatus| shadow_link(s).filter(|_| links_ready(s));
    b.wait("links up, shadow placed", |s| settled(s).is_some());
    let mut link = None;
    a.wait("links up, shadow placed", |s| {
        link = settled(s);
        link.is_some()
    });
    let link = link.expect("link");
    shadow(
        &a,
        json!({"write": {"size": SIZE, "window": WINDOW, "checkpoint_every": 128}}),
    );
    let before = acked_at_least(&a, 3000)["writer"]["acknowledged"]
        .as_u64()
        .unwrap();
    let cut = Instant::now();
    sh("link", &["down", &link.to_string()]);
    let other = 1 - link;
    a.wait("shadow moved", |s| shadow_link(s) == Some(other));
    let moved = cut.elapsed();
    let after = acked_at_least(&a, before + 3000);
    sh("link", &["up", &link.to_string()]);
    let stopped = shadow(&a, json!({"stop": true}));
    let w = &stopped["writer"];
    assert_eq!(w["errors"], json!(0), "{stopped:#}");
    assert_eq!(w["unmirrored"], json!(0), "{stopped:#}");
    let st = &stopped["shadow"];
    assert!(
        st["resyncs"].as_u64().unwrap() >= 1,
        "the live log was re-sent on the new link: {stopped:#}"
    );
    let (acked, cp, asked) = acked_log(&shared.join("acked-1.log"));
    assert_eq!(acked.len() as u64, w["acknowledged"].as_u64().unwrap());
    let r = shadow(&b, json!({"replay": true}))["replay"].clone();
    assert_eq!(r["gaps"], json!(0), "{r:#}");
    assert_eq!(r["bad_payloads"], json!(0), "{r:#}");
    let from = r["checkpoint"].as_u64().unwrap();
    let count = r["count"].as_u64().unwrap();
    if count > 0 {
        assert_eq!(r["first"].as_u64(), Some(from + 1), "{r:#}");
    }
    // The writer stopped with nothing in flight: exactly the acknowledged records.
    assert_eq!(r["last"].as_u64().unwrap_or(from), *acked.last().unwrap());
    check_replay(from, r["last"].as_u64(), &acked, cp, asked);
    println!(
        "link {link} cut with {before} acknowledged; shadow on link {other} after {:.0} ms; {} acknowledged in all ({} during the cut phase), {} writes re-sent; B replays {count} after checkpoint {from}; append p50 {} µs p99 {} µs",
        moved.as_secs_f64() * 1e3,
        acked.len(),
        after["writer"]["acknowledged"].as_u64().unwrap() - before,
        st["resent_writes"],
        st["latency_p50_us"],
        st["latency_p99_us"],
    );
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn kill_writer_survivor_replays_exactly_the_acknowledged_records() {
    let (mut a, b, shared) = nodes("shadow-kill", 2, true);
    for n in [&a, &b] {
        n.wait_giveback("both nodes up", |r| {
            r.state == "UP" && r.partner_state.as_deref() == Some("UP")
        });
    }
    shadow(
        &a,
        json!({"write": {"size": SIZE, "window": WINDOW, "checkpoint_every": 100}}),
    );
    acked_at_least(&a, 3000);
    a.kill();
    note_crash(&shared, 1);
    let killed = Instant::now();
    b.wait_giveback("takeover", |r| {
        r.state == "TAKEOVER" && r.serving.contains(&1) && r.serving.contains(&2)
    });
    let st = wait_shadow(&b, "replay done", WAIT, |v| {
        v["shadow"]["replays"].as_u64().unwrap_or(0) >= 1
    });
    let took = killed.elapsed();
    let (acked, cp, asked) = acked_log(&shared.join("acked-1.log"));
    let text = std::fs::read_to_string(shared.join("replayed-2.log")).expect("replayed-2.log");
    let mut replayed = Vec::new();
    // `replay G C` heads each replay's records: C is the checkpoint it replayed from.
    let replay_checkpoint: Option<u64> = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("replay "))
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    for l in text.lines().filter(|l| !l.starts_with("replay ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 3, "line {l:?}");
        let seq: u64 = f[0].parse().unwrap();
        let payload = writer_payload(seq, SIZE as usize);
        assert_eq!(f[1].parse::<usize>().unwrap(), payload.len(), "line {l:?}");
        assert_eq!(
            u32::from_str_radix(f[2], 16).unwrap(),
            crc32c::crc32c(&payload),
            "record {seq}: payload differs"
        );
        replayed.push(seq);
    }
    assert!(
        replayed.windows(2).all(|w| w[1] == w[0] + 1),
        "replayed in order without gaps"
    );
    // An empty replay (everything acknowledged was covered by the checkpoint) starts at
    // the checkpoint it names.
    let from = replayed
        .first()
        .map(|f| f - 1)
        .or(replay_checkpoint)
        .unwrap_or(0);
    check_replay(from, replayed.last().copied(), &acked, cp, asked);
    // Exactly once: nothing is left to replay.
    let again = shadow(&b, json!({"replay": true}))["replay"].clone();
    assert_eq!(again["count"], json!(0), "{again:#}");
    println!(
        "A killed with {} acknowledged (checkpoint {cp}, asked {asked}); B took over and replayed {} records ({}..={}) in {:.0} ms; {} replayed beyond A's last acknowledgement",
        acked.len(),
        replayed.len(),
        from + 1,
        replayed.last().copied().unwrap_or(from),
        took.as_secs_f64() * 1e3,
        replayed.last().copied().unwrap_or(0).saturating_sub(*acked.last().unwrap()),
    );
    assert_eq!(
        st["shadow"]["replayed_records"].as_u64(),
        Some(replayed.len() as u64)
    );
}
