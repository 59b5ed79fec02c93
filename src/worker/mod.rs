//! One worker thread: its own SO_REUSEPORT listener, a private epoll instance, the read end of
//! its wake pipe, and the connections it accepted. Workers share nothing on the hot path; the
//! only shared writes are the connection count (on accept and close) and each worker's own,
//! cache-padded stats slot (once per loop turn).
//!
//! The rooms:
//! - [`event_loop`]: `epoll_wait`, token dispatch, the run queue, timers;
//! - [`accept`]: the listener, accepting and admission (`--max-connections`, the EMFILE
//!   reserve, rate-limited refusals) — per-client admission rules plug in at `admit`;
//! - [`conns`]: the connections and their scheduling (run queue, idle timeout, drain) without
//!   fds, so the simulator drives the same code; [`table`]: slab slots + activity list + run
//!   queue, generic over the socket handle;
//! - [`service`]: one connection's turn, the only place its actions become syscalls;
//! - [`drain`]: the shutdown rules; [`idle`]: the idle timeout; [`throttle`]: warnings.
//! - `tls` (`--tls-port`): the TLS listener's side — a second [`accept::Acceptor`] under its
//!   own token, sharing the admission code; each connection it accepts gets a TLS stage.
//!
//! # The edge-triggered contract
//!
//! Clients inherit SO_OOBINLINE from the listener (urgent bytes are ordinary stream bytes) and
//! registered once, with `EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET`, never touched
//! with `epoll_ctl` again. An edge is reported once, so the connection remembers it
//! ([`crate::conn::Conn::on_readiness`]) until the socket says otherwise:
//!
//! - **Readable** stays set until a read returns `EAGAIN`, `0` (EOF), or *short* — fewer bytes
//!   than asked for. A short read means the receive queue was emptied; any byte that arrives
//!   later raises a new edge, so no read is spent just to hear `EAGAIN`. Two exceptions, where
//!   a short read proves nothing: after `EPOLLRDHUP` (no further edge will come) the worker
//!   reads on to EOF, and after `EPOLLPRI` (a read stops at the urgent mark, leaving the bytes
//!   behind it queued) it reads on to `EAGAIN`.
//! - **Writable** stays set until a send is short or returns `EAGAIN`; what the socket did not
//!   take goes to the connection's pending output, and the next `EPOLLOUT` edge flushes it.
//! - **Backpressure**: while pending output exceeds `--max-pending` (a bulk stream: while any
//!   is pending), the worker stops reading that client (readable stays set), so TCP flow
//!   control slows the sender; when EPOLLOUT drains the pending output, reading resumes.
//!   Memory per client ≤ cap + one read buffer.
//! - **Fairness**: one turn reads at most [`TURN_BUDGET`] bytes from a connection. A connection
//!   still readable after its budget goes to the back of the run queue, and the worker polls
//!   epoll without blocking until the queue is empty, so a fast sender cannot starve others.
//! - **Splice** (`--splice`; `auto`: paths with an MSS below 16 KiB, not loopback): a
//!   connection whose read filled the buffer is a bulk stream; once it knows its MSS, while it
//!   stays one, it is echoed socket → worker pipe → socket with splice(2), and
//!   only `EAGAIN` counts as drained (a short splice may just have run out of pipe slots). The
//!   pipe is empty after every call; if it cannot be emptied, the worker stops splicing.
//!
//! The listener is level-triggered: each turn accepts at most [`ACCEPT_BATCH`] clients and
//! epoll reports it again while its backlog is not empty.

pub mod accept;
pub mod conns;
pub mod drain;
mod event_loop;
pub mod idle;
pub mod per_ip;
pub mod service;
pub mod table;
pub mod throttle;
#[cfg(feature = "tls")]
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Params, TICK, Tick};
use crate::listeners::Kind;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::sys;
use accept::Acceptor;
use conns::Conns;
use service::SplicePipe;

use crate::udp::{UdpConfig, UdpEcho};

