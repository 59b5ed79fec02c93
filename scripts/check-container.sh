#!/usr/bin/env bash
# Runs the image under a real Docker engine the way users run it, and checks what they rely
# on: echo through a published port, the HEALTHCHECK turning healthy, uid 65534, flags after
# the image name reaching the server, --read-only/--cap-drop ALL/no-new-privileges with a low
# --ulimit nofile (and the default --max-connections adapting to it), `docker stop` draining a
# busy client and exiting 0 with the summary in `docker logs`, --help / bad-flag exit codes,
# TLS with a mounted certificate (a verified TLS echo through the published port; a key the
# image's user cannot read exits 2 naming the flag and file), deploy/compose.yaml, and the
# image config (exec-form ENTRYPOINT, STOPSIGNAL, ...).
#
#   make check-container            # builds the image first (make image)
#   IMAGE=epoll-echo:other scripts/check-container.sh
#
# Starts dockerd in the background if it is installed but not running. No engine at all is
# a failure, not a skip. Only 127.0.0.1 is published. Every container it starts is removed
# on every exit path, and so is every temporary directory (certificates, the saved image).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-epoll-echo:latest}
ENGINE_TIMEOUT=60 # s for a freshly started dockerd to answer
HEALTH_TIMEOUT=30 # s for the HEALTHCHECK to report healthy
PREFIX=epoll-echo-check-$$
containers=()
dirs=()

