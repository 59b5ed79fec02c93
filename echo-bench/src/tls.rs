//! The TLS client (`--tls`): rustls with the ring provider, driven without blocking.
//!
//! [`Conn`] is what a session reads and writes: the plain socket, or the socket with a
//! rustls [`ClientConnection`] over it. Its `read` and `write` keep the socket's nonblocking
//! contract — `WouldBlock` only when the socket said so — so the edge-triggered engine works
//! the same over TLS: every `read` first flushes ciphertext rustls has queued (handshake
//! messages, alerts, records of earlier writes), then reads records until it has plaintext
//! or the socket runs dry. A certificate that does not verify against `--tls-ca`, or that is
//! not valid for `--server-name`, fails the handshake: an error of kind `tls`, never accepted.
//!
//! Handshakes are full ones: session resumption is off, so `handshake` mode measures the
//! cost of a new TLS session each time.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// What every TLS connection of a run shares.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl Tls {
    /// Trusts the certificates in the PEM file `ca` (and nothing else) and expects `name`.
    /// Errors name the flag and the file.
    pub fn new(ca: &Path, name: &str) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "--tls-ca {}: no CERTIFICATE in the file",
                ca.display()
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("--server-name '{name}': {e}"))?;
        Ok(Tls {
            config: Arc::new(config),
            name,
        })
    }

    pub fn connect(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)
    }
}

/// The server name to expect by default: the host part of `addr` (an IP literal becomes an
/// IP address name).
pub fn default_server_name(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// A rustls error as an `io::Error` of kind `InvalidData` (which [`crate::report`] counts as
/// a `tls` error).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// One connection's byte stream: plain TCP, or TLS over it.
pub struct Conn<'a> {
    pub sock: &'a TcpStream,
    pub tls: Option<&'a mut ClientConnection>,
}

impl Conn<'_> {
    /// Writes queued ciphertext until rustls has none or the socket would block.
    fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        let mut sock = self.sock;
        while tls.wants_write() {
            match tls.write_tls(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends the write side: TLS close_notify first, then the TCP half-close.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            self.flush_tls()?;
        }
        self.sock.shutdown(Shutdown::Write)
    }
}

impl Read for Conn<'_> {
    /// Plaintext; `Ok(0)` at the end of the stream (TLS: after the server's close_notify; an
    /// EOF without it is `UnexpectedEof`).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return (&mut &*self.sock).read(buf);
        }
        loop {
            self.flush_tls()?;
            let sock = self.sock;
            let tls = self.tls.as_deref_mut().expect("tls");
            match tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            match tls.read_tls(&mut &*sock) {
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = self.flush_tls(); // the alert, if the socket takes it
                        return Err(tls_error(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return (&mut &*self.sock).write(buf);
        };
        // rustls takes plaintext up to its buffer limit (before the handshake ends too).
        let n = tls.writer().write(buf)?;
        self.flush_tls()?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        // Its buffer was full: flushing may have made room.
        let tls = self.tls.as_deref_mut().expect("tls");
        match tls.writer().write(buf)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => {
                self.flush_tls()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_server_name_is_the_host() {
        assert_eq!(default_server_name("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(default_server_name("[::1]:8443"), "::1");
        assert_eq!(default_server_name("echo.example:443"), "echo.example");
        assert_eq!(default_server_name("echo.example"), "echo.example");
    }

    #[test]
    fn bad_ca_files_name_the_flag_and_file() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = Tls::new(missing, "localhost").err().expect("missing file");
        assert!(e.starts_with("--tls-ca /nonexistent/ca.pem: "), "{e}");
        let dir = std::env::temp_dir().join(format!("echo-bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = Tls::new(&empty, "localhost").err().expect("no certs");
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
