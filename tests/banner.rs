//! `--banner TEXT` (issue 14) against the real binary: sent once to each new connection before
//! its echo, `{hostname}` and `{worker}` expanded, nothing extra without it, a banner larger
//! than the socket buffers still whole (the pending path), and with `--proxy-protocol` only
//! after the header.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim_end()
        .to_string()
}

/// Reads up to and including the first `\n`.
fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(
            s.read(&mut b).expect("read the banner"),
            1,
            "EOF in the banner"
        );
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Nothing more arrives within `wait` (a read timeout, not a sleep).
fn nothing_more(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    let r = s.read(&mut b);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    match r {
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        Ok(n) => panic!("unexpected {:?}", &b[..n]),
    }
}

#[test]
fn banner_then_echo_with_hostname_and_worker_expanded() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--banner",
        r"hello from {hostname}, worker {worker}\r\n",
    ]);
    let host = hostname();
    let mut workers = std::collections::HashSet::new();
    for i in 0..20u8 {
        let mut c = connect(srv.addr);
        let line = read_line(&mut c);
        let rest = line
            .strip_prefix(&format!("hello from {host}, worker "))
            .unwrap_or_else(|| panic!("{line:?}"));
        let w = rest
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("{line:?}"));
        assert!(w == "0" || w == "1", "{line:?}");
        workers.insert(w.to_string());
        c.write_all(&[i, b'\n']).unwrap();
        assert_eq!(read_n(&mut c, 2), [i, b'\n'], "then the echo");
        assert!(
            nothing_more(&mut c, Duration::from_millis(100)),
            "the banner comes once"
        );
    }
    assert!(!workers.is_empty());
}

#[test]
fn banner_from_the_environment_and_none_without_it() {
    let mut cmd = Command::new(BIN);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"])
        .env("BANNER", "ready\\n");
    let srv = ServerProc::spawn(cmd);
    let mut c = connect(srv.addr);
    assert_eq!(read_n(&mut c, 6), b"ready\n");
    c.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut c, 1), b"x");

    let plain = ServerProc::start(&["--maxListeners", "1"]);
    let mut c = connect(plain.addr);
    assert!(
        nothing_more(&mut c, Duration::from_millis(300)),
        "no banner without the flag"
    );
    c.write_all(b"abc").unwrap();
    assert_eq!(read_n(&mut c, 3), b"abc");
    assert!(nothing_more(&mut c, Duration::from_millis(100)));
}

#[test]
fn a_banner_larger_than_the_socket_buffers_arrives_whole_then_the_echo() {
    // 59,500 bytes expanded: far more than a 4 KiB receive window and the 16 KiB default
    // send buffer.
    let unit = "0123456789abcdef{worker}";
    let template = unit.repeat(3500);
    let srv = ServerProc::start(&["--maxListeners", "1", "--banner", &template]);
    let want = template.replace("{worker}", "0");
    let mut c = connect_small_window(srv.addr);
    // Send first: the echo must wait behind the banner, not overtake it.
    c.write_all(b"after the banner").unwrap();
    let got = read_n(&mut c, want.len());
    assert!(got == want.as_bytes(), "banner cut or reordered");
    assert_eq!(read_n(&mut c, 16), b"after the banner");
}

#[test]
fn with_proxy_protocol_the_banner_follows_the_header() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "1",
        "--proxy-protocol",
        "--banner",
        r"hi {worker}\n",
    ]);
    let mut c = connect(srv.addr);
    assert!(
        nothing_more(&mut c, Duration::from_millis(300)),
        "nothing before the header"
    );
    c.write_all(b"PROXY TCP4 198.18.0.9 127.0.0.1 5000 80\r\nping")
        .unwrap();
    assert_eq!(read_n(&mut c, 5), b"hi 0\n");
    assert_eq!(read_n(&mut c, 4), b"ping");
    // A bad header: closed, and not even the banner.
    let mut bad = connect(srv.addr);
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(sees_close(&mut bad, Duration::from_secs(5)));
}

#[test]
fn bad_banners_are_refused_at_startup() {
    for (banner, want) in [
        (r"oops\q".to_string(), r"unknown escape '\q'"),
        ("x".repeat(70_000), "more than the limit of 64K"),
    ] {
        let out = Command::new(BIN)
            .args(["--port", "0", "--banner", &banner])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--banner") && err.contains(want), "{err}");
    }
}
