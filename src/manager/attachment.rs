//! A client's resources on one link: its queue pairs (each with its own completion queues)
//! and regions, the partner's view of them, and teardown that kills the old remote keys
//! while keeping the contents for the next link.
//!
//! An [`Attachment`] is created on the link's protection domain; queue pair indices and region
//! ids are the client's and stay the same on every link. [`Attachment::apply_partner`] slam
//! connects every queue pair whose partner endpoint is new or changed (others keep running) and
//! resets those the partner no longer lists, which is how live changes are mirrored.
//! [`Attachment::teardown`] resets the queue pairs and revokes the regions
//! ([`MemoryRegion::revoke`]): the partner's rkeys stop working at once, while the memory and its
//! contents stay. The revoked regions are returned as the [`Carry`], and the next
//! [`Attachment::create`] copies each one into the new region of the same id, so a client's
//! completed work in its regions survives a failover or move.

use crate::fabric::CompletionQueue;
use crate::fabric::{
    Access, ConnectOptions, Endpoint, MemoryRegion, ProtectionDomain, QpCapacity, QueuePair,
};
use crate::manager::client::{ClientCells, ClientQp, ClientRegion, Connection};
use crate::manager::error::{ManagerError, Result};
use crate::manager::types::{ClientInfo, ClientSpec, LinkId, QpInfo, RegionInfo, RegionSpec, Term};
use std::collections::BTreeMap;
use std::sync::Arc;

struct AttachedQp {
    qp: Arc<QueuePair>,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    connected_to: Option<Endpoint>,
}

struct AttachedRegion {
    purpose: String,
    access: Access,
    region: MemoryRegion,
}

/// Regions kept after a teardown (revoked, contents intact) to seed the next attachment.
pub(crate) type Carry = BTreeMap<u16, MemoryRegion>;

/// A client's queue pairs and regions on one link.
pub(crate) struct Attachment {
    pub(crate) link: LinkId,
    pub(crate) generation: u32,
    /// The generation it was created with: every [`Connection`](crate::manager::Connection)
    /// it delivers has this generation or a later one, and an earlier one belongs to an
    /// earlier attachment.
    pub(crate) first_generation: u32,
    qps: BTreeMap<u16, AttachedQp>,
    regions: BTreeMap<u16, AttachedRegion>,
    partner: Option<ClientInfo>,
}

impl Attachment {
    /// Creates `qp_indices` queue pairs and the regions on `pd`; region contents are copied
    /// from `carry` (same id) when present.
    pub(crate) fn create(
        link: LinkId,
        owner: &str,
        pd: &ProtectionDomain,
        qp_indices: &[u16],
        cap: QpCapacity,
        regions: &[(u16, RegionSpec)],
        carry: &Carry,
    ) -> Result<Attachment> {
        let mut a = Attachment {
            link,
            generation: 0,
            first_generation: 0,
            qps: BTreeMap::new(),
            regions: BTreeMap::new(),
            partner: None,
        };
        for &i in qp_indices {
            a.add_qp(owner, pd, i, cap)?;
        }
        for (id, spec) in regions {
            a.add_region(owner, pd, *id, spec, carry.get(id))?;
        }
        Ok(a)
    }

    fn err(&self, owner: &str, source: crate::fabric::FabricError) -> ManagerError {
        ManagerError::CreateResources {
            link: self.link,
            owner: owner.to_string(),
            source,
        }
    }

    /// Adds queue pair `index` (no-op if present).
    pub(crate) fn add_qp(
        &mut self,
        owner: &str,
        pd: &ProtectionDomain,
        index: u16,
        cap: QpCapacity,
    ) -> Result<()> {
        if self.qps.contains_key(&index) {
            return Ok(());
        }
        let dev = pd.device();
        let send_cq = dev
            .create_cq(cap.max_send_wr.max(1))
            .map_err(|e| self.err(owner, e))?;
        let recv_cq = dev
            .create_cq(cap.max_recv_wr.max(1))
            .map_err(|e| self.err(owner, e))?;
        let qp = pd
            .create_qp(&send_cq, &recv_cq, cap)
            .map_err(|e| self.err(owner, e))?;
        self.qps.insert(
            index,
            AttachedQp {
                qp: Arc::new(qp),
                send_cq,
                recv_cq,
                connected_to: None,
            },
        );
        Ok(())
    }

    /// Adds region `id` (no-op if present), seeded from `seed`.
    pub(crate) fn add_region(
        &mut self,
        owner: &str,
        pd: &ProtectionDomain,
        id: u16,
        spec: &RegionSpec,
        seed: Option<&MemoryRegion>,
    ) -> Result<()> {
        if self.regions.contains_key(&id) {
            return Ok(());
        }
        let region = pd
            .register(spec.len, spec.access)
            .map_err(|e| self.err(owner, e))?;
        if let Some(old) = seed {
            copy_contents(old, &region).map_err(|e| self.err(owner, e))?;
        }
        self.regions.insert(
            id,
            AttachedRegion {
                purpose: spec.purpose.clone(),
                // As granted: a right the device lacks (REMOTE_FLUSH) is not advertised.
                access: region.access(),
                region,
            },
        );
        Ok(())
    }

    /// Destroys queue pair `index` (the device stops using it at once).
    pub(crate) fn release_qp(&mut self, index: u16) -> bool {
        match self.qps.remove(&index) {
            Some(q) => {
                if let Err(e) = q.qp.reset() {
                    tracing::warn!(link = self.link, index, error = %e, "reset released queue pair");
                }
                true
            }
            None => false,
        }
    }

