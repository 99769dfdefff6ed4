//! Sans-IO authenticated bootstrap session: one per link per bootstrap TCP connection.
//!
//! The driver feeds received bytes to [`Session::handle_bytes`] (any split of the stream),
//! writes whatever [`Session::poll_transmit`] yields, and reacts to [`Session::poll_event`].
//! The session owns no socket, clock or thread; timeouts are the driver's.
//!
//! Handshake: the Initiator (the node with the lower id, which connects) sends its Hello at
//! once; the Responder checks it and answers with its own Hello, or with a Refuse. Both sides
//! then derive the session key from the shared secret and both Hello frames
//! ([`SessionKey::derive`]), split it into one key per direction ([`SessionKey::for_sender`])
//! and send a Confirm: an authenticated frame (sequence 1) that proves the sender holds the
//! key. Only when the peer's Confirm verifies does the session report
//! [`SessionEvent::Established`] and accept [`Session::send`]: so nothing the driver sends
//! (PeerInfo with region descriptors and rkeys, Attach) reaches a peer that has not proven it
//! knows the cluster secret, and nothing the peer's Hello claims (its incarnation) is acted on
//! before then. A wrong secret shows at the first Confirm: [`SessionError::AuthFailed`] on the
//! receiving side and [`SessionError::RefusedByPeer`] with [`RefuseReason::Auth`] on the other.
//! Every authenticated frame is sequenced (1, 2, 3... per direction).
//!
//! Each direction must follow Confirm → PeerInfo → Ready → any number of Attach / ClientReady / Detach,
//! with Goodbye allowed at any point after the Hellos; the session enforces this both for what
//! it receives (a violation fails the session) and what it is asked to send (the call fails,
//! the session does not).

use crate::fabric::PacketKey;
use crate::manager::types::{LinkId, NodeId};
use crate::manager::wire::{
    decode_body, encode_frame, frame_len, open_frame, truncate_detail, Hello, Message, MessageType,
    PeerInfo, Refuse, RefuseReason, SessionKey, WireError, FROM_INITIATOR_LABEL,
    FROM_RESPONDER_LABEL, PACKET_KEY_LABEL,
};
use rand::RngCore;
use std::collections::VecDeque;
use std::fmt;
use tracing::{debug, warn};

/// Which end of the bootstrap connection a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Connects and speaks first (the node with the lower node id).
    Initiator,
    /// Accepts and answers.
    Responder,
}

impl Role {
    /// The role of `node_id` towards `partner_id`: the lower id is the Initiator.
    pub fn for_nodes(node_id: NodeId, partner_id: NodeId) -> Role {
        if node_id < partner_id {
            Role::Initiator
        } else {
            Role::Responder
        }
    }
}

/// Everything a session needs to know about this node and link.
#[derive(Clone)]
pub struct SessionParams {
    /// Our end.
    pub role: Role,
    /// Cluster id (must equal the peer's).
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// The node we expect at the other end.
    pub partner_id: NodeId,
    /// The link this connection belongs to (must equal the peer's).
    pub link_id: LinkId,
    /// This node's incarnation.
    pub incarnation: u64,
    /// Our capability bits.
    pub capabilities: u64,
    /// Lowest protocol version we speak.
    pub version_min: u16,
    /// Highest protocol version we speak.
    pub version_max: u16,
    /// The shared cluster secret (keys the session key derivation).
    pub secret: Vec<u8>,
    /// Our Hello nonce: fresh for every connection ([`fresh_nonce`]).
    pub nonce: [u8; 32],
}

impl SessionParams {
    /// The Hello these parameters send.
    pub fn hello(&self) -> Hello {
        Hello {
            version_min: self.version_min,
            version_max: self.version_max,
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            partner_id: self.partner_id,
            link_id: self.link_id,
            incarnation: self.incarnation,
            capabilities: self.capabilities,
            nonce: self.nonce,
        }
    }
}

