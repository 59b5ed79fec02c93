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
        let before = seen.ok.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(10), || seen.ok.load(Ordering::Relaxed)
                > before + 50),
            "no churn before restart {round}"
        );
        signal(pid, "USR2");
        let mut new = None;
        assert!(
            wait_until(Duration::from_secs(15), || {
                new = read_pid(&pid_file).filter(|&p| p != pid);
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
            exit_code(&mut srv, pid, Duration::from_secs(15)),
            Some(0),
            "restart {round}: old pid {pid} did not exit 0: {}",
            srv.stderr()
        );
        let at = seen.ok.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(10), || seen.ok.load(Ordering::Relaxed)
                > at + 50),
            "no churn after restart {round}"
        );
        pid = new;
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
