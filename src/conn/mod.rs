//! One client connection as a state machine without IO (sans-IO, in the manner of
//! quinn-proto's `Connection` and rustls's `ServerConnection`).
//!
//! [`Conn`] holds no fd, calls no libc and reads no clock. The worker tells it what happened
//! and asks it what to do next; the worker is the only place that turns the answers into
//! syscalls (`worker::service`), and the simulator (`sim`) and the fuzz target drive the very
//! same machine against a fake socket.
//!
//! # The API, one turn of one connection
//!
//! ```text
//! conn.on_readiness(Readiness)            // an epoll edge: readable/writable/rdhup/pri/hup/err
//! let mut turn = Turn::new(&params, now); // per-turn budget and time, owned by the worker
//! loop {
//!     match conn.poll(&mut turn) {
//!         Action::Read          => read(fd, &mut buf[..conn.read_len(&turn)]) → conn.on_read(&mut turn, ReadResult)
//!         Action::QueryMss      => getsockopt(TCP_MAXSEG)  → conn.on_mss(Some(mss))
//!         Action::SendInput(r)  => send(fd, &buf[r])     → conn.on_send_input(&mut turn, SendResult, &buf[r])
//!         Action::Send          => send(fd, conn.transmit()) → conn.on_sent(&mut turn, SendResult)
//!         Action::Splice        => socket → pipe → socket   → conn.on_splice(&mut turn, SpliceResult)
//!         Action::Yield         => budget spent, still readable: run again after the others
//!         Action::Wait          => nothing until the next edge (or a timer the worker keeps)
//!         Action::Close(reason) => close the fd (FIN, or RST if input is left unread)
//!     }
//! }
//! ```
//!
//! The fast path is unchanged from the copy-free echo: one `read` into the worker's one buffer,
//! one `send` straight from it ([`Action::SendInput`]); only the unsent tail is copied into
//! [`Pending`]. A read shorter than asked empties the receive queue unless the peer hung up
//! (then read on to EOF) or urgent data was flagged (a read stops at the urgent mark, so after
//! `EPOLLPRI` only `EAGAIN` counts as drained). Reading stops while pending output is above
//! `max_pending` — for a bulk stream, while any is pending, unless the worker found its client
//! stalled ([`STALL_TICKS`]) (backpressure) — and after `budget` bytes in one turn (fairness).
//!
//! # Time
//!
//! Time is passed in as [`Tick`]s (100 ms) since the worker started; the connection records the
//! tick of its last byte in either direction ([`Conn::last_active`]). The worker's idle timeout
//! and shutdown drain read it: both are per connection ("quiet since its own last byte").
//!
//! # Stages: PROXY header, TLS, banner (the seam)
//!
//! - [`Conn::push_stage`] adds a [`Stage`] in front of the echo. Input goes through the stages
//!   first; a stage answers [`Flow`]: `Hold` (consumed it all: TLS, which decrypts, echoes and
//!   encrypts inside its session and pushes ciphertext to the pending output), `Pass(n)` (done
//!   after a prefix: a PROXY header; `data[n..]` is echoed and the stage is dropped, so the
//!   connection is back on the fast path), `Finish` (send what is pending, then close: a TLS
//!   alert), `Reject(reason)` (close at once, nothing more sent: a bad PROXY header). Stage
//!   output never takes the fast path. A connection with a stage never splices.
//! - [`Conn::queue_output`] queues bytes to send before any echo (a banner). The socket is
//!   registered writable, so the first edge sends it.
//! - [`Params::read_len`] is the read size (the worker's buffer); once a read fills it, the
//!   connection is a bulk stream and asks for its MSS ([`Action::QueryMss`]), and its reads
//!   shrink to the largest multiple of the MSS that fits ([`read_len_for_mss`]), so each echo
//!   leaves as full segments. "Short read" is measured against [`Conn::read_len`].
//!
//! A plain connection pays one null pointer for all of this: `Option<Box<Layers>>`.

