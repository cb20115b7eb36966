"""A REAL etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1, for the cluster tier and
the reliability tests that need a real API server (their conftest imports the fixtures).

The binaries are built from source by `tests/controlplane/build.sh` into
`${OPTISERVE_CONTROLPLANE_HOME:-~/.cache/optiserve/controlplane}/bin` (outside the repository).
When they are missing the fixtures FAIL (never skip) and name that script: a cluster test that
silently does not run proves nothing. See docs/cluster-tests.md.

Everything listens on free 127.0.0.1 ports, keeps its data in pytest's tmp dir, runs in its own
process group, and is stopped (SIGTERM, then SIGKILL) at the end of the session.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest

CONTROLPLANE_HOME = Path(os.environ.get("OPTISERVE_CONTROLPLANE_HOME", Path.home() / ".cache/optiserve/controlplane"))
BIN_DIR = CONTROLPLANE_HOME / "bin"
BUILD_SCRIPT = "tests/controlplane/build.sh"
# The official Python client, installed into the running environment when it is missing.
KUBERNETES_CLIENT_VERSION = "37.0.2"
ADMIN_USER = "optiserve-admin"
START_TIMEOUT_S = 120.0
# Start-up times measured in this session, reported at the end of the run.
STARTUP_TIMES: dict[str, float] = {}


def binary(name: str) -> Path:
    """Path of a control-plane binary; fails the test (never skips) when it has not been built."""
    path = BIN_DIR / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing: the cluster tier needs a real control plane built from source. "
            f"Run `{BUILD_SCRIPT}` first (about 5 minutes cold on 2 cores, seconds when cached), "
            "or set OPTISERVE_CONTROLPLANE_HOME to where it was built. "
            'Deselect this tier with `-m "not cluster"`.',
            pytrace=False,
        )
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open together, so never the same one twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when pytest dies without tearing down (kill -9, os._exit on timeout)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """A child in its own process group, its output in a log file; `stop()` ends the whole group."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the whole group, then SIGKILL to whatever is left of it (the leader or anything it started)."""
        pgid = self.popen.pid  # start_new_session: the child leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def fail(self, what: str) -> None:
        status = "still running" if self.running() else f"exited with {self.popen.returncode}"
        pytest.fail(f"{self.name} {what} ({status}); last lines of {self.log_path}:\n{self.tail()}", pytrace=False)


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]  # in order, repeated headers (Warning) repeated
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Cluster:
    """Where the control plane is and how to talk to it as an admin (group system:masters)."""

    server: str
    token: str
    ca_file: Path
    kubeconfig: Path
    workdir: Path
    etcd_url: str
    startup_s: float
    processes: list[Process] = field(default_factory=list)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> HttpAnswer:
        """One raw HTTPS request with the admin token; returns the answer whatever its status."""
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
                return HttpAnswer(resp.status, list(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            return HttpAnswer(err.code, list(err.headers.items()), err.read())

    def log(self, name: str, lines: int = 60) -> str:
        for proc in self.processes:
            if proc.name == name:
                return proc.tail(lines)
        raise KeyError(name)


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr}", pytrace=False)


def make_pki(pki: Path) -> None:
    """A throw-away CA, a serving certificate for 127.0.0.1 signed by it, and a service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
        "-subj", "/CN=optiserve-cluster-tests-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=pki,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key", "-out", "serving.csr", "-subj", "/CN=kube-apiserver",
        cwd=pki,
    )  # fmt: skip
    (pki / "serving.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
    )
    _openssl(
        "x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "serving.ext", "-out", "serving.crt",
        cwd=pki,
    )  # fmt: skip
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "optiserve-tests", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "optiserve-tests", "context": {"cluster": "optiserve-tests", "user": ADMIN_USER}}],
        "current-context": "optiserve-tests",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    path.chmod(0o600)


def _wait(proc: Process, what: str, probe: Any, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running():
            proc.fail(f"exited before {what}")
        try:
            if probe():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError, ValueError):
            pass
        time.sleep(0.2)
    proc.fail(f"not {what} after {timeout_s:.0f} s")


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
        return bool(json.loads(resp.read()).get("health") == "true")


def start_control_plane(workdir: Path) -> Cluster:
    """Start etcd and kube-apiserver; the caller owns `cluster.processes` and must stop them."""
    etcd_bin, apiserver_bin = binary("etcd"), binary("kube-apiserver")
    t0 = time.monotonic()
    pki = workdir / "pki"
    make_pki(pki)
    token = secrets.token_hex(24)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{token},{ADMIN_USER},{ADMIN_USER}-uid,"system:masters"\n')
    tokens.chmod(0o600)
    etcd_port, peer_port, secure_port = free_ports(3)
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://127.0.0.1:{secure_port}"
    cluster = Cluster(
        server=server,
        token=token,
        ca_file=pki / "ca.crt",
        kubeconfig=workdir / "kubeconfig",
        workdir=workdir,
        etcd_url=etcd_url,
        startup_s=0.0,
    )
    write_kubeconfig(cluster.kubeconfig, server, cluster.ca_file, token)
    try:
        etcd = Process(
            "etcd",
            [
                str(etcd_bin),
                "--name=optiserve-tests",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=optiserve-tests=http://127.0.0.1:{peer_port}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throw-away data: no fsync, faster on a shared disk
                "--log-level=warn",
            ],
            workdir / "etcd.log",
            workdir,
        )
        cluster.processes.append(etcd)
        _wait(etcd, "healthy", lambda: _etcd_healthy(etcd_url))

        apiserver = Process(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={secure_port}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                # 127.0.0.1 may not be an Endpoints address (loopback): without this the server logs
                # "unable to sync kubernetes service" every few seconds. No pod here uses that service.
                "--endpoint-reconciler-type=none",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--profiling=false",
                "--v=1",
            ],
            workdir / "kube-apiserver.log",
            workdir,
        )
        cluster.processes.append(apiserver)
        _wait(apiserver, "ready (/readyz)", lambda: cluster.request("GET", "/readyz", timeout=3).status == 200)
    except BaseException:
        stop_all(cluster.processes)
        raise
    cluster.startup_s = time.monotonic() - t0
    return cluster


def stop_all(processes: list[Process]) -> None:
    for proc in reversed(processes):
        proc.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real etcd + kube-apiserver for the whole session; stopped (process groups) at the end."""
    cluster = start_control_plane(tmp_path_factory.mktemp("controlplane"))
    STARTUP_TIMES["etcd + kube-apiserver"] = cluster.startup_s
    try:
        yield cluster
    finally:
        stop_all(cluster.processes)


def start_controller_manager(cluster: Cluster) -> Process:
    """kube-controller-manager against `cluster` (garbage collector, namespace, service-account controllers...)."""
    kcm_bin = binary("kube-controller-manager")
    (port,) = free_ports(1)
    pki = cluster.ca_file.parent
    kcm = Process(
        "kube-controller-manager",
        [
            str(kcm_bin),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={cluster.workdir / 'kcm-certs'}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={cluster.ca_file}",
            "--use-service-account-credentials=false",
            "--v=1",
        ],
        cluster.workdir / "kube-controller-manager.log",
        cluster.workdir,
    )
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # its own self-signed cert; loopback only, /healthz only

    def healthy() -> bool:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=insecure, timeout=2) as resp:
            return bool(resp.status == 200)

    try:
        _wait(kcm, "healthy (/healthz)", healthy)
    except BaseException:
        kcm.stop()
        raise
    return kcm


