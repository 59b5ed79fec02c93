//! The deterministic simulator: the worker's real connection logic against fake sockets.
//!
//! A seeded driver plays clients of random shapes against [`Conns`] (the worker's run queue,
//! idle timeout and drain), [`service::serve`] (the turn that turns actions into socket calls)
//! and [`crate::conn::Conn`] — the very code the worker runs — with the kernel replaced by
//! [`model::SimSocket`]: a receive queue with urgent marks (a read stops at the mark), a send
//! window (short writes, EAGAIN), EINTR, ECONNRESET/EPIPE, half-close, RDHUP before and after
//! data, a splice pipe, and an edge-triggered ready list that reports an edge only when Linux
//! guarantees one. Time is a tick counter; idle timeouts and a shutdown arrive at random moments.
//!
//! After every step it checks:
//! - every echoed byte is the next byte of that client's stream (exactly once, in order), and
//!   a client that finished got all of it;
//! - pending output never exceeds `max_pending` + one read (or one splice);
//! - the splice pipe is empty between calls;
//! - when the worker would block, no connection has readable input, sendable output or a
//!   finished stream with nothing (an edge, the run queue, a timer) to wake it;
//! - closes happen only for a reason that holds (idle long enough, quiet long enough while
//!   draining, the shutdown timeout), and the drain ends by the timeout;
//! - the connection table's invariants (activity order, run queue membership);
//! - with a PROXY stage (`--proxy-protocol`, chosen per run; each client's header of a random
//!   form, valid or not, split wherever its writes fall): the header is never echoed, the bytes
//!   after it are echoed once in order, the stage reports the client the header names, rejected
//!   connections (bad header, EOF inside it, refused at header time) get nothing, and the
//!   header timeout closes only after its deadline.
//!
//! Randomness comes from a [`Source`]: a seeded [`Rng`] for `cargo test` and `make soak`, or the
//! fuzzer's bytes ([`Bytes`]). A failure names its seed; `SIM_SEED=<seed> cargo test --test sim
//! sim_one` replays it exactly.

pub mod model;
#[cfg(feature = "tls")]
pub mod tls;

use std::time::Duration;

use crate::conn::proxy_stage::{EOF_IN_HEADER, is_proxy_reason};
use crate::conn::{
    Client, CloseReason, Conn, Params, ProxyStage, SPLICE_LEN, Splice, TICK, ticks_ceil,
};
use crate::worker::conns::Conns;
use crate::worker::drain::QUIET;
use crate::worker::service;
use crate::worker::table::Stall;
use model::{Peer, SIM_REFUSAL, SimSocket};

/// Where the simulator's choices come from.
pub trait Source {
    fn next(&mut self) -> u64;
    /// True once a finite source (fuzz input) has run out.
    fn exhausted(&self) -> bool {
        false
    }
}

/// A seeded xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
}

impl Source for Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fuzz input as a source: 2 bytes per choice; zeros once it runs out.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, pos: 0 }
    }
}

impl Source for Bytes<'_> {
    fn next(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..2 {
            let b = self.data.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            v = v << 8 | u64::from(b);
        }
        v
    }
    fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }
}

fn below(src: &mut impl Source, n: u64) -> u64 {
    if n == 0 { 0 } else { src.next() % n }
}

fn pick<T: Copy>(src: &mut impl Source, from: &[T]) -> T {
    from[below(src, from.len() as u64) as usize]
}

fn chance(src: &mut impl Source, percent: u64) -> bool {
    below(src, 100) < percent
}

/// What a client's `TCP_MAXSEG` says: loopback, Ethernet, the IPv4 minimum, a tiny one set by
/// the client, 0, 1, or a failing getsockopt.
fn pick_mss(src: &mut impl Source) -> Option<usize> {
    pick(
        src,
        &[
            Some(0),
            Some(1),
            Some(3),
            Some(88),
            Some(536),
            Some(1448),
            Some(1448),
            Some(65_483),
            Some(65_495),
            None,
        ],
    )
}

