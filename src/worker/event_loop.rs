//! The event loop: wait, dispatch each event by token, give queued connections their turn, run
//! the timers, publish stats. Returns when shutdown has finished.

use std::io;
use std::os::fd::AsFd;

use super::drain::Drain;
use super::service::{self, FdSocket, Outcome};
use super::{Token, Worker};
use crate::conn::{CloseReason, Readiness, Turn};
use crate::log::Level;
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

impl Worker {
    /// The event loop. Returns when shutdown has finished: every connection drained or closed.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let timeout = if self.table.has_queued() {
                Some(std::time::Duration::ZERO)
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
                    Token::Listener => self.accept_batch(),
                    Token::Conn(idx) => self.table.ready(idx, readiness(ev.events())),
                }
            }
            self.events = events;
            self.serve_run_queue();
            self.on_timers();
            self.table.end_batch();
            self.shared.stats[self.cfg.id].publish(&self.counters, self.table.live());
            if self.drain.is_some() && self.table.live() == 0 {
                return Ok(());
            }
        }
    }

    /// Gives every queued connection one budgeted turn.
    fn serve_run_queue(&mut self) {
        let mut running = std::mem::take(&mut self.running);
        self.table.take_run_queue(&mut running);
        let now = self.clock.tick;
        for &idx in &running {
            let Some((fd, conn)) = self.table.get_mut(idx) else {
                continue; // closed earlier in this pass
            };
            let before = conn.last_active();
            let mut turn = Turn::new(&self.params, now);
            let mut sock = FdSocket {
                fd: fd.as_fd(),
                pipe: self.pipe.as_ref(),
            };
            let outcome = service::serve(conn, &mut sock, &mut turn, &mut self.buf);
            self.counters.bytes_in += turn.read as u64;
            self.counters.bytes_out += turn.written as u64;
            let quiet = self.drain.as_ref().and_then(|d| d.after_turn(conn, now));
            self.table.touch(idx, before);
            match outcome {
                Outcome::Yield => self.table.requeue(idx),
                Outcome::Close(reason) => self.close(idx, reason),
                Outcome::CloseAndDropPipe(reason) => {
                    log!(
                        Level::Warn,
                        "splice pipe could not be emptied: worker {} stops splicing",
                        self.cfg.id
                    );
                    self.pipe = None;
                    self.params.splice = false;
                    self.close(idx, reason);
                }
                Outcome::Wait => {
                    if let Some(reason) = quiet {
                        self.close(idx, reason);
                    }
                }
            }
        }
        running.clear();
        self.running = running;
    }

    /// Closes a connection: the one place every connection leaves through.
    pub(super) fn close(&mut self, idx: u32, why: CloseReason) {
        let Some((fd, conn)) = self.table.remove(idx) else {
            return;
        };
        log!(
            Level::Debug,
            "close {} ({why}), {} byte(s) unsent",
            super::accept::peer(&fd),
            conn.pending_len()
        );
        drop(fd); // close(2): FIN, or RST if unread input remains
        self.counters.closed += 1;
        if why == CloseReason::Idle {
            self.counters.idle_closed += 1;
        }
        self.shared.release();
    }

    /// SIGINT/SIGTERM: stop accepting and start the drain (see `drain`).
    fn begin_shutdown(&mut self) {
        // Empty the (level-triggered) pipe on every wake-up, a repeated request included,
        // or epoll would report it again at once, for ever.
        let mut byte = [0u8; 8];
        while matches!(sys::read(self.wake.as_fd(), &mut byte), Ok(n) if n > 0) {}
        if self.drain.is_some() {
            return;
        }
        self.acceptor.close();
        log!(
            Level::Debug,
            "shutting down: {} connection(s) open",
            self.table.live()
        );
        self.drain = Some(Drain::begin(
            &mut self.table,
            self.clock.tick,
            self.cfg.shutdown_timeout,
        ));
    }

    /// The earliest timer, as a coarse monotonic time.
    fn next_deadline(&self) -> Option<std::time::Duration> {
        let now = self.clock.tick;
        let ticks = [
            self.idle.next_deadline(&self.table),
            self.drain
                .as_ref()
                .map(|d| d.next_deadline(&self.table, now)),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| self.clock.at(t));
        [ticks, self.acceptor.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timers(&mut self) {
        let now = self.clock.tick;
        for idx in self.idle.expired(&self.table, now) {
            self.close(idx, CloseReason::Idle);
        }
        self.accept_timers();
        if let Some(drain) = &self.drain {
            let timed_out = drain.timed_out(now);
            let closing = drain.on_timer(&self.table, now);
            let left = closing.len();
            for (idx, why) in closing {
                self.close(idx, why);
            }
            if timed_out && left > 0 {
                log!(
                    Level::Warn,
                    "shutdown timeout: closed {left} connection(s) still busy"
                );
            }
        }
    }
}
