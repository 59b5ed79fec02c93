//! TLS clients for the simulator: a rustls `ClientConnection` in memory as the peer of a
//! connection that carries the server's real TLS stage.
//!
//! The client writes the peer's stream pattern as plaintext; its ciphertext waits in an
//! outbox and reaches the server's receive queue in pieces of random size (so records and the
//! handshake arrive split at every kind of byte boundary). Every byte the server sends is fed
//! to the client at once, and the plaintext that comes out is checked against the pattern —
//! every byte echoed exactly once, in order.
//!
//! The certificate is a fixed Ed25519 one (fixed-size signatures: a replayed seed moves the
//! same number of bytes), valid until 2126, trusted by the clients directly.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use super::Source;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

const CERT: &[u8] = include_bytes!("tls-cert.pem");
const KEY: &[u8] = include_bytes!("tls-key.pem");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration (TLS 1.2 and 1.3), built once.
pub fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let certs = vec![CertificateDer::from_pem_slice(CERT).expect("sim cert")];
            let key = PrivateKeyDer::from_pem_slice(KEY).expect("sim key");
            Arc::new(
                ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&TLS13, &TLS12])
                    .expect("versions")
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .expect("sim pair"),
            )
        })
        .clone()
}

/// A client configuration for one version (`tls13` or 1.2), built once each.
fn client_config(tls13: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let make = |v: &'static rustls::SupportedProtocolVersion| {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CERT).expect("sim cert"))
            .expect("trust the sim cert");
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[v])
                .expect("version")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    CONFIGS.get_or_init(|| [make(&TLS12), make(&TLS13)])[usize::from(tls13)].clone()
}

/// The TLS side of a simulated client.
#[derive(Debug)]
pub struct TlsPeer {
    client: ClientConnection,
    /// Ciphertext the client produced that is not in the server's receive queue yet.
    outbox: Vec<u8>,
    /// Ciphertext in the server's receive queue (the kernel's), oldest first, from `queue_at`.
    queue: std::collections::VecDeque<u8>,
    /// Plaintext the client's writer took, and plaintext echoed back, in bytes.
    pub plain_written: u64,
    pub plain_echoed: u64,
    /// The client sent close_notify.
    pub sent_close_notify: bool,
    /// The server's close_notify arrived.
    pub got_close_notify: bool,
    /// The client was still handshaking when it stopped sending (its plaintext may be lost).
    pub shut_while_handshaking: bool,
    /// The server ended it with a fatal alert (allowed only after `shut_while_handshaking`).
    pub alerted: bool,
    writes: u64,
}

impl TlsPeer {
    pub fn new(tls13: bool) -> TlsPeer {
        let name = ServerName::try_from("localhost").expect("name");
        let client = ClientConnection::new(client_config(tls13), name).expect("client");
        let mut p = TlsPeer {
            client,
            outbox: Vec::new(),
            queue: Default::default(),
            plain_written: 0,
            plain_echoed: 0,
            sent_close_notify: false,
            got_close_notify: false,
            shut_while_handshaking: false,
            alerted: false,
            writes: 0,
        };
        p.collect();
        p
    }

    pub fn is_handshaking(&self) -> bool {
        self.client.is_handshaking()
    }

    /// Moves what the client wants to send into the outbox.
    fn collect(&mut self) {
        while self.client.wants_write() {
            if self.client.write_tls(&mut self.outbox).is_err() {
                break;
            }
        }
    }

    /// The client writes plaintext (the stream from `plain_written`); returns bytes taken.
    pub fn write_plain(&mut self, id: u32, n: u64) -> u64 {
        if self.sent_close_notify || n == 0 {
            return 0;
        }
        let mut buf = vec![0u8; n.min(1 << 20) as usize];
        super::model::fill(id, self.plain_written, &mut buf);
        let taken = self.client.writer().write(&buf).unwrap_or(0) as u64;
        self.writes += 1;
        self.plain_written += taken;
        self.collect();
        taken
    }

    pub fn send_close_notify(&mut self) {
        if !self.sent_close_notify {
            self.sent_close_notify = true;
            self.client.send_close_notify();
            self.collect();
        }
    }

    /// Moves up to `n` bytes of the outbox into the server's receive queue; returns how many.
    pub fn deliver(&mut self, n: usize) -> usize {
        let n = n.min(self.outbox.len());
        self.queue.extend(self.outbox.drain(..n));
        n
    }

    /// At most how many bytes of ciphertext this client sends in all: the handshake, the
    /// plaintext, up to 32 bytes of record overhead per write.
    pub fn wire_bound(&self) -> u64 {
        4096 + self.plain_written + 32 * self.writes
    }