    /// Revokes and forgets region `id`.
    pub(crate) fn release_region(&mut self, id: u16) -> bool {
        match self.regions.remove(&id) {
            Some(r) => {
                if let Err(e) = r.region.revoke() {
                    tracing::warn!(link = self.link, id, error = %e, "revoke released region");
                }
                true
            }
            None => false,
        }
    }

    /// The description the partner needs.
    pub(crate) fn info(&self, owner: &str, spec: &ClientSpec) -> Result<ClientInfo> {
        let mut qps = Vec::with_capacity(self.qps.len());
        for (&index, q) in &self.qps {
            let endpoint = q.qp.endpoint().map_err(|e| self.err(owner, e))?;
            qps.push(QpInfo { index, endpoint });
        }
        let regions = self
            .regions
            .iter()
            .map(|(&id, r)| RegionInfo {
                id,
                purpose: r.purpose.clone(),
                access: r.access,
                descriptor: r.region.descriptor(),
            })
            .collect();
        Ok(ClientInfo {
            name: owner.to_string(),
            class: spec.class,
            generation: self.generation,
            qps,
            regions,
            terms: spec.terms.clone(),
        })
    }

    /// The terms the partner's client states, once its info arrived.
    pub(crate) fn partner_terms(&self) -> Option<&[Term]> {
        self.partner.as_ref().map(|p| p.terms.as_slice())
    }

    /// Queue pair indices the partner has and we do not.
    pub(crate) fn missing_from(&self, partner: &ClientInfo) -> Vec<u16> {
        partner
            .qps
            .iter()
            .map(|q| q.index)
            .filter(|i| !self.qps.contains_key(i))
            .collect()
    }

    /// Connects every queue pair whose peer is new or changed; records the partner's info.
    /// Queue pairs already connected to the same endpoint are left alone (traffic on them
    /// is not disturbed). Returns how many were (re)connected.
    pub(crate) fn apply_partner(
        &mut self,
        owner: &str,
        info: &ClientInfo,
        opts: &ConnectOptions,
    ) -> Result<usize> {
        let mut n = 0;
        for q in &info.qps {
            if let Some(local) = self.qps.get_mut(&q.index) {
                if local.connected_to != Some(q.endpoint) {
                    local.qp.connect(&q.endpoint, opts).map_err(|source| {
                        ManagerError::ConnectQp {
                            link: self.link,
                            owner: owner.to_string(),
                            index: q.index,
                            source,
                        }
                    })?;
                    local.connected_to = Some(q.endpoint);
                    n += 1;
                }
            }
        }
        // Queue pairs whose counterpart the partner released: reset them.
        let gone: Vec<u16> = self
            .qps
            .iter()
            .filter(|(i, q)| q.connected_to.is_some() && !info.qps.iter().any(|p| p.index == **i))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            self.release_qp(i);
        }
        self.generation = self.generation.max(info.generation);
        self.partner = Some(info.clone());
        Ok(n)
    }

    /// Whether every queue pair is connected to a partner counterpart.
    pub(crate) fn complete(&self) -> bool {
        self.partner.is_some() && self.qps.values().all(|q| q.connected_to.is_some())
    }

    /// Whether the queue pair with this number belongs here.
    pub(crate) fn has_qpn(&self, qpn: u32) -> bool {
        self.qps.values().any(|q| q.qp.qpn() == qpn)
    }

    /// Send requests outstanding on all queue pairs (for draining before a planned move).
    pub(crate) fn outstanding_sends(&self) -> usize {
        self.qps.values().map(|q| q.qp.outstanding().0).sum()
    }

    /// The connection handed to the client (the partner runs incarnation
    /// `partner_incarnation`).
    pub(crate) fn connection(
        &self,
        cells: &Arc<ClientCells>,
        partner_incarnation: u64,
    ) -> Connection {
        Connection {
            partner_incarnation,
            link: self.link,
            generation: self.generation,
            qps: self
                .qps
                .iter()
                .map(|(&i, q)| {
                    ClientQp::new(
                        i,
                        q.qp.clone(),
                        q.send_cq.clone(),
                        q.recv_cq.clone(),
                        cells.clone(),
                    )
                })
                .collect(),
            regions: self
                .regions
                .iter()
                .map(|(&id, r)| ClientRegion {
                    id,
                    purpose: r.purpose.clone(),
                    region: r.region.clone(),
                })
                .collect(),
            partner_regions: self
                .partner
                .as_ref()
                .map(|p| p.regions.clone())
                .unwrap_or_default(),
        }
    }

    /// Number of queue pairs and regions.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.qps.len(), self.regions.len())
    }

    /// Tears everything down: queue pairs reset (outstanding requests flush), regions revoked
    /// (their remote keys stop working at once). Returns the regions, contents intact, to
    /// seed the next attachment.
    pub(crate) fn teardown(self) -> Carry {
        for (i, q) in &self.qps {
            if let Err(e) = q.qp.reset() {
                tracing::warn!(link = self.link, index = i, error = %e, "reset queue pair at teardown");
            }
        }
        let mut carry = Carry::new();
        for (id, r) in self.regions {
            if let Err(e) = r.region.revoke() {
                tracing::warn!(link = self.link, id, error = %e, "revoke region at teardown");
            }
            carry.insert(id, r.region);
        }
        carry
    }
}

/// Copies the first min(len) bytes of `from` into `to`.
fn copy_contents(from: &MemoryRegion, to: &MemoryRegion) -> crate::fabric::Result<()> {
    let n = from.len().min(to.len());
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < n {
        let k = (n - off).min(buf.len());
        from.read(off, &mut buf[..k])?;
        to.write(off, &buf[..k])?;
        off += k;
    }
    Ok(())
}
