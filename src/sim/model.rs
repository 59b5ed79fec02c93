//! The fake socket: one client and the server-side socket it talks to, as the kernel would
//! show them to the worker — a receive queue (with at most one urgent mark), a send window,
//! half-close, reset, and the ready-list bits an edge-triggered epoll would report.

use std::io::{self, ErrorKind};

use crate::conn::{Client, Readiness};

/// The reason the simulated worker gives when it refuses a client at header time.
pub const SIM_REFUSAL: &str = "sim: over a per-IP limit";
use crate::worker::service::Socket;

/// Length of the stream pattern: a prime, so no read size or window lines up with it.
const PERIOD: usize = 131_071;

fn table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PERIOD as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    })
}

/// The byte at offset `off` of client `id`'s stream: a position in a long pseudo-random
/// pattern, so a shifted, repeated or lost byte shows up as a mismatch.
pub fn byte(id: u32, off: u64) -> u8 {
    table()[stream_pos(id, off)]
}

fn stream_pos(id: u32, off: u64) -> usize {
    ((off + u64::from(id) * 7919) % PERIOD as u64) as usize
}

/// Client `id`'s stream from offset `off`, `out.len()` bytes.
pub fn fill(id: u32, off: u64, out: &mut [u8]) {
    let t = table();
    let mut done = 0;
    while done < out.len() {
        let at = stream_pos(id, off + done as u64);
        let n = (PERIOD - at).min(out.len() - done);
        out[done..done + n].copy_from_slice(&t[at..at + n]);
        done += n;
    }
}

/// The first offset in `data` that differs from client `id`'s stream at `off`.
fn mismatch(id: u32, off: u64, data: &[u8]) -> Option<usize> {
    let t = table();
    let mut done = 0;
    while done < data.len() {
        let at = stream_pos(id, off + done as u64);
        let n = (PERIOD - at).min(data.len() - done);
        if data[done..done + n] != t[at..at + n] {
            let i = (0..n).find(|&i| data[done + i] != t[at + i]).unwrap_or(0);
            return Some(done + i);
        }
        done += n;
    }
    None
}

#[derive(Debug)]
pub struct Peer {
    pub id: u32,
    /// Bytes the client has written (they are in the server's receive queue once written).
    pub sent: u64,
    /// Bytes the server has read (or spliced) out of the receive queue.
    pub read_pos: u64,
    /// Stream offset of the urgent byte, while the server has not read past it.
    pub urgent: Option<u64>,
    /// The client shut its write side after `sent` bytes.
    pub shut_wr: bool,
    /// The client reset the connection.
    pub reset: bool,
    /// Bytes the server has sent back, each checked in order.
    pub echoed: u64,
    /// The client's receive buffer, and the echo in it not yet read by the client.
    pub rcvbuf: usize,
    pub unread_echo: usize,
    /// A send came up short since the last EPOLLOUT edge: space opening raises a new one.
    pub blocked_out: bool,
    /// Bits on the epoll ready list for this socket (an edge not yet reported).
    pub edge: Readiness,
    /// Inject EINTR into the next read / send.
    pub eintr_read: bool,
    pub eintr_send: bool,
    /// A reset that arrives between the server's read and its send (mid-splice, too).
    pub reset_before_send: bool,
    /// The tick of the last byte moved in either direction, as the simulator saw it.
    pub last_io: u32,
    /// The server closed it, and why.
    pub closed: Option<crate::conn::CloseReason>,
    /// The client never reads its echo until the end (a flooder).
    pub stalled_reader: bool,
    /// The first broken invariant seen by this socket (echo order, pipe contents).
    pub first_violation: Option<String>,
    /// A TLS client: the receive queue holds its ciphertext, and the echo is checked after
    /// decryption (see `sim::tls`).
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::TlsPeer>,
    /// With a PROXY stage: the bytes the stream starts with (a header, valid or not).
    pub header: Vec<u8>,
    /// Bytes at the start of the stream that must never be echoed: a valid header's length,
    /// or everything (`u64::MAX`) when the connection must be rejected.
    pub skip: u64,
    /// The worker refuses this client when the stage asks to admit it (a per-IP limit).
    pub refuse: bool,
    /// The client the header names, as the stage must report it.
    pub expect_client: Option<Client>,
    /// The stage asked to admit this client.
    pub admitted: bool,
    /// The tick the connection was accepted at.
    pub accepted_at: u32,
    /// What `getsockopt(TCP_MAXSEG)` reports now (`None`: it fails); the client may change it
    /// (a new path MTU) at any time.
    pub mss: Option<usize>,
    /// The MSS the server last asked for, and the read length it then has to use.
    pub mss_seen: Option<usize>,
    /// Reads that filled what the server asked for, and MSS queries: at most one query per
    /// full read (none for a connection that never fills one).
    pub full_reads: u64,
    pub mss_queries: u64,
    /// Bytes echoed while the window was smaller than one segment (coverage for the report).
    pub sub_segment_window_bytes: u64,
}

