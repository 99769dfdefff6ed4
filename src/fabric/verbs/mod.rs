//! TEMPORARY stub of the verbs provider (replaced by the real one).
#![allow(missing_docs, dead_code, unused_variables)]
use crate::fabric::{raw::*, types::*, FabricError, Result};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    #[error("stub")]
    Stub,
}
fn e<T>() -> Result<T> {
    Err(FabricError::Verbs(VerbsError::Stub))
}
pub struct VerbsDevice;
impl VerbsDevice {
    pub fn list() -> Result<Vec<String>> {
        Ok(vec![])
    }
    pub fn open_by_name(name: &str, port: u8) -> Result<Arc<VerbsDevice>> {
        e()
    }
    pub fn open_by_addr(addr: std::net::IpAddr, port: Option<u8>) -> Result<Arc<VerbsDevice>> {
        e()
    }
    pub fn name(&self) -> &str {
        ""
    }
    pub fn port(&self) -> u8 {
        1
    }
    pub fn gid(&self) -> Gid {
        Gid::default()
    }
    pub fn port_active(&self) -> Result<bool> {
        e()
    }
    pub fn subscribe_events(&self) -> crossbeam_channel::Receiver<AsyncEvent> {
        crossbeam_channel::never()
    }
}
pub struct VerbsPd;
impl VerbsPd {
    pub fn new(dev: &Arc<VerbsDevice>) -> Result<Arc<VerbsPd>> {
        e()
    }
}
pub struct VerbsMr;
impl VerbsMr {
    pub fn register(pd: &Arc<VerbsPd>, len: usize, access: Access) -> Result<VerbsMr> {
        e()
    }
    pub fn descriptor(&self) -> RegionDescriptor {
        RegionDescriptor {
            addr: 0,
            len: 0,
            rkey: 0,
        }
    }
    pub fn lkey(&self) -> u32 {
        0
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn read(&self, offset: usize, dst: &mut [u8]) {}
    pub fn write(&self, offset: usize, src: &[u8]) {}
    pub fn read_u64(&self, offset: usize) -> u64 {
        0
    }
    pub fn write_u64(&self, offset: usize, v: u64) {}
}
pub struct VerbsCq;
impl VerbsCq {
    pub fn new(dev: &Arc<VerbsDevice>, depth: u32) -> Result<Arc<VerbsCq>> {
        e()
    }
    pub fn poll(&self, out: &mut Vec<RawCompletion>, max: usize) -> Result<usize> {
        e()
    }
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        e()
    }
}
pub struct VerbsQp;
impl VerbsQp {
    pub fn new(
        pd: &Arc<VerbsPd>,
        s: &Arc<VerbsCq>,
        r: &Arc<VerbsCq>,
        cap: QpCapacity,
    ) -> Result<VerbsQp> {
        e()
    }
    pub fn qpn(&self) -> u32 {
        0
    }
    pub fn local_endpoint(&self, psn: u32) -> Result<Endpoint> {
        e()
    }
    pub fn connect(&self, local_psn: u32, remote: &Endpoint, opts: &ConnectOptions) -> Result<()> {
        e()
    }
    pub fn reset(&self) -> Result<()> {
        e()
    }
    pub fn set_error(&self) -> Result<()> {
        e()
    }
    pub fn state(&self) -> Result<QpState> {
        e()
    }
    pub fn post_send(&self, wrs: &[RawSend]) -> Result<()> {
        e()
    }
    pub fn post_recv(&self, wrs: &[RawRecv]) -> Result<()> {
        e()
    }
}
