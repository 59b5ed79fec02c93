//! Hardening against the real binary: connection limits, idle timeout, descriptor exhaustion,
//! memory bound with non-reading clients, and descriptor leaks.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn ping(s: &mut TcpStream, tag: u8) {
    s.write_all(&[tag; 5]).unwrap();
    assert_eq!(read_n(s, 5), [tag; 5]);
}

#[test]
fn max_connections_admits_refuses_promptly_and_recovers() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--max-connections", "3"]);
    let mut admitted: Vec<TcpStream> = (0..3).map(|_| connect(srv.addr)).collect();
    for (i, c) in admitted.iter_mut().enumerate() {
        ping(c, i as u8);
    }
    let t = Instant::now();
    for _ in 0..5 {
        let mut extra = connect(srv.addr);
        assert!(
            sees_close(&mut extra, Duration::from_secs(5)),
            "extra client not closed"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "refusals took {:?}",
        t.elapsed()
    );
    for (i, c) in admitted.iter_mut().enumerate() {
        ping(c, 10 + i as u8); // the admitted ones are unaffected
    }
    assert!(
        wait_until(Duration::from_secs(5), || srv.stderr().contains("refused")),
        "no refusal warning: {}",
        srv.stderr()
    );
    let warnings = srv.stderr().matches("refused").count();
    assert!(
        warnings <= 2,
        "refusal warning not rate-limited: {}",
        srv.stderr()
    );
    // Room comes back when a client leaves (the close is processed asynchronously).
    drop(admitted.pop());
    let back = wait_until(Duration::from_secs(5), || {
        let mut c = connect(srv.addr);
        c.write_all(b"again").is_ok() && {
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut b = [0u8; 5];
            std::io::Read::read_exact(&mut c, &mut b).is_ok() && &b == b"again"
        }
    });
    assert!(back, "a new client is not admitted after one left");
}

#[test]
fn idle_connections_are_closed_and_active_ones_kept() {
    let srv = ServerProc::start(&["--maxListeners", "1", "--idle-timeout", "1s"]);
    let mut idle = connect(srv.addr);
    ping(&mut idle, 1);
    let mut active = connect(srv.addr);
    let t = Instant::now();
    // Keep one client busy for 3 s: traffic every 200 ms.
    let mut i = 0u8;
    while t.elapsed() < Duration::from_millis(3000) {
        ping(&mut active, i);
        i = i.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(200)); // the client's pacing, not sync
    }
    ping(&mut active, 99);
    assert!(
        sees_close(&mut idle, Duration::from_secs(5)),
        "idle client still open"
    );
    let err = srv.stderr();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn idle_timeout_zero_disables_it() {
    let srv = ServerProc::start(&["--maxListeners", "1", "--idle-timeout", "0"]);
    let mut c = connect(srv.addr);
    ping(&mut c, 1);
    assert!(
        !sees_close(&mut c, Duration::from_millis(2500)),
        "closed although disabled"
    );
}

/// The server under `ulimit -n 64`, with a connection limit above what descriptors allow,
/// flooded: no crash, no busy loop, existing clients served, new ones served once
/// descriptors free up.
#[test]
fn descriptor_exhaustion_is_survived() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" --host 127.0.0.1 --port 0 --maxListeners 2 --max-connections 1000"#)
        .arg(BIN);
    let srv = ServerProc::spawn(cmd);
    assert!(
        srv.stderr().contains("--max-connections 1000 is above"),
        "no startup warning about the descriptor budget: {}",
        srv.stderr()
    );
    let mut early: Vec<TcpStream> = (0..5).map(|_| connect(srv.addr)).collect();
    for (i, c) in early.iter_mut().enumerate() {
        ping(c, i as u8);
    }
    let cpu_before = srv.cpu_time();
    let t = Instant::now();
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(srv.addr).ok())
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .contains("Too many open files")),
        "no exhaustion warning: {}",
        srv.stderr()
    );
    // Let the flood sit there for a while: the server must not spin meanwhile.
    std::thread::sleep(Duration::from_millis(1500)); // measurement window, not sync
    let cpu = srv.cpu_time().saturating_sub(cpu_before);
    let wall = t.elapsed();
    assert!(
        cpu < wall / 3,
        "server burned {cpu:?} CPU in {wall:?} while out of descriptors"
    );
    for (i, c) in early.iter_mut().enumerate() {
        ping(c, 50 + i as u8);
    }
    drop(flood);
    let recovered = wait_until(Duration::from_secs(10), || {
        let Ok(mut c) = TcpStream::connect(srv.addr) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 4];
        c.write_all(b"back").is_ok()
            && std::io::Read::read_exact(&mut c, &mut b).is_ok()
            && &b == b"back"
    });
    assert!(
        recovered,
        "new clients not served after descriptors freed up"
    );
    assert!(
        srv.stderr().matches("Too many open files").count() <= 12,
        "exhaustion warnings not rate-limited: {}",
        srv.stderr()
    );
}

#[test]
fn many_non_reading_clients_keep_memory_bounded() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--max-pending", "64K"]);
    let before = srv.rss_kib();
    let clients: Vec<TcpStream> = (0..40).map(|_| connect(srv.addr)).collect();
    let floods: Vec<_> = clients.iter().map(flood_without_reading).collect();
    let counters: Vec<_> = floods.iter().map(|(_, w)| &**w).collect();
    assert!(
        wait_all_stalled(&counters, Duration::from_secs(30)),
        "the flooders never all blocked"
    );
    let growth = srv.rss_kib().saturating_sub(before);
    // 40 × (64 KiB cap + one 64 KiB read) = 5 MiB at most in pending output.
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB for 40 non-reading clients"
    );
    for c in &clients {
        // Shuts the socket the writer threads share, so their blocked writes fail now.
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    for (h, _) in floods {
        h.join().unwrap();
    }
}

#[test]
fn descriptors_return_to_baseline() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    let baseline = srv.fd_count();
    {
        let mut cs: Vec<TcpStream> = (0..200).map(|_| connect(srv.addr)).collect();
        for (i, c) in cs.iter_mut().enumerate() {
            ping(c, i as u8);
        }
        // Half of them half-close, half just vanish.
        for (i, c) in cs.iter().enumerate() {
            if i % 2 == 0 {
                c.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
        assert!(wait_until(Duration::from_secs(5), || srv.fd_count() >= baseline + 100));
    }
    assert!(
        wait_until(Duration::from_secs(10), || srv.fd_count() == baseline),
        "descriptors: {} now, {baseline} before",
        srv.fd_count()
    );
}

/// The default `--max-connections` is the open-files limit minus what the server holds itself:
/// that reservation must count every descriptor a worker really holds (splice pipes included).
#[test]
fn the_descriptor_budget_counts_every_worker_descriptor() {
    for (flag, splice) in [
        ("--splice=off", false),
        ("--splice", true),
        ("--splice=auto", true),
    ] {
        let count =
            |workers: &str| ServerProc::start(&["--maxListeners", workers, flag]).fd_count() as u64;
        let one = count("1");
        let four = count("4");
        let per_worker = epoll_echo::worker::fds_per_worker(splice);
        assert_eq!(
            four - one,
            3 * per_worker,
            "splice={splice}: each worker holds {} descriptors, the budget reserves {per_worker}",
            (four - one) / 3
        );
        assert!(
            one - per_worker <= epoll_echo::server::FDS_FOR_PROCESS,
            "splice={splice}: {one} descriptors with one worker"
        );
    }
}
