#!/bin/bash
# Regenerates the seed corpus fuzz/tar/corpus: small layer tars in GNU, pax
# and ustar formats with sparse files, hard links, symlinks, xattrs, devices,
# long names, gzip and zstd. Needs GNU tar, python3, gzip and zstd.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"
work="$(mktemp -d /tmp/kangaroo-fuzz-corpus-XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$corpus"
cd "$work"
mkdir -p tree/dir/sub
printf 'hello\n' > tree/dir/file
ln tree/dir/file tree/dir/hardlink
ln -s ../dir/file tree/dir/sub/symlink
truncate -s 40000 tree/sparse
printf 'data-in-the-middle' | dd of=tree/sparse bs=1 seek=20000 conv=notrunc status=none
setfattr -n user.kangaroo -v seed tree/dir/file 2>/dev/null || true
common=(--blocking-factor=1 --owner=0 --group=0 --mtime=@1700000000 --sort=name -C tree .)
tar --format=gnu --sparse "${common[@]}" -cf "$corpus/gnu-sparse.tar"
tar --format=pax --sparse "${common[@]}" -cf "$corpus/pax-sparse.tar"
tar --format=pax --xattrs --xattrs-include="*" --exclude=./sparse "${common[@]}" -cf "$corpus/pax-xattr.tar"
tar --format=ustar --exclude=./sparse "${common[@]}" -cf "$corpus/ustar.tar"
gzip -9n -c "$corpus/ustar.tar" > "$corpus/ustar.tar.gz"
zstd -q -19 -c "$corpus/pax-sparse.tar" > "$corpus/pax-sparse.tar.zst"
python3 - "$corpus" <<'PY'
import io, sys, tarfile
corpus = sys.argv[1]
def add(t, name, type=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data)
    info.mtime = 1700000000
    for k, v in kw.items():
        setattr(info, k, v)
    t.addfile(info, io.BytesIO(data) if data else None)
with tarfile.open(f"{corpus}/python-pax.tar", "w", format=tarfile.PAX_FORMAT) as t:
    add(t, "./", tarfile.DIRTYPE, mode=0o755)
    add(t, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    add(t, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
    add(t, "run/fifo", tarfile.FIFOTYPE, mode=0o644)
    add(t, "bin/ping", data=b"\x7fELF", mode=0o4755,
        pax_headers={"SCHILY.xattr.security.capability":
                     b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".decode("utf-8", "surrogateescape")})
    add(t, "a" * 200 + "/" + "b" * 200, data=b"long")
    add(t, "etc/.wh..wh..opq")
    add(t, "usr/link", tarfile.LNKTYPE, linkname="/bin/ping")
with tarfile.open(f"{corpus}/python-gnu-longname.tar", "w", format=tarfile.GNU_FORMAT) as t:
    add(t, "x/" + "c" * 250, data=b"gnu long name")
    add(t, "x/" + "d" * 120, tarfile.SYMTYPE, linkname="e" * 300)
PY
ls -l "$corpus"
