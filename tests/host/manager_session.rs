//! Manager bootstrap session: handshake and message order, mismatches on both sides, wrong
//! secret, replay across and within sessions, and single-bit corruption of every frame.
use crate::manager_common;
use interlink::manager::session::*;
use interlink::manager::wire::*;
use manager_common::*;

/// The whole exchange: Hellos, PeerInfo both ways, Ready both ways, live changes, Goodbye.
/// Returns what each side received.
fn full_exchange(chunk: usize) -> (Vec<Message>, Vec<Message>) {
    let (pi, pr) = (params(Role::Initiator), params(Role::Responder));
    let mut i = Session::new(pi.clone());
    let mut r = Session::new(pr.clone());
    assert!(i.send(peer_info(&pi)).is_err(), "not established yet");
    pump(&mut i, &mut r, chunk);
    let (ei, er) = (events(&mut i), events(&mut r));
    assert_eq!(
        ei,
        vec![SessionEvent::Established {
            peer: pr.hello(),
            version: 1
        }]
    );
    assert_eq!(
        er,
        vec![SessionEvent::Established {
            peer: pi.hello(),
            version: 1
        }]
    );
    assert_eq!(i.peer_hello(), Some(&pr.hello()));
    assert_eq!((i.version(), r.version()), (Some(1), Some(1)));
    i.send(peer_info(&pi)).unwrap();
    pump(&mut i, &mut r, chunk);
    r.send(peer_info(&pr)).unwrap();
    pump(&mut i, &mut r, chunk);
    i.send(ready(&["nvram", "ctl"])).unwrap();
    pump(&mut i, &mut r, chunk);
    r.send(ready(&["nvram"])).unwrap();
    i.send(Message::Attach(client("late", 2))).unwrap();
    pump(&mut i, &mut r, chunk);
    r.send(Message::ClientReady {
        name: "late".into(),
        generation: 2,
    })
    .unwrap();
    i.send(Message::Detach {
        name: "ctl".into(),
        generation: 4,
        reason: DetachReason::Released,
    })
    .unwrap();
    i.send(Message::Goodbye {
        reason: GoodbyeReason::Shutdown,
        detail: "bye".into(),
    })
    .unwrap();
    assert_eq!(
        i.send(ready(&[])),
        Err(SessionError::Closed),
        "nothing after Goodbye"
    );
    pump(&mut i, &mut r, chunk);
    assert!(r.peer_closed() && !i.peer_closed());
    assert!(i.is_established() && r.is_established());
    assert!(!i.is_failed() && !r.is_failed());
    (messages(events(&mut i)), messages(events(&mut r)))
}

#[test]
fn full_handshake_delivers_everything_in_order() {
    let (pi, pr) = (params(Role::Initiator), params(Role::Responder));
    let expect_r = vec![
        peer_info(&pi),
        ready(&["nvram", "ctl"]),
        Message::Attach(client("late", 2)),
        Message::Detach {
            name: "ctl".into(),
            generation: 4,
            reason: DetachReason::Released,
        },
        Message::Goodbye {
            reason: GoodbyeReason::Shutdown,
            detail: "bye".into(),
        },
    ];
    let expect_i = vec![
        peer_info(&pr),
        ready(&["nvram"]),
        Message::ClientReady {
            name: "late".into(),
            generation: 2,
        },
    ];
    for chunk in [usize::MAX, 1, 7] {
        let (got_i, got_r) = full_exchange(chunk);
        assert_eq!(got_i, expect_i, "chunk {chunk}");
        assert_eq!(got_r, expect_r, "chunk {chunk}");
    }
}

#[test]
fn whole_stream_in_one_call() {
    // Everything the initiator sends, concatenated, in a single handle_bytes call.
    let (pi, pr) = (params(Role::Initiator), params(Role::Responder));
    let mut i = Session::new(pi.clone());
    let mut r0 = Session::new(pr.clone());
    let mut stream = i.poll_transmit().unwrap();
    r0.handle_bytes(&stream).unwrap();
    for f in frames(&mut r0) {
        i.handle_bytes(&f).unwrap();
    }
    assert!(i.is_established());
    i.send(peer_info(&pi)).unwrap();
    i.send(ready(&[])).unwrap();
    for f in frames(&mut i) {
        stream.extend_from_slice(&f);
    }
    // A second responder with the same nonce derives the same keys.
    let mut r = Session::new(pr);
    r.handle_bytes(&stream).unwrap();
    let evs = events(&mut r);
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert_eq!(messages(evs), vec![peer_info(&pi), ready(&[])]);
}

