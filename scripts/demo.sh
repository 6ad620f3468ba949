#!/bin/bash
# The README's main job (command 1): installs what is needed, builds
# Kangaroo, builds the embedded sample image (busybox + an app layer, no
# registry needed), converts it into the local store, inspects and verifies
# it, mounts it with the kernel's EROFS driver and runs its command.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
step "dependencies and build"
bash scripts/deps.sh
bash scripts/node-tuning.sh
mkdir -p .build
swift build -c release > .build/release-build.log 2>&1 || { tail -40 .build/release-build.log; exit 1; }
BIN=$PWD/.build/release/kangaroo
IMAGES=${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}
export KANGAROO_STORE=${KANGAROO_STORE:-/var/lib/kangaroo/store}
bash scripts/testimages/build-all.sh --sample-only

step "convert oci:$IMAGES/sample:latest -> local store ($KANGAROO_STORE) as sample:latest"
start=$(date +%s%N)
"$BIN" image convert "oci:$IMAGES/sample:latest" sample:latest
echo "converted in $(( ($(date +%s%N) - start) / 1000000 )) ms"

step "inspect"
"$BIN" image inspect sample:latest

step "check (bootstrap digest, ToC, every chunk)"
"$BIN" image check sample:latest

step "materialize and mount with the kernel's EROFS driver, run the image's command"
work=$(mktemp -d /tmp/kangaroo-demo.XXXXXX)
cleanup() { umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" image materialize --mount "$work/mnt" sample:latest "$work/erofs"
chroot "$work/mnt" /app/hello.sh

step "lazy mount (FUSE, empty chunk cache): only the bootstrap before ready, data on first read"
"$BIN" image umount "$work/lazy" >/dev/null 2>&1 || true
cleanup() { "$BIN" image umount "$work/lazy" >/dev/null 2>&1 || true; umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
mkdir -p "$work/lazy"
start=$(date +%s%N)
"$BIN" image mount --daemon --mode fuse --prefetch none --cache "$work/cache" sample:latest "$work/lazy" >/dev/null
chroot "$work/lazy" /app/hello.sh
echo "time to ready (mount + run): $(( ($(date +%s%N) - start) / 1000000 )) ms"
sleep 1.2  # the mount daemon writes its statistics once a second
"$BIN" image stats "$work/lazy" | grep -E "^(fetched|cached)" || true
"$BIN" image umount "$work/lazy" >/dev/null

step "kangaroo run --rm sample:latest (cached EROFS mount + overlayfs + kangaroo-runtime)"
start=$(date +%s%N)
"$BIN" run --rm --time sample:latest
echo "kangaroo run took $(( ($(date +%s%N) - start) / 1000000 )) ms (wall clock, including the CLI's start)"
