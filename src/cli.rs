//! The command line (clap derive). Bad values are rejected at parse time, naming the flag.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
#[cfg(feature = "tls")]
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::log::Level;
use crate::server::Config;

/// A fast, correct TCP echo server: one SO_REUSEPORT listener, epoll instance and thread per
/// worker; every byte of every client echoed back, in order.
/// `--splice[=WHEN]`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceWhen {
    /// Bulk streams on NIC-sized paths; loopback copies.
    Auto,
    /// Every bulk stream.
    On,
    /// Never.
    Off,
}

#[derive(Parser, Debug)]
#[command(name = "epoll-echo", version, about, long_about = None)]
pub struct Cli {
    /// TCP port to listen on (0: the kernel picks one, shown in the startup line).
    #[arg(
        short,
        long,
        env = "PORT",
        default_value_t = 8080,
        allow_hyphen_values = true
    )]
    pub port: u16,

    /// IP address to listen on (IPv4 or IPv6 literal, e.g. 127.0.0.1, ::1, ::) [default: ::
    /// accepting IPv4 and IPv6 (dual-stack), or 0.0.0.0 where IPv6 is unavailable].
    #[arg(long, allow_hyphen_values = true)]
    pub host: Option<IpAddr>,

    /// Worker threads, each with its own listener and epoll instance [default: CPUs available].
    #[arg(long = "maxListeners", visible_alias = "max-listeners", env = "MAX_LISTENERS",
          value_name = "N", value_parser = parse_workers, allow_hyphen_values = true)]
    pub max_listeners: Option<NonZeroUsize>,

    /// Listen backlog of each worker's socket.
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=65535), allow_hyphen_values = true)]
    pub backlog: i32,

    /// Bytes of unsent echo per client before the server stops reading that client
    /// (backpressure). Accepts k/K (KiB) and m/M (MiB) suffixes.
    #[arg(long, default_value = "256K", value_name = "BYTES", value_parser = parse_max_pending, allow_hyphen_values = true)]
    pub max_pending: usize,

    /// Most open client connections across all workers; extra clients are accepted and closed
    /// at once [default: open-files limit minus what the server itself needs].
    #[arg(long, value_name = "N", value_parser = parse_max_connections, allow_hyphen_values = true)]
    pub max_connections: Option<usize>,

    /// Close a connection with no traffic in either direction for this long (0: never).
    /// A number of seconds or a duration: 500ms, 30s, 5m.
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = crate::duration::parse, allow_hyphen_values = true)]
    pub idle_timeout: Duration,

    /// On SIGINT/SIGTERM, how long busy connections may keep draining before they are closed.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = crate::duration::parse, allow_hyphen_values = true)]
    pub shutdown_timeout: Duration,

    /// Print a `stats:` line to stderr at this interval (default: off).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, allow_hyphen_values = true)]
    pub stats_interval: Option<Duration>,

    /// Pin worker i to CPU i (modulo the CPU count).
    #[arg(long)]
    pub pin_cpus: bool,

    /// Echo bulk streams with splice(2) through a per-worker pipe (zero-copy): `off` never (no
    /// pipe), `on` (or bare `--splice`) every bulk stream, `auto` those on NIC-sized paths (MSS
    /// below 16 KiB) and not loopback. Less server CPU per byte, more for a client on the same
    /// host.
    #[arg(long, value_name = "WHEN", value_enum, default_value = "off", num_args = 0..=1, require_equals = true, default_missing_value = "on", hide_possible_values = true)]
    pub splice: SpliceWhen,

    /// Unsent echo a client's socket may hold before the server stops writing to it
    /// (TCP_NOTSENT_LOWAT, set on the plain-TCP listeners; TLS keeps the kernel's): bounds
    /// what the kernel holds per client, and bulk streams cost less CPU per GB (README, "Bulk
    /// streams"). 0: the kernel's default (unlimited). Accepts k/K and m/M suffixes.
    #[arg(long, default_value = "16K", value_name = "BYTES", value_parser = parse_notsent_lowat, allow_hyphen_values = true)]
    pub notsent_lowat: u32,

    /// More logging (-v: per-connection debug lines).
    #[arg(short, long, conflicts_with_all = ["quiet", "log_level"])]
    pub verbose: bool,

    /// Less logging: warnings and errors only.
    #[arg(short, long, conflicts_with = "log_level")]
    pub quiet: bool,

    /// Log level.
    #[arg(long, value_enum, value_name = "LEVEL", allow_hyphen_values = true)]
    pub log_level: Option<Level>,

    /// Most open connections per client address across all workers; more are reset at once
    /// (0: unlimited). IPv6 clients are grouped by --ipv6-prefix.
    #[arg(
        long,
        env = "MAX_CONNS_PER_IP",
        default_value_t = 0,
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub max_conns_per_ip: u32,

    /// New connections per second per client address, in bursts of up to N; more are reset at
    /// once (0: unlimited).
    #[arg(
        long,
        env = "ACCEPT_RATE_PER_IP",
        default_value_t = 0,
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub accept_rate_per_ip: u32,

    /// IPv6 clients in the same /N network count as one client for the per-IP limits.
    #[arg(long, default_value_t = crate::limits::DEFAULT_IPV6_PREFIX, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=128), allow_hyphen_values = true)]
    pub ipv6_prefix: u8,

    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's send-proxy
    /// and send-proxy-v2 send it): its source is the client for logs and per-IP limits.
    /// Connections without a valid header are closed unechoed.
    #[arg(long, env = "PROXY_PROTOCOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub proxy_protocol: bool,

    /// With --proxy-protocol: close a connection whose header has not arrived whole by then.
    #[arg(long, default_value = "5s", value_name = "TIME", value_parser = parse_header_timeout, allow_hyphen_values = true)]
    pub proxy_header_timeout: Duration,

    /// Also echo UDP datagrams (RFC 862) on this port, one SO_REUSEPORT socket per worker
    /// (may equal --port; 0: the kernel picks one) [default: off].
    #[arg(long, env = "UDP_PORT", value_name = "PORT", value_parser = parse_udp_port, allow_hyphen_values = true)]
    pub udp_port: Option<u16>,

    /// At most N UDP replies per second per source IP, burst N (0: unlimited); the rest are
    /// dropped and counted.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_udp_rate, allow_hyphen_values = true)]
    pub udp_rate: u32,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default: off). An IP literal and
    /// a port, e.g. 127.0.0.1:9100 or [::]:9100.
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Write the serving process's pid here (atomically); a graceful restart (SIGUSR2) hands
    /// it to the new process; removed at exit.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,

    /// Also serve TLS (1.2 and 1.3) on this port, in every worker; needs --tls-cert and --tls-key.
    #[cfg(feature = "tls")]
    #[arg(long, env = "TLS_PORT", value_name = "PORT", requires_all = ["tls_cert", "tls_key"],
          allow_hyphen_values = true)]
    pub tls_port: Option<u16>,

    /// TLS certificate chain, PEM, leaf first (read again on SIGHUP).
    #[cfg(feature = "tls")]
    #[arg(long, env = "TLS_CERT", value_name = "PATH", requires = "tls_port")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key, PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted (read again on SIGHUP).
    #[cfg(feature = "tls")]
    #[arg(long, env = "TLS_KEY", value_name = "PATH", requires = "tls_port")]
    pub tls_key: Option<PathBuf>,

    /// Close a TLS connection whose handshake has not finished within this time.
    #[cfg(feature = "tls")]
    #[arg(long, default_value = "10s", value_name = "DUR", value_parser = parse_header_timeout, allow_hyphen_values = true)]
    pub tls_handshake_timeout: Duration,

    /// Send TEXT to each new connection before echoing (after the header with
    /// --proxy-protocol). {hostname} and {worker} expand; so do \n, \r, \t and \\.
    /// At most 64K after expansion [default: off].
    #[arg(long, env = "BANNER", value_name = "TEXT", value_parser = parse_banner, allow_hyphen_values = true)]
    pub banner: Option<String>,
}

