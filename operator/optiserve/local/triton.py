"""Run a CPU-only Triton Inference Server as a child process.

The server comes from ``scripts/setup_triton.sh`` (``make setup``), which unpacks
the ``nvidia-pytriton`` wheel (it carries ``tritonserver`` and its Python backend)
and builds a dedicated venv for the Python-backend stub. That venv matters: the
stub imports numpy and onnxruntime from the environment the server is started
from, and with numpy 2.x a model loads READY yet returns empty outputs without
any error. :class:`TritonServer` therefore starts the server with that venv
active, never with the caller's environment.

Only the standard library is imported here, so the operator can use this module
without pulling numpy or onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from optiserve.local.processes import http_ok, stop_process_group

logger = logging.getLogger(__name__)

HOME_ENV = "OPTISERVE_TRITON_HOME"
"""Environment variable overriding where ``scripts/setup_triton.sh`` installed Triton."""

SETUP_COMMAND = "make setup (or scripts/setup_triton.sh)"

_MARKER = ".installed"
_LOOPBACK = "127.0.0.1"
_POLL_S = 0.2
_LOG_TAIL_LINES = 40
_SYSTEM_LIB_DIRS = frozenset({"/lib", "/lib64", "/usr/lib", "/usr/lib64"})
_LOAD_FAILURE = re.compile(r"failed to load '[^']+' version \d+: .*?(?=\\n|\"?$)", re.MULTILINE)
"""Triton's log line for a model that did not load, up to the first (escaped) line break."""


class TritonNotInstalledError(RuntimeError):
    """The local Triton install is missing or incomplete."""


class TritonStartError(RuntimeError):
    """The server (or a model) did not come up; the message ends with its log tail."""


