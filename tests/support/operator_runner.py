"""The operator in-process, as every tier starts it: kopf's `KopfRunner` over the project's registry.

The tests differ only in what the operator is given (its settings, the reconciler's hooks, which
namespaces it watches, extra kopf flags) and in how they judge its end; `running_operator` takes
those as parameters and does the rest the same way for all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from kopf.testing import KopfRunner

from optiserve.handlers import build_registry
from optiserve.kube.client import KubeClient
from optiserve.reconciler import Hooks
from optiserve.settings import Settings


@contextlib.contextmanager
def running_operator(
    client: KubeClient,
    *,
    settings: Settings,
    timeout_s: float,
    hooks: Hooks | None = None,
    namespace: str | None = None,
    verbose: bool = True,
    extra_args: Sequence[str] = (),
    reraise: bool = True,
    check_exit: bool = True,
) -> Iterator[KopfRunner]:
    """Run the operator with `client` until the block ends; the client is closed after it stops.

    It watches `namespace`, or every namespace when None (on the emulated API: with --namespace,
    kopf lists /api/v1/namespaces, a path kmock 0.8 cannot parse). `timeout_s` bounds the
    runner's start and stop. With `check_exit`, a block that ended normally also asserts that the
    operator exited cleanly, with its output as the message. `reraise` False keeps an error in the
    operator from failing the block: for tests that kill it on purpose.
    """
    args = ["run", "--standalone", f"--namespace={namespace}" if namespace else "--all-namespaces"]
    args += ["--verbose"] if verbose else []
    args += extra_args
    registry = build_registry(settings, client, hooks=hooks)
    try:
        with KopfRunner(args, registry=registry, timeout=timeout_s, reraise=reraise) as runner:
            yield runner
    finally:
        client.close()
    if check_exit:
        assert runner.exit_code == 0, runner.output
