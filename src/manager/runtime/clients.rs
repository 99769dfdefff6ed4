//! Clients: registration, live changes, attachment, placement and moves.

use super::*;

impl Runtime {
    pub(super) fn register(
        &mut self,
        spec: ClientSpec,
    ) -> Result<(Receiver<ClientEvent>, Arc<ClientCells>)> {
        let bad = |reason: &str| ManagerError::Register {
            name: spec.name.clone(),
            reason: reason.to_string(),
        };
        if spec.name.is_empty() || spec.name.len() > 64 {
            return Err(bad("the name must be 1 to 64 bytes"));
        }
        if self.clients.contains_key(&spec.name) {
            return Err(bad("a client of that name is already registered"));
        }
        if spec.qp_count == 0 || spec.qp_count > 1024 {
            return Err(bad("qp_count must be 1 to 1024"));
        }
        if spec.regions.len() > 1024 {
            return Err(bad("at most 1024 regions"));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &spec.regions {
            if r.purpose.is_empty() || r.purpose.len() > 64 || !seen.insert(r.purpose.clone()) {
                return Err(bad("region purposes must be unique and 1 to 64 bytes"));
            }
            if r.len == 0 {
                return Err(bad("regions must not be empty"));
            }
            r.check_rights().map_err(|e| bad(&e))?;
        }
        if spec.terms.len() > 32 {
            return Err(bad("at most 32 terms"));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &spec.terms {
            if t.name.is_empty() || t.name.len() > 64 || !seen.insert(t.name.as_str()) {
                return Err(bad("term names must be unique and 1 to 64 bytes"));
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let cells = Arc::new(ClientCells::new());
        let regions = spec
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u16, r.clone()))
            .collect::<Vec<_>>();
        let name = spec.name.clone();
        tracing::info!(client = %name, class = %spec.class, qps = spec.qp_count, regions = regions.len(), "client registered");
        let rec = ClientRecord {
            next_region_id: regions.len() as u16,
            next_qp_index: spec.qp_count,
            regions,
            spec,
            events: tx,
            cells: cells.clone(),
            state: ClientState::Waiting,
            attachment: None,
            carry: Carry::new(),
            displaced: false,
            refused: None,
            pending: None,
            generation: 0,
            counters: ClientCounters::default(),
            last_sample: (0, 0),
            rate_bps: 0.0,
            metrics: ClientMetrics::new(self.cfg.node_id, &name),
        };
        rec.metrics.state.set(client_state_code(rec.state));
        self.clients.insert(name.clone(), rec);
        // Responder: the partner may already have offered it.
        self.take_offer(&name);
        Ok((rx, cells))
    }

    /// Responder: attaches a registered client the partner already offered, once the
    /// offer's link is ready.
    pub(super) fn take_offer(&mut self, name: &str) {
        let ready = self.offers.get(name).is_some_and(|(link, _)| {
            self.link_index(*link)
                .is_some_and(|i| self.links[i].state == LinkState::Ready)
        });
        if !ready || !self.clients.contains_key(name) {
            return;
        }
        let name = name.to_string();
        if let Some((link, info)) = self.offers.remove(&name) {
            if let Some(i) = self.link_index(link) {
                if self.links[i].state == LinkState::Ready {
                    match self.attach_from_partner(i, &info) {
                        Ok(own) => self.send(i, Message::Attach(own)),
                        Err(e) => {
                            tracing::error!(client = %name, link, error = %e, "attach offered client")
                        }
                    }
                }
            }
        }
    }

    pub(super) fn client_request(&mut self, req: ClientRequest) {
        let name = match &req {
            ClientRequest::AddQp { name }
            | ClientRequest::AddRegion { name, .. }
            | ClientRequest::ReleaseQp { name, .. }
            | ClientRequest::ReleaseRegion { name, .. }
            | ClientRequest::Close { name }
            | ClientRequest::Failed { name, .. } => name.clone(),
        };
        if let ClientRequest::Close { .. } = req {
            self.close_client(&name);
            return;
        }
        if let ClientRequest::Failed {
            reason, generation, ..
        } = &req
        {
            if let Some(reported) = *generation {
                let attached = self
                    .clients
                    .get(&name)
                    .and_then(|c| c.attachment.as_ref())
                    .map(|a| a.first_generation);
                if attached.is_none_or(|first| reported < first) {
                    tracing::info!(client = %name, reported, attached, reason = %reason, "failure of an earlier connection ignored");
                    return;
                }
            }
            let why = format!("reported by the client: {reason}");
            self.fail_client(&name, &why, true);
            return;
        }
        let Some(c) = self.clients.get(&name) else {
            return;
        };
        let link = c.attachment.as_ref().map(|a| a.link);
        let i = link.and_then(|l| self.link_index(l));
        let pd = i.and_then(|i| self.links[i].fabric.as_ref().map(|f| f.pd.clone()));
        let Some(c) = self.clients.get_mut(&name) else {
            return;
        };
        let mut changed = false;
        let result: Result<()> = (|| {
            match req {
                ClientRequest::AddQp { .. } => {
                    let index = c.next_qp_index;
                    c.next_qp_index += 1;
                    c.spec.qp_count += 1;
                    if let (Some(att), Some(pd)) = (c.attachment.as_mut(), pd.as_ref()) {
                        att.add_qp(&name, pd, index, c.spec.qp_capacity)?;
                        changed = true;
                    }
                    tracing::info!(client = %name, index, "queue pair added");
                }
                ClientRequest::AddRegion { spec, .. } => {
                    if let Err(what) = spec.check_rights() {
                        return Err(ManagerError::ClientRequest {
                            name: name.clone(),
                            what,
                        });
                    }
                    if c.regions.iter().any(|(_, r)| r.purpose == spec.purpose) {
                        return Err(ManagerError::ClientRequest {
                            name: name.clone(),
                            what: format!("region {:?} exists", spec.purpose),
                        });
                    }
                    let id = c.next_region_id;
                    c.next_region_id += 1;
                    if let (Some(att), Some(pd)) = (c.attachment.as_mut(), pd.as_ref()) {
                        att.add_region(&name, pd, id, &spec, None)?;
                        changed = true;
                    }
                    tracing::info!(client = %name, id, purpose = %spec.purpose, "region added");
                    c.regions.push((id, spec));
                }
                ClientRequest::ReleaseQp { index, .. } => {
                    if let Some(att) = c.attachment.as_mut() {
                        changed |= att.release_qp(index);
                    }
                    tracing::info!(client = %name, index, "queue pair released");
                }
                ClientRequest::ReleaseRegion { purpose, .. } => {
                    if let Some(pos) = c.regions.iter().position(|(_, r)| r.purpose == purpose) {
                        let (id, _) = c.regions.remove(pos);
                        c.carry.remove(&id);
                        if let Some(att) = c.attachment.as_mut() {
                            changed |= att.release_region(id);
                        }
                        tracing::info!(client = %name, id, purpose = %purpose, "region released");
                    }
                }
                ClientRequest::Close { .. } | ClientRequest::Failed { .. } => {}
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(client = %name, error = %e, "client request failed");
        }
        if changed {
            if let Some(i) = i {
                if let Some(c) = self.clients.get_mut(&name) {
                    c.generation += 1;
                    if let Some(a) = c.attachment.as_mut() {
                        a.generation = c.generation;
                    }
                }
                self.send_attach(&name, i);
            }
        }
    }

    pub(super) fn close_client(&mut self, name: &str) {
        let Some(mut c) = self.clients.remove(name) else {
            return;
        };
        c.set_state(ClientState::Closed);
        let link = c.attachment.as_ref().map(|a| a.link);
        if let Some(att) = c.attachment.take() {
            let _ = att.teardown();
        }
        if let Some(p) = &mut self.planner {
            p.forget(name);
        }
        tracing::info!(client = name, "client closed");
        if let Some(i) = link.and_then(|l| self.link_index(l)) {
            self.send(
                i,
                Message::Detach {
                    name: name.to_string(),
                    generation: c.generation,
                    reason: DetachReason::Released,
                },
            );
        }
    }

    /// Creates a client's resources on link `i` (region contents from its carry) and returns
    /// its info. `extra` adds queue pair indices the partner has.
    pub(super) fn create_attachment(
        &mut self,
        name: &str,
        i: usize,
        extra: Option<&ClientInfo>,
    ) -> Result<ClientInfo> {
        let id = self.links[i].id;
        let pd = self.links[i]
            .fabric
            .as_ref()
            .map(|f| f.pd.clone())
            .ok_or_else(|| ManagerError::Register {
                name: name.to_string(),
                reason: format!("link {id} has no device"),
            })?;
        let c = self
            .clients
            .get_mut(name)
            .ok_or_else(|| not_registered(name))?;
        let mut indices = c.qp_indices();
        if let Some(p) = extra {
            for q in &p.qps {
                if !indices.contains(&q.index) {
                    indices.push(q.index);
                }
            }
            if let Some(m) = p.qps.iter().map(|q| q.index).max() {
                c.next_qp_index = c.next_qp_index.max(m + 1);
            }
        }
        c.generation += 1;
        let mut att = Attachment::create(
            id,
            name,
            &pd,
            &indices,
            c.spec.qp_capacity,
            &c.regions,
            &c.carry,
        )?;
        att.generation = c.generation;
        att.first_generation = c.generation;
        c.carry.clear();
        let info = att.info(name, &c.spec)?;
        c.attachment = Some(att);
        c.set_state(ClientState::Connecting);
        tracing::info!(
            client = name,
            link = id,
            generation = c.generation,
            "client resources created"
        );
        Ok(info)
    }

    /// Responder: attach a client the partner placed on link `i`, connected to its info.
    pub(super) fn attach_from_partner(
        &mut self,
        i: usize,
        info: &ClientInfo,
    ) -> Result<ClientInfo> {
        let id = self.links[i].id;
        let name = info.name.clone();
        if let Some(c) = self.clients.get_mut(&name) {
            if c.attachment.as_ref().is_some_and(|a| a.link != id) {
                let was = c.detach(SuspendReason::Moving { to: Some(id) });
                tracing::info!(client = %name, from = ?was, to = id, "client moves");
            }
            if c.attachment.is_none() && c.displaced {
                c.counters.failovers += 1;
                c.displaced = false;
            }
        }
        if self
            .clients
            .get(&name)
            .is_some_and(|c| c.attachment.is_none())
        {
            self.create_attachment(&name, i, Some(info))?;
        }
        self.apply_partner_info(&name, id, info)?;
        let c = &self.clients[&name];
        let att = c
            .attachment
            .as_ref()
            .ok_or_else(|| ManagerError::ClientRequest {
                name: name.clone(),
                what: "no attachment".into(),
            })?;
        att.info(&name, &c.spec)
    }

    /// Creates what the partner has and we lack, connects; Ok(true) when complete.
    pub(super) fn apply_partner_info(
        &mut self,
        name: &str,
        link: LinkId,
        info: &ClientInfo,
    ) -> Result<bool> {
        let i = self
            .link_index(link)
            .ok_or_else(|| ManagerError::ClientRequest {
                name: name.to_string(),
                what: format!("unknown link {link}"),
            })?;
        let pd = self.links[i].fabric.as_ref().map(|f| f.pd.clone());
        let opts = connect_options(self.packet_key(i));
        let c = self
            .clients
            .get_mut(name)
            .ok_or_else(|| not_registered(name))?;
        let cap = c.spec.qp_capacity;
        let att = match c.attachment.as_mut() {
            Some(a) if a.link == link => a,
            _ => return Ok(false),
        };
        let missing = att.missing_from(info);
        let mut created = false;
        if let Some(pd) = pd {
            for idx in &missing {
                att.add_qp(name, &pd, *idx, cap)?;
                created = true;
                c.next_qp_index = c.next_qp_index.max(idx + 1);
            }
        }
        att.apply_partner(name, info, &opts)?;
        c.generation = c.generation.max(att.generation);
        Ok(!created && att.complete())
    }

    pub(super) fn send_attach(&mut self, name: &str, i: usize) {
        let info = match self.clients.get(name) {
            Some(c) => match c.attachment.as_ref().map(|a| a.info(name, &c.spec)) {
                Some(Ok(info)) => info,
                Some(Err(e)) => {
                    tracing::error!(client = name, error = %e, "describe client");
                    return;
                }
                None => return,
            },
            None => return,
        };
        self.send(i, Message::Attach(info));
    }

    /// Tells the client its connection is ready (or updated).
    pub(super) fn deliver(&mut self, name: &str) {
        let Some(c) = self.clients.get_mut(name) else {
            return;
        };
        let Some(att) = c.attachment.as_ref() else {
            return;
        };
        let link = att.link;
        let theirs = att.partner_terms().unwrap_or_default();
        if let Some(mismatch) = TermMismatch::find(&c.spec.terms, theirs) {
            // Refused at connect, at both nodes (each compares the other's terms): told once
            // per disagreement, to the log and to the client (wait_ready returns it).
            if c.refused.as_ref() != Some(&mismatch) {
                tracing::error!(client = name, link, %mismatch, "client refused: the partner's client disagrees");
                let _ = c.events.send(ClientEvent::Refused(mismatch.clone()));
                c.refused = Some(mismatch);
            }
            c.set_state(ClientState::Refused);
            return;
        }
        c.refused = None;
        let conn = att.connection(&c.cells, self.partner_incarnation.unwrap_or(0));
        if c.state == ClientState::Ready {
            let _ = c.events.send(ClientEvent::Updated(conn));
            tracing::info!(
                client = name,
                link,
                generation = c.generation,
                "client updated"
            );
        } else {
            c.set_state(ClientState::Ready);
            c.counters.reconnects += 1;
            let _ = c.events.send(ClientEvent::Ready(conn));
            tracing::info!(
                client = name,
                link,
                generation = c.generation,
                "client ready"
            );
        }
    }

    pub(super) fn link_views(&self, established_counts: bool) -> Vec<LinkView> {
        self.links
            .iter()
            .map(|l| LinkView {
                id: l.id,
                healthy: l.state == LinkState::Ready
                    || (established_counts && l.conn.as_ref().is_some_and(|c| c.established)),
                healthy_since_ms: if l.state == LinkState::Ready {
                    l.healthy_since_ms
                } else {
                    self.now_ms()
                },
            })
            .collect()
    }

    pub(super) fn client_views(&self) -> Vec<ClientView> {
        self.clients
            .iter()
            .map(|(n, c)| ClientView {
                name: n.clone(),
                class: c.spec.class,
                link: match (&c.attachment, &c.pending) {
                    (_, Some(p)) => Some(p.to),
                    (Some(a), None) => Some(a.link),
                    (None, None) => None,
                },
                rate_bps: c.rate_bps,
                movable: c.pending.is_none()
                    && match &c.attachment {
                        None => true,
                        Some(_) => c.state == ClientState::Ready,
                    },
            })
            .collect()
    }

    /// Initiator: runs the planner over ready links and starts the moves it asks for.
    pub(super) fn plan(&mut self) {
        // Links still in the startup gather are not planned yet.
        if self.started.elapsed() < STARTUP_GATHER
            && !self.links.iter().all(|l| l.state == LinkState::Ready)
        {
            return;
        }
        let views = self.link_views(false);
        let clients = self.client_views();
        let now_ms = self.now_ms();
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        let moves = planner.plan(now_ms, &views, &clients);
        for m in moves {
            let Some(to) = self.link_index(m.to) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(&m.client) else {
                continue;
            };
            match (&c.attachment, m.from) {
                (Some(att), Some(_)) if att.link != m.to => {
                    let from = att.link;
                    tracing::info!(client = %m.client, from, to = m.to, reason = %m.reason, "client moves");
                    c.counters.migrations += 1;
                    c.suspend(from, SuspendReason::Moving { to: Some(m.to) });
                    c.pending = Some(PendingMove {
                        from,
                        to: m.to,
                        reason: m.reason,
                        phase: MovePhase::Draining {
                            until: Instant::now() + DRAIN_LIMIT,
                        },
                    });
                }
                (None, _) => {
                    if c.displaced {
                        c.counters.failovers += 1;
                        c.displaced = false;
                    }
                    tracing::info!(client = %m.client, to = m.to, reason = %m.reason, "placing client");
                    let name = m.client.clone();
                    match self.create_attachment(&name, to, None) {
                        Ok(info) => self.send(to, Message::Attach(info)),
                        Err(e) => {
                            tracing::error!(client = %name, error = %e, "create client resources")
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Advances planned moves: drain, detach with acknowledgement, attach on the target.
    pub(super) fn advance_moves(&mut self, now: Instant) {
        let names: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.pending.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(c) = self.clients.get_mut(&name) else {
                continue;
            };
            let Some(p) = c.pending.as_mut() else {
                continue;
            };
            match p.phase {
                MovePhase::Draining { until } => {
                    let drained = c
                        .attachment
                        .as_ref()
                        .is_none_or(|a| a.outstanding_sends() == 0);
                    if drained || now >= until {
                        let from = p.from;
                        p.phase = MovePhase::AwaitAck {
                            until: now + DETACH_ACK_LIMIT,
                        };
                        let generation = c.generation;
                        if let Some(att) = c.attachment.take() {
                            for (id, r) in att.teardown() {
                                c.carry.insert(id, r);
                            }
                        }
                        if let Some(i) = self.link_index(from) {
                            self.send(
                                i,
                                Message::Detach {
                                    name: name.clone(),
                                    generation,
                                    reason: DetachReason::Moving,
                                },
                            );
                        }
                    }
                }
                MovePhase::AwaitAck { until } => {
                    if now >= until {
                        let to = p.to;
                        let reason = p.reason;
                        c.pending = None;
                        c.set_state(ClientState::Waiting);
                        let Some(i) = self.link_index(to) else {
                            continue;
                        };
                        if self.links[i].state != LinkState::Ready {
                            continue; // the planner places it elsewhere
                        }
                        tracing::info!(client = %name, to, reason = %reason, "attaching moved client");
                        match self.create_attachment(&name, i, None) {
                            Ok(info) => self.send(i, Message::Attach(info)),
                            Err(e) => {
                                tracing::error!(client = %name, error = %e, "create client resources")
                            }
                        }
                    }
                }
            }
        }
    }
}

fn not_registered(name: &str) -> ManagerError {
    ManagerError::ClientRequest {
        name: name.to_string(),
        what: "not registered".into(),
    }
}
