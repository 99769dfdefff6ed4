//! Reading both nodes' service journals (written by `JournalHooks`): crash, freeze and thaw
//! markers and the "never served by both nodes at once" check the giveback tests share.
#![allow(dead_code)]

use interlink::clients::giveback::service::{journal_path, read_journal, JournalEntry};
use std::io::Write;
use std::path::Path;

/// Appends a `crashed` line to `node`'s journal: a crashed node serves nothing from now on.
pub fn note_crash(dir: &Path, node: u32) {
    note(dir, node, "crashed");
}

/// Appends a `frozen` line (the node process was just stopped, SIGSTOP: it does nothing, so
/// it serves nothing) or a `thawed` line (SIGCONT) to `node`'s journal.
pub fn note(dir: &Path, node: u32, event: &str) {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(journal_path(dir, node))
        .unwrap();
    writeln!(f, "{us} {node} {event} 0").unwrap();
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
///
/// A node frozen (SIGSTOP) while serving a set does nothing, so it serves nothing until it is
/// thawed. If the partner started serving that set meanwhile, the thawed node must stop
/// serving it (its next event for the set is `stop-serving`, its storage access being fenced
/// by the partner's reservation until then) and must not start serving anything before that.
pub fn assert_never_served_twice(dir: &Path) -> Vec<(u32, u128)> {
    never_served_twice(dir).0
}

/// [`assert_never_served_twice`], also returning, per thaw of a node that had been taken
/// over, the microseconds from the thaw to its `stop-serving`.
pub fn never_served_twice(dir: &Path) -> (Vec<(u32, u128)>, Vec<u128>) {
    let entries = journals(dir);
    let mut gaps = Vec::new();
    let mut fenced = Vec::new();
    for set in [1u32, 2] {
        let mut servers: Vec<u32> = Vec::new();
        // Nodes frozen while serving the set.
        let mut frozen: Vec<u32> = Vec::new();
        // Thawed nodes that must stop serving the set: (node, thawed at).
        let mut stale: Vec<(u32, u128)> = Vec::new();
        let mut last_stop: Option<(u32, u128)> = None;
        for e in entries.iter().filter(|e| {
            e.what == set || matches!(e.event.as_str(), "crashed" | "frozen" | "thawed")
        }) {
            match e.event.as_str() {
                "crashed" => {
                    if servers.contains(&e.node) || frozen.contains(&e.node) {
                        last_stop = Some((e.node, e.at_us));
                    }
                    servers.retain(|&n| n != e.node);
                    frozen.retain(|&n| n != e.node);
                    stale.retain(|&(n, _)| n != e.node);
                }
                "frozen" if servers.contains(&e.node) => {
                    servers.retain(|&n| n != e.node);
                    frozen.push(e.node);
                    last_stop = Some((e.node, e.at_us));
                }
                "thawed" if frozen.contains(&e.node) => {
                    frozen.retain(|&n| n != e.node);
                    if servers.is_empty() {
                        servers.push(e.node);
                    } else {
                        stale.push((e.node, e.at_us));
                    }
                }
                "start-serving" => {
                    assert!(
                        !stale.iter().any(|&(n, _)| n == e.node),
                        "set {set}: node {} started serving again after it was thawed and taken over, before it stopped: {entries:#?}",
                        e.node
                    );
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
                    if let Some(i) = stale.iter().position(|&(n, _)| n == e.node) {
                        fenced.push(e.at_us.saturating_sub(stale[i].1));
                        stale.remove(i);
                        continue;
                    }
                    if servers.contains(&e.node) {
                        last_stop = Some((e.node, e.at_us));
                    }
                    servers.retain(|&n| n != e.node);
                }
                _ => {}
            }
        }
        assert!(
            stale.is_empty(),
            "set {set}: node(s) {stale:?} thawed after being taken over never stopped serving it: {entries:#?}"
        );
    }
    (gaps, fenced)
}
