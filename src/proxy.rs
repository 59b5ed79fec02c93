//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) as a pure function over bytes.
//!
//! A load balancer that speaks the PROXY protocol sends one header before the client's first
//! byte; it names the real client. [`parse`] looks at the bytes received so far and answers like
//! httparse: [`Status::NeedMore`] (a valid prefix, keep reading), [`Status::Done`] (the header and
//! how many bytes it took: everything after them is the client's stream) or
//! [`Status::Invalid`] (close the connection). No IO, no clock, no allocation: the connection
//! state machine owns the buffer and the header timeout.
//!
//! The answer is *prefix-stable*: every byte that makes the input invalid is rejected as soon as
//! it arrives, so a prefix of an input is either `NeedMore` or the same answer as the whole input
//! (the unit tests and the `proxy_header` fuzz target check this). Garbage is rejected at its
//! first byte that fits neither signature; nothing waits for a header that cannot come.
//!
//! What is accepted:
//! - **v1** (text): `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, the same with `TCP6`, and
//!   `PROXY UNKNOWN…\r\n` (whatever follows UNKNOWN up to CRLF is ignored, as the spec says). At
//!   most [`V1_MAX`] = 107 bytes including CRLF. Fields are separated by exactly one space;
//!   addresses must parse for their family (dotted quad without leading zeros for TCP4, any RFC
//!   4291 text form without a zone for TCP6); ports are 1 to 5 decimal digits, 0 to 65535, no
//!   sign and no leading zero; the line ends in CRLF (a bare LF or CR is invalid).
//! - **v2** (binary): the 12-byte signature, version 2, command LOCAL or PROXY, and one of the
//!   seven family/transport bytes the spec defines. PROXY over TCP/IPv4 or TCP/IPv6 yields the
//!   addresses; the TLVs after them are skipped but must tile the rest of the header exactly.
//!   LOCAL (health checks from the balancer itself) and PROXY with UNSPEC or UNIX stream yield
//!   no address: "use the socket's peer", as v1 UNKNOWN. PROXY over a datagram transport (UDP,
//!   UNIX dgram) is rejected: this is a stream server and such a header describes no client
//!   of it. Headers longer than [`V2_MAX`] = 4096 bytes are rejected as soon as the length
//!   field arrives (HAProxy's own TLVs — SSL, unique-id, netns — and the cloud balancers' fit
//!   with room to spare).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 line's maximum size, CRLF included (the spec's worst case, TCP6 with full addresses).
pub const V1_MAX: usize = 107;
/// The largest v2 header accepted: 16 fixed bytes plus up to 4080 of addresses and TLVs.
pub const V2_MAX: usize = 4096;
/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the bytes so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A valid prefix of a header: read more (the header timeout bounds the wait).
    NeedMore,
    /// A whole header, and the number of bytes it took; the bytes after them are payload.
    Done(Header, usize),
    /// Not a PROXY header: close the connection without echoing anything.
    Invalid(Invalid),
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The proxied connection's endpoints; `None` for v1 UNKNOWN, v2 LOCAL, and v2 PROXY with
    /// an UNSPEC or UNIX family: the connection is then the socket's own peer.
    pub addresses: Option<Addresses>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The endpoints a header carries: the client (`source`) and the address it connected to on
/// the balancer (`destination`). Both have the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

impl Header {
    /// The real client, or `None`: use the socket's peer.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|a| a.source)
    }
}

/// Why a header was rejected (for the debug log and the stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The first bytes fit neither the v1 nor the v2 signature.
    NotProxy,
    /// v1: no CRLF within 107 bytes.
    V1TooLong,
    /// v1: the protocol is not TCP4, TCP6 or UNKNOWN, or is not followed by one space.
    V1Protocol,
    V1SourceAddress,
    V1DestinationAddress,
    V1SourcePort,
    V1DestinationPort,
    /// v1: a CR not followed by LF.
    V1LineEnd,
    /// v2: the version nibble is not 2.
    V2Version,
    /// v2: the command is neither LOCAL nor PROXY.
    V2Command,
    /// v2: a family/transport byte the spec does not define.
    V2Family,
    /// v2: PROXY over a datagram transport (UDP, UNIX dgram).
    V2Datagram,
    /// v2: the length field announces more than [`V2_MAX`] bytes in all.
    V2TooLong,
    /// v2: the length is shorter than the address block of the announced family.
    V2AddressLength,
    /// v2: the TLVs do not fit the length exactly.
    V2Tlv,
}