/// Runs the Hellos with one parameter changed and checks the typed errors on both sides.
fn mismatch(
    edit_r: impl FnOnce(&mut SessionParams),
    check_r: impl FnOnce(&SessionError) -> bool,
    reason: RefuseReason,
) {
    let mut pr = params(Role::Responder);
    edit_r(&mut pr);
    let mut i = Session::new(params(Role::Initiator));
    let mut r = Session::new(pr);
    pump(&mut i, &mut r, 3);
    let (ei, er) = (events(&mut i), events(&mut r));
    let err_r = failure(&er).expect("responder fails");
    assert!(check_r(err_r), "responder: {err_r:?}");
    assert_eq!(err_r.refuse_reason(), Some(reason));
    match failure(&ei) {
        Some(SessionError::RefusedByPeer {
            reason: got,
            detail,
        }) => {
            assert_eq!(*got, reason);
            assert_eq!(detail, &err_r.to_string());
        }
        other => panic!("initiator: {other:?}"),
    }
    for (s, ev) in [(&i, &ei), (&r, &er)] {
        assert!(!s.is_established() && s.is_failed());
        assert!(!ev
            .iter()
            .any(|e| matches!(e, SessionEvent::Established { .. })));
    }
    // Dead afterwards; the refused side sends no Refuse back.
    assert_eq!(r.handle_bytes(b"ILCM"), Err(SessionError::Closed));
    assert!(i.poll_transmit().is_none());
}

#[test]
fn version_mismatch() {
    mismatch(
        |p| {
            p.version_min = 2;
            p.version_max = 3
        },
        |e| {
            *e == SessionError::VersionMismatch {
                ours: (2, 3),
                theirs: (1, 1),
            }
        },
        RefuseReason::Version,
    );
}

#[test]
fn overlapping_versions_negotiate_the_highest_common() {
    let mut pi = params(Role::Initiator);
    pi.version_max = 4;
    let mut pr = params(Role::Responder);
    pr.version_max = 3;
    pr.version_min = 2;
    let (i, r) = established_pair(pi, pr);
    assert_eq!((i.version(), r.version()), (Some(3), Some(3)));
}

#[test]
fn cluster_mismatch() {
    mismatch(
        |p| p.cluster_id = 8,
        |e| *e == SessionError::ClusterMismatch { ours: 8, theirs: 7 },
        RefuseReason::Cluster,
    );
}

#[test]
fn node_mismatch_either_way() {
    // The responder expects node 3, but node 1 calls.
    mismatch(
        |p| p.partner_id = 3,
        |e| {
            matches!(
                e,
                SessionError::NodeMismatch {
                    expected: 3,
                    got: 1,
                    ..
                }
            )
        },
        RefuseReason::Node,
    );
    // The responder is node 5, but the initiator expects node 2.
    mismatch(
        |p| p.node_id = 5,
        |e| {
            matches!(
                e,
                SessionError::NodeMismatch {
                    expected: 5,
                    got: 2,
                    ..
                }
            )
        },
        RefuseReason::Node,
    );
}

#[test]
fn link_mismatch() {
    mismatch(
        |p| p.link_id = 1,
        |e| *e == SessionError::LinkMismatch { ours: 1, theirs: 0 },
        RefuseReason::Link,
    );
}

#[test]
fn initiator_refuses_a_bad_responder_hello() {
    let mut i = Session::new(params(Role::Initiator));
    let _ = frames(&mut i);
    let mut h = params(Role::Responder).hello();
    h.cluster_id = 99;
    let f = encode_frame(&Message::Hello(h), 0, None).unwrap();
    assert_eq!(
        i.handle_bytes(&f),
        Err(SessionError::ClusterMismatch {
            ours: 7,
            theirs: 99
        })
    );
    let out = frames(&mut i);
    assert_eq!(out.len(), 1);
    let refuse = decoded_refuse(&out[0]);
    assert_eq!(refuse.reason, RefuseReason::Cluster);
    assert!(refuse.detail.contains("7") && refuse.detail.contains("99"));
}

