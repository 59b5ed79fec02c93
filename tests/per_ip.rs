//! Per-IP limits and the PROXY protocol against the real binary, clients from several loopback
//! source addresses (127.0.0.2, 127.0.0.3, …).
//!
//! The accept path applies the limits to the socket's peer; with `--proxy-protocol` the
//! connection's PROXY stage names the client and the limits apply to it at header time.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    try_connect_from(source, to).unwrap()
}

/// A connection the server may refuse: its reset can arrive before `connect` returns, which
/// then fails with ECONNRESET.
fn try_connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let source: IpAddr = source.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(source, 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Connects and echoes one byte; false if refused at any point (connect, send or read).
fn try_served(source: &str, to: SocketAddr, tag: u8) -> bool {
    try_connect_from(source, to).is_ok_and(|mut s| served(&mut s, tag))
}

/// A refused connection: reset at connect, or closed with nothing echoed.
fn refused(source: &str, to: SocketAddr) -> bool {
    match try_connect_from(source, to) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(mut s) => {
            let _ = s.write_all(b"x");
            closed_unechoed(&mut s, Duration::from_secs(5))
        }
    }
}

/// The connection is closed (EOF or reset) within `timeout` without a single byte echoed.
fn closed_unechoed(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("echoed {:?} on a connection that should be closed", &b[..n]),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// Admitted: a byte goes round.
fn served(s: &mut TcpStream, tag: u8) -> bool {
    if s.write_all(&[tag]).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1) if b[0] == tag)
}

/// A graceful client: echo, half-close, read to EOF — when it returns, the server has closed
/// its side, so whatever the connection held has been given back.
fn full_cycle(source: &str, to: SocketAddr, tag: u8) -> bool {
    let mut s = connect_from(source, to);
    if !served(&mut s, tag) {
        return false;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

#[test]
fn max_conns_per_ip_counts_each_source_across_workers() {
    let srv = ServerProc::start(&["--maxListeners", "4", "--max-conns-per-ip", "2"]);
    let mut a: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.2", srv.addr))
        .collect();
    for (i, c) in a.iter_mut().enumerate() {
        assert!(served(c, i as u8), "first two from 127.0.0.2");
    }
    // Twenty more tries land on all four workers (SO_REUSEPORT): every one is refused.
    for i in 0..20 {
        assert!(
            refused("127.0.0.2", srv.addr),
            "try {i}: a third connection from 127.0.0.2 is refused"
        );
    }
    let mut b: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.3", srv.addr))
        .collect();
    for (i, c) in b.iter_mut().enumerate() {
        assert!(served(c, 10 + i as u8), "127.0.0.3 has its own two");
    }
    for (i, c) in a.iter_mut().enumerate() {
        assert!(served(c, 20 + i as u8), "the admitted ones are unaffected");
    }
    drop(a.pop());
    assert!(
        wait_until(Duration::from_secs(5), || try_served(
            "127.0.0.2",
            srv.addr,
            30
        )),
        "a freed place is given to the next client"
    );
}

#[test]
fn slots_come_back_on_every_close_path() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--max-conns-per-ip",
        "2",
        "--idle-timeout",
        "1s",
    ]);
    let t = Instant::now();
    for i in 0..2000u32 {
        assert!(
            full_cycle("127.0.0.2", srv.addr, i as u8),
            "cycle {i}: refused or cut at a limit of 2 with one connection at a time"
        );
    }
    eprintln!("2000 cycles in {:?}", t.elapsed());
    // Two at once are served; then both end gracefully (the server has closed them, and
    // given their places back, when the EOF arrives).
    let both_free = || {
        let (Ok(mut a), Ok(mut b)) = (
            try_connect_from("127.0.0.2", srv.addr),
            try_connect_from("127.0.0.2", srv.addr),
        ) else {
            return false;
        };
        let ok = served(&mut a, 1) && served(&mut b, 2);
        for s in [&mut a, &mut b] {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        }
        ok
    };
    // Reset by the client.
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.2", srv.addr);
        assert!(served(&mut c, 3));
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), both_free),
        "after resets"
    );
    // Closed by the idle timeout.
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.2", srv.addr))
        .collect();
    for c in &mut idle {
        assert!(served(c, 4));
    }
    for c in &mut idle {
        assert!(sees_close(c, Duration::from_secs(5)), "idle timeout");
    }
    assert!(
        wait_until(Duration::from_secs(5), both_free),
        "after idle timeouts"
    );
}

