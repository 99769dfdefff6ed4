//! The write-back driver's state behind its lock ([`Core`]) and the work on it: client
//! events of the data client, data transfers (staging, posting, completions), messages in
//! both roles, path changes and partner failure. Nothing here calls the messenger: messages
//! for the partner go into [`Core::outgoing`], which whoever holds both the messenger's
//! outbox and this lock drains (in that lock order, see the parent module).

use super::{WriteBackConfig, MIRROR_REGION, TX_REGION};
use crate::clients::giveback::WriteBackEpochs;
use crate::clients::mirror::shadow::Nvram;
use crate::clients::mirror::writeback::{
    CompletionStatus, Message, PrimaryAction, RequestId, RequestRef, WriteBackMirror,
    WriteBackPrimary,
};
use crate::fabric::{Completion, MemoryRegion, RegionDescriptor, SendOp, SendRequest};
use crate::manager::{ClientEvent, ClientQp, Connection, LinkId, SuspendReason, TermMismatch};
use hdrhistogram::Histogram;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Completions polled at a time.
pub(super) const POLL_BATCH: usize = 64;

/// The data client's current connection.
pub(super) struct DataLink {
    pub(super) id: LinkId,
    qp: ClientQp,
    qpn: u32,
    /// The queue pair's epoch when activated (a re-connect in place discards the writes in
    /// flight, as a new connection does).
    epoch: u64,
    /// Staging: the primary's outgoing data (offsets of its data area).
    tx: MemoryRegion,
    /// Where the partner's primary writes this node's mirror image (offsets of the data area).
    rx: MemoryRegion,
    /// The partner's `wb-mirror`.
    partner: RegionDescriptor,
    outstanding: usize,
    broken: bool,
}

impl DataLink {
    /// The provider of the connection's device.
    pub(super) fn provider(&self) -> crate::fabric::ProviderKind {
        self.qp.send_cq().device().provider()
    }

    pub(super) fn send_cq(&self) -> Option<crate::fabric::CompletionQueue> {
        (!self.broken && self.outstanding > 0).then(|| self.qp.send_cq().clone())
    }
}

/// One transfer (the RDMA WRITEs of a [`PrimaryAction::WriteData`]).
struct Transfer {
    request: RequestId,
    incarnation: u64,
    /// WRITEs not completed yet (posted or queued).
    remaining: usize,
}

/// One RDMA WRITE waiting for send-queue room: offsets in the data area.
struct Post {
    transfer: u64,
    offset: usize,
    remote: usize,
    len: usize,
}

/// Counters kept by the driver (the cores keep their own).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) connections: u64,
    pub(super) partner_failures: u64,
    pub(super) restorations: u64,
    pub(super) data_writes: u64,
    pub(super) data_bytes: u64,
    pub(super) write_errors: u64,
    pub(super) absorbed_bytes: u64,
    pub(super) held: u64,
    pub(super) redo_timeouts: u64,
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
    pub(super) bad_messages: u64,
    pub(super) nvram_errors: u64,
    /// Host writes discarded with a table the partner took over.
    pub(super) discarded_writes: u64,
}

/// Everything behind the driver's lock.
pub(super) struct Core {
    pub(super) primary: WriteBackPrimary<Nvram>,
    pub(super) mirror: WriteBackMirror<Nvram>,
    pub(super) link: Option<DataLink>,
    /// Messages for the partner, in order.
    pub(super) outgoing: VecDeque<Message>,
    /// Statuses not collected yet, by request.
    pub(super) done: HashMap<RequestId, CompletionStatus>,
    /// Writes whose future was dropped before their status came: it is not kept.
    pub(super) abandoned: std::collections::HashSet<RequestId>,
    pub(super) counters: Counters,
    pub(super) latency: Histogram<u64>,
    pub(super) last_error: Option<String>,
    /// The partner's data client disagrees on a term: host writes are refused.
    pub(super) refused: Option<TermMismatch>,
    /// A connection failure to report to the manager (by whoever holds the client handle).
    pub(super) report: Option<String>,
    /// Messenger counters already acted on.
    pub(super) seen_connections: u64,
    pub(super) seen_failures: u64,
    /// The mailbox's write-back epochs, once the write-back follows takeovers
    /// (`MirroredWriteBack::set_writeback_epochs`).
    pub(super) epochs: Option<Arc<WriteBackEpochs>>,
    /// The giveback incarnation the table was last recovered for (None: not yet; host
    /// writes wait for it while `epochs` is set).
    pub(super) recovered_for: Option<u64>,
    /// Host writes discarded with a table the partner took over, by request: the epoch.
    pub(super) discarded: HashMap<RequestId, u64>,
    /// Mirror-side messages waiting for a data connection.
    held: VecDeque<Message>,
    transfers: HashMap<u64, Transfer>,
    next_transfer: u64,
    posts: VecDeque<Post>,
    batch: Vec<SendRequest>,
    completions: Vec<Completion>,
    suspended_since: Option<Instant>,
    last_progress: Instant,
    /// Bytes before the data area in both tables (regions hold the data area only).
    data_offset: usize,
    data_len: usize,
}

