"""nginx on 127.0.0.1 splitting HTTP traffic between a baseline and a candidate (local mode, tests).

Debian's `nginx` binary, no init system: it runs in the foreground (`-g 'daemon off;'`) with a
prefix, config, pid file, logs and temp paths all inside a temporary directory, as an
unprivileged user (`nobody` when started by root). The config is built with `crossplane` from a
directive tree, never from a text template.

- **Weights.** One `upstream` with the two servers, `weight` = the variant's percent. nginx has
  no weight 0: a variant at 0 stays listed but marked `down`, so no request (retries included)
  reaches it. `max_fails=0` keeps nginx's passive health check from taking a failing server out
  for a while, which would silently change the split the canary is judged on.
- **Retries.** `proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent`,
  at most 2 tries: inference requests are POSTs but pure functions of their input, so a request
  that could not be delivered or was refused as unavailable is sent to the other variant. A 500
  (a model error) is passed through: retrying it would hide the candidate's failures.
- **Which variant served.** `X-OptiServe-Variant: baseline|candidate` on every proxied response,
  errors included (`always`), mapped from `$upstream_addr` (its last entry is the server that
  answered, after retries). An upstream's own header of that name is dropped.
- **No client keep-alive** (`keepalive_timeout 0`): on reload the old workers close their idle
  keep-alive connections, and a client that sent its next request on one at that moment gets a
  reset (measured: 15 of ~3,400 requests over 20 reloads). One connection per request on
  loopback costs little next to an inference, and then a reload loses nothing.
- **Reading back.** `GET /_optiserve/split` answers the weights and config revision of the
  workers that serve it, so a reader sees what nginx runs, not what was last written.
- **Changing weights.** `nginx -t` on the new config, then `nginx -s reload` (graceful: old workers
  finish their in-flight requests), then wait until the split endpoint serves the new revision
  *and* every old worker has stopped accepting (see `accepting_workers`): for ~100 ms after a
  reload both generations accept, and requests there would still get the old weights.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import crossplane

from optiserve.local.processes import stop_process_group
from optiserve.local.triton import free_port

SPLIT_PATH = "/_optiserve/split"
VARIANT_HEADER = "X-OptiServe-Variant"
BASELINE, CANDIDATE = "baseline", "candidate"
UNPRIVILEGED_USER = "nobody"
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_POLL_S = 0.05
_LOG_TAIL = 2000

Directive = dict[str, Any]


class NginxNotInstalledError(RuntimeError):
    pass


class NginxConfigError(ValueError):
    """The split cannot be configured as asked; the message names the argument."""


class NginxReloadError(RuntimeError):
    """nginx did not start serving the new config in time; the message ends with its error log."""


@dataclass(frozen=True)
class Backend:
    """An upstream server as `host:port`; the host is an IP address (nginx reports the resolved
    address in `$upstream_addr`, which is how the variant header is derived)."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str, field: str) -> Backend:
        host, sep, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            number = -1
        if not sep or not 0 < number < 65536:
            raise NginxConfigError(f"{field}: expected IP:port (e.g. 127.0.0.1:8000), got {address!r}")
        return cls(host, number)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Split:
    """Percent of the traffic per variant, and the config revision that serves it."""

    candidate: int
    revision: int

    @property
    def baseline(self) -> int:
        return 100 - self.candidate


def _directive(name: str, *args: object, block: list[Directive] | None = None) -> Directive:
    node: Directive = {"directive": name, "args": [str(arg) for arg in args]}
    if block is not None:
        node["block"] = block
    return node


def _server(backend: Backend, weight: int) -> Directive:
    if weight == 0:
        return _directive("server", backend.address, "max_fails=0", "down")
    return _directive("server", backend.address, f"weight={weight}", "max_fails=0")


def _variant_map(baseline: Backend, candidate: Backend) -> Directive:
    """`$upstream_addr` lists every server tried ("a, b"); the last one answered."""
    return _directive(
        "map",
        "$upstream_addr",
        "$optiserve_variant",
        block=[
            _directive("default", ""),
            *(
                _directive(f"~(^|\\s){re.escape(backend.address)}$", name)
                for name, backend in ((BASELINE, baseline), (CANDIDATE, candidate))
            ),
        ],
    )


def _proxy_location() -> Directive:
    return _directive(
        "location",
        "/",
        block=[
            _directive("proxy_pass", "http://optiserve_variants"),
            _directive("proxy_http_version", "1.1"),
            _directive("proxy_next_upstream", "error", "timeout", "http_502", "http_503", "http_504", "non_idempotent"),
            _directive("proxy_next_upstream_tries", 2),
            _directive("proxy_connect_timeout", "5s"),
            _directive("proxy_read_timeout", "300s"),
            _directive("proxy_hide_header", VARIANT_HEADER),
            _directive("add_header", VARIANT_HEADER, "$optiserve_variant", "always"),
        ],
    )


def _split_location(split: Split) -> Directive:
    body = json.dumps({BASELINE: split.baseline, CANDIDATE: split.candidate, "revision": split.revision})
    return _directive(
        "location", "=", SPLIT_PATH, block=[_directive("default_type", "application/json"), _directive("return", 200, body)]
    )


