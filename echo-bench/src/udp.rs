//! udp: N UDP sockets, each keeping `--window` datagrams in flight to an echo server.
//!
//! Every datagram is `--size` bytes: an 8-byte little-endian header `socket << 48 | seq`
//! (socket index in the run, per-socket sequence number), then bytes of a [`ByteStream`]
//! seeded by that header. A reply must be a datagram the socket sent and has not had back,
//! byte for byte; anything else (another length, a changed byte, a sequence number never sent
//! or already answered) is a corrupted reply: an error. A datagram unanswered for `--timeout`
//! counts as lost and frees its window slot; a reply that arrives after that counts as late
//! (neither an error nor a round trip). Latency runs from send to reply.
//!
//! Each socket is `connect`ed (the kernel then drops datagrams from other sources and reports
//! ICMP port-unreachable as ECONNREFUSED, counted as an error), nonblocking, and registered
//! edge-triggered for input and output in its thread's epoll instance. On an edge the socket is
//! drained (receive to EAGAIN) and refilled (send until the window is full or EAGAIN). After
//! `--duration` nothing new is sent; the run ends when every datagram is answered or lost.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::pattern::{ByteStream, mix};
use crate::report::{ErrorKind, Failure, Progress, Stats};
use crate::sys::{EPOLLET, EPOLLIN, EPOLLOUT, Epoll, Event};

/// Smallest datagram echo-bench can check: the 8-byte header.
pub const MIN_SIZE: usize = 8;
/// Largest UDP payload over IPv4.
pub const MAX_SIZE: usize = 65_507;
/// Sequence numbers live in the header's low 48 bits.
const SEQ_MASK: u64 = (1 << 48) - 1;
/// Replies received per socket per edge before the others get a turn.
const BATCH: usize = 256;

/// What one thread runs.
pub struct UdpPlan {
    pub addr: SocketAddr,
    /// Socket indexes (in the run) this thread owns.
    pub ids: Vec<u64>,
    pub window: usize,
    pub size: usize,
    pub deadline: Instant,
    pub timeout: Duration,
}

struct Flow {
    id: u64,
    sock: Option<UdpSocket>,
    next_seq: u64,
    /// Sent and not yet answered, oldest first: (sequence number, send instant).
    outstanding: VecDeque<(u64, Instant)>,
    /// Recently given up as lost (bounded), to tell a late reply from a corrupted one.
    lost: VecDeque<u64>,
}

/// The datagram with header `h`, `size` bytes long.
fn fill(h: u64, out: &mut [u8]) {
    out[..MIN_SIZE].copy_from_slice(&h.to_le_bytes());
    ByteStream::new(mix(h)).fill(&mut out[MIN_SIZE..]);
}

impl Flow {
    fn header(&self, seq: u64) -> u64 {
        self.id << 48 | seq
    }

    /// Sends until the window is full or the socket would block.
    fn send(&mut self, plan: &UdpPlan, stats: &mut Stats, out: &mut [u8]) -> Result<(), Failure> {
        let Some(sock) = &self.sock else {
            return Ok(());
        };
        while self.outstanding.len() < plan.window && Instant::now() < plan.deadline {
            let seq = self.next_seq & SEQ_MASK;
            fill(self.header(seq), out);
            match sock.send(out) {
                Ok(_) => {
                    self.outstanding.push_back((seq, Instant::now()));
                    self.next_seq += 1;
                    stats.sent += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail("send", &e)),
            }
        }
        Ok(())
    }

    /// Receives and checks replies until EAGAIN (or a batch); false if more may be waiting.
    /// `rx` must hold more than the largest datagram; `want` is `--size` bytes of scratch.
    fn receive(
        &mut self,
        stats: &mut Stats,
        rx: &mut [u8],
        want: &mut [u8],
    ) -> Result<bool, Failure> {
        let Some(sock) = self.sock.take() else {
            return Ok(true);
        };
        let r = self.receive_from(&sock, stats, rx, want);
        self.sock = Some(sock);
        r
    }

