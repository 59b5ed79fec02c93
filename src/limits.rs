//! Per-client-address limits shared by all workers: concurrent connections
//! (`--max-conns-per-ip`) and new connections per second (`--accept-rate-per-ip`).
//!
//! A client is an [`IpKey`]: an IPv4 address, or an IPv6 address cut to its first
//! `--ipv6-prefix` bits (default /64, the block one subscriber usually gets; a client with one
//! /64 has 2^64 addresses to rotate through). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
//! a dual-stack listener sees IPv4 clients) is that IPv4 address.
//!
//! Both tables are global because SO_REUSEPORT spreads one client's connections over all
//! workers; both are split into [`SHARDS`] independently locked shards (chosen by a randomly
//! keyed SipHash of the key, so a client cannot aim at one shard) so that workers accepting at
//! once rarely wait for each other. Each call is one hash, one uncontended lock, one O(1) map
//! operation.
//!
//! **Bounded.** [`ConnLimit`] holds an entry only while its count is above zero: a count is the
//! number of live [`IpSlot`]s for the key, and each slot belongs to one open connection, so the
//! table never holds more keys than there are open connections — which `--max-connections`
//! bounds. [`AcceptRate`] remembers at most its `capacity` keys (see there).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Independently locked parts of each table.
pub const SHARDS: usize = 64;

/// The default IPv6 grouping (`--ipv6-prefix`).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The client a limit counts: an IPv4 address or an IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(Ipv4Addr),
    /// The address with the bits after `prefix` cleared.
    V6 {
        net: Ipv6Addr,
        prefix: u8,
    },
}

impl IpKey {
    /// The key of `ip`, IPv6 addresses grouped by their first `v6_prefix` bits (clamped to
    /// 1..=128, so the function is total; the command line rejects other values).
    pub fn new(ip: IpAddr, v6_prefix: u8) -> IpKey {
        match ip {
            IpAddr::V4(a) => IpKey::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => {
                    let prefix = v6_prefix.clamp(1, 128);
                    let mask = u128::MAX << (128 - u32::from(prefix));
                    IpKey::V6 {
                        net: Ipv6Addr::from(u128::from(a) & mask),
                        prefix,
                    }
                }
            },
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpKey::V4(a) => write!(f, "{a}"),
            IpKey::V6 { net, prefix: 128 } => write!(f, "{net}"),
            IpKey::V6 { net, prefix } => write!(f, "{net}/{prefix}"),
        }
    }
}

/// A shard on its own cache line, so workers locking neighbours do not slow each other.
#[repr(align(64))]
struct Shard<T>(Mutex<T>);

impl<T> Shard<T> {
    /// A poisoned lock only means another thread panicked while holding it; the maps stay
    /// consistent (every update is one map operation), and a release in `Drop` must not panic.
    fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn shards<T>(mut make: impl FnMut() -> T) -> Box<[Shard<T>]> {
    (0..SHARDS).map(|_| Shard(Mutex::new(make()))).collect()
}

fn shard_of(hasher: &RandomState, key: IpKey) -> usize {
    // The top bits: the inner HashMaps use their own keys, so this does not skew them.
    (hasher.hash_one(key) >> (64 - SHARDS.trailing_zeros())) as usize
}

impl fmt::Debug for ConnLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnLimit(max {})", self.table.max)
    }
}

impl fmt::Debug for AcceptRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptRate")
    }
}

/// `--max-conns-per-ip`: at most `max` open connections per [`IpKey`], across all workers.
/// Cheap to clone (one `Arc`); every worker holds a clone.
#[derive(Clone)]
pub struct ConnLimit {
    table: Arc<ConnTable>,
}

struct ConnTable {
    max: u32,
    v6_prefix: u8,
    hasher: RandomState,
    shards: Box<[Shard<HashMap<IpKey, u32>>]>,
}

/// One connection's place in the [`ConnLimit`] count of its client. The connection owns it;
/// dropping it (on whatever path the connection closes) gives the place back. It cannot be
/// cloned, so a place cannot be given back twice.
#[must_use = "dropping the slot releases it at once"]
pub struct IpSlot {
    table: Arc<ConnTable>,
    key: IpKey,
    shard: u8,
}

/// The client already has `max` connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub key: IpKey,
    pub max: u32,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} already has {} connections (--max-conns-per-ip)",
            self.key, self.max
        )
    }
}

