#!/usr/bin/env python3
"""Builds test image (2), the synthetic image that exercises every case, and
test image (3), the hostile layers, as one OCI layout.

    scripts/testimages/synthetic.py OUT_DIR

Tags: `synthetic` (4 layers), and one tag per hostile case: `hostile-dotdot`,
`hostile-absolute`, `hostile-symlink-write`, `hostile-hardlink-outside`.
Deterministic: the same script gives the same digests.
"""
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ocilayout import EPOCH, Layout, TarBuilder, pseudo_random  # noqa: E402

MiB = 1 << 20


def cap_xattr(bits):
    # struct vfs_cap_data, revision 2, effective flag set.
    return struct.pack("<IIIII", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)


def layer1():
    t = TarBuilder()
    t.dir("./", mode=0o755)
    for d in ["etc", "usr", "usr/bin", "data", "gone-dir", "gone-dir/sub", "opq", "big", "dev", "xattr"]:
        t.dir(d)
    t.dir("tmp", mode=0o1777)
    t.dir("shared", mode=0o2775, uid=1000, gid=1000)
    t.file("etc/hostname", b"synthetic\n")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    t.file("usr/bin/suid", b"#!/bin/sh\necho suid\n", mode=0o4755)
    t.file("usr/bin/sgid", b"#!/bin/sh\necho sgid\n", mode=0o2755, gid=42)
    t.file("usr/bin/ping", b"\x7fELF-not-really", mode=0o755, xattrs={"security.capability": cap_xattr(1 << 13)})
    t.file("data/owned", b"owned by 100000:65534\n", uid=100000, gid=65534)
    t.file("data/nanotime", b"mtime with nanoseconds\n", mtime=EPOCH + 0.123456789)
    t.file("data/old", b"mtime before the epoch\n", mtime=-86400 * 400)
    t.file("data/empty", b"")
    t.file("data/todelete", b"this file is deleted by a whiteout in layer 2\n")
    t.file("data/base-file", b"hardlinked from a later layer\n")
    t.file("data/hl-a", b"two names, one inode\n")
    t.hardlink("data/hl-b", "data/hl-a")
    t.file("gone-dir/sub/f", b"deleted with its directory\n")
    t.file("opq/lower-a", b"hidden by the opaque marker\n")
    t.file("opq/lower-b", b"hidden too\n")
    t.file("swap1", b"a file, then a directory, then a file again\n")
    t.dir("swap2")
    t.file("swap2/child", b"a directory, then a file, then a directory again\n")
    # symlinks: absolute, relative, dangling, to a directory
    t.symlink("data/abs-link", "/etc/hostname")
    t.symlink("data/rel-link", "../etc/hostname")
    t.symlink("data/dangling", "/nonexistent/target")
    t.symlink("data/dir-link", "../usr/bin")
    # devices and fifos
    t.device("dev/null", "c", 1, 3)
    t.device("dev/sda", "b", 8, 0, mode=0o660, gid=6)
    t.device("dev/big-numbers", "c", 511, 1048575)
    t.fifo("dev/fifo")
    # xattrs on every kind that may carry them
    t.file("xattr/file", b"x\n", xattrs={"user.test": "hello", "user.binary": bytes(range(256))})
    # (an empty xattr value is not representable in a PAX header: an empty
    # record deletes the keyword, so there is no case for it here)
    t.dir("xattr/dir", xattrs={"user.dir": "on a directory"})
    t.file("xattr/many", b"m\n", xattrs={f"user.attr{i:02d}": f"value-{i}" * 3 for i in range(20)})
    # names: 255 bytes, non-ASCII
    t.file("data/" + "n" * 255, b"255-byte name\n")
    t.file("data/名前-ünïcödé-é.txt", "non-ASCII name\n".encode())
    t.file("data/" + "é" * 127 + "x", b"254 bytes of UTF-8 plus one\n")
    # files at chunk boundaries (1 MiB default chunk; 64 KiB minimum)
    for name, size in [("chunk-exact", MiB), ("chunk-minus-1", MiB - 1), ("chunk-plus-1", MiB + 1),
                       ("two-chunks", 2 * MiB), ("min-chunk", 64 * 1024), ("one-block", 4096),
                       ("odd", 3 * MiB + 4097)]:
        t.file("data/" + name, pseudo_random(name, size))
    # duplicate content: deduplicated to one chunk set
    dup = pseudo_random("dup", MiB + 5000)
    t.file("data/dup1", dup)
    t.file("data/dup2", dup, mode=0o600)
    # a directory with 20,000 entries
    for i in range(20000):
        t.file(f"big/entry-{i:05d}", b"" if i % 3 else f"{i}\n".encode())
    return t.bytes()


