//! Session messages and link failure handling.

use super::*;

impl Runtime {
    /// Initiator: places clients on this link and sends PeerInfo.
    pub(super) fn send_peer_info(&mut self, i: usize) -> Result<()> {
        let id = self.links[i].id;
        let mut offered = Vec::new();
        if let Some(planner) = &self.planner {
            // Preview placement with every established session counted as healthy, and take
            // the clients that land on this link.
            let mut preview = planner.clone();
            let now_ms = self.now_ms();
            let views = self.link_views(true);
            let clients = self.client_views();
            for m in preview.plan(now_ms, &views, &clients) {
                if m.to == id && m.from.is_none_or(|f| f != id) {
                    let c = &self.clients[&m.client];
                    if c.attachment.is_none() && c.pending.is_none() {
                        offered.push(m.client.clone());
                    }
                }
            }
        }
        let mut infos = Vec::new();
        for name in &offered {
            match self.create_attachment(name, i, None) {
                Ok(info) => infos.push(info),
                Err(e) => {
                    tracing::error!(client = %name, link = id, error = %e, "create client resources")
                }
            }
        }
        let offered: Vec<String> = infos.iter().map(|c| c.name.clone()).collect();
        let info = self.peer_info(i, infos)?;
        if let Some(c) = self.links[i].conn.as_mut() {
            c.sent_peer_info = true;
            c.offered = offered;
        }
        tracing::info!(link = id, clients = info.clients.len(), "sending PeerInfo");
        self.send(i, Message::PeerInfo(info));
        Ok(())
    }

    fn peer_info(&self, i: usize, clients: Vec<ClientInfo>) -> Result<PeerInfo> {
        let l = &self.links[i];
        let hb = l.heartbeat.as_ref().ok_or_else(|| ManagerError::Register {
            name: "heartbeat".into(),
            reason: format!("link {} has no heartbeat", l.id),
        })?;
        Ok(PeerInfo {
            version: l
                .conn
                .as_ref()
                .and_then(|c| c.session.version())
                .unwrap_or(PROTOCOL_VERSION_MAX),
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.node_id,
            link_id: l.id,
            incarnation: self.incarnation,
            capabilities: capabilities::ALL,
            health: hb.health.descriptor(),
            heartbeat: hb.endpoint()?,
            clients,
        })
    }

    pub(super) fn handle_message(&mut self, i: usize, m: Message) -> Result<()> {
        let id = self.links[i].id;
        tracing::debug!(link = id, message = m.name(), "received");
        match m {
            Message::PeerInfo(info) => self.on_peer_info(i, info),
            Message::Ready { clients, .. } => self.on_ready(i, clients),
            Message::Attach(info) => {
                self.on_attach(i, info);
                Ok(())
            }
            Message::ClientReady { name, .. } => {
                let on_link = self
                    .clients
                    .get(&name)
                    .is_some_and(|c| c.attachment.as_ref().is_some_and(|a| a.link == id));
                if on_link {
                    self.deliver(&name);
                }
                Ok(())
            }
            Message::Detach {
                name,
                reason,
                generation,
            } => {
                self.on_detach(i, &name, reason, generation);
                Ok(())
            }
            Message::Goodbye { reason, detail } => {
                let why = format!("partner said goodbye ({reason:?}: {detail})");
                self.fail_link(i, &why, false);
                Ok(())
            }
            other => {
                tracing::warn!(
                    link = id,
                    message = other.name(),
                    "unexpected message ignored"
                );
                Ok(())
            }
        }
    }

    fn on_peer_info(&mut self, i: usize, info: PeerInfo) -> Result<()> {
        let id = self.links[i].id;
        let opts = connect_options(self.packet_key(i));
        if let Some(hb) = self.links[i].heartbeat.as_mut() {
            hb.connect(&info.heartbeat, info.health, &opts)?;
        }
        if initiator(&self.cfg) {
            // The responder's answer: connect, then tell it which clients are ready.
            let mut ready = Vec::new();
            let mut incomplete = Vec::new();
            for ci in &info.clients {
                match self.apply_partner_info(&ci.name, id, ci) {
                    Ok(true) => ready.push(ci.name.clone()),
                    Ok(false) => incomplete.push(ci.name.clone()),
                    Err(e) => {
                        tracing::error!(client = %ci.name, link = id, error = %e, "connect client")
                    }
                }
            }
            let list = ready
                .iter()
                .map(|n| ReadyClient {
                    name: n.clone(),
                    generation: self.clients.get(n).map_or(0, |c| c.generation),
                })
                .collect();
            self.send(
                i,
                Message::Ready {
                    link_id: id,
                    clients: list,
                },
            );
            for n in &ready {
                self.deliver(n);
            }
            for n in &incomplete {
                self.send_attach(n, i);
            }
        } else {
            // The initiator's offer: attach the clients we have, remember the others.
            let mut infos = Vec::new();
            for ci in info.clients {
                if self.clients.contains_key(&ci.name) {
                    match self.attach_from_partner(i, &ci) {
                        Ok(own) => infos.push(own),
                        Err(e) => {
                            tracing::error!(client = %ci.name, link = id, error = %e, "attach offered client")
                        }
                    }
                } else {
                    tracing::info!(client = %ci.name, link = id, "partner offers a client not registered here yet");
                    self.offers.insert(ci.name.clone(), (id, ci));
                }
            }
            let reply = self.peer_info(i, infos)?;
            self.send(i, Message::PeerInfo(reply));
        }
        Ok(())
    }