fail() {
    echo "check-container: FAIL: $*" >&2
    if [[ -n ${last:-} ]]; then
        echo "--- docker logs $last ---" >&2
        docker logs "$last" >&2 2>&1 || true
    fi
    exit 1
}
ok() { echo "ok   $*"; }
cleanup() {
    local c
    for c in "${containers[@]}"; do
        docker rm -f "$c" >/dev/null 2>&1 || true
    done
    for c in "${dirs[@]}"; do
        rm -rf "$c"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the engine ----------------------------------------------------------------------------
command -v docker >/dev/null ||
    fail "no docker CLI: install docker.io (apt-get install docker.io docker-compose)"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null ||
        fail "the Docker engine is not running and dockerd is not installed (apt-get install docker.io)"
    [[ $(id -u) == 0 ]] || fail "the Docker engine is not running; starting dockerd needs root"
    echo "starting dockerd (log: /tmp/dockerd.log)"
    # Detached: the engine outlives this script, as it would as a system service.
    setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
    deadline=$((SECONDS + ENGINE_TIMEOUT))
    until docker info >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "dockerd did not answer within ${ENGINE_TIMEOUT}s (see /tmp/dockerd.log)"
        sleep 0.5 # poll interval, bounded by the deadline above
    done
fi
ok "engine: $(docker version -f 'Docker {{.Server.Version}}')"
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE (run make image)"
command -v python3 >/dev/null || fail "python3 is required"

# ---- helpers -------------------------------------------------------------------------------
# start NAME DOCKER-RUN-OPTIONS... -- SERVER-FLAGS...: a detached container, removed at exit.
start() {
    local name=$PREFIX-$1 opts=()
    shift
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
    containers+=("$name")
    last=$name
    docker run -d --name "$name" "${opts[@]}" "$IMAGE" "$@" >/dev/null ||
        fail "docker run ${opts[*]} $IMAGE $* failed"
}
# host_port NAME CONTAINER-PORT: the 127.0.0.1 port Docker published it on.
host_port() {
    local p
    p=$(docker port "$PREFIX-$1" "$2/tcp" | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -n1)
    [[ -n $p ]] || fail "docker port $PREFIX-$1 $2/tcp: not published on 127.0.0.1"
    echo "$p"
}
# wait_healthy NAME: the HEALTHCHECK's verdict, within HEALTH_TIMEOUT.
wait_healthy() {
    local s deadline=$((SECONDS + HEALTH_TIMEOUT))
    while :; do
        s=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$PREFIX-$1")
        [[ $s == healthy ]] && return 0
        [[ $s == none ]] && fail "$IMAGE has no HEALTHCHECK"
        [[ $s == unhealthy ]] && fail "HEALTHCHECK says unhealthy: $(docker inspect -f '{{json .State.Health.Log}}' "$PREFIX-$1")"
        [[ $(docker inspect -f '{{.State.Running}}' "$PREFIX-$1") == true ]] ||
            fail "container exited while waiting for healthy"
        ((SECONDS < deadline)) ||
            fail "not healthy within ${HEALTH_TIMEOUT}s (status $s): $(docker inspect -f '{{json .State.Health.Log}}' "$PREFIX-$1")"
        sleep 0.5 # poll interval, bounded by the deadline above
    done
}
# client echo PORT | client drain PORT CONTAINER: a real TCP client (Python sockets).
client() {
    python3 - "$@" <<'PY'
import os, socket, subprocess, sys, time

def connect(port, timeout=20.0):
    # docker-proxy accepts on the published port before the server inside listens, then
    # closes: so a connection only counts once a byte has come back through it.
    deadline = time.monotonic() + timeout
    while True:
        s = None
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.settimeout(5)
            s.sendall(b"hello\n")
            got = b""
            while len(got) < 6:
                chunk = s.recv(64)
                if not chunk:
                    raise OSError("closed before echoing")
                got += chunk
            if got != b"hello\n":
                sys.exit(f"echo mismatch: sent b'hello\\n', got {got!r}")
            return s
        except OSError as e:
            if s:
                s.close()
            if time.monotonic() > deadline:
                sys.exit(f"no echo through 127.0.0.1:{port} within {timeout}s: {e}")
            time.sleep(0.1)  # retry interval, bounded by the deadline above

def round_trip(s, payload):
    s.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"connection closed after {len(got)} of {len(payload)} echoed bytes")
        got += chunk
    if bytes(got) != payload:
        sys.exit(f"echo mismatch on a {len(payload)}-byte message")

cmd, port = sys.argv[1], int(sys.argv[2])
s = connect(port)
if cmd == "echo":
    payload = os.urandom(200_000)
    round_trip(s, payload)
    print(f"echoed {len(payload)} random bytes")
elif cmd == "drain":
    import threading
    name = sys.argv[3]
    # Busy: a 64 MiB stream the client reads only after the stop, so the echo backs up in
    # the server (pending output) when SIGTERM arrives. (Smaller would fit in the socket
    # buffers of docker-proxy: the server would be idle, rightly closed at once, and
    # docker-proxy, which dies with the container, would drop what it still held.)
    data = os.urandom(64 << 20)
    writer = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    writer.start()
    s.settimeout(10)
    got = bytearray(s.recv(65536))
    stop = subprocess.Popen(["docker", "stop", "-t", "10", name], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while b"draining" not in subprocess.run(["docker", "logs", name], capture_output=True).stderr:
        if time.monotonic() > deadline:
            sys.exit("no 'draining' line in docker logs within 10s of docker stop")
        time.sleep(0.05)  # poll interval, bounded by the deadline above
    while len(got) < len(data):
        chunk = s.recv(1 << 20)
        if not chunk:
            sys.exit(f"closed while draining after {len(got)} of {len(data)} echoed bytes")
        got += chunk
    writer.join()
    if bytes(got) != data:
        sys.exit("the echo differs after the stop")
    round_trip(s, b"last message\n")
    # Then quiet: the server closes it (FIN, not RST) and exits.
    s.settimeout(15)
    try:
        rest = s.recv(1)
    except ConnectionResetError:
        sys.exit("connection reset instead of closed after the drain")
    if rest:
        sys.exit(f"unexpected bytes after the last echo: {rest!r}")
    if stop.wait(timeout=20) != 0:
        sys.exit("docker stop failed")
    print(f"a busy client's {len(data)} bytes and its last message echoed while draining, then EOF")
PY
}

# ---- 1. hardened, low nofile, published port, health, uid, flags ---------------------------
start main -p 127.0.0.1:0:8080 --read-only --cap-drop ALL --security-opt no-new-privileges \
    --ulimit nofile=256:256 --health-interval 1s -- --maxListeners 3
port=$(host_port main 8080)
out=$(client echo "$port") || fail "echo through the published port 127.0.0.1:$port"
ok "docker run -p 127.0.0.1:$port:8080 (--read-only --cap-drop ALL no-new-privileges): $out"
wait_healthy main
ok "HEALTHCHECK (/echo-bench probe) reports healthy"

pid=$(docker inspect -f '{{.State.Pid}}' "$PREFIX-main")
status=$(cat "/proc/$pid/status") || fail "cannot read /proc/$pid/status of the container's process"
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' <<<"$status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' <<<"$status")
[[ $uids == "65534 65534 65534 65534" && $gids == "65534 65534 65534 65534" ]] ||
    fail "the server runs as uid/gid ($uids)/($gids), not 65534"
