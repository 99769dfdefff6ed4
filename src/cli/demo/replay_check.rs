//! Acknowledged vs. found: the records node B's writer logged as acknowledged (its own file,
//! `acked-2.log`, written before it counts a record; see
//! `interlink::clients::mirror::shadow::ShadowWriter`) against what survivor A's replay hook
//! wrote after the takeover (`replayed-1.log`: `seq len crc32c-hex` per record), each replayed
//! record checked against the writer's payload for its number.

use anyhow::{Context, Result};
use interlink::clients::mirror::shadow::writer_payload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// The outcome of the comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritesCheck {
    /// Records B acknowledged before it was killed.
    pub acknowledged: u64,
    /// Of those, records found intact in A's replay.
    pub found: u64,
    /// Records A replayed (intact).
    pub replayed: u64,
    /// Replayed records B appended but never saw acknowledged (in flight at the kill; at most
    /// the writer's window).
    pub beyond_acknowledged: u64,
    /// Of the acknowledged, records acknowledged with the partner absent (local only).
    pub unmirrored: u64,
    /// Replayed lines whose length or checksum differ from the writer's payload.
    pub corrupt: u64,
    /// The first acknowledged records not found (at most 10).
    pub missing: Vec<u64>,
}

impl WritesCheck {
    /// Acknowledged = found, nothing corrupt, and something was written.
    pub fn ok(&self) -> bool {
        self.acknowledged > 0 && self.acknowledged == self.found && self.corrupt == 0
    }
}

/// The seqs the writer logged as acknowledged in the first generation of `acked` (a line torn
/// by kill -9 can only be the last one: skipped), and how many of them were unmirrored.
fn acknowledged(text: &str) -> (BTreeSet<u64>, u64) {
    acknowledged_where(text, |section, _| section == 0)
}

/// The seqs acknowledged in every section of generation `generation` of an acked log.
fn acknowledged_in(text: &str, generation: u64) -> (BTreeSet<u64>, u64) {
    acknowledged_where(text, |_, g| g == Some(generation))
}

/// The seqs acknowledged in the sections of an acked log that `take` accepts (by their index
/// and generation), and how many of them were unmirrored.
fn acknowledged_where(
    text: &str,
    take: impl Fn(usize, Option<u64>) -> bool,
) -> (BTreeSet<u64>, u64) {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let (mut seqs, mut unmirrored) = (BTreeSet::new(), 0);
    let (mut section, mut inside) = (None::<usize>, false);
    for l in complete.lines() {
        let mut it = l.split_whitespace();
        match (it.next(), it.next()) {
            (Some("generation"), g) => {
                let n = section.map_or(0, |s| s + 1);
                section = Some(n);
                inside = take(n, g.and_then(|g| g.parse().ok()));
            }
            _ if !inside => {}
            (Some("unmirrored"), Some(n)) => {
                if let Ok(n) = n.parse() {
                    seqs.insert(n);
                    unmirrored += 1;
                }
            }
            (Some(n), None) => {
                if let Ok(n) = n.parse() {
                    seqs.insert(n);
                }
            }
            _ => {} // checkpoint lines
        }
    }
    (seqs, unmirrored)
}

/// Compares B's acknowledged records with A's replay in `shared`; `size` is the writer's
/// record size.
pub fn check(shared: &Path, size: usize) -> Result<WritesCheck> {
    let acked_path = shared.join("acked-2.log");
    let text = std::fs::read_to_string(&acked_path)
        .with_context(|| format!("read {}", acked_path.display()))?;
    let (acked, unmirrored) = acknowledged(&text);
    let replayed_path = shared.join("replayed-1.log");
    let text = std::fs::read_to_string(&replayed_path).unwrap_or_default();
    let (replayed, corrupt) = records(&text, size, |_| true);
    Ok(compare(acked, unmirrored, replayed, corrupt))
}

/// After a power loss of both nodes: compares what B's writer acknowledged in its log of
/// `generation` (every writer section of it) with what B's own recovery at start applied of
/// that log (`replay G AFTER own` views in `replayed-2.log`) and what A replayed of it if A
/// took B over first (`replayed-1.log`).
pub fn check_power_loss(shared: &Path, size: usize, generation: u64) -> Result<WritesCheck> {
    let acked_path = shared.join("acked-2.log");
    let text = std::fs::read_to_string(&acked_path)
        .with_context(|| format!("read {}", acked_path.display()))?;
    let (acked, unmirrored) = acknowledged_in(&text, generation);
    let mut replayed = BTreeSet::new();
    let mut corrupt = 0;
    for (file, own) in [("replayed-2.log", true), ("replayed-1.log", false)] {
        let text = std::fs::read_to_string(shared.join(file)).unwrap_or_default();
        let (r, c) = records(&text, size, |head| {
            head.get(1) == Some(&generation.to_string().as_str())
                && (head.get(3) == Some(&"own")) == own
        });
        for seq in r {
            if !replayed.insert(seq) {
                corrupt += 1; // applied twice
            }
        }
        corrupt += c;
    }
    Ok(compare(acked, unmirrored, replayed, corrupt))
}

