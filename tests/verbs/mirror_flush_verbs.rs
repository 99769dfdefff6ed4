//! RDMA FLUSH on Soft-RoCE (rxe_a0 / 198.18.0.1 in ilA, rxe_b0 / 198.18.0.2 in ilB), inside
//! `soft-roce/vm`, which runs its command with libibverbs and the rxe provider of rdma-core 45 or
//! later (`soft-roce/rdma-core`; the host's rdma-core 44 has no FLUSH):
//!
//! - the fabric: a queue pair created with [`QpCapacity::flush`] supports FLUSH; a FLUSH posted
//!   behind WRITEs into a region registered with [`Access::REMOTE_FLUSH`] completes as
//!   [`CompletionOp::Flush`] after them, with the data in the partner's region; into a region
//!   without that right it fails (remote access error) instead of passing silently;
//! - the shadow log with [`Durability::Flush`] between two managers: records are acknowledged
//!   mirrored, FLUSHes (not READs) were posted behind the writes, and the partner's image holds
//!   the records.
//!
//! Root and Soft-RoCE only, so `#[ignore]`: `soft-roce/test-all` runs them in the VM.

use crate::manager_pair;
use crate::suite;

use interlink::clients::mirror::shadow::{
    writer_payload, CursorStore, Durability, RecoveryOutcome,
};
use interlink::clients::mirror::{MemoryNvram, ShadowConfig, ShadowMirror};
use interlink::fabric::*;
use interlink::manager::{Manager, NodeConfig};
use manager_pair::*;
use std::sync::Arc;
use suite::{in_netns, next, pattern, Pair, PATIENCE};

/// The queue pairs of `p` with FLUSH asked for, connected.
fn flush_qps(p: &Pair) -> (QueuePair, QueuePair) {
    init_logs();
    let cap = QpCapacity {
        flush: true,
        ..QpCapacity::default()
    };
    let qa = p.a.pd.create_qp(&p.a.cq, &p.a.rcq, cap).unwrap();
    let qb = p.b.pd.create_qp(&p.b.cq, &p.b.rcq, cap).unwrap();
    qa.connect(&qb.endpoint().unwrap(), &p.opts).unwrap();
    qb.connect(&qa.endpoint().unwrap(), &p.opts).unwrap();
    (qa, qb)
}

fn no_flush_here(p: &Pair) -> String {
    format!(
        "no RDMA FLUSH on {:?} (INTERLINK_RDMA_CORE={:?}; soft-roce/vm runs with rdma-core >= 45)",
        p.a.dev,
        std::env::var("INTERLINK_RDMA_CORE").ok()
    )
}

#[test]
#[ignore = "needs Soft-RoCE with rdma-core >= 45: run inside soft-roce/vm with --ignored"]
fn a_flush_behind_writes_completes_after_them() {
    let p = Pair::verbs(0);
    let (qa, _qb) = flush_qps(&p);
    assert!(qa.supports_flush(), "{}", no_flush_here(&p));
    let target =
        p.b.region(64 * 1024, Access::REMOTE_WRITE | Access::REMOTE_FLUSH);
    assert!(
        target.access().contains(Access::REMOTE_FLUSH),
        "rxe granted no FLUSH right: {:?}",
        target.access()
    );
    let src = p.a.region(64 * 1024, Access::NONE);
    let data = pattern(64 * 1024, 7);
    src.fill(0, data.len(), |d| d.copy_from_slice(&data))
        .unwrap();
    let remote = target.descriptor();
    let none = src.slice(0, 0).unwrap();
    for round in 0..4u64 {
        let off = round * 16 * 1024;
        let writes = (0..4u64).map(|i| {
            let at = off + i * 4096;
            SendRequest::new(
                round * 10 + i,
                SendOp::Write(remote.at(at)),
                src.slice(at as usize, 4096).unwrap(),
            )
            .unsignaled()
        });
        let flush = SendRequest::new(
            1000 + round,
            SendOp::Flush(remote.at(off), 16 * 1024),
            none.clone(),
        );
        qa.post_send_batch(writes.chain(std::iter::once(flush)))
            .unwrap();
        let c = next(&p.a.cq);
        assert_eq!(c.wr_id, 1000 + round, "{c:?}");
        assert!(c.status.is_ok(), "{c:?}");
        assert_eq!(c.op, CompletionOp::Flush, "{c:?}");
        // Placed when the FLUSH completed.
        let mut got = vec![0u8; 16 * 1024];
        target.read(off as usize, &mut got).unwrap();
        assert!(
            got == data[off as usize..off as usize + 16 * 1024],
            "round {round}"
        );
    }
}

