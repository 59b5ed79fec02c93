//! One worker thread's event loop, shared by every mode that keeps many connections busy.
//!
//! Each thread owns a share of the connections and a private epoll instance. Sockets are
//! nonblocking, `TCP_NODELAY`, connected without blocking (socket2), and registered once,
//! edge-triggered, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`.
//!
//! The edge-triggered contract: on an edge (and right after connecting) the mode's
//! [`Session::drive`] moves bytes until every operation it still needs (a write with bytes
//! left, a read with echo outstanding) returns `WouldBlock`; only then will another edge come.
//! A session that keeps making progress yields after a bounded batch ([`Flow::Yield`]) and is
//! driven again after the next `epoll_wait`, so one fast connection cannot starve the rest or
//! make the loop miss the deadline.
//!
//! Open loop: a session that must not send before a scheduled instant returns
//! [`Flow::Sleep`]; the loop keeps those instants in a heap, bounds `epoll_wait` by the
//! earliest (nanosecond resolution, epoll_pwait2), and drives each session when it is due.
//!
//! Time: no new work starts after the deadline (`--duration`); work in flight finishes.
//! A connection that makes no progress for `--timeout` is a stall error, and whatever is still
//! open `--timeout` after the deadline is closed as a stall. So a thread always returns by
//! `deadline + timeout` (plus one `epoll_wait` tick), whatever the server does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use rustls::ClientConnection;

use crate::report::{ErrorKind, Failure, Progress, Stats};
use crate::sys::{EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll, Event};
use crate::tls::{Conn, Tls};

/// How often the loop wakes to check stalls and publish progress, even with no events.
const TICK: Duration = Duration::from_millis(100);

/// Per-thread scratch state handed to [`Session::drive`].
pub struct Ctx<'a> {
    pub stats: &'a mut Stats,
    /// A read buffer shared by the thread's connections.
    pub buf: &'a mut [u8],
    /// The deadline has passed: finish what is in flight, start nothing new.
    pub stopping: bool,
    /// Set by the session when bytes moved (resets the stall clock).
    pub moved: bool,
}

/// What a session wants next.
pub enum Flow {
    /// Blocked on every operation it needs: wait for the next edge.
    Wait,
    /// Still has work it could do now; drive again after the next `epoll_wait`.
    Yield,
    /// Nothing to do before this instant (open loop: the next send is scheduled then); the
    /// engine drives the session again at that time, or on an edge before it.
    Sleep(Instant),
    /// Finished cleanly (the server closed after echoing everything): drop the socket.
    Done,
}

/// One connection's protocol: pingpong, bulk or churn.
pub trait Session {
    /// A freshly connected socket: connection `id`, its `attempt`-th socket (churn
    /// reconnects); `began` is when connect(2) was called.
    fn start(id: u64, attempt: u32, began: Instant, plan: &Plan) -> Self;
    /// Moves bytes over `s` (plain TCP or TLS, see [`crate::tls::Conn`]).
    fn drive(&mut self, s: &mut Conn<'_>, ctx: &mut Ctx<'_>) -> Result<Flow, Failure>;
}

/// What one thread runs.
pub struct Plan {
    pub addr: SocketAddr,
    /// Global ids of the connections this thread owns (seeds and messages use them).
    pub ids: Vec<u64>,
    pub size: usize,
    pub deadline: Instant,
    pub timeout: Duration,
    /// Churn: once a connection is done, open a new one in its place until the deadline.
    pub reconnect: bool,
    /// Open loop: `(requests per second for the whole run, connections in the run)`; each
    /// connection sends on its own fixed schedule (see [`crate::pingpong`]).
    pub rate: Option<(f64, usize)>,
    /// `--tls`: every connection runs a TLS client over its socket.
    pub tls: Option<Tls>,
}

struct Live<S> {
    stream: TcpStream,
    began: Instant,
    last_progress: Instant,
    /// `None` while connect(2) is in progress.
    session: Option<S>,
    /// `--tls`: the client side of the TLS session (created when connect(2) completes).
    tls: Option<ClientConnection>,
}

