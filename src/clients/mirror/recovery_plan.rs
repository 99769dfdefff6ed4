//! The decision of the recovery at start (F5.6), sans-IO: given the image the previous run
//! left in the local NVRAM, the own-replay cursor and what the partner says it replayed of this
//! node's log at a takeover, what the starting node must do before it appends anything. The
//! shadow driver ([`ShadowMirror::recover`](super::ShadowMirror::recover)) carries it out; the
//! swarm runs the same function.
//!
//! Exactly one of:
//!
//! - [`RecoveryPlan::Fresh`]: no log (no superblock magic): a first start.
//! - [`RecoveryPlan::ReplayedByPartner`]: the partner's replay cursor says a takeover
//!   replayed this log's generation whole (`complete`: only then may the survivor have served
//!   this node's disks) or a newer one: the records after the cursor were not in the copy,
//!   never applied by anyone, and are dropped (counted).
//! - [`RecoveryPlan::ReplayHere`]: nobody applied the records after the checkpoint: they are
//!   applied here, after the own-replay cursor if an interrupted recovery left one, and after
//!   the partner's cursor if its takeover replay of this generation stopped midway.
//!
//! A log that exists but cannot be read is an error, never a fresh start.
//!
//! Lost or corrupt NVRAM (a replaced controller, case c of F5.6): [`plan_start`] also takes
//! what the mailbox knows of the own log ([`OwnLogKnowledge`]), and answers
//! [`RecoveryPlan::FetchFromPartner`] when the local image cannot stand for the log that held
//! acknowledged records; once the partner's copy is read, [`plan_fetched`] decides on it
//! (one of the three above) or refuses ([`ShadowError::NoValidCopy`]). The rules:
//!
//! | local image | mailbox: no log ever (0) | mailbox: generation G | no mailbox |
//! |---|---|---|---|
//! | a readable log of G or newer | as above | as above | as above |
//! | a readable log older than G | - | fetch | - |
//! | blank (all zeros) | Fresh | replayed by the partner if its cursor names G or newer, else fetch | Fresh |
//! | corrupt (not blank, not readable) | `RecoverUnreadable` | as blank | fetch |
//!
//! A fetched copy is used when it is a readable log, of G or newer, the mailbox does not
//! mark the partner's copy outdated (records were acknowledged without it), and the mailbox
//! confirms it complete for the partner incarnation it was read from (F5.7: a full send
//! completed there, so no cut-short re-send left it partial); otherwise `NoValidCopy` (or,
//! without a mailbox, `RecoverUnreadable`).

use super::error::ShadowError;
use super::log_format::{decode_superblock, LogImageError};
use super::log_replay::{replay, LogPosition, ReplayCursor, ReplayedRecord};
use std::fmt::Write as _;

/// What a starting node does with the log the previous run left (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryPlan {
    /// No log in the NVRAM: format a first generation.
    Fresh,
    /// A takeover replayed the log: format a new generation.
    ReplayedByPartner {
        /// Generation of the log.
        generation: u64,
        /// Its checkpoint in force.
        checkpoint: u64,
        /// The partner's replay cursor in this generation (None: it replayed a newer one).
        through: Option<u64>,
        /// Records after the cursor that nobody applied.
        dropped: u64,
    },
    /// Apply `records` here, in order (storing the own-replay cursor after each), then format
    /// a new generation.
    ReplayHere {
        /// Generation of the log.
        generation: u64,
        /// Its checkpoint in force.
        checkpoint: u64,
        /// The own-replay cursor an interrupted recovery left in this generation.
        resumed_after: Option<u64>,
        /// The records to apply: after the checkpoint and after the own-replay cursor.
        records: Vec<ReplayedRecord>,
    },
    /// The local image cannot stand for the own log: read the partner's copy, then decide
    /// with [`plan_fetched`].
    FetchFromPartner {
        /// The generation the mailbox records (None: no mailbox).
        recorded: Option<u64>,
        /// What the local NVRAM holds instead, for messages (`"is blank"`, ...).
        local: String,
    },
}

