//! State the workers and the server's handles share: the stop flag and wake pipes, the global
//! connection count, and each worker's published stats. The server creates it; workers only
//! read the stop request and update the count and their own stats slot (no import cycle:
//! `server` → `worker` → `shared`, `server` → `shared`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::stats::WorkerStats;
use crate::sys;

pub struct Shared {
    stop: AtomicBool,
    wakers: Vec<OwnedFd>,
    /// Open client connections across all workers (for `--max-connections`).
    pub active: AtomicUsize,
    pub stats: Vec<WorkerStats>,
}

impl Shared {
    /// `wakers`: the write ends of the workers' wake pipes, one per worker.
    pub fn new(wakers: Vec<OwnedFd>) -> Shared {
        let stats = (0..wakers.len()).map(|_| WorkerStats::default()).collect();
        Shared {
            stop: AtomicBool::new(false),
            wakers,
            active: AtomicUsize::new(0),
            stats,
        }
    }

    /// Asks every worker to shut down. Returns `false` if that had already been asked for.
    pub fn request_stop(&self) -> bool {
        let first = !self.stop.swap(true, Ordering::SeqCst);
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
