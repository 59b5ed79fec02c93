//! Real load balancers in front of a backend: HAProxy (`send-proxy`, `send-proxy-v2`) and nginx's
//! stream module (`proxy_protocol on`), both from Debian, started in the foreground with their
//! configuration in a temporary directory.
//!
//! These tests check that what the balancers really send is what `epoll_echo::proxy::parse`
//! accepts, and that it names the real client: a capturing backend behind the balancer reads
//! the header, and clients connect from 127.0.0.2, 127.0.0.3 and ::1. The [`Balancer`] harness
//! is meant for the server itself as the backend as well (`Balancer::haproxy(srv.addr, ..)`).
//!
//! Needs `haproxy` and, for the nginx test, `nginx-light` + `libnginx-mod-stream` (Debian).
//! A test whose balancer is missing is skipped with a message, except under CI (`CI=true`),
//! where it fails.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{ServerProc, wait_until};
use epoll_echo::proxy::{self, Header, Status, Version};

/// How a balancer announces the client to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxying {
    HaproxyV1,
    HaproxyV2,
    /// `send-proxy-v2` with TLVs after the addresses (CRC32C and a unique id).
    HaproxyV2Tlvs,
    NginxV1,
}

/// A load balancer child process listening on loopback, forwarding to one backend.
pub struct Balancer {
    child: Child,
    dir: PathBuf,
    /// Where clients connect.
    pub addr: SocketAddr,
}

static DIRS: AtomicU32 = AtomicU32::new(0);

fn temp_dir(what: &str) -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("epoll-echo-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port that was free a moment ago (balancers need a fixed port in their configuration;
/// a collision makes the balancer exit, and [`Balancer::start`] tries another).
fn free_port(host: IpAddr) -> u16 {
    TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether some socket listens on `addr` (from /proc/net/tcp{,6}: no probe connection, which
/// the balancer would forward to the backend).
fn listening(addr: SocketAddr) -> bool {
    let (file, local) = match addr.ip() {
        IpAddr::V4(a) => (
            "/proc/net/tcp",
            format!("{:08X}:{:04X}", u32::from_le_bytes(a.octets()), addr.port()),
        ),
        IpAddr::V6(a) => {
            let words: String = a
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes(w.try_into().unwrap())))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", addr.port()))
        }
    };
    std::fs::read_to_string(file).unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

impl Balancer {
    /// Starts HAProxy or nginx on a free port of `listen`, forwarding to `backend` with the
    /// PROXY header `send` names. Tries a few ports if the chosen one is taken meanwhile.
    pub fn start(send: Proxying, listen: IpAddr, backend: SocketAddr) -> Balancer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::new(listen, free_port(listen));
            let dir = temp_dir(match send {
                Proxying::NginxV1 => "nginx",
                _ => "haproxy",
            });
            let mut cmd = match send {
                Proxying::NginxV1 => nginx_command(&dir, addr, backend),
                _ => haproxy_command(&dir, send, addr, backend),
            };
            let program = cmd.get_program().to_string_lossy().into_owned();
            let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {program} ({e}): apt-get install haproxy nginx-light libnginx-mod-stream"
                    )
                });
            let mut b = Balancer { child, dir, addr };
            let up = wait_until(Duration::from_secs(10), || b.exited() || listening(addr));
            if up && !b.exited() {
                return b;
            }
            last_err = b.stderr();
            // Dropping `b` kills it and removes its directory; try another port.
        }
        panic!("{send:?} did not start: {last_err}");
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    // Both HAProxy and nginx read `[v6]:port` and `v4:port`.
    a.to_string()
}

