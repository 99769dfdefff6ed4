//! The shadow log image (src/clients/mirror/log_format.rs, log_replay.rs, log.rs): superblock,
//! checkpoint slots and records, replayed from an arbitrary mirror image (what a survivor
//! finds in the partner's region after a takeover) and opened as a writer's own NVRAM after
//! a restart; and the replay cursor.
//!
//! Input: selector byte, then
//! - `0`: an image for [`replay`] and [`ShadowLog::open`] (the first 32 bytes also go to
//!   [`ReplayCursor::decode`]);
//! - `1`: the same with every CRC fixed first (superblock, both slots, every aligned record
//!   header in the data area), so the fuzzer gets past the checksums;
//! - `2`: a script for the writer ([`ShadowLog`]: format, append, checkpoint, mirror some
//!   writes), after which the mirror image must replay exactly the records appended after
//!   the checkpoint in force, and the local image must open to the same records.

use crate::{rejected, tagged};
use arbitrary::Unstructured;
use interlink::clients::mirror::log_format::*;
use interlink::clients::mirror::log_replay::{replay, LogPosition, ReplayCursor};
use interlink::clients::mirror::{MemoryNvram, NvramBacking, ShadowLog};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => image(rest),
        1 => image(&fix_image(rest)),
        _ => writer_script(rest),
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn put_crc_le(b: &mut [u8], from: usize, at: usize) {
    if b.len() >= at + 4 {
        let crc = crc32c::crc32c(&b[from..at]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// `image` with the superblock's, both slots' and every record's CRC recomputed.
pub fn fix_image(image: &[u8]) -> Vec<u8> {
    let mut b = image.to_vec();
    put_crc_le(&mut b, 0, 60);
    put_crc_le(&mut b, 64, 124);
    put_crc_le(&mut b, 128, 188);
    let offset = usize::try_from(le_u64(&b, 16))
        .unwrap_or(usize::MAX)
        .min(b.len());
    let len = usize::try_from(le_u64(&b, 24)).unwrap_or(usize::MAX);
    let end = offset.saturating_add(len).min(b.len());
    // Later records first: an earlier record's payload may contain a later "header".
    let mut at = end.saturating_sub(RECORD_HEADER_LEN);
    at -= (at.saturating_sub(offset)) % RECORD_ALIGN;
    while at >= offset && at + RECORD_HEADER_LEN <= end {
        if b[at..at + 4] == RECORD_MAGIC {
            let n = u32::from_le_bytes([b[at + 24], b[at + 25], b[at + 26], b[at + 27]]) as usize;
            let p = at + RECORD_HEADER_LEN;
            if n <= end - p {
                let crc = crc32c::crc32c_append(crc32c::crc32c(&b[at..at + 28]), &b[p..p + n]);
                b[at + 28..at + 32].copy_from_slice(&crc.to_le_bytes());
            }
        }
        if at < offset + RECORD_ALIGN {
            break;
        }
        at -= RECORD_ALIGN;
    }
    b
}

fn image(b: &[u8]) {
    match ReplayCursor::decode(b) {
        Ok(c) => assert_eq!(&c.encode()[..], &b[..ReplayCursor::ENCODED_LEN]),
        Err(e) => rejected(&e),
    }
    if let Ok(sb) = decode_superblock(b) {
        assert_eq!(&encode_superblock(&sb)[..], &b[..SUPERBLOCK_LEN]);
        for (slot, at) in CHECKPOINT_SLOT_OFFSETS.into_iter().enumerate() {
            if let Some(cp) = decode_checkpoint(b, &sb, slot) {
                assert_eq!(
                    &encode_checkpoint(&cp)[..],
                    &b[at..at + CHECKPOINT_SLOT_LEN]
                );
            }
        }
    }
    let after = [
        None,
        Some(LogPosition {
            generation: le_u64(b, 32),
            seq: 2,
        }),
    ];
    let mut first = None;
    for a in after {
        match replay(b, a) {
            Ok(r) => {
                for (w, rec) in r.records.windows(2).zip(1..) {
                    assert_eq!(w[0].seq + 1, w[1].seq, "record {rec}: seqs not consecutive");
                }
                if let Some(a) = a {
                    assert!(r
                        .records
                        .iter()
                        .all(|x| x.seq > a.seq || r.generation > a.generation));
                }
                first.get_or_insert(r);
            }
            Err(e) => rejected(&e),
        }
    }
    match ShadowLog::open(MemoryNvram::from_bytes(b.to_vec())) {
        Ok((mut log, r)) => {
            let from_replay = first.expect("open succeeded where replay failed");
            assert_eq!(r.records, from_replay.records);
            // Keep writing on the opened log: its state came from the image.
            while let Some(w) = log.poll_mirror_write() {
                log.handle_mirror_complete(w.id);
            }
            match log.append(b"after restart") {
                Ok(p) => {
                    if let Err(e) = log.checkpoint(p) {
                        rejected(&e);
                    }
                }
                Err(e) => rejected(&e),
            }
            while let Some(w) = log.poll_mirror_write() {
                log.handle_mirror_complete(w.id);
            }
        }
        Err(e) => rejected(&e),
    }
}

fn copy(log: &ShadowLog<MemoryNvram>, mirror: &mut [u8], offset: usize, len: usize) {
    let r = offset..offset + len;
    mirror[r.clone()].copy_from_slice(&log.local().bytes()[r]);
}

fn writer_script(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let size = MIN_IMAGE_LEN + usize::from(u.arbitrary::<u16>().unwrap_or(0) % 3800);
    let generation = u64::from(u.arbitrary::<u8>().unwrap_or(0)) + 1;
    let mut log = match ShadowLog::format(MemoryNvram::new(size), generation) {
        Ok(l) => l,
        Err(e) => return rejected(&e),
    };
    let mut mirror = vec![0u8; size];
    let mut appended: Vec<Vec<u8>> = Vec::new();
    let mut ops = 0;
    while !u.is_empty() && ops < 200 {
        ops += 1;
        match u.arbitrary::<u8>().unwrap_or(0) % 4 {
            0 | 1 => {
                let len = usize::from(u.arbitrary::<u16>().unwrap_or(0)) % (log.max_payload() + 2);
                let fill = u.arbitrary::<u8>().unwrap_or(0);
                let payload: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                match log.append(&payload) {
                    Ok(p) => {
                        appended.push(payload);
                        assert_eq!(p.seq as usize, appended.len());
                    }
                    Err(e) => rejected(&e),
                }
            }
            2 => {
                let seq = u64::from(u.arbitrary::<u8>().unwrap_or(0)) % (appended.len() as u64 + 2);
                if let Err(e) = log.checkpoint(LogPosition { generation, seq }) {
                    rejected(&e);
                }
            }
            _ => {
                let n = u.arbitrary::<u8>().unwrap_or(0) % 4;
                for _ in 0..n {
                    let Some(w) = log.poll_mirror_write() else {
                        break;
                    };
                    copy(&log, &mut mirror, w.offset, w.len);
                    log.handle_mirror_complete(w.id);
                }
            }
        }
    }
    while let Some(w) = log.poll_mirror_write() {
        copy(&log, &mut mirror, w.offset, w.len);
        log.handle_mirror_complete(w.id);
    }
    let r = replay(&mirror, None).expect("a mirrored log replays");
    let through = usize::try_from(r.checkpoint).expect("checkpoint");
    assert!(through <= appended.len());
    let want: Vec<(u64, &[u8])> = appended[through..]
        .iter()
        .enumerate()
        .map(|(i, p)| ((through + i + 1) as u64, p.as_slice()))
        .collect();
    let got: Vec<(u64, &[u8])> = r
        .records
        .iter()
        .map(|x| (x.seq, x.payload.as_slice()))
        .collect();
    assert_eq!(got, want, "mirror replay lost or invented records");
    let (_, local) = ShadowLog::open(log.into_local()).expect("the writer's own image opens");
    assert_eq!(local.records, r.records);
}

/// A formatted image with records and a checkpoint, a wrapped one, and writer scripts.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut log = ShadowLog::format(MemoryNvram::new(1024), 3).expect("format");
    for i in 0..5u8 {
        log.append(&vec![i; 20 + usize::from(i) * 9])
            .expect("append");
    }
    log.checkpoint(LogPosition {
        generation: 3,
        seq: 2,
    })
    .expect("checkpoint");
    let img = log.local().bytes().to_vec();
    out.push(tagged(0, &img));
    out.push(tagged(1, &img));
    let mut wrapped = ShadowLog::format(MemoryNvram::new(512), 4).expect("format");
    for i in 0..12u64 {
        while let Some(w) = wrapped.poll_mirror_write() {
            wrapped.handle_mirror_complete(w.id);
        }
        let p = wrapped.append(&[i as u8; 40]).expect("append");
        wrapped.checkpoint(p).expect("checkpoint");
    }
    out.push(tagged(0, wrapped.local().bytes()));
    let cursor = ReplayCursor {
        position: LogPosition {
            generation: 3,
            seq: 9,
        },
        complete: true,
    };
    out.push(tagged(0, &cursor.encode()));
    // Scripts: size 600, generation 5; append, append, mirror 3, checkpoint 1, append, mirror.
    out.push(tagged(
        2,
        &[
            0x18, 0x01, 5, 0, 30, 0, 1, 200, 0, 9, 3, 3, 2, 1, 0, 50, 0, 7, 3, 3,
        ],
    ));
    out.push(tagged(2, &[0, 0, 1, 1, 0xff, 0xff, 1]));
    out
}
