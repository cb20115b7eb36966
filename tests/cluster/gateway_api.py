"""The Gateway API CRDs (standard channel) for the cluster tier, from the Go module proxy.

`sigs.k8s.io/gateway-api` is a Go module whose source carries `config/crd/standard/*.yaml`, so
`go mod download` fetches the exact release (checked against the Go checksum database). The YAML
files are copied into `${OPTISERVE_CONTROLPLANE_HOME:-~/.cache/optiserve/controlplane}/gateway-api/<version>/`,
outside the repository; later runs read them from there without Go. A missing Go or proxy FAILS
the test that needs them (the tier never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.control_plane import CONTROLPLANE_HOME

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = "v1.3.0"
CACHE_DIR = CONTROLPLANE_HOME / "gateway-api" / GATEWAY_API_VERSION
HTTPROUTE_CRD = "gateway.networking.k8s.io_httproutes.yaml"


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        pytest.fail(f"no Go toolchain to fetch {GATEWAY_API_MODULE}@{GATEWAY_API_VERSION} (its CRDs)", pytrace=False)
    return found


def _download() -> Path:
    """`go mod download -json module@version` outside any module; returns the source directory."""
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run(
            [_go(), "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
            cwd=empty,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GOTOOLCHAIN": "local", "GO111MODULE": "on"},
        )
    if result.returncode != 0:
        pytest.fail(f"go mod download {GATEWAY_API_MODULE}@{GATEWAY_API_VERSION} failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


def crd_path(name: str) -> Path:
    """A standard-channel CRD file, cached outside the repository on first use."""
    cached = CACHE_DIR / name
    if not cached.exists():
        source = _download() / "config" / "crd" / "standard"
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE_DIR.parent))
        for crd in source.glob("*.yaml"):
            shutil.copyfile(crd, staging / crd.name)
        for crd in staging.iterdir():
            crd.replace(CACHE_DIR / crd.name)
        staging.rmdir()
    return cached


def crd(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(crd_path(name).read_text())
    return document
