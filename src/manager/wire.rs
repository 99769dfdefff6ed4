//! Manager bootstrap messages and their framing on the per-link TCP connection.
//!
//! Every message travels in one frame: a 16-byte header, the body, a CRC32C trailer and, for
//! the authenticated types, an HMAC-SHA256 trailer under the session key. All integers are
//! big-endian. `docs/wire-formats.md` ("Manager bootstrap protocol") documents every byte.
//!
//! Encoding validates what it writes (string lengths, counts, endpoints), so whatever encodes
//! also decodes. Decoding never panics: every malformed input is a [`WireError`] naming the
//! field.

pub use crate::codec::WireError;
use crate::codec::{check_crc32c, check_length, check_magic, check_reserved, check_version};
use crate::fabric::{Access, Endpoint, RegionDescriptor, ENDPOINT_WIRE_LEN};
use crate::manager::types::{BandwidthClass, ClientInfo, LinkId, NodeId, QpInfo, RegionInfo, Term};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"ILCM";
/// Frame format version carried at offset 4.
pub const FRAME_VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// The format name errors give.
const FORMAT: &str = "bootstrap frame";
/// Size of the CRC32C trailer.
pub const CRC_LEN: usize = 4;
/// Size of the HMAC-SHA256 trailer of authenticated frames.
pub const MAC_LEN: usize = 32;
/// Largest body a frame may carry (1 MiB).
pub const MAX_BODY: usize = 1 << 20;
/// Longest client name or region purpose (string8), in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest Refuse or Goodbye detail text (string16), in bytes.
pub const MAX_DETAIL_LEN: usize = 256;
/// Most clients in a PeerInfo or Ready message.
pub const MAX_CLIENTS: usize = 256;
/// Most queue pairs of one client.
pub const MAX_QPS: usize = 1024;
/// Most regions of one client.
pub const MAX_REGIONS: usize = 1024;
/// Most terms of one client.
pub const MAX_TERMS: usize = 32;
/// Domain-separation label that starts the session key derivation input.
pub const KEY_LABEL: &[u8] = b"interlink-session-v1";
/// Label of the key that MACs the frames the Initiator sends ([`SessionKey::for_sender`]).
pub const FROM_INITIATOR_LABEL: &[u8] = b"interlink-from-initiator-v1";
/// Label of the key that MACs the frames the Responder sends ([`SessionKey::for_sender`]).
pub const FROM_RESPONDER_LABEL: &[u8] = b"interlink-from-responder-v1";
/// Label of the key the soft provider seals the link's packets under
/// ([`SessionKey::for_sender`] of the session key; `Session::packet_key`).
pub const PACKET_KEY_LABEL: &[u8] = b"interlink-soft-packets-v1";

/// A 32-byte HMAC-SHA256 session key. `Debug` never prints the key.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SessionKey {
        SessionKey(bytes)
    }
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The session key: HMAC-SHA256 keyed with the cluster `secret` over
    /// [`KEY_LABEL`] ‖ the initiator's whole Hello frame ‖ the responder's whole Hello frame.
    pub fn derive(secret: &[u8], initiator_hello: &[u8], responder_hello: &[u8]) -> SessionKey {
        let mut mac = hmac_with(secret);
        mac.update(KEY_LABEL);
        mac.update(initiator_hello);
        mac.update(responder_hello);
        SessionKey(mac.finalize().into_bytes().into())
    }
    /// The key of one direction: HMAC-SHA256 keyed with this session key over `label`
    /// ([`FROM_INITIATOR_LABEL`] or [`FROM_RESPONDER_LABEL`]). Each side MACs what it sends
    /// with its own direction's key, so a frame reflected back to its sender does not verify.
    pub fn for_sender(&self, label: &[u8]) -> SessionKey {
        let mut mac = hmac_with(&self.0);
        mac.update(label);
        SessionKey(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long keys are hashed, short ones padded).
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Defines a `u8`-coded wire enumeration with `code`, `from_code` and `Display`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident {
        $($(#[$vm:meta])* $variant:ident = $code:literal => $text:literal,)+
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant,)+
        }
        impl $name {
            /// The wire code.
            pub fn code(self) -> u8 {
                match self {
                    $($name::$variant => $code,)+
                }
            }
            /// From the wire code (`None` when the code is not defined).
            pub fn from_code(code: u8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
            fn text(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.text())
            }
        }
    };
}

