"""Resolve model and data URIs to local files."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from optiserve_jobs.errors import SourceError

SUPPORTED_SCHEMES = ("file", "http", "https")


def resolve_uri(uri: str, *, base_dir: Path | None, download_dir: Path) -> Path:
    """Return a local path for `uri`; http(s) content is downloaded into `download_dir`.

    Plain relative paths are resolved against `base_dir` (the manifest's directory), so an example
    can name its data next to itself.
    """
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):
        raw = urllib.parse.unquote(parsed.path) if scheme == "file" else uri
        path = Path(raw).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            raise SourceError(f"{uri}: no such file or directory ({path})")
        return path
    if scheme in ("http", "https"):
        return _download(uri, download_dir)
    raise SourceError(f"{uri}: URI scheme '{scheme}' is not supported (supported: plain paths, {', '.join(SUPPORTED_SCHEMES)})")


def _download(uri: str, download_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(uri).path).name or "download"
    download_dir.mkdir(parents=True, exist_ok=True)
    target = download_dir / name
    partial = target.with_suffix(target.suffix + ".partial")
    try:
        with urllib.request.urlopen(uri, timeout=60) as response, partial.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise SourceError(f"{uri}: download failed: {e}") from e
    partial.rename(target)
    return target
