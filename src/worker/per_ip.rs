//! Per-client admission (#13): `--accept-rate-per-ip`, then `--max-conns-per-ip`, for the
//! client a connection belongs to — the socket's peer at accept, or with `--proxy-protocol` the
//! source its PROXY header names, once the header has arrived (`Action::Admit`).
//!
//! An admitted connection's place in the global per-IP table ([`IpSlot`]) and the client the
//! header named are kept here, in a side table indexed by the connection's descriptor number
//! (unique in the process while the connection is open), so the 56-byte connection slot does
//! not grow. The event loop's `on_closed` — the one place every connection leaves through —
//! calls [`PerIp::release`] before it closes the descriptor, so a place comes back on every
//! close path. With no per-IP flag and no `--proxy-protocol` nothing is stored.
//!
//! Refusals are counted per reason and logged at most once a second per reason, with the
//! count since the last line.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use super::throttle::Throttled;
use crate::limits::{AcceptRate, ConnLimit, IpSlot};
use crate::log;
use crate::log::Level;

/// The close reason of a client over `--max-conns-per-ip`.
pub const OVER_CONNS: &str = "over --max-conns-per-ip";
/// The close reason of a client over `--accept-rate-per-ip`.
pub const OVER_RATE: &str = "over --accept-rate-per-ip";

/// The per-client rules a worker applies; the tables are shared by all workers.
#[derive(Clone, Debug, Default)]
pub struct PerIpConfig {
    pub conns: Option<ConnLimit>,
    pub rate: Option<AcceptRate>,
    /// `--proxy-protocol` with its `--proxy-header-timeout`: every connection starts with a
    /// PROXY stage, and the rules apply at header time, to the header's client.
    pub proxy: Option<Duration>,
}

/// What an admitted connection holds until it closes.
#[derive(Debug)]
struct Held {
    _slot: Option<IpSlot>,
    /// The client the PROXY header named (for the close log).
    client: Option<SocketAddr>,
}

/// One worker's admission state (shared by reference between the turn and the close path,
/// hence the cells: the worker is single-threaded).
#[derive(Debug)]
pub struct PerIp {
    cfg: PerIpConfig,
    held: RefCell<Vec<Option<Held>>>,
    over_conns: Cell<u64>,
    over_rate: Cell<u64>,
    log_conns: RefCell<Throttled>,
    log_rate: RefCell<Throttled>,
    last_refused: Cell<Option<IpAddr>>,
}

impl PerIp {
    pub fn new(cfg: PerIpConfig) -> PerIp {
        PerIp {
            cfg,
            held: RefCell::new(Vec::new()),
            over_conns: Cell::new(0),
            over_rate: Cell::new(0),
            log_conns: RefCell::default(),
            log_rate: RefCell::default(),
            last_refused: Cell::new(None),
        }
    }

    /// Limits to check at accept: some per-IP flag is on and `--proxy-protocol` is off.
    pub fn at_accept(&self) -> bool {
        self.cfg.proxy.is_none() && self.has_limits()
    }

    /// `--proxy-header-timeout`, when `--proxy-protocol` is on.
    pub fn proxy(&self) -> Option<Duration> {
        self.cfg.proxy
    }

    fn has_limits(&self) -> bool {
        self.cfg.conns.is_some() || self.cfg.rate.is_some()
    }

    /// Admits connection `fd` for the client `ip` (rate first: a refused attempt spends no
    /// place), or names the rule it is over. `header` is the client a PROXY header named.
    pub fn admit(
        &self,
        fd: RawFd,
        ip: IpAddr,
        header: Option<SocketAddr>,
        now: Duration,
    ) -> Result<(), &'static str> {
        if let Some(rate) = &self.cfg.rate
            && !rate.allow(ip, now)
        {
            self.refused(
                &self.over_rate,
                &self.log_rate,
                "--accept-rate-per-ip",
                ip,
                now,
            );
            return Err(OVER_RATE);
        }
        let slot = match &self.cfg.conns {
            Some(conns) => match conns.acquire(ip) {
                Ok(slot) => Some(slot),
                Err(_) => {
                    self.refused(
                        &self.over_conns,
                        &self.log_conns,
                        "--max-conns-per-ip",
                        ip,
                        now,
                    );
                    return Err(OVER_CONNS);
                }
            },
            None => None,
        };
        if slot.is_some() || header.is_some() {
            let Ok(i) = usize::try_from(fd) else {
                return Ok(());
            };
            let mut held = self.held.borrow_mut();
            if held.len() <= i {
                held.resize_with(i + 1, || None);
            }
            held[i] = Some(Held {
                _slot: slot,
                client: header,
            });
        }
        Ok(())
    }

    /// Connection `fd` is closing: gives its place back. Returns the client its PROXY header
    /// named, if any.
    pub fn release(&self, fd: RawFd) -> Option<SocketAddr> {
        let i = usize::try_from(fd).ok()?;
        let mut held = self.held.borrow_mut();
        held.get_mut(i)?.take()?.client
    }

    fn refused(
        &self,
        count: &Cell<u64>,
        log: &RefCell<Throttled>,
        flag: &'static str,
        ip: IpAddr,
        now: Duration,
    ) {
        count.set(count.get() + 1);
        self.last_refused.set(Some(ip));
        if let Some(n) = log.borrow_mut().hit(now) {
            self.log_refused(flag, n);
        }
    }

    fn log_refused(&self, flag: &str, n: u64) {
        let last = self
            .last_refused
            .get()
            .map_or_else(String::new, |ip| format!(", the last from {ip}"));
        log!(
            Level::Warn,
            "reset {n} connection(s) since the last report: over {flag}{last}"
        );
    }

    /// (over `--max-conns-per-ip`, over `--accept-rate-per-ip`) so far.
    pub fn refusals(&self) -> (u64, u64) {
        (self.over_conns.get(), self.over_rate.get())
    }

    /// Prints held-back refusal lines that are due.
    pub fn timers(&self, now: Duration) {
        if let Some(n) = self.log_conns.borrow_mut().due(now) {
            self.log_refused("--max-conns-per-ip", n);
        }
        if let Some(n) = self.log_rate.borrow_mut().due(now) {
            self.log_refused("--accept-rate-per-ip", n);
        }
    }

    /// When a held-back refusal line is due.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.log_conns.borrow().deadline(),
            self.log_rate.borrow().deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
