//! A worker's connections and the logic that schedules them — the run queue, the idle timeout
//! and the drain — without fds: the event loop passes in how to serve one connection and what
//! to do with a closed one, and the simulator passes in fakes. Generic over the socket handle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::drain::Drain;
use super::idle::IdleTimeout;
use super::service::Outcome;
use super::table::{Stall, Table};
use crate::conn::{CloseReason, Conn, Params, Readiness, StallCheck, Tick, Turn};

/// What a batch of turns moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub read: u64,
    pub written: u64,
    /// Of `read`: spliced.
    pub spliced: u64,
    /// A turn found the splice pipe unusable: the worker must stop splicing.
    pub pipe_broken: bool,
}

#[derive(Debug)]
pub struct Conns<S> {
    table: Table<S>,
    running: Vec<u32>,
    params: Params,
    idle: IdleTimeout,
    drain: Option<Drain>,
    /// Stage deadlines (`--proxy-header-timeout`, `--tls-handshake-timeout`): (tick, slot),
    /// earliest first — a heap, since the timeouts differ. An entry is checked against the
    /// connection when it comes due (the stage may be done, the slot reused), so nothing is
    /// removed early; there is one entry per connection accepted within the longest timeout.
    deadlines: BinaryHeap<Reverse<(Tick, u32)>>,
    /// Stall checks of bulk streams held back by their read-when-sent rule
    /// ([`crate::conn::STALL_TICKS`]): (tick, slot), one per slot marked [`Stall::Armed`]
    /// (a slot reused while its old entry is out may briefly have two; the extra one goes
    /// once the stream is no longer held back).
    stalls: BinaryHeap<Reverse<(Tick, u32)>>,
    /// Bulk streams marked stalled so far (the simulator reports it).
    stalled: u64,
}

impl<S> Conns<S> {
    pub fn new(params: Params, idle_timeout: Duration) -> Conns<S> {
        Conns {
            table: Table::default(),
            running: Vec::new(),
            params,
            idle: IdleTimeout::new(idle_timeout),
            drain: None,
            deadlines: BinaryHeap::new(),
            stalls: BinaryHeap::new(),
            stalled: 0,
        }
    }

