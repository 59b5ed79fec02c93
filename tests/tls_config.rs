//! TLS configuration of the real binary: every bad combination of flags and every bad
//! certificate or key file exits 2 before anything listens, with a message naming the flag and
//! the file. Certificates are made at test time with the `openssl` command line.
#![cfg(feature = "tls")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A temporary directory with a good certificate and key, removed on drop.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("epoll-echo-tls-it-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = Certs::pair(&dir, "good");
        Certs { dir, cert, key }
    }

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}-cert.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        (cert, key)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TLS_PORT")
        .env_remove("TLS_CERT")
        .env_remove("TLS_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("epoll-echo {args:?} did not exit");
    }
    child.wait_with_output().unwrap()
}

/// Exit 2, every `needles` in the message, and no listener ever started.
fn assert_config_error(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let out = run(args, env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?} {env:?}: message should contain {n:?}: {err}"
        );
    }
    assert!(
        !err.contains("listening on"),
        "{args:?}: started listening: {err}"
    );
}

#[test]
fn tls_flags_without_their_partners_exit_2() {
    let c = Certs::new("flags");
    let (cert, key) = (c.cert.to_str().unwrap(), c.key.to_str().unwrap());
    let p = ["-p", "0", "--tls-port", "0"];
    assert_config_error(&p, &[], &["--tls-cert", "--tls-key"]);
    assert_config_error(
        &[&p[..], &["--tls-cert", cert]].concat(),
        &[],
        &["--tls-key"],
    );
    assert_config_error(
        &["--tls-cert", cert, "--tls-key", key],
        &[],
        &["--tls-port"],
    );
    assert_config_error(&["--tls-key", key], &[], &["--tls-port"]);
    // From the environment too.
    assert_config_error(&["-p", "0"], &[("TLS_PORT", "0")], &["--tls-cert"]);
    assert_config_error(
        &["-p", "0"],
        &[("TLS_CERT", cert), ("TLS_KEY", key)],
        &["--tls-port"],
    );
    // Same port as the plain listener; a bad handshake timeout.
    let same = [
        "-p",
        "9443",
        "--tls-port",
        "9443",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    assert_config_error(&same, &[], &["--tls-port 9443", "same port"]);
    let bad_timeout = [
        &p[..],
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-handshake-timeout",
            "0",
        ],
    ]
    .concat();
    assert_config_error(&bad_timeout, &[], &["--tls-handshake-timeout"]);
}

#[test]
fn bad_certificate_and_key_files_exit_2_naming_flag_and_file() {
    let c = Certs::new("files");
    let (cert, key) = (
        c.cert.to_str().unwrap().to_string(),
        c.key.to_str().unwrap().to_string(),
    );
    let (other_cert, other_key) = Certs::pair(&c.dir, "other");
    let missing = c.dir.join("missing.pem");
    let empty = c.write("empty.pem", b"");
    let garbage = c.write("garbage.pem", b"not pem at all\n");
    let half = {
        let text = std::fs::read(&c.cert).unwrap();
        c.write("half.pem", &text[..text.len() / 2])
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let dir = s(&c.dir);
    let cases: Vec<(String, String, &str, String, &str)> = vec![
        (
            s(&missing),
            key.clone(),
            "--tls-cert",
            s(&missing),
            "no such file",
        ),
        (
            cert.clone(),
            s(&missing),
            "--tls-key",
            s(&missing),
            "no such file",
        ),
        (s(&empty), key.clone(), "--tls-cert", s(&empty), "empty"),
        (cert.clone(), s(&empty), "--tls-key", s(&empty), "empty"),
        (
            s(&garbage),
            key.clone(),
            "--tls-cert",
            s(&garbage),
            "not a valid PEM",
        ),
        (
            cert.clone(),
            s(&garbage),
            "--tls-key",
            s(&garbage),
            "not a valid PEM",
        ),
        (
            s(&half),
            key.clone(),
            "--tls-cert",
            s(&half),
            "not a valid PEM",
        ),
        (
            dir.clone(),
            key.clone(),
            "--tls-cert",
            dir.clone(),
            "cannot read",
        ),
        // The certificate given as the key, the key given as the certificate.
        (
            cert.clone(),
            cert.clone(),
            "--tls-key",
            cert.clone(),
            "no private key",
        ),
        (
            key.clone(),
            key.clone(),
            "--tls-cert",
            key.clone(),
            "no certificate",
        ),
        // A key from another pair.
        (
            cert.clone(),
            s(&other_key),
            "--tls-key",
            s(&other_key),
            "does not match the certificate",
        ),
        (
            s(&other_cert),
            key.clone(),
            "--tls-key",
            key.clone(),
            "does not match the certificate",
        ),
    ];
    for (cert_arg, key_arg, flag, file, what) in cases {
        let args = [
            "-p",
            "0",
            "--tls-port",
            "0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
        ];
        let named = format!("{flag} {file}: ");
        assert_config_error(&args, &[], &[&named, what]);
        // The same through the environment.
        let env = [
            ("TLS_PORT", "0"),
            ("TLS_CERT", cert_arg.as_str()),
            ("TLS_KEY", key_arg.as_str()),
        ];
        assert_config_error(&["-p", "0"], &env, &[&named, what]);
    }
}
