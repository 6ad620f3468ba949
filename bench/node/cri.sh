#!/bin/bash
# bench/node/cri.sh: pods through containerd 1.6's CRI plugin, as the kubelet
# starts them (RunPodSandbox -> CreateContainer -> StartContainer -> running),
# host network:
#   (a) runtime io.containerd.runc.v2, overlayfs snapshotter, the OCI sample
#       image already in containerd (imported);
#   (b) runtime io.containerd.kangaroo.v2, the kangaroo snapshotter, the
#       Kangaroo sample image pulled lazily (CRI PullImage from a
#       docker-registry on 127.0.0.1) with an empty chunk cache.
# containerd 1.6's CRI takes one snapshotter for all handlers, so (a) and (b)
# run on two containerd instances that differ only in that setting, in the
# same run, alternating.
#
#   bench/node/cri.sh [RUNS] [BURST]   (KANGAROO_BIN, default .build/release/kangaroo)
#
# Reports the time from RunPodSandbox to the container running for one pod
# (median and p95 over RUNS, default 10) and for BURST pods (default 50)
# started at once: median, p95 and pods/s (BURST / wall time).
set -euo pipefail
RUNS=${1:-10}
BURST=${2:-50}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
K=${KANGAROO_BIN:-$HERE/.build/release/kangaroo}
[ -x "$K" ] || { echo "build first: swift build -c release" >&2; exit 1; }
BIN=$(dirname "$K")
IMAGES=${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}
[ -d "$IMAGES/sample" ] || bash "$HERE/scripts/testimages/build-all.sh" >/dev/null
BURSTPY=$HERE/bench/node/cri-burst.py
W=$(mktemp -d /tmp/kangaroo-bench-cri-XXXXXX)
PIDS=()
cleanup() {
    set +e
    for s in a b; do [ -S $W/$s/sock ] && python3 "$HERE/scripts/cri-pod.py" $W/$s/sock --remove-all >/dev/null 2>&1; done
    pkill -TERM -f "kangaroo node --shim-socket $W/" 2>/dev/null
    for p in "${PIDS[@]}"; do kill $p 2>/dev/null; wait $p 2>/dev/null; done
    sleep 0.5
    grep " $W/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$W" /tmp/kangaroo-bench-cri-logs
}
trap cleanup EXIT
# Runtime state on tmpfs, as /run is on a node (containerd's state, the
# node daemon's task records and journals; runc's shims keep theirs in
# containerd's state).
mkdir -p $W/run && mount -t tmpfs -o mode=0711,size=512m kangaroo-bench $W/run

# A docker-registry on 127.0.0.1 with the Kangaroo sample image.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p $W/registry
cat > $W/registry/config.yml <<CFG
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/registry/data}}
http: {addr: 127.0.0.1:$PORT}
CFG
docker-registry serve $W/registry/config.yml >$W/registry/log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/v2/ >/dev/null && break; sleep 0.1; done
LAZY=127.0.0.1:$PORT/bench/sample:kangaroo
"$K" image convert --quiet --store $W/store oci:$IMAGES/sample:latest $LAZY >/dev/null

# Two containerds: (a) overlayfs, (b) the kangaroo snapshotter of a node daemon.
start_containerd() {  # name snapshotter
    local d=$W/$1
    mkdir -p $d
    local proxy=""
    [ $2 = kangaroo ] && proxy="[proxy_plugins.kangaroo]
  type = \"snapshot\"
  address = \"$d/snapshotter.sock\""
    cat > $d/config.toml <<CFG
version = 2
root = "$d/root"
state = "$W/run/$1/containerd"
[grpc]
  address = "$d/sock"
[ttrpc]
  address = "$d/sock.ttrpc"
$proxy
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kangaroo.test/pause:pause"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$2"
    disable_snapshot_annotations = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kangaroo]
      runtime_type = "io.containerd.kangaroo.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
