//! The library used in-process, as an embedding program or a test harness would: start on
//! port 0, echo, read the per-worker stats, shut down through the handle.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use epoll_echo::{Config, Server};

#[test]
fn start_echo_stats_and_shutdown_in_process() {
    let config = Config {
        host: "127.0.0.1".parse().unwrap(),
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
        host: "127.0.0.1".parse().unwrap(),
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
