//! Soak: hundreds of real clients of random shapes against the real binary with several
//! workers, for a bounded time. Every stream is checked byte for byte; afterwards the server's
//! descriptor count is back at its baseline and its RSS near it.
//!
//! `make soak` runs the long version against the release binary (`SOAK_SECS`, default 60;
//! `SOAK_CLIENTS`, default 300; `SOAK_SEED`). `soak_short` (a few seconds) runs in `make test`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    bytes: AtomicU64,
    failures: Mutex<Vec<String>>,
}

fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.connect(&addr.into())?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Reads exactly `want.len()` bytes and compares them.
fn expect(s: &mut TcpStream, want: &[u8], what: &str) -> Result<(), String> {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .map_err(|e| format!("{what}: read: {e}"))?;
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "{what}: echo differs at byte {at} of {}",
            want.len()
        ));
    }
    Ok(())
}

/// Writes `data` in random chunks from a thread while this one reads the echo; half-closes;
/// expects the exact echo, then EOF.
fn stream(s: TcpStream, data: Vec<u8>, rng: &mut Rng, what: &str) -> Result<u64, String> {
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut wrng = Rng(rng.next() | 1);
    let len = data.len();
    let d = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut off = 0;
        while off < d.len() {
            let n = (1 + wrng.below(100_000) as usize).min(d.len() - off);
            w.write_all(&d[off..off + n])?;
            off += n;
        }
        w.shutdown(Shutdown::Write)
    });
    let mut got = Vec::with_capacity(len);
    let r = (&s).read_to_end(&mut got);
    writer
        .join()
        .map_err(|_| format!("{what}: writer panicked"))?
        .map_err(|e| format!("{what}: write: {e}"))?;
    r.map_err(|e| format!("{what}: read: {e} after {} of {len}", got.len()))?;
    if got != data {
        return Err(format!(
            "{what}: {} of {len} bytes back, or different",
            got.len()
        ));
    }
    Ok(len as u64)
}

/// One connection of a random shape. Returns the bytes verified.
fn one_client(addr: SocketAddr, rng: &mut Rng, id: u64) -> Result<u64, String> {
    let shape = rng.below(8);
    let what = format!("client {id} shape {shape}");
    let sized = |rng: &mut Rng, max: u64| {
        let n = 1 + rng.below(max) as usize;
        rng.bytes(n)
    };
    match shape {
        // A stream of odd size, written in odd chunks, read concurrently.
        0 | 1 => {
            let s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            let data = sized(rng, 600_000);
            stream(s, data, rng, &what)
        }
        // A tiny receive window: the echo waits in the server (pending, backpressure).
        2 => {
            let s = connect_with_rcvbuf(addr, Some(2048)).map_err(|e| format!("{what}: {e}"))?;
            let data = sized(rng, 400_000);
            stream(s, data, rng, &what)
        }
        // Ping-pong with pauses.
        3 => {
            let mut s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            s.set_nodelay(true).unwrap();
            let mut n = 0;
            for _ in 0..1 + rng.below(30) {
                let msg = sized(rng, 2000);
                s.write_all(&msg).map_err(|e| format!("{what}: {e}"))?;
                expect(&mut s, &msg, &what)?;
                n += msg.len() as u64;
                if rng.below(4) == 0 {
                    // The client's think time, not synchronisation.
                    std::thread::sleep(Duration::from_millis(rng.below(60)));
                }
            }
            Ok(n)
        }
        // Urgent bytes in the middle of ordinary data.
        4 => {
            let mut s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            let mut n = 0;
            for _ in 0..1 + rng.below(5) {
                let a = sized(rng, 3000);
                let b = sized(rng, 3000);
                let u = rng.next() as u8;
                s.write_all(&a).map_err(|e| format!("{what}: {e}"))?;
                socket2::SockRef::from(&s)
                    .send_out_of_band(&[u])
                    .map_err(|e| format!("{what}: MSG_OOB: {e}"))?;
                s.write_all(&b).map_err(|e| format!("{what}: {e}"))?;
                let mut want = a;
                want.push(u);
                want.extend_from_slice(&b);
                expect(&mut s, &want, &what)?;
                n += want.len() as u64;
            }
            Ok(n)
        }
        // Everything, then half-close, then read it all.
        5 => {
            let mut s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            let data = sized(rng, 100_000);
            s.write_all(&data).map_err(|e| format!("{what}: {e}"))?;
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got)
                .map_err(|e| format!("{what}: read: {e}"))?;
            if got != data {
                return Err(format!("{what}: half-close echo differs"));
            }
            Ok(data.len() as u64)
        }
        // Writes, then resets (SO_LINGER 0) mid-stream.
        6 => {
            let s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            let data = sized(rng, 300_000);
            let _ = (&s).write_all(&data);
            let s = socket2::Socket::from(s);
            let _ = s.set_linger(Some(Duration::ZERO));
            Ok(0)
        }
        // Writes, pauses, writes again, vanishes without reading.
        _ => {
            let s = connect_with_rcvbuf(addr, None).map_err(|e| format!("{what}: {e}"))?;
            let _ = (&s).write_all(&sized(rng, 50_000));
            std::thread::sleep(Duration::from_millis(rng.below(200))); // think time
            match (&s).write_all(&sized(rng, 50_000)) {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(0),
                Err(e) => Err(format!("{what}: second write: {e}")),
            }
        }
    }
}