impl Invalid {
    /// The reason in words (static, for a connection stage's `Reject` and the log).
    pub fn as_str(&self) -> &'static str {
        match self {
            Invalid::NotProxy => "not a PROXY protocol header",
            Invalid::V1TooLong => "PROXY v1 header without CRLF in 107 bytes",
            Invalid::V1Protocol => "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN",
            Invalid::V1SourceAddress => "PROXY v1 bad source address",
            Invalid::V1DestinationAddress => "PROXY v1 bad destination address",
            Invalid::V1SourcePort => "PROXY v1 bad source port",
            Invalid::V1DestinationPort => "PROXY v1 bad destination port",
            Invalid::V1LineEnd => "PROXY v1 line does not end in CRLF",
            Invalid::V2Version => "PROXY v2 header with a version other than 2",
            Invalid::V2Command => "PROXY v2 command is neither LOCAL nor PROXY",
            Invalid::V2Family => "PROXY v2 unknown address family or transport",
            Invalid::V2Datagram => "PROXY v2 header for a datagram transport",
            Invalid::V2TooLong => "PROXY v2 header longer than 4096 bytes",
            Invalid::V2AddressLength => "PROXY v2 length shorter than its address block",
            Invalid::V2Tlv => "PROXY v2 TLVs do not fit the header length",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the PROXY header at the start of `buf` (the bytes received so far).
pub fn parse(buf: &[u8]) -> Status {
    if is_prefix_either_way(buf, V1_PREFIX) {
        return v1(buf);
    }
    if is_prefix_either_way(buf, &V2_SIGNATURE) {
        return v2(buf);
    }
    Status::Invalid(Invalid::NotProxy)
}

/// `a` starts with `b`, or `a` is (so far) a prefix of `b`.
fn is_prefix_either_way(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Where the v1 parse stopped short.
enum Stop {
    NeedMore,
    Invalid(Invalid),
}

impl From<Invalid> for Stop {
    fn from(e: Invalid) -> Stop {
        Stop::Invalid(e)
    }
}

/// A cursor over the v1 line that never reads past byte 107: asking for it is `V1TooLong`,
/// whether or not it has arrived, so the answer does not depend on how the bytes were split.
struct Line<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Line<'a> {
    fn next(&mut self) -> Result<u8, Stop> {
        if self.pos >= V1_MAX {
            return Err(Invalid::V1TooLong.into());
        }
        let b = *self.buf.get(self.pos).ok_or(Stop::NeedMore)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads bytes while `allowed` holds and at most `max` of them; returns them and the byte
    /// that ended them (consumed). More than `max` is `err` at once.
    fn token(
        &mut self,
        max: usize,
        allowed: fn(u8) -> bool,
        err: Invalid,
    ) -> Result<(&'a [u8], u8), Stop> {
        let start = self.pos;
        loop {
            let b = self.next()?;
            if !allowed(b) {
                return Ok((&self.buf[start..self.pos - 1], b));
            }
            if self.pos - start > max {
                return Err(err.into());
            }
        }
    }

    /// A field that must end with `end`, be non-empty, and parse with `parse`.
    fn field<T>(
        &mut self,
        max: usize,
        allowed: fn(u8) -> bool,
        end: u8,
        parse: fn(&str) -> Option<T>,
        err: Invalid,
    ) -> Result<T, Stop> {
        let (tok, term) = self.token(max, allowed, err)?;
        if term != end {
            return Err(err.into());
        }
        // `allowed` admits ASCII only, so the token is valid UTF-8.
        let text = std::str::from_utf8(tok).map_err(|_| err)?;
        parse(text).ok_or(err.into())
    }

    /// The LF after a CR.
    fn lf(&mut self) -> Result<(), Stop> {
        match self.next()? {
            b'\n' => Ok(()),
            _ => Err(Invalid::V1LineEnd.into()),
        }
    }
}

fn v1(buf: &[u8]) -> Status {
    match v1_line(buf) {
        Ok((header, consumed)) => Status::Done(header, consumed),
        Err(Stop::NeedMore) => Status::NeedMore,
        Err(Stop::Invalid(e)) => Status::Invalid(e),
    }
}

fn v1_line(buf: &[u8]) -> Result<(Header, usize), Stop> {
    let mut line = Line {
        buf,
        pos: V1_PREFIX.len(),
    };
    if buf.len() < V1_PREFIX.len() {
        return Err(Stop::NeedMore);
    }
    // The protocol, checked byte by byte against the three names so garbage stops at once.
    const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    let start = line.pos;
    let (proto, term) = loop {
        let b = line.next()?;
        let so_far = &buf[start..line.pos];
        if b == b' ' || b == b'\r' {
            break (&so_far[..so_far.len() - 1], b);
        }
        if !PROTOCOLS.iter().any(|p| p.starts_with(so_far)) {
            return Err(Invalid::V1Protocol.into());
        }
    };
    let v4 = match (proto, term) {
        (b"UNKNOWN", b'\r') => {
            line.lf()?;
            return Ok((unknown_v1(), line.pos));
        }
        (b"UNKNOWN", _) => {
            // The spec: ignore anything up to the CRLF.
            while line.next()? != b'\r' {}
            line.lf()?;
            return Ok((unknown_v1(), line.pos));
        }
        (b"TCP4", b' ') => true,
        (b"TCP6", b' ') => false,
        _ => return Err(Invalid::V1Protocol.into()),
    };
    let (src, dst) = if v4 {
        let is_v4 = |b: u8| b.is_ascii_digit() || b == b'.';
        let parse = |s: &str| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4);
        let src = line.field(15, is_v4, b' ', parse, Invalid::V1SourceAddress)?;
        let dst = line.field(15, is_v4, b' ', parse, Invalid::V1DestinationAddress)?;
        (src, dst)
    } else {
        let is_v6 = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        let parse = |s: &str| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
        // 45: eight groups with an embedded dotted quad; the 107-byte bound applies anyway.
        let src = line.field(45, is_v6, b' ', parse, Invalid::V1SourceAddress)?;
        let dst = line.field(45, is_v6, b' ', parse, Invalid::V1DestinationAddress)?;
        (src, dst)
    };
    let digit = |b: u8| b.is_ascii_digit();
    let sport = line.field(5, digit, b' ', port, Invalid::V1SourcePort)?;
    let dport = line.field(5, digit, b'\r', port, Invalid::V1DestinationPort)?;
    line.lf()?;
    let addresses = Addresses {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    };
    Ok((
        Header {
            version: Version::V1,
            addresses: Some(addresses),
        },
        line.pos,
    ))
}

fn unknown_v1() -> Header {
    Header {
        version: Version::V1,
        addresses: None,
    }
}

/// A decimal port, 0 to 65535, no leading zero (the token holds digits only).
fn port(s: &str) -> Option<u16> {
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

fn v2(buf: &[u8]) -> Status {
    let invalid = Status::Invalid;
    // Reject each fixed byte as soon as it arrives.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return invalid(Invalid::V2Version);
        }
        if !matches!(ver_cmd & 0xF, CMD_LOCAL | CMD_PROXY) {
            return invalid(Invalid::V2Command);
        }
    }
    let local = buf.get(12).is_some_and(|b| b & 0xF == CMD_LOCAL);
    let mut address_len = 0;
    if let Some(&fam) = buf.get(13) {
        // (family, transport): UNSPEC 0, INET 1, INET6 2, UNIX 3; UNSPEC 0, STREAM 1, DGRAM 2.
        address_len = match fam {
            0x00 => 0,
            0x11 => 12,
            0x21 => 36,
            0x31 => 216,
            0x12 | 0x22 | 0x32 => 0,
            _ => return invalid(Invalid::V2Family),
        };
        if !local && fam & 0xF == 2 {
            return invalid(Invalid::V2Datagram);
        }
    }
    if buf.len() < 16 {
        return Status::NeedMore;
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return invalid(Invalid::V2TooLong);
    }
    if buf.len() < total {
        return Status::NeedMore;
    }
    let block = &buf[16..total];
    let header = |addresses| {
        Status::Done(
            Header {
                version: Version::V2,
                addresses,
            },
            total,
        )
    };
    if local {
        // The spec: a LOCAL header's block is skipped whatever it holds; use the real peer.
        return header(None);
    }
    if block.len() < address_len {
        return invalid(Invalid::V2AddressLength);
    }
    let (addrs, tlvs) = block.split_at(address_len);
    if !tlvs_fit(tlvs) {
        return invalid(Invalid::V2Tlv);
    }
    let addresses = match buf[13] {
        0x11 => {
            let ip = |i: usize| IpAddr::from(<[u8; 4]>::try_from(&addrs[i..i + 4]).unwrap());
            Some(Addresses {
                source: SocketAddr::new(ip(0), be16(&addrs[8..])),
                destination: SocketAddr::new(ip(4), be16(&addrs[10..])),
            })
        }
        0x21 => {
            let ip = |i: usize| IpAddr::from(<[u8; 16]>::try_from(&addrs[i..i + 16]).unwrap());
            Some(Addresses {
                source: SocketAddr::new(ip(0), be16(&addrs[32..])),
                destination: SocketAddr::new(ip(16), be16(&addrs[34..])),
            })
        }
        // UNSPEC or UNIX stream: forwarded, but with no IP address to give.
        _ => None,
    };
    header(addresses)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The TLVs (type, 16-bit length, value) tile `tlvs` exactly.
fn tlvs_fit(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return false;
        }
        let end = 3 + usize::from(be16(&tlvs[1..]));
        if end > tlvs.len() {
            return false;
        }
        tlvs = &tlvs[end..];
    }
    true
}

