//! Mirrored write-back between two node processes in namespaces ilA and ilB (soft provider on
//! the host, verbs on Soft-RoCE in the VM with `INTERLINK_TEST_FABRIC=verbs`): both nodes
//! write continuously (each the primary of its writes and the mirror of the other's) while
//! the link the `wb-data` client uses is cut; the client moves to the other link, writes in
//! progress are redone there, and afterwards every block whose last write was acknowledged
//! mirrored holds that write's data in the partner's mirror image (F5.5).
//!
//! What each node acknowledged comes from its writer's own file (`wb-acked-<node>.log`, see
//! `interlink node --writeback`); the partner checks it against its image (`{"check": true}`).
//!
//! Root only, so `#[ignore]`: `soft-roce/test-all` runs it. It builds its own topology, so
//! run it with `--test-threads=1`.

use crate::manager_pair;
use crate::netns_node;

use interlink::manager::{ClientState, NodeStatus};
use manager_pair::*;
use netns_node::*;
use serde_json::{json, Value};
use std::time::Instant;

const WRITEBACK: &str = "writeback";
const DATA: &str = "wb-data";

fn wb(n: &Node, command: Value) -> Value {
    n.client(WRITEBACK, command)
}

fn wait_wb(n: &Node, what: &str, pred: impl FnMut(&Value) -> bool) -> Value {
    n.wait_client(WRITEBACK, what, WAIT, pred)
}

fn completed_at_least(n: &Node, count: u64) -> u64 {
    wait_wb(n, &format!("{count} writes completed"), |v| {
        v["writer"]["completed"].as_u64().unwrap_or(0) >= count
    })["writer"]["completed"]
        .as_u64()
        .unwrap()
}

fn data_link(s: &NodeStatus) -> Option<u8> {
    s.clients
        .iter()
        .find(|c| c.name == DATA && c.state == ClientState::Ready)
        .and_then(|c| c.link)
}

#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn link_cut_mid_stream_loses_no_mirrored_write() {
    topology(2);
    let dir = temp_dir("wb-cut");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let (a, b) = pair(&dir, 2, netns, fabric(), 19100);
    let mut na = Node::new(&dir, "a", "ilA", a, &[]);
    let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
    for n in [&mut na, &mut nb] {
        // A long partner timeout: a link cut is a path change, never a partner failure.
        // Small tables (1 MiB of data): registering large regions stalls the emulated VM.
        n.extra = vec![
            "--writeback".into(),
            format!("{}:60000:2048:512", shared.display()),
        ];
        n.start();
    }
    let settled = |s: &NodeStatus| data_link(s).filter(|_| links_ready(s));
    nb.wait("links up, wb-data placed", |s| settled(s).is_some());
    let mut link = None;
    na.wait("links up, wb-data placed", |s| {
        link = settled(s);
        link.is_some()
    });
    let link = link.expect("link");
    for n in [&na, &nb] {
        wait_wb(n, "write-back connected", |v| {
            v["writeback"]["connected"] == json!(true)
        });
        wb(
            n,
            json!({"write": {"blocks": 8, "window": 8, "range": 1024}}),
        );
    }
    // 100 writes of 8 blocks each side before and after the cut: enough to have writes in
    // flight when the link goes (8 per side), few enough for Soft-RoCE under emulation.
    let before = [completed_at_least(&na, 100), completed_at_least(&nb, 100)];
    let cut = Instant::now();
    sh("link", &["down", &link.to_string()]);
    let other = 1 - link;
    na.wait("wb-data moved", |s| data_link(s) == Some(other));
    let moved = cut.elapsed();
    completed_at_least(&na, before[0] + 100);
    completed_at_least(&nb, before[1] + 100);
    sh("link", &["up", &link.to_string()]);
    let mut stopped = Vec::new();
    for n in [&na, &nb] {
        let v = wb(n, json!({"stop": true}));
        let w = &v["writer"];
        assert_eq!(w["errors"], json!(0), "{}: {v:#}", n.name);
        assert_eq!(w["lost"], json!(0), "{}: {v:#}", n.name);
        assert_eq!(w["rejected"], json!(0), "{}: {v:#}", n.name);
        assert_eq!(w["completed"], w["started"], "{}: {v:#}", n.name);
        assert_eq!(v["writeback"]["pending"], json!(0), "{}: {v:#}", n.name);
        stopped.push(v);
    }
    // Each node's mirror image holds the last mirrored write of every block of the other.
    for (n, partner) in [(&nb, &stopped[0]), (&na, &stopped[1])] {
        let c = wb(n, json!({"check": true}))["check"].clone();
        assert_eq!(
            c["writes"].as_u64(),
            partner["writer"]["completed"].as_u64(),
            "{c:#}"
        );
        // Every block the writer covers was checked.
        assert!(c["blocks"].as_u64().unwrap_or(0) > 0, "{c:#}");
        assert_eq!(c["checked"], c["blocks"], "{c:#}");
        assert_eq!(
            (&c["missing"], &c["wrong"], &c["skipped"]),
            (&json!(0), &json!(0), &json!(0)),
            "{}: {c:#}",
            n.name
        );
    }
    let sa = &stopped[0]["writeback"];
    assert!(sa["connections"].as_u64().unwrap() >= 2, "{sa:#}");
    println!(
        "link {link} cut with {} and {} writes done; wb-data on link {other} after {:.0} ms; A: {} writes ({} redone, {} redo timeouts), p50 {} µs p99 {} µs; B: {} writes",
        before[0],
        before[1],
        moved.as_secs_f64() * 1e3,
        sa["writes"],
        sa["redone"],
        sa["redo_timeouts"],
        sa["latency_p50_us"],
        sa["latency_p99_us"],
        stopped[1]["writeback"]["writes"],
    );
}

