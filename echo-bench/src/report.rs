//! What a run measured, how partial results merge, and how they are printed: a human table,
//! one line of JSON (`--json`), and a progress line per second while running.

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Why a connection counted as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// connect(2) failed or timed out.
    Connect,
    /// An echoed byte differed from the byte sent, or the server sent bytes nobody sent.
    Mismatch,
    /// The server closed the connection before echoing everything (short read at EOF).
    Closed,
    /// ECONNRESET / EPIPE.
    Reset,
    /// No progress for `--timeout`.
    Stall,
    /// The TLS handshake failed (certificate not trusted, wrong name…) or a bad record.
    Tls,
    /// Any other I/O error.
    Io,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Mismatch,
        ErrorKind::Closed,
        ErrorKind::Reset,
        ErrorKind::Stall,
        ErrorKind::Tls,
        ErrorKind::Io,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Closed => "closed early",
            ErrorKind::Reset => "reset",
            ErrorKind::Stall => "stall",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "i/o",
        }
    }

    /// Classifies an I/O error from an established connection.
    pub fn of(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            // Only the TLS layer reports bad data (crate::tls).
            io::ErrorKind::InvalidData => ErrorKind::Tls,
            _ => ErrorKind::Io,
        }
    }
}

/// One connection's failure: the kind, and a message naming the connection and the byte.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub msg: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Failure {
        Failure {
            kind,
            msg: msg.into(),
        }
    }

    pub fn io(what: &str, e: &io::Error) -> Failure {
        Failure::new(ErrorKind::of(e), format!("{what}: {e}"))
    }
}

