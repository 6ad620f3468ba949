#!/usr/bin/env python3
"""Drives one pod through containerd's CRI plugin as the kubelet does, and
prints what it observed as JSON (one object), for the tests to compare
between runtime handlers.

    scripts/cri-pod.py SOCKET HANDLER IMAGE NAME [--containers N] [--keep]
    scripts/cri-pod.py SOCKET --remove-all
    scripts/cri-pod.py SOCKET --pull IMAGE   (127.0.0.1 registries only)
    scripts/cri-pod.py SOCKET HANDLER IMAGE NAME --pod-network [--port HOST:CONTAINER] --keep
        (a pod with its own network namespace through the CNI plugins of
        containerd's conf_dir: prints its address, namespace path and the
        container's /etc/resolv.conf too)
    scripts/cri-pod.py SOCKET HANDLER IMAGE NAME --bad image|command|mount|resources
        (a pod whose container is wrong in one way: prints the gRPC error of
        the failing call, then removes the pod)

Steps: ImageStatus (the image is already in containerd's k8s.io namespace),
RunPodSandbox (host network), CreateContainer + StartContainer for N
containers, the container log file, ExecSync, ContainerStatus,
UpdateContainerResources (memory limit, read back inside), ContainerStats,
StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox. With
--keep the pod stays running and its sandbox id is printed instead.
Uses PyPI's container-runtime-interface-api (CRI v1 stubs) and grpcio.
"""
import argparse
import atexit
import json
import os
import shutil
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc


DEFAULT_LOGS = "/tmp/kangaroo-cri-logs"


