//! TLS on the real binary, with real clients: `openssl s_client`, `socat OPENSSL:`, Python's
//! ssl module and rustls; many clients over several workers; bad clients (plaintext, a
//! truncated ClientHello, silence) closed without disturbing the others; TLS behind
//! `--max-connections`, the idle timeout and the drain; plain and TLS side by side; SIGHUP
//! reloading the certificate. Certificates are made at test time with `openssl`.
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A temporary directory of certificates, removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("epoll-echo-tls-wire-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Certs { dir }
    }

    /// A self-signed P-256 certificate for localhost and 127.0.0.1, and its key.
    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{name}-cert.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        self_signed_cert(&cert, &key);
        (cert, key)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server with a TLS listener on a kernel-chosen port; returns it and the TLS address.
fn start_tls(cert: &Path, key: &Path, extra: &[&str]) -> (ServerProc, SocketAddr) {
    let mut args = vec!["--tls-port", "0", "--tls-cert", cert.to_str().unwrap()];
    args.extend(["--tls-key", key.to_str().unwrap()]);
    args.extend(extra);
    let srv = ServerProc::start(&args);
    let mut addr = None;
    wait_until(Duration::from_secs(10), || {
        addr = srv
            .stderr()
            .split("TLS (1.2, 1.3) on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        addr.is_some()
    });
    let addr = addr.unwrap_or_else(|| panic!("no TLS startup line: {}", srv.stderr()));
    (srv, addr)
}

fn client_config(
    cas: &[&Path],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        for c in epoll_echo::tls::config::load_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection with the handshake done.
fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Tls {
    let sock = connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// Echoes `data` in 64 KiB rounds (write a chunk, read it back) and checks it.
fn echo(s: &mut Tls, data: &[u8]) {
    for chunk in data.chunks(64 * 1024) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        let mut back = vec![0u8; chunk.len()];
        s.read_exact(&mut back).expect("read the echo");
        assert!(back == chunk, "echo differs");
    }
}

/// The server's certificate as the client saw it.
fn peer_cert(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// A clean TLS end from the server: its close_notify (rustls reads it as Ok(0); a bare FIN
/// would be an UnexpectedEof error).
fn sees_close_notify(s: &mut Tls, timeout: Duration) -> Result<(), String> {
    s.sock.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} unexpected byte(s)")),
        Err(e) => Err(format!("no close_notify: {e}")),
    }
}

/// Runs a client command with `data` on its stdin (kept open), reads `want` bytes from its
/// stdout within `timeout`, then kills it.
fn client_cmd_echo(mut cmd: Command, data: Vec<u8>, want: usize, timeout: Duration) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
        stdin // kept open until the reader is done
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while out.len() < want {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(timeout);
    let _ = child.kill();
    let status = child.wait_with_output().unwrap();
    drop(writer.join());
    out.unwrap_or_else(|_| {
        panic!(
            "client timed out; stderr: {}",
            String::from_utf8_lossy(&status.stderr)
        )
    })
}

#[test]
fn openssl_s_client_echoes_with_tls12_and_tls13() {
    let c = Certs::new("s-client");
    let (cert, key) = c.pair("a");
    let (srv, addr) = start_tls(&cert, &key, &[]);
    for version in [None, Some("-tls1_2"), Some("-tls1_3")] {
        for len in [1usize, 1000, 3 << 20] {
            // s_client is line-oriented on a terminal, not on a pipe: binary data goes through.
            let data = pattern(len, len as u64);
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &addr.to_string(), "-quiet"])
                .args([
                    "-verify_return_error",
                    "-servername",
                    "localhost",
                    "-CAfile",
                ])
                .arg(&cert);
            if let Some(v) = version {
                cmd.arg(v);
            }
            let back = client_cmd_echo(cmd, data.clone(), len, Duration::from_secs(60));
            assert!(
                back == data,
                "{version:?} {len}: echo of {} byte(s) differs",
                back.len()
            );
        }
    }
    drop(srv);
}