/// A banner template: its escapes must be known, and it must fit the limit even before the
/// placeholders expand.
fn parse_banner(s: &str) -> Result<String, String> {
    let bytes = crate::server::banner_bytes(s, "", 0)?;
    if bytes.len() > crate::server::BANNER_MAX {
        return Err(format!(
            "{} bytes is more than the limit of 64K",
            bytes.len()
        ));
    }
    Ok(s.to_string())
}

/// A header or handshake timeout: more than zero, at most an hour.
fn parse_header_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("'{s}' is more than the limit of 1h"));
    }
    Ok(d)
}

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("'{s}' is not an IP address and port, e.g. 127.0.0.1:9100 or [::]:9100")
    })
}

fn parse_workers(s: &str) -> Result<NonZeroUsize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of workers"))?;
    match NonZeroUsize::new(n) {
        Some(n) if n.get() <= 1024 => Ok(n),
        Some(_) => Err(format!("{n} workers is more than the limit of 1024")),
        None => Err("must be at least 1".into()),
    }
}

fn parse_udp_port(s: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not a port number (0-65535)"))
}

fn parse_udp_rate(s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not a whole number of replies per second (0: unlimited)"))
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number of connections")),
    }
}

/// `--max-pending`: a size of at most [`crate::server::MAX_PENDING_LIMIT`].
fn parse_max_pending(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n > crate::server::MAX_PENDING_LIMIT {
        return Err(format!(
            "'{s}' is more than the limit of {}M per client",
            crate::server::MAX_PENDING_LIMIT >> 20
        ));
    }
    Ok(n)
}

