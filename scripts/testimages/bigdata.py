#!/usr/bin/env python3
"""Builds the big-data test image: the sample image's busybox base plus a
layer holding one 512 MiB random file and 4,096 files of 256 B to 16 KiB
(random sizes and bytes from a fixed seed), as an OCI layout tagged
`bigdata`. The layer is streamed through files on disk (gzip level 1).

    scripts/testimages/bigdata.py OUT_DIR
"""
import gzip
import hashlib
import io
import os
import random
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ocilayout import EPOCH, Layout  # noqa: E402
from sample import base  # noqa: E402

BIG = 512 << 20
SMALL = 4096


class RandomReader(io.RawIOBase):
    """`size` bytes from a seeded generator, read in pieces."""

    def __init__(self, rng, size):
        self.rng, self.left = rng, size

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left, 1 << 20)
        if n == 0:
            return 0
        b[:n] = self.rng.randbytes(n)
        self.left -= n
        return n


def info(name, type_, mode, size=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.size = type_, mode, EPOCH, size
    ti.uname = ti.gname = ""
    return ti


def data_layer(layout, tmp):
    rng = random.Random(20261123)
    tar_path, gz_path = tmp + "/layer.tar", tmp + "/layer.tar.gz"
    with open(tar_path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info("data", tarfile.DIRTYPE, 0o755))
        t.addfile(info("data/big.bin", tarfile.REGTYPE, 0o644, BIG), io.BufferedReader(RandomReader(rng, BIG), 1 << 20))
        t.addfile(info("data/small", tarfile.DIRTYPE, 0o755))
        for i in range(SMALL):
            size = rng.randint(256, 16 << 10)
            t.addfile(info(f"data/small/f{i:04d}", tarfile.REGTYPE, 0o644, size), io.BytesIO(rng.randbytes(size)))
    h = hashlib.sha256()
    with open(tar_path, "rb") as src, open(gz_path, "wb") as dst, \
            gzip.GzipFile(fileobj=dst, mode="wb", mtime=0, compresslevel=1) as g:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
            g.write(block)
    os.remove(tar_path)
    size = os.path.getsize(gz_path)
    return (layout.blob_file(gz_path), size, "sha256:" + h.hexdigest())


def main():
    out = sys.argv[1]
    layout = Layout(out)
    tmp = out + "/.work"
    os.makedirs(tmp, exist_ok=True)
    layers = [layout.layer_from_tar_bytes(base()), data_layer(layout, tmp)]
    os.rmdir(tmp)
    layout.image("bigdata", layers, cmd=["/bin/sh"])


if __name__ == "__main__":
    main()