mod pending;
pub mod proxy_stage;
mod stage;
#[cfg(feature = "tls")]
pub mod tls_stage;

use std::fmt;
use std::io::ErrorKind;
use std::ops::Range;
use std::time::Duration;

pub use pending::{MAX as PENDING_MAX, Pending};
pub use proxy_stage::ProxyStage;
use stage::Layers;
pub use stage::{Client, Flow, Stage};

/// Coarse time: 100 ms units since the worker started (u32: 13 years before it wraps).
pub type Tick = u32;
/// The length of one [`Tick`].
pub const TICK: Duration = Duration::from_millis(100);

/// Whole ticks in `d`, rounded up, saturating (a huge timeout means "never").
pub fn ticks_ceil(d: Duration) -> u64 {
    let t = TICK.as_nanos();
    u64::try_from(d.as_nanos().div_ceil(t)).unwrap_or(u64::MAX)
}

/// Bytes moved per splice: the same as one buffered read, so the memory bound is unchanged.
pub const SPLICE_LEN: usize = 64 * 1024;

/// A bulk stream quiet for this many ticks (1 s) starts a new bulk phase: its next full read
/// asks the socket its MSS again (the path may have changed meanwhile). A stream that never
/// pauses keeps the length it learned: an MSS that shrinks under it costs one short segment
/// per send (what every send cost before sizing), never a byte.
pub const MSS_REFRESH: Tick = 10;

/// A bulk stream held back by its "read when the last echo is all sent" rule (see
/// [`Conn::is_backpressured`]) with no byte moved either way for this many ticks (100 to 200
/// ms) has a client that stopped reading: the worker marks it stalled ([`Turn::stalled`]) and
/// it reads on into pending output up to `max_pending`, like any other connection, until that
/// output is all sent. Without this, a client that writes a lot before it reads would get only
/// what the kernel buffers — with `TCP_NOTSENT_LOWAT` (`--notsent-lowat`) little — and
/// `--max-pending` would not mean what it says. A stream that flows moves bytes every turn and
/// never gets here. The state lives in the worker's table slot (its padding), not here: the
/// connection stays 40 bytes.
pub const STALL_TICKS: Tick = 2;

/// What a due stall check found ([`Conn::stall_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallCheck {
    /// The client stopped taking echo: give the connection a turn, it reads again.
    Stalled,
    /// Still held back, but bytes moved since: check again at this tick.
    Again(Tick),
    /// No longer held back: nothing to check.
    Done,
}

/// With [`Splice::Auto`], a bulk stream splices when its socket's MSS is below this: every
/// NIC path (1,448 on Ethernet, 8,948 with jumbo frames, less through tunnels). Loopback's MSS
/// is 32,768 to 65,483: there the client shares the machine, splicing hands it back its own
/// pages (it must allocate fresh ones for every send), and measured a fifth less throughput
/// for a quarter less server CPU, so loopback streams copy.
pub const SPLICE_AUTO_MSS: usize = 16 * 1024;

/// When bulk streams are echoed with splice(2) (`--splice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Splice {
    /// Never: every byte is copied through the worker's buffer (no pipe). The default: see
    /// the README (splicing moved work to a client on the same host, not off the machine).
    #[default]
    Off,
    /// Bulk streams on a NIC-sized path (MSS below [`SPLICE_AUTO_MSS`]); loopback copies.
    Auto,
    /// Every bulk stream.
    On,
}

/// True for a sized read length that wastes more than 1/16 of `cap`: an MSS between about half
/// and all of the buffer. That is loopback early in a connection, where the kernel bounds the
/// MSS to half the peer's largest window so far (32,768 at accept, 47,616 after the first
/// 64 KiB, 65,483 after about 1 MB), so such a length holds for one read only: each full read
/// asks again until the MSS settles. Ethernet (1448 → 65,160) and loopback settled (65,483)
/// are not provisional.
fn provisional(len: usize, cap: usize) -> bool {
    len * 16 < cap * 15
}

