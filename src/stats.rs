//! Per-worker counters. Each worker counts in plain integers and publishes them once per loop
//! turn into its own cache-line-padded slot, so nothing shared is written per message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A worker's own running totals.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    pub accepted: u64,
    pub closed: u64,
    pub refused: u64,
    /// Of `refused`: shed because the process was out of descriptors.
    pub refused_no_fds: u64,
    pub idle_closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Of `bytes_in`: echoed with splice(2) (never in user space).
    pub bytes_spliced: u64,
    pub udp: UdpCounters,
    pub per_ip: PerIpCounters,
    pub tls: TlsCounters,
}

/// TLS counters (`--tls-port`): handshakes completed, and connections that failed, by kind.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsCounters {
    pub handshakes: u64,
    /// The first byte was not a TLS handshake record (plaintext on the TLS port).
    pub not_tls: u64,
    /// The handshake was refused or broken (no common version, malformed messages).
    pub handshake_failed: u64,
    /// After the handshake, a record that did not decrypt or parse.
    pub bad_record: u64,
    /// EOF inside a record or during the handshake.
    pub truncated: u64,
    /// Closed by `--tls-handshake-timeout`.
    pub handshake_timeout: u64,
}

impl TlsCounters {
    /// Every connection that ended in a failure.
    pub fn failures(&self) -> u64 {
        self.not_tls
            + self.handshake_failed
            + self.bad_record
            + self.truncated
            + self.handshake_timeout
    }
}

impl std::ops::Add for TlsCounters {
    type Output = TlsCounters;
    fn add(self, o: TlsCounters) -> TlsCounters {
        TlsCounters {
            handshakes: self.handshakes + o.handshakes,
            not_tls: self.not_tls + o.not_tls,
            handshake_failed: self.handshake_failed + o.handshake_failed,
            bad_record: self.bad_record + o.bad_record,
            truncated: self.truncated + o.truncated,
            handshake_timeout: self.handshake_timeout + o.handshake_timeout,
        }
    }
}

impl std::fmt::Display for TlsCounters {
    /// ` tls_handshakes=… tls_failures=… (not_tls=… handshake=… bad_record=… truncated=… timeout=…)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            " tls_handshakes={} tls_failures={} (not_tls={} handshake={} bad_record={} truncated={} timeout={})",
            self.handshakes,
            self.failures(),
            self.not_tls,
            self.handshake_failed,
            self.bad_record,
            self.truncated,
            self.handshake_timeout
        )
    }
}

/// Clients turned away by the per-client rules (#13), one count per reason. `refused` (above)
/// stays the `--max-connections` count.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIpCounters {
    /// Reset: the client already had `--max-conns-per-ip` connections.
    pub refused_per_ip: u64,
    /// Reset: the client was over `--accept-rate-per-ip`.
    pub refused_rate: u64,
    /// Closed unechoed: a missing, malformed, truncated or oversized PROXY header.
    pub proxy_rejected: u64,
    /// Closed unechoed: no whole PROXY header within `--proxy-header-timeout`.
    pub proxy_timeout: u64,
}

impl std::ops::Add for PerIpCounters {
    type Output = PerIpCounters;
    fn add(self, o: PerIpCounters) -> PerIpCounters {
        PerIpCounters {
            refused_per_ip: self.refused_per_ip + o.refused_per_ip,
            refused_rate: self.refused_rate + o.refused_rate,
            proxy_rejected: self.proxy_rejected + o.proxy_rejected,
            proxy_timeout: self.proxy_timeout + o.proxy_timeout,
        }
    }
}

impl std::fmt::Display for PerIpCounters {
    /// ` refused_per_ip=… refused_rate=… proxy_rejected=… proxy_timeout=…` (leading space).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            " refused_per_ip={} refused_rate={} proxy_rejected={} proxy_timeout={}",
            self.refused_per_ip, self.refused_rate, self.proxy_rejected, self.proxy_timeout
        )
    }
}