#[test]
fn socat_closes_cleanly_and_gets_the_whole_echo() {
    let c = Certs::new("socat");
    let (cert, key) = c.pair("a");
    let (mut srv, addr) = start_tls(&cert, &key, &[]);
    for len in [0usize, 1, 100_000, 2 << 20] {
        let data = pattern(len, 7 + len as u64);
        // socat sends close_notify at the end of stdin and exits when the server's arrives.
        let mut child = Command::new("socat")
            .args(["-t", "20", "-"])
            .arg(format!(
                "OPENSSL:{addr},cafile={},commonname=localhost",
                cert.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn socat");
        let mut stdin = child.stdin.take().unwrap();
        let d = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&d).unwrap());
        let start = Instant::now();
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            out.status.success(),
            "socat {len}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "socat {len} waited for its -t"
        );
        assert!(
            out.stdout == data,
            "socat {len}: echo of {} byte(s) differs",
            out.stdout.len()
        );
    }
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let err = srv.stderr();
    assert!(err.contains(" tls_handshakes=4 tls_failures=0 "), "{err}");
}

const PY_CLIENT: &str = r#"
import socket, ssl, sys
port, cafile, version, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile)
v = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
if version == "1.1":
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer 1.1: the server must refuse it
ctx.minimum_version = v
ctx.maximum_version = v
data = bytes((i * 131 + n) % 251 for i in range(n))
with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    except ssl.SSLError as e:
        print("refused:", e.reason)
        sys.exit(3)
    assert s.version() == "TLSv" + version, s.version()
    back = bytearray()
    for i in range(0, n, 65536):
        chunk = data[i:i + 65536]
        s.sendall(chunk)
        while len(back) < i + len(chunk):
            b = s.recv(65536)
            assert b, "EOF before the whole echo"
            back += b
    assert bytes(back) == data, "echo differs"
    s.unwrap()  # our close_notify, then the server's
print("ok", s.version(), n)
"#;

