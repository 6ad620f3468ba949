#!/bin/bash
# Installs, idempotently, the Debian packages Kangaroo needs to build and test.
#   scripts/deps.sh            build + test packages
# Quiet when stderr is not a terminal; apt-get update runs only when a
# package is missing.
set -euo pipefail
PACKAGES=(
    # build: Debian C libraries behind the system-library targets
    pkg-config libarchive-dev libzstd-dev liblz4-dev libseccomp-dev
    # image format tests: the kernel oracle, umoci, registry, skopeo, debootstrap
    erofs-utils umoci skopeo docker-registry debootstrap apache2-utils attr busybox-static
    # lazy mount and benchmarks
    fuse3 fio hyperfine iproute2 jq python3 curl
    # runtime references and clients
    crun runc containerd podman
    # pod networks: nftables for kangaroo-cni, the reference CNI plugins (bridge, host-local, portmap) and their iptables
    nftables containernetworking-plugins iptables
    # ctr-remote (image rpull: containerd pulls with the labels remote snapshotters read)
    stargz-snapshotter
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ -t 2 ] && echo "deps: installing ${missing[*]}" >&2
    if [ "$(id -u)" != 0 ]; then echo "deps: must run as root to install ${missing[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The CRI tests' client: PyPI's CRI v1 stubs and grpcio.
if ! python3 -c "import cri_api.v1.api_pb2_grpc, grpc" 2>/dev/null; then
    [ -t 2 ] && echo "deps: installing container-runtime-interface-api grpcio (PyPI)" >&2
    python3 -m pip install -q --disable-pip-version-check container-runtime-interface-api grpcio >/dev/null 2>&1 \
        || { echo "deps: pip install container-runtime-interface-api grpcio failed" >&2; exit 1; }
fi