impl fmt::Debug for SessionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionParams")
            .field("role", &self.role)
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("partner_id", &self.partner_id)
            .field("link_id", &self.link_id)
            .field("incarnation", &self.incarnation)
            .field("capabilities", &self.capabilities)
            .field("version_min", &self.version_min)
            .field("version_max", &self.version_max)
            .field("secret", &"<redacted>")
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// 32 random bytes from the operating system's generator, for [`SessionParams::nonce`].
pub fn fresh_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// What a session reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The Hellos agree; the session key is derived. Authenticated messages may be sent.
    Established {
        /// The peer's Hello.
        peer: Hello,
        /// The negotiated protocol version.
        version: u16,
    },
    /// An authenticated message from the peer, verified and in order.
    Message(Message),
    /// The session failed; nothing more is accepted (queued frames, such as a Refuse, may
    /// still be flushed).
    Failed(SessionError),
}

/// Why a session failed, or why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A received frame or body is malformed.
    #[error("malformed frame from peer: {0}")]
    Decode(#[source] WireError),
    /// A message given to [`Session::send`] cannot be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[source] WireError),
    /// The protocol version ranges do not overlap.
    #[error(
        "no common protocol version: ours {}..={}, peer's {}..={}",
        ours.0, ours.1, theirs.0, theirs.1
    )]
    VersionMismatch {
        /// Our range.
        ours: (u16, u16),
        /// The peer's range.
        theirs: (u16, u16),
    },
    /// The cluster ids differ.
    #[error("cluster id mismatch: ours {ours}, peer's {theirs}")]
    ClusterMismatch {
        /// Ours.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The peer is not the node we expect, or does not expect us.
    #[error("node id mismatch in {field}: expected {expected}, got {got}")]
    NodeMismatch {
        /// Which Hello field: "hello node_id" (who the peer is) or "hello partner_id" (who
        /// the peer expects).
        field: &'static str,
        /// The value we expect.
        expected: NodeId,
        /// The value in the Hello.
        got: NodeId,
    },
    /// The link ids differ (the connection reached the wrong link's port).
    #[error("link id mismatch: ours {ours}, peer's {theirs}")]
    LinkMismatch {
        /// Ours.
        ours: LinkId,
        /// The peer's.
        theirs: LinkId,
    },
    /// An authenticated frame does not verify under the session key (different secrets, a
    /// frame from another session, or tampering).
    #[error("authentication failed: frame does not verify under the session key (different cluster secrets, or a frame from another session)")]
    AuthFailed,
    /// An authenticated frame out of sequence (a replay, duplicate or lost frame).
    #[error("sequence number {got} where {expected} was expected (replayed or duplicated frame)")]
    Replay {
        /// The next sequence number.
        expected: u32,
        /// The one received.
        got: u32,
    },
    /// The peer sent a Refuse.
    #[error("refused by peer ({reason}): {detail}")]
    RefusedByPeer {
        /// The peer's reason.
        reason: RefuseReason,
        /// The peer's detail text.
        detail: String,
    },
    /// We refused the peer ([`Session::refuse`]).
    #[error("refused peer ({reason}): {detail}")]
    LocalRefusal {
        /// Our reason.
        reason: RefuseReason,
        /// Our detail text.
        detail: String,
    },
    /// A message that is not allowed at this point of the protocol.
    #[error("unexpected {message} while {state}")]
    Unexpected {
        /// Where the protocol was.
        state: &'static str,
        /// The message type.
        message: &'static str,
    },
    /// A PeerInfo (or Ready) field disagrees with the Hello or the negotiated version.
    #[error("{field} disagrees with the hello or negotiated version")]
    PeerInfoMismatch {
        /// The field.
        field: &'static str,
    },
    /// Every sequence number of this session is used; open a new one.
    #[error("sequence numbers exhausted; the session must be re-established")]
    SequenceExhausted,
    /// [`Session::send`] before the Hellos completed.
    #[error("session not established yet")]
    NotEstablished,
    /// The session has failed or was closed with Goodbye.
    #[error("session is closed")]
    Closed,
}

