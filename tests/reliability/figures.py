"""The measured figures of the fault suite, one line each, for docs/reliability.md to quote."""

from __future__ import annotations

import json
import sys


def report_figure(item: str, **values: object) -> None:
    """One line of measured figures, `FIGURE {json}` (run pytest with -s to see them).

    Written to the process's own stdout: kopf's test runner swaps `sys.stdout` while the operator runs.
    """
    print(f"FIGURE {json.dumps({'item': item, **values}, default=str)}", file=sys.__stdout__, flush=True)