wire_enum! {
    /// Message type codes (frame header offset 5).
    MessageType {
        /// 1: version, identity and nonce (unauthenticated).
        Hello = 1 => "Hello",
        /// 2: the sender refuses the session (unauthenticated).
        Refuse = 2 => "Refuse",
        /// 3: the sender's node, health block, heartbeat endpoint and clients on the link.
        PeerInfo = 3 => "PeerInfo",
        /// 4: the clients the sender has made ready on the link.
        Ready = 4 => "Ready",
        /// 5: a client attached (or changed) on the link.
        Attach = 5 => "Attach",
        /// 6: a client is connected on the sender's side.
        ClientReady = 6 => "ClientReady",
        /// 7: a client left the link.
        Detach = 7 => "Detach",
        /// 8: the sender closes the session.
        Goodbye = 8 => "Goodbye",
        /// 9: key confirmation: the sender's first authenticated frame, sent right after the
        /// Hellos; it proves the sender holds the session key before anything else is sent.
        Confirm = 9 => "Confirm",
    }
}

impl MessageType {
    /// Whether frames of this type carry a sequence number and an HMAC.
    pub fn is_authenticated(self) -> bool {
        !matches!(self, MessageType::Hello | MessageType::Refuse)
    }
    /// The type's name.
    pub fn name(self) -> &'static str {
        self.text()
    }
}

wire_enum! {
    /// Why a session is refused.
    RefuseReason {
        /// 1: no common protocol version.
        Version = 1 => "no common protocol version",
        /// 2: cluster ids differ.
        Cluster = 2 => "cluster id mismatch",
        /// 3: the node ids are not the expected pair.
        Node = 3 => "node id mismatch",
        /// 4: link ids differ.
        Link = 4 => "link id mismatch",
        /// 5: a frame failed authentication (usually: different secrets).
        Auth = 5 => "authentication failed",
        /// 6: a malformed, out-of-order or replayed frame.
        Protocol = 6 => "protocol error",
        /// 7: the link already has a session.
        Busy = 7 => "busy",
    }
}

wire_enum! {
    /// Why a client left a link.
    DetachReason {
        /// 1: the client closed.
        Released = 1 => "released",
        /// 2: the client moves to another link.
        Moving = 2 => "moving",
        /// 3: the client's connection failed.
        Failed = 3 => "failed",
    }
}

wire_enum! {
    /// Why a node closes a session.
    GoodbyeReason {
        /// 1: the node shuts down.
        Shutdown = 1 => "shutdown",
        /// 2: the link is being re-initialised.
        Restart = 2 => "restart",
    }
}

/// The opening message of each side: who it is, what it speaks, and a fresh nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub version_min: u16,
    /// Highest protocol version the sender speaks.
    pub version_max: u16,
    /// The sender's cluster id.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The node the sender expects to talk to.
    pub partner_id: NodeId,
    /// The link this connection belongs to.
    pub link_id: LinkId,
    /// The sender's incarnation (changes on every start).
    pub incarnation: u64,
    /// The sender's capability bits.
    pub capabilities: u64,
    /// 32 random bytes, fresh for each connection.
    pub nonce: [u8; 32],
}

/// A refusal: the sender closes the connection after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    /// Why.
    pub reason: RefuseReason,
    /// Human-readable detail (at most [`MAX_DETAIL_LEN`] bytes of UTF-8).
    pub detail: String,
}

impl Refuse {
    /// A refusal whose detail is cut (at a character boundary) to [`MAX_DETAIL_LEN`] bytes.
    pub fn new(reason: RefuseReason, detail: &str) -> Refuse {
        Refuse {
            reason,
            detail: truncate_detail(detail),
        }
    }
}