/// The lines of a destage ledger (`unit block crc`) of `unit`.
fn destaged_blocks(path: &std::path::Path, unit: u64) -> std::collections::BTreeSet<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let u: u64 = f.next()?.parse().ok()?;
            let b: u64 = f.next()?.parse().ok()?;
            (u == unit).then_some(b)
        })
        .collect()
}

/// A takeover hands the partner's mirrored blocks to the survivor's destage ledger, and the
/// restarted node never destages or mirrors them again: its recovery (before it serves)
/// discards its table of the epoch the survivor's mailbox record names as taken over, and the
/// blocks it writes afterwards are mirrored as usual.
#[test]
#[ignore = "root: needs the ilA/ilB namespaces (soft-roce/test-all)"]
fn a_node_taken_over_discards_its_write_back_table_at_restart() {
    topology(2);
    let dir = temp_dir("wb-takeover");
    let (gb, wbdir) = (dir.join("gb"), dir.join("wb"));
    std::fs::create_dir_all(&gb).unwrap();
    let (a, b) = pair(&dir, 2, netns, fabric(), 19150);
    let mut na = Node::new(&dir, "a", "ilA", a, &[]);
    let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
    for n in [&mut na, &mut nb] {
        n.extra = vec![
            "--giveback".into(),
            gb.display().to_string(),
            "--writeback".into(),
            format!("{}:2000:2048:512", wbdir.display()),
        ];
        n.start();
    }
    for n in [&na, &nb] {
        n.wait_giveback("both nodes up", |r| {
            r.state == "UP" && r.partner_state.as_deref() == Some("UP")
        });
        wait_wb(n, "write-back recovered and connected", |v| {
            v["writeback"]["epoch"] == json!(1) && v["writeback"]["connected"] == json!(true)
        });
    }
    // 32 writes of 8 blocks over 256 blocks: every block dirty once, none destaged.
    let write = json!({"write": {"count": 32, "blocks": 8, "window": 4, "range": 256}});
    wb(&na, write.clone());
    completed_at_least(&na, 32);
    let before = wait_wb(&na, "in sync", |v| v["writeback"]["in_sync"] == json!(true));
    assert_eq!(before["writer"]["mirrored"], json!(32), "{before:#}");
    assert_eq!(
        before["writeback"]["dirty_blocks"],
        json!(256),
        "{before:#}"
    );

    na.kill();
    let r = nb.wait_giveback("takeover", |r| {
        r.state == "TAKEOVER" && r.took_over_writeback == 1
    });
    assert!(r.serving.contains(&1), "{r:#?}");
    let ledger = wbdir.join("destaged-2.log");
    assert_eq!(destaged_blocks(&ledger, 1).len(), 256, "B's ledger");
    assert_eq!(wb(&nb, json!({}))["writeback"]["taken_over"], json!(256));

    na.start();
    na.wait_giveback("giveback done", |r| {
        r.state == "UP" && r.serving == vec![1] && r.own_writeback_epoch == 2
    });
    let after = wait_wb(&na, "recovered and in sync", |v| {
        v["writeback"]["epoch"] == json!(2) && v["writeback"]["in_sync"] == json!(true)
    });
    assert_eq!(
        after["writeback"]["discarded_blocks"],
        json!(256),
        "{after:#}"
    );
    assert_eq!(after["writeback"]["dirty_blocks"], json!(0), "{after:#}");
    assert_eq!(wb(&nb, json!({}))["writeback"]["mirror_blocks"], json!(0));
    // Written again: mirrored, and B's image holds exactly the new data.
    wb(&na, write);
    completed_at_least(&na, 32);
    let v = wb(&na, json!({"stop": true}));
    assert_eq!(v["writer"]["mirrored"], json!(32), "{v:#}");
    assert_eq!(v["writer"]["errors"], json!(0), "{v:#}");
    let c = wb(&nb, json!({"check": true}))["check"].clone();
    assert_eq!(
        (&c["checked"], &c["missing"], &c["wrong"]),
        (&json!(256), &json!(0), &json!(0)),
        "{c:#}"
    );
    println!(
        "write-back taken over: B destaged 256 blocks of A's epoch 1; A restarted, discarded {} blocks, epoch 2; B refused {} late RQRs of the taken table",
        after["writeback"]["discarded_blocks"],
        wb(&nb, json!({}))["writeback"]["refused_taken_over"],
    );
}
