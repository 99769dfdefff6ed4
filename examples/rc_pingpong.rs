//! `rc_pingpong`: a wire-compatible counterpart of rdma-core's `ibv_rc_pingpong`, written
//! against interlink's safe fabric API.
//!
//! Either side may be the unmodified `ibv_rc_pingpong` (rdma-core v44, package
//! `ibverbs-utils`):
//!
//! ```text
//! server:  rc_pingpong -d rxe_b0 -g 1 -s 4096 -n 1000
//! client:  rc_pingpong -d rxe_a0 -g 1 -s 4096 -n 1000 198.18.0.2
//! ```
//!
//! # Out-of-band exchange (TCP, default port 18515)
//!
//! Each side describes its queue pair in one fixed-size message of 52 bytes: the ASCII text
//! `LLLL:QQQQQQ:PPPPPP:GGGG…G` (`%04x:%06x:%06x:%s` of LID, QPN, PSN and GID, the GID as 32
//! lowercase hex digits of its 16 bytes in network order) followed by a NUL byte.
//!
//! 1. The client connects, sends its message and reads the server's.
//! 2. The client then writes `"done\0"` (5 bytes) and closes; it connects its queue pair.
//! 3. The server reads the client's message, connects its queue pair *before* answering, then
//!    sends its own message and reads the client's `"done\0"`.
//!
//! # Data phase
//!
//! Both sides keep up to `rx_depth` receives of `size` bytes posted. The client sends first;
//! each side sends its next message once both its previous send and a receive have completed
//! (the server starts on its first receive). A run is complete when `iters` sends and `iters`
//! receives have completed on this side. Queue pairs are connected with the same settings as
//! `ibv_rc_pingpong`: ACK timeout 14, retry count 7, RNR retry 7, minimum RNR timer 12, one
//! outstanding RDMA READ, and the path MTU of `-m`. On the soft provider the ACK timeout is 18
//! (about 1 s): its transport runs in user threads, which a busy host can hold off the CPU for
//! longer than the 67 ms of timeout 14, eight times in a row (a loaded CI host failed 1 run in 6
//! that way); nothing interoperates with it but this example.
//!
//! # GID index
//!
//! On RoCE both sides must use `-g`: `ibv_rc_pingpong` only sets up a global route when the
//! peer's GID is non-zero. interlink's verbs device picks its own GID (the RoCEv2 entry for
//! the interface's IPv4 address); when `-g N` is given this program checks that entry `N` of
//! the port's sysfs GID table holds the same GID and refuses to run otherwise.
//!
//! `--fabric soft` runs the same protocol over interlink's userspace provider on loopback
//! (the LID field then carries the provider's TCP port), to exercise the program without
//! RDMA hardware.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use interlink::fabric::{
    Access, Completion, CompletionQueue, ConnectOptions, Device, DeviceConfig, Endpoint, Gid,
    MemoryRegion, Mtu, ProviderChoice, QpCapacity, QueuePair, RecvRequest, SendOp, SendRequest,
};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Work request id of receives (the value `ibv_rc_pingpong` uses).
const RECV_WRID: u64 = 1;
/// Work request id of sends (the value `ibv_rc_pingpong` uses).
const SEND_WRID: u64 = 2;
/// Size of the exchange message: `"0000:000000:000000:" + 32 hex digits + NUL`.
const MSG_LEN: usize = 52;
/// What the client writes after reading the server's message.
const DONE: &[u8; 5] = b"done\0";
/// Give up when no completion arrives for this long (the peer is gone).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Which provider the example runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fabric {
    /// libibverbs (hardware RDMA or Soft-RoCE): interoperates with `ibv_rc_pingpong`.
    Verbs,
    /// interlink's userspace provider on loopback (self-test without RDMA hardware).
    Soft,
}

