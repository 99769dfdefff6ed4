//! Manager bootstrap messages: round trips, truncation, limits and typed errors for every
//! malformed field; random bytes into a session never panic.
use crate::manager_common;
use interlink::fabric::{Access, Endpoint, EndpointError, Gid, Mtu, RegionDescriptor};
use interlink::manager::session::*;
use interlink::manager::wire::*;
use interlink::manager::{BandwidthClass, ClientInfo, QpInfo, RegionInfo, Term};
use manager_common::*;
use proptest::prelude::*;

prop_compose! {
    fn arb_name()(s in "\\PC{1,16}") -> String {
        let mut s = s;
        while s.len() > MAX_NAME_LEN { s.pop(); }
        if s.is_empty() { s.push('x'); }
        s
    }
}

prop_compose! {
    fn arb_endpoint()(qpn in 1u32..=0xff_ffff, psn in 0u32..=0xff_ffff, gid in any::<[u8; 16]>(),
                      nz in 0usize..16, lid in any::<u16>(), mtu in 1u8..=5) -> Endpoint {
        let mut gid = gid;
        if gid.iter().all(|b| *b == 0) { gid[nz] = 1; }
        Endpoint { qpn, psn, gid: Gid(gid), lid, mtu: Mtu::from_code(mtu).unwrap() }
    }
}

prop_compose! {
    fn arb_region()(addr in any::<u64>(), len in any::<u64>(), rkey in any::<u32>()) -> RegionDescriptor {
        RegionDescriptor { addr, len, rkey }
    }
}

prop_compose! {
    fn arb_client()(name in arb_name(), class in 0u8..3, generation in any::<u32>(),
                    qps in prop::collection::vec((any::<u16>(), arb_endpoint()), 0..5),
                    regions in prop::collection::vec(
                        (any::<u16>(), arb_name(), 0u8..16, arb_region()), 0..5),
                    terms in prop::collection::vec((arb_name(), any::<u64>()), 0..4)) -> ClientInfo {
        ClientInfo {
            name,
            class: BandwidthClass::from_code(class).unwrap(),
            generation,
            qps: qps.into_iter().map(|(index, endpoint)| QpInfo { index, endpoint }).collect(),
            regions: regions.into_iter().map(|(id, purpose, bits, descriptor)| RegionInfo {
                id, purpose, access: Access::from_bits(bits), descriptor,
            }).collect(),
            terms: terms.into_iter().map(|(name, value)| Term { name, value }).collect(),
        }
    }
}

fn arb_detail() -> impl Strategy<Value = String> {
    "\\PC{0,80}".prop_map(|s| truncate_detail(&s))
}

fn arb_message() -> impl Strategy<Value = Message> {
    let hello = (
        any::<(u16, u16, u64, u32, u32, u8)>(),
        any::<(u64, u64)>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |((vmin, vmax, cluster, node, partner, link), (inc, caps), nonce)| {
                Message::Hello(Hello {
                    version_min: vmin,
                    version_max: vmax,
                    cluster_id: cluster,
                    node_id: node,
                    partner_id: partner,
                    link_id: link,
                    incarnation: inc,
                    capabilities: caps,
                    nonce,
                })
            },
        );
    let refuse = (1u8..=7, arb_detail()).prop_map(|(c, detail)| {
        Message::Refuse(Refuse {
            reason: RefuseReason::from_code(c).unwrap(),
            detail,
        })
    });
    let peer_info = (
        any::<(u16, u64, u32, u8, u64, u64)>(),
        arb_region(),
        arb_endpoint(),
        prop::collection::vec(arb_client(), 0..4),
    )
        .prop_map(
            |((version, cluster, node, link, inc, caps), health, heartbeat, clients)| {
                Message::PeerInfo(PeerInfo {
                    version,
                    cluster_id: cluster,
                    node_id: node,
                    link_id: link,
                    incarnation: inc,
                    capabilities: caps,
                    health,
                    heartbeat,
                    clients,
                })
            },
        );
    let ready = (
        any::<u8>(),
        prop::collection::vec((arb_name(), any::<u32>()), 0..8),
    )
        .prop_map(|(link_id, c)| Message::Ready {
            link_id,
            clients: c
                .into_iter()
                .map(|(name, generation)| ReadyClient { name, generation })
                .collect(),
        });
    let client_ready = (arb_name(), any::<u32>())
        .prop_map(|(name, generation)| Message::ClientReady { name, generation });
    let detach =
        (arb_name(), any::<u32>(), 1u8..=3).prop_map(|(name, generation, r)| Message::Detach {
            name,
            generation,
            reason: DetachReason::from_code(r).unwrap(),
        });
    let goodbye = (1u8..=2, arb_detail()).prop_map(|(r, detail)| Message::Goodbye {
        reason: GoodbyeReason::from_code(r).unwrap(),
        detail,
    });
    prop_oneof![
        hello,
        refuse,
        peer_info,
        ready,
        arb_client().prop_map(Message::Attach),
        client_ready,
        detach,
        goodbye,
    ]
}

