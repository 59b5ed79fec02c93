//! Thin entry point: parse flags, install the signal handling, run the library, map the exit.
//!
//! Signals (one thread reads them, via signal-hook's self-pipe):
//! - SIGINT, SIGTERM: drain gracefully; a second one exits at once with status 130.
//! - SIGHUP: reload (the server's reload hooks); serving goes on.
//! - SIGUSR2: graceful restart — a new process takes the listeners over (see `restart`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use epoll_echo::cli::Cli;
use epoll_echo::log::{self, Level};
use epoll_echo::restart::{self, PidFile, Restarter};
use epoll_echo::{Config, Server, ShutdownHandle, listeners};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

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
            let _ = writeln!(std::io::stderr(), "epoll-echo: error: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&cli, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "epoll-echo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, config: Config) -> std::io::Result<()> {
    #[cfg(feature = "tls")]
    let tls_on = config.tls.is_some();
    #[cfg(not(feature = "tls"))]
    let tls_on = false;
    // A graceful restart's child: take over the inherited descriptors before anything else.
    listeners::adopt_inherited()?;
    let ready = restart::adopt_ready_pipe()?;
    let restarter = Arc::new(Restarter::new());
    let server = Server::new(config)?;
    // Installed before any listener binds: a signal that arrives as soon as the port accepts
    // still shuts down gracefully.
    let handle = server.shutdown_handle();
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
    let signals_handle = signals.handle();
    let reader = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let restarting = Arc::new(AtomicBool::new(false));
            let mut stops = 0;
            for sig in signals.forever() {
                match sig {
                    SIGINT | SIGTERM => {
                        stops += 1;
                        if stops > 1 {
                            std::process::exit(130);
                        }
                        handle.shutdown();
                        epoll_echo::log!(
                            Level::Info,
                            "signal received: draining (signal again to exit now)"
                        );
                    }
                    SIGHUP => handle.reload(),
                    SIGUSR2 => restart_in_background(&restarter, &handle, &restarting),
                    _ => {}
                }
            }
        })?;
    let running = server.start()?;
    let pid_file = cli.pid_file.as_deref().map(PidFile::write).transpose();
    let pid_file = match pid_file {
        Ok(p) => p,
        Err(e) => {
            running.shutdown_handle().shutdown();
            let _ = running.wait();
            return Err(e);
        }
    };
    if let Some(pipe) = ready
        && let Err(e) = restart::signal_ready(pipe)
    {
        // The old process is gone (it would have killed us had it given up on us): it was
        // told to stop while we started, so this process stops too.
        epoll_echo::log!(
            Level::Warn,
            "restart: the old process is gone ({e}); shutting down"
        );
        running.shutdown_handle().shutdown();
    }
    let summary = running.wait();
    if let Some(p) = pid_file {
        p.remove();
    }
    signals_handle.close();
    let _ = reader.join();
    let summary = summary?;
    let t = summary.totals;
    if log::enabled(Level::Info) {
        let _ = writeln!(
            std::io::stderr(),
            "shutdown: accepted={} refused={} idle_closed={} bytes_in={} bytes_out={} duration={:.1}s{}{}{}",
            t.accepted,
            t.refused,
            t.idle_closed,
            t.bytes_in,
            t.bytes_out,
            summary.duration.as_secs_f64(),
            udp_summary(cli, &t.udp), // UDP hook (#12)
            t.per_ip,                 // per-client refusals (#13)
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

/// SIGUSR2: one restart at a time, on its own thread (it waits for the new process, and
/// SIGTERM must still be handled meanwhile).
fn restart_in_background(
    restarter: &Arc<Restarter>,
    handle: &ShutdownHandle,
    restarting: &Arc<AtomicBool>,
) {
    if restarting.swap(true, Ordering::SeqCst) {
        epoll_echo::log!(Level::Warn, "restart: already in progress; SIGUSR2 ignored");
        return;
    }
    let (r, h, flag) = (restarter.clone(), handle.clone(), restarting.clone());
    let spawned = std::thread::Builder::new()
        .name("restart".into())
        .spawn(move || {
            if let Err(e) = r.restart(&h) {
                epoll_echo::log!(Level::Error, "restart failed, still serving: {e}");
            }
            flag.store(false, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        epoll_echo::log!(Level::Error, "restart failed, still serving: spawn: {e}");
        restarting.store(false, Ordering::SeqCst);
    }
}
