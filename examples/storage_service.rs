//! A small replicated key-value store on interlink: the storage service of one controller of
//! an HA pair, built on the public library API only. Run one process per node:
//!
//! ```sh
//! mkdir -p /tmp/kv
//! cargo run --example storage_service -- --node a --dir /tmp/kv --port 18600   # terminal 1
//! cargo run --example storage_service -- --node b --dir /tmp/kv --port 18600   # terminal 2
//! ```
//!
//! Both nodes run on the soft provider over loopback (`--local IP --peer IP` for other
//! addresses, `--config FILE` for a node file instead); `--dir` stands for the storage both
//! controllers see: the mailbox and reservations of the giveback client, each node's
//! "disks" (`disk-<set>.json`, one key set per node) and its "NVRAM" (`nvram-<node>/`: the
//! shadow log). Type commands on standard input, one per line:
//!
//! - `put KEY VALUE`: appended to this node's shadow log, which returns once the record is
//!   durable here AND in the partner's memory, then applied; only then `ok KEY mirrored`.
//! - `get KEY`: from a key set this node serves, else asked of the partner by a message
//!   call: `value KEY VALUE set=S applications=N via=local|partner` or `missing KEY ...`.
//! - `status`: what this node serves and whether its shadow log is connected.
//!
//! Kill a node (`kill -9`): the survivor takes its key set over, replaying the records of
//! its shadow log that the disk does not hold yet, and serves them. Restart it: the
//! survivor writes the set back to disk and gives it back; the node recovers its own log
//! (the partner replayed it: nothing to apply) and serves again. `tests/host/example_service.rs`
//! runs exactly that. Giveback events are printed as `event ...` lines.

use interlink::clients::giveback::service::ReplayHook;
use interlink::clients::giveback::{
    DiskSet, FileMailbox, FileReservations, GivebackNode, GivebackOptions, OwnLogContext,
    PartnerLogContext, ReplayedMark, ServiceHooks,
};
use interlink::clients::mirror::shadow::{file_backings, ShadowConfig, ShadowMirror};
use interlink::clients::mirror::LogPosition;
use interlink::fabric::ProviderChoice;
use interlink::manager::{BandwidthClass, LinkConfig, Manager, NodeConfig};
use interlink::messaging::{Head, Messenger, MessengerConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Message function code of a GET asked of the partner.
const GET: u8 = 1;
/// The own key set is written to disk (and the log checkpointed) every this many PUTs.
const FLUSH_EVERY: u64 = 16;
/// Bytes of each node's shadow log (both nodes must use the same size).
const LOG_LEN: usize = 4 << 20;

/// One key's value, and how many times a log record was applied to it (each key written
/// once must say 1: a record applied twice would say 2).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Entry {
    value: String,
    applications: u32,
}

/// A node's key set: what its "disks" hold. `applied` is the position in the owner's shadow
/// log through which records are applied: a replay skips records at or before it, so a
/// record never lands twice even when the disk was written after the last checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KeySet {
    applied: Option<(u64, u64)>,
    keys: BTreeMap<String, Entry>,
}

impl KeySet {
    /// Applies the record at `at` (`key\nvalue`) unless the set holds it already.
    fn apply(&mut self, at: LogPosition, payload: &[u8]) -> Result<(), String> {
        let at = (at.generation, at.seq);
        if self.applied.is_some_and(|done| at <= done) {
            return Ok(()); // on disk already (written after the record, before a checkpoint)
        }
        let text = std::str::from_utf8(payload).map_err(|e| format!("record {at:?}: {e}"))?;
        let (key, value) = text
            .split_once('\n')
            .ok_or_else(|| format!("record {at:?}: no key"))?;
        let entry = self.keys.entry(key.to_string()).or_default();
        entry.value = value.to_string();
        entry.applications += 1;
        self.applied = Some(at);
        Ok(())
    }
}

/// The service's state: the key sets loaded in memory, and which of them it serves.
struct Store {
    me: DiskSet,
    dir: PathBuf,
    sets: Mutex<BTreeMap<DiskSet, KeySet>>,
    serving: Mutex<BTreeSet<DiskSet>>,
}

impl Store {
    fn disk(&self, set: DiskSet) -> PathBuf {
        self.dir.join(format!("disk-{set}.json"))
    }

