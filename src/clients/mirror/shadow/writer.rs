//! A background writer for demos and tests: appends numbered records to a [`ShadowMirror`]
//! with several in flight, checkpoints periodically, and records what was acknowledged in a
//! text file, so a test can compare it with what the partner replays after a takeover.
//!
//! The acknowledged log has one line per event, appended and flushed per batch of
//! acknowledgements (a process killed at any instant leaves a prefix of the truth):
//!
//! - `generation G`: the writer started on a log of generation `G`;
//! - `S`: record `S` was acknowledged (durable locally and complete on the mirror);
//! - `unmirrored S`: record `S` was acknowledged with the partner absent (local only);
//! - `checkpoint-asked S`: a checkpoint through `S` is about to be asked for (written before
//!   the request, so a survivor never replays from a checkpoint the file does not name);
//! - `checkpoint S`: the checkpoint through `S` is complete on the mirror.
//!
//! A survivor replays from some checkpoint `C` with `last checkpoint <= C <= last
//! checkpoint-asked`.

use super::{AppendTicket, ShadowMirror};
use crate::clients::mirror::error::ShadowError;
use crate::clients::mirror::log_replay::LogPosition;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn new_histogram() -> Histogram<u64> {
    crate::manager::client::new_histogram()
}

/// What a [`ShadowWriter`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterConfig {
    /// Records to append (numbered from 1).
    pub count: u64,
    /// Payload size (at least 8: the number is the first 8 bytes).
    pub size: usize,
    /// Appends in flight at most.
    pub window: usize,
    /// Acknowledgements between checkpoints (0: never checkpoint).
    pub checkpoint_every: u64,
    /// The acknowledged log (see the module docs), if any.
    pub acked_log: Option<PathBuf>,
    /// Appends started per second at most (`None`: as fast as the window allows).
    pub rate: Option<u64>,
}

impl WriterConfig {
    /// `count` records of `size` bytes, 16 in flight, a checkpoint every 256.
    pub fn new(count: u64, size: usize) -> WriterConfig {
        WriterConfig {
            count,
            size,
            window: 16,
            checkpoint_every: 256,
            acked_log: None,
            rate: None,
        }
    }
}

/// Progress of a [`ShadowWriter`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterStats {
    /// Whether it is still running.
    pub running: bool,
    /// Records appended locally.
    pub appended: u64,
    /// Records acknowledged.
    pub acknowledged: u64,
    /// Records acknowledged unmirrored.
    pub unmirrored: u64,
    /// The last record acknowledged.
    pub last_seq: u64,
    /// The last checkpoint asked for.
    pub checkpoint_asked: u64,
    /// The last checkpoint complete on the mirror.
    pub checkpoint_mirrored: u64,
    /// Records whose log sequence number differed from the writer's number (another
    /// appender shares the log).
    pub seq_mismatches: u64,
    /// Errors (the writer stops at the first).
    pub errors: u64,
    /// The error, if any.
    pub last_error: Option<String>,
}

/// The payload of record `seq`: its number (little-endian) then a pattern derived from it.
pub fn fill_payload(seq: u64, buf: &mut [u8]) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = (seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8;
    }
}

/// The payload of record `seq` of `size` bytes (see [`fill_payload`]).
pub fn writer_payload(seq: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    fill_payload(seq, &mut v);
    v
}