impl ConnLimit {
    /// `v6_prefix` is clamped to 1..=128 (the command line rejects other values).
    pub fn new(max: NonZeroU32, v6_prefix: u8) -> ConnLimit {
        ConnLimit {
            table: Arc::new(ConnTable {
                max: max.get(),
                v6_prefix: v6_prefix.clamp(1, 128),
                hasher: RandomState::new(),
                shards: shards(HashMap::new),
            }),
        }
    }

    pub fn key(&self, ip: IpAddr) -> IpKey {
        IpKey::new(ip, self.table.v6_prefix)
    }

    /// Takes one of `ip`'s places, or refuses if its client has `max` already.
    pub fn acquire(&self, ip: IpAddr) -> Result<IpSlot, Refused> {
        let t = &self.table;
        let key = self.key(ip);
        let shard = shard_of(&t.hasher, key);
        let mut map = t.shards[shard].lock();
        let count = map.entry(key).or_insert(0);
        if *count >= t.max {
            return Err(Refused { key, max: t.max });
        }
        *count += 1;
        Ok(IpSlot {
            table: Arc::clone(t),
            key,
            shard: shard as u8,
        })
    }

    /// Open connections counted for `ip`'s client.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let key = self.key(ip);
        let map = self.table.shards[shard_of(&self.table.hasher, key)].lock();
        map.get(&key).copied().unwrap_or(0)
    }

    /// Clients with at least one open connection (the table's size).
    pub fn len(&self) -> usize {
        self.table.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IpSlot {
    pub fn key(&self) -> IpKey {
        self.key
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.table.shards[usize::from(self.shard)].lock();
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        } else {
            debug_assert!(false, "IpSlot for {} without an entry", self.key);
        }
    }
}

impl fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpSlot({})", self.key)
    }
}

/// `--accept-rate-per-ip`: new connections per second per [`IpKey`], a token bucket of burst
/// `rate` refilled at `rate` per second, across all workers. Time is passed in (any monotonic
/// clock, the same on every call).
///
/// **Bounded and exact.** A bucket is one number, its theoretical arrival time (GCRA): the
/// instant it is full again, never more than one second ahead. A full bucket is the same as no
/// entry, so a key untouched for a second can be forgotten for free. Each shard keeps two
/// generations of keys, current and previous, and starts a new one each second, dropping the
/// previous (untouched for over a second: all full). Only when a shard would hold more than its
/// share of `capacity` keys does it start a new generation early, forgetting keys that may not
/// be full yet: those clients get a fresh burst (errs on the lenient side; counted in
/// [`AcceptRate::early_rotations`]). Memory: at most `capacity` entries.
#[derive(Clone)]
pub struct AcceptRate {
    table: Arc<RateTable>,
}

struct RateTable {
    v6_prefix: u8,
    hasher: RandomState,
    shards: Box<[Shard<Buckets>]>,
}

/// The default [`AcceptRate`] capacity: clients remembered across all shards.
pub const DEFAULT_RATE_CAPACITY: usize = 64 * 1024;

const GENERATION_NS: u64 = 1_000_000_000;

/// One shard's buckets (single-threaded; the shard's lock guards it).
struct Buckets {
    interval_ns: u64,
    tolerance_ns: u64,
    capacity: usize,
    generation_start: u64,
    current: HashMap<IpKey, u64>,
    previous: HashMap<IpKey, u64>,
    early_rotations: u64,
}

impl Buckets {
    fn new(rate: NonZeroU32, capacity: usize) -> Buckets {
        let interval_ns = GENERATION_NS / u64::from(rate.get());
        Buckets {
            interval_ns,
            // A bucket holds `rate` tokens: the arrival time may run `rate - 1` intervals ahead.
            tolerance_ns: interval_ns * u64::from(rate.get() - 1),
            capacity: capacity.max(1),
            generation_start: 0,
            current: HashMap::new(),
            previous: HashMap::new(),
            early_rotations: 0,
        }
    }

    fn rotate(&mut self, now: u64) {
        // Keep both maps' allocations: clear, then swap.
        self.previous.clear();
        std::mem::swap(&mut self.current, &mut self.previous);
        self.generation_start = now;
    }

