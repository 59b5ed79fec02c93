//! One worker thread: its own SO_REUSEPORT listener, a private epoll instance, the read end of
//! its wake pipe, and the connections it accepted. Workers share nothing on the hot path; the
//! only shared writes are the connection count (on accept and close) and each worker's own,
//! cache-padded stats slot (once per loop turn).
//!
//! # The edge-triggered contract
//!
//! Clients are registered once, with `EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`, and never
//! touched with `epoll_ctl` again. An edge is reported once, so the worker remembers it in the
//! connection's flags ([`flag::READABLE`], [`flag::WRITABLE`]) until the socket says otherwise:
//!
//! - **Readable** stays set until a read returns `EAGAIN`, `0` (EOF), or *short* — fewer bytes
//!   than the buffer holds. A short read means the receive queue was emptied; any byte that
//!   arrives later raises a new edge, so no read is spent just to hear `EAGAIN`. After
//!   `EPOLLRDHUP` no further edge will come, so the worker reads on to EOF instead.
//! - **Writable** stays set until a send is short or returns `EAGAIN`; what the socket did not
//!   take goes to the connection's pending output, and the next `EPOLLOUT` edge flushes it.
//! - **Backpressure**: while pending output exceeds `--max-pending`, the worker stops reading
//!   that client (READABLE stays set), so TCP flow control slows the sender; when EPOLLOUT
//!   drains the pending output, reading resumes. Memory per client ≤ cap + one read buffer.
//! - **Fairness**: one turn reads at most [`TURN_BUDGET`] bytes from a connection. A connection
//!   still readable after its budget goes to the back of the run queue, and the worker polls
//!   epoll without blocking until the queue is empty, so a fast sender cannot starve others.
//!
//! - **Splice** (opt-in, `--splice`): a connection whose read filled the buffer is a bulk
//!   stream; while it stays one, it is echoed socket → worker pipe → socket with splice(2), and
//!   only `EAGAIN` counts as drained (a short splice may just have run out of pipe slots).
//!
//! The listener is level-triggered: each turn accepts at most [`ACCEPT_BATCH`] clients and
//! epoll reports it again while its backlog is not empty.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::conn::{Conn, Moved, Outcome, SplicePipe, flag};
use crate::idle::IdleList;
use crate::log::Level;
use crate::server::Shared;
use crate::stats::Counters;
use crate::{log, sys};

const LISTENER: u64 = u64::MAX - 1;
const WAKE: u64 = u64::MAX;
/// The worker's one read buffer, shared by all its connections.
pub const BUF_SIZE: usize = 64 * 1024;
/// Bytes read from one connection per loop turn before the others get their turn.
pub const TURN_BUDGET: usize = BUF_SIZE;
/// Connections accepted per loop turn.
pub const ACCEPT_BATCH: usize = 128;
const EVENTS: usize = 1024;
/// How long the listener rests when even the reserve descriptor cannot be had.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const LOG_EVERY: Duration = Duration::from_secs(1);
/// While shutting down, a connection quiet for a whole tick with nothing pending is closed.
const DRAIN_TICK: Duration = Duration::from_secs(1);

/// What one worker needs to know, fixed at startup.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: usize,
    pub addr: SocketAddr,
    pub backlog: i32,
    pub max_pending: usize,
    pub max_connections: usize,
    /// Whole seconds; 0 disables the idle timeout.
    pub idle_timeout_secs: u32,
    pub shutdown_timeout: Duration,
    pub pin_cpu: Option<usize>,
    /// Echo bulk streams with splice(2) through a per-worker pipe.
    pub splice: bool,
}

/// A rate-limited warning: counts occurrences, prints at most one line per second.
#[derive(Default)]
struct Throttled {
    unreported: u64,
    last: Option<Duration>,
}

impl Throttled {
    /// Counts one occurrence; returns the count to report if a line is due now.
    fn hit(&mut self, now: Duration) -> Option<u64> {
        self.unreported += 1;
        self.due(now)
    }

    fn due(&mut self, now: Duration) -> Option<u64> {
        let ready = self.last.is_none_or(|t| now >= t + LOG_EVERY);
        if self.unreported > 0 && ready {
            self.last = Some(now);
            return Some(std::mem::take(&mut self.unreported));
        }
        None
    }

    fn deadline(&self) -> Option<Duration> {
        (self.unreported > 0).then(|| self.last.map_or(Duration::ZERO, |t| t + LOG_EVERY))
    }
}

