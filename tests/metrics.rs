//! `--metrics-addr`: Prometheus text format, parsed by the reference parser (Python's
//! `prometheus_client`), against the real binary and real echo traffic.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts the server with `--metrics-addr 127.0.0.1:0`; returns it and the metrics address.
fn start(args: &[&str]) -> (ServerProc, SocketAddr) {
    let mut all = vec!["--metrics-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let srv = ServerProc::start(&all);
    let addr = common::metrics_addr(&srv);
    (srv, addr)
}

/// One HTTP exchange; returns (status code, headers lower-cased, body).
fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response, then close");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (code, head.to_lowercase(), body.to_string())
}

fn scrape_text(addr: SocketAddr) -> String {
    let (code, head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// Parses a scrape with `prometheus_client.parser`; returns `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    const PY: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value!r}")
"#;
    let mut py = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus-client: pip install prometheus-client)");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    parse(&scrape_text(addr))
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in scrape: {m:?}"))
}

#[test]
fn scrape_counts_real_echo_traffic() {
    let (srv, maddr) = start(&["--maxListeners", "2"]);
    let sizes = [1usize, 70_000, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n, i as u64);
        assert!(echo_round(srv.addr, &data) == data);
    }
    let sent: usize = sizes.iter().sum();
    // Workers publish once per loop turn: poll until the closes have been counted.
    let mut m = HashMap::new();
    let settled = wait_until(Duration::from_secs(10), || {
        m = scrape(maddr);
        m.get("epoll_echo_connections_closed_total{}") == Some(&3.0)
    });
    assert!(settled, "closes never counted: {m:?}");
    assert_eq!(get(&m, "epoll_echo_bytes_received_total{}"), sent as f64);
    assert_eq!(get(&m, "epoll_echo_bytes_sent_total{}"), sent as f64);
    assert_eq!(get(&m, "epoll_echo_connections_accepted_total{}"), 3.0);
    assert_eq!(get(&m, "epoll_echo_connections_active{}"), 0.0);
    assert_eq!(get(&m, "epoll_echo_connections_idle_closed_total{}"), 0.0);
    assert_eq!(
        get(
            &m,
            "epoll_echo_connections_rejected_total{reason=\"max_connections\"}"
        ),
        0.0
    );
    let per_worker: f64 = (0..2)
        .map(|w| {
            get(
                &m,
                &format!("epoll_echo_worker_connections_accepted_total{{worker=\"{w}\"}}"),
            )
        })
        .sum();
    assert_eq!(per_worker, 3.0, "per-worker accepted must add up");

    // An open connection is active; HEAD gives the headers only.
    let mut s = connect(srv.addr);
    s.write_all(b"x").unwrap();
    read_n(&mut s, 1);
    assert!(wait_until(Duration::from_secs(10), || {
        scrape(maddr).get("epoll_echo_connections_active{}") == Some(&1.0)
    }));
    let (code, head, body) = http(maddr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200);
    assert!(head.contains("content-length: "), "{head}");
    assert!(body.is_empty(), "HEAD with a body: {body}");
}

#[test]
fn refusals_are_counted_by_reason() {
    let (srv, maddr) = start(&["--maxListeners", "1", "--max-connections", "1"]);
    let mut held = connect(srv.addr);
    held.write_all(b"a").unwrap();
    read_n(&mut held, 1);
    let mut extra = connect(srv.addr);
    assert!(sees_close(&mut extra, Duration::from_secs(10)));
    let mut m = HashMap::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            m = scrape(maddr);
            m.get("epoll_echo_connections_rejected_total{reason=\"max_connections\"}") == Some(&1.0)
        }),
        "{m:?}"
    );
    assert_eq!(
        get(
            &m,
            "epoll_echo_connections_rejected_total{reason=\"out_of_fds\"}"
        ),
        0.0
    );
}

