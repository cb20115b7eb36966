"""What local mode changes in a manifest before running it, and nothing else.

- Traffic is split by the local nginx and metrics come from the local Prometheus, whatever the
  manifest names for the cluster (an HTTPRoute, the cluster's Prometheus address).
- ``--interval`` / ``--warmup`` may shorten the analysis for a quick look; the judge, its limits
  and the metrics stay the manifest's.

The changed manifest goes through the same validation as the original, so an override that makes
it invalid is refused with the field named.
"""

from __future__ import annotations

import copy
from pathlib import Path

from optiserve.api.manifest import parse_manifest, read_manifest_document
from optiserve.api.spec import OptimizedModel


def local_manifest(path: Path, *, interval: str | None = None, warmup: str | None = None) -> OptimizedModel:
    document = copy.deepcopy(read_manifest_document(path))
    rollout = (document.get("spec") or {}).get("rollout")
    if isinstance(rollout, dict):
        rollout["traffic"] = {"provider": "nginx"}
        analysis = rollout.setdefault("analysis", {})
        if isinstance(analysis, dict):
            analysis.pop("prometheus", None)
            if interval is not None:
                analysis["interval"] = interval
            if warmup is not None:
                analysis["warmup"] = warmup
    return parse_manifest(document, source=str(path))
