//! Certificate and key loading (`--tls-cert`, `--tls-key`) and the reloadable holder the
//! workers share.
//!
//! Every error names the flag, the file and what is wrong with it, so the same text serves the
//! startup failure (exit 2) and the log line of a failed SIGHUP reload.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::version::{TLS12, TLS13};
use rustls::{Error as RustlsError, InconsistentKeys};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The flag a file came from, for messages.
pub const CERT_FLAG: &str = "--tls-cert";
pub const KEY_FLAG: &str = "--tls-key";

/// What is wrong with a certificate or key file.
#[derive(Debug)]
pub enum Problem {
    /// The file does not exist.
    Missing,
    /// The file exists but could not be read (permissions, a directory, an I/O error).
    Unreadable(io::Error),
    /// The file is empty.
    Empty,
    /// The file is not PEM, or a PEM section is malformed.
    BadPem(String),
    /// Valid PEM, but no CERTIFICATE section.
    NoCertificate,
    /// Valid PEM, but no PRIVATE KEY / RSA PRIVATE KEY / EC PRIVATE KEY section.
    NoKey,
    /// The certificate is not a valid X.509 certificate.
    BadCertificate(String),
    /// A key type or encoding the ring provider cannot sign with (encrypted keys, DSA, …).
    UnsupportedKey(String),
    /// The key is not the private half of the certificate's public key.
    KeyMismatch { cert: PathBuf },
}

/// A certificate or key that cannot be used: the flag, the file and the [`Problem`].
#[derive(Debug)]
pub struct TlsConfigError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub problem: Problem,
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.flag, self.path.display())?;
        match &self.problem {
            Problem::Missing => f.write_str("no such file"),
            Problem::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            Problem::Empty => f.write_str("the file is empty"),
            Problem::BadPem(why) => write!(f, "not a valid PEM file: {why}"),
            Problem::NoCertificate => {
                f.write_str("no certificate in it (expected a -----BEGIN CERTIFICATE----- section)")
            }
            Problem::NoKey => f.write_str(
                "no private key in it (expected a PKCS#8 PRIVATE KEY, PKCS#1 RSA PRIVATE KEY or SEC1 EC PRIVATE KEY section)",
            ),
            Problem::BadCertificate(why) => write!(f, "the certificate is not valid: {why}"),
            Problem::UnsupportedKey(why) => write!(f, "unsupported private key: {why}"),
            Problem::KeyMismatch { cert } => write!(
                f,
                "the key does not match the certificate in {CERT_FLAG} {}",
                cert.display()
            ),
        }
    }
}

impl std::error::Error for TlsConfigError {}

impl From<TlsConfigError> for io::Error {
    fn from(e: TlsConfigError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

fn error(flag: &'static str, path: &Path, problem: Problem) -> TlsConfigError {
    TlsConfigError {
        flag,
        path: path.to_path_buf(),
        problem,
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            Err(error(flag, path, Problem::Empty))
        }
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(error(flag, path, Problem::Missing)),
        Err(e) => Err(error(flag, path, Problem::Unreadable(e))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A PEM error, with the common "this is not PEM at all" case said plainly.
fn pem_problem(bytes: &[u8], e: pem::Error, none: Problem) -> Problem {
    let has_begin = contains(bytes, b"-----BEGIN ");
    match e {
        pem::Error::NoItemsFound if !has_begin => {
            Problem::BadPem("no -----BEGIN line (is it DER or another format?)".into())
        }
        pem::Error::NoItemsFound => none,
        pem::Error::MissingSectionEnd { end_marker } => Problem::BadPem(format!(
            "a section has no {} line",
            String::from_utf8_lossy(&end_marker)
        )),
        pem::Error::IllegalSectionStart { line } => Problem::BadPem(format!(
            "malformed section start {:?}",
            String::from_utf8_lossy(&line)
        )),
        other => Problem::BadPem(other.to_string()),
    }
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = read(CERT_FLAG, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            error(
                CERT_FLAG,
                path,
                pem_problem(&bytes, e, Problem::NoCertificate),
            )
        })?;
    if certs.is_empty() {
        let problem = pem_problem(&bytes, pem::Error::NoItemsFound, Problem::NoCertificate);
        return Err(error(CERT_FLAG, path, problem));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let bytes = read(KEY_FLAG, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let encrypted = contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY");
        let problem = if encrypted && matches!(e, pem::Error::NoItemsFound) {
            Problem::UnsupportedKey(
                "the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)".into(),
            )
        } else {
            pem_problem(&bytes, e, Problem::NoKey)
        };
        error(KEY_FLAG, path, problem)
    })
}

/// The provider every TLS object of the server uses: ring, TLS 1.2 and 1.3 suites.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the pair and builds the server configuration (TLS 1.2 and 1.3, no client auth,
/// no ALPN), checking that the key is the certificate's.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| error(KEY_FLAG, key_path, Problem::UnsupportedKey(e.to_string())))?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            let cert = cert_path.to_path_buf();
            return Err(error(KEY_FLAG, key_path, Problem::KeyMismatch { cert }));
        }
        Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {
            let why =
                "its public key cannot be derived, so it cannot be checked against the certificate";
            return Err(error(
                KEY_FLAG,
                key_path,
                Problem::UnsupportedKey(why.into()),
            ));
        }
        Err(e) => {
            let problem = Problem::BadCertificate(e.to_string());
            return Err(error(CERT_FLAG, cert_path, problem));
        }
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| error(CERT_FLAG, cert_path, Problem::BadCertificate(e.to_string())))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

/// The certificate and key of the TLS listeners, shared by every worker and reloadable (SIGHUP).
///
/// A reload builds a whole new [`ServerConfig`] from the same paths and swaps it in; on failure
/// the current one stays. Workers hold a [`TlsConfigCache`], so accepting a connection costs
/// one atomic load; the mutex is taken only once per worker after a reload. Connections keep the
/// configuration they started with, so open connections are never disturbed.
#[derive(Clone)]
pub struct TlsReloader {
    inner: Arc<Inner>,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// Bumped after every successful reload, while `current` is locked.
    generation: AtomicU64,
    current: Mutex<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert_path", &self.inner.cert_path)
            .field("key_path", &self.inner.key_path)
            .field("generation", &self.generation())
            .finish()
    }
}

