//! MSS-sized bulk echo against the real binary: clients whose segment size or receive window is
//! tiny, and real 1500- and 576-byte paths (a veth pair into a network namespace this test
//! creates and removes). A bulk stream's reads shrink to a multiple of its MSS and its "short
//! read means drained" rule is measured against that smaller length; a mistake there leaves the
//! rest of the stream unread with no edge to come, and these streams stall.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{BIN, ServerProc, pattern};
use socket2::{Domain, Protocol, Socket, Type};

/// A client socket with options set before connect (so the SYN carries them).
fn client(addr: SocketAddr, mss: Option<u32>, rcvbuf: Option<usize>) -> TcpStream {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(m) = mss {
        sock.set_tcp_mss(m).expect("set TCP_MAXSEG");
    }
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("set SO_RCVBUF");
    }
    sock.connect_timeout(&addr.into(), Duration::from_secs(10))
        .expect("connect");
    sock.set_tcp_nodelay(true).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Streams `data` in 64 KiB writes while reading the echo; asserts that every byte came back
/// in order *before* the client half-closes (after a half-close the server reads on to EOF
/// anyway, which would hide bytes it left unread), then that EOF follows.
fn echo_intact(s: TcpStream, data: &[u8]) {
    let mut w = s.try_clone().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in owned.chunks(65_536) {
            w.write_all(chunk).expect("write");
        }
    });
    let mut got = vec![0u8; data.len()];
    let mut done = 0;
    let mut r = &s;
    while done < got.len() {
        match r.read(&mut got[done..]) {
            Ok(0) => panic!("EOF after {done} of {} bytes", data.len()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "echo stalled or failed after {done} of {} bytes: {e}",
                data.len()
            ),
        }
    }
    writer.join().unwrap();
    if let Some(i) = got.iter().zip(data).position(|(a, b)| a != b) {
        panic!("echo differs at byte {i}");
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = [0u8; 16];
    assert_eq!(r.read(&mut rest).expect("EOF after the echo"), 0, "EOF");
}

#[test]
fn a_client_with_an_88_byte_mss_and_a_tiny_window_gets_8_mib_intact() {
    let srv = ServerProc::start(&[]);
    let s = client(srv.addr, Some(88), Some(1024));
    let mss = socket2::SockRef::from(&s).tcp_mss().unwrap();
    assert!(mss <= 88, "the client's MSS is {mss}");
    echo_intact(s, &pattern(8 << 20, 88));
}

#[test]
fn a_receive_window_smaller_than_one_segment_gets_8_mib_intact() {
    // Loopback's MSS is 65,483; this client's window is a few KiB, so the kernel bounds the
    // server's MSS to half of it (1,500 for SO_RCVBUF 3000): reads of 43 × 1,500 = 64,500.
    let srv = ServerProc::start(&[]);
    let s = client(srv.addr, None, Some(3000));
    echo_intact(s, &pattern(8 << 20, 3000));
}

#[test]
fn several_bulk_streams_and_pauses_stay_intact() {
    // Bulk phases separated by pauses longer than the MSS refresh (1 s) ask the MSS again.
    let srv = ServerProc::start(&[]);
    let mut s = client(srv.addr, Some(536), None);
    for round in 0..2u64 {
        let data = pattern(2 << 20, round);
        let mut w = s.try_clone().unwrap();
        let owned = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&owned).unwrap());
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got).expect("echo of a bulk phase");
        writer.join().unwrap();
        assert!(got == data, "bulk phase {round} intact");
        if round == 0 {
            // Nothing to wait for but the clock: the server's refresh is time-based.
            std::thread::sleep(Duration::from_millis(1200));
        }
    }
}

/// A network namespace with one end of a veth pair at `mtu`; the other end stays here.
struct VethPath {
    ns: String,
    host_if: String,
    server_ip: String,
}

impl VethPath {
    /// None (with a note) when not root: creating namespaces needs CAP_NET_ADMIN.
    fn new(idx: u32, mtu: u32) -> Option<VethPath> {
        if !is_root() {
            eprintln!("SKIPPED: a veth path needs root (ip netns add, ip link add)");
            return None;
        }
        let pid = std::process::id();
        // 198.19.A.B/30 per process and path, so parallel test runs do not collide.
        let a = pid % 250;
        assert!(idx < 8, "eight paths per test process");
        let b = (pid / 250 % 8) * 32 + idx * 4;
        let p = VethPath {
            ns: format!("ee-mss-{pid}-{idx}"),
            host_if: format!("emh{}{idx}", pid % 100_000),
            server_ip: format!("198.19.{a}.{}", b + 1),
        };
        let ns_if = format!("ems{}{idx}", pid % 100_000);
        let load_ip = format!("198.19.{a}.{}/30", b + 2);
        let mtu = mtu.to_string();
        let _ = Command::new("ip")
            .args(["link", "del", &p.host_if])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &p.ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &p.ns]);
        ip(&[
            "link", "add", &p.host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &p.ns]);
        ip(&["addr", "add", &load_ip, "dev", &p.host_if]);
        ip(&["link", "set", &p.host_if, "mtu", &mtu, "up"]);
        let srv = format!("{}/30", p.server_ip);
        ip(&["-n", &p.ns, "addr", "add", &srv, "dev", &ns_if]);
        ip(&["-n", &p.ns, "link", "set", &ns_if, "mtu", &mtu, "up"]);
        ip(&["-n", &p.ns, "link", "set", "lo", "up"]);
        Some(p)
    }

    fn server(&self) -> ServerProc {
        self.server_with(&[])
    }

    fn server_with(&self, args: &[&str]) -> ServerProc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, BIN])
            .args(["--host", &self.server_ip, "--port", "0"])
            .args(args);
        ServerProc::spawn(cmd)
    }
}

