# syntax=docker/dockerfile:1
#
# vwed-hub and vwed-demo in one small image.
#
#   docker build -t vwed-hub .
#   docker run --rm -p 8000:8000 vwed-hub --demo                  # embedded broker + demo
#   docker run --rm -p 8000:8000 -e VWED_NATS_URL=nats://nats:4222 vwed-hub
#   docker run --rm -e VWED_NATS_URL=nats://nats:4222 --entrypoint vwed-demo --no-healthcheck vwed-hub
#
# Needs BuildKit (the default builder since Docker 23; `docker compose build` uses it too) for
# the cache mounts below.

# Builder and runtime must share a Debian release: the binaries link against its glibc.
# Rust >= 1.89 is needed by the locked dependencies (async-nats); 1.95 is the toolchain CI uses.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# Where the two binaries come from: `builder` (the default) compiles them in the Rust image
# below. Any other value names an image holding /out/vwed-hub and /out/vwed-demo, built on the
# same Debian release; .ci/compose-smoke passes one on machines that can pull no Rust image, so
# that the runtime stage it tests is the one users get.
ARG BINARIES=builder

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole workspace: cargo loads every member's manifest and targets, even to build two
# packages. .dockerignore keeps target/ and .git out of the context.
COPY . .
# Dependency caching: the cargo registry and the target directory live in BuildKit cache
# mounts, so a rebuild after a source change recompiles only the workspace crates, not the
# ~200 dependencies. The target directory is a cache mount and vanishes after this step, so
# the binaries are copied out within it. --locked: build exactly the Cargo.lock versions.
RUN --mount=type=cache,id=vwed-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=vwed-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=vwed-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p vwed-hub -p vwed-demo \
    && install -D -m 0755 -t /out target/release/vwed-hub target/release/vwed-demo

# The stage the runtime copies from: the builder above, or the image named by BINARIES (then
# the builder is never run: BuildKit and buildah skip stages the target does not use).
FROM ${BINARIES} AS binaries

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: async-nats reads the system roots for tls:// NATS URLs (the package brings
# openssl and libssl3 along, about 8 MB that the hub does not use: it speaks TLS with rustls).
# Nothing else: the page, CSS and JavaScript are compiled into the binary. Not pinned
# (DL3008): Debian stable replaces a version when it ships a security fix, and a pin would
# then break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can check it without a passwd
# lookup and file ownership is the same on every host.
RUN groupadd --system --gid 10001 vwed \
    && useradd --system --uid 10001 --gid vwed --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vwed
COPY --from=binaries /out/vwed-hub /out/vwed-demo /usr/local/bin/
USER 10001:10001

# Listen on every interface inside the container; logs as JSON lines for collectors.
# RUST_LOG sets the level (info by default). Every other VWED_* setting keeps the default
# that `vwed-hub --help` documents; without VWED_NATS_URL the hub runs on its embedded broker.
ENV VWED_LISTEN=0.0.0.0:8000 \
    VWED_LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8000

# No curl or wget in this image: bash's /dev/tcp asks /healthz (liveness only; readiness is
# /readyz, which Kubernetes and the load balancer check themselves). Assumes port 8000.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]

# SIGTERM (docker stop, Kubernetes) starts the drain: see VWED_DRAIN_SPREAD and
# VWED_SHUTDOWN_TIMEOUT in docs/OPERATIONS.md. The exec form keeps the hub as PID 1, so it
# receives the signal itself.
ENTRYPOINT ["vwed-hub"]
