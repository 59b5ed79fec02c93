//! probe: one connection, one round trip of a small random payload, within `--timeout`.
//!
//! Meant for a container HEALTHCHECK, so it needs nothing from the filesystem: no `/etc`
//! (an IP literal is not resolved at all; a name is resolved on a helper thread that is
//! abandoned at the deadline), no `/dev/urandom` (the payload is seeded from the clock and
//! the pid), and every blocking call is bounded by what is left of `--timeout`.
//!
//! Without an explicit `--addr`, a refused connect to the default 127.0.0.1:$PORT falls back
//! to the one port something listens on in this network namespace, from `/proc/net/tcp` and
//! `tcp6`: so `docker run IMAGE --port 9000` stays healthy although the image sets PORT=8080.
//! Without /proc (an empty root), the refusal is reported as it is.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::pattern::{ByteStream, mix};
use crate::tls::Tls;

const PAYLOAD: usize = 32;

/// Resolves `addr` by `deadline`: a `SocketAddr` literal directly, a name on a helper thread.
pub fn resolve(addr: &str, deadline: Instant) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (tx, rx) = mpsc::channel();
    let name = addr.to_owned();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(|e| format!("resolve {addr}: spawn: {e}"))?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(format!("resolve {addr}: no addresses")),
        Ok(Err(e)) => Err(format!("resolve {addr}: {e}")),
        Err(_) => Err(format!("resolve {addr}: timed out")),
    }
}

fn remaining(deadline: Instant, what: &str) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(format!("timed out before {what}"))
    } else {
        Ok(left)
    }
}

/// Why a round trip failed; `refused`: the connect was refused (nothing listens there).
pub struct Failure {
    msg: String,
    refused: bool,
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure {
            msg,
            refused: false,
        }
    }
}

