# syntax=docker/dockerfile:1
#
# Chatty server image.
#
#   docker build -t chatty:local .
#   docker run --rm -p 8080:8080 -p 9090:9090 chatty:local
#
# Stages:
#   chef     - the Rust toolchain plus cargo-chef (pinned)
#   planner  - computes recipe.json: the dependency graph of the workspace, nothing else
#   builder  - `cargo chef cook` builds only the dependencies (cached as long as Cargo.toml /
#              Cargo.lock do not change), then the real `cargo build` compiles the workspace
#   runtime  - debian bookworm-slim, non-root, only the binary and config/
#
# Base images are pinned to a release tag. For fully reproducible builds, let Dependabot or
# Renovate (docker ecosystem) add and bump the `@sha256:` digests.

ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
# The queries use sqlx's runtime API; SQLX_OFFLINE keeps any sqlx macro from trying to reach
# a database during the build (it would use .sqlx/ instead).
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

# ---------------------------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until the dependency graph changes.
RUN cargo chef cook --release --locked -p chatty --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p chatty \
    && install -D -m 0755 target/release/chatty /out/chatty

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: trust roots for TLS to managed Postgres / Redis.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# DL3008 is ignored on purpose: Debian removes superseded package versions from its mirrors at
# every point release and security update, so an exact `=version` pin breaks the build within
# weeks. The pinned base image tag (and its digest, once Renovate/Dependabot adds it) is what
# fixes the package set; rebuilding picks up security fixes.

# The RDS CA bundle: TLS to RDS is verify-full (infra/modules/rds builds the URL with
# sslrootcert= this path), and the RDS CAs are in no public trust store. Fetched at build time
# from AWS's trust store; world-readable because ADD from a URL defaults to 0600.
ADD --chmod=0644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
    /usr/local/share/chatty/rds-global-bundle.pem

# The server keeps no local state (Postgres is the store, logs go to stdout), so nothing in
# the image is writable by the service user and the root filesystem can be read-only.
RUN groupadd --system --gid 10001 chatty \
    && useradd --system --uid 10001 --gid chatty --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin chatty

WORKDIR /app
COPY --from=builder /out/chatty /usr/local/bin/chatty
# Configuration is read-only for the service user (owned by root).
COPY config/ /app/config/

ENV CHATTY_ENVIRONMENT=production \
    CHATTY__SERVER__HOST=0.0.0.0 \
    RUST_LOG=info

USER 10001:10001

# Public: WebSocket /ws, HTTP API, /healthz, /readyz, the chat page.  Metrics: /metrics.
EXPOSE 8080 9090

# `chatty healthcheck` GETs http://127.0.0.1:8080/readyz and exits 0 only on HTTP 200, so no
# curl/wget is needed in the image. While draining (after SIGTERM) /readyz answers 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["chatty", "healthcheck"]

# SIGTERM starts the graceful drain (connections closed with 1001, writer flushed) which
# finishes within 25 s; give the container at least 30 s (`docker stop -t 30`, compose
# stop_grace_period, ECS stopTimeout).
STOPSIGNAL SIGTERM

# Exec form: chatty is PID 1's direct child (or PID 1) and receives SIGTERM itself.
ENTRYPOINT ["chatty"]
CMD ["serve"]
