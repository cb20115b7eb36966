"""Child processes of local mode and tests: started in their own process group, stopped whole."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

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
