//! Unit tests of the shadow log writer.

use super::*;
use crate::clients::mirror::log_replay::replay;
use crate::clients::mirror::nvram::MemoryNvram;

const GEN: u64 = 9;

fn at(seq: u64) -> LogPosition {
    LogPosition {
        generation: GEN,
        seq,
    }
}

fn copy(log: &ShadowLog<MemoryNvram>, w: MirrorWrite, mirror: &mut [u8]) {
    let r = w.offset..w.offset + w.len;
    mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
}

fn sync(log: &mut ShadowLog<MemoryNvram>, mirror: &mut [u8]) {
    while let Some(w) = log.poll_mirror_write() {
        copy(log, w, mirror);
        log.handle_mirror_complete(w.id);
    }
}

fn acks(log: &mut ShadowLog<MemoryNvram>) -> Vec<u64> {
    std::iter::from_fn(|| log.poll_acknowledged())
        .map(|p| p.seq)
        .collect()
}

#[test]
fn format_queues_the_superblock_and_checkpoint_zero() {
    let mut log = ShadowLog::format(MemoryNvram::new(4096), GEN).unwrap();
    let a = log.poll_mirror_write().unwrap();
    let b = log.poll_mirror_write().unwrap();
    assert_eq!((a.id, a.offset, a.len), (1, 0, 64));
    assert_eq!((b.id, b.offset, b.len), (2, 64, 64));
    assert_eq!(log.poll_mirror_write(), None);
    assert_eq!(log.stats().data_len, 4096 - 192);
    assert_eq!(log.max_payload(), (4096 - 192) / 2 - 32);
    assert!(matches!(
        ShadowLog::format(MemoryNvram::new(319), GEN),
        Err(LogError::FormatTooSmall {
            size: 319,
            min: 320
        })
    ));
    // Re-formatting with a generation that is not newer is refused.
    let local = log.into_local();
    assert!(matches!(
        ShadowLog::format(local.clone(), GEN),
        Err(LogError::FormatStaleGeneration {
            existing: GEN,
            requested: GEN
        })
    ));
    assert!(ShadowLog::format(local, GEN + 1).is_ok());
}

