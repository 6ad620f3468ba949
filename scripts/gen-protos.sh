#!/bin/bash
# Regenerates Sources/KangarooShim/Generated from containerd 1.6's .proto files
# (Debian's golang-github-containerd-containerd-dev) and the ttrpc envelope in
# Sources/KangarooShim/Protos. Run once by hand when the protos change; the
# generated code is committed, so builds need neither protoc nor the plugin.
#   scripts/gen-protos.sh PROTOC_GEN_SWIFT
# PROTOC_GEN_SWIFT: the protoc-gen-swift of the swift-protobuf version in
# Package.swift (swift build -c release --product protoc-gen-swift in a
# checkout of it). gogoproto and containerd's fieldpath options, which only
# steer Go code generation, are stripped first.
set -euo pipefail
PLUGIN=${1:?usage: scripts/gen-protos.sh PATH_TO_protoc-gen-swift}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC=/usr/share/gocode/src
[ -f $SRC/github.com/containerd/containerd/runtime/v2/task/shim.proto ] || {
    echo "install golang-github-containerd-containerd-dev and protobuf-compiler first" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FILES=(
    github.com/containerd/containerd/runtime/v2/task/shim.proto
    github.com/containerd/containerd/api/types/mount.proto
    github.com/containerd/containerd/api/types/task/task.proto
    github.com/containerd/containerd/api/events/task.proto
    github.com/containerd/containerd/api/services/ttrpc/events/v1/events.proto
    github.com/containerd/cgroups/stats/v1/metrics.proto
)
for f in "${FILES[@]}"; do
    mkdir -p "$WORK/$(dirname "$f")"
    # Drop weak imports and every (gogoproto.*) / (containerd.plugin.*) option.
    sed -E -e '/^import weak /d' -e '/^import .*(gogo|fieldpath)\.proto";/d' \
        -e '/^[[:space:]]*option \((gogoproto|containerd\.plugin)\.[a-z_]+\)/d' \
        -e 's/ \[\((gogoproto|containerd\.plugin)\.[^]]*\]//g' \
        "$SRC/$f" > "$WORK/$f"
done
cp "$HERE/Sources/KangarooShim/Protos/ttrpc.proto" "$WORK/ttrpc.proto"
OUT=$HERE/Sources/KangarooShim/Generated
rm -f "$OUT"/*.pb.swift
protoc --plugin=protoc-gen-swift="$PLUGIN" -I "$WORK" -I /usr/include \
    --swift_opt=Visibility=Public --swift_opt=FileNaming=PathToUnderscores \
    --swift_out="$OUT" "${FILES[@]}" ttrpc.proto
ls "$OUT"
