//! UDP echo (RFC 862): one worker's SO_REUSEPORT UDP socket and its batch buffers.
//!
//! Each datagram is echoed whole, once, to the exact address it came from. The worker calls
//! [`UdpEcho::on_readable`] when the socket's edge fires (`EPOLLIN | EPOLLET`); one call
//! receives with `recvmmsg` and replies with `sendmmsg`, [`BATCH`] datagrams per syscall,
//! until the socket is drained or [`TURN_DATAGRAMS`] have been handled. It then returns
//! [`Turn::More`] and the worker gives its TCP clients their turn before calling again, so a
//! UDP flood cannot starve them.
//!
//! - **Drained**: a `recvmmsg` that returns fewer datagrams than asked emptied the queue; any
//!   datagram that arrives later raises a new edge (UDP wakes epoll on every enqueue).
//! - **No backpressure**: a reply the socket cannot take now (`EAGAIN`, `ENOBUFS`) is dropped
//!   and counted, with the rest of its batch; nothing is ever buffered in the server. A reply
//!   that fails on its own (unreachable, say) is skipped and the rest of the batch still sent.
//! - **Reflection loops**: no reply to the source ports of [`reply_allowed`]'s list.
//! - **Rate limit** (`--udp-rate N`): at most N replies per second per source IP
//!   ([`RateLimiter`], a fixed table of [`RATE_TABLE_SLOTS`] sources per worker; the kernel
//!   steers each source IP to one worker, see [`UdpEcho::bind`]).
//!
//! Memory per worker, fixed at startup: the batch, [`BATCH`] × 64 KiB of zeroed address space
//! (2 MiB; pages are touched only as large datagrams arrive, so small-datagram traffic keeps a
//! few pages resident), plus 512 KiB for the rate table when `--udp-rate` is on.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::listeners::{self, Kind};
use crate::log;
use crate::log::Level;
use crate::rate::RateLimiter;
use crate::stats::UdpCounters;
use crate::sys::udp::{self as sysudp, Batch};

/// Datagrams per `recvmmsg` / `sendmmsg`.
pub const BATCH: usize = 32;
/// Datagrams handled per call of [`UdpEcho::on_readable`] before TCP clients get their turn.
pub const TURN_DATAGRAMS: usize = 4 * BATCH;
/// Sources remembered by each worker's rate limiter (32 bytes each: 512 KiB).
pub const RATE_TABLE_SLOTS: usize = 16 * 1024;
/// Each receive slot holds the largest datagram (65,527 bytes over IPv6), rounded up.
const SLOT_SIZE: usize = 64 * 1024;

/// Source ports that never get a reply, and why:
/// - 0: not a valid source port; only forged or broken datagrams carry it.
/// - 7 echo, 13 daytime, 17 qotd, 19 chargen, 37 time, 11 systat (active users): services that
///   answer any datagram, so a reply to them would be answered again — a loop between two
///   servers that a single forged datagram starts and nothing ends.
/// - 53 DNS, 69 TFTP, 123 NTP: implementations of these were shown to answer errors with
///   errors in the same way ("Loop DoS", CVE-2024-2169).
///
/// Port 9 (discard) is not listed: discard never answers, so replying to it cannot loop.
/// [`reply_allowed`] also refuses the server's own port (two echo servers on one number).
pub const NO_REPLY_PORTS: [u16; 10] = [0, 7, 11, 13, 17, 19, 37, 53, 69, 123];

/// Whether a datagram from `src_port` may be answered by a server on `own_port`.
pub fn reply_allowed(src_port: u16, own_port: u16) -> bool {
    src_port != own_port && !NO_REPLY_PORTS.contains(&src_port)
}

/// What [`UdpEcho::on_readable`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The receive queue is empty: wait for the next edge.
    Drained,
    /// The turn's budget is spent with datagrams still queued: call again after the others.
    More,
}

/// What every worker's UDP socket needs, fixed at startup.
#[derive(Clone, Copy, Debug)]
pub struct UdpConfig {
    pub addr: SocketAddr,
    /// Replies per second per source IP; 0: unlimited.
    pub rate: u32,
    /// Workers (sockets in the `SO_REUSEPORT` group).
    pub workers: usize,
}

/// One worker's UDP echo socket.
pub struct UdpEcho {
    socket: OwnedFd,
    local_addr: SocketAddr,
    batch: Batch,
    /// Slots of the current batch that get a reply.
    keep: Vec<u32>,
    limiter: RateLimiter<IpAddr>,
    counters: UdpCounters,
}