impl TlsReloader {
    /// Loads the pair once; the error names the flag and the file.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<TlsReloader, TlsConfigError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let config = load(&cert_path, &key_path)?;
        Ok(TlsReloader {
            inner: Arc::new(Inner {
                cert_path,
                key_path,
                generation: AtomicU64::new(0),
                current: Mutex::new(config),
            }),
        })
    }

    /// Loads the pair again from the same paths and, if it is good, makes it the one new
    /// connections get. On error the current pair stays in use. Logs nothing: the caller (the
    /// SIGHUP handler) reports the outcome.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let config = load(&self.inner.cert_path, &self.inner.key_path)?;
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *current = config;
        self.inner.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// How many successful reloads there have been.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }

    /// The configuration in force and its generation.
    pub fn current(&self) -> (u64, Arc<ServerConfig>) {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: a reload bumps the generation while holding it, so the pair
        // returned is consistent.
        (self.generation(), current.clone())
    }

    /// A per-worker cache of the current configuration.
    pub fn cache(&self) -> TlsConfigCache {
        let (generation, config) = self.current();
        TlsConfigCache {
            reloader: self.clone(),
            generation,
            config,
        }
    }
}

/// One worker's view of the shared configuration: [`TlsConfigCache::get`] is one atomic load
/// unless a reload happened since the last call.
pub struct TlsConfigCache {
    reloader: TlsReloader,
    generation: u64,
    config: Arc<ServerConfig>,
}

