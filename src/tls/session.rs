//! A sans-IO TLS echo session: ciphertext in, ciphertext out, no descriptor, no clock.
//!
//! The worker reads bytes from the socket and hands them to [`TlsSession::receive`]; the
//! session decrypts them with rustls, writes the plaintext straight back through the TLS
//! writer (the echo) and keeps the resulting records in its own output buffer, which the worker
//! sends from [`TlsSession::transmit`] and acknowledges with [`TlsSession::on_sent`].
//!
//! **Nothing is left inside rustls between calls.** Every `receive` consumes all the bytes it is
//! given, processes every complete record, echoes all the plaintext and moves every byte rustls
//! wants to send into the session's buffer. What stays in rustls is at most one incomplete record
//! (more socket bytes will complete it, and those come with a readiness edge). So under edge
//! triggering a TLS connection is drained exactly like a plain one: read until `EAGAIN` (or a
//! short read), feeding every chunk to `receive`.
//!
//! **Memory is bounded.** While the unsent ciphertext exceeds `max_pending`,
//! [`TlsSession::wants_read`] is false and the worker
//! must stop reading the socket; TCP flow control then slows the client. One call to `receive`
//! may add at most about as many bytes as it was given (a record echoed is a record of the same
//! size, TLS 1.3 tickets and the handshake flight aside), so with reads of at most `R` bytes a
//! connection buffers at most `max_pending + R + one handshake flight` of ciphertext to send, plus
//! rustls's own state: an incoming-record buffer of up to 18 KiB (64 KiB while a large handshake
//! message is being joined; [`TlsSession::buffered`] counts its used part) and a few KiB of keys
//! and handshake state. The echo's plaintext
//! passes through a 16 KiB per-thread buffer and is never stored.
//!
//! **Closes.** The client's `close_notify`, or a bare EOF at a record boundary after the
//! handshake, ends the input: every byte before it has been echoed, the session queues its own
//! `close_notify`, and once [`TlsSession::transmit`] is empty [`TlsSession::is_done`] says the
//! worker may close. A protocol error (plaintext on the TLS port, a bad record, a refused
//! handshake) queues rustls's alert and reports a [`TlsFailure`]; EOF inside a record or during
//! the handshake is [`TlsFailure::Truncated`]. Either way no further input is read and the
//! connection closes once its output (the alert, if any) has been sent or the socket fails.

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// Content type of a TLS handshake record: the first byte any TLS client sends.
const HANDSHAKE_RECORD: u8 = 22;
/// Bytes of plaintext moved from the reader to the writer at a time (one maximal record).
const ECHO_CHUNK: usize = 16 * 1024;
thread_local! {
    /// The echo's plaintext passes through here on its way from the reader to the writer: one
    /// buffer per thread (per worker), so no 16 KiB is zeroed for every receive.
    static PLAIN: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; ECHO_CHUNK].into_boxed_slice());
}

/// Above this capacity, a drained output buffer is freed instead of kept for reuse.
const KEEP_CAPACITY: usize = 32 * 1024;

/// Why a TLS connection ended badly. The worker counts these and logs them at debug.
#[derive(Clone, Debug, PartialEq)]
pub enum TlsFailure {
    /// The first byte was not a TLS handshake record: plaintext (HTTP, a line of text…) on the
    /// TLS port.
    NotTls,
    /// The handshake was refused or broken: no common version or cipher suite (TLS 1.1 and
    /// older are refused), a malformed message, an unexpected message.
    Handshake(rustls::Error),
    /// After the handshake: a record that does not decrypt or does not parse.
    Record(rustls::Error),
    /// EOF inside a record, or before the handshake finished.
    Truncated { handshaking: bool },
}

impl TlsFailure {
    /// A short stable name, for counters and log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Handshake(_) => "handshake",
            TlsFailure::Record(_) => "bad_record",
            TlsFailure::Truncated { .. } => "truncated",
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls => f.write_str("not TLS: the first byte is not a handshake record"),
            TlsFailure::Handshake(e) => write!(f, "handshake failed: {e}"),
            TlsFailure::Record(e) => write!(f, "bad record: {e}"),
            TlsFailure::Truncated { handshaking: true } => {
                f.write_str("truncated: EOF during the handshake")
            }
            TlsFailure::Truncated { handshaking: false } => {
                f.write_str("truncated: EOF inside a record")
            }
        }
    }
}

