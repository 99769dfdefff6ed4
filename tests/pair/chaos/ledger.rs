//! The chaos suite's bookkeeping of shadow-log records: what each writer acknowledged (its
//! `acked-<node>.log`, one section per log generation) against what was applied of that log:
//! by the partner when it replayed it (`replayed-<partner>.log`, one view per takeover), by
//! the writer's own recovery at start when nobody had (`replayed-<node>.log`, views headed
//! `replay G C own`), plus a final, non-consuming read of the live log at the end of a run.
//! Within a generation the own views come first: a node recovers its own log only while its
//! partner has not replayed it, and once the partner has, the node starts a new generation.
//!
//! For every generation and every view of it, in order:
//!
//! - the view holds consecutive records, each with the writer's payload;
//! - no record is replayed twice (each view starts after the previous one), and none at or
//!   before a checkpoint the writer saw mirrored;
//! - every record the writer had acknowledged when the view was taken and that lies after
//!   the view's start is in it (lost otherwise), and the view starts no later than the last
//!   checkpoint the writer asked for or the previous view's end (what it skips is lost);
//! - at most a window of records beyond the writer's last acknowledgement (appended, their
//!   acknowledgement never seen).
//!
//! A generation that ended with its process (killed) must have been replayed: with no view,
//! its records after the last checkpoint asked for are lost.

use std::collections::BTreeSet;
use std::ops::Range;

/// One log generation's acknowledged records, as the writer logged them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// The log generation.
    pub id: u64,
    /// Acknowledged records in acknowledgement order (mirrored or not).
    pub acked: Vec<u64>,
    /// Of them, acknowledged with the partner absent.
    pub unmirrored: u64,
    /// The last checkpoint logged as mirrored.
    pub checkpoint: u64,
    /// The last checkpoint asked for.
    pub asked: u64,
}

/// Parses an acked log (complete lines only: a line torn by kill -9 is the last one).
pub fn parse_acked(text: &str) -> Vec<Generation> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut gens: Vec<Generation> = Vec::new();
    for l in complete.lines() {
        let mut it = l.split_whitespace();
        let (first, second) = (it.next(), it.next());
        if let (Some("generation"), Some(g)) = (first, second) {
            gens.push(Generation {
                id: g.parse().expect("generation"),
                ..Generation::default()
            });
            continue;
        }
        let g = gens
            .last_mut()
            .expect("acked log starts with its generation");
        match (first, second) {
            (Some("checkpoint"), Some(n)) => g.checkpoint = n.parse().expect("checkpoint"),
            (Some("checkpoint-asked"), Some(n)) => g.asked = n.parse().expect("asked"),
            (Some("unmirrored"), Some(n)) => {
                g.unmirrored += 1;
                g.acked.push(n.parse().expect("seq"));
            }
            (Some(n), None) => g.acked.push(n.parse().expect("seq")),
            other => panic!("bad acked log line {other:?}"),
        }
    }
    gens
}

/// What one replay (or the final read) found of a partner's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The log generation.
    pub generation: u64,
    /// The checkpoint in force.
    pub checkpoint: u64,
    /// The records, in replay order.
    pub seqs: Vec<u64>,
    /// Records whose length or checksum is not the writer's payload.
    pub bad: u64,
    /// Applied by the writer's own recovery at start (not by a takeover).
    pub own: bool,
}

/// Parses a replayed log: `replay G C` heads each replay, then `seq len crc32c-hex` lines
/// checked against `payload(seq)`.
pub fn parse_replayed(text: &str, payload: impl Fn(u64) -> Vec<u8>) -> Vec<View> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut views: Vec<View> = Vec::new();
    for l in complete.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"replay") {
            views.push(View {
                generation: f[1].parse().expect("generation"),
                checkpoint: f[2].parse().expect("checkpoint"),
                own: f.get(3) == Some(&"own"),
                ..View::default()
            });
            continue;
        }
        let v = views
            .last_mut()
            .expect("replayed log starts with a replay line");
        let seq: u64 = f[0].parse().expect("seq");
        let p = payload(seq);
        let len: usize = f[1].parse().expect("len");
        if len != p.len() || u32::from_str_radix(f[2], 16).ok() != Some(crc32c::crc32c(&p)) {
            v.bad += 1;
        }
        v.seqs.push(seq);
    }
    views
}

