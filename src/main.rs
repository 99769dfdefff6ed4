//! The `interlink` command-line tool.

mod demo;

use clap::{Parser, Subcommand};
use interlink::fabric::ProviderChoice;
use std::net::{IpAddr, SocketAddr};

#[derive(Parser)]
#[command(
    name = "interlink",
    version,
    about = "RDMA cluster interconnect for an HA storage pair"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the two-node demo: connect, ping-pong, RDMA WRITE and READ, latencies.
    Demo {
        /// Fabric provider: auto, verbs or soft.
        #[arg(long, default_value = "soft")]
        fabric: ProviderChoice,
        /// Iterations of each operation.
        #[arg(long, default_value_t = 1000)]
        iters: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Stay on loopback even when root (no namespaces).
        #[arg(long)]
        loopback: bool,
    },
    /// One node of the demo (started by `demo`).
    Node {
        /// server or client.
        #[arg(long)]
        role: String,
        /// Fabric provider.
        #[arg(long, default_value = "soft")]
        fabric: ProviderChoice,
        /// Verbs device name (default: found by --addr).
        #[arg(long)]
        device: Option<String>,
        /// Local address the device serves.
        #[arg(long)]
        addr: IpAddr,
        /// Address of the out-of-band exchange (the server listens there).
        #[arg(long)]
        exchange: SocketAddr,
        /// Iterations.
        #[arg(long, default_value_t = 1000)]
        iters: usize,
        /// Message size.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// List RDMA devices seen by libibverbs.
    Devices,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INTERLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo {
            fabric,
            iters,
            size,
            loopback,
        } => demo::run_demo(&demo::DemoOpts {
            fabric,
            iters,
            size,
            loopback,
        }),
        Cmd::Node {
            role,
            fabric,
            device,
            addr,
            exchange,
            iters,
            size,
        } => demo::run_node(&demo::NodeOpts {
            fabric,
            device,
            addr,
            exchange,
            server: role == "server",
            iters,
            size,
        }),
        Cmd::Devices => {
            for d in interlink::fabric::verbs_devices() {
                println!("{d}");
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("interlink: {e:#}");
        std::process::exit(1);
    }
}
