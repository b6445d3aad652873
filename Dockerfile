# syntax=docker/dockerfile:1
#
# hotline's image: a release build on the Rust toolchain the project uses, run as a
# non-root user on a slim Debian of the same release (the binary links that glibc).
#
#   docker build -t hotline .
#   docker run --rm -p 8080:8080 -e LISTEN_ADDR=0.0.0.0:8080 hotline serve --demo

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. Stand-in sources let Cargo build them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src migrations \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/hotline-* target/release/deps/hotline-* \
           target/release/deps/libhotline-* target/release/hotline

# Then hotline itself, built exactly as CI builds it. `sqlx::migrate!` embeds the
# migrations into the binary.
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/hotline /out/hotline

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 hotline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/hotline --shell /usr/sbin/nologin hotline \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/hotline
COPY --from=builder /out/hotline /usr/local/bin/hotline

# The one writable place: the post-call spool (SPOOL_DIR, default `hotline-spool`) and the
# embedded SQLite database (the default DATABASE_URL, `hotline.db`) are relative to it. Mount
# a volume here; with a read-only root filesystem it is required.
WORKDIR /var/lib/hotline
# Numeric, so that orchestrators can tell it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001

# LISTEN_ADDR defaults to 127.0.0.1:8080, unreachable from outside the container: set
# LISTEN_ADDR=0.0.0.0:8080 (the compose file and the Kubernetes ConfigMap do).
EXPOSE 8080
ENTRYPOINT ["hotline"]
CMD ["serve"]