impl Peer {
    pub fn new(id: u32, rcvbuf: usize, now: u32) -> Peer {
        Peer {
            id,
            sent: 0,
            read_pos: 0,
            urgent: None,
            shut_wr: false,
            reset: false,
            echoed: 0,
            rcvbuf,
            unread_echo: 0,
            blocked_out: false,
            edge: Readiness::WRITABLE, // EPOLL_CTL_ADD reports a writable socket at once
            eintr_read: false,
            eintr_send: false,
            reset_before_send: false,
            last_io: now,
            closed: None,
            stalled_reader: false,
            first_violation: None,
            #[cfg(feature = "tls")]
            tls: None,
            header: Vec::new(),
            skip: 0,
            refuse: false,
            expect_client: None,
            admitted: false,
            accepted_at: now,
            mss: Some(1448),
            mss_seen: None,
            full_reads: 0,
            mss_queries: 0,
            sub_segment_window_bytes: 0,
        }
    }

    /// Stream bytes from raw offset `off`: the header, then the client's pattern.
    fn fill_raw(&self, off: u64, out: &mut [u8]) {
        let h = self.header.len() as u64;
        let mut done = 0;
        if off < h {
            let n = ((h - off) as usize).min(out.len());
            out[..n].copy_from_slice(&self.header[off as usize..off as usize + n]);
            done = n;
        }
        let pat = (off + done as u64).saturating_sub(h);
        fill(self.id, pat, &mut out[done..]);
    }

    /// Payload bytes (after the header) the server has read.
    pub fn payload_read(&self) -> u64 {
        self.read_pos.saturating_sub(self.skip)
    }

    /// Payload bytes (after the header) the client has written.
    pub fn payload_sent(&self) -> u64 {
        self.sent.saturating_sub(self.skip)
    }

    /// A TLS client.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Bytes in the receive queue.
    pub fn queued(&self) -> u64 {
        self.sent - self.read_pos
    }

    pub fn window(&self) -> usize {
        self.rcvbuf - self.unread_echo
    }

    /// The client writes `n` bytes; with `urgent`, the last one is sent with MSG_OOB.
    pub fn write(&mut self, n: u64, urgent: bool) {
        if self.shut_wr || self.reset || n == 0 {
            return;
        }
        self.sent += n;
        self.edge = self.edge | Readiness::READABLE;
        if urgent {
            // TCP keeps one urgent pointer: a newer one replaces an unread older mark.
            self.urgent = Some(self.sent - 1);
            self.edge = self.edge | Readiness::PRI;
        }
    }

    /// The client reads up to `n` bytes of echo: the window opens.
    pub fn read_echo(&mut self, n: usize) {
        let n = n.min(self.unread_echo);
        if n == 0 {
            return;
        }
        self.unread_echo -= n;
        if self.blocked_out {
            self.blocked_out = false;
            self.edge = self.edge | Readiness::WRITABLE;
        }
    }

    pub fn shutdown_write(&mut self) {
        if !self.shut_wr && !self.reset {
            self.shut_wr = true;
            self.edge = self.edge | Readiness::READABLE | Readiness::RDHUP;
        }
    }

    pub fn reset(&mut self) {
        if !self.reset {
            self.reset = true;
            self.edge = self.edge
                | Readiness::READABLE
                | Readiness::WRITABLE
                | Readiness::RDHUP
                | Readiness::HUP
                | Readiness::ERR;
        }
    }

