#!/usr/bin/env bash
# The kind end-to-end suite (`make e2e`). It needs docker with a running engine, kind, and the helm
# and kubectl that scripts/setup_helm.sh installs. Where any is missing it says exactly which and
# skips (exit 0); with E2E_REQUIRE=1 it fails instead (exit 2), for a CI that must run it.
# Options (see e2e/README.md): E2E_CLUSTER=<existing kind cluster>, E2E_KEEP=1, E2E_ARTIFACTS=<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup_helm.sh
missing=()
if ! command -v docker >/dev/null 2>&1; then
    missing+=("docker (no \`docker\` on PATH)")
elif ! docker info >/dev/null 2>&1; then
    missing+=("a Docker engine (\`docker info\` failed)")
fi
if ! command -v kind >/dev/null 2>&1; then
    missing+=("kind (no \`kind\` on PATH)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    message="e2e: SKIPPED, the kind suite needs: $(IFS=';'; echo "${missing[*]}" | sed 's/;/; /g')"
    echo "$message" >&2
    if [ "${E2E_REQUIRE:-0}" = "1" ]; then exit 2; fi
    exit 0
fi
exec .venv/bin/pytest -q -p no:cacheprovider e2e "$@"
