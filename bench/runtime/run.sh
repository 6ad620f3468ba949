#!/bin/bash
# bench/runtime: kangaroo-runtime against crun and runc on one bundle.
#
#   bench/runtime/run.sh [RUNS] [KANGAROO_RUNTIME_BINARY]
#
# Measures, per runtime: `run` of /bin/true; `create`, `start` and `delete`
# separately; 50 and 200 concurrent `run -d` of sleep containers (wall time
# until all are running; median of KANGAROO_BENCH_ROUNDS rounds, default 5,
# the runtimes taking turns in each round, as one round on a shared machine
# is mostly noise); `--version` (process start). Reports median and p95 over
# RUNS (default 50) runs, with hyperfine.
#
# Debian's crun 1.8 refuses this host's hybrid cgroup layout, so the whole
# benchmark runs inside a private mount namespace with /sys/fs/cgroup/unified
# unmounted; all three runtimes see the same (cgroup v1) layout.
# Needs root, hyperfine, jq and scripts/runtime-test-deps.sh.
set -euo pipefail
RUNS=${1:-50}
ROUNDS=${KANGAROO_BENCH_ROUNDS:-5}   # rounds of the concurrent rows (median reported)
HERE=$(cd "$(dirname "$0")/../.." && pwd)
KR=${2:-$HERE/.build/release/kangaroo-runtime}   # the README build (swift build -c release)
case $KR in /*) ;; *) KR=$PWD/$KR;; esac  # make_bundle runs it from another directory
ROOTFS=/var/lib/kangaroo-test/rootfs

if [ "${KANGAROO_BENCH_INNER:-}" != 1 ]; then
    [ -x "$KR" ] || { echo "build first: swift build -c release (as scripts/demo.sh does)" >&2; exit 1; }
    "$HERE/scripts/runtime-test-deps.sh" >/dev/null
    exec unshare -m --propagation private env KANGAROO_BENCH_INNER=1 "$0" "$RUNS" "$KR"
fi
umount /sys/fs/cgroup/unified 2>/dev/null || true

WORK=$(mktemp -d /tmp/kangaroo-test-bench-XXXXXX)
# crun 1.8 also makes a directory (with a cgroup.procs file) per container in
# the tmpfs under the unmounted /sys/fs/cgroup/unified and never removes it.
clean_unified() {
    mountpoint -q /sys/fs/cgroup/unified && return
    for d in /sys/fs/cgroup/unified/bench-*; do [ -d "$d" ] && rm -f "$d/cgroup.procs" && rmdir "$d"; done 2>/dev/null || true
}
trap 'for r in kr crun runc; do for id in $(ls $WORK/root-$r 2>/dev/null); do bin_for $r --root $WORK/root-$r delete -f $id >/dev/null 2>&1 || true; done; done; clean_unified; rm -rf $WORK' EXIT
bin_for() { local r=$1; shift; case $r in kr) "$KR" "$@";; crun) crun "$@";; runc) runc "$@";; esac; }
binary() { case $1 in kr) echo "$KR";; crun) command -v crun;; runc) command -v runc;; esac; }

make_bundle() { # dir args-json
    mkdir -p "$1"
    (cd "$1" && "$KR" spec)
    jq --arg rootfs "$ROOTFS" --argjson args "$2" \
       '.root.path=$rootfs | .process.terminal=false | .process.args=$args' "$1/config.json" > "$1/c" && mv "$1/c" "$1/config.json"
}
make_bundle "$WORK/true" '["/bin/true"]'
make_bundle "$WORK/sleep" '["sleep","1000"]'

stats() { # hyperfine json -> "median p95" in ms
    jq -r '.results[0].times | sort | [ .[(length/2|floor)], .[((length*0.95)|floor)] ] | map(. * 1000 * 100 | round / 100) | "\(.[0]) \(.[1])"' "$1"
}
row() { printf '| %-28s | %-9s | %8s | %8s |\n' "$1" "$2" "$3" "$4"; }

echo "kangaroo-runtime bench: $RUNS runs each ($ROUNDS rounds of the concurrent rows), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), kernel $(uname -r)"
echo
row "measurement" "runtime" "median" "p95"
row "---" "---" "---:" "---:"
for r in kr crun runc; do
    B=$(binary $r); R=$WORK/root-$r; mkdir -p $R
    name=$([ $r = kr ] && echo kangaroo || echo $r)
    hyperfine -N -w 3 -r "$RUNS" --export-json $WORK/v.json "$B --version" >/dev/null 2>&1
    row "--version" "$name" $(stats $WORK/v.json)
    i=0
    hyperfine -N -w 3 -r "$RUNS" --export-json $WORK/run.json \
        "$B --root $R run --bundle $WORK/true bench-run" >/dev/null 2>&1
    row "run /bin/true" "$name" $(stats $WORK/run.json)
    hyperfine -N -w 2 -r "$RUNS" --export-json $WORK/create.json \
        --prepare "sh -c '$B --root $R delete -f bench-c >/dev/null 2>&1; true'" \
        "$B --root $R create --bundle $WORK/sleep bench-c" >/dev/null 2>&1
    row "create" "$name" $(stats $WORK/create.json)
    hyperfine -N -w 2 -r "$RUNS" --export-json $WORK/start.json \
        --prepare "sh -c '$B --root $R delete -f bench-c >/dev/null 2>&1; $B --root $R create --bundle $WORK/true bench-c'" \
        "$B --root $R start bench-c" >/dev/null 2>&1
    row "start" "$name" $(stats $WORK/start.json)
    hyperfine -N -w 2 -r "$RUNS" --export-json $WORK/delete.json \
        --prepare "sh -c '$B --root $R delete -f bench-c >/dev/null 2>&1; $B --root $R create --bundle $WORK/sleep bench-c; $B --root $R start bench-c; $B --root $R kill bench-c KILL; sleep 0.05'" \
        "$B --root $R delete bench-c" >/dev/null 2>&1
    row "delete (stopped)" "$name" $(stats $WORK/delete.json)
    $B --root $R delete -f bench-c >/dev/null 2>&1 || true
done
# Concurrent starts: the three runtimes take turns in every round, so that a
# change in the background load hits them alike.
declare -A walls ok
for n in 50 200; do
    for round in $(seq 1 "$ROUNDS"); do
        for r in kr crun runc; do
            B=$(binary $r); R=$WORK/root-$r
            start=$(date +%s%N)
            seq 1 $n | xargs -P $n -I{} $B --root $R run -d --bundle $WORK/sleep bench-s{} >/dev/null 2>&1
            end=$(date +%s%N)
            got=$($B --root $R list -q 2>/dev/null | grep -c '^bench-s' || true)
            [ "$got" -lt "${ok[$r$n]:-$n}" ] && ok[$r$n]=$got
            walls[$r$n]="${walls[$r$n]:-} $(( (end - start) / 1000000 ))"
            seq 1 $n | xargs -P 8 -I{} $B --root $R delete -f bench-s{} >/dev/null 2>&1 || true
            sleep 2  # let the kernel finish tearing these network namespaces down
        done
    done
    for r in kr crun runc; do
        median=$(printf '%s\n' ${walls[$r$n]} | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
        row "$n concurrent run -d (total)" "$([ $r = kr ] && echo kangaroo || echo $r)" "$median" "ok=${ok[$r$n]:-$n}"
    done
done