fn soak(secs: u64, clients: u64, seed: u64, server_args: &[&str]) {
    let srv = ServerProc::start(server_args);
    // Warm up every worker's allocator once, then take the baseline.
    for i in 0..16 {
        let data = pattern(300_000, i);
        assert!(echo_round(srv.addr, &data) == data);
    }
    let fds = srv.fd_count();
    let rss = srv.rss_kib();
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let tally = tally.clone();
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut rng = Rng((seed ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                let mut id = c;
                while Instant::now() < deadline {
                    match one_client(addr, &mut rng, id) {
                        Ok(n) => {
                            tally.bytes.fetch_add(n, Relaxed);
                        }
                        Err(e) => tally.failures.lock().unwrap().push(e),
                    }
                    tally.connections.fetch_add(1, Relaxed);
                    id += clients;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "SOAK_SEED={seed}: {} failure(s), first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        wait_until(Duration::from_secs(20), || srv.fd_count() == fds),
        "descriptors: {} after, {fds} before",
        srv.fd_count()
    );
    let after = srv.rss_kib();
    eprintln!(
        "soak SOAK_SEED={seed}: {} connections, {} MB verified in {secs}s by {clients} clients; fds {fds} → {}; RSS {rss} KiB → {after} KiB",
        tally.connections.load(Relaxed),
        tally.bytes.load(Relaxed) / 1_000_000,
        srv.fd_count()
    );
    // Freed pending buffers go back to the allocator; allow what its caches may keep.
    assert!(
        after <= rss + 16 * 1024,
        "RSS {after} KiB after the soak, {rss} KiB before"
    );
    assert!(tally.bytes.load(Relaxed) > 0, "nothing was verified");
}

fn seed() -> u64 {
    env("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

#[test]
fn soak_short() {
    soak(
        3,
        40,
        seed(),
        &["--maxListeners", "3", "--max-pending", "64K", "--splice"],
    );
}

#[test]
#[ignore = "long: run by make soak (SOAK_SECS, SOAK_CLIENTS, SOAK_SEED)"]
fn soak_long() {
    let secs = env("SOAK_SECS").unwrap_or(60);
    let clients = env("SOAK_CLIENTS").unwrap_or(300);
    let seed = seed();
    soak(
        secs,
        clients,
        seed,
        &["--maxListeners", "4", "--max-pending", "128K"],
    );
    soak(
        secs.div_ceil(3),
        clients,
        seed ^ 1,
        &["--maxListeners", "4", "--max-pending", "64K", "--splice"],
    );
}
