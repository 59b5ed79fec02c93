//! One client connection: its socket, its pending output and its readiness flags.
//!
//! [`Conn::service`] is the whole echo: write what is pending, then read and echo until the
//! socket is drained, the pending output is over the cap (backpressure), or this turn's budget
//! is spent (fairness). It never blocks and never allocates while the peer keeps up.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

/// Bytes the socket did not take yet, in order. Holds memory only while something is pending.
#[derive(Default, Debug)]
pub struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// The bytes still to send, oldest first.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Appends bytes after what is already pending.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Reuse the consumed front instead of growing: at most one copy of the live half.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Marks `n` bytes as sent; when nothing is left, the allocation is released.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed more than pending");
        self.start += n;
        if self.is_empty() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes of heap held (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Readiness and lifecycle bits of a connection.
pub mod flag {
    /// An EPOLLIN edge was seen and the socket has not been read to a short read / EAGAIN.
    pub const READABLE: u8 = 1;
    /// The socket took everything we offered last time (no EAGAIN since the last EPOLLOUT edge).
    pub const WRITABLE: u8 = 2;
    /// The peer shut its write side (EPOLLRDHUP/EPOLLHUP): read to EOF, a short read is not enough.
    pub const RDHUP: u8 = 4;
    /// `read` returned 0: nothing more will come; close once the pending output is sent.
    pub const EOF: u8 = 8;
    /// The connection sits in the worker's run queue.
    pub const QUEUED: u8 = 16;
    /// Bytes moved since the last shutdown drain tick (used only while shutting down).
    pub const ACTIVE: u8 = 32;
    /// A read filled the whole buffer: a bulk stream, echoed with splice(2) while it lasts.
    pub const BULK: u8 = 64;
}

/// The worker's pipe for zero-copy echo of bulk streams: socket → pipe → socket with
/// splice(2), so the bytes never cross into user space. Empty between uses.
pub struct SplicePipe {
    pub r: OwnedFd,
    pub w: OwnedFd,
}

/// Bytes per splice: the same as one buffered read, so the memory bound is unchanged.
const SPLICE_LEN: usize = 64 * 1024;
/// A splice that moves less than this ends the bulk mode: small messages are cheaper copied.
const SPLICE_MIN: usize = 4096;

enum Spliced {
    Eof,
    Drained,
    Moved(usize),
}

/// What the worker should do with a connection after [`Conn::service`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do until the next epoll edge.
    Wait,
    /// Still readable but this turn's budget is spent: serve again after the others.
    Again,
    /// Done: EOF, and everything echoed. Close it (FIN).
    Close,
    /// Broken (reset, EPIPE, another error): close it.
    Failed(io::ErrorKind),
}

/// Byte counts moved by one [`Conn::service`] call.
#[derive(Default, Debug, Clone, Copy)]
pub struct Moved {
    pub read: usize,
    pub written: usize,
}

#[derive(Debug)]
pub struct Conn {
    pub fd: OwnedFd,
    pub pending: Pending,
    pub flags: u8,
    /// Idle list links (slab indices) and the coarse second of the last traffic.
    pub prev: u32,
    pub next: u32,
    pub last_active: u32,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> Conn {
        Conn {
            fd,
            pending: Pending::default(),
            flags: flag::WRITABLE,
            prev: u32::MAX,
            next: u32::MAX,
            last_active: 0,
        }
    }

    #[inline]
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Records the readiness bits of one epoll event.
    pub fn on_event(&mut self, events: u32) {
        if events & (sys::EPOLLIN | sys::EPOLLRDHUP | sys::EPOLLHUP | sys::EPOLLERR) != 0 {
            self.flags |= flag::READABLE;
        }
        if events & (sys::EPOLLRDHUP | sys::EPOLLHUP) != 0 {
            self.flags |= flag::RDHUP;
        }
        if events & (sys::EPOLLOUT | sys::EPOLLERR | sys::EPOLLHUP) != 0 {
            self.flags |= flag::WRITABLE;
        }
    }

