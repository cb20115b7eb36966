"""Leader election on a Lease (client-go's rules) on a fake clock and an in-memory Lease."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from optiserve.elected import EXIT_LOST, run_elected
from optiserve.kube.client import ApiError
from optiserve.kube.lease import LeaseRecord
from optiserve.leader import Attempt, LeaderElector, LeaseTimings
from optiserve.settings import LeaderElectionSettings, Settings, SettingsError
from tests.support.memory_lease import MemoryLease

TIMINGS = LeaseTimings(duration_s=15.0, renew_deadline_s=10.0, retry_s=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wall_clock(clock: Clock, skew_s: float = 0.0) -> object:
    return lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=clock.now + skew_s)


def elector(lease: MemoryLease, identity: str, clock: Clock, skew_s: float = 0.0) -> LeaderElector:
    return LeaderElector(lease, identity, TIMINGS, clock=clock, wall=wall_clock(clock, skew_s))  # type: ignore[arg-type]


def test_the_first_takes_a_free_lease_and_the_second_waits() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert a.try_once() is Attempt.LEADING and a.acting()
    assert b.try_once() is Attempt.HELD and not b.acting()
    assert lease.record is not None and lease.record.holder == "a" and lease.record.transitions == 0


def test_a_renewing_leader_is_never_replaced() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    a.try_once()
    for _ in range(100):  # 200 s, far past one lease duration
        clock.now += TIMINGS.retry_s
        assert a.try_once() is Attempt.LEADING
        assert b.try_once() is Attempt.HELD
    assert lease.record is not None and lease.record.holder == "a"


def test_a_standby_takes_over_one_duration_after_the_record_stopped_changing() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    a.try_once()
    assert b.try_once() is Attempt.HELD  # b first sees the record now
    clock.now += TIMINGS.duration_s - 0.1
    assert b.try_once() is Attempt.HELD
    clock.now += 0.2
    assert b.try_once() is Attempt.LEADING
    assert lease.record is not None and (lease.record.holder, lease.record.transitions) == ("b", 1)


def test_expiry_is_timed_by_the_standbys_clock_not_the_leaders_timestamps() -> None:
    """The leader's wall clock is an hour behind: its renewTime always looks expired, yet it
    changes on every renewal, so the standby waits."""
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock, skew_s=-3600), elector(lease, "b", clock)
    a.try_once()
    for _ in range(20):
        clock.now += TIMINGS.retry_s
        a.try_once()
        assert b.try_once() is Attempt.HELD


def test_of_two_standbys_racing_for_an_expired_lease_one_wins() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    a.try_once()
    c = elector(_ReadsThen(lease.record, lease), "c", clock)  # type: ignore[arg-type]
    assert b.try_once() is Attempt.HELD and c.try_once() is Attempt.HELD
    clock.now += TIMINGS.duration_s + 1
    assert b.try_once() is Attempt.LEADING
    assert c.try_once() is Attempt.FAILED, "c read before b's write landed: its write at the old version is refused"
    assert lease.record is not None and lease.record.holder == "b" and not c.acting()


class _ReadsThen:
    """Answers one read with an old record, then writes to the real lease."""

    def __init__(self, old: LeaseRecord | None, lease: MemoryLease) -> None:
        self.old, self.lease = old, lease

    def get(self) -> LeaseRecord | None:
        return self.old

    def create(self, record: LeaseRecord) -> str:
        return self.lease.create(record)

    def replace(self, record: LeaseRecord) -> str:
        return self.lease.replace(record)


def test_a_leader_that_cannot_renew_stops_acting_before_anyone_else_may_start() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    a.try_once()
    lease.down = True
    clock.now += TIMINGS.renew_deadline_s - 0.5
    assert a.try_once() is Attempt.FAILED and a.acting()
    clock.now += 1.0
    assert not a.acting(), "past the renew deadline: stopped"
    assert TIMINGS.renew_deadline_s < TIMINGS.duration_s, "... which is before the lease expires for the others"


def test_a_released_lease_is_taken_at_once() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    a.try_once()
    assert b.try_once() is Attempt.HELD
    a.release()
    assert not a.acting()
    assert b.try_once() is Attempt.LEADING
    assert lease.record is not None and lease.record.holder == "b"


def test_keep_leading_returns_false_on_loss_and_true_on_stop() -> None:
    lease = MemoryLease()
    fast = LeaseTimings(duration_s=0.3, renew_deadline_s=0.2, retry_s=0.01)
    a = LeaderElector(lease, "a", fast)
    assert a.wait_to_lead(threading.Event())
    stop = threading.Event()
    stop.set()
    assert a.keep_leading(stop) is True
    assert lease.record is not None
    lease.record = replace(lease.record, holder="intruder")
    assert a.keep_leading(threading.Event()) is False and not a.acting()


def test_leader_election_settings_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="OPTISERVE_LEASE_NAMESPACE"):
        Settings.from_env({"OPTISERVE_LEADER_ELECTION": "true"})
    with pytest.raises(SettingsError, match="OPTISERVE_LEASE_RENEW_DEADLINE_SECONDS"):
        Settings.from_env({"OPTISERVE_LEASE_RENEW_DEADLINE_SECONDS": "20"})
    with pytest.raises(SettingsError, match="OPTISERVE_LEADER_ELECTION"):
        Settings.from_env({"OPTISERVE_LEADER_ELECTION": "sometimes"})
    election = Settings.from_env({"OPTISERVE_LEADER_ELECTION": "true", "POD_NAMESPACE": "optiserve-system"}).leader_election
    assert election == LeaderElectionSettings(enabled=True, namespace="optiserve-system")


FAST = LeaseTimings(duration_s=0.6, renew_deadline_s=0.4, retry_s=0.02)


def test_a_leader_whose_lease_is_taken_stops_operating_and_exits_to_come_back_as_a_standby() -> None:
    lease = MemoryLease()
    leader = LeaderElector(lease, "a", FAST)
    operated = threading.Event()

    def operate(stop: threading.Event) -> None:
        operated.set()
        assert lease.record is not None
        lease.record = replace(lease.record, holder="intruder")  # another operator wrote the Lease
        assert stop.wait(5), "the operator was not told to stop"

    assert run_elected(leader, operate, health=None) == EXIT_LOST
    assert operated.is_set() and not leader.acting()
    assert lease.record is not None and lease.record.holder == "intruder", "a lost lease is not released"


def test_a_leader_that_stops_on_its_own_releases_the_lease() -> None:
    lease = MemoryLease()
    leader, standby = LeaderElector(lease, "a", FAST), LeaderElector(lease, "b", FAST)

    def operate(stop: threading.Event) -> None:
        assert standby.try_once() is Attempt.HELD

    assert run_elected(leader, operate, health=None) == 0
    assert lease.record is not None and lease.record.holder == ""
    assert standby.try_once() is Attempt.LEADING, "released: taken at the next try, not after the duration"


class RefusingLease(MemoryLease):
    def get(self) -> LeaseRecord | None:
        raise ApiError('read Lease ns/optiserve: HTTP 403 leases "optiserve" is forbidden', 403)


def test_a_refused_lease_is_reported_once_not_waited_on_silently(caplog: pytest.LogCaptureFixture) -> None:
    refused = LeaderElector(RefusingLease(), "a", TIMINGS)
    assert [refused.try_once() for _ in range(3)] == [Attempt.FAILED] * 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "403" in errors[0] and "forbidden" in errors[0]