impl Core {
    pub(super) fn new(primary: WriteBackPrimary<Nvram>, mirror: WriteBackMirror<Nvram>) -> Core {
        let g = *primary.table().geometry();
        let now = Instant::now();
        Core {
            primary,
            mirror,
            link: None,
            outgoing: VecDeque::new(),
            done: HashMap::new(),
            abandoned: std::collections::HashSet::new(),
            counters: Counters::default(),
            latency: crate::manager::client::new_histogram(),
            last_error: None,
            refused: None,
            report: None,
            seen_connections: 0,
            seen_failures: 0,
            epochs: None,
            recovered_for: None,
            discarded: HashMap::new(),
            held: VecDeque::new(),
            transfers: HashMap::new(),
            next_transfer: 1,
            posts: VecDeque::new(),
            batch: Vec::with_capacity(POLL_BATCH),
            completions: Vec::with_capacity(POLL_BATCH),
            suspended_since: Some(now),
            last_progress: now,
            data_offset: g.data_offset(),
            data_len: g.required_len() - g.data_offset(),
        }
    }

    /// Whether host writes and destages wait for the recovery: the write-back follows
    /// takeovers and has not been recovered yet.
    pub(super) fn awaits_recovery(&self) -> bool {
        self.epochs.is_some() && self.recovered_for.is_none()
    }

