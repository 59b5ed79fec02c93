//! The TLS stage on the connection seam under arbitrary input: raw bytes or a real rustls
//! client's records (split anywhere, sometimes corrupted), reads of any size, short and refused
//! sends, EOF, close_notify, the server's goodbye (see `epoll_echo::sim::tls::fuzz_stage` for
//! the invariants: no panic, bounded pending output, every plaintext byte echoed once and in
//! order by an honest client, a clean close after its close_notify, no endless turn).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = epoll_echo::sim::tls::fuzz_stage(data) {
        panic!("{e}");
    }
});
