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
pub mod listeners;
pub mod log;
pub mod metrics;
pub mod restart;
pub mod server;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
pub mod worker;

pub use server::{Config, Running, Server, ShutdownHandle};