    /// Loads `set` from its disk unless it is in memory already.
    fn load(&self, set: DiskSet) -> Result<(), String> {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.sets.lock().entry(set) {
            let loaded = match std::fs::read(self.disk(set)) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeySet::default(),
                Err(e) => return Err(format!("read disk of set {set}: {e}")),
            };
            slot.insert(loaded);
        }
        Ok(())
    }

    /// Writes `set` to its disk: a new file, synced, renamed over the old one.
    fn flush(&self, set: DiskSet) -> Result<(), String> {
        let bytes = match self.sets.lock().get(&set) {
            Some(s) => serde_json::to_vec(s).map_err(|e| e.to_string())?,
            None => return Ok(()),
        };
        let tmp = self.disk(set).with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.disk(set))
        };
        write().map_err(|e| format!("write disk of set {set}: {e}"))
    }

    fn apply(&self, set: DiskSet, at: LogPosition, payload: &[u8]) -> Result<(), String> {
        self.load(set)?;
        let mut sets = self.sets.lock();
        sets.get_mut(&set).expect("loaded").apply(at, payload)
    }

    /// `value ...` or `missing ...` from the sets served here, None if the key is in none.
    fn get(&self, key: &str) -> Option<String> {
        let serving = self.serving.lock();
        let sets = self.sets.lock();
        serving.iter().find_map(|set| {
            let e = sets.get(set)?.keys.get(key)?;
            Some(format!(
                "value {key} {} set={set} applications={}",
                e.value, e.applications
            ))
        })
    }
}

/// What the giveback client calls at each step of takeover, giveback and bring-up.
struct Hooks {
    store: Arc<Store>,
    shadow: Arc<ShadowMirror>,
    /// The shadow log's replay of the partner's log; `replaying` is its generation.
    replay: ReplayHook,
    replaying: Arc<AtomicU64>,
}

impl ServiceHooks for Hooks {
    fn start_serving(&mut self, set: DiskSet) -> Result<(), String> {
        self.store.load(set)?;
        self.store.serving.lock().insert(set);
        Ok(())
    }

    fn stop_serving(&mut self, set: DiskSet) -> Result<(), String> {
        self.store.serving.lock().remove(&set);
        // Giving the partner's set back: write it to its disk for the partner to load. Our
        // own set is never written here (we may be fenced: the survivor owns those disks
        // now); its records are in our log, which the survivor replays.
        if set != self.store.me {
            self.store.flush(set)?;
        }
        self.store.sets.lock().remove(&set);
        Ok(())
    }

    fn assume_identity(&mut self, partner: u32) -> Result<(), String> {
        println!("identity of node {partner} assumed"); // an IP address would move here
        Ok(())
    }

    fn release_identity(&mut self, partner: u32) -> Result<(), String> {
        println!("identity of node {partner} released");
        Ok(())
    }

    /// Takeover: the partner's records after its last checkpoint, applied to its key set
    /// loaded from its disk. The shadow log stores a replay cursor, so a second takeover
    /// replays nothing twice.
    fn replay_partner_log(&mut self, context: &PartnerLogContext) -> Result<(), String> {
        self.store.load(context.partner)?;
        let copy = self.shadow.read_partner().map_err(|e| e.to_string())?;
        self.replaying.store(copy.generation, Ordering::SeqCst);
        (self.replay)(context)
    }

    /// Bring-up, right before this node serves its own set: the documented recovery
    /// (`ShadowMirror::recover_from_mailbox`). If the partner replayed our log at a takeover,
    /// nothing is applied here (its writes are on our disk since the giveback); otherwise
    /// the records nobody applied are applied now, exactly once. Then appends are allowed.
    fn recover_own_log(&mut self, context: &OwnLogContext) -> Result<(), String> {
        let recovered = self.shadow.recovered().is_some();
        if recovered && self.shadow.recovered_for() == Some(context.incarnation) {
            return Ok(()); // already recovered in this run of the giveback protocol
        }
        let me = self.store.me;
        self.store.sets.lock().remove(&me); // start from the disk, not from memory
        self.store.load(me)?;
        let (store, shadow) = (self.store.clone(), self.shadow.clone());
        let r = self
            .shadow
            .recover_from_mailbox(context, |rec| {
                // The log being applied is the one the recovery installed.
                let at = LogPosition {
                    generation: shadow.generation(),
                    seq: rec.seq,
                };
                store.apply(me, at, &rec.payload)
            })
            .map_err(|e| e.to_string())?;
        println!(
            "own log recovered: {:?}, {} records applied here",
            r.outcome, r.replayed
        );
        Ok(())
    }

