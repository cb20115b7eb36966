"""The online comparator as a child process on 127.0.0.1 (local mode and tests).

It runs `optiserve comparator` with this interpreter, on a free loopback port, and is ready when
`/healthz` answers 200 (the golden set is loaded and the probe loop runs).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from optiserve.local.processes import WorkdirProcess, wait_http_ready
from optiserve.local.triton import free_port

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ComparatorArgs:
    baseline_url: str
    candidate_url: str
    model: str
    golden: Path
    output: str | None = None
    task: str | None = None
    threshold: float | None = None
    interval: str = "1s"
    sample_size: int = 8
    timeout: str = "5s"

    def flags(self) -> list[str]:
        flags = [
            f"--baseline={self.baseline_url}",
            f"--candidate={self.candidate_url}",
            f"--model={self.model}",
            f"--golden={self.golden}",
            f"--interval={self.interval}",
            f"--sample-size={self.sample_size}",
            f"--timeout={self.timeout}",
        ]
        optional = {"--output": self.output, "--task": self.task, "--threshold": self.threshold}
        return flags + [f"{flag}={value}" for flag, value in optional.items() if value is not None]


class ComparatorProcess(WorkdirProcess):
    """Use as a context manager, or call `start` and `stop`; `metrics_url` is what Prometheus scrapes."""

    process_name = "comparator"

    def __init__(self, args: ComparatorArgs) -> None:
        self.args = args
        self.port = 0
        super().__init__()

    @property
    def address(self) -> str:
        """'127.0.0.1:PORT', a Prometheus scrape target."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "optiserve.cli",
            "comparator",
            *self.args.flags(),
            f"--host={_LOOPBACK}",
            f"--port={self.port}",
        ]

    def log_tail(self, characters: int = 3000) -> str:
        if self._tmpdir is None:
            return ""
        log = Path(self._tmpdir.name) / "comparator.log"
        return log.read_text(errors="replace")[-characters:] if log.exists() else ""

    def start(self, timeout_s: float = 30.0) -> Self:
        if self._process is not None:
            raise RuntimeError("the comparator is already started")
        self._tmpdir = tempfile.TemporaryDirectory(prefix="optiserve-comparator-")
        self.port = free_port()
        with (Path(self._tmpdir.name) / "comparator.log").open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_http_ready(self._process, f"{self.url}/healthz", timeout_s, "the comparator", self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self
