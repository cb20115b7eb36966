"""The per-object locks between reconciles and cleanup (kopf runs sync handlers in threads)."""

from __future__ import annotations

import threading

from optiserve.handlers import REMEMBERED_DELETIONS, ObjectLocks


def test_a_cleaned_up_object_is_no_longer_live() -> None:
    locks = ObjectLocks()
    with locks.hold("uid-1") as live:
        assert live
        assert locks.deleted("uid-1") is True
    with locks.hold("uid-1") as live:
        assert not live, "a reconcile that waited for the cleanup must do nothing"
    with locks.hold("uid-2") as live:
        assert live, "other objects are unaffected"


def test_a_second_cleanup_of_the_same_object_is_not_the_first() -> None:
    locks = ObjectLocks()
    with locks.hold("uid-1"):
        assert locks.deleted("uid-1") is True
    with locks.hold("uid-1"):
        assert locks.deleted("uid-1") is False


def test_a_reconcile_waits_for_the_cleanup_holding_the_lock() -> None:
    locks = ObjectLocks()
    seen: list[bool] = []
    cleanup_holds, reconcile_done = threading.Event(), threading.Event()

    def reconcile() -> None:
        cleanup_holds.wait()
        with locks.hold("uid-1") as live:
            seen.append(live)
        reconcile_done.set()

    thread = threading.Thread(target=reconcile)
    thread.start()
    with locks.hold("uid-1"):
        cleanup_holds.set()
        assert not reconcile_done.wait(0.2), "the reconcile got in while the cleanup held the lock"
        locks.deleted("uid-1")
    thread.join(timeout=5)
    assert seen == [False]


def test_remembered_deletions_are_bounded() -> None:
    locks = ObjectLocks()
    for index in range(REMEMBERED_DELETIONS + 10):
        locks.deleted(f"uid-{index}")
    with locks.hold("uid-0") as live:
        assert live, "the oldest deletions are forgotten"
    with locks.hold(f"uid-{REMEMBERED_DELETIONS + 9}") as live:
        assert not live