    fn on_ready(&mut self, i: usize, clients: Vec<ReadyClient>) -> Result<()> {
        let id = self.links[i].id;
        if !initiator(&self.cfg) {
            for c in &clients {
                let on_link = self.clients.get(&c.name).is_some_and(|r| {
                    r.attachment
                        .as_ref()
                        .is_some_and(|a| a.link == id && a.complete())
                });
                if on_link {
                    self.deliver(&c.name);
                }
            }
            self.send(
                i,
                Message::Ready {
                    link_id: id,
                    clients,
                },
            );
        }
        self.link_ready(i);
        Ok(())
    }

    fn link_ready(&mut self, i: usize) {
        let now_ms = self.now_ms();
        let interval = self.cfg.heartbeat.interval();
        let l = &mut self.links[i];
        l.attempt = 0;
        l.last_error = None;
        l.counters.reconnects += 1;
        l.healthy_since_ms = now_ms;
        l.next_interval = Instant::now() + interval;
        if let Some(hb) = l.heartbeat.as_mut() {
            let _ = hb.post_read();
        }
        self.set_state(i, LinkState::Ready);
        let offered: Vec<String> = self.offers.keys().cloned().collect();
        for name in offered {
            self.take_offer(&name);
        }
    }

    /// Attach (either side): a client's resources on this link, new or changed.
    fn on_attach(&mut self, i: usize, info: ClientInfo) {
        let id = self.links[i].id;
        let name = info.name.clone();
        if !self.clients.contains_key(&name) {
            if !initiator(&self.cfg) {
                tracing::info!(client = %name, link = id, "partner attaches a client not registered here yet");
                self.offers.insert(name, (id, info));
            }
            return;
        }
        let here = self.clients[&name]
            .attachment
            .as_ref()
            .is_some_and(|a| a.link == id);
        if !here {
            if initiator(&self.cfg) {
                tracing::debug!(client = %name, link = id, "stale attach ignored");
                return;
            }
            match self.attach_from_partner(i, &info) {
                Ok(own) => {
                    self.send(i, Message::Attach(own));
                }
                Err(e) => {
                    tracing::error!(client = %name, link = id, error = %e, "attach client");
                }
            }
            return;
        }
        match self.apply_partner_info(&name, id, &info) {
            Ok(true) => {
                let generation = self.clients[&name].generation;
                self.send(
                    i,
                    Message::ClientReady {
                        name: name.clone(),
                        generation,
                    },
                );
                self.deliver(&name);
            }
            Ok(false) => self.send_attach(&name, i),
            Err(e) => {
                tracing::error!(client = %name, link = id, error = %e, "apply partner's client info");
                self.fail_client(&name, &e.to_string(), true);
            }
        }
    }

    fn on_detach(&mut self, i: usize, name: &str, reason: DetachReason, _generation: u32) {
        let id = self.links[i].id;
        let on_link = self
            .clients
            .get(name)
            .is_some_and(|c| c.attachment.as_ref().is_some_and(|a| a.link == id));
        match reason {
            DetachReason::Moving if initiator(&self.cfg) => {
                // The responder's acknowledgement of our planned move.
                if let Some(c) = self.clients.get_mut(name) {
                    if let Some(p) = c.pending.as_mut() {
                        if p.from == id {
                            p.phase = MovePhase::AwaitAck {
                                until: Instant::now(),
                            };
                        }
                    }
                }
            }
            DetachReason::Moving => {
                if on_link {
                    if let Some(c) = self.clients.get_mut(name) {
                        c.detach(SuspendReason::Moving { to: None });
                    }
                }
                self.send(
                    i,
                    Message::Detach {
                        name: name.to_string(),
                        generation: 0,
                        reason: DetachReason::Moving,
                    },
                );
            }
            DetachReason::Released => {
                if on_link {
                    if let Some(c) = self.clients.get_mut(name) {
                        c.detach(SuspendReason::PartnerReleased);
                        c.set_state(ClientState::Waiting);
                    }
                }
                self.offers.remove(name);
            }
            DetachReason::Failed => {
                if on_link {
                    if let Some(c) = self.clients.get_mut(name) {
                        c.detach(SuspendReason::LinkDown);
                        c.displaced = true;
                    }
                }
            }
        }
    }

