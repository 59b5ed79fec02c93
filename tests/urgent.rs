//! Urgent (MSG_OOB) bytes are ordinary stream bytes for an echo server: echoed once, in order,
//! and never a reason to stall. A TCP read stops at the urgent mark, so a short read there does
//! not mean the socket is drained; these tests hit that from several timings, many times.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

fn send_urgent(s: &TcpStream, byte: u8) {
    let n = socket2::SockRef::from(s)
        .send_out_of_band(&[byte])
        .expect("send MSG_OOB");
    assert_eq!(n, 1);
}

/// Reads exactly `want.len()` bytes within a short timeout and compares them.
fn expect_echo(s: &mut TcpStream, want: &[u8], what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = vec![0u8; want.len()];
    let mut have = 0;
    while have < want.len() {
        match s.read(&mut got[have..]) {
            Ok(0) => panic!(
                "{what}: EOF after {:?}",
                String::from_utf8_lossy(&got[..have])
            ),
            Ok(n) => have += n,
            Err(e) => panic!(
                "{what}: {e} after {:?} (want {:?})",
                String::from_utf8_lossy(&got[..have]),
                String::from_utf8_lossy(want)
            ),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "{what}"
    );
}

#[test]
fn urgent_byte_between_data_is_echoed_in_order() {
    let srv = ServerProc::start(&["--maxListeners", "2"]);
    for round in 0..150 {
        let mut s = connect(srv.addr);
        match round % 3 {
            // Everything back to back: often one receive queue holding "ab", the mark, "def".
            0 => {
                (&s).write_all(b"ab").unwrap();
                send_urgent(&s, b'!');
                (&s).write_all(b"def").unwrap();
                expect_echo(&mut s, b"ab!def", &format!("round {round}"));
            }
            // "ab" served first, then the urgent byte and the rest together.
            1 => {
                (&s).write_all(b"ab").unwrap();
                expect_echo(&mut s, b"ab", &format!("round {round} first part"));
                send_urgent(&s, b'!');
                (&s).write_all(b"def").unwrap();
                expect_echo(&mut s, b"!def", &format!("round {round}"));
            }
            // The urgent byte first, then data in the same queue.
            _ => {
                send_urgent(&s, b'!');
                (&s).write_all(b"abc").unwrap();
                expect_echo(&mut s, b"!abc", &format!("round {round}"));
            }
        }
        // Still served afterwards: a plain message comes back.
        (&s).write_all(b"after").unwrap();
        expect_echo(&mut s, b"after", &format!("round {round} after"));
    }
}

#[test]
fn urgent_byte_then_half_close_gets_the_whole_echo() {
    let srv = ServerProc::start(&["--maxListeners", "1"]);
    for round in 0..50 {
        let mut s = connect(srv.addr);
        (&s).write_all(b"xy").unwrap();
        send_urgent(&s, b'U');
        (&s).write_all(b"z").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("round {round}: {e} after {got:?}"));
        assert_eq!(got, b"xyUz", "round {round}");
    }
}

/// With `--splice` a bulk stream is spliced, and splice(2) will not move an urgent byte at the
/// head of the queue (it reports EAGAIN): after EPOLLPRI the copy path must take over.
#[test]
fn urgent_byte_inside_a_spliced_bulk_stream() {
    let srv = ServerProc::start(&["--maxListeners", "1", "--splice"]);
    for round in 0..20 {
        let mut s = connect(srv.addr);
        let head = pattern(300_000, round);
        let tail = pattern(70_000, round + 100);
        let mut want = head.clone();
        want.push(b'#');
        want.extend_from_slice(&tail);
        let w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            (&w).write_all(&head).unwrap();
            send_urgent(&w, b'#');
            (&w).write_all(&tail).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = s.read_to_end(&mut got);
        writer.join().unwrap();
        assert!(
            r.is_ok(),
            "round {round}: {r:?} after {} of {} bytes",
            got.len(),
            want.len()
        );
        assert_eq!(got.len(), want.len(), "round {round}");
        assert!(got == want, "round {round}: echo differs");
    }
}
