# STEP server and REST gateway images, built from source.
#
#     docker compose up --build        # builds both targets below, then runs them
#     docker build --target step-server -t step-server .
#     docker build --target gateway     -t step-gateway .
#
# Needs a registry to pull rust:*-slim-bookworm from. The test machine has no
# registry: tests/docker/compose_test.sh builds static binaries on the host
# instead and packs them with docker/Dockerfile.local (same runtime stages,
# same file layout), see docker/compose.local.yml.
#
# The binaries are linked statically against glibc (+crt-static), so the
# runtime images are FROM scratch: the binary, an empty /data owned by the
# non-root user 65532 and a /tmp for the gateway's spooled uploads. Nothing
# else: no shell, no libc, no secret. Health checks use the binaries' own
# --health-check flag.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN set -eux; \
    target="$(rustc -vV | sed -n 's/^host: //p')"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --target "$target" -p step-server -p gateway; \
    mkdir -p /out/rootfs/data /out/rootfs/tmp; \
    chmod 1777 /out/rootfs/tmp; \
    for bin in step-server gateway; do \
        strip --strip-debug -o "/out/$bin" "target/$target/release/$bin"; \
    done

FROM scratch AS step-server
COPY --from=build --chown=65532:65532 /out/rootfs/ /
COPY --from=build /out/step-server /usr/local/bin/step-server
USER 65532:65532
ENV STEP_IP=0.0.0.0 STEP_PORT=1379 STEP_DATA_DIR=/data TMPDIR=/tmp
EXPOSE 1379
HEALTHCHECK --interval=3s --timeout=5s --start-period=5s --retries=10 \
    CMD ["/usr/local/bin/step-server", "--health-check"]
ENTRYPOINT ["/usr/local/bin/step-server"]

FROM scratch AS gateway
COPY --from=build --chown=65532:65532 /out/rootfs/ /
COPY --from=build /out/gateway /usr/local/bin/gateway
USER 65532:65532
# Without STEP_BACKEND the gateway runs its own step-server over /data.
ENV GATEWAY_BIND=0.0.0.0 GATEWAY_PORT=8080 STEP_DATA_DIR=/data TMPDIR=/tmp
EXPOSE 8080 1379
HEALTHCHECK --interval=3s --timeout=5s --start-period=5s --retries=10 \
    CMD ["/usr/local/bin/gateway", "--health-check"]
ENTRYPOINT ["/usr/local/bin/gateway"]
