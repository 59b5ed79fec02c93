//! bulk: stream a pseudo-random byte stream and read the echo at the same time.
//!
//! Each connection writes `--size`-byte chunks of its [`ByteStream`] for as long as the socket
//! takes them, and checks every echoed byte against a second copy of the same generator.
//! A chunk counts as one round trip when its last byte comes back; its latency runs from
//! its first byte written to its last byte echoed (so it includes queueing in both directions).
//! After `--duration` the writer stops; everything already written must still come back,
//! then the write side is shut down and the server must close with nothing extra.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

use crate::engine::{Ctx, Flow, Plan, Session};
use crate::pattern::{ByteStream, seed};
use crate::report::{ErrorKind, Failure};
use crate::tls::Conn;

/// Reads + writes per drive before yielding to the thread's other connections.
const BATCH: u32 = 64;

pub struct Bulk {
    id: u64,
    tx: ByteStream,
    rx: ByteStream,
    chunk: Vec<u8>,
    /// Bytes of `chunk` written (`chunk.len()`: refill before the next write).
    chunk_sent: usize,
    written: u64,
    echoed: u64,
    /// When each chunk not yet fully echoed began to be written, oldest first.
    starts: VecDeque<Instant>,
    closing: bool,
}

impl Session for Bulk {
    fn start(id: u64, attempt: u32, _began: Instant, plan: &Plan) -> Self {
        let s = seed(id, attempt);
        Bulk {
            id,
            tx: ByteStream::new(s),
            rx: ByteStream::new(s),
            chunk: vec![0; plan.size],
            chunk_sent: plan.size,
            written: 0,
            echoed: 0,
            starts: VecDeque::new(),
            closing: false,
        }
    }

    fn drive(&mut self, s: &mut Conn<'_>, ctx: &mut Ctx<'_>) -> Result<Flow, Failure> {
        for _ in 0..BATCH {
            let mut blocked = true;
            if !ctx.stopping {
                if self.chunk_sent == self.chunk.len() {
                    self.tx.fill(&mut self.chunk);
                    self.chunk_sent = 0;
                }
                match s.write(&self.chunk[self.chunk_sent..]) {
                    Ok(0) => return Err(self.fail("write", &io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        if self.chunk_sent == 0 {
                            self.starts.push_back(Instant::now());
                        }
                        self.chunk_sent += n;
                        self.written += n as u64;
                        ctx.moved = true;
                        blocked = false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.fail("write", &e)),
                }
            } else if self.echoed == self.written && !self.closing {
                s.shutdown_write().map_err(|e| self.fail("shutdown", &e))?;
                self.closing = true;
            }
            match s.read(ctx.buf) {
                Ok(0) if self.closing => return Ok(Flow::Done),
                Ok(0) => {
                    return Err(Failure::new(
                        ErrorKind::Closed,
                        format!(
                            "conn {}: server closed after echoing {} of {} bytes",
                            self.id, self.echoed, self.written
                        ),
                    ));
                }
                Ok(n) => {
                    self.check(&ctx.buf[..n])?;
                    self.count(n, ctx);
                    blocked = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.fail("read", &e)),
            }
            if blocked {
                return Ok(Flow::Wait);
            }
        }
        Ok(Flow::Yield)
    }
}

impl Bulk {
    fn check(&mut self, echo: &[u8]) -> Result<(), Failure> {
        let extra = (self.echoed + echo.len() as u64).saturating_sub(self.written);
        if extra > 0 {
            return Err(Failure::new(
                ErrorKind::Mismatch,
                format!(
                    "conn {}: {extra} byte(s) echoed beyond the {} written",
                    self.id, self.written
                ),
            ));
        }
        self.rx.verify(echo).map_err(|(at, want)| {
            Failure::new(
                ErrorKind::Mismatch,
                format!(
                    "conn {}: stream byte {} sent 0x{want:02x}, echoed 0x{:02x}",
                    self.id,
                    self.echoed + at as u64,
                    echo[at]
                ),
            )
        })
    }

    /// Credits `n` verified bytes; each chunk completed is a round trip.
    fn count(&mut self, n: usize, ctx: &mut Ctx<'_>) {
        let size = self.chunk.len() as u64;
        let before = self.echoed / size;
        self.echoed += n as u64;
        ctx.stats.bytes += n as u64;
        ctx.moved = true;
        let now = Instant::now();
        for _ in before..self.echoed / size {
            let t0 = self.starts.pop_front().unwrap_or(now);
            ctx.stats.record_round_trip(0, now - t0);
        }
    }

    fn fail(&self, what: &str, e: &io::Error) -> Failure {
        Failure::io(
            &format!("conn {}: {what} at stream byte {}", self.id, self.echoed),
            e,
        )
    }
}
