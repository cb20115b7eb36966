"""The container entry point: `python -m optiserve_jobs --request request.json --out DIR`.

Writes report.json next to the artifact and the small JobResult to the termination-message file,
where the operator reads it without access to the storage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from optiserve.api.job import JobRequest, JobResult
from optiserve_jobs.job import run_job

log = logging.getLogger("optiserve_jobs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optiserve_jobs", description=__doc__)
    parser.add_argument("--request", type=Path, help="JobRequest JSON file (default: $OPTISERVE_JOB_REQUEST as JSON)")
    parser.add_argument("--out", type=Path, required=True, help="where report.json and the repositories go")
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raw = args.request.read_text() if args.request else os.environ.get("OPTISERVE_JOB_REQUEST", "")
    try:
        request = JobRequest.model_validate_json(raw)
    except ValidationError as e:
        result = JobResult(passed=False, reason=f"invalid JobRequest: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}")
    else:
        _, result = run_job(request, args.out, progress=log.info)
    message = result.to_termination_message()
    try:
        args.termination_log.write_text(message)
    except OSError:
        log.warning("cannot write the termination message to %s", args.termination_log)
    sys.stdout.write(message + "\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
