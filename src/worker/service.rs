//! One connection's turn: the only place where the connection's actions become socket calls.
//!
//! Generic over [`Socket`], so the simulator runs exactly this code against its fake sockets;
//! the worker's implementation ([`FdSocket`]) is a thin shim over `sys`.

use std::io::{self, ErrorKind};

use crate::conn::{
    Action, Client, CloseReason, Conn, ReadResult, SPLICE_LEN, SendResult, SpliceResult, Turn,
};

/// The calls a turn makes. Errors are `io::Error`s as the kernel reports them (`EINTR` may
/// appear: the connection asks again).
pub trait Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn send(&mut self, data: &[u8]) -> io::Result<usize>;
    /// Splice up to `len` bytes from the socket into the worker's pipe.
    fn splice_in(&mut self, len: usize) -> io::Result<usize>;
    /// Splice up to `len` bytes from the worker's pipe into the socket.
    fn splice_out(&mut self, len: usize) -> io::Result<usize>;
    /// Read bytes back out of the worker's pipe (what the socket did not take).
    fn pipe_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Apply the per-client rules to the client a stage identified (`Action::Admit`);
    /// `Err(reason)` refuses it.
    fn admit(&mut self, client: Client) -> Result<(), &'static str>;
    /// The socket's current maximum segment size (`getsockopt(TCP_MAXSEG)`).
    fn mss(&mut self) -> io::Result<usize>;
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Wait,
    Yield,
    Close(CloseReason),
    /// Like `Close`, and the splice pipe is in an unknown state: stop splicing on this worker.
    CloseAndDropPipe(CloseReason),
}

fn send_result(r: io::Result<usize>) -> SendResult {
    match r {
        Ok(n) => SendResult::Sent(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => SendResult::WouldBlock,
        Err(e) => SendResult::Err(e.kind()),
    }
}

/// Runs one turn: polls the connection and performs its actions until it says wait, yield or
/// close. `buf` is the worker's read buffer (at least [`SPLICE_LEN`] and `turn.read_len()`).
///
/// Sends are plain `send(MSG_NOSIGNAL)` (no `MSG_MORE`): a bulk stream's reads are already
/// whole segments ([`Action::QueryMss`]), and a small message must leave at once.
pub fn serve<S: Socket>(conn: &mut Conn, sock: &mut S, turn: &mut Turn, buf: &mut [u8]) -> Outcome {
    let mut drop_pipe = false;
    loop {
        match conn.poll(turn) {
            Action::Read => {
                let len = conn.read_len(turn).min(buf.len());
                let r = sock.read(&mut buf[..len]);
                let result = match r {
                    Ok(0) => ReadResult::Eof,
                    Ok(n) => ReadResult::Data(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => ReadResult::WouldBlock,
                    Err(e) => ReadResult::Err(e.kind()),
                };
                conn.on_read(turn, result);
            }
            Action::SendInput(range) => {
                let r = send_result(sock.send(&buf[range.clone()]));
                conn.on_send_input(turn, r, &buf[range]);
            }
            Action::Send => {
                let r = send_result(sock.send(conn.transmit()));
                conn.on_sent(turn, r);
            }
            Action::QueryMss => {
                let mss = sock.mss().ok();
                conn.on_mss(mss);
            }
            Action::Splice => match splice(sock, buf) {
                Ok(result) => conn.on_splice(turn, result),
                Err(result) => {
                    // The pipe could not be emptied: never splice through it again.
                    drop_pipe = true;
                    turn.disable_splice();
                    conn.on_splice(turn, result);
                }
            },
            Action::Admit(client) => {
                let r = sock.admit(client);
                conn.on_admit(r);
            }
            Action::Yield => return Outcome::Yield,
            Action::Wait => return Outcome::Wait,
            Action::Close(reason) if drop_pipe => return Outcome::CloseAndDropPipe(reason),
            Action::Close(reason) => return Outcome::Close(reason),
        }
    }
}

/// socket → pipe → socket, leaving the pipe empty: what the socket does not take is copied out
/// of the pipe into `buf` (and becomes pending output); after a failed splice out, the rest is
/// read out and discarded. `Err` only if the pipe could not be emptied.
fn splice<'b, S: Socket>(
    sock: &mut S,
    buf: &'b mut [u8],
) -> Result<SpliceResult<'b>, SpliceResult<'b>> {
    let read = match sock.splice_in(SPLICE_LEN) {
        Ok(0) => return Ok(SpliceResult::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(SpliceResult::WouldBlock),
        Err(e) => return Ok(SpliceResult::Err(e.kind())),
    };
    let mut sent = 0;
    let mut failed = None;
    while sent < read {
        match sock.splice_out(read - sent) {
            Ok(0) => break,
            Ok(m) => sent += m,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                failed = Some(e.kind());
                break;
            }
        }
    }
    let left = read - sent;
    let mut got = 0;
    while got < left {
        let room = (left - got).min(buf.len() - got);
        match sock.pipe_read(&mut buf[got..got + room]) {
            Ok(k) if k > 0 => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The pipe holds bytes we cannot get out: it must never be used again.
            _ => {
                return Err(SpliceResult::Moved {
                    read,
                    sent,
                    unsent: &[],
                    failed: Some(failed.unwrap_or(ErrorKind::BrokenPipe)),
                });
            }
        }
        if got == buf.len() && got < left {
            // More unsent bytes than the buffer holds cannot happen (SPLICE_LEN ≤ buffer);
            // treat it like an unreadable pipe rather than lose bytes silently.
            return Err(SpliceResult::Moved {
                read,
                sent,
                unsent: &[],
                failed: Some(ErrorKind::OutOfMemory),
            });
        }
    }
    Ok(SpliceResult::Moved {
        read,
        sent,
        unsent: &buf[..left],
        failed,
    })
}

/// The worker's socket: a client fd, the worker's splice pipe if it has one, and its
/// per-client admission (with the loop's time) for `Action::Admit`.
pub struct FdSocket<'a> {
    pub fd: std::os::fd::BorrowedFd<'a>,
    pub pipe: Option<&'a SplicePipe>,
    pub per_ip: &'a super::per_ip::PerIp,
    pub now: std::time::Duration,
}

