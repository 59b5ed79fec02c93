# epoll-echo container image: a static binary in an empty (FROM scratch) image.
#
#   docker build -t epoll-echo:latest .      # make docker: builds from source
#   make image                               # same final stage, host-built binaries
#   docker run --rm -p 8080:8080 epoll-echo:latest --maxListeners 4
#
# Flags after the image name go straight to the server (exec-form ENTRYPOINT).
# To move the port, `-e PORT=9000` is the explicit way (server and HEALTHCHECK
# probe both read it), but `--port 9000` works too: when nothing listens on
# $PORT, the probe finds the one listening port in /proc/net/tcp{,6}.

# ---- build stage ------------------------------------------------------------
# Official Rust image on Debian 12: its glibc ships libc.a, which a static
# glibc link (crt-static) needs.
FROM rust:1-bookworm AS build
WORKDIR /src

# Static glibc: no dynamic loader or .so files needed at run time, so the binary
# runs in an empty image. The explicit --target below is what makes this safe:
# with --target, RUSTFLAGS apply only to target artefacts, not to build scripts
# and proc-macros (clap's derive), which cannot be linked statically.
# Caveat of static glibc: NSS (getaddrinfo for host *names*) does not work in
# scratch, so --host must be an IP literal (it is parsed, never resolved).
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never

# Dependency download as its own layer, keyed only on the manifests, so editing
# src/ does not re-download crates. Cargo refuses a manifest with no target,
# hence the throw-away stub main.rs. --locked: Cargo.lock must be up to date.
COPY Cargo.toml Cargo.lock ./
COPY echo-bench/Cargo.toml echo-bench/
RUN mkdir -p src echo-bench/src && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > echo-bench/src/main.rs \
 && cargo fetch --locked --target x86_64-unknown-linux-gnu \
 && rm -rf src echo-bench/src

# The sources. (If a build.rs is ever added, COPY it here too.)
COPY src/ src/
COPY echo-bench/src/ echo-bench/src/
# Build both binaries, then fail here rather than at run time if either one
# came out dynamic (a program interpreter or a NEEDED shared library).
RUN cargo build --release --locked --workspace --target x86_64-unknown-linux-gnu \
 && for b in epoll-echo echo-bench; do \
      f=target/x86_64-unknown-linux-gnu/release/$b; \
      h=$(readelf -lWd "$f") || exit 1; \
      case "$h" in *INTERP*|*'(NEEDED)'*) echo "$f is not static" >&2; exit 1;; esac; \
    done

# The two binaries at /, whichever way they were built. `make image`
# (scripts/image.sh) replaces everything above the final-stage marker below with
# a `binaries` stage that COPYs host-built static binaries from its context,
# and keeps the final stage byte for byte: one final stage, two ways to feed it.
FROM scratch AS binaries
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/epoll-echo /src/target/x86_64-unknown-linux-gnu/release/echo-bench /

# ---- final stage (shared with make image: keep it self-contained) ----------
# Nothing but the two binaries: no shell, no libc, no CA certs (none needed).
FROM scratch
COPY --from=binaries /epoll-echo /epoll-echo
# echo-bench is here for its `probe` subcommand (HEALTHCHECK / k8s probes).
COPY --from=binaries /echo-bench /echo-bench

# nobody:nogroup, numerically (scratch has no /etc/passwd). Port 8080 is above
# 1024, so no capability is needed to bind it.
USER 65534:65534

# Default port; the server reads PORT (and the probe targets 127.0.0.1:$PORT).
ENV PORT=8080
EXPOSE 8080

# The server drains connections and exits 0 on SIGTERM (docker stop's default
# signal, stated here for clarity). Give it time: `docker stop -t 15`.
STOPSIGNAL SIGTERM

# Exec form (no shell exists here anyway): the server is PID 1 and receives
# SIGTERM itself, and `docker run IMAGE --port 9000 ...` appends the flags.
ENTRYPOINT ["/epoll-echo"]

# A real echo round trip to 127.0.0.1:$PORT (a plain TCP connect would only
# prove the port is open). Exec form: there is no /bin/sh for CMD-SHELL.
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
    CMD ["/echo-bench", "probe"]
