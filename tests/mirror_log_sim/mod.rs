//! A deterministic model of a shadow log writer, its NVRAM and the partner's mirror region,
//! for crash tests.
//!
//! The local NVRAM records every persisted range (what a crash could have left there, in
//! order). The mirror is a byte array that receives the ranges the writer hands out, in
//! order: a write is *posted* (handed out), later *lands* (its bytes, read from the local
//! image at landing time, as a DMA would, reach the mirror) and later *completes* (the writer
//! is told). A link failure lands some posted writes, tears the next one (a prefix of its
//! bytes lands) and drops the rest; the writer then rewinds and everything is re-sent.
//! Every change of either image is an [`Event`] of a timeline that a test can replay up to
//! any byte to get crash images, together with what the writer had promised at that moment
//! ([`Oracle`]).
#![allow(dead_code)]

use interlink::clients::mirror::{
    replay, LogError, LogPosition, MemoryNvram, MirrorWrite, NvramBacking, NvramError, Replay,
    ShadowLog,
};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::{BTreeMap, VecDeque};

/// Local NVRAM that remembers every persisted range.
pub struct RecordingNvram {
    pub bytes: Vec<u8>,
    pub persisted: Vec<(usize, Vec<u8>)>,
}

impl RecordingNvram {
    pub fn new(bytes: Vec<u8>) -> RecordingNvram {
        RecordingNvram {
            bytes,
            persisted: Vec::new(),
        }
    }
}

impl NvramBacking for RecordingNvram {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        let range = self
            .bytes
            .get(offset..offset + len)
            .ok_or(NvramError::OutOfRange {
                offset,
                len,
                size: self.bytes.len(),
            })?;
        self.persisted.push((offset, range.to_vec()));
        Ok(())
    }
}

/// Payload bytes of record `seq` with `len` bytes; `salt` tells logs apart.
pub fn payload(seq: u64, len: usize, salt: u64) -> Vec<u8> {
    let mut x = seq
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Which image an event changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Local,
    Mirror,
}

/// What the writer had promised when an event began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oracle {
    /// Highest seq acknowledged (returned by poll_acknowledged).
    pub acked: u64,
    /// `through` of the latest checkpoint complete on the mirror.
    pub mirrored_checkpoint: u64,
    /// `through` of the latest checkpoint asked for.
    pub requested_checkpoint: u64,
    /// Highest seq appended (including the one being written).
    pub appended: u64,
}

/// Bytes landing at `offset` of one image.
#[derive(Clone, Debug)]
pub struct Event {
    pub target: Target,
    pub offset: usize,
    pub bytes: Vec<u8>,
    pub oracle: Oracle,
}

#[derive(Clone, Debug)]
struct Posted {
    write: MirrorWrite,
    at_post: Vec<u8>,
    landed: bool,
}

/// A writer, its mirror, and the timeline of both images.
pub struct Driver {
    pub generation: u64,
    pub salt: u64,
    pub log: ShadowLog<RecordingNvram>,
    pub mirror: Vec<u8>,
    pub events: Vec<Event>,
    /// Payload of every record appended in this generation (that survived restarts).
    pub payloads: BTreeMap<u64, Vec<u8>>,
    pub acked: u64,
    /// The highest checkpoint ever complete on the mirror (across restarts).
    pub mirrored_floor: u64,
    posted: VecDeque<Posted>,
    seen_persists: usize,
    pub link_failures: u64,
    pub torn_landings: u64,
}

impl Driver {
    /// Formats a log of `generation` over `local` (a previous image, or zeros), mirrored into
    /// `mirror`.
    pub fn format(local: Vec<u8>, mirror: Vec<u8>, generation: u64, salt: u64) -> Driver {
        let log = ShadowLog::format(RecordingNvram::new(local), generation).expect("format");
        let mut d = Driver {
            generation,
            salt,
            log,
            mirror,
            events: Vec::new(),
            payloads: BTreeMap::new(),
            acked: 0,
            mirrored_floor: 0,
            posted: VecDeque::new(),
            seen_persists: 0,
            link_failures: 0,
            torn_landings: 0,
        };
        d.pull_local(Oracle::default());
        d
    }

    pub fn oracle(&self) -> Oracle {
        let s = self.log.stats();
        Oracle {
            acked: self.acked,
            mirrored_checkpoint: self.mirrored_floor.max(self.log.checkpointed().seq),
            requested_checkpoint: s.checkpoint_requested,
            appended: s.appended,
        }
    }

    fn pull_local(&mut self, before: Oracle) {
        let after = self.oracle();
        let oracle = Oracle {
            appended: after.appended,
            requested_checkpoint: after.requested_checkpoint,
            ..before
        };
        let new = &self.log.local().persisted[self.seen_persists..];
        self.seen_persists += new.len();
        for (offset, bytes) in new {
            self.events.push(Event {
                target: Target::Local,
                offset: *offset,
                bytes: bytes.clone(),
                oracle,
            });
        }
    }

