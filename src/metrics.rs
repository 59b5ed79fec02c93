//! Prometheus metrics over HTTP (`--metrics-addr`): `GET /metrics` in the text exposition
//! format 0.0.4.
//!
//! Counting costs the workers nothing new: each one already publishes its counters into its
//! own cache-padded slot once per loop turn ([`crate::stats`]); a scrape reads those slots and
//! sums them. The endpoint has its own accept thread (a blocking `std` listener) and one short
//! thread per scrape, at most [`MAX_SCRAPES`] at a time (more are closed at once), each bounded
//! by [`SCRAPE_TIMEOUT`] for the whole request and by a write timeout for the response. So a
//! client that sends half a request and stalls holds one handler thread for at most that long
//! and never delays another scrape, and no scrape ever touches a worker thread.
//!
//! The exported metrics are one table, [`METRICS`]: a new counter in [`Snapshot`] is one line
//! there.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log;
use crate::log::Level;
use crate::shared::Shared;
use crate::stats::{Snapshot, WorkerStats};

/// Scrapes served at the same time; a further connection is closed unanswered.
pub const MAX_SCRAPES: usize = 8;
/// The most a scrape may take to send its request head, and to take the response.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head accepted (request line and headers).
const MAX_HEAD: usize = 8 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A family's samples: label pairs (`reason="x"`, or empty) and how to read the value.
pub type Samples = &'static [(&'static str, fn(&Snapshot) -> u64)];

/// One metric family: a name, its help, and its samples as `(labels, value)`. `per_worker`
/// families get one sample per worker with a `worker="i"` label added; the others are summed
/// over the workers at scrape time.
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub per_worker: bool,
    pub samples: Samples,
}

const fn total(kind: Kind, name: &'static str, help: &'static str, samples: Samples) -> Metric {
    Metric {
        name,
        help,
        kind,
        per_worker: false,
        samples,
    }
}

const fn per_worker(
    kind: Kind,
    name: &'static str,
    help: &'static str,
    samples: Samples,
) -> Metric {
    Metric {
        name,
        help,
        kind,
        per_worker: true,
        samples,
    }
}

use Kind::{Counter, Gauge};

/// Everything `/metrics` exports. A new counter (UDP, TLS, per-IP limits) is one line here;
/// a new rejection reason is one more `(labels, value)` pair in the rejected family.
#[rustfmt::skip]
pub const METRICS: &[Metric] = &[
    total(Counter, "epoll_echo_connections_accepted_total", "TCP connections accepted, including those refused at once.", &[("", |s| s.accepted)]),
    total(Gauge, "epoll_echo_connections_active", "TCP connections open now.", &[("", |s| s.active)]),
    total(Counter, "epoll_echo_connections_closed_total", "TCP connections closed after being served.", &[("", |s| s.closed)]),
    total(Counter, "epoll_echo_connections_rejected_total", "TCP connections refused, by reason: at accept, or at PROXY header time.", &[
        ("reason=\"max_connections\"", |s| s.refused.saturating_sub(s.refused_no_fds)),
        ("reason=\"out_of_fds\"", |s| s.refused_no_fds),
        ("reason=\"max_conns_per_ip\"", |s| s.per_ip.refused_per_ip),
        ("reason=\"accept_rate_per_ip\"", |s| s.per_ip.refused_rate),
        ("reason=\"proxy_header\"", |s| s.per_ip.proxy_rejected),
        ("reason=\"proxy_header_timeout\"", |s| s.per_ip.proxy_timeout),
    ]),
    total(Counter, "epoll_echo_connections_idle_closed_total", "TCP connections closed by the idle timeout.", &[("", |s| s.idle_closed)]),
    total(Counter, "epoll_echo_bytes_received_total", "Bytes read from clients.", &[("", |s| s.bytes_in)]),
    total(Counter, "epoll_echo_bytes_sent_total", "Bytes echoed back to clients.", &[("", |s| s.bytes_out)]),
    total(Counter, "epoll_echo_bytes_spliced_total", "Of the bytes received, those echoed with splice(2), never copied to user space (--splice).", &[("", |s| s.bytes_spliced)]),
    total(Counter, "epoll_echo_tls_handshakes_total", "TLS handshakes completed (--tls-port).", &[("", |s| s.tls.handshakes)]),
    total(Counter, "epoll_echo_tls_failures_total", "TLS connections ended by a failure, by kind.", &[
        ("reason=\"not_tls\"", |s| s.tls.not_tls),
        ("reason=\"handshake\"", |s| s.tls.handshake_failed),
        ("reason=\"bad_record\"", |s| s.tls.bad_record),
        ("reason=\"truncated\"", |s| s.tls.truncated),
        ("reason=\"handshake_timeout\"", |s| s.tls.handshake_timeout),
    ]),
    per_worker(Gauge, "epoll_echo_worker_connections_active", "TCP connections open now, per worker (SO_REUSEPORT balance).", &[("", |s| s.active)]),
    per_worker(Counter, "epoll_echo_worker_connections_accepted_total", "TCP connections accepted, per worker.", &[("", |s| s.accepted)]),
    total(Counter, "epoll_echo_udp_datagrams_received_total", "UDP datagrams received (--udp-port).", &[("", |s| s.udp.received)]),
    total(Counter, "epoll_echo_udp_datagrams_sent_total", "UDP datagrams echoed back.", &[("", |s| s.udp.echoed)]),
    total(Counter, "epoll_echo_udp_datagrams_dropped_total", "UDP datagrams not answered, by reason.", &[
        ("reason=\"source_port\"", |s| s.udp.drop_port),
        ("reason=\"rate\"", |s| s.udp.drop_rate),
        ("reason=\"send_buffer_full\"", |s| s.udp.drop_full),
        ("reason=\"error\"", |s| s.udp.errors),
    ]),
];