/// The worker's one read buffer, shared by all its connections.
pub const BUF_SIZE: usize = 64 * 1024;
/// Bytes read from one connection per loop turn before the others get their turn.
pub const TURN_BUDGET: usize = BUF_SIZE;
/// Connections accepted per loop turn.
pub const ACCEPT_BATCH: usize = 128;
const EVENTS: usize = 1024;
/// Descriptors a worker holds besides its clients: listener, its duplicate kept for restarts
/// (`listeners::Set`), epoll, both wake-pipe ends, the reserve descriptor — and the two ends of
/// its splice pipe with `--splice`.
pub fn fds_per_worker(splice: bool) -> u64 {
    6 + if splice { 2 } else { 0 }
}

/// Descriptors a worker's TLS listener adds (`--tls-port`): the listener and its acceptor's
/// reserve descriptor.
pub const TLS_FDS_PER_WORKER: u64 = 2;

/// What one worker needs to know, fixed at startup.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: usize,
    pub addr: SocketAddr,
    pub backlog: i32,
    pub max_pending: usize,
    /// `TCP_NOTSENT_LOWAT` for the plain-TCP listener (inherited by accepted sockets); 0: the
    /// kernel's. The TLS listener keeps the kernel's.
    pub notsent_lowat: u32,
    pub max_connections: usize,
    /// Zero disables the idle timeout.
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub pin_cpu: Option<usize>,
    /// Which bulk streams splice(2) through a per-worker pipe (none: no pipe).
    pub splice: crate::conn::Splice,
    /// The UDP echo socket (`--udp-port`), if on.
    pub udp: Option<UdpConfig>,
    /// Per-client admission (`--max-conns-per-ip`, `--accept-rate-per-ip`, `--proxy-protocol`).
    pub per_ip: per_ip::PerIpConfig,
    /// `--banner`, expanded for this worker: sent to each new connection before any echo.
    pub banner: Option<Arc<[u8]>>,
    /// The TLS listener (`--tls-port`), if on.
    #[cfg(feature = "tls")]
    pub tls: Option<tls::TlsWorkerConfig>,
}

/// Which of a worker's listeners: each has its own [`Acceptor`], sharing the admission code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listen {
    Plain,
    Tls,
}

/// The epoll token kinds. Clients use their slot index; the rest sit at the top of the range.
/// A new kind (a TLS listener, a UDP socket) is one more variant and constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Wake,
    Listener(Listen),
    Udp,
    Conn(u32),
}

impl Token {
    const WAKE: u64 = u64::MAX;
    const LISTENER: u64 = u64::MAX - 1;
    const UDP: u64 = u64::MAX - 2;
    const TLS_LISTENER: u64 = u64::MAX - 3;

    fn encode(self) -> u64 {
        match self {
            Token::Wake => Self::WAKE,
            Token::Listener(Listen::Plain) => Self::LISTENER,
            Token::Listener(Listen::Tls) => Self::TLS_LISTENER,
            Token::Udp => Self::UDP,
            Token::Conn(i) => u64::from(i),
        }
    }

    fn decode(t: u64) -> Token {
        match t {
            Self::WAKE => Token::Wake,
            Self::LISTENER => Token::Listener(Listen::Plain),
            Self::TLS_LISTENER => Token::Listener(Listen::Tls),
            Self::UDP => Token::Udp,
            i => Token::Conn(i as u32),
        }
    }
}

/// The worker's clock: the coarse monotonic time of this loop pass, and the same in ticks.
struct Clock {
    epoch: Duration,
    now: Duration,
    tick: Tick,
}

impl Clock {
    fn new() -> Clock {
        let now = sys::coarse_now();
        Clock {
            epoch: now,
            now,
            tick: 0,
        }
    }

    fn update(&mut self) {
        self.now = sys::coarse_now();
        let ticks = (self.now.saturating_sub(self.epoch).as_nanos() / TICK.as_nanos()) as u64;
        self.tick = ticks.min(u64::from(Tick::MAX)) as Tick;
    }

    /// The monotonic time at which tick `t` begins (saturating far in the future).
    fn at(&self, t: u64) -> Duration {
        let far = Duration::from_secs(u64::from(u32::MAX));
        TICK.checked_mul(t.min(u64::from(u32::MAX)) as u32)
            .and_then(|d| self.epoch.checked_add(d))
            .unwrap_or(far)
    }
}

