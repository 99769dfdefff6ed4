//! Fetching this node's own log from the partner's copy (F5.6, lost or corrupt NVRAM): RDMA
//! READs of the partner's `shadow-mirror` region (which holds this node's log and nothing
//! else; its rights let the partner READ it for this), one chunk at a time into the local
//! `shadow-fetch` landing region and from there into the image. The driver only moves the
//! bytes; whether they do is decided by
//! [`plan_fetched`](crate::clients::mirror::recovery_plan::plan_fetched).

use super::driver::{Shared, FETCH_TAG};
use crate::fabric::{SendOp, SendRequest};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A fetch in progress on one connection.
struct Progress {
    /// The connection's serial (a new connection starts over).
    serial: u64,
    /// Bytes of the image fetched.
    done: usize,
    /// The READ in flight: its offset and length, and the connection's fetch count it
    /// completes at.
    reading: Option<(usize, usize, u64)>,
}

impl Shared {
    /// Waits for a connection and READs the partner's whole copy of this node's log (the
    /// first `log_len` bytes of its `shadow-mirror` region); a connection lost on the way
    /// starts the fetch over on the next one. Returns the image and the partner incarnation
    /// it was read from (0: unknown), or by `deadline` the last connection error seen
    /// (`Err(None)`: none).
    pub(super) fn fetch_partner_copy(
        &self,
        deadline: Instant,
    ) -> Result<(Vec<u8>, u64), Option<String>> {
        let len = self.log_len;
        let mut image = vec![0u8; len];
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
                        done: 0,
                        reading: None,
                    }),
                };
                if let Some((off, n, _)) = p.reading.filter(|&(_, _, at)| l.fetched >= at) {
                    match l.fetch_landing.read(0, &mut image[off..off + n]) {
                        Ok(()) => {
                            p.done = off + n;
                            p.reading = None;
                        }
                        Err(e) => return Err(Some(format!("read the fetch landing region: {e}"))),
                    }
                }
                if p.done >= len {
                    tracing::info!(client = %self.cfg.name, bytes = len, link = %l.id, "own shadow log fetched from the partner's copy");
                    return Ok((image, l.partner_incarnation));
                }
                if p.reading.is_none() {
                    let n = l.fetch_landing.len().min(len - p.done);
                    let posted = l.fetch_landing.slice(0, n).and_then(|buf| {
                        let id = FETCH_TAG | p.done as u64;
                        let op = SendOp::Read(l.partner.at(p.done as u64));
                        l.qp.post_send(SendRequest::new(id, op, buf))
                    });
                    match posted {
                        Ok(()) => {
                            if l.outstanding == 0 {
                                l.progress_at = Instant::now();
                            }
                            l.outstanding += 1;
                            p.reading = Some((p.done, n, l.fetched + 1));
                        }
                        Err(e) => failure = Some(format!("post fetch READ at {}: {e}", p.done)),
                    }
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
