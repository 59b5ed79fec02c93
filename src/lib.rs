//! epoll-echo: a multi-worker, edge-triggered TCP echo server for Linux.
//!
//! The modules read top-down:
//! [`cli`] (flags) → [`server`] (spawns and joins workers, owns shutdown) →
//! [`worker`] (one thread: SO_REUSEPORT listener + private epoll + wake pipe; its rooms:
//! event loop, accept, table, service, drain, idle) → [`conn`] (one client as a state machine
//! without IO: bytes and readiness in, actions out) → [`sys`] (the only place that calls libc).
//! [`shared`] is what the server and its workers share; [`sim`] drives `conn` and the worker's
//! table/drain logic against fake sockets (the simulator, also used by the fuzz target).
//! Beside them: [`udp`] (a worker's UDP echo socket, `--udp-port`), [`rate`] (per-source
//! token buckets in a bounded table), [`proxy`] (the PROXY protocol header parser) and
//! [`limits`] (the global per-IP connection table and accept-rate buckets).
#![deny(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod duration;
pub mod limits;
pub mod listeners;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod rate;
pub mod restart;
pub mod server;
pub mod shared;
pub mod sim;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(feature = "tls")]
pub mod tls;
pub mod udp;
pub mod worker;

pub use server::{Config, Running, Server, ShutdownHandle};
