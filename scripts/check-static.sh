#!/usr/bin/env bash
# Proves the release binary is static and serves echo from an otherwise-empty
# root, as it must in the FROM scratch image: no /dev, /etc, /proc, no libc.
#
#   sudo scripts/check-static.sh        # needs root (chroot)
#
# Builds target/x86_64-unknown-linux-gnu/release/epoll-echo if missing.
# EPOLL_ECHO_BIN=path overrides the binary to check (e.g. a stand-in).
# Only 127.0.0.1 is used. Prints PASS or FAIL; exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
BIN=${EPOLL_ECHO_BIN:-target/$TARGET/release/epoll-echo}
START_TIMEOUT=10 # s for the port to accept
STOP_TIMEOUT=10  # s from SIGTERM to exit

work=""
pid=""
fail() {
    echo "FAIL: $*" >&2
    if [[ -n $work && -s $work/stderr ]]; then
        echo "--- server stderr ---" >&2
        cat "$work/stderr" >&2
    fi
    exit 1
}
# True while $1 exists and is not a zombie (a dead, unreaped child still
# answers `kill -0`, so look at its state in /proc instead).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # fields after "pid (comm) "
    [[ ${stat%% *} != Z ]]
}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
cleanup() {
    if [[ -n $pid ]] && alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    [[ -n $pid ]] && { wait "$pid" 2>/dev/null || true; }
    [[ -n $work ]] && rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || fail "must run as root (chroot)"
command -v python3 >/dev/null || fail "python3 is required"

# 1. Build if missing. crt-static links glibc statically; --target keeps
#    RUSTFLAGS off proc-macros/build scripts, which cannot be static.
if [[ ! -x $BIN && -z ${EPOLL_ECHO_BIN:-} ]]; then
    echo "building $BIN ..."
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --target "$TARGET" --bin epoll-echo ||
        fail "cargo build failed"
fi
[[ -x $BIN ]] || fail "$BIN not found"

# 2. Static: no program interpreter (PT_INTERP) and no NEEDED shared libs.
#    (Captured, not piped into grep -q: with pipefail, grep's early exit can
#    SIGPIPE readelf and turn a match into a pass.)
if command -v readelf >/dev/null; then
    elf=$(readelf -lWd "$BIN") || fail "readelf failed on $BIN"
    [[ $elf != *INTERP* ]] || fail "$BIN has a program interpreter (dynamic)"
    [[ $elf != *'(NEEDED)'* ]] || fail "$BIN needs shared libraries (dynamic)"
else
    python3 - "$BIN" <<'EOF' || fail "$BIN has a program interpreter (dynamic)"
import struct, sys
d = open(sys.argv[1], "rb").read()
assert d[:4] == b"\x7fELF" and d[4] == 2, "not a 64-bit ELF"
phoff, = struct.unpack_from("<Q", d, 0x20)
phentsize, phnum = struct.unpack_from("<HH", d, 0x36)
types = [struct.unpack_from("<I", d, phoff + i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if 3 in types else 0)  # 3 = PT_INTERP
EOF
fi
echo "ok: $BIN is static"

# 3. A root holding only the binary. Readable by all: we may drop to uid 65534.
work=$(mktemp -d)
root=$work/root
mkdir "$root"
cp "$BIN" "$root/epoll-echo"
chmod 755 "$root" "$root/epoll-echo"

# Run as nobody (like USER 65534:65534 in the image) where chroot allows it.
userspec=()
if chroot --userspec=65534:65534 / true 2>/dev/null; then
    userspec=(--userspec=65534:65534)
else
    echo "warning: chroot --userspec unsupported, running as root" >&2
fi

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')

# 4. Start it. Logs stay outside the root. chroot execs the server, so $pid is
#    the server itself.
chroot "${userspec[@]}" "$root" /epoll-echo --port "$port" --host 127.0.0.1 --maxListeners 2 \
    >"$work/stdout" 2>"$work/stderr" </dev/null &
pid=$!
echo "started pid $pid on 127.0.0.1:$port${userspec:+ as 65534:65534}"

# 5. Wait for the port (deadline, fail fast if the server dies), then one echo
#    round trip of random bytes, compared byte for byte.
python3 - "$port" "$pid" "$START_TIMEOUT" <<'EOF' || fail "echo round trip failed"
import os, socket, sys, threading, time
port, pid, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])

def alive():
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

deadline = time.monotonic() + timeout
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        break
    except OSError as e:
        if not alive():
            sys.exit("server exited before accepting")
        if time.monotonic() > deadline:
            sys.exit(f"port {port} not accepting after {timeout}s: {e}")
        time.sleep(0.05)  # poll interval, bounded by the deadline above

payload = os.urandom(16 * 1024)
s.settimeout(5)
# Send from a thread so a server that echoes as it reads can't deadlock us.
sender = threading.Thread(target=s.sendall, args=(payload,))
sender.start()
got = bytearray()
while len(got) < len(payload):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
sender.join()
s.close()
if bytes(got) != payload:
    sys.exit(f"echo mismatch: sent {len(payload)} bytes, got {len(got)} back")
print(f"ok: echoed {len(payload)} random bytes")
EOF

if [[ ${#userspec[@]} -gt 0 ]]; then
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    [[ $uid == 65534 ]] || fail "server runs as uid $uid, not 65534"
fi

# 6. SIGTERM: must exit 0 within STOP_TIMEOUT (graceful shutdown).
kill -TERM "$pid"
deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
while alive "$pid"; do
    (($(now_ms) < deadline)) || fail "still running ${STOP_TIMEOUT}s after SIGTERM"
    sleep 0.05 # poll interval, bounded by the deadline above
done
rc=0
wait "$pid" || rc=$?
pid=""
((rc == 0)) || fail "exit status $rc after SIGTERM (want 0)"

if grep -q '^shutdown:' "$work/stderr"; then
    echo "ok: $(grep -m1 '^shutdown:' "$work/stderr")"
else
    echo "warning: no 'shutdown:' line on stderr" >&2
fi
echo "PASS: static $BIN echoes from an empty root${userspec:+ as 65534:65534} and exits 0 on SIGTERM"