impl std::error::Error for TlsFailure {}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Reading and echoing.
    Open,
    /// Input ended cleanly (close_notify, or EOF at a record boundary, or EOF before any byte):
    /// the rest of the echo and our close_notify are queued.
    Closing,
    /// A protocol error or a truncation: the alert (if any) is queued; no more input.
    Failed(TlsFailure),
}

/// Follows record boundaries in the incoming byte stream (5-byte header, then `length` bytes),
/// so EOF can be told apart from truncation, and the bytes of an incomplete record counted.
#[derive(Default, Debug)]
struct RecordBoundary {
    header: [u8; 5],
    header_len: usize,
    body_len: usize,
    body_left: usize,
}

impl RecordBoundary {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (5 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 5 {
                    self.header_len = 0;
                    self.body_len = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                    self.body_left = self.body_len;
                }
            }
        }
    }

    /// Bytes of the record in progress received so far (0 at a boundary).
    fn partial(&self) -> usize {
        if self.body_left > 0 {
            5 + self.body_len - self.body_left
        } else {
            self.header_len
        }
    }
}

/// One TLS client's echo. See the module documentation for the contract.
pub struct TlsSession {
    conn: ServerConnection,
    /// Ciphertext to send: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    max_pending: usize,
    records: RecordBoundary,
    received_any: bool,
    state: State,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("unsent", &self.unsent())
            .field("state", &self.state)
            .finish()
    }
}