/// UDP echo counters (`--udp-port`). Every datagram received is echoed or dropped for exactly
/// one reason: `received = echoed + drop_port + drop_rate + drop_full + errors`.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams received.
    pub received: u64,
    /// Replies the kernel accepted.
    pub echoed: u64,
    /// Not answered: from a source port that could start a reflection loop.
    pub drop_port: u64,
    /// Not answered: the source was over `--udp-rate`.
    pub drop_rate: u64,
    /// Not answered: the socket's send buffer was full (UDP has no backpressure).
    pub drop_full: u64,
    /// Not answered: the reply failed (e.g. unreachable), or the datagram was truncated.
    pub errors: u64,
}

impl std::ops::Add for UdpCounters {
    type Output = UdpCounters;
    fn add(self, o: UdpCounters) -> UdpCounters {
        UdpCounters {
            received: self.received + o.received,
            echoed: self.echoed + o.echoed,
            drop_port: self.drop_port + o.drop_port,
            drop_rate: self.drop_rate + o.drop_rate,
            drop_full: self.drop_full + o.drop_full,
            errors: self.errors + o.errors,
        }
    }
}

/// The published copy, readable from any thread.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    active: AtomicU64,
    accepted: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
    refused_no_fds: AtomicU64,
    idle_closed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    bytes_spliced: AtomicU64,
    udp_in: AtomicU64,
    udp_out: AtomicU64,
    udp_drop_port: AtomicU64,
    udp_drop_rate: AtomicU64,
    udp_drop_full: AtomicU64,
    udp_errors: AtomicU64,
    refused_per_ip: AtomicU64,
    refused_rate: AtomicU64,
    proxy_rejected: AtomicU64,
    proxy_timeout: AtomicU64,
    tls: [AtomicU64; 6],
}

/// A point-in-time reading of one worker, or the sum of several.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub active: u64,
    pub accepted: u64,
    pub closed: u64,
    pub refused: u64,
    /// Of `refused`: shed because the process was out of descriptors.
    pub refused_no_fds: u64,
    pub idle_closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_spliced: u64,
    pub udp: UdpCounters,
    pub per_ip: PerIpCounters,
    pub tls: TlsCounters,
}

impl WorkerStats {
    pub fn publish(&self, c: &Counters, active: usize) {
        self.active.store(active as u64, Relaxed);
        self.accepted.store(c.accepted, Relaxed);
        self.closed.store(c.closed, Relaxed);
        self.refused.store(c.refused, Relaxed);
        self.refused_no_fds.store(c.refused_no_fds, Relaxed);
        self.idle_closed.store(c.idle_closed, Relaxed);
        self.bytes_in.store(c.bytes_in, Relaxed);
        self.bytes_out.store(c.bytes_out, Relaxed);
        self.bytes_spliced.store(c.bytes_spliced, Relaxed);
        self.udp_in.store(c.udp.received, Relaxed);
        self.udp_out.store(c.udp.echoed, Relaxed);
        self.udp_drop_port.store(c.udp.drop_port, Relaxed);
        self.udp_drop_rate.store(c.udp.drop_rate, Relaxed);
        self.udp_drop_full.store(c.udp.drop_full, Relaxed);
        self.udp_errors.store(c.udp.errors, Relaxed);
        self.refused_per_ip.store(c.per_ip.refused_per_ip, Relaxed);
        self.refused_rate.store(c.per_ip.refused_rate, Relaxed);
        self.proxy_rejected.store(c.per_ip.proxy_rejected, Relaxed);
        self.proxy_timeout.store(c.per_ip.proxy_timeout, Relaxed);
        let t = &c.tls;
        for (a, v) in self.tls.iter().zip([
            t.handshakes,
            t.not_tls,
            t.handshake_failed,
            t.bad_record,
            t.truncated,
            t.handshake_timeout,
        ]) {
            a.store(v, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            active: self.active.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            closed: self.closed.load(Relaxed),
            refused: self.refused.load(Relaxed),
            refused_no_fds: self.refused_no_fds.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_spliced: self.bytes_spliced.load(Relaxed),
            udp: UdpCounters {
                received: self.udp_in.load(Relaxed),
                echoed: self.udp_out.load(Relaxed),
                drop_port: self.udp_drop_port.load(Relaxed),
                drop_rate: self.udp_drop_rate.load(Relaxed),
                drop_full: self.udp_drop_full.load(Relaxed),
                errors: self.udp_errors.load(Relaxed),
            },
            per_ip: PerIpCounters {
                refused_per_ip: self.refused_per_ip.load(Relaxed),
                refused_rate: self.refused_rate.load(Relaxed),
                proxy_rejected: self.proxy_rejected.load(Relaxed),
                proxy_timeout: self.proxy_timeout.load(Relaxed),
            },
            tls: {
                let [
                    handshakes,
                    not_tls,
                    handshake_failed,
                    bad_record,
                    truncated,
                    handshake_timeout,
                ] = self.tls.each_ref().map(|a| a.load(Relaxed));
                TlsCounters {
                    handshakes,
                    not_tls,
                    handshake_failed,
                    bad_record,
                    truncated,
                    handshake_timeout,
                }
            },
        }
    }
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, o: Snapshot) -> Snapshot {
        Snapshot {
            active: self.active + o.active,
            accepted: self.accepted + o.accepted,
            closed: self.closed + o.closed,
            refused: self.refused + o.refused,
            refused_no_fds: self.refused_no_fds + o.refused_no_fds,
            idle_closed: self.idle_closed + o.idle_closed,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
            bytes_spliced: self.bytes_spliced + o.bytes_spliced,
            udp: self.udp + o.udp,
            per_ip: self.per_ip + o.per_ip,
            tls: self.tls + o.tls,
        }
    }
}