    /// Appends record `seq = appended + 1` with `len` payload bytes.
    pub fn append(&mut self, len: usize) -> Result<LogPosition, LogError> {
        let before = self.oracle();
        let seq = before.appended + 1;
        let p = payload(seq, len, self.salt);
        let r = self.log.append(&p);
        if let Ok(pos) = r {
            assert_eq!(pos.seq, seq);
            self.payloads.insert(seq, p);
        }
        self.pull_local(before);
        r
    }

    pub fn checkpoint(&mut self, through: u64) -> Result<(), LogError> {
        let before = self.oracle();
        let r = self.log.checkpoint(LogPosition {
            generation: self.generation,
            seq: through,
        });
        self.pull_local(before);
        r
    }

    /// Hands out up to `n` writes.
    pub fn post(&mut self, n: usize) -> usize {
        let mut count = 0;
        while count < n {
            let Some(w) = self.log.poll_mirror_write() else {
                break;
            };
            let at_post = self.local_range(w).to_vec();
            self.posted.push_back(Posted {
                write: w,
                at_post,
                landed: false,
            });
            count += 1;
        }
        count
    }

    fn local_range(&self, w: MirrorWrite) -> &[u8] {
        &self.log.local().bytes[w.offset..w.offset + w.len]
    }

    /// Lands `prefix` bytes (all if `None`) of the first posted write not landed yet.
    fn land_next(&mut self, prefix: Option<usize>) -> bool {
        match self.posted.iter().position(|p| !p.landed) {
            Some(i) => {
                self.land_at(i, prefix);
                true
            }
            None => false,
        }
    }

    /// Lands `prefix` bytes (all if `None`) of posted write `i`.
    fn land_at(&mut self, i: usize, prefix: Option<usize>) {
        let oracle = self.oracle();
        let w = self.posted[i].write;
        let now = self.local_range(w).to_vec();
        // Rule 3: the bytes of a posted write do not change until it completes.
        assert_eq!(
            now, self.posted[i].at_post,
            "local bytes of write {w:?} changed"
        );
        let take = prefix.unwrap_or(w.len).min(w.len);
        self.mirror[w.offset..w.offset + take].copy_from_slice(&now[..take]);
        self.events.push(Event {
            target: Target::Mirror,
            offset: w.offset,
            bytes: now[..take].to_vec(),
            oracle,
        });
        self.posted[i].landed = true;
    }

    /// Lands up to `n` posted writes.
    pub fn land(&mut self, n: usize) -> usize {
        (0..n).take_while(|_| self.land_next(None)).count()
    }

    /// Completes the first `n` landed writes, then collects acknowledgements.
    pub fn complete(&mut self, n: usize) {
        let before = self.oracle();
        let mut last = None;
        for _ in 0..n {
            match self.posted.front() {
                Some(p) if p.landed => {
                    // Rule 3 again: a DMA may read the bytes any time before completion.
                    assert_eq!(
                        self.local_range(p.write),
                        &p.at_post[..],
                        "local bytes of write {:?} changed before it completed",
                        p.write
                    );
                    last = Some(p.write.id);
                    self.posted.pop_front();
                }
                _ => break,
            }
        }
        if let Some(id) = last {
            self.log.handle_mirror_complete(id);
            self.mirrored_floor = self.mirrored_floor.max(self.log.checkpointed().seq);
        }
        // A completion may write a deferred checkpoint slot.
        self.pull_local(before);
        self.collect_acks();
    }

    pub fn collect_acks(&mut self) {
        while let Some(pos) = self.log.poll_acknowledged() {
            assert_eq!(pos.generation, self.generation);
            assert!(pos.seq > self.acked, "ack {pos:?} after {}", self.acked);
            assert!(
                self.payloads.contains_key(&pos.seq),
                "ack of unknown {pos:?}"
            );
            self.acked = pos.seq;
        }
    }

    /// The link fails: each posted write that has not landed lands fully, lands torn (a
    /// random prefix) or not at all, in a random order (placement on a failing link is not
    /// ordered); completions of what landed are lost; the writer rewinds.
    pub fn link_failure(&mut self, rng: &mut impl Rng) {
        let mut pending: Vec<usize> = (0..self.posted.len())
            .filter(|&i| !self.posted[i].landed)
            .collect();
        pending.shuffle(rng);
        for i in pending {
            match rng.gen_range(0..10) {
                0..=3 => self.land_at(i, None),
                4..=5 => {
                    let len = self.posted[i].write.len;
                    self.land_at(i, Some(rng.gen_range(0..len)));
                    self.torn_landings += 1;
                }
                _ => {}
            }
        }
        self.posted.clear();
        self.log.rewind_unacknowledged();
        self.link_failures += 1;
    }

