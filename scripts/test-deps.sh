#!/usr/bin/env bash
# Installs what the test suite drives, where it is missing: the real clients and peers (nc,
# socat, telnet, openssl, HAProxy, nginx with its stream module), the Docker engine, and the
# Prometheus parser the metrics tests use. `make test` and `.ci/run` both call it, so the
# README's test command works on a fresh machine. Without root or apt-get it says what is
# missing and goes on: the suite then skips what needs those tools (under CI=true it fails).
set -uo pipefail
# The real clients and peers the tests drive, the tools of the static check, the engine.
need=()
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v socat >/dev/null || need+=(socat)
command -v telnet >/dev/null || need+=(telnet)
command -v openssl >/dev/null || need+=(openssl)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light libnginx-mod-stream)
command -v readelf >/dev/null || need+=(binutils)
command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v docker >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test-deps: installing ${need[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null ||
      echo "test-deps: apt-get failed; tests that need ${need[*]} will skip (or fail under CI=true)" >&2
  else
    echo "test-deps: missing ${need[*]} (run as root with apt-get to install); tests that need them skip (or fail under CI=true)" >&2
  fi
fi
# The metrics tests parse the scrape with the reference Prometheus parser.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install -q prometheus-client 2>/dev/null ||
    python3 -m pip install -q --break-system-packages prometheus-client 2>/dev/null ||
    python3 -m pip install -q --user prometheus-client 2>/dev/null ||
    echo "test-deps: could not install the Python package prometheus-client" >&2
fi
exit 0
