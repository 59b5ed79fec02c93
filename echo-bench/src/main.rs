//! echo-bench: a load generator for TCP, TLS and UDP echo servers that checks every byte it
//! gets back.
//!
//! Modes (modules): [`pingpong`] (many connections, one exchange in flight each, closed or
//! open loop; also churn and handshake: a new connection per exchange), [`bulk`] (a
//! continuous stream each way), [`udp`] (a window of datagrams per socket), [`probe`] (one
//! round trip, for health checks). [`engine`] is the per-thread epoll loop the TCP modes
//! share, [`tls`] the optional rustls layer under them, [`pattern`] the byte stream they send
//! and verify, [`report`] the numbers and output, [`sys`] the few libc calls.
#![deny(unsafe_code)]

mod bulk;
mod engine;
mod pattern;
mod pingpong;
mod probe;
mod report;
#[allow(unsafe_code)]
mod sys;
mod tls;
mod udp;
mod units;

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};

use crate::engine::Plan;
use crate::report::{Progress, Report, Stats};

/// Load generator for TCP (plain or TLS) and UDP echo servers that tells the truth: every echoed byte is compared
/// with the byte sent, and any mismatch, early close, reset, failed connect or stall is
/// counted as an error and makes the exit status 1.
#[derive(Parser, Debug)]
#[command(name = "echo-bench", version)]
struct Cli {
    /// What to measure.
    #[arg(value_enum, default_value_t = Mode::Pingpong)]
    mode: Mode,

    /// Server address: IP:PORT, or HOST:PORT (resolved, within --timeout)
    /// [default: 127.0.0.1:$PORT, or 127.0.0.1:8080 without PORT].
    #[arg(short, long, value_name = "HOST:PORT")]
    addr: Option<String>,

    /// The port of the default --addr.
    #[arg(long, env = "PORT", default_value_t = 8080, hide = true)]
    port: u16,

    /// Concurrent connections (udp: sockets) [default: 50 for pingpong, 16 for udp, 1 for bulk
    /// and churn; probe uses 1].
    #[arg(short, long, value_name = "N")]
    connections: Option<NonZeroUsize>,

    /// Payload bytes per exchange (pingpong, churn) or per write chunk (bulk); accepts K and M
    /// suffixes [default: 64; 64K for bulk].
    #[arg(short, long, value_name = "BYTES", value_parser = parse_size)]
    size: Option<usize>,

    /// How long to generate load: 2s, 500ms, or bare seconds. Exchanges in flight at the end
    /// still finish (within --timeout) and count.
    #[arg(short, long, default_value = "2s", value_name = "DURATION", value_parser = parse_positive_duration)]
    duration: Duration,

    /// Worker threads, each running its own epoll loop over a round-robin share of the
    /// connections [default: CPUs available, at most --connections].
    #[arg(short, long, value_name = "N")]
    threads: Option<NonZeroUsize>,

    /// Print exactly one line of JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,

    /// probe: the limit for the whole round trip. udp: how long an unanswered datagram waits
    /// before it counts as lost. Other modes: a connection without progress for this long is
    /// an error (stall), and the run ends at most this long after --duration.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_positive_duration)]
    timeout: Duration,

    /// pingpong: open loop. Send N requests per second in all, spread evenly over the
    /// connections on a fixed schedule, and time each reply from its request's intended send
    /// instant (wrk2's correction for coordinated omission), so server stalls show in
    /// p99/p999. Reports the achieved rate and warns when it is under 95% of N.
    /// [default: closed loop, each connection sends when its previous echo is back]
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,

    /// udp: datagrams in flight per socket.
    #[arg(long, default_value_t = NonZeroUsize::new(12).expect("nonzero"), value_name = "W")]
    window: NonZeroUsize,

    /// Speak TLS (rustls, TLS 1.2/1.3) to the server: pingpong, bulk, churn, handshake and
    /// probe. The certificate must verify against --tls-ca and be valid for --server-name;
    /// otherwise every connection fails (errors, exit 1).
    #[arg(long, requires = "tls_ca")]
    tls: bool,

    /// --tls: the CA certificate(s) to trust, PEM (no system roots are used).
    #[arg(long, value_name = "PATH", requires = "tls")]
    tls_ca: Option<PathBuf>,

