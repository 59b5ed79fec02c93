//! Echo correctness against the real binary: payload edge cases, many clients, bulk streams,
//! slow readers (backpressure), half-close and resets.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const BUF: usize = 64 * 1024;

#[test]
fn payload_edge_cases_come_back_byte_exact() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![42],
        all_bytes,
        pattern(BUF - 1, 1),
        pattern(BUF, 2),
        pattern(BUF + 1, 3),
        pattern(7 * 1024 * 1024 + 3, 4),
    ];
    for data in cases {
        let got = echo_round(srv.addr, &data);
        assert_eq!(
            got.len(),
            data.len(),
            "length of echo for {} bytes",
            data.len()
        );
        assert!(got == data, "echo of {} bytes differs", data.len());
    }
}

#[test]
fn thousand_concurrent_clients() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| connect(srv.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i} says hello\n").as_bytes())
            .unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("client {i} says hello\n");
        assert_eq!(read_n(c, want.len()), want.as_bytes(), "client {i}");
    }
    // Every client is still served after the first round.
    for (i, c) in clients.iter_mut().enumerate().rev() {
        c.write_all(&[i as u8]).unwrap();
        assert_eq!(read_n(c, 1), [i as u8]);
    }
}

#[test]
fn bulk_stream_with_concurrent_read_and_write() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    let data = pattern(64 * 1024 * 1024, 9);
    let got = echo_round(srv.addr, &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bulk echo differs");
}

/// A client that writes tens of MiB before it reads anything: the server must not lose a
/// byte, must not disconnect it, and its memory must stay bounded (it stops reading).
#[test]
fn slow_reader_gets_everything_and_server_memory_stays_bounded() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    slow_reader_round(&srv, 32 << 20);
}

/// Writes `size` bytes and half-closes without reading until the writer is blocked (the
/// pipeline full end to end); checks the server's RSS grew by less than 4 MiB meanwhile, then
/// reads the whole echo and compares it.
fn slow_reader_round(srv: &ServerProc, size: usize) {
    let rss_before = srv.rss_kib();
    let data = Arc::new(pattern(size, size as u64));
    let s = connect(srv.addr);
    let mut w = s.try_clone().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let (d, wr) = (data.clone(), written.clone());
    let writer = std::thread::spawn(move || {
        for chunk in d.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
            wr.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    assert!(
        wait_stalled(&written, Duration::from_secs(20)),
        "the writer never blocked: is backpressure working?"
    );
    assert!(
        written.load(Ordering::Relaxed) < size,
        "all {size} bytes fit in buffers?"
    );
    let growth = srv.rss_kib().saturating_sub(rss_before);
    assert!(
        growth < 4 * 1024,
        "server RSS grew by {growth} KiB with a non-reading client"
    );
    let mut got = Vec::with_capacity(size);
    (&s).read_to_end(&mut got)
        .expect("the whole echo, then EOF");
    writer.join().unwrap();
    assert_eq!(got.len(), size);
    assert!(got == *data, "slow-reader echo differs");
}

#[test]
fn half_close_gets_the_whole_echo_then_eof() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    for size in [1, 1000, BUF + 1, 3 * 1024 * 1024] {
        let data = pattern(size, size as u64);
        let mut s = connect(srv.addr);
        let writer = send_then_half_close(&s, &data);
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("echo then EOF");
        writer.join().unwrap();
        assert!(got == data, "half-close echo of {size} bytes differs");
    }
}

#[test]
fn reset_mid_stream_hurts_nobody_else_and_leaks_nothing() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    let baseline = srv.fd_count();
    let mut bystander = connect(srv.addr);
    for i in 0..50 {
        let s = socket2::Socket::from(connect(srv.addr));
        s.set_linger(Some(Duration::ZERO)).unwrap(); // close(2) sends RST
        let mut t: TcpStream = s.into();
        t.write_all(&pattern(200_000, i)).unwrap();
        drop(t);
        bystander.write_all(&[i as u8; 3]).unwrap();
        assert_eq!(read_n(&mut bystander, 3), [i as u8; 3]);
    }
    drop(bystander);
    assert!(
        wait_until(Duration::from_secs(10), || srv.fd_count() == baseline),
        "descriptors: {} now, {baseline} before",
        srv.fd_count()
    );
}

#[test]
fn one_listening_socket_per_worker() {
    for n in [1usize, 3] {
        let srv = ServerProc::start(&["--maxListeners", &n.to_string()]);
        assert_eq!(
            srv.listening_sockets(),
            n,
            "listening sockets for --maxListeners {n}"
        );
        assert!(
            srv.stderr().contains(&format!("with {n} worker(s)")),
            "startup line: {}",
            srv.stderr()
        );
    }
}

#[test]
fn ipv6_loopback_works() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--host", "::1", "--port", "0", "--maxListeners", "2"]);
    let srv = ServerProc::spawn(cmd);
    assert!(srv.addr.is_ipv6());
    assert_eq!(echo_round(srv.addr, b"over v6"), b"over v6");
    // `::` listens on both families (unless the system sets net.ipv6.bindv6only).
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--host", "::", "--port", "0", "--maxListeners", "2"]);
    let any = ServerProc::spawn(cmd);
    let port = any.addr.port();
    assert_eq!(
        echo_round(([0u16, 0, 0, 0, 0, 0, 0, 1], port).into(), b"v6"),
        b"v6"
    );
    let v6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    if v6only.trim() == "0" {
        assert_eq!(echo_round(([127, 0, 0, 1], port).into(), b"v4"), b"v4");
    }
}

/// Data and FIN that arrive together (here: before the server even accepts) must still get
/// the echo and then EOF: after EPOLLRDHUP a short read is not the end, EOF is.
#[test]
fn data_and_fin_in_one_edge_get_echo_then_eof() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    let clients: Vec<TcpStream> = (0..200u32)
        .map(|i| {
            let mut c = connect(srv.addr);
            c.write_all(&i.to_be_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();
    for (i, mut c) in clients.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("echo then EOF");
        assert_eq!(got, (i as u32).to_be_bytes(), "client {i}");
    }
}

/// A client that half-closes while much of its echo is still pending in the server (it has
/// not read yet, and its receive buffer is tiny) must still get all of it before EOF.
#[test]
fn half_close_with_echo_still_pending_gets_all_of_it() {
    let srv = ServerProc::start(&["--maxListeners", "1", "--max-pending", "16M"]);
    let data = pattern(4 << 20, 21);
    let mut s = connect_small_window(srv.addr);
    // All 4 MiB go out and the write side is shut before a single byte is read back.
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("echo then EOF");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs");
}

/// `--splice` moves bulk streams socket → pipe → socket; what the socket does not take goes
/// back to pending output. The same guarantees hold: exact bytes, backpressure, half-close.
#[test]
fn splice_mode_keeps_every_guarantee() {
    let srv = ServerProc::start(&["--maxListeners", "1", "--splice"]);
    for size in [0, 1, BUF - 1, BUF, BUF + 1, 9 << 20] {
        let data = pattern(size, size as u64 + 100);
        assert!(
            echo_round(srv.addr, &data) == data,
            "splice echo of {size} bytes"
        );
    }
    // A slow reader: everything comes back, memory stays bounded.
    slow_reader_round(&srv, 24 << 20);
}