/// The counters one worker thread keeps; merged at the end.
pub struct Stats {
    pub round_trips: u64,
    /// Payload bytes echoed back and verified (one direction).
    pub bytes: u64,
    /// udp: datagrams sent; given up as lost after `--timeout`; answered after that.
    pub sent: u64,
    pub lost: u64,
    pub late: u64,
    /// Round-trip latency in nanoseconds (printed in µs); open loop: from the intended send.
    pub latency: Histogram<u64>,
    /// Open loop only: from the actual send (what a closed loop measures), in nanoseconds.
    pub service_time: Histogram<u64>,
    errors: [u64; ErrorKind::ALL.len()],
    /// The first message of each kind, for the human table.
    first: [Option<String>; ErrorKind::ALL.len()],
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            round_trips: 0,
            bytes: 0,
            sent: 0,
            lost: 0,
            late: 0,
            latency: histogram(),
            service_time: histogram(),
            errors: [0; ErrorKind::ALL.len()],
            first: Default::default(),
        }
    }

    pub fn record_round_trip(&mut self, bytes: usize, latency: Duration) {
        self.round_trips += 1;
        self.bytes += bytes as u64;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(ns);
    }

    pub fn record_service_time(&mut self, t: Duration) {
        let ns = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.service_time.saturating_record(ns);
    }

    pub fn record_error(&mut self, f: Failure) {
        let i = f.kind as usize;
        self.errors[i] += 1;
        if self.first[i].is_none() {
            self.first[i] = Some(f.msg);
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn merge(&mut self, other: Stats) {
        self.round_trips += other.round_trips;
        self.bytes += other.bytes;
        self.sent += other.sent;
        self.lost += other.lost;
        self.late += other.late;
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds");
        self.service_time
            .add(&other.service_time)
            .expect("histograms share bounds");
        for (i, msg) in other.first.into_iter().enumerate() {
            self.errors[i] += other.errors[i];
            if self.first[i].is_none() {
                self.first[i] = msg;
            }
        }
    }
}

/// 1 ns .. 1 hour at 3 significant digits; larger values saturate.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Counters the workers publish now and then, for the progress line.
#[derive(Default)]
pub struct Progress {
    pub round_trips: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    /// Adds what `stats` gained since `seen` (the totals at the previous publish).
    pub fn publish(&self, stats: &Stats, seen: &mut (u64, u64, u64)) {
        let now = (stats.round_trips, stats.bytes, stats.errors());
        self.round_trips
            .fetch_add(now.0 - seen.0, Ordering::Relaxed);
        self.bytes.fetch_add(now.1 - seen.1, Ordering::Relaxed);
        self.errors.fetch_add(now.2 - seen.2, Ordering::Relaxed);
        *seen = now;
    }

    pub fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let rt = self.round_trips.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        format!(
            "[{:5.1}s] round trips {rt} ({:.0}/s), {}/s, errors {}",
            secs,
            rt as f64 / secs,
            human_bytes(bytes as f64 / secs),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// The finished run, ready to print.
pub struct Report<'a> {
    pub mode: &'a str,
    pub addr: String,
    pub connections: usize,
    pub threads: usize,
    pub size: usize,
    pub duration: Duration,
    pub stats: Stats,
    /// Open loop: `--rate` and `--duration` (the requests scheduled are their product).
    pub rate: Option<(f64, Duration)>,
    /// udp: datagrams in flight per socket (adds `window`, `sent`, `lost`, `late`).
    pub window: Option<usize>,
}

/// Below this share of the requested rate, the server did not keep up.
const KEEP_UP: f64 = 0.95;

struct Latencies {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Report<'_> {
    fn secs(&self) -> f64 {
        self.duration.as_secs_f64().max(1e-9)
    }

    /// The latency histogram's JSON key and table label: bulk's per-chunk times are
    /// dominated by socket-buffer queueing, so they are not called latency.
    fn latency_name(&self) -> (&'static str, &'static str) {
        match (self.mode, self.rate) {
            ("bulk", _) => ("chunk_turnaround_us", "turnaround µs"),
            _ => ("latency_us", "latency µs"),
        }
    }

    /// Open loop: the share of the scheduled requests that were answered (1.0: all).
    pub fn kept_up(&self) -> Option<f64> {
        let (rate, planned) = self.rate?;
        let scheduled = (rate * planned.as_secs_f64()).max(1.0);
        Some(self.stats.round_trips as f64 / scheduled)
    }

    /// The warning for a server that could not keep up with `--rate`, if it could not.
    pub fn warning(&self) -> Option<String> {
        let share = self.kept_up()?;
        let (rate, _) = self.rate?;
        (share < KEEP_UP).then(|| {
            format!(
                "warning: the server did not keep up: {:.1} round trips/s achieved of {rate} requested \
                 ({:.0}% of the scheduled requests answered); latencies include the backlog",
                self.stats.round_trips as f64 / self.secs(),
                share * 100.0
            )
        })
    }

    fn latencies(&self) -> Latencies {
        quantiles(&self.stats.latency)
    }
}

fn quantiles(h: &Histogram<u64>) -> Latencies {
    let us = |ns: u64| ns as f64 / 1000.0;
    if h.is_empty() {
        return Latencies {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
        };
    }
    Latencies {
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    }
}

impl Latencies {
    fn json(&self) -> String {
        format!(
            "{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }

    fn row(&self) -> String {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

impl Report<'_> {
    /// Exactly one line, keys in a fixed order. Open loop adds `requested_rate` and `kept_up`
    /// after `round_trips_per_sec` (the achieved rate) and `service_time_us` after the latency.
    pub fn json(&self) -> String {
        let mut j = format!(
            "{{\"mode\":\"{}\",\"connections\":{},",
            self.mode, self.connections
        );
        if let Some(w) = self.window {
            let _ = write!(j, "\"window\":{w},");
        }
        let _ = write!(
            j,
            "\"size\":{},\"duration_s\":{:.3},",
            self.size,
            self.duration.as_secs_f64()
        );
        if self.window.is_some() {
            let s = &self.stats;
            let _ = write!(
                j,
                "\"sent\":{},\"lost\":{},\"late\":{},",
                s.sent, s.lost, s.late
            );
        }
        let _ = write!(
            j,
            "\"round_trips\":{},\"round_trips_per_sec\":{:.1},",
            self.stats.round_trips,
            self.stats.round_trips as f64 / self.secs(),
        );
        if self.mode == "handshake" {
            // One full handshake per completed exchange.
            let _ = write!(
                j,
                "\"handshakes\":{},\"handshakes_per_sec\":{:.1},",
                self.stats.round_trips,
                self.stats.round_trips as f64 / self.secs(),
            );
        }
        if let (Some((rate, _)), Some(share)) = (self.rate, self.kept_up()) {
            let _ = write!(
                j,
                "\"requested_rate\":{rate:.1},\"kept_up\":{},",
                share >= KEEP_UP
            );
        }
        let _ = write!(
            j,
            "\"bytes_per_sec\":{:.1},\"{}\":{},",
            self.stats.bytes as f64 / self.secs(),
            self.latency_name().0,
            self.latencies().json()
        );
        if self.rate.is_some() {
            let _ = write!(
                j,
                "\"service_time_us\":{},",
                quantiles(&self.stats.service_time).json()
            );
        }
        let _ = write!(j, "\"errors\":{}}}", self.stats.errors());
        j
    }

    pub fn table(&self) -> String {
        let s = &self.stats;
        let l = self.latencies();
        let mut t = String::new();
        let _ = writeln!(t, "mode            {} → {}", self.mode, self.addr);
        let _ = writeln!(
            t,
            "connections     {} ({} thread{})",
            self.connections,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        if self.mode == "handshake" {
            let _ = writeln!(
                t,
                "handshakes      {} ({:.1}/s; each a new connection, a full TLS handshake and one exchange)",
                s.round_trips,
                s.round_trips as f64 / self.secs()
            );
        }
        if let Some(w) = self.window {
            let _ = writeln!(t, "window          {w} datagrams in flight per socket");
        }
        let _ = writeln!(t, "size            {} bytes", self.size);
        let _ = writeln!(t, "duration        {:.3} s", self.duration.as_secs_f64());
        if self.window.is_some() {
            let _ = writeln!(
                t,
                "datagrams       {} sent, {} lost (unanswered for --timeout), {} late",
                s.sent, s.lost, s.late
            );
        }
        let _ = writeln!(
            t,
            "round trips     {} ({:.1}/s)",
            s.round_trips,
            s.round_trips as f64 / self.secs()
        );
        let _ = writeln!(
            t,
            "bytes echoed    {} ({}/s)",
            s.bytes,
            human_bytes(s.bytes as f64 / self.secs())
        );
        if let (Some((rate, _)), Some(share)) = (self.rate, self.kept_up()) {
            let _ = writeln!(
                t,
                "rate            {rate}/s requested, {:.1}/s achieved ({:.0}% of the scheduled requests answered)",
                s.round_trips as f64 / self.secs(),
                share * 100.0
            );
        }
        let _ = writeln!(t, "{:<16}{}", self.latency_name().1, l.row());
        if self.rate.is_some() {
            let st = quantiles(&s.service_time);
            let _ = writeln!(t, "{:<16}{}", "service µs", st.row());
            let _ = writeln!(
                t,
                "                (latency: from each request's intended send instant; service: from its actual send, as a closed loop measures)"
            );
        }
        if self.mode == "bulk" {
            let _ = writeln!(
                t,
                "                (a chunk's first byte written → its last byte echoed: mostly time queued in socket buffers, not a latency)"
            );
        }
        if let Some(w) = self.warning() {
            let _ = writeln!(t, "{w}");
        }
        let _ = writeln!(t, "errors          {}", s.errors());
        for kind in ErrorKind::ALL {
            let n = s.errors[kind as usize];
            if n > 0 {
                let first = s.first[kind as usize].as_deref().unwrap_or("");
                let _ = writeln!(t, "  {:<13} {n} (first: {first})", kind.name());
            }
        }
        t
    }
}

/// `12.3 MB/s`-style figure (decimal units).
fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// A JSON string literal (for messages that may hold quotes or control characters).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stats: Stats) -> String {
        Report {
            mode: "pingpong",
            addr: "127.0.0.1:1".into(),
            connections: 2,
            threads: 1,
            size: 64,
            duration: Duration::from_millis(2000),
            stats,
            rate: None,
            window: None,
        }
        .json()
    }

    #[test]
    fn json_keys_in_order_and_merge_adds_up() {
        let mut a = Stats::new();
        a.record_round_trip(64, Duration::from_micros(10));
        let mut b = Stats::new();
        b.record_round_trip(64, Duration::from_micros(30));
        b.record_error(Failure::new(ErrorKind::Stall, "conn 1: stalled"));
        a.merge(b);
        assert_eq!(a.errors(), 1);
        let j = report(a);
        assert!(
            j.starts_with(
                "{\"mode\":\"pingpong\",\"connections\":2,\"size\":64,\"duration_s\":2.000,\
                 \"round_trips\":2,\"round_trips_per_sec\":1.0,\"bytes_per_sec\":64.0,\
                 \"latency_us\":{\"p50\":10.0,"
            ),
            "{j}"
        );
        assert!(j.ends_with(",\"max\":30.0},\"errors\":1}"), "{j}");
        assert!(!j.contains('\n'));
    }

    #[test]
    fn open_loop_json_and_the_keep_up_warning() {
        let mut stats = Stats::new();
        for _ in 0..94 {
            stats.record_round_trip(64, Duration::from_millis(3));
            stats.record_service_time(Duration::from_micros(20));
        }
        let mut r = Report {
            mode: "pingpong",
            addr: "127.0.0.1:1".into(),
            connections: 2,
            threads: 1,
            size: 64,
            duration: Duration::from_secs(1),
            stats,
            rate: Some((100.0, Duration::from_secs(1))),
            window: None,
        };
        let j = r.json();
        assert!(
            j.contains("\"round_trips_per_sec\":94.0,\"requested_rate\":100.0,\"kept_up\":false,"),
            "{j}"
        );
        assert!(j.contains("\"service_time_us\":{\"p50\":20.0,"), "{j}");
        assert!(
            r.warning()
                .is_some_and(|w| w.contains("94.0 round trips/s achieved of 100 requested"))
        );
        assert!(r.table().contains("did not keep up"));
        r.stats.record_round_trip(64, Duration::from_millis(3));
        assert!(r.json().contains("\"kept_up\":true,"));
        assert_eq!(r.warning(), None);
    }

    #[test]
    fn bulk_times_are_not_called_latency() {
        let r = Report {
            mode: "bulk",
            addr: "127.0.0.1:1".into(),
            connections: 1,
            threads: 1,
            size: 65536,
            duration: Duration::from_secs(1),
            stats: Stats::new(),
            rate: None,
            window: None,
        };
        assert!(r.json().contains("\"chunk_turnaround_us\":{"));
        assert!(!r.json().contains("latency"));
        assert!(!r.table().contains("latency µs"));
    }

    #[test]
    fn empty_run_prints_zeros() {
        let j = report(Stats::new());
        assert!(j.contains("\"latency_us\":{\"p50\":0.0,"), "{j}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