/// One round trip to `addr` (over TLS with `tls`: handshake included); returns its latency
/// (connect → last echoed byte).
pub fn round_trip(
    addr: SocketAddr,
    deadline: Instant,
    tls: Option<&Tls>,
) -> Result<Duration, Failure> {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut payload = [0u8; PAYLOAD];
    ByteStream::new(mix(seed ^ u64::from(std::process::id()))).fill(&mut payload);

    let t0 = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, remaining(deadline, "connect")?).map_err(|e| {
            Failure {
                msg: format!("connect: {e}"),
                refused: e.kind() == io::ErrorKind::ConnectionRefused,
            }
        })?;
    let _ = s.set_nodelay(true);
    let mut client = match tls {
        Some(t) => Some(t.connect().map_err(|e| format!("TLS client: {e}"))?),
        None => None,
    };
    // Timeouts are socket options: set through a second handle while `stream` borrows `s`.
    let sock = s.try_clone().map_err(|e| format!("socket: {e}"))?;
    // A blocking socket: rustls's Stream does the handshake inside the first write/read.
    let mut stream: Box<dyn ReadWrite> = match &mut client {
        Some(c) => Box::new(rustls::Stream::new(c, &mut s)),
        None => Box::new(&mut s),
    };
    sock.set_write_timeout(Some(remaining(deadline, "write")?))
        .and_then(|()| stream.write_all(&payload))
        .and_then(|()| stream.flush())
        .map_err(|e| format!("write: {}", timeout_msg(&e)))?;
    let mut echo = [0u8; PAYLOAD];
    let mut got = 0;
    while got < PAYLOAD {
        let n = sock
            .set_read_timeout(Some(remaining(deadline, "the echo arrived")?))
            .and_then(|()| stream.read(&mut echo[got..]))
            .map_err(|e| format!("read after {got} of {PAYLOAD} bytes: {}", timeout_msg(&e)))?;
        if n == 0 {
            return Err(format!("server closed after echoing {got} of {PAYLOAD} bytes").into());
        }
        if let Some(at) = (got..got + n).find(|&i| echo[i] != payload[i]) {
            return Err(format!(
                "byte {at} sent 0x{:02x}, echoed 0x{:02x}",
                payload[at], echo[at]
            )
            .into());
        }
        got += n;
    }
    Ok(t0.elapsed())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn timeout_msg(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// What [`run`] did.
pub struct Outcome {
    /// The address probed (the last one tried).
    pub addr: String,
    /// Set when `addr` was discovered: the default address that refused.
    pub instead_of: Option<String>,
    pub result: Result<Duration, String>,
}

/// Resolves and tries each address in turn until one round trip succeeds or time runs out.
/// With `discover` (no explicit `--addr`), a refused connect falls back to [`discover_port`].
pub fn run(addr: &str, discover: bool, timeout: Duration, tls: Option<&Tls>) -> Outcome {
    let deadline = Instant::now() + timeout;
    let plain = |addr: String, result| Outcome {
        addr,
        instead_of: None,
        result,
    };
    let addrs = match resolve(addr, deadline) {
        Ok(a) => a,
        Err(e) => return plain(addr.to_owned(), Err(e)),
    };
    let mut last = (addr.to_owned(), Err("no address tried".to_owned().into()));
    for a in addrs {
        let r = round_trip(a, deadline, tls);
        let ok = r.is_ok();
        last = (a.to_string(), r);
        if ok || Instant::now() >= deadline {
            break;
        }
    }
    let (used, result) = last;
    let refused = matches!(&result, Err(f) if f.refused);
    let result = result.map_err(|f| f.msg);
    match (discover && refused)
        .then(|| discover_port(deadline))
        .flatten()
    {
        Some(Ok(found)) => Outcome {
            addr: found.to_string(),
            instead_of: Some(used),
            result: round_trip(found, deadline, tls).map_err(|f| f.msg),
        },
        Some(Err(why)) => plain(used, result.map_err(|e| format!("{e}; {why}"))),
        None => plain(used, result),
    }
}

/// The one port something listens on in this network namespace (a container's own), from
/// `/proc/net/tcp` and `tcp6`, on 127.0.0.1 if a v4 listener is on 0.0.0.0 or 127.0.0.1,
/// else on [::1]. An error names what was found instead; None if neither file is readable.
fn discover_port(deadline: Instant) -> Option<Result<SocketAddr, String>> {
    let mut found = Vec::new();
    let mut readable = false;
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = File::open(path) else {
            continue;
        };
        readable = true;
        match listening(BufReader::new(table), deadline) {
            Ok(l) => found.extend(l),
            Err(e) => return Some(Err(format!("discovery: {path}: {e}"))),
        }
    }
    if !readable {
        return None;
    }
    let mut ports: Vec<u16> = found.iter().map(|&(port, _)| port).collect();
    ports.sort_unstable();
    ports.dedup();
    let ip: IpAddr = if found.iter().any(|&(_, v4_local)| v4_local) {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    Some(match ports[..] {
        [port] => Ok(SocketAddr::new(ip, port)),
        [] => Err("discovery: no listening port".into()),
        _ => {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            Err(format!(
                "discovery: several listening ports: {}",
                list.join(", ")
            ))
        }
    })
}

/// The LISTEN entries of a `/proc/net/tcp` or `tcp6` table: each one's port, and whether it
/// is a v4 socket on 0.0.0.0 or 127.0.0.1. Tables can be long (every TIME_WAIT is a line),
/// hence the deadline.
fn listening(table: impl BufRead, deadline: Instant) -> Result<Vec<(u16, bool)>, String> {
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let line = line.map_err(|e| e.to_string())?;
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        // "sl local_address rem_address st ...": "0: 0100007F:1F90 00000000:0000 0A ..."
        let mut fields = line.split_whitespace();
        let (Some(local), Some("0A")) = (fields.nth(1), fields.nth(1)) else {
            continue;
        };
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        // A v4 address is the in-memory (network order) u32 printed as a native integer.
        let v4_local = ip.len() == 8
            && u32::from_str_radix(ip, 16).is_ok_and(|n| {
                let a = Ipv4Addr::from(n.to_ne_bytes());
                a.is_unspecified() || a == Ipv4Addr::LOCALHOST
            });
        found.push((port, v4_local));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_keeps_only_listen_entries() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1063 1 0000000000000000 100 0 0 10 0
   1: 0200000A:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 8434 1 0000000000000000 100 0 0 10 0
   2: 0100007F:D447 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 8435 1 0000000000000000 20 4 30 10 -1
";
        let later = Instant::now() + Duration::from_secs(60);
        // 0.0.0.0:8080 (reached on 127.0.0.1), 10.0.0.2:9000 (not); the ESTABLISHED one is not a listener.
        assert_eq!(
            listening(tcp.as_bytes(), later),
            Ok(vec![(8080, true), (9000, false)])
        );
        // [::]:8080 in tcp6 is not a v4 socket, though its 32 zero digits parse as a u32.
        let tcp6 = "  sl  local_address                         remote_address                        st ...
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1064 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening(tcp6.as_bytes(), later), Ok(vec![(8080, false)]));
    }
}