    pub fn violation(&mut self, what: String) {
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    /// How many of the next `want` queued bytes one read may take: it stops at the urgent
    /// mark if bytes before it were taken (as tcp_recvmsg does); at the mark it reads across.
    fn readable_run(&self, want: usize) -> usize {
        let mut n = (self.queued() as usize).min(want);
        if let Some(m) = self.urgent
            && m > self.read_pos
            && ((m - self.read_pos) as usize) < n
        {
            n = (m - self.read_pos) as usize;
        }
        n
    }

    fn take(&mut self, n: usize, now: u32) {
        self.read_pos += n as u64;
        if self.urgent.is_some_and(|m| m < self.read_pos) {
            self.urgent = None;
        }
        if n > 0 {
            self.last_io = now;
        }
    }

    /// Accepts echo bytes, checking them against the stream.
    fn accept_echo(&mut self, data: &[u8], now: u32) {
        let end = self.echoed + data.len() as u64;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            // Ciphertext: the client decrypts it and checks the plaintext.
            if let Err(e) = tls.receive(self.id, data) {
                self.violation(e);
            }
        }
        if self.is_tls() {
            // Checked above, after decryption.
        } else if self.refuse || self.skip == u64::MAX {
            self.violation(format!(
                "client {}: {} byte(s) sent to a connection that must be rejected (refuse={})",
                self.id,
                data.len(),
                self.refuse
            ));
        } else if end > self.payload_read() {
            self.violation(format!(
                "client {}: echoed up to offset {end} but the server read only {} after the header",
                self.id,
                self.payload_read()
            ));
        } else if let Some(i) = mismatch(self.id, self.echoed, data) {
            let off = self.echoed + i as u64;
            self.violation(format!(
                "client {}: echo byte at offset {off} is {}, want {}",
                self.id,
                data[i],
                byte(self.id, off)
            ));
        }
        self.echoed = end;
        self.unread_echo += data.len();
        if !data.is_empty() {
            self.last_io = now;
        }
    }
}

/// The fake socket handed to `service::serve`: a peer, the worker's fake splice pipe (bytes
/// tagged with the stream they came from), and the current tick.
pub struct SimSocket<'a> {
    pub peer: &'a mut Peer,
    pub pipe: &'a mut Option<Vec<u8>>,
    pub now: u32,
    /// Make the next pipe read fail (a pipe that cannot be emptied).
    pub break_pipe: bool,
    /// The worker's read length (`Params::read_len`, capped at `conn::MAX_SIZED_READ`): what
    /// an MSS-sized read is a multiple of.
    pub read_cap: usize,
}

fn err(kind: ErrorKind) -> io::Error {
    io::Error::from(kind)
}

