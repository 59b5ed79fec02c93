#!/usr/bin/env python3
"""The benchmark matrix: epoll-echo against reference echo servers, same run, two paths.

Sections (--sections): bulk1, bulk4, pingpong, openloop, churn, fairness, idle (plain TCP,
against tokio-echo, segment-echo.c and limit-echo.c), tls-bulk, tls-handshake, tls-pingpong
(against tokio-rustls-echo), udp (against udp-echo.c), and pingpong500 on request. Paths
(--paths): loopback, and veth (a 1500-byte-MTU veth pair to a network namespace this script
creates and removes; needs root).

Every server runs alone, pinned (taskset -c 0); the load (echo-bench, or this script for the
idle section) runs on another CPU (taskset -c 1). The server's own CPU time (utime+stime from
/proc/PID/stat), its syscalls (perf stat, in a separate run so tracing does not inflate the
CPU figures) and its RSS are divided by the work done. Median and min-max of N interleaved
runs (A B C A B C ...). Python 3 standard library only; see bench/README.md.

usage: python3 bench/run.py [--quick] [--sections bulk1,pingpong,...] [--paths loopback,veth]
                            [--runs N] [--duration S] [--server-args="..."] [--json FILE]
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "bench-peers"
PEER_BIN = REPO / "target" / "bench-peers"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The veth path: the servers live in this namespace behind a veth pair; the load stays in the
# root namespace. Addresses from 198.18.0.0/15 (benchmarking range).
NETNS = "ee-bench-srv"
VETH_HOST, VETH_NS = "ee-bench-h", "ee-bench-s"
SRV_IP, LOAD_IP = "198.18.0.1", "198.18.0.2"

# section -> (group, mode, connections, size, workers)
SECTIONS = {
    "bulk1": ("tcp", "bulk", 1, 65536, 1),
    "bulk4": ("tcp", "bulk", 4, 65536, 2),
    "pingpong": ("tcp", "pingpong", 50, 64, 1),
    "pingpong500": ("tcp", "pingpong", 500, 64, 1),
    "openloop": ("tcp", "pingpong", 50, 64, 1),
    "churn": ("tcp", "churn", 4, 64, 1),
    "fairness": ("tcp", None, 50, 64, 1),
    "idle": ("tcp", None, 0, 0, 1),
    "tls-bulk": ("tls", "bulk", 1, 65536, 1),
    "tls-handshake": ("tls", "handshake", 4, 64, 1),
    "tls-pingpong": ("tls", "pingpong", 50, 64, 1),
    "udp": ("udp", "udp", 16, 64, 1),
}
DEFAULT_SECTIONS = [s for s in SECTIONS if s != "pingpong500"]
ALIASES = {"bulk": "bulk1", "pingpong50": "pingpong", "pp": "pingpong", "open": "openloop",
           "tls": "tls-bulk,tls-handshake,tls-pingpong"}
PATHS = ["loopback", "veth"]
# Servers per group; the first is ours, the rest are references. Ratio columns: ours / these.
GROUPS = {
    "tcp": (["epoll-echo", "tokio", "segment", "floor"], ["tokio", "segment"]),
    "tls": (["epoll-echo", "tokio-rustls"], ["tokio-rustls"]),
    "udp": (["epoll-echo", "udp-echo"], ["udp-echo"]),
}
GROUP_TITLES = {"tcp": "plain TCP", "tls": "TLS (rustls, ring; same certificate)",
                "udp": "UDP, 16 sockets × 12 datagrams of 64 B in flight"}

# Table rows: (section, metric key, label, digits). Lower is better except where noted.
ROWS = [
    ("bulk1", "gb_per_s", "bulk 1 stream: GB/s (higher is better)", 2),
    ("bulk1", "cpu_s_per_gb", "bulk 1 stream: server CPU s/GB", 3),
    ("bulk1", "machine_s_per_gb", "bulk 1 stream: whole-machine CPU s/GB", 3),
    ("bulk1", "syscalls_per_mb", "bulk 1 stream: syscalls/MB", 1),
    ("bulk4", "gb_per_s", "bulk 4 streams, 2 workers: GB/s (higher is better)", 2),
    ("bulk4", "cpu_s_per_gb", "bulk 4 streams, 2 workers: server CPU s/GB", 3),
    ("bulk4", "machine_s_per_gb", "bulk 4 streams, 2 workers: whole-machine CPU s/GB", 3),
    ("pingpong", "cpu_us_per_rt", "pingpong 50×64B: CPU µs/round trip", 2),
    ("pingpong", "syscalls_per_rt", "pingpong 50×64B: syscalls/round trip", 2),
    ("pingpong", "rt_per_s", "pingpong 50×64B: round trips/s (higher is better)", 0),
    ("pingpong", "p99_us", "pingpong 50×64B: p99 µs (closed loop)", 0),
    ("pingpong500", "cpu_us_per_rt", "pingpong 500×64B: CPU µs/round trip", 2),
    ("pingpong500", "rt_per_s", "pingpong 500×64B: round trips/s (higher is better)", 0),
    ("openloop", "p99_us", "open loop 50×64B at RATE/s: p99 µs", 0),
    ("openloop", "p999_us", "open loop 50×64B at RATE/s: p99.9 µs", 0),
    ("openloop", "cpu_us_per_rt", "open loop 50×64B at RATE/s: CPU µs/round trip", 2),
    ("openloop", "achieved_pct", "open loop 50×64B at RATE/s: % of the rate achieved", 0),
    ("churn", "cpu_us_per_conn", "churn: CPU µs/connection", 1),
    ("churn", "syscalls_per_conn", "churn: syscalls/connection", 1),
    ("fairness", "p99_us", "fairness: pingpong p99 µs beside a bulk stream", 0),
    ("fairness", "max_us", "fairness: pingpong max µs beside a bulk stream", 0),
    ("idle", "rss_per_conn", "idle IDLE: RSS bytes/connection", 0),
    ("idle", "rss_per_conn_touched", "idle IDLE after one echo each: RSS bytes/connection", 0),
    ("idle", "idle_cpu_ms_per_s", "idle IDLE: server CPU ms/s while idle", 1),
    ("tls-bulk", "gb_per_s", "TLS bulk 1 stream: GB/s (higher is better)", 2),
    ("tls-bulk", "cpu_s_per_gb", "TLS bulk 1 stream: server CPU s/GB", 3),
    ("tls-bulk", "machine_s_per_gb", "TLS bulk 1 stream: whole-machine CPU s/GB", 3),
    ("tls-handshake", "hs_per_s", "TLS handshakes/s (higher is better)", 0),
    ("tls-handshake", "cpu_us_per_hs", "TLS handshake: server CPU µs/handshake", 0),
    ("tls-pingpong", "cpu_us_per_rt", "TLS pingpong 50×64B: CPU µs/round trip", 2),
    ("tls-pingpong", "rt_per_s", "TLS pingpong 50×64B: round trips/s (higher is better)", 0),
    ("udp", "dgram_per_s", "UDP: datagrams/s (higher is better)", 0),
    ("udp", "cpu_us_per_dgram", "UDP: server CPU µs/datagram", 3),
    ("udp", "syscalls_per_dgram", "UDP: syscalls/datagram", 2),
    ("udp", "lost", "UDP: datagrams lost", 0),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

_procs = []  # every Popen we started; each leads its own process group, killed as a group


def spawn(argv, cpu, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    # A process group of its own, but not a session of its own: with sched_autogroup each
    # session is a scheduling group, which would make `nice` between two loads meaningless.
    if sys.version_info >= (3, 11):
        kw["process_group"] = 0
    else:
        kw["preexec_fn"] = os.setpgrp
    global _critical
    _critical += 1  # a signal now must not leave a child we have not recorded
    try:
        p = subprocess.Popen(["taskset", "-c", str(cpu), *argv], **kw)
        _procs.append(p)
    finally:
        _critical -= 1
    if _pending:
        _raise_for(_pending[0])
    return p


def kill_group(p, sig=signal.SIGTERM, grace=3.0):
    """Signal p's process group, wait up to grace seconds, then SIGKILL it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # anything left in the group (and a process that ignored sig)
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(2)
    except subprocess.TimeoutExpired:
        pass
    if p in _procs:
        _procs.remove(p)


