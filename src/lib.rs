//! epoll-echo: a multi-worker, edge-triggered TCP echo server for Linux.
//!
//! The modules read top-down:
//! [`cli`] (flags) → [`server`] (spawns and joins workers, owns shutdown) →
//! [`worker`] (one thread: SO_REUSEPORT listener + private epoll + wake pipe) →
//! [`conn`] (one client: pending output, flags) → [`sys`] (the only place that calls libc).
#![deny(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod duration;
pub mod idle;
pub mod log;
pub mod server;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(feature = "tls")]
pub mod tls;
pub mod worker;

pub use server::{Config, Running, Server, ShutdownHandle};
