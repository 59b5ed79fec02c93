//! Unit tests of the connection machine, one behaviour each (the simulator covers the mix).
use super::*;

fn params() -> Params {
    Params {
        max_pending: 100,
        read_len: 16,
        budget: 64,
        splice: crate::conn::Splice::Off,
    }
}

fn turn() -> Turn {
    Turn::new(&params(), 5)
}

#[test]
fn the_fast_path_sends_straight_from_the_read_buffer() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    let buf = b"hello";
    c.on_read(&mut t, ReadResult::Data(buf));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..5));
    c.on_send_input(&mut t, SendResult::Sent(5), buf);
    // A short read drained the socket: nothing more to do, nothing copied.
    assert_eq!(c.poll(&mut t), Action::Wait);
    assert_eq!(c.pending_capacity(), 0);
    assert_eq!((t.read, t.written, c.last_active()), (5, 5, 5));
}

#[test]
fn only_the_unsent_tail_is_kept_and_flushed_on_the_next_edge() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"abcdef"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..6));
    c.on_send_input(&mut t, SendResult::Sent(2), b"abcdef");
    assert_eq!(c.pending_len(), 4);
    assert_eq!(c.poll(&mut t), Action::Wait, "not writable until EPOLLOUT");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    assert_eq!(c.transmit(), b"cdef");
    c.on_sent(&mut t, SendResult::Sent(4));
    assert_eq!(c.poll(&mut t), Action::Wait);
}

#[test]
fn small_messages_read_on_up_to_the_pending_cap_and_resume_when_it_drains() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(
        &Params {
            budget: 1 << 20,
            ..params()
        },
        0,
    );
    // 10-byte messages (never a full read: not a bulk stream) to a client that reads nothing.
    let data = [7u8; 10];
    let mut reads = 0;
    loop {
        c.on_readiness(Readiness::READABLE);
        match c.poll(&mut t) {
            Action::Read => {}
            _ => break,
        }
        c.on_read(&mut t, ReadResult::Data(&data));
        if let Action::SendInput(_) = c.poll(&mut t) {
            c.on_send_input(&mut t, SendResult::WouldBlock, &data);
        }
        reads += 1;
        assert!(reads < 100);
    }
    assert!(c.pending_len() > 100 && c.pending_len() <= 100 + 10);
    assert!(c.is_readable(), "input is left unread, not forgotten");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(c.pending_len()));
    assert_eq!(c.poll(&mut t), Action::Read, "reading resumes");
}

/// A plain connection made a bulk stream by one full read of `data` (all sent), its MSS
/// asked and answered (1448): the next `poll` reads. The turn's budget is large.
fn sized_bulk_stream(data: &[u8; 16]) -> (Conn, Turn) {
    let p = Params {
        budget: 1 << 20,
        ..params()
    };
    let mut c = Conn::new(0);
    let mut t = Turn::new(&p, 0);
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(data)); // a full read: bulk
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(16), data);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(1448));
    (c, t)
}

#[test]
fn a_bulk_stream_reads_only_when_its_last_echo_is_all_sent() {
    let data = [7u8; 16];
    let (mut c, mut t) = sized_bulk_stream(&data);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&data));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(5), &data);
    // 11 bytes pending, far below the cap of 100: still no read until they are sent; the
    // backlog waits in the kernel (TCP's window slows the client), not in pending output.
    assert!(c.is_backpressured(100, false));
    assert_eq!(c.poll(&mut t), Action::Wait);
    assert!(c.is_readable(), "input is left unread, not forgotten");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(6));
    assert_eq!(c.poll(&mut t), Action::Wait, "5 bytes still pending");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(5));
    assert_eq!(c.poll(&mut t), Action::Read, "all sent: reading resumes");
}

