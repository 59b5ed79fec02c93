//! The shutdown drain, all of its rules in one place.
//!
//! On SIGINT/SIGTERM a worker closes its listener (the event loop does that) and then:
//! 1. looks at every connection once more ([`Drain::begin`] marks each readable and queues it),
//!    since data may have arrived whose edge was not handled yet;
//! 2. closes a connection with a FIN once it is **quiet**: nothing pending, nothing known
//!    unread, and no byte in either direction for [`QUIET`] — measured per connection from its
//!    own last byte, not per timer tick, so a client talking every 20 ms keeps being served;
//! 3. when `--shutdown-timeout` has passed, closes whatever is left.
//!
//! The worker calls [`Drain::after_turn`] after each turn that ended in `Wait`, and
//! [`Drain::on_timer`] on every loop pass; [`Drain::next_deadline`] is when to wake next.

use std::time::Duration;

use super::table::Table;
use crate::conn::{CloseReason, Conn, Readiness, Tick, ticks_ceil};

/// How long a connection must have been silent to be closed while draining.
pub const QUIET: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Drain {
    /// The tick at which every connection left is closed.
    deadline: u64,
}

/// Ticks of quiet needed: `last_active` is the tick its last byte fell in, so one more tick
/// makes the silence at least [`QUIET`].
fn quiet_ticks() -> u64 {
    ticks_ceil(QUIET) + 1
}

/// Nothing pending, nothing unread, silent for at least [`QUIET`].
pub fn is_quiet(conn: &Conn, now: Tick) -> bool {
    conn.is_drained() && u64::from(now) >= u64::from(conn.last_active()) + quiet_ticks()
}

impl Drain {
    /// Starts draining at `now`: every connection is marked readable and queued for a turn.
    pub fn begin<S>(table: &mut Table<S>, now: Tick, timeout: Duration) -> Drain {
        for i in table.indices() {
            table.ready(i, Readiness::READABLE);
        }
        Drain {
            deadline: u64::from(now).saturating_add(ticks_ceil(timeout)),
        }
    }

    /// After a turn that ended in `Wait`: close this connection now?
    pub fn after_turn(&self, conn: &Conn, now: Tick) -> Option<CloseReason> {
        is_quiet(conn, now).then_some(CloseReason::Quiet)
    }

    pub fn timed_out(&self, now: Tick) -> bool {
        u64::from(now) >= self.deadline
    }

    /// Connections to close at `now`: all of them once the timeout has passed, else the quiet
    /// ones (found from the head of the activity list: only connections silent for [`QUIET`]).
    pub fn on_timer<S>(&self, table: &Table<S>, now: Tick) -> Vec<(u32, CloseReason)> {
        if self.timed_out(now) {
            return table
                .indices()
                .into_iter()
                .map(|i| (i, CloseReason::ShutdownTimeout))
                .collect();
        }
        table
            .by_activity()
            .take_while(|(_, c)| u64::from(now) >= u64::from(c.last_active()) + quiet_ticks())
            .filter(|(_, c)| c.is_drained())
            .map(|(i, _)| (i, CloseReason::Quiet))
            .collect()
    }

    /// When to wake next: the timeout, or the first connection that will have been quiet long
    /// enough. Connections already silent that long but not drained (output waiting for the
    /// client, input held back) need no timer: only an edge can change them, and it counts as
    /// activity.
    pub fn next_deadline<S>(&self, table: &Table<S>, now: Tick) -> u64 {
        let quiet = table
            .by_activity()
            .map(|(_, c)| u64::from(c.last_active()) + quiet_ticks())
            .find(|&t| t > u64::from(now));
        quiet.map_or(self.deadline, |q| q.min(self.deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_is_per_connection_and_the_timeout_closes_the_rest() {
        let mut t: Table<u32> = Table::default();
        let old = t.insert(0, Conn::new(0));
        let recent = t.insert(1, Conn::new(50));
        let d = Drain::begin(&mut t, 50, Duration::from_secs(5));
        // Both were marked readable: not drained until a turn reads them dry.
        assert!(d.on_timer(&t, 50).is_empty());
        let mut q = Vec::new();
        t.take_run_queue(&mut q);
        for i in q {
            let (_, c) = t.get_mut(i).unwrap();
            let p = crate::conn::Params {
                max_pending: 10,
                read_len: 10,
                budget: 10,
                splice: crate::conn::Splice::Off,
            };
            let mut turn = crate::conn::Turn::new(&p, 50);
            assert_eq!(c.poll(&mut turn), crate::conn::Action::Read);
            c.on_read(&mut turn, crate::conn::ReadResult::WouldBlock);
        }
        let (_, c) = t.get(old).unwrap();
        assert_eq!(d.after_turn(c, 50), Some(CloseReason::Quiet));
        let (_, c) = t.get(recent).unwrap();
        assert_eq!(d.after_turn(c, 50), None, "talked this very tick");
        assert_eq!(d.next_deadline(&t, 50), 61);
        assert_eq!(d.on_timer(&t, 60), [(old, CloseReason::Quiet)]);
        assert_eq!(
            d.on_timer(&t, 61),
            [(old, CloseReason::Quiet), (recent, CloseReason::Quiet)]
        );
        assert!(!d.timed_out(99));
        assert!(d.timed_out(100));
        assert_eq!(d.on_timer(&t, 100).len(), 2);
        let forever = Drain::begin(&mut t, 7, Duration::MAX);
        assert!(!forever.timed_out(u32::MAX));
    }
}
