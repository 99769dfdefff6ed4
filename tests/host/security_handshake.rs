//! Security properties of the bootstrap handshake (docs/security.md, "Peer authentication"),
//! on the sans-IO session, deterministically: a peer that does not hold the cluster secret
//! never receives a PeerInfo (the frame that carries region descriptors and rkeys), a
//! replayed handshake or a reflected Confirm is refused, and the session reports nothing the
//! driver would act on (Established, messages) before the peer proved it holds the key.
use crate::manager_common;
use interlink::manager::session::*;
use interlink::manager::wire::*;
use manager_common::*;

/// The message type byte of a frame (header offset 5).
fn types(frames: &[Vec<u8>]) -> Vec<MessageType> {
    frames
        .iter()
        .map(|f| MessageType::from_code(f[5]).expect("valid type"))
        .collect()
}

/// Every frame `s` transmits while it handles `input`, one frame after the other.
fn feed(s: &mut Session, input: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = frames(s);
    for f in input {
        let _ = s.handle_bytes(f);
        out.extend(frames(s));
    }
    out
}

/// A responder that has received the default initiator's Hello (and queued its Hello and
/// Confirm).
fn responder_after_hello() -> Session {
    let mut r = Session::new(params(Role::Responder));
    r.handle_bytes(
        &Session::new(params(Role::Initiator))
            .poll_transmit()
            .unwrap(),
    )
    .unwrap();
    r
}

/// The session reported nothing its driver would act on: no `Established`, no message.
fn assert_nothing_acted_on(s: &mut Session) {
    let evs = events(s);
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            SessionEvent::Established { .. } | SessionEvent::Message(_)
        )),
        "{evs:?}"
    );
}

/// An impostor on the interconnect: knows the ids (they are not secret) and speaks the
/// protocol, but holds the wrong secret. Whether it plays the Initiator or the Responder, the
/// honest side sends only Hello, Confirm and Refuse, reports no `Established` and refuses to
/// send a PeerInfo.
#[test]
fn a_peer_without_the_secret_never_gets_a_region_descriptor() {
    for impostor_role in [Role::Initiator, Role::Responder] {
        let honest_role = match impostor_role {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        };
        let honest_params = params(honest_role);
        let mut bad = params(impostor_role);
        bad.secret = b"guessed-secret".to_vec();
        let mut honest = Session::new(honest_params.clone());
        let mut impostor = Session::new(bad);
        let mut sent_by_honest = Vec::new();
        loop {
            let from_honest = frames(&mut honest);
            let from_impostor = frames(&mut impostor);
            if from_honest.is_empty() && from_impostor.is_empty() {
                break;
            }
            for f in &from_honest {
                let _ = impostor.handle_bytes(f);
            }
            for f in &from_impostor {
                let _ = honest.handle_bytes(f);
            }
            // The driver sends its PeerInfo as soon as the session allows it.
            let _ = honest.send(peer_info(&honest_params));
            sent_by_honest.extend(from_honest);
        }
        sent_by_honest.extend(frames(&mut honest));
        for ty in types(&sent_by_honest) {
            assert!(
                matches!(
                    ty,
                    MessageType::Hello | MessageType::Confirm | MessageType::Refuse
                ),
                "{honest_role:?} sent {ty:?} to an impostor"
            );
        }
        let evs = events(&mut honest);
        assert!(
            !evs.iter()
                .any(|e| matches!(e, SessionEvent::Established { .. })),
            "{honest_role:?} reported Established: {evs:?}"
        );
        match failure(&evs) {
            Some(SessionError::AuthFailed) => {}
            Some(SessionError::RefusedByPeer {
                reason: RefuseReason::Auth,
                ..
            }) => {}
            other => panic!("{honest_role:?}: {other:?}"),
        }
        assert!(!honest.is_established());
        assert!(honest.send(peer_info(&honest_params)).is_err());
    }
}