impl Drop for VethPath {
    fn drop(&mut self) {
        // Deleting either end removes the pair; the namespace goes with its end.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn veth_echo(idx: u32, mtu: u32, want_mss: u32) {
    let Some(path) = VethPath::new(idx, mtu) else {
        return;
    };
    let mut srv = path.server();
    let s = client(srv.addr, None, None);
    let mss = socket2::SockRef::from(&s).tcp_mss().unwrap();
    assert_eq!(mss, want_mss, "the path's MSS (MTU {mtu})");
    echo_intact(s, &pattern(6 << 20, u64::from(mtu)));
    // A second stream with a small window on the same path.
    echo_intact(client(srv.addr, None, Some(2048)), &pattern(2 << 20, 7));
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
}

#[test]
fn a_veth_path_at_mtu_1500_echoes_several_mib_intact() {
    veth_echo(0, 1500, 1448);
}

#[test]
fn a_veth_path_at_mtu_576_echoes_several_mib_intact() {
    veth_echo(1, 576, 524);
}

/// `epoll_echo_bytes_spliced_total` from the server's /metrics (its "metrics on" line).
fn spliced(srv: &ServerProc) -> u64 {
    let mut s = TcpStream::connect(common::metrics_addr(srv)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("epoll_echo_bytes_spliced_total "))
        .unwrap_or_else(|| panic!("no spliced counter in: {body}"))
        .trim()
        .parse()
        .expect("a count")
}

/// Reads the counter until it stops moving (the worker publishes after each loop turn).
fn spliced_settled(srv: &ServerProc) -> u64 {
    let mut last = spliced(srv);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = spliced(srv);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn splice_auto_splices_on_a_1500_byte_path_and_copies_on_loopback() {
    const N: usize = 6 << 20;
    // Loopback (MSS 65,483): copied under auto; spliced with a bare --splice (= on).
    let srv = ServerProc::start(&["--metrics-addr", "127.0.0.1:0", "--splice=auto"]);
    echo_intact(client(srv.addr, None, None), &pattern(N, 1));
    assert_eq!(spliced_settled(&srv), 0, "loopback copies under auto");
    let srv = ServerProc::start(&["--metrics-addr", "127.0.0.1:0", "--splice"]);
    echo_intact(client(srv.addr, None, None), &pattern(N, 2));
    let n = spliced_settled(&srv);
    assert!(
        n >= N as u64 / 2,
        "--splice splices loopback too: {n} of {N}"
    );
    // A loopback client with a small MSS (a NIC-sized path) is spliced under auto.
    let srv = ServerProc::start(&["--metrics-addr", "127.0.0.1:0", "--splice=auto"]);
    echo_intact(client(srv.addr, Some(1400), None), &pattern(N, 3));
    let n = spliced_settled(&srv);
    assert!(n >= N as u64 / 2, "MSS 1400 splices under auto: {n} of {N}");

    let Some(path) = VethPath::new(2, 1500) else {
        return;
    };
    let metrics = format!("{}:0", path.server_ip);
    for (args, want) in [
        (vec!["--metrics-addr", &metrics], false), // the default copies
        (vec!["--metrics-addr", &metrics, "--splice=auto"], true),
        (vec!["--metrics-addr", &metrics, "--splice"], true),
        (vec!["--metrics-addr", &metrics, "--splice=off"], false),
    ] {
        let mut srv = path.server_with(&args);
        echo_intact(client(srv.addr, None, None), &pattern(N, 4));
        let n = spliced_settled(&srv);
        if want {
            assert!(n >= N as u64 / 2, "{args:?}: {n} of {N} spliced");
        } else {
            assert_eq!(n, 0, "{args:?}");
        }
        srv.signal("TERM");
        srv.assert_exit(0, Duration::from_secs(10));
    }
}

/// The server side of the connection to local port `port`, as `ss -tni` shows it from inside
/// network namespace `ns` (None: this one): (`notsent`, `bytes_received`). `notsent` is what the
/// server's socket holds that TCP has not sent yet; ss leaves it out when it is 0.
fn server_socket(ns: Option<&str>, port: u16) -> Option<(u64, u64)> {
    let filter = format!("( sport = :{port} )");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = cmd
        .args(["-tniH", "state", "established", &filter])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let received = field("bytes_received:")?;
    Some((field("notsent:").unwrap_or(0), received))
}

/// Starts a client that writes `n` bytes and reads nothing until every buffer between it and
/// the server is full (the server has stopped reading: its pending echo is at `--max-pending`
/// and its socket takes no more); returns the server socket's `notsent` then, after reading the
/// whole echo back and checking it byte for byte.
fn unsent_when_the_client_stops_reading(ns: Option<&str>, addr: SocketAddr, n: usize) -> u64 {
    let s = client(addr, None, None);
    let data = pattern(n, u64::from(addr.port()));
    let mut w = s.try_clone().unwrap();
    let owned = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&owned).expect("write"));
    let mut last = None;
    let mut seen = (0, 0);
    let settled = common::wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200)); // observation window, not sync
        let Some(now) = server_socket(ns, addr.port()) else {
            return false;
        };
        seen = now;
        let still = last == Some(now.1) && now.1 > 0;
        last = Some(now.1);
        still
    });
    assert!(settled, "the server kept reading: {seen:?}");
    let mut got = vec![0u8; n];
    (&s).read_exact(&mut got).expect("the whole echo");
    writer.join().unwrap();
    assert!(got == data, "echo intact");
    seen.0
}

