//! pingpong and churn: write `--size` bytes, read all of them back, compare every byte.
//!
//! pingpong keeps each connection open and repeats the exchange until `--duration` ends;
//! latency is write → last echoed byte (closed loop: the next exchange starts when the
//! previous one ends, so a server stall delays the requests that would have been sent
//! meanwhile and shows as one slow sample — "coordinated omission").
//!
//! With `--rate R` (open loop, as wrk2 does it) connection `i` of `C` sends its `k`-th
//! request at the *intended* instant `start + i/R + k·C/R`, so the whole run sends R per
//! second, evenly spread. One request is in flight per connection: when a reply comes late,
//! the requests whose time has passed are sent at once, one after another, and every latency
//! runs from the request's intended send instant to its last echoed byte. A 300 ms stall
//! therefore shows as the ~300 ms × R/C requests it delayed, in p99/p999. The time from the
//! actual send is kept too (`service time`: what a closed loop would have measured). churn does one exchange per connection, then closes it
//! and opens a new one; latency is connect → last echoed byte. Both end a connection the same
//! way: shut down the write side and expect the server to close (EOF) with no extra bytes.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::engine::{Ctx, Flow, Plan, Session};
use crate::pattern::{ByteStream, seed};
use crate::report::{ErrorKind, Failure};
use crate::tls::Conn;

/// Exchanges per drive before yielding to the thread's other connections.
const BATCH: u32 = 32;

enum State {
    /// Between exchanges.
    Idle,
    /// `out` is being written and echoed.
    Exchange,
    /// Write side shut down; waiting for the server's EOF.
    Closing,
}

struct Exchange {
    id: u64,
    pattern: ByteStream,
    out: Vec<u8>,
    sent: usize,
    got: usize,
    round: u64,
    /// The latency clock's zero: the intended send instant (open loop), the write (closed
    /// loop) or the connect (churn).
    t0: Instant,
    /// Open loop: when the current request was really written first.
    sent_at: Instant,
    schedule: Option<Schedule>,
    state: State,
    /// churn: one exchange, timed from connect.
    once: bool,
}

/// An open-loop connection's send schedule.
struct Schedule {
    /// The next request's intended send instant.
    next: Instant,
    interval: Duration,
    /// No request is intended at or after this (`--duration`'s end).
    end: Instant,
}

impl Schedule {
    /// Connection `id` of `connections`, `rate` requests per second for the whole run.
    fn new(id: u64, rate: f64, connections: usize, start: Instant, end: Instant) -> Schedule {
        let offset = Duration::from_secs_f64((id % connections as u64) as f64 / rate);
        Schedule {
            next: start + offset,
            interval: Duration::from_secs_f64(connections as f64 / rate),
            end,
        }
    }
}

impl Exchange {
    fn new(id: u64, attempt: u32, began: Instant, plan: &Plan, once: bool) -> Exchange {
        let now = Instant::now();
        Exchange {
            sent_at: now,
            schedule: plan
                .rate
                .filter(|_| !once)
                .map(|(rate, conns)| Schedule::new(id, rate, conns, now, plan.deadline)),
            id,
            pattern: ByteStream::new(seed(id, attempt)),
            out: vec![0; plan.size],
            sent: 0,
            got: 0,
            round: 0,
            t0: began,
            state: State::Idle,
            once,
        }
    }

