"""The operator in-process, as every tier starts it: kopf's `KopfRunner` over the project's registry.

The tests differ only in what the operator is given (its settings, the reconciler's hooks, which
namespaces it watches, extra kopf flags) and in how they judge its end; `running_operator` takes
those as parameters and does the rest the same way for all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kopf.testing import KopfRunner

from optiserve.handlers import build_registry
from optiserve.kube.client import KubeClient
from optiserve.reconciler import Hooks
from optiserve.settings import Settings


@dataclass(frozen=True)
class KopfRun:
    """How kopf runs: its log, extra flags, and whether the test kills the operator on purpose."""

    verbose: bool = True
    extra_args: Sequence[str] = ()
    killed_on_purpose: bool = False
    """An error in the operator does not fail the block, and its exit is not checked."""


@contextlib.contextmanager
def running_operator(
    client: KubeClient,
    *,
    settings: Settings,
    timeout_s: float,
    hooks: Hooks | None = None,
    namespace: str | None = None,
    kopf: KopfRun | None = None,
) -> Iterator[KopfRunner]:
    """Run the operator with `client` until the block ends; the client is closed after it stops.

    It watches `namespace`, or every namespace when None (on the emulated API: with --namespace,
    kopf lists /api/v1/namespaces, a path kmock 0.8 cannot parse). `timeout_s` bounds the
    runner's start and stop. Unless it is killed on purpose, a block that ended normally also
    asserts that the operator exited cleanly, with its output as the message.
    """
    run = kopf or KopfRun()
    args = ["run", "--standalone", f"--namespace={namespace}" if namespace else "--all-namespaces"]
    args += ["--verbose"] if run.verbose else []
    args += run.extra_args
    registry = build_registry(settings, client, hooks=hooks)
    try:
        with KopfRunner(args, registry=registry, timeout=timeout_s, reraise=not run.killed_on_purpose) as runner:
            yield runner
    finally:
        client.close()
    if not run.killed_on_purpose:
        assert runner.exit_code == 0, runner.output
