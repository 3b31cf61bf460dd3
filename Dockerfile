# hookgauge container image.
#
#   docker build -t hookgauge:latest .
#   docker run -d -p 8080:8080 -v hookgauge-data:/data \
#     -e HOOKGAUGE__SOURCES__PELORUS__SECRETS="$(openssl rand -hex 32)" hookgauge:latest
#
# The ingest port (8080) is the only one to publish; the metrics port (9464) is for Prometheus.
# A source secret is required: hookgauge refuses to listen on 0.0.0.0 while the Pelorus
# source has none (set HOOKGAUGE__SOURCES__PELORUS__SECRETS, or mount a file and set
# HOOKGAUGE__SOURCES__PELORUS__SECRETS_FILE, or pass `serve --config FILE`).

ARG RUST_VERSION=1

# ---------------------------------------------------------------------------------------------
# Build stage. rusqlite bundles SQLite, so this needs a C compiler: the rust image has gcc.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin hookgauge \
    && rm -rf src

# The real sources, and the shipped declarative plugins they compile in. `touch` makes them
# newer than the placeholders, so Cargo rebuilds the crate. The release profile's line tables
# (about 80 MB of the binary's 100) are stripped from the image's copy: a panic's backtrace
# still names its functions, without file and line.
COPY src ./src
COPY plugins ./plugins
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin hookgauge \
    && strip --strip-debug target/release/hookgauge \
    && ./target/release/hookgauge --version

# ---------------------------------------------------------------------------------------------
# Runtime stage: glibc and the CA bundle, nothing else. hookgauge trusts the public roots compiled
# into it (`hookgauge send` over HTTPS, PostgreSQL with sslmode=require); the bundle at the usual
# path is there for configurations that name it (`[store] ca_file`). It is copied from the build
# stage, whose image has Debian's ca-certificates, rather than installed with apt-get: this stage
# then runs no package manager and needs no network, and carries no openssl or apt lists.
FROM debian:bookworm-slim

COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# A fixed non-root uid/gid (the usual "nonroot" 65532) that Kubernetes manifests can name.
# /data is created here, owned by that user, so a new named volume mounted on it is writable.
RUN groupadd --system --gid 65532 hookgauge \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hookgauge \
    && mkdir -p /data \
    && chown 65532:65532 /data \
    && chmod 0750 /data

COPY --from=builder /build/target/release/hookgauge /usr/local/bin/hookgauge

# Container defaults: listen on all interfaces, keep the store in /data. Environment variables
# override a configuration file (`--config`): change these with `-e`/`env:`, not in the file.
ENV HOOKGAUGE__SERVER__INGEST_ADDR=0.0.0.0:8080 \
    HOOKGAUGE__SERVER__METRICS_ADDR=0.0.0.0:9464 \
    HOOKGAUGE__SERVER__DATA_DIR=/data

USER 65532:65532
WORKDIR /data
VOLUME /data
# 8080: ingest (webhooks, /healthz, /readyz), public. 9464: /metrics, internal only.
EXPOSE 8080 9464

# hookgauge has no health subcommand and the image has neither curl nor wget. Rather than adding
# a package (and its libraries) only for this, the check speaks HTTP/1.0 to /healthz through
# bash's /dev/tcp and looks for a 200 status line. It probes the port of
# HOOKGAUGE__SERVER__INGEST_ADDR (8080 unless changed with -e/env:); an ingest port moved with
# `serve --ingest-addr` or a configuration file is not seen, so move it with the variable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "port=${HOOKGAUGE__SERVER__INGEST_ADDR##*:}; exec 3<>/dev/tcp/127.0.0.1/${port:-8080} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM stops hookgauge gracefully (in-flight requests get server.shutdown_timeout, 30s by
# default): give `docker stop` more than that, e.g. `docker stop -t 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hookgauge"]
CMD ["serve"]
