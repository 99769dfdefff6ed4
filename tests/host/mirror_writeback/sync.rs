//! Destage, resync and takeover of the cores (F5.3), on the in-memory pair: both sides free
//! a destaged block (a stale destage frees nothing), a crash at every store of a destage or
//! a takeover leaves each buffer dirty or free, a resync after a partner failure makes the
//! mirror's image equal to the primary's dirty blocks (writes during it included), and a
//! takeover hands the committed blocks exactly once.

use super::pair::Pair;
use super::{geometry, mem_table, reopen, version_of, RecordingNvram};
use interlink::clients::mirror::{
    AtomicWriteTable, BlockRef, CompletionStatus, Message, NvramBacking, RejectReason,
    WriteBackPrimary,
};
use std::collections::BTreeMap;

/// Every settled block of `t` and its version.
fn blocks<B: NvramBacking>(t: &AtomicWriteTable<B>) -> BTreeMap<(u16, u64), u64> {
    t.valid_blocks()
        .into_iter()
        .map(|(u, b, _)| ((u, b), version_of(t, u, b).unwrap()))
        .collect()
}

/// The mirror's image holds exactly the primary's dirty blocks, in the same buffers.
fn assert_images_equal<P: NvramBacking, M: NvramBacking>(pair: &Pair<P, M>) {
    let (p, m) = (pair.primary.table(), pair.mirror.table());
    assert_eq!(blocks(p), blocks(m));
    for buffer in 0..p.geometry().buffers {
        assert_eq!(
            p.buffer_entry(buffer).unwrap(),
            m.buffer_entry(buffer).unwrap(),
            "buffer {buffer}"
        );
    }
}

/// Runs the resync (and everything else) until the primary is in sync.
fn resync<P: NvramBacking, M: NvramBacking>(pair: &mut Pair<P, M>) {
    for _ in 0..10_000 {
        pair.primary.handle_resync(pair.now).unwrap();
        pair.pump();
        pair.settle();
        if pair.primary.in_sync() {
            return;
        }
    }
    panic!("no resync: {:?}", pair.primary.stats());
}

#[test]
fn destage_frees_both_sides_and_a_stale_destage_frees_nothing() {
    let g = geometry(64, 4);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    resync(&mut pair); // an empty table: in sync at once
    pair.write_and_settle(0, 0, 4);
    pair.write_and_settle(1, 10, 2);
    let snapshot: Vec<_> = pair.primary.dirty_blocks();
    assert_eq!(snapshot.len(), 6);
    for d in &snapshot {
        assert_eq!(
            pair.primary.table().read_block(d.at.unit, d.at.block),
            Some(&d.data[..])
        );
    }
    // Block 0:1 is written again after the snapshot, block 1:11 is held by a write.
    let newer = pair.write_and_settle(0, 1, 1);
    let held = pair.host_write(1, 11, 1).unwrap();
    let refs: Vec<_> = snapshot.iter().map(|d| d.at).collect();
    assert_eq!(pair.primary.handle_destaged(&refs).unwrap(), 4);
    let st = pair.primary.stats().clone();
    assert_eq!((st.destaged, st.destage_stale, st.destage_busy), (4, 1, 1));
    assert_eq!(pair.primary.destage_notices(), 4);
    pair.pump();
    pair.settle();
    assert_eq!(pair.done[&held.0], CompletionStatus::Mirrored);
    assert_eq!(pair.primary.destage_notices(), 0);
    assert_eq!(pair.mirror.stats().freed, 4);
    assert_eq!(
        blocks(pair.primary.table()).into_iter().collect::<Vec<_>>(),
        vec![((0, 1), newer.1), ((1, 11), held.1)]
    );
    assert_images_equal(&pair);
    assert_eq!(pair.primary.table().free_buffer_count(), 62);
    // The same snapshot again: nothing left to free.
    assert_eq!(pair.primary.handle_destaged(&refs).unwrap(), 0);
}