#[test]
fn wrong_secret_fails_authentication_on_both_sides() {
    let pi = params(Role::Initiator);
    let mut pr = params(Role::Responder);
    pr.secret = b"another-secret-entirely".to_vec();
    let mut i = Session::new(pi.clone());
    let mut r = Session::new(pr);
    pump(&mut i, &mut r, 5);
    // The initiator checks the responder's Confirm first and refuses it.
    assert_eq!(failure(&events(&mut i)), Some(&SessionError::AuthFailed));
    match failure(&events(&mut r)) {
        Some(SessionError::AuthFailed) => {}
        Some(SessionError::RefusedByPeer { reason, .. }) => assert_eq!(*reason, RefuseReason::Auth),
        other => panic!("responder: {other:?}"),
    }
    assert!(i.is_failed() && r.is_failed());
    assert_eq!(i.send(peer_info(&pi)), Err(SessionError::Closed));
}

#[test]
fn recorded_frame_fails_in_a_new_session() {
    let mut pi = params(Role::Initiator);
    let mut pr = params(Role::Responder);
    pi.nonce = fresh_nonce();
    pr.nonce = fresh_nonce();
    let (mut i1, _r1) = established_pair(pi.clone(), pr.clone());
    i1.send(peer_info(&pi)).unwrap();
    let recorded = i1.poll_transmit().unwrap();
    // Session 2: same nodes, same secret, fresh nonces.
    pi.nonce = fresh_nonce();
    pr.nonce = fresh_nonce();
    let (_i2, mut r2) = established_pair(pi, pr);
    let _ = events(&mut r2);
    assert_eq!(r2.handle_bytes(&recorded), Err(SessionError::AuthFailed));
    let refuse = decoded_refuse(&r2.poll_transmit().unwrap());
    assert_eq!(refuse.reason, RefuseReason::Auth);
}

