//! Reference peer for `bench/run.py`: the textbook tokio echo server (as in tokio's own
//! `examples/echo.rs`), multi-thread runtime, one task per connection.
//!
//! usage: tokio-echo PORT [--threads N]   (or TOKIO_ECHO_THREADS=N; default: runtime default)

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn usage() -> ! {
    eprintln!("usage: tokio-echo PORT [--threads N]   (env TOKIO_ECHO_THREADS=N)");
    std::process::exit(2);
}

fn main() {
    let mut port: Option<u16> = None;
    let mut threads: Option<usize> = std::env::var("TOKIO_ECHO_THREADS")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--threads" {
            threads = Some(args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()));
        } else if let Some(v) = a.strip_prefix("--threads=") {
            threads = Some(v.parse().unwrap_or_else(|_| usage()));
        } else if port.is_none() {
            port = Some(a.parse().unwrap_or_else(|_| usage()));
        } else {
            usage();
        }
    }
    let port = port.unwrap_or_else(|| usage());
    if let Some(n) = threads.filter(|&n| n > 0) {
        // #[tokio::main]'s multi-thread runtime sizes its worker pool from this variable.
        std::env::set_var("TOKIO_WORKER_THREADS", n.to_string());
    }
    serve(port);
}

#[tokio::main]
async fn serve(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
