#!/bin/sh
# Installs what the kangaroo-runtime integration tests and bench/runtime need:
# reference runtimes (crun, runc), containerd + ctr, podman, busybox-static,
# and builds a minimal busybox rootfs bundle at /var/lib/kangaroo-test/rootfs.
# Idempotent: re-running it changes nothing once everything is present.
set -eu
need=""
for p in crun runc containerd podman busybox-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
# containerd must not start its own service here; tests start a private one.
ROOTFS=/var/lib/kangaroo-test/rootfs
if [ ! -x "$ROOTFS/bin/busybox" ]; then
    mkdir -p "$ROOTFS/bin" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/tmp" "$ROOTFS/etc" "$ROOTFS/root"
    cp /bin/busybox "$ROOTFS/bin/busybox"
    for a in $("$ROOTFS/bin/busybox" --list); do
        [ -e "$ROOTFS/bin/$a" ] || ln -s busybox "$ROOTFS/bin/$a"
    done
    echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
    echo "root:x:0:" > "$ROOTFS/etc/group"
    chmod 1777 "$ROOTFS/tmp"
fi
echo "runtime test deps ready; rootfs at $ROOTFS"