#[test]
fn a_destaged_notice_of_an_old_incarnation_is_sent_again() {
    let g = geometry(16, 2);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    pair.write_and_settle(0, 5, 2);
    // Destaged while the link is down: sent when it is up.
    pair.primary.handle_link_down();
    let refs: Vec<_> = pair.primary.dirty_blocks().iter().map(|d| d.at).collect();
    assert_eq!(pair.primary.handle_destaged(&refs).unwrap(), 2);
    pair.pump();
    assert!(pair.to_mirror.is_empty());
    pair.primary.handle_link_up();
    pair.pump();
    assert_eq!(pair.to_mirror.len(), 2);
    // The mirror's path moved on: the notices are stale there, answered, and sent again.
    pair.mirror.handle_path_changed().unwrap();
    pair.mirror.handle_path_changed().unwrap();
    assert!(pair.deliver_to_mirror());
    assert_eq!(pair.mirror.stats().freed, 0);
    assert_eq!(pair.mirror.stats().stale, 1);
    pair.settle();
    assert_eq!(pair.mirror.stats().freed, 2);
    assert_eq!(pair.primary.destage_notices(), 0);
    assert!(blocks(pair.mirror.table()).is_empty());
    // Hostile notices: an unknown block is acknowledged and frees nothing.
    let m = Message::Destaged(
        interlink::clients::mirror::RequestRef {
            request: 99,
            rie: 0,
            incarnation: pair.mirror.incarnation(),
        },
        BlockRef {
            unit: 7,
            block: 1 << 40,
        },
    );
    pair.mirror.handle_message(&m).unwrap();
    assert!(matches!(
        pair.mirror.poll_send(),
        Some(Message::DestageAck(_))
    ));
    // At the primary, an acknowledgement of no notice is stale.
    pair.primary
        .handle_message(pair.now, &Message::DestageAck(*m.request_ref()))
        .unwrap();
}

#[test]
fn destage_crash_at_every_store_leaves_each_buffer_dirty_or_free() {
    let g = geometry(16, 2);
    let mut pair = Pair::new(RecordingNvram::formatted(g), RecordingNvram::formatted(g));
    pair.up();
    pair.write_and_settle(0, 0, 3);
    pair.write_and_settle(0, 8, 2);
    let before_p = blocks(pair.primary.table());
    let before_m = blocks(pair.mirror.table());
    let (p0, m0) = (
        pair.primary.table().backing().stores(),
        pair.mirror.table().backing().stores(),
    );
    let refs: Vec<_> = pair.primary.dirty_blocks().iter().map(|d| d.at).collect();
    assert_eq!(pair.primary.handle_destaged(&refs).unwrap(), 5);
    pair.pump();
    pair.settle();
    for (backing, from, before) in [
        (pair.primary.table().backing(), p0, &before_p),
        (pair.mirror.table().backing(), m0, &before_m),
    ] {
        let to = backing.stores();
        assert_eq!(to - from, 5, "one store per block");
        backing.for_each_image(from, to, |k, image| {
            let t = reopen(image.to_vec(), g);
            let now = blocks(&t);
            // Each block is still dirty with its data or free, freed in block order.
            assert_eq!(now.len(), before.len() - (k - from), "store {k}");
            for (block, v) in &now {
                assert_eq!(before.get(block), Some(v));
            }
            assert_eq!(t.free_buffer_count(), 16 - now.len());
        });
    }
}