#[test]
fn a_bulk_stream_whose_client_stops_reading_reads_on_up_to_the_pending_cap() {
    let p = Params {
        budget: 1 << 20,
        ..params()
    };
    let data = [7u8; 16];
    let (mut c, mut t) = sized_bulk_stream(&data);
    assert_eq!(c.stall_check_at(), None, "nothing pending");
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&data));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(4), &data); // the last byte moved at tick 0
    assert_eq!(c.poll(&mut t), Action::Wait, "held back by the bulk rule");
    assert!(c.held_by_bulk_rule());
    assert_eq!(c.stall_check_at(), Some(STALL_TICKS));
    // Due early (bytes moved since it was armed): check again later.
    assert_eq!(
        c.stall_check(STALL_TICKS - 1),
        StallCheck::Again(STALL_TICKS)
    );
    assert_eq!(c.stall_check(STALL_TICKS), StallCheck::Stalled);
    assert!(!c.is_backpressured(100, true) && c.is_backpressured(100, false));
    // Stalled: it reads on into pending output, up to the cap, like any other connection.
    let mut t = Turn::new(&p, STALL_TICKS);
    t.stalled = true;
    let mut reads = 0;
    while c.poll(&mut t) == Action::Read {
        c.on_read(&mut t, ReadResult::Data(&data));
        reads += 1;
        assert!(reads < 20, "the cap holds");
    }
    assert_eq!(c.poll(&mut t), Action::Wait);
    assert!(c.pending_len() > 100 && c.pending_len() <= 100 + 16);
    assert!(c.is_readable(), "the rest stays unread, for later");
    assert!(t.stalled, "still behind");
    // The client reads again: once all is sent, the bulk rule is back.
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    let n = c.pending_len();
    c.on_sent(&mut t, SendResult::Sent(n));
    assert_eq!(c.poll(&mut t), Action::Read);
    assert!(!t.stalled, "caught up");
    c.on_read(&mut t, ReadResult::Data(&data));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(1), &data);
    assert!(
        c.is_backpressured(100, t.stalled),
        "15 bytes pending: the rule again"
    );
    // Bytes moved at tick 2: the next check is due at 4.
    assert_eq!(c.stall_check_at(), Some(2 * STALL_TICKS));
    // All sent before it: nothing to do.
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(15));
    assert_eq!(c.stall_check(2 * STALL_TICKS), StallCheck::Done);
    assert_eq!(c.stall_check_at(), None);
}

#[test]
fn the_budget_yields_to_the_others() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    let data = [1u8; 16];
    for i in 0..4 {
        if i == 1 {
            // The first full read made it a bulk stream: it asks for its MSS once.
            assert_eq!(c.poll(&mut t), Action::QueryMss);
            c.on_mss(Some(1448));
        }
        assert_eq!(c.poll(&mut t), Action::Read);
        c.on_read(&mut t, ReadResult::Data(&data));
        assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
        c.on_send_input(&mut t, SendResult::Sent(16), &data);
    }
    assert_eq!(c.poll(&mut t), Action::Yield);
}

#[test]
fn after_urgent_data_a_short_read_is_not_drained() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE | Readiness::PRI);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"ab")); // stopped at the mark
    assert_eq!(c.poll(&mut t), Action::SendInput(0..2));
    c.on_send_input(&mut t, SendResult::Sent(2), b"ab");
    assert_eq!(c.poll(&mut t), Action::Read, "the bytes behind the mark");
    c.on_read(&mut t, ReadResult::Data(b"!def"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..4));
    c.on_send_input(&mut t, SendResult::Sent(4), b"!def");
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::WouldBlock);
    assert_eq!(c.poll(&mut t), Action::Wait);
    // And the next ordinary short read counts as drained again.
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"x"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..1));
    c.on_send_input(&mut t, SendResult::Sent(1), b"x");
    assert_eq!(c.poll(&mut t), Action::Wait);
}

#[test]
fn after_rdhup_read_to_eof_then_close_once_echoed() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE | Readiness::RDHUP);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"bye"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..3));
    c.on_send_input(&mut t, SendResult::WouldBlock, b"bye");
    assert_eq!(c.poll(&mut t), Action::Read, "a short read is not EOF");
    c.on_read(&mut t, ReadResult::Eof);
    assert_eq!(c.poll(&mut t), Action::Wait, "echo still pending");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(3));
    assert_eq!(c.poll(&mut t), Action::Close(CloseReason::Finished));
}

#[test]
fn errors_close_and_eintr_retries() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    c.on_read(&mut t, ReadResult::Err(ErrorKind::Interrupted));
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"x"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..1));
    c.on_send_input(&mut t, SendResult::Err(ErrorKind::Interrupted), b"x");
    assert_eq!(c.poll(&mut t), Action::SendInput(0..1));
    c.on_send_input(&mut t, SendResult::Err(ErrorKind::BrokenPipe), b"x");
    assert_eq!(
        c.poll(&mut t),
        Action::Close(CloseReason::Error(ErrorKind::BrokenPipe))
    );
}

