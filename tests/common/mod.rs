//! Shared helpers for the integration tests: run the real binary on port 0, talk to it, and
//! poll with deadlines (never a bare sleep as synchronisation).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_epoll-echo");

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A deterministic xorshift generator for seeded tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `n` bytes covering all 256 values, varied by `seed`.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).bytes(n)
}

/// The server binary running as a child process.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProc {
    /// Starts `epoll-echo --host 127.0.0.1 --port 0 ARGS` and waits for its startup line.
    pub fn start(args: &[&str]) -> ServerProc {
        let mut cmd = Command::new(BIN);
        cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        ServerProc::spawn(cmd)
    }

    /// Starts a prepared command (stderr is captured) and waits for its startup line.
    pub fn spawn(mut cmd: Command) -> ServerProc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn epoll-echo");
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("address in startup line"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", stderr.lock().unwrap());
            }
        };
        ServerProc {
            child,
            addr,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_some() {
            // The process is gone: collect the rest of its stderr.
            if let Some(r) = self.reader.take() {
                r.join().unwrap();
            }
        }
        status
    }

    /// Asserts the process exits with `code` within `timeout`.
    pub fn assert_exit(&mut self, code: i32, timeout: Duration) {
        let status = self
            .wait_exit(timeout)
            .unwrap_or_else(|| panic!("still running after {timeout:?}: {}", self.stderr()));
        assert_eq!(
            status.code(),
            Some(code),
            "exit status; stderr: {}",
            self.stderr()
        );
    }

    /// Open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); index 11 and 12 after the state field.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Listening TCP sockets on our port (from /proc/net/tcp and tcp6).
    pub fn listening_sockets(&self) -> usize {
        let port = format!(":{:04X}", self.addr.port());
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
            })
            .count()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with a generous read timeout so a broken server fails a test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `data` from one thread while reading the echo on this one, then half-closes and
/// expects EOF right after the echo. Returns what came back.
pub fn echo_round(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in owned.chunks(100_000) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut out = Vec::with_capacity(data.len());
    (&s).read_to_end(&mut out).expect("read echo to EOF");
    writer.join().unwrap();
    out
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read echo");
    buf
}

/// True if the peer closed: a read returns EOF (or a reset) within `timeout`.
pub fn sees_close(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A client that writes and never reads, on its own thread, until the connection breaks.
/// Returns the writer and its running byte count.
pub fn flood_without_reading(
    s: &TcpStream,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut w = s.try_clone().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = written.clone();
    let chunk = pattern(65536, 3);
    let handle = std::thread::spawn(move || {
        while w.write_all(&chunk).is_ok() {
            count.fetch_add(chunk.len(), Relaxed);
        }
    });
    (handle, written)
}

/// Waits until a writer's byte count stops moving for a 200 ms observation window: every
/// buffer between it and the server is full and the server has stopped reading it.
pub fn wait_stalled(written: &std::sync::atomic::AtomicUsize, timeout: Duration) -> bool {
    wait_all_stalled(&[written], timeout)
}

/// [`wait_stalled`] for several writers at once (their total stops moving).
pub fn wait_all_stalled(written: &[&std::sync::atomic::AtomicUsize], timeout: Duration) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = usize::MAX;
    wait_until(timeout, || {
        let now: usize = written.iter().map(|w| w.load(Relaxed)).sum();
        let stalled = now == last && written.iter().all(|w| w.load(Relaxed) > 0);
        last = now;
        if !stalled {
            std::thread::sleep(Duration::from_millis(200)); // observation window, not sync
        }
        stalled
    })
}

/// A served client that then writes without ever reading, returned once every buffer between
/// it and the server is full: the server cannot drain it. Its writer thread ends when the
/// connection breaks.
pub fn stuck_client(addr: SocketAddr) -> (TcpStream, std::thread::JoinHandle<()>) {
    let mut s = connect(addr);
    s.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut s, 1), b"x", "connection is being served");
    let (writer, written) = flood_without_reading(&s);
    assert!(
        wait_stalled(&written, Duration::from_secs(20)),
        "writer never blocked"
    );
    (s, writer)
}

/// Writes `data` from a thread, then shuts down the write side (as `nc -N` does).
pub fn send_then_half_close(s: &TcpStream, data: &[u8]) -> std::thread::JoinHandle<()> {
    let mut w = s.try_clone().unwrap();
    let data = data.to_vec();
    std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    })
}

/// Connects with a 4 KiB receive buffer (set before connect, so the window stays small):
/// the server cannot send ahead, so its echo waits in its pending output.
pub fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Writes a self-signed P-256 certificate for localhost and 127.0.0.1 (with the
/// subjectAltName and CA:FALSE that rustls and Python's ssl insist on) and its key.
pub fn self_signed_cert(cert: &std::path::Path, key: &std::path::Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The address of a server's `--metrics-addr` endpoint, from its "metrics on" startup line.
pub fn metrics_addr(srv: &ServerProc) -> SocketAddr {
    let log = srv.stderr();
    log.split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics line in: {log}"))
        .parse()
        .expect("metrics address")
}