    fn receive_from(
        &mut self,
        sock: &UdpSocket,
        stats: &mut Stats,
        rx: &mut [u8],
        want: &mut [u8],
    ) -> Result<bool, Failure> {
        for _ in 0..BATCH {
            let n = match sock.recv(rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail("receive", &e)),
            };
            self.check(&rx[..n], stats, want)?;
        }
        Ok(false)
    }

    /// Checks one reply against the datagram it claims to answer (`want`: scratch, `--size`).
    fn check(&mut self, got: &[u8], stats: &mut Stats, want: &mut [u8]) -> Result<(), Failure> {
        let size = want.len();
        let corrupt =
            |what: String| Failure::new(ErrorKind::Mismatch, format!("socket {}: {what}", self.id));
        if got.len() != size {
            return Err(corrupt(format!(
                "a {}-byte reply to {size}-byte datagrams",
                got.len()
            )));
        }
        let h = u64::from_le_bytes(got[..MIN_SIZE].try_into().expect("8 bytes"));
        let seq = h & SEQ_MASK;
        if h >> 48 != self.id {
            return Err(corrupt(format!(
                "reply header 0x{h:016x} names socket {}",
                h >> 48
            )));
        }
        let Some(pos) = self.outstanding.iter().position(|&(s, _)| s == seq) else {
            if let Some(i) = self.lost.iter().position(|&s| s == seq) {
                self.lost.remove(i);
                stats.late += 1;
                return Ok(());
            }
            return Err(corrupt(format!(
                "reply with sequence number {seq}, which is not in flight (sent: 0..{})",
                self.next_seq
            )));
        };
        fill(h, want);
        if let Some(at) = (0..size).find(|&i| got[i] != want[i]) {
            return Err(corrupt(format!(
                "datagram {seq} byte {at} sent 0x{:02x}, echoed 0x{:02x}",
                want[at], got[at]
            )));
        }
        let (_, sent) = self.outstanding.remove(pos).expect("position found");
        stats.record_round_trip(size, sent.elapsed());
        Ok(())
    }

    /// Gives up on datagrams older than `timeout`.
    fn expire(&mut self, now: Instant, timeout: Duration, stats: &mut Stats) {
        while let Some(&(seq, sent)) = self.outstanding.front() {
            if now.duration_since(sent) < timeout {
                break;
            }
            self.outstanding.pop_front();
            stats.lost += 1;
            if self.lost.len() == 4096 {
                self.lost.pop_front();
            }
            self.lost.push_back(seq);
        }
    }

    fn fail(&self, what: &str, e: &io::Error) -> Failure {
        let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
            ErrorKind::Connect
        } else {
            ErrorKind::Io
        };
        Failure::new(kind, format!("socket {}: {what}: {e}", self.id))
    }
}

fn open(epoll: &Epoll, addr: SocketAddr, tok: u64) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    epoll.add(sock.as_fd(), EPOLLIN | EPOLLOUT | EPOLLET, tok)?;
    Ok(sock)
}

/// Runs one thread's sockets until every datagram is answered or lost.
pub fn run(plan: &UdpPlan, progress: &Progress) -> Stats {
    let mut stats = Stats::new();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            stats.record_error(Failure::new(ErrorKind::Io, format!("epoll_create1: {e}")));
            return stats;
        }
    };
    let mut flows: Vec<Flow> = Vec::with_capacity(plan.ids.len());
    for (tok, &id) in plan.ids.iter().enumerate() {
        let sock = match open(&epoll, plan.addr, tok as u64) {
            Ok(s) => Some(s),
            Err(e) => {
                let msg = format!("socket {id}: open/connect {}: {e}", plan.addr);
                stats.record_error(Failure::new(ErrorKind::Connect, msg));
                None
            }
        };
        flows.push(Flow {
            id,
            sock,
            next_seq: 0,
            outstanding: VecDeque::new(),
            lost: VecDeque::new(),
        });
    }
    let tick = (plan.timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut rx = vec![0u8; MAX_SIZE + 1];
    let mut scratch = vec![0u8; plan.size];
    let mut events = vec![Event::zeroed(); 256];
    let mut published = (0, 0, 0);
    let mut next_tick = Instant::now();
    let mut again: Vec<usize> = (0..flows.len()).collect();
    let hard_stop = plan.deadline + plan.timeout + tick;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            for f in &mut flows {
                f.expire(now, plan.timeout, &mut stats);
            }
            // Expired slots are free again: refill them.
            again.extend(0..flows.len());
            progress.publish(&stats, &mut published);
            next_tick = now + tick;
        }
        let done = now >= plan.deadline
            && flows
                .iter()
                .all(|f| f.outstanding.is_empty() || f.sock.is_none());
        if done || now >= hard_stop {
            break;
        }
        let mut wait = next_tick.saturating_duration_since(now);
        if now < plan.deadline {
            wait = wait.min(plan.deadline - now);
        }
        if !again.is_empty() {
            wait = Duration::ZERO;
        }
        let n = match epoll.wait(&mut events, wait) {
            Ok(n) => n,
            Err(e) => {
                stats.record_error(Failure::new(ErrorKind::Io, format!("epoll_wait: {e}")));
                break;
            }
        };
        let mut turn = std::mem::take(&mut again);
        turn.extend(events[..n].iter().map(|ev| ev.token() as usize));
        turn.sort_unstable();
        turn.dedup();
        for idx in turn {
            let f = &mut flows[idx];
            let r = f
                .receive(&mut stats, &mut rx, &mut scratch)
                .and_then(|drained| {
                    f.send(plan, &mut stats, &mut scratch)?;
                    Ok(drained)
                });
            match r {
                Ok(true) => {}
                Ok(false) => again.push(idx),
                Err(e) => {
                    // This socket is finished; its datagrams in flight are neither lost nor echoed.
                    f.sock = None;
                    f.outstanding.clear();
                    stats.record_error(e);
                }
            }
        }
    }
    // Only after a hard stop (or an epoll failure) can datagrams still be in flight.
    for f in &mut flows {
        stats.lost += f.outstanding.len() as u64;
    }
    progress.publish(&stats, &mut published);
    stats
}