ok "the server runs as uid and gid 65534"
[[ $(awk '/^CapEff:/ {print $2}' <<<"$status") == 0000000000000000 ]] ||
    fail "the server holds capabilities: $(grep Cap <<<"$status")"
[[ $(awk '/^NoNewPrivs:/ {print $2}' <<<"$status") == 1 ]] || fail "no_new_privs is not set"
ok "no effective capabilities, no_new_privs set"
[[ $(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$PREFIX-main") == true ]] ||
    fail "the root filesystem is not read-only"

logs=$(docker logs "$PREFIX-main" 2>&1)
grep -q 'with 3 worker(s)' <<<"$logs" ||
    fail "--maxListeners 3 after the image name did not reach the server: $logs"
ok "flags after the image name reach the server (3 workers)"
line=$(grep -m1 'max-connections [0-9]* (open-files limit' <<<"$logs") ||
    fail "no max-connections in the startup line: $logs"
limit=$(sed -n 's/.*(open-files limit \([0-9]*\)).*/\1/p' <<<"$line")
maxc=$(sed -n 's/.*max-connections \([0-9]*\) (open-files.*/\1/p' <<<"$line")
[[ $limit == 256 ]] || fail "the server saw an open-files limit of $limit, not --ulimit nofile=256"
((maxc > 0 && maxc < 256)) || fail "default --max-connections $maxc does not fit the limit of 256"
ok "under --ulimit nofile=256:256 the default max-connections is $maxc"

# ---- 2. docker stop drains a busy client, exits 0, summary in the logs -----------------------
out=$(client drain "$port" "$PREFIX-main") || fail "docker stop did not drain the busy client"
ok "docker stop -t 10: $out"
code=$(docker inspect -f '{{.State.ExitCode}}' "$PREFIX-main")
[[ $code == 0 ]] || fail "exit code $code after docker stop (want 0)"
summary=$(docker logs "$PREFIX-main" 2>&1 | grep '^shutdown:') ||
    fail "no 'shutdown:' summary in docker logs"
ok "exit code 0; $summary"

# ---- 3. --port after the image name, published elsewhere, still healthy ---------------------
last=""
start port9000 -p 127.0.0.1:0:9000 --health-interval 1s -- --port 9000 --maxListeners 1
port=$(host_port port9000 9000)
out=$(client echo "$port") || fail "echo through 127.0.0.1:$port -> 9000 with --port 9000"
wait_healthy port9000
ok "--port 9000 after the image name: echo through the published port, healthy: $out"
docker rm -f "$PREFIX-port9000" >/dev/null

# ---- 4. TLS with a mounted certificate ------------------------------------------------------
command -v openssl >/dev/null || fail "openssl is required (apt-get install openssl)"
certs=$(mktemp -d)
dirs+=("$certs")
# gencert DIR: a self-signed P-256 certificate for 127.0.0.1/localhost (rustls clients need
# the subjectAltName, and CA:FALSE on an end-entity certificate), cert.pem and key.pem.
gencert() {
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null || fail "openssl req (certificate for $1)"
}
gencert "$certs/good"
gencert "$certs/other" # a different self-signed certificate: the wrong CA for the client
# The image runs as 65534:65534 and mounts the directory read-only: 65534 must read the key.
chown -R 65534:65534 "$certs/good"
chmod 0500 "$certs/good"
chmod 0400 "$certs/good/cert.pem" "$certs/good/key.pem"
tls_flags=(--tls-port 8443 --tls-cert /certs/cert.pem --tls-key /certs/key.pem)
start tls -p 127.0.0.1:0:8443 --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$certs/good:/certs:ro" -- "${tls_flags[@]}"
port=$(host_port tls 8443)
# tls_client PORT CAFILE: a verifying TLS client (Python ssl, the CA is the mounted certificate,
# the name is 127.0.0.1): random bytes echoed byte-exact. Exit 3 when verification fails.
tls_client() {
    python3 - "$@" <<'PY'
import os, socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
deadline = time.monotonic() + 20
while True:
    # docker-proxy accepts before the server inside listens, then closes: retry until a
    # handshake completes, within the deadline.
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        break
    except ssl.SSLCertVerificationError as e:
        print(f"certificate verification failed: {e.verify_message}", file=sys.stderr)
        sys.exit(3)
    except (OSError, ssl.SSLError) as e:
        if time.monotonic() > deadline:
            sys.exit(f"no TLS handshake through 127.0.0.1:{port} within 20s: {e!r}")
        time.sleep(0.1)  # retry interval, bounded by the deadline above
payload = os.urandom(200_000)
s.sendall(payload)
got = bytearray()
while len(got) < len(payload):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit(f"TLS connection closed after {len(got)} of {len(payload)} echoed bytes")
    got += chunk
if bytes(got) != payload:
    sys.exit("TLS echo differs from what was sent")
print(f"{s.version()} {s.cipher()[0]}: echoed {len(payload)} random bytes, certificate verified")
s.close()
PY
}
out=$(tls_client "$port" "$certs/good/cert.pem") ||
    fail "verified TLS echo through 127.0.0.1:$port -> 8443 with the mounted certificate"
ok "docker run -v certs:/certs:ro ... --tls-port 8443: $out"
# openssl s_client, as a user would try it (-quiet: it prints only what comes back): one line
# written, the same line read back within 10 s, then s_client is ended.
msg="tls-through-docker-$$-$RANDOM"
got=$(python3 - "$port" "$certs/good/cert.pem" "$msg" <<'PY'
import select, subprocess, sys, time
port, ca, msg = sys.argv[1], sys.argv[2], sys.argv[3].encode() + b"\n"
p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
                      "-verify_return_error", "-verify_ip", "127.0.0.1", "-quiet"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
p.stdin.write(msg)
p.stdin.flush()
got, deadline = b"", time.monotonic() + 10
while len(got) < len(msg) and time.monotonic() < deadline:
    if select.select([p.stdout], [], [], 0.2)[0]:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        got += chunk
p.kill()
p.wait()
sys.stdout.write(got.decode(errors="replace"))
PY
)
[[ $got == "$msg" ]] || fail "openssl s_client -connect 127.0.0.1:$port: got '$got', want '$msg'"
ok "openssl s_client -connect 127.0.0.1:$port -quiet (verified): the line came back byte-exact"
# The client really verifies: the other certificate as CA must be refused.
rc=0
err=$(tls_client "$port" "$certs/other/cert.pem" 2>&1) || rc=$?
[[ $rc == 3 ]] || fail "a TLS client trusting another CA was not refused (exit $rc): $err"
ok "a client trusting a different CA is refused: ${err%%$'\n'*}"
docker logs "$PREFIX-tls" 2>&1 | grep -q 'TLS (1.2, 1.3) on .*:8443' ||
    fail "no 'TLS ... on :8443' line in docker logs"
docker rm -f "$PREFIX-tls" >/dev/null

# A key the image's user cannot read: exit 2, the message names the flag and the file.
mkdir "$certs/locked"
cp "$certs/good/cert.pem" "$certs/good/key.pem" "$certs/locked/"
chown root:root "$certs/locked/key.pem"
chmod 0600 "$certs/locked/key.pem"
chmod 0755 "$certs/locked"
chmod 0644 "$certs/locked/cert.pem"
last=""
rc=0
err=$(docker run --rm --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$certs/locked:/certs:ro" "$IMAGE" "${tls_flags[@]}" 2>&1) || rc=$?
[[ $rc == 2 && $err == *"--tls-key /certs/key.pem"* ]] ||
    fail "an unreadable --tls-key: exit $rc (want 2, naming --tls-key /certs/key.pem): $err"
ok "a key uid 65534 cannot read exits 2: ${err%%$'\n'*}"

# ---- 5. exit codes: --help 0, a bad flag 2 -------------------------------------------------
last=""
rc=0
help=$(docker run --rm "$IMAGE" --help 2>&1) || rc=$?
[[ $rc == 0 && $help == *Usage:* ]] || fail "docker run $IMAGE --help: exit $rc (want 0): $help"
rc=0
err=$(docker run --rm "$IMAGE" --no-such-flag 2>&1) || rc=$?
[[ $rc == 2 && $err == *--no-such-flag* ]] ||
    fail "docker run $IMAGE --no-such-flag: exit $rc (want 2): $err"
ok "--help exits 0, a bad flag exits 2 naming it"

# ---- 6. deploy/compose.yaml ----------------------------------------------------------------
if command -v docker-compose >/dev/null; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    fail "neither docker-compose nor docker compose is installed (apt-get install docker-compose)"
fi
err=$("${compose[@]}" -f deploy/compose.yaml config -q 2>&1) ||
    fail "${compose[*]} -f deploy/compose.yaml config: $err"
ok "${compose[*]} -f deploy/compose.yaml config is valid"

# ---- 7. the image config and contents ------------------------------------------------------
cfg=$(docker image inspect "$IMAGE" -f '{{json .Config}}')
work=$(mktemp -d)
dirs+=("$work")
docker image save "$IMAGE" -o "$work/img.tar"
mkdir "$work/x" && tar -xf "$work/img.tar" -C "$work/x"
files=$(find "$work/x" -name layer.tar -exec tar -tf {} \; | sort -u | tr '\n' ' ')
CFG=$cfg FILES=$files python3 - <<'PY' || fail "image config (above)"
import json, os, sys
c = json.loads(os.environ["CFG"])
files = sorted(os.environ["FILES"].split())
checks = {
    "ENTRYPOINT is exec-form /epoll-echo": c.get("Entrypoint") == ["/epoll-echo"],
    "no CMD to swallow flags": not c.get("Cmd"),
    "USER 65534:65534": c.get("User") == "65534:65534",
    "STOPSIGNAL SIGTERM": c.get("StopSignal") == "SIGTERM",
    "EXPOSE 8080/tcp": "8080/tcp" in (c.get("ExposedPorts") or {}),
    "ENV PORT=8080": "PORT=8080" in (c.get("Env") or []),
    "HEALTHCHECK exec-form echo-bench probe": (c.get("Healthcheck") or {}).get("Test") == ["CMD", "/echo-bench", "probe"],
    "only the two binaries": files == ["echo-bench", "epoll-echo"],
}
for name, good in checks.items():
    print(("ok   " if good else "FAIL ") + "image: " + name)
if not all(checks.values()):
    print("image config:", json.dumps(c), "files:", files)
    sys.exit(1)
PY
echo "PASS: $IMAGE under Docker $(docker version -f '{{.Server.Version}}')"