CFG
    local env=(PATH=$BIN:$PATH KANGAROO_BIN=$K KANGAROO_SHIM_SOCKET=$d/shim.sock KANGAROO_NODE_STATE=$W/run/$1/node
               KANGAROO_NODE_ROOT=$d/noderoot KANGAROO_SNAPSHOTTER_SOCKET=$d/snapshotter.sock)
    if [ $2 = kangaroo ]; then
        env "${env[@]}" setsid "$K" node --shim-socket $d/shim.sock --log-level warning </dev/null >$d/node.log 2>&1 &
        for _ in $(seq 100); do [ -S $d/snapshotter.sock ] && [ -S $d/shim.sock ] && break; sleep 0.05; done
    fi
    env "${env[@]}" containerd --config $d/config.toml >$d/containerd.log 2>&1 &
    PIDS+=($!)
    echo $! > $d/containerd.pid
    for _ in $(seq 200); do [ -S $d/sock.ttrpc ] && ctr --address $d/sock version >/dev/null 2>&1 && break; sleep 0.05; done
    tar -C $IMAGES/pause -cf $d/pause.tar .
    ctr --address $d/sock -n k8s.io images import --snapshotter $2 --base-name kangaroo.test/pause $d/pause.tar >/dev/null
}
start_containerd a overlayfs
start_containerd b kangaroo
tar -C $IMAGES/sample -cf $W/sample.tar .
ctr --address $W/a/sock -n k8s.io images import --base-name kangaroo.test/sample $W/sample.tar >/dev/null
OCI=kangaroo.test/sample:latest
PULL=$(python3 "$HERE/scripts/cri-pod.py" $W/b/sock --pull $LAZY)
PULL_MS=$(echo "$PULL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pull_ms"])')
# An empty chunk cache for (b), as on a node that pulls the image for the
# pod it is about to start: the image removed (its lazy mount, made at the
# pull, goes with it), the cache emptied, the image pulled again (the pull
# is not timed); the pod starts right after.
CONFIG=$(curl -sf -H "Accept: application/vnd.oci.image.manifest.v1+json" http://127.0.0.1:$PORT/v2/bench/sample/manifests/kangaroo \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')
clear_cache() {
    ctr --address $W/b/sock -n k8s.io images ls -q | grep -E "/bench/sample|^$CONFIG\$" \
        | xargs -r ctr --address $W/b/sock -n k8s.io images rm --sync >/dev/null 2>&1 || true
    for _ in $(seq 100); do grep -q " $W/b/noderoot/snapshotter/images/" /proc/self/mountinfo || break; sleep 0.05; done
    rm -rf $W/b/noderoot/cache
    python3 "$HERE/scripts/cri-pod.py" $W/b/sock --pull $LAZY >/dev/null
}

status() { "$K" node status --json --shim-socket $W/$1/shim.sock; }
mkdir -p $W/req
burst() {  # name handler image n -> JSON
    python3 "$BURSTPY" $W/$1/sock $2 $3 $4
}
# Warm-up: one pod each (daemons, page cache of the binaries).
burst a runc $OCI 1 >/dev/null
burst b kangaroo $LAZY 1 >/dev/null
: > $W/a.one; : > $W/b.one
for i in $(seq $RUNS); do
    burst a runc $OCI 1 >> $W/a.one
    clear_cache
    status b > $W/req/b$i.before
    burst b kangaroo $LAZY 1 >> $W/b.one
    status b > $W/req/b$i.after
done
clear_cache
# CPU time during each burst (2 vCPUs bound it): the machine's busy time,
# containerd's own (the shim binaries it starts and reaps included), and
# for (b) the node daemon's (supervisor, daemon, the image's mount server).
ticks() {  # pids... -> user+system clock ticks, children reaped included
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15 + $16 + $17}' /proc/$p/stat 2>/dev/null || echo 0))); done
    echo $t
}
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
node_pids() { { pgrep -f "kangaroo node( run)? .*--shim-socket $W/b/shim.sock"; pgrep -f "image mount .* $W/b/noderoot"; } | tr '\n' ' '; }
cpu_before() { echo "$(busy) $(ticks $(cat $W/$1/containerd.pid)) $(ticks $(node_pids))"; }
CA0=$(cpu_before a)
BA=$(burst a runc $OCI $BURST)
CA1=$(cpu_before a)
status b > $W/req/burst.before
CB0=$(cpu_before b)
BB=$(burst b kangaroo $LAZY $BURST)
CB1=$(cpu_before b)
status b > $W/req/burst.after
# The node daemon's own time answering containerd's task requests, per pod.
PAIRS=(); for i in $(seq $RUNS); do PAIRS+=($W/req/b$i.before $W/req/b$i.after); done
REQ1=$(python3 "$HERE/bench/node/requests.py" $RUNS "${PAIRS[@]}")
REQB=$(python3 "$HERE/bench/node/requests.py" $BURST $W/req/burst.before $W/req/burst.after)
python3 - "$W/a.one" "$W/b.one" "$BA" "$BB" "$PULL_MS" "$RUNS" "$BURST" "$REQ1" "$REQB" "$CA0" "$CA1" "$CB0" "$CB1" "$(getconf CLK_TCK)" <<'PY'
import json, sys, subprocess
def load(path, key="latencies_s"):
    out = []
    for line in open(path):
        out += json.loads(line)[key]
    return out