def render_config(workdir: Path, port: int, baseline: Backend, candidate: Backend, split: Split) -> str:
    """The whole nginx.conf: one worker, everything it writes inside `workdir`, the split on `port`."""
    if not 0 <= split.candidate <= 100:
        raise NginxConfigError(f"candidate weight: must be from 0 to 100, got {split.candidate}")
    if baseline == candidate:
        raise NginxConfigError(f"candidate: same address as the baseline ({baseline.address})")
    http = [
        _directive("access_log", "off"),
        _directive("keepalive_timeout", 0),
        *(_directive(f"{name}_temp_path", workdir / f"{name}_temp") for name in _TEMP_PATHS),
        _directive("client_max_body_size", "64m"),
        _variant_map(baseline, candidate),
        _directive(
            "upstream",
            "optiserve_variants",
            block=[_server(baseline, split.baseline), _server(candidate, split.candidate)],
        ),
        _directive(
            "server",
            block=[_directive("listen", f"127.0.0.1:{port}"), _split_location(split), _proxy_location()],
        ),
    ]
    config = [
        _directive("worker_processes", 1),
        _directive("worker_shutdown_timeout", "300s"),
        _directive("pid", workdir / "nginx.pid"),
        _directive("error_log", workdir / "error.log", "notice"),
        _directive("events", block=[_directive("worker_connections", 1024)]),
        _directive("http", block=http),
    ]
    return str(crossplane.build(config)) + "\n"


def accepting_workers(master_pid: int) -> frozenset[int]:
    """The master's worker processes that still accept connections (Linux `/proc`).

    After a reload the master starts new workers, waits 100 ms, then tells the old ones to quit;
    until an old worker handles that it keeps accepting connections with the old weights. It sets
    its title to "worker process is shutting down" in the same step in which it closes its
    listening sockets, so a worker without that title is one that may still take new requests.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == master_pid and "worker process" in title and "shutting down" not in title:
            found.add(int(entry.name))
    return frozenset(found)


def _user_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to run nginx as: `user`, or `nobody` when this process is root; None = as is."""
    if user is None and os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user or UNPRIVILEGED_USER)
    except KeyError as e:
        raise NginxConfigError(f"user: no such user {user or UNPRIVILEGED_USER!r}") from e
    return entry.pw_uid, entry.pw_gid


class NginxServer:
    """Splits HTTP on a free 127.0.0.1 port between `baseline` and `candidate` (each IP:port)."""

    def __init__(self, baseline: str, candidate: str, *, candidate_weight: int = 0, user: str | None = None) -> None:
        self.baseline = Backend.parse(baseline, "baseline")
        self.candidate = Backend.parse(candidate, "candidate")
        self._ids = _user_ids(user)
        self._split = Split(candidate_weight, 1)
        self.port = 0
        self._binary = ""
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _paths(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("nginx is not started")
        return self._workdir

    @property
    def config_path(self) -> Path:
        return self._paths() / "nginx.conf"

    def command(self, *args: str) -> list[str]:
        """The nginx command line for this instance (its prefix, config and error log) plus `args`."""
        workdir = self._paths()
        return [self._binary, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log"), *args]

    def _popen_ids(self) -> dict[str, Any]:
        return {} if self._ids is None else {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}

    def _write_config(self, split: Split) -> None:
        workdir = self._paths()
        text = render_config(workdir, self.port, self.baseline, self.candidate, split)
        staged = workdir / "nginx.conf.new"
        staged.write_text(text)
        staged.chmod(0o644)
        staged.replace(workdir / "nginx.conf")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, check=False, **self._popen_ids())

    def error_log(self) -> str:
        path = self._paths() / "error.log"
        return path.read_text(errors="replace")[-_LOG_TAIL:] if path.exists() else ""

    def start(self, timeout_s: float = 30.0) -> Self:
        binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if binary is None:
            raise NginxNotInstalledError("nginx is not installed (make setup installs Debian's nginx-light)")
        self._binary = binary
        self._workdir = Path(tempfile.mkdtemp(prefix="optiserve-nginx-"))
        if self._ids is not None:
            os.chown(self._workdir, *self._ids)
        self.port = free_port()
        self._write_config(self._split)
        log = (self._workdir / "nginx.out").open("wb")
        self._process = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._popen_ids()
        )
        log.close()
        try:
            self._wait_for_revision(self._split.revision, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def served_split(self) -> Split | None:
        """The split the running workers serve; None when nginx does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}{SPLIT_PATH}", timeout=2) as response:  # noqa: S310 - http://127.0.0.1
                document = json.loads(response.read())
            return Split(int(document[CANDIDATE]), int(document["revision"]))
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            return None

    def _wait_for_revision(self, revision: int, timeout_s: float, retired: frozenset[int] = frozenset()) -> Split:
        """Until a worker serves `revision` and none of the `retired` workers accepts connections."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise NginxReloadError(f"nginx exited with {code}: {self.error_log()}")
            served = self.served_split()
            if served is not None and served.revision == revision and not retired & accepting_workers(self._process.pid):
                return served
            if time.monotonic() > deadline:
                raise NginxReloadError(f"nginx serves no config revision {revision} after {timeout_s:.0f}s: {self.error_log()}")
            time.sleep(_POLL_S)

    def set_candidate_weight(self, candidate_weight: int, timeout_s: float = 10.0) -> Split:
        """Reload gracefully with the new weights; return the split once nginx serves it.

        A config nginx refuses (`nginx -t`) raises NginxConfigError and leaves the running one as is.
        """
        new = Split(candidate_weight, self._split.revision + 1)
        workdir = self._paths()
        previous = (workdir / "nginx.conf").read_text()
        self._write_config(new)
        tested = self._run("-t", "-q")
        if tested.returncode != 0:
            (workdir / "nginx.conf").write_text(previous)
            raise NginxConfigError(f"nginx refused the new config: {tested.stderr.strip()}")
        assert self._process is not None
        retired = accepting_workers(self._process.pid)
        reloaded = self._run("-s", "reload")
        if reloaded.returncode != 0:
            raise NginxReloadError(f"nginx -s reload failed: {reloaded.stderr.strip()}")
        self._split = new
        return self._wait_for_revision(new.revision, timeout_s, retired)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, 10.0, "nginx")
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start() if self._process is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
