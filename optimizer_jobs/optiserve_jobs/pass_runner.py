"""One pass of the job, run and recorded the same way for every kind of model."""

from __future__ import annotations

import time
from pathlib import Path

from optiserve.api.spec import Pass
from optiserve_jobs.errors import JobError
from optiserve_jobs.passes import PassContext, PassOutcome, PassStatus, build_pass
from optiserve_jobs.report import PassReport


def run_pass(config: Pass, model: Path, context: PassContext, index: int, total: int, log: list[PassReport]) -> PassOutcome:
    """Run pass `index` (of `total`) on `model`, announce it (`pass i/n: type`, the line the operator
    reads from the Job's log), record it in `log`, and raise JobError naming it when it failed. A
    library failure inside a pass is that pass's failure; a JobError (a refusal) passes through."""
    context.progress(f"pass {index + 1}/{total}: {config.type}")
    started = time.perf_counter()
    try:
        outcome = build_pass(config).run(model, context, index)
    except JobError:
        raise
    except Exception as e:  # a library failure inside a pass is that pass's failure
        outcome = PassOutcome.failed(f"{type(e).__name__}: {e}")
    seconds = round(time.perf_counter() - started, 2)
    log.append(PassReport(name=config.type, status=outcome.status.value, seconds=seconds, detail=outcome.detail))
    if outcome.status is PassStatus.FAILED:
        raise JobError(f"pass {config.type} failed: {outcome.detail}")
    return outcome
