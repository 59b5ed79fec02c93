//! The real clients users poke the server with: nc, socat and telnet. Each test is skipped
//! (with a message) when its tool is not installed, except under CI (`CI=true`), whose
//! `.ci/run` installs them, where a missing tool fails the test.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing under CI"
        );
        eprintln!(
            "skipping: {tool} is not installed (apt-get install netcat-openbsd socat telnet)"
        );
    }
    found
}

/// Pipes `data` through `cmd` (which talks to the server) and returns its stdout.
fn pipe_through(mut cmd: Command, data: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn client");
    let mut stdin = child.stdin.take().unwrap();
    let d = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&d).unwrap());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success(), "client failed");
    out
}

#[test]
fn nc_with_half_close_gets_every_byte() {
    if !have("nc") {
        return;
    }
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    for data in [b"hello from nc\n".to_vec(), pattern(5 << 20, 11)] {
        let mut cmd = Command::new("nc");
        cmd.args(["-N", "127.0.0.1", &srv.addr.port().to_string()]);
        let out = pipe_through(cmd, &data);
        assert_eq!(out.len(), data.len());
        assert!(out == data, "nc echo differs");
    }
}

#[test]
fn socat_gets_every_byte() {
    if !have("socat") {
        return;
    }
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    let data = pattern(3 << 20, 12);
    let mut cmd = Command::new("socat");
    cmd.args([
        "-t",
        "10",
        "-",
        &format!("TCP:127.0.0.1:{}", srv.addr.port()),
    ]);
    let out = pipe_through(cmd, &data);
    assert_eq!(out.len(), data.len());
    assert!(out == data, "socat echo differs");
}

#[test]
fn telnet_line_comes_back() {
    if !have("telnet") {
        return;
    }
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    let mut child = Command::new("telnet")
        .args(["127.0.0.1", &srv.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn telnet");
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || seen
            .lock()
            .unwrap()
            .contains("Connected")),
        "telnet did not connect: {}",
        seen.lock().unwrap()
    );
    stdin.write_all(b"hello from telnet\r\n").unwrap();
    let echoed = wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().matches("hello from telnet").count() >= 1
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(echoed, "telnet saw: {}", seen.lock().unwrap());
}