/// `s` cut at a character boundary to at most [`MAX_DETAIL_LEN`] bytes.
pub fn truncate_detail(s: &str) -> String {
    let mut end = s.len().min(MAX_DETAIL_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A node's description of itself on one link, sent once after the Hellos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The negotiated protocol version.
    pub version: u16,
    /// Cluster id (as in the Hello).
    pub cluster_id: u64,
    /// Sender's node id (as in the Hello).
    pub node_id: NodeId,
    /// Link id (as in the Hello).
    pub link_id: LinkId,
    /// Sender's incarnation.
    pub incarnation: u64,
    /// Sender's capability bits.
    pub capabilities: u64,
    /// The health block the partner READs for the heartbeat.
    pub health: RegionDescriptor,
    /// The queue pair the partner connects its heartbeat queue pair to.
    pub heartbeat: Endpoint,
    /// The sender's clients on this link.
    pub clients: Vec<ClientInfo>,
}

/// One entry of a Ready message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyClient {
    /// Client name.
    pub name: String,
    /// The attachment generation that is ready.
    pub generation: u32,
}

/// Every message of the bootstrap protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Opening message (unauthenticated).
    Hello(Hello),
    /// Refusal (unauthenticated).
    Refuse(Refuse),
    /// The sender's description of itself on the link.
    PeerInfo(PeerInfo),
    /// The clients ready on the sender's side of the link.
    Ready {
        /// The link.
        link_id: LinkId,
        /// The ready clients.
        clients: Vec<ReadyClient>,
    },
    /// A client attached or changed on the link.
    Attach(ClientInfo),
    /// A client is connected on the sender's side.
    ClientReady {
        /// Client name.
        name: String,
        /// Attachment generation.
        generation: u32,
    },
    /// A client left the link.
    Detach {
        /// Client name.
        name: String,
        /// Attachment generation that ends.
        generation: u32,
        /// Why.
        reason: DetachReason,
    },
    /// The sender closes the session.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
        /// Human-readable detail (at most [`MAX_DETAIL_LEN`] bytes).
        detail: String,
    },
    /// Key confirmation (the session's own, first authenticated frame of each direction).
    Confirm {
        /// The sender's node id (must be the peer's Hello node id).
        node_id: NodeId,
    },
}

impl Message {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Refuse(_) => MessageType::Refuse,
            Message::PeerInfo(_) => MessageType::PeerInfo,
            Message::Ready { .. } => MessageType::Ready,
            Message::Attach(_) => MessageType::Attach,
            Message::ClientReady { .. } => MessageType::ClientReady,
            Message::Detach { .. } => MessageType::Detach,
            Message::Goodbye { .. } => MessageType::Goodbye,
            Message::Confirm { .. } => MessageType::Confirm,
        }
    }
    /// The wire type code.
    pub fn type_code(&self) -> u8 {
        self.message_type().code()
    }
    /// Whether the message travels in an authenticated frame.
    pub fn is_authenticated(&self) -> bool {
        self.message_type().is_authenticated()
    }
    /// The type's name.
    pub fn name(&self) -> &'static str {
        self.message_type().name()
    }
}

// ---------------------------------------------------------------------------------------------
// Body encoding

