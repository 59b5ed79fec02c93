//! Starts the workers, hands out the shutdown handle, joins the workers.
//!
//! Startup binds one worker at a time, each on its own thread with its own SO_REUSEPORT
//! listener; with port 0 the first worker's kernel-chosen port is given to the others. If any
//! worker fails to bind, the ones already running are stopped and the error is returned: the
//! server is either fully listening or not running at all.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits::{AcceptRate, ConnLimit};
use crate::log::Level;
use crate::shared::{ReloadHook, Shared};
use crate::stats::{self, Snapshot, WorkerStats};
use crate::udp::UdpConfig;
use crate::worker::per_ip::PerIpConfig;
use crate::worker::{TLS_FDS_PER_WORKER, Worker, WorkerConfig, fds_per_worker};
use crate::{listeners, log, metrics, sys};

/// The largest `--max-pending`: a connection's pending output must stay within what its
/// buffer's `u32` cursors address (`conn::PENDING_MAX`), with room for a read and growth.
pub const MAX_PENDING_LIMIT: usize = 512 << 20;

/// The default `--notsent-lowat`: 16 KiB of unsent echo per socket (see README, "Bulk
/// streams"). 4, 16 and 64 KiB measured alike on loopback, 128 KiB and none worse; 64 and
/// 128 KiB cost veth throughput with four streams.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 16 * 1024;
const _: () =
    assert!(2 * (MAX_PENDING_LIMIT + crate::worker::BUF_SIZE) <= crate::conn::PENDING_MAX);

/// Descriptors for the rest of the process: stdio, the signal handler's pipe, and headroom.
pub const FDS_FOR_PROCESS: u64 = 24;

/// Everything the server needs; the command line fills it in (`cli`), tests build it directly.
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: dual-stack `::` where IPv6 exists, else `0.0.0.0` ([`listeners::default_host`]).
    pub host: Option<IpAddr>,
    pub port: u16,
    pub workers: usize,
    pub backlog: i32,
    /// Clamped to [`MAX_PENDING_LIMIT`].
    pub max_pending: usize,
    /// `--notsent-lowat`, set on every plain-TCP listener; 0: the kernel's default.
    pub notsent_lowat: u32,
    pub shutdown_timeout: Duration,
    /// `None`: derived from the open-files limit.
    pub max_connections: Option<usize>,
    /// Zero disables the idle timeout.
    pub idle_timeout: Duration,
    pub stats_interval: Option<Duration>,
    pub pin_cpus: bool,
    /// `--splice`: which bulk streams splice.
    pub splice: crate::conn::Splice,
    /// `--max-conns-per-ip`; 0: unlimited.
    pub max_conns_per_ip: u32,
    /// `--accept-rate-per-ip`; 0: unlimited.
    pub accept_rate_per_ip: u32,
    /// `--ipv6-prefix`, 1..=128.
    pub ipv6_prefix: u8,
    pub proxy_protocol: bool,
    pub proxy_header_timeout: Duration,
    /// UDP echo port (`--udp-port`, 0: kernel-chosen); `None`: no UDP.
    pub udp_port: Option<u16>,
    /// Replies per second per source IP (`--udp-rate`); 0: unlimited.
    pub udp_rate: u32,
    /// Serve Prometheus metrics here (`--metrics-addr`); `None`: off.
    pub metrics_addr: Option<SocketAddr>,
    /// `--banner`: the template sent to each new connection; `None`: no banner.
    pub banner: Option<String>,
    /// The TLS listener (`--tls-port`), its certificate and handshake timeout.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: None,
            port: 8080,
            workers: num_cpus::get(),
            backlog: 1024,
            max_pending: 256 * 1024,
            notsent_lowat: DEFAULT_NOTSENT_LOWAT,
            shutdown_timeout: Duration::from_secs(5),
            max_connections: None,
            idle_timeout: Duration::from_secs(300),
            stats_interval: None,
            pin_cpus: false,
            splice: crate::conn::Splice::Off,
            max_conns_per_ip: 0,
            accept_rate_per_ip: 0,
            ipv6_prefix: crate::limits::DEFAULT_IPV6_PREFIX,
            proxy_protocol: false,
            proxy_header_timeout: Duration::from_secs(5),
            udp_port: None,
            udp_rate: 0,
            metrics_addr: None,
            banner: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Asks the server to shut down gracefully. Cheap to clone, safe from a signal-handling thread.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Wakes every worker. Returns `false` if shutdown had already been asked for.
    pub fn shutdown(&self) -> bool {
        self.0.request_stop()
    }

    /// Shutdown after a graceful restart's new process took the listeners over: as
    /// [`ShutdownHandle::shutdown`], but a connection that is silent right now is not closed
    /// at once — it may have been accepted a moment ago, its first bytes still in flight — it
    /// gets one whole quiet drain tick, like a busy one.
    pub fn hand_over(&self) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        self.0.set_handing_over();
        self.shutdown()
    }

    /// True once shutdown has been asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.0.stop_requested()
    }

    /// SIGHUP: runs every reload hook ([`Server::on_reload`]) and logs what each one did.
    /// Serving goes on whatever they return.
    pub fn reload(&self) {
        let hooks = self
            .0
            .reload_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if hooks.is_empty() {
            log!(Level::Info, "reload: nothing to reload");
        }
        for hook in hooks.iter() {
            match hook() {
                Ok(what) => log!(Level::Info, "reload: {what}"),
                Err(e) => log!(Level::Error, "reload failed, keeping the old state: {e}"),
            }
        }
    }

    /// The listeners in use (for a graceful restart to hand on).
    pub fn listeners(&self) -> &listeners::Set {
        &self.0.listeners
    }
}