/// Until the peer's Confirm verifies, the session refuses to send, whatever the driver asks.
#[test]
fn nothing_is_sent_before_the_peers_confirm() {
    let pi = params(Role::Initiator);
    let mut i = Session::new(pi.clone());
    let mut r = Session::new(params(Role::Responder));
    r.handle_bytes(&i.poll_transmit().unwrap()).unwrap();
    let from_r = frames(&mut r);
    assert_eq!(
        types(&from_r),
        vec![MessageType::Hello, MessageType::Confirm]
    );
    // The responder has sent its Confirm but not seen the initiator's: not established.
    assert!(!r.is_established());
    assert_eq!(
        r.send(peer_info(&params(Role::Responder))),
        Err(SessionError::NotEstablished)
    );
    // The initiator has the responder's Hello only: keys derived, nothing confirmed.
    i.handle_bytes(&from_r[0]).unwrap();
    assert!(!i.is_established());
    assert_eq!(i.send(peer_info(&pi)), Err(SessionError::NotEstablished));
    assert_eq!(events(&mut i), vec![]);
    // The responder's Confirm: now the initiator may send.
    i.handle_bytes(&from_r[1]).unwrap();
    assert!(i.is_established());
    assert!(matches!(
        events(&mut i)[..],
        [SessionEvent::Established { .. }]
    ));
    i.send(peer_info(&pi)).unwrap();
    // The driver cannot forge the session's own Confirm.
    assert!(matches!(
        i.send(Message::Confirm { node_id: 1 }),
        Err(SessionError::Unexpected { .. })
    ));
}

/// A keyed but buggy peer that skips its Confirm: its PeerInfo is refused, not believed.
#[test]
fn a_peer_info_in_place_of_the_confirm_is_refused() {
    let pi = params(Role::Initiator);
    let mut r = Session::new(params(Role::Responder));
    r.handle_bytes(&Session::new(pi.clone()).poll_transmit().unwrap())
        .unwrap();
    let f = encode_frame(&peer_info(&pi), 1, Some(&pair_key())).unwrap();
    assert_eq!(
        r.handle_bytes(&f),
        Err(SessionError::Unexpected {
            state: "awaiting key confirmation",
            message: "PeerInfo"
        })
    );
    assert_nothing_acted_on(&mut r);
}

/// A Confirm naming another node (a keyed peer confused about who it is) is refused.
#[test]
fn a_confirm_must_name_the_peer() {
    let mut r = responder_after_hello();
    let f = encode_frame(&Message::Confirm { node_id: 3 }, 1, Some(&pair_key())).unwrap();
    assert_eq!(
        r.handle_bytes(&f),
        Err(SessionError::PeerInfoMismatch {
            field: "confirm node_id"
        })
    );
}

/// A recorded handshake (Hello and Confirm of an earlier session, its old nonce) replayed to
/// a responder: the responder's fresh nonce changes the keys, the old Confirm fails its MAC,
/// and nothing is reported or sent but Hello, Confirm and the Refuse.
#[test]
fn a_replayed_handshake_is_refused() {
    let mut pi = params(Role::Initiator);
    let mut pr = params(Role::Responder);
    pi.nonce = fresh_nonce();
    pr.nonce = fresh_nonce();
    // Session 1, recorded from the wire.
    let mut i1 = Session::new(pi.clone());
    let mut r1 = Session::new(pr.clone());
    let hello_i = i1.poll_transmit().unwrap();
    r1.handle_bytes(&hello_i).unwrap();
    for f in frames(&mut r1) {
        i1.handle_bytes(&f).unwrap();
    }
    i1.send(peer_info(&pi)).unwrap();
    let recorded: Vec<Vec<u8>> = std::iter::once(hello_i).chain(frames(&mut i1)).collect();
    assert_eq!(
        types(&recorded),
        vec![
            MessageType::Hello,
            MessageType::Confirm,
            MessageType::PeerInfo
        ]
    );
    // Session 2: the same responder node, a fresh nonce.
    pr.nonce = fresh_nonce();
    let mut r2 = Session::new(pr);
    let sent = feed(&mut r2, &recorded);
    assert_eq!(r2.error(), Some(&SessionError::AuthFailed));
    assert_eq!(
        types(&sent),
        vec![
            MessageType::Hello,
            MessageType::Confirm,
            MessageType::Refuse
        ]
    );
    assert_nothing_acted_on(&mut r2);
}

