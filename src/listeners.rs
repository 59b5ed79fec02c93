//! The listening sockets: created here (one SO_REUSEPORT listener per worker) or adopted from
//! the process that started this one in a graceful restart (see [`crate::restart`]).
//!
//! - **Dual-stack default**: with no `--host`, the server listens on `::` with `IPV6_V6ONLY`
//!   off, so IPv4 clients arrive as v4-mapped addresses on the same socket; where IPv6 is
//!   absent (no `AF_INET6`, no `::1`, or `::` cannot be bound) it falls back to `0.0.0.0`
//!   ([`default_host`]). An explicit `--host` is used as given (`::` also with V6ONLY off).
//! - **Inherited listeners**: `EPOLL_ECHO_INHERIT=W:FD,W:FD,...` names the descriptors a
//!   parent left open for worker `W`. [`adopt_inherited`] takes them at startup; [`open`]
//!   hands worker `W` its inherited socket instead of binding a new one. The new process
//!   runs at least as many workers as listeners it inherited: a listener left without a
//!   worker would hold connections in its queue that nobody accepts.
//! - Every listener in use is also recorded in the server's [`Set`] (a close-on-exec
//!   duplicate), so a restart can hand them all on, and shutdown closes them all at once.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

/// The environment variable naming inherited listeners (`worker:fd,...`).
pub const INHERIT_ENV: &str = "EPOLL_ECHO_INHERIT";

/// Inherited listeners not yet taken by a worker, by worker id.
static INHERITED: Mutex<BTreeMap<usize, OwnedFd>> = Mutex::new(BTreeMap::new());

/// The address to listen on when `--host` is not given: `::` (dual-stack) if this system has
/// IPv6 — an `AF_INET6` socket can bind the IPv6 loopback `::1` (absent where IPv6 is off, as
/// in a Docker container without IPv6) and `::` with V6ONLY off — else `0.0.0.0`.
pub fn default_host() -> IpAddr {
    let probe = |ip: Ipv6Addr| -> io::Result<()> {
        let s = Socket::new(Domain::IPV6, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::new(ip.into(), 0).into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind [{ip}]:0: {e}")))
    };
    match probe(Ipv6Addr::LOCALHOST).and_then(|()| probe(Ipv6Addr::UNSPECIFIED)) {
        Ok(()) => Ipv6Addr::UNSPECIFIED.into(),
        Err(e) => {
            crate::log!(
                crate::log::Level::Info,
                "IPv6 unavailable ({e}): serving IPv4 only, on 0.0.0.0"
            );
            Ipv4Addr::UNSPECIFIED.into()
        }
    }
}

/// Creates worker `id`'s listener: new → SO_REUSEADDR → SO_REUSEPORT → V6ONLY off (for
/// `::`) → nonblocking → bind → listen. Errors name the worker and the step.
pub fn bind(id: usize, addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let step =
        |what: &str, e: io::Error| io::Error::new(e.kind(), format!("worker {id}: {what}: {e}"));
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))
        .map_err(|e| step("create socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| step("set SO_REUSEADDR", e))?;
    socket
        .set_reuse_port(true)
        .map_err(|e| step("set SO_REUSEPORT", e))?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket
            .set_only_v6(false)
            .map_err(|e| step("clear IPV6_V6ONLY", e))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| step("set O_NONBLOCK", e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| step(&format!("bind {addr}"), e))?;
    socket
        .listen(backlog)
        .map_err(|e| step(&format!("listen on {addr}"), e))?;
    Ok(socket)
}

/// Worker `id`'s listener: the one inherited for it if any, else a new one on `addr`.
/// Recorded in `set` for restarts and shutdown.
pub fn open(id: usize, addr: SocketAddr, backlog: i32, set: &Set) -> io::Result<Socket> {
    let inherited = INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let socket = match inherited {
        Some(fd) => {
            let s = Socket::from(fd);
            s.set_nonblocking(true).map_err(|e| {
                io::Error::new(e.kind(), format!("worker {id}: inherited listener: {e}"))
            })?;
            s
        }
        None => bind(id, addr, backlog)?,
    };
    set.record(id, &socket)?;
    Ok(socket)
}

/// How many inherited listeners wait for a worker.
pub fn inherited_count() -> usize {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Takes the listeners named by [`INHERIT_ENV`] (once, at startup, before any other
/// descriptor is opened). Returns how many. Each must be an open TCP listening socket;
/// anything else is an error naming the variable.
pub fn adopt_inherited() -> io::Result<usize> {
    let Ok(spec) = std::env::var(INHERIT_ENV) else {
        return Ok(0);
    };
    // The variable stays in the environment (remove_var is unsafe in edition 2024), but
    // it is read only here, once, and a restart sets it afresh for its own child.
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{INHERIT_ENV}={spec}: {why}"),
        )
    };
    let mut map = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (w, fd) = item
            .split_once(':')
            .ok_or_else(|| bad(format!("'{item}' is not worker:fd")))?;
        let w: usize = w
            .parse()
            .map_err(|_| bad(format!("'{w}' is not a worker number")))?;
        let fd: RawFd = fd
            .parse()
            .map_err(|_| bad(format!("'{fd}' is not a descriptor")))?;
        if map.contains_key(&w) || map.values().any(|o| o.as_raw_fd() == fd) {
            return Err(bad(format!("'{item}' repeats a worker or descriptor")));
        }
        let owned = sys::adopt_listener(fd).map_err(|e| bad(format!("descriptor {fd}: {e}")))?;
        map.insert(w, owned);
    }
    Ok(map.len())
}

/// The listeners a server is using, by worker: duplicates, close-on-exec.
#[derive(Default)]
pub struct Set(Mutex<BTreeMap<usize, OwnedFd>>);

impl Set {
    fn record(&self, id: usize, socket: &Socket) -> io::Result<()> {
        let dup = socket.as_fd().try_clone_to_owned()?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, dup);
        Ok(())
    }

    /// Closes every recorded duplicate (the workers close their own when they stop).
    pub fn close_all(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Inheritable duplicates (no close-on-exec) of every recorded listener, for a child
    /// process, with the `EPOLL_ECHO_INHERIT` value that names them.
    pub fn inheritable(&self) -> io::Result<(Vec<OwnedFd>, String)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = Vec::with_capacity(map.len());
        let mut spec = Vec::with_capacity(map.len());
        for (id, fd) in map.iter() {
            let dup = sys::dup_inheritable(fd.as_fd())?;
            spec.push(format!("{id}:{}", dup.as_raw_fd()));
            fds.push(dup);
        }
        Ok((fds, spec.join(",")))
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