/// The read length for a bulk stream whose socket reports `mss` (`TCP_MAXSEG`): the largest
/// multiple of `mss` that fits `cap`, so that echoing a full read sends only full segments
/// (with `TCP_NODELAY`, 64 KiB over loopback's 65,483-byte MSS is one full segment and one of
/// 53 bytes: twice the packets). `cap` itself when the MSS is unknown (0) or not below it.
/// Never 0 for a `cap` of at least 1, and always above `cap - mss`, so even a tiny MSS keeps
/// reads large (88 → 65,472 of 65,536).
pub fn read_len_for_mss(mss: usize, cap: usize) -> usize {
    if mss == 0 || mss >= cap {
        cap
    } else {
        cap - cap % mss
    }
}

/// Readiness reported by the poller (the worker maps epoll bits onto these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness(u8);

impl Readiness {
    pub const READABLE: Readiness = Readiness(1);
    pub const WRITABLE: Readiness = Readiness(2);
    /// The peer shut its sending side (EPOLLRDHUP).
    pub const RDHUP: Readiness = Readiness(4);
    /// Urgent data arrived (EPOLLPRI); with SO_OOBINLINE it is an ordinary byte in the stream.
    pub const PRI: Readiness = Readiness(8);
    /// Both directions are gone (EPOLLHUP).
    pub const HUP: Readiness = Readiness(16);
    /// A pending socket error (EPOLLERR): the next read or send reports it.
    pub const ERR: Readiness = Readiness(32);

    pub const fn empty() -> Readiness {
        Readiness(0)
    }

    pub const fn contains(self, other: Readiness) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn from_bits(bits: u8) -> Readiness {
        Readiness(bits & 63)
    }
}

impl std::ops::BitOr for Readiness {
    type Output = Readiness;
    fn bitor(self, o: Readiness) -> Readiness {
        Readiness(self.0 | o.0)
    }
}

/// Per-worker settings every turn uses.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Stop reading while more than this is pending (`--max-pending`).
    pub max_pending: usize,
    /// Bytes asked for per read (at most the worker's buffer).
    pub read_len: usize,
    /// Bytes read from one connection per turn before the others get theirs.
    pub budget: usize,
    /// Which bulk streams splice (`--splice`); `Off` when the worker has no pipe.
    pub splice: Splice,
}

/// One turn of one connection: its time, its read budget, and what it moved.
#[derive(Debug)]
pub struct Turn {
    now: Tick,
    read_len: usize,
    budget: usize,
    max_pending: usize,
    splice: Splice,
    input: Option<Range<usize>>,
    /// In: the worker found this bulk stream's client stopped taking its echo (see
    /// [`STALL_TICKS`]); it reads on up to `max_pending`. Out: false once its pending output
    /// was all sent (the bulk rule applies again).
    pub stalled: bool,
    /// Bytes read this turn.
    pub read: usize,
    /// Bytes sent this turn.
    pub written: usize,
    /// Of `read`: bytes spliced this turn.
    pub spliced: usize,
}

impl Turn {
    pub fn new(p: &Params, now: Tick) -> Turn {
        Turn {
            now,
            read_len: p.read_len,
            budget: p.budget,
            max_pending: p.max_pending,
            splice: p.splice,
            input: None,
            stalled: false,
            read: 0,
            written: 0,
            spliced: 0,
        }
    }

    /// The worker's read length: what [`Action::Read`] asks for until a bulk stream sizes its
    /// reads to its MSS ([`Conn::read_len`] is what to ask for).
    pub fn read_len(&self) -> usize {
        self.read_len
    }

    pub fn now(&self) -> Tick {
        self.now
    }

    /// Call when the splice pipe is gone (a splice error left it in an unknown state).
    pub fn disable_splice(&mut self) {
        self.splice = Splice::Off;
    }
}