/// One key per direction: the responder's own Confirm reflected back to it does not verify
/// (with one key for both directions it would, and a keyless impostor could complete the
/// handshake by echoing).
#[test]
fn a_reflected_confirm_is_refused() {
    let mut r = responder_after_hello();
    let from_r = frames(&mut r);
    assert_eq!(types(&from_r)[1], MessageType::Confirm);
    assert_eq!(r.handle_bytes(&from_r[1]), Err(SessionError::AuthFailed));
    // Signed with the right (initiator's) key but naming the responder itself, the same
    // echo is refused by the identity check.
    let echo = encode_frame(&Message::Confirm { node_id: 2 }, 1, Some(&pair_key())).unwrap();
    let mut r = responder_after_hello();
    assert!(matches!(
        r.handle_bytes(&echo),
        Err(SessionError::PeerInfoMismatch { .. })
    ));
}

/// A tampered authenticated frame (each byte of a PeerInfo's body flipped in turn, CRC
/// recomputed the way an attacker would) fails its MAC: `AuthFailed`, never a message.
#[test]
fn a_tampered_frame_with_a_fixed_checksum_is_refused() {
    let pi = params(Role::Initiator);
    let (mut i, _r) = established_pair(pi.clone(), params(Role::Responder));
    i.send(peer_info(&pi)).unwrap();
    let good = i.poll_transmit().unwrap();
    let body_end = good.len() - CRC_LEN - MAC_LEN;
    for k in HEADER_LEN..body_end {
        let (_i, mut r) = established_pair(pi.clone(), params(Role::Responder));
        let _ = events(&mut r);
        let mut bad = good.clone();
        bad[k] ^= 0x01;
        let crc = crc32c::crc32c(&bad[..body_end]);
        bad[body_end..body_end + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            r.handle_bytes(&bad),
            Err(SessionError::AuthFailed),
            "byte {k}"
        );
        assert!(!events(&mut r)
            .iter()
            .any(|e| matches!(e, SessionEvent::Message(_))));
    }
}

/// Session parameters as the manager builds them for each bootstrap connection
/// (`runtime.rs`): the fixture's identities with `nonce: fresh_nonce()`.
fn params_with_fresh_nonce(role: Role) -> SessionParams {
    SessionParams {
        nonce: fresh_nonce(),
        ..params(role)
    }
}

/// The Hello frame `p` sends (the bytes the session key is derived over).
fn hello_frame(p: &SessionParams) -> Vec<u8> {
    encode_frame(&Message::Hello(p.hello()), 0, None).unwrap()
}

/// `fresh_nonce` gives 32 bytes from the OS generator: 1,000 of them are all different, and
/// every one of the 32 positions varies (a constant, a counter or a partly filled nonce
/// fails). Each position should take about 250 of its 256 values; fewer than 100 has a
/// probability below 10^-100.
#[test]
fn fresh_nonces_are_32_random_bytes_never_repeated() {
    let nonces: Vec<[u8; 32]> = (0..1000).map(|_| fresh_nonce()).collect();
    let distinct: std::collections::HashSet<_> = nonces.iter().collect();
    assert_eq!(distinct.len(), nonces.len(), "a nonce repeated");
    for pos in 0..32 {
        let values: std::collections::HashSet<u8> = nonces.iter().map(|n| n[pos]).collect();
        assert!(
            values.len() >= 100,
            "byte {pos} of the nonce took only {} values",
            values.len()
        );
    }
}