    /// What we replayed of the partner's log, published in our mailbox record: a restarted
    /// partner learns from it that it must not apply those records again.
    fn replayed_partner_log(&mut self) -> Option<ReplayedMark> {
        self.shadow.partner_replayed().map(Into::into)
    }
}

/// The command line: `--node a|b --dir DIR [--port P] [--local IP --peer IP] [--config F]`.
struct Args {
    node: u32,
    dir: PathBuf,
    port: u16,
    local: Option<IpAddr>,
    peer: Option<IpAddr>,
    config: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        node: 0,
        dir: PathBuf::from("/tmp/interlink-kv"),
        port: 18600,
        local: None,
        peer: None,
        config: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--node" if value == "a" => a.node = 1,
            "--node" if value == "b" => a.node = 2,
            "--dir" => a.dir = value.into(),
            "--port" => a.port = value.parse()?,
            "--local" => a.local = Some(value.parse()?),
            "--peer" => a.peer = Some(value.parse()?),
            "--config" => a.config = Some(value.into()),
            _ => return Err(format!("unknown argument {flag} {value}").into()),
        }
    }
    if a.node == 0 {
        return Err("--node a|b is required".into());
    }
    Ok(a)
}

/// The node file, or a one-link pair on the soft provider (node A 127.0.0.1, B 127.0.0.2),
/// sharing the secret `DIR/secret`.
fn node_config(args: &Args) -> Result<NodeConfig, Box<dyn Error>> {
    if let Some(path) = &args.config {
        return Ok(NodeConfig::load(path)?);
    }
    // A fixed demo secret, written whole (a new file renamed into place) so the node starting
    // second never reads half of it. A real pair: random bytes, copied to both nodes.
    let secret = args.dir.join("secret");
    if !secret.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = args.dir.join(format!("secret.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(b"interlink storage service demo secret")?;
        std::fs::rename(&tmp, &secret)?;
    }
    let ip = |h: u8| IpAddr::from([127, 0, 0, h]);
    let (me, partner) = (args.node, 3 - args.node);
    let local = args.local.unwrap_or(ip(me as u8));
    let peer = args.peer.unwrap_or(ip(partner as u8));
    let link = LinkConfig::new(0, local, peer).with_bootstrap_port(args.port);
    Ok(NodeConfig::new(7, me, partner, secret)
        .with_fabric(ProviderChoice::Soft)
        .with_link(link))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    let cfg = node_config(&args)?;
    let (me, partner) = (cfg.node_id, cfg.partner_id);

    // 1. The manager: links to the partner, placement of the clients below on them.
    let manager = Arc::new(Manager::start(cfg)?);
    let store = Arc::new(Store {
        me,
        dir: args.dir.clone(),
        sets: Mutex::new(BTreeMap::new()),
        serving: Mutex::new(BTreeSet::new()),
    });

    // 2. The shadow log: this node's log in its NVRAM (a file here), mirrored into the
    //    partner's memory; the partner's log mirrored into ours. Opened, not formatted:
    //    appends wait for the recovery, which the giveback client runs before we serve.
    let nvram = args.dir.join(format!("nvram-{me}"));
    std::fs::create_dir_all(&nvram)?;
    let (log, cursor) = file_backings(&nvram, me, LOG_LEN)?;
    let shadow = Arc::new(ShadowMirror::start(
        &manager,
        ShadowConfig::new(),
        log,
        cursor,
    )?);

    // 3. Messaging: the partner asks us for keys we serve.
    let messenger = Messenger::start(&manager, MessengerConfig::new("kv", BandwidthClass::Low))?;
    let answers = store.clone();
    messenger.on(GET, move |m, out| {
        let Some(call) = m.call else { return };
        let key = String::from_utf8_lossy(m.payload);
        let answer = answers
            .get(&key)
            .unwrap_or_else(|| format!("missing {key}"));
        let _ = out.respond(call, answer.as_bytes());
    })?;

    // 4. The giveback client: partner state, takeover, giveback, and our hooks.
    let replaying = Arc::new(AtomicU64::new(0));
    let (into, generation) = (store.clone(), replaying.clone());
    let replay = shadow.replay_hook(move |rec| {
        let at = LogPosition {
            generation: generation.load(Ordering::SeqCst),
            seq: rec.seq,
        };
        into.apply(partner, at, &rec.payload)
    });
    let hooks = Hooks {
        store: store.clone(),
        shadow: shadow.clone(),
        replay,
        replaying,
    };
    let giveback = GivebackNode::start(
        &manager,
        GivebackOptions::default(),
        Box::new(FileMailbox::open(&args.dir, me, partner)?),
        Box::new(FileReservations::open(&args.dir, me)?),
        Box::new(hooks),
    )?;
    // Bind the shadow log to it: our mailbox record carries whether the partner's copy of our
    // log is outdated, acknowledgements stop when our serving lease runs out, and appends
    // stop waiting for a partner the giveback client declared failed.
    shadow.set_partner_copy_mark(giveback.partner_copy_mark());
    shadow.set_serving_lease(giveback.serving_lease());
    let follower = Arc::downgrade(&shadow);
    giveback.on_partner_failed(move |why| {
        follower
            .upgrade()
            .map(|s| s.declare_partner_failed(why))
            .is_some()
    })?;
    let events = giveback.subscribe();
    std::thread::spawn(move || events.iter().for_each(|ev| println!("event {ev:?}")));

    // 5. The driver loop: commands on standard input until it closes.
    let mut puts = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("put"), Some(key), Some(value)) => {
                println!("{}", put(&store, &shadow, &mut puts, key, value));
            }
            (Some("get"), Some(key), None) => match store.get(key) {
                Some(found) => println!("{found} via=local"),
                // Serving both sets (the partner is down): nobody else to ask.
                None if store.serving.lock().len() == 2 => println!("missing {key} via=local"),
                None => match messenger.call_timeout(Head::control(GET), key.as_bytes(), TIMEOUT) {
                    Ok(answer) => println!("{} via=partner", String::from_utf8_lossy(&answer)),
                    Err(e) => println!("error {key} {e}"),
                },
            },
            (Some("status"), None, None) => println!(
                "status serving={:?} shadow_connected={} state={:?}",
                store.serving.lock(),
                shadow.stats().connected,
                giveback.status().state,
            ),
            _ => println!("error unknown command {line:?}"),
        }
    }
    giveback.stop();
    manager.shutdown();
    Ok(())
}

