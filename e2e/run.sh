#!/usr/bin/env bash
# The kind end-to-end suite: it needs a Docker engine and kind. Where they are missing it says so
# and fails, rather than pretending to pass.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker info >/dev/null 2>&1; then
    echo "e2e: no Docker engine here; the kind suite needs one (docker info failed)" >&2
    exit 2
fi
if ! command -v kind >/dev/null 2>&1; then
    echo "e2e: kind is not installed; the kind suite needs it" >&2
    exit 2
fi
if ! ls e2e/test_*.py >/dev/null 2>&1; then
    echo "e2e: no kind tests yet (they come with the Helm chart)" >&2
    exit 2
fi
exec .venv/bin/pytest -q e2e
