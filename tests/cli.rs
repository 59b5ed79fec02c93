//! Command-line behaviour of the real binary: bad values exit 2 naming the flag, startup
//! failures exit 1 naming the address and the OS error.

mod common;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A bad command line must not start a server: it exits on its own, promptly.
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("epoll-echo {args:?} did not exit");
    }
    child.wait_with_output().unwrap()
}

fn assert_usage_error(args: &[&str], flag: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(flag),
        "{args:?}: message should name {flag}: {err}"
    );
}

#[test]
fn bad_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "70000"], "--port"),
        (&["--port", "-1"], "--port"),
        (&["--port", "abc"], "--port"),
        (&["--maxListeners", "0"], "--maxListeners"),
        (&["--maxListeners", "many"], "--maxListeners"),
        (&["--max-listeners", "-3"], "--maxListeners"),
        (&["--host", "localhost"], "--host"),
        (&["--host", "300.1.1.1"], "--host"),
        (&["--backlog", "0"], "--backlog"),
        (&["--backlog", "abc"], "--backlog"),
        (&["--max-pending", "-1"], "--max-pending"),
        (&["--max-pending", "0"], "--max-pending"),
        (&["--max-pending", "lots"], "--max-pending"),
        (&["--max-pending", "1G"], "--max-pending"),
        (&["--notsent-lowat", "-1"], "--notsent-lowat"),
        (&["--notsent-lowat", "lots"], "--notsent-lowat"),
        (&["--notsent-lowat", "2G"], "--notsent-lowat"),
        (&["--notsent-lowat", "4294967296"], "--notsent-lowat"),
        (&["--notsent-lowat="], "--notsent-lowat"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-connections", "-5"], "--max-connections"),
        (&["--idle-timeout", "soon"], "--idle-timeout"),
        (&["--idle-timeout", "-1s"], "--idle-timeout"),
        (&["--shutdown-timeout", "5 parsecs"], "--shutdown-timeout"),
        (&["--stats-interval", "often"], "--stats-interval"),
        (&["--log-level", "loud"], "--log-level"),
        (&["--splice=sometimes"], "--splice"),
        (&["--splice="], "--splice"),
        // The value must be joined with `=` (a bare --splice means on): a separate word is
        // refused, named, rather than taken as the mode.
        (&["--splice", "auto"], "'auto'"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, flag) in cases {
        assert_usage_error(args, flag);
    }
}

#[test]
fn env_configures_and_flags_win() {
    let out = Command::new(BIN)
        .env("PORT", "99999")
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "--version ignores PORT");
    let mut cmd = Command::new(BIN);
    cmd.env("PORT", "99999").env("MAX_LISTENERS", "3");
    cmd.args(["--host", "127.0.0.1", "--port", "0"]);
    let srv = ServerProc::spawn(cmd);
    assert_eq!(srv.listening_sockets(), 3, "MAX_LISTENERS=3");
    let out = Command::new(BIN).env("PORT", "99999").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad PORT in env is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn address_in_use_exits_1_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["--host", "127.0.0.1", "--port", &port]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn unavailable_address_exits_1() {
    // TEST-NET-1 is never assigned to this machine.
    let out = run(&["--host", "192.0.2.1", "--port", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("192.0.2.1"), "{err}");
    assert!(
        err.contains("not available") || err.contains("assign"),
        "{err}"
    );
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--maxListeners",
        "--host",
        "--backlog",
        "--max-pending",
        "--notsent-lowat",
        "--max-connections",
        "--idle-timeout",
        "--shutdown-timeout",
        "--stats-interval",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("epoll-echo "));
}

#[test]
fn one_startup_line_and_no_per_connection_logs() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    for _ in 0..10 {
        assert_eq!(echo_round(srv.addr, b"x"), b"x");
    }
    let err = srv.stderr();
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(
        err.contains(&format!("listening on {} with 2 worker(s)", srv.addr)),
        "{err}"
    );
}

#[test]
fn stats_interval_prints_per_worker_lines() {
    let srv = ServerProc::start(&["--maxListeners", "2", "--stats-interval", "200ms"]);
    let mut c = connect(srv.addr);
    std::io::Write::write_all(&mut c, b"abc").unwrap();
    assert_eq!(read_n(&mut c, 3), b"abc");
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .lines()
            .any(|l| l.starts_with("stats: active=1 accepted=1 ")
                && l.contains("bytes_in=3 bytes_out=3"))),
        "stats lines: {}",
        srv.stderr()
    );
    let line = srv
        .stderr()
        .lines()
        .find(|l| l.starts_with("stats:"))
        .unwrap()
        .to_string();
    assert!(line.contains("workers=["), "{line}");
    assert_eq!(
        line.split("workers=[")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap()
            .split(',')
            .count(),
        2
    );
}

#[test]
fn readme_shows_the_real_help() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&format!("$ epoll-echo --help\n{help}```")),
        "README's --help block is stale: paste the output of `epoll-echo --help`"
    );
}

#[test]
fn verbose_logs_each_connection_with_its_address() {
    let srv = ServerProc::start(&["--maxListeners", "1", "-v"]);
    let c = connect(srv.addr);
    let me = c.local_addr().unwrap();
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .stderr()
            .contains(&format!("close {me} (client finished)"))),
        "{}",
        srv.stderr()
    );
    assert!(
        srv.stderr().contains(&format!("debug: accept {me}")),
        "{}",
        srv.stderr()
    );
}

/// Timeouts too long to add to a clock are clamped ("never"), not an overflow panic: the server
/// serves, drains and exits 0 with either flag at the largest values.
#[test]
fn huge_timeouts_neither_overflow_nor_panic() {
    // The first is clamped at parse time; the second (the largest f64 below 2^64 s) parses,
    // and overflowed "now + timeout" before (exit 134 on SIGTERM).
    for value in ["18446744073709551615s", "18446744073709549568s"] {
        let mut srv = ServerProc::start(&[
            "--maxListeners",
            "1",
            "--idle-timeout",
            value,
            "--shutdown-timeout",
            value,
        ]);
        let mut c = connect(srv.addr);
        c.write_all(b"still here").unwrap();
        assert_eq!(read_n(&mut c, 10), b"still here", "{value}");
        srv.signal("TERM");
        assert!(
            sees_close(&mut c, Duration::from_secs(5)),
            "{value}: idle client not closed"
        );
        srv.assert_exit(0, Duration::from_secs(5));
        assert!(!srv.stderr().contains("panicked"), "{}", srv.stderr());
    }
}
