#!/bin/bash
# containerd's snapshotter conformance suite against containerd's overlayfs
# snapshotter and Kangaroo's snapshotter, side by side (see
# docs/CONTAINERD.md). Needs root. Installs Go 1.19 and containerd's Go
# source from Debian (GOPATH mode, nothing downloaded from elsewhere), then
# prints one line per test: NAME overlayfs kangaroo.
#   KANGAROO_BIN=.build/release/kangaroo bash scripts/snapshotter-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KANGAROO_BIN:-$PWD/.build/release/kangaroo}
[ -x "$BIN" ] || { echo "no kangaroo binary at $BIN (build it or set KANGAROO_BIN)" >&2; exit 1; }
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-github-containerd-containerd-dev >/dev/null
fi
W=$(mktemp -d /tmp/kangaroo-snapshotter-suite.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
mkdir -p "$W/gopath/src/kangaroo/suite"
cp scripts/snapshotter-suite/suite_test.go "$W/gopath/src/kangaroo/suite/"
cd "$W/gopath/src/kangaroo/suite"
set +e
GO111MODULE=off GOPATH="$W/gopath:/usr/share/gocode" GOCACHE="$W/cache" GOFLAGS=-mod=mod KANGAROO_BIN="$BIN" \
    go test -v -count=1 -timeout 20m . > "$W/out.txt" 2>&1
set -e
# One row per test of the suite: its result under each snapshotter.
awk '
/^    --- (PASS|FAIL|SKIP): Test(Overlayfs|Kangaroo)\// {
    split($3, p, "/"); name = p[2]; impl = (p[1] == "TestOverlayfs") ? "o" : "k"
    r[name, impl] = $2; seen[name] = 1
}
END {
    printf "%-36s %-10s %-10s\n", "test", "overlayfs", "kangaroo"
    n = 0
    for (t in seen) names[++n] = t
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (names[j] < names[i]) { x = names[i]; names[i] = names[j]; names[j] = x }
    for (i = 1; i <= n; i++) { t = names[i]; printf "%-36s %-10s %-10s\n", t, r[t, "o"], r[t, "k"] }
}' "$W/out.txt" | sed 's/--- //g; s/://g'
# The suite's assertion messages of kangaroo's failures (output of the
# parallel subtests is labelled by their "=== CONT" lines).
if grep -q "^--- FAIL: TestKangaroo" "$W/out.txt"; then
    echo "kangaroo failures:" >&2
    awk '/^=== (RUN|CONT|PAUSE) / {t = $3} /^ +testsuite[a-z_]*\.go:[0-9]+:/ && t ~ /^TestKangaroo/ {print t ": " $0}' "$W/out.txt" | head -40 >&2
fi