impl Socket for SimSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = &mut *self.peer;
        if std::mem::take(&mut p.eintr_read) {
            return Err(err(ErrorKind::Interrupted));
        }
        if p.reset {
            return Err(err(ErrorKind::ConnectionReset));
        }
        let n = p.readable_run(buf.len());
        if n == 0 {
            return if p.shut_wr {
                Ok(0)
            } else {
                Err(err(ErrorKind::WouldBlock))
            };
        }
        // A read asks for the worker's read length or, after an MSS query, whole segments
        // (the length that query implies; a new bulk phase goes back to the full length).
        if let Some(mss) = p.mss_seen {
            let want = crate::conn::read_len_for_mss(mss, self.read_cap);
            if buf.len() != want && buf.len() != self.read_cap {
                p.violation(format!(
                    "client {}: read of {} byte(s) after MSS {mss} (cap {}): want {want}",
                    p.id,
                    buf.len(),
                    self.read_cap
                ));
            }
        } else if buf.len() != self.read_cap {
            p.violation(format!(
                "client {}: read of {} byte(s) before any MSS query: want {}",
                p.id,
                buf.len(),
                self.read_cap
            ));
        }
        if n == buf.len() {
            p.full_reads += 1;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = p.tls.as_mut() {
            tls.take(&mut buf[..n]);
            p.take(n, self.now);
            return Ok(n);
        }
        p.fill_raw(p.read_pos, &mut buf[..n]);
        p.take(n, self.now);
        Ok(n)
    }

    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        let p = &mut *self.peer;
        if std::mem::take(&mut p.eintr_send) {
            return Err(err(ErrorKind::Interrupted));
        }
        if std::mem::take(&mut p.reset_before_send) {
            p.reset();
        }
        if p.reset {
            return Err(err(if p.sent.is_multiple_of(2) {
                ErrorKind::ConnectionReset
            } else {
                ErrorKind::BrokenPipe
            }));
        }
        let n = data.len().min(p.window());
        if n < data.len() {
            p.blocked_out = true;
        }
        if n == 0 {
            return Err(err(ErrorKind::WouldBlock));
        }
        if p.mss.is_some_and(|m| p.window() < m) {
            p.sub_segment_window_bytes += n as u64;
        }
        p.accept_echo(&data[..n], self.now);
        Ok(n)
    }

    fn mss(&mut self) -> io::Result<usize> {
        let p = &mut *self.peer;
        p.mss_queries += 1;
        if p.mss_queries > p.full_reads {
            p.violation(format!(
                "client {}: {} MSS queries after only {} full read(s)",
                p.id, p.mss_queries, p.full_reads
            ));
        }
        p.mss_seen = Some(p.mss.unwrap_or(0));
        p.mss.ok_or_else(|| err(ErrorKind::InvalidInput))
    }

    fn splice_in(&mut self, len: usize) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(err(ErrorKind::Unsupported));
        };
        let p = &mut *self.peer;
        if p.is_tls() {
            p.violation(format!("client {}: a TLS connection was spliced", p.id));
        }
        if !pipe.is_empty() {
            p.violation(format!(
                "client {}: splice found {} byte(s) left in the pipe",
                p.id,
                pipe.len()
            ));
        }
        if std::mem::take(&mut p.eintr_read) {
            return Err(err(ErrorKind::Interrupted));
        }
        if p.reset {
            return Err(err(ErrorKind::ConnectionReset));
        }
        // tcp_read_sock stops before an urgent mark and moves nothing at it: 0 after the
        // peer's FIN, EAGAIN before.
        let mut n = (p.queued() as usize).min(len);
        if let Some(m) = p.urgent
            && ((m - p.read_pos) as usize) < n
        {
            n = (m - p.read_pos) as usize;
        }
        if n == 0 {
            return if p.shut_wr {
                Ok(0)
            } else {
                Err(err(ErrorKind::WouldBlock))
            };
        }
        let at = pipe.len();
        pipe.resize(at + n, 0);
        p.fill_raw(p.read_pos, &mut pipe[at..]);
        p.take(n, self.now);
        Ok(n)
    }

    fn splice_out(&mut self, len: usize) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(err(ErrorKind::Unsupported));
        };
        let p = &mut *self.peer;
        if std::mem::take(&mut p.eintr_send) {
            return Err(err(ErrorKind::Interrupted));
        }
        if std::mem::take(&mut p.reset_before_send) {
            p.reset();
        }
        if p.reset {
            return Err(err(ErrorKind::BrokenPipe));
        }
        let n = len.min(p.window()).min(pipe.len());
        if n < len {
            p.blocked_out = true;
        }
        if n == 0 {
            return Err(err(ErrorKind::WouldBlock));
        }
        p.accept_echo(&pipe[..n], self.now);
        pipe.drain(..n);
        Ok(n)
    }

    fn admit(&mut self, client: Client) -> Result<(), &'static str> {
        let p = &mut *self.peer;
        if p.expect_client != Some(client) || p.admitted {
            p.violation(format!(
                "client {}: asked to admit {client:?} (again: {}), the header names {:?}",
                p.id, p.admitted, p.expect_client
            ));
        }
        p.admitted = true;
        if p.refuse { Err(SIM_REFUSAL) } else { Ok(()) }
    }

    fn pipe_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(err(ErrorKind::Unsupported));
        };
        if std::mem::take(&mut self.break_pipe) {
            return Err(err(ErrorKind::WouldBlock));
        }
        let n = buf.len().min(pipe.len());
        buf[..n].copy_from_slice(&pipe[..n]);
        pipe.drain(..n);
        Ok(n)
    }
}
