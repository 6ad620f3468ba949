#!/bin/bash
# Builds test image (1): Debian bookworm minbase (debootstrap) as one layer,
# plus a second layer with python3 installed, as an OCI layout with the tags
# `base` and `python`. Idempotent: an existing complete layout is reused.
#
#   scripts/testimages/debian-python.sh [OUT_DIR]
#   default OUT_DIR: ${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}/debian-python
set -euo pipefail
OUT=${1:-${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}/debian-python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -f "$OUT/.complete" ]; then exit 0; fi
mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d /tmp/kangaroo-debian.XXXXXX)
cleanup() {
    for m in proc dev; do umount "$work/python/rootfs/$m" 2>/dev/null || true; done
    rm -rf "$work" "$OUT.tmp"
}
trap cleanup EXIT
log() { [ -t 2 ] && echo "debian-python: $*" >&2 || true; }

log "debootstrap minbase bookworm"
debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    echo "debian-python: debootstrap failed, see below" >&2; tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb

log "layer 1: base"
umoci init --layout "$OUT.tmp"
umoci new --image "$OUT.tmp:base"
umoci unpack --image "$OUT.tmp:base" "$work/base" >/dev/null
cp -a "$work/rootfs/." "$work/base/rootfs/"
umoci repack --image "$OUT.tmp:base" "$work/base" >/dev/null
umoci config --image "$OUT.tmp:base" --config.cmd /bin/bash --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log "layer 2: python3"
umoci unpack --image "$OUT.tmp:base" "$work/python" >/dev/null
mount --bind /dev "$work/python/rootfs/dev"
mount -t proc proc "$work/python/rootfs/proc"
cp /etc/resolv.conf "$work/python/rootfs/etc/resolv.conf"
chroot "$work/python/rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 && apt-get clean && rm -rf /var/lib/apt/lists/*' >"$work/apt.log" 2>&1 || {
    echo "debian-python: installing python3 failed" >&2; tail -20 "$work/apt.log" >&2; exit 1; }
umount "$work/python/rootfs/proc" "$work/python/rootfs/dev"
umoci repack --image "$OUT.tmp:python" "$work/python" >/dev/null
umoci config --image "$OUT.tmp:python" --config.cmd /usr/bin/python3
umoci gc --layout "$OUT.tmp"

rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
touch "$OUT/.complete"
log "done: $OUT (tags base, python)"