    /// The writer stops (its in-flight writes are lost, as after a link failure) and a new
    /// one opens the local NVRAM. Records not recovered from it are forgotten.
    pub fn restart(self) -> (Driver, Replay) {
        let floor = self.oracle().mirrored_checkpoint;
        let Driver {
            generation,
            salt,
            log,
            mirror,
            events,
            mut payloads,
            acked,
            seen_persists,
            link_failures,
            torn_landings,
            ..
        } = self;
        let (log, recovered) = ShadowLog::open(log.into_local()).expect("open");
        let last = recovered.last().map_or(recovered.checkpoint, |p| p.seq);
        payloads.retain(|&seq, _| seq <= last);
        let mut d = Driver {
            generation,
            salt,
            log,
            mirror,
            events,
            payloads,
            acked,
            mirrored_floor: floor,
            posted: VecDeque::new(),
            seen_persists,
            link_failures,
            torn_landings,
        };
        d.pull_local(d.oracle());
        (d, recovered)
    }

    /// Posts, lands and completes until nothing is left.
    pub fn sync(&mut self) {
        loop {
            self.post(usize::MAX);
            self.land(usize::MAX);
            self.complete(usize::MAX);
            let s = self.log.stats();
            if s.writes_queued == 0 && s.writes_in_flight == 0 {
                assert!(self.posted.is_empty());
                break;
            }
        }
    }

    /// Makes room: checkpoints everything acknowledged and syncs.
    pub fn drain(&mut self) {
        self.sync();
        if self.acked > self.log.stats().checkpoint_requested {
            self.checkpoint(self.acked).expect("checkpoint");
        }
        self.sync();
    }
}

/// Checks a replay of a crash image against what the writer had promised: the checkpoint it
/// starts from is at least the last mirrored one and at most the last asked for; records are
/// consecutive after it, were all appended, with their payloads; every acknowledged record
/// after the checkpoint is there.
pub fn check_replay(
    r: &Replay,
    o: &Oracle,
    payloads: &BTreeMap<u64, Vec<u8>>,
    what: &str,
) -> Result<(), String> {
    if r.checkpoint < o.mirrored_checkpoint || r.checkpoint > o.requested_checkpoint {
        return Err(format!(
            "{what}: replay from checkpoint {} outside [{}, {}]",
            r.checkpoint, o.mirrored_checkpoint, o.requested_checkpoint
        ));
    }
    for (i, rec) in r.records.iter().enumerate() {
        let want = r.checkpoint + 1 + i as u64;
        if rec.seq != want {
            return Err(format!(
                "{what}: record {i} has seq {} (want {want})",
                rec.seq
            ));
        }
        if rec.seq > o.appended {
            return Err(format!(
                "{what}: seq {} beyond the last appended {}",
                rec.seq, o.appended
            ));
        }
        if payloads.get(&rec.seq) != Some(&rec.payload) {
            return Err(format!("{what}: payload of seq {} differs", rec.seq));
        }
    }
    let last = r.records.last().map_or(r.checkpoint, |rec| rec.seq);
    if o.acked > r.checkpoint && last < o.acked {
        return Err(format!(
            "{what}: acknowledged seq {} lost (replay ends at {last}, checkpoint {}, stop {:?})",
            o.acked, r.checkpoint, r.stop
        ));
    }
    Ok(())
}

/// Replays `image` and checks it; an image of another generation (the log before this one)
/// or without a log is fine only while nothing was acknowledged.
pub fn check_image(
    image: &[u8],
    o: &Oracle,
    generation: u64,
    payloads: &BTreeMap<u64, Vec<u8>>,
    what: &str,
) -> Result<Option<Replay>, String> {
    match replay(image, None) {
        Ok(r) if r.generation == generation => {
            check_replay(&r, o, payloads, what).map(|()| Some(r))
        }
        Ok(r) if o.acked == 0 => {
            let _ = r;
            Ok(None)
        }
        Err(_) if o.acked == 0 => Ok(None),
        Ok(r) => Err(format!(
            "{what}: generation {} with {} acknowledged",
            r.generation, o.acked
        )),
        Err(e) => Err(format!("{what}: {e} with {} acknowledged", o.acked)),
    }
}

