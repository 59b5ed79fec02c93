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

/// A network namespace of our own with IPv6 disabled (its own sysctls, not the host's).
struct NetNs(String);

impl NetNs {
    fn without_ipv6() -> Option<NetNs> {
        NetNs::with_sysctls(
            "v4only",
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv6.conf.lo.disable_ipv6=1",
            ],
        )
    }

    /// A namespace with loopback up and these sysctls set inside it.
    fn with_sysctls(tag: &str, sysctls: &[&str]) -> Option<NetNs> {
        let name = format!("epoll-echo-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["ip", "netns", "add", &name]) {
            return None;
        }
        let ns = NetNs(name);
        for sysctl in sysctls {
            let args = ["ip", "netns", "exec", &ns.0, "sysctl", "-qw", sysctl];
            assert!(ok(&args), "{args:?}");
        }
        let up = ["ip", "-n", &ns.0, "link", "set", "lo", "up"];
        assert!(ok(&up), "{up:?}");
        Some(ns)
    }
}

/// Outside CI a test that needs its own namespace skips when it cannot make one (not root);
/// under CI (root) that is a failure.
fn skip_without_netns() {
    assert!(
        std::env::var_os("CI").is_none(),
        "ip netns add failed (CI runs as root)"
    );
    eprintln!("skipping: cannot create a network namespace (not root?)");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn no_host_falls_back_to_ipv4_where_ipv6_is_off() {
    let Some(ns) = NetNs::without_ipv6() else {
        return skip_without_netns();
    };
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        BIN,
        "--port",
        "0",
        "--maxListeners",
        "2",
    ]);
    let srv = ServerProc::spawn(cmd);
    assert_eq!(srv.addr.ip().to_string(), "0.0.0.0", "{}", srv.stderr());
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .contains("IPv6 unavailable")),
        "{}",
        srv.stderr()
    );
    // An IPv4 client inside the namespace is echoed.
    let port = srv.addr.port().to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c"])
        .arg(
            "import socket,sys; s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),5); \
             s.sendall(b'v4 only'); s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())",
        )
        .arg(&port)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v4 only",
        "{out:?}"
    );
    drop(srv);
}

/// `net.ipv6.bindv6only=1` makes `::` sockets IPv6-only by default: the server clears
/// IPV6_V6ONLY itself, on its TCP listeners and its UDP sockets, so IPv4 clients still reach it.
#[test]
fn no_host_is_dual_stack_even_where_bindv6only_is_set() {
    let Some(ns) = NetNs::with_sysctls("bindv6only", &["net.ipv6.bindv6only=1"]) else {
        return skip_without_netns();
    };
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        BIN,
        "--port",
        "0",
        "--udp-port",
        "0",
        "--maxListeners",
        "2",
    ]);
    let srv = ServerProc::spawn(cmd);
    let mut udp_port = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            udp_port = srv
                .stderr()
                .split("UDP echo on [::]:")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse::<u16>().ok());
            udp_port.is_some()
        }),
        "{}",
        srv.stderr()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c"])
        .arg(
            "import socket,sys\n\
             tcp,udp=int(sys.argv[1]),int(sys.argv[2])\n\
             for host,fam in (('127.0.0.1',socket.AF_INET),('::1',socket.AF_INET6)):\n\
             \x20s=socket.create_connection((host,tcp),5); s.sendall(b'tcp'); s.shutdown(socket.SHUT_WR)\n\
             \x20print(host, s.recv(100).decode())\n\
             \x20u=socket.socket(fam,socket.SOCK_DGRAM); u.settimeout(5); u.sendto(b'udp',(host,udp))\n\
             \x20print(host, u.recv(100).decode())",
        )
        .arg(srv.addr.port().to_string())
        .arg(udp_port.unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "127.0.0.1 tcp\n127.0.0.1 udp\n::1 tcp\n::1 udp\n",
        "{out:?}\n{}",
        srv.stderr()
    );
    drop(srv);
}
