//! The TLS stage: a [`TlsSession`] on the connection's stage seam.
//!
//! The connection reads ciphertext exactly as it reads a plain client's bytes (to `EAGAIN` or a
//! short read, within the turn budget, not while pending output is above `--max-pending`) and
//! hands every chunk to [`Stage::on_input`]. The session consumes all of it (records are
//! decrypted, their plaintext echoed through the TLS writer), and the ciphertext it wants sent
//! is moved into the connection's pending output — one copy — where it goes out under the same
//! rules as a backed-up plain echo. So nothing stays in the session between turns but at most
//! one incomplete incoming record, which only more socket bytes (with their own edge) complete,
//! and the edge-triggered contract is the plain one.
//!
//! - Handshake timeout: [`Stage::deadline`] while the handshake is running.
//! - Clean ends: the client's close_notify, or EOF between records after the handshake, gets
//!   the rest of its echo and then our close_notify ([`Flow::Finish`]: send what is pending,
//!   close). EOF mid-record or mid-handshake, a bad record, plaintext on the TLS port: the
//!   failure is counted by kind, logged at debug, rustls's alert (if any) is sent, and the
//!   connection closes.
//! - The server closing (idle timeout, shutdown): [`Stage::on_close`] queues close_notify.
//!
//! Memory per TLS connection, on top of the plain connection's slot: the pending output
//! (at most `--max-pending` + the ciphertext answering one read of up to 64 KiB, as for plain
//! TCP), rustls's connection state (~4 KiB: keys, transcript, the 1 KiB session struct), its
//! incoming-record buffer (at most one record, ~18 KiB, while a record is incomplete), and the
//! session's output vector between a receive and the copy (freed above 32 KiB).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustls::ServerConfig;

use super::{Flow, Pending, Stage, Tick};
use crate::log;
use crate::log::Level;
use crate::stats::TlsCounters;
use crate::tls::{TlsFailure, TlsSession};

/// The close reason (and log text) of a connection whose handshake ran out of time.
pub const HANDSHAKE_TIMEOUT: &str = "TLS handshake timeout";

/// One worker's TLS counters, bumped by its stages (uncontended relaxed atomics: a stage is
/// `Send` and holds no reference to the worker) and read when the worker publishes its stats.
#[derive(Debug, Default)]
pub struct TlsTally {
    handshakes: AtomicU64,
    not_tls: AtomicU64,
    handshake_failed: AtomicU64,
    bad_record: AtomicU64,
    truncated: AtomicU64,
    handshake_timeout: AtomicU64,
}

impl TlsTally {
    pub fn snapshot(&self) -> TlsCounters {
        TlsCounters {
            handshakes: self.handshakes.load(Relaxed),
            not_tls: self.not_tls.load(Relaxed),
            handshake_failed: self.handshake_failed.load(Relaxed),
            bad_record: self.bad_record.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            handshake_timeout: self.handshake_timeout.load(Relaxed),
        }
    }

    /// A connection closed by [`HANDSHAKE_TIMEOUT`].
    pub fn count_timeout(&self) {
        self.handshake_timeout.fetch_add(1, Relaxed);
    }

