//! The worker's TLS side (`--tls-port`): what it needs to give each connection accepted on its
//! TLS listener a [`TlsStage`] — the configuration in force (one atomic load per accept, see
//! [`TlsConfigCache`]), the handshake timeout, and the worker's TLS counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::tls_stage::{TlsStage, TlsTally};
use crate::conn::{Tick, ticks_ceil};
use crate::tls::{TlsConfigCache, TlsReloader};

/// The TLS listener's settings for one worker.
#[derive(Clone, Debug)]
pub struct TlsWorkerConfig {
    /// Where to listen (port 0: the kernel picks; the first worker's port goes to the others).
    pub addr: SocketAddr,
    pub reloader: TlsReloader,
    pub handshake_timeout: Duration,
}

/// One worker's TLS state.
pub struct TlsSide {
    cache: TlsConfigCache,
    handshake_ticks: u64,
    pub tally: Arc<TlsTally>,
}

impl TlsSide {
    pub fn new(cfg: &TlsWorkerConfig) -> TlsSide {
        TlsSide {
            cache: cfg.reloader.cache(),
            handshake_ticks: ticks_ceil(cfg.handshake_timeout),
            tally: Arc::default(),
        }
    }

    /// The stage for a connection accepted at `now`: its handshake must be done a whole
    /// timeout after the end of this tick.
    pub fn stage(&mut self, now: Tick, max_pending: usize) -> Result<TlsStage, rustls::Error> {
        let at = u64::from(now)
            .saturating_add(self.handshake_ticks)
            .saturating_add(1)
            .min(u64::from(Tick::MAX)) as Tick;
        TlsStage::new(
            self.cache.get().clone(),
            max_pending,
            at,
            self.tally.clone(),
        )
    }
}
