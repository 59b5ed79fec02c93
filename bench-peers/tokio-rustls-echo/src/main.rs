//! Reference TLS peer for `bench/run.py`: the textbook tokio-rustls echo server (rustls with
//! the ring provider, TLS 1.2 and 1.3, no session resumption tickets beyond rustls's
//! defaults), multi-thread runtime, one task per connection, 16 KiB reads.
//!
//! usage: tokio-rustls-echo PORT CERT.pem KEY.pem [--threads N] [--host IP]

use std::net::IpAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

fn usage() -> ! {
    eprintln!("usage: tokio-rustls-echo PORT CERT.pem KEY.pem [--threads N] [--host IP]");
    std::process::exit(2);
}

fn main() {
    let mut pos = Vec::new();
    let mut threads: Option<usize> = None;
    let mut host: IpAddr = "0.0.0.0".parse().expect("literal");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = Some(args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()))
            }
            "--host" => host = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            _ => pos.push(a),
        }
    }
    let [port, cert, key] = &pos[..] else { usage() };
    let port: u16 = port.parse().unwrap_or_else(|_| usage());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| {
            eprintln!("tokio-rustls-echo: {cert}: {e}");
            std::process::exit(2)
        });
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| {
        eprintln!("tokio-rustls-echo: {key}: {e}");
        std::process::exit(2)
    });
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap_or_else(|e| {
        eprintln!("tokio-rustls-echo: certificate/key: {e}");
        std::process::exit(2)
    });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = threads.filter(|&n| n > 0) {
        rt.worker_threads(n);
    }
    let rt = rt.build().expect("tokio runtime");
    rt.block_on(serve(host, port, TlsAcceptor::from(Arc::new(config))));
}

async fn serve(host: IpAddr, port: u16, acceptor: TlsAcceptor) {
    let listener = TcpListener::bind((host, port)).await.expect("bind");
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let Ok(mut tls) = acceptor.accept(socket).await else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if tls.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            // The client's close_notify (or EOF): answer with ours.
            let _ = tls.shutdown().await;
        });
    }
}
