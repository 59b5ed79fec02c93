//! echo-bench end to end: against the real server it must report zero errors and exit 0;
//! against broken servers written here (one flips bytes, one closes mid-stream, one never
//! answers) and a closed port it must report errors and exit 1, without hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_echo-bench");
/// No echo-bench run here may take longer (they are all asked for about a second).
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// The real server on a kernel-chosen port; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

/// The server binary: `$EPOLL_ECHO_BIN`, else `epoll-echo` beside echo-bench in the shared
/// target directory (`cargo test --workspace` builds it for the server's own tests).
fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EPOLL_ECHO_BIN") {
        return p.into();
    }
    let p = Path::new(BENCH).with_file_name("epoll-echo");
    assert!(
        p.exists(),
        "{} not found: run `cargo test --workspace` (which builds it), or set EPOLL_ECHO_BIN",
        p.display()
    );
    p
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(server_binary())
            .args(["--port", "0", "--maxListeners", "2", "--host", "127.0.0.1"])
            .env_remove("PORT")
            .env_remove("MAX_LISTENERS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start epoll-echo");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads stderr until the server exits, so a chatty server never blocks on the pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split(' ').next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening on ADDR' line from epoll-echo: {e}");
            }
        };
        addr.parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in the startup line: {e}"));
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Outcome {
    /// A whole-number field of the one JSON line.
    fn field(&self, key: &str) -> u64 {
        let pat = format!("\"{key}\":");
        let at = self
            .stdout
            .find(&pat)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.stdout));
        let digits: String = self.stdout[at + pat.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{key} in {:?}", self.stdout))
    }
}

impl Outcome {
    /// A quantile (`p99`…) of a histogram object (`latency_us`…) of the JSON line, in µs.
    fn quantile(&self, hist: &str, q: &str) -> f64 {
        let obj = format!("\"{hist}\":{{");
        let at = self
            .stdout
            .find(&obj)
            .unwrap_or_else(|| panic!("no {hist} in {:?}", self.stdout));
        let rest = &self.stdout[at + obj.len()..];
        let pat = format!("\"{q}\":");
        let from = rest.find(&pat).expect("quantile") + pat.len();
        let num: String = rest[from..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse()
            .unwrap_or_else(|_| panic!("{hist}.{q} in {:?}", self.stdout))
    }
}

/// Runs echo-bench without PORT to completion (killed and failed after `RUN_LIMIT`).
fn bench(args: &[&str]) -> Outcome {
    bench_port(args, None)
}

/// Runs echo-bench with PORT set to `port` (or unset) to completion.
fn bench_port(args: &[&str], port: Option<u16>) -> Outcome {
    let t0 = Instant::now();
    let mut cmd = Command::new(BENCH);
    match port {
        Some(p) => cmd.env("PORT", p.to_string()),
        None => cmd.env_remove("PORT"),
    };
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo-bench");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // stdout reaches EOF when echo-bench exits.
    let stdout = match rx.recv_timeout(RUN_LIMIT) {
        Ok(s) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("echo-bench {args:?} still running after {RUN_LIMIT:?}");
        }
    };
    let status = child.wait().expect("wait for echo-bench");
    Outcome {
        code: status.code(),
        stdout,
        stderr: err_reader.join().expect("stderr reader"),
        took: t0.elapsed(),
    }
}

/// A `--json` run that must succeed with work done and no errors.
fn assert_clean(mode: &str, addr: &str, extra: &[&str]) {
    let mut args = vec![mode, "--addr", addr, "--duration", "1s", "--json"];
    args.extend_from_slice(extra);
    let o = bench(&args);
    assert_eq!(o.code, Some(0), "{args:?}: {}{}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout.lines().count(),
        1,
        "one line of JSON: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.starts_with(&format!("{{\"mode\":\"{mode}\",")),
        "{}",
        o.stdout
    );
    assert_eq!(o.field("errors"), 0, "{}", o.stdout);
    assert!(o.field("round_trips") > 0, "{}", o.stdout);
}

#[test]
fn pingpong_against_the_real_server_is_clean() {
    let server = Server::start();
    assert_clean(
        "pingpong",
        &server.addr,
        &["--connections", "20", "--threads", "2"],
    );
}

#[test]
fn bulk_against_the_real_server_is_clean() {
    let server = Server::start();
    assert_clean(
        "bulk",
        &server.addr,
        &["--connections", "2", "--threads", "1"],
    );
}

#[test]
fn churn_against_the_real_server_is_clean() {
    let server = Server::start();
    assert_clean(
        "churn",
        &server.addr,
        &["--connections", "4", "--threads", "1"],
    );
}