#[test]
fn unknown_paths_404_other_methods_405() {
    let (_srv, maddr) = start(&["--maxListeners", "1"]);
    assert_eq!(http(maddr, "GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(maddr, "GET /metrics/x HTTP/1.0\r\n\r\n").0, 404);
    let (code, head, _) = http(maddr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    assert_eq!(http(maddr, "garbage\r\n\r\n").0, 400);
}

#[test]
fn a_stalled_scrape_blocks_neither_other_scrapes_nor_echo() {
    let (srv, maddr) = start(&["--maxListeners", "1"]);
    let mut stalled = TcpStream::connect(maddr).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    // Give the endpoint time to pick up the stalled client first (bounded: its answer
    // must not come, the read times out).
    stalled
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        stalled.read(&mut [0u8; 1]).is_err(),
        "answered half a request"
    );
    let t = Instant::now();
    let text = scrape_text(maddr);
    let took = t.elapsed();
    let m = parse(&text);
    assert!(
        took < Duration::from_secs(1),
        "a second scrape waited {took:?} behind the stalled one"
    );
    assert!(m.contains_key("epoll_echo_connections_accepted_total{}"));
    let data = pattern(100_000, 9);
    assert!(echo_round(srv.addr, &data) == data);
    // The stalled one is given up on within the scrape timeout: closed, unanswered.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered half a request");
}

#[test]
fn bad_metrics_addr_exits_2_naming_the_flag() {
    let out = Command::new(BIN)
        .args(["--metrics-addr", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains("localhost"),
        "{err}"
    );
}

#[test]
fn metrics_addr_in_use_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-addr",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics-addr {addr}")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn udp_datagrams_are_counted_with_drops_by_reason() {
    // A free UDP port for the server (bound, then released).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = port.to_string();
    let (_srv, maddr) = start(&["--maxListeners", "1", "--udp-port", &p]);
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0..3u8 {
        client.send_to(&[i; 100], target).unwrap();
        let mut buf = [0u8; 200];
        let (n, _) = client.recv_from(&mut buf).expect("an echo");
        assert_eq!(&buf[..n], &[i; 100]);
    }
    // From the chargen port: never answered, counted as a source-port drop.
    let chargen = std::net::UdpSocket::bind("127.0.0.1:19");
    let dropped = if let Ok(c) = chargen {
        c.send_to(b"loop?", target).unwrap();
        1.0
    } else {
        0.0 // not root: port 19 cannot be bound here
    };
    let mut m = HashMap::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            m = scrape(maddr);
            m.get("epoll_echo_udp_datagrams_received_total{}") == Some(&(3.0 + dropped))
        }),
        "{m:?}"
    );
    assert_eq!(get(&m, "epoll_echo_udp_datagrams_sent_total{}"), 3.0);
    assert_eq!(
        get(
            &m,
            "epoll_echo_udp_datagrams_dropped_total{reason=\"source_port\"}"
        ),
        dropped
    );
    assert_eq!(
        get(
            &m,
            "epoll_echo_udp_datagrams_dropped_total{reason=\"rate\"}"
        ),
        0.0
    );
}

#[test]
fn per_ip_and_proxy_refusals_have_their_reasons() {
    let (srv, maddr) = start(&[
        "--maxListeners",
        "1",
        "--max-conns-per-ip",
        "1",
        "--proxy-protocol",
    ]);
    let header = b"PROXY TCP4 198.18.0.1 127.0.0.1 4000 80\r\n";
    let mut held = connect(srv.addr);
    held.write_all(header).unwrap();
    held.write_all(b"a").unwrap();
    read_n(&mut held, 1);
    let mut over = connect(srv.addr);
    let _ = over.write_all(header);
    assert!(sees_close(&mut over, Duration::from_secs(10)));
    let mut bad = connect(srv.addr);
    bad.write_all(b"not a header\r\n").unwrap();
    assert!(sees_close(&mut bad, Duration::from_secs(10)));
    let mut m = HashMap::new();
    let want = |m: &HashMap<String, f64>, reason: &str| {
        m.get(&format!(
            "epoll_echo_connections_rejected_total{{reason=\"{reason}\"}}"
        ))
        .copied()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            m = scrape(maddr);
            want(&m, "max_conns_per_ip") == Some(1.0) && want(&m, "proxy_header") == Some(1.0)
        }),
        "{m:?}"
    );
    assert_eq!(want(&m, "accept_rate_per_ip"), Some(0.0));
    assert_eq!(want(&m, "proxy_header_timeout"), Some(0.0));
}