    fn allow(&mut self, key: IpKey, now: u64) -> bool {
        if now >= self.generation_start.saturating_add(2 * GENERATION_NS) {
            // Both generations are over a second old: everything in them is full.
            self.current.clear();
            self.previous.clear();
            self.generation_start = now;
        } else if now >= self.generation_start + GENERATION_NS {
            self.rotate(now);
        }
        let tat = match self.current.get(&key) {
            Some(&tat) => tat,
            None => {
                let tat = self.previous.remove(&key).unwrap_or(now);
                if self.current.len() + self.previous.len() >= self.capacity {
                    self.early_rotations += 1;
                    self.rotate(now);
                    if self.previous.len() >= self.capacity {
                        self.previous.clear();
                    }
                }
                tat
            }
        };
        let tat = tat.max(now);
        let allowed = tat - now <= self.tolerance_ns;
        let tat = if allowed { tat + self.interval_ns } else { tat };
        self.current.insert(key, tat);
        allowed
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl AcceptRate {
    /// `rate` new connections per second per client, burst `rate`; at most `capacity` clients
    /// remembered (split evenly over the shards).
    pub fn new(rate: NonZeroU32, capacity: usize, v6_prefix: u8) -> AcceptRate {
        let per_shard = capacity.div_ceil(SHARDS);
        AcceptRate {
            table: Arc::new(RateTable {
                v6_prefix: v6_prefix.clamp(1, 128),
                hasher: RandomState::new(),
                shards: shards(|| Buckets::new(rate, per_shard)),
            }),
        }
    }

    pub fn key(&self, ip: IpAddr) -> IpKey {
        IpKey::new(ip, self.table.v6_prefix)
    }

    /// Whether `ip`'s client may open one more connection at `now`; counts it if so. A refused
    /// attempt costs the client nothing: it is served again at exactly `rate` per second.
    pub fn allow(&self, ip: IpAddr, now: Duration) -> bool {
        let key = self.key(ip);
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.table.shards[shard_of(&self.table.hasher, key)]
            .lock()
            .allow(key, now)
    }

    /// Clients remembered (at most the capacity).
    pub fn len(&self) -> usize {
        self.table.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Generations started early because a shard was full (clients forgotten early).
    pub fn early_rotations(&self) -> u64 {
        self.table
            .shards
            .iter()
            .map(|s| s.lock().early_rotations)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn n(x: u32) -> NonZeroU32 {
        NonZeroU32::new(x).unwrap()
    }

    /// 198.18.0.0/15 plus `i`.
    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i))
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_unmap_ipv4() {
        assert_eq!(IpKey::new(ip("192.0.2.1"), 64).to_string(), "192.0.2.1");
        assert_eq!(
            IpKey::new(ip("::ffff:192.0.2.1"), 64),
            IpKey::new(ip("192.0.2.1"), 64)
        );
        let a = IpKey::new(ip("2001:db8:1:2:aaaa::1"), 64);
        assert_eq!(a, IpKey::new(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64));
        assert_ne!(a, IpKey::new(ip("2001:db8:1:3::1"), 64));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            IpKey::new(ip("2001:db8:1:2::1"), 48),
            IpKey::new(ip("2001:db8:1:ffff::1"), 48)
        );
        assert_ne!(
            IpKey::new(ip("2001:db8::1"), 128),
            IpKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(
            IpKey::new(ip("2001:db8::1"), 128).to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            IpKey::new(ip("8001::1"), 1).to_string(),
            "8000::/1",
            "prefix 1 keeps one bit"
        );
        // Not mapped: the IPv4-compatible form and NAT64 are IPv6 networks.
        assert!(matches!(
            IpKey::new(ip("::192.0.2.1"), 64),
            IpKey::V6 { .. }
        ));
        assert!(matches!(
            IpKey::new(ip("64:ff9b::192.0.2.1"), 64),
            IpKey::V6 { .. }
        ));
    }

    #[test]
    fn conn_limit_refuses_over_max_and_releases_on_drop() {
        let l = ConnLimit::new(n(2), 64);
        let a = l.acquire(ip("192.0.2.1")).unwrap();
        let b = l.acquire(ip("::ffff:192.0.2.1")).unwrap();
        let refused = l.acquire(ip("192.0.2.1")).unwrap_err();
        assert_eq!(refused.max, 2);
        assert_eq!(
            refused.to_string(),
            "192.0.2.1 already has 2 connections (--max-conns-per-ip)"
        );
        assert_eq!(l.count(ip("192.0.2.1")), 2, "a refusal takes nothing");
        let other = l
            .acquire(ip("192.0.2.2"))
            .expect("another client is served");
        drop(a);
        assert_eq!(l.count(ip("192.0.2.1")), 1);
        let c = l
            .acquire(ip("192.0.2.1"))
            .expect("a released place is reusable");
        drop((b, c, other));
        assert_eq!(l.count(ip("192.0.2.1")), 0);
        assert!(l.is_empty(), "entries go when their count reaches zero");
    }

    #[test]
    fn conn_limit_groups_ipv6_by_64() {
        let l = ConnLimit::new(n(1), 64);
        let _a = l.acquire(ip("2001:db8:0:1::1")).unwrap();
        assert!(l.acquire(ip("2001:db8:0:1:ffff::2")).is_err(), "same /64");
        let _b = l.acquire(ip("2001:db8:0:2::1")).expect("another /64");
        let l = ConnLimit::new(n(1), 128);
        let _c = l.acquire(ip("2001:db8:0:1::1")).unwrap();
        let _d = l
            .acquire(ip("2001:db8:0:1::2"))
            .expect("/128: every address");
    }

    #[test]
    fn conn_limit_size_is_the_open_connections() {
        let l = ConnLimit::new(n(3), 64);
        let mut slots: Vec<IpSlot> = (0..10_000).map(|i| l.acquire(v4(i)).unwrap()).collect();
        assert_eq!(l.len(), 10_000);
        slots.truncate(100);
        assert_eq!(l.len(), 100, "the table shrinks with the connections");
        slots.clear();
        assert!(l.is_empty());
    }

    #[test]
    fn conn_limit_is_exact_under_concurrent_acquire_and_release() {
        const THREADS: usize = 8;
        const MAX: u32 = 3;
        let l = ConnLimit::new(n(MAX), 64);
        let barrier = Barrier::new(THREADS);
        let max_seen = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (l, barrier, max_seen) = (&l, &barrier, &max_seen);
                s.spawn(move || {
                    barrier.wait();
                    let mut held = Vec::new();
                    for i in 0..20_000u32 {
                        // Eight threads fight over four clients.
                        let addr = v4((i + t as u32) % 4);
                        if let Ok(slot) = l.acquire(addr) {
                            let now = l.count(addr);
                            max_seen.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                            held.push(slot);
                        }
                        if held.len() > 2 || (i % 3 == 0 && !held.is_empty()) {
                            drop(held.remove(0));
                        }
                    }
                });
            }
        });
        assert!(max_seen.into_inner() <= MAX, "never more than max at once");
        assert!(l.is_empty(), "every slot came back: {} left", l.len());
        // And all of them are usable again.
        let _full: Vec<IpSlot> = (0..MAX).map(|_| l.acquire(v4(0)).unwrap()).collect();
        assert!(l.acquire(v4(0)).is_err());
    }

    fn at_ms(ms: u64) -> Duration {
        Duration::from_secs(100) + Duration::from_millis(ms)
    }

    fn allowed(r: &AcceptRate, addr: IpAddr, now: Duration, tries: usize) -> usize {
        (0..tries).filter(|_| r.allow(addr, now)).count()
    }

    #[test]
    fn accept_rate_bursts_then_refills_at_the_rate() {
        let r = AcceptRate::new(n(5), 1024, 64);
        let a = ip("192.0.2.1");
        assert_eq!(allowed(&r, a, at_ms(0), 100), 5, "burst of 5");
        assert_eq!(allowed(&r, a, at_ms(100), 100), 0, "half a token is none");
        assert_eq!(allowed(&r, a, at_ms(200), 100), 1, "one per 200 ms");
        assert_eq!(
            allowed(&r, ip("192.0.2.2"), at_ms(200), 100),
            5,
            "per client"
        );
        // Steady over-limit tries for three seconds: exactly the rate gets through.
        let total: usize = (1..=30)
            .map(|i| allowed(&r, a, at_ms(200 + i * 100), 10))
            .sum();
        assert_eq!(total, 15);
        // After a pause the bucket is full again, no fuller than the burst.
        assert_eq!(allowed(&r, a, at_ms(60_000), 100), 5);
        assert_eq!(allowed(&r, ip("::ffff:192.0.2.1"), at_ms(60_000), 100), 0);
    }

    #[test]
    fn accept_rate_generations_forget_only_full_buckets() {
        let r = AcceptRate::new(n(2), 1024, 64);
        let a = ip("2001:db8::1");
        assert_eq!(allowed(&r, a, at_ms(0), 10), 2);
        // Across the generation boundaries the state survives while it matters.
        assert_eq!(allowed(&r, a, at_ms(999), 10), 1);
        // Another address in the same /64 spends the same bucket.
        assert_eq!(allowed(&r, ip("2001:db8::2"), at_ms(1200), 10), 1);
        assert_eq!(allowed(&r, a, at_ms(1499), 10), 0);
        assert_eq!(allowed(&r, a, at_ms(1500), 10), 1);
        assert_eq!(r.len(), 1);
        // Back after a pause: a full burst, and its shard has dropped both old generations.
        assert_eq!(allowed(&r, a, at_ms(5000), 10), 2);
        assert_eq!(r.len(), 1);
        assert_eq!(r.early_rotations(), 0);
    }

    #[test]
    fn accept_rate_keeps_every_unfull_bucket_through_other_traffic() {
        let r = AcceptRate::new(n(10), 1 << 16, 64);
        let a = ip("192.0.2.1");
        let others = |t: u64| {
            for i in 0..2000 {
                r.allow(v4(i), at_ms(t));
            }
        };
        assert_eq!(allowed(&r, a, at_ms(0), 100), 10);
        others(300);
        others(600);
        // 600 ms refilled 6 tokens: the spent bucket was not forgotten by the traffic.
        assert_eq!(allowed(&r, a, at_ms(600), 100), 6);
        others(1100); // a new generation in every shard
        assert_eq!(
            allowed(&r, a, at_ms(1100), 100),
            5,
            "kept across the generation"
        );
        assert_eq!(r.early_rotations(), 0);
    }

    #[test]
    fn accept_rate_stays_bounded_under_many_clients() {
        let r = AcceptRate::new(n(10), 4096, 64);
        for i in 0..200_000 {
            assert!(
                r.allow(v4(i), at_ms(u64::from(i / 1000))),
                "new: full bucket"
            );
            assert!(r.len() <= 4096, "at {i}: {}", r.len());
        }
        assert!(r.early_rotations() > 0);
        // One key per shard: the bound holds exactly, even when a shard's current generation
        // alone is full.
        let r = AcceptRate::new(n(10), SHARDS, 64);
        for i in 0..20_000 {
            r.allow(v4(i), at_ms(0));
            assert!(r.len() <= SHARDS, "at {i}: {}", r.len());
        }
    }

    #[test]
    fn accept_rate_is_global_across_threads() {
        let r = AcceptRate::new(n(50), 1024, 64);
        let got = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let k = allowed(&r, ip("192.0.2.1"), at_ms(0), 1000);
                    got.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        assert_eq!(
            got.into_inner(),
            50,
            "one burst for the client, not one per thread"
        );
    }

    #[test]
    fn cli_flags_reach_the_config() {
        use crate::cli::Cli;
        use clap::Parser;
        let c = Cli::try_parse_from(["epoll-echo"]).unwrap().config();
        assert_eq!(c.max_conns_per_ip, 0);
        assert_eq!(c.accept_rate_per_ip, 0);
        assert_eq!(c.ipv6_prefix, DEFAULT_IPV6_PREFIX);
        assert!(!c.proxy_protocol);
        assert_eq!(c.proxy_header_timeout, Duration::from_secs(5));
        let c = Cli::try_parse_from([
            "epoll-echo",
            "--max-conns-per-ip",
            "100",
            "--accept-rate-per-ip",
            "20",
            "--ipv6-prefix",
            "48",
            "--proxy-protocol",
            "--proxy-header-timeout",
            "750ms",
        ])
        .unwrap()
        .config();
        assert_eq!(c.max_conns_per_ip, 100);
        assert_eq!(c.accept_rate_per_ip, 20);
        assert_eq!(c.ipv6_prefix, 48);
        assert!(c.proxy_protocol);
        assert_eq!(c.proxy_header_timeout, Duration::from_millis(750));
    }
}
