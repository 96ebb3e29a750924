#!/usr/bin/env bash
# Build the twinserve image with buildah and run it with podman, where no registry is reachable.
#
#   scripts/image.sh base    # debootstrap Debian bookworm + python3 -> local base image $BASE_IMAGE
#   scripts/image.sh build   # the Dockerfile, FROM $BASE_IMAGE, torch's CPU wheel from $WHEELS  -> $IMAGE
#   scripts/image.sh test    # run $IMAGE as UID 10001 with the artifacts mounted read-only; check it over HTTP
#
# `make image` runs base + build, `make image-test` runs test (after image). Needs root and the Debian
# packages buildah, podman and debootstrap (installed when missing). Storage is `vfs` and builds use
# `--isolation chroot`: no overlay or user namespaces needed inside a sandbox. Everything is kept under
# $WORK (the rootfs, buildah/podman storage is the system default /var/lib/containers).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/var/tmp/twinserve-image}
BASE_IMAGE=${BASE_IMAGE:-localhost/twinserve-base:bookworm}
IMAGE=${IMAGE:-localhost/twinserve:0.1.0-cpu}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
WHEELS=${WHEELS:-/opt/wheels}                     # a folder holding torch-2.13.0+cpu-*.whl
TORCH_VERSION=${TORCH_VERSION:-2.13.0+cpu}
ARTIFACTS=${ARTIFACTS:-$ROOT/artifacts/all-MiniLM-L6-v2}
HTTP_PORT=${HTTP_PORT:-18000}                      # host ports the test publishes (loopback only)
METRICS_PORT=${METRICS_PORT:-18080}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-420}
OUT=${OUT:-$ROOT/results/image-test}
OCI_RUNTIME=${OCI_RUNTIME:-runc}
STORE=(--storage-driver vfs)
NICE=(nice -n 10)

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] FAILED: %s\n' "$*" >&2; exit 1; }

