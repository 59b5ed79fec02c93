#!/usr/bin/env python3
"""Server-side cost per unit of work: epoll-echo against two reference servers, same run.

Every server runs alone on one CPU (taskset -c 0); the load (echo-bench, or this script for
the idle scenario) runs on another (taskset -c 1). For each scenario the server's own CPU time
(utime+stime from /proc/PID/stat), its syscalls (perf stat, in a separate run so tracing does
not inflate the CPU figures) and its RSS are divided by the work done. Median of N runs, the
servers interleaved within each run. Python 3 standard library only; see bench/README.md.

usage: python3 bench/run.py [--quick] [--only pingpong50,bulk,...] [--server-args="..."]
                            [--bin-dir DIR] [--json FILE]
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
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SCENARIOS = ["pingpong50", "pingpong500", "bulk", "churn", "fairness", "idle"]
ALIASES = {"a": "pingpong50", "b": "pingpong500", "c": "bulk", "d": "churn", "e": "fairness",
           "f": "idle", "pingpong": "pingpong50", "pp50": "pingpong50", "pp500": "pingpong500"}
SERVERS = ["epoll-echo", "tokio", "floor"]

# Table rows: (scenario, metric key, label, digits). Lower is better except where noted.
ROWS = [
    ("pingpong50", "cpu_us_per_rt", "pingpong 50×64B: CPU µs/round trip", 2),
    ("pingpong50", "syscalls_per_rt", "pingpong 50×64B: syscalls/round trip", 2),
    ("pingpong50", "rt_per_s", "pingpong 50×64B: round trips/s (higher is better)", 0),
    ("pingpong50", "server_cpu_util", "pingpong 50×64B: server CPU busy %", 0),
    ("pingpong50", "p99_us", "pingpong 50×64B: p99 µs (alone, for the fairness row)", 0),
    ("pingpong500", "cpu_us_per_rt", "pingpong 500×64B: CPU µs/round trip", 2),
    ("pingpong500", "syscalls_per_rt", "pingpong 500×64B: syscalls/round trip", 2),
    ("pingpong500", "rt_per_s", "pingpong 500×64B: round trips/s (higher is better)", 0),
    ("bulk", "cpu_s_per_gb", "bulk 1 conn: CPU s/GB", 3),
    ("bulk", "syscalls_per_mb", "bulk 1 conn: syscalls/MB", 1),
    ("bulk", "gb_per_s", "bulk 1 conn: GB/s (higher is better)", 2),
    ("churn", "cpu_us_per_conn", "churn: CPU µs/conn", 1),
    ("churn", "syscalls_per_conn", "churn: syscalls/conn", 1),
    ("fairness", "p99_us", "fairness: pingpong p99 µs with a bulk stream", 0),
    ("fairness", "max_us", "fairness: pingpong max µs with a bulk stream", 0),
    ("idle", "rss_per_conn", "idle 10k: RSS bytes/conn", 0),
    ("idle", "rss_per_conn_touched", "idle 10k after one echo each: RSS bytes/conn", 0),
    ("idle", "idle_cpu_ms_per_s", "idle 10k: server CPU ms per second while idle", 0),
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


def wait_ready(port, proc, deadline_s=10.0):
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not accepting on port {port} after {deadline_s}s")
            time.sleep(0.02)


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


# --------------------------------------------------------------------------- servers

class Server:
    def __init__(self, name, argv_fn, ignore_sigpipe=False):
        self.name, self.argv_fn, self.ignore_sigpipe = name, argv_fn, ignore_sigpipe

    def start(self, cpu, logdir):
        port = free_port()
        logf = open(Path(logdir) / f"{self.name}-{port}.log", "w+")
        # restore_signals=False: the child inherits this interpreter's SIG_IGN for SIGPIPE.
        proc = spawn(self.argv_fn(port), cpu, stdout=logf, stderr=subprocess.STDOUT,
                     restore_signals=not self.ignore_sigpipe)
        proc.port, proc.logf = port, logf
        try:
            wait_ready(port, proc)
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


def make_servers(args):
    bindir = Path(args.bin_dir)
    ours = bindir / "epoll-echo"
    extra = shlex.split(args.server_args or "")
    servers = {
        "epoll-echo": Server("epoll-echo", lambda p: [str(ours), "--port", str(p), "--host",
                                                       "127.0.0.1", "--maxListeners", "1", "-q",
                                                       *extra]),
        "tokio": Server("tokio", lambda p: [str(args.tokio_bin), str(p), "--threads", "1"]),
        # limit-echo.c neither ignores SIGPIPE nor uses MSG_NOSIGNAL: a client closing with
        # echo in flight would kill it. Rust programs ignore SIGPIPE at startup; give the
        # floor the same (an inherited SIG_IGN) rather than edit the reference source.
        "floor": Server("floor", lambda p: [str(args.floor_bin), str(p)], ignore_sigpipe=True),
    }
    return servers


def build_peers(args):
    """Build the reference servers if missing or stale (the Makefile builds ours)."""
    problems = {}
    floor = Path(args.floor_bin)
    src = PEERS / "limit-echo.c"
    if not args.no_build and (not floor.exists() or floor.stat().st_mtime < src.stat().st_mtime):
        floor.parent.mkdir(parents=True, exist_ok=True)
        log(f"building {floor}")
        r = subprocess.run(["cc", "-O2", "-o", str(floor), str(src)])
        if r.returncode != 0:
            problems["floor"] = "cc failed"
    if not args.no_build and Path(args.tokio_bin) == default_tokio_bin():
        log("building bench-peers/tokio-echo (cargo build --release)")
        r = subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                            str(PEERS / "tokio-echo" / "Cargo.toml")])
        if r.returncode != 0:
            problems["tokio"] = "cargo build failed"
    for name, path in (("floor", floor), ("tokio", Path(args.tokio_bin)),
                       ("epoll-echo", Path(args.bin_dir) / "epoll-echo")):
        if name not in problems and not os.access(path, os.X_OK):
            problems[name] = f"missing {path}"
    return problems


def default_tokio_bin():
    return PEERS / "tokio-echo" / "target" / "release" / "tokio-echo"


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

    def argv(self, mode, port, conns, size, duration, extra=()):
        a = [self.path, mode, "--addr", f"127.0.0.1:{port}", "--connections", str(conns),
             "--size", str(size), "--duration", fmt_duration(duration)]
        if self.supports(mode, "--threads"):
            a += ["--threads", "1"]
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


def first_key(d, *keys, default=None):
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


# --------------------------------------------------------------------------- scenarios

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


def run_load_scenario(ctx, srv, scen, perf, duration):
    """One run of pingpong50/pingpong500/bulk/churn. Returns raw numbers."""
    mode, conns, size = {
        "pingpong50": ("pingpong", 50, 64),
        "pingpong500": ("pingpong", 500, 64),
        "bulk": ("bulk", 1, 65536),
        "churn": ("churn", 4, 64),
    }[scen]
    proc = srv.start(ctx.args.server_cpu, ctx.logdir)
    try:
        extra = []
        if scen == "bulk" and ctx.load.supports("bulk", "--bytes") and not perf:
            extra = ["--bytes", str(int(ctx.bulk_bytes))]
            duration = max(duration, 30)  # a cap; --bytes ends it
        argv = ctx.load.argv(mode, proc.port, conns, size, duration, extra)
        raw = {}
        perf_cm = PerfSyscalls(proc.pid, ctx.args.load_cpu) if perf else None
        if perf_cm:
            perf_cm.__enter__()
        try:
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            res = finish_load(ctx.load.start(argv, ctx.args.load_cpu), duration + 60)
            time.sleep(0.2)  # closes and final echoes are server work too
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        finally:
            if perf_cm:
                perf_cm.__exit__(None, None, None)
        if proc.poll() is not None:
            raise Failed(f"server exited with {proc.returncode} during the load")
        cpu = c1 - c0
        dur = float(res.get("duration_s") or duration)
        raw.update(cpu_s=cpu, wall_s=t1 - t0, load=res)
        check_errors(res, raw)
        if scen.startswith("pingpong"):
            rts = res["round_trips"]
            if not rts:
                raise Failed("no round trips")
            raw.update(cpu_us_per_rt=cpu * 1e6 / rts, rt_per_s=res["round_trips_per_sec"],
                       server_cpu_util=100 * cpu / dur, p99_us=res["latency_us"]["p99"])
            if perf:
                raw["syscalls_per_rt"] = perf_cm.count / rts if perf_cm.count is not None else None
        elif scen == "bulk":
            nbytes = first_key(res, "bytes", "bytes_echoed", "bytes_received")
            if nbytes is None:
                nbytes = res["bytes_per_sec"] * dur
            if not nbytes:
                raise Failed("no bytes echoed")
            raw.update(bytes=nbytes, cpu_s_per_gb=cpu / (nbytes / 1e9),
                       gb_per_s=nbytes / 1e9 / dur)
            if perf:
                raw["syscalls_per_mb"] = (perf_cm.count / (nbytes / 1e6)
                                          if perf_cm.count is not None else None)
        elif scen == "churn":
            n = first_key(res, "connects", "connections_made", "connections_opened",
                          "conns", "round_trips")
            if not n:
                raise Failed("no connections")
            raw.update(conns=n, cpu_us_per_conn=cpu * 1e6 / n)
            if perf:
                raw["syscalls_per_conn"] = (perf_cm.count / n
                                            if perf_cm.count is not None else None)
        if perf and perf_cm.count is None:
            raw["perf_note"] = "perf gave no count"
        return raw
    finally:
        died = srv.stop(proc, ctx.notes)
        if died is not None and died != 0:
            ctx.note(srv.name, f"server exited {died} before it was stopped ({scen})")


def run_fairness(ctx, srv, duration):
    proc = srv.start(ctx.args.server_cpu, ctx.logdir)
    try:
        # The stream starts first and ends last, so every pingpong exchange sees it. Both
        # clients share the load CPU; the bulk one at nice 19, so that the pingpong client gets
        # the CPU whenever it has work and its latency is the server's doing, not a time slice
        # lost to the other client (without this p99 is ~the scheduler's slice for everyone).
        bulk = ctx.load.start(ctx.load.argv("bulk", proc.port, 1, 65536, duration + 0.5),
                              ctx.args.load_cpu, nice=19)
        time.sleep(0.2)
        pp = ctx.load.start(ctx.load.argv("pingpong", proc.port, 50, 64, duration),
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


def run_idle(ctx, srv, n):
    proc = srv.start(ctx.args.server_cpu, ctx.logdir)
    socks = []
    try:
        time.sleep(0.2)
        rss0, fd0 = rss_bytes(proc.pid), fd_count(proc.pid)
        deadline = time.monotonic() + 60
        for _ in range(n):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", proc.port))
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
        time.sleep(2.0 if ctx.args.quick else 5.0)
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
    def __init__(self, args, load, logdir):
        self.args, self.load, self.logdir = args, load, logdir
        self.notes = {}
        self.bulk_bytes = 0.5e9 if args.quick else 2e9

    def note(self, server, line):
        self.notes.setdefault(server, {}).setdefault(line, 0)
        self.notes[server][line] += 1


def measure(ctx, fn, *a):
    try:
        return fn(*a)
    except Failed as e:
        return {**e.raw, "failed": str(e)}
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as e:
        return {"failed": f"{type(e).__name__}: {e}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 run per scenario, shorter durations")
    ap.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--servers", default=",".join(SERVERS), help="subset of " + ",".join(SERVERS))
    ap.add_argument("--server-args", default="", help="extra arguments for epoll-echo")
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"),
                    help="where epoll-echo and echo-bench are [target/release]")
    ap.add_argument("--load-bin", default=None, help="echo-bench binary [BIN_DIR/echo-bench]")
    ap.add_argument("--tokio-bin", default=str(default_tokio_bin()))
    ap.add_argument("--floor-bin", default=str(REPO / "target" / "bench-peers" / "limit-echo"))
    ap.add_argument("--no-build", action="store_true", help="do not build the reference peers")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario [3; --quick: 1]")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per load run [3; --quick: 1]")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="save raw numbers here")
    args = ap.parse_args()

    only = [ALIASES.get(s.strip(), s.strip()) for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}: choose from {', '.join(SCENARIOS)}")
    scenarios = [s for s in SCENARIOS if not only or s in only]
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in names:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}: choose from {', '.join(SERVERS)}")
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 3.0)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(cleanup)

    ncpu = os.cpu_count() or 1
    for c in (args.server_cpu, args.load_cpu):
        if c >= ncpu:
            ap.error(f"CPU {c} does not exist here ({ncpu} CPUs)")
    if args.server_cpu == args.load_cpu:
        log("warning: server and load share a CPU; the numbers include the load's own cost")
    # This script (idle connections, perf) stays off the server's CPU too.
    os.sched_setaffinity(0, {args.load_cpu})
    # Servers inherit this: 10k idle connections need more than the usual 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if "idle" in scenarios and soft < args.idle_conns + 100:
        log(f"note: open-files limit {soft}: idle scenario reduced")
        args.idle_conns = max(100, (soft - 100) // 2)

    problems = build_peers(args)
    servers = make_servers(args)
    if "epoll-echo" in problems and "epoll-echo" in names:
        log(f"run.py: {problems['epoll-echo']} (cargo build --release, or --bin-dir DIR)")
        return 2
    for name in list(names):
        if name in problems:
            log(f"skipping {name}: {problems[name]}")
    active = [servers[n] for n in names if n not in problems]
    load = Load(args.load_bin or Path(args.bin_dir) / "echo-bench")
    needs_load = [s for s in scenarios if s != "idle"]
    if needs_load and not load.ok:
        log(f"run.py: no load generator at {load.path} (cargo build --release, or --bin-dir "
            f"DIR, or --load-bin FILE); only the idle scenario runs without it")
        return 2
    perf_ok, perf_why = perf_probe()
    if not perf_ok:
        log(f"syscall counts: n/a ({perf_why})")

    info = machine_info()
    results = {s.name: {} for s in active}  # server -> scenario -> {"runs": [...], "perf": {...}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as logdir:
        ctx = Ctx(args, load, logdir)
        try:
            for scen in scenarios:
                log(f"== {scen}")
                # Syscall counts come from a run of their own: tracing every syscall costs the
                # server CPU time that must not land in the CPU figures. For bulk this run is
                # also the calibration that sizes the measured runs to ~2 GB.
                if scen in ("pingpong50", "pingpong500", "bulk", "churn"):
                    for srv in active:
                        if perf_ok or scen == "bulk":
                            r = measure(ctx, run_load_scenario, ctx, srv, scen, perf_ok,
                                        duration)
                            results[srv.name].setdefault(scen, {"runs": []})["perf"] = r
                            log(f"   {srv.name:10s} syscall run: {brief(r)}")
                for i in range(runs):
                    order = active[i % len(active):] + active[:i % len(active)]
                    for srv in order:
                        entry = results[srv.name].setdefault(scen, {"runs": []})
                        if scen == "idle":
                            r = measure(ctx, run_idle, ctx, srv, args.idle_conns)
                        elif scen == "fairness":
                            r = measure(ctx, run_fairness, ctx, srv, duration)
                        else:
                            d = duration
                            if scen == "bulk" and not load.supports("bulk", "--bytes"):
                                d = bulk_duration(entry, ctx.bulk_bytes, duration)
                            r = measure(ctx, run_load_scenario, ctx, srv, scen, False, d)
                        entry["runs"].append(r)
                        log(f"   {srv.name:10s} run {i + 1}/{runs}: {brief(r)}")
        finally:
            cleanup()
    elapsed = time.monotonic() - t_start

    print_report(info, args, active, scenarios, results, perf_ok, perf_why, runs, duration,
                 ctx.notes, elapsed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "runs": runs, "duration_s": duration,
                       "server_args": args.server_args, "perf": perf_ok or perf_why,
                       "results": results, "summary": summarize(active, results),
                       "server_output": ctx.notes}, f, indent=1, default=str)
        log(f"raw numbers saved to {args.json}")
    return 0


def bulk_duration(entry, target_bytes, default):
    """Seconds that move about target_bytes at the rate this server showed so far."""
    rates = [r["gb_per_s"] for r in entry["runs"] + [entry.get("perf") or {}]
             if r.get("gb_per_s")]
    if not rates:
        return max(default, 2.0)
    secs = target_bytes / (max(rates) * 1e9)
    return round(min(max(secs, 1.0), 15.0), 1)


def brief(r):
    if "failed" in r:
        return "FAILED: " + r["failed"]
    keys = [k for k in ("cpu_us_per_rt", "syscalls_per_rt", "rt_per_s", "cpu_s_per_gb",
                        "gb_per_s", "syscalls_per_mb", "cpu_us_per_conn", "syscalls_per_conn",
                        "p99_us", "rss_per_conn", "rss_per_conn_touched",
                        "idle_cpu_ms_per_s") if k in r]
    return " ".join(f"{k}={fmt(r[k], 3)}" for k in keys)


def fmt(v, digits):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000 or digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def cell_value(entry, key):
    """(median or None, note) for one metric of one server/scenario."""
    if entry is None:
        return None, "not run"
    src = [entry.get("perf") or {}] if key.startswith("syscalls_") else entry["runs"]
    ok = [r[key] for r in src if "failed" not in r and r.get(key) is not None]
    failed = [r["failed"] for r in src if "failed" in r]
    if not ok:
        if failed:
            return None, "FAIL: " + failed[0]
        return None, "n/a"
    note = f" ({len(failed)}/{len(src)} failed: {failed[0]})" if failed else ""
    return statistics.median(ok), note


def summarize(active, results):
    out = {}
    for scen, key, label, _ in ROWS:
        for srv in active:
            v, note = cell_value(results[srv.name].get(scen), key)
            out.setdefault(label, {})[srv.name] = v if v is not None else note
    return out


def print_report(info, args, active, scenarios, results, perf_ok, perf_why, runs, duration,
                 notes, elapsed):
    print(f"# epoll-echo server-side cost per unit of work\n")
    print(f"- machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}")
    print(f"- date: {info['date']}")
    print(f"- servers pinned to CPU {args.server_cpu}, load to CPU {args.load_cpu}; "
          f"median of {runs} run(s), {duration:g} s per load run; took {elapsed:.0f} s")
    extra = f" {args.server_args}" if args.server_args else ""
    print(f"- epoll-echo: --maxListeners 1 -q{extra}; tokio: 1 worker thread; "
          f"floor: bench-peers/limit-echo.c")
    if not perf_ok:
        print(f"- syscalls: n/a ({perf_why})")
    print()
    names = [s.name for s in active]
    header = ["metric (lower is better unless noted)", *names]
    has_ratio = "epoll-echo" in names and "floor" in names
    if has_ratio:
        header.append("epoll-echo/floor")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for scen, key, label, digits in ROWS:
        if scen not in scenarios:
            continue
        cells, vals = [], {}
        for n in names:
            v, note = cell_value(results[n].get(scen), key)
            vals[n] = v
            if v is None and key.startswith("syscalls_") and not perf_ok:
                note = "n/a"
            cells.append((fmt(v, digits) if v is not None else "") + note)
        row = [label, *cells]
        if has_ratio:
            a, b = vals.get("epoll-echo"), vals.get("floor")
            row.append(f"{a / b:.2f}" if a is not None and b else "")
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
        sys.exit(130)
