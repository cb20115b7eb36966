"""Fixtures of the end-to-end suite: one cluster per session, one namespace per test, a dump on failure.

- The cluster is the one-node cluster built here (`e2e.node_cluster`, no registry needed) unless
  `E2E_CLUSTER_TYPE=kind`: then kind with its stock images (`E2E_CLUSTER=<name>` reuses an existing
  kind cluster). Either is deleted at the end of the session.
- Where a tool the cluster needs is missing, every test is skipped with a reason naming exactly what
  (`E2E_REQUIRE=1` turns that into a failure, for a CI that must run it).
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

from e2e import kind, node_cluster
from e2e.cluster import REPO_ROOT, Cluster
from e2e.steps import Scenario

KEEP = os.environ.get("E2E_KEEP") == "1"
USE_KIND = os.environ.get("E2E_CLUSTER_TYPE", "node") == "kind"
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", REPO_ROOT / "e2e" / "artifacts"))


def missing() -> list[str]:
    """What this machine lacks for the chosen cluster, each with how it was found missing."""
    return kind.missing_requirements() if USE_KIND else node_cluster.missing_requirements()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in item.path.parents]
    if not ours:
        return
    lacking = missing()
    if not lacking:
        return
    reason = f"the e2e suite ({'kind' if USE_KIND else 'node cluster'}) needs " + "; ".join(lacking)
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


def _start_cluster(workdir: Path) -> Cluster:
    if not USE_KIND:
        return node_cluster.NodeCluster.start(workdir)
    name = os.environ.get("E2E_CLUSTER", "")
    made = kind.KindCluster.existing(name, workdir) if name else kind.KindCluster.create("optiserve-e2e", workdir)
    made.load_images()
    return made


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = _start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        made.install_prometheus()
        made.install_gateway()
        made.install_operator()
        yield made
    finally:
        if not KEEP:
            made.delete()


@pytest.fixture
def scenario(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Scenario]:
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
