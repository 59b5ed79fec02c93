//! The deterministic simulator (see `epoll_echo::sim`): the worker's connection logic against
//! fake sockets, thousands of seeds, every invariant checked after every step.
//! Replay a failing seed: `SIM_SEED=<seed> cargo test --test sim sim_one`.
//! A long random run: `make soak` (`SOAK_SECS`, default 60).

use std::time::{Duration, Instant};

use epoll_echo::sim::{self, Report};

const STEPS: usize = 300;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn replay(seed: u64, steps: usize, e: &str) -> ! {
    panic!(
        "{e}\nreplay: SIM_SEED={seed} SIM_STEPS={steps} cargo test --test sim sim_one -- --nocapture"
    )
}

#[test]
fn sim_thousands_of_seeds() {
    let seeds: u64 = env("SIM_SEEDS").unwrap_or(2000);
    let mut total = Report::default();
    for seed in 0..seeds {
        match sim::run_seed(seed, STEPS) {
            Ok(r) => total += r,
            Err(e) => replay(seed, STEPS, &e),
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The runs must exercise what they claim to: every kind of ending happened.
    assert!(
        total.finished > 0 && total.quiet > 0 && total.idle > 0,
        "{total:?}"
    );
    assert!(total.shutdown_timeout > 0 && total.errors > 0, "{total:?}");
    assert!(total.bytes_echoed > 10_000_000, "{total:?}");
    // TLS clients (the TLS stage with a rustls client as the peer): clean ends with both
    // close_notifys and the whole echo, and handshake timeouts.
    if cfg!(feature = "tls") {
        assert!(total.tls_clients > 100, "{total:?}");
        assert!(total.tls_clean > 0 && total.tls_timeouts > 0, "{total:?}");
    }
    // The PROXY stage: headers consumed and the rest echoed, rejections, header timeouts.
    assert!(
        total.proxied_finished > 0 && total.rejected > 0 && total.header_timeouts > 0,
        "{total:?}"
    );
    // Bulk phases sized to the MSS (tiny, changing, failing queries) and echo through windows
    // smaller than one segment happened, under every invariant above.
    assert!(
        total.mss_queries > 100 && total.sub_segment_window_bytes > 100_000,
        "{total:?}"
    );
    // Bulk streams whose client stopped reading were marked stalled and read on.
    assert!(total.stalled > 10, "{total:?}");
}

/// The `tls_stage` fuzz target's checks on seeded random inputs (the fuzzer explores more:
/// `make fuzz FUZZ_TARGET=tls_stage`).
#[cfg(feature = "tls")]
#[test]
fn tls_stage_fuzz_checks_on_random_inputs() {
    let inputs: u64 = env("SIM_SEEDS").unwrap_or(2000);
    for seed in 0..inputs {
        let mut rng = sim::Rng::new(seed);
        let len = (sim::Source::next(&mut rng) % 600) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| sim::Source::next(&mut rng) as u8)
            .collect();
        if let Err(e) = sim::tls::fuzz_stage(&data) {
            panic!("input of seed {seed} ({len} bytes): {e}");
        }
    }
}

/// One seed (`SIM_SEED`, default 1) — the replay of a failure.
#[test]
fn sim_one() {
    let seed = env("SIM_SEED").unwrap_or(1);
    let steps = env("SIM_STEPS").unwrap_or(STEPS);
    match sim::run_seed(seed, steps) {
        Ok(r) => eprintln!("seed {seed}: {r:?}"),
        Err(e) => replay(seed, steps, &e),
    }
}

/// `make soak`: random seeds, longer runs, for `SOAK_SECS`.
#[test]
#[ignore = "long: run by make soak"]
fn sim_soak() {
    let secs = env("SOAK_SECS").unwrap_or(60u64);
    let steps = env("SIM_STEPS").unwrap_or(3000usize);
    let start: u64 = env("SIM_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let t = Instant::now();
    let mut total = Report::default();
    let mut seed = start;
    while t.elapsed() < Duration::from_secs(secs) {
        match sim::run_seed(seed, steps) {
            Ok(r) => total += r,
            Err(e) => replay(seed, steps, &e),
        }
        seed = seed.wrapping_add(1);
    }
    eprintln!(
        "sim soak: seeds {start}..{seed} ({} runs of {steps} steps) in {secs}s: {total:?}",
        seed.wrapping_sub(start)
    );
}