/// Renders every metric in the text exposition format 0.0.4.
pub fn render(workers: &[Snapshot]) -> String {
    let sum = workers.iter().fold(Snapshot::default(), |a, b| a + *b);
    let mut out = String::with_capacity(4096);
    for m in METRICS {
        let kind = match m.kind {
            Counter => "counter",
            Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        for (labels, value) in m.samples {
            if m.per_worker {
                for (i, w) in workers.iter().enumerate() {
                    let sep = if labels.is_empty() { "" } else { "," };
                    let _ = writeln!(
                        out,
                        "{}{{worker=\"{i}\"{sep}{labels}}} {}",
                        m.name,
                        value(w)
                    );
                }
            } else if labels.is_empty() {
                let _ = writeln!(out, "{} {}", m.name, value(&sum));
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {}", m.name, value(&sum));
            }
        }
    }
    out
}

/// The running endpoint; [`Endpoint::stop`] ends its accept thread.
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `addr` (errors name the flag and the address) and starts serving.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<Endpoint> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            let what = if e.kind() == io::ErrorKind::AddrInUse {
                "address already in use".to_string()
            } else {
                e.to_string()
            };
            io::Error::new(e.kind(), format!("--metrics-addr {addr}: bind: {what}"))
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(&listener, &shared, &flag))
            .map_err(|e| io::Error::new(e.kind(), format!("spawn metrics thread: {e}")))?;
        log!(Level::Info, "metrics on http://{addr}/metrics");
        Ok(Endpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting scrapes and joins the accept thread (scrapes in flight finish alone).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, SCRAPE_TIMEOUT).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            // EMFILE and the like: the echo workers log descriptor trouble; do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
            busy.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed unanswered
        }
        let (sh, count) = (shared.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                let _ = serve(conn, &sh.stats);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Parses a complete request head (up to and including the blank line).
pub fn parse(head: &[u8]) -> Request {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Request::BadRequest;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Request::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    if path == "/metrics" {
        Request::Metrics { head_only }
    } else {
        Request::NotFound
    }
}

/// Reads the request head within [`SCRAPE_TIMEOUT`] and answers it.
fn serve(mut conn: TcpStream, stats: &[WorkerStats]) -> io::Result<()> {
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    conn.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let request = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break parse(&head[..end + 4]);
        }
        if head.len() > MAX_HEAD {
            break Request::BadRequest;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(()); // too slow: closed unanswered
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (status, body, head_only) = match request {
        Request::Metrics { head_only } => {
            let snaps: Vec<Snapshot> = stats.iter().map(WorkerStats::snapshot).collect();
            ("200 OK", render(&snaps), head_only)
        }
        Request::NotFound => ("404 Not Found", "not found: try /metrics\n".into(), false),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "only GET and HEAD\n".into(),
            false,
        ),
        Request::BadRequest => ("400 Bad Request", "bad request\n".into(), false),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    conn.write_all(response.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let get = |s: &str| parse(s.as_bytes());
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            get("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(get("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(get("GET /metricsx HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            get("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(get("GET /metrics\r\n\r\n"), Request::BadRequest);
        assert_eq!(get("GET /metrics SPDY/3\r\n\r\n"), Request::BadRequest);
    }

    #[test]
    fn render_sums_workers_and_labels_per_worker_families() {
        let a = Snapshot {
            active: 2,
            accepted: 10,
            refused: 3,
            refused_no_fds: 1,
            bytes_in: 100,
            ..Default::default()
        };
        let b = Snapshot {
            active: 1,
            accepted: 5,
            bytes_in: 50,
            ..Default::default()
        };
        let text = render(&[a, b]);
        for line in [
            "# TYPE epoll_echo_connections_accepted_total counter",
            "epoll_echo_connections_accepted_total 15",
            "epoll_echo_connections_active 3",
            "epoll_echo_connections_rejected_total{reason=\"max_connections\"} 2",
            "epoll_echo_connections_rejected_total{reason=\"out_of_fds\"} 1",
            "epoll_echo_bytes_received_total 150",
            "epoll_echo_worker_connections_active{worker=\"0\"} 2",
            "epoll_echo_worker_connections_active{worker=\"1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"));
    }
}