/// A header arriving in pieces, for the connection's PROXY stage: feed it each chunk the
/// socket gives; it keeps what it needs (never more than [`V2_MAX`] bytes, and nothing at all
/// when the header arrives whole in the first chunk, the usual case).
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
}

/// What one chunk completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Still inside the header: all of the chunk was taken.
    NeedMore,
    /// The header is whole; it ended `used` bytes into this chunk. `chunk[used..]` is the
    /// client's first payload, to be echoed.
    Done { header: Header, used: usize },
    /// Not a PROXY header: close without echoing.
    Invalid(Invalid),
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Feed {
        if self.buf.is_empty() {
            // The header usually comes whole in the first segment: parse in place, no copy.
            return match parse(chunk) {
                Status::Done(header, used) => Feed::Done { header, used },
                Status::Invalid(e) => Feed::Invalid(e),
                Status::NeedMore => {
                    self.buf.extend_from_slice(chunk);
                    Feed::NeedMore
                }
            };
        }
        let before = self.buf.len();
        // No header is longer than V2_MAX, and `parse` decides by then: copy no more.
        let take = chunk.len().min(V2_MAX.saturating_sub(before));
        self.buf.extend_from_slice(&chunk[..take]);
        match parse(&self.buf) {
            Status::NeedMore => Feed::NeedMore,
            Status::Invalid(e) => Feed::Invalid(e),
            Status::Done(header, n) => {
                // `parse` is prefix-stable and said NeedMore for the first `before` bytes, so
                // the header ends inside this chunk.
                debug_assert!(n > before);
                self.buf = Vec::new();
                Feed::Done {
                    header,
                    used: n - before,
                }
            }
        }
    }

    /// Bytes held (at most [`V2_MAX`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(version: Version, src: &str, dst: &str) -> Header {
        Header {
            version,
            addresses: Some(Addresses {
                source: sa(src),
                destination: sa(dst),
            }),
        }
    }

    fn unknown(version: Version) -> Header {
        Header {
            version,
            addresses: None,
        }
    }

    /// The whole input gives `want`; every prefix is `NeedMore` or the same answer; and for a
    /// header, no prefix shorter than it is `Done`, and payload after it is left alone.
    fn check(input: &[u8], want: Status) {
        assert_eq!(parse(input), want, "whole input {input:?}");
        for cut in 0..input.len() {
            let got = parse(&input[..cut]);
            match want {
                Status::Done(_, n) if cut < n => {
                    assert_eq!(got, Status::NeedMore, "prefix {cut} of {input:?}")
                }
                _ => assert!(
                    got == Status::NeedMore || got == want,
                    "prefix {cut} of {input:?}: {got:?}, whole: {want:?}"
                ),
            }
        }
        if let Status::Done(h, n) = want {
            let mut more = input.to_vec();
            more.extend_from_slice(b"PROXY payload\r\n\x00\xff");
            assert_eq!(parse(&more), Status::Done(h, n), "payload after {input:?}");
        }
    }

    fn done(h: Header, input: &[u8]) -> Status {
        Status::Done(h, input.len())
    }

    #[test]
    fn v1_valid_forms() {
        let cases: &[(&[u8], Header)] = &[
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
                proxied(Version::V1, "192.0.2.1:56324", "198.51.100.7:443"),
            ),
            (
                b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
                proxied(Version::V1, "0.0.0.0:0", "255.255.255.255:65535"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n",
                proxied(Version::V1, "[2001:db8::1]:1", "[::1]:2"),
            ),
            (
                b"PROXY TCP6 ::ffff:192.0.2.9 2001:DB8:0:0:0:0:0:2 8080 80\r\n",
                proxied(Version::V1, "[::ffff:192.0.2.9]:8080", "[2001:db8::2]:80"),
            ),
            (b"PROXY UNKNOWN\r\n", unknown(Version::V1)),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 x\r\n",
                unknown(Version::V1),
            ),
        ];
        for (input, h) in cases {
            check(input, done(*h, input));
        }
    }

    #[test]
    fn v1_longest_line_is_107_bytes() {
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        let h = proxied(
            Version::V1,
            &format!("[{f}]:65535"),
            &format!("[{f}]:65535"),
        );
        check(line.as_bytes(), done(h, line.as_bytes()));
        // UNKNOWN padded to exactly 107 bytes is fine; one more is too long.
        let pad = |n: usize| format!("PROXY UNKNOWN {}\r\n", "x".repeat(n));
        let ok = pad(107 - 16);
        assert_eq!(ok.len(), 107);
        check(ok.as_bytes(), done(unknown(Version::V1), ok.as_bytes()));
        let long = pad(107 - 15);
        check(long.as_bytes(), Status::Invalid(Invalid::V1TooLong));
        // Embedded dotted quads make a legal-looking line longer than 107: rejected, not read on.
        let g = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let line = format!("PROXY TCP6 {g} {g} 65535 65535\r\n");
        check(line.as_bytes(), Status::Invalid(Invalid::V1TooLong));
    }

    #[test]
    fn v1_malformed() {
        use Invalid::*;
        let cases: &[(&[u8], Invalid)] = &[
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
            (b"PROXY TCP4\r\n", V1Protocol),
            (b"PROXY TCP\r\n", V1Protocol),
            (b"PROXY \r\n", V1Protocol),
            (b"PROXY UNKNOWNX\r\n", V1Protocol),
            (b"PROXY UNKNOWN\rX", V1LineEnd),
            (b"PROXY UNKNOWN foo\r\r\n", V1LineEnd),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1SourceAddress),
            (
                b"PROXY TCP4 1.2.3.4.5.6.7.8.9 5.6.7.8 1 2\r\n",
                V1SourceAddress,
            ),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1DestinationAddress),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", V1DestinationAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n", V1DestinationAddress),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", V1SourceAddress),
            (b"PROXY TCP6 ::1 :::1 1 2\r\n", V1DestinationAddress),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1SourcePort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1DestinationPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", V1DestinationPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1DestinationPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", V1DestinationPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", V1LineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1LineEnd),
        ];
        for (input, e) in cases {
            check(input, Status::Invalid(*e));
        }
    }

    #[test]
    fn garbage_is_rejected_at_its_first_byte() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"proxy TCP4",
            b"PROXX",
            b"\x16\x03\x01\x02\x00",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"\r\n\r\n\x01",
            b"\x00",
        ] {
            check(input, Status::Invalid(Invalid::NotProxy));
        }
        assert_eq!(parse(b"G"), Status::Invalid(Invalid::NotProxy));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIT\r"),
            Status::Invalid(Invalid::NotProxy)
        );
        for prefix in [&b""[..], b"P", b"PROXY", b"\r", b"\r\n\r\n\0\r\nQUIT"] {
            assert_eq!(parse(prefix), Status::NeedMore, "{prefix:?}");
        }
        // Garbage after a valid v1 start stops before 107 bytes, at the first wrong byte.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4x"),
            Status::Invalid(Invalid::V1SourceAddress)
        );
        assert_eq!(parse(b"PROXY UNKNOWN"), Status::NeedMore);
    }

    /// A v2 header: version/command byte, family byte, block (addresses and TLVs).
    fn v2h(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn inet4_block(tlvs: &[u8]) -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(tlvs);
        b
    }

    fn inet6_block(tlvs: &[u8]) -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        let mut b = src.octets().to_vec();
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&65535u16.to_be_bytes());
        b.extend_from_slice(tlvs);
        b
    }

    /// Two TLVs as HAProxy sends them: ALPN "h2" and a NOOP of 5 bytes of padding.
    const TLVS: &[u8] = b"\x01\x00\x02h2\x04\x00\x05\0\0\0\0\0";

    #[test]
    fn v2_valid_forms() {
        let v4 = proxied(Version::V2, "192.0.2.1:56324", "198.51.100.7:443");
        let v6 = proxied(Version::V2, "[2001:db8::1]:1", "[::ffff:10.0.0.1]:65535");
        let none = unknown(Version::V2);
        let cases: Vec<(Vec<u8>, Header)> = vec![
            (v2h(0x21, 0x11, &inet4_block(b"")), v4),
            (v2h(0x21, 0x11, &inet4_block(TLVS)), v4),
            (v2h(0x21, 0x21, &inet6_block(b"")), v6),
            (v2h(0x21, 0x21, &inet6_block(TLVS)), v6),
            // LOCAL: the block is skipped, whatever family it claims.
            (v2h(0x20, 0x00, b""), none),
            (v2h(0x20, 0x11, &inet4_block(b"")), none),
            (v2h(0x20, 0x12, b"\x01"), none),
            (v2h(0x20, 0x00, &[7; 300]), none),
            // PROXY with UNSPEC or a UNIX stream: no IP address; use the socket's peer.
            (v2h(0x21, 0x00, b""), none),
            (v2h(0x21, 0x00, TLVS), none),
            (v2h(0x21, 0x31, &[0; 216]), none),
        ];
        for (input, h) in cases {
            check(&input, done(h, &input));
        }
    }

    #[test]
    fn v2_size_limit() {
        let tlv = |n: usize| {
            let mut t = vec![0x04];
            t.extend_from_slice(&(n as u16).to_be_bytes());
            t.extend(std::iter::repeat_n(0u8, n));
            t
        };
        // 16 + 12 + 3 + n = 4096 exactly.
        let biggest = v2h(0x21, 0x11, &inet4_block(&tlv(4096 - 31)));
        assert_eq!(biggest.len(), V2_MAX);
        assert!(matches!(parse(&biggest), Status::Done(_, V2_MAX)));
        let too_big = v2h(0x21, 0x11, &inet4_block(&tlv(4096 - 30)));
        // Rejected from the length field alone, without waiting for the rest.
        assert_eq!(parse(&too_big[..16]), Status::Invalid(Invalid::V2TooLong));
        check(&too_big, Status::Invalid(Invalid::V2TooLong));
        let mut max_len = v2h(0x21, 0x11, b"");
        max_len[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&max_len), Status::Invalid(Invalid::V2TooLong));
    }

    #[test]
    fn v2_malformed() {
        use Invalid::*;
        let good = inet4_block(b"");
        let cases: Vec<(Vec<u8>, Invalid)> = vec![
            (v2h(0x11, 0x11, &good), V2Version),
            (v2h(0x31, 0x11, &good), V2Version),
            (v2h(0x01, 0x11, &good), V2Version),
            (v2h(0x22, 0x11, &good), V2Command),
            (v2h(0x2F, 0x11, &good), V2Command),
            (v2h(0x21, 0x13, &good), V2Family),
            (v2h(0x21, 0x41, &good), V2Family),
            (v2h(0x21, 0x01, &good), V2Family),
            (v2h(0x20, 0x10, &good), V2Family),
            (v2h(0x21, 0x12, &good), V2Datagram),
            (v2h(0x21, 0x22, &inet6_block(b"")), V2Datagram),
            (v2h(0x21, 0x32, &[0; 216]), V2Datagram),
            (v2h(0x21, 0x11, &good[..11]), V2AddressLength),
            (v2h(0x21, 0x11, b""), V2AddressLength),
            (v2h(0x21, 0x21, &good), V2AddressLength),
            (v2h(0x21, 0x31, &[0; 215]), V2AddressLength),
            (v2h(0x21, 0x11, &inet4_block(b"\x01")), V2Tlv),
            (v2h(0x21, 0x11, &inet4_block(b"\x01\x00")), V2Tlv),
            (v2h(0x21, 0x11, &inet4_block(b"\x01\x00\x03h2")), V2Tlv),
            (
                v2h(0x21, 0x11, &inet4_block(&TLVS[..TLVS.len() - 1])),
                V2Tlv,
            ),
            (v2h(0x21, 0x21, &inet6_block(b"\x04\x00\x01")), V2Tlv),
            (v2h(0x21, 0x00, b"\x04\x00\x01"), V2Tlv),
        ];
        for (input, e) in cases {
            check(&input, Status::Invalid(e));
        }
    }

    /// Split every valid header at every pair of points into three sends, as a reader of a
    /// socket would see it: the answer is `NeedMore` until the last byte, then the same.
    #[test]
    fn every_split_gives_need_more_then_the_same_header() {
        let inputs: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2h(0x21, 0x11, &inet4_block(TLVS)),
            v2h(0x21, 0x21, &inet6_block(b"")),
            v2h(0x20, 0x00, b""),
        ];
        for input in inputs {
            let whole = parse(&input);
            assert!(matches!(whole, Status::Done(_, n) if n == input.len()));
            let mut buf = Vec::new();
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    buf.clear();
                    for part in [&input[..a], &input[a..b], &input[b..]] {
                        buf.extend_from_slice(part);
                        let got = parse(&buf);
                        if buf.len() < input.len() {
                            assert_eq!(got, Status::NeedMore, "{input:?} at {}", buf.len());
                        } else {
                            assert_eq!(got, whole);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reader_takes_chunks_and_hands_back_the_payload() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec();
        let v2 = v2h(0x21, 0x21, &inet6_block(TLVS));
        let payload = b"GET /\r\n\x00\xffPROXY ";
        for header in [v1, v2] {
            let Status::Done(h, n) = parse(&header) else {
                panic!("valid")
            };
            let mut input = header.clone();
            input.extend_from_slice(payload);
            // Every chunk size, and every two-chunk split.
            let mut splits: Vec<Vec<usize>> = (1..=input.len())
                .map(|size| (size..input.len()).step_by(size).collect())
                .collect();
            splits.extend((1..input.len()).map(|cut| vec![cut]));
            for cuts in splits {
                let mut r = Reader::new();
                let mut start = 0;
                let mut echoed = Vec::new();
                let mut done = None;
                for end in cuts.iter().copied().chain([input.len()]) {
                    let chunk = &input[start..end];
                    start = end;
                    if done.is_some() {
                        echoed.extend_from_slice(chunk);
                        continue;
                    }
                    match r.feed(chunk) {
                        Feed::NeedMore => assert!(end < n, "{cuts:?}: NeedMore at {end}"),
                        Feed::Done { header, used } => {
                            assert_eq!(end - chunk.len() + used, n, "{cuts:?}");
                            done = Some(header);
                            echoed.extend_from_slice(&chunk[used..]);
                        }
                        Feed::Invalid(e) => panic!("{cuts:?}: {e}"),
                    }
                    assert!(r.buffered() <= V2_MAX);
                }
                assert_eq!(done, Some(h), "{cuts:?}");
                assert_eq!(echoed, payload, "{cuts:?}: the payload, once, in order");
            }
        }
    }

    #[test]
    fn reader_rejects_and_stays_bounded() {
        let mut r = Reader::new();
        assert_eq!(r.feed(b"PROXY TCP4 1.2"), Feed::NeedMore);
        assert_eq!(
            r.feed(b".3.4 x"),
            Feed::Invalid(Invalid::V1DestinationAddress)
        );
        // A v2 header of the maximum size, fed in large chunks: never more than V2_MAX held.
        let mut big = v2h(0x21, 0x11, &inet4_block(&[]));
        big[14..16].copy_from_slice(&((V2_MAX - 16) as u16).to_be_bytes());
        let mut tail = vec![0x04];
        tail.extend_from_slice(&((V2_MAX - 16 - 12 - 3) as u16).to_be_bytes());
        big.extend_from_slice(&tail);
        big.resize(V2_MAX, 0);
        big.extend_from_slice(&[9; 5000]);
        let mut r = Reader::new();
        assert_eq!(r.feed(&big[..100]), Feed::NeedMore);
        match r.feed(&big[100..]) {
            Feed::Done { used, .. } => assert_eq!(100 + used, V2_MAX),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.buffered(),
            0,
            "the buffer is freed once the header is whole"
        );
        let mut r = Reader::new();
        assert_eq!(r.feed(b"\r\n\r\n"), Feed::NeedMore);
        assert_eq!(
            r.feed(b"\0\r\nQUIT\n\x21\x11\xff\xff"),
            Feed::Invalid(Invalid::V2TooLong)
        );
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(Invalid::NotProxy.to_string(), "not a PROXY protocol header");
        assert_eq!(
            Invalid::V2TooLong.to_string(),
            format!("PROXY v2 header longer than {V2_MAX} bytes")
        );
    }
}