/// Command line, following `ibv_rc_pingpong`'s options.
#[derive(Debug, Parser)]
#[command(
    name = "rc_pingpong",
    about = "RC SEND/RECV ping-pong, wire-compatible with rdma-core's ibv_rc_pingpong"
)]
struct Args {
    /// Listen on / connect to TCP port PORT for the address exchange.
    #[arg(short = 'p', long = "port", default_value_t = 18515)]
    port: u16,
    /// Use RDMA device DEV (required with the verbs fabric).
    #[arg(short = 'd', long = "ib-dev")]
    ib_dev: Option<String>,
    /// Use port PORT of the device.
    #[arg(short = 'i', long = "ib-port", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..))]
    ib_port: u8,
    /// Size of each message in bytes.
    #[arg(short = 's', long = "size", default_value_t = 4096)]
    size: u32,
    /// Path MTU: 256, 512, 1024, 2048 or 4096.
    #[arg(short = 'm', long = "mtu", default_value_t = 1024, value_parser = parse_mtu_arg)]
    mtu: u32,
    /// Number of receives kept posted.
    #[arg(short = 'r', long = "rx-depth", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    rx_depth: u32,
    /// Number of exchanges.
    #[arg(short = 'n', long = "iters", default_value_t = 1000)]
    iters: u32,
    /// Sleep on completion events instead of busy-polling (yielding the CPU between polls).
    #[arg(short = 'e', long = "events")]
    events: bool,
    /// Local port GID index; must be the entry interlink's device uses (see the module docs).
    #[arg(short = 'g', long = "gid-idx")]
    gid_idx: Option<u32>,
    /// Provider: verbs (default) or soft (userspace, loopback only).
    #[arg(long = "fabric", value_enum, default_value_t = Fabric::Verbs)]
    fabric: Fabric,
    /// Server to connect to; without it, wait for a client.
    server: Option<String>,
}

/// Validates an `-m` value.
fn parse_mtu_arg(s: &str) -> std::result::Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    mtu_from_bytes(v)
        .map(|_| v)
        .ok_or_else(|| format!("{v} is not one of 256, 512, 1024, 2048, 4096"))
}

/// The MTU enumeration for an exact byte count.
fn mtu_from_bytes(bytes: u32) -> Option<Mtu> {
    Some(match bytes {
        256 => Mtu::M256,
        512 => Mtu::M512,
        1024 => Mtu::M1024,
        2048 => Mtu::M2048,
        4096 => Mtu::M4096,
        _ => return None,
    })
}

/// One side's queue pair address as carried by the exchange message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dest {
    /// Local identifier (0 on RoCE).
    lid: u16,
    /// Queue pair number (24 bits).
    qpn: u32,
    /// Initial packet sequence number (24 bits).
    psn: u32,
    /// Global identifier (all zeros when the sender used no GID index).
    gid: Gid,
}

impl Dest {
    /// Formats the 52-byte exchange message (text plus NUL padding).
    fn to_wire(self) -> [u8; MSG_LEN] {
        let text = format!(
            "{:04x}:{:06x}:{:06x}:{}",
            self.lid,
            self.qpn & 0x00ff_ffff,
            self.psn & 0x00ff_ffff,
            gid_to_wire(&self.gid)
        );
        let mut msg = [0u8; MSG_LEN];
        // Always exactly 51 bytes: every field is masked to its printed width.
        let n = text.len().min(MSG_LEN - 1);
        msg[..n].copy_from_slice(&text.as_bytes()[..n]);
        msg
    }

    /// Parses an exchange message (text up to the first NUL).
    fn from_wire(msg: &[u8]) -> Result<Dest> {
        let end = msg.iter().position(|b| *b == 0).unwrap_or(msg.len());
        let text = std::str::from_utf8(&msg[..end])
            .map_err(|_| anyhow!("exchange message is not ASCII: {:02x?}", &msg[..end]))?;
        let fields: Vec<&str> = text.split(':').collect();
        let [lid, qpn, psn, gid] = fields[..] else {
            bail!("malformed exchange message {text:?}: expected LID:QPN:PSN:GID");
        };
        let hex = |name: &str, s: &str, max: u32| -> Result<u32> {
            if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("malformed {name} {s:?} in exchange message {text:?}");
            }
            let v = u32::from_str_radix(s, 16)
                .map_err(|e| anyhow!("malformed {name} {s:?} in exchange message: {e}"))?;
            if v > max {
                bail!(
                    "{name} {v:#x} in exchange message {text:?} is wider than allowed ({max:#x})"
                );
            }
            Ok(v)
        };
        let lid = hex("LID", lid, 0xffff)?;
        Ok(Dest {
            lid: u16::try_from(lid).map_err(|_| anyhow!("LID {lid:#x} too wide"))?,
            qpn: hex("QPN", qpn, 0x00ff_ffff)?,
            psn: hex("PSN", psn, 0x00ff_ffff)?,
            gid: gid_from_wire(gid).with_context(|| format!("in exchange message {text:?}"))?,
        })
    }

    /// The `local address:` / `remote address:` line `ibv_rc_pingpong` prints.
    fn describe(&self) -> String {
        format!(
            "LID 0x{:04x}, QPN 0x{:06x}, PSN 0x{:06x}, GID {}",
            self.lid, self.qpn, self.psn, self.gid
        )
    }
}

