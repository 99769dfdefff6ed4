//! Least rights (docs/security.md, "Region rights"): every region the product exposes to the
//! partner is registered with the rights its use needs and no more, and the soft provider
//! refuses the other operation on it: a WRITE of the read-only health (state) block, a READ of
//! a write-only mirror region or receive ring.
use crate::manager_pair;
use crate::suite;

use interlink::clients::mirror::shadow::{
    Durability, ShadowConfig, ShadowMirror, FLUSH_REGION, FLUSH_REGION_ACCESS, MIRROR_REGION,
    SHADOW_MIRROR_ACCESS,
};
use interlink::clients::mirror::MIRROR_REGION_ACCESS;
use interlink::fabric::{Access, ProviderChoice, SendOp, SendRequest};
use interlink::manager::health::{HEALTH_BLOCK_ACCESS, HEALTH_BLOCK_LEN, HEALTH_LANDING_ACCESS};
use interlink::manager::{BandwidthClass, ClientSpec, Manager, ReadGrant, RegionSpec};
use interlink::messaging::messenger::RX_REGION_ACCESS;
use manager_pair::*;
use std::sync::Arc;
use suite::{expect_remote_access_error, next, Pair};

#[test]
fn product_regions_have_the_least_rights() {
    // The partner READs the health block (heartbeat, partner state) and never writes it.
    assert_eq!(HEALTH_BLOCK_ACCESS, Access::REMOTE_READ);
    assert_eq!(HEALTH_LANDING_ACCESS, Access::LOCAL_WRITE);
    // The partner WRITEs the write-back mirror region and never reads it.
    assert_eq!(MIRROR_REGION_ACCESS, Access::REMOTE_WRITE);
    // It WRITEs its shadow log into the shadow mirror region, and READs it back only when
    // its own NVRAM lost the log (the region holds that log and nothing else).
    assert_eq!(
        SHADOW_MIRROR_ACCESS,
        Access::REMOTE_WRITE | Access::REMOTE_READ
    );
    // It READs the shadow log's flush region (zeros) behind its writes, and nothing else.
    assert_eq!(FLUSH_REGION_ACCESS, Access::REMOTE_READ);
    // The partner WRITEs frames into the receive ring and never reads it.
    assert!(!RX_REGION_ACCESS.contains(Access::REMOTE_READ));
    assert!(RX_REGION_ACCESS.contains(Access::REMOTE_WRITE));
}

/// On the in-process soft provider: the forbidden operation on each product region fails
/// with `RemoteAccessError` (both queue pairs go to error); the allowed one succeeds.
#[test]
fn soft_provider_refuses_the_other_operation() {
    let p = Pair::sim(0);
    let (qa, qb) = p.connect();
    let src = p.a.region(HEALTH_BLOCK_LEN, Access::LOCAL_WRITE);
    let health = p.b.region(HEALTH_BLOCK_LEN, HEALTH_BLOCK_ACCESS);
    let mirror = p.b.region(4096, MIRROR_REGION_ACCESS);
    let ring = p.b.region(4096, RX_REGION_ACCESS);
    // Allowed: READ the health block, WRITE the mirror and the ring.
    health.write(0, b"state").unwrap();
    let allowed = [
        (SendOp::Read(health.descriptor().at(0)), 5),
        (SendOp::Write(mirror.descriptor().at(0)), 8),
        (SendOp::Write(ring.descriptor().at(64)), 8),
    ];
    for (n, (op, len)) in allowed.into_iter().enumerate() {
        qa.post_send(SendRequest::new(n as u64, op, src.slice(0, len).unwrap()))
            .unwrap();
        let c = next(&p.a.cq);
        assert!(c.status.is_ok(), "allowed op {n}: {c:?}");
    }
    let mut got = [0u8; 5];
    src.read(0, &mut got).unwrap();
    assert_eq!(&got, b"state");
    // Refused: WRITE the health block, READ the mirror, READ the ring.
    let refused = [
        (
            SendOp::Write(health.descriptor().at(0)),
            "WRITE of the read-only health block",
        ),
        (
            SendOp::Read(mirror.descriptor().at(0)),
            "READ of the write-only mirror region",
        ),
        (
            SendOp::Read(ring.descriptor().at(0)),
            "READ of the write-only receive ring",
        ),
    ];
    for (op, what) in refused {
        p.reconnect(&qa, &qb);
        expect_remote_access_error(&p, &qa, &qb, op, src.slice(0, 8).unwrap(), what);
    }
    let mut block = [0u8; 5];
    health.read(0, &mut block).unwrap();
    assert_eq!(&block, b"state", "the refused WRITE changed nothing");
}

