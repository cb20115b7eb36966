"""Operator scale: N OptimizedModels reconciled to the Job-created state (phase Optimizing, one
Job each), against the emulated API (kmock, component tier) and a real kube-apiserver + etcd
(cluster tier, built by tests/controlplane/build.sh; no controller manager, so no Job runs).

`optiserve operator` runs as its own process, with its default settings (10 s resync), so its
RSS and CPU are its own; the API runs in another process. A watch follows the models.

- `--mode burst`: the operator runs; the models are created from 4 client threads as fast as the
  API takes them. The rate is N over the time from the first create to the last model seen in
  Optimizing (so it cannot exceed the create rate, reported beside it).
- `--mode backlog`: the models exist before the operator starts (kopf's resume path); the rate is
  N over the time from the operator's launch (Python start-up included) to the last one.

Then, over a steady window, nothing changes but the resync loop runs (operator CPU and resync
reconciles per second), and `--late` more models are created one by one, 0.5 s apart: how long a
new model waits in a busy operator. Prints JSON and a markdown table.

    .venv/bin/python bench/operator_scale.py --objects 1000 --api emulator --api apiserver --mode burst
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes import client as k8s
from kubernetes import watch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # tests/ holds the emulator and the control-plane fixture

GROUP, VERSION, PLURAL = "optiserve.io", "v1alpha1", "optimizedmodels"
NAMESPACE = "scale"
CREATE_THREADS = 4
LATE_SPACING_S = 0.5
TARGET_OBJECTS_PER_S = 20.0
TARGET_RSS_MB = 150.0
MB = 1024 * 1024
EMULATOR_REQUEST_HISTORY = 1
"""kmock matches each request against its whole request history (quadratic over a long run); the
bench keeps the last few, as no reaction here counts requests."""


# --- the APIs ------------------------------------------------------------------------------------------------------


@dataclass
class Api:
    name: str
    kubeconfig: Path
    client: k8s.ApiClient
    pids: list[int]
    """The API's own processes (their CPU is reported beside the operator's)."""


def _serve_emulator(conn: multiprocessing.connection.Connection) -> None:
    """In a child process: the component tier's emulator, until told to stop."""
    from tests.support.emulated_cluster import DISCOVERY
    from tests.support.kube_emulator import KubeEmulator, serve_emulator

    with serve_emulator(DISCOVERY, functools.partial(KubeEmulator, request_history=EMULATOR_REQUEST_HISTORY)) as running:
        conn.send(running.url)
        conn.recv()


def _plain_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bench", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
        "current-context": "bench",
    }
    path.write_text(yaml.safe_dump(config))


@contextlib.contextmanager
def emulator_api(workdir: Path) -> Iterator[Api]:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve_emulator, args=(theirs,), daemon=True)
    process.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the emulator did not start within 60 s")
        url = str(ours.recv())
        kubeconfig = workdir / "emulator.kubeconfig"
        _plain_kubeconfig(kubeconfig, url)
        client = k8s.ApiClient(k8s.Configuration(host=url))
        assert process.pid is not None
        yield Api("emulator (kmock 0.8)", kubeconfig, client, [process.pid])
        client.close()  # type: ignore[no-untyped-call]
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            ours.send("stop")
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


@contextlib.contextmanager
def real_api(workdir: Path) -> Iterator[Api]:
    from tests.support.control_plane import kubernetes_client, start_control_plane, stop_all

    cluster = start_control_plane(workdir / "controlplane")
    try:
        crd = yaml.safe_load((REPO_ROOT / "crds/optimizedmodels.optiserve.io.yaml").read_text())
        answer = cluster.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        if answer.status != 201:
            raise RuntimeError(f"the CRD was refused: HTTP {answer.status} {answer.body.decode()[:500]}")
        _until(lambda: cluster.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}").status == 200, "the CRD served")
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        assert cluster.request("POST", "/api/v1/namespaces", namespace).status == 201
        client = kubernetes_client(cluster)
        pids = [p.popen.pid for p in cluster.processes]
        yield Api("kube-apiserver v1.34.4 + etcd 3.6.4", cluster.kubeconfig, client, pids)
        client.close()
    finally:
        stop_all(cluster.processes)


def _until(probe: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- the operator --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def operator_process(kubeconfig: Path, log: Path, workers: int | None) -> Iterator[tuple[psutil.Process, int, float]]:
    """`optiserve operator` with its default settings (but `workers`); yields the process, its metrics
    port and when it was launched, once its /healthz answers."""
    metrics_port, health_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "OPTISERVE_"))}
    env["KUBECONFIG"] = str(kubeconfig)
    if workers is not None:
        env["OPTISERVE_RECONCILE_WORKERS"] = str(workers)
    command = [
        sys.executable, "-m", "optiserve.cli", "operator", "--all-namespaces",
        "--metrics-port", str(metrics_port), "--health-port", str(health_port), "--bind-address", "127.0.0.1",
    ]  # fmt: skip
    launched = time.monotonic()
    with log.open("w") as sink:
        popen = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _until(lambda: _answers(f"http://127.0.0.1:{health_port}/healthz"), "the operator's /healthz")
        yield psutil.Process(popen.pid), metrics_port, launched
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _peak_rss_mb(process: psutil.Process) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return process.memory_info().rss / MB


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


