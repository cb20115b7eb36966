"""Which generation the pipeline runs: a spec change restarts it, an approval does not.

Every spec change bumps `metadata.generation`, and a new generation means a new optimization Job
and a new canary. One spec field is not a change of what to build but a person's (or a GitOps
pipeline's) answer to the running canary: `rollout.promoteArtifact`. Committing it must approve
the candidate that is waiting, not restart the pipeline and build another one. So the pipeline
keeps the generation it started with for as long as the spec, without that field, is the same
(compared by digest); `status.observedGeneration` still follows `metadata.generation`, so
`kubectl wait` and GitOps health checks see the new spec observed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from optiserve.api.status import OptimizedModelStatus

APPROVAL_FIELDS: tuple[tuple[str, str], ...] = (("rollout", "promoteArtifact"),)
"""Spec fields that answer the running rollout instead of changing what it builds."""


def spec_digest(spec: object) -> str:
    """sha256 (16 hex) of the spec without the approval fields, over canonical JSON."""
    document: Any = json.loads(json.dumps(spec if isinstance(spec, Mapping) else {}, sort_keys=True, default=str))
    for section, key in APPROVAL_FIELDS:
        part = document.get(section)
        if isinstance(part, dict):
            part.pop(key, None)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def described_generation(status: OptimizedModelStatus) -> int | None:
    """The generation the status (and the running pipeline) describes."""
    return status.pipeline_generation if status.pipeline_generation is not None else status.observed_generation


def pipeline_generation(metadata_generation: int, spec: object, status: OptimizedModelStatus) -> int:
    """The running pipeline's generation if only approval fields changed since it started, else the new one."""
    running = described_generation(status)
    unchanged = status.spec_digest == spec_digest(spec)
    if unchanged and running is not None and running <= metadata_generation:
        return running
    return metadata_generation
