# syntax=docker/dockerfile:1
#
# kaname as a container: a release build, copied into a distroless image
# that runs as a non-root user.
#
#   docker build -t kaname .
#   docker run --rm -v "$PWD/kaname.yaml:/etc/kaname/kaname.yaml:ro" \
#     -p 8080:8080 -p 9901:9901 kaname
#
# The config must listen on 0.0.0.0 (not 127.0.0.1) for anything outside the
# container, probes included, to reach it. To validate a file with the image:
#   docker run --rm --entrypoint /usr/local/bin/kaname -v ... kaname check -c /etc/kaname/kaname.yaml

# ---- build ------------------------------------------------------------------
# The same toolchain CI uses (rustc 1.95), on the same Debian release as the
# final image so the binary links against the glibc it will find there.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The sources and Cargo.lock CI checks (its clippy runs with --locked, so a
# stale lock fails there first), built in the dist profile (Cargo.toml: the
# release profile without debug info, symbols kept for backtraces); CI's
# tests run the same code in the debug profile. The cache mount only keeps
# downloaded crates between builds; it changes nothing in the output.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --profile dist --locked -p kaname

# ---- run --------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates, no shell, no package
# manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/kaname /usr/local/bin/kaname
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# The admin port: /metrics, /live, /ready, /config, POST /reload. Listener
# ports come from the config; publish them with -p / a Service.
EXPOSE 9901
# kaname handles SIGTERM itself (drain up to shutdown_grace), so it can be
# PID 1 without an init.
ENTRYPOINT ["/usr/local/bin/kaname", "run", "-c", "/etc/kaname/kaname.yaml"]
