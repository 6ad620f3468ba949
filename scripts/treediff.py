#!/usr/bin/env python3
"""Compares two directory trees the way the integration tests need: every
path, type, permission bits (incl. setuid/setgid/sticky), uid/gid, size,
mtime (ns), content sha256, symlink target, hardlink grouping, device
numbers, directory link counts and xattrs.

    scripts/treediff.py [--no-mtime-dirs] [--limit N] LEFT RIGHT

Prints one line per difference and a summary; exit status 0 when the trees
are equal, 1 when they differ, 2 on usage errors.
"""
import argparse
import hashlib
import os
import stat
import sys


def content_digest(path, size):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        pos = 0
        while pos < size:
            # skip holes cheaply where the filesystem reports them
            try:
                data_at = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                data_at = size
            if data_at > pos:
                zeros = min(data_at, size) - pos
                block = bytes(min(zeros, 1 << 20))
                while zeros > 0:
                    n = min(zeros, len(block))
                    h.update(block[:n])
                    zeros -= n
                pos = min(data_at, size)
                if pos >= size:
                    break
                f.seek(pos)
            try:
                hole_at = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
            except OSError:
                hole_at = size
            f.seek(pos)
            remaining = min(hole_at, size) - pos
            while remaining > 0:
                chunk = f.read(min(remaining, 4 << 20))
                if not chunk:
                    raise OSError(f"{path}: short read at {pos}")
                h.update(chunk)
                remaining -= len(chunk)
                pos += len(chunk)
    return h.hexdigest()


def walk(root):
    entries = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        names = dirnames + filenames
        if dirpath == root:
            names = names + ["."]
        for name in names:
            full = root if name == "." else os.path.join(dirpath, name)
            rel = "." if name == "." else os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            e = {"type": {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                          stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
                          stat.S_IFSOCK: "socket"}.get(kind, "unknown"),
                 "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid,
                 "mtime_ns": st.st_mtime_ns}
            if kind == stat.S_IFREG:
                e["size"] = st.st_size
                e["sha256"] = content_digest(full, st.st_size)
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif kind == stat.S_IFLNK:
                e["target"] = os.readlink(full)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif kind == stat.S_IFDIR:
                e["nlink"] = st.st_nlink
            try:
                names_x = sorted(os.listxattr(full, follow_symlinks=False))
            except OSError:
                names_x = []
            e["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False).hex() for n in names_x}
            entries[rel] = e
    groups = sorted(tuple(sorted(v)) for v in inodes.values())
    for g in groups:
        for p in g:
            entries[p]["hardlinks"] = g
    return entries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("left")
    ap.add_argument("right")
    ap.add_argument("--no-mtime-dirs", action="store_true", help="ignore directory mtimes")
    ap.add_argument("--ignore-xattr", action="append", default=[], help="xattr name to ignore")
    ap.add_argument("--limit", type=int, default=50)
    a = ap.parse_args()
    for p in (a.left, a.right):
        if not os.path.isdir(p):
            print(f"treediff: {p} is not a directory", file=sys.stderr)
            return 2
    left, right = walk(a.left), walk(a.right)
    diffs = []
    for p in sorted(set(left) | set(right)):
        if p not in left:
            diffs.append(f"only in right: {p}")
            continue
        if p not in right:
            diffs.append(f"only in left: {p}")
            continue
        l, r = left[p], right[p]
        for e in (l, r):
            for n in a.ignore_xattr:
                e["xattrs"].pop(n, None)
            if a.no_mtime_dirs and e["type"] == "dir":
                e.pop("mtime_ns")
        for k in sorted(set(l) | set(r)):
            if l.get(k) != r.get(k):
                diffs.append(f"{p}: {k}: {l.get(k)!r} != {r.get(k)!r}")
    for d in diffs[: a.limit]:
        print(d)
    if len(diffs) > a.limit:
        print(f"... {len(diffs) - a.limit} more")
    print(f"treediff: {len(left)} vs {len(right)} entries, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
