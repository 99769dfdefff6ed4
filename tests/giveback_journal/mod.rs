//! Reading both nodes' service journals (written by `JournalHooks`): crash markers and the
//! "never served by both nodes at once" check the giveback tests share.
#![allow(dead_code)]

use interlink::clients::giveback::service::{journal_path, read_journal, JournalEntry};
use std::io::Write;
use std::path::Path;

/// Appends a `crashed` line to `node`'s journal: a crashed node serves nothing from now on.
pub fn note_crash(dir: &Path, node: u32) {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(journal_path(dir, node))
        .unwrap();
    writeln!(f, "{us} {node} crashed 0").unwrap();
}

/// Both journals (nodes 1 and 2), merged in time order.
pub fn journals(dir: &Path) -> Vec<JournalEntry> {
    let mut entries = read_journal(&journal_path(dir, 1)).unwrap();
    entries.extend(read_journal(&journal_path(dir, 2)).unwrap());
    entries.sort_by_key(|e| e.at_us);
    entries
}

/// Per disk set, the intervals during which each node served it never overlap. Returns, for
/// each handover of a set from one node to the other (stop on one, start on the other), the
/// gap in microseconds.
pub fn assert_never_served_twice(dir: &Path) -> Vec<(u32, u128)> {
    let entries = journals(dir);
    let mut gaps = Vec::new();
    for set in [1u32, 2] {
        let mut servers: Vec<u32> = Vec::new();
        let mut last_stop: Option<(u32, u128)> = None;
        for e in entries
            .iter()
            .filter(|e| e.what == set || e.event == "crashed")
        {
            match e.event.as_str() {
                "crashed" => {
                    if servers.contains(&e.node) {
                        last_stop = Some((e.node, e.at_us));
                    }
                    servers.retain(|&n| n != e.node);
                }
                "start-serving" => {
                    assert!(
                        servers.is_empty(),
                        "set {set} started on node {} while node(s) {servers:?} served it: {entries:#?}",
                        e.node
                    );
                    if let Some((from, at)) = last_stop {
                        if from != e.node {
                            gaps.push((set, e.at_us.saturating_sub(at)));
                        }
                    }
                    servers.push(e.node);
                }
                "stop-serving" => {
                    if servers.contains(&e.node) {
                        last_stop = Some((e.node, e.at_us));
                    }
                    servers.retain(|&n| n != e.node);
                }
                _ => {}
            }
        }
    }
    gaps
}
