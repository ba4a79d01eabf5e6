#!/usr/bin/env bash
# End-to-end smoke test of the s3spool container image.
#
# Builds docker/Dockerfile, starts a throwaway S3 server on 127.0.0.1, runs the
# image against it with a bind-mounted spool, drops files into incoming/ and
# checks that they arrive (bucket + done/), that /healthz answers, and that
# SIGTERM (engine stop) ends the container with exit code 0.
# Exits 0 with "SKIP: ..." when no working container engine is available.
#
# Environment (all optional):
#   S3SPOOL_ENGINE         podman|docker (default: first one whose engine answers)
#   S3SPOOL_BASE_IMAGE     base for both stages (default: docker.io/library/python:3.11-slim
#                          if present or pullable, else localhost/python:3.11-slim, built by
#                          docker/make-local-base.sh when missing)
#   S3SPOOL_IMAGE          tag to build (default localhost/s3spool:smoke)
#   S3SPOOL_SMOKE_S3       rclone|moto (default rclone)
#   S3SPOOL_SMOKE_PYTHON   python with botocore for bucket checks (default .venv/bin/python)
#   S3SPOOL_SMOKE_TIMEOUT  seconds to wait for uploads (default 60)
#   S3SPOOL_SMOKE_BIG_MIB  size of the one large (multipart) file, 0 = none (default 20)
#   S3SPOOL_SMOKE_KEEP     1 = keep the temp dir (spool, server data) for inspection
#   S3SPOOL_PIP_CERT       CA bundle for pip inside the build (default: $PIP_CERT, else the
#                          host's /etc/ssl/certs/ca-certificates.crt); passed as a build secret
#   S3SPOOL_PIP_INDEX_URL  package index for the build (default https://pypi.org/simple)
#   S3SPOOL_OCI_RUNTIME    podman --runtime (default runc when installed; "" = podman default)
#   S3SPOOL_ULIMITS        extra ulimit flags for podman build/run (default
#                          "--ulimit nofile=1024:1024 --ulimit nproc=4096:4096": podman's
#                          defaults exceed what some sandboxes allow)
#   S3SPOOL_SMOKE_ENV      extra "-e NAME=value ..." words passed to the container
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
t_start=$SECONDS

log() { printf '[smoke +%3ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
step() { log "== step $1: $2"; }

# --- step 1: container engine -------------------------------------------------------------
step 1 "container engine"
engine_name="${S3SPOOL_ENGINE:-}"
if [[ -z "$engine_name" ]]; then
    for candidate in podman docker; do
        # `info` needs a working engine (daemon / storage), not just a client binary.
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
            engine_name="$candidate"
            break
        fi
    done
fi
if [[ -z "$engine_name" ]]; then
    echo "SKIP: no container engine (install podman: apt-get install podman runc)"
    exit 0
fi
command -v "$engine_name" >/dev/null 2>&1 || die "S3SPOOL_ENGINE=$engine_name not found"

engine=("$engine_name")
build_extra=()
run_extra=()
if [[ "$engine_name" == podman ]]; then
    oci_runtime="${S3SPOOL_OCI_RUNTIME-}"
    if [[ -z "${S3SPOOL_OCI_RUNTIME+set}" ]] && command -v runc >/dev/null 2>&1; then
        oci_runtime=runc
    fi
    [[ -n "$oci_runtime" ]] && engine+=(--runtime "$oci_runtime")
    read -r -a ulimits <<<"${S3SPOOL_ULIMITS---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}"
    # podman writes OCI images by default, which drop HEALTHCHECK.
    build_extra+=(--format docker "${ulimits[@]}")
    run_extra+=("${ulimits[@]}")
fi
log "engine: ${engine[*]}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/s3spool-smoke.XXXXXX")"
image="${S3SPOOL_IMAGE:-localhost/s3spool:smoke}"
container="s3spool-smoke-$$"
server_pid=""
ok=0

