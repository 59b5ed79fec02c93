//! The event loop: wait, dispatch each event by token, give queued connections their turn, run
//! the timers, publish stats. Returns when shutdown has finished.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use super::per_ip::{OVER_CONNS, OVER_RATE, PerIp};
use super::service::{self, FdSocket};
use super::{Token, Worker};
use crate::conn::proxy_stage::{HEADER_TIMEOUT, is_proxy_reason};
use crate::conn::{CloseReason, Conn, Readiness};
use crate::log::Level;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::udp::Turn;

#[cfg(feature = "tls")]
use crate::conn::tls_stage::TlsTally;
/// Without TLS there are no TLS counters.
#[cfg(not(feature = "tls"))]
enum TlsTally {}
use crate::{log, sys};

/// Maps epoll bits onto the connection's readiness.
fn readiness(events: u32) -> Readiness {
    let mut r = Readiness::empty();
    for (bit, flag) in [
        (sys::EPOLLIN, Readiness::READABLE),
        (sys::EPOLLOUT, Readiness::WRITABLE),
        (sys::EPOLLRDHUP, Readiness::RDHUP),
        (sys::EPOLLPRI, Readiness::PRI),
        (sys::EPOLLHUP, Readiness::HUP),
        (sys::EPOLLERR, Readiness::ERR),
    ] {
        if events & bit != 0 {
            r = r | flag;
        }
    }
    r
}

/// What happens to every connection that leaves: the one place they all go through. Per-client
/// resources acquired at admission are released here. A connection the server ends (idle,
/// shutdown) gets its stages' last words first (a TLS close_notify: one send, best effort).
fn on_closed<'a>(
    shared: &'a Shared,
    counters: &'a mut Counters,
    per_ip: &'a PerIp,
    tally: Option<&'a TlsTally>,
) -> impl FnMut(OwnedFd, Conn, CloseReason) + 'a {
    move |fd, mut conn, why| {
        // The client's place in the per-IP table comes back on every path.
        let client = per_ip.release(fd.as_raw_fd());
        if matches!(
            why,
            CloseReason::Idle | CloseReason::Quiet | CloseReason::ShutdownTimeout
        ) {
            let bye = conn.goodbye();
            if !bye.is_empty() {
                let _ = sys::send(fd.as_fd(), bye);
            }
        }
        if log::enabled(Level::Debug) {
            let via = client.map_or_else(String::new, |c| format!(" (PROXY client {c})"));
            log!(
                Level::Debug,
                "close {}{via} ({why}), {} byte(s) unsent",
                super::accept::peer(&fd),
                conn.pending_len()
            );
        }
        match why {
            // Over a per-IP limit at header time: reset, as at accept.
            CloseReason::Rejected(r) if r == OVER_CONNS || r == OVER_RATE => sys::reset(fd),
            CloseReason::Rejected(r) if is_proxy_reason(r) => {
                counters.per_ip.proxy_rejected += 1;
                drop(fd);
            }
            CloseReason::StageTimeout(r) if r == HEADER_TIMEOUT => {
                counters.per_ip.proxy_timeout += 1;
                drop(fd);
            }
            CloseReason::StageTimeout(_) => {
                // The TLS handshake timeout (the only other stage deadline).
                if let Some(t) = tally {
                    #[cfg(feature = "tls")]
                    t.count_timeout();
                    #[cfg(not(feature = "tls"))]
                    match *t {}
                }
                drop(fd);
            }
            _ => drop(fd), // close(2): FIN, or RST if unread input remains
        }
        counters.closed += 1;
        if why == CloseReason::Idle {
            counters.idle_closed += 1;
        }
        shared.release();
    }
}