/// The body writer: [`crate::codec::Writer`] (big-endian) with the bootstrap protocol's
/// strings, counts, endpoints and client records.
struct Writer {
    w: crate::codec::Writer,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.w.u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.w.u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.w.u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.w.u64(v);
    }
    fn string8(&mut self, field: &'static str, s: &str) -> Result<(), WireError> {
        check_length(field, s.len(), 1, MAX_NAME_LEN)?;
        self.u8(s.len() as u8);
        self.w.bytes(s.as_bytes());
        Ok(())
    }
    fn string16(&mut self, field: &'static str, s: &str) -> Result<(), WireError> {
        check_length(field, s.len(), 0, MAX_DETAIL_LEN)?;
        self.u16(s.len() as u16);
        self.w.bytes(s.as_bytes());
        Ok(())
    }
    fn count(&mut self, field: &'static str, count: usize, max: usize) -> Result<(), WireError> {
        if count > max {
            return Err(WireError::Count { field, count, max });
        }
        self.u16(count as u16);
        Ok(())
    }
    fn endpoint(&mut self, field: &'static str, ep: &Endpoint) -> Result<(), WireError> {
        ep.validate()
            .map_err(|error| WireError::Endpoint { field, error })?;
        self.w.bytes(&ep.to_bytes());
        Ok(())
    }
    fn region(&mut self, d: &RegionDescriptor) {
        self.u64(d.addr);
        self.u64(d.len);
        self.u32(d.rkey);
    }
    fn client(&mut self, c: &ClientInfo) -> Result<(), WireError> {
        self.string8("client name", &c.name)?;
        self.u8(c.class.code());
        self.u32(c.generation);
        self.count("qp count", c.qps.len(), MAX_QPS)?;
        for qp in &c.qps {
            self.u16(qp.index);
            self.endpoint("qp endpoint", &qp.endpoint)?;
        }
        self.count("region count", c.regions.len(), MAX_REGIONS)?;
        for r in &c.regions {
            self.u16(r.id);
            self.string8("region purpose", &r.purpose)?;
            self.u8(r.access.bits());
            self.region(&r.descriptor);
        }
        self.count("term count", c.terms.len(), MAX_TERMS)?;
        for t in &c.terms {
            self.string8("term name", &t.name)?;
            self.u64(t.value);
        }
        Ok(())
    }
}

/// Encodes a message's body. Fails, naming the field, when a string, count or endpoint would
/// not pass [`decode_body`], or when the body exceeds [`MAX_BODY`].
pub fn encode_body(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut w = Writer {
        w: crate::codec::Writer::be(),
    };
    match msg {
        Message::Hello(h) => {
            w.u16(h.version_min);
            w.u16(h.version_max);
            w.u64(h.cluster_id);
            w.u32(h.node_id);
            w.u32(h.partner_id);
            w.u8(h.link_id);
            w.u8(0);
            w.u64(h.incarnation);
            w.u64(h.capabilities);
            w.w.bytes(&h.nonce);
        }
        Message::Refuse(r) => {
            w.u8(r.reason.code());
            w.string16("refuse detail", &r.detail)?;
        }
        Message::PeerInfo(p) => {
            w.u16(p.version);
            w.u64(p.cluster_id);
            w.u32(p.node_id);
            w.u8(p.link_id);
            w.u64(p.incarnation);
            w.u64(p.capabilities);
            w.region(&p.health);
            w.endpoint("heartbeat endpoint", &p.heartbeat)?;
            w.count("client count", p.clients.len(), MAX_CLIENTS)?;
            for c in &p.clients {
                w.client(c)?;
            }
        }
        Message::Ready { link_id, clients } => {
            w.u8(*link_id);
            w.count("ready count", clients.len(), MAX_CLIENTS)?;
            for c in clients {
                w.string8("ready client name", &c.name)?;
                w.u32(c.generation);
            }
        }
        Message::Attach(c) => w.client(c)?,
        Message::ClientReady { name, generation } => {
            w.string8("client name", name)?;
            w.u32(*generation);
        }
        Message::Detach {
            name,
            generation,
            reason,
        } => {
            w.string8("client name", name)?;
            w.u32(*generation);
            w.u8(reason.code());
        }
        Message::Goodbye { reason, detail } => {
            w.u8(reason.code());
            w.string16("goodbye detail", detail)?;
        }
        Message::Confirm { node_id } => w.u32(*node_id),
    }
    check_length("frame body", w.w.len(), 0, MAX_BODY)?;
    Ok(w.w.into_vec())
}

// ---------------------------------------------------------------------------------------------
// Body decoding

