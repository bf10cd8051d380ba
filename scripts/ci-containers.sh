#!/usr/bin/env bash
# The container stage of CI: build the image from docker/Dockerfile and run the chart's pods.
#
#   1. podman, buildah, debootstrap and runc (apt), a private podman configuration.
#   2. A local Python base image when no registry is reachable: Debian bookworm with python3 and
#      venv, by debootstrap from the apt mirror this machine already uses (~50 s). Cached:
#      skipped when the image already exists (FORCE_BASE=1 rebuilds it).
#   3. The image itself, with that base as PYTHON_IMAGE; a build error fails the stage, and so
#      does an image larger than MAX_IMAGE_MB.
#   4. scripts/run_chart_pods.py: the rendered chart's API, worker, migrations and requeue-lost
#      pods as containers of the image, their probes, a batch through them, SIGTERM mid-batch.
#
# Usage: scripts/ci-containers.sh [--build-only]   (--build-only: steps 1-3, the image alone)
# Env: PYTHON_IMAGE (skip 2 and build on that base, e.g. python:3.11.11-slim-bookworm where a
# registry answers), MAX_IMAGE_MB (300), PYTHON (the venv's python, for the pod runner).
# The image is localhost/condo-audit:ci, the one helm/condo-audit/ci/podman.yaml names.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
started=$SECONDS
IMAGE="localhost/condo-audit:ci"
BASE_IMAGE="localhost/pybase:bookworm"
MAX_IMAGE_MB="${MAX_IMAGE_MB:-300}"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"

step() { printf '== containers: %s (%ss)\n' "$1" "$((SECONDS - started))"; }

step "tools"
missing=()
for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap runc >/dev/null
fi
command -v redis-server >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}
# runc (crun refuses this kind of host's cgroup layout), cgroupfs, and ulimits within the host's
# hard limits. A private file through CONTAINERS_CONF: the machine's own configuration is left
# alone, and every podman call below (and in the pod runner) reads this one.
mkdir -p .tools
cat >.tools/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF="$repo/.tools/containers.conf"
podman --version

# The host's CA bundle, mounted into build steps that reach the package index (this machine's
# egress re-signs TLS); a mount, so it is not part of any layer.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
ca_mount=()
[[ -f "$ca_bundle" ]] && ca_mount=(-v "$ca_bundle:$ca_bundle:ro")

if [[ -z "${PYTHON_IMAGE:-}" ]]; then
  PYTHON_IMAGE="$BASE_IMAGE"
  if [[ "${FORCE_BASE:-0}" != 1 ]] && podman image exists "$BASE_IMAGE"; then
    step "base image $BASE_IMAGE (cached)"
  else
    step "base image $BASE_IMAGE (debootstrap)"
    # The mirror apt already uses here; no other host is named or reached.
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [[ -n "$mirror" ]] || mirror="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    [[ -n "$mirror" ]] || { echo "no apt mirror found for debootstrap" >&2; exit 1; }
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$rootfs" "$mirror" >/dev/null
    # What python:slim leaves out too: documentation, manuals, translations, apt's caches.
    rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/cache/apt/* \
      "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
fi

step "image $IMAGE on $PYTHON_IMAGE"
build_started=$SECONDS
podman build --network host "${ca_mount[@]}" \
  -f docker/Dockerfile --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$IMAGE" .
echo "build took $((SECONDS - build_started)) s"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$((size / 1000000))
echo "image size: ${size} bytes (${size_mb} MB; limit ${MAX_IMAGE_MB} MB)"
if ((size_mb > MAX_IMAGE_MB)); then
  echo "image $IMAGE is ${size_mb} MB, over the ${MAX_IMAGE_MB} MB limit" >&2
  exit 1
fi
# Nothing from the ops extra in the image.
if podman run --rm --network none "$IMAGE" python -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("kubernetes", "matplotlib", "numpy")))'; then
  echo "no ops dependencies in the image"
else
  echo "the image carries an ops dependency (kubernetes, matplotlib or numpy)" >&2
  exit 1
fi

if [[ "${1:-}" == "--build-only" ]]; then
  step "done (build only)"
  exit 0
fi

step "the chart's pods as containers"
bash scripts/install-helm-kubectl.sh >/dev/null
"$PYTHON" scripts/run_chart_pods.py --helm "$repo/.tools/bin/helm"

step "done"
