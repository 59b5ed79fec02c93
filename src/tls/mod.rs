//! TLS for the echo (cargo feature `tls`, on by default): rustls with the ring provider,
//! TLS 1.2 and 1.3 only.
//!
//! - [`config`]: `--tls-cert` / `--tls-key` loading, with errors that name the flag and the
//!   file, and [`TlsReloader`], the reloadable pair every worker shares (SIGHUP).
//! - [`session`]: [`TlsSession`], the sans-IO echo of one TLS connection: ciphertext in,
//!   ciphertext out, bounded memory.

pub mod config;
#[cfg(test)]
mod interop;
pub mod session;
#[cfg(test)]
mod sim;
#[cfg(test)]
pub(crate) mod testcert;

use std::time::Duration;

pub use config::{TlsConfigCache, TlsConfigError, TlsReloader};
pub use session::{TlsFailure, TlsSession};

/// What `--tls-port`, `--tls-cert`, `--tls-key` and `--tls-handshake-timeout` ask for, with the
/// certificate and key already loaded and checked.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub port: u16,
    /// The certificate and key in force; `reload()` on SIGHUP.
    pub reloader: TlsReloader,
    /// A connection still handshaking after this long is closed.
    pub handshake_timeout: Duration,
}
