#!/bin/sh
# Builds and runs the libFuzzer harness for the Kangaroo bootstrap parser.
#   FUZZ_SECONDS=600 fuzz/run-bootstrap.sh
# The parser sources are compiled directly with swiftc (-sanitize=fuzzer,address);
# they depend on nothing but the standard library.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${FUZZ_OUT:-$ROOT/.build-fuzz-bootstrap}
SECONDS_TO_RUN=${FUZZ_SECONDS:-60}
mkdir -p "$OUT/corpus" "$OUT/artifacts"
SRC=$ROOT/Sources/KangarooImage
PARSER="$SRC/ImageError.swift $SRC/ByteIO.swift $SRC/EROFSFormat.swift $SRC/FileTree.swift $SRC/BootstrapWriter.swift \
  $SRC/KangarooExtension.swift $SRC/Bootstrap.swift $SRC/Bootstrap+Inode.swift $SRC/Bootstrap+Directory.swift"

# Seed corpus: committed seeds plus fresh ones from the current writer.
swiftc -O -parse-as-library -module-name SeedGen $PARSER "$ROOT/fuzz/bootstrap/seedgen.swift" -o "$OUT/seedgen"
"$OUT/seedgen" "$OUT/corpus" >/dev/null
cp "$ROOT"/fuzz/bootstrap/corpus/* "$OUT/corpus/" 2>/dev/null || true

swiftc -O -g -sanitize=fuzzer,address -parse-as-library -module-name FuzzBootstrap $PARSER \
  "$ROOT/fuzz/bootstrap/harness.swift" -o "$OUT/fuzz-bootstrap"

exec "$OUT/fuzz-bootstrap" "$OUT/corpus" -max_len=131072 -max_total_time="$SECONDS_TO_RUN" \
  -artifact_prefix="$OUT/artifacts/" -print_final_stats=1
