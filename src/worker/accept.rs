//! The listener, accepting and admission.
//!
//! Admission ([`Worker::admit`]) is where a new client is counted against `--max-connections`
//! (refused clients are accepted and closed at once, so they see EOF instead of hanging in the
//! backlog), gets its socket options, and is registered with epoll. Per-client rules (a
//! per-IP table) plug in there, before the connection is stored; whatever they acquire must be
//! released in [`Worker::close`], the one place every connection leaves through.
//!
//! Running out of descriptors (`EMFILE`) is survived with a reserve descriptor; unexpected
//! accept errors rest the listener briefly instead of spinning. Every warning is rate-limited.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use super::throttle::Throttled;
use super::{ACCEPT_BATCH, Listen, Token, Worker};
use crate::conn::{Conn, ProxyStage, Tick, ticks_ceil};
use crate::log::Level;
use crate::{log, sys};

/// How long the listener rests when even the reserve descriptor cannot be had.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The client's address for debug logs (`getpeername`, only called when they are on).
pub(super) fn peer(fd: &OwnedFd) -> String {
    match socket2::SockRef::from(fd)
        .peer_addr()
        .map(|a| a.as_socket())
    {
        Ok(Some(a)) => a.to_string(),
        _ => "a client that has gone".to_string(),
    }
}

/// The listener and what accepting needs: the reserve descriptor, the pause, the warnings.
pub struct Acceptor {
    listener: Option<OwnedFd>,
    local_addr: std::net::SocketAddr,
    reserve: Option<OwnedFd>,
    paused_until: Option<Duration>,
    refusals: Throttled,
    fd_exhaustion: Throttled,
    accept_errors: Throttled,
    register_errors: Throttled,
}