/// A writer restarted from the local crash image `local`, with the mirror crash image
/// `mirror`: the recovered records check like a replay; once everything is mirrored again,
/// the mirror replays exactly them; new appends follow them.
pub fn check_restart(
    local: &[u8],
    mirror: &[u8],
    o: &Oracle,
    generation: u64,
    salt: u64,
    payloads: &BTreeMap<u64, Vec<u8>>,
    rng: &mut impl Rng,
) -> Result<(), String> {
    let (mut log, recovered) = match ShadowLog::open(MemoryNvram::from_bytes(local.to_vec())) {
        Ok((log, rec)) if rec.generation == generation => (log, rec),
        Ok(_) | Err(_) if o.acked == 0 => return Ok(()),
        Ok(_) => return Err("restart: local image of another generation".into()),
        Err(e) => return Err(format!("restart: {e}")),
    };
    check_replay(&recovered, o, payloads, "restart: recovered")?;
    // First the restarted writer appends what it can and the link fails with its writes
    // placed in any order: the mirror must still hold what was acknowledged before.
    let last = recovered.last().map_or(recovered.checkpoint, |p| p.seq);
    let mut extended = payloads.clone();
    for seq in last + 1..last + 4 {
        let p = payload(seq, 1 + seq as usize % 3000, salt ^ 0xF0);
        if log.append(&p).is_err() {
            break;
        }
        extended.insert(seq, p);
    }
    let mut torn = mirror.to_vec();
    let mut writes: Vec<MirrorWrite> = std::iter::from_fn(|| log.poll_mirror_write()).collect();
    writes.shuffle(rng);
    for w in writes {
        let take = match rng.gen_range(0..3) {
            0 => 0,
            1 => rng.gen_range(0..w.len),
            _ => w.len,
        };
        let r = w.offset..w.offset + take;
        torn[r.clone()].copy_from_slice(&log.local().bytes()[r]);
    }
    let grown = Oracle {
        appended: extended.keys().last().copied().unwrap_or(0),
        ..*o
    };
    check_image(&torn, &grown, generation, &extended, "restart: failed link")?;
    log.rewind_unacknowledged();
    let mut mirror = torn;
    let sync = |log: &mut ShadowLog<MemoryNvram>, mirror: &mut Vec<u8>| {
        while let Some(w) = log.poll_mirror_write() {
            let r = w.offset..w.offset + w.len;
            mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
            log.handle_mirror_complete(w.id);
        }
    };
    sync(&mut log, &mut mirror);
    let again = replay(&mirror, None).map_err(|e| format!("restart: mirror after re-sync: {e}"))?;
    let local_now = replay(log.local().bytes(), None).map_err(|e| format!("restart: {e}"))?;
    if again.records != local_now.records
        || again.checkpoint != local_now.checkpoint
        || again.checkpoint != recovered.checkpoint
    {
        return Err(format!(
            "restart: mirror after re-sync replays {:?} from {}, local {:?} from {}",
            again.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            again.checkpoint,
            local_now.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            local_now.checkpoint
        ));
    }
    check_replay(&again, &grown, &extended, "restart: after re-sync")?;
    let last = again.last().map_or(again.checkpoint, |p| p.seq);
    if last > again.checkpoint {
        log.checkpoint(LogPosition {
            generation,
            seq: last,
        })
        .map_err(|e| format!("restart: checkpoint: {e}"))?;
        sync(&mut log, &mut mirror);
    }
    for seq in last + 1..=last + 3 {
        let p = payload(seq, 1 + seq as usize % 200, salt ^ 0xFF);
        let pos = log
            .append(&p)
            .map_err(|e| format!("restart: append: {e}"))?;
        if pos.seq != seq {
            return Err(format!("restart: appended {pos:?}, want seq {seq}"));
        }
    }
    sync(&mut log, &mut mirror);
    let r = replay(&mirror, None).map_err(|e| format!("restart: final replay: {e}"))?;
    let seqs: Vec<u64> = r.records.iter().map(|r| r.seq).collect();
    if r.checkpoint != last || seqs != (last + 1..=last + 3).collect::<Vec<_>>() {
        return Err(format!(
            "restart: final replay {seqs:?} from {} (want 3 after {last})",
            r.checkpoint
        ));
    }
    Ok(())
}

/// An image holding a log of an older generation (`generation`), with records still in it:
/// the starting content of both images, so stale records of another generation are around.
pub fn old_generation_image(size: usize, generation: u64) -> Vec<u8> {
    let mut d = Driver::format(vec![0; size], vec![0; size], generation, 0xA11);
    let mut seq = 0usize;
    loop {
        seq += 1;
        if d.append(1 + (seq * 37) % 300).is_err() {
            break;
        }
        d.sync();
        if seq % 5 == 0 {
            d.checkpoint(d.acked - 2).expect("checkpoint");
            d.sync();
        }
        if seq > 400 {
            break;
        }
    }
    d.sync();
    assert_eq!(d.mirror, d.log.local().bytes);
    d.mirror
}
