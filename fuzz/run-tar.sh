#!/bin/bash
# Builds the libFuzzer harness for LayerReader (fuzz/tar/FuzzTar.swift plus the
# reader's sources from Sources/KangarooOCI) with ASan and runs it on the seed
# corpus fuzz/tar/corpus for ${FUZZ_SECONDS:-600} seconds.
#   FUZZ_SECONDS=60 fuzz/run-tar.sh           # shorter run
#   fuzz/run-tar.sh CRASHFILE                 # reproduce a crash
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${FUZZ_OUT:-$root/.build-fuzz/tar}"
mkdir -p "$out/work-corpus" "$out/artifacts"
src="$root/Sources/KangarooOCI"
swiftc -sanitize=fuzzer,address -parse-as-library -O -g \
    -module-name FuzzTar \
    -I "$root/Sources/CArchive" \
    "$root/fuzz/tar/FuzzTar.swift" \
    "$src/LayerReader.swift" "$src/LayerReader+Entry.swift" \
    "$src/LayerEntry.swift" "$src/LayerEntry+Path.swift" "$src/OCIError.swift" \
    -larchive -o "$out/fuzz-tar" 2> >(grep -v "Cannot export local symbol" >&2)
if [ $# -gt 0 ]; then
    exec "$out/fuzz-tar" "$@"
fi
# Fresh corpus entries go to the work corpus; the seeds stay untouched.
exec "$out/fuzz-tar" "$out/work-corpus" "$root/fuzz/tar/corpus" \
    -max_total_time="${FUZZ_SECONDS:-600}" -max_len=65536 -rss_limit_mb=2048 \
    -timeout=20 -artifact_prefix="$out/artifacts/" -print_final_stats=1