/// The body reader: [`crate::codec::Reader`] (big-endian) with the bootstrap protocol's
/// strings, counts, endpoints and client records.
struct Reader<'a> {
    r: crate::codec::Reader<'a>,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            r: crate::codec::Reader::be(buf),
        }
    }
    fn remaining(&self) -> usize {
        self.r.remaining()
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        self.r.take(n, field)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        self.r.array(field)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.r.u8(field)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.r.u16(field)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.r.u32(field)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.r.u64(field)
    }
    fn utf8(&mut self, field: &'static str, len: usize) -> Result<String, WireError> {
        self.r.utf8(field, len)
    }
    fn string8(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u8(field)?);
        check_length(field, len, 1, MAX_NAME_LEN)?;
        self.utf8(field, len)
    }
    fn string16(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u16(field)?);
        check_length(field, len, 0, MAX_DETAIL_LEN)?;
        self.utf8(field, len)
    }
    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, WireError> {
        let count = usize::from(self.u16(field)?);
        if count > max {
            return Err(WireError::Count { field, count, max });
        }
        Ok(count)
    }
    fn endpoint(&mut self, field: &'static str) -> Result<Endpoint, WireError> {
        let b = self.take(ENDPOINT_WIRE_LEN, field)?;
        let ep = Endpoint::from_bytes(b).map_err(|error| WireError::Endpoint { field, error })?;
        if let Some(&pad) = b.get(ENDPOINT_WIRE_LEN - 1) {
            check_reserved("endpoint padding byte", u64::from(pad))?;
        }
        Ok(ep)
    }
    fn region(&mut self, field: &'static str) -> Result<RegionDescriptor, WireError> {
        Ok(RegionDescriptor {
            addr: self.u64(field)?,
            len: self.u64(field)?,
            rkey: self.u32(field)?,
        })
    }
    fn code<T>(
        &mut self,
        field: &'static str,
        from_code: fn(u8) -> Option<T>,
    ) -> Result<T, WireError> {
        let code = self.u8(field)?;
        from_code(code).ok_or(WireError::Code {
            field,
            code: u64::from(code),
        })
    }
    /// A u16 count (at most `max`) then that many items of at least `min_item` bytes each.
    fn list<T>(
        &mut self,
        field: &'static str,
        max: usize,
        min_item: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let count = self.count(field, max)?;
        let mut items = Vec::with_capacity(count.min(self.remaining() / min_item));
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }
    fn access(&mut self) -> Result<Access, WireError> {
        let bits = self.u8("region access")?;
        if bits & !15 != 0 {
            return Err(WireError::Code {
                field: "region access",
                code: u64::from(bits),
            });
        }
        Ok(Access::from_bits(bits))
    }
    fn client(&mut self) -> Result<ClientInfo, WireError> {
        Ok(ClientInfo {
            name: self.string8("client name")?,
            class: self.code("bandwidth class", BandwidthClass::from_code)?,
            generation: self.u32("client generation")?,
            qps: self.list("qp count", MAX_QPS, 30, |r| {
                Ok(QpInfo {
                    index: r.u16("qp index")?,
                    endpoint: r.endpoint("qp endpoint")?,
                })
            })?,
            regions: self.list("region count", MAX_REGIONS, 25, |r| {
                Ok(RegionInfo {
                    id: r.u16("region id")?,
                    purpose: r.string8("region purpose")?,
                    access: r.access()?,
                    descriptor: r.region("region descriptor")?,
                })
            })?,
            terms: self.list("term count", MAX_TERMS, 10, |r| {
                Ok(Term {
                    name: r.string8("term name")?,
                    value: r.u64("term value")?,
                })
            })?,
        })
    }
    fn finish(self, field: &'static str) -> Result<(), WireError> {
        self.r.finish(field)
    }
}

