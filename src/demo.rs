//! `interlink demo`: two nodes (two processes; in network namespaces ilA/ilB when root) connect
//! over the fabric, ping-pong with SEND/RECV, RDMA WRITE and READ, and report latencies.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use interlink::fabric::*;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What each node tells the other out of band before connecting.
#[derive(Serialize, Deserialize, Debug)]
struct Hello {
    endpoint: Endpoint,
    region: RegionDescriptor,
}

/// Options of one demo node.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub fabric: ProviderChoice,
    pub device: Option<String>,
    pub addr: IpAddr,
    /// Server: where to listen for the exchange; client: the server's address.
    pub exchange: SocketAddr,
    pub server: bool,
    pub iters: usize,
    pub size: usize,
}

const REGION: usize = 1 << 20;
const DONE: u32 = 0xffff_ffff;

fn exchange(opts: &NodeOpts, mine: &Hello) -> Result<Hello> {
    let stream = if opts.server {
        let l = TcpListener::bind(opts.exchange)
            .with_context(|| format!("listen for the peer on {}", opts.exchange))?;
        l.accept().context("accept the peer")?.0
    } else {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect_timeout(&opts.exchange, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "server not up yet");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("connect to {}", opts.exchange)),
            }
        }
    };
    let mut w = stream.try_clone()?;
    writeln!(w, "{}", serde_json::to_string(mine)?)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(line.trim()).context("peer's hello is malformed")
}

struct Node {
    qp: QueuePair,
    cq: CompletionQueue,
    rcq: CompletionQueue,
    buf: MemoryRegion,
    peer: RegionDescriptor,
}

