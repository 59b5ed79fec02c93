//! probe: one connection, one round trip of a small random payload, within `--timeout`.
//!
//! Meant for a container HEALTHCHECK, so it needs nothing from the filesystem: no `/etc`
//! (an IP literal is not resolved at all; a name is resolved on a helper thread that is
//! abandoned at the deadline), no `/dev/urandom` (the payload is seeded from the clock and
//! the pid), and every blocking call is bounded by what is left of `--timeout`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::pattern::{ByteStream, mix};

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

/// One round trip to `addr`; returns its latency (connect → last echoed byte).
pub fn round_trip(addr: SocketAddr, deadline: Instant) -> Result<Duration, String> {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut payload = [0u8; PAYLOAD];
    ByteStream::new(mix(seed ^ u64::from(std::process::id()))).fill(&mut payload);

    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, remaining(deadline, "connect")?)
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(remaining(deadline, "write")?))
        .and_then(|()| s.write_all(&payload))
        .map_err(|e| format!("write: {}", timeout_msg(&e)))?;
    let mut echo = [0u8; PAYLOAD];
    let mut got = 0;
    while got < PAYLOAD {
        let n = s
            .set_read_timeout(Some(remaining(deadline, "the echo arrived")?))
            .and_then(|()| s.read(&mut echo[got..]))
            .map_err(|e| format!("read after {got} of {PAYLOAD} bytes: {}", timeout_msg(&e)))?;
        if n == 0 {
            return Err(format!(
                "server closed after echoing {got} of {PAYLOAD} bytes"
            ));
        }
        if let Some(at) = (got..got + n).find(|&i| echo[i] != payload[i]) {
            return Err(format!(
                "byte {at} sent 0x{:02x}, echoed 0x{:02x}",
                payload[at], echo[at]
            ));
        }
        got += n;
    }
    Ok(t0.elapsed())
}

fn timeout_msg(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Resolves and tries each address in turn until one round trip succeeds or time runs out.
/// Returns the address used and the latency, or the last failure.
pub fn run(addr: &str, timeout: Duration) -> (String, Result<Duration, String>) {
    let deadline = Instant::now() + timeout;
    let addrs = match resolve(addr, deadline) {
        Ok(a) => a,
        Err(e) => return (addr.to_owned(), Err(e)),
    };
    let mut last = (addr.to_owned(), Err("no address tried".to_owned()));
    for a in addrs {
        let r = round_trip(a, deadline);
        let ok = r.is_ok();
        last = (a.to_string(), r);
        if ok || Instant::now() >= deadline {
            break;
        }
    }
    last
}