/// What this node's mailbox record says of its own log (F5.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnLogKnowledge {
    /// No mailbox (no giveback client): whether a log ever held acknowledged records is
    /// unknown.
    Unknown,
    /// The own mailbox record.
    Recorded {
        /// The newest generation of the own log that may hold an acknowledged record (0:
        /// none ever did).
        generation: u64,
        /// The partner's copy is outdated from here (records were acknowledged without it).
        copy_outdated: Option<LogPosition>,
        /// The partner incarnation the record names the copy complete for (F5.7: a full send
        /// completed on it; `Some(0)`: on none; `None`: no shadow log attached).
        copy_complete_for: Option<u64>,
    },
}

impl OwnLogKnowledge {
    fn generation(&self) -> Option<u64> {
        match *self {
            OwnLogKnowledge::Recorded { generation, .. } if generation != 0 => Some(generation),
            _ => None,
        }
    }
}

/// The local image, classified.
enum Local {
    /// A readable log of this generation.
    Log(u64),
    /// All zeros.
    Blank,
    /// Neither: why it cannot be read.
    Corrupt(String),
}

fn classify(image: &[u8]) -> Local {
    match decode_superblock(image) {
        Err(LogImageError::SuperblockMagic) if image.iter().all(|&b| b == 0) => Local::Blank,
        Err(LogImageError::SuperblockMagic) => {
            Local::Corrupt("no superblock magic, yet the NVRAM is not blank".into())
        }
        Err(e) => Local::Corrupt(e.to_string()),
        Ok(sb) => match replay(image, None) {
            Ok(_) => Local::Log(sb.generation),
            Err(e) => Local::Corrupt(e.to_string()),
        },
    }
}

/// [`plan_recovery`] with what the mailbox knows of the own log (see the module docs): the
/// same plans while the local image stands for the log, [`RecoveryPlan::FetchFromPartner`]
/// when only the partner's copy can, and [`ShadowError::RecoverUnreadable`] for a corrupt
/// image the mailbox says held nothing acknowledged.
pub fn plan_start(
    image: &[u8],
    own_cursor: Option<LogPosition>,
    partner_replayed: Option<ReplayCursor>,
    known: OwnLogKnowledge,
) -> Result<RecoveryPlan, ShadowError> {
    let recorded = known.generation();
    let local = match classify(image) {
        Local::Log(g) if recorded.is_none_or(|r| g >= r) => {
            return plan_recovery(image, own_cursor, partner_replayed)
        }
        Local::Log(g) => format!("holds generation {g}, older than the one the mailbox records"),
        Local::Blank if recorded.is_none() => return Ok(RecoveryPlan::Fresh),
        Local::Blank => "is blank".to_string(),
        Local::Corrupt(reason)
            if matches!(known, OwnLogKnowledge::Recorded { generation: 0, .. }) =>
        {
            // Nothing acknowledged was ever in a log: nothing to fetch, and the image is kept
            // for an operator.
            return Err(ShadowError::RecoverUnreadable { reason });
        }
        Local::Corrupt(reason) => format!("holds a log that cannot be read ({reason})"),
    };
    if let Some(g) = recorded {
        if let Some(p) = partner_replayed.filter(|p| replayed_whole(p, g)) {
            // A takeover applied that log: nothing of it is owed here. Records after the
            // partner's cursor were never mirrored; the local NVRAM that held them is gone.
            // (A replay that stopped midway asks for the copy: the rest is applied here.)
            let p = p.position;
            return Ok(RecoveryPlan::ReplayedByPartner {
                generation: g,
                checkpoint: 0,
                through: (p.generation == g).then_some(p.seq),
                dropped: 0,
            });
        }
    }
    Ok(RecoveryPlan::FetchFromPartner { recorded, local })
}