impl Node {
    fn wait(&self, cq: &CompletionQueue, what: &str) -> Result<Completion> {
        let c = cq
            .next(Duration::from_secs(30))?
            .with_context(|| format!("no completion for {what} within 30 s"))?;
        if !c.status.is_ok() {
            bail!("{what} failed: {:?}", c.status);
        }
        Ok(c)
    }
    fn post_recv(&self) -> Result<()> {
        self.qp.post_recv(RecvRequest {
            wr_id: 0,
            local: self.buf.slice(REGION / 2, REGION / 2)?,
        })?;
        Ok(())
    }
    fn send(&self, len: usize, imm: u32) -> Result<()> {
        self.qp.post_send(SendRequest::new(
            1,
            SendOp::SendImm(imm),
            self.buf.slice(0, len)?,
        ))?;
        self.wait(&self.cq, "send")?;
        Ok(())
    }
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "  {name:<22} n={:<6} min={:>8.1} µs  p50={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs",
        h.len(),
        h.min() as f64 / 1000.0,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// Runs one node of the demo.
pub fn run_node(opts: &NodeOpts) -> Result<()> {
    let dev = Device::open(&DeviceConfig {
        provider: opts.fabric,
        name: opts.device.clone(),
        addr: Some(opts.addr),
        ..Default::default()
    })
    .context("open device")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dev.port_active()? {
        if Instant::now() > deadline {
            bail!("port of {} is down", dev.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pd = dev.alloc_pd()?;
    let cq = dev.create_cq(256)?;
    let rcq = dev.create_cq(256)?;
    let qp = pd.create_qp(&cq, &rcq, QpCapacity::default())?;
    let buf = pd.register(
        REGION,
        Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
    )?;
    let hello = Hello {
        endpoint: qp.endpoint()?,
        region: buf.descriptor(),
    };
    let peer = exchange(opts, &hello)?;
    qp.connect(&peer.endpoint, &ConnectOptions::default())?;
    let node = Node {
        qp,
        cq,
        rcq,
        buf,
        peer: peer.region,
    };
    node.post_recv()?;
    // Both sides are connected once each has received the other's first message.
    if opts.server {
        node.wait(&node.rcq, "client hello")?;
        node.post_recv()?;
        node.send(8, 0)?;
        loop {
            let c = node.wait(&node.rcq, "ping")?;
            node.post_recv()?;
            if c.imm == Some(DONE) {
                break;
            }
            node.send(c.byte_len as usize, 1)?;
        }
        println!("server on {} ({}): done", dev.name(), dev.provider());
        return Ok(());
    }
    node.send(8, 0)?;
    node.wait(&node.rcq, "server hello")?;
    node.post_recv()?;
    let size = opts.size.clamp(1, REGION / 2);
    let mut pp = Histogram::<u64>::new(3)?;
    let mut wr = Histogram::<u64>::new(3)?;
    let mut rd = Histogram::<u64>::new(3)?;
    let pattern: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    for i in 0..opts.iters {
        let t = Instant::now();
        node.send(size, 1)?;
        node.wait(&node.rcq, "pong")?;
        node.post_recv()?;
        pp.record((t.elapsed().as_nanos() / 2) as u64)?;

        node.buf.write(0, &pattern)?;
        node.buf.write_u64(0, i as u64)?;
        let t = Instant::now();
        node.qp.post_send(SendRequest::new(
            2,
            SendOp::Write(node.peer.at(0)),
            node.buf.slice(0, size)?,
        ))?;
        node.wait(&node.cq, "write")?;
        wr.record(t.elapsed().as_nanos() as u64)?;

        let t = Instant::now();
        node.qp.post_send(SendRequest::new(
            3,
            SendOp::Read(node.peer.at(0)),
            node.buf.slice(REGION / 4, size)?,
        ))?;
        node.wait(&node.cq, "read")?;
        rd.record(t.elapsed().as_nanos() as u64)?;
        // What we read back is what we wrote.
        let mut back = vec![0u8; size];
        node.buf.read(REGION / 4, &mut back)?;
        let mut expect = pattern.clone();
        let n = expect.len().min(8);
        expect[..n].copy_from_slice(&(i as u64).to_ne_bytes()[..n]);
        if back != expect {
            bail!("RDMA READ returned different bytes than the RDMA WRITE stored (iteration {i})");
        }
    }
    node.send(0, DONE)?;
    println!(
        "interlink demo: {} provider, device {} ({}), {} iterations of {} bytes",
        dev.provider(),
        dev.name(),
        dev.gid(),
        opts.iters,
        size
    );
    report("send/recv (half RTT)", &pp);
    report("rdma write", &wr);
    report("rdma read", &rd);
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip").args(args).status().context("run ip")?;
    if !st.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

/// Creates ilA/ilB joined by veth il0a/il0b with 198.18.0.1/24 and .2/24 unless present;
/// returns whether it created them.
fn ensure_namespaces() -> Result<bool> {
    if std::path::Path::new("/run/netns/ilA").exists()
        && std::path::Path::new("/run/netns/ilB").exists()
    {
        return Ok(false);
    }
    ip(&["netns", "add", "ilA"])?;
    ip(&["netns", "add", "ilB"])?;
    ip(&[
        "link", "add", "il0a", "netns", "ilA", "type", "veth", "peer", "name", "il0b", "netns",
        "ilB",
    ])?;
    ip(&["-n", "ilA", "addr", "add", "198.18.0.1/24", "dev", "il0a"])?;
    ip(&["-n", "ilB", "addr", "add", "198.18.0.2/24", "dev", "il0b"])?;
    for (ns, dev) in [("ilA", "il0a"), ("ilB", "il0b")] {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    Ok(true)
}

/// Options of the whole demo.
#[derive(Debug, Clone)]
pub struct DemoOpts {
    pub fabric: ProviderChoice,
    pub iters: usize,
    pub size: usize,
    pub loopback: bool,
}

/// Runs the two-node demo: spawns this binary twice as `interlink demo-node`.
pub fn run_demo(opts: &DemoOpts) -> Result<()> {
    let exe = std::env::current_exe().context("find own executable")?;
    let use_ns = is_root() && !opts.loopback && Command::new("ip").arg("-V").output().is_ok();
    let created = if use_ns { ensure_namespaces()? } else { false };
    let (a, b) = if use_ns {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
    };
    let port = 18515 + (std::process::id() % 1000) as u16;
    let fabric = match opts.fabric {
        ProviderChoice::Auto => "auto",
        ProviderChoice::Verbs => "verbs",
        ProviderChoice::Soft => "soft",
    };
    let node = |ns: &str, role: &str, addr: IpAddr| {
        let mut cmd = if use_ns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args([
            "demo-node",
            "--role",
            role,
            "--fabric",
            fabric,
            "--addr",
            &addr.to_string(),
            "--exchange",
            &SocketAddr::new(b, port).to_string(),
            "--iters",
            &opts.iters.to_string(),
            "--size",
            &opts.size.to_string(),
        ]);
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        cmd
    };
    println!(
        "interlink demo: two nodes {} ({} <-> {})",
        if use_ns {
            "in namespaces ilA/ilB"
        } else {
            "on loopback"
        },
        a,
        b
    );
    let mut server = node("ilB", "server", b)
        .spawn()
        .context("start server node")?;
    let client = node("ilA", "client", a)
        .status()
        .context("run client node")?;
    let server_status = if client.success() {
        server.wait()?
    } else {
        let _ = server.kill();
        server.wait()?
    };
    if created {
        let _ = ip(&["netns", "del", "ilA"]);
        let _ = ip(&["netns", "del", "ilB"]);
    }
    if !client.success() || !server_status.success() {
        bail!("demo failed: client {client}, server {server_status}");
    }
    println!("interlink demo: ok");
    Ok(())
}