def default_triton_home() -> Path:
    """Where ``scripts/setup_triton.sh`` installs Triton unless told otherwise."""
    return Path.home() / ".cache" / "optiserve" / "triton"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of a local Triton install made by ``scripts/setup_triton.sh``."""

    home: Path
    binary: Path
    backend_dir: Path
    libs_dir: Path
    venv_dir: Path
    python_lib_dir: Path | None = None
    """Directory holding the venv's base ``libpython3.x.so``, when it has one.

    The stub links ``libpython3.x.so.1.0`` dynamically; putting this first on
    the server's library path makes it load the interpreter the venv was built
    from (matching standard library) rather than whatever the system provides,
    and lets it start where the system has no shared libpython at all.
    """

    @property
    def venv_bin(self) -> Path:
        """The server venv's ``bin`` directory, put first on the server's PATH."""
        return self.venv_dir / "bin"


def find_triton_install(home: Path | None = None) -> TritonInstall:
    """Locate the local Triton install.

    ``home`` wins over ``$OPTISERVE_TRITON_HOME``, which wins over
    :func:`default_triton_home`. Raises :class:`TritonNotInstalledError`
    naming the first missing piece and the command that installs it.
    """
    if home is None:
        from_env = os.environ.get(HOME_ENV)
        home = Path(from_env) if from_env else default_triton_home()
    home = home.expanduser().resolve()
    dist = home / "dist"
    server_root = dist / "pytriton" / "tritonserver"
    install = TritonInstall(
        home=home,
        binary=server_root / "bin" / "tritonserver",
        backend_dir=server_root / "backends",
        libs_dir=dist / "nvidia_pytriton.libs",
        venv_dir=home / "venv",
        python_lib_dir=_venv_python_lib_dir(home / "venv"),
    )
    python_backend = install.backend_dir / "python"
    required: list[tuple[str, Path, bool]] = [
        ("tritonserver binary", install.binary, True),
        ("Python backend", python_backend / "libtriton_python.so", False),
        ("Python backend stub", python_backend / "triton_python_backend_stub", True),
        ("server shared libraries", install.libs_dir, False),
        ("server venv", install.venv_bin / "python", True),
        ("install marker (setup did not finish)", home / _MARKER, False),
    ]
    for what, path, executable in required:
        if not path.exists() or (executable and not os.access(path, os.X_OK)):
            raise TritonNotInstalledError(
                f"Triton is not installed under {home}: {what} missing ({path}). "
                f"Run {SETUP_COMMAND}; set {HOME_ENV} to use another location."
            )
    return install


def _venv_python_lib_dir(venv_dir: Path) -> Path | None:
    """The ``lib`` directory next to the venv's base interpreter, if it has its libpython.

    Standard system library directories are left out: the loader searches them anyway.
    """
    try:
        lines = (venv_dir / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    cfg = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip()
    home, version = cfg.get("home"), cfg.get("version", cfg.get("version_info", ""))
    major_minor = ".".join(version.split(".")[:2])
    if not home or not major_minor:
        return None
    lib_dir = Path(home).parent / "lib"
    if str(lib_dir) in _SYSTEM_LIB_DIRS:
        return None
    return lib_dir if (lib_dir / f"libpython{major_minor}.so.1.0").exists() else None


def load_failures(log_text: str) -> list[str]:
    """Triton's own sentences for the models that failed to load, e.g. "failed to load 'digits'
    version 1: Invalid argument: instance group ... has kind KIND_GPU but no GPUs are available"."""
    return list(dict.fromkeys(match.group(0) for match in _LOAD_FAILURE.finditer(log_text)))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free ports (held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class TritonServer:
    """A ``tritonserver`` child process bound to 127.0.0.1 on free ports.

    Use it as a context manager (``with TritonServer(repo) as server: ...``) or
    call :meth:`start` and :meth:`stop`. The server runs in its own process
    group, so :meth:`stop` also ends the Python-backend stub processes.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        install: TritonInstall | None = None,
        log_path: Path | None = None,
        summary_latencies: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.install = install if install is not None else find_triton_install()
        self.summary_latencies = summary_latencies
        self.extra_args = tuple(extra_args)
        self._requested_log_path = log_path
        self._log_path: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None

    # -- addresses -------------------------------------------------------------------------

    def _port(self, index: int) -> int:
        if self._ports is None:
            raise RuntimeError("the Triton server has not been started")
        return self._ports[index]

    @property
    def http_port(self) -> int:
        """HTTP/REST port."""
        return self._port(0)

    @property
    def grpc_port(self) -> int:
        """gRPC port."""
        return self._port(1)

    @property
    def metrics_port(self) -> int:
        """Prometheus metrics port."""
        return self._port(2)

    @property
    def http_url(self) -> str:
        """``127.0.0.1:<port>`` for ``tritonclient.http`` (prefix ``http://`` for raw HTTP)."""
        return f"{_LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<port>`` for ``tritonclient.grpc``."""
        return f"{_LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics endpoint."""
        return f"http://{_LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        """The server log file (a temporary one, removed by :meth:`stop`, unless given)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of ``tritonserver`` (also its process group id) while started."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The ``tritonserver`` command line for the current ports."""
        args = [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.install.backend_dir}",
            f"--http-address={_LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={_LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={_LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
        ]
        if self.summary_latencies:
            args.append("--metrics-config=summary_latencies=true")
        args.extend(self.extra_args)
        return args

    def environment(self) -> dict[str, str]:
        """The server's environment: the caller's, with the server venv active.

        PYTHONPATH and PYTHONHOME are dropped so the stub cannot pick up the
        caller's packages (numpy 2.x among them) instead of the server venv's.
        """
        env = dict(os.environ)
        for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(key, None)
        env["VIRTUAL_ENV"] = str(self.install.venv_dir)
        env["PATH"] = os.pathsep.join(p for p in (str(self.install.venv_bin), os.environ.get("PATH", "")) if p)
        library_path = [self.install.libs_dir]
        if self.install.python_lib_dir is not None:
            library_path.insert(0, self.install.python_lib_dir)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in library_path)
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Start the server on free ports and wait until ``/v2/health/ready``.

        Raises :class:`TritonStartError` (with the log tail) if the process exits
        or is not ready within ``timeout_s``; the process is stopped then.
        A port taken between picking and binding is retried on new ports.
        """
        if self._process is not None:
            raise RuntimeError("the Triton server is already started")
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repository} is not a directory")
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                self._wait_ready(timeout_s)
                return self
            except TritonStartError as exc:
                self.stop()
                # Triton logs "Socket '127.0.0.1:<port>' already in use" for a taken port.
                if "already in use" not in str(exc) or attempt == attempts:
                    raise
                logger.info("a Triton port was taken meanwhile; retrying on other ports")
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        http, grpc, metrics = _free_ports(3)
        self._ports = (http, grpc, metrics)
        if self._requested_log_path is not None:
            self._log_path = Path(self._requested_log_path)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="optiserve-triton-")
            self._log_path = Path(self._tmpdir.name) / "tritonserver.log"
        command = self.command()
        logger.info("starting %s", " ".join(command))
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # own process group: stop() ends the stubs too
            )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive("while starting")
            # Metrics start last; a port clash there ends the server after HTTP is up.
            if http_ok(f"http://{self.http_url}/v2/health/ready") and http_ok(self.metrics_url):
                self._check_alive("while starting")
                logger.info("Triton ready (http %s, grpc %s)", self.http_url, self.grpc_url)
                return
            if time.monotonic() > deadline:
                raise TritonStartError(f"Triton was not ready within {timeout_s:.0f}s\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def wait_model_ready(self, name: str, timeout_s: float = 120.0) -> None:
        """Wait until model ``name`` is ready.

        Fails early with the model's load error when the repository index
        reports it UNAVAILABLE, and with the log tail on timeout.
        """
        quoted = urllib.parse.quote(name, safe="")
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive(f"while waiting for model {name!r}")
            if http_ok(f"http://{self.http_url}/v2/models/{quoted}/ready"):
                return
            reason = self._model_unavailable_reason(name)
            if reason is not None:
                raise TritonStartError(f"model {name!r} failed to load: {reason}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TritonStartError(f"model {name!r} was not ready within {timeout_s:.0f}s\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the server: SIGTERM its process group, SIGKILL after ``grace_s``.

        Safe to call more than once, and on a server that never started.
        """
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, grace_s, "Triton")
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log ('' when there is none)."""
        return "\n".join(self._log_text().splitlines()[-lines:])

    def _log_text(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    def _check_alive(self, when: str) -> None:
        if self._process is None:
            raise TritonStartError("the Triton server is not running")
        code = self._process.poll()
        if code is not None:
            # The first line says why: a model that failed to load ends the server (exit-on-error).
            failures = "; ".join(load_failures(self._log_text()))
            cause = f": {failures}" if failures else ""
            raise TritonStartError(f"tritonserver exited with code {code} {when}{cause}\n{self.log_tail()}")

    def _model_unavailable_reason(self, name: str) -> str | None:
        """The load error of ``name`` from ``/v2/repository/index``, if it has one."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:  # noqa: S310 - built from http://127.0.0.1
                index = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        for entry in index if isinstance(index, list) else []:
            if entry.get("name") == name and entry.get("state") == "UNAVAILABLE":
                reason = str(entry.get("reason") or "")
                # "unloaded" only means not loaded yet (explicit model control).
                return reason if reason and reason != "unloaded" else None
        return None
