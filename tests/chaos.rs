//! A seeded randomized mix of client behaviours against one server: well-behaved clients,
//! dribblers, half-closers, slow readers, resets and vanishing clients. Every well-behaved
//! client's echo must be byte-exact, and the server's descriptors return to their baseline.
//! Reproduce a failure with `CHAOS_SEED=<seed> cargo test --test chaos`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::*;

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Writes random-sized chunks while reading concurrently, then half-closes.
    Streamer,
    /// Sends one byte at a time, reading each echo.
    Dribbler,
    /// Writes everything, half-closes, then reads to EOF.
    HalfCloser,
    /// Writes up to a few MiB before reading anything.
    SlowReader,
    /// Writes, then resets the connection (SO_LINGER 0).
    Resetter,
    /// Writes, then disappears without reading.
    Vanisher,
}

fn run_client(addr: SocketAddr, behaviour: Behaviour, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let s = connect(addr);
    match behaviour {
        Behaviour::Streamer | Behaviour::SlowReader => {
            let max = if matches!(behaviour, Behaviour::SlowReader) {
                3 << 20
            } else {
                300_000
            };
            let data = {
                let n = 1 + rng.below(max) as usize;
                rng.bytes(n)
            };
            let mut w = s.try_clone().unwrap();
            let d = data.clone();
            let mut wrng = Rng(seed ^ 0xABCD | 1);
            let writer = std::thread::spawn(move || {
                let mut off = 0;
                while off < d.len() {
                    let n = (1 + wrng.below(70_000) as usize).min(d.len() - off);
                    w.write_all(&d[off..off + n]).unwrap();
                    off += n;
                }
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut got = Vec::new();
            (&s).read_to_end(&mut got)
                .map_err(|e| format!("read: {e}"))?;
            writer.join().map_err(|_| "writer failed".to_string())?;
            if got != data {
                return Err(format!(
                    "echo differs: {} of {} bytes back",
                    got.len(),
                    data.len()
                ));
            }
        }
        Behaviour::Dribbler => {
            let mut s = s;
            for b in rng.bytes(20) {
                s.write_all(&[b]).map_err(|e| e.to_string())?;
                let mut one = [0u8];
                s.read_exact(&mut one)
                    .map_err(|e| format!("dribble read: {e}"))?;
                if one[0] != b {
                    return Err(format!("dribbled {b} came back as {}", one[0]));
                }
            }
        }
        Behaviour::HalfCloser => {
            let data = {
                let n = 1 + rng.below(100_000) as usize;
                rng.bytes(n)
            };
            let mut s = s;
            s.write_all(&data).map_err(|e| e.to_string())?;
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
            if got != data {
                return Err(format!(
                    "half-close echo differs: {} of {}",
                    got.len(),
                    data.len()
                ));
            }
        }
        Behaviour::Resetter => {
            let data = {
                let n = rng.below(500_000) as usize;
                rng.bytes(n)
            };
            let _ = (&s).write_all(&data);
            let s = socket2::Socket::from(s);
            s.set_linger(Some(Duration::ZERO)).unwrap();
        }
        Behaviour::Vanisher => {
            let data = {
                let n = rng.below(200_000) as usize;
                rng.bytes(n)
            };
            let _ = (&s).write_all(&data);
        }
    }
    Ok(())
}

fn seed(default: u64) -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("CHAOS_SEED={seed}");
    seed
}

#[test]
fn randomized_client_mix_keeps_every_echo_exact() {
    run_mix(
        &["--maxListeners", "2", "--max-pending", "64K"],
        seed(20261121),
    );
}

#[test]
fn randomized_client_mix_with_splice() {
    run_mix(
        &["--maxListeners", "2", "--max-pending", "64K", "--splice"],
        seed(7),
    );
}

fn run_mix(args: &[&str], seed: u64) {
    let srv = ServerProc::start(args);
    let baseline = srv.fd_count();
    let mut rng = Rng(seed | 1);
    let behaviours = [
        Behaviour::Streamer,
        Behaviour::Dribbler,
        Behaviour::HalfCloser,
        Behaviour::SlowReader,
        Behaviour::Resetter,
        Behaviour::Vanisher,
    ];
    let clients: Vec<(Behaviour, u64)> = (0..300)
        .map(|_| (behaviours[rng.below(6) as usize], rng.next()))
        .collect();
    let addr = srv.addr;
    let handles: Vec<_> = clients
        .iter()
        .map(|&(b, s)| std::thread::spawn(move || (b, s, run_client(addr, b, s))))
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        let (b, s, r) = h.join().expect("client thread");
        if let Err(e) = r {
            failures.push(format!("{b:?} (seed {s}): {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        wait_until(Duration::from_secs(15), || srv.fd_count() == baseline),
        "seed {seed}: descriptors {} after, {baseline} before",
        srv.fd_count()
    );
    // The server still serves after all that.
    assert_eq!(echo_round(srv.addr, b"still here"), b"still here");
}