#[test]
fn probe_and_the_default_table_against_the_real_server() {
    let server = Server::start();
    let o = bench(&["probe", "--addr", &server.addr]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.starts_with(&format!("ok {} ", server.addr)),
        "{}",
        o.stdout
    );
    assert_eq!(o.stdout.lines().count(), 1);

    // No MODE and no --addr: pingpong against 127.0.0.1:$PORT, human table.
    let port = server.addr.rsplit(':').next().unwrap();
    let o = Command::new(BENCH)
        .args(["--duration", "300ms", "--connections", "3"])
        .env("PORT", port)
        .output()
        .expect("run echo-bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("pingpong → 127.0.0.1:{port}")),
        "{stdout}"
    );
    assert!(stdout.contains("\nerrors          0\n"), "{stdout}");
}

/// Nothing on the default 127.0.0.1:$PORT (as after `docker run IMAGE --port 9000` with the
/// image's PORT=8080): probe falls back to the listening ports in /proc/net/tcp{,6}. Other
/// tests' servers (and the host's) listen too, so it may find several and fail, naming
/// them; either way it says so, and it never hangs.
#[test]
fn probe_discovers_the_port_when_the_default_refuses() {
    let server = Server::start();
    let port = server.addr.rsplit(':').next().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port(); // dropped: nothing listens there now
    let o = bench_port(&["probe", "--timeout", "3s"], Some(closed));
    assert!(o.took < Duration::from_secs(5), "probe took {:?}", o.took);
    let discovered = format!(
        "ok {} (discovered: nothing on 127.0.0.1:{closed}) ",
        server.addr
    );
    let several = format!("FAIL 127.0.0.1:{closed}: connect: ");
    if o.code == Some(0) {
        assert!(o.stdout.starts_with(&discovered), "{}", o.stdout);
    } else {
        assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
        assert!(o.stdout.starts_with(&several), "{}", o.stdout);
        let ports = o
            .stdout
            .split("; discovery: several listening ports: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{}", o.stdout));
        assert!(
            ports.trim_end().split(", ").any(|p| p == port),
            "port {port} not among {ports:?}"
        );
    }

    // An explicit --addr is never second-guessed.
    let o = bench_port(&["probe", "--addr", &format!("127.0.0.1:{closed}")], None);
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(!o.stdout.contains("discover"), "{}", o.stdout);
}

/// How a [`Broken`] server misbehaves.
#[derive(Clone, Copy)]
enum Fault {
    /// Echo everything, but flip a bit of byte 7 of every `n` bytes of each stream.
    Flip(usize),
    /// Echo the first `n` bytes of each connection, then close it.
    CloseAfter(usize),
    /// Read everything, echo nothing.
    Silent,
    /// Echo everything, but once `n` bytes have come in, stall for 300 ms (once per connection).
    StallOnce(usize),
    /// Echo everything, each read's echo 10 ms late.
    Slow,
}

/// A misbehaving echo server on 127.0.0.1, one thread per connection.
struct Broken {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl Broken {
    fn start(fault: Fault) -> Broken {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || serve(conn, fault));
                }
            }
        });
        Broken {
            addr: addr.to_string(),
            stop,
        }
    }
}

impl Drop for Broken {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop to see `stop`
    }
}

fn serve(mut conn: TcpStream, fault: Fault) {
    // A client that vanishes without closing must not keep this thread forever.
    let _ = conn.set_read_timeout(Some(RUN_LIMIT));
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let out = match fault {
            Fault::Flip(every) => {
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    if (pos + i) % every == 7 {
                        *b ^= 0x20;
                    }
                }
                n
            }
            Fault::CloseAfter(limit) => n.min(limit - pos),
            Fault::Silent => 0,
            Fault::StallOnce(at) => {
                if pos < at && pos + n >= at {
                    thread::sleep(Duration::from_millis(300)); // the server's stall, not a sync
                }
                n
            }
            Fault::Slow => {
                thread::sleep(Duration::from_millis(10)); // the server's slowness, not a sync
                n
            }
        };
        if conn.write_all(&buf[..out]).is_err() {
            return;
        }
        pos += n;
        if let Fault::CloseAfter(limit) = fault
            && pos >= limit
        {
            return; // drops (closes) the connection mid-stream
        }
    }
}

