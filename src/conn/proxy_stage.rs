//! The PROXY protocol header as the first stage of a connection (`--proxy-protocol`).
//!
//! It feeds what the socket gives to [`proxy::Reader`]: a valid prefix is held (`Hold`), a
//! whole header is consumed and the stage passes the bytes after it on to the echo
//! (`Pass(used)`: the stage is dropped, the connection is back on the fast path), anything
//! else closes the connection with nothing echoed (`Reject`). The header's source is the
//! client ([`Stage::client`]): the worker applies the per-IP rules to it before the first
//! echo. The header must be whole by the stage's deadline (`--proxy-header-timeout`).
//!
//! A banner (`--banner`) rides along and is queued once the header is whole, so it reaches the
//! client, not the balancer's header exchange, and a client refused at header time sees
//! nothing at all.

use std::sync::Arc;

/// The close reason of a connection whose PROXY header did not arrive in time.
pub const HEADER_TIMEOUT: &str = "header timeout";

use super::Tick;
use super::pending::Pending;
use super::stage::{Client, Flow, Stage};
use crate::proxy::{self, Feed, Invalid};

/// The reject reason of a connection that ended (EOF) inside its header.
pub const EOF_IN_HEADER: &str = "EOF inside the PROXY header";

/// Whether `why` (a [`super::CloseReason::Rejected`] reason) is this stage's.
pub fn is_proxy_reason(why: &str) -> bool {
    why == EOF_IN_HEADER || ALL_INVALID.iter().any(|i| i.as_str() == why)
}

const ALL_INVALID: [Invalid; 15] = [
    Invalid::NotProxy,
    Invalid::V1TooLong,
    Invalid::V1Protocol,
    Invalid::V1SourceAddress,
    Invalid::V1DestinationAddress,
    Invalid::V1SourcePort,
    Invalid::V1DestinationPort,
    Invalid::V1LineEnd,
    Invalid::V2Version,
    Invalid::V2Command,
    Invalid::V2Family,
    Invalid::V2Datagram,
    Invalid::V2TooLong,
    Invalid::V2AddressLength,
    Invalid::V2Tlv,
];

#[derive(Debug)]
pub struct ProxyStage {
    reader: proxy::Reader,
    deadline: Tick,
    client: Option<Client>,
    banner: Option<Arc<[u8]>>,
}

impl ProxyStage {
    /// A stage whose header must be whole by tick `deadline`; `banner` is queued after it.
    pub fn new(deadline: Tick, banner: Option<Arc<[u8]>>) -> ProxyStage {
        ProxyStage {
            reader: proxy::Reader::new(),
            deadline,
            client: None,
            banner,
        }
    }
}

impl Stage for ProxyStage {
    fn on_input(&mut self, data: &[u8], out: &mut Pending) -> Flow {
        match self.reader.feed(data) {
            Feed::NeedMore => Flow::Hold,
            Feed::Done { header, used } => {
                self.client = Some(header.source().map_or(Client::SocketPeer, Client::Addr));
                if let Some(b) = &self.banner {
                    out.push(b);
                }
                Flow::Pass(used)
            }
            Feed::Invalid(e) => Flow::Reject(e.as_str()),
        }
    }

    fn on_eof(&mut self, _out: &mut Pending) -> Flow {
        Flow::Reject(EOF_IN_HEADER)
    }

    fn client(&self) -> Option<Client> {
        self.client
    }

    fn deadline_reason(&self) -> &'static str {
        HEADER_TIMEOUT
    }

    fn deadline(&self) -> Option<Tick> {
        Some(self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Action, CloseReason, Conn, Params, ReadResult, Readiness, SendResult, Turn};

    fn params() -> Params {
        Params {
            max_pending: 1 << 20,
            read_len: 4096,
            budget: 1 << 20,
            splice: crate::conn::Splice::Off,
        }
    }

    /// Feeds `chunks` to a PROXY connection, admitting with `admit`; returns what it sent and
    /// how it closed (if it did).
    fn run(
        chunks: &[&[u8]],
        admit: Result<(), &'static str>,
    ) -> (Vec<u8>, Option<CloseReason>, Vec<Client>) {
        let mut c = Conn::new(0);
        c.push_stage(Box::new(ProxyStage::new(50, Some(Arc::from(&b"hi\n"[..])))));
        assert_eq!(c.deadline(), Some(50));
        let mut sent = Vec::new();
        let mut asked = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            c.on_readiness(Readiness::READABLE | Readiness::WRITABLE);
            let mut turn = Turn::new(&params(), 1);
            let mut fed = false;
            loop {
                match c.poll(&mut turn) {
                    Action::Read if !fed => {
                        fed = true;
                        c.on_read(&mut turn, ReadResult::Data(chunk));
                    }
                    Action::Read if i + 1 == chunks.len() && chunk.is_empty() => {
                        c.on_read(&mut turn, ReadResult::Eof)
                    }
                    Action::Read => c.on_read(&mut turn, ReadResult::WouldBlock),
                    Action::Admit(client) => {
                        asked.push(client);
                        c.on_admit(admit);
                    }
                    Action::SendInput(r) => {
                        let data = &chunk[r.clone()];
                        sent.extend_from_slice(data);
                        c.on_send_input(&mut turn, SendResult::Sent(data.len()), data);
                    }
                    Action::Send => {
                        let n = c.transmit().len();
                        sent.extend_from_slice(c.transmit());
                        c.on_sent(&mut turn, SendResult::Sent(n));
                    }
                    Action::QueryMss => c.on_mss(None),
                    Action::Close(why) => return (sent, Some(why), asked),
                    Action::Wait | Action::Yield | Action::Splice => break,
                }
            }
        }
        (sent, None, asked)
    }

    #[test]
    fn header_consumed_banner_then_the_rest_echoed_and_the_stage_dropped() {
        let (sent, closed, asked) = run(
            &[
                b"PROXY TCP4 192.0.2.1 198.51.100.7 5",
                b"6324 443\r\nhello",
                b"world",
            ],
            Ok(()),
        );
        assert_eq!(sent, b"hi\nhelloworld");
        assert_eq!(closed, None);
        assert_eq!(asked, [Client::Addr("192.0.2.1:56324".parse().unwrap())]);
        let (sent, _, asked) = run(&[b"PROXY UNKNOWN\r\n", b"x"], Ok(()));
        assert_eq!(sent, b"hi\nx");
        assert_eq!(asked, [Client::SocketPeer]);
    }

    #[test]
    fn refused_invalid_or_cut_short_headers_send_nothing() {
        let (sent, closed, _) = run(
            &[b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\nhello"],
            Err("no"),
        );
        assert_eq!((sent, closed), (vec![], Some(CloseReason::Rejected("no"))));
        let (sent, closed, asked) = run(&[b"GET / HTTP/1.1\r\n"], Ok(()));
        assert_eq!(sent, b"");
        assert!(asked.is_empty());
        assert!(matches!(closed, Some(CloseReason::Rejected(r)) if is_proxy_reason(r)));
        let (sent, closed, _) = run(&[b"PROXY TCP4 1.2", b""], Ok(()));
        assert_eq!(
            (sent, closed),
            (vec![], Some(CloseReason::Rejected(EOF_IN_HEADER)))
        );
        assert!(!is_proxy_reason("over --max-conns-per-ip"));
    }
}
