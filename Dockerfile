# syntax=docker/dockerfile:1

# ---- build ----
# The image already has gcc, make and perl, which is all the C parts need:
# aws-lc-sys builds with the `cc` crate (no cmake, no clang/bindgen) and
# sqlx bundles SQLite via `cc`.
FROM rust:1-bookworm AS builder
WORKDIR /src

# Build the dependencies alone first, so this layer is reused until
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real source. migrations/ and assets/ are embedded into the binary.
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
# COPY keeps the files' original mtimes, which can be older than the
# placeholder build: touch the crate roots so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/authgate /usr/local/bin/authgate

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 authgate \
    && useradd --system --uid 10001 --gid authgate \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin authgate \
    && mkdir -p /data \
    && chown authgate:authgate /data

COPY --from=builder /usr/local/bin/authgate /usr/local/bin/authgate

# The default SQLite database is created in the working directory.
WORKDIR /data
USER authgate:authgate

ENV AUTHGATE_LISTEN=0.0.0.0:8010
EXPOSE 8010

# No HEALTHCHECK: the slim image has no curl or wget, and installing one
# just for this would grow the image. Probe the service over HTTP from
# outside the container instead (a Kubernetes httpGet probe, a load balancer).

ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]