/// The worker's pipe for zero-copy echo of bulk streams. Empty between uses.
pub struct SplicePipe {
    pub r: std::os::fd::OwnedFd,
    pub w: std::os::fd::OwnedFd,
}

fn no_pipe() -> io::Error {
    io::Error::new(ErrorKind::Unsupported, "no splice pipe")
}

impl Socket for FdSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::read(self.fd, buf)
    }
    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        crate::sys::send(self.fd, data)
    }
    fn splice_in(&mut self, len: usize) -> io::Result<usize> {
        use std::os::fd::AsFd;
        let pipe = self.pipe.ok_or_else(no_pipe)?;
        crate::sys::splice(self.fd, pipe.w.as_fd(), len)
    }
    fn splice_out(&mut self, len: usize) -> io::Result<usize> {
        use std::os::fd::AsFd;
        let pipe = self.pipe.ok_or_else(no_pipe)?;
        crate::sys::splice(pipe.r.as_fd(), self.fd, len)
    }
    fn pipe_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsFd;
        let pipe = self.pipe.ok_or_else(no_pipe)?;
        crate::sys::read(pipe.r.as_fd(), buf)
    }
    fn admit(&mut self, client: Client) -> Result<(), &'static str> {
        use std::os::fd::AsRawFd;
        let peer = || {
            socket2::SockRef::from(&self.fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
        };
        let (ip, header) = match client {
            Client::Addr(a) => (Some(a.ip()), Some(a)),
            Client::SocketPeer => (peer().map(|a| a.ip()), None),
        };
        if crate::log::enabled(crate::log::Level::Debug) {
            let from = peer().map_or_else(|| "a client that has gone".into(), |a| a.to_string());
            let who = header.map_or_else(|| "none (the peer)".into(), |a| a.to_string());
            crate::log!(
                crate::log::Level::Debug,
                "accept {from} via PROXY header: client {who}"
            );
        }
        match ip {
            Some(ip) => self.per_ip.admit(self.fd.as_raw_fd(), ip, header, self.now),
            None => Ok(()), // gone already: the next read or send says so
        }
    }
    fn mss(&mut self) -> io::Result<usize> {
        crate::sys::tcp_maxseg(self.fd)
    }
}
