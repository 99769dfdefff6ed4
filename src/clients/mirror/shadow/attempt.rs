//! One attempt to append a record to the shadow log, shared by the blocking appends (which
//! retry until their deadline) and [`AppendFuture`](super::AppendFuture) (which retries when
//! woken).

use super::driver::{Inner, Shared};
use super::AppendTicket;
use crate::clients::mirror::error::{LogError, ShadowError};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Why an append cannot be made yet (it may be once the state changes).
pub(super) struct Blocked {
    pub(super) recovered: bool,
    pub(super) in_mailbox: bool,
    pub(super) recorded: bool,
    /// The log is full while a write in flight may reclaim space.
    pub(super) full: Option<ShadowError>,
}

impl Blocked {
    /// The error of an append that waited `waited` in vain.
    pub(super) fn into_error(self, shared: &Shared, waited: Duration) -> ShadowError {
        let name = shared.cfg.name.clone();
        if !self.recovered {
            return ShadowError::NotRecovered { name, waited };
        }
        if !self.in_mailbox {
            return ShadowError::NotInMailbox { name, waited };
        }
        if !self.recorded {
            return ShadowError::OwnLogUnrecorded {
                name,
                generation: shared.generation.load(Ordering::Acquire),
                waited,
            };
        }
        self.full.unwrap_or(ShadowError::AppendNoLink { waited })
    }
}

/// One attempt to append `payload` (the log persists it and its mirror writes are posted):
/// the ticket, what it waits for (`Err(Blocked)`), or an error that waiting does not cure.
pub(super) fn try_append(
    shared: &Shared,
    st: &mut Inner,
    payload: &[u8],
    started: Instant,
) -> Result<Result<AppendTicket, Blocked>, ShadowError> {
    shared.pump(st);
    if st.relinquished {
        return Err(ShadowError::Relinquished {
            name: shared.cfg.name.clone(),
            generation: 0,
            seq: 0,
        });
    }
    if let (Some(mismatch), false) = (&st.refused, st.absent) {
        return Err(ShadowError::Refused {
            name: shared.cfg.name.clone(),
            mismatch: mismatch.clone(),
        });
    }
    let recovered = st.recovery.is_recovered();
    let in_mailbox = shared
        .copy_mark
        .get()
        .is_none_or(|m| m.is_attached_durably());
    // F5.6: nothing of a new generation before the mailbox records it.
    let recorded = shared.own_log.get().is_none_or(|m| m.is_durable());
    let usable = recovered && in_mailbox && recorded && (st.absent || st.link_up());
    let mut full = None;
    if usable {
        let log = st.log()?;
        match log.append(payload) {
            Ok(position) => {
                st.counters.appends += 1;
                shared.metrics.appends.increment(1);
                st.counters.bytes += payload.len() as u64;
                shared.post(st);
                return Ok(Ok(AppendTicket { position, started }));
            }
            Err(e @ LogError::Full { .. }) => {
                let s = log.stats();
                if s.writes_queued + s.writes_in_flight == 0 {
                    return Err(e.into());
                }
                full = Some(e.into()); // a completion may reclaim space
            }
            Err(e) => return Err(e.into()),
        }
    }
    if shared.stop.load(Ordering::Relaxed) {
        return Err(shared.stopped());
    }
    Ok(Err(Blocked {
        recovered,
        in_mailbox,
        recorded,
        full,
    }))
}
