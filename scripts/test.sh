#!/bin/bash
# The whole test suite, integration tests included (README command 2).
# Installs what it needs (Debian packages, test images), idempotently, then
# runs `swift test` with the integration tests enabled (they need root, the
# kernel's EROFS/FUSE/overlayfs, and start their own docker-registry on
# 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== $*" >&2; }
step "dependencies"
bash scripts/deps.sh
sh scripts/runtime-test-deps.sh >/dev/null
bash scripts/node-tuning.sh
step "test images"
bash scripts/testimages/build-all.sh
step "build"
mkdir -p .build
swift build --build-tests > .build/test-build.log 2>&1 || { tail -60 .build/test-build.log >&2; echo "build failed" >&2; exit 1; }
step "tests"
export KANGAROO_INTEGRATION=1
export KANGAROO_TESTIMAGES=${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}
export KANGAROO_BIN=$PWD/.build/debug/kangaroo
export KANGAROO_RUNTIME_BIN=$PWD/.build/debug/kangaroo-runtime
swift test --skip-build "$@"
