//! The per-IP limit and PROXY protocol flags on the real binary: bad values exit 2 naming the
//! flag; good ones start the server.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("epoll-echo {args:?} did not exit");
    }
    child.wait_with_output().unwrap()
}

fn assert_usage_error(args: &[&str], env: &[(&str, &str)], flag: &str, why: &str) {
    let out = run(args, env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert!(err.contains(flag), "{args:?}: should name {flag}: {err}");
    assert!(err.contains(why), "{args:?}: should say {why:?}: {err}");
}

#[test]
fn bad_limit_and_proxy_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--max-conns-per-ip", "-1"], "--max-conns-per-ip", "-1"),
        (
            &["--max-conns-per-ip", "many"],
            "--max-conns-per-ip",
            "many",
        ),
        (
            &["--max-conns-per-ip", "4294967296"],
            "--max-conns-per-ip",
            "4294967296",
        ),
        (
            &["--accept-rate-per-ip", "-5"],
            "--accept-rate-per-ip",
            "-5",
        ),
        (
            &["--accept-rate-per-ip", "1.5"],
            "--accept-rate-per-ip",
            "1.5",
        ),
        (&["--ipv6-prefix", "0"], "--ipv6-prefix", "1..=128"),
        (&["--ipv6-prefix", "129"], "--ipv6-prefix", "1..=128"),
        (&["--ipv6-prefix", "/64"], "--ipv6-prefix", "/64"),
        (
            &["--proxy-header-timeout", "0"],
            "--proxy-header-timeout",
            "more than 0",
        ),
        (
            &["--proxy-header-timeout", "2h"],
            "--proxy-header-timeout",
            "limit of 1h",
        ),
        (
            &["--proxy-header-timeout", "soon"],
            "--proxy-header-timeout",
            "soon",
        ),
        (&["--proxy-protocol=maybe"], "--proxy-protocol", "maybe"),
    ];
    for (args, flag, why) in cases {
        assert_usage_error(args, &[], flag, why);
    }
    assert_usage_error(
        &[],
        &[("MAX_CONNS_PER_IP", "lots")],
        "--max-conns-per-ip",
        "lots",
    );
    assert_usage_error(
        &[],
        &[("PROXY_PROTOCOL", "maybe")],
        "--proxy-protocol",
        "maybe",
    );
    assert_usage_error(
        &[],
        &[("ACCEPT_RATE_PER_IP", "-1")],
        "--accept-rate-per-ip",
        "-1",
    );
}

#[test]
fn good_values_start_the_server_and_show_in_help() {
    let srv = ServerProc::start(&[
        "--maxListeners",
        "1",
        "--max-conns-per-ip",
        "100",
        "--accept-rate-per-ip",
        "50",
        "--ipv6-prefix",
        "128",
        "--proxy-header-timeout",
        "250ms",
    ]);
    assert_eq!(echo_round(srv.addr, b"ok"), b"ok");
    drop(srv);
    // The environment takes the usual spellings of a boolean.
    for yes in ["1", "on", "yes", "true"] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--maxListeners", "1"]);
        cmd.env("PROXY_PROTOCOL", yes);
        drop(ServerProc::spawn(cmd));
    }
    let out = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--max-conns-per-ip <N>",
        "--accept-rate-per-ip <N>",
        "--ipv6-prefix <N>",
        "--proxy-protocol",
        "--proxy-header-timeout <TIME>",
        "[env: MAX_CONNS_PER_IP=]",
        "[default: 64]",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}
