#!/bin/bash
# Micro benchmark: fio reads of a 64 MiB deterministic file served from
# memory by KangarooFUSE (16 workers) versus the same file on tmpfs.
# Runs the FUSEBenchmark test (release build with testability) as root;
# prints one BENCH line per (job, filesystem, cold|warm page cache).
#
#   bench/fuse-read.sh
#   KANGAROO_FUSE_BENCH_FIO="--rw=read --bs=128k" bench/fuse-read.sh
#   SCRATCH=.build-bench bench/fuse-read.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${SCRATCH:-.build-fuse-bench}
command -v fio >/dev/null || { echo "fio is required (apt-get install fio)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (mounts FUSE and tmpfs)" >&2; exit 1; }
KANGAROO_INTEGRATION=1 KANGAROO_FUSE_BENCH=1 \
    swift test -c release -Xswiftc -enable-testing --scratch-path "$SCRATCH" \
    --filter 'KangarooFUSETests.FUSEBenchmark' 2>&1 | grep -E '^BENCH|✘|error:' || true
