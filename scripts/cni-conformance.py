#!/usr/bin/env python3
"""Runs the CNI spec's call orders against a plugin and prints, per order,
what each call returned (exit status, CNI error code), as JSON: the
conformance table of docs/NETWORK.md, kangaroo-cni beside the reference
bridge plugin (tests compare the two).

    scripts/cni-conformance.py PLUGIN CONF.json PREFIX

PLUGIN is the plugin's executable, CONF its network configuration (one
plugin, not a list); PREFIX names the network namespaces this makes (and
removes). Every order runs on a fresh namespace, with container ids of
its own. CHECK gets the ADD's result as prevResult, as libcni passes it.
"""
import json
import subprocess
import sys

plugin, conf_path, prefix = sys.argv[1:4]
conf = json.load(open(conf_path))


def call(command, cid, netns, prev=None, stdin=None):
    c = dict(conf)
    if prev is not None:
        c["prevResult"] = prev
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if netns:
        env["CNI_NETNS"] = "/var/run/netns/" + netns
    r = subprocess.run([plugin], input=(stdin if stdin is not None else json.dumps(c)).encode(), env=env, capture_output=True)
    out = r.stdout.decode()
    try:
        j = json.loads(out) if out.strip() else {}
    except ValueError:
        j = {"unparsable": out[:200]}
    if r.returncode == 0:
        return "ok", j
    return "error %s" % j.get("code", "?") + ("" if j.get("msg") else " (no msg)"), j


def netns(name):
    subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


orders = {
    "ADD CHECK DEL": ["ADD", "CHECK", "DEL"],
    "ADD CHECK CHECK DEL": ["ADD", "CHECK", "CHECK", "DEL"],
    "ADD DEL DEL": ["ADD", "DEL", "DEL"],
    "ADD DEL ADD DEL": ["ADD", "DEL", "ADD", "DEL"],
    "DEL (never added)": ["DEL"],
    "ADD, namespace deleted, DEL": ["ADD", "rmns", "DEL"],
    "ADD, DEL without CNI_NETNS": ["ADD", "DEL-nons"],
    "ADD with malformed JSON": ["ADD-bad"],
    "ADD without CNI_NETNS": ["ADD-nons"],
    "ADD of a namespace that does not exist": ["ADD-nosuchns"],
    "CHECK of a container never added": ["CHECK-unknown"],
}
table = {}
for i, (name, steps) in enumerate(orders.items()):
    ns = netns("%s%d" % (prefix, i))
    cid = "conf%d" % i
    prev = None
    outcomes = []
    for step in steps:
        if step == "ADD":
            o, prev = call("ADD", cid, ns)
        elif step == "CHECK":
            o, _ = call("CHECK", cid, ns, prev=prev)
        elif step == "DEL":
            o, _ = call("DEL", cid, ns, prev=prev)
        elif step == "DEL-nons":
            o, _ = call("DEL", cid, None, prev=prev)
        elif step == "rmns":
            subprocess.run(["ip", "netns", "del", ns], check=True)
            o = "namespace deleted"
        elif step == "ADD-bad":
            o, _ = call("ADD", cid, ns, stdin='{"cniVersion": "1.0.0", "name": ')
        elif step == "ADD-nons":
            o, _ = call("ADD", cid, None)
        elif step == "ADD-nosuchns":
            o, _ = call("ADD", cid, "no-such-namespace-%s" % prefix)
        elif step == "CHECK-unknown":
            o, _ = call("CHECK", "never-" + cid, ns, prev={"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []})
        outcomes.append(o)
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    # Whatever an order left (a failed DEL): cleaned for the next one.
    call("DEL", cid, None)
    table[name] = outcomes
v, j = call("VERSION", "", None, stdin='{"cniVersion": "1.0.0"}')
table["VERSION"] = [v + " " + ",".join(j.get("supportedVersions", []))]
print(json.dumps(table, indent=1))