    /// The server reads `out.len()` bytes of the receive queue.
    pub fn take(&mut self, out: &mut [u8]) {
        let n = out.len();
        for (o, b) in out.iter_mut().zip(self.queue.drain(..n)) {
            *o = b;
        }
    }

    /// Bytes from the server: decrypted by the client, the plaintext checked against the
    /// stream. `Err` names the first broken invariant.
    pub fn receive(&mut self, id: u32, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() && !self.alerted {
            self.client
                .read_tls(&mut data)
                .map_err(|e| format!("client {id}: read_tls: {e}"))?;
            let state = match self.client.process_new_packets() {
                Ok(state) => state,
                // A client that stopped mid-handshake may be answered with an alert.
                Err(_) if self.shut_while_handshaking => {
                    self.alerted = true;
                    return Ok(());
                }
                Err(e) => {
                    return Err(format!(
                        "client {id}: TLS error from the server's bytes: {e}"
                    ));
                }
            };
            let mut plain = vec![0u8; state.plaintext_bytes_to_read()];
            self.client
                .reader()
                .read_exact(&mut plain)
                .map_err(|e| format!("client {id}: reading plaintext: {e}"))?;
            if !plain.is_empty() {
                let end = self.plain_echoed + plain.len() as u64;
                if end > self.plain_written {
                    return Err(format!(
                        "client {id}: echoed {end} plaintext byte(s), but wrote only {}",
                        self.plain_written
                    ));
                }
                let mut want = vec![0u8; plain.len()];
                super::model::fill(id, self.plain_echoed, &mut want);
                if let Some(i) = (0..plain.len()).find(|&i| plain[i] != want[i]) {
                    return Err(format!(
                        "client {id}: plaintext echo byte at offset {} is {}, want {}",
                        self.plain_echoed + i as u64,
                        plain[i],
                        want[i]
                    ));
                }
                self.plain_echoed = end;
            }
            if state.peer_has_closed() {
                self.got_close_notify = true;
            }
            self.collect();
        }
        Ok(())
    }
}

impl TlsPeer {
    /// Puts arbitrary bytes on the wire (a fuzzer's, or an attacker's).
    pub fn inject(&mut self, bytes: &[u8]) {
        self.queue.extend(bytes.iter().copied());
    }