/// How far `--notsent-lowat` may let unsent echo pass it: the write that crosses it (at most
/// one read of 64 KiB) and the kernel's rounding to whole segments.
const LOWAT_SLACK: u64 = 128 << 10;

/// 0 means the kernel's default, `net.ipv4.tcp_notsent_lowat`: unlimited unless the machine
/// lowered it.
fn kernel_leaves_unsent_unbounded() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|v| v >= 64 << 20)
}

#[test]
fn the_default_notsent_lowat_bounds_a_stalled_clients_unsent_echo() {
    const N: usize = 48 << 20;
    let srv = ServerProc::start(&[]);
    let unsent = unsent_when_the_client_stops_reading(None, srv.addr, N);
    assert!(
        unsent <= 16 * 1024 + LOWAT_SLACK,
        "default (16K): {unsent} bytes unsent"
    );
    let srv = ServerProc::start(&["--notsent-lowat", "256K"]);
    let unsent = unsent_when_the_client_stops_reading(None, srv.addr, N);
    assert!(
        unsent <= (256 << 10) + LOWAT_SLACK,
        "--notsent-lowat 256K: {unsent} bytes unsent"
    );
    if !kernel_leaves_unsent_unbounded() {
        eprintln!("SKIPPED --notsent-lowat 0: net.ipv4.tcp_notsent_lowat is lowered here");
        return;
    }
    let srv = ServerProc::start(&["--notsent-lowat", "0"]);
    let unsent = unsent_when_the_client_stops_reading(None, srv.addr, N);
    assert!(
        unsent > 1 << 20,
        "--notsent-lowat 0 leaves it to the kernel (its send buffer, MiBs): {unsent} unsent"
    );
}

#[test]
fn a_veth_path_at_mtu_1500_bounds_unsent_echo_too() {
    let Some(path) = VethPath::new(3, 1500) else {
        return;
    };
    let mut srv = path.server();
    let unsent = unsent_when_the_client_stops_reading(Some(&path.ns), srv.addr, 48 << 20);
    assert!(
        unsent <= 16 * 1024 + LOWAT_SLACK,
        "default (16K) on a 1500-byte path: {unsent} bytes unsent"
    );
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
}

/// A client that writes `n` bytes before it reads any: the write must finish (the server takes
/// the backlog into pending output up to `--max-pending`), then the whole echo comes back.
fn write_all_then_read(addr: SocketAddr, n: usize) {
    let s = client(addr, None, None);
    let data = pattern(n, 11);
    let mut w = s.try_clone().unwrap();
    let owned = data.clone();
    let (done, wrote) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = w.write_all(&owned);
        let _ = done.send(r.is_ok());
    });
    assert_eq!(
        wrote.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "{n} bytes written before reading: the server stopped taking them"
    );
    let mut got = vec![0u8; n];
    (&s).read_exact(&mut got).expect("the whole echo");
    assert!(got == data, "echo intact");
}

#[test]
fn a_client_that_writes_12_mib_before_reading_gets_max_pending_of_buffering() {
    // A bulk stream reads only when its last echo is sent, and TCP_NOTSENT_LOWAT keeps the
    // kernel from holding much of it: what holds a backlog like this is --max-pending, once
    // the stream has stood still for 100–200 ms (conn::STALL_TICKS).
    let srv = ServerProc::start(&["--max-pending", "16M"]);
    write_all_then_read(srv.addr, 12 << 20);
    let Some(path) = VethPath::new(4, 1500) else {
        return;
    };
    let mut srv = path.server_with(&["--max-pending", "16M"]);
    write_all_then_read(srv.addr, 12 << 20);
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
}