def _rmdir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("handler", nargs="?")
    ap.add_argument("image", nargs="?")
    ap.add_argument("name", nargs="?")
    ap.add_argument("--remove-all", action="store_true", help="stop and remove every pod, print how many")
    ap.add_argument("--containers", type=int, default=1)
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--bad", choices=["image", "command", "mount", "resources"])
    ap.add_argument("--pod-network", action="store_true", help="a network namespace of the pod's own (CNI) instead of the node's")
    ap.add_argument("--port", action="append", default=[], metavar="HOST:CONTAINER", help="a TCP hostPort mapping (with --pod-network)")
    ap.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE", help="a pod annotation")
    ap.add_argument("--exec", action="append", default=[], metavar="SHELL", help="with --keep: run /bin/sh -c SHELL in the first container, print its output")
    ap.add_argument("--pull", metavar="IMAGE", help="PullImage IMAGE (a 127.0.0.1 registry), print its id and time")
    a = ap.parse_args()

    channel = grpc.insecure_channel("unix://" + a.socket)
    rt = cri_grpc.RuntimeServiceStub(channel)
    im = cri_grpc.ImageServiceStub(channel)
    out = {}
    if a.remove_all:
        pods = rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
        for p in pods:
            rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
            rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
        # The default log directories of the pods made without --log-dir.
        shutil.rmtree(DEFAULT_LOGS, ignore_errors=True)
        print(json.dumps({"removed": len(pods)}))
        return
    if a.pull:
        # Tests pull only from their own registry on this machine: a CRI
        # pull of any other name would resolve a host on the network.
        if not a.pull.startswith("127.0.0.1:"):
            raise SystemExit("--pull takes 127.0.0.1:PORT/... references only, not %s" % a.pull)
        t0 = time.monotonic()
        ref = im.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=a.pull)), timeout=120).image_ref
        print(json.dumps({"image_ref": ref, "pull_ms": round((time.monotonic() - t0) * 1000, 1)}))
        return
    log_dir = a.log_dir or DEFAULT_LOGS + "/" + a.name
    os.makedirs(log_dir, exist_ok=True)
    if not a.log_dir and not a.keep:
        # A pod removed before this exits leaves no log directory behind
        # (a kept pod's goes with --remove-all).
        atexit.register(lambda: (shutil.rmtree(log_dir, ignore_errors=True), _rmdir(DEFAULT_LOGS)))

    # The image must already be in containerd's k8s.io namespace (imported by
    # the caller): no PullImage, so nothing resolves a registry host name.
    found = im.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=a.image)), timeout=30).image
    if not found.id:
        raise SystemExit("image %s is not in containerd's k8s.io namespace" % a.image)

    t0 = time.monotonic()
    annotations = dict(x.split("=", 1) for x in a.annotation)
    if a.pod_network:
        ports = [cri.PortMapping(protocol=cri.TCP, host_port=int(h), container_port=int(c))
                 for h, c in (p.split(":") for p in a.port)]
        pod_config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=a.name, uid=a.name + "-uid", namespace="kangaroo-test", attempt=0),
            hostname=a.name,
            log_directory=log_dir,
            annotations=annotations,
            dns_config=cri.DNSConfig(servers=["10.241.0.53"], searches=["svc.test"], options=["ndots:2"]),
            port_mappings=ports,
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.POD, ipc=cri.POD))),
        )
    else:
        pod_config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=a.name, uid=a.name + "-uid", namespace="kangaroo-test", attempt=0),
            # Host network: the pod shares the node's UTS namespace, so the
            # kubelet sets no hostname (runc refuses one there).
            log_directory=log_dir,
            annotations=annotations,
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.NODE, pid=cri.POD, ipc=cri.POD))),
        )
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler=a.handler), timeout=60).pod_sandbox_id
    out["sandbox_ready"] = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state == cri.SANDBOX_READY

    if a.bad:
        print(json.dumps(bad_container(rt, pod, pod_config, a.image, a.bad)))
        return

    ids = []
    for i in range(a.containers):
        cfg = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="c%d" % i, attempt=0),
            image=cri.ImageSpec(image=a.image),
            command=["/bin/sh", "-c", "echo hello-from-c%d; echo to-stderr >&2; exec sleep 1000" % i],
            log_path="c%d.log" % i,
            linux=cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(memory_limit_in_bytes=96 << 20)),
        )
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config),
                                 timeout=60).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
        ids.append(cid)
    out["start_seconds"] = time.monotonic() - t0
    if a.keep:
        kept = {"sandbox": pod, "containers": ids, "start_seconds": out["start_seconds"]}
        outputs = []
        for shell in a.exec:
            ex = rt.ExecSync(cri.ExecSyncRequest(container_id=ids[0], cmd=["/bin/sh", "-c", shell], timeout=60), timeout=90)
            outputs.append({"stdout": ex.stdout.decode(), "stderr": ex.stderr.decode(), "exit_code": ex.exit_code})
        if outputs:
            kept["exec"] = outputs
        if a.pod_network:
            st = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True))
            kept["ip"] = st.status.network.ip
            info = json.loads(st.info.get("info", "{}"))
            kept["pid"] = info.get("pid")
            kept["netns"] = next((n.get("path") for n in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                                  if n.get("type") == "network"), None)
            ex = rt.ExecSync(cri.ExecSyncRequest(container_id=ids[0], cmd=["cat", "/etc/resolv.conf"], timeout=10), timeout=30)
            kept["resolv_conf"] = ex.stdout.decode()
            ex = rt.ExecSync(cri.ExecSyncRequest(container_id=ids[0], cmd=["hostname"], timeout=10), timeout=30)
            kept["hostname"] = ex.stdout.decode().strip()
        print(json.dumps(kept))
        return

    cid = ids[0]
    log_text = ""
    for _ in range(50):
        try:
            with open(os.path.join(log_dir, "c0.log")) as f:
                log_text = f.read()
        except FileNotFoundError:
            pass
        if "hello-from-c0" in log_text and "to-stderr" in log_text:
            break
        time.sleep(0.1)
    # CRI log lines: "TIMESTAMP STREAM P|F MESSAGE": keep stream and message.
    out["log"] = sorted(" ".join([l.split(" ")[1]] + l.split(" ")[3:]) for l in log_text.splitlines() if l)

    ex = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["/bin/sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"], timeout=10), timeout=30)
    out["exec"] = {"stdout": ex.stdout.decode(), "stderr": ex.stderr.decode(), "exit_code": ex.exit_code}
    st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
    out["state_running"] = st.state == cri.CONTAINER_RUNNING

    mem = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], timeout=10), timeout=30)
    out["memory_limit_inside"] = mem.stdout.decode().strip()
    rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
        container_id=cid, linux=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)), timeout=30)
    mem = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], timeout=10), timeout=30)
    out["memory_limit_after_update"] = mem.stdout.decode().strip()

    stats = rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid), timeout=30).stats
    out["stats_memory_nonzero"] = stats.memory.working_set_bytes.value > 0 or stats.memory.usage_bytes.value > 0

    for c in ids:
        rt.StopContainer(cri.StopContainerRequest(container_id=c, timeout=2), timeout=60)
    st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
    out["state_after_stop"] = cri.ContainerState.Name(st.state)
    out["exit_code_after_stop"] = st.exit_code
    for c in ids:
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c), timeout=60)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    left = rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
    out["pods_left"] = len([p for p in left if p.id == pod])
    print(json.dumps(out, sort_keys=True))


def bad_container(rt, pod, pod_config, image, kind):
    """CreateContainer + StartContainer of a container wrong in one way; the
    error of the call that failed, what is left of the pod, then cleanup."""
    cmd = ["/bin/sleep", "1000"]
    mounts = []
    resources = cri.LinuxContainerResources()
    if kind == "image":
        image = "kangaroo.test/no-such-image:latest"
    elif kind == "command":
        cmd = ["/no/such/binary"]
    elif kind == "mount":
        # A file over a directory: the bind mount cannot be made.
        mounts = [cri.Mount(host_path="/etc/hostname", container_path="/bin")]
    elif kind == "resources":
        resources = cri.LinuxContainerResources(cpu_period=1, cpu_quota=1)  # the kernel's minimum period is 1000 us
    cfg = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="bad", attempt=0), image=cri.ImageSpec(image=image),
                              command=cmd, mounts=mounts, log_path="bad.log", linux=cri.LinuxContainerConfig(resources=resources))
    out = {}
    try:
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config), timeout=60).container_id
        out["created"] = True
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
        out["started"] = True
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
    containers = rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=pod))).containers
    out["running_after"] = len([c for c in containers if c.state == cri.CONTAINER_RUNNING])
    for c in containers:
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c.id), timeout=60)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    return out


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(json.dumps({"error": e.code().name, "details": e.details()}))
        sys.exit(2)
