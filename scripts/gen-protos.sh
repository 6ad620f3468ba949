#!/bin/bash
# Regenerates Sources/ContainerdAPI/Generated from containerd 1.6's .proto files
# (Debian's golang-github-containerd-containerd-dev) and the ttrpc envelope in
# Sources/ContainerdAPI/Protos. Run once by hand when the protos change; the
# generated code is committed, so builds need neither protoc nor the plugin.
#   scripts/gen-protos.sh PROTOC_GEN_SWIFT PROTOC_GEN_GRPC_SWIFT_2
# The plugins of the versions in Package.swift: in a checkout of
# grpc-swift-protobuf, `swift build --product protoc-gen-grpc-swift-2` and
# `swift build --product protoc-gen-swift` (about a minute each). The gRPC
# service code is generated for the snapshotter's Snapshots service only. gogoproto and containerd's fieldpath options, which only
# steer Go code generation, are stripped first.
set -euo pipefail
PLUGIN=${1:?usage: scripts/gen-protos.sh PATH_TO_protoc-gen-swift PATH_TO_protoc-gen-grpc-swift-2}
GRPC_PLUGIN=${2:?usage: scripts/gen-protos.sh PATH_TO_protoc-gen-swift PATH_TO_protoc-gen-grpc-swift-2}
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
    github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto
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
cp "$HERE/Sources/ContainerdAPI/Protos/ttrpc.proto" "$WORK/ttrpc.proto"
OUT=$HERE/Sources/ContainerdAPI/Generated
GRPC_OUT=$HERE/Sources/KangarooSnapshotter/Generated
rm -f "$OUT"/*.pb.swift "$GRPC_OUT"/*.grpc.swift
protoc --plugin=protoc-gen-swift="$PLUGIN" -I "$WORK" -I /usr/include \
    --swift_opt=Visibility=Public --swift_opt=FileNaming=PathToUnderscores \
    --swift_out="$OUT" "${FILES[@]}" ttrpc.proto
protoc --plugin=protoc-gen-grpc-swift-2="$GRPC_PLUGIN" -I "$WORK" -I /usr/include \
    --grpc-swift-2_opt=Visibility=Public,FileNaming=PathToUnderscores,Server=true,Client=true,ExtraModuleImports=ContainerdAPI \
    --grpc-swift-2_out="$GRPC_OUT" github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto
ls "$OUT" "$GRPC_OUT"
