#!/usr/bin/env python3
"""Time the node daemon spent answering containerd's task requests.

    requests.py UNITS BEFORE.json AFTER.json [BEFORE.json AFTER.json ...]

Each pair is `kangaroo node status --json` taken before and after some
work; the differences are summed and divided by UNITS (runs or pods).
Prints JSON: {"per_unit_ms": {METHOD: ms, ...}, "total_ms": ms, "calls": n}
for the containerd.task.v2.Task methods, Wait left out (it blocks until
the exit, so its time is the container's, not the daemon's).
"""
import json
import sys


def table(path):
    with open(path) as f:
        status = json.load(f)
    return {r["method"]: (r["count"], r["seconds"]) for r in status.get("requests", [])
            if r["service"] == "containerd.task.v2.Task" and r["method"] != "Wait"}


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2:
        sys.exit("usage: requests.py UNITS BEFORE.json AFTER.json [BEFORE.json AFTER.json ...]")
    units = float(sys.argv[1])
    seconds, calls = {}, 0
    for before, after in zip(sys.argv[2::2], sys.argv[3::2]):
        b, a = table(before), table(after)
        for method, (count, secs) in a.items():
            c0, s0 = b.get(method, (0, 0.0))
            if count > c0:
                seconds[method] = seconds.get(method, 0.0) + secs - s0
                calls += count - c0
    per = {m: round(s * 1000 / units, 2) for m, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    print(json.dumps({"per_unit_ms": per, "total_ms": round(sum(per.values()), 2), "calls": calls}))


if __name__ == "__main__":
    main()
