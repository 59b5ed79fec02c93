//! Unit tests of the connection machine, one behaviour each (the simulator covers the mix).
use super::*;

fn params() -> Params {
    Params {
        max_pending: 100,
        read_len: 16,
        budget: 64,
        splice: false,
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
fn reading_stops_above_the_pending_cap_and_resumes_when_it_drains() {
    let mut c = Conn::new(0);
    let mut t = Turn::new(
        &Params {
            budget: 1 << 20,
            ..params()
        },
        0,
    );
    c.on_readiness(Readiness::READABLE);
    let data = [7u8; 16];
    let mut reads = 0;
    while c.poll(&mut t) == Action::Read {
        c.on_read(&mut t, ReadResult::Data(&data));
        if let Action::SendInput(_) = c.poll(&mut t) {
            c.on_send_input(&mut t, SendResult::WouldBlock, &data);
        }
        reads += 1;
        assert!(reads < 100);
    }
    assert!(c.pending_len() > 100 && c.pending_len() <= 100 + 16);
    assert!(c.is_readable(), "input is left unread, not forgotten");
    c.on_readiness(Readiness::WRITABLE);
    assert_eq!(c.poll(&mut t), Action::Send);
    c.on_sent(&mut t, SendResult::Sent(c.pending_len()));
    assert_eq!(c.poll(&mut t), Action::Read, "reading resumes");
}

#[test]
fn the_budget_yields_to_the_others() {
    let mut c = Conn::new(0);
    let mut t = turn();
    c.on_readiness(Readiness::READABLE);
    let data = [1u8; 16];
    for _ in 0..4 {
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
fn bulk_streams_splice_and_small_ones_go_back_to_copying() {
    let p = Params {
        splice: true,
        ..params()
    };
    let mut c = Conn::new(0);
    let mut t = Turn::new(&p, 0);
    c.on_readiness(Readiness::READABLE);
    assert_eq!(c.poll(&mut t), Action::Read);
    c.on_read(&mut t, ReadResult::Data(&[0u8; 16])); // filled the buffer: bulk
    assert_eq!(c.poll(&mut t), Action::SendInput(0..16));
    c.on_send_input(&mut t, SendResult::Sent(16), &[0u8; 16]);
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
    assert_eq!(
        c.poll(&mut t),
        Action::Read,
        "a small splice ended bulk mode"
    );
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
