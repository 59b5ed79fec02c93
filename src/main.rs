//! Thin entry point: parse flags, install the signal handler, run the library, map the exit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use epoll_echo::cli::Cli;
use epoll_echo::log::{self, Level};
use epoll_echo::{Config, Server};

fn main() -> ExitCode {
    let cli = Cli::parse(); // bad flags: message naming the flag, exit 2
    log::set_level(cli.log_level());
    #[allow(unused_mut)]
    let mut config = cli.config();
    // Certificate and key are loaded and checked before anything listens; a bad one is a usage
    // error naming the flag and the file.
    #[cfg(feature = "tls")]
    match cli.tls() {
        Ok(tls) => config.tls = tls,
        Err(e) => {
            eprintln!("epoll-echo: error: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&cli, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("epoll-echo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, config: Config) -> std::io::Result<()> {
    #[cfg(feature = "tls")]
    let tls_on = config.tls.is_some();
    #[cfg(not(feature = "tls"))]
    let tls_on = false;
    let server = Server::new(config)?;
    // Installed before any listener binds: a signal that arrives as soon as the port accepts
    // still shuts down gracefully. A second signal exits at once.
    let handle = server.shutdown_handle();
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) > 0 {
            std::process::exit(130);
        }
        epoll_echo::log!(
            Level::Info,
            "signal received: draining (signal again to exit now)"
        );
        handle.shutdown();
    })
    .map_err(std::io::Error::other)?;
    let running = server.start()?;
    let summary = running.wait()?;
    let t = summary.totals;
    if log::enabled(Level::Info) {
        eprintln!(
            "shutdown: accepted={} refused={} idle_closed={} bytes_in={} bytes_out={} duration={:.1}s{}{}",
            t.accepted,
            t.refused,
            t.idle_closed,
            t.bytes_in,
            t.bytes_out,
            summary.duration.as_secs_f64(),
            udp_summary(cli, &t.udp), // UDP hook (#12)
            if tls_on {
                t.tls.to_string() // TLS (#11)
            } else {
                String::new()
            },
        );
    }
    Ok(())
}

/// The UDP counters for the `shutdown:` line (#12); empty without `--udp-port`.
fn udp_summary(cli: &Cli, u: &epoll_echo::stats::UdpCounters) -> String {
    match cli.udp_port {
        None => String::new(),
        Some(_) => format!(
            " udp_in={} udp_out={} udp_drop_port={} udp_drop_rate={} udp_drop_full={} udp_errors={}",
            u.received, u.echoed, u.drop_port, u.drop_rate, u.drop_full, u.errors
        ),
    }
}