impl TlsConfigCache {
    /// The configuration for a connection accepted now.
    pub fn get(&mut self) -> &Arc<ServerConfig> {
        if self.reloader.generation() != self.generation {
            (self.generation, self.config) = self.reloader.current();
        }
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testcert::{KeyFormat, TestDir, client_config, handshake};

    fn load_err(cert: &Path, key: &Path) -> TlsConfigError {
        match load(cert, key) {
            Ok(_) => panic!(
                "{} + {} loaded, expected an error",
                cert.display(),
                key.display()
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn loads_every_key_format() {
        let dir = TestDir::new("formats");
        for format in [
            KeyFormat::EcdsaPkcs8,
            KeyFormat::RsaPkcs1,
            KeyFormat::EcSec1,
        ] {
            let (cert, key) = dir.pair(&format!("{format:?}"), format);
            let head = std::fs::read_to_string(&key).unwrap();
            assert!(
                head.starts_with(format.pem_label()),
                "{format:?}: openssl wrote {head:.40}"
            );
            let config = load(&cert, &key).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            // The configuration serves the certificate, over both versions.
            for version in [&TLS12, &TLS13] {
                let client = client_config(&cert, &[version]);
                let seen = handshake(&config, &client);
                assert_eq!(seen, load_certs(&cert).unwrap()[0], "{format:?}");
            }
        }
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let dir = TestDir::new("mismatch");
        let (cert_a, _) = dir.pair("a", KeyFormat::EcdsaPkcs8);
        let (_, key_b) = dir.pair("b", KeyFormat::EcdsaPkcs8);
        let e = load_err(&cert_a, &key_b);
        assert!(matches!(e.problem, Problem::KeyMismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("--tls-key {}: ", key_b.display())),
            "{msg}"
        );
        assert!(msg.contains("does not match"), "{msg}");
        assert!(msg.contains(&cert_a.display().to_string()), "{msg}");
        // An RSA key against an EC certificate is a mismatch too.
        let (_, rsa_key) = dir.pair("rsa", KeyFormat::RsaPkcs1);
        let e = load_err(&cert_a, &rsa_key);
        assert!(matches!(e.problem, Problem::KeyMismatch { .. }), "{e:?}");
    }

    #[test]
    fn bad_files_name_flag_file_and_problem() {
        let dir = TestDir::new("bad");
        let (cert, key) = dir.pair("good", KeyFormat::EcdsaPkcs8);
        let missing = dir.path("missing.pem");
        let empty = dir.write("empty.pem", b"");
        let blank = dir.write("blank.pem", b"\n \n");
        let garbage = dir.write("garbage.pem", b"this is not a certificate\n");
        let truncated = {
            let text = std::fs::read_to_string(&cert).unwrap();
            dir.write("truncated.pem", &text.as_bytes()[..text.len() / 2])
        };
        let bad_base64 = dir.write(
            "base64.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let not_a_cert = dir.write(
            "notcert.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let cases: Vec<(&Path, &Path, &str, &Path, &str)> = vec![
            (&missing, &key, CERT_FLAG, &missing, "no such file"),
            (&cert, &missing, KEY_FLAG, &missing, "no such file"),
            (&empty, &key, CERT_FLAG, &empty, "empty"),
            (&cert, &blank, KEY_FLAG, &blank, "empty"),
            (&garbage, &key, CERT_FLAG, &garbage, "no -----BEGIN line"),
            (&cert, &garbage, KEY_FLAG, &garbage, "no -----BEGIN line"),
            (&truncated, &key, CERT_FLAG, &truncated, "not a valid PEM"),
            (&bad_base64, &key, CERT_FLAG, &bad_base64, "not a valid PEM"),
            (
                &not_a_cert,
                &key,
                CERT_FLAG,
                &not_a_cert,
                "certificate is not valid",
            ),
            // A certificate-only file given as the key, and a key given as the certificate.
            (&cert, &cert, KEY_FLAG, &cert, "no private key"),
            (&key, &key, CERT_FLAG, &key, "no certificate"),
            (dir.root(), &key, CERT_FLAG, dir.root(), "cannot read"),
        ];
        for (c, k, flag, file, what) in cases {
            let msg = load_err(c, k).to_string();
            let prefix = format!("{flag} {}: ", file.display());
            assert!(
                msg.starts_with(&prefix),
                "{msg:?} should start with {prefix:?}"
            );
            assert!(msg.contains(what), "{msg:?} should say {what:?}");
        }
    }

    #[test]
    fn unsupported_and_encrypted_keys_are_refused() {
        let dir = TestDir::new("unsupported");
        let (cert, _) = dir.pair("good", KeyFormat::EcdsaPkcs8);
        let encrypted = dir.encrypted_key("enc");
        let msg = load_err(&cert, &encrypted).to_string();
        assert!(
            msg.contains("unsupported private key") && msg.contains("encrypted"),
            "{msg}"
        );
        let ed448 = dir.unsupported_key("ed448");
        let msg = load_err(&cert, &ed448).to_string();
        assert!(
            msg.starts_with(&format!(
                "--tls-key {}: unsupported private key",
                ed448.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn reload_swaps_good_pairs_and_keeps_the_old_one_on_error() {
        let dir = TestDir::new("reload");
        let (cert, key) = dir.pair("live", KeyFormat::EcdsaPkcs8);
        let reloader = TlsReloader::load(&cert, &key).unwrap();
        let mut cache = reloader.cache();
        let first = cache.get().clone();
        assert_eq!(reloader.generation(), 0);

        // A failed reload (bad key) keeps the old configuration and says which file.
        std::fs::write(&key, b"garbage").unwrap();
        let e = reloader.reload().unwrap_err();
        assert_eq!(e.path, key);
        assert_eq!(reloader.generation(), 0);
        assert!(Arc::ptr_eq(cache.get(), &first));
        // A missing file too.
        std::fs::remove_file(&cert).unwrap();
        let e = reloader.reload().unwrap_err();
        assert!(
            matches!(e.problem, Problem::Missing) && e.path == cert,
            "{e}"
        );
        assert!(Arc::ptr_eq(cache.get(), &first));

        // A new good pair in place: the generation moves and the cache picks it up.
        let (new_cert, new_key) = dir.pair("next", KeyFormat::RsaPkcs1);
        std::fs::rename(&new_cert, &cert).unwrap();
        std::fs::rename(&new_key, &key).unwrap();
        reloader.reload().unwrap();
        assert_eq!(reloader.generation(), 1);
        let second = cache.get().clone();
        assert!(!Arc::ptr_eq(&second, &first));
        assert!(Arc::ptr_eq(&second, &reloader.current().1));
        // And a second cache made after the reload agrees without a reload of its own.
        assert!(Arc::ptr_eq(reloader.cache().get(), &second));
    }
}
