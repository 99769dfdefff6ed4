//! `interlink node --metrics ADDR`: the Prometheus recorder and its HTTP endpoint.
//!
//! The recorder (`metrics-exporter-prometheus`, without its HTTP server and async runtime)
//! is installed before the manager starts, so every handle the library registers reaches
//! it. A small thread serves its text on `GET /metrics` (anything else: 404), one
//! connection at a time, each bounded in size and time: it is an operator port, and no
//! input makes it panic. The same thread runs the recorder's upkeep every few seconds, so
//! histogram samples do not pile up when nobody scrapes. The control socket answers `{"client": "metrics"}` with the same
//! text, which `interlink status` shows (see [`samples`]).

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request read (request line and headers).
const MAX_REQUEST: usize = 8192;
/// How long a connection may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the recorder's histograms are drained into their summaries when nobody scrapes
/// (samples pile up in memory until then).
const UPKEEP: Duration = Duration::from_secs(5);
/// How often the accept loop looks at its stop flag, milliseconds.
const STOP_POLL_MS: u16 = 50;
/// The same as a duration (the pause after a failed poll or accept).
const STOP_POLL: Duration = Duration::from_millis(STOP_POLL_MS as u64);

/// Installs the Prometheus recorder as the process's global recorder and describes the
/// library's metrics to it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("install the Prometheus metrics recorder")?;
    interlink::recorded_metrics::describe();
    Ok(handle)
}

/// The HTTP endpoint; dropping it stops its thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `handle`'s text on `/metrics`.
    pub fn start(addr: SocketAddr, handle: PrometheusHandle) -> anyhow::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("bind the metrics endpoint on {addr}"))?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("metrics endpoint on {addr}"))?;
        let addr = listener.local_addr().context("metrics endpoint address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("il-metrics".into())
            .spawn(move || {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                use std::os::fd::AsFd;
                let mut last_upkeep = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    if last_upkeep.elapsed() >= UPKEEP {
                        handle.run_upkeep();
                        last_upkeep = Instant::now();
                    }
                    // Wait for a connection (at once) or STOP_POLL, to notice `stop`.
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::from(STOP_POLL_MS)).is_err() {
                        std::thread::sleep(STOP_POLL);
                        continue;
                    }
                    match listener.accept() {
                        Ok((stream, from)) => {
                            if let Err(e) = serve(stream, &handle) {
                                tracing::debug!(%from, error = %e, "metrics request");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "accept on the metrics endpoint");
                            std::thread::sleep(STOP_POLL);
                        }
                    }
                }
            })
            .context("start the metrics endpoint thread")?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the port chosen when ADDR gave port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one connection: reads its request head (bounded), answers 200 with the
/// exposition for `GET /metrics`, 404 otherwise (400 for a head too large or unreadable).
fn serve(mut stream: TcpStream, handle: &PrometheusHandle) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let complete = loop {
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if len == buf.len() {
            break false;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => break false,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (status, body) = if !complete {
        ("400 Bad Request", String::from("bad request\n"))
    } else if is_get_metrics(&buf[..len]) {
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", String::from("not found: GET /metrics\n"))
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Whether the request line is `GET /metrics` (a query string allowed).
fn is_get_metrics(request: &[u8]) -> bool {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    method == Some(b"GET".as_slice()) && path == Some(b"/metrics".as_slice())
}

/// The samples of an exposition, `name{labels}` and value, in order (comment lines left
/// out): what `interlink status` shows.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_the_metrics_path_is_served() {
        assert!(is_get_metrics(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_get_metrics(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"));
        assert!(!is_get_metrics(b"GET /metricsx HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b"\xff\xfe\r\n\r\n"));
        assert!(!is_get_metrics(b""));
    }

    #[test]
    fn samples_skip_comments_and_keep_labels() {
        let text =
            "# HELP a x\n# TYPE a counter\na{node=\"1\",link=\"0\"} 3\nb 0.5\n\nc{q=\"a b\"} 1\n";
        assert_eq!(
            samples(text),
            vec![
                ("a{node=\"1\",link=\"0\"}".to_string(), 3.0),
                ("b".to_string(), 0.5),
                ("c{q=\"a b\"}".to_string(), 1.0),
            ]
        );
    }
}
