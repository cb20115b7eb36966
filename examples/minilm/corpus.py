"""An unlabeled English training corpus from Debian's `fortunes` package, for distilling MiniLM.

Real sentences written by people (quotations, jokes, definitions), read from the installed
package, never from a model hub. Entries are split into sentences; lines of ASCII art, very short
or very long sentences, and every sentence of the example's validation and calibration sets are
left out. The order is fixed (sorted, then shuffled with a fixed seed), so the corpus is the same
on every machine with the same package version.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SKIPPED_COLLECTIONS = frozenset({"art", "ascii-art", "translate-me"})
MIN_WORDS, MAX_WORDS = 6, 40
MIN_LETTER_SHARE = 0.85
SEED = 0
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def collections(root: Path = FORTUNES) -> list[Path]:
    """The package's fortune files (each has a `.dat` index beside it), art collections left out."""
    return sorted(p for p in root.glob("*") if p.with_suffix(".dat").exists() and p.name not in SKIPPED_COLLECTIONS)


def _entries(path: Path) -> Iterator[str]:
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        lines = [line.strip() for line in entry.splitlines() if line.strip() and not line.strip().startswith("--")]
        yield re.sub(r"\s+", " ", " ".join(lines))


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return letters / len(sentence) >= MIN_LETTER_SHARE


def sentences(files: Iterable[Path], exclude: set[str]) -> list[str]:
    found = {
        sentence
        for path in files
        for entry in _entries(path)
        for sentence in _SENTENCE_END.split(entry)
        if _is_prose(sentence) and sentence.strip().lower() not in exclude
    }
    ordered = sorted(found)
    random.Random(SEED).shuffle(ordered)  # noqa: S311  # a fixed order, not a secret
    return ordered


def write_corpus(target: Path, held_out: list[Path], root: Path = FORTUNES) -> int:
    """Write the corpus, one sentence per line; returns how many. Sentences of `held_out` files never appear."""
    exclude = {line.strip().lower() for path in held_out for line in path.read_text().splitlines() if line.strip()}
    found = sentences(collections(root), exclude)
    if not found:
        raise SystemExit(f"no sentences found under {root}: install Debian's fortunes package (scripts/setup.sh does)")
    partial = target.with_suffix(".partial")
    partial.write_text("\n".join(found) + "\n")
    partial.rename(target)
    return len(found)
