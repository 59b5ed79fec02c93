//! The few libc calls echo-bench needs (epoll with a nanosecond timeout, the descriptor
//! limit), each behind a safe function. The rest of the crate is `#![deny(unsafe_code)]`.
//! echo-bench shares no code with the server: it is a separate package that measures it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

/// Turns a libc `-1` into `io::Error::last_os_error()`.
fn cvt(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// One readiness event: the token it was registered with.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Event(libc::epoll_event);

impl Event {
    pub const fn zeroed() -> Event {
        Event(libc::epoll_event { events: 0, u64: 0 })
    }
    pub fn token(&self) -> u64 {
        self.0.u64
    }
}

/// An epoll instance (`epoll_create1(EPOLL_CLOEXEC)`).
pub struct Epoll {
    fd: OwnedFd,
}

/// epoll_pwait2 (Linux 5.11) is missing: fall back to epoll_wait's milliseconds.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the returned fd is new and owned by nobody else.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just created by a successful call and is owned only here.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: both fds are open for the call (owned/borrowed); `ev` is a valid event.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Waits for events, at most `timeout` (nanosecond resolution where the kernel has
    /// epoll_pwait2, else rounded up to a millisecond). An interrupted wait returns 0 events.
    pub fn wait(&self, events: &mut [Event], timeout: Duration) -> io::Result<usize> {
        let len = events.len().min(i32::MAX as usize) as libc::c_int;
        let ptr = events.as_mut_ptr().cast::<libc::epoll_event>();
        let res = if NO_PWAIT2.load(Ordering::Relaxed) {
            let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
            // SAFETY: `ptr` points to `len` writable events; the epoll fd is open.
            cvt(unsafe { libc::epoll_wait(self.fd.as_raw_fd(), ptr, len, ms) })
        } else {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
            };
            // SAFETY: as above, and `ts` is a valid timespec; a null sigmask means none.
            let r = cvt(unsafe {
                libc::epoll_pwait2(self.fd.as_raw_fd(), ptr, len, &ts, std::ptr::null())
            });
            if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOSYS)) {
                NO_PWAIT2.store(true, Ordering::Relaxed);
                return self.wait(events, timeout);
            }
            r
        };
        match res {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (hundreds of sockets need more than
/// 1024); returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit.
        if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) }).is_ok() {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}
