#!/usr/bin/env python3
"""Starts N pods at once through containerd's CRI plugin, as the kubelet
would (RunPodSandbox, CreateContainer, StartContainer, then the container
reported running), and prints one JSON object: per-pod seconds from
RunPodSandbox to the container running, and the wall time for all N.
Then stops and removes every pod it made.

    bench/node/cri-burst.py SOCKET HANDLER IMAGE N [CGROUP_PARENT] [--pod-network]

Host-network pods, or with --pod-network pods with network namespaces of
their own (the CNI plugins of containerd's conf_dir); the image must be in
containerd's k8s.io namespace already. PyPI's container-runtime-interface-api
and grpcio (scripts/deps.sh installs them).
"""
import json
import os
import shutil
import sys
import threading
import time

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc


def main():
    args = [a for a in sys.argv[1:] if a != "--pod-network"]
    network = cri.POD if "--pod-network" in sys.argv[1:] else cri.NODE
    sock, handler, image, n = args[0], args[1], args[2], int(args[3])
    cgroup_parent = args[4] if len(args) > 4 else ""
    channel = grpc.insecure_channel("unix://" + sock, options=[("grpc.max_concurrent_streams", 1000)])
    rt = cri_grpc.RuntimeServiceStub(channel)
    tag = "burst-%d" % int(time.time() * 1000)
    latencies = [None] * n
    phases = [None] * n  # (RunPodSandbox, CreateContainer, StartContainer) seconds
    errors = []
    pods = [None] * n

    def one(i):
        t0 = time.monotonic()
        step = "RunPodSandbox"
        try:
            cfg = cri.PodSandboxConfig(
                metadata=cri.PodSandboxMetadata(name="%s-%d" % (tag, i), uid="%s-%d-uid" % (tag, i), namespace="bench", attempt=0),
                log_directory="/tmp/kangaroo-bench-cri-logs/%s-%d" % (tag, i),
                linux=cri.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent, security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=cri.POD, ipc=cri.POD))))
            pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=cfg, runtime_handler=handler), timeout=300).pod_sandbox_id
            pods[i] = pod
            t1 = time.monotonic()
            step = "CreateContainer"
            ccfg = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c", attempt=0), image=cri.ImageSpec(image=image),
                                       command=["/bin/sleep", "3600"], log_path="c.log")
            cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg), timeout=300).container_id
            t2 = time.monotonic()
            step = "StartContainer %s" % cid
            rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=300)
            t3 = time.monotonic()
            phases[i] = (t1 - t0, t2 - t1, t3 - t2)
            step = "ContainerStatus %s" % cid
            st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid), timeout=60).status
            if st.state != cri.CONTAINER_RUNNING:
                raise RuntimeError("container %s is %s" % (cid, cri.ContainerState.Name(st.state)))
            latencies[i] = time.monotonic() - t0
        except Exception as e:  # reported, the other pods go on
            errors.append("pod %d (pod sandbox %s), %s: %s" % (i, pods[i], step, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    netns = []  # the pods' network namespaces (CRI's paths), for leak checks
    for pod in pods:
        if pod and network == cri.POD:
            try:
                st = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=60)
                info = json.loads(st.info.get("info", "{}"))
                netns += [n.get("path") for n in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                          if n.get("type") == "network" and n.get("path")]
            except Exception as e:
                errors.append("status %s: %s" % (pod, e))
    for pod in pods:
        if pod:
            try:
                rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
                rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)
            except Exception as e:
                errors.append("remove %s: %s" % (pod, e))
    # The pods' log directories go with them (the parent too, once empty).
    for i in range(n):
        shutil.rmtree("/tmp/kangaroo-bench-cri-logs/%s-%d" % (tag, i), ignore_errors=True)
    try:
        os.rmdir("/tmp/kangaroo-bench-cri-logs")
    except OSError:
        pass
    ok = [x for x in latencies if x is not None]
    print(json.dumps({"pods": n, "ok": len(ok), "wall_s": wall, "latencies_s": ok,
                      "phases_s": [p for p in phases if p is not None], "netns": netns, "errors": errors[:5]}))


if __name__ == "__main__":
    main()