/// The intact records of a replayed log in the views whose header (`replay G C [own]`, split
/// in words) `view` accepts, and the count of corrupt lines among them.
fn records(text: &str, size: usize, view: impl Fn(&[&str]) -> bool) -> (BTreeSet<u64>, u64) {
    let (mut replayed, mut corrupt, mut taken) = (BTreeSet::new(), 0, true);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"replay") {
            taken = view(&f);
            continue;
        }
        if !taken {
            continue;
        }
        let parsed = match f.as_slice() {
            [seq, len, crc] => seq
                .parse::<u64>()
                .ok()
                .zip(len.parse::<usize>().ok())
                .zip(u32::from_str_radix(crc, 16).ok()),
            _ => None,
        };
        match parsed {
            Some(((seq, len), crc))
                if len == size && crc == crc32c::crc32c(&writer_payload(seq, size)) =>
            {
                replayed.insert(seq);
            }
            _ => corrupt += 1,
        }
    }
    (replayed, corrupt)
}

fn compare(
    acked: BTreeSet<u64>,
    unmirrored: u64,
    replayed: BTreeSet<u64>,
    corrupt: u64,
) -> WritesCheck {
    let found = acked.intersection(&replayed).count() as u64;
    WritesCheck {
        acknowledged: acked.len() as u64,
        found,
        replayed: replayed.len() as u64,
        beyond_acknowledged: replayed.difference(&acked).count() as u64,
        unmirrored,
        corrupt,
        missing: acked.difference(&replayed).take(10).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, size: usize) -> String {
        let p = writer_payload(seq, size);
        format!("{seq} {} {:08x}\n", p.len(), crc32c::crc32c(&p))
    }

    #[test]
    fn compares_acknowledged_with_replayed() {
        let dir = std::env::temp_dir().join(format!("il-demo-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("acked-2.log"),
            "generation 1\n1\n2\nunmirrored 3\ncheckpoint 2\ngeneration 2\n9\n4",
        )
        .unwrap();
        // As the node's replay hook writes it: a header line per replay, then the records.
        let replay: String = std::iter::once("replay 1 0\n".to_string())
            .chain((1..=4).map(|s| line(s, 64)))
            .collect();
        std::fs::write(dir.join("replayed-1.log"), &replay).unwrap();
        let c = check(&dir, 64).unwrap();
        assert_eq!((c.acknowledged, c.found, c.replayed), (3, 3, 4));
        assert_eq!((c.beyond_acknowledged, c.unmirrored, c.corrupt), (1, 1, 0));
        assert!(c.ok());

        // Record 2 lost, record 4 corrupt.
        let replay = format!("{}{}4 64 00000000\n", line(1, 64), line(3, 64));
        std::fs::write(dir.join("replayed-1.log"), replay).unwrap();
        let c = check(&dir, 64).unwrap();
        assert_eq!((c.found, c.corrupt, c.missing.clone()), (2, 1, vec![2]));
        assert!(!c.ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_power_loss_is_checked_against_the_own_recovery() {
        let dir = std::env::temp_dir().join(format!("il-demo-power-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("acked-2.log"),
            "generation 1\n1\ngeneration 5\n1\n2\ngeneration 5\n3\n4\n",
        )
        .unwrap();
        // B's own recovery of generation 5; A's view of another node's log is ignored.
        let own: String = std::iter::once("replay 5 0 own\n".to_string())
            .chain((1..=5).map(|s| line(s, 64)))
            .chain(std::iter::once("replay 8 0 own\n".into()))
            .chain((1..=9).map(|s| line(s, 64)))
            .collect();
        std::fs::write(dir.join("replayed-2.log"), &own).unwrap();
        std::fs::write(dir.join("replayed-1.log"), "replay 0 0\n").unwrap();
        let c = check_power_loss(&dir, 64, 5).unwrap();
        assert_eq!((c.acknowledged, c.found, c.beyond_acknowledged), (4, 4, 1));
        assert!(c.ok(), "{c:?}");
        // A record applied by both the recovery and a takeover counts as corrupt.
        std::fs::write(
            dir.join("replayed-1.log"),
            format!("replay 5 0\n{}", line(4, 64)),
        )
        .unwrap();
        let c = check_power_loss(&dir, 64, 5).unwrap();
        assert_eq!(c.corrupt, 1);
        assert!(!c.ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
