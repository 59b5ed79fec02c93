//! The library used in-process, as an embedding program or a test harness would: start on
//! port 0, echo, read the per-worker stats, shut down through the handle.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use epoll_echo::{Config, Server};

#[test]
fn start_echo_stats_and_shutdown_in_process() {
    let config = Config {
        host: "127.0.0.1".parse().ok(),
        port: 0,
        workers: 2,
        ..Config::default()
    };
    let server = Server::new(config).unwrap();
    let handle = server.shutdown_handle();
    let running = server.start().unwrap();
    let addr = running.local_addr();
    assert_ne!(addr.port(), 0);

    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"in-process").unwrap();
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"in-process");

    // Stats are published once per loop turn; the echo above completed a turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running.stats().bytes_out < 10 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let s = running.stats();
    assert_eq!(
        (s.accepted, s.active, s.bytes_in, s.bytes_out),
        (1, 1, 10, 10)
    );

    assert!(handle.shutdown(), "first shutdown request");
    assert!(!handle.shutdown(), "second request is reported as repeated");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "idle client sees EOF");
    let summary = running.wait().unwrap();
    assert_eq!(summary.totals.accepted, 1);
    assert_eq!(summary.totals.active, 0);
}

#[test]
fn a_failed_bind_leaves_no_worker_running() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config {
        host: "127.0.0.1".parse().ok(),
        port: taken.local_addr().unwrap().port(),
        workers: 3,
        ..Config::default()
    };
    let err = match Server::new(config).unwrap().start() {
        Ok(_) => panic!("bound a port that is in use"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(err.to_string().contains("worker 0"), "{err}");
}

/// CPU time (user + system) of this process's threads whose name starts with `worker-`.
fn workers_cpu() -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("worker-") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    Duration::from_millis(ticks * 10)
}

#[test]
fn repeated_shutdown_requests_do_not_spin_the_draining_workers() {
    let config = Config {
        host: "127.0.0.1".parse().ok(),
        port: 0,
        workers: 1,
        shutdown_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let server = Server::new(config).unwrap();
    let handle = server.shutdown_handle();
    let running = server.start().unwrap();
    // A client that never reads keeps the worker draining after shutdown.
    let mut c = TcpStream::connect(running.local_addr()).unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 65536];
    let mut stalled = 0;
    while stalled < 50 {
        match c.write(&chunk) {
            Ok(n) => {
                assert!(n > 0);
                stalled = 0;
            }
            Err(_) => {
                stalled += 1;
                std::thread::sleep(Duration::from_millis(2)); // the client's pacing
            }
        }
    }
    let addr = running.local_addr();
    handle.shutdown();
    // Once the listener is closed the worker is draining; then ask again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
    assert!(!handle.shutdown());
    let before = workers_cpu();
    let t = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500)); // measurement window, not sync
    let used = workers_cpu().saturating_sub(before);
    assert!(
        used < t.elapsed() / 5,
        "draining worker burned {used:?} CPU in {:?}",
        t.elapsed()
    );
    drop(c);
    running.wait().unwrap();
}

#[test]
fn dropping_the_running_server_shuts_its_workers_down() {
    let config = Config {
        host: "127.0.0.1".parse().ok(),
        port: 0,
        workers: 2,
        ..Config::default()
    };
    let running = Server::new(config).unwrap().start().unwrap();
    let addr = running.local_addr();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    // Without `wait`: the drop drains and joins the workers.
    drop(running);
    assert_eq!(c.read(&mut b).expect("a FIN, not a hang"), 0);
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}
