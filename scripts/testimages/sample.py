#!/usr/bin/env python3
"""Builds the sample image the README's main job uses: a small busybox-based
image (Debian's busybox-static) with an application layer, as an OCI layout
tagged `latest`. Deterministic and quick; needs no network.

    scripts/testimages/sample.py OUT_DIR
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ocilayout import Layout, TarBuilder, pseudo_random  # noqa: E402

BUSYBOX = "/bin/busybox"


def base():
    t = TarBuilder()
    t.dir("./")
    for d in ["bin", "sbin", "etc", "dev", "proc", "sys", "root", "usr", "usr/bin", "var", "var/log"]:
        t.dir(d, mode=0o700 if d == "root" else 0o755)
    t.dir("tmp", mode=0o1777)
    with open(BUSYBOX, "rb") as f:
        t.file("bin/busybox", f.read(), mode=0o755)
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in sorted(set(applets)):
        if a != "busybox":
            t.symlink("bin/" + a, "busybox")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    t.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    t.file("etc/hostname", b"sample\n")
    t.file("etc/os-release", b'NAME="Kangaroo sample"\nID=kangaroo-sample\n')
    return t.bytes()


def app():
    t = TarBuilder()
    t.dir("app")
    t.file("app/hello.sh", b"#!/bin/sh\necho \"hello from $(cat /etc/hostname) on kangaroo: $(ls /app/data | wc -l) data files\"\n",
           mode=0o755)
    t.dir("app/data")
    blob = pseudo_random("sample-model", 3 * (1 << 20) + 12345)
    t.file("app/data/model.bin", blob)
    t.file("app/data/model-copy.bin", blob)  # deduplicated
    for i in range(200):
        t.file(f"app/data/record-{i:03d}.json", ('{"id": %d, "name": "record %d"}\n' % (i, i)).encode())
    return t.bytes()


def main():
    layout = Layout(sys.argv[1])
    layers = [layout.layer_from_tar_bytes(base()), layout.layer_from_tar_bytes(app())]
    layout.image("latest", layers, cmd=["/app/hello.sh"])


if __name__ == "__main__":
    main()
