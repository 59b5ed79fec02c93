//! Rate-limited warnings: count every occurrence, print at most one line a second.

use std::time::Duration;

const LOG_EVERY: Duration = Duration::from_secs(1);

/// Counts occurrences; a line is due at most once per [`LOG_EVERY`], with the count since.
#[derive(Default, Debug)]
pub struct Throttled {
    unreported: u64,
    last: Option<Duration>,
}

impl Throttled {
    /// Counts one occurrence; returns the count to report if a line is due now.
    pub fn hit(&mut self, now: Duration) -> Option<u64> {
        self.unreported += 1;
        self.due(now)
    }

    /// The held-back count, if a line is due now.
    pub fn due(&mut self, now: Duration) -> Option<u64> {
        let ready = self.last.is_none_or(|t| now >= t + LOG_EVERY);
        if self.unreported > 0 && ready {
            self.last = Some(now);
            return Some(std::mem::take(&mut self.unreported));
        }
        None
    }

    /// When the held-back count is due (for the loop's timeout).
    pub fn deadline(&self) -> Option<Duration> {
        (self.unreported > 0).then(|| self.last.map_or(Duration::ZERO, |t| t + LOG_EVERY))
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
