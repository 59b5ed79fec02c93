//! The idle timeout: a connection with no traffic in either direction for `--idle-timeout` is
//! closed. The table's activity list is ordered by last activity, so expiry pops from its head
//! and a tick costs O(expired), never a scan of every connection.

use std::time::Duration;

use super::table::Table;
use crate::conn::{Tick, ticks_ceil};

/// Idle timeout in ticks; `None`: off.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeout(Option<u64>);

impl IdleTimeout {
    /// Zero turns it off; a huge value saturates (never expires in practice, never overflows).
    pub fn new(timeout: Duration) -> IdleTimeout {
        IdleTimeout((!timeout.is_zero()).then(|| ticks_ceil(timeout)))
    }

    /// The tick at which a connection last active at `last` expires: a whole timeout after
    /// the end of its last tick.
    fn expiry(ticks: u64, last: Tick) -> u64 {
        u64::from(last).saturating_add(ticks).saturating_add(1)
    }

    /// Connections expired at `now`, oldest first.
    pub fn expired<S>(&self, table: &Table<S>, now: Tick) -> Vec<u32> {
        let Some(ticks) = self.0 else {
            return Vec::new();
        };
        table
            .by_activity()
            .take_while(|(_, c)| Self::expiry(ticks, c.last_active()) <= u64::from(now))
            .map(|(i, _)| i)
            .collect()
    }

    /// The tick at which the oldest connection expires.
    pub fn next_deadline<S>(&self, table: &Table<S>) -> Option<u64> {
        let ticks = self.0?;
        table.oldest().map(|(_, last)| Self::expiry(ticks, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Conn;

    #[test]
    fn expires_a_whole_timeout_after_the_last_tick_and_never_overflows() {
        let mut t: Table<u32> = Table::default();
        t.insert(0, Conn::new(10));
        t.insert(1, Conn::new(12));
        let idle = IdleTimeout::new(Duration::from_secs(1));
        assert_eq!(idle.next_deadline(&t), Some(21));
        assert!(idle.expired(&t, 20).is_empty());
        assert_eq!(idle.expired(&t, 21), [0]);
        assert_eq!(idle.expired(&t, 23), [0, 1]);
        let off = IdleTimeout::new(Duration::ZERO);
        assert_eq!(off.next_deadline(&t), None);
        assert!(off.expired(&t, u32::MAX).is_empty());
        let huge = IdleTimeout::new(Duration::MAX);
        assert_eq!(huge.next_deadline(&t), Some(u64::MAX));
        assert!(huge.expired(&t, u32::MAX).is_empty());
    }
}