/// The record number a writer payload carries, if it is one (number and pattern check).
pub fn check_payload(payload: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    payload
        .iter()
        .enumerate()
        .skip(8)
        .all(|(i, b)| *b == (seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .then_some(seq)
}

struct Shared {
    stats: Mutex<WriterStats>,
    /// Append latencies (start to acknowledgement seen by the writer, µs) since the last
    /// [`ShadowWriter::take_latencies`].
    latencies: Mutex<Histogram<u64>>,
    stop: AtomicBool,
}

/// A running writer; [`stop`](ShadowWriter::stop) or drop it to stop (the appends in flight
/// are waited for and logged first).
pub struct ShadowWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ShadowWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowWriter")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ShadowWriter {
    /// Starts the writer thread.
    pub fn start(mirror: Arc<ShadowMirror>, cfg: WriterConfig) -> std::io::Result<ShadowWriter> {
        let out = match &cfg.acked_log {
            Some(p) => Some(BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            stats: Mutex::new(WriterStats {
                running: true,
                ..WriterStats::default()
            }),
            latencies: Mutex::new(new_histogram()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("il-shadow-writer".into())
            .spawn(move || {
                let mut w = Run {
                    mirror,
                    cfg,
                    out,
                    shared: s,
                };
                if let Err(e) = w.run() {
                    tracing::warn!(error = %e, "shadow writer stopped on an error");
                    let mut st = w.shared.stats.lock();
                    st.errors += 1;
                    st.last_error = Some(e);
                }
                w.shared.stats.lock().running = false;
            })?;
        Ok(ShadowWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Progress.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats.lock().clone()
    }

    /// The append latencies (µs, from the start of an append to its acknowledgement as the
    /// writer saw it) recorded since the last call, and a fresh interval.
    pub fn take_latencies(&self) -> Histogram<u64> {
        std::mem::replace(&mut *self.shared.latencies.lock(), new_histogram())
    }

    /// Stops starting appends, waits for those in flight, and returns the final progress.
    pub fn stop(&mut self) -> WriterStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("shadow writer thread panicked");
            }
        }
        self.stats()
    }
}

impl Drop for ShadowWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Run {
    mirror: Arc<ShadowMirror>,
    cfg: WriterConfig,
    out: Option<BufWriter<std::fs::File>>,
    shared: Arc<Shared>,
}

impl Run {
    fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), String> {
        if let Some(o) = self.out.as_mut() {
            o.write_fmt(args).map_err(|e| format!("acked log: {e}"))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if let Some(o) = self.out.as_mut() {
            o.flush().map_err(|e| format!("acked log: {e}"))?;
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        let err = |e: ShadowError| e.to_string();
        // The records of this run go to the log the recovery installs.
        while self
            .mirror
            .wait_recovered_timeout(Duration::from_millis(100))
            .is_err()
        {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        let generation = self.mirror.generation();
        self.line(format_args!("generation {generation}\n"))?;
        self.flush()?;
        let mut buf = vec![0u8; self.cfg.size.max(8)];
        let window = self.cfg.window.max(1);
        let mut in_flight: VecDeque<(AppendTicket, Instant)> = VecDeque::with_capacity(window);
        // Under a rate limit: when the next append may start, and the time between two. A
        // writer held up (a failover) does not burst to catch up: it starts at most one append
        // early.
        let interval = self
            .cfg
            .rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(1.0 / r as f64));
        let mut next_due = interval.map(|_| Instant::now());
        // A writer started on a log that already holds records (an earlier writer of this
        // process) continues its numbering: payload `n` is record `n`.
        let first = self.mirror.next_seq();
        let mut next = first;
        let mut since_checkpoint = 0u64;
        let mut last: Option<LogPosition> = None;
        let mut logged_checkpoint = 0u64;
        let mut asked = 0u64;
        let mut failure = None;
        // The log was given up at a halt of this node: the writer stops (what it logged
        // stands; the records in flight are the recovery's to decide).
        let given_up = |e: &ShadowError| matches!(e, ShadowError::Relinquished { .. });
        let mut stopped = false;
        loop {
            while failure.is_none()
                && !stopped
                && !self.shared.stop.load(Ordering::Relaxed)
                && in_flight.len() < window
                && next - first < self.cfg.count
                && next_due.is_none_or(|d| d <= Instant::now())
            {
                fill_payload(next, &mut buf);
                match self.mirror.append_start(&buf) {
                    Ok(t) => {
                        let mut st = self.shared.stats.lock();
                        st.appended += 1;
                        if t.position().seq != next {
                            st.seq_mismatches += 1;
                        }
                        let now = Instant::now();
                        in_flight.push_back((t, now));
                        next += 1;
                        if let (Some(d), Some(i)) = (next_due.as_mut(), interval) {
                            *d = (*d + i).max(now.checked_sub(i).unwrap_or(now));
                        }
                    }
                    Err(e) if given_up(&e) => stopped = true,
                    Err(e) => failure = Some(err(e)),
                }
            }
            if stopped {
                tracing::warn!(
                    in_flight = in_flight.len(),
                    "shadow writer stopped: the log was given up at a halt"
                );
                break;
            }
            let Some((front, t0)) = in_flight.pop_front() else {
                let more = failure.is_none()
                    && !self.shared.stop.load(Ordering::Relaxed)
                    && next - first < self.cfg.count;
                if !more {
                    break;
                }
                // Nothing in flight and the next append not due yet: wait (in short slices,
                // to see a stop).
                if let Some(d) = next_due {
                    let wait = d.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait.min(Duration::from_millis(10)));
                }
                continue;
            };
            // The oldest, then every later one already acknowledged: one batch.
            let mut batch = match self.mirror.wait(&front) {
                Ok(a) => vec![a],
                Err(e) if given_up(&e) => {
                    stopped = true;
                    continue;
                }
                Err(e) => return Err(err(e)),
            };
            let mut latencies = vec![t0.elapsed()];
            while let Some((t, t0)) = in_flight.front().copied() {
                if !self.mirror.is_acknowledged(&t) {
                    break;
                }
                in_flight.pop_front();
                match self.mirror.wait(&t) {
                    Ok(a) => batch.push(a),
                    Err(e) if given_up(&e) => {
                        stopped = true;
                        break;
                    }
                    Err(e) => return Err(err(e)),
                }
                latencies.push(t0.elapsed());
            }
            {
                let mut h = self.shared.latencies.lock();
                for l in latencies {
                    crate::manager::client::record_us(&mut h, l);
                }
            }
            let mut unmirrored = 0;
            for a in &batch {
                if a.mirrored {
                    self.line(format_args!("{}\n", a.position.seq))?;
                } else {
                    unmirrored += 1;
                    self.line(format_args!("unmirrored {}\n", a.position.seq))?;
                }
            }
            self.flush()?;
            last = batch.last().map(|a| a.position).or(last);
            since_checkpoint += batch.len() as u64;
            {
                let mut st = self.shared.stats.lock();
                st.acknowledged += batch.len() as u64;
                st.unmirrored += unmirrored;
                st.last_seq = last.map_or(0, |p| p.seq);
            }
            if self.cfg.checkpoint_every > 0 && since_checkpoint >= self.cfg.checkpoint_every {
                if let Some(pos) = last {
                    self.line(format_args!("checkpoint-asked {}\n", pos.seq))?;
                    self.flush()?;
                    match self.mirror.checkpoint(pos) {
                        Ok(()) => {}
                        Err(e) if given_up(&e) => {
                            stopped = true;
                            continue;
                        }
                        Err(e) => return Err(err(e)),
                    }
                    asked = pos.seq;
                    self.shared.stats.lock().checkpoint_asked = asked;
                    since_checkpoint = 0;
                }
            }
            logged_checkpoint = self.log_checkpoint(logged_checkpoint)?;
        }
        // Let the last checkpoint asked for reach the mirror (bounded), and log it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stopped && logged_checkpoint < asked && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            logged_checkpoint = self.log_checkpoint(logged_checkpoint)?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Logs the mirrored checkpoint if it advanced past `logged`; returns the new value.
    fn log_checkpoint(&mut self, logged: u64) -> Result<u64, String> {
        let cp = self.mirror.checkpointed().seq;
        if cp > logged {
            self.line(format_args!("checkpoint {cp}\n"))?;
            self.flush()?;
            self.shared.stats.lock().checkpoint_mirrored = cp;
            return Ok(cp);
        }
        Ok(logged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check() {
        for size in [8, 9, 64, 1000] {
            let p = writer_payload(77, size);
            assert_eq!(check_payload(&p), Some(77));
            let mut q = p.clone();
            q[size - 1] ^= 1;
            assert_ne!(check_payload(&q), Some(77));
        }
        assert_eq!(check_payload(&[1, 2, 3]), None);
    }
}