    fn count_failure(&self, f: &TlsFailure) {
        let c = match f {
            TlsFailure::NotTls => &self.not_tls,
            TlsFailure::Handshake(_) => &self.handshake_failed,
            TlsFailure::Record(_) => &self.bad_record,
            TlsFailure::Truncated { .. } => &self.truncated,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// One TLS connection's stage.
pub struct TlsStage {
    session: TlsSession,
    /// The handshake must be done by this tick.
    deadline: Tick,
    tally: Arc<TlsTally>,
    counted_handshake: bool,
}

impl std::fmt::Debug for TlsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStage")
            .field("session", &self.session)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl TlsStage {
    /// A stage for a connection accepted now, with the configuration in force now;
    /// `deadline` is the tick by which the handshake must be done. Fails only if rustls
    /// cannot make a session from the configuration.
    pub fn new(
        config: Arc<ServerConfig>,
        max_pending: usize,
        deadline: Tick,
        tally: Arc<TlsTally>,
    ) -> Result<TlsStage, rustls::Error> {
        Ok(TlsStage {
            session: TlsSession::new(config, max_pending)?,
            deadline,
            tally,
            counted_handshake: false,
        })
    }

    /// After a receive: count, move the ciphertext to `out`, and tell the connection what next.
    fn after(&mut self, r: Result<(), TlsFailure>, out: &mut Pending) -> Flow {
        if let Err(f) = &r {
            self.tally.count_failure(f);
            log!(Level::Debug, "TLS connection failed: {f}");
        }
        if !self.counted_handshake
            && !self.session.is_handshaking()
            && self.session.failure().is_none()
            && self.session.protocol_version().is_some()
        {
            self.counted_handshake = true;
            self.tally.handshakes.fetch_add(1, Relaxed);
        }
        self.flush(out);
        if self.session.is_done() {
            Flow::Finish
        } else {
            Flow::Hold
        }
    }

    fn flush(&mut self, out: &mut Pending) {
        let data = self.session.transmit();
        let n = data.len();
        out.push(data);
        self.session.on_sent(n);
    }
}

impl Stage for TlsStage {
    fn on_input(&mut self, data: &[u8], out: &mut Pending) -> Flow {
        let r = self.session.receive(data);
        self.after(r, out)
    }

    fn on_eof(&mut self, out: &mut Pending) -> Flow {
        let r = self.session.receive_eof();
        self.after(r, out)
    }

    fn deadline(&self) -> Option<Tick> {
        self.session.is_handshaking().then_some(self.deadline)
    }

    fn deadline_reason(&self) -> &'static str {
        HANDSHAKE_TIMEOUT
    }

    fn on_close(&mut self, out: &mut Pending) {
        // Only an established session says goodbye; a handshake is just dropped.
        if !self.session.is_handshaking() {
            self.session.close();
            self.flush(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Action, Conn, Params, ReadResult, SendResult, Turn};
    use crate::tls::testcert::{self, KeyFormat, TestDir};
    use rustls::ClientConnection;
    use rustls::version::{TLS12, TLS13};
    use std::io::{Read, Write};

    /// Runs `conn` until it waits or closes, moving bytes between it and the in-memory client.
    /// Returns whether it closed.
    fn pump(conn: &mut Conn, client: &mut ClientConnection) -> bool {
        let p = Params {
            max_pending: 1 << 20,
            read_len: 4096,
            budget: 1 << 20,
            splice: crate::conn::Splice::Off,
        };
        for _ in 0..20 {
            let mut turn = Turn::new(&p, 0);
            conn.on_readiness(crate::conn::Readiness::READABLE);
            let closed = loop {
                match conn.poll(&mut turn) {
                    Action::Read => {
                        let mut to_server = Vec::new();
                        while client.wants_write() {
                            client.write_tls(&mut to_server).unwrap();
                        }
                        let r = if to_server.is_empty() {
                            ReadResult::WouldBlock
                        } else {
                            ReadResult::Data(&to_server)
                        };
                        conn.on_read(&mut turn, r);
                    }
                    Action::Send => {
                        let wire = conn.transmit().to_vec();
                        conn.on_sent(&mut turn, SendResult::Sent(wire.len()));
                        client.read_tls(&mut wire.as_slice()).unwrap();
                        client.process_new_packets().unwrap();
                    }
                    Action::Close(_) => break true,
                    Action::Wait => break false,
                    other => panic!("unexpected {other:?}"),
                }
            };
            if closed {
                return true;
            }
            if !client.wants_write() {
                return false;
            }
        }
        false
    }

    #[test]
    fn handshake_echo_goodbye_close_notify_and_the_deadline() {
        let dir = TestDir::new("stage");
        let (cert, key) = dir.pair("c", KeyFormat::EcdsaPkcs8);
        let server = crate::tls::config::load(&cert, &key).unwrap();
        for versions in [&[&TLS12][..], &[&TLS13]] {
            let client_cfg = testcert::client_config(&cert, versions);
            let tally = Arc::new(TlsTally::default());
            let new_conn = || {
                let mut conn = Conn::new(0);
                let stage = TlsStage::new(server.clone(), 1 << 20, 42, tally.clone()).unwrap();
                conn.push_stage(Box::new(stage));
                conn
            };
            let mut conn = new_conn();
            assert_eq!(conn.deadline(), Some(42));
            let mut client = testcert::client(&client_cfg);
            client.writer().write_all(b"hello over tls").unwrap();
            assert!(!pump(&mut conn, &mut client));
            let mut got = Vec::new();
            let _ = client.reader().read_to_end(&mut got);
            assert_eq!(got, b"hello over tls");
            assert_eq!(conn.deadline(), None, "no deadline after the handshake");
            assert_eq!(tally.snapshot().handshakes, 1);
            // The server says goodbye: a close_notify the client reads as a clean end.
            let bye = conn.goodbye().to_vec();
            assert!(!bye.is_empty());
            client.read_tls(&mut bye.as_slice()).unwrap();
            assert!(client.process_new_packets().unwrap().peer_has_closed());

            // The client's close_notify gets the rest of the echo, then the connection ends.
            let mut conn = new_conn();
            let mut client = testcert::client(&client_cfg);
            client.writer().write_all(b"first ").unwrap();
            assert!(!pump(&mut conn, &mut client));
            client.writer().write_all(b"last words").unwrap();
            client.send_close_notify();
            assert!(
                pump(&mut conn, &mut client),
                "close_notify ends the connection"
            );
            let mut got = Vec::new();
            let _ = client.reader().read_to_end(&mut got);
            assert_eq!(got, b"first last words");
            assert_eq!(tally.snapshot().handshakes, 2);
        }
    }

    #[test]
    fn garbage_is_counted_and_finishes_the_connection() {
        let dir = TestDir::new("stage");
        let (cert, key) = dir.pair("c", KeyFormat::EcdsaPkcs8);
        let server = crate::tls::config::load(&cert, &key).unwrap();
        let tally = Arc::new(TlsTally::default());
        let mut stage = TlsStage::new(server, 1000, 5, tally.clone()).unwrap();
        let mut out = Pending::default();
        assert_eq!(stage.deadline(), Some(5));
        assert_eq!(
            stage.on_input(b"GET / HTTP/1.0\r\n\r\n", &mut out),
            Flow::Finish
        );
        assert_eq!(tally.snapshot().not_tls, 1);
        assert_eq!(
            stage.deadline(),
            None,
            "a failed handshake has no deadline left"
        );
    }
}