def layer2():
    t = TarBuilder()
    t.dir("data")
    t.file("data/.wh.todelete")           # whiteout of a file
    t.file(".wh.gone-dir")                 # whiteout of a directory
    t.dir("opq")
    t.file("opq/.wh..wh..opq")            # opaque directory
    t.file("opq/upper", b"only this survives in opq\n")
    t.dir("swap1")                         # file -> directory
    t.file("swap1/child", b"now a directory\n")
    t.file("swap2", b"now a file\n")      # directory -> file
    t.hardlink("data/hl-cross", "data/base-file")   # hardlink to a lower layer's file
    t.file("etc/hostname", b"synthetic-layer2\n")   # modified file
    t.file("data/later", b"added in layer 2\n", uid=1000, gid=1000, mode=0o640)
    return t.bytes()


def layer3():
    t = TarBuilder()
    t.file("swap1", b"a file again\n")    # directory -> file
    t.dir("swap2")                         # file -> directory
    t.file("swap2/again", b"a directory again\n")
    t.file("data/.wh.dup2")
    t.hardlink("data/dup2", "data/dup1")  # recreated as a hardlink
    return t.bytes()


def sparse_layer():
    """A 5 GiB sparse file, written by GNU tar as a PAX sparse entry."""
    with tempfile.TemporaryDirectory(prefix="kangaroo-sparse.") as d:
        root = os.path.join(d, "root")
        os.makedirs(os.path.join(root, "sparse"))
        p = os.path.join(root, "sparse", "five-gib")
        with open(p, "wb") as f:
            f.write(b"start of the sparse file\n")
            f.seek(2 * 1024 * MiB + 12345)
            f.write(pseudo_random("sparse-middle", 200000))
            f.truncate(5 * 1024 * MiB)
            f.seek(5 * 1024 * MiB - 10)
            f.write(b"end-bytes\n")
        os.utime(p, (EPOCH, EPOCH))
        os.utime(os.path.join(root, "sparse"), (EPOCH, EPOCH))
        out = os.path.join(d, "layer.tar")
        subprocess.run(["tar", "--sparse", "--format=posix", "--numeric-owner", "--owner=0", "--group=0",
                        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                        "--mtime=@%d" % EPOCH, "--sort=name", "-C", root, "-cf", out, "sparse"], check=True)
        with open(out, "rb") as f:
            return f.read()


def hostile(layout):
    cases = {}
    t = TarBuilder()
    t.dir("a")
    t.file("a/../../escape", b"tries to escape the root\n")
    cases["hostile-dotdot"] = t.bytes()
    t = TarBuilder()
    t.file("/etc/absolute", b"absolute path: contained under the image root\n")
    t.dir("/abs-dir")
    cases["hostile-absolute"] = t.bytes()
    t = TarBuilder()
    t.symlink("link", "/etc")
    t.file("link/written-through", b"would land in the host's /etc if followed\n")
    cases["hostile-symlink-write"] = t.bytes()
    t = TarBuilder()
    t.dir("d")
    t.hardlink("d/shadow", "../../etc/shadow")
    cases["hostile-hardlink-outside"] = t.bytes()
    for tag, tar in cases.items():
        layout.image(tag, [layout.layer_from_tar_bytes(tar)])


def main():
    out = sys.argv[1]
    layout = Layout(out)
    layers = [layout.layer_from_tar_bytes(b) for b in (layer1(), layer2(), layer3(), sparse_layer())]
    layout.image("synthetic", layers)
    hostile(layout)


if __name__ == "__main__":
    main()
