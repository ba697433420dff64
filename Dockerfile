# syntax=docker/dockerfile:1
# tokenplane images. One build, two targets with the same two binaries:
#
#   docker build --target operator -t ghcr.io/tokenplane/tokenplane-operator:TAG .
#   docker build --target sidecar  -t ghcr.io/tokenplane/tokenplane-sidecar:TAG .
#
# `sidecar` (the issuer and the agent) is the last stage, so the default.
# The runtime is distroless (glibc, CA certificates, no shell) running as
# the nonroot user 65532, as the issuer Deployment the operator creates
# expects (runAsUser 65532, read-only root filesystem).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
# aws-lc-sys builds its C sources with the cc crate; cmake is its fallback.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep crates and incremental artifacts between builds; the
# binaries are copied out because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tokenplane-operator -p tokenplane-sidecar \
 && mkdir -p /out \
 && cp target/release/tokenplane-operator target/release/tokenplane-sidecar /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/tokenplane-operator /out/tokenplane-sidecar /usr/local/bin/
USER 65532:65532

FROM runtime AS operator
ENTRYPOINT ["/usr/local/bin/tokenplane-operator"]
CMD ["--help"]

FROM runtime AS sidecar
ENTRYPOINT ["/usr/local/bin/tokenplane-sidecar"]
CMD ["--help"]
