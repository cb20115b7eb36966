"""A Prometheus server on 127.0.0.1 for local mode and tests (Debian's `prometheus` binary)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

import yaml

from optiserve.local.processes import WorkdirProcess, stop_process_group, wait_http_ready
from optiserve.local.triton import free_port


class PrometheusNotInstalledError(RuntimeError):
    pass


class PrometheusServer(WorkdirProcess):
    """Scrapes `targets` (label values -> 'host:port') every `scrape_interval_s`; each target gets
    the label `variant` (or `label`) with its key, which is how variants are told apart."""

    process_name = "prometheus"

    def __init__(self, targets: dict[str, str], *, scrape_interval_s: float = 1.0, label: str = "variant") -> None:
        self.targets = targets
        self.scrape_interval_s = scrape_interval_s
        self.label = label
        self.port = 0
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, object]:
        interval = f"{self.scrape_interval_s:g}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": f"triton-{key}", "static_configs": [{"targets": [address], "labels": {self.label: key}}]}
                for key, address in self.targets.items()
            ],
        }

    def start(self, timeout_s: float = 60.0) -> Self:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="optiserve-prometheus-")
        (self._workdir / "prometheus.yml").write_text(yaml.safe_dump(self._config()))
        self.port = free_port()
        try:
            self._launch()
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_process(self) -> None:
        """Stop the server process only, as a crash or a rescheduled pod would; the port, the
        configuration and the TSDB stay, so `restart` brings back the same server with the
        series scraped so far. Queries meanwhile fail (connection refused)."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, 10.0, "prometheus")

    def restart(self, timeout_s: float = 60.0) -> Self:
        """Start the process again on the same port, over the same TSDB, after `stop_process`."""
        if self._tmpdir is None:
            raise RuntimeError("prometheus was never started: nothing to restart")
        if self.is_running():
            raise RuntimeError("prometheus is running: stop_process() first")
        self._launch()
        self._wait_ready(timeout_s)
        return self

    @property
    def _workdir(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("prometheus has not been started")
        return Path(self._tmpdir.name)

    def _launch(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusNotInstalledError("prometheus is not installed (make setup installs Debian's package)")
        workdir = self._workdir
        with (workdir / "prometheus.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        try:
            wait_http_ready(self._process, f"{self.url}/-/ready", timeout_s, "prometheus", self._log_tail)
        except RuntimeError:
            self.stop_process()
            raise

    def _log_tail(self) -> str:
        return (self._workdir / "prometheus.log").read_text(errors="replace")[-2000:]

    def wait_scraped(self, timeout_s: float = 30.0) -> None:
        """Until every target has been scraped once: counter increases need a sample before them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?query=up", timeout=5) as response:  # noqa: S310 - built from http://127.0.0.1
                result = json.loads(response.read())["data"]["result"]
            if len([r for r in result if r["value"][1] == "1"]) >= len(self.targets):
                return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not scrape all {len(self.targets)} targets within {timeout_s:.0f}s")
