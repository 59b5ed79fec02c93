//! Every call into `libc` lives here, behind one error helper.
//!
//! The rest of the crate is `#![deny(unsafe_code)]`: it sees file descriptors only as
//! [`OwnedFd`] / [`BorrowedFd`], so each one is closed exactly once, by its owner.
//! `EINTR` is retried here, in [`syscall!`]'s callers, and nowhere else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Runs a libc call and turns its `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every caller passes pointers to live buffers of the stated length and fds
        // borrowed from an owner that outlives the call.
        #[allow(unused_unsafe)]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub mod udp;

/// Retries `f` while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful call that created it; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLPRI: u32 = libc::EPOLLPRI as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

/// One readiness report: the event bits and the token given at registration.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Event(libc::epoll_event);

impl Event {
    pub const fn zeroed() -> Event {
        Event(libc::epoll_event { events: 0, u64: 0 })
    }
    pub fn events(&self) -> u32 {
        self.0.events
    }
    pub fn token(&self) -> u64 {
        self.0.u64
    }
}

/// An epoll instance (`epoll_create1(EPOLL_CLOEXEC)`).
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        Ok(Epoll { fd: owned(fd) })
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        syscall!(epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev))?;
        Ok(())
    }

    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    pub fn modify(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits for events; `timeout` `None` blocks. An interrupted wait returns 0 events.
    pub fn wait(&self, events: &mut [Event], timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => -1,
            // Round up so a 0.4 ms deadline does not turn into a busy poll.
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
        };
        let len = events.len().min(i32::MAX as usize) as libc::c_int;
        match syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            events.as_mut_ptr().cast::<libc::epoll_event>(),
            len,
            ms
        )) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A nonblocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC))?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: Linux does not inherit O_NONBLOCK from the listener.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = retry(|| {
        syscall!(accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))
    })?;
    Ok(owned(fd))
}

/// `read(2)`, retrying `EINTR`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()))).map(|n| n as usize)
}

/// `write(2)`, retrying `EINTR`. For pipes; sockets use [`send`].
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()))).map(|n| n as usize)
}

/// `send(MSG_NOSIGNAL)`: a peer that went away yields `EPIPE`, never `SIGPIPE`.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        syscall!(send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL
        ))
    })
    .map(|n| n as usize)
}

/// `splice(2)` between a socket and a pipe, nonblocking and with `SPLICE_F_MOVE`.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    retry(|| {
        syscall!(splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK
        ))
    })
    .map(|n| n as usize)
}

/// `setsockopt` of one `int` option.
fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    syscall!(setsockopt(
        fd.as_raw_fd(),
        level,
        name,
        (&value as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}

/// Sets `TCP_NODELAY`: an echo must not wait for Nagle.
pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Sets `TCP_NOTSENT_LOWAT`: the socket takes more data (and reports EPOLLOUT) only while
/// fewer than `bytes` of what it holds are still unsent; 0 restores the kernel's default
/// (`net.ipv4.tcp_notsent_lowat`, unlimited unless changed). Set on a listener, accepted
/// sockets inherit it.
pub fn set_notsent_lowat(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, bytes)
}

/// `getsockopt(TCP_MAXSEG)`: the connection's current maximum segment size (the path MTU less
/// the IP and TCP headers and options: 1,448 on a 1500-byte path with timestamps).
pub fn tcp_maxseg(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_MAXSEG,
        (&mut mss as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(usize::try_from(mss).unwrap_or(0))
}

/// Sets `SO_OOBINLINE`: urgent (MSG_OOB) bytes stay in the stream, in order, instead of being
/// set aside where a plain read never sees them.
pub fn set_oobinline(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE, 1)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if syscall!(setrlimit(libc::RLIMIT_NOFILE, &want)).is_ok() {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// A cheap monotonic clock (`CLOCK_MONOTONIC_COARSE`, answered by the vDSO without a syscall);
/// resolution is a few milliseconds, enough for timeouts counted in seconds.
pub fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; this clock id always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data and all-zero is the empty set; `cpu` is in range
    // (checked above), which is all CPU_SET needs.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))?;
    Ok(())
}

/// An `eventfd`: one cheap descriptor, held in reserve for when the process runs out.
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
    Ok(owned(fd))
}

/// True for `accept` errors that mean the process or system is out of descriptors or memory.
pub fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// True for `accept` errors that concern only the one connection being accepted.
pub fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Sets a pipe's capacity (`F_SETPIPE_SZ`); returns the capacity granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = size.min(libc::c_int::MAX as usize) as libc::c_int;
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size)).map(|n| n as usize)
}

