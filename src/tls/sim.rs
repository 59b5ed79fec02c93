//! Deterministic simulation of [`TlsSession`] against a real rustls client, in memory.
//!
//! A seeded driver plays both sockets: the client writes its payload through rustls in random
//! pieces, its ciphertext crosses a bounded "wire" with short writes and EAGAIN, the server
//! side reads random chunk sizes (1 byte up to 64 KiB) only while the session wants to read,
//! sends random short writes of [`TlsSession::transmit`], and the client reads the echo back in
//! random chunks. After every step: the echo received so far is a prefix of what was sent, and
//! the session's buffered bytes stay within `max_pending + one read + a handshake flight`.
//! A run that makes no progress (say, a record left inside the session with no wake-up to come)
//! hits the step bound and fails with its seed.
//!
//! Replay one seed: `TLS_SIM_SEED=1234 cargo test --lib tls_sim_random -- --nocapture`;
//! more seeds: `TLS_SIM_SEEDS=5000 cargo test --lib tls_sim_random`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, ServerConfig};

use super::config;
use super::session::{TlsFailure, TlsSession};
use super::testcert::{KeyFormat, TestDir, client, client_config_trusting};

/// What one `receive` may add beyond its input: a handshake flight with tickets, record
/// overheads. Generous; the point is that it does not grow with the payload.
const SLACK: usize = 8 * 1024;
/// The largest TLS record on the wire (header, 16 KiB of data, the most expansion allowed):
/// rustls holds at most one incomplete record of this size.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

struct Fixture {
    server: Arc<ServerConfig>,
    tls12: Arc<ClientConfig>,
    tls13: Arc<ClientConfig>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = TestDir::new("sim");
        let (cert, key) = dir.pair("sim", KeyFormat::EcdsaPkcs8);
        let certs: Vec<CertificateDer<'static>> = config::load_certs(&cert).unwrap();
        Fixture {
            server: config::load(&cert, &key).unwrap(),
            tls12: client_config_trusting(certs.clone(), &[&TLS12]),
            tls13: client_config_trusting(certs, &[&TLS13]),
        }
    })
}

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.range(0, xs.len() - 1)]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    /// The client sends close_notify after its payload.
    Notify,
    /// The client just half-closes TCP after its payload.
    Eof,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    tls13: bool,
    payload: usize,
    close: Close,
    max_pending: usize,
    /// Largest server read (the worker's buffer size).
    max_read: usize,
    /// Capacity of each direction's "socket buffers".
    c2s_cap: usize,
    s2c_cap: usize,
    /// Largest piece the client application writes / reads at once.
    client_chunk: usize,
}

impl Shape {
    fn random(rng: &mut Rng) -> Shape {
        let payload = match rng.range(0, 9) {
            0 => 0,
            1..=3 => rng.range(1, 100),
            4..=6 => rng.range(1, 64 * 1024),
            7 | 8 => rng.range(1, 512 * 1024),
            _ => rng.range(1, 3 << 20),
        };
        let max_read = rng.pick(&[1, 7, 4096, 64 * 1024]);
        let c2s_cap = rng.pick(&[1, 100, 16 * 1024, 256 * 1024]);
        let s2c_cap = rng.pick(&[1, 100, 16 * 1024, 256 * 1024]);
        // Byte-at-a-time shapes move a few KiB, so thousands of seeds stay fast.
        let client_chunk = rng.pick(&[1, 1000, 16 * 1024, 1 << 20]);
        let payload = if max_read.min(c2s_cap).min(s2c_cap).min(client_chunk) < 100 {
            payload.min(8 * 1024)
        } else {
            payload
        };
        Shape {
            tls13: rng.chance(50),
            payload,
            close: if rng.chance(50) {
                Close::Notify
            } else {
                Close::Eof
            },
            max_pending: rng.pick(&[1, 1024, 16 * 1024, 256 * 1024]),
            max_read,
            c2s_cap,
            s2c_cap,
            client_chunk,
        }
    }
}