#[test]
fn python_ssl_tls12_and_tls13_echo_and_tls11_is_refused() {
    let c = Certs::new("python");
    let (cert, key) = c.pair("a");
    let (mut srv, addr) = start_tls(&cert, &key, &["--maxListeners", "2"]);
    let py = |version: &str, n: usize| {
        Command::new("python3")
            .args(["-c", PY_CLIENT, &addr.port().to_string()])
            .arg(&cert)
            .args([version, &n.to_string()])
            .output()
            .expect("run python3")
    };
    for version in ["1.2", "1.3"] {
        for n in [0usize, 1, 16_384, 16_385, 1 << 20, 5 << 20] {
            let out = py(version, n);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.starts_with("ok"),
                "TLS {version}, {n} bytes: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = py("1.1", 10);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An alert from the server (rustls answers a 1.1-only ClientHello with handshake_failure),
    // not a refusal by the client's own library.
    assert!(
        said.contains("ALERT_HANDSHAKE_FAILURE"),
        "refused by the server: {said}"
    );
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let err = srv.stderr();
    assert!(
        err.contains(" tls_handshakes=12 tls_failures=1 (not_tls=0 handshake=1 "),
        "{err}"
    );
}

#[test]
fn two_hundred_tls_clients_over_four_workers() {
    let c = Certs::new("many");
    let (cert, key) = c.pair("a");
    let (mut srv, addr) = start_tls(&cert, &key, &["--maxListeners", "4"]);
    let cfg13 = client_config(&[&cert], &[&TLS13]);
    let cfg12 = client_config(&[&cert], &[&TLS12]);
    // All connect first, then all echo: 200 open TLS connections at once.
    let barrier = Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200u64)
        .map(|i| {
            let cfg = if i % 2 == 0 {
                cfg13.clone()
            } else {
                cfg12.clone()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = tls_connect(addr, &cfg);
                barrier.wait();
                echo(&mut s, &pattern(1000 + (i as usize * 997) % 70_000, i));
                s.conn.send_close_notify();
                s.flush().unwrap();
                sees_close_notify(&mut s, Duration::from_secs(20)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let err = srv.stderr();
    assert!(err.contains(" tls_handshakes=200 tls_failures=0 "), "{err}");
}

/// The first bytes a TLS client sends (its ClientHello record).
fn client_hello(cert: &Path) -> Vec<u8> {
    let cfg = client_config(&[cert], &[&TLS13, &TLS12]);
    let mut c = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

#[test]
fn garbage_truncation_and_silence_close_only_those_connections() {
    let c = Certs::new("bad");
    let (cert, key) = c.pair("a");
    let (mut srv, addr) = start_tls(
        &cert,
        &key,
        &["--tls-handshake-timeout", "500ms", "--maxListeners", "2"],
    );
    let cfg = client_config(&[&cert], &[&TLS13]);
    // A good client, connected throughout.
    let mut good = tls_connect(addr, &cfg);
    echo(&mut good, b"before");

    // Plaintext on the TLS port: an alert and a close, long before the handshake timeout.
    let start = Instant::now();
    let mut garbage = connect(addr);
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = garbage.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&21), "a TLS alert record: {reply:?}");
    assert!(
        start.elapsed() < Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );

    // A truncated ClientHello, then EOF: closed at once, counted as truncated.
    let hello = client_hello(&cert);
    let mut cut = connect(addr);
    cut.write_all(&hello[..hello.len() / 2]).unwrap();
    cut.shutdown(Shutdown::Write).unwrap();
    assert!(sees_close(&mut cut, Duration::from_secs(5)));

    // A truncated ClientHello that stays, and silent connections: the handshake timeout.
    let start = Instant::now();
    let mut stuck = connect(addr);
    stuck.write_all(&hello[..10]).unwrap();
    let mut silent: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    // Meanwhile the good client and a new one are served at once.
    echo(&mut good, b"during");
    let mut fresh = tls_connect(addr, &cfg);
    echo(&mut fresh, &pattern(200_000, 3));
    for s in silent.iter_mut().chain([&mut stuck]) {
        assert!(
            sees_close(s, Duration::from_secs(5)),
            "not closed by the handshake timeout"
        );
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "handshake timeout of 500ms took {took:?}"
    );
    // The handshake timeout does not touch established connections.
    echo(&mut good, b"after");
    echo(&mut fresh, b"after");
    drop((good, fresh));
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let err = srv.stderr();
    assert!(
        err.contains("tls_failures=23 (not_tls=1 handshake=0 bad_record=0 truncated=1 timeout=21)"),
        "{err}"
    );
}

#[test]
fn tls_behind_max_connections_idle_timeout_and_the_drain() {
    let c = Certs::new("limits");
    let (cert, key) = c.pair("a");
    let cfg = client_config(&[&cert], &[&TLS13, &TLS12]);
    let (srv, addr) = start_tls(
        &cert,
        &key,
        &["--max-connections", "2", "--idle-timeout", "1s"],
    );
    let mut a = tls_connect(addr, &cfg);
    let mut b = tls_connect(addr, &cfg);
    echo(&mut a, b"a");
    echo(&mut b, b"b");
    // The third, TLS or plain, is closed at once.
    let mut third = connect(addr);
    assert!(sees_close(&mut third, Duration::from_secs(5)));
    let mut plain = connect(srv.addr);
    assert!(sees_close(&mut plain, Duration::from_secs(5)));
    // Idle for a second: closed, with our close_notify first.
    let start = Instant::now();
    sees_close_notify(&mut a, Duration::from_secs(5)).unwrap();
    sees_close_notify(&mut b, Duration::from_secs(5)).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    // Room again.
    let mut d = tls_connect(addr, &cfg);
    echo(&mut d, b"d");
    drop(srv);

    // The drain closes a quiet TLS connection with close_notify too.
    let (mut srv, addr) = start_tls(&cert, &key, &[]);
    let mut e = tls_connect(addr, &cfg);
    echo(&mut e, b"e");
    srv.signal("TERM");
    sees_close_notify(&mut e, Duration::from_secs(5)).unwrap();
    srv.assert_exit(0, Duration::from_secs(10));
}

#[test]
fn plain_and_tls_on_the_same_server_at_once() {
    let c = Certs::new("both");
    let (cert, key) = c.pair("a");
    let (srv, addr) = start_tls(&cert, &key, &["--maxListeners", "2"]);
    let cfg = client_config(&[&cert], &[&TLS13]);
    let plain_addr = srv.addr;
    let data = pattern(3 << 20, 11);
    let d = data.clone();
    let plain = std::thread::spawn(move || echo_round(plain_addr, &d));
    let mut t = tls_connect(addr, &cfg);
    echo(&mut t, &data);
    assert!(plain.join().unwrap() == data);
    // A TLS client on the plain port gets its ClientHello back, not a handshake.
    let mut s = connect(srv.addr);
    let hello = client_hello(&cert);
    s.write_all(&hello).unwrap();
    assert_eq!(read_n(&mut s, hello.len()), hello);
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let c = Certs::new("reload");
    let (cert, key) = c.pair("live");
    let (cert_b, key_b) = c.pair("next");
    let (cert_a, _) = (c.dir.join("first-cert.pem"), ());
    std::fs::copy(&cert, &cert_a).unwrap();
    let cfg = client_config(&[&cert_a, &cert_b], &[&TLS13, &TLS12]);
    let (mut srv, addr) = start_tls(&cert, &key, &[]);
    let mut old = tls_connect(addr, &cfg);
    let first = peer_cert(&old);
    echo(&mut old, b"old");

    // A good new pair: new connections get it, the open one keeps working.
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    srv.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .stderr()
            .contains("reload: reloaded TLS certificate from")),
        "{}",
        srv.stderr()
    );
    let new = tls_connect(addr, &cfg);
    let second = peer_cert(&new);
    assert_ne!(first, second, "the new certificate is served");
    assert_eq!(
        second.as_ref(),
        epoll_echo::tls::config::load_certs(&cert_b).unwrap()[0].as_ref()
    );
    echo(&mut old, b"still served");

    // A bad file: an error naming it, the current pair stays, the server goes on.
    std::fs::write(&key, b"not a key").unwrap();
    srv.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .stderr()
            .contains("reload failed, keeping the old state: TLS: --tls-key")),
        "{}",
        srv.stderr()
    );
    assert!(
        srv.stderr().contains(key.to_str().unwrap()),
        "{}",
        srv.stderr()
    );
    let mut third = tls_connect(addr, &cfg);
    assert_eq!(peer_cert(&third), second);
    echo(&mut third, b"third");
    echo(&mut old, b"old again");
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
}