/// The number of takeover replays (not own recoveries) in a replayed log so far.
pub fn view_count(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("replay ") && !l.ends_with(" own"))
        .count()
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records acknowledged.
    pub acknowledged: u64,
    /// Of them, acknowledged unmirrored.
    pub unmirrored: u64,
    /// Records replayed (by takeovers, own recoveries and the final read).
    pub replayed: u64,
    /// Of them, applied by the writer's own recovery at start.
    pub replayed_own: u64,
    /// Replayed records whose acknowledgement the writer never logged.
    pub unacknowledged: u64,
    /// Acknowledged records not found where they had to be.
    pub lost: u64,
    /// Records replayed twice (or replayed though a mirrored checkpoint covered them).
    pub duplicates: u64,
    /// Everything wrong, in words.
    pub problems: Vec<String>,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, o: &Tally) {
        self.acknowledged += o.acknowledged;
        self.unmirrored += o.unmirrored;
        self.replayed += o.replayed;
        self.replayed_own += o.replayed_own;
        self.unacknowledged += o.unacknowledged;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.problems.extend(o.problems.iter().cloned());
    }
}

/// Checks one writer's acked log against the partner's views of its log (`views`: every
/// replay in order, then the final read). `window`: the writer's appends in flight. A writer
/// frozen (SIGSTOP) while its partner took it over is judged like any other: what it
/// acknowledged after it resumed must be in a view too (its serving lease holds them).
pub fn check_writer(acked_text: &str, views: &[View], window: u64) -> Tally {
    let gens = parse_acked(acked_text);
    let mut t = Tally::default();
    let known_gens: BTreeSet<u64> = gens.iter().map(|g| g.id).collect();
    for v in views.iter().filter(|v| !known_gens.contains(&v.generation)) {
        // A generation whose writer never started (a node killed during its bring-up).
        t.replayed += v.seqs.len() as u64;
        t.unacknowledged += v.seqs.len() as u64;
        if v.seqs.len() as u64 > window {
            t.problems.push(format!(
                "{} records replayed of generation {} that acknowledged nothing",
                v.seqs.len(),
                v.generation
            ));
        }
    }
    for (gi, g) in gens.iter().enumerate() {
        t.acknowledged += g.acked.len() as u64;
        t.unmirrored += g.unmirrored;
        if !g.acked.iter().enumerate().all(|(i, s)| *s == i as u64 + 1) {
            t.problems.push(format!(
                "generation {}: acknowledgements are not 1.. in order",
                g.id
            ));
        }
        let mut lost: BTreeSet<u64> = BTreeSet::new();
        let mut prev_last: Option<u64> = None;
        // Own recoveries first (see the module docs); indices stay those of `views`.
        let mut mine: Vec<usize> = (0..views.len())
            .filter(|&i| views[i].generation == g.id)
            .collect();
        mine.sort_by_key(|&i| !views[i].own);
        if mine.is_empty() && gi + 1 < gens.len() {
            lost.extend(g.acked.iter().filter(|s| **s > g.asked));
        }
        for &i in &mine {
            let v = &views[i];
            let known = g;
            t.replayed += v.seqs.len() as u64;
            if v.own {
                t.replayed_own += v.seqs.len() as u64;
            }
            if v.bad > 0 {
                t.problems.push(format!(
                    "generation {}, view {i}: {} records with a wrong payload",
                    g.id, v.bad
                ));
            }
            if !v.seqs.windows(2).all(|w| w[1] == w[0] + 1) {
                t.problems.push(format!(
                    "generation {}, view {i}: records not consecutive",
                    g.id
                ));
            }
            let prev = prev_last.unwrap_or(0);
            let start = v
                .seqs
                .first()
                .map_or(v.checkpoint.max(prev), |f| f.saturating_sub(1));
            let last = v.seqs.last().copied().unwrap_or(start);
            let again = v
                .seqs
                .iter()
                .filter(|s| prev_last.is_some_and(|p| **s <= p) || **s <= known.checkpoint)
                .count() as u64;
            if again > 0 {
                t.duplicates += again;
                t.problems.push(format!(
                    "generation {}, view {i}: {again} records replayed again (previous view ended at {prev}, checkpoint {} mirrored)",
                    g.id, known.checkpoint
                ));
            }
            let justified = known.asked.max(prev);
            // A takeover replays everything acknowledged by then; an own recovery may be cut
            // short by a crash, and the next view of the generation goes on after it.
            let cut_short = v.own && Some(&i) != mine.last();
            lost.extend(
                known
                    .acked
                    .iter()
                    .filter(|s| (**s > justified && **s <= start) || (**s > last && !cut_short)),
            );
            let beyond = v
                .seqs
                .iter()
                .filter(|s| **s > known.acked.last().copied().unwrap_or(0))
                .count() as u64;
            t.unacknowledged += beyond;
            if beyond > window {
                t.problems.push(format!(
                    "generation {}, view {i}: {beyond} records beyond the last acknowledged, window {window}",
                    g.id
                ));
            }
            prev_last = Some(prev.max(last));
        }
        if !lost.is_empty() {
            t.problems.push(format!(
                "generation {}: {} acknowledged records lost: {:?}..",
                g.id,
                lost.len(),
                lost.iter().take(8).collect::<Vec<_>>()
            ));
        }
        t.lost += lost.len() as u64;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(g: u64, cp: u64, seqs: Range<u64>) -> View {
        View {
            generation: g,
            checkpoint: cp,
            seqs: seqs.collect(),
            bad: 0,
            own: false,
        }
    }

    fn own(g: u64, cp: u64, seqs: Range<u64>) -> View {
        View {
            own: true,
            ..view(g, cp, seqs)
        }
    }

    #[test]
    fn own_recoveries_count_as_applied_and_are_checked_like_replays() {
        let text = "replay 7 3 own\n4 8 0\nreplay 9 0\n";
        let v = parse_replayed(text, |_| Vec::new());
        assert_eq!((v[0].own, v[1].own), (true, false));
        assert_eq!(view_count(text), 1);
        // Recovered by the writer itself: nothing lost.
        let t = check_writer(ACKED, &[own(7, 3, 4..7)], 4);
        assert_eq!((t.lost, t.duplicates), (0, 0), "{:?}", t.problems);
        // An interrupted recovery, then a takeover from the checkpoint it moved: exact.
        let t = check_writer(ACKED, &[view(7, 4, 5..7), own(7, 3, 4..5)], 4);
        assert_eq!((t.lost, t.duplicates), (0, 0), "{:?}", t.problems);
        // The takeover replays what the recovery had applied: caught.
        let t = check_writer(ACKED, &[view(7, 3, 4..7), own(7, 3, 4..6)], 4);
        assert_eq!(t.duplicates, 2);
        // An own recovery cut short that nothing went on after: the rest is lost.
        let t = check_writer(ACKED, &[own(7, 3, 4..5)], 4);
        assert_eq!(t.lost, 1);
    }

    const ACKED: &str = "generation 7\n1\n2\n3\ncheckpoint-asked 3\ncheckpoint 3\n4\n5\n";

    #[test]
    fn exact_replay_passes_and_each_fault_is_caught() {
        let ok = check_writer(ACKED, &[view(7, 3, 4..7)], 4);
        assert_eq!((ok.lost, ok.duplicates, ok.unacknowledged), (0, 0, 1));
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
        let short = check_writer(ACKED, &[view(7, 3, 4..5)], 4);
        assert_eq!(short.lost, 1);
        let twice = check_writer(ACKED, &[view(7, 3, 4..6), view(7, 3, 5..6)], 4);
        assert_eq!(twice.duplicates, 1);
        let applied = check_writer(ACKED, &[view(7, 0, 3..6)], 4);
        assert_eq!(applied.duplicates, 1);
        let skipped = check_writer(ACKED, &[view(7, 3, 6..6)], 4);
        assert_eq!(skipped.lost, 2);
        let never = check_writer(&format!("{ACKED}generation 8\n"), &[], 4);
        assert_eq!(never.lost, 2);
    }

    #[test]
    fn what_a_frozen_writer_acknowledged_after_the_takeover_replay_is_lost() {
        // Frozen after 2; the partner's takeover replayed 1..=2; resumed, it acknowledged
        // 3 and 4 before it halted: nobody applies them.
        let text = "generation 7\n1\n2\n3\n4\n";
        let t = check_writer(text, &[view(7, 0, 1..3)], 4);
        assert_eq!(t.lost, 2);
        // A takeover replay holds everything the generation acknowledged (the writer
        // acknowledges nothing after it, and recovers into a new generation).
        let t = check_writer(text, &[view(7, 0, 1..5)], 4);
        assert_eq!((t.lost, t.duplicates), (0, 0), "{:?}", t.problems);
    }
}