/// The HAProxy configuration the README shows, with the test's addresses.
fn haproxy_command(
    dir: &std::path::Path,
    send: Proxying,
    listen: SocketAddr,
    backend: SocketAddr,
) -> Command {
    let option = match send {
        Proxying::HaproxyV2 => "send-proxy-v2",
        Proxying::HaproxyV2Tlvs => "send-proxy-v2 proxy-v2-options crc32c,unique-id",
        _ => "send-proxy",
    };
    let cfg = format!(
        "global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend echo_in
    bind {listen}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend echo_servers

backend echo_servers
    server echo1 {backend} {option}
",
        listen = fmt_addr(listen),
        backend = fmt_addr(backend),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(path).arg("-db");
    cmd
}

/// The nginx stream configuration the README shows, with the test's addresses.
fn nginx_command(dir: &std::path::Path, listen: SocketAddr, backend: SocketAddr) -> Command {
    let cfg = format!(
        "load_module {module};
daemon off;
master_process off;
pid {pid};
error_log stderr notice;
events {{ worker_connections 256; }}

stream {{
    server {{
        listen {listen};
        proxy_pass {backend};
        proxy_protocol on;
    }}
}}
",
        module = NGINX_STREAM,
        pid = dir.join("nginx.pid").display(),
        listen = fmt_addr(listen),
        backend = fmt_addr(backend),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(path);
    cmd
}

const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Whether the balancer `send` needs is installed (see the module header for CI).
fn installed(send: Proxying) -> bool {
    let (found, what) = match send {
        Proxying::NginxV1 => (
            on_path("nginx") && std::path::Path::new(NGINX_STREAM).exists(),
            "nginx-light libnginx-mod-stream",
        ),
        _ => (on_path("haproxy"), "haproxy"),
    };
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing under CI"
        );
        eprintln!("skipping: apt-get install {what}");
    }
    found
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP client bound to `source` (any 127.0.0.0/8 address works on Linux loopback).
pub fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(to);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(source, 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// What a capturing backend saw on one connection.
struct Captured {
    raw: Vec<u8>,
    header: Header,
    consumed: usize,
    conn: TcpStream,
}

/// Accepts on `backend` until a connection whose PROXY header names `client`, reading each
/// header with `proxy::parse` and `want_payload` bytes after it. Other connections are read
/// and dropped; an invalid header fails the test.
fn capture(backend: &TcpListener, client: SocketAddr, want_payload: usize) -> Captured {
    let deadline = Instant::now() + Duration::from_secs(10);
    backend.set_nonblocking(true).unwrap();
    loop {
        let mut conn = loop {
            match backend.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection for {client}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (header, consumed) = loop {
            match proxy::parse(&raw) {
                Status::NeedMore => {}
                Status::Done(h, n) => break (h, n),
                Status::Invalid(e) => panic!("balancer sent an invalid header ({e}): {raw:?}"),
            }
            let n = conn.read(&mut buf).expect("read the header");
            assert!(n > 0, "EOF inside the header: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        };
        if header.source() != Some(client) {
            continue;
        }
        while raw.len() < consumed + want_payload {
            let n = conn.read(&mut buf).expect("read the payload");
            assert!(n > 0, "EOF inside the payload");
            raw.extend_from_slice(&buf[..n]);
        }
        return Captured {
            raw,
            header,
            consumed,
            conn,
        };
    }
}

/// Clients from two loopback addresses (and ::1) through the balancer: each header parses,
/// names that client exactly, is prefix-stable on the real bytes, and leaves the payload.
fn real_clients_are_named(send: Proxying, version: Version) {
    if !installed(send) {
        return;
    }
    for (listen, sources) in [
        ("127.0.0.1", &["127.0.0.2", "127.0.0.3"][..]),
        ("::1", &["::1"][..]),
    ] {
        let listen: IpAddr = listen.parse().unwrap();
        let backend = TcpListener::bind((listen, 0)).unwrap();
        let lb = Balancer::start(send, listen, backend.local_addr().unwrap());
        for source in sources {
            let mut client = connect_from(source.parse().unwrap(), lb.addr);
            let me = client.local_addr().unwrap();
            client.write_all(b"hello\x00\xff").unwrap();
            let mut got = capture(&backend, me, 7);
            assert_eq!(got.header.version, version, "{send:?}");
            let a = got.header.addresses.expect("a TCP header");
            assert_eq!(a.source, me, "{send:?}: the real client");
            assert_eq!(
                a.destination, lb.addr,
                "{send:?}: the address it connected to"
            );
            let (head, payload) = got.raw.split_at(got.consumed);
            assert_eq!(payload, b"hello\x00\xff", "payload left after the header");
            for cut in 0..head.len() {
                assert_eq!(proxy::parse(&head[..cut]), Status::NeedMore);
            }
            eprintln!(
                "{send:?} from {me}: {} header bytes: {:02x?}",
                head.len(),
                head
            );
            // And the way back works: the balancer relays the backend's answer.
            got.conn.write_all(b"HELLO").unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"HELLO");
        }
        drop(lb);
    }
}

#[test]
fn haproxy_send_proxy_v1_names_the_real_client() {
    real_clients_are_named(Proxying::HaproxyV1, Version::V1);
}

#[test]
fn haproxy_send_proxy_v2_names_the_real_client() {
    real_clients_are_named(Proxying::HaproxyV2, Version::V2);
}

#[test]
fn haproxy_send_proxy_v2_tlvs_are_skipped() {
    real_clients_are_named(Proxying::HaproxyV2Tlvs, Version::V2);
}

#[test]
fn nginx_stream_proxy_protocol_names_the_real_client() {
    real_clients_are_named(Proxying::NginxV1, Version::V1);
}

/// The server behind a real HAProxy: each client is limited and logged by its own address.
#[test]
fn behind_haproxy_real_clients_are_limited_and_logged() {
    for send in [Proxying::HaproxyV1, Proxying::HaproxyV2, Proxying::NginxV1] {
        if !installed(send) {
            continue;
        }
        let srv = ServerProc::start(&[
            "--maxListeners",
            "2",
            "--proxy-protocol",
            "--max-conns-per-ip",
            "1",
            "-v",
        ]);
        let lb = Balancer::start(send, "127.0.0.1".parse().unwrap(), srv.addr);
        let round = |c: &mut TcpStream, msg: &[u8]| {
            c.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).is_ok() && back == msg
        };
        let mut a = connect_from("127.0.0.2".parse().unwrap(), lb.addr);
        assert!(
            round(&mut a, b"from .2"),
            "{send:?}: first client of 127.0.0.2"
        );
        let mut b = connect_from("127.0.0.3".parse().unwrap(), lb.addr);
        assert!(
            round(&mut b, b"from .3"),
            "{send:?}: 127.0.0.3 is another client"
        );
        // A second connection of 127.0.0.2: our reset reaches it through the balancer.
        let mut again = connect_from("127.0.0.2".parse().unwrap(), lb.addr);
        let _ = again.write_all(b"x");
        let mut buf = [0u8; 16];
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match again.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{send:?}: refused client got {:?}", &buf[..n]),
        }
        assert!(
            round(&mut a, b"still"),
            "{send:?}: the admitted one is unaffected"
        );
        // The log is read by another thread: wait for the lines, do not race them.
        for client in ["127.0.0.2", "127.0.0.3"] {
            let named = format!("via PROXY header: client {client}:");
            assert!(
                wait_until(Duration::from_secs(5), || srv.stderr().contains(&named)),
                "{send:?}: the log names {client}: {}",
                srv.stderr()
            );
        }
    }
}