/// One client, one server session, two wires.
struct Sim {
    rng: Rng,
    shape: Shape,
    payload: Vec<u8>,
    client: ClientConnection,
    session: TlsSession,
    /// Plaintext handed to the client's writer so far.
    app_sent: usize,
    echoed: Vec<u8>,
    client_closed: bool,
    c2s: VecDeque<u8>,
    c2s_eof: bool,
    s2c: VecDeque<u8>,
    s2c_eof: bool,
    server_saw_eof: bool,
    /// Most bytes the session ever buffered.
    peak: usize,
    steps: usize,
    /// Bytes that crossed each hop so far: client→wire, wire→server, server→wire, wire→client.
    moved: [usize; 4],
}

/// A writer that takes at most `room` bytes: a socket send buffer with short writes.
struct Wire<'a> {
    buf: &'a mut VecDeque<u8>,
    room: usize,
}

impl Write for Wire<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = data.len().min(self.room);
        self.buf.extend(&data[..n]);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes up to `n` bytes from the front of a wire.
fn take(wire: &mut VecDeque<u8>, n: usize) -> Vec<u8> {
    let n = n.min(wire.len());
    wire.drain(..n).collect()
}

impl Sim {
    fn new(seed: u64, shape: Option<Shape>) -> Sim {
        let mut rng = Rng(seed);
        let shape = shape.unwrap_or_else(|| Shape::random(&mut rng));
        let payload = rng.bytes(shape.payload);
        let f = fixture();
        let client = client(if shape.tls13 { &f.tls13 } else { &f.tls12 });
        let session = TlsSession::new(f.server.clone(), shape.max_pending).unwrap();
        Sim {
            rng,
            shape,
            payload,
            client,
            session,
            app_sent: 0,
            echoed: Vec::new(),
            client_closed: false,
            c2s: VecDeque::new(),
            c2s_eof: false,
            s2c: VecDeque::new(),
            s2c_eof: false,
            server_saw_eof: false,
            peak: 0,
            steps: 0,
            moved: [0; 4],
        }
    }

    fn bound(&self) -> usize {
        self.shape.max_pending + self.shape.max_read + SLACK + MAX_RECORD
    }

    /// The client application writes a piece of its payload (the client's own buffer limit may
    /// take less).
    fn client_write(&mut self) {
        if self.app_sent < self.payload.len() {
            let n = self
                .rng
                .range(1, self.shape.client_chunk)
                .min(self.payload.len() - self.app_sent);
            let took = self
                .client
                .writer()
                .write(&self.payload[self.app_sent..self.app_sent + n])
                .unwrap();
            self.app_sent += took;
        } else if !self.client_closed && !self.client.is_handshaking() {
            self.client_closed = true;
            if self.shape.close == Close::Notify {
                self.client.send_close_notify();
            }
        }
    }

    /// The client's ciphertext into the client→server wire (short writes, EAGAIN); its EOF once
    /// it has closed and sent everything.
    fn client_send(&mut self) {
        let room = self.shape.c2s_cap.saturating_sub(self.c2s.len());
        let room = self.rng.range(0, room);
        let mut wire = Wire {
            buf: &mut self.c2s,
            room,
        };
        while self.client.wants_write() {
            match self.client.write_tls(&mut wire) {
                Ok(n) => self.moved[0] += n,
                Err(_) => break,
            }
        }
        if self.client_closed && !self.client.wants_write() {
            self.c2s_eof = true;
        }
    }

    /// The worker: one read of a random size if the session wants input; EOF when the wire is
    /// empty and closed.
    fn server_read(&mut self) {
        if !self.session.wants_read() || self.server_saw_eof {
            return;
        }
        if self.c2s.is_empty() {
            if self.c2s_eof {
                self.server_saw_eof = true;
                self.session
                    .receive_eof()
                    .unwrap_or_else(|e| panic!("receive_eof: {e}"));
            }
            return;
        }
        let n = match self.rng.range(0, 3) {
            0 => 1,
            1 => self.rng.range(1, 64.min(self.shape.max_read)),
            _ => self.rng.range(1, self.shape.max_read),
        };
        let chunk = take(&mut self.c2s, n);
        self.moved[1] += chunk.len();
        self.session
            .receive(&chunk)
            .unwrap_or_else(|e| panic!("receive: {e}"));
    }