struct Slot<S> {
    id: u64,
    /// Bumped on every (re)connect, so a stale event for a closed socket is ignored.
    generation: u32,
    live: Option<Live<S>>,
}

fn token(idx: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | idx as u64
}

/// A nonblocking connect, registered with `epoll`; completion arrives as `EPOLLOUT`.
fn open(epoll: &Epoll, addr: SocketAddr, tok: u64) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        // `io::ErrorKind::InProgress` is not stable yet.
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from(socket);
    epoll.add(
        stream.as_fd(),
        EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        tok,
    )?;
    Ok(stream)
}

struct Worker<'p, S> {
    plan: &'p Plan,
    epoll: Epoll,
    slots: Vec<Slot<S>>,
    open: usize,
    stats: Stats,
    buf: Vec<u8>,
    stopping: bool,
    /// Slots that yielded: driven again after the next wait.
    again: Vec<u64>,
    /// Slots asleep until a scheduled send, earliest first.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl<S: Session> Worker<'_, S> {
    fn connect(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        slot.generation = slot.generation.wrapping_add(1);
        let tok = token(idx, slot.generation);
        let began = Instant::now();
        match open(&self.epoll, self.plan.addr, tok) {
            Ok(stream) => {
                slot.live = Some(Live {
                    stream,
                    began,
                    last_progress: began,
                    session: None,
                    tls: None,
                });
                self.open += 1;
            }
            Err(e) => {
                let msg = format!("conn {}: connect {}: {e}", slot.id, self.plan.addr);
                self.stats
                    .record_error(Failure::new(ErrorKind::Connect, msg));
            }
        }
    }

    /// Drops slot `idx`'s socket, recording `failure` if any; churn opens a replacement.
    fn close(&mut self, idx: usize, failure: Option<Failure>) {
        if self.slots[idx].live.take().is_some() {
            self.open -= 1;
        }
        if let Some(f) = failure {
            self.stats.record_error(f);
        }
        if self.plan.reconnect && !self.stopping {
            self.connect(idx);
        }
    }

    fn handle(&mut self, tok: u64) {
        let idx = (tok & 0xffff_ffff) as usize;
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if (tok >> 32) as u32 != slot.generation {
            return; // an event for a socket closed earlier in this batch
        }
        let id = slot.id;
        let attempt = slot.generation;
        let Some(live) = slot.live.as_mut() else {
            return;
        };
        if live.session.is_none() {
            // connect(2) finished one way or the other, or this is a spurious wake-up.
            if let Ok(Some(e)) | Err(e) = live.stream.take_error() {
                let msg = format!("conn {id}: connect {}: {e}", self.plan.addr);
                return self.close(idx, Some(Failure::new(ErrorKind::Connect, msg)));
            }
            match live.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let msg = format!("conn {id}: connect {}: {e}", self.plan.addr);
                    return self.close(idx, Some(Failure::new(ErrorKind::Connect, msg)));
                }
            }
            if let Some(tls) = &self.plan.tls {
                match tls.connect() {
                    Ok(c) => live.tls = Some(c),
                    Err(e) => {
                        let msg = format!("conn {id}: TLS client: {e}");
                        return self.close(idx, Some(Failure::new(ErrorKind::Tls, msg)));
                    }
                }
            }
            live.session = Some(S::start(id, attempt, live.began, self.plan));
            live.last_progress = Instant::now();
        }
        let session = live.session.as_mut().expect("connected");
        let mut conn = Conn {
            sock: &live.stream,
            tls: live.tls.as_mut(),
        };
        let mut ctx = Ctx {
            stats: &mut self.stats,
            buf: &mut self.buf,
            stopping: self.stopping,
            moved: false,
        };
        let flow = session.drive(&mut conn, &mut ctx);
        // Asleep by choice is not a stall: the clock restarts at the next send.
        if ctx.moved || matches!(flow, Ok(Flow::Sleep(_))) {
            live.last_progress = Instant::now();
        }
        match flow {
            Ok(Flow::Wait) => {}
            Ok(Flow::Yield) => self.again.push(tok),
            Ok(Flow::Sleep(at)) => self.timers.push(Reverse((at, tok))),
            Ok(Flow::Done) => self.close(idx, None),
            Err(f) => self.close(idx, Some(f)),
        }
    }

    /// Closes connections with no progress for `--timeout` (all of them, past the grace period).
    fn check_stalls(&mut self, now: Instant, hard_stop: bool) {
        let timeout = self.plan.timeout;
        for idx in 0..self.slots.len() {
            let slot = &self.slots[idx];
            let Some(live) = &slot.live else { continue };
            if !hard_stop && now.duration_since(live.last_progress) < timeout {
                continue;
            }
            let f = if live.session.is_none() {
                let msg = format!(
                    "conn {}: connect {}: no answer within {timeout:?}",
                    slot.id, self.plan.addr
                );
                Failure::new(ErrorKind::Connect, msg)
            } else if hard_stop {
                let msg = format!(
                    "conn {}: still unfinished {timeout:?} after the end of --duration",
                    slot.id
                );
                Failure::new(ErrorKind::Stall, msg)
            } else {
                let msg = format!("conn {}: no progress for {timeout:?}", slot.id);
                Failure::new(ErrorKind::Stall, msg)
            };
            self.close(idx, Some(f));
        }
    }
}

