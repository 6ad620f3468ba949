"""Helpers to write deterministic OCI image layouts from tar layers (test images only)."""
import gzip
import hashlib
import io
import json
import os
import tarfile

EPOCH = 1700000000  # fixed mtime base: deterministic test images


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}

    def blob(self, data):
        d = sha256(data)
        p = os.path.join(self.path, "blobs", "sha256", d.split(":")[1])
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.rename(p + ".tmp", p)
        return d

    def blob_file(self, src):
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        d = "sha256:" + h.hexdigest()
        os.replace(src, os.path.join(self.path, "blobs", "sha256", h.hexdigest()))
        return d

    def image(self, tag, layers, cmd=None):
        """layers: list of (compressed_digest, compressed_size, diff_id)."""
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": cmd or ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
        }
        cb = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(cb), "size": len(cb)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s, _ in layers],
        }
        mb = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        self.index["manifests"] = [m for m in self.index["manifests"]
                                   if m["annotations"]["org.opencontainers.image.ref.name"] != tag]
        self.index["manifests"].append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": self.blob(mb), "size": len(mb),
            "annotations": {"org.opencontainers.image.ref.name": tag}})
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(self.index, f, sort_keys=True)

    def layer_from_tar_bytes(self, tar_bytes):
        diff_id = sha256(tar_bytes)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as g:
            g.write(tar_bytes)
        gz = buf.getvalue()
        return (self.blob(gz), len(gz), diff_id)


class TarBuilder:
    """Builds one layer tar in memory with exact control over every header."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, type_, mode, uid=0, gid=0, mtime=EPOCH, xattrs=None):
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = mtime
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
                              for k, v in xattrs.items()}
        return ti

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name, data=b"", mode=0o644, **kw):
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target, **kw):
        ti = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target, **kw):
        ti = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        ti.linkname = target
        self.tar.addfile(ti)

    def device(self, name, kind, major, minor, mode=0o666, **kw):
        ti = self._info(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, mode, **kw)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)

    def fifo(self, name, mode=0o644, **kw):
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, **kw))

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def pseudo_random(seed, n):
    """Deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 1
        counter += 1
    return bytes(out[:n])
