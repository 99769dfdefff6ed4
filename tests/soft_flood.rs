//! The soft provider's TCP listener under a flood (issue 16 item 2), alone in its binary: it
//! measures the whole process's descriptors, threads and memory, so no other test may run
//! beside it.

/// The soft transport's listener stays bounded under a flood (issue 16 item 2): 2,000
/// connects, 40 connections announcing 16 MiB frames and 200 idle holders against device B
/// while A keeps WRITE/READ traffic to it. B's descriptors, threads and memory stay within the
/// listener's bounds, the real traffic completes throughout, and everything the flood opened
/// is closed. (Before: one descriptor leaked per connection, a thread per connection, and the
/// whole announced frame allocated before any data arrived.)
mod suite;
use suite::{next, pattern, Pair};

mod flood_test {
    use super::{next, pattern, Pair};
    use interlink::fabric::soft::{MAX_FRAME, MAX_INBOUND};
    use interlink::fabric::{Access, CompletionStatus, SendOp, SendRequest};
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    fn count(dir: &str) -> usize {
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn the_listener_stays_bounded_and_the_partner_is_served() {
        let p = Pair::tcp_loopback(0);
        let (qa, qb) = p.connect();
        let target = p.b.region(
            4096,
            Access::REMOTE_WRITE | Access::REMOTE_READ | Access::LOCAL_WRITE,
        );
        let t = target.descriptor();
        let src = p.a.region(4096, Access::NONE);
        let back = p.a.region(4096, Access::LOCAL_WRITE);
        let mut round = 0u64;
        let serve = |round: &mut u64| {
            *round += 1;
            let data = pattern(4096, *round as u8);
            src.write(0, &data).unwrap();
            qa.post_send(SendRequest::new(
                1,
                SendOp::Write(t.at(0)),
                src.slice(0, 4096).unwrap(),
            ))
            .unwrap();
            assert_eq!(next(&p.a.cq).status, CompletionStatus::Success);
            qa.post_send(SendRequest::new(
                2,
                SendOp::Read(t.at(0)),
                back.slice(0, 4096).unwrap(),
            ))
            .unwrap();
            assert_eq!(next(&p.a.cq).status, CompletionStatus::Success);
            let mut got = vec![0u8; 4096];
            back.read(0, &mut got).unwrap();
            assert!(got == data, "round {round}: READ differs");
        };
        serve(&mut round);
        // B's listener: its endpoint's GID and port (the soft provider's lid).
        let eb = qb.endpoint().unwrap();
        let addr = SocketAddr::new(eb.gid.to_ip(), eb.lid);
        let base = p.b.dev.soft_inbound().expect("tcp transport");
        let (fds0, threads0, rss0) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
        // 2,000 connects, closed at once.
        for k in 0..2000 {
            drop(TcpStream::connect(addr).expect("connect"));
            if k % 250 == 0 {
                serve(&mut round);
            }
        }
        // 40 connections announcing the largest frame, then a little of it.
        let mut huge = Vec::new();
        for _ in 0..40 {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(&(MAX_FRAME as u32).to_be_bytes()).unwrap();
            s.write_all(&[0u8; 100]).unwrap();
            huge.push(s);
        }
        serve(&mut round);
        // 200 idle holders.
        let holders: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        for _ in 0..20 {
            serve(&mut round);
        }
        // Give the server a moment to take every connection (bounded, on a condition).
        let t0 = Instant::now();
        while p.b.dev.soft_inbound().unwrap().accepted < base.accepted + 2240 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}",
                p.b.dev.soft_inbound()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let during = p.b.dev.soft_inbound().unwrap();
        let (fds1, threads1, rss1) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
        println!(
            "flood: {during:?}; fds {fds0} -> {fds1} (the test's own 240 client sockets included), threads {threads0} -> {threads1}, RSS {rss0} -> {rss1} KiB; {round} WRITE+READ rounds served"
        );
        assert!(during.open <= MAX_INBOUND, "{during:?}");
        assert!(during.evicted > 0, "{during:?}");
        // The test holds 240 client sockets; the server at most MAX_INBOUND.
        assert!(fds1 <= fds0 + 240 + MAX_INBOUND + 8, "fds {fds0} -> {fds1}");
        assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
        assert!(rss1 < rss0 + 128 * 1024, "RSS {rss0} -> {rss1} KiB");
        drop(huge);
        drop(holders);
        let t0 = Instant::now();
        while count("/proc/self/fd") > fds0 + 8 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "fds not released: {}",
                count("/proc/self/fd")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        serve(&mut round);
    }
}
