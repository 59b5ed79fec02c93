//! The connection state machine and the worker's scheduling logic under arbitrary event
//! sequences: the fuzz input is decoded (2 bytes per choice) into the simulator's client
//! actions, fault injections, timer jumps and shutdown, and every simulator invariant is
//! checked after every step (echo order byte for byte, the pending cap, the empty splice pipe,
//! nothing stuck, closes for a reason that holds, the drain ending by its timeout).
//!
//! The input also chooses whether every connection starts with a PROXY stage
//! (`--proxy-protocol`), the header timeout, and each client's header (v1 TCP4/TCP6/UNKNOWN,
//! v2 PROXY/LOCAL with TLVs, or an invalid one) and whether the worker refuses it at header
//! time; the header is then split wherever the client's writes fall. Checked on top: the header
//! is never echoed, everything after it is echoed once in order, rejected and refused
//! connections get nothing, header timeouts only after the deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut source = epoll_echo::sim::Bytes::new(data);
    if let Err(e) = epoll_echo::sim::run(&mut source, 400) {
        panic!("{e}");
    }
});