impl TlsSession {
    /// A session for a connection just accepted, with the configuration in force now (a later
    /// reload does not affect it). `max_pending` is the server's `--max-pending`.
    pub fn new(config: Arc<ServerConfig>, max_pending: usize) -> Result<TlsSession, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        // The session bounds its output itself (see `wants_read`), so rustls's writer must never
        // refuse plaintext: a refused byte would have nowhere to go.
        conn.set_buffer_limit(None);
        Ok(TlsSession {
            conn,
            out: Vec::new(),
            sent: 0,
            max_pending,
            records: RecordBoundary::default(),
            received_any: false,
            state: State::Open,
        })
    }

    /// Feeds ciphertext read from the socket. Consumes all of it: complete records are
    /// processed, their plaintext echoed, and the answer queued for [`TlsSession::transmit`].
    /// Input after the end of the stream (close_notify, an error) is ignored.
    ///
    /// Returns the failure the first time the connection fails; the alert that goes with it, if
    /// any, is queued. The worker should count it, log it at debug, and keep sending until
    /// [`TlsSession::is_done`].
    pub fn receive(&mut self, mut ciphertext: &[u8]) -> Result<(), TlsFailure> {
        if self.state != State::Open || ciphertext.is_empty() {
            return Ok(());
        }
        if !self.received_any {
            self.received_any = true;
            if ciphertext[0] != HANDSHAKE_RECORD {
                // Let rustls reject it, so its alert goes out, but report it for what it is.
                let _ = self.conn.read_tls(&mut ciphertext);
                let _ = self.conn.process_new_packets();
                return self.fail(TlsFailure::NotTls);
            }
        }
        while !ciphertext.is_empty() {
            let chunk = ciphertext;
            let read = self.conn.read_tls(&mut ciphertext);
            self.records.feed(&chunk[..chunk.len() - ciphertext.len()]);
            if let Err(e) = &read {
                // Only rustls's own backpressure can fail a read from a slice, and the echo
                // empties its buffers after every record; treat it as the protocol error it
                // would be (a handshake message over 64 KiB, for instance).
                let err = rustls::Error::General(e.to_string());
                return self.fail_with(err);
            }
            let io_state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => return self.fail_with(e),
            };
            PLAIN.with_borrow_mut(|plain| self.echo(plain));
            if io_state.peer_has_closed() {
                self.close_input();
                return Ok(());
            }
            if matches!(read, Ok(0)) {
                // rustls reads nothing after close_notify; the check above has handled that.
                break;
            }
        }
        self.flush();
        Ok(())
    }

    /// The client's EOF (a read returned 0). A clean end of input if it falls between records
    /// after the handshake (or before any byte: a connect-and-close probe); a truncation
    /// otherwise.
    pub fn receive_eof(&mut self) -> Result<(), TlsFailure> {
        if self.state != State::Open {
            return Ok(());
        }
        if !self.received_any {
            // Nothing to answer and no alert to send: just close.
            self.state = State::Closing;
            return Ok(());
        }
        if self.conn.is_handshaking() {
            return self.fail(TlsFailure::Truncated { handshaking: true });
        }
        if self.records.partial() > 0 {
            return self.fail(TlsFailure::Truncated { handshaking: false });
        }
        self.close_input();
        Ok(())
    }

    /// The server ends the connection (shutdown drain, idle timeout): stop reading, queue our
    /// close_notify after whatever echo is already queued; close once [`TlsSession::is_done`].
    /// Does nothing if the input has already ended.
    pub fn close(&mut self) {
        if self.state == State::Open {
            self.close_input();
        }
    }

    /// Whether the worker should read the socket now: the input is still open and the buffered
    /// output is within `max_pending`. Becoming true again after [`TlsSession::on_sent`] needs
    /// no readiness edge: the worker must remember the socket was readable, as for plain TCP.
    pub fn wants_read(&self) -> bool {
        // Unsent output only: the incomplete incoming record (bounded by rustls at one record)
        // can only be completed by reading more, so counting it here could stall the
        // connection for good with a small `max_pending`.
        self.state == State::Open && self.unsent() <= self.max_pending
    }

    /// Ciphertext waiting to be sent, oldest first.
    pub fn transmit(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// The socket took the first `n` bytes of [`TlsSession::transmit`].
    pub fn on_sent(&mut self, n: usize) {
        assert!(n <= self.unsent(), "sent {n} of {} bytes", self.unsent());
        self.sent += n;
        if self.sent == self.out.len() {
            self.sent = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        }
    }

    /// Bytes this session buffers: unsent ciphertext (what `--max-pending` limits) plus the
    /// incomplete incoming record inside rustls (at most one record, 18 KiB).
    pub fn buffered(&self) -> usize {
        self.unsent() + self.records.partial()
    }

    /// True until the handshake completes (or fails): the worker's handshake deadline applies
    /// while this is true.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking() && self.state == State::Open
    }

    /// The input has ended (cleanly or not) and everything queued has been sent: close the
    /// socket.
    pub fn is_done(&self) -> bool {
        self.state != State::Open && self.unsent() == 0
    }

    /// The failure that ended this connection, if it failed.
    pub fn failure(&self) -> Option<&TlsFailure> {
        match &self.state {
            State::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// The protocol version agreed on, once the handshake is done.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Moves every decrypted byte through the writer: the echo.
    fn echo(&mut self, plain: &mut [u8]) {
        loop {
            let n = match self.conn.reader().read(plain) {
                Ok(0) | Err(_) => return, // WouldBlock: empty; UnexpectedEof: no more
                Ok(n) => n,
            };
            // Unbounded writer (see `new`) after the handshake: it takes everything.
            let written = self.conn.writer().write(&plain[..n]);
            debug_assert_eq!(written.ok(), Some(n));
        }
    }

    /// Moves everything rustls wants to send into `out`.
    fn flush(&mut self) {
        if self.sent > 0 && self.sent >= self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        while self.conn.wants_write() {
            // Writing to a Vec cannot fail.
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    fn close_input(&mut self) {
        self.conn.send_close_notify();
        self.flush();
        self.state = State::Closing;
    }

    fn fail(&mut self, failure: TlsFailure) -> Result<(), TlsFailure> {
        self.flush(); // the alert rustls queued, if any
        self.state = State::Failed(failure.clone());
        Err(failure)
    }

    fn fail_with(&mut self, e: rustls::Error) -> Result<(), TlsFailure> {
        let failure = if self.conn.is_handshaking() {
            TlsFailure::Handshake(e)
        } else {
            TlsFailure::Record(e)
        };
        self.fail(failure)
    }
}

#[cfg(test)]
impl TlsSession {
    /// Heap held by the output buffer (used or not).
    pub(crate) fn output_capacity(&self) -> usize {
        self.out.capacity()
    }
}
