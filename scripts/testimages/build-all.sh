#!/bin/bash
# Builds every test image into $KANGAROO_TESTIMAGES (default
# /var/cache/kangaroo/testimages), idempotently:
#   sample/          the README's sample image (busybox + app), tag latest
#   synthetic/       every tree case (tag synthetic) and the hostile layers (tags hostile-*)
#   debian-python/   debootstrap minbase + python3 (tags base, python)
#   bigdata/         busybox base + one 512 MiB random file and 4,096 small files (tag bigdata)
#   pause/           the sample image with `sleep` as its entrypoint (tag pause): a CRI sandbox image
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${KANGAROO_TESTIMAGES:-/var/cache/kangaroo/testimages}
mkdir -p "$OUT"
build_py() {  # name script: rebuild when the script changed
    local name=$1 script=$2 stamp
    stamp=$(cat "$here/$script" "$here/ocilayout.py" | sha256sum | cut -c1-16)
    if [ "$(cat "$OUT/$name/.complete" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$OUT/$name" "$OUT/$name.tmp"
        python3 "$here/$script" "$OUT/$name.tmp"
        echo "$stamp" > "$OUT/$name.tmp/.complete"
        mv "$OUT/$name.tmp" "$OUT/$name"
    fi
}
build_py sample sample.py
[ "${1:-}" = "--sample-only" ] && exit 0
# The CRI tests' sandbox ("pause") image, derived from the sample with umoci.
stamp=$(cat "$OUT/sample/.complete")-pause1
if [ "$(cat "$OUT/pause/.complete" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$OUT/pause" "$OUT/pause.tmp"
    cp -a "$OUT/sample" "$OUT/pause.tmp"
    umoci config --image "$OUT/pause.tmp:latest" --config.entrypoint /bin/sleep --config.cmd 2147483647 --tag pause
    umoci rm --image "$OUT/pause.tmp:latest"
    umoci gc --layout "$OUT/pause.tmp"
    echo "$stamp" > "$OUT/pause.tmp/.complete"
    mv "$OUT/pause.tmp" "$OUT/pause"
fi
build_py synthetic synthetic.py
build_py bigdata bigdata.py
bash "$here/debian-python.sh" "$OUT/debian-python"
