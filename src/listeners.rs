//! The listening sockets: created here (one SO_REUSEPORT listener per worker) or adopted from
//! the process that started this one in a graceful restart (see [`crate::restart`]).
//!
//! - **Dual-stack default**: with no `--host`, the server listens on `::` with `IPV6_V6ONLY`
//!   off, so IPv4 clients arrive as v4-mapped addresses on the same socket; where IPv6 is
//!   absent (no `AF_INET6`, no `::1`, or `::` cannot be bound) it falls back to `0.0.0.0`
//!   ([`default_host`]). An explicit `--host` is used as given (`::` also with V6ONLY off).
//! - **Inherited sockets**: `EPOLL_ECHO_INHERIT=KIND:W:FD,...` names the descriptors a parent
//!   left open, each tagged with its [`Kind`] (`tcp`: the plain listener, `tls`: the
//!   `--tls-port` listener, `udp`: the `--udp-port` socket) and the worker `W` it served.
//!   [`adopt_inherited`] takes them at startup; [`open`] and [`take_inherited`] hand worker
//!   `W` its inherited socket of a kind instead of binding a new one. The new process runs at
//!   least as many workers as sockets of any one kind it inherited: a listener left without a
//!   worker would hold connections in its queue that nobody accepts.
//! - Every socket in use is also recorded in the server's [`Set`] (a close-on-exec
//!   duplicate), so a restart can hand them all on, and shutdown closes them all at once.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

/// The environment variable naming inherited sockets (`kind:worker:fd,...`).
pub const INHERIT_ENV: &str = "EPOLL_ECHO_INHERIT";

/// What an inherited (or recorded) socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The plain TCP listener (`--port`).
    Tcp,
    /// The TLS listener (`--tls-port`).
    Tls,
    /// The UDP echo socket (`--udp-port`).
    Udp,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tcp, Kind::Tls, Kind::Udp];

    /// The tag in [`INHERIT_ENV`].
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Udp => "udp",
        }
    }

    fn parse(tag: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

/// Inherited sockets not yet taken by a worker, by kind and worker id.
static INHERITED: Mutex<BTreeMap<(Kind, usize), OwnedFd>> = Mutex::new(BTreeMap::new());

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

/// On `::`, clears IPV6_V6ONLY whatever `net.ipv6.bindv6only` says, so IPv4 clients reach the
/// same socket (TCP and TLS listeners, UDP sockets); any other address is left as it is.
pub fn dual_stack(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    Ok(())
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
    dual_stack(&socket, addr).map_err(|e| step("clear IPV6_V6ONLY", e))?;
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

/// Worker `id`'s listener of `kind` ([`Kind::Tcp`] or [`Kind::Tls`]): the one inherited for
/// it if any, else a new one on `addr`. Recorded in `set` for restarts and shutdown.
pub fn open(
    kind: Kind,
    id: usize,
    addr: SocketAddr,
    backlog: i32,
    set: &Set,
) -> io::Result<Socket> {
    let socket = match take_inherited(kind, id)? {
        Some(s) => s,
        None => bind(id, addr, backlog)?,
    };
    set.record(kind, id, socket.as_fd())?;
    Ok(socket)
}

/// Worker `id`'s inherited socket of `kind`, if its parent left one (nonblocking). The caller
/// records it in the [`Set`] once it uses it.
pub fn take_inherited(kind: Kind, id: usize) -> io::Result<Option<Socket>> {
    let inherited = INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(kind, id));
    inherited
        .map(|fd| {
            let s = Socket::from(fd);
            s.set_nonblocking(true).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("worker {id}: inherited {} socket: {e}", kind.tag()),
                )
            })?;
            Ok(s)
        })
        .transpose()
}

/// How many workers the inherited sockets need: the most of any one kind.
pub fn inherited_count() -> usize {
    let map = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    Kind::ALL
        .into_iter()
        .map(|k| map.keys().filter(|(kind, _)| *kind == k).count())
        .max()
        .unwrap_or(0)
}

/// Takes the sockets named by [`INHERIT_ENV`] (once, at startup, before any other
/// descriptor is opened). Returns how many. A `tcp` or `tls` entry must be an open listening
/// socket, a `udp` entry an open datagram socket; anything else is an error naming the
/// variable.
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
        let mut parts = item.split(':');
        let (Some(kind), Some(w), Some(fd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(format!("'{item}' is not kind:worker:fd")));
        };
        let kind = Kind::parse(kind)
            .ok_or_else(|| bad(format!("'{kind}' is not a kind (tcp, tls or udp)")))?;
        let w: usize = w
            .parse()
            .map_err(|_| bad(format!("'{w}' is not a worker number")))?;
        let fd: RawFd = fd
            .parse()
            .map_err(|_| bad(format!("'{fd}' is not a descriptor")))?;
        if map.contains_key(&(kind, w)) || map.values().any(|o| o.as_raw_fd() == fd) {
            return Err(bad(format!("'{item}' repeats a worker or descriptor")));
        }
        let owned = match kind {
            Kind::Tcp | Kind::Tls => sys::adopt_listener(fd),
            Kind::Udp => sys::adopt_datagram(fd),
        }
        .map_err(|e| bad(format!("descriptor {fd}: {e}")))?;
        map.insert((kind, w), owned);
    }
    Ok(map.len())
}

/// The sockets a server is using, by kind and worker: duplicates, close-on-exec.
#[derive(Default)]
pub struct Set(Mutex<BTreeMap<(Kind, usize), OwnedFd>>);

impl Set {
    /// Records worker `id`'s socket of `kind` (a duplicate), for a restart to hand on.
    pub fn record(&self, kind: Kind, id: usize, socket: BorrowedFd<'_>) -> io::Result<()> {
        let dup = socket.try_clone_to_owned()?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((kind, id), dup);
        Ok(())
    }

    /// Closes every recorded duplicate (the workers close their own when they stop).
    pub fn close_all(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Inheritable duplicates (no close-on-exec) of every recorded socket, for a child
    /// process, with the `EPOLL_ECHO_INHERIT` value that names them (`kind:worker:fd,...`).
    pub fn inheritable(&self) -> io::Result<(Vec<OwnedFd>, String)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = Vec::with_capacity(map.len());
        let mut spec = Vec::with_capacity(map.len());
        for ((kind, id), fd) in map.iter() {
            let dup = sys::dup_inheritable(fd.as_fd())?;
            spec.push(format!("{}:{id}:{}", kind.tag(), dup.as_raw_fd()));
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
