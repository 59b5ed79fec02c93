//! The PROXY header parser on arbitrary bytes: it never panics, never claims more bytes than
//! it was given, and is prefix-stable — every prefix of the input is `NeedMore` or the same
//! answer as the whole input, and no prefix shorter than a header is `Done`. The chunked
//! `Reader` (what the connection stage uses) agrees with `parse` on the whole input.
#![no_main]

use epoll_echo::proxy::{self, Feed, Reader, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = proxy::parse(data);
    let header_len = match whole {
        Status::Done(h, n) => {
            assert!(n > 0 && n <= data.len(), "consumed {n} of {}", data.len());
            assert!(n <= proxy::V2_MAX);
            if let Some(a) = h.addresses {
                assert_eq!(a.source.is_ipv4(), a.destination.is_ipv4());
            }
            // The payload after the header does not change the answer.
            assert_eq!(proxy::parse(&data[..n]), whole);
            n
        }
        Status::NeedMore => data.len() + 1,
        Status::Invalid(_) => 0,
    };
    for cut in 0..data.len() {
        let got = proxy::parse(&data[..cut]);
        if cut < header_len {
            assert_eq!(got, Status::NeedMore, "prefix {cut}: {got:?}, whole: {whole:?}");
        } else {
            assert!(
                got == Status::NeedMore || got == whole,
                "prefix {cut}: {got:?}, whole: {whole:?}"
            );
        }
    }

    // The same bytes in chunks whose sizes come from the input itself.
    let mut reader = Reader::new();
    let mut start = 0;
    let mut step = data.len() ^ 0x5bd1;
    let fed = loop {
        step = step.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let end = (start + 1 + (step >> 8) % 64).min(data.len());
        let chunk = &data[start..end];
        match reader.feed(chunk) {
            Feed::NeedMore if end < data.len() => start = end,
            Feed::NeedMore => break Status::NeedMore,
            Feed::Done { header, used } => {
                assert!(used <= chunk.len());
                break Status::Done(header, start + used);
            }
            Feed::Invalid(e) => break Status::Invalid(e),
        }
        assert!(reader.buffered() <= proxy::V2_MAX);
    };
    assert_eq!(fed, whole, "chunked reader disagrees with parse");
});
