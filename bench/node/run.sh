#!/bin/bash
# bench/node: containerd with runc's shim against the kangaroo node daemon,
# side by side in one private containerd (Debian's 1.6):
#   runc:     io.containerd.runc.v2, overlayfs, the OCI sample image (imported)
#   kangaroo: io.containerd.kangaroo.v2, overlayfs, the same OCI image
#   lazy:     io.containerd.kangaroo.v2, the kangaroo snapshotter, the Kangaroo
#             sample image (ctr-remote rpull from a docker-registry on
#             127.0.0.1), pulled again with an empty chunk cache before
#             every run (the pull mounts it; not timed)
#
#   bench/node/run.sh [RUNS]      (KANGAROO_BIN, default .build/release/kangaroo)
#
# Reports, per column: `ctr run --rm IMAGE ID /bin/true` (median and p95
# over RUNS, default 30, the columns alternating run by run), and host
# memory per idle task: the PSS of every shim / daemon / lazy-mount process
# divided by the number of `sleep` tasks, with 1 and 10 tasks (and 50 with
# N50=1). The CRI figures are bench/node/cri.sh.
set -euo pipefail
RUNS=${1:-30}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
K=${KANGAROO_BIN:-$HERE/.build/release/kangaroo}
[ -x "$K" ] || { echo "build first: swift build -c release" >&2; exit 1; }
BIN=$(dirname "$K")
[ -x "$BIN/containerd-shim-kangaroo-v2" ] || { echo "no containerd-shim-kangaroo-v2 next to $K" >&2; exit 1; }
IMAGES=${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}
[ -d "$IMAGES/sample" ] || bash "$HERE/scripts/testimages/build-all.sh" --sample-only >/dev/null
W=$(mktemp -d /tmp/kangaroo-bench-node-XXXXXX)
CTRD_PID=
REG_PID=
cleanup() {
    set +e
    for id in $(ctr --address $W/sock task ls -q 2>/dev/null); do ctr --address $W/sock task kill -s KILL $id; done 2>/dev/null
    sleep 0.5
    for id in $(ctr --address $W/sock containers ls -q 2>/dev/null); do
        ctr --address $W/sock task delete -f $id >/dev/null 2>&1; ctr --address $W/sock containers rm $id >/dev/null 2>&1
    done
    pkill -TERM -f "kangaroo node --state $W/run/node" 2>/dev/null
    pkill -TERM -f "kangaroo node --shim-socket $W/shim.sock" 2>/dev/null
    [ -n "$REG_PID" ] && kill $REG_PID 2>/dev/null
    [ -n "$CTRD_PID" ] && kill $CTRD_PID 2>/dev/null && wait $CTRD_PID 2>/dev/null
    sleep 0.3
    grep " $W/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
# Runtime state on tmpfs, as /run is on a node (containerd's state, the
# node daemon's task records and journals; runc's shims keep theirs in
# containerd's state).
mkdir -p $W/run && mount -t tmpfs -o mode=0711,size=512m kangaroo-bench $W/run
cat > $W/config.toml <<CFG
version = 2
root = "$W/root"
state = "$W/run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/sock"
[ttrpc]
  address = "$W/sock.ttrpc"
[proxy_plugins.kangaroo]
  type = "snapshot"
  address = "$W/snap.sock"
CFG
NODE_ENV=(PATH=$BIN:$PATH KANGAROO_BIN=$K KANGAROO_SHIM_SOCKET=$W/shim.sock KANGAROO_NODE_STATE=$W/run/node
          KANGAROO_NODE_ROOT=$W/noderoot KANGAROO_SNAPSHOTTER_SOCKET=$W/snap.sock)
env "${NODE_ENV[@]}" setsid "$K" node --shim-socket $W/shim.sock --log-level warning </dev/null >$W/node.log 2>&1 &
for _ in $(seq 100); do [ -S $W/snap.sock ] && [ -S $W/shim.sock ] && break; sleep 0.05; done
env "${NODE_ENV[@]}" containerd --config $W/config.toml >$W/containerd.log 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do [ -S $W/sock.ttrpc ] && ctr --address $W/sock version >/dev/null 2>&1 && break; sleep 0.05; done
C="ctr --address $W/sock"
tar -C $IMAGES/sample -cf $W/sample.tar .
$C images import --index-name kangaroo.test/sample:latest $W/sample.tar >/dev/null
IMG=kangaroo.test/sample:latest
# The Kangaroo image in a docker-registry on 127.0.0.1, pulled lazily.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p $W/registry
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' \
    $W/registry/data $PORT > $W/registry/config.yml
docker-registry serve $W/registry/config.yml >$W/registry/log 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/v2/ >/dev/null && break; sleep 0.1; done
LAZY=127.0.0.1:$PORT/bench/sample:kangaroo
"$K" image convert --quiet --store $W/kstore oci:$IMAGES/sample:latest $LAZY >/dev/null
ctr-remote --address $W/sock image rpull --plain-http --snapshotter kangaroo $LAZY >/dev/null
RT_RUNC="--runtime io.containerd.runc.v2"
RT_K="--runtime io.containerd.kangaroo.v2"
RT_L="--runtime io.containerd.kangaroo.v2 --snapshotter kangaroo"
# An empty chunk cache before every lazy run, as on a node that pulls the
# image for the container it is about to start: the image removed (its lazy
# mount, made at the pull, goes with it), the cache emptied, the image
# pulled again (not timed).
clear_cache() {
    ctr --address $W/sock images rm --sync $LAZY >/dev/null 2>&1 || true
    for _ in $(seq 100); do grep -q " $W/noderoot/snapshotter/images/" /proc/self/mountinfo || break; sleep 0.05; done
    rm -rf $W/noderoot/cache
    ctr-remote --address $W/sock image rpull --plain-http --snapshotter kangaroo $LAZY >/dev/null
}
# Warm up all three.
$C run --rm $RT_RUNC $IMG warm-r true; $C run --rm $RT_K $IMG warm-k true; $C run --rm $RT_L $LAZY warm-l true

ms() { date +%s%N; }
: > $W/runc.ms; : > $W/kangaroo.ms; : > $W/lazy.ms
mkdir -p $W/req
for i in $(seq $RUNS); do
    t0=$(ms); $C run --rm $RT_RUNC $IMG r$i /bin/true; t1=$(ms); echo $(( (t1 - t0) / 1000 )) >> $W/runc.ms
    "$K" node status --json --shim-socket $W/shim.sock > $W/req/k$i.before
    t0=$(ms); $C run --rm $RT_K $IMG k$i /bin/true; t1=$(ms); echo $(( (t1 - t0) / 1000 )) >> $W/kangaroo.ms
    "$K" node status --json --shim-socket $W/shim.sock > $W/req/k$i.after
    clear_cache
    t0=$(ms); $C run --rm $RT_L $LAZY l$i /bin/true; t1=$(ms); echo $(( (t1 - t0) / 1000 )) >> $W/lazy.ms
done
stat_line() {  # median and p95 of microsecond samples, in ms
    sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.95+0.999)]; printf "%.1f %.1f", m/1000, p/1000}'
}
read rm rp <<<"$(stat_line $W/runc.ms)"
read km kp <<<"$(stat_line $W/kangaroo.ms)"
read lm lp <<<"$(stat_line $W/lazy.ms)"