impl SessionError {
    /// The reason we send (or sent) to the peer in a Refuse for this error; `None` when no
    /// Refuse goes out (the peer refused us, or the error is local).
    pub fn refuse_reason(&self) -> Option<RefuseReason> {
        Some(match self {
            SessionError::Decode(_)
            | SessionError::Replay { .. }
            | SessionError::Unexpected { .. }
            | SessionError::PeerInfoMismatch { .. } => RefuseReason::Protocol,
            SessionError::VersionMismatch { .. } => RefuseReason::Version,
            SessionError::ClusterMismatch { .. } => RefuseReason::Cluster,
            SessionError::NodeMismatch { .. } => RefuseReason::Node,
            SessionError::LinkMismatch { .. } => RefuseReason::Link,
            SessionError::AuthFailed => RefuseReason::Auth,
            SessionError::LocalRefusal { reason, .. } => *reason,
            SessionError::Encode(_)
            | SessionError::RefusedByPeer { .. }
            | SessionError::SequenceExhausted
            | SessionError::NotEstablished
            | SessionError::Closed => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    /// Hellos agree, keys derived, our Confirm queued; the peer's Confirm not yet verified.
    AwaitConfirm,
    Established,
    Failed,
}

/// Where one direction of the authenticated exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    PeerInfo,
    Ready,
    Live,
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::PeerInfo => "awaiting PeerInfo",
            Phase::Ready => "awaiting Ready",
            Phase::Live => "live",
            Phase::Closed => "closed by Goodbye",
        }
    }
    /// The phase after `ty`, or `None` when `ty` is not allowed now.
    fn after(self, ty: MessageType) -> Option<Phase> {
        match (self, ty) {
            (Phase::PeerInfo, MessageType::PeerInfo) => Some(Phase::Ready),
            (Phase::Ready, MessageType::Ready) => Some(Phase::Live),
            (Phase::Live, MessageType::Attach | MessageType::ClientReady | MessageType::Detach) => {
                Some(Phase::Live)
            }
            (Phase::PeerInfo | Phase::Ready | Phase::Live, MessageType::Goodbye) => {
                Some(Phase::Closed)
            }
            _ => None,
        }
    }
}

/// One bootstrap session (see the module documentation).
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    state: State,
    our_hello_frame: Vec<u8>,
    peer_hello: Option<Hello>,
    version: Option<u16>,
    /// MACs what we send (our direction's key).
    send_key: Option<SessionKey>,
    /// Verifies what we receive (the peer's direction's key).
    recv_key: Option<SessionKey>,
    /// The key the soft provider seals this link's packets under (both sides derive it).
    packet_key: Option<PacketKey>,
    /// Last sequence number sent (0: none yet).
    sent_seq: u32,
    /// Last sequence number received (0: none yet).
    recv_seq: u32,
    send_phase: Phase,
    recv_phase: Phase,
    rx: Vec<u8>,
    tx: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    error: Option<SessionError>,
}

impl Session {
    /// A new session. The Initiator's Hello is queued at once.
    pub fn new(params: SessionParams) -> Session {
        let hello = Message::Hello(params.hello());
        let mut s = Session {
            params,
            state: State::AwaitHello,
            our_hello_frame: Vec::new(),
            peer_hello: None,
            version: None,
            send_key: None,
            recv_key: None,
            packet_key: None,
            sent_seq: 0,
            recv_seq: 0,
            send_phase: Phase::PeerInfo,
            recv_phase: Phase::PeerInfo,
            rx: Vec::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            error: None,
        };
        match encode_frame(&hello, 0, None) {
            Ok(frame) => {
                s.our_hello_frame = frame;
                if s.params.role == Role::Initiator {
                    s.queue(s.our_hello_frame.clone(), MessageType::Hello, 0);
                }
            }
            // A Hello has only fixed-size fields; this cannot happen, but fail cleanly.
            Err(e) => {
                let _ = s.fail(SessionError::Encode(e));
            }
        }
        s
    }