#[test]
fn appends_are_acknowledged_only_after_their_writes_complete_in_order() {
    let mut log = ShadowLog::format(MemoryNvram::new(4096), GEN).unwrap();
    assert_eq!(log.append(b"one").unwrap(), at(1));
    assert_eq!(log.append(b"two").unwrap(), at(2));
    assert_eq!(log.append(b"three").unwrap(), at(3));
    let writes: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(
        writes.iter().map(|w| w.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(log.stats().writes_in_flight, 5);
    assert!(acks(&mut log).is_empty());
    log.handle_mirror_complete(3); // superblock, slot, record 1
    assert_eq!(acks(&mut log), [1]);
    assert_eq!(log.acknowledged(), Some(at(1)));
    log.handle_mirror_complete(2); // already completed: ignored
    log.handle_mirror_complete(99); // beyond what was handed out: up to 5
    assert_eq!(acks(&mut log), [2, 3]);
    assert_eq!(log.stats().writes_in_flight, 0);
}

#[test]
fn too_large_records_and_bad_checkpoints_are_refused() {
    let mut log = ShadowLog::format(MemoryNvram::new(1024), GEN).unwrap();
    let max = log.max_payload();
    assert!(matches!(
        log.append(&vec![0; max + 1]),
        Err(LogError::RecordTooLarge { .. })
    ));
    log.append(&vec![1; max]).unwrap();
    for bad in [
        at(2),
        LogPosition {
            generation: GEN + 1,
            seq: 1,
        },
    ] {
        assert!(matches!(
            log.checkpoint(bad),
            Err(LogError::Checkpoint { .. })
        ));
    }
    log.checkpoint(at(0)).unwrap(); // nothing to do
    assert_eq!(log.stats().checkpoint_requested, 0);
}

#[test]
fn space_is_reused_only_after_the_checkpoint_write_completed() {
    // 512-byte data area; records of 128 bytes.
    let mut log = ShadowLog::format(MemoryNvram::new(192 + 512), GEN).unwrap();
    let mut mirror = vec![0u8; 192 + 512];
    for seq in 1..=4 {
        assert_eq!(log.append(&[seq as u8; 96]).unwrap(), at(seq));
    }
    assert!(matches!(
        log.append(&[5; 96]),
        Err(LogError::Full {
            needed: 128,
            free: 0
        })
    ));
    sync(&mut log, &mut mirror);
    log.checkpoint(at(2)).unwrap();
    // Queued, not yet complete: still full.
    assert!(matches!(log.append(&[5; 96]), Err(LogError::Full { .. })));
    let w = log.poll_mirror_write().unwrap();
    assert!(matches!(log.append(&[5; 96]), Err(LogError::Full { .. })));
    copy(&log, w, &mut mirror);
    log.handle_mirror_complete(w.id);
    assert_eq!(log.checkpointed(), at(2));
    assert_eq!(log.stats().free_bytes, 256);
    assert_eq!(log.append(&[5; 96]).unwrap(), at(5));
    assert_eq!(log.append(&[6; 96]).unwrap(), at(6));
    sync(&mut log, &mut mirror);
    let r = replay(&mirror, None).unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
}

#[test]
fn records_whose_writes_are_pending_are_not_reclaimed_by_a_checkpoint() {
    let mut log = ShadowLog::format(MemoryNvram::new(192 + 512), GEN).unwrap();
    let mut mirror = vec![0u8; 192 + 512];
    sync(&mut log, &mut mirror);
    log.append(&[1; 96]).unwrap();
    log.checkpoint(at(1)).unwrap();
    // The record's write (3) is handed out, then the checkpoint write (4).
    let rec = log.poll_mirror_write().unwrap();
    let slot = log.poll_mirror_write().unwrap();
    assert_eq!((rec.id, slot.id), (3, 4));
    // Coalescing cannot make a checkpoint cover records queued behind its write:
    log.append(&[2; 96]).unwrap();
    log.append(&[3; 96]).unwrap();
    log.checkpoint(at(3)).unwrap(); // slot 0, write 7, queued behind 5 and 6
    log.append(&[4; 96]).unwrap();
    log.checkpoint(at(4)).unwrap(); // coalesced into write 7
    assert_eq!(log.stats().writes_queued, 4);
    log.handle_mirror_complete(4);
    assert_eq!(log.checkpointed(), at(1));
    assert_eq!(log.stats().free_bytes, 512 - 3 * 128);
    // The coalesced checkpoint (through 4) completes before record 4's write (8).
    let ids: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(ids.iter().map(|w| w.id).collect::<Vec<_>>(), [5, 6, 7, 8]);
    for w in &ids {
        copy(&log, *w, &mut mirror);
    }
    log.handle_mirror_complete(7);
    assert_eq!(log.checkpointed(), at(4));
    assert_eq!(
        log.stats().free_bytes,
        512 - 128,
        "record 4 is still being written"
    );
    for seq in 5..=7 {
        assert_eq!(log.append(&[seq as u8; 96]).unwrap(), at(seq));
    }
    // The next one would overwrite record 4 while its write is in flight.
    assert!(matches!(log.append(&[8; 96]), Err(LogError::Full { .. })));
    log.handle_mirror_complete(8);
    assert_eq!(log.stats().free_bytes, 128);
    log.checkpoint(at(7)).unwrap();
    sync(&mut log, &mut mirror);
    assert_eq!(log.checkpointed(), at(7));
    assert_eq!(log.stats().free_bytes, 512);
    assert_eq!(log.stats().live_records, 0);
    let r = replay(&mirror, None).unwrap();
    assert_eq!((r.checkpoint, r.records.len()), (7, 0));
}

#[test]
fn one_checkpoint_write_at_a_time() {
    let mut log = ShadowLog::format(MemoryNvram::new(4096), GEN).unwrap();
    let mut mirror = vec![0u8; 4096];
    let first: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(first.len(), 2);
    log.append(b"a").unwrap();
    log.checkpoint(at(1)).unwrap();
    // Checkpoint 0's write (2) is in flight: the record goes, checkpoint 1 waits.
    assert_eq!(log.poll_mirror_write().map(|w| w.id), Some(3));
    assert_eq!(log.poll_mirror_write(), None);
    for w in &first {
        copy(&log, *w, &mut mirror);
    }
    log.handle_mirror_complete(2);
    assert_eq!(log.poll_mirror_write().map(|w| w.id), Some(4));
    sync(&mut log, &mut mirror);
}

#[test]
fn rewind_returns_the_uncompleted_writes_again_in_order() {
    let mut log = ShadowLog::format(MemoryNvram::new(4096), GEN).unwrap();
    for i in 0..5u8 {
        log.append(&[i; 40]).unwrap();
    }
    let sent: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(sent.len(), 7);
    log.handle_mirror_complete(4);
    log.rewind_unacknowledged();
    assert_eq!(log.stats().writes_in_flight, 0);
    let again: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(again, sent[4..]);
    log.rewind_unacknowledged();
    log.handle_mirror_complete(7); // nothing handed out since the rewind: ignored
    assert_eq!(acks(&mut log), [1, 2]);
    let mut mirror = vec![0u8; 4096];
    sync(&mut log, &mut mirror);
    assert_eq!(acks(&mut log), [3, 4, 5]);
}

#[test]
fn open_continues_the_log_and_mirrors_it_again() {
    let mut log = ShadowLog::format(MemoryNvram::new(2048), GEN).unwrap();
    let mut mirror = vec![0u8; 2048];
    for seq in 1..=20u64 {
        log.append(&[seq as u8; 100]).unwrap();
        sync(&mut log, &mut mirror);
        if seq % 4 == 0 {
            log.checkpoint(at(seq - 2)).unwrap();
            sync(&mut log, &mut mirror);
        }
    }
    log.append(b"unmirrored").unwrap();
    let (mut log, recovered) = ShadowLog::open(log.into_local()).unwrap();
    assert_eq!(recovered.checkpoint, 18);
    let seqs: Vec<_> = recovered.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [19, 20, 21]);
    assert_eq!(recovered.records[2].payload, b"unmirrored");
    assert_eq!(log.acknowledged(), Some(at(18)));
    // Until a checkpoint is mirrored again none is vouched for.
    assert_eq!(log.checkpointed(), at(0));
    // No space is reclaimed before the checkpoint is mirrored again.
    assert!(matches!(log.append(b"x"), Err(LogError::Full { .. })));
    let mut fresh_mirror = vec![0u8; 2048];
    let writes: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    // Superblock, then the older slot (0, checkpoint 4) alone: the newer waits for it.
    assert_eq!(
        writes.iter().map(|w| w.offset).collect::<Vec<_>>(),
        [0, CHECKPOINT_SLOT_OFFSETS[0]]
    );
    for w in writes {
        copy(&log, w, &mut fresh_mirror);
        log.handle_mirror_complete(w.id);
    }
    assert_eq!(log.checkpointed(), at(14));
    sync(&mut log, &mut fresh_mirror);
    assert_eq!(log.checkpointed(), at(18));
    assert_eq!(log.acknowledged(), Some(at(21)));
    assert!(
        acks(&mut log).is_empty(),
        "recovered records are not acknowledged again"
    );
    assert_eq!(log.append(b"x").unwrap(), at(22));
    sync(&mut log, &mut fresh_mirror);
    assert_eq!(acks(&mut log), [22]);
    let r = replay(&fresh_mirror, None).unwrap();
    let seqs: Vec<_> = r.records.iter().map(|r| r.seq).collect();
    assert_eq!((r.checkpoint, seqs), (18, vec![19, 20, 21, 22]));
    // A checkpoint asked for before the re-sent one completed leaves the slots alone
    // (the re-sent bytes must be what the mirror may already hold) and is written when
    // that completion is handled.
    let (mut log, _) = ShadowLog::open(log.into_local()).unwrap();
    let slot_bytes = |log: &ShadowLog<MemoryNvram>| log.local().bytes()[64..192].to_vec();
    let before = slot_bytes(&log);
    log.checkpoint(at(21)).unwrap();
    assert_eq!(slot_bytes(&log), before);
    assert_eq!(log.stats().checkpoint_requested, 21);
    // Superblock and the older slot; the newer slot waits for it.
    let writes: Vec<_> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    assert_eq!(writes.len(), 2);
    log.handle_mirror_complete(writes[1].id);
    assert_eq!(slot_bytes(&log), before);
    let resent = log.poll_mirror_write().unwrap();
    assert_eq!(resent.offset, CHECKPOINT_SLOT_OFFSETS[1]);
    assert_eq!(slot_bytes(&log), before);
    log.handle_mirror_complete(resent.id);
    assert_ne!(slot_bytes(&log), before);
    sync(&mut log, &mut fresh_mirror);
    assert_eq!(log.checkpointed(), at(21));
    assert_eq!(replay(&fresh_mirror, None).unwrap().checkpoint, 21);
    // An image without a log cannot be opened.
    assert!(matches!(
        ShadowLog::open(MemoryNvram::new(2048)),
        Err(LogError::Open(_))
    ));
}
