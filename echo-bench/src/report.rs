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
    /// Any other I/O error.
    Io,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Mismatch,
        ErrorKind::Closed,
        ErrorKind::Reset,
        ErrorKind::Stall,
        ErrorKind::Io,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Closed => "closed early",
            ErrorKind::Reset => "reset",
            ErrorKind::Stall => "stall",
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
    /// Round-trip latency in nanoseconds (printed in µs).
    pub latency: Histogram<u64>,
    errors: [u64; ErrorKind::ALL.len()],
    /// The first message of each kind, for the human table.
    first: [Option<String>; ErrorKind::ALL.len()],
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            round_trips: 0,
            bytes: 0,
            // 1 ns .. 1 hour at 3 significant digits; larger values saturate.
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
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
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds");
        for (i, msg) in other.first.into_iter().enumerate() {
            self.errors[i] += other.errors[i];
            if self.first[i].is_none() {
                self.first[i] = msg;
            }
        }
    }
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
}

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

    fn latencies(&self) -> Latencies {
        let h = &self.stats.latency;
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

    /// Exactly one line, keys in a fixed order.
    pub fn json(&self) -> String {
        let l = self.latencies();
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"connections\":{},\"size\":{},\"duration_s\":{:.3},",
                "\"round_trips\":{},\"round_trips_per_sec\":{:.1},\"bytes_per_sec\":{:.1},",
                "\"latency_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},",
                "\"errors\":{}}}"
            ),
            self.mode,
            self.connections,
            self.size,
            self.duration.as_secs_f64(),
            self.stats.round_trips,
            self.stats.round_trips as f64 / self.secs(),
            self.stats.bytes as f64 / self.secs(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.stats.errors()
        )
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
        let _ = writeln!(t, "size            {} bytes", self.size);
        let _ = writeln!(t, "duration        {:.3} s", self.duration.as_secs_f64());
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
        let _ = writeln!(
            t,
            "latency µs      p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
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
    fn empty_run_prints_zeros() {
        let j = report(Stats::new());
        assert!(j.contains("\"latency_us\":{\"p50\":0.0,"), "{j}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