#[test]
fn proxy_header_then_tls_and_both_deadlines() {
    let c = Certs::new("proxy");
    let (cert, key) = c.pair("a");
    let args = [
        "--proxy-protocol",
        "--proxy-header-timeout",
        "300ms",
        "--tls-handshake-timeout",
        "1500ms",
        "-v",
    ];
    let (mut srv, addr) = start_tls(&cert, &key, &args);
    let cfg = client_config(&[&cert], &[&TLS13, &TLS12]);
    // The PROXY header first (in clear, as a load balancer sends it), then TLS on the rest.
    let mut sock = connect(addr);
    sock.write_all(b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n")
        .unwrap();
    let conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .expect("TLS after the PROXY header");
    }
    echo(&mut s, &pattern(100_000, 5));
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .contains("PROXY client 198.51.100.7:40000")
            || srv.stderr().contains("198.51.100.7")),
        "{}",
        srv.stderr()
    );
    // No header: the header timeout (300ms). A header and then silence: the handshake
    // timeout (1.5s after the accept), not the header timeout.
    let start = Instant::now();
    let mut bare = connect(addr);
    let mut headed = connect(addr);
    headed
        .write_all(b"PROXY TCP4 198.51.100.8 192.0.2.1 40001 443\r\n")
        .unwrap();
    assert!(sees_close(&mut bare, Duration::from_secs(5)));
    let bare_took = start.elapsed();
    assert!(sees_close(&mut headed, Duration::from_secs(5)));
    let headed_took = start.elapsed();
    assert!(bare_took < Duration::from_millis(1200), "{bare_took:?}");
    assert!(
        headed_took >= Duration::from_millis(1400) && headed_took < Duration::from_secs(4),
        "{headed_took:?}"
    );
    echo(&mut s, b"still here");
    drop(s);
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let err = srv.stderr();
    assert!(err.contains("proxy_timeout=1"), "{err}");
    assert!(err.contains("timeout=1)"), "{err}");
    assert!(err.contains("(TLS handshake timeout)"), "{err}");
}

