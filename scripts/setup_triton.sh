#!/usr/bin/env bash
# Install a CPU-only Triton Inference Server for local runs and component tests.
#
# Layout under ${OPTISERVE_TRITON_HOME:-$HOME/.cache/optiserve/triton}:
#   venv/                 the environment the Python-backend stub imports numpy
#                         and onnxruntime from (the server runs with it active).
#   dist/                 nvidia-pytriton unpacked with `pip --target`; it carries
#                         the tritonserver binary, the Python backend and one
#                         Python-backend stub per interpreter version.
#   dist/nvidia_pytriton.libs/
#                         shared libraries the server needs (LD_LIBRARY_PATH).
#   .installed            marker holding the pinned versions; while it matches,
#                         a rerun is a no-op.
#
# Why a separate venv: the 2.51 Python-backend stub is built against numpy 1.x.
# With numpy 2.x in the server's environment a model loads READY but every
# output tensor comes back empty, without any error. The server venv therefore
# pins numpy<2 together with an onnxruntime that still supports it.
#
# Environment overrides:
#   OPTISERVE_TRITON_HOME    install location
#   OPTISERVE_TRITON_PYTHON  interpreter used to create venv/ (default python3.11;
#                            it must match STUB_PYTHON below)
set -euo pipefail

PYTRITON_VERSION="0.7.0"        # ships tritonserver 2.51
STUB_PYTHON="3.11"
NUMPY_SPEC="numpy==1.26.4"      # last numpy 1.x; the stub needs numpy<2
ORT_SPEC="onnxruntime==1.32.0"  # declares numpy>=1.21.6; verified with 1.26.4

TRITON_HOME="${OPTISERVE_TRITON_HOME:-$HOME/.cache/optiserve/triton}"
PYTHON="${OPTISERVE_TRITON_PYTHON:-python${STUB_PYTHON}}"
MARKER="${TRITON_HOME}/.installed"
WANT="pytriton=${PYTRITON_VERSION} stub=${STUB_PYTHON} ${NUMPY_SPEC} ${ORT_SPEC}"

VENV="${TRITON_HOME}/venv"
DIST="${TRITON_HOME}/dist"
SERVER_ROOT="${DIST}/pytriton/tritonserver"

log() { printf 'setup_triton: %s\n' "$*" >&2; }

if [[ -f "${MARKER}" && "$(<"${MARKER}")" == "${WANT}" \
      && -x "${SERVER_ROOT}/bin/tritonserver" \
      && -x "${SERVER_ROOT}/backends/python/triton_python_backend_stub" \
      && -x "${VENV}/bin/python" ]]; then
    exit 0
fi

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    log "interpreter '${PYTHON}' not found; set OPTISERVE_TRITON_PYTHON to a Python ${STUB_PYTHON}"
    exit 1
fi
py_version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "${py_version}" != "${STUB_PYTHON}" ]]; then
    log "'${PYTHON}' is Python ${py_version}; the server venv must be Python ${STUB_PYTHON}"
    exit 1
fi

mkdir -p "${TRITON_HOME}"
rm -f "${MARKER}"

log "creating the server venv (${NUMPY_SPEC}, ${ORT_SPEC})"
rm -rf "${VENV}"
"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${NUMPY_SPEC}" "${ORT_SPEC}"
"${VENV}/bin/python" -c 'import numpy, onnxruntime; assert numpy.__version__.startswith("1.")'

log "installing nvidia-pytriton ${PYTRITON_VERSION} (tritonserver 2.51) into ${TRITON_HOME}"
rm -rf "${DIST}"
"${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "${DIST}" "nvidia-pytriton==${PYTRITON_VERSION}"

stub="${SERVER_ROOT}/python_backend_stubs/${STUB_PYTHON}/triton_python_backend_stub"
if [[ ! -x "${stub}" ]]; then
    log "no Python ${STUB_PYTHON} backend stub in nvidia-pytriton ${PYTRITON_VERSION}"
    exit 1
fi
cp "${stub}" "${SERVER_ROOT}/backends/python/triton_python_backend_stub"
chmod +x "${SERVER_ROOT}/backends/python/triton_python_backend_stub"

printf '%s\n' "${WANT}" >"${MARKER}"
log "done"