def med(v): v = sorted(v); return v[(len(v) - 1) // 2] * 1000
def p95(v): v = sorted(v); return v[min(len(v) - 1, int(len(v) * 0.95 + 0.999) - 1)] * 1000
a1, b1 = load(sys.argv[1]), load(sys.argv[2])
ba, bb = json.loads(sys.argv[3]), json.loads(sys.argv[4])
runs, n = int(sys.argv[6]), int(sys.argv[7])
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name:[[:space:]]*//p'"], capture_output=True, text=True).stdout.strip()
load_avg = open("/proc/loadavg").read().split()[0]
fdm = "on" if any(l.split()[2] == "cgroup2" and "favordynmods" in l.split()[3] for l in open("/proc/self/mounts")) else "off"
print("bench/node/cri.sh: %d single-pod runs each, alternating, then %d pods at once; %s, load %s, cgroup favordynmods %s" % (runs, n, cpu, load_avg, fdm))
print("Kangaroo image: CRI PullImage (manifest and config; the bootstrap and the mount follow in the background) %.0f ms" % float(sys.argv[5]))
print()
print("| measurement | (a) runc + overlayfs + OCI image | (b) kangaroo + kangaroo snapshotter + lazy image, empty cache | b / a |")
print("|---|---:|---:|---:|")
def row(name, x, y, fmt="%.0f"):
    print("| %s | %s | %s | %.2f |" % (name, fmt % x, fmt % y, y / x if x else float("nan")))
row("1 pod: RunPodSandbox to running, median ms", med(a1), med(b1))
row("1 pod: RunPodSandbox to running, p95 ms", p95(a1), p95(b1))
row("%d pods at once: per pod, median ms" % n, med(ba["latencies_s"]), med(bb["latencies_s"]))
row("%d pods at once: per pod, p95 ms" % n, p95(ba["latencies_s"]), p95(bb["latencies_s"]))
row("%d pods at once: pods/s" % n, ba["ok"] / ba["wall_s"], bb["ok"] / bb["wall_s"], "%.1f")
# Where a single pod's time goes: the three CRI calls, medians.
pa, pb = load(sys.argv[1], "phases_s"), load(sys.argv[2], "phases_s")
for j, name in enumerate(["RunPodSandbox", "CreateContainer", "StartContainer"]):
    row("1 pod: %s, median ms" % name, med([p[j] for p in pa]), med([p[j] for p in pb]))
for j, name in enumerate(["RunPodSandbox", "CreateContainer", "StartContainer"]):
    row("%d pods at once: %s, median ms" % (n, name), med([p[j] for p in ba["phases_s"]]), med([p[j] for p in bb["phases_s"]]))
r1, rb = json.loads(sys.argv[8]), json.loads(sys.argv[9])
def startup(r): return sum(v for m, v in r["per_unit_ms"].items() if m in ("Create", "Start", "Connect", "State"))
print("| 1 pod: of which (b)'s node daemon answering Create and Start, mean ms per pod | | %.1f | |" % startup(r1))
print("| %d pods at once: (b)'s node daemon answering Create and Start, mean ms per pod (concurrent) | | %.1f | |" % (n, startup(rb)))
# CPU per pod during the bursts: machine busy time, containerd, the daemon.
tck = float(sys.argv[14])
ca0, ca1, cb0, cb1 = ([int(x) for x in sys.argv[i].split()] for i in range(10, 14))
def per_pod(t0, t1, j, ok): return (t1[j] - t0[j]) * 1000.0 / tck / max(ok, 1)
row("%d pods at once: CPU per pod, whole machine, ms" % n, per_pod(ca0, ca1, 0, ba["ok"]) / 1, per_pod(cb0, cb1, 0, bb["ok"]))
row("%d pods at once: CPU per pod, containerd (with the shim binaries it starts), ms" % n, per_pod(ca0, ca1, 1, ba["ok"]), per_pod(cb0, cb1, 1, bb["ok"]))
print("| %d pods at once: CPU per pod, (b)'s node daemon, supervisor and mount server, ms | | %.0f | |" % (n, per_pod(cb0, cb1, 2, bb["ok"])))
print()
print("(b) 1 pod, the daemon's time per pod by task method, start and teardown (ms, Wait left out): "
      + ", ".join("%s %.2f" % kv for kv in r1["per_unit_ms"].items()))
for name, b in (("a", ba), ("b", bb)):
    if b["errors"] or b["ok"] != n:
        print("(%s) %d of %d pods ran; errors: %s" % (name, b["ok"], n, b["errors"]))
PY
