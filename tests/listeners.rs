//! Listener setup: the dual-stack default.

mod common;

use std::net::{Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Listening sockets on `port` in one of /proc/net/tcp{,6}.
fn listening(table: &str, port: u16) -> usize {
    let port = format!(":{port:04X}");
    std::fs::read_to_string(table)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
        .count()
}

#[test]
fn no_host_listens_dual_stack_one_socket_per_worker() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 here (the server falls back to 0.0.0.0)");
        return;
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["--port", "0", "--maxListeners", "2"]);
    let srv = ServerProc::spawn(cmd);
    assert_eq!(
        srv.addr.ip(),
        Ipv6Addr::UNSPECIFIED,
        "startup line: {}",
        srv.stderr()
    );
    // (The address comes from the startup line; the log copy may lag it by a moment.)
    let line = format!("listening on [::]:{}", srv.addr.port());
    assert!(wait_until(Duration::from_secs(5), || srv
        .stderr()
        .contains(&line)));
    let port = srv.addr.port();
    for (addr, tag) in [
        (SocketAddr::from(([127, 0, 0, 1], port)), &b"over IPv4"[..]),
        (
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            &b"over IPv6"[..],
        ),
    ] {
        for _ in 0..4 {
            assert_eq!(echo_round(addr, tag), tag, "via {addr}");
        }
    }
    // One v6 socket per worker serves both families: no separate IPv4 listener.
    assert_eq!(listening("/proc/net/tcp6", port), 2);
    assert_eq!(listening("/proc/net/tcp", port), 0);
}

#[test]
fn explicit_host_is_used_as_given() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    assert_eq!(srv.addr.ip().to_string(), "127.0.0.1");
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, srv.addr.port()));
    assert!(
        std::net::TcpStream::connect(v6).is_err(),
        "--host 127.0.0.1 must not accept IPv6"
    );
}