    pub fn table(&self) -> &Table<S> {
        &self.table
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Bulk streams marked stalled so far (see [`crate::conn::STALL_TICKS`]).
    pub fn stalled(&self) -> u64 {
        self.stalled
    }

    pub fn live(&self) -> usize {
        self.table.live()
    }

    /// The slot index the next [`Conns::insert`] uses (register the socket under it first).
    pub fn next_index(&mut self) -> u32 {
        self.table.next_index()
    }

    /// Stores a newly accepted connection (with its stages: their deadline is armed here).
    pub fn insert(&mut self, sock: S, conn: Conn) -> u32 {
        let deadline = conn.deadline();
        let idx = self.table.insert(sock, conn);
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, idx)));
        }
        idx
    }

    /// Records an epoll event for slot `idx` and queues it for a turn.
    pub fn ready(&mut self, idx: u32, r: Readiness) {
        self.table.ready(idx, r);
    }

    pub fn has_queued(&self) -> bool {
        self.table.has_queued()
    }

    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Slots closed in this batch become reusable.
    pub fn end_batch(&mut self) {
        self.table.end_batch();
    }

    pub fn disable_splice(&mut self) {
        self.params.splice = crate::conn::Splice::Off;
    }

    /// Closes one connection for `why` (it leaves the table and goes to `closed`).
    pub fn close(
        &mut self,
        idx: u32,
        why: CloseReason,
        closed: &mut impl FnMut(S, Conn, CloseReason),
    ) {
        if let Some((sock, conn)) = self.table.remove(idx) {
            closed(sock, conn, why);
        }
    }

    /// Gives every queued connection one budgeted turn: `serve` performs it (the worker's
    /// `service::serve` over the fd), `closed` receives the connections that end.
    pub fn serve_queued(
        &mut self,
        now: Tick,
        mut serve: impl FnMut(&S, &mut Conn, &mut Turn) -> Outcome,
        closed: &mut impl FnMut(S, Conn, CloseReason),
    ) -> Moved {
        let mut moved = Moved::default();
        let mut running = std::mem::take(&mut self.running);
        self.table.take_run_queue(&mut running);
        for &idx in &running {
            let stall = self.table.stall(idx);
            let Some((sock, conn)) = self.table.get_mut(idx) else {
                continue; // closed earlier in this pass
            };
            let before = conn.last_active();
            let mut turn = Turn::new(&self.params, now);
            turn.stalled = stall == Stall::Stalled;
            let outcome = serve(sock, conn, &mut turn);
            moved.read += turn.read as u64;
            moved.written += turn.written as u64;
            moved.spliced += turn.spliced as u64;
            let quiet = self.drain.as_ref().and_then(|d| d.after_turn(conn, now));
            let check_at = conn.stall_check_at();
            self.table.touch(idx, before);
            let stall = match (stall, turn.stalled, check_at) {
                (Stall::Stalled, true, _) => Stall::Stalled,
                (Stall::Armed, _, _) => Stall::Armed, // its check is in the heap
                (_, _, Some(at)) => {
                    self.stalls.push(Reverse((at, idx)));
                    Stall::Armed
                }
                (_, _, None) => Stall::None,
            };
            self.table.set_stall(idx, stall);
            match outcome {
                Outcome::Yield => self.table.requeue(idx),
                Outcome::Close(why) => self.close(idx, why, closed),
                Outcome::CloseAndDropPipe(why) => {
                    moved.pipe_broken = true;
                    self.params.splice = crate::conn::Splice::Off;
                    self.close(idx, why, closed);
                }
                Outcome::Wait => {
                    if let Some(why) = quiet {
                        self.close(idx, why, closed);
                    }
                }
            }
        }
        running.clear();
        self.running = running;
        moved
    }

    /// Starts the drain (see `drain`); a repeated request changes nothing.
    pub fn begin_drain(&mut self, now: Tick, timeout: Duration) {
        if self.drain.is_none() {
            self.drain = Some(Drain::begin(&mut self.table, now, timeout));
        }
    }

    /// Closes idle connections and, while draining, quiet or timed-out ones. Returns how many
    /// were closed by the shutdown timeout.
    pub fn on_timers(&mut self, now: Tick, closed: &mut impl FnMut(S, Conn, CloseReason)) -> usize {
        self.expire_deadlines(now, closed);
        self.check_stalls(now);
        for idx in self.idle.expired(&self.table, now) {
            self.close(idx, CloseReason::Idle, closed);
        }
        let Some(drain) = &self.drain else {
            return 0;
        };
        let closing = drain.on_timer(&self.table, now);
        let timed_out = closing
            .iter()
            .filter(|(_, why)| *why == CloseReason::ShutdownTimeout)
            .count();
        for (idx, why) in closing {
            self.close(idx, why, closed);
        }
        timed_out
    }

    /// Closes connections whose stage deadline has passed ([`crate::conn::Stage::deadline`]).
    fn expire_deadlines(&mut self, now: Tick, closed: &mut impl FnMut(S, Conn, CloseReason)) {
        while let Some(idx) = pop_due(&mut self.deadlines, now) {
            // The slot may hold the same connection (done or not), a newer one, or none.
            let Some((_, conn)) = self.table.get(idx) else {
                continue;
            };
            if let Some(why) = conn.timed_out(now) {
                self.close(idx, CloseReason::StageTimeout(why), closed);
            } else if let Some(d) = conn.deadline() {
                // A later deadline (the next stage's — a TLS handshake after a PROXY header —
                // or a newer connection's in a reused slot, which then has two entries; the
                // second finds nothing to do).
                self.deadlines.push(Reverse((d, idx)));
            }
        }
    }

    /// Gives a turn to bulk streams whose client stopped taking their echo
    /// ([`Conn::stall_check`]): they read on, up to `max_pending`.
    fn check_stalls(&mut self, now: Tick) {
        while let Some(idx) = pop_due(&mut self.stalls, now) {
            let Some((_, conn)) = self.table.get(idx) else {
                continue;
            };
            if self.table.stall(idx) != Stall::Armed {
                continue; // a reused slot's old entry
            }
            match conn.stall_check(now) {
                StallCheck::Stalled => {
                    self.stalled += 1;
                    self.table.set_stall(idx, Stall::Stalled);
                    self.table.requeue(idx);
                }
                StallCheck::Again(at) => self.stalls.push(Reverse((at, idx))),
                StallCheck::Done => self.table.set_stall(idx, Stall::None),
            }
        }
    }

    /// The earliest stall check still in the heap (the simulator checks none is overdue).
    pub fn next_stall_check(&self) -> Option<Tick> {
        self.stalls.peek().map(|Reverse((at, _))| *at)
    }

    /// The next tick a timer is due, if any.
    pub fn next_deadline(&self, now: Tick) -> Option<u64> {
        [
            self.deadlines.peek().map(|Reverse((at, _))| u64::from(*at)),
            self.stalls.peek().map(|Reverse((at, _))| u64::from(*at)),
            self.idle.next_deadline(&self.table),
            self.drain
                .as_ref()
                .map(|d| d.next_deadline(&self.table, now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Pops the slot of the earliest entry of `heap` if it is due at `now`.
fn pop_due(heap: &mut BinaryHeap<Reverse<(Tick, u32)>>, now: Tick) -> Option<u32> {
    let &Reverse((at, idx)) = heap.peek()?;
    (at <= now).then(|| {
        heap.pop();
        idx
    })
}