#[test]
fn resync_after_a_partner_failure_re_mirrors_every_dirty_block() {
    let g = geometry(64, 4);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    for first in [0, 10, 20] {
        pair.write_and_settle(0, first, 3);
    }
    // The partner fails: writes meanwhile complete with the mirror lost, one of them over
    // mirrored blocks; a mirrored block is destaged (its notice cannot go).
    pair.primary.handle_partner_failed(pair.now).unwrap();
    pair.mirror.handle_partner_failed().unwrap();
    pair.to_mirror.clear();
    pair.to_primary.clear();
    let mut lost = Vec::new();
    for (first, blocks) in [(1, 2), (30, 4), (40, 1)] {
        let w = pair.host_write(0, first, blocks).unwrap();
        pair.pump();
        assert_eq!(pair.done[&w.0], CompletionStatus::MirrorLost);
        lost.push(w);
    }
    let d20: Vec<_> = pair
        .primary
        .dirty_blocks()
        .iter()
        .filter(|d| d.at.block == 20)
        .map(|d| d.at)
        .collect();
    assert_eq!(pair.primary.handle_destaged(&d20).unwrap(), 1);
    assert!(!pair.primary.in_sync());
    assert_eq!(pair.primary.resync_pending_blocks(), 13);
    // Back: the resync copies every dirty block; a block is written again mid-resync.
    pair.primary.handle_partner_restored();
    pair.primary.handle_path_changed();
    pair.primary.handle_resync(pair.now).unwrap();
    pair.pump();
    assert!(!pair.primary.in_sync());
    assert!(pair.deliver_to_mirror()); // the notice or a first copy
    let again = pair.host_write(0, 40, 1);
    assert!(again.is_err(), "block 40 is being copied");
    resync(&mut pair);
    let again = pair.write_and_settle(0, 40, 1);
    assert!(pair.primary.in_sync());
    assert_images_equal(&pair);
    assert_eq!(version_of(pair.mirror.table(), 0, 40), Some(again.1));
    assert_eq!(version_of(pair.mirror.table(), 0, 20), None);
    for (_, v) in &lost[..2] {
        assert!(blocks(pair.mirror.table()).values().any(|x| x == v));
    }
    let st = pair.primary.stats();
    assert_eq!((st.resyncs, st.resync_blocks), (1, 13));
    assert_eq!(pair.primary.resync_pending_blocks(), 0);
    // The copies kept the write sequences: the snapshot before the resync still destages.
    assert!(pair.primary.dirty_blocks().iter().all(|d| d.at.seq
        == pair.primary.seq_of(BlockRef {
            unit: d.at.unit,
            block: d.at.block
        })));
}

#[test]
fn a_restarted_primary_re_mirrors_everything_and_stale_copies_go_by_held() {
    let g = geometry(32, 4);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    resync(&mut pair);
    pair.write_and_settle(0, 0, 4);
    // Without the mirror: 0..2 written again, then all destaged; the mirror keeps stale
    // copies of 0..4 in buffers the primary will use again.
    pair.primary.handle_partner_failed(pair.now).unwrap();
    pair.mirror.handle_partner_failed().unwrap();
    pair.host_write(0, 0, 2).unwrap();
    pair.pump();
    let refs: Vec<_> = pair.primary.dirty_blocks().iter().map(|d| d.at).collect();
    pair.primary.handle_destaged(&refs).unwrap();
    pair.host_write(0, 9, 3).unwrap();
    pair.pump();
    // The primary restarts (the notices are lost with it).
    let table =
        std::mem::replace(&mut pair.primary, WriteBackPrimary::new(mem_table(g))).into_table();
    pair.primary = WriteBackPrimary::new(table);
    pair.to_mirror.clear();
    pair.up();
    resync(&mut pair);
    // The mirror keeps its stale copies until the primary names their buffers: a write that
    // does is refused (Held), the copy goes by a Destaged notice and the write's blocks are
    // copied again; the next writes are mirrored.
    let mut refused = 0;
    for (first, blocks) in [(20, 8), (2, 1), (14, 4), (28, 2), (5, 3)] {
        let w = pair.host_write(0, first, blocks).unwrap();
        pair.settle();
        match pair.done[&w.0] {
            CompletionStatus::Mirrored => {}
            CompletionStatus::MirrorRejected(RejectReason::BadBuffer) => refused += 1,
            other => panic!("{other:?}"),
        }
        resync(&mut pair);
    }
    assert!(refused > 0);
    pair.write_and_settle(0, 2, 1);
    assert_images_equal(&pair);
    // The stale copies went through Held answers and Destaged notices, not by an RQR.
    assert!(pair.mirror.stats().held > 0, "{:?}", pair.mirror.stats());
    assert!(pair.primary.stats().held > 0, "{:?}", pair.primary.stats());
    assert_eq!(pair.primary.held_buffers(), 0);
}