#[test]
fn duplicated_frame_is_a_replay() {
    let pi = params(Role::Initiator);
    let (mut i, mut r) = established_pair(pi.clone(), params(Role::Responder));
    i.send(peer_info(&pi)).unwrap();
    let f = i.poll_transmit().unwrap();
    r.handle_bytes(&f).unwrap();
    assert_eq!(
        r.handle_bytes(&f),
        Err(SessionError::Replay {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        decoded_refuse(&frames(&mut r)[0]).reason,
        RefuseReason::Protocol
    );
    // A skipped frame is caught the same way.
    let (mut i, mut r) = established_pair(pi.clone(), params(Role::Responder));
    i.send(peer_info(&pi)).unwrap();
    i.send(ready(&[])).unwrap();
    let _skipped = i.poll_transmit();
    assert_eq!(
        r.handle_bytes(&i.poll_transmit().unwrap()),
        Err(SessionError::Replay {
            expected: 2,
            got: 3
        })
    );
}

#[test]
fn out_of_order_messages_are_refused() {
    let pi = params(Role::Initiator);
    let pr = params(Role::Responder);
    // An authenticated frame before the Hellos.
    let mut r = Session::new(pr.clone());
    let key = SessionKey::from_bytes([3; 32]);
    let f = encode_frame(&peer_info(&pi), 1, Some(&key)).unwrap();
    assert!(matches!(
        r.handle_bytes(&f),
        Err(SessionError::Unexpected {
            message: "PeerInfo",
            ..
        })
    ));
    assert_eq!(
        decoded_refuse(&frames(&mut r)[0]).reason,
        RefuseReason::Protocol
    );
    // A Hello after establishment.
    let (mut i, mut r) = established_pair(pi.clone(), pr.clone());
    let again = Session::new(pi.clone()).poll_transmit().unwrap();
    assert!(matches!(
        r.handle_bytes(&again),
        Err(SessionError::Unexpected {
            message: "Hello",
            ..
        })
    ));
    let _ = frames(&mut i);
    // Out of order, sent: refused locally, the session stays as it was.
    let (mut i2, mut r2) = established_pair(pi.clone(), pr.clone());
    assert_eq!(
        i2.send(ready(&[])),
        Err(SessionError::Unexpected {
            state: "awaiting PeerInfo",
            message: "Ready"
        })
    );
    assert!(i2.send(Message::Attach(client("a", 1))).is_err());
    assert!(i2.send(Message::Hello(pi.hello())).is_err());
    i2.send(peer_info(&pi)).unwrap();
    assert!(i2.send(peer_info(&pi)).is_err(), "PeerInfo only once");
    pump(&mut i2, &mut r2, 64);
    assert!(i2.is_established() && !r2.is_failed());
    // Out of order, received (from a keyed peer that does not check its order).
    let key = pair_key();
    for (script, state, message) in [
        (vec![ready(&[])], "awaiting PeerInfo", "Ready"),
        (
            vec![peer_info(&pi), Message::Attach(client("a", 1))],
            "awaiting Ready",
            "Attach",
        ),
        (
            vec![
                peer_info(&pi),
                Message::Goodbye {
                    reason: GoodbyeReason::Restart,
                    detail: String::new(),
                },
                ready(&[]),
            ],
            "closed by Goodbye",
            "Ready",
        ),
    ] {
        let (_, mut r) = established_pair(pi.clone(), pr.clone());
        let last = script.len() - 1;
        for (n, m) in script.iter().enumerate() {
            let f = encode_frame(m, n as u32 + 2, Some(&key)).unwrap();
            let res = r.handle_bytes(&f);
            if n < last {
                res.unwrap();
            } else {
                assert_eq!(res, Err(SessionError::Unexpected { state, message }));
            }
        }
    }
}

#[test]
fn peer_info_must_match_the_hello() {
    let pi = params(Role::Initiator);
    let pr = params(Role::Responder);
    let (mut i, _) = established_pair(pi.clone(), pr.clone());
    let Message::PeerInfo(mut bad) = peer_info(&pi) else {
        unreachable!()
    };
    bad.cluster_id = 9;
    assert_eq!(
        i.send(Message::PeerInfo(bad.clone())),
        Err(SessionError::PeerInfoMismatch {
            field: "peer info cluster_id"
        })
    );
    assert!(
        i.is_established(),
        "local error leaves the session as it was"
    );
    // Received from a peer that does not check its own PeerInfo.
    for (edit, field) in [
        (
            Box::new(|p: &mut PeerInfo| p.node_id = 9) as Box<dyn Fn(&mut PeerInfo)>,
            "peer info node_id",
        ),
        (
            Box::new(|p: &mut PeerInfo| p.link_id = 3),
            "peer info link_id",
        ),
        (
            Box::new(|p: &mut PeerInfo| p.version = 2),
            "peer info version",
        ),
        (
            Box::new(|p: &mut PeerInfo| p.cluster_id = 1),
            "peer info cluster_id",
        ),
    ] {
        let (_i, mut r) = established_pair(pi.clone(), pr.clone());
        let _ = events(&mut r);
        let Message::PeerInfo(mut p) = peer_info(&pi) else {
            unreachable!()
        };
        // Tampering on the wire fails the MAC, so sign the bad body with the session key the
        // way a buggy peer would.
        edit(&mut p);
        let forged = encode_frame(&Message::PeerInfo(p), 2, Some(&pair_key())).unwrap();
        assert_eq!(
            r.handle_bytes(&forged),
            Err(SessionError::PeerInfoMismatch { field })
        );
    }
}

#[test]
fn ready_must_name_this_link() {
    let pi = params(Role::Initiator);
    let (mut i, mut r) = established_pair(pi.clone(), params(Role::Responder));
    i.send(peer_info(&pi)).unwrap();
    assert_eq!(
        i.send(Message::Ready {
            link_id: 4,
            clients: vec![]
        }),
        Err(SessionError::PeerInfoMismatch {
            field: "ready link_id"
        })
    );
    pump(&mut i, &mut r, 100);
    let key = pair_key();
    let f = encode_frame(
        &Message::Ready {
            link_id: 4,
            clients: vec![],
        },
        3,
        Some(&key),
    )
    .unwrap();
    assert_eq!(
        r.handle_bytes(&f),
        Err(SessionError::PeerInfoMismatch {
            field: "ready link_id"
        })
    );
}

#[test]
fn refuse_from_peer_at_any_time() {
    let refuse = encode_frame(
        &Message::Refuse(Refuse::new(RefuseReason::Busy, "link 0 taken")),
        0,
        None,
    )
    .unwrap();
    let expect = SessionError::RefusedByPeer {
        reason: RefuseReason::Busy,
        detail: "link 0 taken".into(),
    };
    let mut i = Session::new(params(Role::Initiator));
    let _ = frames(&mut i);
    assert_eq!(i.handle_bytes(&refuse), Err(expect.clone()));
    assert!(
        i.poll_transmit().is_none(),
        "no Refuse in answer to a Refuse"
    );
    let (_, mut r) = established_pair(params(Role::Initiator), params(Role::Responder));
    assert_eq!(r.handle_bytes(&refuse), Err(expect));
    assert!(r.poll_transmit().is_none());
}

#[test]
fn local_refusal_reaches_the_peer() {
    let mut i = Session::new(params(Role::Initiator));
    let mut r = Session::new(params(Role::Responder));
    r.refuse(RefuseReason::Busy, "link 0 already has a session");
    pump(&mut i, &mut r, 16);
    assert!(matches!(
        r.error(),
        Some(SessionError::LocalRefusal {
            reason: RefuseReason::Busy,
            ..
        })
    ));
    assert_eq!(
        i.error(),
        Some(&SessionError::RefusedByPeer {
            reason: RefuseReason::Busy,
            detail: "link 0 already has a session".into()
        })
    );
}

/// The clean transcript of `full_exchange`: frames sent by the initiator and the responder.
fn transcript() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (pi, pr) = (params(Role::Initiator), params(Role::Responder));
    let mut i = Session::new(pi.clone());
    let mut r = Session::new(pr.clone());
    let (mut from_i, mut from_r) = (Vec::new(), Vec::new());
    let mut shuttle = |i: &mut Session, r: &mut Session| loop {
        let (fi, fr) = (frames(i), frames(r));
        if fi.is_empty() && fr.is_empty() {
            return;
        }
        for f in fi {
            r.handle_bytes(&f).unwrap();
            from_i.push(f);
        }
        for f in fr {
            i.handle_bytes(&f).unwrap();
            from_r.push(f);
        }
    };
    shuttle(&mut i, &mut r);
    i.send(peer_info(&pi)).unwrap();
    r.send(peer_info(&pr)).unwrap();
    i.send(ready(&["nvram"])).unwrap();
    r.send(ready(&["ctl"])).unwrap();
    i.send(Message::Attach(client("late", 2))).unwrap();
    r.send(Message::ClientReady {
        name: "nvram".into(),
        generation: 1,
    })
    .unwrap();
    i.send(Message::Goodbye {
        reason: GoodbyeReason::Restart,
        detail: String::new(),
    })
    .unwrap();
    shuttle(&mut i, &mut r);
    (from_i, from_r)
}

#[test]
fn every_single_bit_flip_is_caught() {
    let (from_i, from_r) = transcript();
    assert_eq!((from_i.len(), from_r.len()), (6, 5));
    let mut outcomes = [0usize; 3];
    for (receiver_role, stream) in [(Role::Responder, &from_i), (Role::Initiator, &from_r)] {
        for k in 0..stream.len() {
            for bit in 0..stream[k].len() * 8 {
                let mut s = Session::new(params(receiver_role));
                for f in &stream[..k] {
                    s.handle_bytes(f).unwrap();
                }
                let _ = events(&mut s);
                let mut bad = stream[k].clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                match s.handle_bytes(&bad) {
                    Err(SessionError::Decode(WireError::Checksum { .. })) => outcomes[0] += 1,
                    Err(SessionError::AuthFailed) => outcomes[1] += 1,
                    Err(SessionError::Decode(_)) => outcomes[2] += 1,
                    Ok(()) => {
                        // A longer body length: the session waits for bytes; whatever follows
                        // cannot make the frame verify.
                        for f in &stream[k + 1..] {
                            let _ = s.handle_bytes(f);
                        }
                        let _ = s.handle_bytes(&[0u8; 4096]);
                    }
                    Err(other) => panic!("frame {k} bit {bit}: {other:?}"),
                }
                let evs = events(&mut s);
                assert!(
                    evs.iter().all(|e| matches!(e, SessionEvent::Failed(_))),
                    "frame {k} bit {bit} accepted: {evs:?}"
                );
            }
        }
    }
    assert!(outcomes.iter().all(|n| *n > 0), "{outcomes:?}");
}

#[test]
fn session_errors_name_the_cause() {
    let e = SessionError::ClusterMismatch { ours: 7, theirs: 8 };
    assert!(e.to_string().contains('7') && e.to_string().contains('8'));
    assert_eq!(
        SessionError::AuthFailed.refuse_reason(),
        Some(RefuseReason::Auth)
    );
    assert_eq!(SessionError::Closed.refuse_reason(), None);
    assert_eq!(
        SessionError::RefusedByPeer {
            reason: RefuseReason::Auth,
            detail: String::new()
        }
        .refuse_reason(),
        None
    );
    assert_eq!(
        SessionError::Replay {
            expected: 2,
            got: 1
        }
        .refuse_reason(),
        Some(RefuseReason::Protocol)
    );
}
