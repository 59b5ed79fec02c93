# epoll-echo — every command the README and CI use.
CARGO ?= cargo
PORT ?= 8080
ARGS ?=
STATIC_TARGET := x86_64-unknown-linux-gnu
IMAGE ?= epoll-echo:latest
DOCKER ?= docker

.PHONY: build run test test-deps lint fmt clean static check-static image check-container docker bench soak fuzz test-plain

build:
	$(CARGO) build --release --locked --workspace

## Start the server on $(PORT) (override: make run PORT=9000 ARGS="--maxListeners 4").
run:
	$(CARGO) run --release --locked --bin epoll-echo -- --port $(PORT) $(ARGS)

## Installs the test peers that are missing (scripts/test-deps.sh), lints, then every test
## (unit, simulator, integration against the real binary with real clients, echo-bench).
test: test-deps lint
	$(CARGO) test --locked --workspace

## The plain-only build (cargo feature `tls` off): builds, and its unit tests pass.
test-plain:
	$(CARGO) test --locked --no-default-features --lib

test-deps:
	@bash scripts/test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## A statically linked (glibc, crt-static) build, as the Docker image ships it.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --workspace --target $(STATIC_TARGET)

## Runs the static binary alone in an empty root (chroot), as in FROM scratch.
check-static: static
	bash scripts/check-static.sh

## The image from the host-built static binaries: the Dockerfile's own final stage, no
## base image pulled (works without a registry).
image: static
	IMAGE=$(IMAGE) DOCKER=$(DOCKER) bash scripts/image.sh

## The image under a real Docker engine, run the way users run it (starts dockerd if needed).
check-container: image
	IMAGE=$(IMAGE) bash scripts/check-container.sh

## The image built from source in the rust:1-bookworm stage (needs a registry).
docker:
	$(DOCKER) build -t $(IMAGE) .

## Benchmarks (not tests): the matrix of bench/README.md, server on CPU 0, load on CPU 1, references
## in the same run, loopback and a veth path (root). Quick: make bench BENCH_ARGS="--quick --paths loopback".
bench:
	$(CARGO) build --release --locked --workspace
	python3 bench/run.py $(BENCH_ARGS)

## Long runs (not in `make test`): the simulator on random seeds, then hundreds of real clients
## against the release binary. SOAK_SECS bounds each part (make soak SOAK_SECS=600).
SOAK_SECS ?= 60
soak:
	SOAK_SECS=$(SOAK_SECS) $(CARGO) test --release --locked --test sim sim_soak -- --ignored --nocapture
	SOAK_SECS=$(SOAK_SECS) $(CARGO) test --release --locked --test soak soak_long -- --ignored --nocapture

## Every fuzz target for FUZZ_SECS each (cargo-fuzz, nightly). Longer: make fuzz FUZZ_SECS=3600.
FUZZ_SECS ?= 60
FUZZ_TARGETS = $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
fuzz:
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done
