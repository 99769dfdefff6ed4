//! Fetching this node's own log from the partner's copy (F5.6, lost or corrupt NVRAM): RDMA
//! READs of the partner's `shadow-mirror` region (which holds this node's log and nothing
//! else; its rights let the partner READ it for this) into the local `shadow-tx` staging
//! region, which no mirror write uses while the own log is not recovered. The driver only
//! moves the bytes; whether they do is decided by
//! [`plan_fetched`](crate::clients::mirror::recovery_plan::plan_fetched).

use super::driver::{Shared, FETCH_TAG};
use crate::fabric::{SendOp, SendRequest};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bytes one fetch READ moves at most.
const FETCH_CHUNK: usize = 1 << 20;

/// A fetch in progress on one connection.
struct Progress {
    /// The connection's serial (a new connection starts over).
    serial: u64,
    /// The next offset to READ.
    next: usize,
    /// The connection's fetch count when this fetch started.
    base: u64,
    /// READs posted.
    posted: u64,
}

impl Shared {
    /// Waits for a connection and READs the partner's whole copy of this node's log (the
    /// first `log_len` bytes of its `shadow-mirror` region); a connection lost on the way
    /// starts the fetch over on the next one. Returns the image, or by `deadline` the last
    /// connection error seen (`Err(None)`: none).
    pub(super) fn fetch_partner_copy(&self, deadline: Instant) -> Result<Vec<u8>, Option<String>> {
        let len = self.log_len;
        let depth = self.cfg.send_depth.max(4) as usize;
        let mut progress: Option<Progress> = None;
        let mut st = self.inner.lock();
        loop {
            self.pump(&mut st);
            if self.stop.load(Ordering::Relaxed) {
                return Err(Some("the shadow driver stopped".into()));
            }
            let mut failure = None;
            if let Some(l) = st.link.as_mut().filter(|l| !l.broken) {
                let p = match progress.take() {
                    Some(p) if p.serial == l.serial => progress.insert(p),
                    _ => progress.insert(Progress {
                        serial: l.serial,
                        next: 0,
                        base: l.fetched,
                        posted: 0,
                    }),
                };
                if p.next >= len && l.fetched - p.base >= p.posted {
                    let mut image = vec![0u8; len];
                    match l.tx.read(0, &mut image) {
                        Ok(()) => {
                            tracing::info!(client = %self.cfg.name, bytes = len, link = %l.id, "own shadow log fetched from the partner's copy");
                            return Ok(image);
                        }
                        Err(e) => return Err(Some(format!("read the fetched copy: {e}"))),
                    }
                }
                while p.next < len && l.outstanding < depth {
                    let n = FETCH_CHUNK.min(len - p.next);
                    let posted = l.tx.slice(p.next, n).and_then(|buf| {
                        let id = FETCH_TAG | (p.next / FETCH_CHUNK) as u64;
                        let op = SendOp::Read(l.partner.at(p.next as u64));
                        l.qp.post_send(SendRequest::new(id, op, buf))
                    });
                    if let Err(e) = posted {
                        failure = Some(format!("post fetch READ at {}: {e}", p.next));
                        break;
                    }
                    if l.outstanding == 0 {
                        l.progress_at = Instant::now();
                    }
                    l.outstanding += 1;
                    p.posted += 1;
                    p.next += n;
                }
            }
            if let Some(why) = failure {
                self.link_failed(&mut st, &why);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(st.last_error.clone());
            }
            self.changed
                .wait_for(&mut st, (deadline - now).min(Duration::from_millis(1)));
        }
    }
}