/// What a run did (for the soak summary).
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub steps: usize,
    pub clients: usize,
    pub bytes_echoed: u64,
    pub finished: usize,
    pub quiet: usize,
    pub idle: usize,
    pub shutdown_timeout: usize,
    pub errors: usize,
    /// Connections with a PROXY stage, rejected ones (bad header, EOF in it, refused), and
    /// header timeouts.
    pub proxied: usize,
    pub rejected: usize,
    pub header_timeouts: usize,
    /// Connections with a PROXY header that got their whole echo.
    pub proxied_finished: usize,
    /// MSS queries (one per bulk phase), and bytes echoed through a window smaller than the
    /// client's segment size.
    pub mss_queries: u64,
    pub sub_segment_window_bytes: u64,
    /// Bulk streams whose client stopped reading long enough to be marked stalled (they then
    /// read on up to `max_pending`).
    pub stalled: u64,
    /// TLS clients, the ones that ended with both close_notifys and their whole echo, and the
    /// ones closed by the handshake timeout.
    pub tls_clients: usize,
    pub tls_clean: usize,
    pub tls_timeouts: usize,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, o: Report) {
        self.steps += o.steps;
        self.clients += o.clients;
        self.bytes_echoed += o.bytes_echoed;
        self.finished += o.finished;
        self.quiet += o.quiet;
        self.idle += o.idle;
        self.shutdown_timeout += o.shutdown_timeout;
        self.errors += o.errors;
        self.proxied += o.proxied;
        self.rejected += o.rejected;
        self.header_timeouts += o.header_timeouts;
        self.proxied_finished += o.proxied_finished;
        self.mss_queries += o.mss_queries;
        self.sub_segment_window_bytes += o.sub_segment_window_bytes;
        self.stalled += o.stalled;
        self.tls_clients += o.tls_clients;
        self.tls_clean += o.tls_clean;
        self.tls_timeouts += o.tls_timeouts;
    }
}

struct World {
    conns: Conns<u32>,
    peers: Vec<Peer>,
    /// Slot index of each peer while the server holds it.
    slot: Vec<Option<u32>>,
    pipe: Option<Vec<u8>>,
    buf: Vec<u8>,
    now: u32,
    params: Params,
    idle_ticks: Option<u64>,
    shutdown_timeout: Duration,
    drain_start: Option<u32>,
    /// Peers whose pipe read was made to fail (their close may be an error).
    broken_pipe_peer: Option<u32>,
    /// Most bytes a client writes in total (keeps runs with 1-byte reads short).
    max_stream: u64,
    /// `--proxy-protocol`: every connection starts with a PROXY stage whose header must be
    /// whole within this many ticks.
    proxy: Option<u64>,
    /// TLS clients are accepted (a share of them), with this handshake timeout.
    tls: Option<Duration>,
    #[cfg(feature = "tls")]
    tally: std::sync::Arc<crate::conn::tls_stage::TlsTally>,
    report: Report,
    step: usize,
}

/// Runs one seeded simulation of `steps` steps.
pub fn run_seed(seed: u64, steps: usize) -> Result<Report, String> {
    run(&mut Rng::new(seed), steps).map_err(|e| format!("seed {seed}: {e}"))
}

/// Runs a simulation whose choices come from `src`.
pub fn run(src: &mut impl Source, steps: usize) -> Result<Report, String> {
    let read_len = pick(src, &[1usize, 2, 7, 100, 1460, 4096, 65483, 65536]);
    let budget = read_len * pick(src, &[1usize, 2, 4, 16]);
    let max_pending = pick(src, &[1usize, 10, 1000, 65536, 262_144]);
    let splice = pick(src, &[Splice::Off, Splice::Off, Splice::Auto, Splice::On]);
    let idle = match below(src, 3) {
        0 => Duration::ZERO,
        _ => TICK * (1 + below(src, 60) as u32),
    };
    let shutdown_timeout = pick(
        src,
        &[
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(10),
            Duration::MAX,
        ],
    );
    let proxy = chance(src, 30).then(|| 1 + below(src, 40));
    let params = Params {
        max_pending,
        read_len,
        budget,
        splice,
    };
    let tls = (cfg!(feature = "tls") && chance(src, 50)).then(|| {
        pick(
            src,
            &[
                TICK,
                TICK * 5,
                Duration::from_secs(3),
                Duration::from_secs(10),
            ],
        )
    });
    let mut w = World {
        proxy,
        conns: Conns::new(params, idle),
        peers: Vec::new(),
        slot: Vec::new(),
        pipe: (splice != Splice::Off).then(Vec::new),
        buf: vec![0u8; read_len.max(SPLICE_LEN)],
        now: below(src, 1000) as u32,
        params,
        idle_ticks: (!idle.is_zero()).then(|| ticks_ceil(idle)),
        shutdown_timeout,
        drain_start: None,
        broken_pipe_peer: None,
        max_stream: (read_len as u64 * 3000).min(8 << 20),
        tls,
        #[cfg(feature = "tls")]
        tally: Default::default(),
        report: Report::default(),
        step: 0,
    };
    let ctx = |w: &World, e: String| {
        format!(
            "step {}: {e} [read_len={} budget={} max_pending={} splice={:?} idle={:?} shutdown_timeout={:?} proxy_timeout_ticks={:?} tls={:?}]",
            w.step, read_len, budget, max_pending, splice, idle, shutdown_timeout, proxy, tls
        )
    };
    for step in 0..steps {
        if src.exhausted() {
            break;
        }
        w.step = step;
        w.client_actions(src);
        w.pass(src).map_err(|e| ctx(&w, e))?;
    }
    w.finish(src).map_err(|e| ctx(&w, e))?;
    w.report.steps = w.step + 1;
    w.report.clients = w.peers.len();
    w.report.mss_queries = w.peers.iter().map(|p| p.mss_queries).sum();
    w.report.sub_segment_window_bytes = w.peers.iter().map(|p| p.sub_segment_window_bytes).sum();
    w.report.stalled = w.conns.stalled();
    Ok(w.report)
}