@pytest.fixture(scope="session")
def controller_manager(control_plane: Cluster) -> Iterator[Process]:
    """kube-controller-manager for tests that need controllers (garbage collection of owned objects...)."""
    t0 = time.monotonic()
    kcm = start_controller_manager(control_plane)
    STARTUP_TIMES["kube-controller-manager"] = time.monotonic() - t0
    control_plane.processes.append(kcm)  # also stopped by control_plane's teardown if this one is skipped
    try:
        yield kcm
    finally:
        kcm.stop()


def kubernetes_module() -> ModuleType:
    """The official `kubernetes` client package; pip-installs the pinned version when it is missing."""
    try:
        return importlib.import_module("kubernetes.client")
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", f"kubernetes=={KUBERNETES_CLIENT_VERSION}"], check=True
        )
        importlib.invalidate_caches()
        return importlib.import_module("kubernetes.client")


def kubernetes_client(cluster: Cluster) -> Any:
    """A `kubernetes.client.ApiClient` for `cluster`, as the admin user, verifying the serving certificate."""
    k8s = kubernetes_module()
    configuration = k8s.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.ca_file)
    configuration.api_key = {"authorization": cluster.token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)


@pytest.fixture(scope="session")
def k8s_client(control_plane: Cluster) -> Iterator[Any]:
    client = kubernetes_client(control_plane)
    try:
        yield client
    finally:
        client.close()
