#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim from Debian bookworm packages.
#
# Why: on hosts that can reach the Debian mirror but no container registry,
# there is no way to pull python:3.11-slim.  Debian bookworm ships CPython 3.11,
# so an mmdebstrap rootfs with python3 + venv + pip is a usable base for
# docker/Dockerfile (which only needs `python3`, `python3 -m venv`, useradd).
#
# Usage: docker/make-local-base.sh [IMAGE]   (default localhost/python:3.11-slim)
# Env:   S3SPOOL_DEBIAN_MIRROR  mirror URL (default: whatever this host's apt uses)
#        S3SPOOL_DEBIAN_SECURITY  security mirror URL (same default logic)
#        CONTAINER_ENGINE       podman|docker (default: podman if present)
# Needs: root (mmdebstrap writes a rootfs owned by root), mmdebstrap
#        (apt-get install -y mmdebstrap).
set -euo pipefail

image="${1:-localhost/python:3.11-slim}"
suite=bookworm

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
    if command -v podman >/dev/null 2>&1; then engine=podman; else engine=docker; fi
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "make-local-base: mmdebstrap not found (apt-get install -y mmdebstrap)" >&2
    exit 1
fi

# Reuse the mirror the host's apt is already configured for: in restricted
# networks that is usually the only Debian mirror that is reachable.
# `apt-cache policy` prints it regardless of sources.list vs deb822 format.
host_mirror() {
    local suite_component="$1"
    apt-cache policy 2>/dev/null \
        | awk -v sc="$suite_component" '$3 == sc { print $2; exit }'
}
mirror="${S3SPOOL_DEBIAN_MIRROR:-$(host_mirror "$suite/main")}"
mirror="${mirror:-http://deb.debian.org/debian}"
security="${S3SPOOL_DEBIAN_SECURITY:-$(host_mirror "$suite-security/main")}"
security="${security:-http://deb.debian.org/debian-security}"

echo "make-local-base: building $image from $mirror ($suite) + $security" >&2

# minbase = Essential + Priority:required, i.e. what debian:bookworm-slim has
# (passwd for useradd, etc.).  python-is-python3 gives `python` like the
# official image; ca-certificates is needed for pip over HTTPS.
mmdebstrap \
    --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    "$suite" - \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" \
    | "$engine" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$image"

# Sanity check that the image runs.  Same podman workarounds as smoke.sh
# (S3SPOOL_OCI_RUNTIME, S3SPOOL_ULIMITS): some sandboxes refuse podman's
# default rlimits.
run=("$engine")
run_args=()
if [[ "$engine" == podman ]]; then
    oci_runtime="${S3SPOOL_OCI_RUNTIME-}"
    if [[ -z "${S3SPOOL_OCI_RUNTIME+set}" ]] && command -v runc >/dev/null 2>&1; then
        oci_runtime=runc
    fi
    [[ -n "$oci_runtime" ]] && run+=(--runtime "$oci_runtime")
    read -r -a run_args <<<"${S3SPOOL_ULIMITS---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}"
fi
"${run[@]}" run --rm "${run_args[@]}" "$image" \
    python3 -c 'import sys, venv; print("base ok:", sys.version.split()[0])'