#[test]
fn bulk_streams_splice_until_they_pause() {
    let p = Params {
        splice: crate::conn::Splice::On,
        ..params()
    };
    let mut c = Conn::new(0);
    let mut t = Turn::new(&p, 0);
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&[0u8; 16])); // filled the buffer: bulk
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(16), &[0u8; 16]);
    assert_eq!(
        c.poll(&mut t),
        Action::QueryMss,
        "asked once per bulk phase"
    );
    c.on_mss(Some(65_483)); // `on` splices whatever the path
    assert_eq!(c.poll(&mut t), Action::Splice);
    c.on_splice(
        &mut t,
        SpliceResult::Moved {
            read: 10,
            sent: 7,
            unsent: b"xyz",
            failed: None,
        },
    );
    assert_eq!(c.transmit(), b"xyz");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(3));
    // A small splice is a stream outpacing its client, not the end of the bulk phase.
    assert_eq!(c.poll(&mut t), Action::Splice);
    c.on_splice(&mut t, SpliceResult::WouldBlock);
    assert_eq!(c.poll(&mut t), Action::Wait);
    // A pause of MSS_REFRESH ends it: the next input is copied until a read fills the buffer.
    let mut t = Turn::new(&p, MSS_REFRESH);
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read, "back from a pause: copy");
}

/// A stage that swallows a 3-byte prefix, then passes the rest on.
#[derive(Debug, Default)]
struct Prefix {
    seen: usize,
}

impl Stage for Prefix {
    fn on_input(&mut self, data: &[u8], out: &mut Pending) -> Flow {
        if data.contains(&b'?') {
            return Flow::Reject("question mark in the prefix");
        }
        let take = (3 - self.seen).min(data.len());
        self.seen += take;
        if self.seen < 3 {
            return Flow::Hold;
        }
        out.push(b"<ok>");
        Flow::Pass(take)
    }
}

#[test]
fn a_prefix_stage_passes_the_rest_to_the_echo_and_leaves() {
    let mut c = Conn::new(0);
    c.push_stage(Box::new(Prefix::default()));
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"PR"));
    assert_eq!(c.poll(&mut t), Action::Wait, "held, nothing echoed");
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"Xhello"));
    assert_eq!(c.poll(&mut t), Action::Send, "stage output first");
    assert_eq!(c.transmit(), b"<ok>hello");
    c.on_sent(&mut t, SendResult::Sent(9));
    // The stage is gone: back on the fast path.
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"more"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..4));
}

#[test]
fn a_rejecting_stage_closes_with_nothing_echoed() {
    let mut c = Conn::new(0);
    c.push_stage(Box::new(Prefix::default()));
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    c.on_read(&mut t, ReadResult::Data(b"?bad"));
    assert_eq!(
        c.poll(&mut t),
        Action::Close(CloseReason::Rejected("question mark in the prefix"))
    );
    assert_eq!(t.written, 0);
}

#[test]
fn a_banner_goes_out_on_the_first_writable_edge() {
    let mut c = Conn::new(0);
    c.queue_output(b"hello\n");
    let mut t = turn();
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    assert_eq!(c.transmit(), b"hello\n");
}

#[test]
fn the_read_length_is_the_largest_multiple_of_the_mss_that_fits() {
    const CAP: usize = 65_536;
    for (mss, want) in [
        (0, CAP),         // unknown: the whole buffer
        (1, CAP),         // every length is a multiple of 1
        (88, 65_472),     // 744 × 88: a tiny MSS still reads in large batches
        (536, 65_392),    // 122 × 536: the IPv4 default
        (1448, 65_160),   // 45 × 1448: Ethernet with timestamps
        (65_483, 65_483), // loopback: one segment, not one and a 53-byte one
        (65_495, 65_495), // loopback without timestamps
        (65_536, CAP),    // not below the cap
        (1 << 20, CAP),   // above it
    ] {
        let got = read_len_for_mss(mss, CAP);
        assert_eq!(got, want, "mss {mss}");
        assert!(got > 0 && got <= CAP && (mss == 0 || mss >= CAP || got.is_multiple_of(mss)));
    }
    // A cap below the MSS (a tiny read buffer) is used as it is.
    assert_eq!(read_len_for_mss(1448, 7), 7);
    assert_eq!(read_len_for_mss(3, 7), 6);
    assert_eq!(read_len_for_mss(0, 1), 1);
}