/// Runs one thread's share until its connections are done; returns what it measured.
pub fn run<S: Session>(plan: &Plan, progress: &Progress) -> Stats {
    let mut stats = Stats::new();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            stats.record_error(Failure::new(ErrorKind::Io, format!("epoll_create1: {e}")));
            return stats;
        }
    };
    let mut w: Worker<'_, S> = Worker {
        plan,
        epoll,
        slots: plan
            .ids
            .iter()
            .map(|&id| Slot {
                id,
                generation: 0,
                live: None,
            })
            .collect(),
        open: 0,
        stats,
        buf: vec![0u8; 64 * 1024],
        stopping: false,
        again: Vec::new(),
        timers: BinaryHeap::new(),
    };
    for idx in 0..w.slots.len() {
        w.connect(idx);
    }
    let hard_stop = plan.deadline + plan.timeout;
    let mut events = vec![Event::zeroed(); 256];
    let mut published = (0, 0, 0);
    let mut next_tick = Instant::now() + TICK;
    loop {
        let now = Instant::now();
        if !w.stopping && now >= plan.deadline {
            w.stopping = true;
            // Sessions with nothing in flight get no more edges: let each decide it is done.
            for idx in 0..w.slots.len() {
                if let Some(live) = &w.slots[idx].live
                    && live.session.is_some()
                {
                    w.handle(token(idx, w.slots[idx].generation));
                }
            }
        }
        if now >= hard_stop {
            w.check_stalls(now, true);
        }
        if now >= next_tick {
            w.check_stalls(now, false);
            progress.publish(&w.stats, &mut published);
            next_tick = now + TICK;
        }
        // Done, or (without reconnects) every connection failed: nothing left to wait for.
        if w.open == 0 && (w.stopping || !plan.reconnect) {
            break;
        }
        let mut wait = next_tick.saturating_duration_since(now);
        if !w.stopping {
            wait = wait.min(plan.deadline.saturating_duration_since(now));
        }
        if let Some(Reverse((at, _))) = w.timers.peek() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        if !w.again.is_empty() {
            wait = Duration::ZERO;
        }
        let n = match w.epoll.wait(&mut events, wait) {
            Ok(n) => n,
            Err(e) => {
                let f = Failure::new(ErrorKind::Io, format!("epoll_wait: {e}"));
                w.stats.record_error(f);
                break;
            }
        };
        let again = std::mem::take(&mut w.again);
        for ev in &events[..n] {
            w.handle(ev.token());
        }
        for tok in again {
            w.handle(tok);
        }
        let now = Instant::now();
        while let Some(&Reverse((at, tok))) = w.timers.peek() {
            if at > now {
                break;
            }
            w.timers.pop();
            w.handle(tok);
        }
    }
    // Any sockets still open (only after an epoll failure) close on drop.
    progress.publish(&w.stats, &mut published);
    w.stats
}
