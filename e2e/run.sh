#!/usr/bin/env bash
# The end-to-end suite on real pods (`make e2e`). By default on the one-node cluster built here
# (a Docker engine and mmdebstrap: scripts/setup_docker.sh installs both; every image is built here);
# E2E_CLUSTER_TYPE=kind runs it on kind with stock images instead. Where a tool is missing it says
# exactly which and skips (exit 0); with E2E_REQUIRE=1 it fails instead (exit 2), for a CI that must
# run it. Options: see e2e/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup_helm.sh
if [ "${E2E_CLUSTER_TYPE:-node}" = node ] && [ "${E2E_SETUP_DOCKER:-1}" = 1 ]; then
    scripts/setup_docker.sh || true
    e2e/node/build.sh
fi
missing="$(.venv/bin/python -c 'from e2e.conftest import missing; print("; ".join(missing()))')"
if [ -n "$missing" ]; then
    echo "e2e: SKIPPED, the ${E2E_CLUSTER_TYPE:-node} cluster needs: $missing" >&2
    if [ "${E2E_REQUIRE:-0}" = "1" ]; then exit 2; fi
    exit 0
fi
exec .venv/bin/pytest -q -p no:cacheprovider e2e "$@"
