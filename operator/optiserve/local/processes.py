"""Child processes of local mode and tests: started in their own process group, stopped whole."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import ClassVar, Self

logger = logging.getLogger(__name__)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float, name: str) -> None:
    """SIGTERM the group led by `process`, SIGKILL after `grace_s`, then SIGKILL any leftovers.

    The process must have been started with `start_new_session=True`, so it leads its group and
    its own children (Triton's backend stubs, say) go with it.
    """
    pgid = process.pid
    if process.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0fs; killing it", name, grace_s)
            _signal_group(pgid, signal.SIGKILL)
            process.wait()
    _signal_group(pgid, signal.SIGKILL)  # children can outlive the leader by a moment


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` processes that only spin, each in a session of its own like another user's job: the
    other work of a shared machine, for benchmarks and tests that measure beside it."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            stop_process_group(process, 5.0, "busy loop")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` (an http:// URL on 127.0.0.1) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - built from http://127.0.0.1
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_http_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float, name: str, log_tail: Callable[[], str]) -> None:
    """Until `url` answers 200; RuntimeError with the log's tail if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with code {code}:\n{log_tail()}")
        if http_ok(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready within {timeout_s:.0f}s:\n{log_tail()}")


class WorkdirProcess:
    """A child process with a temporary directory of its own (configuration, log, data).

    Subclasses set `_process` and `_tmpdir` in `start`; `stop`, or the end of a `with` block,
    stops the whole process group and removes the directory.
    """

    process_name: ClassVar[str] = "child process"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout_s: float = 60.0) -> Self:
        raise NotImplementedError

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, 10.0, self.process_name)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start() if self._process is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