/// Drives one full read of `len` bytes (and its echo) through `c`.
fn full_read(c: &mut Conn, t: &mut Turn, len: usize) {
    let data = vec![9u8; len];
    assert_eq!(c.poll(t), Action::Read);
    assert_eq!(c.read_len(t), len);
    c.on_read(t, ReadResult::Data(&data));
    assert_eq!(c.poll(t), Action::SendInput(0..len));
    c.on_send_input(t, SendResult::Sent(len), &data);
}

fn bulk_params() -> Params {
    Params {
        max_pending: 1 << 18,
        read_len: 65_536,
        budget: 1 << 30,
        splice: crate::conn::Splice::Off,
    }
}

#[test]
fn a_bulk_stream_asks_its_mss_once_and_reads_whole_segments() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(
        c.poll(&mut t),
        Action::QueryMss,
        "a full read: a bulk stream"
    );
    c.on_mss(Some(1448));
    for _ in 0..3 {
        full_read(&mut c, &mut t, 65_160);
    }
    // A short read (but not a small one) drains; the stream stays sized: no second query.
    let part = vec![1u8; 30_000];
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&part));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..30_000));
    c.on_send_input(&mut t, SendResult::Sent(30_000), &part);
    assert_eq!(
        c.poll(&mut t),
        Action::Wait,
        "a short read emptied the queue"
    );
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_160);
}

#[test]
fn ping_pong_never_asks_for_the_mss() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    for _ in 0..100 {
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.poll(&mut t), Action::Read);
        c.on_read(&mut t, ReadResult::Data(&[5u8; 64]));
        assert_eq!(c.poll(&mut t), Action::SendInput(0..64));
        c.on_send_input(&mut t, SendResult::Sent(64), &[5u8; 64]);
        assert_eq!(
            c.poll(&mut t),
            Action::Wait,
            "one read and one send per round trip"
        );
    }
}

#[test]
fn a_new_bulk_phase_learns_a_changed_mss() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(1448));
    full_read(&mut c, &mut t, 65_160);
    // A small read does not end the bulk phase (loopback splits a 64 KiB write into 65,483
    // and 53 bytes: asking again after each would double the syscalls)...
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(b"tail"));
    assert_eq!(c.poll(&mut t), Action::SendInput(0..4));
    c.on_send_input(&mut t, SendResult::Sent(4), b"tail");
    assert_eq!(c.poll(&mut t), Action::Wait);
    let mut t = Turn::new(&bulk_params(), MSS_REFRESH - 1);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_160);
    // ...a pause of MSS_REFRESH does: the next phase reads the whole buffer and asks again,
    // and learns that the path MTU dropped meanwhile.
    let mut t = Turn::new(&bulk_params(), 2 * MSS_REFRESH - 1);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(536));
    full_read(&mut c, &mut t, 65_392);
}

#[test]
fn an_unknown_mss_reads_the_whole_buffer_and_does_not_ask_again() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(None); // getsockopt failed
    full_read(&mut c, &mut t, 65_536);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::Read, "no second query in one phase");
}

#[test]
fn with_a_sized_read_only_a_read_shorter_than_asked_means_drained() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(65_483));
    // 65,483 bytes is a full read now (below the 64 KiB buffer, but all that was asked):
    // more may be queued, so the connection stays readable.
    full_read(&mut c, &mut t, 65_483);
    assert!(c.is_readable());
    assert_eq!(c.poll(&mut t), Action::Read);
}

#[test]
fn mss_values_around_the_edges_give_a_usable_read_length() {
    for mss in [
        Some(0),
        Some(1),
        Some(88),
        Some(536),
        Some(1448),
        Some(65_483),
        Some(65_495),
        None,
    ] {
        for cap in [1usize, 7, 1460, 65_536] {
            let mut c = Conn::new(0);
            let p = Params {
                read_len: cap,
                ..bulk_params()
            };
            let mut t = Turn::new(&p, 0);
            c.on_readiness(Readiness::READABLE);
            full_read(&mut c, &mut t, cap);
            assert_eq!(c.poll(&mut t), Action::QueryMss);
            c.on_mss(mss);
            let len = c.read_len(&t);
            assert_eq!(
                len,
                read_len_for_mss(mss.unwrap_or(0), cap),
                "{mss:?} {cap}"
            );
            assert!((1..=cap).contains(&len));
        }
    }
}

