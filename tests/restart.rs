//! Graceful restart (SIGUSR2) and --pid-file, against the real binary under connection churn.
//!
//! The old processes of a restart are not children of the test (each new process is started
//! by the previous one), so the test makes itself their child subreaper to collect their exit
//! statuses.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A fresh temporary directory for this test (removed by the caller).
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("epoll-echo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an executable file from a child process (`sh`), never from this one: a file this
/// multi-threaded test process held open for writing could be inherited by a child another
/// test thread forks at that moment, and exec'ing the file would then fail with ETXTBSY.
fn write_exe(path: &Path, content: &[u8]) {
    let mut sh = Command::new("sh")
        .args([
            "-c",
            "cat > \"$1.tmp\" && chmod 755 \"$1.tmp\" && mv \"$1.tmp\" \"$1\"",
            "sh",
        ])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin.take().unwrap().write_all(content).unwrap();
    assert!(sh.wait().unwrap().success(), "write {}", path.display());
}

fn copy_exe(to: &Path) {
    write_exe(to, &std::fs::read(BIN).unwrap());
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer argument and affects only
    // which process adopts our orphaned descendants.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// Waits up to `timeout` for descendant `pid` (a child, or an orphan we adopted) to exit;
/// returns its exit code.
fn reap(pid: i32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        assert!(
            r == 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10)); // bounded by the deadline above
    }
}

/// Exit code of `pid`: through std for the test's own child (so std never signals a reaped
/// pid), through [`reap`] for the orphans adopted as subreaper.
fn exit_code(srv: &mut ServerProc, pid: i32, timeout: Duration) -> Option<i32> {
    if pid != srv.pid() as i32 {
        return reap(pid, timeout);
    }
    let mut code = None;
    wait_until(timeout, || {
        code = srv
            .child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1));
        code.is_some()
    });
    code
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// What the churn client saw.
#[derive(Default)]
struct Churn {
    ok: AtomicU64,
    refused: AtomicU64,
    broken: AtomicU64,
}

/// Connect, echo 64 bytes, close — in a loop until `stop`. Every failure is counted.
fn churn(addr: SocketAddr, stop: &AtomicBool, seen: &Churn) {
    let msg = pattern(64, 3);
    for _ in 0..1_000_000u32 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("churn: connect: {e}");
                seen.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut back = [0u8; 64];
        match s.write_all(&msg).and_then(|_| s.read_exact(&mut back)) {
            Ok(()) if back[..] == msg[..] => seen.ok.fetch_add(1, Ordering::Relaxed),
            Ok(()) => panic!("echo differs"),
            Err(e) => {
                eprintln!("churn: echo: {e}");
                seen.broken.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// One graceful restart of `pid` under load: waits for `progress` to move (50 more), sends
/// SIGUSR2, waits for the pid file to name a new running process and the old one to exit 0,
/// then for `progress` to move again. Returns the new pid.
fn restart(
    srv: &mut ServerProc,
    pid_file: &Path,
    pid: i32,
    round: u32,
    progress: &dyn Fn() -> u64,
) -> i32 {
    let before = progress();
    assert!(
        wait_until(Duration::from_secs(10), || progress() > before + 50),
        "no progress before restart {round}"
    );
    signal(pid, "USR2");
    let mut new = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            new = read_pid(pid_file).filter(|&p| p != pid);
            new.is_some()
        }),
        "restart {round}: the pid file still names {pid}: {}",
        srv.stderr()
    );
    let new = new.unwrap();
    assert!(
        alive(new),
        "restart {round}: pid {new} in the pid file is not running"
    );
    assert_eq!(
        exit_code(srv, pid, Duration::from_secs(15)),
        Some(0),
        "restart {round}: old pid {pid} did not exit 0: {}",
        srv.stderr()
    );
    let at = progress();
    assert!(
        wait_until(Duration::from_secs(10), || progress() > at + 50),
        "no progress after restart {round}"
    );
    new
}

