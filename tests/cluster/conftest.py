"""Cluster tier: the tests here run against a REAL etcd + kube-apiserver (+ kube-controller-manager);
tests/support/control_plane.py starts them and serves them as the fixtures imported below.
See docs/cluster-tests.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.control_plane import BUILD_SCRIPT, STARTUP_TIMES, control_plane, controller_manager, k8s_client

__all__ = ["control_plane", "controller_manager", "k8s_client"]  # fixtures


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"cluster: runs against a real etcd + kube-apiserver built by {BUILD_SCRIPT} (seconds to start)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTUP_TIMES:
        times = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP_TIMES.items())
        terminalreporter.write_line(f"cluster tier start-up: {times}")