    /// Tears down a link's session, heartbeat and clients (their rkeys die).
    pub(super) fn teardown_link(&mut self, i: usize, why: &str, reason: SuspendReason) {
        let id = self.links[i].id;
        let was_ready = self.links[i].state == LinkState::Ready;
        for c in self.clients.values_mut() {
            if c.attachment.as_ref().is_some_and(|a| a.link == id) {
                c.detach(reason.clone());
                c.displaced = true;
            }
            if c.pending.as_ref().is_some_and(|p| p.from == id) {
                // The source died mid-move: go straight to attaching on the target.
                if let Some(p) = c.pending.as_mut() {
                    p.phase = MovePhase::AwaitAck {
                        until: Instant::now(),
                    };
                }
            }
        }
        self.offers.retain(|_, (l, _)| *l != id);
        let l = &mut self.links[i];
        if let Some(hb) = l.heartbeat.take() {
            l.counters.heartbeat_rtt = summarize(&hb.rtt);
            hb.teardown();
        }
        if let Some(c) = l.conn.take() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        l.connecting = None;
        if was_ready {
            l.counters.failures += 1;
            l.metrics.failures.increment(1);
        }
        l.last_error = Some(why.to_string());
    }

    pub(super) fn schedule_retry(&mut self, i: usize, refused: bool) {
        let state = if refused {
            LinkState::Refused
        } else {
            LinkState::Down
        };
        self.retry_later(i, state);
    }

    /// A link failed: alert its clients, tear everything down, re-initialise with backoff.
    pub(super) fn fail_link(&mut self, i: usize, why: &str, refused: bool) {
        let id = self.links[i].id;
        if self.links[i].conn.is_none() && self.links[i].state != LinkState::Ready {
            return;
        }
        // Flush a pending Refuse so the partner learns the cause.
        self.flush_quietly(i);
        tracing::warn!(link = id, reason = why, "link down");
        self.links[i].counters.errors += 1;
        self.links[i].metrics.errors.increment(1);
        self.teardown_link(i, why, SuspendReason::LinkDown);
        self.schedule_retry(i, refused);
    }

    fn flush_quietly(&mut self, i: usize) {
        if let Some(c) = self.links[i].conn.as_mut() {
            while let Some(frame) = c.session.poll_transmit() {
                if c.stream.write_all(&frame).is_err() {
                    break;
                }
            }
        }
    }

    /// One client's queue pair failed: re-establish just that client.
    pub(super) fn fail_client(&mut self, name: &str, why: &str, tell_partner: bool) {
        let Some(c) = self.clients.get_mut(name) else {
            return;
        };
        let Some(link) = c.detach(SuspendReason::LinkDown) else {
            return;
        };
        c.displaced = true;
        c.counters.errors += 1;
        tracing::warn!(client = name, link, reason = why, "client torn down");
        if tell_partner {
            if let Some(i) = self.link_index(link) {
                let generation = self.clients.get(name).map_or(0, |c| c.generation);
                self.send(
                    i,
                    Message::Detach {
                        name: name.to_string(),
                        generation,
                        reason: DetachReason::Failed,
                    },
                );
            }
        }
    }

    pub(super) fn shutdown_all(&mut self) {
        for i in 0..self.links.len() {
            if self.links[i].conn.as_ref().is_some_and(|c| c.established) {
                self.send(
                    i,
                    Message::Goodbye {
                        reason: GoodbyeReason::Shutdown,
                        detail: "node shutting down".into(),
                    },
                );
            }
            self.teardown_link(i, "shutdown", SuspendReason::Shutdown);
            if let Some(p) = self.links[i].pending.take() {
                let _ = p.stream.shutdown(Shutdown::Both);
            }
            self.links[i].acceptor = None;
        }
        for c in self.clients.values_mut() {
            c.detach(SuspendReason::Shutdown);
        }
        tracing::info!("manager stopped");
    }
}
