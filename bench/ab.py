#!/usr/bin/env python3
"""Paired bulk A/B: many short alternating single-stream runs, per-round ratios.

usage: python3 bench/ab.py PATH ROUNDS GB NAME=COMMAND [NAME=COMMAND ...]

PATH is loopback or veth (a veth pair at MTU 1500 into namespace ee-ab, 198.18.1.1/30, made and
removed here; root). COMMAND starts one server; {port} and {host} are filled in, e.g.
    "ee=target/release/epoll-echo --port {port} --host {host} --maxListeners 1 -q"
    "seg=target/bench-peers/segment-echo {port} 1 0 {host}"
Each server is started fresh per run, pinned to CPU 0; echo-bench (bulk, 1 stream, 1 thread)
runs pinned to CPU 1 for about GB gigabytes. The first run per server is traced with perf
(syscalls per MB by kind) and calibrates the duration. Then ROUNDS rounds, each running every
server once in rotated order (A B C, B C A, ...), so two servers' runs in one round are seconds
apart and share the machine's state; the ratio of the first server to each other one is taken
per round, and its median and quartiles printed. Besides the server's CPU per GB (utime+stime of
its threads, /proc/PID/task/*/stat), it prints the client's (echo-bench, getrusage) and the
whole machine's (non-idle time of all CPUs in /proc/stat, softirq included): a server that
looks cheaper by moving work to its client or to softirq context shows there.

This is the tool behind the splice and backpressure decisions in the README; `make bench`
(bench/run.py) is the full matrix.
"""
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

from run import machine_busy  # bench/run.py: non-idle CPU seconds of the whole machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.path.join(ROOT, "target", "release", "echo-bench")
NS = "ee-ab"


def sh(cmd):
    subprocess.run(cmd, shell=True, check=False, stderr=subprocess.DEVNULL)


def veth_up():
    sh(f"ip netns del {NS}; ip link del eab-h")
    subprocess.run(
        f"ip netns add {NS} && ip link add eab-h type veth peer name eab-n && "
        f"ip link set eab-n netns {NS} && ip addr add 198.18.1.2/30 dev eab-h && "
        f"ip link set eab-h mtu 1500 up && ip -n {NS} addr add 198.18.1.1/30 dev eab-n && "
        f"ip -n {NS} link set eab-n mtu 1500 up && ip -n {NS} link set lo up",
        shell=True, check=True)


def proc_cpu(pid):
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    return t / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(pre, host, cmd, port, secs, perf=False):
    argv = pre + ["taskset", "-c", "0"] + [x.format(port=port, host=host) for x in cmd.split()]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        pf = None
        if perf:
            events = ",".join(f"syscalls:sys_enter_{s}" for s in
                              ("read", "recvfrom", "sendto", "splice", "epoll_wait", "getsockopt"))
            pf = subprocess.Popen(["perf", "stat", "-x,", "-e", events + ",raw_syscalls:sys_enter",
                                   "-p", str(p.pid)], stderr=subprocess.PIPE, text=True)
            time.sleep(0.3)
        c0, m0, k0 = proc_cpu(p.pid), machine_busy(), children_cpu()
        r = subprocess.run(["taskset", "-c", "1", LOAD, "bulk", "-a", f"{host}:{port}", "-d",
                            f"{secs}s", "--threads", "1", "--json"], capture_output=True, text=True)
        client, machine = children_cpu() - k0, machine_busy() - m0
        time.sleep(0.2)
        server = proc_cpu(p.pid) - c0
        counts = {}
        if pf:
            pf.send_signal(2)
            for line in pf.communicate()[1].strip().splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].isdigit():
                    counts[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
    finally:
        p.kill()
        p.wait()
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res.get("errors"):
        sys.exit(f"{cmd}: echo-bench counted errors: {res}")
    gb = res["bytes_per_sec"] * secs / 1e9
    return {"server": server / gb, "client": client / gb, "machine": machine / gb,
            "gbps": gb / secs, "counts": {k: v / (gb * 1e3) for k, v in counts.items()}}


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    path, rounds, gb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    servers = [a.split("=", 1) for a in sys.argv[4:]]
    pre, host = [], "127.0.0.1"
    if path == "veth":
        veth_up()
        pre, host = ["ip", "netns", "exec", NS], "198.18.1.1"
    try:
        port = 20000 + os.getpid() % 1000
        secs, res = {}, {n: [] for n, _ in servers}
        for name, cmd in servers:
            r = run_once(pre, host, cmd, port, 1.0, perf=True)
            port += 1
            secs[name] = max(0.5, gb / r["gbps"])
            print(f"{name:10s} traced run: {r['gbps']:.2f} GB/s; syscalls per MB: " +
                  " ".join(f"{k}={v:.1f}" for k, v in r["counts"].items()), flush=True)
        for i in range(rounds):
            k = i % len(servers)
            for name, cmd in servers[k:] + servers[:k]:
                res[name].append(run_once(pre, host, cmd, port, secs[name]))
                port += 1
            print(f"round {i + 1}: " + "  ".join(
                f"{n}={res[n][-1]['server']:.3f}s/GB,{res[n][-1]['gbps']:.2f}GB/s"
                for n, _ in servers), flush=True)
    finally:
        if path == "veth":
            sh(f"ip netns del {NS}")
    med = lambda name, key: statistics.median(x[key] for x in res[name])
    print(f"\n{path}, {rounds} rounds of ~{gb:g} GB; medians (server CPU on CPU 0, client on CPU 1)")
    print(f"{'server':10s} {'server s/GB':>12s} {'client s/GB':>12s} {'machine s/GB':>13s} {'GB/s':>6s}")
    for name, _ in servers:
        print(f"{name:10s} {med(name, 'server'):12.3f} {med(name, 'client'):12.3f} "
              f"{med(name, 'machine'):13.3f} {med(name, 'gbps'):6.2f}")
    base = servers[0][0]

    def q(v):
        v = sorted(v)
        return f"{statistics.median(v):.3f} ({v[len(v) // 4]:.3f}–{v[3 * len(v) // 4]:.3f})"
    print(f"\nper-round ratios {base}/other, median (quartiles):")
    for name, _ in servers[1:]:
        pairs = list(zip(res[base], res[name]))
        print(f"  {base}/{name}: server CPU {q([a['server'] / b['server'] for a, b in pairs])}"
              f"  machine CPU {q([a['machine'] / b['machine'] for a, b in pairs])}"
              f"  GB/s {q([a['gbps'] / b['gbps'] for a, b in pairs])}")


if __name__ == "__main__":
    main()
