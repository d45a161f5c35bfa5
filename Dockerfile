# syntax=docker/dockerfile:1
#
# The genfleet worker image (CPU pools: `cpu`, `remote`).
#
#   docker build -t genfleet:0.1.0 .
#
# Stage 1 builds the release binary from the locked dependencies with the
# `simd-c` feature (libjpeg-turbo and rav1e's assembly: needs cmake and nasm).
# Stage 2 is debian:bookworm-slim with CA certificates and nothing else, run
# as uid 10001; the root filesystem can be read-only: the spool
# (`worker.spool_dir`) and TMPDIR go to emptyDir volumes, the object store is
# S3 (k8s/README.md). The GPU variant is Dockerfile.gpu.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target folder between builds; the
# binary is copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features simd-c --bin genfleet \
 && install -D -m 0755 target/release/genfleet /out/genfleet

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 genfleet \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin genfleet \
 && install -d -o 10001 -g 10001 -m 0700 /var/spool/genfleet
COPY --from=build /out/genfleet /usr/local/bin/genfleet
# TMPDIR and the spool are emptyDir mounts in k8s/base; the folders exist in
# the image too so that `docker run` works without volumes.
ENV TMPDIR=/tmp \
    GENFLEET_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
EXPOSE 9090
ENTRYPOINT ["genfleet"]
CMD ["--help"]
