//! NVRAM that can die in the middle of a write: the live bytes the cores work on, and the
//! durable image a crash leaves. `persist` copies a range from live to durable; once armed, the
//! persist that brings the countdown to zero lands torn (a prefix of its range; an aligned
//! 8-byte store, atomic on real hardware, lands whole or not at all) and every later persist
//! is lost: the node died inside that call, and the world crashes it right after.

use interlink::clients::mirror::{NvramBacking, NvramError};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Arms a death inside a write of a [`CrashNvram`] that a core owns.
#[derive(Debug)]
pub struct Fuse {
    /// Persists left before the torn one (`u32::MAX`: not armed).
    countdown: AtomicU32,
    /// Bytes of the torn persist that land, as a fraction of its length in 1/256.
    tear: AtomicU32,
    /// The torn persist happened: the node is dead.
    dead: AtomicBool,
}

impl Fuse {
    /// The node dies during the `after`-th persist from now (0: the next one); `tear`/256 of
    /// that persist's bytes land.
    pub fn arm(&self, after: u32, tear: u8) {
        self.tear.store(u32::from(tear), Ordering::Relaxed);
        self.countdown.store(after, Ordering::Relaxed);
    }

    /// Forgets an armed death.
    pub fn disarm(&self) {
        self.countdown.store(u32::MAX, Ordering::Relaxed);
    }

    /// The node died inside a write.
    pub fn dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// How many bytes of a persist of `len` bytes at `offset` land; `None`: all of it.
    fn blow(&self, offset: usize, len: usize) -> Option<usize> {
        if self.dead() {
            return Some(0);
        }
        match self.countdown.load(Ordering::Relaxed) {
            u32::MAX => None,
            0 => {
                self.dead.store(true, Ordering::Relaxed);
                self.disarm();
                let tear = self.tear.load(Ordering::Relaxed) as usize;
                Some(if len == 8 && offset % 8 == 0 {
                    0
                } else {
                    len * tear / 256
                })
            }
            n => {
                self.countdown.store(n - 1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// One NVRAM backing of a simulated node.
pub struct CrashNvram {
    live: Vec<u8>,
    durable: Vec<u8>,
    fuse: Arc<Fuse>,
}

impl CrashNvram {
    /// A backing whose live and durable content is `image`.
    pub fn new(image: Vec<u8>) -> CrashNvram {
        CrashNvram {
            live: image.clone(),
            durable: image,
            fuse: Arc::new(Fuse {
                countdown: AtomicU32::new(u32::MAX),
                tear: AtomicU32::new(0),
                dead: AtomicBool::new(false),
            }),
        }
    }

    /// The fuse of this backing (kept by the world while a core owns the backing).
    pub fn fuse(&self) -> Arc<Fuse> {
        self.fuse.clone()
    }

    /// What a crash now leaves.
    pub fn crash_image(&self) -> Vec<u8> {
        self.durable.clone()
    }

    /// Bytes written by a remote RDMA WRITE: they reach the durable image as they land (the
    /// region is persistent memory; the writer's completion means they are there).
    pub fn remote_write(&mut self, offset: usize, bytes: &[u8]) {
        self.live[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.durable[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

impl NvramBacking for CrashNvram {
    fn bytes(&self) -> &[u8] {
        &self.live
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.live
    }

    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        let size = self.live.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(NvramError::OutOfRange { offset, len, size });
        }
        let take = self.fuse.blow(offset, len).unwrap_or(len);
        self.durable[offset..offset + take].copy_from_slice(&self.live[offset..offset + take]);
        Ok(())
    }
}
