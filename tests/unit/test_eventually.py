"""The tests' one bounded poll (tests/support/eventually.py): it returns what satisfied it, or fails."""

from __future__ import annotations

import itertools

import pytest

from tests.support.eventually import eventually


def test_it_returns_the_first_value_that_satisfies_the_condition() -> None:
    counter = itertools.count()
    found = eventually(lambda: next(counter), timeout_s=5, interval_s=0, description="three", satisfied=lambda n: n >= 3)
    assert found == 3


def test_at_the_deadline_it_fails_with_the_description_and_the_last_value() -> None:
    counter = itertools.count()
    with pytest.raises(pytest.fail.Exception, match=r"waiting for a miracle; last seen: \d+\nthe log's tail") as failure:
        eventually(
            lambda: next(counter) * 0, timeout_s=0.05, interval_s=0.01, description="a miracle", detail=lambda: "the log's tail"
        )
    assert "last seen: 0" in str(failure.value)


def test_none_is_never_a_value_even_for_a_condition_that_accepts_anything() -> None:
    with pytest.raises(pytest.fail.Exception, match="last seen: None"):
        eventually(lambda: None, timeout_s=0.05, interval_s=0.01, description="anything", satisfied=lambda value: True)