    fn drive(&mut self, s: &mut Conn<'_>, ctx: &mut Ctx<'_>) -> Result<Flow, Failure> {
        let mut done_now = 0;
        loop {
            match self.state {
                State::Idle => {
                    let finished = if self.once {
                        self.round > 0
                    } else {
                        ctx.stopping || self.schedule.as_ref().is_some_and(|s| s.next >= s.end)
                    };
                    if finished {
                        s.shutdown_write()
                            .map_err(|e| Failure::io(&format!("conn {}: shutdown", self.id), &e))?;
                        self.state = State::Closing;
                        continue;
                    }
                    if done_now == BATCH {
                        return Ok(Flow::Yield);
                    }
                    if let Some(s) = &self.schedule
                        && Instant::now() < s.next
                    {
                        return Ok(Flow::Sleep(s.next));
                    }
                    self.pattern.fill(&mut self.out);
                    self.sent = 0;
                    self.got = 0;
                    self.sent_at = Instant::now();
                    if let Some(s) = &mut self.schedule {
                        self.t0 = s.next;
                        s.next += s.interval;
                    } else if !self.once {
                        self.t0 = self.sent_at;
                    }
                    self.state = State::Exchange;
                }
                State::Exchange => {
                    let mut blocked = true;
                    if self.sent < self.out.len() {
                        match s.write(&self.out[self.sent..]) {
                            Ok(0) => {
                                return Err(self.fail("write", &io::ErrorKind::WriteZero.into()));
                            }
                            Ok(n) => {
                                self.sent += n;
                                ctx.moved = true;
                                blocked = false;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(self.fail("write", &e)),
                        }
                    }
                    if self.got < self.sent {
                        let want = (self.sent - self.got).min(ctx.buf.len());
                        match s.read(&mut ctx.buf[..want]) {
                            Ok(0) => {
                                return Err(Failure::new(
                                    ErrorKind::Closed,
                                    format!(
                                        "conn {} round {}: server closed after echoing {} of {} bytes",
                                        self.id,
                                        self.round,
                                        self.got,
                                        self.out.len()
                                    ),
                                ));
                            }
                            Ok(n) => {
                                self.check(&ctx.buf[..n])?;
                                self.got += n;
                                ctx.moved = true;
                                blocked = false;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(self.fail("read", &e)),
                        }
                    }
                    if self.got == self.out.len() {
                        ctx.stats
                            .record_round_trip(self.out.len(), self.t0.elapsed());
                        if self.schedule.is_some() {
                            ctx.stats.record_service_time(self.sent_at.elapsed());
                        }
                        self.round += 1;
                        done_now += 1;
                        self.state = State::Idle;
                    } else if blocked {
                        return Ok(Flow::Wait);
                    }
                }
                State::Closing => {
                    return match s.read(&mut ctx.buf[..]) {
                        Ok(0) => Ok(Flow::Done),
                        Ok(n) => Err(Failure::new(
                            ErrorKind::Mismatch,
                            format!(
                                "conn {}: {n} unexpected byte(s) after the last echo",
                                self.id
                            ),
                        )),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Flow::Wait),
                        Err(e) => Err(self.fail("read at close", &e)),
                    };
                }
            }
        }
    }

    /// Compares echoed bytes with what was sent at the same offset.
    fn check(&self, echo: &[u8]) -> Result<(), Failure> {
        let sent = &self.out[self.got..self.got + echo.len()];
        if echo == sent {
            return Ok(());
        }
        let at = echo.iter().zip(sent).position(|(a, b)| a != b).unwrap_or(0);
        Err(Failure::new(
            ErrorKind::Mismatch,
            format!(
                "conn {} round {}: byte {} sent 0x{:02x}, echoed 0x{:02x}",
                self.id,
                self.round,
                self.got + at,
                sent[at],
                echo[at]
            ),
        ))
    }

    fn fail(&self, what: &str, e: &io::Error) -> Failure {
        Failure::io(&format!("conn {} round {}: {what}", self.id, self.round), e)
    }
}

/// Long-lived connections, one exchange after another.
pub struct PingPong(Exchange);

impl Session for PingPong {
    fn start(id: u64, attempt: u32, began: Instant, plan: &Plan) -> Self {
        PingPong(Exchange::new(id, attempt, began, plan, false))
    }
    fn drive(&mut self, s: &mut Conn<'_>, ctx: &mut Ctx<'_>) -> Result<Flow, Failure> {
        self.0.drive(s, ctx)
    }
}

/// One exchange per connection, then close and reconnect.
pub struct Churn(Exchange);

impl Session for Churn {
    fn start(id: u64, attempt: u32, began: Instant, plan: &Plan) -> Self {
        Churn(Exchange::new(id, attempt, began, plan, true))
    }
    fn drive(&mut self, s: &mut Conn<'_>, ctx: &mut Ctx<'_>) -> Result<Flow, Failure> {
        self.0.drive(s, ctx)
    }
}