/// Two connections between the same nodes, parameters built the way the manager builds them:
/// the Hellos carry different nonces, so the two sessions derive different keys and their
/// Confirms differ (a recording of one is worthless in the other).
#[test]
fn two_sessions_built_the_normal_way_get_different_nonces_and_keys() {
    let mut seen_keys = Vec::new();
    let mut seen_confirms = Vec::new();
    for _ in 0..2 {
        let (pi, pr) = (
            params_with_fresh_nonce(Role::Initiator),
            params_with_fresh_nonce(Role::Responder),
        );
        let mut i = Session::new(pi.clone());
        let mut r = Session::new(pr.clone());
        r.handle_bytes(&i.poll_transmit().unwrap()).unwrap();
        let from_r = frames(&mut r);
        for f in &from_r {
            i.handle_bytes(f).unwrap();
        }
        assert!(i.is_established());
        assert_eq!(i.peer_hello().unwrap().nonce, pr.nonce);
        seen_keys
            .push(*SessionKey::derive(SECRET, &hello_frame(&pi), &hello_frame(&pr)).as_bytes());
        seen_confirms.push(from_r[1].clone());
    }
    assert_ne!(
        seen_keys[0], seen_keys[1],
        "two sessions derived the same key"
    );
    assert_ne!(seen_confirms[0], seen_confirms[1]);
}

/// The session key depends on each side's nonce on its own: a fresh nonce on either side
/// alone (the other side replaying its old one) gives a different key.
#[test]
fn each_sides_nonce_alone_changes_the_session_key() {
    let pi = params_with_fresh_nonce(Role::Initiator);
    let pr = params_with_fresh_nonce(Role::Responder);
    let key = |i: &SessionParams, r: &SessionParams| {
        *SessionKey::derive(SECRET, &hello_frame(i), &hello_frame(r)).as_bytes()
    };
    let base = key(&pi, &pr);
    assert_eq!(base, key(&pi, &pr));
    let pi2 = params_with_fresh_nonce(Role::Initiator);
    let pr2 = params_with_fresh_nonce(Role::Responder);
    assert_ne!(
        base,
        key(&pi2, &pr),
        "the initiator's nonce is not in the key"
    );
    assert_ne!(
        base,
        key(&pi, &pr2),
        "the responder's nonce is not in the key"
    );
}

/// The mirror of `a_replayed_handshake_is_refused`: a recorded responder Hello and Confirm
/// replayed to an initiator that connects again with a fresh nonce (an impostor in the
/// responder's place, without the secret) fails the Confirm's MAC: `AuthFailed`, no
/// `Established`, and the initiator sends nothing but Hello, Confirm and the Refuse.
#[test]
fn a_replayed_handshake_is_refused_by_the_initiator() {
    let pi = params_with_fresh_nonce(Role::Initiator);
    let pr = params_with_fresh_nonce(Role::Responder);
    // Session 1, recorded from the wire.
    let mut i1 = Session::new(pi);
    let mut r1 = Session::new(pr);
    r1.handle_bytes(&i1.poll_transmit().unwrap()).unwrap();
    let recorded = frames(&mut r1);
    assert_eq!(
        types(&recorded),
        vec![MessageType::Hello, MessageType::Confirm]
    );
    for f in &recorded {
        i1.handle_bytes(f).unwrap();
    }
    assert!(i1.is_established(), "the recording is of a good session");
    // Session 2: the same initiator node, a fresh nonce; the recording answers it.
    let mut i2 = Session::new(params_with_fresh_nonce(Role::Initiator));
    let sent = feed(&mut i2, &recorded);
    assert_eq!(i2.error(), Some(&SessionError::AuthFailed));
    assert_eq!(
        types(&sent),
        vec![
            MessageType::Hello,
            MessageType::Confirm,
            MessageType::Refuse
        ]
    );
    assert_nothing_acted_on(&mut i2);
}