/// A GID as 32 hex digits: its 16 bytes in order (network order), which is what
/// `gid_to_wire_gid` produces on any host (four `%08x` words of `htonl` of the raw words).
fn gid_to_wire(gid: &Gid) -> String {
    gid.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the 32-hex-digit wire form of a GID (the inverse of [`gid_to_wire`]).
fn gid_from_wire(s: &str) -> Result<Gid> {
    let b = s.as_bytes();
    if b.len() != 32 || !b.iter().all(u8::is_ascii_hexdigit) {
        bail!("malformed GID {s:?}: expected 32 hex digits");
    }
    let mut raw = [0u8; 16];
    for (i, out) in raw.iter_mut().enumerate() {
        let pair = s
            .get(2 * i..2 * i + 2)
            .ok_or_else(|| anyhow!("malformed GID {s:?}"))?;
        *out = u8::from_str_radix(pair, 16).map_err(|e| anyhow!("malformed GID {s:?}: {e}"))?;
    }
    Ok(Gid(raw))
}

/// Parses a GID as sysfs prints it (`fe80:0000:...`, eight groups of four hex digits).
fn gid_from_sysfs(s: &str) -> Result<Gid> {
    let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
    gid_from_wire(&digits).with_context(|| format!("sysfs GID {:?}", s.trim()))
}

/// Reads `exactly` bytes of the peer's message, with a descriptive error.
fn read_msg(stream: &mut TcpStream, what: &str) -> Result<[u8; MSG_LEN]> {
    let mut msg = [0u8; MSG_LEN];
    stream
        .read_exact(&mut msg)
        .with_context(|| format!("couldn't read {what}"))?;
    Ok(msg)
}

/// Client side of the exchange: send ours, read theirs, say done.
fn client_exchange(host: &str, port: u16, mine: Dest) -> Result<Dest> {
    let mut stream = TcpStream::connect((host, port))
        .with_context(|| format!("couldn't connect to {host}:{port}"))?;
    stream
        .write_all(&mine.to_wire())
        .context("couldn't send local address")?;
    let msg = read_msg(&mut stream, "remote address")?;
    stream
        .write_all(DONE)
        .context("couldn't write \"done\" to the server")?;
    Dest::from_wire(&msg)
}

/// Server side of the exchange: accept, read the client's address, connect (via
/// `connect_qp`), then answer and read the client's `done`.
fn server_exchange(
    port: u16,
    mine: Dest,
    connect_qp: impl FnOnce(&Dest) -> Result<()>,
) -> Result<Dest> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)))
        .with_context(|| format!("couldn't listen to port {port}"))?;
    let (mut stream, _) = listener.accept().context("accept() failed")?;
    drop(listener);
    let msg = read_msg(&mut stream, "remote address")?;
    let remote = Dest::from_wire(&msg)?;
    connect_qp(&remote).context("couldn't connect to remote QP")?;
    stream
        .write_all(&mine.to_wire())
        .context("couldn't send local address")?;
    let mut done = [0u8; DONE.len()];
    stream
        .read_exact(&mut done)
        .context("couldn't read \"done\" from the client")?;
    if &done != DONE {
        bail!("client sent {done:02x?} instead of \"done\"");
    }
    Ok(remote)
}

/// Checks that sysfs GID entry `idx` of the device port is the GID the device uses.
fn check_gid_index(dev: &Device, port: u8, idx: u32) -> Result<()> {
    let path = format!(
        "/sys/class/infiniband/{}/ports/{port}/gids/{idx}",
        dev.name()
    );
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("can't read sgid of index {idx} ({path})"))?;
    let want = gid_from_sysfs(&text)?;
    if want != dev.gid() {
        bail!(
            "GID index {idx} of {} is {want}, but interlink's device uses GID {} \
             (it picks the RoCEv2 entry of its IPv4 address itself); pass that entry's index",
            dev.name(),
            dev.gid()
        );
    }
    Ok(())
}

/// The test's state: counters, posted receives and what the next send waits for.
struct PingPong {
    qp: QueuePair,
    cq: CompletionQueue,
    region: MemoryRegion,
    size: usize,
    rx_depth: u32,
    iters: u32,
    /// Receives currently posted.
    routs: u32,
    /// Sends completed.
    scnt: u32,
    /// Receives completed.
    rcnt: u32,
    /// Completions (RECV_WRID | SEND_WRID bits) the next send waits for.
    pending: u64,
    /// Block on completion events instead of busy-polling.
    events: bool,
}