pub fn total(stats: &[WorkerStats]) -> Snapshot {
    stats
        .iter()
        .map(WorkerStats::snapshot)
        .fold(Snapshot::default(), |a, b| a + b)
}

/// Formats a byte count per second compactly (`1.5MB/s`).
fn rate(bytes: u64, secs: f64) -> String {
    let r = bytes as f64 / secs.max(1e-9);
    if r >= 1e9 {
        format!("{:.2}GB/s", r / 1e9)
    } else if r >= 1e6 {
        format!("{:.1}MB/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}kB/s", r / 1e3)
    } else {
        format!("{r:.0}B/s")
    }
}

/// One `stats:` line: totals, per-worker active counts, and rates since `prev`.
pub fn line(now: &[Snapshot], prev: &Snapshot, secs: f64) -> String {
    let t = now.iter().fold(Snapshot::default(), |a, b| a + *b);
    let workers: Vec<String> = now.iter().map(|s| s.active.to_string()).collect();
    format!(
        "stats: active={} accepted={} closed={} refused={} idle_closed={} bytes_in={} bytes_out={} workers=[{}] accept_rate={:.0}/s in_rate={} out_rate={}{}",
        t.active,
        t.accepted,
        t.closed,
        t.refused,
        t.idle_closed,
        t.bytes_in,
        t.bytes_out,
        workers.join(","),
        (t.accepted - prev.accepted) as f64 / secs.max(1e-9),
        rate(t.bytes_in - prev.bytes_in, secs),
        rate(t.bytes_out - prev.bytes_out, secs),
        t.per_ip,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_totals_per_worker_active_and_rates() {
        let a = Snapshot {
            active: 4,
            accepted: 10,
            bytes_in: 3_000_000,
            bytes_out: 3_000_000,
            ..Default::default()
        };
        let b = Snapshot {
            active: 3,
            accepted: 5,
            ..Default::default()
        };
        let l = line(&[a, b], &Snapshot::default(), 2.0);
        assert!(l.starts_with("stats: active=7 accepted=15 "), "{l}");
        assert!(l.contains("workers=[4,3]"), "{l}");
        assert!(l.contains("accept_rate=8/s"), "{l}");
        assert!(l.contains("in_rate=1.5MB/s"), "{l}");
        assert!(
            l.ends_with(" refused_per_ip=0 refused_rate=0 proxy_rejected=0 proxy_timeout=0"),
            "{l}"
        );
    }
}