need() {
  local missing=()
  for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  ((${#missing[@]} == 0)) && return
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install the Debian packages as root"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

base() {
  need debootstrap buildah
  if buildah "${STORE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 && [[ ${REBUILD_BASE:-0} != 1 ]]; then
    log "base $BASE_IMAGE exists (REBUILD_BASE=1 to make it again)"; return
  fi
  mkdir -p "$WORK"
  local rootfs=$WORK/rootfs
  if [[ ! -x $rootfs/usr/bin/python3 ]]; then
    rm -rf "$rootfs"
    log "debootstrap bookworm (minbase + python3, python3-venv) from $MIRROR into $rootfs"
    "${NICE[@]}" debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || die "debootstrap: see $WORK/debootstrap.log"
  fi
  # The host's own CA certificates (a TLS-intercepting proxy's, here): pip inside the build must trust what
  # this machine trusts to reach PyPI. A base made elsewhere would carry its own site's CAs the same way.
  if compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$EXTRA_CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
    log "added the CA certificates of $EXTRA_CA_DIR to the base"
  fi
  # What a slim base image leaves out: apt's lists and caches (the Dockerfile runs apt-get update itself).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  log "importing $rootfs as $BASE_IMAGE"
  tar -C "$rootfs" --numeric-owner -cf "$WORK/rootfs.tar" .
  local ctr
  ctr=$(buildah "${STORE[@]}" from scratch)
  buildah "${STORE[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null
  buildah "${STORE[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 \
    --label org.opencontainers.image.description="Debian bookworm minbase + python3, made by debootstrap" "$ctr"
  buildah "${STORE[@]}" commit --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -f "$WORK/rootfs.tar"
  log "base image $BASE_IMAGE: $(buildah "${STORE[@]}" run --isolation chroot "$(buildah "${STORE[@]}" from "$BASE_IMAGE")" -- python3 -V 2>&1)"
  buildah "${STORE[@]}" rm --all >/dev/null
}

build() {
  need buildah
  ls "$WHEELS"/torch-"${TORCH_VERSION}"-*.whl >/dev/null 2>&1 \
    || die "no torch-${TORCH_VERSION} wheel in $WHEELS (set WHEELS=DIR, or TORCH_VERSION and a reachable index)"
  log "building $IMAGE from $BASE_IMAGE (torch $TORCH_VERSION from $WHEELS, the rest from PyPI)"
  # --format docker: the OCI image format has no HEALTHCHECK, and buildah would drop it.
  "${NICE[@]}" buildah "${STORE[@]}" bud --isolation chroot --layers=false --format docker \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg TORCH_FIND_LINKS=/wheels \
    -v "$WHEELS":/wheels:ro \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
  buildah "${STORE[@]}" rmi --prune >/dev/null 2>&1 || true   # the previous build's untagged image (vfs: GBs)
  buildah "${STORE[@]}" images "$IMAGE"
}

# --------------------------------------------------------------------------- test: run it, check over HTTP

test_image() {
  need podman curl "$OCI_RUNTIME"
  [[ -f $ARTIFACTS/manifest.json ]] || die "no artifacts at $ARTIFACTS (twinserve prune --preset fast --out $ARTIFACTS)"
  local art
  name=twinserve-image-test-$$   # global: the EXIT trap uses it after this function returns
  art=$(readlink -f "$ARTIFACTS")   # published artifacts are a symlink to a versioned sibling
  mkdir -p "$OUT"
  # The server runs as UID 10001. `twinserve prune` writes some files owner-only (model.safetensors: 0600),
  # which is fine in the chart (the pruning Job runs as UID 10001 too) but not for artifacts built by
  # another user: then stage a copy owned by 10001, as the pruning Job would have left it.
  local private
  private=$(find "$art" -type f ! -perm -o=r -printf '%P ' | head -c 300)
  if [[ -n $private ]]; then
    log "not readable by UID 10001: $private-> staging a copy owned by 10001:10001 in $WORK/artifacts"
    rm -rf "$WORK/artifacts" && mkdir -p "$WORK/artifacts"
    cp -a "$art/." "$WORK/artifacts/" && chown -R 10001:10001 "$WORK/artifacts"
    art=$WORK/artifacts
  fi
  cleanup() {
    podman "${STORE[@]}" logs "$name" >"$OUT/container.log" 2>&1 || true
    podman "${STORE[@]}" rm -f -t 5 "$name" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  local net=(-p "127.0.0.1:$HTTP_PORT:8000" -p "127.0.0.1:$METRICS_PORT:8080")
  [[ ${NETWORK:-bridge} == host ]] && net=(--network host)
  local cmd=(twinserve serve --host 0.0.0.0 --port 8000 --metrics-port 8080)
  [[ ${NETWORK:-bridge} == host ]] && cmd=(twinserve serve --host 127.0.0.1 --port "$HTTP_PORT" --metrics-port "$METRICS_PORT")
  log "running $IMAGE as UID 10001, $art mounted read-only at /artifacts/all-MiniLM-L6-v2"
  # runc, not crun: this sandbox has hybrid cgroups (v1 controllers, an empty v2), which crun 1.8 refuses.
  # Lower rlimits than podman's defaults: raising them needs CAP_SYS_RESOURCE, which the sandbox lacks.
  podman "${STORE[@]}" run -d --name "$name" --runtime "$OCI_RUNTIME" --user 10001:10001 --shm-size 1g \
    --ulimit nofile=16384:16384 --ulimit nproc=8192:8192 "${net[@]}" \
    -v "$art":/artifacts/all-MiniLM-L6-v2:ro "$IMAGE" "${cmd[@]}" >/dev/null
  local url=http://127.0.0.1:$HTTP_PORT deadline=$((SECONDS + READY_TIMEOUT_S)) code=000
  while ((SECONDS < deadline)); do
    code=$(curl -s -o "$OUT/ready.json" -w '%{http_code}' --max-time 3 "$url/v2/health/ready" || true)
    [[ $code == 200 ]] && break
    [[ $(podman "${STORE[@]}" inspect -f '{{.State.Running}}' "$name" 2>/dev/null) == true ]] \
      || die "the container exited before it was ready (log: $OUT/container.log)"
    sleep 3
  done
  [[ $code == 200 ]] || die "GET /v2/health/ready answered $code after ${READY_TIMEOUT_S} s (log: $OUT/container.log)"
  log "GET /v2/health/ready: 200 after $((READY_TIMEOUT_S - (deadline - SECONDS))) s"
  for variant in pruned dense; do
    code=$(curl -s -o "$OUT/embeddings-$variant.json" -D "$OUT/embeddings-$variant.headers" -w '%{http_code}' \
      --max-time 60 -H 'Content-Type: application/json' -H "X-Variant: $variant" \
      -d '{"input": ["the image serves embeddings", "a second text"], "model": "twinserve"}' "$url/v1/embeddings")
    [[ $code == 200 ]] || die "POST /v1/embeddings (X-Variant: $variant) answered $code: $(head -c 400 "$OUT/embeddings-$variant.json")"
  done
  # The image's own HEALTHCHECK, run once by hand (podman schedules it with systemd timers, absent here).
  local health uid ro
  health=$(podman "${STORE[@]}" healthcheck run "$name" >/dev/null 2>&1 && echo healthy || echo unhealthy)
  uid=$(podman "${STORE[@]}" exec "$name" id -u)
  ro=$(podman "${STORE[@]}" exec "$name" sh -c 'touch /artifacts/all-MiniLM-L6-v2/x 2>/dev/null && echo writable || echo read-only')
  python3 - "$OUT" "$uid" "$ro" "$IMAGE" "$health" <<'EOF'
import json, math, sys
from pathlib import Path
out, uid, ro, image, health = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
checks = {"process_uid": uid, "artifacts_mount": ro, "image": image, "healthcheck": health}
for variant in ("pruned", "dense"):
    doc = json.loads((out / f"embeddings-{variant}.json").read_text())
    embs = [d["embedding"] for d in doc["data"]]
    headers = (out / f"embeddings-{variant}.headers").read_text().lower()
    answered = next((l.split(":", 1)[1].strip() for l in headers.splitlines() if l.startswith("x-variant:")), None)
    norms = [math.sqrt(sum(x * x for x in e)) for e in embs]
    assert len(embs) == 2 and len({len(e) for e in embs}) == 1, f"{variant}: expected two embeddings of one size"
    assert all(abs(n - 1) < 1e-3 for n in norms), f"{variant}: embeddings not L2-normalised: {norms}"
    assert answered == variant, f"asked for {variant}, answered by {answered}"
    checks[variant] = {"n": len(embs), "dim": len(embs[0]), "norms": norms, "x_variant": answered}
assert uid == "10001", f"the server runs as UID {uid}, not 10001"
assert ro == "read-only", "the artifact mount is writable"
assert health == "healthy", "the image's HEALTHCHECK failed while /v2/health/ready answered 200"
(out / "summary.json").write_text(json.dumps(checks, indent=2) + "\n")
print(json.dumps(checks))
EOF
  log "PASSED: ready, embeddings from both variants, HEALTHCHECK $health, UID $uid, artifacts $ro; details in $OUT/summary.json"
}

case ${1:-} in
  base) base ;;
  build) build ;;
  image) base; build ;;
  test) test_image ;;
  -h|--help|"") sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown step ${1}; use base, build, image or test" ;;
esac
