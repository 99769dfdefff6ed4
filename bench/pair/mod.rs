//! What the pair benchmarks (`bench/manager.rs`, `bench/messaging.rs`) share: where the two
//! nodes run, entering a network namespace, the cluster secret file, logging, and the rule for
//! running the verbs case.
#![allow(dead_code)]

use hdrhistogram::Histogram;
use interlink::fabric::ProviderChoice;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Where the two nodes run.
#[derive(Clone, Copy)]
pub struct Net {
    /// Benchmark group prefix and summary prefix.
    pub label: &'static str,
    pub provider: ProviderChoice,
    /// Namespaces of node A and node B (None: the bench's own).
    pub namespaces: Option<(&'static str, &'static str)>,
    pub a: [u8; 4],
    pub b: [u8; 4],
}

/// The soft provider on loopback (always run).
pub const SOFT_LOOPBACK: Net = Net {
    label: "soft_loopback",
    provider: ProviderChoice::Soft,
    namespaces: None,
    a: [127, 77, 0, 1],
    b: [127, 77, 0, 2],
};

/// The verbs provider on rxe_a0 in ilA / rxe_b0 in ilB (inside `soft-roce/vm`).
pub const VERBS_NETNS: Net = Net {
    label: "verbs_netns",
    provider: ProviderChoice::Verbs,
    namespaces: Some(("ilA", "ilB")),
    a: [198, 18, 0, 1],
    b: [198, 18, 0, 2],
};

impl Net {
    pub fn addr_a(&self) -> IpAddr {
        IpAddr::from(self.a)
    }
    pub fn addr_b(&self) -> IpAddr {
        IpAddr::from(self.b)
    }
    pub fn ns_a(&self) -> Option<&'static str> {
        self.namespaces.map(|n| n.0)
    }
    pub fn ns_b(&self) -> Option<&'static str> {
        self.namespaces.map(|n| n.1)
    }
}

/// Enters network namespace `ns` (root only); threads spawned afterwards (the manager's event
/// loop and I/O threads, the soft provider's) stay there too.
pub fn enter(ns: Option<&str>) {
    if let Some(ns) = ns {
        let target = std::fs::File::open(format!("/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("network namespace {ns} is missing: {e}"));
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("enter network namespace {ns}: {e}"));
    }
}

/// Spawns a thread that first enters network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: Option<&'static str>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter(ns);
            f()
        })
        .expect("spawn bench thread")
}

/// Joins a thread, passing its panic on.
pub fn join<T>(h: JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn secret_dir(bench: &str) -> PathBuf {
    std::env::temp_dir().join(format!("interlink-bench-{bench}-{}", std::process::id()))
}

/// Writes this process's cluster secret file for bench `bench` (mode 0600) and returns it.
pub fn secret_file(bench: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = secret_dir(bench);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let p = dir.join("secret");
    std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
    p
}

/// Removes what [`secret_file`] wrote.
pub fn remove_secret(bench: &str) {
    let _ = std::fs::remove_dir_all(secret_dir(bench));
}

/// `INTERLINK_LOG=info` (an EnvFilter expression) shows the manager's state changes.
pub fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("INTERLINK_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .try_init();
    }
}

/// Whether the verbs case can run: the namespaces exist and libibverbs lists devices.
fn verbs_available() -> Result<(), String> {
    for ns in ["ilA", "ilB"] {
        if !Path::new("/run/netns").join(ns).exists() {
            return Err(format!("no network namespace {ns} (soft-roce/netns-up)"));
        }
    }
    if interlink::fabric::verbs_devices().is_empty() {
        return Err("libibverbs lists no device".into());
    }
    Ok(())
}

