//! Test-only: [`TlsSession`] behind a plain blocking loopback socket, against Python's `ssl`
//! module (OpenSSL): TLS 1.2 and 1.3 echo with a clean close both ways, TLS 1.1 refused.
//! Skipped when python3 is missing, except under `CI=true`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::ServerConfig;

use super::config;
use super::session::{TlsFailure, TlsSession};
use super::testcert::{KeyFormat, TestDir};

/// Serves one connection with a blocking socket: send everything queued, read, feed.
fn serve_one(listener: TcpListener, config: Arc<ServerConfig>) -> JoinHandle<Option<TlsFailure>> {
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut session = TlsSession::new(config, 256 * 1024).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut failure = None;
        loop {
            while !session.transmit().is_empty() {
                match sock.write(session.transmit()) {
                    Ok(n) => session.on_sent(n),
                    Err(_) => return failure, // the peer is gone
                }
            }
            if session.is_done() {
                return failure;
            }
            let n = sock.read(&mut buf).expect("read (timed out?)");
            let r = if n == 0 {
                session.receive_eof()
            } else {
                session.receive(&buf[..n])
            };
            if let Err(e) = r {
                failure = Some(e);
            }
        }
    })
}

const CLIENT: &str = r#"
import socket, ssl, sys
port, cafile, version, sizes = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
v = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile)
if version == "1.1":
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = v
ctx.maximum_version = v
raw = socket.create_connection(("127.0.0.1", port), timeout=20)
try:
    s = ctx.wrap_socket(raw, server_hostname="localhost")
except ssl.SSLError as e:
    print("refused", e.reason)
    sys.exit(3)
got_version = s.version()
total = 0
for size in map(int, sizes.split(",")):
    data = bytes((i * 7 + size) % 256 for i in range(size))
    for off in range(0, max(size, 1), 16384):
        piece = data[off:off + 16384]
        s.sendall(piece)
        back = b""
        while len(back) < len(piece):
            chunk = s.recv(len(piece) - len(back))
            assert chunk, "EOF before the echo"
            back += chunk
        assert back == piece, "echo differs"
        total += len(piece)
s.unwrap()  # our close_notify, then the server's
print("ok", got_version, total)
"#;

fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("-c")
        .arg("import ssl")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with ssl is required under CI"
        );
        eprintln!("skipped: python3 with ssl not found");
        return None;
    }
    Some("python3")
}

/// Runs the Python client against one served connection: (exit code, stdout, server's failure).
fn run_client(version: &str, sizes: &str) -> Option<(i32, String, Option<TlsFailure>)> {
    let py = python()?;
    let dir = TestDir::new("interop");
    let (cert, key) = dir.pair("py", KeyFormat::EcdsaPkcs8);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_one(listener, config::load(&cert, &key).unwrap());
    let out = Command::new(py)
        .args([
            "-c",
            CLIENT,
            &port.to_string(),
            cert.to_str().unwrap(),
            version,
            sizes,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = server.join().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        format!("{stdout}{stderr}"),
        failure,
    ))
}

#[test]
fn tls_interop_python_echo_tls12_and_tls13() {
    for (version, name) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let Some((code, out, failure)) = run_client(version, "0,1,16383,16385,3000000") else {
            return;
        };
        assert_eq!(code, 0, "TLS {version}: {out}");
        assert_eq!(out, format!("ok {name} 3032769"), "TLS {version}");
        assert_eq!(failure, None, "TLS {version}");
    }
}

#[test]
fn tls_interop_python_tls11_is_refused() {
    let Some((code, out, failure)) = run_client("1.1", "1") else {
        return;
    };
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("refused"), "{out}");
    assert!(
        matches!(failure, Some(TlsFailure::Handshake(_))),
        "{failure:?}"
    );
}
