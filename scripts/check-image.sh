#!/usr/bin/env bash
# Builds the Dockerfile's final (FROM scratch) stage with podman from the locally built
# static binaries, and checks the image config users depend on: exec-form ENTRYPOINT (so
# `docker run IMAGE --port 9000` passes flags), USER 65534, STOPSIGNAL SIGTERM, EXPOSE 8080,
# an exec-form HEALTHCHECK running `echo-bench probe`, and nothing in it but the two binaries.
# The builder stage needs the official Rust image from Docker Hub, which this script avoids;
# `make docker` builds the whole Dockerfile where a registry is reachable.
#
#   make static && scripts/check-image.sh      # needs podman
set -euo pipefail
cd "$(dirname "$0")/.."
command -v podman >/dev/null || { echo "SKIP: podman is not installed"; exit 0; }
rel=target/x86_64-unknown-linux-gnu/release
for b in epoll-echo echo-bench; do
    [[ -x $rel/$b ]] || { echo "FAIL: $rel/$b missing (run make static)"; exit 1; }
done
ctx=$(mktemp -d)
tag=localhost/epoll-echo-final-check:$$
trap 'rm -rf "$ctx"; podman rmi -f "$tag" >/dev/null 2>&1 || true' EXIT
cp "$rel/epoll-echo" "$rel/echo-bench" "$ctx/"
# The final stage, copying from the build context instead of the builder stage.
awk '/^FROM scratch/{p=1} p' Dockerfile |
    sed 's|COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/\([a-z-]*\) |COPY \1 |' \
        >"$ctx/Dockerfile"
podman build --format docker -q -t "$tag" "$ctx" >/dev/null
cfg=$(podman image inspect "$tag" --format '{{json .Config}}')
health=$(podman image inspect "$tag" --format '{{json .Config.Healthcheck}}')
files=$(podman image save -q "$tag" -o "$ctx/img.tar" >/dev/null && mkdir "$ctx/x" &&
    tar -xf "$ctx/img.tar" -C "$ctx/x" &&
    find "$ctx/x" -name '*.tar' -exec tar -tf {} \; | sort -u | tr '\n' ' ')
CFG=$cfg HEALTH=$health FILES=$files python3 - <<'PY'
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
    "HEALTHCHECK exec-form echo-bench probe": (json.loads(os.environ["HEALTH"]) or {}).get("Test") == ["CMD", "/echo-bench", "probe"],
    "only the two binaries": files == ["echo-bench", "epoll-echo"],
}
for name, ok in checks.items():
    print(("ok   " if ok else "FAIL ") + name)
if not all(checks.values()):
    print("image config:", json.dumps(c), "files:", files)
    sys.exit(1)
print("PASS: final image stage")
PY