/// A `--json` run that must fail with errors counted.
fn assert_errors(mode: &str, addr: &str, extra: &[&str]) -> Outcome {
    let mut args = vec![mode, "--addr", addr];
    args.extend_from_slice(extra);
    for (flag, default) in [("--duration", "1s"), ("--timeout", "1s")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    let o = bench(&args);
    assert_eq!(o.code, Some(1), "{args:?}: {}{}", o.stdout, o.stderr);
    o
}

#[test]
fn corrupted_echo_is_an_error() {
    let server = Broken::start(Fault::Flip(4096));
    let o = assert_errors("pingpong", &server.addr, &["--connections", "5"]);
    assert!(o.stdout.contains("\n  mismatch "), "{}", o.stdout);
    assert!(o.stdout.contains("byte 7 sent 0x"), "{}", o.stdout);
    let o = assert_errors("bulk", &server.addr, &["--json"]);
    assert!(o.field("errors") > 0, "{}", o.stdout);
    let o = assert_errors("probe", &server.addr, &[]);
    assert!(
        o.stdout
            .starts_with(&format!("FAIL {}: byte 7 ", server.addr)),
        "{}",
        o.stdout
    );
}

#[test]
fn server_closing_mid_stream_is_an_error() {
    let server = Broken::start(Fault::CloseAfter(1000));
    let o = assert_errors("pingpong", &server.addr, &["--connections", "3", "--json"]);
    assert!(o.field("errors") >= 3, "{}", o.stdout);
    // Exchanges before the close did complete, and were counted.
    assert!(o.field("round_trips") >= 3 * (1000 / 64), "{}", o.stdout);
    let o = assert_errors("bulk", &server.addr, &[]);
    assert!(
        o.stdout.contains("\n  closed early ") || o.stdout.contains("\n  reset "),
        "{}",
        o.stdout
    );
    let short = Broken::start(Fault::CloseAfter(10));
    let o = assert_errors("probe", &short.addr, &[]);
    assert!(o.stdout.starts_with("FAIL "), "{}", o.stdout);
}

#[test]
fn silent_server_and_closed_port_fail_in_bounded_time() {
    let silent = Broken::start(Fault::Silent);
    let o = assert_errors("probe", &silent.addr, &["--timeout", "300ms"]);
    assert!(o.stdout.contains("timed out"), "{}", o.stdout);
    assert!(o.took < Duration::from_secs(2), "probe took {:?}", o.took);
    let o = assert_errors(
        "pingpong",
        &silent.addr,
        &["--duration", "200ms", "--timeout", "300ms"],
    );
    assert!(o.stdout.contains("\n  stall "), "{}", o.stdout);
    assert!(
        o.took < Duration::from_secs(3),
        "pingpong took {:?}",
        o.took
    );

    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("local addr").to_string()
    }; // dropped: nothing listens there now
    let o = assert_errors("probe", &closed, &[]);
    assert!(
        o.stdout.starts_with(&format!("FAIL {closed}: connect")),
        "{}",
        o.stdout
    );
    let o = assert_errors("pingpong", &closed, &["--json"]);
    assert_eq!(o.field("errors"), 50, "{}", o.stdout);
    assert_eq!(o.field("round_trips"), 0, "{}", o.stdout);
}

