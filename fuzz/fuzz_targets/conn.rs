//! The connection state machine and the worker's scheduling logic under arbitrary event
//! sequences: the fuzz input is decoded (2 bytes per choice) into the simulator's client
//! actions, fault injections, timer jumps and shutdown, and every simulator invariant is
//! checked after every step (echo order byte for byte, the pending cap, the empty splice pipe,
//! nothing stuck, closes for a reason that holds, the drain ending by its timeout).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut source = epoll_echo::sim::Bytes::new(data);
    if let Err(e) = epoll_echo::sim::run(&mut source, 400) {
        panic!("{e}");
    }
});