/// Remote READ of a client region takes a reason the type names (`ReadGrant`): the manager
/// refuses a region with `Access::REMOTE_READ` and no grant, at registration and when a
/// region is added live, so no client (the product's or a service's) grants it by accident.
#[test]
fn a_client_region_grants_remote_read_only_with_a_reason() {
    init_logs();
    let (ca, _) = pair(
        &temp_dir("rights"),
        1,
        loopback,
        ProviderChoice::Soft,
        port_base(),
    );
    let m = Arc::new(Manager::start(ca).expect("start"));
    let err = m
        .register(ClientSpec::new("c", BandwidthClass::Low, 1).region(
            "r",
            4096,
            Access::REMOTE_WRITE | Access::REMOTE_READ,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("remote READ"), "{err}");
    let h = m
        .register(
            ClientSpec::new("c", BandwidthClass::Low, 1)
                .region("w", 4096, Access::REMOTE_WRITE)
                .readable_region(
                    "r",
                    4096,
                    Access::REMOTE_READ,
                    ReadGrant::Service("the test".into()),
                ),
        )
        .expect("a granted remote READ is registered");
    let live = RegionSpec {
        purpose: "late".into(),
        len: 4096,
        access: Access::REMOTE_READ,
        read_grant: None,
    };
    assert!(h.add_region(live).is_err(), "added live without a reason");
}

/// The product grants remote READ of a client region in two places, both the shadow log's,
/// each for the reason `ReadGrant` names: the mirror region (the partner's own log, READ back
/// when its NVRAM lost it) and the flush region (zeros, READ behind mirror writes as the
/// durability point). The health block, READ by the heartbeat, is the manager's own
/// (`HEALTH_BLOCK_ACCESS`, above). A new reason is a new variant: this match stops compiling
/// until it is placed here on purpose (and in docs/security.md).
#[test]
fn the_product_grants_remote_read_only_for_the_shadow_logs_two_reasons() {
    fn products(g: &ReadGrant) -> Option<&'static str> {
        match g {
            ReadGrant::ShadowLogFetch => Some(MIRROR_REGION),
            ReadGrant::ShadowLogFlush => Some(FLUSH_REGION),
            ReadGrant::Service(_) => None,
        }
    }
    for durability in [Durability::Delivered, Durability::Read, Durability::Flush] {
        let cfg = ShadowConfig {
            durability,
            ..ShadowConfig::new()
        };
        let spec = ShadowMirror::client_spec(&cfg, 1 << 20);
        let mut readable: Vec<(&str, &'static str)> = Vec::new();
        for r in &spec.regions {
            r.check_rights()
                .expect("the product's regions pass the manager's check");
            if r.access.contains(Access::REMOTE_READ) {
                let g = r.read_grant.as_ref().expect("a reason");
                let purpose = products(g).expect("a product reason, not a service's");
                assert_eq!(r.purpose, purpose, "{g:?}");
                readable.push((r.purpose.as_str(), purpose));
            }
        }
        let want = if durability == Durability::Delivered {
            1
        } else {
            2
        };
        assert_eq!(readable.len(), want, "{durability:?}: {readable:?}");
    }
}