/// What the worker should do next for this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read up to [`Turn::read_len`] bytes into the worker's buffer; report with `on_read`.
    Read,
    /// Send `buf[range]` — the bytes just read — straight from the worker's buffer; report with
    /// `on_send_input` (the zero-copy fast path).
    SendInput(Range<usize>),
    /// Send [`Conn::transmit`]; report with `on_sent`.
    Send,
    /// A full read made this a bulk stream: ask the socket its MSS (`TCP_MAXSEG`, one
    /// `getsockopt`, once per bulk phase); report with `on_mss`. Never asked of a connection
    /// whose reads are all short (ping-pong, churn).
    QueryMss,
    /// Echo up to [`SPLICE_LEN`] bytes socket → pipe → socket; report with `on_splice`. The
    /// pipe must be empty again when the worker reports.
    Splice,
    /// Still readable, but this turn's budget is spent: serve it again after the others.
    Yield,
    /// Nothing to do until the next readiness edge.
    Wait,
    /// A stage identified the client (a PROXY header): apply the per-client rules to it and
    /// report with `on_admit` (`Err(reason)`: refused, closed with nothing echoed).
    Admit(Client),
    /// Close the connection.
    Close(CloseReason),
}

/// Why a connection was closed (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client finished (EOF) and got its whole echo.
    Finished,
    /// A read or send failed (reset, EPIPE, ...).
    Error(ErrorKind),
    /// A stage refused the connection.
    Rejected(&'static str),
    /// No traffic for `--idle-timeout`.
    Idle,
    /// Shutting down, and the connection was quiet.
    Quiet,
    /// Shutting down, and `--shutdown-timeout` passed.
    ShutdownTimeout,
    /// A stage did not finish by its deadline (`--proxy-header-timeout`,
    /// `--tls-handshake-timeout`); the stage's reason ([`Stage::deadline_reason`]).
    StageTimeout(&'static str),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Finished => f.write_str("client finished"),
            CloseReason::Error(kind) => write!(f, "{kind}"),
            CloseReason::Rejected(why) => write!(f, "rejected: {why}"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::Quiet => f.write_str("quiet at shutdown"),
            CloseReason::ShutdownTimeout => f.write_str("shutdown timeout"),
            CloseReason::StageTimeout(why) => f.write_str(why),
        }
    }
}

/// The outcome of a read.
#[derive(Debug, Clone, Copy)]
pub enum ReadResult<'a> {
    /// Bytes read (never empty: a read of 0 is `Eof`).
    Data(&'a [u8]),
    Eof,
    WouldBlock,
    Err(ErrorKind),
}

/// The outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    Sent(usize),
    WouldBlock,
    Err(ErrorKind),
}

/// The outcome of one socket → pipe → socket echo.
#[derive(Debug, Clone, Copy)]
pub enum SpliceResult<'a> {
    /// The splice in returned 0: EOF, or stopped at an urgent mark (a read decides which).
    Eof,
    /// The splice in found nothing (`EAGAIN`): drained.
    WouldBlock,
    /// The splice in failed.
    Err(ErrorKind),
    /// `read` bytes came in, `sent` went out; `unsent` (read − sent bytes) was copied out of
    /// the pipe; `failed`: the splice out failed (the unsent bytes were discarded).
    Moved {
        read: usize,
        sent: usize,
        unsent: &'a [u8],
        failed: Option<ErrorKind>,
    },
}

/// Readiness and lifecycle bits.
mod flag {
    /// An edge said readable and no read has said drained since.
    pub const READABLE: u8 = 1;
    /// The socket took everything offered since the last EPOLLOUT edge.
    pub const WRITABLE: u8 = 2;
    /// The peer shut its write side: read to EOF, a short read is not enough.
    pub const RDHUP: u8 = 4;
    /// Read returned EOF: close once the pending output is sent.
    pub const EOF: u8 = 8;
    /// Urgent data was flagged: a read stops at the mark, so only EAGAIN means drained.
    pub const URGENT: u8 = 16;
    /// A read filled the buffer: a bulk stream (spliced with `--splice`).
    pub const BULK: u8 = 32;
    /// A stage asked to finish: read nothing more, send what is pending, close.
    pub const FINISHING: u8 = 64;
    /// This bulk phase asked the socket its MSS (`Conn::mss`). Cleared with BULK,
    /// after [`MSS_REFRESH`] ticks without a byte, and after a full read of a provisional
    /// length (see `provisional`).
    pub const SIZED: u8 = 128;
}

