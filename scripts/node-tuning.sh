#!/bin/bash
# Node settings the lazy mount benefits from (root, idempotent):
#   - FUSE over io_uring (Linux 6.14+): the fuse module's enable_uring
#     parameter lets `kangaroo image mount` serve requests through per-CPU
#     io_uring queues instead of /dev/fuse reads (--io-uring auto, the
#     default, uses it when the kernel offers it).
# Kernels without the parameter are left as they are.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "node-tuning: must run as root" >&2; exit 1; }
modprobe fuse 2>/dev/null || true
param=/sys/module/fuse/parameters/enable_uring
if [ -w "$param" ] && [ "$(cat "$param")" != Y ]; then
    echo Y > "$param"
    [ -t 2 ] && echo "node-tuning: enabled FUSE over io_uring ($param)" >&2
fi
exit 0