def cleanup():
    for p in list(_procs):
        kill_group(p, signal.SIGKILL, 0.5)


_critical = 0
_pending = []


def _raise_for(signum):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _on_signal(signum, _frame):
    if _critical:
        _pending.append(signum)
        return
    _raise_for(signum)


# --------------------------------------------------------------------------- /proc probes

def cpu_seconds(pid):
    """utime+stime of the whole process (all threads), /proc/PID/stat fields 14 and 15."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()  # rest[0] is field 3
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def machine_busy():
    """Non-idle CPU seconds of the whole machine so far (/proc/stat: user, nice, system, irq,
    softirq; steal and idle excluded): server, client, and the softirq work between them."""
    with open("/proc/stat") as f:
        u, n, sy, _idle, _io, irq, sirq = map(int, f.readline().split()[1:8])
    return (u + n + sy + irq + sirq) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version()}


# --------------------------------------------------------------------------- ports, readiness

_used_ports = set()


def free_port():
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")



# --------------------------------------------------------------------------- perf

def perf_probe():
    """(True, '') if perf can count raw_syscalls:sys_enter here, else (False, why)."""
    if not shutil.which("perf"):
        return False, "perf not installed"
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        try:
            r = subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-o",
                                out.name, "--", "true"], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"perf failed: {e}"
        n = parse_perf(out.read())
        if r.returncode != 0 or n is None:
            why = (r.stderr.strip().splitlines() or ["no count"])[-1]
            return False, f"perf cannot count syscalls: {why}"
    return True, ""


def parse_perf(text):
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split(",")
        if len(f) >= 3 and "raw_syscalls:sys_enter" in f[2]:
            try:
                return int(float(f[0]))
            except ValueError:
                return None  # <not supported> / <not counted>
    return None


class PerfSyscalls:
    """perf stat counting a process's syscalls from __enter__ to __exit__."""

    def __init__(self, pid, cpu):
        self.pid, self.cpu, self.count = pid, cpu, None

    def __enter__(self):
        self.out = tempfile.NamedTemporaryFile("r", suffix=".perf")
        self.proc = spawn(["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-o",
                           self.out.name, "-p", str(self.pid)], self.cpu,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let it attach; the server is idle meanwhile
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            self.count = parse_perf(self.out.read())
        finally:
            kill_group(self.proc, signal.SIGKILL, 0.1)
            self.out.close()
        return False




# --------------------------------------------------------------------------- paths (netns)

class NetPath:
    """Where the servers listen and how to start a process there."""

    def __init__(self, name, host, prefix):
        self.name, self.host, self.prefix = name, host, prefix


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


_veth_up = False


def veth_down():
    """Removes the namespace and the veth pair (either end removes both); safe to repeat."""
    global _veth_up
    ip("link", "del", VETH_HOST, check=False)
    ip("netns", "del", NETNS, check=False)
    _veth_up = False


def veth_up():
    """Server namespace NETNS with SRV_IP/30 on a veth at MTU 1500; LOAD_IP/30 on our end."""
    global _veth_up
    if os.geteuid() != 0:
        raise RuntimeError("the veth path needs root (ip netns, ip link)")
    if not shutil.which("ip"):
        raise RuntimeError("the veth path needs iproute2's ip")
    veth_down()  # leftovers of an interrupted run
    _veth_up = True  # from here on, cleanup must remove whatever exists
    ip("netns", "add", NETNS)
    ip("link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
    ip("link", "set", VETH_NS, "netns", NETNS)
    ip("addr", "add", f"{LOAD_IP}/30", "dev", VETH_HOST)
    ip("link", "set", VETH_HOST, "mtu", "1500", "up")
    ip("-n", NETNS, "addr", "add", f"{SRV_IP}/30", "dev", VETH_NS)
    ip("-n", NETNS, "link", "set", VETH_NS, "mtu", "1500", "up")
    ip("-n", NETNS, "link", "set", "lo", "up")


def make_path(name):
    if name == "loopback":
        return NetPath("loopback", "127.0.0.1", [])
    veth_up()
    # `ip netns exec` switches namespace and execs: the PID is the server's own.
    return NetPath("veth", SRV_IP, ["ip", "netns", "exec", NETNS])


# --------------------------------------------------------------------------- servers

def wait_ready_udp(host, port, proc, deadline_s=10.0):
    deadline = time.monotonic() + deadline_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.connect((host, port))
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering")
            try:
                s.send(b"ready?")
                if s.recv(64) == b"ready?":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no UDP echo from {host}:{port} after {deadline_s}s")


def wait_ready(host, port, proc, deadline_s=10.0):
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not accepting on {host}:{port} after {deadline_s}s")
            time.sleep(0.02)


class Server:
    """argv_fn(port, host, workers) -> argv; udp: readiness by a datagram."""

    def __init__(self, name, argv_fn, ignore_sigpipe=False, udp=False):
        self.name, self.argv_fn = name, argv_fn
        self.ignore_sigpipe, self.udp = ignore_sigpipe, udp

    def start(self, ctx, path, workers=1):
        # A port free a moment ago may be taken meanwhile as another program's ephemeral port
        # (a busy machine); a bind failure then is not the server's fault: try another port.
        for attempt in range(3):
            try:
                return self._start(ctx, path, workers)
            except RuntimeError as e:
                if attempt == 2 or "in use" not in str(e):
                    raise
                ctx.note(self.name, "port taken before the server bound it; retried")

    def _start(self, ctx, path, workers):
        port = free_port()
        logf = open(Path(ctx.logdir) / f"{self.name}-{port}.log", "w+")
        # restore_signals=False: the child inherits this interpreter's SIG_IGN for SIGPIPE.
        proc = spawn([*path.prefix, *self.argv_fn(port, path.host, workers)],
                     ctx.args.server_cpu, stdout=logf, stderr=subprocess.STDOUT,
                     restore_signals=not self.ignore_sigpipe)
        proc.port, proc.logf = port, logf
        try:
            if self.udp:
                wait_ready_udp(path.host, port, proc)
            else:
                wait_ready(path.host, port, proc)
        except RuntimeError as e:
            notes = {}
            self.stop(proc, notes)
            said = " / ".join(list(notes.get(self.name, {}))[:2])
            raise RuntimeError(f"{e}" + (f": {said[:200]}" if said else "")) from None
        except BaseException:
            self.stop(proc)
            raise
        time.sleep(0.1)  # let the readiness probe's close be handled
        return proc

    def stop(self, proc, notes=None):
        died = proc.poll()
        kill_group(proc, signal.SIGTERM, 3.0)
        proc.logf.flush()
        proc.logf.seek(0)
        out = proc.logf.read().strip()
        proc.logf.close()
        if notes is not None and out:
            for line in [ln for ln in out.splitlines() if ln.strip()][:20]:
                notes.setdefault(self.name, {}).setdefault(line[:300], 0)
                notes[self.name][line[:300]] += 1
        return died


def server_help(path):
    try:
        r = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=10)
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def make_servers(args, certs):
    """{group: {name: Server}} and {group or server: why it is skipped}."""
    ours = Path(args.bin_dir) / "epoll-echo"
    extra = shlex.split(args.server_args or "")
    helptext = server_help(ours)


    def ours_at(binary):
        return lambda p, h, w: [str(binary), "--port", str(p), "--host", h, "--maxListeners",
                                str(w), "-q", *extra]

    skip = {}
    tcp = {
        "epoll-echo": Server("epoll-echo", ours_at(ours)),
        "tokio": Server("tokio", lambda p, h, w: [str(args.tokio_bin), str(p), "--threads",
                                                   str(w)]),
        # 0: the largest multiple of the path's TCP_MAXSEG that fits 64 KiB.
        "segment": Server("segment", lambda p, h, w: [str(PEER_BIN / "segment-echo"), str(p),
                                                       str(w), "0", h], ignore_sigpipe=True),
        # limit-echo.c neither ignores SIGPIPE nor uses MSG_NOSIGNAL: a client closing with
        # echo in flight would kill it. Rust programs ignore SIGPIPE at startup; give the C
        # floors the same (an inherited SIG_IGN) rather than edit the reference sources.
        "floor": Server("floor", lambda p, h, w: [str(PEER_BIN / "limit-echo"), str(p)],
                        ignore_sigpipe=True),
    }
    tls, udp = {}, {}
    if "--tls-port" not in helptext:
        skip["tls"] = "skipped: server has no --tls-port"
    elif certs is None:
        skip["tls"] = "skipped: no certificate (openssl failed or missing)"
    else:
        cert, key = str(certs / "cert.pem"), str(certs / "key.pem")

        # --port serves plain TCP beside the TLS listener; the load uses the TLS port.
        def ours_tls_at(binary):
            return lambda p, h, w: [
                str(binary), "--port", str(free_port()), "--host", h, "--maxListeners", str(w),
                "-q", "--tls-port", str(p), "--tls-cert", cert, "--tls-key", key, *extra]
        tls["epoll-echo"] = Server("epoll-echo", ours_tls_at(ours))
        tls["tokio-rustls"] = Server("tokio-rustls", lambda p, h, w: [
            str(args.tokio_rustls_bin), str(p), cert, key, "--threads", str(w), "--host", h])
    if "--udp-port" not in helptext:
        skip["udp"] = "skipped: server has no --udp-port"
    else:
        udp["epoll-echo"] = Server("epoll-echo", lambda p, h, w: [
            str(ours), "--port", str(free_port()), "--host", h, "--maxListeners", str(w), "-q",
            "--udp-port", str(p), *extra], udp=True)
        udp["udp-echo"] = Server("udp-echo", lambda p, h, w: [str(PEER_BIN / "udp-echo"),
                                                             str(p), h], udp=True)
    # --servers NAME=PATH: another epoll-echo build (an older commit, say) as one more column
    # of the plain-TCP and TLS sections, run with the same arguments as ours.
    for name, binary in args.extra_servers.items():
        tcp[name] = Server(name, ours_at(binary))
        if "epoll-echo" in tls:
            tls[name] = Server(name, ours_tls_at(binary))
    return {"tcp": tcp, "tls": tls, "udp": udp}, skip


def build_peers(args, want_tls):
    """Builds the reference servers if missing or stale; {name: problem}."""
    problems = {}
    PEER_BIN.mkdir(parents=True, exist_ok=True)
    for name, src, flags in (("floor", "limit-echo.c", []), ("segment", "segment-echo.c",
                                                            ["-pthread"]),
                             ("udp-echo", "udp-echo.c", [])):
        out = PEER_BIN / Path(src).stem
        if args.no_build or (out.exists() and out.stat().st_mtime >= (PEERS / src).stat().st_mtime):
            continue
        log(f"building {out}")
        if subprocess.run(["gcc", "-O2", *flags, "-o", str(out), str(PEERS / src)]).returncode:
            problems[name] = "gcc failed"
    crates = [("tokio", "tokio-echo", args.tokio_bin, default_bin("tokio-echo"))]
    if want_tls:
        crates.append(("tokio-rustls", "tokio-rustls-echo", args.tokio_rustls_bin,
                       default_bin("tokio-rustls-echo")))
    for name, crate, binary, default in crates:
        if not args.no_build and Path(binary) == default:
            log(f"building bench-peers/{crate} (cargo build --release)")
            r = subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                                str(PEERS / crate / "Cargo.toml")])
            if r.returncode != 0:
                problems[name] = "cargo build failed"
    for name, binary in (("floor", PEER_BIN / "limit-echo"), ("segment", PEER_BIN / "segment-echo"),
                         ("udp-echo", PEER_BIN / "udp-echo"), ("tokio", Path(args.tokio_bin)),
                         ("tokio-rustls", Path(args.tokio_rustls_bin)),
                         ("epoll-echo", Path(args.bin_dir) / "epoll-echo")):
        if name not in problems and not os.access(binary, os.X_OK):
            problems[name] = f"missing {binary}"
    return problems


