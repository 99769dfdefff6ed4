//! Fixtures shared by the manager protocol tests.
#![allow(dead_code)]

use interlink::fabric::{Access, Endpoint, Gid, Mtu, RegionDescriptor};
use interlink::manager::session::*;
use interlink::manager::wire::*;
use interlink::manager::{BandwidthClass, ClientInfo, QpInfo, RegionInfo, Term};
use std::net::Ipv4Addr;

pub const SECRET: &[u8] = b"cluster-secret-0123456789";

pub fn params(role: Role) -> SessionParams {
    let (node_id, partner_id, nonce) = match role {
        Role::Initiator => (1, 2, [0x11; 32]),
        Role::Responder => (2, 1, [0x22; 32]),
    };
    SessionParams {
        role,
        cluster_id: 7,
        node_id,
        partner_id,
        link_id: 0,
        incarnation: 1000 + u64::from(node_id),
        capabilities: interlink::manager::capabilities::ALL,
        version_min: 1,
        version_max: 1,
        secret: SECRET.to_vec(),
        nonce,
    }
}

pub fn ep(qpn: u32) -> Endpoint {
    Endpoint {
        qpn,
        psn: 0x123456,
        gid: Gid::from_ipv4(Ipv4Addr::new(198, 18, 0, 1)),
        lid: 0,
        mtu: Mtu::M1024,
    }
}

pub fn client(name: &str, generation: u32) -> ClientInfo {
    ClientInfo {
        name: name.into(),
        class: BandwidthClass::High,
        generation,
        qps: vec![
            QpInfo {
                index: 0,
                endpoint: ep(0x100),
            },
            QpInfo {
                index: 1,
                endpoint: ep(0x101),
            },
        ],
        regions: vec![RegionInfo {
            id: 3,
            purpose: "mirror".into(),
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            descriptor: RegionDescriptor {
                addr: 0x7f00_0000_1000,
                len: 1 << 20,
                rkey: 0xabcd,
            },
        }],
        terms: vec![Term {
            name: "window slots".into(),
            value: 64,
        }],
    }
}

pub fn peer_info(p: &SessionParams) -> Message {
    Message::PeerInfo(PeerInfo {
        version: 1,
        cluster_id: p.cluster_id,
        node_id: p.node_id,
        link_id: p.link_id,
        incarnation: p.incarnation,
        capabilities: p.capabilities,
        health: RegionDescriptor {
            addr: 0x1000,
            len: 64,
            rkey: 9,
        },
        heartbeat: ep(0x40 + p.node_id),
        clients: vec![client("nvram", 1), client("ctl", 4)],
    })
}

pub fn ready(names: &[&str]) -> Message {
    Message::Ready {
        link_id: 0,
        clients: names
            .iter()
            .map(|n| ReadyClient {
                name: n.to_string(),
                generation: 1,
            })
            .collect(),
    }
}

/// One message of every type.
pub fn samples() -> Vec<Message> {
    let p = params(Role::Initiator);
    vec![
        Message::Hello(p.hello()),
        Message::Refuse(Refuse::new(RefuseReason::Cluster, "cluster id 7 != 8")),
        peer_info(&p),
        ready(&["nvram", "ctl"]),
        Message::Attach(client("late", 2)),
        Message::ClientReady {
            name: "late".into(),
            generation: 2,
        },
        Message::Detach {
            name: "late".into(),
            generation: 2,
            reason: DetachReason::Moving,
        },
        Message::Goodbye {
            reason: GoodbyeReason::Shutdown,
            detail: "stopping".into(),
        },
        Message::Confirm { node_id: 1 },
    ]
}

pub fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

pub fn frames(s: &mut Session) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// Moves `from`'s queued frames to `to` in `chunk`-byte pieces; whether there were any.
pub fn move_frames(from: &mut Session, to: &mut Session, chunk: usize) -> bool {
    let mut moved = false;
    while let Some(f) = from.poll_transmit() {
        moved = true;
        for c in f.chunks(chunk) {
            let _ = to.handle_bytes(c);
        }
    }
    moved
}

/// Moves queued frames both ways, in `chunk`-byte pieces, until neither side has any.
pub fn pump(a: &mut Session, b: &mut Session, chunk: usize) {
    while move_frames(a, b, chunk) | move_frames(b, a, chunk) {}
}

pub fn established_pair(pi: SessionParams, pr: SessionParams) -> (Session, Session) {
    let mut i = Session::new(pi);
    let mut r = Session::new(pr);
    pump(&mut i, &mut r, usize::MAX);
    assert!(i.is_established() && r.is_established());
    (i, r)
}

pub fn failure(evs: &[SessionEvent]) -> Option<&SessionError> {
    evs.iter().find_map(|e| match e {
        SessionEvent::Failed(err) => Some(err),
        _ => None,
    })
}

pub fn messages(evs: Vec<SessionEvent>) -> Vec<Message> {
    evs.into_iter()
        .filter_map(|e| match e {
            SessionEvent::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub fn decoded_refuse(frame: &[u8]) -> Refuse {
    match decode_frame(frame, None).unwrap().message {
        Message::Refuse(r) => r,
        other => panic!("expected Refuse, got {other:?}"),
    }
}

/// The session key of the default pair (fixed nonces), before the split into directions.
pub fn pair_master_key() -> SessionKey {
    let hi = encode_frame(&Message::Hello(params(Role::Initiator).hello()), 0, None).unwrap();
    let hr = encode_frame(&Message::Hello(params(Role::Responder).hello()), 0, None).unwrap();
    SessionKey::derive(SECRET, &hi, &hr)
}

/// The key the default pair's initiator MACs its frames with: what a buggy but keyed
/// initiator signs with (its Confirm is sequence 1, so its PeerInfo is 2).
pub fn pair_key() -> SessionKey {
    pair_master_key().for_sender(FROM_INITIATOR_LABEL)
}