    /// The worker sends a random short write of the session's output (0: EAGAIN); closes the
    /// socket once the session is done.
    fn server_send(&mut self) {
        let room = self.shape.s2c_cap.saturating_sub(self.s2c.len());
        let n = self.rng.range(0, room).min(self.session.transmit().len());
        self.s2c.extend(&self.session.transmit()[..n]);
        self.moved[2] += n;
        self.session.on_sent(n);
        if self.session.is_done() {
            self.s2c_eof = true;
        }
    }

    /// The client reads a random chunk of the echo and checks it.
    fn client_read(&mut self) {
        let n = self.rng.range(1, self.shape.client_chunk.max(64));
        let chunk = take(&mut self.s2c, n);
        self.moved[3] += chunk.len();
        let before = self.echoed.len();
        let mut rd = &chunk[..];
        while !rd.is_empty() {
            self.client.read_tls(&mut rd).unwrap();
            self.client
                .process_new_packets()
                .unwrap_or_else(|e| panic!("client: {e}"));
            let mut buf = [0u8; 32 * 1024];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.echoed.extend_from_slice(&buf[..n]),
                }
            }
        }
        let e = self.echoed.len();
        assert!(
            e <= self.app_sent,
            "echoed {e} bytes, sent {}",
            self.app_sent
        );
        assert!(
            self.echoed[before..] == self.payload[before..e],
            "echo differs within bytes {before}..{e}"
        );
    }

    fn check(&mut self) {
        let b = self.session.buffered();
        self.peak = self.peak.max(b);
        assert!(b <= self.bound(), "buffered {b} > bound {}", self.bound());
    }

    /// Changes whenever anything moves or any side changes state.
    fn fingerprint(&self) -> ([usize; 4], usize, [bool; 4]) {
        (
            self.moved,
            self.app_sent,
            [
                self.client_closed,
                self.c2s_eof,
                self.server_saw_eof,
                self.s2c_eof,
            ],
        )
    }

    fn finished(&self) -> bool {
        self.s2c_eof && self.s2c.is_empty()
    }

    /// Runs to the end; panics (with the state) on any broken invariant.
    fn run(&mut self) {
        // Liveness: something must move within this many steps (each action has a fair chance
        // of moving a byte whenever one can move), else the run is stuck.
        const STALL: usize = 5_000;
        let (mut last_progress, mut last_step) = (self.fingerprint(), 0);
        while !self.finished() {
            self.steps += 1;
            let now = self.fingerprint();
            if now != last_progress {
                (last_progress, last_step) = (now, self.steps);
            }
            assert!(
                self.steps - last_step < STALL,
                "no progress after {} steps: client handshaking {} wants_write {} closed {}; app_sent {} echoed {}; c2s {} eof {}; s2c {} eof {}; server eof {}; {:?}",
                self.steps,
                self.client.is_handshaking(),
                self.client.wants_write(),
                self.client_closed,
                self.app_sent,
                self.echoed.len(),
                self.c2s.len(),
                self.c2s_eof,
                self.s2c.len(),
                self.s2c_eof,
                self.server_saw_eof,
                self.session
            );
            match self.rng.range(0, 5) {
                0 => self.client_write(),
                1 => self.client_send(),
                2 | 3 => self.server_read(),
                4 => self.server_send(),
                _ => self.client_read(),
            }
            self.check();
        }
        assert_eq!(self.echoed.len(), self.payload.len(), "echo incomplete");
        assert!(self.session.failure().is_none());
        // The server's close_notify reached the client, whether it closed with one or not.
        let mut eof: &[u8] = &[];
        self.client.read_tls(&mut eof).unwrap();
        let state = self.client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "no close_notify from the server");
        let want = if self.shape.tls13 {
            ProtocolVersion::TLSv1_3
        } else {
            ProtocolVersion::TLSv1_2
        };
        assert_eq!(self.session.protocol_version(), Some(want));
    }
}