# PSS of the processes that serve tasks: runc's shims, or the node daemon
# (supervisor and daemon), plus the image's mount server for the lazy image.
pss() {  # pids... -> total PSS in KiB
    local t=0 p v
    for p in "$@"; do v=$(awk '/^Pss:/ {s+=$2} END {print s+0}' /proc/$p/smaps_rollup 2>/dev/null || echo 0); t=$((t + v)); done
    echo $t
}
shim_pids() {
    case $1 in
        runc) pgrep -f "containerd-shim-runc-v2 -namespace default -id" -d ' ' || true ;;
        kangaroo) pgrep -f "kangaroo node( run)? .*--shim-socket $W/shim.sock" | tr '\n' ' ' || true ;;
        lazy) { pgrep -f "kangaroo node( run)? .*--shim-socket $W/shim.sock"; pgrep -f "image mount .* $W/noderoot" ; } | tr '\n' ' ' || true ;;
    esac
}
mem_row() {  # runtime count
    local r=$1 n=$2 rt
    local img=$IMG
    case $r in runc) rt=$RT_RUNC ;; kangaroo) rt=$RT_K ;; lazy) rt=$RT_L; img=$LAZY ;; esac
    for i in $(seq $n); do $C run -d $rt $img idle-$r-$i sleep 3600 >/dev/null; done
    sleep 1
    local total; total=$(pss $(shim_pids $r))
    for i in $(seq $n); do $C task kill -s KILL idle-$r-$i >/dev/null 2>&1; done
    sleep 0.5
    for i in $(seq $n); do $C task delete -f idle-$r-$i >/dev/null 2>&1; $C containers rm idle-$r-$i >/dev/null 2>&1; done
    awk -v t=$total -v n=$n 'BEGIN {printf "%.2f", t / n / 1024}'
}
COUNTS="1 10"
[ "${N50:-0}" = 1 ] && COUNTS="1 10 50"
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p')
FDM=$(grep -q "cgroup2 [^ ]*favordynmods" /proc/self/mounts && echo on || echo off)
echo "bench/node: $RUNS runs each, alternating; $(nproc) cores, $CPU, load $(cut -d' ' -f1 /proc/loadavg), cgroup favordynmods $FDM"
echo
ratio() { awk -v a=$1 -v b=$2 'BEGIN {printf "%.2f", a/b}'; }
echo "| measurement | runc shim, overlayfs, OCI image | kangaroo daemon, overlayfs, OCI image | kangaroo daemon + snapshotter, lazy image, empty cache | kangaroo / runc | lazy / runc |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| ctr run --rm /bin/true, median ms | $rm | $km | $lm | $(ratio $km $rm) | $(ratio $lm $rm) |"
echo "| ctr run --rm /bin/true, p95 ms | $rp | $kp | $lp | $(ratio $kp $rp) | $(ratio $lp $rp) |"
# Where the kangaroo column's time goes: the daemon's own time answering
# containerd's task requests (from `kangaroo node status`, taken around
# each run), the rest being ctr, containerd and the shim binary's start.
PAIRS=(); for i in $(seq $RUNS); do PAIRS+=($W/req/k$i.before $W/req/k$i.after); done
REQ=$(python3 "$HERE/bench/node/requests.py" $RUNS "${PAIRS[@]}")
field() { python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$REQ" "$1"; }
DT=$(field '"%.1f" % r["total_ms"]')
echo "| of which the node daemon answering containerd (mean ms per run) | | $DT | | | |"
echo "| of which ctr, containerd and the shim binary (median minus the daemon) | | $(awk -v a=$km -v b=$DT 'BEGIN {printf "%.1f", a-b}') | | | |"
for n in $COUNTS; do
    r=$(mem_row runc $n); k=$(mem_row kangaroo $n); l=$(mem_row lazy $n)
    echo "| PSS per idle task, $n task(s), MiB | $r | $k | $l | $(ratio $k $r) | $(ratio $l $r) |"
done
echo
echo "kangaroo column, the daemon's time per run by task method (ms): $(field '", ".join("%s %.2f" % kv for kv in r["per_unit_ms"].items())')"