/// One client connection (40 bytes; see the module header for the API).
#[derive(Debug)]
pub struct Conn {
    pending: Pending,
    layers: Option<Box<Layers>>,
    last_active: Tick,
    flags: u8,
    error: Option<ErrorKind>,
    /// With `flag::SIZED`: the socket's MSS in this bulk phase (0: unknown).
    mss: u16,
}

impl Conn {
    /// A plain echo connection accepted at `now`. It starts writable (a fresh socket has room).
    pub fn new(now: Tick) -> Conn {
        Conn {
            pending: Pending::default(),
            layers: None,
            last_active: now,
            flags: flag::WRITABLE,
            error: None,
            mss: 0,
        }
    }

    /// Adds a stage after the ones already there (see the module header).
    pub fn push_stage(&mut self, stage: Box<dyn Stage>) {
        self.layers.get_or_insert_with(Default::default).push(stage);
    }

    /// Reports the result of [`Action::Admit`]: `Err(reason)` closes the connection with
    /// nothing more sent.
    pub fn on_admit(&mut self, r: Result<(), &'static str>) {
        if let Some(layers) = self.layers.as_mut() {
            layers.admitted(r);
            if layers.is_empty() {
                self.layers = None;
            }
        }
    }

    /// The tick by which the stages in front must have finished (a PROXY header, a TLS
    /// handshake), if any.
    pub fn deadline(&self) -> Option<Tick> {
        self.layers.as_ref().and_then(|l| l.deadline())
    }