/// A server whose wake pipes exist but whose listeners are not bound yet.
pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    wake_readers: Vec<OwnedFd>,
}

/// Totals at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub totals: Snapshot,
    pub duration: Duration,
}

/// A listening server.
pub struct Running {
    addr: SocketAddr,
    udp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    max_connections: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    stats_thread: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    metrics: Option<metrics::Endpoint>,
    started: Instant,
}

impl Server {
    /// Creates the wake pipes. Install the signal handler on [`Server::shutdown_handle`]
    /// before [`Server::start`], so a signal during startup is not lost.
    pub fn new(mut config: Config) -> io::Result<Server> {
        // Every inherited socket needs a worker to serve it (see `listeners`).
        let inherited = listeners::inherited_count();
        if inherited > config.workers {
            log!(
                Level::Info,
                "running {inherited} workers, one per inherited listener (configured: {})",
                config.workers
            );
            config.workers = inherited;
        }
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "need at least one worker",
            ));
        }
        let mut wakers = Vec::with_capacity(config.workers);
        let mut wake_readers = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let (r, w) = sys::pipe()?;
            wake_readers.push(r);
            wakers.push(w);
        }
        let shared = Arc::new(Shared::new(wakers));
        let server = Server {
            config,
            shared,
            wake_readers,
        };
        // SIGHUP reloads the TLS certificate and key from the same paths, for new connections;
        // open ones keep theirs. A bad pair keeps the current one (the error names the file).
        #[cfg(feature = "tls")]
        if let Some(tls) = &server.config.tls {
            let reloader = tls.reloader.clone();
            server.on_reload(Box::new(move || {
                reloader
                    .reload()
                    .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                Ok(format!(
                    "reloaded TLS certificate from {} and key from {}",
                    reloader.cert_path().display(),
                    reloader.key_path().display()
                ))
            }));
        }
        Ok(server)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Adds something for SIGHUP to reload (TLS: `server.on_reload(Box::new(move || ...))`).
    pub fn on_reload(&self, hook: ReloadHook) {
        self.shared
            .reload_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Binds every worker's listener and starts serving.
    pub fn start(self) -> io::Result<Running> {
        let Server {
            config,
            shared,
            wake_readers,
        } = self;
        let nofile = sys::raise_nofile_limit()?;
        // Bound first: a bad --metrics-addr fails before any echo listener exists.
        let metrics = config
            .metrics_addr
            .map(|a| metrics::Endpoint::start(a, shared.clone()))
            .transpose()?;
        let splice = config.splice != crate::conn::Splice::Off;
        if splice {
            sys::ignore_sigpipe();
        }
        let udp_fds = u64::from(config.udp_port.is_some()); // the UDP socket (#12)
        #[cfg(feature = "tls")]
        let tls_on = config.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls_on = false;
        let tls_fds = if tls_on { TLS_FDS_PER_WORKER } else { 0 };
        let reserved =
            (fds_per_worker(splice) + udp_fds + tls_fds) * config.workers as u64 + FDS_FOR_PROCESS;
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| nofile.saturating_sub(reserved).max(1) as usize);
        let budget = nofile.saturating_sub(reserved);
        if max_connections as u64 > budget {
            log!(
                Level::Warn,
                "--max-connections {max_connections} is above the {budget} descriptors left by the open-files limit ({nofile}): accept will fail with EMFILE before the limit is reached (raise ulimit -n)"
            );
        }
        let cpus = num_cpus::get();
        let host = config.host.unwrap_or_else(listeners::default_host);
        let mut addr = SocketAddr::new(host, config.port);
        let mut udp_addr = config.udp_port.map(|p| SocketAddr::new(host, p));
        #[cfg(feature = "tls")]
        let mut tls_addr = config.tls.as_ref().map(|t| SocketAddr::new(host, t.port));
        #[cfg(not(feature = "tls"))]
        let mut tls_addr: Option<SocketAddr> = None;
        let mut workers = Vec::with_capacity(config.workers);
        // The per-IP tables are global: one client's connections land on every worker.
        let per_ip = PerIpConfig {
            conns: NonZeroU32::new(config.max_conns_per_ip)
                .map(|n| ConnLimit::new(n, config.ipv6_prefix)),
            rate: NonZeroU32::new(config.accept_rate_per_ip).map(|n| {
                AcceptRate::new(n, crate::limits::DEFAULT_RATE_CAPACITY, config.ipv6_prefix)
            }),
            proxy: config.proxy_protocol.then_some(config.proxy_header_timeout),
        };
        // The host name is read once; each worker's banner is expanded once, not per client.
        let hostname = config
            .banner
            .as_ref()
            .map(|_| hostname())
            .unwrap_or_default();
        for (id, wake) in wake_readers.into_iter().enumerate() {
            let banner = match &config.banner {
                Some(t) => Some(Arc::<[u8]>::from(banner_bytes(t, &hostname, id).map_err(
                    |e| io::Error::new(io::ErrorKind::InvalidInput, format!("--banner: {e}")),
                )?))
                .filter(|b| !b.is_empty()),
                None => None,
            };
            if banner.as_ref().is_some_and(|b| b.len() > BANNER_MAX) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--banner: more than 64K once expanded",
                ));
            }
            let cfg = WorkerConfig {
                id,
                addr,
                backlog: config.backlog,
                max_pending: config.max_pending.min(MAX_PENDING_LIMIT),
                notsent_lowat: config.notsent_lowat,
                max_connections,
                idle_timeout: config.idle_timeout,
                shutdown_timeout: config.shutdown_timeout,
                pin_cpu: config.pin_cpus.then_some(id % cpus),
                splice: config.splice,
                udp: udp_addr.map(|addr| UdpConfig {
                    addr,
                    rate: config.udp_rate,
                    workers: config.workers,
                }),
                per_ip: per_ip.clone(),
                banner,
                #[cfg(feature = "tls")]
                tls: config.tls.as_ref().zip(tls_addr).map(|(t, addr)| {
                    crate::worker::tls::TlsWorkerConfig {
                        addr,
                        reloader: t.reloader.clone(),
                        handshake_timeout: t.handshake_timeout,
                    }
                }),
            };
            let (tx, rx) = mpsc::channel();
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || match Worker::bind(cfg, sh.clone(), wake) {
                    Ok(w) => {
                        let _ = tx.send(Ok((w.local_addr(), w.udp_addr(), w.tls_addr())));
                        let r = w.run();
                        if let Err(e) = &r {
                            // Never leave a half-running server: take the others down too.
                            log!(Level::Error, "{e}");
                            ShutdownHandle(sh).shutdown();
                        }
                        r
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        Ok(())
                    }
                });
            let bound = match spawned {
                Ok(handle) => {
                    workers.push(handle);
                    rx.recv().unwrap_or_else(|_| {
                        Err(io::Error::other(format!("worker {id} died while starting")))
                    })
                }
                Err(e) => Err(io::Error::new(e.kind(), format!("spawn worker {id}: {e}"))),
            };
            match bound {
                Ok((a, u, t)) => (addr, udp_addr, tls_addr) = (a, u, t),
                Err(e) => {
                    ShutdownHandle(shared.clone()).shutdown();
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(e);
                }
            }
        }
        log!(
            Level::Info,
            "listening on {addr} with {} worker(s); max-connections {max_connections} (open-files limit {nofile}), max-pending {} bytes, idle-timeout {}",
            config.workers,
            config.max_pending,
            if config.idle_timeout.is_zero() {
                "off".to_string()
            } else {
                format!("{:?}", config.idle_timeout)
            },
        );
        if let Some(u) = udp_addr {
            let rate = match config.udp_rate {
                0 => "unlimited".to_string(),
                n => format!("{n}/s per source"),
            };
            log!(
                Level::Info,
                "UDP echo on {u} with {} worker(s); udp-rate {rate}",
                config.workers
            );
        }
        #[cfg(feature = "tls")]
        if let (Some(t), Some(a)) = (&config.tls, tls_addr) {
            log!(
                Level::Info,
                "TLS (1.2, 1.3) on {a} with {} worker(s); certificate {}, key {}, handshake-timeout {:?}",
                config.workers,
                t.reloader.cert_path().display(),
                t.reloader.key_path().display(),
                t.handshake_timeout
            );
        }
        let stats_thread = config.stats_interval.filter(|d| !d.is_zero()).map(|every| {
            let (tx, rx) = mpsc::channel::<()>();
            let sh = shared.clone();
            let handle = std::thread::Builder::new()
                .name("stats".into())
                .spawn(move || stats_loop(&sh, every, &rx))
                .expect("spawn stats thread");
            (tx, handle)
        });
        Ok(Running {
            addr,
            udp_addr,
            tls_addr,
            max_connections,
            shared,
            workers,
            stats_thread,
            metrics,
            started: Instant::now(),
        })
    }
}