pub struct Worker {
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    epoll: sys::Epoll,
    wake: OwnedFd,
    acceptor: Acceptor,
    /// The TLS listener's acceptor (`--tls-port`).
    tls_acceptor: Option<Acceptor>,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsSide>,
    conns: Conns<OwnedFd>,
    buf: Box<[u8]>,
    pipe: Option<SplicePipe>,
    events: Box<[sys::Event]>,
    counters: Counters,
    clock: Clock,
    /// The UDP echo socket, and whether it has datagrams left to serve (an edge arrived, or
    /// its last turn ended with its budget spent).
    udp: Option<UdpEcho>,
    udp_ready: bool,
    per_ip: per_ip::PerIp,
}

impl Worker {
    /// Binds this worker's listener and sets up its epoll instance. Runs on the worker thread.
    pub fn bind(cfg: WorkerConfig, shared: Arc<Shared>, wake: OwnedFd) -> io::Result<Worker> {
        if let Some(cpu) = cfg.pin_cpu {
            sys::pin_to_cpu(cpu).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("worker {}: pin to CPU {cpu}: {e}", cfg.id),
                )
            })?;
        }
        let listener: OwnedFd =
            crate::listeners::open(Kind::Tcp, cfg.id, cfg.addr, cfg.backlog, &shared.listeners)?
                .into();
        let epoll = sys::Epoll::new()?;
        let acceptor = Acceptor::new(
            listener,
            &epoll,
            Token::Listener(Listen::Plain).encode(),
            cfg.notsent_lowat,
        )?;
        // The TLS listener beside the plain one, in the same epoll instance.
        #[cfg(feature = "tls")]
        let (tls_acceptor, tls) = match &cfg.tls {
            Some(t) => {
                // Inherited in a graceful restart, like the plain one.
                let listener: OwnedFd = crate::listeners::open(
                    Kind::Tls,
                    cfg.id,
                    t.addr,
                    cfg.backlog,
                    &shared.listeners,
                )?
                .into();
                let token = Token::Listener(Listen::Tls).encode();
                (
                    // The kernel's default: TLS output always goes through pending output
                    // (no read-when-sent rule to pair with), and the mark measured 1.2× the
                    // server CPU per GB on loopback (README, "Bulk streams").
                    Some(Acceptor::new(listener, &epoll, token, 0)?),
                    Some(tls::TlsSide::new(t)),
                )
            }
            None => (None, None),
        };
        #[cfg(not(feature = "tls"))]
        let tls_acceptor = None;
        epoll.add(wake.as_fd(), sys::EPOLLIN, Token::Wake.encode())?;
        // This worker's UDP socket beside its listener, edge-triggered like the clients.
        let udp = match &cfg.udp {
            Some(udp) => {
                let u = UdpEcho::open(cfg.id, udp, &shared.listeners)?;
                epoll.add(
                    u.fd().as_fd(),
                    sys::EPOLLIN | sys::EPOLLET,
                    Token::Udp.encode(),
                )?;
                Some(u)
            }
            None => None,
        };
        // Without a pipe (descriptors short at startup), bulk streams are copied instead.
        let pipe = (cfg.splice != crate::conn::Splice::Off)
            .then(sys::pipe)
            .and_then(Result::ok)
            .map(|(r, w)| {
                // Room for a whole splice even when it arrives in small fragments.
                let _ = sys::set_pipe_size(w.as_fd(), 4 * BUF_SIZE);
                SplicePipe { r, w }
            });
        let params = Params {
            max_pending: cfg.max_pending,
            read_len: BUF_SIZE,
            budget: TURN_BUDGET,
            splice: if pipe.is_some() {
                cfg.splice
            } else {
                crate::conn::Splice::Off
            },
        };
        Ok(Worker {
            conns: Conns::new(params, cfg.idle_timeout),
            per_ip: per_ip::PerIp::new(cfg.per_ip.clone()),
            cfg,
            shared,
            epoll,
            wake,
            acceptor,
            tls_acceptor,
            #[cfg(feature = "tls")]
            tls,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pipe,
            events: vec![sys::Event::zeroed(); EVENTS].into_boxed_slice(),
            counters: Counters::default(),
            clock: Clock::new(),
            udp,
            udp_ready: false,
        })
    }

    /// The UDP echo socket's address, if `--udp-port` is on.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(UdpEcho::local_addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    /// The TLS listener's address, if `--tls-port` is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_acceptor.as_ref().map(Acceptor::local_addr)
    }
}
