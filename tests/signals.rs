//! Signals other than the drain (see shutdown.rs): SIGHUP reloads and keeps serving.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn sighup_reloads_and_keeps_serving_then_sigterm_drains() {
    let mut srv = ServerProc::start(&["--maxListeners", "2", "--shutdown-timeout", "20s"]);
    let mut open = connect(srv.addr);
    open.write_all(b"before").unwrap();
    assert_eq!(read_n(&mut open, 6), b"before");
    for round in 1..=2 {
        srv.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(10), || {
                srv.stderr().matches("reload: nothing to reload").count() == round
            }),
            "no reload line: {}",
            srv.stderr()
        );
        assert!(
            srv.child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the server"
        );
        open.write_all(b"after HUP").unwrap();
        assert_eq!(read_n(&mut open, 9), b"after HUP", "the open connection");
        let data = pattern(50_000, round as u64);
        assert!(echo_round(srv.addr, &data) == data, "a new connection");
    }
    assert!(!srv.stderr().contains("draining"), "{}", srv.stderr());
    // SIGTERM still drains: a client busy at the signal gets its whole echo, then EOF.
    let data = pattern(4 << 20, 5);
    let mut s = connect(srv.addr);
    let writer = send_then_half_close(&s, &data);
    let mut got = read_n(&mut s, 1000);
    srv.signal("TERM");
    std::io::Read::read_to_end(&mut s, &mut got).expect("the rest of the echo, then EOF");
    writer.join().unwrap();
    assert!(got == data, "echo differs after SIGTERM");
    drop(open);
    srv.assert_exit(0, Duration::from_secs(15));
    assert!(srv.stderr().contains("shutdown: "), "{}", srv.stderr());
}

/// With stderr gone (a closed pipe: the log reader died), SIGTERM must still stop the server:
/// a log line that cannot be written is dropped, never a panic in the signal thread.
#[test]
fn sigterm_still_works_when_stderr_is_a_closed_pipe() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    drop(err); // the read end closes: every later write to stderr fails with EPIPE
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let _ = child.kill();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "no clean exit after SIGTERM with stderr closed"
    );
}