    /// Feeds bytes received from the connection (any split of the stream). Complete frames
    /// are processed at once; events are queued. On the first error the session fails: the
    /// error is returned (and reported as [`SessionEvent::Failed`]), a Refuse is queued when
    /// [`SessionError::refuse_reason`] says so, and later calls return
    /// [`SessionError::Closed`].
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<(), SessionError> {
        if self.state == State::Failed {
            return Err(SessionError::Closed);
        }
        self.rx.extend_from_slice(data);
        loop {
            let len = match frame_len(&self.rx) {
                Ok(Some(len)) if len <= self.rx.len() => len,
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.fail(SessionError::Decode(e))),
            };
            let frame: Vec<u8> = self.rx.drain(..len).collect();
            if let Err(e) = self.process(&frame) {
                return Err(self.fail(e));
            }
        }
    }

    /// Queues an authenticated message. Only after [`SessionEvent::Established`] (the peer's
    /// Confirm verified), and only in
    /// protocol order (PeerInfo, Ready, then Attach / ClientReady / Detach; Goodbye at any
    /// time, after which nothing more may be sent). A PeerInfo must carry our cluster, node,
    /// link, incarnation and the negotiated version; a Ready our link. A refused call leaves
    /// the session as it was.
    pub fn send(&mut self, msg: Message) -> Result<(), SessionError> {
        let (key, version) = match (self.state, &self.send_key, self.version) {
            (State::Failed, ..) => return Err(SessionError::Closed),
            (State::Established, Some(key), Some(version)) => (key, version),
            _ => return Err(SessionError::NotEstablished),
        };
        let ty = msg.message_type();
        if !ty.is_authenticated() || ty == MessageType::Confirm {
            return Err(SessionError::Unexpected {
                state: "sending (Hello, Refuse and Confirm are the session's own)",
                message: ty.name(),
            });
        }
        if self.send_phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        let next = self.send_phase.after(ty).ok_or(SessionError::Unexpected {
            state: self.send_phase.name(),
            message: ty.name(),
        })?;
        match &msg {
            Message::PeerInfo(p) => check_peer_info(p, &self.params.hello(), version)?,
            Message::Ready { link_id, .. } if *link_id != self.params.link_id => {
                return Err(SessionError::PeerInfoMismatch {
                    field: "ready link_id",
                })
            }
            _ => {}
        }
        let seq = self
            .sent_seq
            .checked_add(1)
            .ok_or(SessionError::SequenceExhausted)?;
        let frame = encode_frame(&msg, seq, Some(key)).map_err(SessionError::Encode)?;
        self.sent_seq = seq;
        self.send_phase = next;
        self.queue(frame, ty, seq);
        Ok(())
    }

    /// Refuses the peer with `reason` (for example [`RefuseReason::Busy`] when the link
    /// already has a session): queues a Refuse and fails the session with
    /// [`SessionError::LocalRefusal`]. Does nothing on a failed session.
    pub fn refuse(&mut self, reason: RefuseReason, detail: &str) {
        if self.state != State::Failed {
            let _ = self.fail(SessionError::LocalRefusal {
                reason,
                detail: truncate_detail(detail),
            });
        }
    }

    /// The next frame to write to the connection.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Whether the peer's Confirm verified (the session is authenticated) and the session has
    /// not failed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session failed (see [`Session::error`]).
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Why the session failed.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// Whether the peer sent Goodbye (it will close the connection).
    pub fn peer_closed(&self) -> bool {
        self.recv_phase == Phase::Closed
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.params.role
    }

    /// The peer's Hello, once accepted (its fields are authenticated only once
    /// [`Session::is_established`]).
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer_hello.as_ref()
    }

    /// The negotiated protocol version, once established.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// The key the soft provider seals this link's queue pairs' packets under, once
    /// established: HMAC-SHA256 under the session key over [`PACKET_KEY_LABEL`], the same on
    /// both sides and new with every session (docs/security.md P16).
    pub fn packet_key(&self) -> Option<PacketKey> {
        self.packet_key.filter(|_| self.is_established())
    }

    fn queue(&mut self, frame: Vec<u8>, ty: MessageType, seq: u32) {
        debug!(
            link = self.params.link_id,
            node = self.params.node_id,
            message = ty.name(),
            seq,
            len = frame.len(),
            "bootstrap frame queued"
        );
        self.tx.push_back(frame);
    }

    /// Marks the session failed, queues a Refuse if the error calls for one, reports it.
    fn fail(&mut self, err: SessionError) -> SessionError {
        warn!(
            link = self.params.link_id,
            node = self.params.node_id,
            partner = self.params.partner_id,
            role = ?self.params.role,
            error = %err,
            "bootstrap session failed"
        );
        self.state = State::Failed;
        self.rx = Vec::new();
        if let Some(reason) = err.refuse_reason() {
            let detail = match &err {
                SessionError::LocalRefusal { detail, .. } => detail.clone(),
                other => other.to_string(),
            };
            let refuse = Message::Refuse(Refuse::new(reason, &detail));
            if let Ok(frame) = encode_frame(&refuse, 0, None) {
                self.queue(frame, MessageType::Refuse, 0);
            }
        }
        self.error = Some(err.clone());
        self.events.push_back(SessionEvent::Failed(err.clone()));
        err
    }

    fn process(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        // The checksum is verified first; an authenticated frame before the key exists is
        // then out of order (not an authentication failure).
        let opened = open_frame(frame, self.recv_key.as_ref()).map_err(|e| match e {
            WireError::Mac => SessionError::AuthFailed,
            WireError::KeyRequired { message } => SessionError::Unexpected {
                state: "awaiting Hello",
                message,
            },
            other => SessionError::Decode(other),
        })?;
        let ty = opened.header.msg_type;
        let seq = opened.header.seq;
        if ty.is_authenticated() {
            let expected = self.recv_seq.wrapping_add(1);
            if seq != expected {
                return Err(SessionError::Replay { expected, got: seq });
            }
            self.recv_seq = seq;
        }
        let msg = decode_body(ty.code(), opened.body).map_err(SessionError::Decode)?;
        debug!(
            link = self.params.link_id,
            node = self.params.node_id,
            message = ty.name(),
            seq,
            len = frame.len(),
            "bootstrap frame received"
        );
        match msg {
            Message::Refuse(r) => Err(SessionError::RefusedByPeer {
                reason: r.reason,
                detail: r.detail,
            }),
            Message::Hello(h) => {
                if self.state != State::AwaitHello {
                    return Err(SessionError::Unexpected {
                        state: "after the Hellos",
                        message: "Hello",
                    });
                }
                self.on_hello(h, frame)
            }
            Message::Confirm { node_id } => self.on_confirm(node_id),
            msg if self.state == State::AwaitConfirm => Err(SessionError::Unexpected {
                state: "awaiting key confirmation",
                message: msg.name(),
            }),
            msg => self.on_authenticated(msg),
        }
    }

    fn on_confirm(&mut self, node_id: NodeId) -> Result<(), SessionError> {
        let (Some(peer), Some(version), State::AwaitConfirm) =
            (self.peer_hello.clone(), self.version, self.state)
        else {
            return Err(SessionError::Unexpected {
                state: "established",
                message: "Confirm",
            });
        };
        if node_id != peer.node_id {
            return Err(SessionError::PeerInfoMismatch {
                field: "confirm node_id",
            });
        }
        debug!(
            link = self.params.link_id,
            node = self.params.node_id,
            partner = peer.node_id,
            version,
            "bootstrap session established"
        );
        self.state = State::Established;
        self.events
            .push_back(SessionEvent::Established { peer, version });
        Ok(())
    }

    fn on_hello(&mut self, peer: Hello, frame: &[u8]) -> Result<(), SessionError> {
        let version = check_hello(&self.params, &peer)?;
        let key = match self.params.role {
            Role::Initiator => {
                SessionKey::derive(&self.params.secret, &self.our_hello_frame, frame)
            }
            Role::Responder => {
                let ours = self.our_hello_frame.clone();
                self.queue(ours, MessageType::Hello, 0);
                SessionKey::derive(&self.params.secret, frame, &self.our_hello_frame)
            }
        };
        let (ours, theirs) = match self.params.role {
            Role::Initiator => (FROM_INITIATOR_LABEL, FROM_RESPONDER_LABEL),
            Role::Responder => (FROM_RESPONDER_LABEL, FROM_INITIATOR_LABEL),
        };
        let send_key = key.for_sender(ours);
        let confirm = Message::Confirm {
            node_id: self.params.node_id,
        };
        let frame = encode_frame(&confirm, 1, Some(&send_key)).map_err(SessionError::Encode)?;
        self.sent_seq = 1;
        self.queue(frame, MessageType::Confirm, 1);
        self.send_key = Some(send_key);
        self.recv_key = Some(key.for_sender(theirs));
        self.packet_key = Some(PacketKey::from_bytes(
            *key.for_sender(PACKET_KEY_LABEL).as_bytes(),
        ));
        self.version = Some(version);
        self.state = State::AwaitConfirm;
        self.peer_hello = Some(peer);
        Ok(())
    }

    fn on_authenticated(&mut self, msg: Message) -> Result<(), SessionError> {
        let ty = msg.message_type();
        let next = self.recv_phase.after(ty).ok_or(SessionError::Unexpected {
            state: self.recv_phase.name(),
            message: ty.name(),
        })?;
        match (&msg, &self.peer_hello, self.version) {
            (Message::PeerInfo(p), Some(hello), Some(version)) => {
                check_peer_info(p, hello, version)?
            }
            (Message::Ready { link_id, .. }, ..) if *link_id != self.params.link_id => {
                return Err(SessionError::PeerInfoMismatch {
                    field: "ready link_id",
                })
            }
            _ => {}
        }
        self.recv_phase = next;
        self.events.push_back(SessionEvent::Message(msg));
        Ok(())
    }
}

