//! Graceful restart (SIGUSR2) and the pid file (`--pid-file`).
//!
//! The running server starts a fresh copy of its binary (the path it was started from, so an
//! upgraded binary takes over; same arguments) and hands it the listening sockets by
//! inheritance, as nginx's binary upgrade does:
//!
//! 1. every socket — each worker's plain listener, TLS listener and UDP socket — is
//!    duplicated without close-on-exec; `EPOLL_ECHO_INHERIT=KIND:W:FD,...` (e.g.
//!    `tcp:0:5,tls:0:6,udp:0:7`) tells the child which descriptor is which worker's, of which
//!    kind ([`crate::listeners`]), and `EPOLL_ECHO_READY_FD` names the write end of a pipe;
//! 2. the child adopts those sockets instead of binding (so the sockets, and the connections
//!    queued on them, never close), starts every worker, takes over the pid file, and writes
//!    one byte to the pipe;
//! 3. on that byte the old process stops accepting and answering datagrams (each socket out
//!    of its epoll, then its descriptors close; the sockets stay open in the child), drains
//!    its connections as on SIGTERM and exits 0.
//!
//! If the child cannot be started, exits, or is not ready within [`READY_TIMEOUT`], the old
//! process kills it if needed, closes its copies of the descriptors, logs why, and keeps
//! serving.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::listeners::INHERIT_ENV;
use crate::log::Level;
use crate::server::ShutdownHandle;
use crate::{log, sys};

/// Names the inherited write end of the readiness pipe.
pub const READY_ENV: &str = "EPOLL_ECHO_READY_FD";
/// How long a new process may take to serve before the restart is abandoned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The readiness pipe left by the parent of a graceful restart, if this process is such a
/// child (adopted at startup, like the listeners).
pub fn adopt_ready_pipe() -> io::Result<Option<OwnedFd>> {
    let Ok(v) = std::env::var(READY_ENV) else {
        return Ok(None);
    };
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{READY_ENV}={v}: {why}"),
        )
    };
    let fd = v
        .parse()
        .map_err(|_| bad("not a descriptor number".into()))?;
    sys::adopt_pipe(fd)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Tells the parent that this process serves: one byte down the readiness pipe.
pub fn signal_ready(pipe: OwnedFd) -> io::Result<()> {
    sys::write(pipe.as_fd(), b"R").map(drop)
}

/// What a restart needs to know about this process.
pub struct Restarter {
    /// The binary to start: the path this process was started from.
    exe: PathBuf,
}

impl Restarter {
    /// Call at startup: remembers the binary's path (`/proc/self/exe` as it is now).
    pub fn new() -> Restarter {
        Restarter {
            exe: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
        }
    }

    /// Starts the new process and waits for it to serve; then drains this one. On any
    /// failure this process keeps serving; the error says why.
    pub fn restart(&self, handle: &ShutdownHandle) -> io::Result<()> {
        if handle.is_shutting_down() {
            return Err(io::Error::other("already shutting down"));
        }
        let (inherit, spec) = handle.listeners().inheritable()?;
        if inherit.is_empty() {
            return Err(io::Error::other("not listening yet"));
        }
        let (ready_r, ready_w) = sys::pipe()?;
        let child_w = sys::dup_inheritable(ready_w.as_fd())?;
        drop(ready_w);
        let mut child = Command::new(&self.exe)
            .args(std::env::args_os().skip(1))
            .env(INHERIT_ENV, &spec)
            .env(READY_ENV, child_w.as_raw_fd().to_string())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {}: {e}", self.exe.display())))?;
        // The child has its own copies now; ours would keep the pipe open for ever.
        drop(child_w);
        drop(inherit);
        let pid = child.id();
        log!(
            Level::Info,
            "restart: started {} as pid {pid}; waiting for it to serve",
            self.exe.display()
        );
        let mut byte = [0u8; 1];
        let outcome = match sys::wait_readable(ready_r.as_fd(), READY_TIMEOUT) {
            Ok(true) => match sys::read(ready_r.as_fd(), &mut byte) {
                Ok(1) => Ok(()),
                Ok(_) => Err(format!("pid {pid} exited before it was ready")),
                Err(e) => Err(format!("pid {pid}: readiness pipe: {e}")),
            },
            Ok(false) => Err(format!("pid {pid} not ready within {READY_TIMEOUT:?}")),
            Err(e) => Err(format!("pid {pid}: waiting for readiness: {e}")),
        };
        if let Err(why) = outcome {
            let _ = child.kill();
            let status = child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(io::Error::other(format!("{why} ({status})")));
        }
        if !handle.hand_over() {
            // SIGINT/SIGTERM arrived while the new process was starting: the operator wants
            // the service stopped, so the new process is asked to drain and stop too.
            sys::terminate(pid)?;
            return Err(io::Error::other(format!(
                "asked to shut down meanwhile; sent SIGTERM to pid {pid}"
            )));
        }
        log!(
            Level::Info,
            "restart: pid {pid} is serving; draining this process"
        );
        Ok(())
    }
}

impl Default for Restarter {
    fn default() -> Self {
        Restarter::new()
    }
}

/// `--pid-file`: the pid of the serving process, written atomically (a temporary file in the
/// same directory, then rename), removed at exit only while it still holds our pid.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--pid-file {}: not a file name", path.display()),
            )
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = path.with_file_name(tmp_name);
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{pid}")?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("--pid-file {}: {e}", path.display()),
            ));
        }
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }

    /// Removes the file if it still names this process (a restart's child rewrote it).
    pub fn remove(self) {
        let ours = fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}