/// The largest banner, expanded (`--banner`).
pub const BANNER_MAX: usize = 64 * 1024;

/// The banner `template` for worker `worker` on host `hostname`: `{hostname}` and `{worker}`
/// expand, and the escapes `\n`, `\r`, `\t`, `\\` (so a shell or an environment variable
/// can carry a line end). Any other backslash escape is an error naming it.
pub fn banner_bytes(template: &str, hostname: &str, worker: usize) -> Result<Vec<u8>, String> {
    let mut text = String::with_capacity(template.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        text.push(match chars.next() {
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('\\') => '\\',
            Some(o) => {
                return Err(format!(
                    "unknown escape '\\{o}' (use \\n, \\r, \\t or \\\\)"
                ));
            }
            None => return Err("ends in a lone '\\' (use \\\\ for a backslash)".into()),
        });
    }
    Ok(text
        .replace("{hostname}", hostname)
        .replace("{worker}", &worker.to_string())
        .into_bytes())
}

/// This machine's name for `{hostname}`: /proc/sys/kernel/hostname (as `hostname` prints it,
/// also inside a container's UTS namespace), else gethostname(2).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim_end().to_string())
        .or_else(|_| sys::hostname())
        .unwrap_or_default()
}

fn stats_loop(shared: &Shared, every: Duration, stop: &mpsc::Receiver<()>) {
    let mut prev = Snapshot::default();
    let mut last = Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let now: Vec<Snapshot> = shared.stats.iter().map(WorkerStats::snapshot).collect();
        let secs = last.elapsed().as_secs_f64();
        eprintln!("{}", stats::line(&now, &prev, secs));
        prev = now.iter().fold(Snapshot::default(), |a, b| a + *b);
        last = Instant::now();
    }
}

