#!/usr/bin/env bash
# Builds the gleaner runtime image on a machine that cannot pull any image:
#
#   1. a Debian bookworm base image, made once with `debootstrap --variant=minbase`
#      and `docker import` (reused while it exists);
#   2. the release binary, built on this host (`cargo build --release --locked`);
#   3. the Dockerfile's `host` stage (the runtime stage with the binary taken
#      from the build context) on that base.
#
# Usage: scripts/image.sh [--browser] [--base-only] [--measure N] [TAG]
#        (TAG: gleaner:dev, or gleaner-browser:dev with --browser)
#
#   --browser     the browser variant, for workers of `render: browser` sources:
#                 the same on a base with Debian's Chromium (made once with the
#                 Dockerfile's `browser-base` stage, then reused like the base),
#                 built from the `browser-host` stage
#   --base-only   prepare the base image(s) (if missing) and stop
#   --measure N   after building, start the image N times and print the time from
#                 `docker run` to a 200 on /readyz, then remove those containers
#
# Environment:
#   GLEANER_BASE_IMAGE     the base image's tag           (gleaner-base:bookworm)
#   GLEANER_REBUILD_BASE   1: rebuild the base even if it exists
#   GLEANER_DEBIAN_MIRROR  a Debian mirror for debootstrap (default: debootstrap's own)
#   GLEANER_BROWSER_BASE   the browser base's tag         (gleaner-browser-base:bookworm)
#   GLEANER_BINARY         use this binary instead of building one
#   CARGO_TARGET_DIR       where cargo builds (default: target/)
#
# The base carries busybox beside minbase: the container tests serve their fixture
# site with `busybox httpd` from the same base. Needs root (or sudo) for
# debootstrap, and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

base_only=0
measure=0
browser=0
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --browser) browser=1 ;;
    --base-only) base_only=1 ;;
    --measure) measure="$2"; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) tag="$1" ;;
  esac
  shift
done
if [ -z "$tag" ]; then
  if [ "$browser" = 1 ]; then tag=gleaner-browser:dev; else tag=gleaner:dev; fi
fi
base="${GLEANER_BASE_IMAGE:-gleaner-base:bookworm}"
browser_base="${GLEANER_BROWSER_BASE:-gleaner-browser-base:bookworm}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

say() { printf '==> %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }

docker info >/dev/null 2>&1 || { echo "scripts/image.sh: no Docker engine answers 'docker info'" >&2; exit 1; }

# Without buildx the client must be told to use the legacy builder, which this
# Dockerfile supports (its stage order keeps `--target host` off the Rust stage).
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

# ---- 1. the base image ---------------------------------------------------------
if [ "${GLEANER_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$base" >/dev/null 2>&1; then
  say "base image $base exists: reused"
else
  start=$(now_ms)
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  root=$(mktemp -d)
  trap '$SUDO rm -rf "$root"' EXIT
  say "debootstrap --variant=minbase bookworm (this takes a few minutes)"
  # shellcheck disable=SC2086 # the mirror is optional: no argument means debootstrap's default
  $SUDO debootstrap --variant=minbase --include=busybox bookworm "$root/rootfs" ${GLEANER_DEBIAN_MIRROR:-} >"$root/debootstrap.log" 2>&1 \
    || { tail -n 30 "$root/debootstrap.log" >&2; exit 1; }
  # What a slim image drops: package lists, caches, documentation.
  $SUDO rm -rf "$root"/rootfs/var/lib/apt/lists/* "$root"/rootfs/var/cache/apt/*.bin \
    "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/usr/share/doc/* \
    "$root"/rootfs/usr/share/man/* "$root"/rootfs/usr/share/info/* "$root"/rootfs/var/log/*.log
  say "docker import as $base"
  $SUDO tar --numeric-owner -C "$root/rootfs" --exclude='./dev/*' --exclude='./proc/*' \
      --exclude='./sys/*' -cf - . \
    | docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm" - "$base" >/dev/null
  $SUDO rm -rf "$root"
  trap - EXIT
  say "base image built in $(( ($(now_ms) - start) / 1000 )) s"
fi
# ---- 1b. the browser base: the base plus Debian's Chromium, once ---------------
# Built from the Dockerfile's `browser-base` stage (apt-get inside the build),
# tagged and reused while it exists, like the base.
if [ "$browser" = 1 ]; then
  if [ "${GLEANER_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$browser_base" >/dev/null 2>&1; then
    say "browser base image $browser_base exists: reused"
  else
    start=$(now_ms)
    say "docker build --target browser-base (BASE=$base) -t $browser_base: apt-get install chromium"
    # The legacy builder builds the stages before the target too: the `host`
    # stage wants a binary, and a placeholder serves.
    empty=$(mktemp -d); mkdir -p "$empty/target/release"; : >"$empty/target/release/gleaner"
    docker build -q -f Dockerfile --target browser-base --build-arg "BASE=$base" \
      -t "$browser_base" "$empty" >/dev/null
    rm -rf "$empty"
    say "browser base image built in $(( ($(now_ms) - start) / 1000 )) s"
  fi
fi
[ "$base_only" = 1 ] && exit 0

# ---- 2. the binary -------------------------------------------------------------
if [ -n "${GLEANER_BINARY:-}" ]; then
  bin="$GLEANER_BINARY"
else
  say "cargo build --release --locked"
  cargo build --release --locked --bin gleaner
  bin="${CARGO_TARGET_DIR:-target}/release/gleaner"
fi

# ---- 3. the runtime stage on the base, with the host binary ---------------------
# A build context of just the binary (the repository's target/ is gigabytes),
# laid out as the Dockerfile's `host` stage expects. Debug line tables are
# dropped (symbols stay, so backtraces still name functions).
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/target/release"
if command -v objcopy >/dev/null 2>&1; then
  objcopy --strip-debug "$bin" "$ctx/target/release/gleaner"
else
  cp "$bin" "$ctx/target/release/gleaner"
fi
target=host
if [ "$browser" = 1 ]; then target=browser-host; base="$browser_base"; fi
say "docker build --target $target (BASE=$base) -t $tag"
start=$(now_ms)
docker build -q -f Dockerfile --target "$target" --build-arg "BASE=$base" -t "$tag" "$ctx" >/dev/null
say "image built in $(( $(now_ms) - start )) ms"
size=$(docker image inspect -f '{{.Size}}' "$tag")
base_size=$(docker image inspect -f '{{.Size}}' "$base")
say "$tag: $((size / 1000000)) MB (base $base: $((base_size / 1000000)) MB)"

# ---- optional: start to /readyz ------------------------------------------------
if [ "$measure" -gt 0 ]; then
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for i in $(seq "$measure"); do
    name="gleaner-measure-$$-$i"
    start=$(now_ms)
    docker run -d --name "$name" -p 127.0.0.1::8080 -e GLEANER_ADMIN_TOKEN="$token" "$tag" >/dev/null
    port=$(docker port "$name" 8080/tcp | head -n1)
    ready=""
    for _ in $(seq 300); do
      if curl -sf --max-time 1 "http://$port/readyz" >/dev/null 2>&1; then ready=$(now_ms); break; fi
      sleep 0.02
    done
    docker rm -f -v "$name" >/dev/null
    if [ -z "$ready" ]; then echo "run $i: not ready within the deadline" >&2; exit 1; fi
    echo "run $i: docker run to /readyz 200 in $((ready - start)) ms"
  done
fi
