//! The decision of the recovery at start (F5.6), sans-IO: given the image the previous run
//! left in the local NVRAM, the own-replay cursor and what the partner says it replayed of this
//! node's log at a takeover, what the starting node must do before it appends anything. The
//! shadow driver ([`ShadowMirror::recover`](super::ShadowMirror::recover)) carries it out; the
//! swarm runs the same function.
//!
//! Exactly one of:
//!
//! - [`RecoveryPlan::Fresh`]: no log (no superblock magic): a first start.
//! - [`RecoveryPlan::ReplayedByPartner`]: the partner's replay cursor names this log's
//!   generation or a newer one: a takeover applied the records; those after the cursor were
//!   never applied by anyone and are dropped (counted).
//! - [`RecoveryPlan::ReplayHere`]: nobody applied the records after the checkpoint: they are
//!   applied here, after the own-replay cursor if an interrupted recovery left one.
//!
//! A log that exists but cannot be read is an error, never a fresh start.

use super::error::MirrorError;
use super::log_format::{decode_superblock, LogImageError};
use super::log_replay::{replay, LogPosition, ReplayedRecord};

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
}

/// Decides the recovery of `image` (the local log as the previous run left it): `own_cursor`
/// is the own-replay cursor in NVRAM, `partner_replayed` the partner's replay cursor of this
/// node's log (from its mailbox record). [`MirrorError::RecoverUnreadable`] for a log that
/// exists but cannot be read.
pub fn plan_recovery(
    image: &[u8],
    own_cursor: Option<LogPosition>,
    partner_replayed: Option<LogPosition>,
) -> Result<RecoveryPlan, MirrorError> {
    let sb = match decode_superblock(image) {
        Err(LogImageError::SuperblockMagic) => return Ok(RecoveryPlan::Fresh),
        Err(e) => {
            return Err(MirrorError::RecoverUnreadable {
                reason: e.to_string(),
            })
        }
        Ok(sb) => sb,
    };
    let g = sb.generation;
    let found = replay(image, None).map_err(|e| MirrorError::RecoverUnreadable {
        reason: e.to_string(),
    })?;
    if let Some(p) = partner_replayed.filter(|p| p.generation >= g) {
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
    let resumed_after = own_cursor.filter(|c| c.generation == g);
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
            seqs(&plan_recovery(&img, None, Some(at(4, 99))).unwrap()),
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
        // The partner replayed through 5: record 6 was never applied by anyone.
        assert_eq!(
            plan_recovery(&img, Some(at(5, 4)), Some(at(5, 5))).unwrap(),
            RecoveryPlan::ReplayedByPartner {
                generation: 5,
                checkpoint: 2,
                through: Some(5),
                dropped: 1
            }
        );
        // It replayed a newer generation: this log's records are all older than that.
        assert!(matches!(
            plan_recovery(&img, None, Some(at(6, 1))).unwrap(),
            RecoveryPlan::ReplayedByPartner {
                through: None,
                dropped: 4,
                ..
            }
        ));
    }

    #[test]
    fn an_unreadable_log_is_an_error_not_a_fresh_start() {
        let mut img = image();
        img[12] ^= 0xff;
        assert!(matches!(
            plan_recovery(&img, None, None),
            Err(MirrorError::RecoverUnreadable { .. })
        ));
    }

    #[test]
    fn the_next_generation_orders_after_everything_seen() {
        assert_eq!(next_generation(100, Some(5), Some(at(7, 1))), 100);
        assert_eq!(next_generation(3, Some(5), Some(at(7, 1))), 8);
        assert_eq!(next_generation(3, Some(9), None), 10);
        assert_eq!(next_generation(0, None, None), 1);
    }
}