    /// Flips bits of one byte in the server's receive queue (a corrupted record).
    pub fn corrupt(&mut self, at: usize, xor: u8) {
        let n = self.queue.len();
        if n > 0 {
            self.queue[at % n] ^= xor.max(1);
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// The `tls_stage` fuzz target: one connection with the real TLS stage, fed events decoded
/// from `data` — arbitrary bytes or a real client's records (split anywhere, sometimes
/// corrupted), reads of any size, short and refused sends, EOF, the server's goodbye, time.
///
/// Checks: no panic; pending output within `--max-pending` + one read + one record and a
/// flight; the handshake deadline only while handshaking; a close only when the connection
/// asks for one; with an uncorrupted client, every plaintext byte echoed once, in order, and
/// a close_notify ends it cleanly; no endless loop.
pub fn fuzz_stage(data: &[u8]) -> Result<(), String> {
    use crate::conn::tls_stage::{TlsStage, TlsTally};
    use crate::conn::{Action, Conn, Params, ReadResult, Readiness, SendResult, Turn};

    let mut input = super::Bytes::new(data);
    let src = &mut input;
    let client_mode = super::chance(src, 70);
    let read_len = super::pick(src, &[1usize, 5, 100, 4096, 65536]);
    let max_pending = super::pick(src, &[1usize, 100, 20_000, 262_144]);
    let params = Params {
        max_pending,
        read_len,
        budget: read_len * 4,
        splice: crate::conn::Splice::Off,
    };
    let tally = Arc::new(TlsTally::default());
    let stage =
        TlsStage::new(server_config(), max_pending, 50, tally).map_err(|e| e.to_string())?;
    let mut conn = Conn::new(0);
    conn.push_stage(Box::new(stage));
    let mut peer = TlsPeer::new(super::chance(src, 50));
    let mut corrupted = !client_mode;
    let mut eof = false;
    let mut window = 0usize;
    let mut buf = vec![0u8; read_len];
    let cap = max_pending + read_len + 24 * 1024;
    let mut now = 0u32;
    let mut closed = false;
    for _ in 0..200 {
        if src.exhausted() || closed {
            break;
        }
        let mut r = Readiness::empty();
        match super::below(src, 8) {
            0 | 1 => {
                if client_mode {
                    let k = super::below(src, 3000) as usize;
                    peer.deliver(k);
                } else {
                    let k = super::below(src, 64) as usize;
                    let bytes: Vec<u8> = (0..k).map(|_| src.next() as u8).collect();
                    peer.inject(&bytes);
                }
                r = Readiness::READABLE;
            }
            2 => {
                let n = super::below(src, 20_000);
                if !peer.sent_close_notify && !eof {
                    peer.write_plain(0, n);
                }
            }
            3 => {
                window += super::below(src, 40_000) as usize;
                r = Readiness::WRITABLE;
            }
            4 if client_mode && peer.queued() > 0 => {
                let at = src.next() as usize;
                peer.corrupt(at, src.next() as u8);
                corrupted = true;
            }
            5 => {
                if peer.is_handshaking() && !peer.sent_close_notify && !eof {
                    peer.shut_while_handshaking = true;
                }
                match super::below(src, 3) {
                    0 => peer.send_close_notify(),
                    _ => eof = true,
                }
                r = Readiness::READABLE | Readiness::RDHUP;
            }
            6 => now = now.saturating_add(super::below(src, 30) as u32),
            _ => {
                // The server ends it (idle, shutdown): its goodbye must be a clean TLS end.
                let bye = conn.goodbye().to_vec();
                if !corrupted && !bye.is_empty() {
                    peer.receive(0, &bye)?;
                    if !peer.got_close_notify {
                        return Err("the goodbye is no close_notify".into());
                    }
                }
                closed = true;
                continue;
            }
        }
        conn.on_readiness(r);
        let mut turn = Turn::new(&params, now);
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 100_000 {
                return Err("a turn that never ends".into());
            }
            match conn.poll(&mut turn) {
                Action::Read => {
                    let n = peer.queued().min(buf.len());
                    let res = if n > 0 {
                        peer.take(&mut buf[..n]);
                        ReadResult::Data(&buf[..n])
                    } else if eof {
                        ReadResult::Eof
                    } else {
                        ReadResult::WouldBlock
                    };
                    conn.on_read(&mut turn, res);
                }
                Action::Send => {
                    let out = conn.transmit().to_vec();
                    let n = out.len().min(window);
                    window -= n;
                    if !corrupted {
                        peer.receive(0, &out[..n])?;
                    }
                    let res = if n == 0 {
                        SendResult::WouldBlock
                    } else {
                        SendResult::Sent(n)
                    };
                    conn.on_sent(&mut turn, res);
                }
                Action::Close(_) => {
                    closed = true;
                    break;
                }
                Action::Wait | Action::Yield => break,
                other => return Err(format!("a TLS connection asked for {other:?}")),
            }
            if conn.pending_len() > cap {
                return Err(format!(
                    "{} byte(s) pending, above {max_pending} + one read + a record",
                    conn.pending_len()
                ));
            }
        }
        if conn.deadline().is_some() && !peer.is_handshaking() && peer.got_close_notify {
            return Err("a handshake deadline after the session ended".into());
        }
    }
    // A client that was never corrupted, sent close_notify and could take everything: the
    // whole echo came back, then the server's close_notify, then the close.
    if !corrupted && peer.sent_close_notify && !peer.shut_while_handshaking && !closed {
        let _ = peer.deliver(usize::MAX);
        conn.on_readiness(Readiness::READABLE | Readiness::WRITABLE);
        let mut turn = Turn::new(&params, now);
        for _ in 0..100_000 {
            match conn.poll(&mut turn) {
                Action::Read => {
                    let n = peer.queued().min(buf.len());
                    let res = if n > 0 {
                        peer.take(&mut buf[..n]);
                        ReadResult::Data(&buf[..n])
                    } else {
                        ReadResult::WouldBlock
                    };
                    conn.on_read(&mut turn, res);
                }
                Action::Send => {
                    let out = conn.transmit().to_vec();
                    peer.receive(0, &out)?;
                    conn.on_sent(&mut turn, SendResult::Sent(out.len()));
                }
                Action::Yield => turn = Turn::new(&params, now),
                Action::Close(_) => {
                    if !peer.is_handshaking()
                        && (peer.plain_echoed != peer.plain_written || !peer.got_close_notify)
                    {
                        return Err(format!(
                            "closed after close_notify with {} of {} byte(s) echoed, close_notify back {}",
                            peer.plain_echoed, peer.plain_written, peer.got_close_notify
                        ));
                    }
                    return Ok(());
                }
                Action::Wait => {
                    // The client answers what it got (the rest of its handshake).
                    if peer.deliver(usize::MAX) > 0 {
                        conn.on_readiness(Readiness::READABLE);
                        turn = Turn::new(&params, now);
                        continue;
                    }
                    if peer.is_handshaking() {
                        return Ok(()); // it closed mid-handshake: nothing to check
                    }
                    return Err("a client's close_notify left the connection open".into());
                }
                other => return Err(format!("a TLS connection asked for {other:?}")),
            }
        }
        return Err("no close after close_notify".into());
    }
    Ok(())
}