/// Ignores SIGPIPE process-wide. Sends use `MSG_NOSIGNAL`, but splice(2) into a socket has no
/// such flag, so `--splice` needs this (Rust binaries already ignore SIGPIPE; embedders may not).
pub fn ignore_sigpipe() {
    // SAFETY: installs the SIG_IGN disposition; no handler code runs, nothing is shared.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` that also returns the peer's address (the kernel
/// fills it in the same call: no `getpeername` per client). `None` for a non-IP peer.
pub fn accept_with_peer(
    listener: BorrowedFd<'_>,
) -> io::Result<(OwnedFd, Option<std::net::SocketAddr>)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let fd = retry(|| {
        len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        syscall!(accept4(
            listener.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))
    })?;
    Ok((owned(fd), socket_addr(&storage, len)))
}

/// An IPv4 or IPv6 address the kernel wrote into `storage` (`len` bytes); `None` for another
/// family or a length too short for its sockaddr.
fn socket_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and `len` covers it;
            // sockaddr_storage is aligned for every sockaddr type.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Closes a client with a reset (RST) instead of a FIN: `SO_LINGER` {on, 0 s}, then close(2).
/// For refused clients: they learn at once, and no TIME_WAIT is left on the server.
pub fn reset(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // A failure leaves an ordinary close (FIN): still a refusal, only a politer one.
    let _ = syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&linger as *const libc::linger).cast(),
        std::mem::size_of::<libc::linger>() as libc::socklen_t
    ));
    drop(fd);
}

/// This machine's host name (`gethostname(2)`), for the banner's `{hostname}`.
pub fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    syscall!(gethostname(buf.as_mut_ptr().cast(), buf.len()))?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// A duplicate of `fd` *without* close-on-exec, numbered 3 or above: for a child process to
/// inherit (graceful restart). Close it in the parent once the child has been spawned.
pub fn dup_inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3))?;
    Ok(owned(new))
}

/// Takes ownership of descriptor `fd`, named by our parent process in the environment (see
/// `listeners` and `restart`): checks that it is open, sets close-on-exec on it.
fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an inherited descriptor (0-2 are stdio)",
        ));
    }
    let flags = syscall!(fcntl(fd, libc::F_GETFD))?;
    syscall!(fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
    // SAFETY: `fd` is open (F_GETFD succeeded) and was left to this process by its parent
    // for it to own; the callers adopt each number once, at startup, before the process
    // opens descriptors of its own, so no other owner exists.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`adopt`]s an inherited listening TCP socket; anything else is an error (left open).
pub fn adopt_listener(fd: RawFd) -> io::Result<OwnedFd> {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ACCEPTCONN,
        (&mut on as *mut libc::c_int).cast(),
        &mut len
    ))?;
    if on == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket",
        ));
    }
    adopt(fd)
}

/// [`adopt`]s an inherited datagram (UDP) socket; anything else is an error (left open).
pub fn adopt_datagram(fd: RawFd) -> io::Result<OwnedFd> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_TYPE,
        (&mut ty as *mut libc::c_int).cast(),
        &mut len
    ))?;
    if ty != libc::SOCK_DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a datagram socket",
        ));
    }
    adopt(fd)
}

/// [`adopt`]s an inherited pipe's write end (the restart readiness pipe).
pub fn adopt_pipe(fd: RawFd) -> io::Result<OwnedFd> {
    let mut st: libc::stat = {
        // SAFETY: `stat` is plain data; all-zero is a valid value that fstat overwrites.
        unsafe { std::mem::zeroed() }
    };
    syscall!(fstat(fd, &mut st))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a pipe"));
    }
    adopt(fd)
}

/// Waits up to `timeout` for `fd` to become readable (or hung up); `false` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    let n = retry(|| syscall!(poll(&mut p, 1, ms)))?;
    Ok(n > 0)
}

/// Sends SIGTERM to process `pid` (a child this process started).
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    syscall!(kill(pid, libc::SIGTERM))?;
    Ok(())
}