pub struct Worker {
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    epoll: sys::Epoll,
    listener: Option<OwnedFd>,
    wake: OwnedFd,
    local_addr: SocketAddr,
    /// Connections by slot; a slot's index is its epoll token.
    slab: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Slots closed this turn: reused only next turn, after this batch's events are handled.
    closed: Vec<u32>,
    live: usize,
    idle: IdleList,
    run: Vec<u32>,
    running: Vec<u32>,
    buf: Box<[u8]>,
    pipe: Option<SplicePipe>,
    events: Box<[sys::Event]>,
    reserve: Option<OwnedFd>,
    paused_until: Option<Duration>,
    drain_deadline: Option<Duration>,
    drain_tick: Option<Duration>,
    counters: Counters,
    refusals: Throttled,
    fd_exhaustion: Throttled,
    accept_errors: Throttled,
    now: Duration,
}

/// The client's address for debug logs (`getpeername`, only called when they are on).
fn peer(fd: &OwnedFd) -> String {
    match socket2::SockRef::from(fd)
        .peer_addr()
        .map(|a| a.as_socket())
    {
        Ok(Some(a)) => a.to_string(),
        _ => "a client that has gone".to_string(),
    }
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
        let socket = crate::listeners::open(cfg.id, cfg.addr, cfg.backlog, &shared.listeners)?;
        let local_addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        let listener: OwnedFd = socket.into();
        let epoll = sys::Epoll::new()?;
        let splice = cfg.splice;
        epoll.add(listener.as_fd(), sys::EPOLLIN, LISTENER)?;
        epoll.add(wake.as_fd(), sys::EPOLLIN, WAKE)?;
        Ok(Worker {
            cfg,
            shared,
            epoll,
            listener: Some(listener),
            wake,
            local_addr,
            slab: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            live: 0,
            idle: IdleList::default(),
            run: Vec::new(),
            running: Vec::new(),
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            // Without a pipe (descriptors short at startup), bulk streams are copied instead.
            pipe: splice.then(sys::pipe).and_then(Result::ok).map(|(r, w)| {
                // Room for a whole splice even when it arrives in small fragments.
                let _ = sys::set_pipe_size(w.as_fd(), 4 * BUF_SIZE);
                SplicePipe { r, w }
            }),
            events: vec![sys::Event::zeroed(); EVENTS].into_boxed_slice(),
            reserve: sys::eventfd().ok(),
            paused_until: None,
            drain_deadline: None,
            drain_tick: None,
            counters: Counters::default(),
            refusals: Throttled::default(),
            fd_exhaustion: Throttled::default(),
            accept_errors: Throttled::default(),
            now: sys::coarse_now(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn secs(&self) -> u32 {
        self.now.as_secs() as u32
    }

    /// The event loop. Returns when shutdown has finished: every connection drained or closed.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let timeout = if self.run.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_sub(sys::coarse_now()))
            } else {
                Some(Duration::ZERO)
            };
            let mut events = std::mem::take(&mut self.events);
            let n = self.epoll.wait(&mut events, timeout);
            self.now = sys::coarse_now();
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.events = events;
                    return Err(e);
                }
            };
            for ev in &events[..n] {
                match ev.token() {
                    WAKE => self.begin_shutdown(),
                    LISTENER => self.accept_batch(),
                    token => self.on_conn_event(token as u32, ev.events()),
                }
            }
            self.events = events;
            self.serve_run_queue();
            self.on_timers();
            self.free.append(&mut self.closed);
            self.shared.stats[self.cfg.id].publish(&self.counters, self.live);
            if self.drain_deadline.is_some() && self.live == 0 {
                return Ok(());
            }
        }
    }

    fn on_conn_event(&mut self, idx: u32, events: u32) {
        let Some(c) = self.slab.get_mut(idx as usize).and_then(Option::as_mut) else {
            return; // closed earlier in this batch
        };
        c.on_event(events);
        if !c.has(flag::QUEUED) {
            c.flags |= flag::QUEUED;
            self.run.push(idx);
        }
    }

    /// Gives every queued connection one budgeted turn.
    fn serve_run_queue(&mut self) {
        let mut running = std::mem::take(&mut self.running);
        std::mem::swap(&mut running, &mut self.run);
        let secs = self.secs();
        for &idx in &running {
            let Some(c) = self.slab.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            c.flags &= !flag::QUEUED;
            let mut moved = Moved::default();
            let outcome = c.service(
                &mut self.buf,
                TURN_BUDGET,
                self.cfg.max_pending,
                self.pipe.as_ref(),
                &mut moved,
            );
            if moved.read + moved.written > 0 {
                c.flags |= flag::ACTIVE;
            }
            // While shutting down: nothing pending, nothing to read, quiet since the last tick.
            let finished = c.is_drained() && !c.has(flag::ACTIVE);
            self.counters.bytes_in += moved.read as u64;
            self.counters.bytes_out += moved.written as u64;
            if moved.read + moved.written > 0 && self.cfg.idle_timeout_secs > 0 {
                self.idle.touch(&mut self.slab, idx, secs);
            }
            match outcome {
                Outcome::Again => {
                    if let Some(c) = self.slab[idx as usize].as_mut() {
                        c.flags |= flag::QUEUED;
                    }
                    self.run.push(idx);
                }
                Outcome::Close => self.close(idx, "client finished"),
                Outcome::Failed(kind) => self.close(idx, kind),
                Outcome::Wait if self.drain_deadline.is_some() && finished => {
                    self.close(idx, "drained at shutdown")
                }
                Outcome::Wait => {}
            }
        }
        running.clear();
        self.running = running;
    }

    fn close(&mut self, idx: u32, why: impl std::fmt::Display) {
        if self.slab[idx as usize].is_none() {
            return;
        }
        if self.cfg.idle_timeout_secs > 0 {
            self.idle.remove(&mut self.slab, idx);
        }
        let conn = self.slab[idx as usize].take().expect("checked above");
        log!(
            Level::Debug,
            "close {} ({why}), {} byte(s) unsent",
            peer(&conn.fd),
            conn.pending.len()
        );
        drop(conn); // close(2): FIN, or RST if unread input remains
        self.live -= 1;
        self.counters.closed += 1;
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.closed.push(idx);
    }

    fn accept_batch(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match sys::accept(listener.as_fd()) {
                Ok(fd) => self.admit(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::is_out_of_fds(&e) => return self.out_of_fds(&e),
                Err(e) if sys::is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // Unexpected: say so (rate-limited) and rest the listener rather than
                    // have the level-triggered listener report the same failure in a loop.
                    if let Some(n) = self.accept_errors.hit(self.now) {
                        log!(
                            Level::Warn,
                            "accept on {}: {e} ({n} time(s))",
                            self.local_addr
                        );
                    }
                    return self.pause_listener();
                }
            }
        }
    }

    fn admit(&mut self, fd: OwnedFd) {
        self.counters.accepted += 1;
        if self.shared.active.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            drop(fd); // the client sees the connection close at once
            self.counters.refused += 1;
            if let Some(n) = self.refusals.hit(self.now) {
                self.log_refusals(n);
            }
            return;
        }
        // An echo must not wait for Nagle; failure here only costs latency.
        let _ = sys::set_nodelay(fd.as_fd());
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(None);
                (self.slab.len() - 1) as u32
            }
        };
        let events = sys::EPOLLIN | sys::EPOLLOUT | sys::EPOLLRDHUP | sys::EPOLLET;
        if let Err(e) = self.epoll.add(fd.as_fd(), events, idx as u64) {
            log!(Level::Warn, "register client: {e}");
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            self.free.push(idx);
            return;
        }
        self.slab[idx as usize] = Some(Conn::new(fd));
        self.live += 1;
        if self.cfg.idle_timeout_secs > 0 {
            let secs = self.secs();
            self.idle.push(&mut self.slab, idx, secs);
        }
        log!(
            Level::Debug,
            "accept {}",
            peer(&self.slab[idx as usize].as_ref().unwrap().fd)
        );
    }

    fn log_refusals(&self, n: u64) {
        log!(
            Level::Warn,
            "refused {n} connection(s) since the last report: --max-connections {} reached",
            self.cfg.max_connections
        );
    }

    /// accept failed for lack of descriptors: give the reserve descriptor back to accept one
    /// waiting client and close it at once (so it does not hang in the backlog), then take the
    /// reserve again. If even that fails, rest the listener briefly instead of spinning.
    fn out_of_fds(&mut self, e: &io::Error) {
        let mut shed = false;
        if let (Some(reserve), Some(listener)) = (self.reserve.take(), self.listener.as_ref()) {
            drop(reserve);
            if let Ok(client) = sys::accept(listener.as_fd()) {
                drop(client);
                self.counters.accepted += 1;
                self.counters.refused += 1;
                self.counters.refused_no_fds += 1;
                shed = true;
            }
            self.reserve = sys::eventfd().ok();
        }
        if let Some(n) = self.fd_exhaustion.hit(self.now) {
            log!(
                Level::Warn,
                "accept: {e} ({n} time(s) since the last report); refusing new clients until descriptors free up"
            );
        }
        if !shed || self.reserve.is_none() {
            self.pause_listener();
        }
    }

    /// Stops watching the listener for [`ACCEPT_PAUSE`]; `on_timers` resumes it.
    fn pause_listener(&mut self) {
        if let Some(listener) = self.listener.as_ref() {
            let _ = self.epoll.modify(listener.as_fd(), 0, LISTENER);
        }
        self.paused_until = Some(self.now + ACCEPT_PAUSE);
    }

    /// SIGINT/SIGTERM: stop accepting, close idle connections, keep draining the others.
    fn begin_shutdown(&mut self) {
        // Empty the (level-triggered) pipe on every wake-up, a repeated request included,
        // or epoll would report it again at once, for ever.
        let mut byte = [0u8; 8];
        while matches!(sys::read(self.wake.as_fd(), &mut byte), Ok(n) if n > 0) {}
        if self.drain_deadline.is_some() {
            return;
        }
        // Out of epoll explicitly: after a graceful restart the new process holds the same
        // socket, so close(2) alone would leave it registered here (and always ready).
        if let Some(listener) = self.listener.take() {
            let _ = self.epoll.delete(listener.as_fd());
        }
        self.paused_until = None;
        self.drain_deadline = Some(self.now + self.cfg.shutdown_timeout);
        self.drain_tick = Some(self.now + DRAIN_TICK);
        log!(
            Level::Debug,
            "shutting down: {} connection(s) open",
            self.live
        );
        // Look at every connection once more: data may have arrived whose edge we have not
        // handled yet. Those with nothing to read and nothing to send are closed after that
        // read (FIN); the busy ones are served until they have been quiet for a drain tick.
        // After a restart's hand-over, a silent connection also gets a whole quiet tick.
        let grace = if self.shared.handing_over() {
            flag::ACTIVE
        } else {
            0
        };
        for idx in 0..self.slab.len() as u32 {
            if let Some(c) = self.slab[idx as usize].as_mut() {
                c.flags = ((c.flags | flag::READABLE) & !flag::ACTIVE) | grace;
                if !c.has(flag::QUEUED) {
                    c.flags |= flag::QUEUED;
                    self.run.push(idx);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Duration> {
        let idle = (self.cfg.idle_timeout_secs > 0)
            .then(|| self.idle.oldest(&self.slab))
            .flatten()
            .map(|(_, last)| {
                Duration::from_secs(u64::from(last) + u64::from(self.cfg.idle_timeout_secs) + 1)
            });
        [
            idle,
            self.drain_deadline,
            self.drain_tick,
            self.paused_until,
            self.refusals.deadline(),
            self.fd_exhaustion.deadline(),
            self.accept_errors.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timers(&mut self) {
        if self.cfg.idle_timeout_secs > 0 {
            let secs = self.secs();
            // Closed when a whole `idle_timeout` has passed since the last traffic's second.
            while let Some((idx, last)) = self.idle.oldest(&self.slab) {
                if last + self.cfg.idle_timeout_secs >= secs {
                    break;
                }
                self.counters.idle_closed += 1;
                self.close(idx, "idle timeout");
            }
        }
        if let Some(until) = self.paused_until
            && self.now >= until
        {
            self.paused_until = None;
            if self.reserve.is_none() {
                self.reserve = sys::eventfd().ok();
            }
            if let Some(listener) = self.listener.as_ref() {
                let _ = self.epoll.modify(listener.as_fd(), sys::EPOLLIN, LISTENER);
            }
        }
        if let Some(n) = self.refusals.due(self.now) {
            self.log_refusals(n);
        }
        if let Some(n) = self.accept_errors.due(self.now) {
            log!(
                Level::Warn,
                "accept on {}: failed {n} more time(s)",
                self.local_addr
            );
        }
        if let Some(n) = self.fd_exhaustion.due(self.now) {
            log!(
                Level::Warn,
                "accept: out of file descriptors {n} more time(s)"
            );
        }
        if let Some(tick) = self.drain_tick
            && self.now >= tick
        {
            self.drain_tick = Some(self.now + DRAIN_TICK);
            for idx in 0..self.slab.len() as u32 {
                let Some(c) = self.slab[idx as usize].as_mut() else {
                    continue;
                };
                if c.has(flag::ACTIVE) {
                    c.flags &= !flag::ACTIVE;
                } else if c.is_drained() {
                    self.close(idx, "quiet at shutdown");
                }
            }
        }
        if let Some(deadline) = self.drain_deadline
            && self.now >= deadline
        {
            let left = self.live;
            for idx in 0..self.slab.len() as u32 {
                self.close(idx, "shutdown timeout");
            }
            if left > 0 {
                log!(
                    Level::Warn,
                    "shutdown timeout: closed {left} connection(s) still busy"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_warnings_print_at_most_once_a_second_with_the_count() {
        let mut t = Throttled::default();
        let at = |ms| Duration::from_millis(ms);
        assert_eq!(
            t.hit(at(10_000)),
            Some(1),
            "the first one is reported at once"
        );
        assert_eq!(t.hit(at(10_100)), None);
        assert_eq!(t.hit(at(10_900)), None);
        assert_eq!(
            t.deadline(),
            Some(at(11_000)),
            "a line is due when the second is up"
        );
        assert_eq!(t.due(at(10_999)), None);
        assert_eq!(t.due(at(11_000)), Some(2), "the held-back ones, counted");
        assert_eq!(t.deadline(), None, "nothing left to report");
        assert_eq!(t.due(at(20_000)), None);
    }
}
