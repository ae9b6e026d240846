# The gleaner node image: one `gleaner node` process, non-root, data in /data.
#
#   docker build -t gleaner .                 # the usual way: compile in the builder stage
#   docker build --target browser -t gleaner-browser .
#                                              # the worker image for `render: browser`
#                                              # sources: the same plus Debian's Chromium
#   scripts/image.sh                           # no registry: a debootstrapped base and the
#                                              # host's release binary (the `host` target)
#   scripts/image.sh --browser                 # the same for the browser variant
#                                              # (the `browser-host` target)
#
# Stage order matters: the legacy builder (used when BuildKit/buildx is absent)
# builds every stage *before* the target, so `--target host` must not come after
# the Rust builder stage, which needs a Rust image from a registry.
# The default target (the last stage, `runtime`) builds the binary from source.
#
# Running it: binding 0.0.0.0 (the image's default GLEANER_HTTP_ADDR) requires an
# admin token, or the node refuses to start. Give GLEANER_ADMIN_TOKEN, or better
# GLEANER_ADMIN_TOKEN_FILE pointing at a secret; see docs/containers.md.

ARG BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-slim-bookworm

# ---- runtime-base: everything of the runtime image but the binary -------------
FROM ${BASE} AS runtime-base
# Root for the setup (a base made from this file's browser-base ends as gleaner);
# idempotent for the same reason.
USER root
RUN (getent group gleaner >/dev/null || groupadd --system --gid 10001 gleaner) \
    && (getent passwd gleaner >/dev/null || useradd --system --uid 10001 --gid 10001 \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin gleaner) \
    && mkdir -p /data \
    && chown gleaner:gleaner /data
ENV GLEANER_HTTP_ADDR=0.0.0.0:8080 \
    GLEANER_DATA_DIR=/data \
    GLEANER_CLUSTER_PORT=4697
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 4697
# No curl in the image: bash's /dev/tcp asks /healthz on the port of
# GLEANER_HTTP_ADDR (over 127.0.0.1) and wants a 200 status line. Swarm lists a
# task in its DNS (tasks.<service>, the cluster's discovery) only once it is
# healthy, and the first probe runs one interval after the start: a short
# interval lets new tasks find each other sooner.
# A worker (`gleaner worker`) serves no HTTP: it sets GLEANER_HEALTH_FILE and
# touches that file every 2 s while it runs with its owner present, and the
# probe then wants the file younger than 10 s.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "if [ -n \"$GLEANER_HEALTH_FILE\" ]; then age=$(( $(date +%s) - $(stat -c %Y \"$GLEANER_HEALTH_FILE\") )) && [ \"$age\" -lt 10 ]; else exec 3<>/dev/tcp/127.0.0.1/${GLEANER_HTTP_ADDR##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 _ code _ <&3 && [ \"$code\" = 200 ]; fi"]
USER gleaner
ENTRYPOINT ["/usr/local/bin/gleaner"]
CMD ["node"]

# ---- host: the runtime with a binary taken from the build context --------------
# The context must hold target/release/gleaner (scripts/image.sh prepares one).
FROM runtime-base AS host
COPY target/release/gleaner /usr/local/bin/gleaner

# ---- browser-base: the runtime plus Debian's Chromium ---------------------------
# For workers of `render: browser` sources. Chromium runs headless with its own
# sandbox off: the worker container (read-only, no capabilities,
# no-new-privileges) is the sandbox. The install is skipped when the base has
# Chromium already (scripts/image.sh builds this stage once as a base of its own).
FROM runtime-base AS browser-base
USER root
RUN command -v chromium >/dev/null \
    || (apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*)
USER gleaner
ENV GLEANER_CHROMIUM=/usr/bin/chromium

# ---- browser-host: the browser variant with a binary from the build context ----
FROM browser-base AS browser-host
COPY target/release/gleaner /usr/local/bin/gleaner

# ---- builder: compiles the release binary --------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin gleaner \
    && objcopy --strip-debug target/release/gleaner /gleaner

# ---- browser: the browser variant with the binary built above -------------------
FROM browser-base AS browser
COPY --from=builder /gleaner /usr/local/bin/gleaner

# ---- runtime (default): the runtime with the binary built above ---------------
FROM runtime-base AS runtime
COPY --from=builder /gleaner /usr/local/bin/gleaner