/// `--notsent-lowat`: 0 (the kernel's default) or a size up to 1G.
fn parse_notsent_lowat(s: &str) -> Result<u32, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    let n = parse_size(s)?;
    if n > NOTSENT_LOWAT_LIMIT {
        return Err(format!("'{s}' is more than the limit of 1G"));
    }
    Ok(n as u32)
}

/// The largest `--notsent-lowat` (it must fit the kernel's `int`).
const NOTSENT_LOWAT_LIMIT: usize = 1 << 30;

/// Byte sizes: `65536`, `64K`, `1M` (binary units).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num
        .trim_end_matches(['i', 'B'])
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 65536, 256K, 1M"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(bytes)
}

impl Cli {
    pub fn log_level(&self) -> Level {
        if self.verbose {
            Level::Debug
        } else if self.quiet {
            Level::Warn
        } else {
            self.log_level.unwrap_or(Level::Info)
        }
    }

    pub fn config(&self) -> Config {
        Config {
            host: self.host,
            port: self.port,
            workers: self
                .max_listeners
                .map_or_else(num_cpus::get, NonZeroUsize::get),
            backlog: self.backlog,
            max_pending: self.max_pending,
            notsent_lowat: self.notsent_lowat,
            shutdown_timeout: self.shutdown_timeout,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            stats_interval: self.stats_interval,
            pin_cpus: self.pin_cpus,
            splice: match self.splice {
                SpliceWhen::Auto => crate::conn::Splice::Auto,
                SpliceWhen::On => crate::conn::Splice::On,
                SpliceWhen::Off => crate::conn::Splice::Off,
            },
            max_conns_per_ip: self.max_conns_per_ip,
            accept_rate_per_ip: self.accept_rate_per_ip,
            ipv6_prefix: self.ipv6_prefix,
            proxy_protocol: self.proxy_protocol,
            proxy_header_timeout: self.proxy_header_timeout,
            udp_port: self.udp_port,
            udp_rate: self.udp_rate,
            banner: self.banner.clone(),
            metrics_addr: self.metrics_addr,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The TLS settings, with the certificate and key loaded and checked: call before anything
    /// listens. `Err` is the message for a usage error (exit 2), naming the flag and the file.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Result<Option<crate::tls::TlsSettings>, String> {
        let Some(port) = self.tls_port else {
            return Ok(None);
        };
        if port != 0 && port == self.port {
            return Err(format!(
                "--tls-port {port}: the same port as --port; give TLS a port of its own"
            ));
        }
        // clap's `requires` guarantees both paths with --tls-port.
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Err("--tls-port needs --tls-cert and --tls-key".into());
        };
        let reloader = crate::tls::TlsReloader::load(cert, key).map_err(|e| e.to_string())?;
        Ok(Some(crate::tls::TlsSettings {
            port,
            reloader,
            handshake_timeout: self.tls_handshake_timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("256K"), Ok(256 * 1024));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(
            parse_size("1MiB"),
            Err("'1MiB' is not a size: use e.g. 65536, 256K, 1M".into())
        );
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_max_pending("512M"), Ok(512 << 20));
        assert!(parse_max_pending("513M").is_err());
        assert_eq!(parse_notsent_lowat("0"), Ok(0));
        assert_eq!(parse_notsent_lowat("16K"), Ok(16 << 10));
        assert_eq!(parse_notsent_lowat("1G"), Ok(1 << 30));
        assert!(parse_notsent_lowat("1025M").is_err());
        assert!(parse_notsent_lowat("-1").is_err());
    }

    #[test]
    fn defaults_and_aliases() {
        let cli = Cli::try_parse_from(["epoll-echo", "--max-listeners", "3"]).unwrap();
        assert_eq!(cli.config().workers, 3);
        let cli = Cli::try_parse_from(["epoll-echo", "--maxListeners", "2", "-p", "0"]).unwrap();
        assert_eq!((cli.config().workers, cli.config().port), (2, 0));
        let c = Cli::try_parse_from(["epoll-echo"]).unwrap().config();
        assert_eq!(c.max_pending, 256 * 1024);
        assert_eq!(c.notsent_lowat, crate::server::DEFAULT_NOTSENT_LOWAT);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.backlog, 1024);
        assert_eq!((c.udp_port, c.udp_rate), (None, 0), "UDP is off by default");
    }