/// An in-process server's configuration: 3 workers on 127.0.0.1, plain and TLS on
/// kernel-chosen ports.
fn in_process_config(cert: &Path, key: &Path) -> epoll_echo::Config {
    epoll_echo::Config {
        host: Some("127.0.0.1".parse().unwrap()),
        port: 0,
        workers: 3,
        tls: Some(epoll_echo::tls::TlsSettings {
            port: 0,
            reloader: epoll_echo::tls::TlsReloader::load(cert, key).unwrap(),
            handshake_timeout: Duration::from_secs(10),
        }),
        ..epoll_echo::Config::default()
    }
}

#[test]
fn in_process_tls_addr_port_zero_is_shared_by_the_workers() {
    let c = Certs::new("inproc");
    let (cert, key) = c.pair("a");
    let config = in_process_config(&cert, &key);
    let running = epoll_echo::Server::new(config).unwrap().start().unwrap();
    let addr = running.tls_addr().expect("a TLS address");
    assert_ne!(addr.port(), 0);
    assert_ne!(addr.port(), running.local_addr().port());
    // The kernel-chosen port (the first worker's, handed to the others) serves TLS.
    let cfg = client_config(&[&cert], &[&TLS13]);
    let mut clients: Vec<Tls> = (0..30).map(|_| tls_connect(addr, &cfg)).collect();
    for (i, s) in clients.iter_mut().enumerate() {
        echo(s, &pattern(1000, i as u64));
    }
    // Published once per loop pass: wait for it.
    assert!(wait_until(Duration::from_secs(5), || running
        .stats()
        .tls
        .handshakes
        == 30));
    drop(clients);
    running.shutdown_handle().shutdown();
    let summary = running.wait().unwrap();
    assert_eq!(summary.totals.tls.handshakes, 30);
    assert_eq!(summary.totals.tls.failures(), 0);
}

/// `TCP_NOTSENT_LOWAT` of each of this process's listening sockets on `port` (one per worker).
fn listener_lowats(port: u16) -> Vec<u32> {
    use std::os::fd::BorrowedFd;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: only borrowed for the calls below, while the server (which owns the
        // descriptor) runs; a descriptor that closed meanwhile fails the calls, nothing more.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let on_port = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port());
        if sock.is_listener().unwrap_or(false) && on_port == Some(port) {
            out.push(
                sock.tcp_notsent_lowat()
                    .expect("getsockopt TCP_NOTSENT_LOWAT"),
            );
        }
    }
    out
}

#[test]
fn notsent_lowat_is_set_on_the_plain_listeners_and_not_on_the_tls_ones() {
    let c = Certs::new("lowat");
    let (cert, key) = c.pair("a");
    let config = epoll_echo::Config {
        notsent_lowat: 64 * 1024,
        ..in_process_config(&cert, &key)
    };
    let running = epoll_echo::Server::new(config).unwrap().start().unwrap();
    let tls = running.tls_addr().expect("a TLS address").port();
    // Each worker's listener (and the copy kept for a graceful restart's hand-over).
    let plain = listener_lowats(running.local_addr().port());
    assert!(
        plain.len() >= 3 && plain.iter().all(|&v| v == 65536),
        "{plain:?}"
    );
    // TLS output always goes through pending output, and the mark cost TLS server CPU: the
    // kernel's default (0 here: not set).
    let tls = listener_lowats(tls);
    assert!(tls.len() >= 3 && tls.iter().all(|&v| v == 0), "{tls:?}");
    running.shutdown_handle().shutdown();
    running.wait().unwrap();
}