cleanup() {
    local rc=$?
    set +e
    if [[ "$ok" != 1 ]]; then
        log "container logs (last 80 lines):"
        "${engine[@]}" logs --tail 80 "$container" 2>&1 | sed 's/^/    /' >&2
        [[ -f "$tmp/server.log" ]] && { log "S3 server log (tail):"; tail -20 "$tmp/server.log" >&2; }
    fi
    "${engine[@]}" rm -f "$container" >/dev/null 2>&1
    "${engine[@]}" rm -f "$container-check" >/dev/null 2>&1
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    if [[ "${S3SPOOL_SMOKE_KEEP:-0}" == 1 ]]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- step 2: base image ---------------------------------------------------------------------
step 2 "base image"
have_image() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }
ensure_base() {
    local img="$1"
    have_image "$img" && return 0
    if [[ "$img" != localhost/* ]] && timeout 300 "${engine[@]}" pull -q "$img" >/dev/null 2>&1; then
        return 0
    fi
    return 1
}
local_base=localhost/python:3.11-slim
if [[ -n "${S3SPOOL_BASE_IMAGE:-}" ]]; then
    base="$S3SPOOL_BASE_IMAGE"
    if ! ensure_base "$base"; then
        [[ "$base" == localhost/* ]] || die "base image $base is neither present nor pullable"
        log "building $base with make-local-base.sh (no registry needed)"
        CONTAINER_ENGINE="$engine_name" "$here/make-local-base.sh" "$base"
    fi
elif ensure_base docker.io/library/python:3.11-slim; then
    base=docker.io/library/python:3.11-slim
else
    base="$local_base"
    if ! have_image "$base"; then
        log "python:3.11-slim not pullable; building $base with make-local-base.sh"
        CONTAINER_ENGINE="$engine_name" "$here/make-local-base.sh" "$base"
    fi
fi
log "base: $base"

# --- step 3: build ------------------------------------------------------------------------
step 3 "build $image"
pip_cert="${S3SPOOL_PIP_CERT:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
if [[ -s "$pip_cert" ]]; then
    # TLS-intercepting proxies: give pip in the build the host's trust store.
    build_extra+=(--secret "id=pip_cert,src=$pip_cert")
fi
t_build=$SECONDS
# --network host: pip reaches the index exactly as the host does (proxies, DNS).
"${engine[@]}" build "${build_extra[@]}" \
    --network host \
    --build-arg "PYTHON_IMAGE=$base" \
    --build-arg "PIP_INDEX_URL=${S3SPOOL_PIP_INDEX_URL:-https://pypi.org/simple}" \
    -f "$here/Dockerfile" -t "$image" "$repo" >"$tmp/build.log" 2>&1 \
    || { tail -40 "$tmp/build.log" >&2; die "image build failed"; }
log "built in $((SECONDS - t_build))s"
user="$("${engine[@]}" image inspect -f '{{.Config.User}}' "$image")"
[[ "$user" == 10001:10001 ]] || die "image user is '$user', expected 10001:10001"

# --- step 4: S3 server + bucket -------------------------------------------------------------
step 4 "local S3 server"
py="${S3SPOOL_SMOKE_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$py" ]] || py=python3
"$py" -c 'import botocore' 2>/dev/null || die "$py cannot import botocore (set S3SPOOL_SMOKE_PYTHON)"

s3_port="$(free_port)"
bucket=smoke-bucket
prefix=smoke
export AWS_ACCESS_KEY_ID=smokekey AWS_SECRET_ACCESS_KEY=smokesecret AWS_DEFAULT_REGION=us-east-1
export SMOKE_S3_ENDPOINT="http://127.0.0.1:$s3_port"
case "${S3SPOOL_SMOKE_S3:-rclone}" in
rclone)
    rclone="$repo/.venv/bin/rclone"
    [[ -x "$rclone" ]] || rclone="$(command -v rclone)" || die "rclone not found"
    mkdir -p "$tmp/s3data"
    "$rclone" serve s3 --addr "127.0.0.1:$s3_port" \
        --auth-key "$AWS_ACCESS_KEY_ID,$AWS_SECRET_ACCESS_KEY" "$tmp/s3data" \
        >"$tmp/server.log" 2>&1 &
    server_pid=$!
    ;;
moto)
    moto="$repo/.venv/bin/moto_server"
    [[ -x "$moto" ]] || moto="$(command -v moto_server)" || die "moto_server not found"
    "$moto" -H 127.0.0.1 -p "$s3_port" >"$tmp/server.log" 2>&1 &
    server_pid=$!
    ;;
*) die "S3SPOOL_SMOKE_S3 must be rclone or moto" ;;
esac

# Bucket operations go through the S3 API (botocore), so what is checked is
# what a client would see, whichever server is used.
cat >"$tmp/s3.py" <<'EOF'
import hashlib, os, sys
import botocore.session
from botocore.config import Config

client = botocore.session.get_session().create_client(
    "s3", endpoint_url=os.environ["SMOKE_S3_ENDPOINT"], region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
cmd, bucket = sys.argv[1], sys.argv[2]
if cmd == "mb":
    client.create_bucket(Bucket=bucket)
elif cmd == "ls":  # key<TAB>size per object
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            print(f"{obj['Key']}\t{obj['Size']}")
elif cmd == "sha256":
    body = client.get_object(Bucket=bucket, Key=sys.argv[3])["Body"]
    print(hashlib.sha256(body.read()).hexdigest())
EOF
s3() { "$py" "$tmp/s3.py" "$@"; }

for _ in $(seq 1 100); do
    s3 mb "$bucket" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || die "S3 server exited"
    sleep 0.2
done
s3 ls "$bucket" >/dev/null || die "bucket $bucket not usable at $SMOKE_S3_ENDPOINT"
log "S3 (${S3SPOOL_SMOKE_S3:-rclone}) at $SMOKE_S3_ENDPOINT, bucket $bucket"

# --- step 5: spool + container ----------------------------------------------------------------
step 5 "start container"
spool="$tmp/spool"
mkdir -p "$spool"/{incoming,working,done,failed,tmp} "$tmp/src"
# The container runs as UID 10001 and must rename files between these dirs.
if [[ "$(id -u)" == 0 ]]; then
    chown -R 10001:10001 "$spool"
else
    chmod -R a+rwX "$spool"  # rootless: UID 10001 maps to a subuid we cannot chown to
fi

http_port="$(free_port)"
grace=20
read -r -a smoke_env <<<"${S3SPOOL_SMOKE_ENV:-}"
svc_env=(
    -e "S3SPOOL_DESTINATION=s3://$bucket/$prefix"
    -e "S3SPOOL_ENDPOINT_URL=$SMOKE_S3_ENDPOINT"
    -e S3SPOOL_REGION=us-east-1
    -e S3SPOOL_ADDRESSING_STYLE=path
    -e "S3SPOOL_HTTP_ADDR=127.0.0.1:$http_port"  # host network: avoid clashing on 9108
    -e "S3SPOOL_SHUTDOWN_GRACE=${grace}s"
    -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY
    "${smoke_env[@]}"
)
# :Z relabels for SELinux hosts and is a no-op elsewhere.
mount=(-v "$spool:/spool:Z")

# `s3spool check` validates settings and store access, then exits.
"${engine[@]}" run --name "$container-check" --rm --network host "${run_extra[@]}" \
    "${mount[@]}" "${svc_env[@]}" "$image" check \
    || die "'s3spool check' failed in the container"
log "'s3spool check' passed"

"${engine[@]}" run -d --name "$container" --network host "${run_extra[@]}" \
    "${mount[@]}" "${svc_env[@]}" "$image" >/dev/null
log "container $container started (HTTP on 127.0.0.1:$http_port)"

# --- step 6: health ---------------------------------------------------------------------------
step 6 "/healthz and /readyz"
http_ok() {
    python3 - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
EOF
}
wait_http() {
    local url="$1" deadline=$((SECONDS + 30))
    until http_ok "$url"; do
        [[ "$("${engine[@]}" inspect -f '{{.State.Running}}' "$container")" == true ]] \
            || die "container exited before $url answered"
        ((SECONDS < deadline)) || die "$url did not answer 2xx within 30s"
        sleep 0.5
    done
}
wait_http "http://127.0.0.1:$http_port/healthz"
wait_http "http://127.0.0.1:$http_port/readyz"
# The image's own HEALTHCHECK command, run inside the container.
"${engine[@]}" exec "$container" /opt/s3spool/bin/python /opt/s3spool/healthcheck.py \
    || die "image HEALTHCHECK command failed"
log "healthz, readyz and HEALTHCHECK ok"

# --- step 7: drop files -----------------------------------------------------------------------
step 7 "drop files into incoming/"
names=()
drop() {  # drop NAME: write under tmp/ then rename, so s3spool never sees a partial file
    local name="$1"
    cp "$tmp/src/$name" "$spool/tmp/$name"
    [[ "$(id -u)" == 0 ]] && chown 10001:10001 "$spool/tmp/$name"
    mv "$spool/tmp/$name" "$spool/incoming/$name"
    names+=("$name")
}
for i in 1 2 3; do
    printf 'hello from smoke.sh, file %d, %s\n' "$i" "$(date -u +%FT%TZ)" >"$tmp/src/hello-$i.txt"
    drop "hello-$i.txt"
done
head -c 1048576 /dev/urandom >"$tmp/src/blob-1m.bin"
drop blob-1m.bin
big_mib="${S3SPOOL_SMOKE_BIG_MIB:-20}"
if ((big_mib > 0)); then
    # Above the default 16 MiB multipart threshold.
    head -c "$((big_mib * 1048576))" /dev/urandom >"$tmp/src/big-${big_mib}m.bin"
    drop "big-${big_mib}m.bin"
fi
log "dropped ${#names[@]} files: ${names[*]}"

# --- step 8: wait for arrival -----------------------------------------------------------------
step 8 "wait for objects in s3://$bucket/$prefix/ and files in done/"
timeout_s="${S3SPOOL_SMOKE_TIMEOUT:-60}"
deadline=$((SECONDS + timeout_s))
while :; do
    s3 ls "$bucket" >"$tmp/listing" || true
    missing=()
    for n in "${names[@]}"; do
        size="$(stat -c %s "$tmp/src/$n")"
        # Default KEY_FORMAT is {fname} under the destination prefix.
        grep -qxF "$prefix/$n"$'\t'"$size" "$tmp/listing" || { missing+=("s3:$n"); continue; }
        [[ -n "$(find "$spool/done" -type f -name "$n" -print -quit)" ]] || missing+=("done:$n")
    done
    ((${#missing[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
        log "bucket listing:"; sed 's/^/    /' "$tmp/listing" >&2
        log "spool tree:"; (cd "$spool" && find . | sort | sed 's/^/    /') >&2
        die "after ${timeout_s}s still missing: ${missing[*]}"
    fi
    [[ "$("${engine[@]}" inspect -f '{{.State.Running}}' "$container")" == true ]] \
        || die "container exited while uploading"
    sleep 1
done
for n in "${names[@]}"; do
    want="$(sha256sum "$tmp/src/$n" | cut -d' ' -f1)"
    got="$(s3 sha256 "$bucket" "$prefix/$n")"
    [[ "$want" == "$got" ]] || die "content of $prefix/$n differs (sha256 $got != $want)"
done
[[ -z "$(ls -A "$spool/incoming")" ]] || die "incoming/ not empty: $(ls -A "$spool/incoming")"
[[ -z "$(find "$spool/failed" -type f -print -quit)" ]] || die "files in failed/"
log "all ${#names[@]} files uploaded intact and moved to done/"

python3 - "http://127.0.0.1:$http_port/metrics" "${#names[@]}" <<'EOF' || die "metrics check failed"
import re, sys, urllib.request
try:
    text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
except OSError as exc:
    sys.exit(f"GET {sys.argv[1]}: {exc}")
delivered = sum(float(v) for v in re.findall(
    r'^s3spool_files_total\{[^}]*outcome="delivered"[^}]*\} (\S+)$', text, re.M))
if delivered < int(sys.argv[2]):
    sys.exit(f"s3spool_files_total delivered = {delivered}, expected >= {sys.argv[2]}")
print(f"metrics: s3spool_files_total{{outcome=delivered}} = {delivered:g}", file=sys.stderr)
EOF

# --- step 9: SIGTERM ----------------------------------------------------------------------------
step 9 "SIGTERM -> exit 0"
t_stop=$SECONDS
# Give more than the shutdown grace so the engine never escalates to SIGKILL.
"${engine[@]}" stop -t "$((grace + 15))" "$container" >/dev/null
code="$("${engine[@]}" inspect -f '{{.State.ExitCode}}' "$container")"
[[ "$code" == 0 ]] || die "container exited with $code after SIGTERM (want 0)"
log "stopped in $((SECONDS - t_stop))s with exit code 0"

ok=1
log "PASS (total $((SECONDS - t_start))s)"
