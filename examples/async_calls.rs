//! `async_calls`: the clients' futures on tokio. Two managers run in this process on the
//! soft provider over loopback; node A makes concurrent calls to an echo function and to a
//! function whose handler fails, then appends to its mirrored shadow log, all as futures on
//! a single-threaded tokio runtime (no thread per call or append: the clients' drivers wake
//! the tasks).
//!
//! ```text
//! cargo run --example async_calls
//! ```
//!
//! Deadlines are the executor's: each future is wrapped in `tokio::time::timeout`, which
//! drops it (cancelling the wait) when the time is up.

use interlink::clients::mirror::shadow::CursorStore;
use interlink::clients::mirror::{MemoryNvram, ShadowConfig, ShadowMirror};
use interlink::fabric::ProviderChoice;
use interlink::manager::{BandwidthClass, LinkConfig, Manager, NodeConfig};
use interlink::messaging::{Head, Messenger, MessengerConfig};
use std::sync::Arc;
use std::time::Duration;

const ECHO: u8 = 1;
const FAIL: u8 = 2;
const DEADLINE: Duration = Duration::from_secs(10);

/// Configurations of nodes 1 and 2 of cluster 7: one link on loopback addresses, the soft
/// provider, a shared secret in `dir`.
fn configs(dir: &std::path::Path) -> std::io::Result<(NodeConfig, NodeConfig)> {
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (a_ip, b_ip) = ("127.77.9.1".parse().unwrap(), "127.77.9.2".parse().unwrap());
    let port = 21000 + (std::process::id() % 1000) as u16 * 10;
    let a = NodeConfig::new(7, 1, 2, &secret)
        .with_fabric(ProviderChoice::Soft)
        .with_link(LinkConfig::new(0, a_ip, b_ip).with_bootstrap_port(port));
    let b = NodeConfig::new(7, 2, 1, &secret)
        .with_fabric(ProviderChoice::Soft)
        .with_link(LinkConfig::new(0, b_ip, a_ip).with_bootstrap_port(port));
    Ok((a, b))
}

fn shadow(m: &Arc<Manager>) -> anyhow::Result<ShadowMirror> {
    let len = 256 * 1024;
    let s = ShadowMirror::start(
        m,
        ShadowConfig::new(),
        Box::new(MemoryNvram::new(len)),
        Box::new(MemoryNvram::new(CursorStore::LEN)),
    )?;
    s.recover(None, |_| Ok(()))?;
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("interlink-async-calls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (a, b) = configs(&dir)?;
    let (a, b) = (Arc::new(Manager::start(a)?), Arc::new(Manager::start(b)?));

    let ma = Messenger::start(&a, MessengerConfig::new("msg", BandwidthClass::Low))?;
    let mb = Messenger::start(&b, MessengerConfig::new("msg", BandwidthClass::Low))?;
    mb.on(ECHO, |msg, out| {
        if let Some(call) = msg.call {
            let _ = out.respond(call, msg.payload);
        }
    })?;
    mb.on(FAIL, |msg, out| {
        if let Some(call) = msg.call {
            let _ = out.fail(call, 404, "no such volume");
        }
    })?;
    // Setting up is synchronous (a blocking wait with the configured deadline).
    ma.wait_connected()?;

    // Concurrent calls: all in flight at once, as tasks of one thread.
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let call = ma.call_future(Head::control(ECHO), format!("hello {i}").as_bytes());
        tasks.push(tokio::spawn(tokio::time::timeout(DEADLINE, call)));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await);
    }
    for r in replies {
        let reply = r??.map_err(anyhow::Error::from)?;
        println!("call -> {:?}", String::from_utf8_lossy(&reply));
    }
    match tokio::time::timeout(DEADLINE, ma.call_future(Head::control(FAIL), b"vol9")).await? {
        Ok(_) => println!("failing call -> unexpected response"),
        Err(e) => println!("failing call -> {e}"),
    }

    // Async appends: acknowledged once durable locally and complete in the partner's copy.
    let (sa, sb) = (shadow(&a)?, shadow(&b)?);
    sa.wait_connected()?;
    let appends: Vec<_> = (0..4u32)
        .map(|i| sa.append_future(format!("record {i}").as_bytes()))
        .collect();
    for f in appends {
        let r = tokio::time::timeout(DEADLINE, f).await??;
        println!(
            "append -> record {} of generation {}, mirrored: {}",
            r.position.seq, r.position.generation, r.mirrored
        );
    }
    println!(
        "the partner's copy holds {} records",
        sb.read_partner()?.records.len()
    );
    drop((sa, sb, ma, mb));
    a.shutdown();
    b.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