fn frame_of(msg: &Message, key: &SessionKey) -> Vec<u8> {
    if msg.is_authenticated() {
        encode_frame(msg, 1, Some(key)).unwrap()
    } else {
        encode_frame(msg, 0, None).unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips(msg in arb_message(), key in any::<[u8; 32]>()) {
        let key = SessionKey::from_bytes(key);
        let body = encode_body(&msg).unwrap();
        prop_assert_eq!(&decode_body(msg.type_code(), &body).unwrap(), &msg);
        let frame = frame_of(&msg, &key);
        prop_assert_eq!(frame_len(&frame).unwrap(), Some(frame.len()));
        let mac = if msg.is_authenticated() { MAC_LEN } else { 0 };
        prop_assert_eq!(frame.len(), HEADER_LEN + body.len() + CRC_LEN + mac);
        let decoded = decode_frame(&frame, Some(&key)).unwrap();
        prop_assert_eq!(decoded.message, msg);
    }

    #[test]
    fn truncated_bodies_and_frames_are_errors(msg in arb_message()) {
        let key = SessionKey::from_bytes([5; 32]);
        let body = encode_body(&msg).unwrap();
        for cut in 0..body.len() {
            prop_assert!(decode_body(msg.type_code(), &body[..cut]).is_err());
        }
        let frame = frame_of(&msg, &key);
        for cut in 0..frame.len() {
            prop_assert!(decode_frame(&frame[..cut], Some(&key)).is_err());
        }
        let mut long = body.clone();
        long.push(0);
        let trailing = matches!(
            decode_body(msg.type_code(), &long),
            Err(WireError::Trailing { extra: 1, .. })
        );
        prop_assert!(trailing);
    }

    #[test]
    fn random_bodies_never_panic(ty in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_body(ty, &body);
    }

    #[test]
    fn random_bytes_never_panic_a_session(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        established in any::<bool>(),
        magic in any::<bool>(),
    ) {
        let (mut i, mut r) = if established {
            established_pair(params(Role::Initiator), params(Role::Responder))
        } else {
            (Session::new(params(Role::Initiator)), Session::new(params(Role::Responder)))
        };
        for s in [&mut i, &mut r] {
            for (n, c) in chunks.iter().enumerate() {
                let mut c = c.clone();
                // Give the header checks something to chew on past the magic.
                if magic && n == 0 && c.len() >= 5 {
                    c[..4].copy_from_slice(b"ILCM");
                    c[4] = 1;
                }
                let _ = s.handle_bytes(&c);
            }
            let _ = frames(s);
            let _ = events(s);
        }
    }
}

#[test]
fn truncation_at_every_offset_of_each_sample() {
    let key = SessionKey::from_bytes([1; 32]);
    for msg in samples() {
        let frame = frame_of(&msg, &key);
        for cut in 0..frame.len() {
            let r = decode_frame(&frame[..cut], Some(&key));
            assert!(
                matches!(r, Err(WireError::Truncated { .. })),
                "{} cut at {cut}: {r:?}",
                msg.name()
            );
        }
        let body = encode_body(&msg).unwrap();
        for cut in 0..body.len() {
            assert!(decode_body(msg.type_code(), &body[..cut]).is_err());
        }
    }
}

#[test]
fn limits_are_enforced_both_ways() {
    // Counts at the limit round-trip (within MAX_BODY); over it, encoding refuses.
    let mut c = client("big", 1);
    c.qps = (0..MAX_QPS as u16)
        .map(|index| QpInfo {
            index,
            endpoint: ep(1 + u32::from(index)),
        })
        .collect();
    let body = encode_body(&Message::Attach(c.clone())).unwrap();
    assert_eq!(
        decode_body(5, &body).unwrap(),
        Message::Attach(c.clone()),
        "1024 qps"
    );
    c.qps.push(QpInfo {
        index: 9999,
        endpoint: ep(5),
    });
    assert_eq!(
        encode_body(&Message::Attach(c)),
        Err(WireError::Count {
            field: "qp count",
            count: 1025,
            max: 1024
        })
    );
    // A PeerInfo that does not fit in MAX_BODY is refused rather than sent.
    let mut big = client("x", 1);
    big.qps = (0..1024)
        .map(|i| QpInfo {
            index: i,
            endpoint: ep(7),
        })
        .collect();
    let Message::PeerInfo(mut pi) = peer_info(&params(Role::Initiator)) else {
        unreachable!()
    };
    pi.clients = (0..40)
        .map(|n| ClientInfo {
            name: format!("c{n}"),
            ..big.clone()
        })
        .collect();
    assert!(matches!(
        encode_body(&Message::PeerInfo(pi)),
        Err(WireError::Length {
            field: "frame body",
            ..
        })
    ));
    // A decoded count over the limit is an error even before the entries.
    let mut ready_body = vec![0u8];
    ready_body.extend_from_slice(&257u16.to_be_bytes());
    assert_eq!(
        decode_body(4, &ready_body),
        Err(WireError::Count {
            field: "ready count",
            count: 257,
            max: 256
        })
    );
    // String limits.
    let name = |n: usize| Message::ClientReady {
        name: "a".repeat(n),
        generation: 0,
    };
    assert!(encode_body(&name(64)).is_ok());
    assert!(matches!(
        encode_body(&name(65)),
        Err(WireError::Length { len: 65, .. })
    ));
    assert!(matches!(
        encode_body(&name(0)),
        Err(WireError::Length { len: 0, .. })
    ));
    let detail = |n: usize| Message::Goodbye {
        reason: GoodbyeReason::Restart,
        detail: "d".repeat(n),
    };
    assert!(encode_body(&detail(256)).is_ok());
    assert!(encode_body(&detail(0)).is_ok());
    assert!(matches!(
        encode_body(&detail(257)),
        Err(WireError::Length {
            field: "goodbye detail",
            ..
        })
    ));
}

/// Decoding a sample body after `edit` fails with an error that `check` accepts.
fn corrupt(msg: &Message, edit: impl FnOnce(&mut Vec<u8>), check: impl FnOnce(&WireError) -> bool) {
    let mut body = encode_body(msg).unwrap();
    edit(&mut body);
    let err = decode_body(msg.type_code(), &body).unwrap_err();
    assert!(check(&err), "{}: {err}", msg.name());
    assert!(!err.to_string().is_empty());
}

#[test]
fn malformed_fields_give_typed_errors() {
    let s = samples();
    let (hello, refuse, pi, attach, detach, goodbye) = (&s[0], &s[1], &s[2], &s[4], &s[6], &s[7]);
    // Hello reserved byte (offset 21).
    corrupt(
        hello,
        |b| b[21] = 1,
        |e| matches!(e, WireError::Reserved { .. }),
    );
    // Refuse reason code 0 and 8; bad UTF-8 detail.
    corrupt(
        refuse,
        |b| b[0] = 8,
        |e| {
            matches!(
                e,
                WireError::Code {
                    field: "refuse reason",
                    code: 8
                }
            )
        },
    );
    corrupt(
        refuse,
        |b| b[0] = 0,
        |e| matches!(e, WireError::Code { code: 0, .. }),
    );
    corrupt(
        refuse,
        |b| b[3] = 0xff,
        |e| {
            matches!(
                e,
                WireError::Utf8 {
                    field: "refuse detail"
                }
            )
        },
    );
    // Detail length over 256.
    corrupt(
        refuse,
        |b| b[1..3].copy_from_slice(&300u16.to_be_bytes()),
        |e| matches!(e, WireError::Length { len: 300, .. }),
    );
    // Heartbeat endpoint: PeerInfo offset 2+8+4+1+8+8+20 = 51; mtu at +26, qpn at +0..4.
    corrupt(
        pi,
        |b| b[51 + 26] = 9,
        |e| {
            matches!(
                e,
                WireError::Endpoint {
                    field: "heartbeat endpoint",
                    error: EndpointError::Mtu(9)
                }
            )
        },
    );
    corrupt(
        pi,
        |b| b[51..55].fill(0),
        |e| {
            matches!(
                e,
                WireError::Endpoint {
                    error: EndpointError::Qpn(0),
                    ..
                }
            )
        },
    );
    corrupt(
        pi,
        |b| b[51 + 8..51 + 24].fill(0),
        |e| {
            matches!(
                e,
                WireError::Endpoint {
                    error: EndpointError::ZeroGid,
                    ..
                }
            )
        },
    );
    corrupt(
        pi,
        |b| b[51 + 27] = 1,
        |e| matches!(e, WireError::Reserved { .. }),
    );
    // Client count over 256 (offset 79).
    corrupt(
        pi,
        |b| b[79..81].copy_from_slice(&300u16.to_be_bytes()),
        |e| {
            matches!(
                e,
                WireError::Count {
                    field: "client count",
                    ..
                }
            )
        },
    );
    // Attach: name length 0, bandwidth class 3, qp count 2000, region access bit 4 (bits 0-3:
    // local write, remote read / write / flush).
    corrupt(
        attach,
        |b| b[0] = 0,
        |e| matches!(e, WireError::Length { len: 0, .. }),
    );
    corrupt(
        attach,
        |b| b[0] = 65,
        |e| matches!(e, WireError::Length { len: 65, .. }),
    );
    corrupt(
        attach,
        |b| b[5] = 3,
        |e| {
            matches!(
                e,
                WireError::Code {
                    field: "bandwidth class",
                    code: 3
                }
            )
        },
    );
    corrupt(
        attach,
        |b| b[10..12].copy_from_slice(&2000u16.to_be_bytes()),
        |e| {
            matches!(
                e,
                WireError::Count {
                    field: "qp count",
                    count: 2000,
                    max: 1024
                }
            )
        },
    );
    // "late": 1+4 name, 1 class, 4 gen, 2 count, 2×30 qps, 2 region count, 2 id, 1+6 purpose.
    let access = 1 + 4 + 1 + 4 + 2 + 60 + 2 + 2 + 7;
    corrupt(
        attach,
        |b| b[access] = 16,
        |e| {
            matches!(
                e,
                WireError::Code {
                    field: "region access",
                    code: 16
                }
            )
        },
    );
    corrupt(
        detach,
        |b| *b.last_mut().unwrap() = 4,
        |e| {
            matches!(
                e,
                WireError::Code {
                    field: "detach reason",
                    ..
                }
            )
        },
    );
    corrupt(
        goodbye,
        |b| b[0] = 3,
        |e| {
            matches!(
                e,
                WireError::Code {
                    field: "goodbye reason",
                    ..
                }
            )
        },
    );
    corrupt(
        goodbye,
        |b| b.push(0),
        |e| {
            matches!(
                e,
                WireError::Trailing {
                    field: "Goodbye",
                    extra: 1
                }
            )
        },
    );
    assert_eq!(
        decode_body(0, &[]),
        Err(WireError::Code {
            field: "message type",
            code: 0
        })
    );
    assert_eq!(
        decode_body(10, &[]),
        Err(WireError::Code {
            field: "message type",
            code: 10
        })
    );
}

#[test]
fn frame_header_errors() {
    let f = encode_frame(&samples()[1], 0, None).unwrap();
    let with = |i: usize, v: u8| {
        let mut g = f.clone();
        g[i] = v;
        decode_frame(&g, None).unwrap_err()
    };
    assert_eq!(
        with(0, b'X'),
        WireError::Magic {
            format: "bootstrap frame",
            found: b"XLCM".to_vec(),
            expected: b"ILCM"
        }
    );
    assert!(matches!(with(4, 2), WireError::Version { found: 2, .. }));
    assert_eq!(
        with(5, 0),
        WireError::Code {
            field: "message type",
            code: 0
        }
    );
    assert_eq!(
        with(5, 10),
        WireError::Code {
            field: "message type",
            code: 10
        }
    );
    assert_eq!(
        with(7, 1),
        WireError::Reserved {
            field: "frame flags",
            value: 1
        }
    );
    assert!(matches!(with(11, 1), WireError::Sequence { seq: 1, .. }));
    assert!(matches!(
        with(12, 1),
        WireError::Length {
            field: "frame body",
            ..
        }
    ));
    assert!(matches!(with(20, f[20] ^ 1), WireError::Checksum { .. }));
    let n = f.len();
    assert!(matches!(
        with(n - 1, f[n - 1] ^ 0x80),
        WireError::Checksum { .. }
    ));
    let mut long = f.clone();
    long.push(0);
    assert!(matches!(
        decode_frame(&long, None),
        Err(WireError::Trailing { extra: 1, .. })
    ));
    assert_eq!(frame_len(&f[..HEADER_LEN - 1]), Ok(None));
    assert_eq!(frame_len(&f[..HEADER_LEN]), Ok(Some(n)));
}

#[test]
fn key_derivation_and_redaction() {
    let a = SessionKey::derive(b"s", b"hello-i", b"hello-r");
    assert_eq!(
        a.as_bytes(),
        SessionKey::derive(b"s", b"hello-i", b"hello-r").as_bytes()
    );
    assert_ne!(
        a.as_bytes(),
        SessionKey::derive(b"t", b"hello-i", b"hello-r").as_bytes()
    );
    assert_ne!(
        a.as_bytes(),
        SessionKey::derive(b"s", b"hello-r", b"hello-i").as_bytes()
    );
    assert_eq!(format!("{a:?}"), "SessionKey(<redacted>)");
    // The two directions' keys differ from each other and from the session key.
    let (from_i, from_r) = (
        a.for_sender(FROM_INITIATOR_LABEL),
        a.for_sender(FROM_RESPONDER_LABEL),
    );
    assert_ne!(from_i.as_bytes(), from_r.as_bytes());
    assert_ne!(from_i.as_bytes(), a.as_bytes());
    assert_eq!(
        from_i.as_bytes(),
        a.for_sender(FROM_INITIATOR_LABEL).as_bytes()
    );
    let p = params(Role::Initiator);
    assert!(!format!("{p:?}").contains("cluster-secret"));
    assert_ne!(fresh_nonce(), fresh_nonce());
    assert_eq!(Role::for_nodes(1, 2), Role::Initiator);
    assert_eq!(Role::for_nodes(2, 1), Role::Responder);
}

#[test]
fn frame_layout_matches_the_documentation() {
    let key = SessionKey::from_bytes([7; 32]);
    let msg = Message::Goodbye {
        reason: GoodbyeReason::Restart,
        detail: "bye".into(),
    };
    let f = encode_frame(&msg, 5, Some(&key)).unwrap();
    assert_eq!(&f[..4], b"ILCM");
    assert_eq!((f[4], f[5]), (1, 8));
    assert_eq!(&f[6..8], &[0, 0]);
    assert_eq!(&f[8..12], &5u32.to_be_bytes());
    assert_eq!(&f[12..16], &6u32.to_be_bytes());
    assert_eq!(&f[16..22], &[2, 0, 3, b'b', b'y', b'e']);
    assert_eq!(&f[22..26], &crc32c::crc32c(&f[..22]).to_be_bytes());
    assert_eq!(f.len(), 16 + 6 + 4 + 32);
    assert_eq!(
        decode_frame(&f, Some(&key)).unwrap(),
        Frame {
            seq: 5,
            message: msg.clone()
        }
    );
    let other = SessionKey::from_bytes([8; 32]);
    assert_eq!(decode_frame(&f, Some(&other)), Err(WireError::Mac));
    assert!(matches!(
        decode_frame(&f, None),
        Err(WireError::KeyRequired { .. })
    ));
    assert!(matches!(
        encode_frame(&msg, 1, None),
        Err(WireError::KeyRequired { .. })
    ));
    let hello = encode_frame(&samples()[0], 0, None).unwrap();
    assert_eq!(hello.len(), 16 + 70 + 4);
    assert!(matches!(
        encode_frame(&samples()[1], 3, None),
        Err(WireError::Sequence { .. })
    ));
    // Refuse details are cut at a character boundary.
    let long = "é".repeat(200);
    assert_eq!(Refuse::new(RefuseReason::Auth, &long).detail.len(), 256);
}
