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