fn run_seed(seed: u64, shape: Option<Shape>) -> Sim {
    let result = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, shape);
        sim.run();
        sim
    });
    match result {
        Ok(sim) => sim,
        Err(e) => {
            let shape = Sim::new(seed, shape).shape;
            eprintln!(
                "tls sim seed {seed} failed ({shape:?}); replay: TLS_SIM_SEED={seed} cargo test --lib tls_sim_random -- --nocapture"
            );
            std::panic::resume_unwind(e)
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn tls_sim_random_seeds() {
    if let Some(seed) = env_u64("TLS_SIM_SEED") {
        let sim = run_seed(seed, None);
        eprintln!(
            "seed {seed}: {:?}, {} steps, peak {}",
            sim.shape, sim.steps, sim.peak
        );
        return;
    }
    let seeds = env_u64("TLS_SIM_SEEDS").unwrap_or(64);
    let (mut v12, mut v13, mut bytes) = (0, 0, 0);
    for seed in 0..seeds {
        let sim = run_seed(seed, None);
        if sim.shape.tls13 {
            v13 += 1
        } else {
            v12 += 1
        }
        bytes += sim.payload.len();
    }
    // The seeds cover both versions and real volume.
    assert!(
        v12 > 0 && v13 > 0 && bytes > 256 << 10,
        "{v12} {v13} {bytes}"
    );
}

fn shape(tls13: bool, payload: usize, close: Close) -> Shape {
    Shape {
        tls13,
        payload,
        close,
        max_pending: 256 * 1024,
        max_read: 64 * 1024,
        c2s_cap: 256 * 1024,
        s2c_cap: 256 * 1024,
        client_chunk: 64 * 1024,
    }
}

#[test]
fn tls_sim_one_byte_reads_and_writes_both_versions() {
    // Every record split at every byte boundary: the server reads one byte at a time and the
    // wires carry one byte at a time, through the handshake and the data.
    for tls13 in [false, true] {
        for close in [Close::Notify, Close::Eof] {
            let s = Shape {
                max_read: 1,
                c2s_cap: 1,
                s2c_cap: 1,
                client_chunk: 1000,
                ..shape(tls13, 3000, close)
            };
            run_seed(7, Some(s));
        }
    }
}

#[test]
fn tls_sim_payload_sizes_both_versions() {
    for tls13 in [false, true] {
        for (i, len) in [0, 1, 16383, 16384, 16385, 65536, 4 << 20]
            .into_iter()
            .enumerate()
        {
            let close = if i % 2 == 0 {
                Close::Notify
            } else {
                Close::Eof
            };
            let sim = run_seed(100 + i as u64, Some(shape(tls13, len, close)));
            assert_eq!(sim.echoed.len(), len);
        }
    }
}

#[test]
fn tls_sim_backpressure_bounds_memory() {
    // A client that writes 2 MiB and reads nothing: the session stops reading once it holds
    // more than max-pending, and stays within its bound however long the client pushes.
    for tls13 in [false, true] {
        let s = Shape {
            max_pending: 16 * 1024,
            c2s_cap: 64 * 1024,
            s2c_cap: 64 * 1024,
            ..shape(tls13, 2 << 20, Close::Notify)
        };
        let mut sim = Sim::new(3, Some(s));
        handshake(&mut sim);
        for _ in 0..20_000 {
            match sim.rng.range(0, 3) {
                0 => sim.client_write(),
                1 => sim.client_send(),
                2 => sim.server_read(),
                _ => sim.server_send(),
            }
            sim.check();
        }
        // Stalled: the server is not reading, the client's bytes wait in the wire.
        assert!(
            !sim.session.wants_read(),
            "still reading at {}",
            sim.session.buffered()
        );
        assert!(sim.session.transmit().len() > s.max_pending);
        assert!(!sim.c2s.is_empty() && sim.s2c.len() == s.s2c_cap);
        // Once the client reads, everything comes back.
        sim.run();
        assert!(sim.peak <= sim.bound(), "peak {}", sim.peak);
    }
}

/// The client's first flight (the ClientHello), in one piece.
fn client_hello(tls13: bool) -> Vec<u8> {
    let f = fixture();
    let mut c = client(if tls13 { &f.tls13 } else { &f.tls12 });
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).unwrap();
    }
    hello
}

