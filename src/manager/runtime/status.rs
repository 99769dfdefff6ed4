//! Status snapshots and traffic measurement.

use super::*;

impl Runtime {
    pub(super) fn status(&self) -> NodeStatus {
        let now = Instant::now();
        let links = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let cfg = &self.cfg.links[i];
                LinkStatus {
                    id: l.id,
                    local: cfg.local.to_string(),
                    peer: cfg.peer.to_string(),
                    device: l
                        .fabric
                        .as_ref()
                        .map(|f| f.device.name())
                        .unwrap_or_default(),
                    provider: l
                        .fabric
                        .as_ref()
                        .map(|f| f.device.provider().to_string())
                        .unwrap_or_default(),
                    state: l.state,
                    since_ms: now.duration_since(l.since).as_millis() as u64,
                    last_error: l.last_error.clone(),
                    clients: self
                        .clients
                        .iter()
                        .filter(|(_, c)| c.attachment.as_ref().is_some_and(|a| a.link == l.id))
                        .map(|(n, _)| n.clone())
                        .collect(),
                    rate_bps: l.rate_bps,
                    counters: LinkCounters {
                        heartbeat_rtt: l
                            .heartbeat
                            .as_ref()
                            .map(|hb| summarize(&hb.rtt))
                            .unwrap_or(l.counters.heartbeat_rtt),
                        unauthenticated_packets: l
                            .fabric
                            .as_ref()
                            .and_then(|f| f.device.soft_unauthenticated())
                            .unwrap_or(0),
                        ..l.counters
                    },
                }
            })
            .collect();
        let clients = self
            .clients
            .iter()
            .map(|(n, c)| {
                let mut counters = c.counters;
                let (failovers, migrations, reconnects) =
                    (counters.failovers, counters.migrations, counters.reconnects);
                c.cells.snapshot(&mut counters);
                counters.errors += c.counters.errors;
                counters.failovers = failovers;
                counters.migrations = migrations;
                counters.reconnects = reconnects;
                let (qps, regions) = c.attachment.as_ref().map_or((0, 0), |a| a.sizes());
                ClientStatus {
                    name: n.clone(),
                    class: c.spec.class,
                    state: c.state,
                    link: c.attachment.as_ref().map(|a| a.link),
                    home: self.planner.as_ref().and_then(|p| p.home(n)),
                    generation: c.generation,
                    qps,
                    regions,
                    rate_bps: c.rate_bps,
                    counters,
                    refused: c.refused.clone(),
                }
            })
            .collect();
        NodeStatus {
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.node_id,
            partner_id: self.cfg.partner_id,
            incarnation: self.incarnation,
            partner_incarnation: self.partner_incarnation,
            uptime_ms: self.now_ms(),
            links,
            clients,
        }
    }

    /// Samples every client's counters: rates (smoothed) and per-link totals.
    pub(super) fn sample_rates(&mut self, now: Instant) {
        let dt = (now + RATE_PERIOD)
            .duration_since(self.next_rates)
            .as_secs_f64()
            .max(1e-3);
        self.next_rates = now + RATE_PERIOD;
        let mut per_link: HashMap<LinkId, (u64, u64, f64)> = HashMap::new();
        for c in self.clients.values_mut() {
            let ops = c.cells.ops.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = c.cells.bytes.load(std::sync::atomic::Ordering::Relaxed);
            let (dops, dbytes) = (
                ops - c.last_sample.0.min(ops),
                bytes - c.last_sample.1.min(bytes),
            );
            c.last_sample = (ops, bytes);
            let instant = dbytes as f64 / dt;
            c.rate_bps = 0.5 * c.rate_bps + 0.5 * instant;
            if c.rate_bps < 1.0 {
                c.rate_bps = 0.0;
            }
            if let Some(a) = &c.attachment {
                let e = per_link.entry(a.link).or_default();
                e.0 += dops;
                e.1 += dbytes;
                e.2 += c.rate_bps;
            }
        }
        for l in &mut self.links {
            let (ops, bytes, rate) = per_link.get(&l.id).copied().unwrap_or_default();
            l.counters.ops += ops;
            l.counters.bytes += bytes;
            l.metrics.ops.increment(ops);
            l.metrics.bytes.increment(bytes);
            l.rate_bps = rate;
        }
    }
}
