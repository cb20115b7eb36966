"""How the operator's reconcile threads are split between changes and the resync timer."""

from __future__ import annotations

import pytest

from optiserve.handlers import split_workers


@pytest.mark.parametrize(("workers", "split"), [(16, (12, 4)), (8, (6, 2)), (4, (3, 1)), (2, (1, 1)), (1, (1, 1))])
def test_changes_keep_most_threads_and_the_timer_always_has_one(workers: int, split: tuple[int, int]) -> None:
    assert split_workers(workers) == split