/// Longest a GET waits for the partner's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A PUT: logged (durable here and in the partner's memory), applied, acknowledged.
fn put(store: &Store, shadow: &ShadowMirror, puts: &mut u64, key: &str, value: &str) -> String {
    if !store.serving.lock().contains(&store.me) {
        return format!("error {key} not serving (own set not recovered yet, or taken over)");
    }
    if key.contains('\n') {
        return format!("error {key} bad key");
    }
    let appended = match shadow.append(format!("{key}\n{value}").as_bytes()) {
        Ok(a) => a,
        Err(e) => return format!("error {key} {e}"),
    };
    if let Err(e) = store.apply(
        store.me,
        appended.position,
        format!("{key}\n{value}").as_bytes(),
    ) {
        return format!("error {key} {e}");
    }
    // Every FLUSH_EVERY PUTs the set goes to disk, and only then the log is checkpointed:
    // a survivor replays the records after the checkpoint onto the disk it finds.
    *puts += 1;
    if *puts % FLUSH_EVERY == 0 {
        let flushed = store.flush(store.me);
        if let Err(e) = flushed.map_err(|e| e.to_string()).and_then(|()| {
            shadow
                .checkpoint(appended.position)
                .map_err(|e| e.to_string())
        }) {
            eprintln!("flush: {e}"); // the records stay in the log: nothing is lost
        }
    }
    // Acknowledged: durable in our NVRAM and (mirrored) in the partner's memory.
    let mirrored = if appended.mirrored {
        "mirrored"
    } else {
        "unmirrored"
    };
    format!("ok {key} {mirrored}")
}
