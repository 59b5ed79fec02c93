//! Graceful shutdown on SIGTERM/SIGINT, against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn idle_clients_see_eof_and_server_exits_zero() {
    let mut srv = ServerProc::start(&["--maxListeners", "2"]);
    let mut clients: Vec<_> = (0..20).map(|_| connect(srv.addr)).collect();
    for c in &mut clients {
        c.write_all(b"ping").unwrap();
        assert_eq!(read_n(c, 4), b"ping");
    }
    let t = Instant::now();
    srv.signal("TERM");
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        assert_eq!(
            c.read(&mut b).expect("clean FIN, not a reset"),
            0,
            "client {i}"
        );
    }
    let status = srv.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "idle shutdown took {:?}",
        t.elapsed()
    );
    let err = srv.stderr();
    assert!(
        err.contains("shutdown: accepted=20 "),
        "summary line: {err}"
    );
}

#[test]
fn pending_echo_is_delivered_after_sigterm() {
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "1",
        "--shutdown-timeout",
        "20s",
        "--max-pending",
        "16M",
    ]);
    let data = pattern(6 * 1024 * 1024, 77);
    // A tiny receive window: most of the echo waits in the server, unsent, at SIGTERM.
    let mut s = connect_small_window(srv.addr);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    srv.signal("TERM");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the whole echo, then EOF");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs after shutdown began");
    srv.assert_exit(0, Duration::from_secs(10));
}

/// A client still streaming when SIGTERM arrives keeps being served while it is busy.
#[test]
fn a_busy_client_is_served_through_shutdown() {
    let mut srv = ServerProc::start(&["--maxListeners", "1", "--shutdown-timeout", "20s"]);
    let data = pattern(6 * 1024 * 1024, 78);
    let mut s = connect(srv.addr);
    let writer = send_then_half_close(&s, &data);
    let first = read_n(&mut s, 1000);
    srv.signal("TERM");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the rest of the echo, then EOF");
    writer.join().unwrap();
    let mut got = first;
    got.extend(rest);
    assert!(got == data, "echo differs after shutdown began");
    srv.assert_exit(0, Duration::from_secs(10));
}

#[test]
fn listener_closes_at_once_on_shutdown() {
    let mut srv = ServerProc::start(&["--maxListeners", "2", "--shutdown-timeout", "20s"]);
    // A busy client keeps the server draining.
    let s = connect(srv.addr);
    (&s).write_all(&pattern(4 * 1024 * 1024, 1)).ok();
    srv.signal("INT");
    assert!(
        wait_until(Duration::from_secs(5), || srv.listening_sockets() == 0),
        "listeners still open while draining"
    );
    assert!(
        std::net::TcpStream::connect(srv.addr).is_err(),
        "new connections refused"
    );
    drop(s);
    srv.assert_exit(0, Duration::from_secs(10));
}

#[test]
fn shutdown_timeout_closes_stuck_clients() {
    let mut srv = ServerProc::start(&["--maxListeners", "1", "--shutdown-timeout", "300ms"]);
    let (s, writer) = stuck_client(srv.addr);
    let t = Instant::now();
    srv.signal("TERM");
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the timeout");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "did not wait for the timeout"
    );
    drop(s);
    writer.join().unwrap();
}

#[test]
fn second_signal_exits_at_once_with_130() {
    let mut srv = ServerProc::start(&["--maxListeners", "1", "--shutdown-timeout", "60s"]);
    let (s, writer) = stuck_client(srv.addr);
    srv.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .contains("signal received")),
        "first signal not seen"
    );
    srv.signal("TERM");
    let status = srv
        .wait_exit(Duration::from_secs(5))
        .expect("exits at once");
    assert_eq!(status.code(), Some(130));
    drop(s);
    writer.join().unwrap();
}

#[test]
fn signal_right_at_startup_still_shuts_down_gracefully() {
    for _ in 0..5 {
        let mut srv = ServerProc::start(&["--maxListeners", "2"]);
        srv.signal("TERM");
        srv.assert_exit(0, Duration::from_secs(5));
    }
}

/// A client that keeps talking (a message every 20 ms) is busy, whatever instant SIGTERM
/// arrives: every message sent after the signal is echoed, and it gets EOF only once it has
/// gone quiet.
#[test]
fn a_client_talking_every_20ms_is_served_until_it_goes_quiet() {
    for attempt in 0..3 {
        let mut srv = ServerProc::start(&["--maxListeners", "1", "--shutdown-timeout", "20s"]);
        let mut s = connect(srv.addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let talk = |s: &mut TcpStream, i: u32| {
            let msg = format!("message {i:05}\n");
            s.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("attempt {attempt}, message {i}: {e}"));
            assert_eq!(got, msg.as_bytes(), "attempt {attempt}, message {i}");
            std::thread::sleep(Duration::from_millis(20)); // the client's pace, not sync
        };
        for i in 0..10 {
            talk(&mut s, i);
        }
        srv.signal("TERM");
        // 1.5 s of talking after the signal: a quiet period is per connection, not per tick.
        let t = Instant::now();
        let mut i = 10;
        while t.elapsed() < Duration::from_millis(1500) {
            talk(&mut s, i);
            i += 1;
        }
        // Now quiet: EOF comes, without a reset, and the server exits 0.
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).expect("FIN after going quiet"), 0);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "closed {:?} after the signal",
            t.elapsed()
        );
        srv.assert_exit(0, Duration::from_secs(5));
    }
}