# --- the run -------------------------------------------------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    document = yaml.safe_load((REPO_ROOT / "examples/minilm/optimizedmodel.yaml").read_text())
    document["metadata"] = {"name": name, "namespace": NAMESPACE}
    return dict(document)


@dataclass
class Progress:
    """What the watch saw: when each object first reached Optimizing."""

    wanted: int
    prefix: str = "model-"
    reached: dict[str, float] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None


def follow(client: k8s.ApiClient, progress: Progress, stop: threading.Event) -> None:
    api = k8s.CustomObjectsApi(client)
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        while not stop.is_set():
            events = stream.stream(  # type: ignore[no-untyped-call]
                api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=30
            )
            for event in events:
                obj = event["object"]
                mine = str(obj["metadata"]["name"]).startswith(progress.prefix)
                if mine and (obj.get("status") or {}).get("phase") == "Optimizing":
                    progress.reached.setdefault(obj["metadata"]["name"], time.monotonic())
                    if len(progress.reached) >= progress.wanted:
                        progress.done.set()
                        return
                if stop.is_set():
                    return
    except BaseException as e:  # reported by the main thread
        progress.failure = e
        progress.done.set()
    finally:
        stream.stop()  # type: ignore[no-untyped-call]


def _jobs_created(client: k8s.ApiClient) -> int:
    jobs = k8s.BatchV1Api(client).list_namespaced_job(NAMESPACE, label_selector="app.kubernetes.io/managed-by=optiserve")
    return len(jobs.items)


def scrape(metrics_port: int) -> dict[str, float]:
    """The operator's own counters: reconciles by trigger, and their summed duration."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "optiserve_reconciles_total":
                key = f"reconciles_{sample.labels['trigger']}_{sample.labels['result']}"
                found[key] = found.get(key, 0.0) + sample.value
            elif sample.name in ("optiserve_reconcile_duration_seconds_sum", "optiserve_reconcile_duration_seconds_count"):
                key = sample.name.removeprefix("optiserve_reconcile_duration_seconds_")
                found[f"duration_{key}"] = found.get(f"duration_{key}", 0.0) + sample.value
    return found


@dataclass
class Sampler:
    """The operator's peak RSS, sampled while the run lasts (VmHWM is read as well at the end)."""

    process: psutil.Process
    stop: threading.Event
    peak_mb: float = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / MB)
            time.sleep(0.2)


def create_models(api: Api, names: list[str], created: dict[str, float]) -> None:
    customs = k8s.CustomObjectsApi(api.client)

    def create(name: str) -> None:
        created[name] = time.monotonic()
        customs.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest(name))

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, names))


def late_models(api: Api, count: int, stop: threading.Event, timeout_s: float) -> list[float]:
    """Latencies of models created one by one while the resync loop reconciles every other object."""
    late, created = Progress(count, prefix="late-"), {}
    threading.Thread(target=follow, args=(api.client, late, stop), daemon=True).start()
    time.sleep(1.0)
    customs = k8s.CustomObjectsApi(api.client)
    for index in range(count):
        name = f"late-{index:05d}"
        created[name] = time.monotonic()
        customs.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest(name))
        time.sleep(LATE_SPACING_S)
    if count and not late.done.wait(timeout_s):
        raise TimeoutError(f"{len(late.reached)} of {count} late models reached Optimizing")
    return sorted(late.reached[name] - created[name] for name in late.reached) or [0.0]


