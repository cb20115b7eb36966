"""Fixtures of the kind suite: one cluster per session, one namespace per test, a dump on failure.

- Where docker, a Docker engine, kind, helm or kubectl is missing, every test is skipped with a
  reason naming exactly what (`E2E_REQUIRE=1` turns that into a failure, for a CI that must run it).
- `E2E_CLUSTER=<name>` reuses an existing kind cluster (images still built and loaded);
  otherwise the session creates `optiserve-e2e` and deletes it at the end.
- `E2E_KEEP=1` keeps the cluster and every test namespace, to look at after the run.
- On a failure the test's resources, events and logs go to `$E2E_ARTIFACTS` (default
  `e2e/artifacts/<test>/`), and the path is printed.

The default `pytest` run never collects this folder (`testpaths = ["tests"]`); run it with
`make e2e` or `.venv/bin/pytest e2e`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from e2e.kind import REPO_ROOT, KindCluster, missing_requirements
from e2e.steps import Scenario

KEEP = os.environ.get("E2E_KEEP") == "1"
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", REPO_ROOT / "e2e" / "artifacts"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in item.path.parents]
    if not ours:
        return
    missing = missing_requirements()
    if not missing:
        return
    reason = "the kind suite needs " + "; ".join(missing)
    if os.environ.get("E2E_REQUIRE") == "1":
        raise pytest.UsageError(reason)
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's outcome on the item, so the namespace fixture knows whether the test failed."""
    report = yield
    setattr(item, f"e2e_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    workdir = tmp_path_factory.mktemp("kind")
    name = os.environ.get("E2E_CLUSTER", "")
    kind = KindCluster.existing(name, workdir) if name else KindCluster.create("optiserve-e2e", workdir)
    try:
        kind.load_images()
        kind.install_prometheus()
        kind.install_operator()
        yield kind
    finally:
        if not KEEP:
            kind.delete()


@pytest.fixture
def scenario(cluster: KindCluster, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """A namespace of this test's own (restricted Pod Security, the optimizer's account, a models PVC)."""
    test = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")
    namespace = f"e2e-{test}"[:56].rstrip("-") + f"-{os.getpid() % 10000}"
    scenario = Scenario(cluster, namespace, test)
    scenario.given_namespace()
    yield scenario
    failed = any(getattr(getattr(request.node, f"e2e_{when}", None), "failed", False) for when in ("setup", "call"))
    if failed:
        where = scenario.dump(ARTIFACTS / test)
        print(f"\ne2e: {request.node.name} failed; resources, events and logs are in {where}")  # noqa: T201
    if not KEEP:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