#[test]
fn loopback_asks_again_while_its_mss_grows_with_the_window() {
    // TCP_MAXSEG on loopback: 32,768 at accept, 47,616 after 64 KiB, 65,483 after ~1 MB.
    let mut c = Conn::new(0);
    let mut t = Turn::new(&bulk_params(), 0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(47_616));
    full_read(&mut c, &mut t, 47_616);
    assert_eq!(
        c.poll(&mut t),
        Action::QueryMss,
        "47,616 of 65,536 is provisional"
    );
    c.on_mss(Some(47_616));
    full_read(&mut c, &mut t, 47_616);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(65_483));
    for _ in 0..5 {
        full_read(&mut c, &mut t, 65_483);
    }
    assert_eq!(c.poll(&mut t), Action::Read, "settled: no more queries");
    // 32,768 fits twice: the whole buffer, settled at once.
    let mut c = Conn::new(0);
    c.on_readiness(Readiness::READABLE);
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(32_768));
    full_read(&mut c, &mut t, 65_536);
    assert_eq!(c.poll(&mut t), Action::Read);
}

#[test]
fn auto_splices_bulk_streams_on_nic_sized_paths_only() {
    let p = Params {
        splice: Splice::Auto,
        ..params()
    };
    for (mss, want) in [
        (Some(536), Action::Splice),
        (Some(1448), Action::Splice),
        (Some(8948), Action::Splice),
        (Some(SPLICE_AUTO_MSS - 1), Action::Splice),
        (Some(SPLICE_AUTO_MSS), Action::Read),
        (Some(32_768), Action::Read),
        (Some(65_483), Action::Read),
        (Some(0), Action::Read),
        (None, Action::Read), // unknown: copy
    ] {
        let mut c = Conn::new(0);
        let mut t = Turn::new(&p, 0);
        c.on_readiness(Readiness::READABLE);
        assert_eq!(c.poll(&mut t), Action::Read, "not bulk yet: copy");
        c.on_read(&mut t, ReadResult::Data(&[0u8; 16]));
        assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
        c.on_send_input(&mut t, SendResult::Sent(16), &[0u8; 16]);
        assert_eq!(c.poll(&mut t), Action::QueryMss);
        c.on_mss(mss);
        assert_eq!(c.poll(&mut t), want, "{mss:?}");
    }
    // Urgent data and a pipe gone bad (the turn's mode turned off) mean copying.
    let mut c = Conn::new(0);
    let mut t = Turn::new(&p, 0);
    c.on_readiness(Readiness::READABLE);
    c.on_read(&mut t, ReadResult::Data(&[0u8; 16]));
    c.on_send_input(&mut t, SendResult::Sent(16), &[0u8; 16]);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(1448));
    c.on_readiness(Readiness::PRI);
    assert_eq!(c.poll(&mut t), Action::Read, "urgent data is copied");
    let mut c = Conn::new(0);
    c.on_readiness(Readiness::READABLE);
    c.on_read(&mut t, ReadResult::Data(&[0u8; 16]));
    c.on_send_input(&mut t, SendResult::Sent(16), &[0u8; 16]);
    assert_eq!(c.poll(&mut t), Action::QueryMss);
    c.on_mss(Some(1448));
    t.disable_splice();
    assert_eq!(c.poll(&mut t), Action::Read, "no pipe: copy");
}

/// A stage that echoes everything through pending output and stays (as TLS does).
#[derive(Debug)]
struct Relay;

impl Stage for Relay {
    fn on_input(&mut self, data: &[u8], out: &mut Pending) -> Flow {
        out.push(data);
        Flow::Hold
    }
}

#[test]
fn behind_a_stage_a_bulk_stream_reads_on_up_to_the_pending_cap() {
    let mut c = Conn::new(0);
    c.push_stage(Box::new(Relay));
    let mut t = Turn::new(
        &Params {
            budget: 1 << 20,
            ..params()
        },
        0,
    );
    c.on_readiness(Readiness::READABLE);
    let data = [3u8; 16];
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&data)); // a full read: bulk
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(4));
    // 12 bytes pending: a plain bulk stream would wait; the stage's output keeps flowing.
    assert!(!c.is_backpressured(100, false));
    let mut reads = 1;
    while c.poll(&mut t) == Action::Read {
        c.on_read(&mut t, ReadResult::Data(&data));
        reads += 1;
        assert!(reads < 100);
    }
    assert!(c.pending_len() > 100 && c.pending_len() <= 100 + 16);
    assert!(c.is_backpressured(100, false));
}
