//! State the workers and the server's handles share: the stop flag and wake pipes, the global
//! connection count, and each worker's published stats. The server creates it; workers only
//! read the stop request and update the count and their own stats slot (no import cycle:
//! `server` → `worker` → `shared`, `server` → `shared`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::stats::WorkerStats;
use crate::{listeners, sys};

/// Something SIGHUP reloads (e.g. TLS certificates): returns a line for the log, or why not.
pub type ReloadHook = Box<dyn Fn() -> io::Result<String> + Send + Sync>;

pub struct Shared {
    stop: AtomicBool,
    /// The shutdown is a graceful restart's hand-over (see `ShutdownHandle::hand_over`).
    handing_over: AtomicBool,
    wakers: Vec<OwnedFd>,
    /// Open client connections across all workers (for `--max-connections`).
    pub active: AtomicUsize,
    pub stats: Vec<WorkerStats>,
    /// Every worker's listener (duplicates): handed on by a restart, closed at shutdown.
    pub listeners: listeners::Set,
    /// Run on SIGHUP (`ShutdownHandle::reload`), in registration order.
    pub(crate) reload_hooks: Mutex<Vec<ReloadHook>>,
}

impl Shared {
    /// `wakers`: the write ends of the workers' wake pipes, one per worker.
    pub fn new(wakers: Vec<OwnedFd>) -> Shared {
        let stats = (0..wakers.len()).map(|_| WorkerStats::default()).collect();
        Shared {
            stop: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            wakers,
            active: AtomicUsize::new(0),
            stats,
            listeners: listeners::Set::default(),
            reload_hooks: Mutex::new(Vec::new()),
        }
    }

    /// True once shutdown has been asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Marks the coming shutdown as a graceful restart's hand-over.
    pub fn set_handing_over(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
    }

    /// See `ShutdownHandle::hand_over`.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst)
    }

    /// Asks every worker to shut down. Returns `false` if that had already been asked for.
    pub fn request_stop(&self) -> bool {
        let first = !self.stop.swap(true, Ordering::SeqCst);
        // Our listener duplicates first, so the listeners close as the workers drop theirs.
        self.listeners.close_all();
        for w in &self.wakers {
            // A full pipe already holds a wake-up; nothing else can fail here.
            let _ = sys::write(w.as_fd(), &[1]);
        }
        first
    }

    /// Counts a new connection unless that would exceed `max`.
    pub fn try_admit(&self, max: usize) -> bool {
        if self.active.fetch_add(1, Ordering::Relaxed) >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Uncounts a closed connection.
    pub fn release(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}
