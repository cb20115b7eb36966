#!/usr/bin/env bash
# Install everything OptiServe needs on a fresh Debian machine: system packages, the project venv
# (torch pinned and installed first), the examples' data, and the CPU Triton server.
# Idempotent: a second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
# prometheus and nginx: the metrics backend and the traffic splitter of local mode and the tests.
apt_install ca-certificates curl git make prometheus nginx-light fortunes

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    apt_install python3.11 python3.11-venv
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

stamp="$VENV/.optiserve-deps"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    # torch first and pinned: nothing later may float it.
    "$VENV/bin/pip" install -q "torch==${TORCH_VERSION}"
    "$VENV/bin/pip" install -q -c constraints.txt -e '.[optimizer,llm,dev,examples]'
    echo "$want" >"$stamp"
fi

"$VENV/bin/python" examples/minilm/prepare.py
"$VENV/bin/python" examples/digits/prepare.py
"$VENV/bin/python" examples/smollm/prepare.py
scripts/setup_triton.sh
scripts/setup_helm.sh