/// Decides on the partner's copy `copy` of the own log, read after
/// [`RecoveryPlan::FetchFromPartner`] (`local` its text): one of the three plans of a
/// readable log when the copy stands for the log the mailbox records, else
/// [`ShadowError::NoValidCopy`] (without a mailbox, [`ShadowError::RecoverUnreadable`]).
pub fn plan_fetched(
    copy: &[u8],
    fetched_from: u64,
    own_cursor: Option<LogPosition>,
    partner_replayed: Option<ReplayCursor>,
    known: OwnLogKnowledge,
    local: &str,
) -> Result<RecoveryPlan, ShadowError> {
    let refuse = |why: String| match known.generation() {
        Some(generation) => ShadowError::NoValidCopy {
            generation,
            local: local.to_string(),
            why,
        },
        None => {
            let mut reason = format!("the local NVRAM {local}");
            let _ = write!(reason, "; {why}");
            ShadowError::RecoverUnreadable { reason }
        }
    };
    let sb = match decode_superblock(copy) {
        Err(LogImageError::SuperblockMagic) => {
            return Err(refuse(
                "the partner's copy is blank (it never received this log, or restarted since)"
                    .into(),
            ))
        }
        Err(e) => return Err(refuse(format!("the partner's copy cannot be read: {e}"))),
        Ok(sb) => sb,
    };
    if let Some(g) = known.generation().filter(|&g| sb.generation < g) {
        return Err(refuse(format!(
            "the partner's copy is generation {}, older than {g}",
            sb.generation
        )));
    }
    if let OwnLogKnowledge::Recorded {
        copy_outdated: Some(m),
        ..
    } = known
    {
        return Err(refuse(format!(
            "the partner's copy is marked outdated from generation {} seq {} (records from there were acknowledged without it)",
            m.generation, m.seq
        )));
    }
    if let OwnLogKnowledge::Recorded {
        copy_complete_for, ..
    } = known
    {
        if fetched_from == 0 || copy_complete_for != Some(fetched_from) {
            // A partner that restarted holds what a re-send cut short may have left: a
            // readable log that lacks acknowledged records.
            return Err(refuse(format!(
                "the partner's copy is not confirmed complete for the partner's running incarnation {fetched_from} (the mailbox names {}): a re-send to it may have been cut short",
                copy_complete_for.map_or("no shadow log".to_string(), |c| c.to_string())
            )));
        }
    }
    match plan_recovery(copy, own_cursor, partner_replayed) {
        Err(ShadowError::RecoverUnreadable { reason }) => Err(refuse(format!(
            "the partner's copy cannot be read: {reason}"
        ))),
        other => other,
    }
}

/// Decides the recovery of `image` (the local log as the previous run left it): `own_cursor`
/// is the own-replay cursor in NVRAM, `partner_replayed` the partner's replay cursor of this
/// node's log (from its mailbox record). [`ShadowError::RecoverUnreadable`] for a log that
/// exists but cannot be read.
pub fn plan_recovery(
    image: &[u8],
    own_cursor: Option<LogPosition>,
    partner_replayed: Option<ReplayCursor>,
) -> Result<RecoveryPlan, ShadowError> {
    let sb = match decode_superblock(image) {
        Err(LogImageError::SuperblockMagic) => return Ok(RecoveryPlan::Fresh),
        Err(e) => {
            return Err(ShadowError::RecoverUnreadable {
                reason: e.to_string(),
            })
        }
        Ok(sb) => sb,
    };
    let g = sb.generation;
    let found = replay(image, None).map_err(|e| ShadowError::RecoverUnreadable {
        reason: e.to_string(),
    })?;
    if let Some(p) = partner_replayed.filter(|p| replayed_whole(p, g)) {
        let p = p.position;
        let through = (p.generation == g).then_some(p.seq);
        let dropped = found
            .records
            .iter()
            .filter(|r| through.is_none_or(|t| r.seq > t))
            .count() as u64;
        return Ok(RecoveryPlan::ReplayedByPartner {
            generation: g,
            checkpoint: found.checkpoint,
            through,
            dropped,
        });
    }
    // A takeover replay of this generation that stopped midway (the survivor failed inside
    // it, so it never served this node's disks from it): the records after its cursor were
    // applied by nobody and are applied here, after the later of the two cursors.
    let interrupted = partner_replayed
        .map(|p| p.position)
        .filter(|p| p.generation == g);
    let resumed_after = own_cursor
        .filter(|c| c.generation == g)
        .into_iter()
        .chain(interrupted)
        .max();
    let records = found
        .records
        .into_iter()
        .filter(|r| resumed_after.is_none_or(|c| r.seq > c.seq))
        .collect();
    Ok(RecoveryPlan::ReplayHere {
        generation: g,
        checkpoint: found.checkpoint,
        resumed_after: resumed_after.map(|c| c.seq),
        records,
    })
}