def default_bin(crate):
    return PEERS / crate / "target" / "release" / crate


def make_certs(dirname):
    """A CA and a server certificate (localhost, 127.0.0.1, SRV_IP) signed by it, or None."""
    d = Path(dirname)
    (d / "ext").write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{SRV_IP}\n"
                           "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                           "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [["req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench-ca", "-keyout", "ca.key",
              "-out", "ca.pem"],
             ["req", *ec, "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "srv.csr"],
             ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
              "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "cert.pem"]]
    for s in steps:
        try:
            r = subprocess.run(["openssl", *s], cwd=d, capture_output=True, text=True)
        except OSError as e:
            log(f"TLS sections: openssl: {e}")
            return None
        if r.returncode != 0:
            log(f"TLS sections: openssl {s[0]}: {r.stderr.strip()[:200]}")
            return None
    os.chmod(d / "key.pem", 0o644)  # a server dropping privileges must still read it
    return d


# --------------------------------------------------------------------------- load

class Load:
    def __init__(self, path):
        self.path = str(path)
        self.ok = os.access(self.path, os.X_OK)
        self.help = {}

    def supports(self, mode, flag):
        if mode not in self.help:
            try:
                r = subprocess.run([self.path, mode, "--help"], capture_output=True, text=True,
                                   timeout=10)
                self.help[mode] = r.stdout + r.stderr
            except (OSError, subprocess.TimeoutExpired):
                self.help[mode] = ""
        return flag in self.help[mode]

    def argv(self, mode, host, port, conns, size, duration, extra=()):
        a = [self.path, mode, "--addr", f"{host}:{port}", "--connections", str(conns),
             "--size", str(size), "--duration", fmt_duration(duration), "--threads", "1"]
        return a + list(extra) + ["--json"]

    def start(self, argv, cpu, nice=0):
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        return spawn(argv, cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fmt_duration(d):
    return f"{int(d)}s" if float(d).is_integer() else f"{int(round(d * 1000))}ms"


def finish_load(proc, timeout):
    """Wait for a load process; return its final JSON line as a dict (raises on failure)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL, 0.1)
        raise RuntimeError(f"load did not finish within {timeout:.0f}s")
    finally:
        if proc in _procs:
            _procs.remove(proc)
    res = None
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if res is None:
        tail = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"echo-bench exit {proc.returncode}: {tail[:200]}")
    if proc.returncode != 0 and not res.get("errors"):
        res["errors"] = res.get("errors") or f"exit {proc.returncode}"
    if res.get("errors"):  # what went wrong, for the --json file
        res["stderr_tail"] = err.strip().splitlines()[-5:]
    return res


# --------------------------------------------------------------------------- sections

class Failed(Exception):
    """A failed measurement; raw keeps whatever was measured, for the --json file."""

    def __init__(self, msg, raw=None):
        super().__init__(msg)
        self.raw = raw or {}


def check_errors(res, raw, what="load"):
    e = res.get("errors", 0)
    if e:
        why = (res.get("stderr_tail") or [""])[-1][:120]
        rts = res.get("round_trips")
        done = f", {rts:,} round trips" if isinstance(rts, int) else ""
        raise Failed(f"{what} errors={e}{done}" + (f" ({why})" if why else ""), raw)


def load_extra(ctx, section):
    group = SECTIONS[section][0]
    if group == "tls":
        return ["--tls", "--tls-ca", str(ctx.certs / "ca.pem"), "--server-name", "localhost"]
    if group == "udp":
        return ["--window", "12", "--timeout", "1s"]
    if section == "openloop":
        return ["--rate", str(ctx.args.open_rate)]
    return []


def run_load(ctx, srv, path, section, perf, duration):
    """One run of a section that echo-bench drives alone. Returns raw numbers."""
    group, mode, conns, size, workers = SECTIONS[section]
    proc = srv.start(ctx, path, workers)
    try:
        argv = ctx.load.argv(mode, path.host, proc.port, conns, size, duration,
                             load_extra(ctx, section))
        raw = {}
        perf_cm = PerfSyscalls(proc.pid, ctx.args.load_cpu) if perf else None
        if perf_cm:
            perf_cm.__enter__()
        try:
            c0, t0, m0 = cpu_seconds(proc.pid), time.monotonic(), machine_busy()
            res = finish_load(ctx.load.start(argv, ctx.args.load_cpu), duration + 60)
            time.sleep(0.2)  # closes and final echoes are server work too
            c1, t1, m1 = cpu_seconds(proc.pid), time.monotonic(), machine_busy()
        finally:
            if perf_cm:
                perf_cm.__exit__(None, None, None)
        if proc.poll() is not None:
            raise Failed(f"server exited with {proc.returncode} during the load")
        cpu = c1 - c0
        dur = float(res.get("duration_s") or duration)
        raw.update(cpu_s=cpu, wall_s=t1 - t0, load=res)
        check_errors(res, raw)
        count = perf_cm.count if perf_cm else None
        if perf and count is None:
            raw["perf_note"] = "perf gave no count"

        def per(n, key, scale=1.0):
            if perf and count is not None:
                raw[key] = count / n * scale

        if mode == "pingpong":
            rts = res["round_trips"]
            if not rts:
                raise Failed("no round trips")
            raw.update(cpu_us_per_rt=cpu * 1e6 / rts, rt_per_s=res["round_trips_per_sec"],
                       server_cpu_util=100 * cpu / dur, p99_us=res["latency_us"]["p99"],
                       p999_us=res["latency_us"]["p999"])
            if "requested_rate" in res:
                raw["achieved_pct"] = 100 * res["round_trips_per_sec"] / res["requested_rate"]
            per(rts, "syscalls_per_rt")
        elif mode == "bulk":
            nbytes = res["bytes_per_sec"] * dur
            if not nbytes:
                raise Failed("no bytes echoed")
            raw.update(bytes=nbytes, cpu_s_per_gb=cpu / (nbytes / 1e9),
                       gb_per_s=nbytes / 1e9 / dur)
            if not perf:  # perf's own CPU time would land in the machine's
                raw["machine_s_per_gb"] = (m1 - m0) / (nbytes / 1e9)
            per(nbytes / 1e6, "syscalls_per_mb")
        elif mode == "churn":
            n = res["round_trips"]
            if not n:
                raise Failed("no connections")
            raw.update(conns=n, cpu_us_per_conn=cpu * 1e6 / n)
            per(n, "syscalls_per_conn")
        elif mode == "handshake":
            n = res["handshakes"]
            if not n:
                raise Failed("no handshakes")
            raw.update(handshakes=n, cpu_us_per_hs=cpu * 1e6 / n,
                       hs_per_s=res["handshakes_per_sec"])
            per(n, "syscalls_per_hs")
        elif mode == "udp":
            n = res["round_trips"]
            if not n:
                raise Failed("no datagrams echoed")
            raw.update(dgrams=n, cpu_us_per_dgram=cpu * 1e6 / n,
                       dgram_per_s=res["round_trips_per_sec"], lost=res["lost"])
            per(n, "syscalls_per_dgram")
        return raw
    finally:
        died = srv.stop(proc, ctx.notes)
        if died is not None and died != 0:
            ctx.note(srv.name, f"server exited {died} before it was stopped ({section})")


def run_fairness(ctx, srv, path, duration):
    proc = srv.start(ctx, path)
    try:
        # The stream starts first and ends last, so every pingpong exchange sees it. Both
        # clients share the load CPU; the bulk one at nice 19, so that the pingpong client gets
        # the CPU whenever it has work and its latency is the server's doing, not a time slice
        # lost to the other client (without this p99 is ~the scheduler's slice for everyone).
        bulk = ctx.load.start(ctx.load.argv("bulk", path.host, proc.port, 1, 65536,
                                            duration + 0.5), ctx.args.load_cpu, nice=19)
        time.sleep(0.2)
        pp = ctx.load.start(ctx.load.argv("pingpong", path.host, proc.port, 50, 64, duration),
                            ctx.args.load_cpu)
        ppres = finish_load(pp, duration + 60)
        bres = finish_load(bulk, duration + 60)
        if proc.poll() is not None:
            raise Failed(f"server exited with {proc.returncode} during the load")
        raw = {"load": ppres, "bulk_load": bres, "p99_us": ppres["latency_us"]["p99"],
               "max_us": ppres["latency_us"]["max"], "rt_per_s": ppres["round_trips_per_sec"],
               "bulk_gb_per_s": bres["bytes_per_sec"] / 1e9}
        check_errors(ppres, raw, "pingpong")
        check_errors(bres, raw, "bulk")
        return raw
    finally:
        srv.stop(proc, ctx.notes)


def run_idle(ctx, srv, path, n):
    proc = srv.start(ctx, path)
    socks = []
    try:
        time.sleep(0.2)
        rss0, fd0 = rss_bytes(proc.pid), fd_count(proc.pid)
        deadline = time.monotonic() + 60
        for _ in range(n):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((path.host, proc.port))
            except OSError as e:
                s.close()
                raise Failed(f"connect #{len(socks) + 1} failed: {e}")
            socks.append(s)
            if time.monotonic() > deadline:
                raise Failed(f"only {len(socks)} connects in 60s")
        # wait until the server holds them all
        deadline = time.monotonic() + 30
        while (have := fd_count(proc.pid) - fd0) < n:
            if proc.poll() is not None:
                raise Failed(f"server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise Failed(f"server holds {have} of {n} connections after 30s")
            time.sleep(0.05)
        time.sleep(0.5)
        rss1 = rss_bytes(proc.pid)
        # one echo on each: buffers a server allocates on first use show up here
        for s in socks:
            s.sendall(b"x")
        bad = 0
        for s in socks:
            try:
                if s.recv(1) != b"x":
                    bad += 1
            except OSError:
                bad += 1
        time.sleep(0.5)
        rss2 = rss_bytes(proc.pid)
        # then leave them idle: a server that scans its connections on a timer shows here
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(ctx.args.idle_seconds)
        idle_cpu_ms_per_s = (cpu_seconds(proc.pid) - cpu0) * 1000 / (time.monotonic() - t0)
        raw = {"conns": n, "rss_before": rss0, "rss_idle": rss1, "rss_touched": rss2,
               "rss_per_conn": (rss1 - rss0) / n, "rss_per_conn_touched": (rss2 - rss0) / n,
               "idle_cpu_ms_per_s": idle_cpu_ms_per_s, "echo_failures": bad}
        if bad:
            raise Failed(f"{bad} of {n} idle connections did not echo one byte")
        return raw
    finally:
        for s in socks:
            s.close()
        srv.stop(proc, ctx.notes)


# --------------------------------------------------------------------------- driver

class Ctx:
    def __init__(self, args, load, logdir, certs):
        self.args, self.load, self.logdir, self.certs = args, load, logdir, certs
        self.notes = {}
        self.bulk_bytes = 0.5e9 if args.quick else 2e9

    def note(self, server, line):
        self.notes.setdefault(server, {}).setdefault(line, 0)
        self.notes[server][line] += 1


def measure(fn, *a):
    try:
        return fn(*a)
    except Failed as e:
        return {**e.raw, "failed": str(e)}
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as e:
        return {"failed": f"{type(e).__name__}: {e}"}


def parse_list(text, known, aliases, what, ap):
    out = []
    for s in text.split(","):
        s = s.strip()
        if not s:
            continue
        for t in aliases.get(s, s).split(","):
            if t not in known:
                ap.error(f"unknown {what} {t!r}: choose from {', '.join(known)}")
            if t not in out:
                out.append(t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 run per section, 1 s loads, ~0.5 GB bulk, 1 s idle watch")
    ap.add_argument("--sections", "--only", default=",".join(DEFAULT_SECTIONS),
                    help="comma-separated: " + ",".join(SECTIONS) + " (tls = the three tls-*) "
                    "[all but pingpong500]")
    ap.add_argument("--paths", default=",".join(PATHS), help="loopback,veth [both]")
    ap.add_argument("--servers", default="",
                    help="only these columns (e.g. epoll-echo,segment); NAME=PATH adds another "
                    "epoll-echo binary as column NAME (e.g. old=/path/to/epoll-echo)")
    ap.add_argument("--server-args", default="", help="extra arguments for epoll-echo")
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"),
                    help="where epoll-echo and echo-bench are [target/release]")
    ap.add_argument("--load-bin", default=None, help="echo-bench binary [BIN_DIR/echo-bench]")
    ap.add_argument("--tokio-bin", default=str(default_bin("tokio-echo")))
    ap.add_argument("--tokio-rustls-bin", default=str(default_bin("tokio-rustls-echo")))
    ap.add_argument("--no-build", action="store_true", help="do not build the reference peers")
    ap.add_argument("--runs", type=int, default=None, help="runs per section [3; --quick: 1]")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per load run [3; --quick: 1]")
    ap.add_argument("--open-rate", type=int, default=20000,
                    help="openloop: requests/s over the 50 connections [20000]")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="idle: how long to watch the server's CPU [5; --quick: 1]")
    ap.add_argument("--server-cpu", default="0", help="taskset CPU list for servers [0]")
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="save raw numbers here")
    args = ap.parse_args()

    sections = parse_list(args.sections, list(SECTIONS), ALIASES, "section", ap)
    paths = parse_list(args.paths, PATHS, {}, "path", ap)
    only_servers, args.extra_servers = [], {}
    for item in (s.strip() for s in args.servers.split(",")):
        if "=" in item:
            name, _, binary = item.partition("=")
            name = name.strip()
            if not name or name in ("epoll-echo", "tokio", "segment", "floor"):
                ap.error(f"--servers {item!r}: NAME=PATH needs a new column name")
            if not os.access(binary, os.X_OK):
                ap.error(f"--servers {item!r}: {binary} is not an executable file")
            args.extra_servers[name] = Path(binary).resolve()
            only_servers.append(name)
        elif item:
            only_servers.append(item)
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 3.0)
    if args.idle_seconds is None:
        args.idle_seconds = 1.0 if args.quick else 5.0

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(cleanup)
    atexit.register(veth_down_if_up)

    ncpu = os.cpu_count() or 1
    server_cpus = {int(c) for c in args.server_cpu.split(",") if c.strip()}
    for c in [*server_cpus, args.load_cpu]:
        if c >= ncpu:
            ap.error(f"CPU {c} does not exist here ({ncpu} CPUs)")
    if args.load_cpu in server_cpus:
        log("warning: server and load share a CPU; the numbers include the load's own cost")
    # This script (idle connections, perf) stays off the server's CPU too.
    os.sched_setaffinity(0, {args.load_cpu})
    # Servers inherit this: 10k idle connections need more than the usual 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if "idle" in sections and soft < args.idle_conns + 100:
        log(f"note: open-files limit {soft}: idle section reduced")
        args.idle_conns = max(100, (soft - 100) // 2)
    # A broken pipe to a peer must not kill this script; children get SIG_IGN only on request.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    want_tls = any(SECTIONS[s][0] == "tls" for s in sections)
    problems = build_peers(args, want_tls)
    if "epoll-echo" in problems:
        log(f"run.py: {problems['epoll-echo']} (cargo build --release, or --bin-dir DIR)")
        return 2
    load = Load(args.load_bin or Path(args.bin_dir) / "echo-bench")
    if any(s != "idle" for s in sections) and not load.ok:
        log(f"run.py: no load generator at {load.path} (cargo build --release --workspace, "
            f"or --bin-dir DIR, or --load-bin FILE)")
        return 2
    perf_ok, perf_why = perf_probe()
    if not perf_ok:
        log(f"syscall counts: n/a ({perf_why})")

    info = machine_info()
    results = {}  # path -> section -> server -> {"runs": [...], "perf": {...}}
    skipped = {}  # path or section -> why
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as logdir:
        certs = make_certs(Path(logdir)) if want_tls and shutil.which("openssl") else None
        servers, group_skip = make_servers(args, certs)
        ctx = Ctx(args, load, logdir, certs)
        try:
            for pname in paths:
                try:
                    path = make_path(pname)
                except RuntimeError as e:
                    skipped[pname] = f"skipped: {e}"
                    log(f"== {pname}: {skipped[pname]}")
                    continue
                for section in sections:
                    group = SECTIONS[section][0]
                    if group in group_skip:
                        skipped[section] = group_skip[group]
                        log(f"== {pname} {section}: {group_skip[group]}")
                        continue
                    active = [srv for name, srv in servers[group].items()
                              if name not in problems
                              and (not only_servers or name in only_servers)]
                    for name in servers[group]:
                        if name in problems:
                            ctx.note(name, f"not run: {problems[name]}")
                    log(f"== {pname} {section}")
                    res = results.setdefault(pname, {}).setdefault(section, {})
                    run_section(ctx, path, section, active, res, perf_ok, runs, duration)
        finally:
            cleanup()
            veth_down_if_up()
    elapsed = time.monotonic() - t_start

    print_report(info, args, paths, sections, servers, results, skipped, perf_ok, perf_why,
                 runs, duration, ctx.notes, elapsed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "runs": runs, "duration_s": duration,
                       "server_args": args.server_args, "perf": perf_ok or perf_why,
                       "open_rate": args.open_rate, "skipped": skipped, "results": results,
                       "summary": summarize(paths, sections, servers, results),
                       "server_output": ctx.notes}, f, indent=1, default=str)
        log(f"raw numbers saved to {args.json}")
    return 0


def veth_down_if_up():
    if _veth_up:
        veth_down()


def run_section(ctx, path, section, active, res, perf_ok, runs, duration):
    mode = SECTIONS[section][1]
    bulkish = mode == "bulk"
    # Syscall counts come from a run of their own: tracing every syscall costs the server CPU
    # time that must not land in the CPU figures. For bulk this run is also the calibration
    # that sizes the measured runs to move about the same number of bytes on every server.
    if mode is not None and (perf_ok or bulkish):
        for srv in active:
            r = measure(run_load, ctx, srv, path, section, perf_ok, duration)
            res.setdefault(srv.name, {"runs": []})["perf"] = r
            log(f"   {srv.name:12s} syscall run: {brief(r)}")
    for i in range(runs):
        order = active[i % len(active):] + active[:i % len(active)] if active else []
        for srv in order:
            entry = res.setdefault(srv.name, {"runs": []})
            if section == "idle":
                r = measure(run_idle, ctx, srv, path, ctx.args.idle_conns)
            elif section == "fairness":
                r = measure(run_fairness, ctx, srv, path, duration)
            else:
                d = bulk_duration(entry, ctx.bulk_bytes, duration) if bulkish else duration
                r = measure(run_load, ctx, srv, path, section, False, d)
            entry["runs"].append(r)
            log(f"   {srv.name:12s} run {i + 1}/{runs}: {brief(r)}")


def bulk_duration(entry, target_bytes, default):
    """Seconds that move about target_bytes at the rate this server showed so far."""
    rates = [r["gb_per_s"] for r in entry["runs"] + [entry.get("perf") or {}]
             if r.get("gb_per_s")]
    if not rates:
        return max(default, 2.0)
    secs = target_bytes / (max(rates) * 1e9)
    return round(min(max(secs, 1.0), 15.0), 1)


BRIEF_KEYS = ("cpu_us_per_rt", "syscalls_per_rt", "rt_per_s", "p99_us", "achieved_pct",
              "cpu_s_per_gb", "machine_s_per_gb", "gb_per_s", "syscalls_per_mb", "cpu_us_per_conn",
              "syscalls_per_conn", "hs_per_s", "cpu_us_per_hs", "dgram_per_s",
              "cpu_us_per_dgram", "syscalls_per_dgram", "lost", "rss_per_conn",
              "rss_per_conn_touched", "idle_cpu_ms_per_s")


def brief(r):
    if "failed" in r:
        return "FAILED: " + r["failed"]
    return " ".join(f"{k}={fmt(r[k], 3)}" for k in BRIEF_KEYS if k in r)


def fmt(v, digits):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000 or digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def cell_stats(entry, key):
    """(median, min, max, note) of one metric of one server/section; median None if none."""
    if entry is None:
        return None, None, None, "not run"
    src = [entry.get("perf") or {}] if key.startswith("syscalls_") else entry["runs"]
    ok = [r[key] for r in src if "failed" not in r and r.get(key) is not None]
    failed = [r["failed"] for r in src if "failed" in r]
    if not ok:
        return None, None, None, ("FAIL: " + failed[0]) if failed else "n/a"
    note = f" ({len(failed)}/{len(src)} failed: {failed[0]})" if failed else ""
    return statistics.median(ok), min(ok), max(ok), note


def paired_ratios(ours, ref, key):
    """Per-round ratios ours/ref of one metric: run i of every server is in the same round
    (seconds apart, rotated order), so the ratio cancels most of the machine's drift.
    Returns (median, lower quartile, upper quartile, n) or None under 3 pairs."""
    if not ours or not ref:
        return None
    xs = [a[key] / b[key] for a, b in zip(ours["runs"], ref["runs"])
          if "failed" not in a and "failed" not in b and a.get(key) is not None
          and b.get(key)]
    if len(xs) < 3:
        return None
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q1, q3, len(xs)


def summarize(paths, sections, servers, results):
    out = {}
    for pname in paths:
        for section, key, label, _ in ROWS:
            if section not in sections:
                continue
            group = SECTIONS[section][0]
            for name in servers[group]:
                entry = results.get(pname, {}).get(section, {}).get(name)
                med, lo, hi, note = cell_stats(entry, key)
                out.setdefault(f"{pname}: {label}", {})[name] = (
                    {"median": med, "min": lo, "max": hi} if med is not None else note)
            if key.startswith("syscalls_"):
                continue
            sec = results.get(pname, {}).get(section, {})
            for ref in GROUPS[group][1]:
                pr = paired_ratios(sec.get("epoll-echo"), sec.get(ref), key)
                if pr:
                    out[f"{pname}: {label}"][f"paired epoll-echo/{ref}"] = dict(
                        zip(("median", "q1", "q3", "n"), pr))
    return out


def print_report(info, args, paths, sections, servers, results, skipped, perf_ok, perf_why,
                 runs, duration, notes, elapsed):
    print("# epoll-echo benchmark matrix\n")
    print(f"- machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}")
    print(f"- date: {info['date']}")
    print(f"- servers pinned to CPU {args.server_cpu}, load to CPU {args.load_cpu}; median "
          f"(min–max) of {runs} interleaved run(s), {duration:g} s per load run (bulk: sized "
          f"to ~{0.5 if args.quick else 2:g} GB); took {elapsed:.0f} s")
    extra = f" {args.server_args}" if args.server_args else ""
    print(f"- epoll-echo: --maxListeners 1 (bulk4: 2) -q{extra}; tokio, tokio-rustls: 1 worker "
          "thread (bulk4: 2); segment: bench-peers/segment-echo.c (buffer = largest multiple "
          "of TCP_MAXSEG ≤ 64 KiB); floor: bench-peers/limit-echo.c; udp-echo: "
          "bench-peers/udp-echo.c")
    print(f"- paths: loopback (127.0.0.1); veth (server in netns {NETNS} at {SRV_IP}, "
          f"load at {LOAD_IP}, MTU 1500)")
    if not perf_ok:
        print(f"- syscalls: n/a ({perf_why})")
    for what, why in skipped.items():
        print(f"- {what}: {why}")
    for pname in paths:
        if pname not in results:
            continue
        for group in ("tcp", "tls", "udp"):
            rows = [r for r in ROWS if r[0] in sections and SECTIONS[r[0]][0] == group
                    and r[0] in results[pname]]
            if not rows:
                continue
            names = list(servers[group])
            ours, refs = "epoll-echo", GROUPS[group][1]
            print(f"\n## {pname}: {GROUP_TITLES[group]}\n")
            header = ["metric (lower is better unless noted)", *names,
                      *[f"{ours}/{r}" for r in refs]]
            print("| " + " | ".join(header) + " |")
            print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
            for section, key, label, digits in rows:
                cells, meds = [], {}
                for n in names:
                    entry = results[pname][section].get(n)
                    med, lo, hi, note = cell_stats(entry, key)
                    meds[n] = med
                    if med is None and key.startswith("syscalls_") and not perf_ok:
                        note = "n/a"
                    text = fmt(med, digits) if med is not None else ""
                    if med is not None and runs > 1 and lo != hi:
                        text += f" ({fmt(lo, digits)}–{fmt(hi, digits)})"
                    cells.append(text + note)
                ratios = []
                for r in refs:
                    a, b = meds.get(ours), meds.get(r)
                    ratios.append(f"{a / b:.2f}" if a is not None and b else "")
                label = label.replace("RATE", f"{args.open_rate:,}").replace(
                    "IDLE", f"{args.idle_conns:,}")
                row = [label, *cells, *ratios]
                print("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
            paired = []
            for section, key, label, digits in rows:
                if key.startswith("syscalls_"):
                    continue
                sec = results[pname][section]
                cells = []
                for r in refs:
                    pr = paired_ratios(sec.get(ours), sec.get(r), key)
                    cells.append(f"{pr[0]:.2f} ({pr[1]:.2f}–{pr[2]:.2f}), {pr[3]}" if pr else "")
                if any(cells):
                    label = label.replace("RATE", f"{args.open_rate:,}").replace(
                        "IDLE", f"{args.idle_conns:,}")
                    paired.append([label, *cells])
            if paired:
                print("\nPaired per round (run i of every server shares round i): median "
                      "(quartiles), pairs\n")
                header = ["metric", *[f"{ours}/{r}" for r in refs]]
                print("| " + " | ".join(header) + " |")
                print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
                for row in paired:
                    print("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    if notes:
        print("\nserver output (stdout/stderr; count of runs):")
        for name, lines in notes.items():
            for line, count in list(lines.items())[:15]:
                print(f"- {name} ×{count}: {line}")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cleanup()
        veth_down_if_up()
        sys.exit(130)