    /// True when the connection has nothing to send and nothing known to be unread.
    pub fn is_drained(&self) -> bool {
        self.pending.is_empty() && !self.has(flag::READABLE)
    }

    /// Does this turn's work. `buf` is the worker's read buffer; `budget` bounds the bytes read
    /// this turn; reading stops while more than `max_pending` bytes wait to be sent.
    pub fn service(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        max_pending: usize,
        pipe: Option<&SplicePipe>,
        moved: &mut Moved,
    ) -> Outcome {
        match self.echo(buf, budget, max_pending, pipe, moved) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e.kind()),
        }
    }

    fn echo(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        max_pending: usize,
        pipe: Option<&SplicePipe>,
        moved: &mut Moved,
    ) -> io::Result<Outcome> {
        if !self.pending.is_empty() && self.has(flag::WRITABLE) {
            self.flush(moved)?;
        }
        let mut budget = budget;
        while self.has(flag::READABLE) && self.pending.len() <= max_pending {
            if budget == 0 {
                return Ok(Outcome::Again);
            }
            if let Some(pipe) = pipe
                && self.has(flag::BULK)
                && self.pending.is_empty()
                && self.has(flag::WRITABLE)
            {
                match self.splice_echo(pipe, buf, moved)? {
                    Spliced::Eof => {
                        self.flags = (self.flags | flag::EOF) & !flag::READABLE;
                        break;
                    }
                    Spliced::Drained => {
                        self.flags &= !flag::READABLE;
                        break;
                    }
                    Spliced::Moved(n) => {
                        budget = budget.saturating_sub(n);
                        if n < SPLICE_MIN {
                            self.flags &= !flag::BULK;
                        }
                        continue;
                    }
                }
            }
            let n = match sys::read(self.fd.as_fd(), buf) {
                Ok(0) => {
                    self.flags = (self.flags | flag::EOF) & !flag::READABLE;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flags &= !flag::READABLE;
                    break;
                }
                Err(e) => return Err(e),
            };
            moved.read += n;
            budget = budget.saturating_sub(n);
            // A short read drained the socket: the next byte to arrive raises a new edge.
            // After RDHUP no edge will come, so read on until EOF.
            if n < buf.len() && !self.has(flag::RDHUP) {
                self.flags &= !flag::READABLE;
            }
            if n == buf.len() {
                self.flags |= flag::BULK;
            }
            let data = &buf[..n];
            if self.pending.is_empty() && self.has(flag::WRITABLE) {
                let w = self.send(data, moved)?;
                if w < n {
                    self.pending.push(&data[w..]);
                }
            } else {
                self.pending.push(data);
                if self.has(flag::WRITABLE) {
                    self.flush(moved)?;
                }
            }
        }
        if self.has(flag::EOF) && self.pending.is_empty() {
            return Ok(Outcome::Close);
        }
        Ok(Outcome::Wait)
    }

    /// Echoes up to [`SPLICE_LEN`] bytes socket → pipe → socket. What the socket does not take
    /// is copied out of the pipe into the pending output, so the pipe is empty again on return.
    /// Only `EAGAIN` counts as drained here: a short splice may just have run out of pipe slots.
    fn splice_echo(
        &mut self,
        pipe: &SplicePipe,
        buf: &mut [u8],
        moved: &mut Moved,
    ) -> io::Result<Spliced> {
        let n = match sys::splice(self.fd.as_fd(), pipe.w.as_fd(), SPLICE_LEN) {
            Ok(0) => return Ok(Spliced::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Spliced::Drained),
            Err(e) => return Err(e),
        };
        moved.read += n;
        let mut left = n;
        let mut failed = None;
        while left > 0 {
            match sys::splice(pipe.r.as_fd(), self.fd.as_fd(), left) {
                Ok(m) => {
                    left -= m;
                    moved.written += m;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if left > 0 {
            self.flags &= !flag::WRITABLE;
        }
        // Empty the pipe whatever happened: the next connection must find it empty.
        while left > 0 {
            let room = left.min(buf.len());
            let k = sys::read(pipe.r.as_fd(), &mut buf[..room])?;
            if failed.is_none() {
                self.pending.push(&buf[..k]);
            }
            left -= k;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(Spliced::Moved(n)),
        }
    }

    /// Sends as much pending output as the socket takes.
    fn flush(&mut self, moved: &mut Moved) -> io::Result<()> {
        while !self.pending.is_empty() {
            let pending = self.pending.len();
            let w = send_some(&self.fd, self.pending.as_slice(), &mut self.flags, moved)?;
            self.pending.consume(w);
            if w < pending {
                break;
            }
        }
        Ok(())
    }

    fn send(&mut self, data: &[u8], moved: &mut Moved) -> io::Result<usize> {
        send_some(&self.fd, data, &mut self.flags, moved)
    }
}

/// Sends what the socket takes of `data`; a short count (or EAGAIN, as 0) clears WRITABLE
/// until the next EPOLLOUT edge.
fn send_some(fd: &OwnedFd, data: &[u8], flags: &mut u8, moved: &mut Moved) -> io::Result<usize> {
    let w = match sys::send(fd.as_fd(), data) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    moved.written += w;
    if w < data.len() {
        *flags &= !flag::WRITABLE;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_order_across_partial_consumes() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        assert_eq!(p.capacity(), 0, "no allocation while nothing is pending");
        p.push(b"hello ");
        p.push(b"world");
        assert_eq!(p.as_slice(), b"hello world");
        p.consume(3);
        assert_eq!(p.as_slice(), b"lo world");
        p.push(b"!");
        assert_eq!(p.as_slice(), b"lo world!");
        assert_eq!(p.len(), 9);
    }

    #[test]
    fn pending_releases_memory_when_drained() {
        let mut p = Pending::default();
        p.push(&[7u8; 100_000]);
        assert!(p.capacity() >= 100_000);
        p.consume(60_000);
        p.consume(40_000);
        assert!(p.is_empty());
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn pending_compacts_instead_of_growing_without_bound() {
        // A steady stream of push(n) / consume(n) must not grow the buffer without bound.
        let mut p = Pending::default();
        let chunk = [1u8; 1000];
        p.push(&chunk);
        for i in 0..10_000 {
            p.push(&chunk);
            p.consume(1000);
            assert_eq!(p.len(), 1000, "round {i}");
        }
        assert!(
            p.capacity() <= 8 * 1000,
            "capacity grew to {}",
            p.capacity()
        );
    }

    #[test]
    fn pending_byte_order_under_random_ops() {
        // A model check: bytes come out exactly in the order they went in.
        let mut p = Pending::default();
        let mut model = std::collections::VecDeque::new();
        let mut x: u32 = 12345;
        let mut next_byte = 0u8;
        for _ in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if x.is_multiple_of(3) && !model.is_empty() {
                let n = (x as usize >> 8) % (model.len() + 1);
                assert_eq!(
                    &p.as_slice()[..n],
                    model.iter().take(n).copied().collect::<Vec<_>>()
                );
                p.consume(n);
                model.drain(..n);
            } else {
                let n = (x as usize >> 8) % 300;
                let data: Vec<u8> = (0..n)
                    .map(|_| {
                        next_byte = next_byte.wrapping_add(1);
                        next_byte
                    })
                    .collect();
                p.push(&data);
                model.extend(data);
            }
            assert_eq!(p.len(), model.len());
        }
    }

    #[test]
    #[should_panic(expected = "consumed more than pending")]
    fn pending_rejects_over_consume() {
        let mut p = Pending::default();
        p.push(b"ab");
        p.consume(3);
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn an_idle_connection_slot_is_small() {
        // The README promises a 56-byte slot: no per-connection read buffer, no allocation.
        assert_eq!(std::mem::size_of::<Option<super::Conn>>(), 56);
    }
}
