"""Checking a published artifact against its manifest, before anything serves it.

The job writes `manifest.json` last: the sha256 and size of every file, and the artifact's digest
(`JobResult.artifact.sha256`) is the sha256 of that manifest. So an artifact is what the job
published when its manifest hashes to the digest the operator holds and every file matches the
manifest. Used by the job itself, by local mode before it starts a tritonserver, and in a cluster
by an init container of every Triton pod (`optiserve verify-artifact`): a truncated, edited or
half-published artifact is never loaded.

One check, one error: every caller uses `verify_artifact` and `CorruptRepositoryError` directly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class CorruptRepositoryError(ValueError):
    """The published model repository (the artifact) does not match its manifest, or the manifest
    not the expected sha256; the message names the file."""


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _manifest(out_dir: Path, artifact_sha256: str | None) -> dict[str, Any]:
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise CorruptRepositoryError(f"{out_dir}: no {MANIFEST}: the artifact was never completely published")
    if artifact_sha256 is not None and sha256_file(manifest_path) != artifact_sha256.removeprefix("sha256:"):
        raise CorruptRepositoryError(
            f"{MANIFEST}: its sha256 is not the artifact's digest {artifact_sha256} (another or an altered artifact)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptRepositoryError(f"{manifest_path}: unreadable manifest") from e
    if not isinstance(files, dict):
        raise CorruptRepositoryError(f"{manifest_path}: unreadable manifest (files is not a mapping)")
    return dict(manifest)


def verify_artifact(out_dir: Path, artifact_sha256: str | None = None) -> dict[str, Any]:
    """Check every file against the manifest (and the manifest against ``artifact_sha256``, when given);
    return the manifest, or raise CorruptRepositoryError naming the first problem.

    ``artifact_sha256`` is ``ArtifactRef.sha256``, bare or as ``sha256:<hex>`` (how
    ``spec.rollout.promoteArtifact`` and ``status.canary.candidateArtifact`` write it).
    """
    manifest = _manifest(out_dir, artifact_sha256)
    for relative, expected in manifest["files"].items():
        path = out_dir / relative
        if not path.is_file():
            raise CorruptRepositoryError(f"{relative}: listed in the manifest but missing")
        if path.stat().st_size != expected.get("size") or sha256_file(path) != expected.get("sha256"):
            raise CorruptRepositoryError(f"{relative}: sha256 differs from the manifest (truncated or modified)")
    return manifest