def run_one(api: Api, mode: str, objects: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """burst: the operator runs, the models are created as fast as the API takes them.
    backlog: the models exist before the operator starts (kopf's resume path), timed from its launch."""
    progress, stop = Progress(objects), threading.Event()
    threading.Thread(target=follow, args=(api.client, progress, stop), daemon=True).start()
    time.sleep(1.0)  # the watch is open before the first create
    names = [f"model-{index:05d}" for index in range(objects)]
    created: dict[str, float] = {}
    create_s = 0.0
    if mode == "backlog":
        before = time.monotonic()
        create_models(api, names, created)
        create_s = time.monotonic() - before
    load_before = os.getloadavg()[0]
    log = workdir / f"operator-{mode}.log"
    with operator_process(api.kubeconfig, log, args.workers) as (operator, metrics_port, launched):
        idle_rss = operator.memory_info().rss / MB
        sampler = Sampler(operator, stop, idle_rss)
        threading.Thread(target=sampler.run, daemon=True).start()
        cpu_before, api_cpu_before = _cpu_s([operator.pid]), _cpu_s(api.pids)
        started = launched
        if mode == "burst":
            started = time.monotonic()
            create_models(api, names, created)
            create_s = time.monotonic() - started
        finished = progress.done.wait(args.timeout)
        cpu_run, api_cpu_run = _cpu_s([operator.pid]) - cpu_before, _cpu_s(api.pids) - api_cpu_before
        if progress.failure is not None:
            raise RuntimeError(f"the watch failed: {progress.failure!r}") from progress.failure
        if not finished:
            raise TimeoutError(f"{len(progress.reached)} of {objects} reached Optimizing within {args.timeout:.0f} s")
        elapsed = max(progress.reached.values()) - started
        jobs = _jobs_created(api.client)
        run_counts = scrape(metrics_port)

        # Steady state: nothing changes, the resync loop keeps reconciling every object.
        steady_cpu_before = _cpu_s([operator.pid])
        time.sleep(args.steady_seconds)
        steady_cpu = (_cpu_s([operator.pid]) - steady_cpu_before) / args.steady_seconds
        steady_counts = scrape(metrics_port)
        late_latencies = late_models(api, args.late, stop, args.timeout)
        stop.set()
        timers = steady_counts.get("reconciles_timer_success", 0.0) - run_counts.get("reconciles_timer_success", 0.0)
        latencies = sorted(progress.reached[name] - max(created[name], started) for name in progress.reached)
        return {
            "api": api.name,
            "mode": mode,
            "objects": objects,
            "jobs_created": jobs,
            "create_s": round(create_s, 2),
            "reconciled_s": round(elapsed, 2),
            "objects_per_s": round(objects / elapsed, 1),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
            "operator_rss_idle_mb": round(idle_rss, 1),
            "operator_rss_peak_mb": round(max(_peak_rss_mb(operator), sampler.peak_mb), 1),
            "operator_rss_after_mb": round(operator.memory_info().rss / MB, 1),
            "operator_cpu_s": round(cpu_run, 1),
            "operator_cpu_ms_per_object": round(1000 * cpu_run / objects, 1),
            "api_cpu_s": round(api_cpu_run, 1),
            "reconciles": int(run_counts.get("duration_count", 0)),
            "reconcile_mean_s": round(run_counts.get("duration_sum", 0.0) / max(1.0, run_counts.get("duration_count", 0.0)), 3),
            "steady_window_s": args.steady_seconds,
            "timer_reconciles_per_s_steady": round(timers / args.steady_seconds, 1),
            "operator_cpu_cores_steady": round(steady_cpu, 2),
            "late_models": args.late,
            "late_latency_p50_s": round(statistics.median(late_latencies), 2),
            "late_latency_max_s": round(late_latencies[-1], 2),
            "reconcile_workers": args.workers,
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| API | mode | objects | Jobs | create s | to Optimizing s | objects/s | latency p50 / p95 s "
        "| operator RSS idle / peak MB | operator CPU ms/object | mean reconcile s | API CPU s "
        "| steady: timer reconciles/s, operator cores | late model latency p50 / max s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['api']} | {r['mode']} | {r['objects']} | {r['jobs_created']} | {r['create_s']} | {r['reconciled_s']} "
            f"| **{r['objects_per_s']}** | {r['latency_p50_s']} / {r['latency_p95_s']} "
            f"| {r['operator_rss_idle_mb']} / **{r['operator_rss_peak_mb']}** | {r['operator_cpu_ms_per_object']} "
            f"| {r['reconcile_mean_s']} | {r['api_cpu_s']} "
            f"| {r['timer_reconciles_per_s_steady']}, {r['operator_cpu_cores_steady']} "
            f"| {r['late_latency_p50_s']} / {r['late_latency_max_s']} "
            f"| {r['load_average_1m'][0]}-{r['load_average_1m'][1]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--api", action="append", choices=["emulator", "apiserver"], help="repeatable (default: both)")
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for all objects to reach Optimizing")
    parser.add_argument("--mode", choices=["burst", "backlog"], default="burst", help="see run_one")
    parser.add_argument("--late", type=int, default=20, help="models created one by one after the steady window")
    parser.add_argument("--workers", type=int, help="OPTISERVE_RECONCILE_WORKERS for the operator (default: its own)")
    parser.add_argument("--out", type=Path, help="also write operator_scale.json and .md here")
    args = parser.parse_args(argv)
    starters = {"emulator": emulator_api, "apiserver": real_api}
    results = []
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        for name in args.api or ["emulator", "apiserver"]:
            workdir = Path(tmp) / name
            workdir.mkdir()
            with starters[name](workdir) as api:
                results.append(run_one(api, args.mode, args.objects, workdir, args))
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "targets": {"objects_per_s": TARGET_OBJECTS_PER_S, "rss_mb": TARGET_RSS_MB},
        "results": results,
    }
    table = markdown(results)
    print(json.dumps(report, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "operator_scale.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "operator_scale.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
