//! The NVRAM on persistent memory (DAX), in the Soft-RoCE VM with emulated NVDIMMs
//! (`soft-roce/vm --pmem MB`, which mounts an fsdax namespace at `INTERLINK_PMEM_DIR` and
//! names a devdax device in `INTERLINK_PMEM_DEVDAX`):
//!
//! - two node processes in ilA/ilB run the shadow log and the mirrored write-back with
//!   `--nvram dax` on the fsdax mount (their status says so); A appends and is killed (-9); A's log file, reopened as DAX,
//!   holds every record A acknowledged, and A restarted on it recovers them;
//! - a devdax device keeps what was persisted across reopen, and `auto` picks DAX on the
//!   fsdax mount.
//!
//! Root and the VM only, so `#[ignore]`: `soft-roce/test-all` runs them in its VM run.

use crate::manager_pair;
use crate::netns_node;

use interlink::clients::mirror::shadow::{check_payload, log_path};
use interlink::clients::mirror::{replay, DaxMode, DaxNvram, NvramBacking, NvramKind, Persistence};
use manager_pair::*;
use netns_node::*;
use serde_json::json;
use std::path::{Path, PathBuf};

const SHADOW: &str = "shadow";
const LOG_LEN: usize = 1 << 20;

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run this test inside `soft-roce/vm --pmem MB`")
    }))
}

/// The sequence numbers A's writer logged as acknowledged (`acked-1.log`).
fn acked(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).expect("acked log");
    // A line torn by kill -9 can only be the last one, without its newline: skip it.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next()) {
                (Some(n), None) => Some(n.parse::<u64>().expect("seq")),
                _ => None,
            }
        })
        .collect()
}

#[test]
#[ignore = "root, in soft-roce/vm --pmem (soft-roce/test-all)"]
fn shadow_log_on_fsdax_keeps_every_acknowledged_record_across_kill() {
    let pmem = env_path("INTERLINK_PMEM_DIR");
    topology(1);
    let dir = temp_dir("dax");
    let shared = pmem.join(format!("shadow-{}", std::process::id()));
    std::fs::create_dir_all(shared.join("wb")).unwrap();
    let (a, b) = pair(&dir, 1, netns, fabric(), 18960);
    let mut na = Node::new(&dir, "a", "ilA", a, &[]);
    let mut nb = Node::new(&dir, "b", "ilB", b, &[]);
    let args = vec![
        "--shadow".to_string(),
        format!("{}:1M:60000", shared.display()),
        "--writeback".into(),
        format!("{}:60000:64:4096", shared.join("wb").display()),
        "--nvram".into(),
        "dax".into(),
    ];
    for n in [&mut na, &mut nb] {
        n.extra = args.clone();
        n.start();
    }
    for n in [&na, &nb] {
        let st = n.wait_client(SHADOW, "shadow connected", WAIT, |v| {
            v["shadow"]["connected"] == json!(true)
        });
        // MAP_SYNC is in effect: the node opened its log as fsdax, not as a file.
        let nvram = st["nvram"].as_str().unwrap_or_default().to_string();
        assert!(nvram.starts_with("fsdax ("), "{} nvram {nvram:?}", n.name);
        // The write-back's table and partner image are on the DAX mount too.
        let wb = n.client("writeback", json!({}));
        let nvram = wb["nvram"].as_str().unwrap_or_default().to_string();
        assert!(
            nvram.starts_with("fsdax ("),
            "{} write-back nvram {nvram:?}",
            n.name
        );
    }
    na.client(
        SHADOW,
        json!({"write": {"size": 256, "window": 16, "checkpoint_every": 400}}),
    );
    na.wait_client(SHADOW, "1000 acknowledged", WAIT, |v| {
        v["writer"]["acknowledged"].as_u64().unwrap_or(0) >= 1000
    });
    let p50 = na.client(SHADOW, json!({}))["shadow"]["latency_p50_us"].clone();
    na.kill();
    let acked = acked(&shared.join("acked-1.log"));
    let last_acked = *acked.last().expect("A acknowledged records");

    // A's NVRAM, reopened as DAX: the records after its checkpoint run through everything A
    // acknowledged.
    let nv = DaxNvram::open(&log_path(&shared, 1), LOG_LEN).expect("reopen A's log as DAX");
    assert_eq!(nv.mode(), DaxMode::FsDax);
    let r = replay(nv.bytes(), None).expect("A's log replays");
    drop(nv);
    let seqs: Vec<u64> = r.records.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "records in order without gaps"
    );
    for rec in &r.records {
        assert_eq!(
            check_payload(&rec.payload),
            Some(rec.seq),
            "record {}",
            rec.seq
        );
    }
    let last = seqs.last().copied().unwrap_or(r.checkpoint);
    assert!(
        last >= last_acked,
        "A acknowledged {last_acked}, its DAX log ends at {last} (checkpoint {})",
        r.checkpoint
    );
    assert!(
        r.checkpoint < last_acked,
        "the checkpoint ({}) covers no acknowledged record of the tail",
        r.checkpoint
    );

    // A restarted on the same DAX files recovers its log: the records nobody applied are
    // its own view in replayed-1.log, through the last acknowledged one.
    na.start();
    let st = na.wait_client(SHADOW, "shadow connected", WAIT, |v| {
        v["shadow"]["connected"] == json!(true)
    });
    assert!(st["nvram"]
        .as_str()
        .unwrap_or_default()
        .starts_with("fsdax ("));
    let text = std::fs::read_to_string(shared.join("replayed-1.log")).expect("replayed-1.log");
    let own: Vec<u64> = text
        .lines()
        .skip_while(|l| !(l.starts_with("replay ") && l.ends_with(" own")))
        .skip(1)
        .take_while(|l| !l.starts_with("replay "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        own.first().copied(),
        Some(r.checkpoint + 1),
        "recovered view:\n{text}"
    );
    assert!(
        own.last().copied() >= Some(last_acked),
        "recovery ends at {:?}, A acknowledged {last_acked}",
        own.last()
    );
    println!(
        "fsdax: A killed with {} acknowledged (through {last_acked}); its DAX log holds {}..={last} after checkpoint {}; restarted, it recovered {} records; append p50 {} µs",
        acked.len(),
        r.checkpoint + 1,
        r.checkpoint,
        own.len(),
        p50,
    );
    na.kill();
    nb.kill();
    std::fs::remove_dir_all(&shared).unwrap();
}