/// Decodes a body of type `msg_type`, consuming it exactly and validating every field.
pub fn decode_body(msg_type: u8, body: &[u8]) -> Result<Message, WireError> {
    let ty = MessageType::from_code(msg_type).ok_or(WireError::Code {
        field: "message type",
        code: u64::from(msg_type),
    })?;
    check_length("frame body", body.len(), 0, MAX_BODY)?;
    let mut r = Reader::new(body);
    let msg = match ty {
        MessageType::Hello => {
            let version_min = r.u16("hello version_min")?;
            let version_max = r.u16("hello version_max")?;
            let cluster_id = r.u64("hello cluster_id")?;
            let node_id = r.u32("hello node_id")?;
            let partner_id = r.u32("hello partner_id")?;
            let link_id = r.u8("hello link_id")?;
            let reserved = r.u8("hello reserved byte")?;
            if reserved != 0 {
                return Err(WireError::Reserved {
                    field: "hello reserved byte",
                    value: u64::from(reserved),
                });
            }
            Message::Hello(Hello {
                version_min,
                version_max,
                cluster_id,
                node_id,
                partner_id,
                link_id,
                incarnation: r.u64("hello incarnation")?,
                capabilities: r.u64("hello capabilities")?,
                nonce: r.array("hello nonce")?,
            })
        }
        MessageType::Refuse => Message::Refuse(Refuse {
            reason: r.code("refuse reason", RefuseReason::from_code)?,
            detail: r.string16("refuse detail")?,
        }),
        MessageType::PeerInfo => Message::PeerInfo(PeerInfo {
            version: r.u16("peer info version")?,
            cluster_id: r.u64("peer info cluster_id")?,
            node_id: r.u32("peer info node_id")?,
            link_id: r.u8("peer info link_id")?,
            incarnation: r.u64("peer info incarnation")?,
            capabilities: r.u64("peer info capabilities")?,
            health: r.region("health region descriptor")?,
            heartbeat: r.endpoint("heartbeat endpoint")?,
            clients: r.list("client count", MAX_CLIENTS, 13, Reader::client)?,
        }),
        MessageType::Ready => Message::Ready {
            link_id: r.u8("ready link_id")?,
            clients: r.list("ready count", MAX_CLIENTS, 6, |r| {
                Ok(ReadyClient {
                    name: r.string8("ready client name")?,
                    generation: r.u32("ready client generation")?,
                })
            })?,
        },
        MessageType::Attach => Message::Attach(r.client()?),
        MessageType::ClientReady => Message::ClientReady {
            name: r.string8("client name")?,
            generation: r.u32("client generation")?,
        },
        MessageType::Detach => Message::Detach {
            name: r.string8("client name")?,
            generation: r.u32("client generation")?,
            reason: r.code("detach reason", DetachReason::from_code)?,
        },
        MessageType::Goodbye => Message::Goodbye {
            reason: r.code("goodbye reason", GoodbyeReason::from_code)?,
            detail: r.string16("goodbye detail")?,
        },
        MessageType::Confirm => Message::Confirm {
            node_id: r.u32("confirm node_id")?,
        },
    };
    r.finish(ty.name())?;
    Ok(msg)
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type.
    pub msg_type: MessageType,
    /// Sequence number (0 for unauthenticated types).
    pub seq: u32,
    /// Body length.
    pub body_len: usize,
}

impl FrameHeader {
    /// Length of the whole frame: header, body, CRC and (authenticated types) MAC.
    pub fn frame_len(&self) -> usize {
        let mac = if self.msg_type.is_authenticated() {
            MAC_LEN
        } else {
            0
        };
        HEADER_LEN + self.body_len + CRC_LEN + mac
    }
}

/// Parses and validates the header at the start of `buf`: `None` while fewer than
/// [`HEADER_LEN`] bytes are there.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut r = Reader::new(h);
    let magic: [u8; 4] = r.array("frame magic")?;
    check_magic(FORMAT, &magic, &FRAME_MAGIC)?;
    let version = r.u8("frame version")?;
    check_version(
        FORMAT,
        u32::from(version),
        |v| v == u32::from(FRAME_VERSION),
        "1",
    )?;
    let code = r.u8("message type")?;
    let msg_type = MessageType::from_code(code).ok_or(WireError::Code {
        field: "message type",
        code: u64::from(code),
    })?;
    check_reserved("frame flags", u64::from(r.u16("frame flags")?))?;
    let seq = r.u32("sequence number")?;
    if !msg_type.is_authenticated() && seq != 0 {
        return Err(WireError::Sequence {
            message: msg_type.name(),
            seq,
        });
    }
    let body_len = r.u32("body length")? as usize;
    check_length("frame body", body_len, 0, MAX_BODY)?;
    Ok(Some(FrameHeader {
        msg_type,
        seq,
        body_len,
    }))
}