#[test]
fn a_copy_the_primary_wrote_again_alone_stays_until_replaced() {
    // The swarm's seed 5090: a mirrored block, written again on the primary alone (its old
    // buffer is free there); a later write names that buffer. The mirror's copy is the newest
    // mirrored one: it must stay until the newer data is mirrored.
    let g = geometry(16, 2);
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    resync(&mut pair);
    let (_, v1) = pair.write_and_settle(0, 5, 1);
    let buffer = pair.primary.table().lookup(0, 5).unwrap();
    pair.primary.handle_partner_failed(pair.now).unwrap();
    pair.mirror.handle_partner_failed().unwrap();
    let lost = pair.host_write(0, 5, 1).unwrap();
    pair.pump();
    assert_eq!(pair.done[&lost.0], CompletionStatus::MirrorLost);
    pair.primary.handle_partner_restored();
    pair.primary.handle_path_changed();
    // Before any resync: a write takes the freed buffer.
    let w = pair.host_write(0, 9, 1).unwrap();
    pair.settle();
    assert_eq!(
        pair.done[&w.0],
        CompletionStatus::MirrorRejected(RejectReason::BadBuffer)
    );
    assert_eq!(version_of(pair.mirror.table(), 0, 5), Some(v1));
    assert_eq!(pair.mirror.table().lookup(0, 5), Some(buffer));
    // (The buffer holds block 9 here now, so it is not held out of allocation.)
    assert_eq!(pair.primary.stats().held, 1);
    // The resync replaces it; the buffer is given back and both writes are mirrored.
    resync(&mut pair);
    assert_eq!(pair.primary.held_buffers(), 0);
    assert_eq!(version_of(pair.mirror.table(), 0, 5), Some(lost.1));
    assert_eq!(version_of(pair.mirror.table(), 0, 9), Some(w.1));
    assert_images_equal(&pair);
    pair.write_and_settle(0, 10, 3);
    assert_images_equal(&pair);
}

#[test]
fn takeover_hands_the_committed_blocks_once() {
    let g = geometry(32, 4);
    let mut pair = Pair::new(mem_table(g), RecordingNvram::formatted(g));
    pair.up();
    pair.write_and_settle(0, 0, 3);
    pair.write_and_settle(2, 7, 2);
    pair.write_and_settle(0, 1, 1); // replaces 0:1
                                    // A write in progress: set up and its data landed, never committed at the mirror.
    pair.host_write(0, 20, 2).unwrap();
    assert!(pair.deliver_to_mirror());
    assert!(pair.deliver_to_primary());
    assert!(pair.transfer());
    let expected = blocks(pair.mirror.table());
    assert_eq!(expected.len(), 5);
    let start = pair.mirror.table().backing().stores();
    let mut handed = BTreeMap::new();
    let report = pair
        .mirror
        .take_over(|at, data| {
            let v = u64::from_le_bytes(data[..8].try_into().unwrap());
            assert!(handed.insert((at.unit, at.block), v).is_none(), "twice");
            Ok(())
        })
        .unwrap();
    assert_eq!((report.aborted, report.blocks), (1, 5));
    assert_eq!(handed, expected);
    assert_eq!(pair.mirror.table().valid_block_count(), 0);
    assert_eq!(pair.mirror.table().free_buffer_count(), 32);
    let again = pair
        .mirror
        .take_over(|_, _| panic!("handed again"))
        .unwrap();
    assert_eq!(again.blocks, 0);
    // A crash at any store of the takeover: the restarted survivor hands only what is left,
    // each with its committed data, and nothing of the aborted write.
    let backing = pair.mirror.table().backing();
    backing.for_each_image(start, backing.stores(), |k, image| {
        let mut t = reopen(image.to_vec(), g);
        let left = blocks(&t);
        assert!(
            left.iter().all(|(b, v)| expected.get(b) == Some(v)),
            "store {k}"
        );
        assert!(left.keys().all(|&(_, b)| b != 20 && b != 21));
        let freed = expected.len() - left.len();
        assert!(
            expected.keys().take(freed).all(|b| !left.contains_key(b)),
            "freed in block order"
        );
        for (u, b, _) in t.valid_blocks() {
            t.free_block(u, b).unwrap();
        }
    });
    // A sink error stops the takeover; the block stays.
    let mut pair = Pair::new(mem_table(g), mem_table(g));
    pair.up();
    pair.write_and_settle(0, 0, 2);
    let err = pair
        .mirror
        .take_over(|at, _| {
            if at.block == 1 {
                Err("disk full".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(blocks(pair.mirror.table()).len(), 1);
}
