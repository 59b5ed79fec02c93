//! Test-only: certificates made at test time with the `openssl` command line, in a temporary
//! directory removed on drop, and an in-memory handshake helper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// ECDSA P-256 in a PKCS#8 `PRIVATE KEY` section.
    EcdsaPkcs8,
    /// RSA 2048 in a PKCS#1 `RSA PRIVATE KEY` section.
    RsaPkcs1,
    /// EC P-256 in a SEC1 `EC PRIVATE KEY` section.
    EcSec1,
}

impl KeyFormat {
    pub fn pem_label(self) -> &'static str {
        match self {
            KeyFormat::EcdsaPkcs8 => "-----BEGIN PRIVATE KEY-----",
            KeyFormat::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
            KeyFormat::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
        }
    }
}

/// A fresh directory under the system temp dir, removed (with its files) on drop.
pub struct TestDir(PathBuf);

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (the TLS tests need the openssl command line)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "epoll-echo-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A self-signed certificate for `localhost` and its key in `format`: (cert.pem, key.pem).
    pub fn pair(&self, name: &str, format: KeyFormat) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}-cert.pem"));
        let key = self.path(&format!("{name}-key.pem"));
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        match format {
            KeyFormat::EcdsaPkcs8 => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                k,
            ]),
            KeyFormat::RsaPkcs1 => openssl(&["genrsa", "-traditional", "-out", k, "2048"]),
            KeyFormat::EcSec1 => openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                k,
            ]),
        }
        openssl(&[
            "req",
            "-x509",
            "-key",
            k,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-out",
            c,
        ]);
        (cert, key)
    }

    /// A PKCS#8 key encrypted with a passphrase.
    pub fn encrypted_key(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("{name}-key.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            key.to_str().unwrap(),
        ]);
        key
    }

    /// A key type ring cannot sign with (Ed448).
    pub fn unsupported_key(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("{name}-key.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "ED448",
            "-out",
            key.to_str().unwrap(),
        ]);
        key
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client configuration that trusts exactly `cert` (the test CA is the certificate itself),
/// limited to `versions`.
pub fn client_config(
    cert: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    client_config_trusting(crate::tls::config::load_certs(cert).unwrap(), versions)
}

/// [`client_config`] from certificates already loaded.
pub fn client_config_trusting(
    certs: Vec<CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap()
}

/// Runs a whole handshake in memory between a plain rustls client and server; returns the
/// certificate the client saw.
pub fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> CertificateDer<'static> {
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut c = self::client(client);
    for _ in 0..20 {
        if !s.is_handshaking() && !c.is_handshaking() {
            return c.peer_certificates().unwrap()[0].clone();
        }
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    panic!("handshake did not finish");
}