#[test]
fn three_restarts_under_churn_refuse_nothing() {
    become_subreaper();
    let dir = temp_dir("restart");
    let pid_file = dir.join("echo.pid");
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let first = srv.pid() as i32;
    assert!(
        wait_until(Duration::from_secs(5), || read_pid(&pid_file)
            == Some(first)),
        "pid file"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Churn::default());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, addr) = (stop.clone(), seen.clone(), srv.addr);
            std::thread::spawn(move || churn(addr, &stop, &seen))
        })
        .collect();
    let mut pid = first;
    for round in 1..=3 {
        pid = restart(&mut srv, &pid_file, pid, round, &|| {
            seen.ok.load(Ordering::Relaxed)
        });
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let log = srv.stderr();
    assert_eq!(
        seen.refused.load(Ordering::Relaxed),
        0,
        "refused connections: {log}"
    );
    assert_eq!(
        seen.broken.load(Ordering::Relaxed),
        0,
        "reset or cut echoes: {log}"
    );
    assert_eq!(
        log.matches("is serving; draining this process").count(),
        3,
        "{log}"
    );
    eprintln!(
        "{} churn connections echoed across 3 restarts",
        seen.ok.load(Ordering::Relaxed)
    );
    signal(pid, "TERM");
    assert_eq!(reap(pid, Duration::from_secs(15)), Some(0), "last process");
    assert!(
        !pid_file.exists(),
        "pid file left behind by the last process"
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_process_that_fails_leaves_the_old_one_serving() {
    become_subreaper();
    let dir = temp_dir("restart-fail");
    // A copy of the binary we can replace by a broken "upgrade".
    let exe = dir.join("epoll-echo");
    copy_exe(&exe);
    let pid_file = dir.join("echo.pid");
    let mut cmd = Command::new(&exe);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "2"])
        .arg("--pid-file")
        .arg(&pid_file);
    let mut srv = ServerProc::spawn(cmd);
    let pid = srv.pid() as i32;
    assert!(wait_until(Duration::from_secs(5), || read_pid(&pid_file) == Some(pid)));
    let fds = srv.fd_count();
    write_exe(&exe, b"#!/bin/sh\nexit 3\n");

    srv.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(15), || srv
            .stderr()
            .contains("restart failed, still serving")),
        "{}",
        srv.stderr()
    );
    assert!(
        srv.stderr().contains("exited before it was ready"),
        "{}",
        srv.stderr()
    );
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "the old process stopped"
    );
    assert_eq!(read_pid(&pid_file), Some(pid), "the pid file changed hands");
    let data = pattern(100_000, 4);
    assert!(
        echo_round(srv.addr, &data) == data,
        "not serving after the failed restart"
    );
    assert!(
        wait_until(Duration::from_secs(5), || srv.fd_count() == fds),
        "descriptors for the child not closed: {} before, {} after",
        fds,
        srv.fd_count()
    );
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    assert!(!pid_file.exists(), "pid file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_process_that_never_gets_ready_is_killed_after_the_timeout() {
    become_subreaper();
    let dir = temp_dir("restart-hang");
    let exe = dir.join("epoll-echo");
    copy_exe(&exe);
    let mut cmd = Command::new(&exe);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"]);
    let mut srv = ServerProc::spawn(cmd);
    let fds = srv.fd_count();
    // The "upgrade" keeps the inherited descriptors open and never says it is ready.
    write_exe(&exe, b"#!/bin/sh\nexec sleep 60\n");
    let t = Instant::now();
    srv.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(30), || srv
            .stderr()
            .contains("restart failed, still serving")),
        "{}",
        srv.stderr()
    );
    assert!(t.elapsed() >= Duration::from_secs(9), "gave up early");
    assert!(
        srv.stderr().contains("not ready within 10s"),
        "{}",
        srv.stderr()
    );
    let child: i32 = srv
        .stderr()
        .split(" as pid ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("the child's pid in the log");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(child)),
        "the hung child {child} still runs"
    );
    let data = pattern(10_000, 6);
    assert!(echo_round(srv.addr, &data) == data);
    assert!(
        wait_until(Duration::from_secs(5), || srv.fd_count() == fds),
        "descriptors for the child not closed"
    );
    srv.signal("TERM");
    srv.assert_exit(0, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_pid_file_exits_1_naming_it() {
    let out = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"])
        .args(["--pid-file", "/nonexistent-dir/echo.pid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pid-file /nonexistent-dir/echo.pid"),
        "{err}"
    );
}

/// SIGTERM while the new process is still starting: the old one drains and exits, and the
/// new one, finding nobody to hand over to, stops as well (no orphan keeps serving).
#[test]
fn sigterm_during_a_restart_stops_the_new_process_too() {
    become_subreaper();
    let dir = temp_dir("restart-term");
    let exe = dir.join("epoll-echo");
    let real = dir.join("epoll-echo-real");
    copy_exe(&exe);
    copy_exe(&real);
    let pid_file = dir.join("echo.pid");
    let mut cmd = Command::new(&exe);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"])
        .arg("--pid-file")
        .arg(&pid_file);
    let mut srv = ServerProc::spawn(cmd);
    let script = format!("#!/bin/sh\nsleep 1\nexec '{}' \"$@\"\n", real.display());
    write_exe(&exe, script.as_bytes());
    srv.signal("USR2");
    assert!(wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains("waiting for it to serve")));
    srv.signal("TERM");
    let child: i32 = srv
        .stderr()
        .split(" as pid ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("the child's pid in the log");
    let old = srv.pid() as i32;
    assert_eq!(
        exit_code(&mut srv, old, Duration::from_secs(15)),
        Some(0),
        "old process"
    );
    assert_eq!(
        reap(child, Duration::from_secs(15)),
        Some(0),
        "the new process did not stop: {}",
        srv.stderr()
    );
    assert!(!pid_file.exists(), "pid file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The inodes of the sockets bound to `port` (from /proc/net/{tcp,udp}{,6}); for TCP only the
/// listening ones. The same inodes after a restart: the very sockets were handed on.
fn socket_inodes(proto: &str, port: u16) -> Vec<u64> {
    let port = format!(":{port:04X}");
    let mut inodes: Vec<u64> = [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let listening = proto != "tcp" || f.get(3) == Some(&"0A");
            (f.len() > 9 && f[1].ends_with(&port) && listening)
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect();
    inodes.sort_unstable();
    inodes
}

/// The address on the server's `PREFIX ADDR` startup line.
fn logged_addr(srv: &ServerProc, prefix: &str) -> SocketAddr {
    let mut addr = None;
    wait_until(Duration::from_secs(10), || {
        addr = srv
            .stderr()
            .split(prefix)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no '{prefix}' startup line: {}", srv.stderr()))
}

#[cfg(feature = "tls")]
mod tls_churn {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    /// A self-signed P-256 certificate for localhost and 127.0.0.1, and its key, in `dir`.
    pub fn cert_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self_signed_cert(&cert, &key);
        (cert, key)
    }

    pub fn client_config(ca: &Path) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in epoll_echo::tls::config::load_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// Connect, full TLS handshake, echo 64 bytes, close — until `stop`. A failed TCP connect
    /// counts as refused; a failed handshake or echo (a reset, a cut) as broken.
    pub fn churn(addr: SocketAddr, cfg: &Arc<ClientConfig>, stop: &AtomicBool, seen: &Churn) {
        let msg = pattern(64, 5);
        for _ in 0..1_000_000u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sock = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tls churn: connect: {e}");
                    seen.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(cfg.clone(), name).unwrap();
            let mut s = StreamOwned::new(conn, sock);
            let mut back = [0u8; 64];
            let r = (|| {
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock)?;
                }
                s.write_all(&msg)?;
                s.flush()?;
                s.read_exact(&mut back)
            })();
            match r {
                Ok(()) if back[..] == msg[..] => seen.ok.fetch_add(1, Ordering::Relaxed),
                Ok(()) => panic!("TLS echo differs"),
                Err(e) => {
                    eprintln!("tls churn: handshake or echo: {e}");
                    seen.broken.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// The TLS listeners are handed on too: three restarts under steady churn of TLS clients (a
/// full handshake each) refuse and reset nothing, and the TLS listening sockets after the
/// restarts are the very ones of the first process.
#[cfg(feature = "tls")]
#[test]
fn three_restarts_under_tls_churn_reset_nothing() {
    become_subreaper();
    let dir = temp_dir("restart-tls");
    let (cert, key) = tls_churn::cert_pair(&dir);
    let pid_file = dir.join("echo.pid");
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--tls-port",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let tls_addr = logged_addr(&srv, "TLS (1.2, 1.3) on ");
    let first = srv.pid() as i32;
    assert!(wait_until(Duration::from_secs(5), || read_pid(&pid_file)
        == Some(first)));
    let inodes = socket_inodes("tcp", tls_addr.port());
    assert_eq!(inodes.len(), 2, "one TLS listener per worker");
    let cfg = tls_churn::client_config(&cert);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Churn::default());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, cfg) = (stop.clone(), seen.clone(), cfg.clone());
            std::thread::spawn(move || tls_churn::churn(tls_addr, &cfg, &stop, &seen))
        })
        .collect();
    let mut pid = first;
    for round in 1..=3 {
        pid = restart(&mut srv, &pid_file, pid, round, &|| {
            seen.ok.load(Ordering::Relaxed)
        });
        assert_eq!(
            socket_inodes("tcp", tls_addr.port()),
            inodes,
            "restart {round}: the TLS listeners are not the ones handed on"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let log = srv.stderr();
    let (ok, refused, broken) = (
        seen.ok.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
        seen.broken.load(Ordering::Relaxed),
    );
    assert_eq!(refused, 0, "refused TLS connections: {log}");
    assert_eq!(broken, 0, "reset or cut TLS connections: {log}");
    assert_eq!(
        log.matches("is serving; draining this process").count(),
        3,
        "{log}"
    );
    eprintln!("{ok} TLS churn connections (handshake + echo) across 3 restarts");
    signal(pid, "TERM");
    assert_eq!(reap(pid, Duration::from_secs(15)), Some(0), "last process");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The UDP sockets are handed on: a client sending one datagram at a time (each waits up to
/// 500 ms for its reply) across a restart keeps being answered, and the UDP sockets after the
/// restart are the very ones of the first process.
#[test]
fn udp_keeps_answering_across_a_restart() {
    become_subreaper();
    let dir = temp_dir("restart-udp");
    let pid_file = dir.join("echo.pid");
    let mut srv = ServerProc::start(&[
        "--maxListeners",
        "2",
        "--udp-port",
        "0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let udp_addr = logged_addr(&srv, "UDP echo on ");
    let first = srv.pid() as i32;
    assert!(wait_until(Duration::from_secs(5), || read_pid(&pid_file)
        == Some(first)));
    let inodes = socket_inodes("udp", udp_addr.port());
    assert_eq!(inodes.len(), 2, "one UDP socket per worker");
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.connect(udp_addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 64];
            for seq in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let msg = seq.to_be_bytes();
                sock.send(&msg).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                // Wait for this datagram's reply; a late reply to an earlier one is skipped.
                loop {
                    match sock.recv(&mut buf) {
                        Ok(8) if buf[..8] == msg => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            eprintln!("udp: datagram {seq} unanswered: {e}");
                            break;
                        }
                    }
                }
            }
        })
    };
    let pid = restart(&mut srv, &pid_file, first, 1, &|| {
        answered.load(Ordering::Relaxed)
    });
    assert_eq!(
        socket_inodes("udp", udp_addr.port()),
        inodes,
        "the UDP sockets are not the ones handed on"
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (sent, answered) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    eprintln!("UDP across a restart: {answered} of {sent} datagrams answered");
    assert!(
        answered * 100 >= sent * 99,
        "only {answered} of {sent} datagrams answered: {}",
        srv.stderr()
    );
    signal(pid, "TERM");
    assert_eq!(reap(pid, Duration::from_secs(15)), Some(0), "last process");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `EPOLL_ECHO_INHERIT` is checked before anything listens: an entry without a kind (the old
/// `worker:fd` form), an unknown kind, and a `udp` entry naming a TCP listener (or a `tcp` one
/// naming a UDP socket) each stop the server with exit 1 and a message naming the variable.
#[test]
fn a_bad_inherit_variable_is_refused_naming_it() {
    // Python opens the sockets, leaves them to the server across exec and names them.
    let run = |make: &str, spec: &str| {
        let script = format!(
            "import os, socket, sys\n{make}\nos.set_inheritable(s.fileno(), True)\n\
             os.environ['EPOLL_ECHO_INHERIT'] = '{spec}'.replace('FD', str(s.fileno()))\n\
             os.execv(sys.argv[1], [sys.argv[1], '--host', '127.0.0.1', '--port', '0'])\n"
        );
        // Bounded: a server that wrongly accepted the variable would serve for ever.
        let out = Command::new("timeout")
            .args(["10", "python3", "-c", &script, BIN])
            .output()
            .expect("python3");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tcp = "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()";
    let udp = "s = socket.socket(type=socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))";
    for (make, spec, want) in [
        (tcp, "0:FD", "is not kind:worker:fd"),
        (tcp, "sctp:0:FD", "'sctp' is not a kind (tcp, tls or udp)"),
        (tcp, "udp:0:FD", "not a datagram socket"),
        (udp, "tcp:0:FD", "not a listening socket"),
        (udp, "tls:0:FD", "not a listening socket"),
    ] {
        let (code, err) = run(make, spec);
        assert_eq!(code, Some(1), "{spec}: {err}");
        assert!(
            err.contains("EPOLL_ECHO_INHERIT=") && err.contains(want),
            "{spec}: want '{want}': {err}"
        );
    }
}