/// Checks the peer's Hello against our parameters; the negotiated version on success.
fn check_hello(p: &SessionParams, h: &Hello) -> Result<u16, SessionError> {
    let ours = (p.version_min, p.version_max);
    let theirs = (h.version_min, h.version_max);
    let version = ours.1.min(theirs.1);
    if version < ours.0.max(theirs.0) {
        return Err(SessionError::VersionMismatch { ours, theirs });
    }
    if h.cluster_id != p.cluster_id {
        return Err(SessionError::ClusterMismatch {
            ours: p.cluster_id,
            theirs: h.cluster_id,
        });
    }
    if h.node_id != p.partner_id {
        return Err(SessionError::NodeMismatch {
            field: "hello node_id",
            expected: p.partner_id,
            got: h.node_id,
        });
    }
    if h.partner_id != p.node_id {
        return Err(SessionError::NodeMismatch {
            field: "hello partner_id",
            expected: p.node_id,
            got: h.partner_id,
        });
    }
    if h.link_id != p.link_id {
        return Err(SessionError::LinkMismatch {
            ours: p.link_id,
            theirs: h.link_id,
        });
    }
    Ok(version)
}

/// Checks a PeerInfo against its sender's Hello and the negotiated version.
fn check_peer_info(p: &PeerInfo, hello: &Hello, version: u16) -> Result<(), SessionError> {
    let field = if p.version != version {
        "peer info version"
    } else if p.cluster_id != hello.cluster_id {
        "peer info cluster_id"
    } else if p.node_id != hello.node_id {
        "peer info node_id"
    } else if p.link_id != hello.link_id {
        "peer info link_id"
    } else if p.incarnation != hello.incarnation {
        "peer info incarnation"
    } else {
        return Ok(());
    };
    Err(SessionError::PeerInfoMismatch { field })
}