#[test]
fn accept_rate_per_ip_admits_the_burst_then_the_rate() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--accept-rate-per-ip", "5"]);
    let t = Instant::now();
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..20 {
        if try_served("127.0.0.2", srv.addr, i) {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    // A burst of 5, plus at most 5 per second for the time the loop took.
    assert!(admitted >= 5, "{admitted} admitted");
    assert!(
        admitted as f64 <= 5.0 + 5.0 * secs + 1.0,
        "{admitted} admitted in {secs:.2}s"
    );
    assert!(refused > 0);
    let mut other = connect_from("127.0.0.3", srv.addr);
    assert!(served(&mut other, 9), "another source has its own bucket");
}

fn v2_inet4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        unreachable!()
    };
    let mut h = epoll_echo::proxy::V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

#[test]
fn proxy_headers_whole_split_and_with_payload_are_consumed_not_echoed() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--proxy-protocol"]);
    let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec();
    let v2 = v2_inet4(
        "192.0.2.1:56324".parse().unwrap(),
        "198.51.100.7:443".parse().unwrap(),
    );
    let unknown = b"PROXY UNKNOWN\r\n".to_vec();
    for header in [v1, v2, unknown] {
        // Whole, with the first payload in the same segment.
        let mut c = connect(srv.addr);
        let mut first = header.clone();
        first.extend_from_slice(b"hello");
        c.write_all(&first).unwrap();
        assert_eq!(read_n(&mut c, 5), b"hello");
        // Split byte by byte, then the payload.
        let mut c = connect(srv.addr);
        c.set_nodelay(true).unwrap();
        for b in &header {
            c.write_all(std::slice::from_ref(b)).unwrap();
        }
        c.write_all(b"world").unwrap();
        assert_eq!(read_n(&mut c, 5), b"world");
        assert!(served(&mut c, 7), "then a plain echo");
    }
}

#[test]
fn bad_missing_or_oversized_headers_close_with_nothing_echoed() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--proxy-protocol"]);
    let mut oversized = epoll_echo::proxy::V2_SIGNATURE.to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]); // 4096 + 16 bytes announced
    let cases: Vec<Vec<u8>> = vec![
        b"hello, no header\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nhello".to_vec(),
        b"PROXY UNKNOWN"
            .iter()
            .chain(&[b'x'; 200])
            .copied()
            .collect(),
        oversized,
    ];
    for bytes in cases {
        let mut c = connect(srv.addr);
        c.write_all(&bytes).unwrap();
        assert!(
            closed_unechoed(&mut c, Duration::from_secs(3)),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    // The server is fine afterwards.
    let mut c = connect(srv.addr);
    c.write_all(b"PROXY UNKNOWN\r\nok").unwrap();
    assert_eq!(read_n(&mut c, 2), b"ok");
}

#[test]
fn header_timeout_closes_hundreds_of_silent_connections() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--proxy-protocol",
        "--proxy-header-timeout",
        "500ms",
    ]);
    let t = Instant::now();
    let mut silent: Vec<TcpStream> = (0..300).map(|_| connect(srv.addr)).collect();
    // Half of them send a partial header and stall.
    for c in silent.iter_mut().step_by(2) {
        c.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    }
    for (i, c) in silent.iter_mut().enumerate() {
        assert!(
            closed_unechoed(c, Duration::from_secs(5)),
            "silent connection {i} not closed"
        );
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(450), "closed early: {took:?}");
    assert!(took < Duration::from_secs(4), "closed late: {took:?}");
    let mut c = connect(srv.addr);
    c.write_all(b"PROXY UNKNOWN\r\nok").unwrap();
    assert_eq!(read_n(&mut c, 2), b"ok");
}

#[test]
fn limits_apply_to_the_address_in_the_proxy_header() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--proxy-protocol",
        "--max-conns-per-ip",
        "1",
    ]);
    let header = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 40000 8080\r\n");
    // All from 127.0.0.1 on the socket, but two different clients in the header.
    let mut a = connect(srv.addr);
    a.write_all(header("198.18.0.1").as_bytes()).unwrap();
    assert!(served(&mut a, 1));
    let mut b = connect(srv.addr);
    b.write_all(header("198.18.0.2").as_bytes()).unwrap();
    assert!(served(&mut b, 2), "another client behind the same balancer");
    let mut again = connect(srv.addr);
    again.write_all(header("198.18.0.1").as_bytes()).unwrap();
    let _ = again.write_all(b"x"); // the reset may already be there
    assert!(
        closed_unechoed(&mut again, Duration::from_secs(5)),
        "a second connection of 198.18.0.1 is refused after its header"
    );
    assert!(served(&mut a, 3));
}

/// A network namespace this test creates and removes, with IPv6 test addresses on its loopback.
struct Netns(String);