#[test]
#[ignore = "root, in soft-roce/vm --pmem (soft-roce/test-all)"]
fn devdax_keeps_what_it_persisted_and_auto_picks_dax() {
    let dev = env_path("INTERLINK_PMEM_DEVDAX");
    let len = 4 << 20;
    let stamp = std::process::id().to_le_bytes();
    {
        let mut nv = DaxNvram::open(&dev, len).expect("open devdax");
        assert_eq!(nv.mode(), DaxMode::DevDax);
        assert!(matches!(
            nv.persistence(),
            Persistence::Dax {
                mode: DaxMode::DevDax,
                ..
            }
        ));
        for off in [0, 4093, len - 4] {
            nv.bytes_mut()[off..off + 4].copy_from_slice(&stamp);
            nv.persist(off, 4).expect("persist");
        }
        assert!(nv.persist(len - 2, 4).is_err());
    }
    let nv = NvramKind::Dax.open(&dev, len).expect("reopen devdax");
    for off in [0, 4093, len - 4] {
        assert_eq!(&nv.bytes()[off..off + 4], &stamp, "offset {off}");
    }
    drop(nv);

    let file = env_path("INTERLINK_PMEM_DIR").join(format!("auto-{}", std::process::id()));
    let auto = NvramKind::Auto.open(&file, 1 << 20).expect("auto on fsdax");
    assert!(
        matches!(
            auto.persistence(),
            Persistence::Dax {
                mode: DaxMode::FsDax,
                ..
            }
        ),
        "{}",
        auto.persistence()
    );
    println!(
        "devdax {}: ok; auto on fsdax: {}",
        dev.display(),
        auto.persistence()
    );
    drop(auto);
    std::fs::remove_file(&file).unwrap();
}