    /// The reason of the stage whose deadline has passed at `now`, if one has.
    pub fn timed_out(&self, now: Tick) -> Option<&'static str> {
        self.layers.as_ref().and_then(|l| l.timed_out(now))
    }

    /// The server is closing this connection (idle timeout, shutdown drain): the bytes its
    /// stages want sent last (a TLS close_notify), for one best-effort send. Empty for a plain
    /// connection, and when output is still pending (it would not get through anyway).
    pub fn goodbye(&mut self) -> &[u8] {
        if let Some(layers) = self.layers.as_mut()
            && self.pending.is_empty()
        {
            layers.close(&mut self.pending);
            return self.pending.as_slice();
        }
        &[]
    }

    /// Queues bytes to send before any echo (a banner). Sent on the first writable edge.
    pub fn queue_output(&mut self, data: &[u8]) {
        self.pending.push(data);
    }

    #[inline]
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// The tick of the last byte moved in either direction (or of the accept).
    pub fn last_active(&self) -> Tick {
        self.last_active
    }

    /// Bytes waiting to be sent.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Heap bytes held for pending output.
    pub fn pending_capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// An edge said readable and no read has reported the socket drained since.
    pub fn is_readable(&self) -> bool {
        self.has(flag::READABLE)
    }

    /// The socket took everything offered since the last writable edge.
    pub fn is_writable(&self) -> bool {
        self.has(flag::WRITABLE)
    }

    /// A stage finished the input (a TLS close or failure): nothing more is read, the pending
    /// output is sent, then the connection closes.
    pub fn is_finishing(&self) -> bool {
        self.has(flag::FINISHING)
    }

    /// The peer's EOF was read.
    pub fn saw_eof(&self) -> bool {
        self.has(flag::EOF)
    }

    /// Nothing pending and nothing known unread: only new input (an edge) can change that.
    pub fn is_drained(&self) -> bool {
        self.pending.is_empty() && !self.has(flag::READABLE)
    }

    /// How many bytes the next [`Action::Read`] asks for: the turn's read length, or in a
    /// bulk phase the largest multiple of the socket's MSS that fits it (see
    /// [`read_len_for_mss`]). A read shorter than this emptied the receive queue.
    pub fn read_len(&self, turn: &Turn) -> usize {
        if self.has(flag::SIZED) {
            read_len_for_mss(usize::from(self.mss), turn.read_len)
        } else {
            turn.read_len
        }
    }

    /// True when reading is held back (backpressure): more than `max_pending` bytes pending,
    /// or for a plain bulk stream any. A plain bulk stream reads only when its last echo is
    /// all sent: while the socket is full its backlog waits in the kernel's buffers (TCP's
    /// window slows the client) instead of being copied into pending output, and each send is
    /// a whole read (as large as the path allows), not the tail of one read and the start of
    /// the next. Not behind a stage: a TLS stage's output goes through pending output anyway,
    /// so there is no copy to save, and TLS keeps the behaviour it was measured with.
    /// `stalled`: see [`STALL_TICKS`].
    pub fn is_backpressured(&self, max_pending: usize, stalled: bool) -> bool {
        if self.has(flag::BULK) && !stalled && self.layers.is_none() {
            !self.pending.is_empty()
        } else {
            self.pending.len() > max_pending
        }
    }

    /// Held back by the bulk rule alone (unless stalled): a plain bulk stream with echo
    /// pending and input left unread.
    pub fn held_by_bulk_rule(&self) -> bool {
        self.flags & (flag::BULK | flag::READABLE | flag::EOF | flag::FINISHING)
            == flag::BULK | flag::READABLE
            && self.layers.is_none()
            && !self.pending.is_empty()
    }

    /// The tick at which to check whether a stream held back by the bulk rule has a client
    /// that stopped taking its echo ([`STALL_TICKS`] after its last byte); None when not held.
    pub fn stall_check_at(&self) -> Option<Tick> {
        self.held_by_bulk_rule()
            .then(|| self.last_active.saturating_add(STALL_TICKS))
    }

    /// A stall check came due at `now` (see [`STALL_TICKS`]).
    pub fn stall_check(&self, now: Tick) -> StallCheck {
        if !self.held_by_bulk_rule() {
            StallCheck::Done
        } else if now.wrapping_sub(self.last_active) >= STALL_TICKS {
            StallCheck::Stalled
        } else {
            StallCheck::Again(self.last_active.saturating_add(STALL_TICKS))
        }
    }

    /// Records one readiness report.
    pub fn on_readiness(&mut self, r: Readiness) {
        let any = |bits: Readiness| r.contains(bits);
        if any(Readiness::READABLE
            | Readiness::RDHUP
            | Readiness::HUP
            | Readiness::ERR
            | Readiness::PRI)
        {
            self.flags |= flag::READABLE;
        }
        if any(Readiness::PRI) {
            self.flags |= flag::URGENT;
        }
        if any(Readiness::RDHUP | Readiness::HUP) {
            self.flags |= flag::RDHUP;
        }
        if any(Readiness::WRITABLE | Readiness::ERR | Readiness::HUP) {
            self.flags |= flag::WRITABLE;
        }
    }

    /// What to do next (see [`Action`]). Call again after reporting each action's result.
    pub fn poll(&mut self, turn: &mut Turn) -> Action {
        if turn.stalled && self.pending.is_empty() {
            // Caught up: the client takes its echo again, and the bulk rule applies again.
            turn.stalled = false;
        }
        if self.has(flag::SIZED) && turn.now.wrapping_sub(self.last_active) >= MSS_REFRESH {
            // Back after a pause: a new bulk phase must prove itself and learn the MSS anew.
            self.flags &= !(flag::BULK | flag::SIZED);
        }
        if let Some(kind) = self.error {
            return Action::Close(CloseReason::Error(kind));
        }
        if let Some(why) = self.layers.as_ref().and_then(|l| l.rejected()) {
            return Action::Close(CloseReason::Rejected(why));
        }
        if let Some(client) = self.layers.as_ref().and_then(|l| l.admit()) {
            return Action::Admit(client);
        }
        if let Some(r) = &turn.input {
            return Action::SendInput(r.clone());
        }
        if !self.pending.is_empty() && self.has(flag::WRITABLE) {
            return Action::Send;
        }
        if self.pending.is_empty() && self.has(flag::EOF | flag::FINISHING) {
            return Action::Close(CloseReason::Finished);
        }
        if self.has(flag::READABLE)
            && !self.has(flag::EOF | flag::FINISHING)
            && !self.is_backpressured(turn.max_pending, turn.stalled)
        {
            if turn.budget == 0 {
                return Action::Yield;
            }
            // A full read made this a bulk stream: size its reads to the path, once per phase.
            // Not behind a stage: a TLS stage's records, not its reads, size what it sends.
            if self.has(flag::BULK) && !self.has(flag::SIZED) && self.layers.is_none() {
                return Action::QueryMss;
            }
            // splice(2) will not move an urgent byte (it stops at the mark): copy meanwhile.
            if self.has(flag::BULK)
                && self.splices(turn)
                && !self.has(flag::URGENT)
                && self.has(flag::WRITABLE)
                && self.layers.is_none()
            {
                return Action::Splice;
            }
            return Action::Read;
        }
        Action::Wait
    }

    /// This bulk stream splices under the turn's mode: `On` always, `Auto` on a path whose
    /// MSS is known and below [`SPLICE_AUTO_MSS`].
    fn splices(&self, turn: &Turn) -> bool {
        match turn.splice {
            Splice::Off => false,
            Splice::On => true,
            Splice::Auto => {
                self.has(flag::SIZED) && (1..SPLICE_AUTO_MSS).contains(&usize::from(self.mss))
            }
        }
    }

    fn moved(&mut self, turn: &mut Turn, read: usize, written: usize) {
        turn.read += read;
        turn.written += written;
        turn.budget = turn.budget.saturating_sub(read);
        if read + written > 0 {
            self.last_active = turn.now;
        }
    }

    /// Reports the result of [`Action::QueryMss`]: the socket's `TCP_MAXSEG`, or `None` if it
    /// could not be had (then this phase reads the turn's length; no second query).
    pub fn on_mss(&mut self, mss: Option<usize>) {
        // A TCP MSS fits 16 bits (the option is 16 bits; loopback's is 65,483 at most).
        self.mss = mss.map_or(0, |m| m.min(usize::from(u16::MAX)) as u16);
        self.flags |= flag::SIZED;
    }

    /// Reports the result of [`Action::Read`].
    pub fn on_read(&mut self, turn: &mut Turn, r: ReadResult<'_>) {
        match r {
            ReadResult::Data(data) if !data.is_empty() => {
                let n = data.len();
                let asked = self.read_len(turn);
                self.moved(turn, n, 0);
                // A short read emptied the receive queue: the next byte raises a new edge.
                // Not so after RDHUP (no edge will come) or urgent data (the read stopped at
                // the mark): then read on until EAGAIN / EOF.
                if n < asked && !self.has(flag::RDHUP | flag::URGENT) {
                    self.flags &= !flag::READABLE;
                }
                if n >= asked {
                    self.flags |= flag::BULK;
                    if self.has(flag::SIZED) && provisional(asked, turn.read_len) {
                        self.flags &= !flag::SIZED; // ask again before the next read
                    }
                }
                self.accept_input(turn, data);
            }
            ReadResult::Data(_) | ReadResult::Eof => self.on_eof(),
            ReadResult::WouldBlock => self.flags &= !(flag::READABLE | flag::URGENT),
            ReadResult::Err(ErrorKind::Interrupted) => {}
            ReadResult::Err(kind) => self.error = Some(kind),
        }
    }

    fn on_eof(&mut self) {
        self.flags = (self.flags | flag::EOF) & !(flag::READABLE | flag::URGENT);
        if let Some(layers) = self.layers.as_mut() {
            match layers.eof(&mut self.pending) {
                Flow::Finish => self.flags |= flag::FINISHING,
                Flow::Hold | Flow::Pass(_) | Flow::Reject(_) => {}
            }
        }
    }

    /// Routes bytes just read: through the stages, then to the echo — straight from the
    /// worker's buffer when nothing is queued before them, else into pending output.
    fn accept_input(&mut self, turn: &mut Turn, data: &[u8]) {
        let mut start = 0;
        if let Some(layers) = self.layers.as_mut() {
            match layers.input(data, &mut self.pending) {
                Flow::Pass(n) => {
                    start = n;
                    if layers.is_empty() {
                        self.layers = None;
                    }
                }
                Flow::Hold | Flow::Reject(_) => return,
                Flow::Finish => {
                    self.flags |= flag::FINISHING;
                    return;
                }
            }
        }
        if start == data.len() {
            return;
        }
        if self.pending.is_empty() && self.has(flag::WRITABLE) {
            turn.input = Some(start..data.len());
        } else {
            self.pending.push(&data[start..]);
        }
    }

    /// Reports the result of [`Action::SendInput`]; `input` is `buf[range]` as sent.
    pub fn on_send_input(&mut self, turn: &mut Turn, r: SendResult, input: &[u8]) {
        let range = turn.input.take().expect("on_send_input without SendInput");
        debug_assert_eq!(range.len(), input.len());
        match r {
            SendResult::Sent(w) => {
                let w = w.min(input.len());
                self.moved(turn, 0, w);
                if w < input.len() {
                    self.flags &= !flag::WRITABLE;
                    self.pending.push(&input[w..]);
                }
            }
            SendResult::WouldBlock => {
                self.flags &= !flag::WRITABLE;
                self.pending.push(input);
            }
            SendResult::Err(ErrorKind::Interrupted) => turn.input = Some(range),
            SendResult::Err(kind) => self.error = Some(kind),
        }
    }

    /// The pending bytes to send for [`Action::Send`].
    pub fn transmit(&self) -> &[u8] {
        self.pending.as_slice()
    }

    /// Reports the result of [`Action::Send`].
    pub fn on_sent(&mut self, turn: &mut Turn, r: SendResult) {
        match r {
            SendResult::Sent(w) => {
                let offered = self.pending.len();
                let w = w.min(offered);
                self.pending.consume(w);
                self.moved(turn, 0, w);
                if w < offered {
                    self.flags &= !flag::WRITABLE;
                }
            }
            SendResult::WouldBlock => self.flags &= !flag::WRITABLE,
            SendResult::Err(ErrorKind::Interrupted) => {}
            SendResult::Err(kind) => self.error = Some(kind),
        }
    }

    /// Reports the result of [`Action::Splice`].
    pub fn on_splice(&mut self, turn: &mut Turn, r: SpliceResult<'_>) {
        match r {
            // splice(2) also reports 0 when it stops at an urgent mark after the peer's FIN:
            // let a read tell the real EOF (one more syscall, once per spliced stream).
            SpliceResult::Eof => self.flags &= !(flag::BULK | flag::SIZED),
            SpliceResult::WouldBlock => self.flags &= !(flag::READABLE | flag::URGENT),
            SpliceResult::Err(ErrorKind::Interrupted) => {}
            SpliceResult::Err(kind) => self.error = Some(kind),
            SpliceResult::Moved {
                read,
                sent,
                unsent,
                failed,
            } => {
                self.moved(turn, read, sent);
                turn.spliced += read;
                if sent < read {
                    self.flags &= !flag::WRITABLE;
                }
                match failed {
                    Some(kind) => self.error = Some(kind),
                    None => {
                        debug_assert_eq!(unsent.len(), read - sent);
                        self.pending.push(unsent);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