impl World {
    fn open_peers(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&p| self.slot[p].is_some())
            .collect()
    }

    fn accept(&mut self, src: &mut impl Source) {
        let id = self.peers.len() as u32;
        let rcvbuf = pick(src, &[100usize, 1000, 4096, 65536, 1 << 20]);
        let mut peer = Peer::new(id, rcvbuf, self.now);
        peer.stalled_reader = chance(src, 10);
        let mut conn = Conn::new(self.now);
        if let Some(ticks) = self.proxy {
            let (header, client) = proxy_header(src, id);
            peer.skip = match client {
                Some(_) => header.len() as u64,
                None => u64::MAX,
            };
            peer.expect_client = client;
            peer.refuse = client.is_some() && chance(src, 10);
            peer.header = header;
            let deadline = (u64::from(self.now) + ticks + 1).min(u64::from(u32::MAX)) as u32;
            conn.push_stage(Box::new(ProxyStage::new(deadline, None)));
            self.report.proxied += 1;
        }
        peer.mss = pick_mss(src);
        // TLS clients in runs without --proxy-protocol (PROXY → TLS is covered by the tests
        // of the real binary).
        #[cfg(feature = "tls")]
        if self.proxy.is_none()
            && let Some(timeout) = self.tls
            && chance(src, 60)
        {
            use crate::conn::tls_stage::TlsStage;
            // The worker's deadline: a whole timeout after the end of the accept tick.
            let at = u64::from(self.now)
                .saturating_add(ticks_ceil(timeout))
                .saturating_add(1)
                .min(u64::from(u32::MAX)) as u32;
            let stage = TlsStage::new(
                tls::server_config(),
                self.params.max_pending,
                at,
                self.tally.clone(),
            )
            .expect("TLS session");
            conn.push_stage(Box::new(stage));
            peer.tls = Some(tls::TlsPeer::new(chance(src, 50)));
            self.report.tls_clients += 1;
        }
        self.peers.push(peer);
        let idx = self.conns.insert(id, conn);
        self.slot.push(Some(idx));
        // Some of a TLS client's ClientHello, or none yet (a slow or silent client).
        let k = below(src, 600) as usize;
        self.deliver(id as usize, k, false);
    }

    /// Moves up to `k` bytes of a TLS client's ciphertext onto the wire (into the server's
    /// receive queue), as `urgent` if asked. Nothing for a plain client.
    fn deliver(&mut self, p: usize, k: usize, urgent: bool) {
        #[cfg(feature = "tls")]
        {
            let peer = &mut self.peers[p];
            if let Some(t) = peer.tls.as_mut() {
                let n = t.deliver(k);
                peer.write(n as u64, urgent);
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = (p, k, urgent);
    }

    /// A TLS client stops sending: what it has goes out, then maybe its close_notify, then
    /// its FIN.
    fn tls_shutdown(&mut self, p: usize, close_notify: bool) {
        #[cfg(feature = "tls")]
        {
            let peer = &mut self.peers[p];
            let (shut, reset) = (peer.shut_wr, peer.reset);
            let Some(t) = peer.tls.as_mut() else { return };
            if !shut && !reset && !t.sent_close_notify {
                t.shut_while_handshaking = t.is_handshaking();
            }
            if close_notify {
                t.send_close_notify();
            }
            self.deliver(p, usize::MAX, false);
        }
        #[cfg(not(feature = "tls"))]
        let _ = (p, close_notify);
    }

    /// One to three things the clients (or the clock, or the operator) do.
    fn client_actions(&mut self, src: &mut impl Source) {
        loop {
            let open = self.open_peers();
            let action = below(src, 100);
            if open.is_empty() || (64..72).contains(&action) {
                if self.drain_start.is_none() && self.peers.len() < 12 {
                    self.accept(src);
                }
            } else {
                let p = open[below(src, open.len() as u64) as usize];
                let peer = &mut self.peers[p];
                match action {
                    0..40 => {
                        let n = match below(src, 100) {
                            0..70 => 1 + below(src, 100),
                            70..90 => 100 + below(src, 70_000),
                            90..99 => 70_000 + below(src, 300_000),
                            _ => 300_000 + below(src, 1 << 20),
                        };
                        let n = n.min(self.max_stream.saturating_sub(peer.sent));
                        let urgent = chance(src, 10);
                        if peer.is_tls() {
                            #[cfg(feature = "tls")]
                            if let Some(t) = peer.tls.as_mut()
                                && !peer.shut_wr
                                && !peer.reset
                            {
                                // The ciphertext stays within the stream limit too.
                                let room = self.max_stream.saturating_sub(t.wire_bound() + 32);
                                t.write_plain(peer.id, n.min(room));
                            }
                            // Any part of what the client has: records split anywhere.
                            let k = match below(src, 4) {
                                0 => 1 + below(src, 10) as usize,
                                1 => 1 + below(src, 2000) as usize,
                                _ => usize::MAX,
                            };
                            self.deliver(p, k, urgent);
                        } else {
                            peer.write(n, urgent);
                        }
                    }
                    40..58 => {
                        if !peer.stalled_reader {
                            let n = if chance(src, 50) {
                                usize::MAX
                            } else {
                                1 + below(src, 100_000) as usize
                            };
                            peer.read_echo(n);
                        }
                    }
                    58..61 => {
                        // A TLS client: close_notify and wait for the server to close (half of
                        // the time), close_notify and FIN, or a bare FIN.
                        let (notify, fin) = match (peer.is_tls(), below(src, 4)) {
                            (false, _) => (false, true),
                            (true, 0 | 1) => (true, false),
                            (true, 2) => (true, true),
                            (true, _) => (false, true),
                        };
                        if self.peers[p].is_tls() {
                            self.tls_shutdown(p, notify);
                        }
                        if fin {
                            self.peers[p].shutdown_write();
                        }
                    }
                    // Fewer resets for TLS clients, so that more live to a clean end.
                    61..64 if peer.is_tls() && !chance(src, 20) => {}
                    61..62 => peer.reset(),
                    62..64 => peer.reset_before_send = true,
                    72..76 => {
                        if chance(src, 50) {
                            peer.eintr_read = true;
                        } else {
                            peer.eintr_send = true;
                        }
                    }
                    76..77 if self.drain_start.is_none() => self.begin_shutdown(),
                    // The path changes (PMTU discovery): the MSS the socket reports moves.
                    77..79 => peer.mss = pick_mss(src),
                    _ => self.advance_time(src),
                }
            }
            if chance(src, 50) {
                return;
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.drain_start = Some(self.now);
        self.conns.begin_drain(self.now, self.shutdown_timeout);
    }

    /// The worker blocks in epoll_wait: time passes, at most to its next deadline.
    fn advance_time(&mut self, src: &mut impl Source) {
        if self.conns.has_queued() {
            return; // the worker polls without blocking
        }
        let dt = match below(src, 10) {
            0..6 => 1 + below(src, 3),
            6..9 => 1 + below(src, 15),
            _ => 20 + below(src, 100),
        };
        let mut to = u64::from(self.now) + dt;
        if let Some(d) = self.conns.next_deadline(self.now)
            && d > u64::from(self.now)
            && chance(src, 50)
        {
            to = to.min(d);
        }
        self.now = to.min(u64::from(u32::MAX - 1)) as u32;
    }

    /// One pass of the worker's event loop: the ready list, the run queue, the timers.
    fn pass(&mut self, src: &mut impl Source) -> Result<(), String> {
        // epoll_wait: every socket on the ready list, in an arbitrary order.
        let mut ready: Vec<usize> = self
            .open_peers()
            .into_iter()
            .filter(|&p| self.peers[p].edge != crate::conn::Readiness::empty())
            .collect();
        for i in (1..ready.len()).rev() {
            ready.swap(i, below(src, i as u64 + 1) as usize);
        }
        for p in ready {
            let edge = std::mem::take(&mut self.peers[p].edge);
            if let Some(idx) = self.slot[p] {
                self.conns.ready(idx, edge);
            }
        }
        let had_pipe = self.pipe.is_some();
        let break_pipe = had_pipe && chance(src, 1);
        let mut closed: Vec<(u32, Conn, CloseReason)> = Vec::new();
        let (peers, pipe, buf, now) = (&mut self.peers, &mut self.pipe, &mut self.buf, self.now);
        let read_cap = self.params.read_len;
        let mut broken_for = None;
        let mut leftover = None;
        let mut record = |id: u32, conn: Conn, why: CloseReason| closed.push((id, conn, why));
        let moved = self.conns.serve_queued(
            now,
            |&id, conn, turn| {
                let mut sock = SimSocket {
                    peer: &mut peers[id as usize],
                    pipe,
                    now,
                    break_pipe: break_pipe && broken_for.is_none(),
                    read_cap,
                };
                let out = service::serve(conn, &mut sock, turn, buf);
                if break_pipe && !sock.break_pipe && broken_for.is_none() {
                    broken_for = Some(id);
                }
                if matches!(out, service::Outcome::CloseAndDropPipe(_)) {
                    *pipe = None; // the worker never splices through it again
                } else if let Some(p) = pipe.as_ref()
                    && !p.is_empty()
                {
                    leftover.get_or_insert((id, p.len()));
                }
                out
            },
            &mut record,
        );
        if let Some((id, n)) = leftover {
            return Err(format!(
                "client {id}: {n} byte(s) left in the splice pipe after a turn"
            ));
        }
        if broken_for.is_some() {
            self.broken_pipe_peer = broken_for;
        }
        if moved.pipe_broken != (had_pipe && self.pipe.is_none()) {
            return Err("the splice pipe broke but the worker was not told".into());
        }
        self.report.bytes_echoed += moved.written;
        self.conns.on_timers(self.now, &mut record);
        if let Some(at) = self.conns.next_stall_check().filter(|&at| at <= self.now) {
            return Err(format!(
                "a stall check due at tick {at} is still waiting at tick {}",
                self.now
            ));
        }
        self.conns.end_batch();
        for (id, mut conn, why) in closed {
            self.on_closed(id, &conn, why)?;
            self.goodbye(id, &mut conn, why)?;
        }
        self.check()
    }

    /// Checks that a close had a reason that holds.
    fn on_closed(&mut self, id: u32, conn: &Conn, why: CloseReason) -> Result<(), String> {
        let now = u64::from(self.now);
        let p = &mut self.peers[id as usize];
        self.slot[id as usize] = None;
        p.closed = Some(why);
        let silent = now - u64::from(p.last_io).min(now);
        match why {
            CloseReason::Finished if p.is_tls() => {
                self.report.finished += 1;
                #[cfg(feature = "tls")]
                if let Some(t) = &p.tls {
                    // A client that stopped mid-handshake is a truncation: closed, unechoed.
                    if !t.shut_while_handshaking && (p.shut_wr || t.sent_close_notify) && !p.reset {
                        if t.plain_echoed != t.plain_written || !t.got_close_notify {
                            return Err(format!(
                                "TLS client {id} closed as finished: wrote {} echoed {} close_notify back {}",
                                t.plain_written, t.plain_echoed, t.got_close_notify
                            ));
                        }
                        self.report.tls_clean += 1;
                    }
                }
            }
            CloseReason::Finished => {
                self.report.finished += 1;
                if p.admitted {
                    self.report.proxied_finished += 1;
                }
                if !(p.shut_wr && p.read_pos == p.sent && p.echoed == p.payload_sent())
                    || p.skip == u64::MAX
                    || p.refuse
                {
                    return Err(format!(
                        "client {id} closed as finished: shut_wr={} sent={} read={} echoed={}",
                        p.shut_wr, p.sent, p.read_pos, p.echoed
                    ));
                }
            }
            CloseReason::Error(kind) => {
                self.report.errors += 1;
                if !p.reset && self.broken_pipe_peer != Some(id) {
                    return Err(format!(
                        "client {id} closed on an error ({kind}) it never caused"
                    ));
                }
            }
            CloseReason::Rejected(r) => {
                self.report.rejected += 1;
                let hlen = p.header.len() as u64;
                let ok = if self.proxy.is_none() {
                    false
                } else if r == SIM_REFUSAL {
                    p.refuse && p.admitted
                } else if r == EOF_IN_HEADER {
                    p.shut_wr && p.read_pos == p.sent && (p.sent < hlen || p.skip == u64::MAX)
                } else {
                    is_proxy_reason(r) && p.skip == u64::MAX
                };
                if !ok || p.echoed > 0 {
                    return Err(format!(
                        "client {id} rejected ({r}) wrongly: header {:?} (valid: {}), refuse={}, admitted={}, sent {} read {} echoed {}, shut_wr={}",
                        String::from_utf8_lossy(&p.header),
                        p.skip != u64::MAX,
                        p.refuse,
                        p.admitted,
                        p.sent,
                        p.read_pos,
                        p.echoed,
                        p.shut_wr
                    ));
                }
            }
            CloseReason::StageTimeout(r) if r == crate::conn::proxy_stage::HEADER_TIMEOUT => {
                self.report.header_timeouts += 1;
                let due = self
                    .proxy
                    .map(|t| u64::from(p.accepted_at) + t + 1)
                    .unwrap_or(u64::MAX);
                if now < due || p.admitted || p.echoed > 0 {
                    return Err(format!(
                        "client {id} closed by the header timeout at tick {now} (due {due}), admitted={}, echoed {}",
                        p.admitted, p.echoed
                    ));
                }
            }
            CloseReason::StageTimeout(what) => {
                let Some(timeout) = self.tls.filter(|_| p.is_tls()) else {
                    return Err(format!(
                        "client {id} closed by a stage deadline ({what}) without a stage"
                    ));
                };
                self.report.tls_timeouts += 1;
                let due = u64::from(p.accepted_at) + ticks_ceil(timeout) + 1;
                if now < due {
                    return Err(format!(
                        "client {id} closed by {what} at tick {now}, before its deadline {due}"
                    ));
                }
            }
            CloseReason::Idle => {
                self.report.idle += 1;
                let limit = self.idle_ticks.unwrap_or(u64::MAX);
                if silent <= limit {
                    return Err(format!(
                        "client {id} closed as idle after {silent} tick(s) of silence; the timeout is {limit}"
                    ));
                }
            }
            CloseReason::Quiet => {
                self.report.quiet += 1;
                let need = ticks_ceil(QUIET);
                if self.drain_start.is_none()
                    || silent < need
                    || p.queued() > 0
                    || conn.pending_len() > 0
                    || (!p.is_tls() && p.echoed != p.payload_read())
                {
                    return Err(format!(
                        "client {id} closed as quiet while busy: silent {silent} tick(s) (need {need}), {} unread, {} pending, draining={}",
                        p.queued(),
                        conn.pending_len(),
                        self.drain_start.is_some()
                    ));
                }
            }
            CloseReason::ShutdownTimeout => {
                self.report.shutdown_timeout += 1;
                let start = self.drain_start.map(u64::from);
                if start.is_none_or(|s| now < s.saturating_add(ticks_ceil(self.shutdown_timeout))) {
                    return Err(format!(
                        "client {id} closed by the shutdown timeout before it passed"
                    ));
                }
            }
        }
        Ok(())
    }

    fn tls_both_closed(&self, p: usize) -> bool {
        #[cfg(feature = "tls")]
        return self.peers[p]
            .tls
            .as_ref()
            .is_some_and(|t| t.sent_close_notify && t.got_close_notify);
        #[cfg(not(feature = "tls"))]
        {
            let _ = p;
            false
        }
    }

    fn tls_notified(&self, p: usize) -> bool {
        #[cfg(feature = "tls")]
        return self.peers[p]
            .tls
            .as_ref()
            .is_some_and(|t| t.sent_close_notify);
        #[cfg(not(feature = "tls"))]
        {
            let _ = p;
            false
        }
    }

    fn tls_handshaking(&self, p: usize) -> bool {
        #[cfg(feature = "tls")]
        return self.peers[p]
            .tls
            .as_ref()
            .is_some_and(|t| t.is_handshaking());
        #[cfg(not(feature = "tls"))]
        {
            let _ = p;
            false
        }
    }

    /// As the worker does when it ends a connection: the stages' last words (a TLS
    /// close_notify), one send; the client must read it as a clean end.
    fn goodbye(&mut self, id: u32, conn: &mut Conn, why: CloseReason) -> Result<(), String> {
        if matches!(
            why,
            CloseReason::Idle | CloseReason::Quiet | CloseReason::ShutdownTimeout
        ) {
            let bye = conn.goodbye().to_vec();
            let reset = self.peers[id as usize].reset;
            #[cfg(feature = "tls")]
            if let Some(t) = self.peers[id as usize].tls.as_mut()
                && !bye.is_empty()
                && !reset
            {
                t.receive(id, &bye)?;
                if !t.got_close_notify {
                    return Err(format!(
                        "client {id}: the server's goodbye is no close_notify"
                    ));
                }
            }
            let _ = (bye, reset);
        }
        Ok(())
    }

    /// The invariants that must hold after every pass.
    fn check(&self) -> Result<(), String> {
        self.conns.table().check()?;
        for p in &self.peers {
            if let Some(v) = &p.first_violation {
                return Err(v.clone());
            }
        }
        let cap = self.params.max_pending + self.params.read_len.max(SPLICE_LEN);
        // TLS: one read may complete a whole record (16 KiB + overhead) and the handshake
        // flight goes out too.
        let tls_cap = cap + 24 * 1024;
        for (p, slot) in self.slot.iter().enumerate() {
            let Some(idx) = *slot else { continue };
            let cap = if self.peers[p].is_tls() { tls_cap } else { cap };
            let (_, conn) = self
                .conns
                .table()
                .get(idx)
                .ok_or("a peer's slot is empty")?;
            if conn.pending_len() > cap {
                return Err(format!(
                    "client {p}: {} byte(s) pending, above the cap {} + one read",
                    conn.pending_len(),
                    self.params.max_pending
                ));
            }
        }
        if let Some(start) = self.drain_start {
            let end = u64::from(start).saturating_add(ticks_ceil(self.shutdown_timeout));
            if u64::from(self.now) >= end && self.conns.live() > 0 {
                return Err(format!(
                    "{} connection(s) left after the shutdown timeout",
                    self.conns.live()
                ));
            }
            if self.conns.live() > 0 && self.conns.next_deadline(self.now).is_none() {
                return Err("draining with no timer armed".into());
            }
        }
        if !self.conns.has_queued() {
            self.check_nothing_stuck()?;
        }
        Ok(())
    }

    /// The worker would block now: every connection with work must have something to wake it.
    fn check_nothing_stuck(&self) -> Result<(), String> {
        for (p, slot) in self.slot.iter().enumerate() {
            let Some(idx) = *slot else { continue };
            let peer = &self.peers[p];
            if peer.edge != crate::conn::Readiness::empty() {
                continue; // an edge is on the ready list
            }
            let (_, conn) = self
                .conns
                .table()
                .get(idx)
                .ok_or("a peer's slot is empty")?;
            let unread = peer.queued() > 0 || (peer.shut_wr && !conn.saw_eof()) || peer.reset;
            let pending = conn.pending_len();
            let what = if unread
                && !conn.is_finishing()
                && !conn.is_backpressured(
                    self.params.max_pending,
                    self.conns.table().stall(idx) == Stall::Stalled,
                ) {
                Some("readable input")
            } else if pending > 0 && peer.window() > 0 {
                Some("output the socket would take")
            } else if pending > 0 && !peer.blocked_out {
                Some("output, and no EPOLLOUT edge will come")
            } else if conn.held_by_bulk_rule() && self.conns.table().stall(idx) == Stall::None {
                Some("input held back by the bulk rule, and no stall check armed")
            } else if conn.saw_eof() && pending == 0 {
                Some("a finished stream")
            } else if self.tls_both_closed(p) && pending == 0 {
                Some("a finished TLS session (both close_notifys sent)")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(format!(
                    "client {p} stuck: {what} and nothing will wake it (queued {}, urgent {:?}, shut_wr {}, pending {pending}, window {}, conn {conn:?})",
                    peer.queued(),
                    peer.urgent,
                    peer.shut_wr,
                    peer.window()
                ));
            }
        }
        Ok(())
    }

    /// The end: every client stops sending (half-close), reads everything; each must be served
    /// to the end in a bounded number of passes.
    fn finish(&mut self, src: &mut impl Source) -> Result<(), String> {
        for p in 0..self.peers.len() {
            self.peers[p].stalled_reader = false;
            if !self.peers[p].is_tls() {
                self.peers[p].shutdown_write();
            }
        }
        let mut rounds = 0u64;
        // Each pass echoes at least min(budget, window) bytes of each stream (windows ≥ 100).
        // (+ a TLS handshake's few KiB.)
        let limit = 1000 + 2 * (self.max_stream + 8192) / self.params.budget.clamp(1, 100) as u64;
        while !self.open_peers().is_empty() {
            rounds += 1;
            if rounds > limit {
                let stuck: Vec<String> = self
                    .open_peers()
                    .iter()
                    .map(|&p| {
                        let q = &self.peers[p];
                        let conn = self.slot[p].and_then(|i| self.conns.table().get(i)).map(|(_, c)| c);
                        format!(
                            "client {p}: sent {} read {} echoed {} window {} edge {:?} blocked_out {} reset {}, {conn:?}",
                            q.sent, q.read_pos, q.echoed, q.window(), q.edge, q.blocked_out, q.reset
                        )
                    })
                    .collect();
                return Err(format!(
                    "no progress after {limit} passes: {}",
                    stuck.join("; ")
                ));
            }
            for p in self.open_peers() {
                self.peers[p].read_echo(usize::MAX);
                // A TLS client sends what it has; once its handshake is done (or it has
                // tried for a while), its close_notify (or not) and its FIN.
                // With close_notify it then waits for the server to close: no FIN (a client
                // that waits for the server's close must not hang).
                if self.peers[p].is_tls() && !self.peers[p].shut_wr && !self.tls_notified(p) {
                    self.deliver(p, usize::MAX, false);
                    if !self.tls_handshaking(p) || rounds > 200 {
                        let notify = chance(src, 50);
                        self.tls_shutdown(p, notify);
                        if !notify {
                            self.peers[p].shutdown_write();
                        }
                    }
                }
            }
            self.pass(src)?;
            if !self.conns.has_queued() {
                self.now = self.now.saturating_add(1);
            }
        }
        for p in &self.peers {
            let served = matches!(p.closed, Some(CloseReason::Finished | CloseReason::Quiet));
            if served && !p.reset && !p.is_tls() && p.echoed != p.payload_read() {
                return Err(format!(
                    "client {}: {} byte(s) read but never echoed",
                    p.id,
                    p.payload_read() - p.echoed
                ));
            }
            let rejected = matches!(
                p.closed,
                Some(CloseReason::Rejected(_) | CloseReason::StageTimeout(_))
            );
            // (A connection that must be rejected may still end otherwise before its header
            // is decided: idle, drained, reset. A Finished one is caught in `on_closed`.)
            if p.refuse && p.admitted && !rejected {
                return Err(format!(
                    "client {}: should have been rejected, closed {:?}",
                    p.id, p.closed
                ));
            }
        }
        Ok(())
    }
}

/// A PROXY header of a random form for client `id`, and the client it names (`None`: the
/// header is invalid and the connection must be rejected). Valid: v1 TCP4/TCP6/UNKNOWN, v2
/// PROXY over IPv4/IPv6 with or without TLVs, v2 LOCAL. Invalid: no header at all, a bad port,
/// a v1 line without CRLF, a v2 header announcing more than 4096 bytes, a v2 version 1.
fn proxy_header(src: &mut impl Source, id: u32) -> (Vec<u8>, Option<Client>) {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let sport = 1 + below(src, 65535) as u16;
    let v4 = Ipv4Addr::from(0xC612_0000 + id); // 198.18.0.0/15
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, id as u16, 0, 0, 0, 1);
    let sig = crate::proxy::V2_SIGNATURE;
    let v2 = |cmd: u8, fam: u8, body: &[u8]| {
        let mut h = sig.to_vec();
        h.extend_from_slice(&[cmd, fam]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    };
    let tlvs = |src: &mut dyn FnMut() -> u64| -> Vec<u8> {
        let mut t = Vec::new();
        for _ in 0..src() % 3 {
            let len = (src() % 40) as u16;
            t.push(0xE0 + (src() % 16) as u8);
            t.extend_from_slice(&len.to_be_bytes());
            t.extend((0..len).map(|i| i as u8));
        }
        t
    };
    let (h, client) = match below(src, 12) {
        0 => (
            format!("PROXY TCP4 {v4} 192.0.2.1 {sport} 443\r\n").into_bytes(),
            Some(Client::Addr(SocketAddr::new(v4.into(), sport))),
        ),
        1 => (
            format!("PROXY TCP6 {v6} 2001:db8::2 {sport} 443\r\n").into_bytes(),
            Some(Client::Addr(SocketAddr::new(v6.into(), sport))),
        ),
        2 => (b"PROXY UNKNOWN\r\n".to_vec(), Some(Client::SocketPeer)),
        3 | 4 => {
            let mut body = v4.octets().to_vec();
            body.extend_from_slice(&[192, 0, 2, 1]);
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&443u16.to_be_bytes());
            body.extend(tlvs(&mut || src.next()));
            (
                v2(0x21, 0x11, &body),
                Some(Client::Addr(SocketAddr::new(v4.into(), sport))),
            )
        }
        5 => {
            let mut body = v6.octets().to_vec();
            body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&443u16.to_be_bytes());
            body.extend(tlvs(&mut || src.next()));
            (
                v2(0x21, 0x21, &body),
                Some(Client::Addr(SocketAddr::new(v6.into(), sport))),
            )
        }
        6 => (
            v2(0x20, 0x00, &tlvs(&mut || src.next())),
            Some(Client::SocketPeer),
        ),
        7 => (Vec::new(), None), // no header: the payload itself is not one
        8 => (
            b"PROXY TCP4 198.18.0.1 192.0.2.1 1 99999\r\n".to_vec(),
            None,
        ),
        9 => {
            let mut h = b"PROXY UNKNOWN".to_vec();
            h.extend(std::iter::repeat_n(b'x', 100));
            (h, None)
        }
        10 => {
            let mut h = sig.to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
            (h, None)
        }
        _ => (v2(0x11, 0x11, &[0; 12]), None),
    };
    // The generator and the parser agree (a valid header parses whole, to its last byte).
    if client.is_some() {
        assert!(
            matches!(crate::proxy::parse(&h), crate::proxy::Status::Done(_, n) if n == h.len()),
            "sim generated a header the parser does not take whole: {h:?}"
        );
    }
    (h, client)
}