#[test]
fn tls_sim_client_hello_split_at_every_byte_boundary() {
    for tls13 in [false, true] {
        let hello = client_hello(tls13);
        let mut whole = TlsSession::new(fixture().server.clone(), 1 << 20).unwrap();
        whole.receive(&hello).unwrap();
        assert!(!whole.transmit().is_empty(), "no ServerHello");
        for k in 1..hello.len() {
            let mut s = TlsSession::new(fixture().server.clone(), 1 << 20).unwrap();
            s.receive(&hello[..k]).unwrap();
            assert!(
                s.transmit().is_empty(),
                "answered a partial hello ({k} bytes)"
            );
            assert_eq!(s.buffered(), k, "partial record bytes at {k}");
            s.receive(&hello[k..]).unwrap();
            // Same first record (the ServerHello's header) as the unsplit run.
            assert_eq!(s.transmit()[..3], whole.transmit()[..3], "split at {k}");
            assert!(s.is_handshaking() && s.wants_read());
        }
    }
}

#[test]
fn tls_sim_plaintext_garbage_is_refused_with_an_alert() {
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x00",
        b"hello\n",
    ] {
        let mut s = TlsSession::new(fixture().server.clone(), 1 << 20).unwrap();
        assert_eq!(s.receive(garbage), Err(TlsFailure::NotTls));
        assert_eq!(s.failure().map(TlsFailure::kind), Some("not_tls"));
        assert!(!s.wants_read() && !s.is_handshaking());
        // A fatal alert record (content type 21), then done.
        assert_eq!(s.transmit().first(), Some(&21), "{:?}", s.transmit());
        let n = s.transmit().len();
        s.on_sent(n);
        assert!(s.is_done());
        // Later input is ignored.
        assert_eq!(s.receive(b"more"), Ok(()));
        assert!(s.transmit().is_empty());
    }
}

#[test]
fn tls_sim_truncated_client_hello_and_record() {
    for tls13 in [false, true] {
        let hello = client_hello(tls13);
        for cut in [1, 4, 5, hello.len() / 2, hello.len() - 1] {
            let mut s = TlsSession::new(fixture().server.clone(), 1 << 20).unwrap();
            s.receive(&hello[..cut]).unwrap();
            let e = s.receive_eof().unwrap_err();
            assert_eq!(e, TlsFailure::Truncated { handshaking: true });
            assert!(s.is_done() && !s.wants_read());
        }
        // Mid-record after the handshake: no close_notify goes out, it is a truncation.
        let mut sim = Sim::new(9, Some(shape(tls13, 0, Close::Eof)));
        handshake(&mut sim);
        sim.client.writer().write_all(b"0123456789").unwrap();
        let mut record = Vec::new();
        while sim.client.wants_write() {
            sim.client.write_tls(&mut record).unwrap();
        }
        sim.session.receive(&record[..record.len() - 3]).unwrap();
        assert!(sim.session.buffered() > 0);
        let unsent = sim.session.transmit().len();
        let e = sim.session.receive_eof().unwrap_err();
        assert_eq!(e, TlsFailure::Truncated { handshaking: false });
        assert_eq!(e.kind(), "truncated");
        assert_eq!(
            sim.session.transmit().len(),
            unsent,
            "queued something on truncation"
        );
    }
}