impl Worker {
    /// The event loop. Returns when shutdown has finished: every connection drained or closed.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let timeout = if self.conns.has_queued() || self.udp_ready {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|d| d.saturating_sub(sys::coarse_now()))
            };
            let mut events = std::mem::take(&mut self.events);
            let n = self.epoll.wait(&mut events, timeout);
            self.clock.update();
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.events = events;
                    return Err(e);
                }
            };
            for ev in &events[..n] {
                match Token::decode(ev.token()) {
                    Token::Wake => self.begin_shutdown(),
                    Token::Listener(l) => self.accept_batch(l),
                    Token::Udp => self.udp_ready = true,
                    Token::Conn(idx) => self.conns.ready(idx, readiness(ev.events())),
                }
            }
            self.events = events;
            self.serve_run_queue();
            self.serve_udp();
            self.on_timers();
            self.conns.end_batch();
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.tls {
                self.counters.tls = tls.tally.snapshot();
            }
            (
                self.counters.per_ip.refused_per_ip,
                self.counters.per_ip.refused_rate,
            ) = self.per_ip.refusals();
            self.shared.stats[self.cfg.id].publish(&self.counters, self.conns.live());
            if self.conns.draining() && self.conns.live() == 0 {
                return Ok(());
            }
        }
    }

    /// Gives every queued connection one budgeted turn.
    fn serve_run_queue(&mut self) {
        let (buf, pipe, per_ip, now) = (
            &mut self.buf,
            self.pipe.as_ref(),
            &self.per_ip,
            self.clock.now,
        );
        #[cfg(feature = "tls")]
        let tally = self.tls.as_ref().map(|t| &*t.tally);
        #[cfg(not(feature = "tls"))]
        let tally = None;
        let mut closed = on_closed(&self.shared, &mut self.counters, &self.per_ip, tally);
        let moved = self.conns.serve_queued(
            self.clock.tick,
            |fd, conn, turn| {
                let mut sock = FdSocket {
                    fd: fd.as_fd(),
                    pipe,
                    per_ip,
                    now,
                };
                service::serve(conn, &mut sock, turn, buf)
            },
            &mut closed,
        );
        drop(closed);
        self.counters.bytes_in += moved.read;
        self.counters.bytes_out += moved.written;
        self.counters.bytes_spliced += moved.spliced;
        if moved.pipe_broken && self.pipe.take().is_some() {
            log!(
                Level::Warn,
                "splice pipe could not be emptied: worker {} stops splicing",
                self.cfg.id
            );
        }
    }

    /// One budgeted UDP turn, if the socket has datagrams to serve.
    fn serve_udp(&mut self) {
        if !self.udp_ready {
            return;
        }
        match self.udp.as_mut() {
            Some(u) => {
                self.udp_ready = u.on_readable(self.clock.now) == Turn::More;
                self.counters.udp = u.counters();
            }
            None => self.udp_ready = false,
        }
    }

    /// SIGINT/SIGTERM: stop accepting and start the drain (see `drain`).
    fn begin_shutdown(&mut self) {
        // Empty the (level-triggered) pipe on every wake-up, a repeated request included,
        // or epoll would report it again at once, for ever.
        let mut byte = [0u8; 8];
        while matches!(sys::read(self.wake.as_fd(), &mut byte), Ok(n) if n > 0) {}
        if self.conns.draining() {
            return;
        }
        self.acceptor.close(&self.epoll);
        if let Some(a) = self.tls_acceptor.as_mut() {
            a.close(&self.epoll);
        }
        // Datagrams have nothing to drain: stop answering at once. Out of epoll before the
        // close: after a restart's hand-over the socket lives on in the new process, and a
        // registration on it would keep waking this one for datagrams it no longer serves.
        if let Some(u) = self.udp.take() {
            let _ = self.epoll.delete(u.fd().as_fd());
        }
        self.udp_ready = false;
        log!(
            Level::Debug,
            "shutting down: {} connection(s) open",
            self.conns.live()
        );
        self.conns
            .begin_drain(self.clock.tick, self.cfg.shutdown_timeout);
    }

    /// The earliest timer, as a coarse monotonic time.
    fn next_deadline(&self) -> Option<Duration> {
        let conns = self
            .conns
            .next_deadline(self.clock.tick)
            .map(|t| self.clock.at(t));
        let tls = self.tls_acceptor.as_ref().and_then(|a| a.next_deadline());
        [
            conns,
            self.acceptor.next_deadline(),
            self.per_ip.next_deadline(),
            tls,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timers(&mut self) {
        #[cfg(feature = "tls")]
        let tally = self.tls.as_ref().map(|t| &*t.tally);
        #[cfg(not(feature = "tls"))]
        let tally = None;
        let mut closed = on_closed(&self.shared, &mut self.counters, &self.per_ip, tally);
        let timed_out = self.conns.on_timers(self.clock.tick, &mut closed);
        drop(closed);
        if timed_out > 0 {
            log!(
                Level::Warn,
                "shutdown timeout: closed {timed_out} connection(s) still busy"
            );
        }
        self.accept_timers();
        self.per_ip.timers(self.clock.now);
    }
}