/// Total length of the first frame in `buf` once its header is in (`None` before), after
/// validating the header.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    Ok(parse_header(buf)?.map(|h| h.frame_len()))
}

fn mac_over(key: &SessionKey, data: &[u8]) -> HmacSha256 {
    let mut mac = hmac_with(key.as_bytes());
    mac.update(data);
    mac
}

/// Encodes `msg` as a whole frame with sequence number `seq`. Authenticated types need `key`
/// and a sequence number (the session counts 1, 2, 3...); unauthenticated ones need `seq` 0
/// and ignore `key`.
pub fn encode_frame(
    msg: &Message,
    seq: u32,
    key: Option<&SessionKey>,
) -> Result<Vec<u8>, WireError> {
    let ty = msg.message_type();
    if !ty.is_authenticated() && seq != 0 {
        return Err(WireError::Sequence {
            message: ty.name(),
            seq,
        });
    }
    let key = match (ty.is_authenticated(), key) {
        (true, None) => return Err(WireError::KeyRequired { message: ty.name() }),
        (true, Some(k)) => Some(k),
        (false, _) => None,
    };
    let body = encode_body(msg)?;
    let mut f = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN + MAC_LEN);
    f.extend_from_slice(&FRAME_MAGIC);
    f.push(FRAME_VERSION);
    f.push(ty.code());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    let crc = crc32c::crc32c(&f);
    f.extend_from_slice(&crc.to_be_bytes());
    if let Some(key) = key {
        f.extend_from_slice(&mac_over(key, &f).finalize().into_bytes());
    }
    Ok(f)
}

/// A frame whose header, checksum and (authenticated types) MAC have been verified.
#[derive(Clone, Copy, Debug)]
pub struct OpenedFrame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The body, not yet decoded.
    pub body: &'a [u8],
}

/// Verifies one whole frame (exactly `frame`, no more): header, CRC32C, then for
/// authenticated types the HMAC under `key` (constant-time compare). Does not decode the body.
pub fn open_frame<'a>(
    frame: &'a [u8],
    key: Option<&SessionKey>,
) -> Result<OpenedFrame<'a>, WireError> {
    let header = parse_header(frame)?.ok_or(WireError::Truncated {
        field: "frame header",
        needed: HEADER_LEN,
        available: frame.len(),
    })?;
    let total = header.frame_len();
    if frame.len() < total {
        return Err(WireError::Truncated {
            field: "frame",
            needed: total,
            available: frame.len(),
        });
    }
    if frame.len() > total {
        return Err(WireError::Trailing {
            field: "frame",
            extra: frame.len() - total,
        });
    }
    let crc_end = HEADER_LEN + header.body_len + CRC_LEN;
    let mut r = Reader::new(frame);
    let covered = r.take(HEADER_LEN + header.body_len, "frame")?;
    let found = u32::from_be_bytes(r.array("frame checksum")?);
    check_crc32c(FORMAT, found, crc32c::crc32c(covered))?;
    if header.msg_type.is_authenticated() {
        let key = key.ok_or(WireError::KeyRequired {
            message: header.msg_type.name(),
        })?;
        let signed = frame.get(..crc_end).unwrap_or_default();
        let tag = r.take(MAC_LEN, "frame authentication code")?;
        mac_over(key, signed)
            .verify_slice(tag)
            .map_err(|_| WireError::Mac)?;
    }
    let body = covered.get(HEADER_LEN..).unwrap_or_default();
    Ok(OpenedFrame { header, body })
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number.
    pub seq: u32,
    /// The message.
    pub message: Message,
}

/// [`open_frame`] then [`decode_body`].
pub fn decode_frame(frame: &[u8], key: Option<&SessionKey>) -> Result<Frame, WireError> {
    let opened = open_frame(frame, key)?;
    Ok(Frame {
        seq: opened.header.seq,
        message: decode_body(opened.header.msg_type.code(), opened.body)?,
    })
}