/// Runs the verbs case when it can run, unless `INTERLINK_BENCH_VERBS=0`;
/// `INTERLINK_BENCH_VERBS=1` makes its absence an error instead of a skip. `bench` and
/// `script` name the bench and the soft-roce script that runs it in the VM, for the messages.
pub fn run_verbs_case(bench: &str, script: &str, run: impl FnOnce()) {
    let want = std::env::var("INTERLINK_BENCH_VERBS").ok();
    match (want.as_deref(), verbs_available()) {
        (Some("0"), _) => eprintln!("{bench} bench: verbs case skipped (INTERLINK_BENCH_VERBS=0)"),
        (_, Ok(())) => run(),
        (Some("1"), Err(why)) => panic!("INTERLINK_BENCH_VERBS=1 but {why}"),
        (_, Err(why)) => {
            eprintln!("{bench} bench: verbs case skipped: {why} (run it with soft-roce/{script})")
        }
    }
}

/// Whether the command line's benchmark filters (criterion's positional arguments, taken as
/// substrings) select any benchmark of `net`: a net nobody asked for is not set up at all (in
/// the VM, `--bench verbs_netns` must not spend emulated time on the soft provider).
pub fn selected(net: &Net) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let group = format!("{}/", net.label);
    filters.is_empty()
        || filters
            .iter()
            .any(|f| group.contains(f.as_str()) || f.starts_with(&group))
}

/// `INTERLINK_BENCH_SUMMARY_ONLY=1`: criterion's measurements are skipped and only the
/// summary figures recorded (the soft-roce/bench-* scripts run the bench this way once per
/// figure and pair: perftest, then the bench, repeated, so that host load moves both alike).
pub fn summary_only() -> bool {
    std::env::var("INTERLINK_BENCH_SUMMARY_ONLY").is_ok_and(|v| v == "1")
}

/// Whether the summary figure `figure` (`read_64`, `partner_state_read`, ...) is wanted:
/// `INTERLINK_BENCH_FIGURES` lists the wanted ones, comma-separated; unset, all are.
pub fn figure_wanted(figure: &str) -> bool {
    match std::env::var("INTERLINK_BENCH_FIGURES") {
        Ok(list) => list.split(',').any(|f| f.trim() == figure),
        Err(_) => true,
    }
}

/// The figures of a bench's summary, by key (`<net>/<figure>`), printed at the end as
/// `<bench>-bench: key=<key> <fields>` lines (the soft-roce/bench-* scripts parse them).
pub struct Recorder {
    bench: &'static str,
    lines: RefCell<BTreeMap<String, String>>,
}

impl Recorder {
    /// An empty summary for the bench named `bench` (`messaging`, `giveback`, ...).
    pub fn new(bench: &'static str) -> Recorder {
        Recorder {
            bench,
            lines: RefCell::new(BTreeMap::new()),
        }
    }

    /// Sets the fields of one figure.
    pub fn set(&self, net: &Net, figure: &str, fields: String) {
        self.lines
            .borrow_mut()
            .insert(format!("{}/{figure}", net.label), fields);
    }

    /// n, p50, p99, mean, min, max, p25, p75 of a histogram of nanoseconds, in microseconds.
    pub fn latency(&self, net: &Net, figure: &str, h: &Histogram<u64>) {
        self.latency_with(net, figure, h, "");
    }

    /// [`Recorder::latency`] with `extra` fields (` key=value ...`) appended.
    pub fn latency_with(&self, net: &Net, figure: &str, h: &Histogram<u64>, extra: &str) {
        if h.is_empty() {
            return;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        self.set(
            net,
            figure,
            format!(
                "n={} p50_us={:.2} p99_us={:.2} mean_us={:.2} min_us={:.2} max_us={:.2} p25_us={:.2} p75_us={:.2}{extra}",
                h.len(),
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                h.mean() / 1e3,
                us(h.min()),
                us(h.max()),
                us(h.value_at_quantile(0.25)),
                us(h.value_at_quantile(0.75))
            ),
        );
    }

    /// Prints the summary under a one-line description of its units.
    pub fn print_summary(&self, units: &str) {
        let lines = self.lines.borrow();
        if lines.is_empty() {
            return;
        }
        println!();
        println!("{} bench summary: {units}", self.bench);
        for (key, fields) in lines.iter() {
            println!("{}-bench: key={key} {fields}", self.bench);
        }
    }
}