impl PingPong {
    /// Posts `n` receives of `size` bytes.
    fn post_recvs(&mut self, n: u32) -> Result<()> {
        let mut reqs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            reqs.push(RecvRequest {
                wr_id: RECV_WRID,
                local: self.region.slice(0, self.size)?,
            });
        }
        self.qp
            .post_recv_batch(reqs)
            .with_context(|| format!("couldn't post receive ({})", self.routs))?;
        self.routs += n;
        Ok(())
    }

    /// Posts one signaled SEND of `size` bytes.
    fn post_send(&self) -> Result<()> {
        let local = self.region.slice(0, self.size)?;
        self.qp
            .post_send(SendRequest::new(SEND_WRID, SendOp::Send, local))
            .context("couldn't post send")
    }

    /// Accounts for one completion and sends the next message when it is due.
    fn handle(&mut self, c: &Completion) -> Result<()> {
        if !c.status.is_ok() {
            bail!("failed status {:?} for wr_id {}", c.status, c.wr_id);
        }
        match c.wr_id {
            SEND_WRID => self.scnt += 1,
            RECV_WRID => {
                self.routs = self.routs.saturating_sub(1);
                if self.routs <= 1 {
                    self.post_recvs(self.rx_depth - self.routs)?;
                }
                self.rcnt += 1;
            }
            other => bail!("completion for unknown wr_id {other}"),
        }
        self.pending &= !c.wr_id;
        if self.scnt < self.iters && self.pending == 0 {
            self.post_send()?;
            self.pending = RECV_WRID | SEND_WRID;
        }
        Ok(())
    }

    /// Runs until `iters` sends and receives completed.
    fn run(&mut self) -> Result<()> {
        let mut wcs = Vec::with_capacity(2);
        let mut last = Instant::now();
        while self.rcnt < self.iters || self.scnt < self.iters {
            wcs.clear();
            let n = if self.events {
                self.cq.wait(&mut wcs, 2, Duration::from_millis(500))?
            } else {
                self.cq.poll(&mut wcs, 2)?
            };
            if n == 0 {
                if last.elapsed() > IDLE_LIMIT {
                    bail!(
                        "no completion for {IDLE_LIMIT:?} after {} sends and {} receives",
                        self.scnt,
                        self.rcnt
                    );
                }
                if !self.events {
                    std::thread::yield_now();
                }
                continue;
            }
            last = Instant::now();
            for c in &wcs {
                self.handle(c)?;
            }
        }
        Ok(())
    }
}

/// Opens the device the arguments select.
fn open_device(args: &Args) -> Result<Device> {
    let cfg = match args.fabric {
        Fabric::Verbs => {
            let name = args
                .ib_dev
                .clone()
                .ok_or_else(|| anyhow!("name the RDMA device with -d (e.g. -d rxe0)"))?;
            DeviceConfig {
                provider: ProviderChoice::Verbs,
                name: Some(name),
                port: args.ib_port,
                ..Default::default()
            }
        }
        Fabric::Soft => DeviceConfig {
            provider: ProviderChoice::Soft,
            addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..Default::default()
        },
    };
    let dev = Device::open(&cfg).context("couldn't open the device")?;
    if let (Fabric::Verbs, Some(idx)) = (args.fabric, args.gid_idx) {
        check_gid_index(&dev, args.ib_port, idx)?;
    }
    Ok(dev)
}