impl Netns {
    fn new(addrs: &[&str]) -> Netns {
        let name = format!("ee-limits-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Netns(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for a in addrs {
            ip(&["-n", &name, "-6", "addr", "add", a, "dev", "lo", "nodad"]);
        }
        ns
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Clients inside the namespace (a short Python script): one line per step, "True" when the
/// byte came back.
const V6_CLIENTS: &str = r#"
import socket, sys
port = int(sys.argv[1])
held = []
def served(src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind((src, 0)); s.settimeout(5)
    held.append(s)
    try:  # a refused client's reset may arrive before connect returns
        s.connect(("2001:db8:1:1::1", port))
        s.sendall(b"x"); return s.recv(1) == b"x"
    except OSError:
        return False
for src in sys.argv[2:]:
    print(src, served(src), flush=True)
"#;

#[test]
fn ipv6_clients_are_grouped_by_64_in_a_namespace() {
    let ns = Netns::new(&[
        "2001:db8:1:1::1/64",
        "2001:db8:1:1::2/64",
        "2001:db8:1:1::3/64",
        "2001:db8:1:2::2/64",
    ]);
    let mut cmd = ns.command(BIN);
    cmd.args([
        "--host",
        "2001:db8:1:1::1",
        "--port",
        "0",
        "--maxListeners",
        "2",
    ]);
    cmd.args(["--max-conns-per-ip", "1"]);
    let srv = ServerProc::spawn(cmd);
    let out = ns
        .command("python3")
        .args(["-c", V6_CLIENTS, &srv.addr.port().to_string()])
        .args(["2001:db8:1:1::2", "2001:db8:1:1::3", "2001:db8:1:2::2"])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        lines,
        "2001:db8:1:1::2 True\n2001:db8:1:1::3 False\n2001:db8:1:2::2 True\n",
        "same /64 shares one place, another /64 has its own; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(srv);
}

#[test]
fn refusals_are_counted_per_reason_and_logged_at_most_once_a_second() {
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--max-conns-per-ip",
        "1",
        "--accept-rate-per-ip",
        "1000",
    ]);
    let mut held = connect_from("127.0.0.2", srv.addr);
    assert!(served(&mut held, 1));
    let t = Instant::now();
    for i in 0..200 {
        assert!(refused("127.0.0.2", srv.addr), "try {i}");
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(served(&mut held, 2), "the admitted one is unaffected");
    drop(held);
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let log = srv.stderr();
    let summary = log
        .lines()
        .find(|l| l.starts_with("shutdown:"))
        .unwrap_or_else(|| panic!("no shutdown line: {log}"));
    assert!(
        summary.contains(" refused=0 ")
            && summary.contains(" refused_per_ip=200 ")
            && summary.contains(" refused_rate=0 "),
        "{summary}"
    );
    // Every refusal is counted, but each worker logs about one line a second (plus the first).
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("over --max-conns-per-ip"))
        .collect();
    let counted: u64 = lines
        .iter()
        .filter_map(|l| {
            l.split("reset ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        !lines.is_empty() && lines.len() as f64 <= 2.0 * (secs + 2.0),
        "{} lines in {secs:.1}s: {lines:?}",
        lines.len()
    );
    assert!(lines[0].contains("127.0.0.2"), "{lines:?}");
    assert!((1..=200).contains(&counted), "{lines:?}");
}

#[test]
fn proxy_rejections_and_timeouts_are_counted_and_the_debug_log_names_the_header_client() {
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--proxy-protocol",
        "--proxy-header-timeout",
        "300ms",
        "-v",
    ]);
    for bad in [
        &b"garbage\r\n"[..],
        b"PROXY TCP9 x\r\n",
        b"PROXY TCP4 1.2.3",
    ] {
        let mut c = connect(srv.addr);
        c.write_all(bad).unwrap();
        if bad.ends_with(b"3") {
            c.shutdown(std::net::Shutdown::Write).unwrap(); // EOF inside the header
        }
        assert!(closed_unechoed(&mut c, Duration::from_secs(5)));
    }
    let mut silent: Vec<TcpStream> = (0..2).map(|_| connect(srv.addr)).collect();
    for c in &mut silent {
        assert!(closed_unechoed(c, Duration::from_secs(5)));
    }
    let mut ok = connect(srv.addr);
    ok.write_all(b"PROXY TCP4 198.18.7.7 127.0.0.1 4242 80\r\nok")
        .unwrap();
    assert_eq!(read_n(&mut ok, 2), b"ok");
    drop(ok);
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let log = srv.stderr();
    let summary = log.lines().find(|l| l.starts_with("shutdown:")).unwrap();
    assert!(
        summary.contains(" proxy_rejected=3 ") && summary.ends_with(" proxy_timeout=2"),
        "{summary}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("via PROXY header: client 198.18.7.7:4242")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("close ") && l.contains("(PROXY client 198.18.7.7:4242)")),
        "{log}"
    );
}