impl Running {
    /// The address the workers listen on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP echo address (with the real port when 0 was asked for); `None` without UDP.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The TLS address (with the real port when 0 was asked for); `None` without TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Where `/metrics` is served (`--metrics-addr`, with the real port).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(metrics::Endpoint::local_addr)
    }

    /// Current totals across workers.
    pub fn stats(&self) -> Snapshot {
        stats::total(&self.shared.stats)
    }

    /// Waits until every worker has finished its graceful shutdown.
    pub fn wait(mut self) -> io::Result<Summary> {
        let result = self.join_all();
        result?;
        Ok(Summary {
            totals: stats::total(&self.shared.stats),
            duration: self.started.elapsed(),
        })
    }

    /// Joins the workers and the stats thread; the first worker error wins.
    fn join_all(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for (id, w) in std::mem::take(&mut self.workers).into_iter().enumerate() {
            let r = match w.join() {
                Ok(r) => r,
                Err(_) => Err(io::Error::other(format!("worker {id} panicked"))),
            };
            if let Err(e) = r
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        if let Some((tx, handle)) = self.stats_thread.take() {
            drop(tx);
            let _ = handle.join();
        }
        result
    }
}

/// A `Running` dropped without [`Running::wait`] (an embedder's early return, a failing test)
/// shuts its workers down gracefully and joins them, instead of leaving them serving.
impl Drop for Running {
    fn drop(&mut self) {
        if self.workers.is_empty() && self.stats_thread.is_none() {
            return;
        }
        self.shared.request_stop();
        let _ = self.join_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_expands_placeholders_and_escapes() {
        assert_eq!(
            banner_bytes("hi from {hostname} worker {worker}\\n", "box", 3).unwrap(),
            b"hi from box worker 3\n"
        );
        assert_eq!(
            banner_bytes("a\\tb\\r\\n\\\\", "", 0).unwrap(),
            b"a\tb\r\n\\"
        );
        assert_eq!(banner_bytes("{worker}{worker}", "", 12).unwrap(), b"1212");
        assert!(
            banner_bytes("bad \\x", "", 0)
                .unwrap_err()
                .contains("'\\x'")
        );
        assert!(banner_bytes("trailing \\", "", 0).is_err());
        assert!(!hostname().is_empty());
    }
}