/// Runs the handshake of `sim` to completion with whole-buffer transfers.
fn handshake(sim: &mut Sim) {
    for _ in 0..10 {
        let mut buf = Vec::new();
        while sim.client.wants_write() {
            sim.client.write_tls(&mut buf).unwrap();
        }
        sim.session.receive(&buf).unwrap();
        let out = sim.session.transmit().to_vec();
        sim.session.on_sent(out.len());
        let mut rd = &out[..];
        while !rd.is_empty() {
            sim.client.read_tls(&mut rd).unwrap();
            sim.client.process_new_packets().unwrap();
        }
        if !sim.client.is_handshaking()
            && !sim.session.is_handshaking()
            && !sim.client.wants_write()
        {
            return;
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn tls_sim_bad_record_fails_that_connection_with_an_alert() {
    for tls13 in [false, true] {
        let mut sim = Sim::new(11, Some(shape(tls13, 0, Close::Eof)));
        handshake(&mut sim);
        sim.client.writer().write_all(b"a secret").unwrap();
        let mut record = Vec::new();
        while sim.client.wants_write() {
            sim.client.write_tls(&mut record).unwrap();
        }
        let last = record.len() - 1;
        record[last] ^= 1; // breaks the AEAD tag
        let e = sim.session.receive(&record).unwrap_err();
        assert!(
            matches!(e, TlsFailure::Record(rustls::Error::DecryptError)),
            "{e:?}"
        );
        assert!(!sim.session.wants_read());
        // The client gets the alert.
        let out = sim.session.transmit().to_vec();
        sim.session.on_sent(out.len());
        assert!(sim.session.is_done());
        sim.client.read_tls(&mut &out[..]).unwrap();
        let err = sim.client.process_new_packets().unwrap_err();
        assert!(matches!(err, rustls::Error::AlertReceived(_)), "{err:?}");
    }
}

#[test]
fn tls_sim_eof_before_any_byte_is_a_quiet_close() {
    let mut s = TlsSession::new(fixture().server.clone(), 1 << 20).unwrap();
    assert!(s.is_handshaking() && s.wants_read());
    assert_eq!(s.receive_eof(), Ok(()));
    assert!(s.is_done() && s.failure().is_none() && s.transmit().is_empty());
}

#[test]
fn tls_sim_drained_output_buffer_is_released() {
    let mut sim = Sim::new(5, Some(shape(true, 1 << 20, Close::Notify)));
    handshake(&mut sim);
    sim.client.set_buffer_limit(None);
    sim.client
        .writer()
        .write_all(&vec![7u8; 256 * 1024])
        .unwrap();
    let mut buf = Vec::new();
    while sim.client.wants_write() {
        sim.client.write_tls(&mut buf).unwrap();
    }
    sim.session.receive(&buf).unwrap();
    assert!(sim.session.output_capacity() >= 256 * 1024);
    let n = sim.session.transmit().len();
    sim.session.on_sent(n - 1);
    sim.session.on_sent(1);
    assert_eq!(sim.session.output_capacity(), 0);
}

#[test]
fn tls_sim_server_close_sends_close_notify_after_the_echo() {
    for tls13 in [false, true] {
        let mut sim = Sim::new(13, Some(shape(tls13, 0, Close::Notify)));
        handshake(&mut sim);
        sim.client.writer().write_all(b"last words").unwrap();
        let mut buf = Vec::new();
        while sim.client.wants_write() {
            sim.client.write_tls(&mut buf).unwrap();
        }
        sim.session.receive(&buf).unwrap();
        sim.session.close();
        assert!(!sim.session.wants_read() && !sim.session.is_done());
        sim.session.close(); // idempotent
        let out = sim.session.transmit().to_vec();
        sim.session.on_sent(out.len());
        assert!(sim.session.is_done() && sim.session.failure().is_none());
        let mut rd = &out[..];
        let mut state = None;
        while !rd.is_empty() {
            sim.client.read_tls(&mut rd).unwrap();
            state = Some(sim.client.process_new_packets().unwrap());
        }
        let mut echo = Vec::new();
        let _ = sim.client.reader().read_to_end(&mut echo);
        assert_eq!(echo, b"last words");
        assert!(state.unwrap().peer_has_closed(), "no close_notify");
    }
}