impl UdpEcho {
    /// Worker `worker`'s socket: the one a graceful restart's parent handed on for it, if any
    /// (already bound, in the same `SO_REUSEPORT` group, with its queued datagrams), else a
    /// new one ([`UdpEcho::bind`]). Recorded in `set`, so the next restart hands it on.
    pub fn open(worker: usize, cfg: &UdpConfig, set: &listeners::Set) -> io::Result<UdpEcho> {
        let echo = match listeners::take_inherited(Kind::Udp, worker)? {
            Some(socket) => UdpEcho::from_socket(worker, cfg, socket)?,
            None => UdpEcho::bind(worker, cfg)?,
        };
        set.record(Kind::Udp, worker, echo.socket.as_fd())?;
        Ok(echo)
    }

    /// Creates worker `worker`'s socket: new → SO_REUSEPORT → nonblocking → bind. There is no
    /// SO_REUSEADDR: for UDP it has no TIME_WAIT to skip and would only let an unrelated
    /// socket share (and steal from) the port.
    ///
    /// With a rate limit and several workers, the first worker also makes the kernel spread
    /// datagrams over the group by source IP alone ([`sysudp::steer_by_source_ip`]), so each
    /// source meets one worker's limiter whatever ports it sends from, and the limit is exact.
    /// Without a limit the kernel's 4-tuple hash is kept: it spreads even one busy host's
    /// sockets over all workers.
    pub fn bind(worker: usize, cfg: &UdpConfig) -> io::Result<UdpEcho> {
        let (addr, rate) = (cfg.addr, cfg.rate);
        let step = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("worker {worker}: UDP {what}: {e}"))
        };
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(|e| step("create socket", e))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| step("set SO_REUSEPORT", e))?;
        crate::listeners::dual_stack(&socket, addr).map_err(|e| step("clear IPV6_V6ONLY", e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| step("set O_NONBLOCK", e))?;
        socket
            .bind(&addr.into())
            .map_err(|e| step(&format!("bind {addr}"), e))?;
        if worker == 0 && rate > 0 && cfg.workers > 1 {
            let sockets = u32::try_from(cfg.workers).unwrap_or(u32::MAX);
            if let Err(e) = sysudp::steer_by_source_ip(socket.as_fd(), sockets) {
                log!(
                    Level::Warn,
                    "UDP: cannot steer datagrams by source IP ({e}): --udp-rate applies per worker"
                );
            }
        }
        UdpEcho::from_socket(worker, cfg, socket)
    }

    fn from_socket(worker: usize, cfg: &UdpConfig, socket: Socket) -> io::Result<UdpEcho> {
        let step = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("worker {worker}: UDP {what}: {e}"))
        };
        let local_addr = socket
            .local_addr()
            .map_err(|e| step("getsockname", e))?
            .as_socket()
            .ok_or_else(|| io::Error::other(format!("worker {worker}: UDP socket has no IP")))?;
        Ok(UdpEcho {
            socket: socket.into(),
            local_addr,
            batch: Batch::new(BATCH, SLOT_SIZE),
            keep: Vec::with_capacity(BATCH),
            limiter: RateLimiter::new(cfg.rate, RATE_TABLE_SLOTS),
            counters: UdpCounters::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The socket, for registering with epoll.
    pub fn fd(&self) -> &OwnedFd {
        &self.socket
    }

    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// Echoes queued datagrams until the socket is drained or [`TURN_DATAGRAMS`] are done.
    /// `now` is the worker's monotonic clock, for the rate limiter.
    pub fn on_readable(&mut self, now: Duration) -> Turn {
        let mut handled = 0;
        while handled < TURN_DATAGRAMS {
            let n = match self.batch.recv(self.socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Drained,
                // A pending socket error (e.g. ICMP) is consumed by the failed call; there is
                // nothing to retry for it. Wait for the next edge.
                Err(_) => {
                    self.counters.errors += 1;
                    return Turn::Drained;
                }
            };
            handled += n;
            self.counters.received += n as u64;
            self.choose_replies(n, now);
            self.send_replies();
            if n < self.batch.slots() {
                return Turn::Drained;
            }
        }
        Turn::More
    }

    /// Fills `keep` with the slots of the `n` received datagrams that get a reply.
    fn choose_replies(&mut self, n: usize, now: Duration) {
        self.keep.clear();
        for i in 0..n {
            let Some(src) = self.batch.source(i) else {
                self.counters.errors += 1;
                continue;
            };
            if self.batch.truncated(i) {
                self.counters.errors += 1;
            } else if !reply_allowed(src.port(), self.local_addr.port()) {
                self.counters.drop_port += 1;
            } else if !self.limiter.allow(src.ip().to_canonical(), now) {
                self.counters.drop_rate += 1;
            } else {
                self.keep.push(i as u32);
            }
        }
    }

    /// Sends the replies in `keep`. A partial `sendmmsg` is retried with the rest: the next
    /// call either sends on, fails on the one bad datagram (skipped, counted), or finds the
    /// socket full (the rest dropped, counted). Each call makes progress: at most `keep.len()`
    /// + 1 calls.
    fn send_replies(&mut self) {
        let mut start = 0;
        while start < self.keep.len() {
            match self.batch.send(self.socket.as_fd(), &self.keep[start..]) {
                Ok(0) => {
                    // Not expected from Linux; treat like a full socket rather than spin.
                    self.counters.drop_full += (self.keep.len() - start) as u64;
                    return;
                }
                Ok(sent) => {
                    self.counters.echoed += sent as u64;
                    start += sent;
                }
                Err(e) if sysudp::is_full(&e) => {
                    self.counters.drop_full += (self.keep.len() - start) as u64;
                    return;
                }
                Err(_) => {
                    self.counters.errors += 1;
                    start += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn loop_prone_source_ports_get_no_reply() {
        for p in [0, 7, 11, 13, 17, 19, 37, 53, 69, 123] {
            assert!(!reply_allowed(p, 8080), "port {p}");
        }
        assert!(
            !reply_allowed(8080, 8080),
            "another echo server on our own port"
        );
        for p in [1, 9, 1024, 40000, 65535] {
            assert!(reply_allowed(p, 8080), "port {p}");
        }
        assert!(
            reply_allowed(7, 0) == reply_allowed(7, 7),
            "7 is refused either way"
        );
    }

    fn cfg(rate: u32) -> UdpConfig {
        UdpConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            rate,
            workers: 1,
        }
    }

    fn recv_within(s: &UdpSocket, buf: &mut [u8]) -> Option<usize> {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.recv(buf).ok()
    }

    /// Sends `count` datagrams from `client`, then runs the echo until they are all counted.
    fn pump(echo: &mut UdpEcho, sent_before: u64, count: u64) -> Vec<Turn> {
        let mut turns = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while echo.counters().received < sent_before + count {
            assert!(std::time::Instant::now() < deadline, "datagrams lost");
            turns.push(echo.on_readable(Duration::from_secs(100)));
        }
        turns
    }

    #[test]
    fn echoes_and_bounds_each_turn() {
        let mut echo = UdpEcho::bind(0, &cfg(0)).unwrap();
        let to = echo.local_addr();
        assert_eq!(echo.on_readable(Duration::ZERO), Turn::Drained);
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The default receive buffer holds well over TURN_DATAGRAMS + 1 small datagrams.
        let count = TURN_DATAGRAMS as u64 + 1;
        for i in 0..count {
            c.send_to(&i.to_be_bytes(), to).unwrap();
        }
        let turns = pump(&mut echo, 0, count);
        assert!(turns.contains(&Turn::More), "a long queue takes two turns");
        assert_eq!(echo.counters().echoed, count);
        let mut buf = [0u8; 16];
        for i in 0..count {
            assert_eq!(recv_within(&c, &mut buf), Some(8));
            assert_eq!(buf[..8], i.to_be_bytes(), "in order, intact");
        }
    }

    #[test]
    fn rate_limit_counts_drops_and_serves_other_sources() {
        let mut echo = UdpEcho::bind(0, &cfg(2)).unwrap();
        let to = echo.local_addr();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..5 {
            a.send_to(b"x", to).unwrap();
        }
        pump(&mut echo, 0, 5);
        let c = echo.counters();
        assert_eq!((c.echoed, c.drop_rate), (2, 3));
        let mut buf = [0u8; 4];
        assert!(recv_within(&a, &mut buf).is_some());
        assert!(recv_within(&a, &mut buf).is_some());
        assert_eq!(recv_within(&a, &mut buf), None, "the third is not answered");
    }

    #[test]
    fn a_failing_reply_does_not_cost_the_rest_of_the_batch() {
        let mut echo = UdpEcho::bind(0, &cfg(0)).unwrap();
        let to = echo.local_addr();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 3], to).unwrap();
        }
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while n < 3 {
            assert!(std::time::Instant::now() < deadline, "datagrams lost");
            n = echo.batch.recv(echo.socket.as_fd()).unwrap_or(0);
        }
        // The middle reply goes to the broadcast address without SO_BROADCAST: EACCES.
        echo.batch
            .set_source(1, "255.255.255.255:40000".parse().unwrap());
        echo.choose_replies(3, Duration::ZERO);
        echo.send_replies();
        let c = echo.counters();
        assert_eq!((c.echoed, c.errors), (2, 1), "{c:?}");
        let mut buf = [0u8; 8];
        assert_eq!(recv_within(&clients[0], &mut buf), Some(3));
        assert_eq!(
            recv_within(&clients[2], &mut buf),
            Some(3),
            "after the failure"
        );
        assert_eq!(buf[..3], [2u8; 3]);
    }
}
