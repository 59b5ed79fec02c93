# epoll-echo — every command the README and CI use.
CARGO ?= cargo
PORT ?= 8080
ARGS ?=
STATIC_TARGET := x86_64-unknown-linux-gnu
IMAGE ?= epoll-echo:latest
DOCKER ?= docker

.PHONY: build run test lint fmt clean static check-static check-image docker bench test-plain

build:
	$(CARGO) build --release --locked

## Start the server on $(PORT) (override: make run PORT=9000 ARGS="--maxListeners 4").
run:
	$(CARGO) run --release --locked --bin epoll-echo -- --port $(PORT) $(ARGS)

## Lint, then every test (unit, integration against the real binary, echo-bench smoke).
test: lint
	$(CARGO) test --locked

## The plain-only build (cargo feature `tls` off): builds, and its unit tests pass.
test-plain:
	$(CARGO) test --locked --no-default-features --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## A statically linked (glibc, crt-static) build, as the Docker image ships it.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(STATIC_TARGET)

## Runs the static binary alone in an empty root (chroot), as in FROM scratch.
check-static: static
	bash scripts/check-static.sh

## Builds the Dockerfile's FROM scratch stage with podman and checks its config (needs podman).
check-image: static
	bash scripts/check-image.sh

## The image (make docker DOCKER=podman works too).
docker:
	$(DOCKER) build -t $(IMAGE) .

## Benchmarks (not tests): server pinned to CPU 0, load to CPU 1, references in the same run.
bench:
	$(CARGO) build --release --locked
	python3 bench/run.py $(BENCH_ARGS)