    /// --tls: the name the server's certificate must be valid for (a DNS name or an IP)
    /// [default: the host of --addr].
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Each connection sends --size bytes, waits for all of them back, repeats; latency per
    /// exchange. Closed loop, or open loop with --rate.
    Pingpong,
    /// Each connection streams pseudo-random bytes while reading the echo; throughput, and
    /// each --size chunk's turnaround (mostly socket-buffer queueing, not a latency).
    Bulk,
    /// Connect, one exchange, close, repeat; latency from connect to the last echoed byte.
    Churn,
    /// --tls: new connection, full TLS handshake, one exchange, close, repeat (churn over
    /// TLS, without session resumption); handshakes per second.
    Handshake,
    /// --connections UDP sockets, each keeping --window datagrams of --size bytes in flight;
    /// every reply checked, unanswered ones lost after --timeout.
    Udp,
    /// One connection, one small round trip within --timeout; prints `ok` or `FAIL`, exits 0 or 1.
    /// Without --addr, if nothing listens on the default, probes the one listening port found
    /// in /proc/net/tcp{,6} (a container's own sockets) instead. With --tls, over TLS
    /// (handshake included).
    Probe,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pingpong => "pingpong",
            Mode::Bulk => "bulk",
            Mode::Churn => "churn",
            Mode::Handshake => "handshake",
            Mode::Probe => "probe",
            Mode::Udp => "udp",
        }
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    const MAX: usize = 256 << 20;
    match units::parse_size(s)? {
        n if n > MAX => Err(format!("'{s}' is more than the limit of 256M")),
        n => Ok(n),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: use a number of requests per second above 0 (e.g. 10000)"
        )),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match units::parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // bad flags: a message naming the flag, exit 2
    let addr = cli
        .addr
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{}", cli.port));
    if cli.rate.is_some() && cli.mode != Mode::Pingpong {
        usage_error(format!(
            "--rate applies to pingpong only, not {}",
            cli.mode.name()
        ));
    }
    if cli.mode == Mode::Handshake && !cli.tls {
        usage_error("handshake mode needs --tls (and --tls-ca)".into());
    }
    if cli.tls && cli.mode == Mode::Udp {
        usage_error("--tls does not apply to udp".into());
    }
    let tls = match &cli.tls_ca {
        Some(ca) if cli.tls => {
            let name = cli
                .server_name
                .clone()
                .unwrap_or_else(|| tls::default_server_name(&addr));
            match tls::Tls::new(ca, &name) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("echo-bench: error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    if cli.mode == Mode::Udp
        && let Some(s) = cli
            .size
            .filter(|s| !(udp::MIN_SIZE..=udp::MAX_SIZE).contains(s))
    {
        usage_error(format!(
            "--size {s}: udp datagrams must be {} to {} bytes (each carries an 8-byte sequence header)",
            udp::MIN_SIZE,
            udp::MAX_SIZE
        ));
    }
    if cli.mode == Mode::Probe {
        return probe_main(&addr, &cli, tls.as_ref());
    }
    match bench(&cli, &addr, tls) {
        Ok(report) => {
            if cli.json {
                println!("{}", report.json());
                if let Some(w) = report.warning() {
                    eprintln!("echo-bench: {w}");
                }
            } else {
                print!("{}", report.table());
            }
            if report.stats.errors() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("echo-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A bad combination of flags: clap's message format, exit 2.
fn usage_error(msg: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn probe_main(addr: &str, cli: &Cli, tls: Option<&tls::Tls>) -> ExitCode {
    let probe::Outcome {
        addr: used,
        instead_of,
        result,
    } = probe::run(addr, cli.addr.is_none(), cli.timeout, tls);
    let (note, json_note) = match &instead_of {
        Some(d) => (
            format!(" (discovered: nothing on {d})"),
            format!(",\"discovered_instead_of\":{}", report::json_string(d)),
        ),
        None => (String::new(), String::new()),
    };
    match (&result, cli.json) {
        (Ok(t), false) => println!("ok {used}{note} {}us", t.as_micros()),
        (Err(e), false) => println!("FAIL {used}{note}: {e}"),
        (Ok(t), true) => println!(
            "{{\"mode\":\"probe\",\"addr\":{}{json_note},\"ok\":true,\"latency_us\":{:.1}}}",
            report::json_string(&used),
            t.as_secs_f64() * 1e6
        ),
        (Err(e), true) => println!(
            "{{\"mode\":\"probe\",\"addr\":{}{json_note},\"ok\":false,\"error\":{}}}",
            report::json_string(&used),
            report::json_string(e)
        ),
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a load mode on `--threads` threads and merges what they measured.
fn bench<'a>(cli: &'a Cli, addr: &str, tls: Option<tls::Tls>) -> Result<Report<'a>, String> {
    let target = probe::resolve(addr, Instant::now() + cli.timeout)?[0];
    let connections = cli.connections.map_or(
        match cli.mode {
            Mode::Pingpong => 50,
            Mode::Udp => 16,
            _ => 1,
        },
        NonZeroUsize::get,
    );
    let size = cli
        .size
        .unwrap_or(if cli.mode == Mode::Bulk { 64 << 10 } else { 64 });
    let threads = cli
        .threads
        .map_or_else(num_cpus::get, NonZeroUsize::get)
        .clamp(1, connections);
    // Hundreds of sockets need more than a 1024 soft limit; failing here only means the
    // connects that run out of descriptors count as errors.
    let _ = sys::raise_nofile_limit();

    let start = Instant::now();
    let progress = Progress::default();
    let share = |t: usize| -> Vec<u64> {
        (t..connections)
            .step_by(threads)
            .map(|i| i as u64)
            .collect()
    };
    if cli.mode == Mode::Udp {
        let plans: Vec<udp::UdpPlan> = (0..threads)
            .map(|t| udp::UdpPlan {
                addr: target,
                ids: share(t),
                window: cli.window.get(),
                size,
                deadline: start + cli.duration,
                timeout: cli.timeout,
            })
            .collect();
        let stats = run_threads(&plans, &progress, start, udp::run)?;
        return Ok(Report {
            mode: cli.mode.name(),
            addr: target.to_string(),
            connections,
            threads,
            size,
            duration: start.elapsed(),
            stats,
            rate: None,
            window: Some(cli.window.get()),
        });
    }
    let plans: Vec<Plan> = (0..threads)
        .map(|t| Plan {
            addr: target,
            ids: share(t),
            size,
            deadline: start + cli.duration,
            timeout: cli.timeout,
            reconnect: matches!(cli.mode, Mode::Churn | Mode::Handshake),
            rate: cli.rate.map(|r| (r, connections)),
            tls: tls.clone(),
        })
        .collect();
    let stats = match cli.mode {
        Mode::Pingpong => run_threads(&plans, &progress, start, engine::run::<pingpong::PingPong>)?,
        Mode::Bulk => run_threads(&plans, &progress, start, engine::run::<bulk::Bulk>)?,
        Mode::Churn | Mode::Handshake => {
            run_threads(&plans, &progress, start, engine::run::<pingpong::Churn>)?
        }
        Mode::Probe | Mode::Udp => unreachable!("probe and udp run on their own"),
    };
    Ok(Report {
        mode: cli.mode.name(),
        addr: target.to_string(),
        connections,
        threads,
        size,
        duration: start.elapsed(),
        stats,
        rate: cli.rate.map(|r| (r, cli.duration)),
        window: None,
    })
}

/// Runs `work` on one thread per plan, prints progress on a terminal, merges the results.
fn run_threads<P: Sync>(
    plans: &[P],
    progress: &Progress,
    start: Instant,
    work: fn(&P, &Progress) -> Stats,
) -> Result<Stats, String> {
    let show_progress = std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let mut handles = Vec::new();
        for (t, plan) in plans.iter().enumerate() {
            let done = done_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn_scoped(scope, move || {
                    let stats = work(plan, progress);
                    drop(done);
                    stats
                })
                .map_err(|e| format!("spawn thread {t}: {e}"))?;
            handles.push(h);
        }
        drop(done_tx);
        // Every sender is dropped when its thread finishes: Disconnected means all are done.
        let mut next = start + Duration::from_secs(1);
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(next.saturating_duration_since(Instant::now()))
        {
            if show_progress {
                eprintln!("{}", progress.line(start.elapsed()));
            }
            next += Duration::from_secs(1);
        }
        let mut total = Stats::new();
        for h in handles {
            total.merge(
                h.join()
                    .map_err(|_| "a worker thread panicked".to_string())?,
            );
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mode_defaults_to_pingpong_and_flags_parse() {
        let cli = Cli::try_parse_from(["echo-bench"]).unwrap();
        assert_eq!(cli.mode, Mode::Pingpong);
        assert_eq!(cli.duration, Duration::from_secs(2));
        let cli = Cli::try_parse_from([
            "echo-bench",
            "bulk",
            "--size",
            "1M",
            "-d",
            "500ms",
            "--timeout",
            "3",
        ])
        .unwrap();
        assert_eq!((cli.mode, cli.size), (Mode::Bulk, Some(1 << 20)));
        assert_eq!(cli.duration, Duration::from_millis(500));
        assert_eq!(cli.timeout, Duration::from_secs(3));
        for bad in [
            &["echo-bench", "nosuchmode"][..],
            &["echo-bench", "--duration", "0"],
            &["echo-bench", "--size", "0"],
            &["echo-bench", "--connections", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