#[test]
#[ignore = "needs Soft-RoCE with rdma-core >= 45: run inside soft-roce/vm with --ignored"]
fn a_flush_into_a_region_without_the_right_fails() {
    let p = Pair::verbs(0);
    let (qa, _qb) = flush_qps(&p);
    assert!(qa.supports_flush(), "{}", no_flush_here(&p));
    let target = p.b.region(4096, Access::REMOTE_WRITE);
    let src = p.a.region(4096, Access::NONE);
    let req = SendRequest::new(
        1,
        SendOp::Flush(target.descriptor().at(0), 4096),
        src.slice(0, 0).unwrap(),
    );
    qa.post_send(req).unwrap();
    let c = next(&p.a.cq);
    assert_eq!(c.wr_id, 1);
    assert!(
        !c.status.is_ok(),
        "a FLUSH without the right succeeded: {c:?}"
    );
}

#[test]
#[ignore = "needs Soft-RoCE with rdma-core >= 45: run inside soft-roce/vm with --ignored"]
fn a_queue_pair_without_flush_refuses_to_post_one() {
    let p = Pair::verbs(0);
    let (qa, _qb) = p.connect();
    assert!(!qa.supports_flush());
    let src = p.a.region(4096, Access::NONE);
    let req = SendRequest::new(
        1,
        SendOp::Flush(src.descriptor().at(0), 8),
        src.slice(0, 0).unwrap(),
    );
    assert!(matches!(
        qa.post_send(req),
        Err(FabricError::FlushUnsupported { .. })
    ));
}

fn start_in(
    ns: &'static str,
    cfg: NodeConfig,
    durability: Durability,
) -> (Arc<Manager>, ShadowMirror) {
    in_netns(ns, || {
        let m = Arc::new(Manager::start(cfg).expect("start manager"));
        let mut sc = ShadowConfig::new();
        sc.durability = durability;
        let s = ShadowMirror::start(
            &m,
            sc,
            Box::new(MemoryNvram::new(256 * 1024)),
            Box::new(MemoryNvram::new(CursorStore::LEN)),
        )
        .expect("start shadow mirror");
        let r = s.recover(None, |_| Ok(())).expect("recover a fresh log");
        assert_eq!(r.outcome, RecoveryOutcome::Fresh);
        (m, s)
    })
}

#[test]
#[ignore = "needs Soft-RoCE with rdma-core >= 45: run inside soft-roce/vm with --ignored"]
fn shadow_appends_are_acknowledged_behind_a_flush() {
    init_logs();
    let dir = temp_dir("shadow-flush");
    let (ca, cb) = pair(&dir, 1, netns, ProviderChoice::Verbs, port_base());
    let (_ma, a) = start_in("ilA", ca, Durability::Flush);
    let (_mb, b) = start_in("ilB", cb, Durability::Flush);
    for s in [&a, &b] {
        assert!(
            s.wait_connected_timeout(PATIENCE).is_ok(),
            "not connected: {:#?}",
            s.stats()
        );
    }
    let payloads: Vec<Vec<u8>> = (1..=60).map(|s| writer_payload(s, 200)).collect();
    for p in &payloads[..20] {
        assert!(a.append(p).unwrap().mirrored);
    }
    let refs: Vec<&[u8]> = payloads[20..].iter().map(|p| p.as_slice()).collect();
    for r in a.append_many(&refs).unwrap() {
        assert!(r.mirrored);
    }
    let st = a.stats();
    assert_eq!(st.durability_in_use, Some(Durability::Flush), "{st:#?}");
    assert_eq!(st.flush_unavailable, None, "{st:#?}");
    assert_eq!(st.durability_reads, 0, "{st:#?}");
    // At least one FLUSH per one-at-a-time append, never more than one per write.
    assert!(
        st.durability_flushes >= 20 && st.durability_flushes <= st.mirror_writes,
        "{st:#?}"
    );
    assert_eq!(st.acknowledged_seq, 60, "{st:#?}");
    let image = b.read_partner().unwrap();
    let seqs: Vec<u64> = image.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
}
