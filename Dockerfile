# syntax=docker/dockerfile:1
#
# The freshet binary in a small Debian image.
#
#   docker build -t freshet:latest .
#   docker run --rm -it freshet:latest                       # `freshet demo`: the whole loop, nothing else needed
#   docker run --rm freshet:latest run --check --bootstrap kafka:9092
#
# /var/lib/freshet holds the RocksDB checkpoint (a VOLUME); /etc/freshet/freshet.toml
# is deploy/freshet.toml, which FRESHET_CONFIG names. Its listeners are on
# 127.0.0.1: to reach the exposed ports, pass `serve --listen 0.0.0.0:8080` and
# set FRESHET_METRICS__LISTEN=0.0.0.0:9464 for `run` (docker-compose.yml and
# deploy/k8s do).

# ---- build -------------------------------------------------------------------
# Edition 2024 needs Rust >= 1.85.
FROM rust:1-bookworm AS builder

# cmake/clang/libclang: librdkafka and RocksDB (bindgen); libssl/libsasl2:
# rdkafka's ssl and gssapi features; zlib: librdkafka's compression.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake clang libclang-dev libssl-dev libsasl2-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# The target directory is a cache mount, so the binary is copied out of it in
# the same step (the mount is gone afterwards).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --bin freshet \
    && cp /app/target/release/freshet /usr/local/bin/freshet

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

# libssl3/libsasl2-2: linked by librdkafka; ca-certificates: SASL_SSL/SSL
# brokers; curl: container health checks.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libssl3 libsasl2-2 curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 freshet \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/freshet \
        --shell /usr/sbin/nologin freshet \
    && mkdir -p /var/lib/freshet /etc/freshet \
    && chown freshet:freshet /var/lib/freshet

COPY --from=builder /usr/local/bin/freshet /usr/local/bin/freshet
COPY deploy/freshet.toml /etc/freshet/freshet.toml

ENV FRESHET_CONFIG=/etc/freshet/freshet.toml \
    FRESHET_CHECKPOINT_DIR=/var/lib/freshet/checkpoint

# Declared after the chown: a new volume starts out owned by freshet.
VOLUME ["/var/lib/freshet"]
WORKDIR /var/lib/freshet
USER 10001:10001

# 8080: `freshet serve` (HTTP API and its /metrics); 9464: `freshet run`'s
# /metrics, /healthz and /readyz.
EXPOSE 8080 9464

# SIGTERM (docker stop) drains and writes a final checkpoint: give `run` time,
# e.g. `docker stop -t 60`.
ENTRYPOINT ["freshet"]
CMD ["demo"]
