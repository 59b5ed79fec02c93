//! A per-key rate limiter (token bucket per key) in a fixed-size table.
//!
//! Each key gets a bucket of `rate` tokens that refills at `rate` per second (burst = rate).
//! A bucket is stored as one number, its *theoretical arrival time* (GCRA, the token bucket's
//! exact equivalent): the instant at which it would be full again. A request is allowed when
//! the bucket holds a token, i.e. `tat − now ≤ (rate − 1) × interval`; then `tat` moves one
//! interval on. Refused requests change nothing, so a source that keeps sending over its limit
//! is still served at exactly `rate` per second.
//!
//! **Bounded.** The table is set-associative: `capacity` slots in sets of [`WAYS`]; a key hashes
//! (SipHash, randomly keyed per table, so a sender cannot aim at one set) to one set and lives
//! in one of its slots. Every call costs one hash and at most [`WAYS`] comparisons: O(1). A new
//! key takes a free slot or one whose bucket is full again (forgetting it loses nothing);
//! failing that it evicts the slot whose bucket is closest to full — the least recently
//! limited. Eviction only ever errs on the lenient side (the evicted key starts again with a
//! full bucket), and sources being actively limited have the fullest-spent buckets, so they are
//! the last to go. Memory: `capacity × size_of::<Slot<K>>()` (32 bytes for `IpAddr`), allocated
//! once. Time is passed in: there is no clock inside.

use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Duration;

/// Slots per set.
pub const WAYS: usize = 8;

#[derive(Clone, Copy)]
struct Slot<K> {
    key: Option<K>,
    /// Theoretical arrival time, nanoseconds on the caller's clock.
    tat: u64,
}

/// Token buckets per key, at most `capacity` keys remembered.
pub struct RateLimiter<K> {
    interval_ns: u64,
    tolerance_ns: u64,
    slots: Box<[Slot<K>]>,
    set_mask: usize,
    hasher: RandomState,
    evictions: u64,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    /// `rate` requests per second per key, burst `rate`; 0 means unlimited (and allocates
    /// nothing). `capacity` is rounded up to a power of two, at least one set of [`WAYS`].
    pub fn new(rate: u32, capacity: usize) -> RateLimiter<K> {
        let slots = if rate == 0 {
            0
        } else {
            capacity.max(WAYS).next_power_of_two()
        };
        let interval_ns = if rate == 0 {
            0
        } else {
            1_000_000_000 / u64::from(rate)
        };
        RateLimiter {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(rate.saturating_sub(1)),
            slots: vec![Slot { key: None, tat: 0 }; slots].into_boxed_slice(),
            set_mask: (slots / WAYS).saturating_sub(1),
            hasher: RandomState::new(),
            evictions: 0,
        }
    }

    /// Whether `key` may have one more request at `now` (any monotonic clock, the same one on
    /// every call); counts it if so.
    pub fn allow(&mut self, key: K, now: Duration) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let set = (self.hasher.hash_one(key) as usize) & self.set_mask;
        let ways = &mut self.slots[set * WAYS..][..WAYS];
        let slot = match ways.iter().position(|s| s.key == Some(key)) {
            Some(i) => &mut ways[i],
            None => {
                // A free slot or a full bucket costs nothing to reuse; else the fullest bucket.
                let i = ways
                    .iter()
                    .position(|s| s.key.is_none() || s.tat <= now)
                    .unwrap_or_else(|| {
                        self.evictions += 1;
                        (0..WAYS).min_by_key(|&i| ways[i].tat).unwrap_or(0)
                    });
                ways[i] = Slot {
                    key: Some(key),
                    tat: now,
                };
                &mut ways[i]
            }
        };
        let tat = slot.tat.max(now);
        if tat - now > self.tolerance_ns {
            return false;
        }
        slot.tat = tat + self.interval_ns;
        true
    }

    /// Slots in the table: the most keys it remembers (0 when unlimited).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keys currently remembered (O(capacity); for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.key.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys forgotten while their bucket was not yet full again (the table was too small).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 + n)) // 198.18.0.0/15
    }

    fn ms(n: u64) -> Duration {
        Duration::from_secs(1000) + Duration::from_millis(n)
    }

    fn allowed(r: &mut RateLimiter<IpAddr>, key: IpAddr, now: Duration, tries: usize) -> usize {
        (0..tries).filter(|_| r.allow(key, now)).count()
    }

    #[test]
    fn burst_then_limit_holds() {
        let mut r = RateLimiter::new(5, 64);
        assert_eq!(
            allowed(&mut r, ip(1), ms(0), 100),
            5,
            "burst of 5, then none"
        );
        assert_eq!(
            allowed(&mut r, ip(1), ms(100), 100),
            0,
            "half a token is none"
        );
        // Over one second of steady over-limit sending, exactly 5 more get through.
        let total: usize = (1..=10)
            .map(|i| allowed(&mut r, ip(1), ms(i * 100), 10))
            .sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let mut r = RateLimiter::new(5, 64);
        assert_eq!(allowed(&mut r, ip(1), ms(0), 5), 5);
        assert_eq!(
            allowed(&mut r, ip(1), ms(200), 10),
            1,
            "one token per 200 ms"
        );
        assert_eq!(allowed(&mut r, ip(1), ms(600), 10), 2);
        // After a long pause the bucket is full again, but holds no more than the burst.
        assert_eq!(allowed(&mut r, ip(1), ms(60_000), 100), 5);
    }

    #[test]
    fn keys_are_independent() {
        let mut r = RateLimiter::new(3, 64);
        assert_eq!(allowed(&mut r, ip(1), ms(0), 10), 3);
        assert_eq!(
            allowed(&mut r, ip(2), ms(0), 10),
            3,
            "another source is served"
        );
        assert_eq!(allowed(&mut r, ip(1), ms(0), 10), 0);
    }

    #[test]
    fn zero_is_unlimited_and_allocates_nothing() {
        let mut r = RateLimiter::new(0, 1 << 20);
        assert_eq!(r.capacity(), 0);
        assert_eq!(allowed(&mut r, ip(1), ms(0), 100_000), 100_000);
    }

    #[test]
    fn table_stays_bounded_under_many_sources() {
        let mut r = RateLimiter::new(10, 1000);
        assert_eq!(r.capacity(), 1024);
        for n in 0..200_000 {
            assert!(r.allow(ip(n), ms(0)), "a new source has a full bucket");
        }
        assert_eq!(r.capacity(), 1024, "no growth");
        assert!(r.len() <= 1024);
        assert!(r.evictions() >= 200_000 - 1024);
    }

    #[test]
    fn a_limited_source_is_not_forgotten_by_a_flood_of_new_ones() {
        let mut r = RateLimiter::new(10, 64);
        assert_eq!(allowed(&mut r, ip(0), ms(0), 50), 10);
        for n in 1..100_000 {
            r.allow(ip(n), ms(0));
        }
        assert_eq!(
            allowed(&mut r, ip(0), ms(0), 10),
            0,
            "still limited: the spent bucket outlives the flood's fresh ones"
        );
    }

    #[test]
    fn many_sources_each_get_exactly_their_rate() {
        let mut r = RateLimiter::new(4, 1 << 14);
        for round in 0..3u64 {
            for n in 0..2000 {
                let got = allowed(&mut r, ip(n), ms(round * 1000), 10);
                assert_eq!(got, 4, "source {n} in second {round}");
            }
        }
        assert_eq!(r.len(), 2000);
    }
}