    /// Whether the data connection is usable.
    pub(super) fn link_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| !l.broken)
    }

    /// Whether the partner is declared failed.
    pub(super) fn partner_failed(&self) -> bool {
        self.primary.partner_failed()
    }

    /// Data-area bytes (the size of both regions).
    pub(super) fn data_len(&self) -> usize {
        self.data_len
    }

    /// Carries out what the primary asks for: messages go to `outgoing`, transfers are
    /// queued and posted, completions are recorded for their waiters. Returns whether any
    /// write completed.
    pub(super) fn run_primary(&mut self, cfg: &WriteBackConfig) -> bool {
        let mut completed = false;
        while let Some(action) = self.primary.poll_action() {
            match action {
                PrimaryAction::Send(m) => self.outgoing.push_back(m),
                PrimaryAction::WriteData {
                    request,
                    incarnation,
                    ranges,
                } => {
                    let transfer = self.next_transfer;
                    self.next_transfer += 1;
                    self.transfers.insert(
                        transfer,
                        Transfer {
                            request,
                            incarnation,
                            remaining: ranges.len(),
                        },
                    );
                    for r in ranges {
                        self.posts.push_back(Post {
                            transfer,
                            offset: r.local_offset - self.data_offset,
                            remote: r.remote_offset - self.data_offset,
                            len: r.len,
                        });
                    }
                }
                PrimaryAction::Complete {
                    request,
                    status,
                    latency,
                } => {
                    crate::manager::client::record_us(&mut self.latency, latency);
                    if !self.abandoned.remove(&request) {
                        self.done.insert(request, status);
                    }
                    self.last_progress = Instant::now();
                    completed = true;
                }
            }
        }
        self.post(cfg);
        completed
    }

    fn run_mirror(&mut self) {
        while let Some(m) = self.mirror.poll_send() {
            self.outgoing.push_back(m);
        }
    }

    /// Stages and posts queued WRITEs within the send queue's room.
    fn post(&mut self, cfg: &WriteBackConfig) {
        let depth = cfg.send_depth.max(4) as usize;
        let Some(l) = self.link.as_mut().filter(|l| !l.broken) else {
            return;
        };
        let source = self.primary.table().backing().bytes();
        let base = self.data_offset;
        let mut failure = None;
        let mut bytes = 0;
        while l.outstanding + self.batch.len() < depth {
            let Some(p) = self.posts.pop_front() else {
                break;
            };
            let src = &source[base + p.offset..base + p.offset + p.len];
            let staged =
                l.tx.fill(p.offset, p.len, |dst| dst.copy_from_slice(src))
                    .and_then(|()| l.tx.slice(p.offset, p.len));
            match staged {
                Ok(buf) => {
                    bytes += p.len as u64;
                    self.batch.push(SendRequest::new(
                        p.transfer,
                        SendOp::Write(l.partner.at(p.remote as u64)),
                        buf,
                    ));
                }
                Err(e) => {
                    failure = Some(format!("stage write-back data: {e}"));
                    break;
                }
            }
        }
        let n = self.batch.len();
        if n > 0 {
            match l.qp.post_send_all(&mut self.batch) {
                Ok(()) => {
                    l.outstanding += n;
                    self.counters.data_writes += n as u64;
                    self.counters.data_bytes += bytes;
                }
                Err(e) => {
                    self.batch.clear();
                    failure.get_or_insert(format!("post write-back data: {e}"));
                }
            }
        }
        if let Some(why) = failure {
            self.link_failed(&why);
        }
    }

    /// Polls the send queue (after `waited`, completions a blocking wait took) and reports
    /// finished transfers. Returns whether anything completed.
    pub(super) fn reap(&mut self, cfg: &WriteBackConfig, waited: &mut Vec<Completion>) -> bool {
        let Some(l) = self.link.as_mut() else {
            waited.clear();
            return false;
        };
        let mut completions = std::mem::take(&mut self.completions);
        completions.append(waited);
        if !l.broken && l.outstanding > 0 {
            if let Err(e) = l.qp.send_cq().poll(&mut completions, POLL_BATCH) {
                tracing::warn!(client = %cfg.data_client, error = %e, "poll send queue");
            }
        }
        let got = !completions.is_empty();
        let mut failure = None;
        let mut written = Vec::new();
        for c in completions.drain(..) {
            if l.broken || c.qpn != l.qpn {
                continue;
            }
            l.outstanding = l.outstanding.saturating_sub(1);
            if !c.status.is_ok() {
                failure.get_or_insert_with(|| format!("write-back data write: {:?}", c.status));
                continue;
            }
            if let Some(t) = self.transfers.get_mut(&c.wr_id) {
                t.remaining -= 1;
                if t.remaining == 0 {
                    written.push((t.request, t.incarnation));
                    self.transfers.remove(&c.wr_id);
                }
            }
        }
        self.completions = completions;
        if got {
            self.last_progress = Instant::now();
        }
        if let Some(why) = failure {
            self.counters.write_errors += 1;
            self.link_failed(&why);
            return true;
        }
        for (request, incarnation) in written {
            self.primary.handle_data_written(request, incarnation);
        }
        self.run_primary(cfg);
        got
    }

    /// A WRITE failed or could not be posted: the connection is unusable; the manager is
    /// asked (by the caller, through [`Core::report`]) to re-establish it.
    pub(super) fn fail_link(&mut self, why: &str) {
        self.link_failed(why);
    }

    fn link_failed(&mut self, why: &str) {
        match self.link.as_mut() {
            Some(l) if !l.broken => l.broken = true,
            _ => return,
        }
        self.drop_transfers();
        self.primary.handle_link_down();
        self.suspended_since.get_or_insert_with(Instant::now);
        tracing::warn!(
            reason = why,
            "write-back data connection failed; asking the manager to re-establish it"
        );
        self.last_error = Some(why.to_string());
        self.report = Some(why.to_string());
    }

    fn drop_transfers(&mut self) {
        self.transfers.clear();
        self.posts.clear();
    }

    /// A message from the partner.
    pub(super) fn on_message(&mut self, cfg: &WriteBackConfig, now: Instant, m: Message) {
        self.counters.messages_in += 1;
        self.last_progress = now;
        match m {
            Message::Rqr(_) | Message::DataSent(_) | Message::Destaged(..) => {
                if self.link_up() {
                    self.mirror_message(cfg, m);
                } else {
                    // The data of a DataSent may be in a region this side has not been
                    // given yet: decide after the next Ready (and its path change).
                    self.counters.held += 1;
                    self.held.push_back(m);
                }
            }
            Message::Rtr(_)
            | Message::Mda(_)
            | Message::Reject(..)
            | Message::DestageAck(_)
            | Message::Held(..) => {
                if let Err(e) = self.primary.handle_message(now, &m) {
                    self.nvram_error("primary", &e);
                }
                self.run_primary(cfg);
            }
        }
    }

    fn mirror_message(&mut self, cfg: &WriteBackConfig, m: Message) {
        // A table this node took over takes no write (the primary redoes it once the
        // partner's record names a new epoch, or its recovery discards it).
        let taken = self
            .epochs
            .as_ref()
            .is_some_and(|e| e.partner_table_taken());
        self.mirror.set_partner_table_taken(taken);
        if let Message::DataSent(at) = &m {
            if !self.absorb_data(cfg, at) {
                return;
            }
        }
        if let Err(e) = self.mirror.handle_message(&m) {
            self.nvram_error("mirror", &e);
        }
        self.run_mirror();
    }

    /// Copies the data of the request `at` names from `wb-mirror` into the mirror table's
    /// new buffers of that request, when the mirror is about to absorb it. Returns false if
    /// the region could not be read (the message is dropped; the primary redoes the write).
    fn absorb_data(&mut self, cfg: &WriteBackConfig, at: &RequestRef) -> bool {
        if at.incarnation != self.mirror.incarnation() {
            return true; // stale: the core answers it without absorbing
        }
        let table = self.mirror.table();
        let current = table
            .rie_word(at.rie)
            .is_some_and(|w| w.in_use && w.tag == at.request);
        let Some(request) = table.request(at.rie).filter(|_| current) else {
            return true;
        };
        let buffers: Vec<u32> = request.new_buffers.iter().flatten().copied().collect();
        let ranges = table.data_ranges(&buffers);
        let Some(l) = self.link.as_ref() else {
            return false;
        };
        let base = self.data_offset;
        let bytes = self.mirror.table_mut().backing_mut().bytes_mut();
        for (offset, len) in ranges {
            if let Err(e) = l.rx.read(offset - base, &mut bytes[offset..offset + len]) {
                tracing::warn!(client = %cfg.data_client, error = %e, request = at.request, "read landed write-back data");
                self.last_error = Some(format!("read {MIRROR_REGION}: {e}"));
                return false;
            }
            self.counters.absorbed_bytes += len as u64;
        }
        true
    }

    fn nvram_error(&mut self, side: &str, e: &crate::clients::mirror::WriteBackError) {
        self.counters.nvram_errors += 1;
        tracing::error!(side, error = %e, "write-back NVRAM failure");
        self.last_error = Some(format!("{side}: {e}"));
    }

    /// An event of the data client.
    pub(super) fn on_event(&mut self, cfg: &WriteBackConfig, ev: ClientEvent) {
        self.last_progress = Instant::now();
        match ev {
            ClientEvent::Refused(mismatch) => {
                self.last_error = Some(mismatch.to_string());
                self.refused = Some(mismatch);
            }
            ClientEvent::Ready(conn) | ClientEvent::Updated(conn) => {
                self.refused = None;
                if let Err(why) = self.activate(cfg, conn) {
                    tracing::error!(client = %cfg.data_client, reason = %why, "write-back data connection unusable");
                    self.last_error = Some(why);
                }
            }
            ClientEvent::Suspended { link, reason } => {
                tracing::info!(client = %cfg.data_client, link = %link, ?reason, "write-back data suspended");
                if self.link.take().is_some_and(|l| !l.broken) {
                    self.drop_transfers();
                    self.primary.handle_link_down();
                }
                self.suspended_since.get_or_insert_with(Instant::now);
                if matches!(
                    reason,
                    SuspendReason::PartnerRestarted
                        | SuspendReason::PartnerReleased
                        | SuspendReason::Shutdown
                ) {
                    self.fail_partner(cfg, &format!("data client suspended: {reason:?}"));
                }
            }
        }
    }

    fn activate(&mut self, cfg: &WriteBackConfig, conn: Connection) -> Result<(), String> {
        let qp = conn.qp(0).ok_or("no queue pair 0")?.clone();
        let region = |p: &str| conn.region(p).cloned().ok_or(format!("no region {p}"));
        let tx = region(TX_REGION)?;
        let rx = region(MIRROR_REGION)?;
        let partner = conn
            .partner_region(MIRROR_REGION)
            .map(|r| r.descriptor)
            .ok_or(format!("partner has no {MIRROR_REGION} region"))?;
        if partner.len as usize != self.data_len || rx.len() < self.data_len {
            return Err(format!(
                "partner's {MIRROR_REGION} region is {} bytes, this node's data area {} (both nodes must use the same geometry)",
                partner.len, self.data_len
            ));
        }
        let qpn = qp.queue_pair().qpn();
        let epoch = qp.queue_pair().epoch();
        if let Some(l) = self
            .link
            .as_mut()
            .filter(|l| !l.broken && l.qpn == qpn && l.epoch == epoch)
        {
            // A live update: same queue pair, transfers keep going.
            l.partner = partner;
            l.tx = tx;
            l.rx = rx;
            return Ok(());
        }
        if self.link.take().is_some_and(|l| !l.broken) {
            self.drop_transfers();
            self.primary.handle_link_down();
        }
        self.link = Some(DataLink {
            id: conn.link,
            qp,
            qpn,
            epoch,
            tx,
            rx,
            partner,
            outstanding: 0,
            broken: false,
        });
        self.counters.connections += 1;
        self.suspended_since = None;
        if self.primary.partner_failed() {
            self.restore_partner(cfg);
        }
        // A new path: the mirror's incarnation moves on (set-ups of the old path are void),
        // the primary redoes every write in progress from its RQR.
        if let Err(e) = self.mirror.handle_path_changed() {
            self.nvram_error("mirror", &e);
        }
        self.primary.handle_link_up();
        tracing::info!(client = %cfg.data_client, link = %conn.link, pending = self.primary.pending(), incarnation = self.mirror.incarnation(), "write-back data connected");
        let held: Vec<Message> = self.held.drain(..).collect();
        for m in held {
            self.mirror_message(cfg, m);
        }
        self.run_primary(cfg);
        Ok(())
    }

    /// The partner is declared failed: writes in progress complete with
    /// [`CompletionStatus::MirrorLost`], later ones too until it is back; the mirror aborts
    /// the partner's writes in progress.
    pub(super) fn fail_partner(&mut self, cfg: &WriteBackConfig, why: &str) {
        if self.primary.partner_failed() {
            return;
        }
        let pending = self.primary.pending();
        if let Err(e) = self.primary.handle_partner_failed(Instant::now()) {
            self.nvram_error("primary", &e);
        }
        let aborted = match self.mirror.handle_partner_failed() {
            Ok(n) => n,
            Err(e) => {
                self.nvram_error("mirror", &e);
                0
            }
        };
        self.held.clear();
        self.outgoing.clear();
        self.drop_transfers();
        self.counters.partner_failures += 1;
        tracing::warn!(client = %cfg.name, reason = why, pending, aborted, "write-back partner failed: writes complete with the mirror lost until it is back");
        self.run_primary(cfg);
    }

    /// The partner is back: writes are mirrored again.
    pub(super) fn restore_partner(&mut self, cfg: &WriteBackConfig) {
        if !self.primary.partner_failed() {
            return;
        }
        self.primary.handle_partner_restored();
        self.counters.restorations += 1;
        tracing::info!(client = %cfg.name, "write-back partner back: writes are mirrored again");
    }

    /// Timers: the partner timeout, the redo of writes that made no progress, and the
    /// resync (it waits for free buffers when the table is full).
    pub(super) fn check_timers(&mut self, cfg: &WriteBackConfig, now: Instant) {
        if self.link_up() && !self.primary.in_sync() {
            if let Err(e) = self.primary.handle_resync(now) {
                self.nvram_error("primary", &e);
            }
            self.run_primary(cfg);
        }
        if !self.link_up() && !self.primary.partner_failed() {
            if let Some(since) = self.suspended_since {
                if now.duration_since(since) >= cfg.partner_timeout {
                    let why = format!("no data connection for {:?}", cfg.partner_timeout);
                    self.fail_partner(cfg, &why);
                }
            }
        }
        if self.link_up()
            && !self.primary.partner_failed()
            && self.primary.pending() > 0
            && now.duration_since(self.last_progress) >= cfg.redo_after
        {
            tracing::info!(client = %cfg.name, pending = self.primary.pending(), "write-back: no progress; redoing the writes in progress");
            self.counters.redo_timeouts += 1;
            self.last_progress = now;
            self.primary.handle_path_changed();
            self.run_primary(cfg);
        }
    }

    /// The messenger's counters: a declared partner failure fails the partner here too; a
    /// reconnection (its frames are re-sent, but a reset conversation drops them) redoes the
    /// writes in progress; a partner declared failed is restored once both connections are
    /// up again.
    pub(super) fn check_messenger(
        &mut self,
        cfg: &WriteBackConfig,
        connected: bool,
        connections: u64,
        failures: u64,
    ) {
        if failures > self.seen_failures {
            self.seen_failures = failures;
            self.fail_partner(cfg, "the messenger declared the partner failed");
        }
        if connections > self.seen_connections {
            let first = self.seen_connections == 0;
            self.seen_connections = connections;
            if !first && self.link_up() && !self.primary.partner_failed() {
                self.primary.handle_path_changed();
                self.run_primary(cfg);
            }
        }
        if connected && self.link_up() && self.primary.partner_failed() {
            self.restore_partner(cfg);
            self.primary.handle_path_changed();
            self.run_primary(cfg);
        }
    }

    /// Whether WRITEs are in flight (the driver then waits on the send queue).
    pub(super) fn busy_cq(&self) -> Option<crate::fabric::CompletionQueue> {
        self.link.as_ref().and_then(DataLink::send_cq)
    }
}