    #[test]
    fn udp_flags() {
        let c = Cli::try_parse_from(["epoll-echo", "--udp-port", "0", "--udp-rate", "50"])
            .unwrap()
            .config();
        assert_eq!((c.udp_port, c.udp_rate), (Some(0), 50));
        for bad in [
            ["--udp-port", "70000"],
            ["--udp-port", "-1"],
            ["--udp-rate", "-5"],
            ["--udp-rate", "lots"],
        ] {
            let e = Cli::try_parse_from(["epoll-echo", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[1]), "{e}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_flags_need_each_other() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["epoll-echo"], args].concat());
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.tls_handshake_timeout, Duration::from_secs(10));
        assert!(cli.tls().unwrap().is_none());
        for bad in [
            &["--tls-port", "8443"][..],
            &["--tls-port", "8443", "--tls-cert", "c.pem"],
            &["--tls-cert", "c.pem", "--tls-key", "k.pem"],
            &["--tls-key", "k.pem"],
            &["--tls-handshake-timeout", "0"],
            &["--tls-handshake-timeout", "2h"],
            &["--tls-handshake-timeout", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let cli = parse(&["--tls-port", "8443", "--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert_eq!(cli.tls_port, Some(8443));
        let e = parse(&[
            "-p",
            "8443",
            "--tls-port",
            "8443",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .unwrap()
        .tls()
        .unwrap_err();
        assert!(e.starts_with("--tls-port 8443: the same port"), "{e}");
    }
}