/// The open loop (wrk2's correction) must show a 300 ms stall in p99; the closed loop against
/// the same server records it as one slow sample (max) and its p99 hides it.
#[test]
fn open_loop_shows_a_stall_that_the_closed_loop_hides() {
    // One connection, 1000 requests/s for 1.5 s: the stall comes after ~0.3 s and delays the
    // ~300 requests scheduled during it, a fifth of all, by up to 300 ms each.
    let server = Broken::start(Fault::StallOnce(64 * 300));
    let open = bench(&[
        "pingpong",
        "--addr",
        &server.addr,
        "--connections",
        "1",
        "--rate",
        "1000",
        "--duration",
        "1500ms",
        "--json",
    ]);
    assert_eq!(open.code, Some(0), "{}{}", open.stdout, open.stderr);
    assert_eq!(open.field("errors"), 0, "{}", open.stdout);
    assert!(
        open.stdout
            .contains("\"requested_rate\":1000.0,\"kept_up\":true,"),
        "{}",
        open.stdout
    );
    assert!(
        open.quantile("latency_us", "p99") >= 250_000.0,
        "{}",
        open.stdout
    );
    // The same run's service times (from the actual send) hide it as the closed loop does.
    assert!(
        open.quantile("service_time_us", "p99") < 100_000.0,
        "{}",
        open.stdout
    );

    let closed = bench(&[
        "pingpong",
        "--addr",
        &server.addr,
        "--connections",
        "1",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(closed.code, Some(0), "{}{}", closed.stdout, closed.stderr);
    assert!(
        !closed.stdout.contains("requested_rate"),
        "{}",
        closed.stdout
    );
    assert!(
        closed.quantile("latency_us", "max") >= 250_000.0,
        "{}",
        closed.stdout
    );
    assert!(
        closed.quantile("latency_us", "p99") < 100_000.0,
        "{}",
        closed.stdout
    );
}

/// A server slower than --rate: achieved rate reported, a warning, kept_up false; not an error.
#[test]
fn open_loop_says_when_the_server_cannot_keep_up() {
    let server = Broken::start(Fault::Slow); // at most ~100 round trips/s per connection
    let o = bench(&[
        "pingpong",
        "--addr",
        &server.addr,
        "--connections",
        "2",
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .contains("\"requested_rate\":1000.0,\"kept_up\":false,"),
        "{}",
        o.stdout
    );
    assert!(o.field("round_trips_per_sec") < 500, "{}", o.stdout);
    assert!(
        o.stderr.contains("warning: the server did not keep up"),
        "{}",
        o.stderr
    );
    let o = bench(&["bulk", "--addr", &server.addr, "--rate", "10"]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("--rate applies to pingpong only"),
        "{}",
        o.stderr
    );
}

/// How an in-test UDP echo thread treats the `n`-th datagram (from 1).
#[derive(Clone, Copy)]
enum UdpFault {
    None,
    /// Flip a bit in byte 20 of datagram 100.
    FlipOne,
    /// Drop every 50th datagram.
    DropEvery50,
}

/// A blocking recv_from/send_to echo thread on 127.0.0.1; it stops when dropped.
struct UdpEcho {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    fn start(fault: UdpFault) -> UdpEcho {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = sock.local_addr().expect("local addr").to_string();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue; // the read timeout: look at `stop` again
                };
                n += 1;
                match fault {
                    UdpFault::DropEvery50 if n.is_multiple_of(50) => continue,
                    UdpFault::FlipOne if n == 100 => buf[20] ^= 1,
                    _ => {}
                }
                let _ = sock.send_to(&buf[..len], from);
            }
        });
        UdpEcho { addr, stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn udp_against_a_good_echo_is_clean() {
    let echo = UdpEcho::start(UdpFault::None);
    let o = bench(&[
        "udp",
        "--addr",
        &echo.addr,
        "--connections",
        "4",
        "--window",
        "8",
        "--size",
        "100",
        "--duration",
        "500ms",
        "--timeout",
        "1s",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .starts_with("{\"mode\":\"udp\",\"connections\":4,\"window\":8,\"size\":100,"),
        "{}",
        o.stdout
    );
    assert_eq!((o.field("errors"), o.field("lost")), (0, 0), "{}", o.stdout);
    assert!(o.field("round_trips") > 100, "{}", o.stdout);
    assert_eq!(o.field("sent"), o.field("round_trips"), "{}", o.stdout);
    assert!(o.quantile("latency_us", "p99") > 0.0, "{}", o.stdout);
}

#[test]
fn udp_corrupted_reply_is_an_error_and_a_dropped_one_is_lost() {
    let flip = UdpEcho::start(UdpFault::FlipOne);
    let o = bench(&[
        "udp",
        "--addr",
        &flip.addr,
        "--duration",
        "500ms",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("\n  mismatch      1 "), "{}", o.stdout);
    assert!(o.stdout.contains(" byte 20 sent 0x"), "{}", o.stdout);

    let lossy = UdpEcho::start(UdpFault::DropEvery50);
    let o = bench(&[
        "udp",
        "--addr",
        &lossy.addr,
        "--duration",
        "500ms",
        "--timeout",
        "200ms",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert_eq!(o.field("errors"), 0, "{}", o.stdout);
    let (sent, lost, rts) = (o.field("sent"), o.field("lost"), o.field("round_trips"));
    assert!(lost > 0 && lost <= sent / 50 + 1, "{}", o.stdout);
    assert_eq!(sent, lost + rts, "{}", o.stdout);

    // Nothing listening: ICMP port unreachable comes back as a refusal, an error per socket.
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").to_string()
    };
    let o = bench(&["udp", "--addr", &closed, "--duration", "300ms", "--json"]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert_eq!(o.field("round_trips"), 0, "{}", o.stdout);
    assert!(o.field("errors") > 0, "{}", o.stdout);
    let o = bench(&["udp", "--addr", &closed, "--size", "4"]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--size 4"), "{}", o.stderr);
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, plus a second,
/// unrelated CA, made with the openssl command in a temporary directory (removed on drop).
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("echo-bench-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca = |name: &str| {
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-days", "2", "-subj"]);
            a.push(if name == "ca" {
                "/CN=echo-test-ca"
            } else {
                "/CN=other-ca"
            });
            a
        };
        let steps: Vec<Vec<String>> = vec![
            [ca("ca"), vec!["-keyout", "ca.key", "-out", "ca.pem"]].concat(),
            [
                ca("other"),
                vec!["-keyout", "other.key", "-out", "other.pem"],
            ]
            .concat(),
            [
                vec!["req"],
                ec.to_vec(),
                vec![
                    "-keyout",
                    "key.pem",
                    "-out",
                    "srv.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext",
                "-out",
                "cert.pem",
            ],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(&dir)
                .output()
                .expect("run openssl (install the openssl package)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking rustls echo server on 127.0.0.1 (thread per connection) with `certs`'s
/// server certificate; answers the client's close_notify with its own.
fn tls_echo(certs: &Certs) -> String {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(certs.path("cert.pem"))
        .expect("cert.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert.pem");
    let key = PrivateKeyDer::from_pem_file(certs.path("key.pem")).expect("key.pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            let config = config.clone();
            thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(RUN_LIMIT));
                let conn = rustls::ServerConnection::new(config).expect("server connection");
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) => {
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                            return;
                        }
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn tls_pingpong_bulk_handshake_and_probe_are_clean() {
    let certs = Certs::make();
    let addr = tls_echo(&certs);
    let ca = certs.path("ca.pem");
    let tls = ["--tls", "--tls-ca", ca.as_str()];
    assert_clean(
        "pingpong",
        &addr,
        &[&tls[..], &["--connections", "4"]].concat(),
    );
    assert_clean("bulk", &addr, &tls);
    // The host of --addr (127.0.0.1) is the default name; the certificate's DNS name works too.
    assert_clean(
        "handshake",
        &addr,
        &[
            &tls[..],
            &["--connections", "2", "--server-name", "localhost"],
        ]
        .concat(),
    );
    let o = bench(
        &[
            &[
                "handshake",
                "--addr",
                &addr,
                "--duration",
                "300ms",
                "--json",
            ],
            &tls[..],
        ]
        .concat(),
    );
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(o.field("handshakes") > 0, "{}", o.stdout);
    assert_eq!(
        o.field("handshakes"),
        o.field("round_trips"),
        "{}",
        o.stdout
    );
    let o = bench(&[&["probe", "--addr", &addr][..], &tls].concat());
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with(&format!("ok {addr} ")), "{}", o.stdout);
}

#[test]
fn tls_wrong_name_or_untrusted_ca_fails() {
    let certs = Certs::make();
    let addr = tls_echo(&certs);
    let ca = certs.path("ca.pem");
    let other = certs.path("other.pem");
    for (ca, name, why) in [
        (
            ca.as_str(),
            "wrong.example",
            "not valid for name \"wrong.example\"",
        ),
        (other.as_str(), "localhost", "UnknownIssuer"),
    ] {
        let tls = ["--tls", "--tls-ca", ca, "--server-name", name];
        let o = assert_errors(
            "pingpong",
            &addr,
            &[&tls[..], &["--connections", "3"]].concat(),
        );
        assert!(
            o.stdout.contains("\n  tls           3 (first: "),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains(why), "{}", o.stdout);
        assert!(o.stdout.contains("\nround trips     0 "), "{}", o.stdout);
        let o = assert_errors("handshake", &addr, &[&tls[..], &["--json"]].concat());
        assert!(o.field("errors") > 0, "{}", o.stdout);
        assert_eq!(o.field("handshakes"), 0, "{}", o.stdout);
        let o = assert_errors("bulk", &addr, &tls);
        assert!(o.stdout.contains("\n  tls "), "{}", o.stdout);
        let o = assert_errors("probe", &addr, &tls);
        assert!(
            o.stdout.starts_with("FAIL ") && o.stdout.contains(why),
            "{}",
            o.stdout
        );
    }
    // A CA file that is not one, and handshake without --tls: usage errors, exit 2.
    let o = bench(&[
        "pingpong",
        "--addr",
        &addr,
        "--tls",
        "--tls-ca",
        &certs.path("ext"),
    ]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("--tls-ca ") && o.stderr.contains("ext"),
        "{}",
        o.stderr
    );
    let o = bench(&["handshake", "--addr", &addr]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
}
