#!/usr/bin/env python3
"""The CRI client of bench/burst: starts N pods at once through containerd's
CRI plugin as the kubelet does, each with a pod network (CNI) and one
container, and prints one JSON object when every container has printed its
"ready" line (or failed). The pods are left running; `--remove` removes
every pod of the socket afterwards.

    bench/burst-pods.py SOCKET HANDLER IMAGE N LOGROOT -- COMMAND...
    bench/burst-pods.py SOCKET --remove

Per pod, as the kubelet (pull policy IfNotPresent, serialized pulls):
RunPodSandbox; ImageStatus, and PullImage under one lock when the image is
missing (the first pod pulls, the others wait for it); CreateContainer;
StartContainer; then the container's "ready" line in its CRI log (watched
with inotify, so that waiting costs no CPU). Times are seconds from the
first RunPodSandbox. PyPI's container-runtime-interface-api and grpcio
(scripts/deps.sh installs them).
"""
import ctypes
import json
import os
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

IN_MODIFY, IN_CREATE = 0x2, 0x100


class ReadyWatch:
    """One inotify descriptor over every pod's log directory; a pod is ready
    when its container's log has a line "ready" (CRI log format:
    TIME STREAM TAG MESSAGE)."""

    def __init__(self, dirs, t0):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.t0 = t0
        self.ready = [None] * len(dirs)
        self.wds = {}
        self.paths = {}
        self.done = threading.Event()
        self.left = len(dirs)
        for i, d in enumerate(dirs):
            wd = self.libc.inotify_add_watch(self.fd, d.encode(), IN_MODIFY | IN_CREATE)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch " + d)
            self.wds[wd] = i
            self.paths[i] = os.path.join(d, "c.log")
        self.lock = threading.Lock()
        threading.Thread(target=self.loop, daemon=True).start()

    def check(self, i):
        with self.lock:
            if self.ready[i] is not None:
                return
            try:
                with open(self.paths[i], "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return
            for line in data.split(b"\n"):
                parts = line.split(b" ", 3)
                if len(parts) == 4 and parts[3] == b"ready":
                    self.ready[i] = time.monotonic() - self.t0
                    self.left -= 1
                    if self.left == 0:
                        self.done.set()
                    return

    def give_up(self, i):
        with self.lock:
            if self.ready[i] is None:
                self.ready[i] = False
                self.left -= 1
                if self.left == 0:
                    self.done.set()

    def loop(self):
        while not self.done.is_set():
            buf = os.read(self.fd, 65536)
            off = 0
            seen = set()
            while off < len(buf):
                wd, _, _, n = struct.unpack_from("iIII", buf, off)
                off += 16 + n
                if wd in self.wds:
                    seen.add(self.wds[wd])
            for i in seen:
                self.check(i)


def remove(sock):
    channel = grpc.insecure_channel("unix://" + sock)
    rt = cri_grpc.RuntimeServiceStub(channel)
    pods = rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=60).items
    errors = []

    def one(p):
        try:
            rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=120)
            rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=120)
        except Exception as e:
            errors.append("%s: %s" % (p.id, e))

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, pods))
    print(json.dumps({"removed": len(pods) - len(errors), "seconds": time.monotonic() - t0, "errors": errors[:5]}))
    return 0 if not errors else 1


def main():
    if len(sys.argv) == 3 and sys.argv[2] == "--remove":
        return remove(sys.argv[1])
    sep = sys.argv.index("--")
    sock, handler, image, n, logroot = sys.argv[1:sep]
    command = sys.argv[sep + 1:]
    n = int(n)
    channel = grpc.insecure_channel("unix://" + sock, options=[("grpc.max_concurrent_streams", 1000)])
    rt = cri_grpc.RuntimeServiceStub(channel)
    im = cri_grpc.ImageServiceStub(channel)
    tag = "burst%d" % int(time.time() * 1000)
    dirs = []
    for i in range(n):
        d = os.path.join(logroot, "%s-%d" % (tag, i))
        os.makedirs(d)
        dirs.append(d)
    pull_lock = threading.Lock()
    pulled = {}
    phases = [None] * n
    errors = []
    start = threading.Barrier(n + 1)
    t0_box = []

    def have_image():
        return im.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=image)), timeout=60).image.id != ""

    def one(i):
        start.wait()
        t0 = t0_box[0]
        marks = []
        step = "RunPodSandbox"
        try:
            cfg = cri.PodSandboxConfig(
                metadata=cri.PodSandboxMetadata(name="%s-%d" % (tag, i), uid="%s-%d-uid" % (tag, i), namespace="bench", attempt=0),
                log_directory=dirs[i],
                linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD))))
            pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=cfg, runtime_handler=handler), timeout=600).pod_sandbox_id
            marks.append(time.monotonic() - t0)
            step = "PullImage"
            if not have_image():
                with pull_lock:
                    if not have_image():
                        p0 = time.monotonic()
                        im.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image), sandbox_config=cfg), timeout=600)
                        pulled["seconds"] = time.monotonic() - p0
            marks.append(time.monotonic() - t0)
            step = "CreateContainer"
            ccfg = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c", attempt=0), image=cri.ImageSpec(image=image),
                                       command=command, log_path="c.log")
            cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg), timeout=600).container_id
            marks.append(time.monotonic() - t0)
            step = "StartContainer"
            rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=600)
            marks.append(time.monotonic() - t0)
            phases[i] = marks
            watch.check(i)
        except Exception as e:  # reported; the other pods go on
            errors.append("pod %d, %s: %s" % (i, step, str(e).replace("\n", " ")[:400]))
            watch.give_up(i)

    watch = ReadyWatch(dirs, 0)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    t0_box.append(time.monotonic())
    watch.t0 = t0_box[0]
    start.wait()
    for t in threads:
        t.join()
    watch.done.wait(timeout=600)
    ready = [r for r in watch.ready if r]
    late = [i for i, r in enumerate(watch.ready) if r is None]
    if late:
        errors.append("%d containers never printed ready within 600 s (first: %s)" % (len(late), dirs[late[0]]))
    print(json.dumps({"pods": n, "ok": len(ready), "ready_s": ready, "last_s": max(ready) if ready else None,
                      "pull_s": pulled.get("seconds"),
                      "phases_s": [p for p in phases if p], "errors": errors[:5], "failed": len(errors)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