/// The whole program; errors are printed by `main`.
fn run(args: &Args) -> Result<()> {
    let mtu = mtu_from_bytes(args.mtu).ok_or_else(|| anyhow!("invalid MTU {}", args.mtu))?;
    let size = args.size as usize;
    let dev = open_device(args)?;
    let pd = dev.alloc_pd().context("couldn't allocate PD")?;
    let region = pd
        .register(size.max(1), Access::LOCAL_WRITE)
        .context("couldn't register MR")?;
    region.write(0, &vec![0x7b; size])?;
    let cq = dev
        .create_cq(args.rx_depth + 1)
        .context("couldn't create CQ")?;
    let qp = pd
        .create_qp(
            &cq,
            &cq,
            QpCapacity {
                max_send_wr: 1,
                max_recv_wr: args.rx_depth,
                max_inline_data: 0,
                flush: false,
            },
        )
        .context("couldn't create QP")?;

    let ep = qp.endpoint()?;
    let mine = Dest {
        lid: ep.lid,
        qpn: ep.qpn,
        psn: ep.psn,
        gid: ep.gid,
    };
    println!("  local address:  {}", mine.describe());

    let mut pp = PingPong {
        qp,
        cq,
        region,
        size,
        rx_depth: args.rx_depth,
        iters: args.iters,
        routs: 0,
        scnt: 0,
        rcnt: 0,
        pending: RECV_WRID,
        events: args.events,
    };
    let opts = ConnectOptions {
        packet_key: None,
        ack_timeout: if dev.provider() == interlink::fabric::ProviderKind::Soft {
            18
        } else {
            14
        },
        retry_count: 7,
        rnr_retry: 7,
        min_rnr_timer: 12,
        max_rd_atomic: 1,
        mtu,
    };
    // `connect` resets the queue pair (discarding posted receives), so receives are posted
    // right after it, before the peer can learn our address and start sending.
    let mut connect = |remote: &Dest| -> Result<()> {
        if remote.gid.is_zero() {
            bail!("the peer sent an all-zero GID: run it with -g <gid index> (RoCE needs a GID)");
        }
        let peer = Endpoint {
            qpn: remote.qpn,
            psn: remote.psn,
            gid: remote.gid,
            lid: remote.lid,
            mtu,
        };
        pp.qp.connect(&peer, &opts)?;
        pp.post_recvs(pp.rx_depth)
    };
    let remote = match &args.server {
        Some(host) => {
            let remote = client_exchange(host, args.port, mine)?;
            connect(&remote)?;
            remote
        }
        None => server_exchange(args.port, mine, &mut connect)?,
    };
    println!("  remote address: {}", remote.describe());

    if args.server.is_some() {
        pp.post_send()?;
        pp.pending |= SEND_WRID;
    }
    let start = Instant::now();
    if args.iters > 0 {
        pp.run()?;
    }
    let usec = start.elapsed().as_secs_f64() * 1e6;
    let bytes = size as u64 * u64::from(args.iters) * 2;
    println!(
        "{bytes} bytes in {:.2} seconds = {:.2} Mbit/sec",
        usec / 1e6,
        bytes as f64 * 8.0 / usec
    );
    println!(
        "{} iters in {:.2} seconds = {:.2} usec/iter",
        args.iters,
        usec / 1e6,
        usec / f64::from(args.iters.max(1))
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rc_pingpong: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dest {
        Dest {
            lid: 0,
            qpn: 0x11,
            psn: 0xabcdef,
            gid: Gid::from_ipv4(Ipv4Addr::new(198, 18, 0, 1)),
        }
    }

    #[test]
    fn wire_format_matches_ibv_rc_pingpong() {
        let msg = sample().to_wire();
        let text = b"0000:000011:abcdef:00000000000000000000ffffc6120001\0";
        assert_eq!(text.len(), MSG_LEN);
        assert_eq!(&msg[..], &text[..]);
        assert_eq!(Dest::from_wire(&msg).unwrap(), sample());
    }

    #[test]
    fn gid_wire_is_bytes_in_order() {
        let gid = Gid([
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55,
        ]);
        let w = gid_to_wire(&gid);
        assert_eq!(w, "fe80000000000000021122fffe334455");
        assert_eq!(gid_from_wire(&w).unwrap(), gid);
        assert_eq!(gid_from_wire(&w.to_uppercase()).unwrap(), gid);
    }

    #[test]
    fn parses_sysfs_gid() {
        let g = gid_from_sysfs("0000:0000:0000:0000:0000:ffff:c612:0001\n").unwrap();
        assert_eq!(g, Gid::from_ipv4(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(gid_from_sysfs("0000:0000").is_err());
    }

    #[test]
    fn rejects_malformed_messages() {
        let bad: [&[u8]; 10] = [
            b"",
            b"\0",
            b"0000:000011:abcdef\0",
            b"0000:000011:abcdef:0000\0",
            b"0000:000011:abcdef:00000000000000000000ffffc612000g\0",
            b"0000:1000000:abcdef:00000000000000000000ffffc6120001\0",
            b"10000:000011:abcdef:00000000000000000000ffffc6120001\0",
            b"0000:000011:abcdef:00000000000000000000ffffc6120001:1\0",
            b"0000:-11:abcdef:00000000000000000000ffffc6120001\0",
            b"\xff\xfe:000011:abcdef:00000000000000000000ffffc6120001\0",
        ];
        for m in bad {
            assert!(Dest::from_wire(m).is_err(), "{m:?} accepted");
        }
    }

    #[test]
    fn accepts_unpadded_fields_and_missing_nul() {
        let d = Dest::from_wire(b"1:11:0:00000000000000000000ffffc6120001").unwrap();
        assert_eq!(d.lid, 1);
        assert_eq!(d.qpn, 0x11);
        assert_eq!(d.psn, 0);
    }

    #[test]
    fn mtu_values() {
        assert_eq!(mtu_from_bytes(1024), Some(Mtu::M1024));
        assert_eq!(mtu_from_bytes(1500), None);
        assert!(parse_mtu_arg("4096").is_ok());
        assert!(parse_mtu_arg("100").is_err());
    }
}