/// Whether the partner's cursor says a takeover applied log generation `g` (the survivor may
/// have served this node's disks since): a complete replay of it, or any of a newer one.
fn replayed_whole(p: &ReplayCursor, g: u64) -> bool {
    p.position.generation > g || (p.position.generation == g && p.complete)
}

/// The generation of the log formatted after a recovery: `candidate` (the clock, or a
/// configured value), raised above the previous log's and above what the partner replayed, so
/// every older record is stale for a scan and orders before the partner's cursor.
pub fn next_generation(
    candidate: u64,
    previous: Option<u64>,
    partner_replayed: Option<LogPosition>,
) -> u64 {
    let floor = previous
        .unwrap_or(0)
        .max(partner_replayed.map_or(0, |p| p.generation));
    candidate.max(floor.saturating_add(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::mirror::log::ShadowLog;
    use crate::clients::mirror::nvram::{MemoryNvram, NvramBacking};

    fn at(generation: u64, seq: u64) -> LogPosition {
        LogPosition { generation, seq }
    }

    /// The partner's cursor of a takeover replay that went through the whole copy.
    fn whole(generation: u64, seq: u64) -> ReplayCursor {
        ReplayCursor {
            position: at(generation, seq),
            complete: true,
        }
    }

    /// The partner's cursor of a takeover replay that stopped midway.
    fn stopped(generation: u64, seq: u64) -> ReplayCursor {
        ReplayCursor {
            position: at(generation, seq),
            complete: false,
        }
    }

    /// A log of generation 5 with records 1..=6 and a checkpoint through 2.
    fn image() -> Vec<u8> {
        let mut log = ShadowLog::format(MemoryNvram::new(8192), 5).unwrap();
        for i in 1..=6u8 {
            log.append(&[i; 10]).unwrap();
        }
        log.checkpoint(at(5, 2)).unwrap();
        log.into_local().bytes().to_vec()
    }

    fn seqs(p: &RecoveryPlan) -> Vec<u64> {
        match p {
            RecoveryPlan::ReplayHere { records, .. } => records.iter().map(|r| r.seq).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn every_start_is_exactly_one_of_the_three() {
        assert_eq!(
            plan_recovery(&[0; 8192], None, None).unwrap(),
            RecoveryPlan::Fresh
        );
        let img = image();
        // Nobody replayed it: the records after the checkpoint, here.
        let p = plan_recovery(&img, None, None).unwrap();
        assert_eq!(seqs(&p), vec![3, 4, 5, 6]);
        // An older generation of the partner's cursor is no replay of this log.
        assert_eq!(
            seqs(&plan_recovery(&img, None, Some(whole(4, 99))).unwrap()),
            vec![3, 4, 5, 6]
        );
        // An interrupted recovery resumes after its cursor (one of another generation is void).
        assert_eq!(
            seqs(&plan_recovery(&img, Some(at(5, 4)), None).unwrap()),
            vec![5, 6]
        );
        assert_eq!(
            seqs(&plan_recovery(&img, Some(at(3, 4)), None).unwrap()),
            vec![3, 4, 5, 6]
        );
        // The partner's replay stopped after 5 (it failed inside it): record 6 was applied by
        // nobody, and is applied here (after the later of the two cursors).
        assert_eq!(
            plan_recovery(&img, Some(at(5, 4)), Some(stopped(5, 5))).unwrap(),
            RecoveryPlan::ReplayHere {
                generation: 5,
                checkpoint: 2,
                resumed_after: Some(5),
                records: vec![ReplayedRecord {
                    seq: 6,
                    payload: vec![6; 10]
                }],
            }
        );
        assert_eq!(
            seqs(&plan_recovery(&img, Some(at(5, 5)), Some(stopped(5, 3))).unwrap()),
            vec![6]
        );
        // The partner replayed its whole copy, through 5: record 6 was not in the copy,
        // never applied by anyone.
        assert_eq!(
            plan_recovery(&img, Some(at(5, 4)), Some(whole(5, 5))).unwrap(),
            RecoveryPlan::ReplayedByPartner {
                generation: 5,
                checkpoint: 2,
                through: Some(5),
                dropped: 1
            }
        );
        // It replayed a newer generation: this log's records are all older than that.
        for newer in [whole(6, 1), stopped(6, 1)] {
            assert!(matches!(
                plan_recovery(&img, None, Some(newer)).unwrap(),
                RecoveryPlan::ReplayedByPartner {
                    through: None,
                    dropped: 4,
                    ..
                }
            ));
        }
    }

    #[test]
    fn an_unreadable_log_is_an_error_not_a_fresh_start() {
        let mut img = image();
        img[12] ^= 0xff;
        assert!(matches!(
            plan_recovery(&img, None, None),
            Err(ShadowError::RecoverUnreadable { .. })
        ));
    }

    #[test]
    fn the_next_generation_orders_after_everything_seen() {
        assert_eq!(next_generation(100, Some(5), Some(at(7, 1))), 100);
        assert_eq!(next_generation(3, Some(5), Some(at(7, 1))), 8);
        assert_eq!(next_generation(3, Some(9), None), 10);
        assert_eq!(next_generation(0, None, None), 1);
    }

    /// The partner incarnation the copies are read from in these tests.
    const PARTNER: u64 = 77;

    fn recorded(generation: u64) -> OwnLogKnowledge {
        OwnLogKnowledge::Recorded {
            generation,
            copy_outdated: None,
            copy_complete_for: Some(PARTNER),
        }
    }

    fn fetch(p: Result<RecoveryPlan, ShadowError>) -> (Option<u64>, String) {
        match p {
            Ok(RecoveryPlan::FetchFromPartner { recorded, local }) => (recorded, local),
            other => panic!("not a fetch: {other:?}"),
        }
    }

    #[test]
    fn a_readable_local_log_of_the_recorded_generation_or_newer_plans_as_without_a_mailbox() {
        let img = image();
        for known in [
            OwnLogKnowledge::Unknown,
            recorded(0),
            recorded(3),
            recorded(5),
        ] {
            for (cursor, partner) in [
                (None, None),
                (Some(at(5, 4)), None),
                (None, Some(whole(5, 5))),
                (None, Some(stopped(5, 5))),
            ] {
                assert_eq!(
                    plan_start(&img, cursor, partner, known).unwrap(),
                    plan_recovery(&img, cursor, partner).unwrap(),
                    "{known:?} {cursor:?} {partner:?}"
                );
            }
        }
        // An older log than the mailbox records (a replaced NVRAM module from elsewhere).
        let (g, local) = fetch(plan_start(&img, None, None, recorded(7)));
        assert_eq!(g, Some(7));
        assert!(local.contains("generation 5"), "{local}");
    }

    #[test]
    fn a_blank_nvram_is_fresh_only_when_no_log_is_recorded() {
        let blank = [0u8; 8192];
        for known in [OwnLogKnowledge::Unknown, recorded(0)] {
            assert_eq!(
                plan_start(&blank, None, None, known).unwrap(),
                RecoveryPlan::Fresh
            );
        }
        assert_eq!(
            fetch(plan_start(&blank, None, None, recorded(5))),
            (Some(5), "is blank".to_string())
        );
        // An older replay by the partner is no replay of the recorded log.
        assert_eq!(
            fetch(plan_start(
                &blank,
                Some(at(5, 3)),
                Some(whole(4, 9)),
                recorded(5)
            ))
            .0,
            Some(5)
        );
        // The partner took the node over and replayed the recorded log (or a newer one):
        // nothing is owed here.
        // A replay of it that stopped midway: the rest is in the copy only.
        assert_eq!(
            fetch(plan_start(&blank, None, Some(stopped(5, 4)), recorded(5))).0,
            Some(5)
        );
        assert_eq!(
            plan_start(&blank, None, Some(whole(5, 4)), recorded(5)).unwrap(),
            RecoveryPlan::ReplayedByPartner {
                generation: 5,
                checkpoint: 0,
                through: Some(4),
                dropped: 0
            }
        );
        assert!(matches!(
            plan_start(&blank, None, Some(stopped(6, 1)), recorded(5)).unwrap(),
            RecoveryPlan::ReplayedByPartner { through: None, .. }
        ));
    }

    #[test]
    fn a_corrupt_nvram_is_fetched_unless_no_log_is_recorded() {
        let mut bad_superblock = image();
        bad_superblock[12] ^= 0xff;
        let mut no_magic = image();
        no_magic[0] ^= 0xff;
        for img in [&bad_superblock, &no_magic] {
            assert!(matches!(
                plan_start(img, None, None, recorded(0)),
                Err(ShadowError::RecoverUnreadable { .. })
            ));
            let (g, local) = fetch(plan_start(img, None, None, recorded(5)));
            assert_eq!(g, Some(5));
            assert!(local.contains("cannot be read"), "{local}");
            assert_eq!(
                fetch(plan_start(img, None, None, OwnLogKnowledge::Unknown)).0,
                None
            );
        }
    }

    #[test]
    fn a_fetched_copy_is_used_only_when_it_stands_for_the_recorded_log() {
        let copy = image();
        let blank = vec![0u8; copy.len()];
        let mut corrupt = image();
        corrupt[12] ^= 0xff;
        let plan = |copy: &[u8], cursor, partner, known| {
            plan_fetched(copy, PARTNER, cursor, partner, known, "is blank")
        };
        // The recorded generation, or a newer one (formatted, nothing of it acknowledged yet).
        for known in [recorded(5), recorded(4), OwnLogKnowledge::Unknown] {
            assert_eq!(
                seqs(&plan(&copy, None, None, known).unwrap()),
                vec![3, 4, 5, 6]
            );
        }
        // An interrupted recovery's own-replay cursor still counts (exactly once).
        assert_eq!(
            seqs(&plan(&copy, Some(at(5, 4)), None, recorded(5)).unwrap()),
            vec![5, 6]
        );
        assert_eq!(
            seqs(&plan(&copy, Some(at(5, 3)), Some(stopped(5, 4)), recorded(5)).unwrap()),
            vec![5, 6]
        );
        assert!(matches!(
            plan(&copy, None, Some(whole(5, 5)), recorded(5)).unwrap(),
            RecoveryPlan::ReplayedByPartner {
                through: Some(5),
                dropped: 1,
                ..
            }
        ));
        // No valid copy: blank, unreadable, older than recorded, or marked outdated.
        let outdated = OwnLogKnowledge::Recorded {
            generation: 5,
            copy_outdated: Some(at(5, 4)),
            copy_complete_for: Some(PARTNER),
        };
        let unconfirmed = |c| OwnLogKnowledge::Recorded {
            generation: 5,
            copy_outdated: None,
            copy_complete_for: c,
        };
        for (copy, known, word) in [
            (&blank, recorded(5), "blank"),
            (&corrupt, recorded(5), "cannot be read"),
            (&copy, recorded(6), "older than 6"),
            (&copy, outdated, "outdated"),
            (&copy, unconfirmed(Some(0)), "not confirmed complete"),
            (
                &copy,
                unconfirmed(Some(PARTNER + 1)),
                "not confirmed complete",
            ),
            (&copy, unconfirmed(None), "not confirmed complete"),
        ] {
            match plan(copy, None, None, known) {
                Err(ShadowError::NoValidCopy {
                    generation,
                    local,
                    why,
                }) => {
                    assert_eq!(generation, known.generation().unwrap());
                    assert_eq!(local, "is blank");
                    assert!(why.contains(word), "{why}");
                }
                other => panic!("{word}: {other:?}"),
            }
        }
        // Without a mailbox, a corrupt local log with no copy stays unreadable.
        assert!(matches!(
            plan(&blank, None, None, OwnLogKnowledge::Unknown),
            Err(ShadowError::RecoverUnreadable { .. })
        ));
    }
}