impl Acceptor {
    /// Registers `listener` (level-triggered) under `token`.
    ///
    /// Sets SO_OOBINLINE on the listener, whoever created it (a fresh bind or an inherited fd):
    /// urgent bytes are stream bytes, or the byte at the mark is lost. Accepted sockets inherit
    /// it (Linux copies the listener's socket flags at accept), so it costs no syscall per client.
    /// So does `TCP_NOTSENT_LOWAT` (`--notsent-lowat`; 0 sets the kernel's default back, for a
    /// listener inherited from a process that ran with another value). A kernel without it
    /// only costs the saving: a warning, and the server runs.
    pub fn new(
        listener: OwnedFd,
        epoll: &sys::Epoll,
        token: u64,
        notsent_lowat: u32,
    ) -> io::Result<Acceptor> {
        sys::set_oobinline(listener.as_fd()).map_err(|e| {
            io::Error::new(e.kind(), format!("set SO_OOBINLINE on the listener: {e}"))
        })?;
        if let Err(e) = sys::set_notsent_lowat(listener.as_fd(), notsent_lowat) {
            log!(
                Level::Warn,
                "--notsent-lowat {notsent_lowat}: TCP_NOTSENT_LOWAT not set on the listener: {e}"
            );
        }
        let local_addr = socket2::SockRef::from(&listener)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        epoll.add(listener.as_fd(), sys::EPOLLIN, token)?;
        Ok(Acceptor {
            listener: Some(listener),
            local_addr,
            reserve: sys::eventfd().ok(),
            paused_until: None,
            refusals: Throttled::default(),
            fd_exhaustion: Throttled::default(),
            accept_errors: Throttled::default(),
            register_errors: Throttled::default(),
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Stops accepting for good (shutdown). Out of epoll explicitly: after a graceful restart
    /// the new process holds the same socket, so close(2) alone would leave it registered here
    /// (and always ready).
    pub fn close(&mut self, epoll: &sys::Epoll) {
        if let Some(listener) = self.listener.take() {
            let _ = epoll.delete(listener.as_fd());
        }
        self.paused_until = None;
    }

    /// The earliest time a timer is due (the pause ends, a held-back warning).
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.paused_until,
            self.refusals.deadline(),
            self.fd_exhaustion.deadline(),
            self.accept_errors.deadline(),
            self.register_errors.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The acceptor of listener `l` (a function of the two fields, so the rest of the worker
/// stays borrowable beside it).
fn acceptor<'a>(
    plain: &'a mut Acceptor,
    tls: &'a mut Option<Acceptor>,
    l: Listen,
) -> Option<&'a mut Acceptor> {
    match l {
        Listen::Plain => Some(plain),
        Listen::Tls => tls.as_mut(),
    }
}

impl Worker {
    pub(super) fn accept_batch(&mut self, l: Listen) {
        for _ in 0..ACCEPT_BATCH {
            let Some(a) = acceptor(&mut self.acceptor, &mut self.tls_acceptor, l) else {
                return;
            };
            let Some(listener) = a.listener.as_ref() else {
                return;
            };
            match sys::accept_with_peer(listener.as_fd()) {
                Ok((fd, peer)) => self.admit(fd, peer, l),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::is_out_of_fds(&e) => return self.out_of_fds(&e, l),
                Err(e) if sys::is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // Unexpected: say so (rate-limited) and rest the listener rather than
                    // have the level-triggered listener report the same failure in a loop.
                    if let Some(n) = a.accept_errors.hit(self.clock.now) {
                        log!(Level::Warn, "accept on {}: {e} ({n} time(s))", a.local_addr);
                    }
                    return self.pause_listener(l);
                }
            }
        }
    }

    /// Counts, configures, registers and stores one accepted client — or refuses it. The
    /// same rules for both listeners; a TLS client's connection gets its TLS stage.
    fn admit(&mut self, fd: OwnedFd, peer: Option<SocketAddr>, l: Listen) {
        self.counters.accepted += 1;
        if !self.shared.try_admit(self.cfg.max_connections) {
            drop(fd); // the client sees the connection close at once
            self.counters.refused += 1;
            let a = acceptor(&mut self.acceptor, &mut self.tls_acceptor, l);
            if let Some(n) = a.and_then(|a| a.refusals.hit(self.clock.now)) {
                self.log_refusals(n);
            }
            return;
        }
        // The TLS session first: it is the one step here that can fail on its own.
        #[cfg(feature = "tls")]
        let tls_stage = match self.tls.as_mut().filter(|_| l == Listen::Tls) {
            Some(tls) => match tls.stage(self.clock.tick, self.cfg.max_pending) {
                Ok(stage) => Some(stage),
                Err(e) => {
                    log!(Level::Warn, "TLS session: {e}");
                    self.shared.release();
                    return;
                }
            },
            None => None,
        };
        // Per-client rules (#13); with --proxy-protocol they wait for the header's client.
        if self.per_ip.at_accept()
            && let Some(peer) = peer
            && self
                .per_ip
                .admit(fd.as_raw_fd(), peer.ip(), None, self.clock.now)
                .is_err()
        {
            self.shared.release();
            sys::reset(fd); // RST: nothing read, nothing echoed
            return;
        }
        // An echo must not wait for Nagle; failure here only costs latency.
        let _ = sys::set_nodelay(fd.as_fd());
        let idx = self.conns.next_index();
        let events = sys::EPOLLIN | sys::EPOLLPRI | sys::EPOLLOUT | sys::EPOLLRDHUP | sys::EPOLLET;
        if let Err(e) = self
            .epoll
            .add(fd.as_fd(), events, Token::Conn(idx).encode())
        {
            if let Some(n) = self.acceptor.register_errors.hit(self.clock.now) {
                log!(Level::Warn, "register client: {e} ({n} time(s))");
            }
            self.per_ip.release(fd.as_raw_fd());
            self.shared.release();
            return;
        }
        if let Some(peer) = peer {
            log!(Level::Debug, "accept {peer}");
        }
        let mut conn = Conn::new(self.clock.tick);
        // The banner is plain text: not on the TLS port, where it would break the handshake.
        let banner = self.cfg.banner.clone().filter(|_| l == Listen::Plain);
        if let Some(timeout) = self.per_ip.proxy() {
            // The header must be whole a whole timeout after the end of this tick.
            let deadline = u64::from(self.clock.tick)
                .saturating_add(ticks_ceil(timeout))
                .saturating_add(1)
                .min(u64::from(Tick::MAX)) as Tick;
            // The banner goes out once the header is whole (and the client admitted).
            conn.push_stage(Box::new(ProxyStage::new(deadline, banner)));
        } else if let Some(banner) = &banner {
            conn.queue_output(banner); // sent on the first writable edge, before any echo
        }
        // The stages in order: PROXY header → TLS.
        #[cfg(feature = "tls")]
        if let Some(stage) = tls_stage {
            conn.push_stage(Box::new(stage));
        }
        let stored = self.conns.insert(fd, conn);
        debug_assert_eq!(stored, idx);
    }

    pub(super) fn log_refusals(&self, n: u64) {
        log!(
            Level::Warn,
            "refused {n} connection(s) since the last report: --max-connections {} reached",
            self.cfg.max_connections
        );
    }

    /// accept failed for lack of descriptors: give the reserve descriptor back to accept one
    /// waiting client and close it at once (so it does not hang in the backlog), then take the
    /// reserve again. If even that fails, rest the listener briefly instead of spinning.
    fn out_of_fds(&mut self, e: &io::Error, l: Listen) {
        let mut shed = false;
        let Some(a) = acceptor(&mut self.acceptor, &mut self.tls_acceptor, l) else {
            return;
        };
        if let (Some(reserve), Some(listener)) = (a.reserve.take(), a.listener.as_ref()) {
            drop(reserve);
            if let Ok(client) = sys::accept(listener.as_fd()) {
                drop(client);
                self.counters.accepted += 1;
                self.counters.refused += 1;
                self.counters.refused_no_fds += 1;
                shed = true;
            }
            a.reserve = sys::eventfd().ok();
        }
        if let Some(n) = a.fd_exhaustion.hit(self.clock.now) {
            log!(
                Level::Warn,
                "accept: {e} ({n} time(s) since the last report); refusing new clients until descriptors free up"
            );
        }
        if !shed || a.reserve.is_none() {
            self.pause_listener(l);
        }
    }

    /// Stops watching the listener for [`ACCEPT_PAUSE`]; `accept_timers` resumes it.
    fn pause_listener(&mut self, l: Listen) {
        let Some(a) = acceptor(&mut self.acceptor, &mut self.tls_acceptor, l) else {
            return;
        };
        if let Some(listener) = a.listener.as_ref() {
            let _ = self
                .epoll
                .modify(listener.as_fd(), 0, Token::Listener(l).encode());
        }
        a.paused_until = Some(self.clock.now + ACCEPT_PAUSE);
    }

    /// Ends listener pauses that are over; prints held-back warnings that are due.
    pub(super) fn accept_timers(&mut self) {
        self.listener_timers(Listen::Plain);
        self.listener_timers(Listen::Tls);
    }

    fn listener_timers(&mut self, l: Listen) {
        let now = self.clock.now;
        let Some(a) = acceptor(&mut self.acceptor, &mut self.tls_acceptor, l) else {
            return;
        };
        if let Some(until) = a.paused_until
            && now >= until
        {
            a.paused_until = None;
            if a.reserve.is_none() {
                a.reserve = sys::eventfd().ok();
            }
            if let Some(listener) = a.listener.as_ref() {
                let _ =
                    self.epoll
                        .modify(listener.as_fd(), sys::EPOLLIN, Token::Listener(l).encode());
            }
        }
        if let Some(n) = a.refusals.due(now) {
            log!(
                Level::Warn,
                "refused {n} connection(s) since the last report: --max-connections {} reached",
                self.cfg.max_connections
            );
        }
        if let Some(n) = a.accept_errors.due(now) {
            log!(
                Level::Warn,
                "accept on {}: failed {n} more time(s)",
                a.local_addr
            );
        }
        if let Some(n) = a.fd_exhaustion.due(now) {
            log!(
                Level::Warn,
                "accept: out of file descriptors {n} more time(s)"
            );
        }
        if let Some(n) = a.register_errors.due(now) {
            log!(Level::Warn, "register client: failed {n} more time(s)");
        }
    }
}
