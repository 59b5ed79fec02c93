//! The stage seam: layers that sit between the socket and the echo.
//!
//! A stage sees the peer's bytes before the echo does and may answer with bytes of its own.
//! Stages run in order (e.g. PROXY header → TLS); each one either keeps all the input it is
//! given ([`Flow::Hold`]: a TLS session that decrypts, echoes and encrypts internally), or is
//! finished after a prefix ([`Flow::Pass`]: a PROXY header parser that consumed the header; the
//! rest goes to the next stage, or to the plain echo when none is left, and the stage is
//! dropped so the connection is back on the zero-copy fast path).
//!
//! A stage writes what it wants sent into the connection's [`Pending`] output: it goes out
//! through the same pending path as a backed-up echo (never the fast path), in order, under the
//! same `--max-pending` backpressure (reading stops while pending output is above the cap).

use std::fmt;
use std::net::SocketAddr;

use super::Tick;
use super::pending::Pending;

/// Who the client is, as a finished stage learned it (a PROXY header), for the worker's
/// per-client rules and logs: see [`Stage::client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The stage names no client (PROXY `LOCAL`, `UNKNOWN`): it is the socket's peer.
    SocketPeer,
    /// The client's address (the PROXY header's source).
    Addr(SocketAddr),
}

/// What a stage did with the input it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Consumed everything it was given; keep it in place for the next input.
    Hold,
    /// Done after the first `n` bytes: the rest goes on to the next stage (or the echo), and
    /// this stage is removed.
    Pass(usize),
    /// Read nothing more: send what is pending (e.g. a TLS alert or close_notify), then close.
    Finish,
    /// Close at once, sending nothing more (e.g. an invalid PROXY header). The reason is logged.
    Reject(&'static str),
}

/// One layer of a connection. Pure: no fd, no clock; everything arrives as bytes.
pub trait Stage: Send + fmt::Debug {
    /// `data` arrived from the peer (after the earlier stages). Queue bytes for the peer with
    /// `out.push(..)`.
    fn on_input(&mut self, data: &[u8], out: &mut Pending) -> Flow;

    /// The peer closed its sending side (EOF). Queue any last bytes. `Hold` and `Pass` mean
    /// "nothing more to add": the connection closes once its pending output is sent.
    fn on_eof(&mut self, out: &mut Pending) -> Flow {
        let _ = out;
        Flow::Hold
    }

    /// Asked once, right after this stage answered `Pass`: the client it identified, if it
    /// identifies one. The connection then asks the worker to admit that client
    /// ([`super::Action::Admit`]) before anything after the prefix is echoed.
    fn client(&self) -> Option<Client> {
        None
    }

    /// The tick by which this stage must have finished (e.g. `--proxy-header-timeout`); the
    /// worker closes the connection then ([`super::CloseReason::StageTimeout`]).
    fn deadline(&self) -> Option<Tick> {
        None
    }

    /// Why the connection is closed when [`Stage::deadline`] passes (the close reason and the
    /// log text: "header timeout", "TLS handshake timeout").
    fn deadline_reason(&self) -> &'static str {
        "stage timeout"
    }

    /// The server is closing the connection (idle timeout, shutdown drain): queue any last
    /// words (a TLS close_notify). Sent at most once, best effort, if nothing else is pending.
    fn on_close(&mut self, out: &mut Pending) {
        let _ = out;
    }
}

/// The stages of one connection, first to see the input first. Boxed, so a plain connection
/// pays one null pointer for the seam.
#[derive(Debug, Default)]
pub(super) struct Layers {
    stages: Vec<Box<dyn Stage>>,
    rejected: Option<&'static str>,
    /// A finished stage named this client: the worker must admit it before the echo.
    admit: Option<Client>,
}

impl Layers {
    pub(super) fn push(&mut self, stage: Box<dyn Stage>) {
        self.stages.push(stage);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.stages.is_empty() && self.rejected.is_none() && self.admit.is_none()
    }

    pub(super) fn rejected(&self) -> Option<&'static str> {
        self.rejected
    }

    pub(super) fn admit(&self) -> Option<Client> {
        self.admit
    }

    /// The worker's answer to [`super::Action::Admit`].
    pub(super) fn admitted(&mut self, r: Result<(), &'static str>) {
        self.admit = None;
        if let Err(why) = r {
            self.rejected = Some(why);
        }
    }

    /// The earliest deadline of the stages still there.
    pub(super) fn deadline(&self) -> Option<Tick> {
        self.stages.iter().filter_map(|s| s.deadline()).min()
    }

    /// Runs `data` through the stages. `Pass(n)`: every stage has finished and `data[n..]` is
    /// for the echo.
    pub(super) fn input(&mut self, data: &[u8], out: &mut Pending) -> Flow {
        let mut off = 0;
        while let Some(stage) = self.stages.first_mut() {
            match stage.on_input(&data[off..], out) {
                Flow::Pass(n) => {
                    assert!(off + n <= data.len(), "stage passed more than it was given");
                    off += n;
                    if let Some(c) = stage.client() {
                        self.admit = Some(c);
                    }
                    self.stages.remove(0);
                }
                Flow::Reject(why) => {
                    self.rejected = Some(why);
                    return Flow::Reject(why);
                }
                other => return other,
            }
        }
        Flow::Pass(off)
    }

    /// The reason of the first stage whose deadline has passed at `now`.
    pub(super) fn timed_out(&self, now: Tick) -> Option<&'static str> {
        self.stages
            .iter()
            .find(|s| s.deadline().is_some_and(|d| d <= now))
            .map(|s| s.deadline_reason())
    }

    pub(super) fn close(&mut self, out: &mut Pending) {
        for stage in &mut self.stages {
            stage.on_close(out);
        }
    }

    pub(super) fn eof(&mut self, out: &mut Pending) -> Flow {
        for stage in &mut self.stages {
            match stage.on_eof(out) {
                Flow::Reject(why) => {
                    self.rejected = Some(why);
                    return Flow::Reject(why);
                }
                Flow::Finish => return Flow::Finish,
                Flow::Hold | Flow::Pass(_) => {}
            }
        }
        Flow::Hold
    }
}
