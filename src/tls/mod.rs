//! TLS for the echo (cargo feature `tls`, on by default): rustls with the ring provider,
//! TLS 1.2 and 1.3 only.
//!
//! - [`config`]: `--tls-cert` / `--tls-key` loading, with errors that name the flag and the
//!   file, and [`TlsReloader`], the reloadable pair every worker shares (SIGHUP).
//! - [`session`]: [`TlsSession`], the sans-IO echo of one TLS connection: ciphertext in,
//!   ciphertext out, bounded memory.

pub mod config;
pub mod session;
#[cfg(test)]
mod sim;
#[cfg(test)]
pub(crate) mod testcert;

pub use config::{TlsConfigCache, TlsConfigError, TlsReloader};
pub use session::{TlsFailure, TlsSession};
