"""`optiserve`: the user's command line (see docs/cli.md; keep it stable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from rich.console import Console
from rich.table import Table

from optiserve.api.job import job_request_from_manifest
from optiserve.api.manifest import ManifestError, load_manifest
from optiserve.api.spec import OptimizedModel, Task
from optiserve.comparator.command import add_comparator_arguments
from optiserve.domain.analysis_spec import analysis_timing
from optiserve.local.run_command import add_run_arguments

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from optiserve.kube import KubeClient
    from optiserve.leader import LeaderElector
    from optiserve.settings import Settings

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: errors stay one per line


def _print_errors(errors: list[str], suffix: str = "") -> None:
    for line in errors:
        console.print(f"[red]error[/red] {line}{suffix}", highlight=False)


def _load(path: Path) -> OptimizedModel | None:
    """The manifest, or None after printing every error, field by field."""
    try:
        return load_manifest(path)
    except ManifestError as e:
        _print_errors(e.errors)
        return None


def _validate(args: argparse.Namespace) -> int:
    manifest = _load(args.file)
    if manifest is None:
        return 1
    # The same rules as the API server's CEL; a disagreement with the models is still an error.
    cel = cel_errors_for(args.file)
    _print_errors(cel, " (CEL)")
    if cel:
        return 1
    console.print(f"{args.file}: OptimizedModel '{manifest.metadata.name}' is valid", highlight=False)
    console.print("offline gates the job applies:", highlight=False)
    for gate in manifest.spec.validation.gates(manifest.spec.model.task):
        console.print(f"  {gate}", highlight=False)
    if manifest.spec.model.task is Task.TEXT_GENERATION:
        console.print(
            "[yellow]warning[/yellow]: text-generation models are optimized and published, not yet served: "
            "the operator stops after the job (ServingNotSupported) and `optiserve run` refuses them",
            highlight=False,
        )
    else:
        _print_canary_timing(manifest)
    return 0


def _print_canary_timing(manifest: OptimizedModel) -> None:
    rollout = manifest.spec.rollout
    if rollout is None or not rollout.analysis.metrics:
        return
    timing = analysis_timing(rollout)
    console.print(
        f"canary: a healthy candidate can pass its first interval {timing.first_pass_s:g}s and be promoted "
        f"{timing.earliest_promotion_s:g}s after the first canary traffic "
        f"(scrapeInterval {rollout.analysis.scrape_interval}, interval {rollout.analysis.interval})",
        highlight=False,
    )
    for warning in timing.warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _print_summary(report: dict[str, Any]) -> None:
    console.print(
        _table(
            "passes",
            ["pass", "status", "seconds", "detail"],
            [[p["name"], p["status"], f"{p['seconds']:.1f}", p["detail"]] for p in report["passes"]],
        )
    )
    if report["gates"]:
        console.print(
            _table(
                "gates",
                ["gate", "passed", "value", "threshold"],
                [
                    [
                        g["name"],
                        "yes" if g["passed"] else "[red]NO[/red]",
                        "-" if g["value"] is None else f"{g['value']:.4f}",
                        f"{g['comparison']} {g['threshold']:g}",
                    ]
                    for g in report["gates"]
                ],
            )
        )
    benchmark = report.get("benchmark")
    if benchmark:
        rows = [
            [
                v["name"],
                v["runtime"],
                str(b["batch_size"]),
                f"{b['p50_ms']:.2f}",
                f"{b['p95_ms']:.2f}",
                f"{b['p99_ms']:.2f}",
                f"{b['throughput_per_s']:.1f}",
                f"{v['model_bytes'] / 1e6:.1f}",
            ]
            for v in benchmark["variants"]
            for b in v["batches"]
        ]
        console.print(
            _table(
                f"benchmark ({benchmark['threads']} threads)",
                ["variant", "runtime", "batch", "p50 ms", "p95 ms", "p99 ms", "samples/s", "MB"],
                rows,
            )
        )


def _print_generation(report: dict[str, Any]) -> None:
    """A text-generation job's benchmark: time to first token, inter-token latency, decode speed."""
    benchmark = (report.get("generation") or {}).get("benchmark")
    if not benchmark:
        return
    variants = benchmark["variants"]
    lengths = sorted(variants[0]["ttft_ms"], key=int)
    batches = sorted(variants[0]["decode_tokens_per_s"], key=int)
    rows = [
        [
            v["name"],
            v["runtime"],
            *(f"{v['ttft_ms'][n]:.1f}" for n in lengths),
            f"{v['itl_ms_p50']:.2f}",
            f"{v['itl_ms_p90']:.2f}",
            *(f"{v['decode_tokens_per_s'][b]:.1f}" for b in batches),
            f"{v['size_bytes'] / 1e6:.1f}",
        ]
        for v in variants
    ]
    columns = ["variant", "runtime", *(f"TTFT@{n} ms" for n in lengths), "ITL p50 ms", "ITL p90 ms"]
    columns += [*(f"tok/s x{b}" for b in batches), "MB"]
    console.print(_table(f"generation benchmark ({benchmark['threads']} threads)", columns, rows))


def _optimize(args: argparse.Namespace) -> int:
    from optiserve_jobs.job import run_job  # the data plane: heavy imports only for this command

    manifest = _load(args.file)
    if manifest is None:
        return 1
    request = job_request_from_manifest(manifest, base_dir=str(args.file.resolve().parent))
    with console.status("optimizing") as status:
        report, result = run_job(request, args.out, progress=lambda msg: status.update(f"optimizing: {msg}"))
    summary = report.model_dump(mode="json")
    _print_summary(summary)
    _print_generation(summary)
    if not result.passed:
        console.print(f"[red]failed[/red]: {result.reason}", highlight=False)
        console.print(f"report: {args.out / 'report.json'} (no model repository was published)", highlight=False)
        return 1
    speedup = f"{result.speedup_p50:.2f}x" if result.speedup_p50 else "n/a"
    size_ratio = f"{result.size_ratio:.3f}" if result.size_ratio is not None else "n/a"
    console.print(
        f"[green]passed[/green]: speedup {speedup}, size ratio {size_ratio}; "
        f"repository {result.artifact.uri if result.artifact else '-'}",
        highlight=False,
    )
    sys.stdout.write(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True)) + "\n")
    return 0


def cel_errors_for(path: Path) -> list[str]:
    from optiserve.api.cel import apply_defaults, cel_errors
    from optiserve.api.crd import spec_schema

    document = next(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") == "OptimizedModel")
    schema = spec_schema()
    return cel_errors(schema, apply_defaults(schema, document["spec"]))


def _crd(args: argparse.Namespace) -> int:
    from optiserve.api.crd import render_crd

    sys.stdout.write(render_crd())
    return 0


def _judge(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from optiserve.domain.analysis_spec import analysis_plan
    from optiserve.domain.replay import replay

    manifest = _load(args.file)
    if manifest is None:
        return 1
    try:
        plan = analysis_plan(manifest.spec.rollout.analysis)
    except (ValidationError, ValueError) as e:
        _print_errors([f"spec.rollout.analysis: {e}"])
        return 1
    if not plan.checks:
        _print_errors(["spec.rollout.analysis.metrics: no metrics to judge"])
        return 1
    series = [json.loads(path.read_text()) for path in (args.baseline, args.candidate)]
    verdict = replay(series[0], series[1], plan.checks, interval_s=plan.interval_s, policy=plan.policy, window_s=plan.window_s)
    sys.stdout.write(json.dumps(verdict, indent=2) + "\n")
    return 0


def _port_flag(value: str) -> int:
    """A port for --metrics-port / --health-port; 0 turns the server off."""
    try:
        port = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from e
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535 (0 turns it off), got {value!r}")
    return port


def _with_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """The operator's settings from the environment, overridden by the flags given."""
    import dataclasses

    changes: dict[str, Any] = {}
    for flag in ("metrics_port", "health_port"):
        value = getattr(args, flag)
        if value is not None:
            changes[flag] = value or None
    if args.bind_address:
        changes["bind_address"] = args.bind_address
    return dataclasses.replace(settings, **changes) if changes else settings


def _operator(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes.config import ConfigException

    from optiserve.elected import run_elected
    from optiserve.handlers import build_registry
    from optiserve.kube import KubeClient
    from optiserve.settings import Settings, SettingsError

    try:
        settings = _with_flags(Settings.from_env(), args)
        kube = KubeClient.from_environment(connections=settings.reconcile_workers)
    except (SettingsError, ConfigException) as e:
        _print_errors([str(e)])
        return 1
    namespaces = tuple(args.namespace or ()) or settings.namespaces
    clusterwide = bool(args.all_namespaces or not namespaces)
    kopf.configure(verbose=args.verbose)
    kopf_settings = kopf.OperatorSettings()
    # Watching named namespaces needs no cluster-wide read. With scanning on, kopf would list
    # Namespaces and watch CRDs, and retry each refusal for about a minute before starting.
    kopf_settings.scanning.disabled = not clusterwide

    def operate(stop_flag: threading.Event | None = None, acting: Callable[[], bool] | None = None) -> None:
        registry = build_registry(settings, kube, acting=acting)
        if stop_flag is not None:
            # kopf waits for a thread-side stop flag in a thread of the loop's default executor,
            # and joins that thread when it exits: a stop for another reason (a SIGTERM) must set
            # the flag too, or kopf.run never returns.
            kopf.on.cleanup(registry=registry)(lambda **_: stop_flag.set())
        kopf.run(
            registry=registry,
            settings=kopf_settings,
            clusterwide=clusterwide,
            namespaces=() if clusterwide else namespaces,
            standalone=True,  # no KopfPeering: replicas elect a leader on a Lease instead (optiserve.leader)
            # kopf's own default asks the password database for the user, and an image's UID need not
            # be in it (a restricted pod's runAsUser, an OpenShift random UID): found on real pods.
            identity=cast(Any, _identity()),  # kopf's Identity is a NewType of str it does not export
            liveness_endpoint=settings.liveness_endpoint(),
            stop_flag=stop_flag,
        )

    try:
        if not settings.leader_election.enabled:
            operate()
            return 0
        elector = _elector(settings, kube)
        health = (settings.bind_address, settings.health_port) if settings.health_port is not None else None
        return run_elected(elector, lambda stop: operate(stop, elector.acting), health)
    finally:
        kube.close()


_IDENTITY: list[str] = []


def _identity() -> str:
    """This process's name, the pod's and a random suffix: one per process, not per pod.

    A restarted container must not renew its predecessor's Lease.
    """
    import os
    import socket
    import uuid

    if not _IDENTITY:
        _IDENTITY.append(f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    return _IDENTITY[0]


def _elector(settings: Settings, kube: KubeClient) -> LeaderElector:
    from optiserve.leader import LeaderElector, LeaseTimings

    election = settings.leader_election
    timings = LeaseTimings(election.duration_s, election.renew_deadline_s, election.retry_s)
    return LeaderElector(kube.lease_api(election.namespace, election.name), _identity(), timings)


def _comparator(args: argparse.Namespace) -> int:
    from optiserve.comparator.command import run_comparator_command

    return run_comparator_command(args, _print_errors)


def _verify_artifact(args: argparse.Namespace) -> int:
    from optiserve.artifact import CorruptRepositoryError, verify_artifact

    try:
        manifest = verify_artifact(args.directory, args.sha256)
    except CorruptRepositoryError as e:
        _print_errors([str(e)])
        return 1
    console.print(f"{args.directory}: {len(manifest['files'])} files match the manifest", highlight=False)
    return 0


def _run(args: argparse.Namespace) -> int:
    from optiserve.local.run_command import run_command

    try:
        return run_command(args)
    except ValueError as e:
        _print_errors([str(e)])
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiserve", description="Optimize, prove, serve and canary models on Triton.")
    commands = parser.add_subparsers(dest="command", required=True)
    crd = commands.add_parser("crd", help="print the CRD generated from the API models (crds/ must equal it)")
    crd.set_defaults(handler=_crd)
    validate = commands.add_parser("validate", help="validate a manifest offline; every error names its field")
    validate.add_argument("-f", "--file", type=Path, required=True)
    validate.set_defaults(handler=_validate)
    judge = commands.add_parser("judge", help="replay recorded metric series through the canary judge; JSON verdict")
    judge.add_argument("-f", "--file", type=Path, required=True)
    judge.add_argument("--baseline", type=Path, required=True, help="baseline series JSON (docs/judge.md)")
    judge.add_argument("--candidate", type=Path, required=True, help="candidate series JSON (docs/judge.md)")
    judge.set_defaults(handler=_judge)
    optimize = commands.add_parser("optimize", help="run the optimization job locally")
    optimize.add_argument("-f", "--file", type=Path, required=True)
    optimize.add_argument("--out", type=Path, required=True, help="report.json and model_repository*/ go here")
    optimize.set_defaults(handler=_optimize)
    operator = commands.add_parser("operator", help="run the operator against the current kubeconfig / in-cluster config")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    operator.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    operator.add_argument("--metrics-port", type=_port_flag, help="serve Prometheus /metrics here (OPTISERVE_METRICS_PORT)")
    operator.add_argument("--health-port", type=_port_flag, help="serve the liveness /healthz here (OPTISERVE_HEALTH_PORT)")
    operator.add_argument("--bind-address", help="address of those two servers (OPTISERVE_BIND_ADDRESS, default 0.0.0.0)")
    operator.set_defaults(handler=_operator)
    comparator = commands.add_parser(
        "comparator", help="probe baseline and candidate Triton with the golden set; /metrics for the canary judge"
    )
    add_comparator_arguments(comparator)
    comparator.set_defaults(handler=_comparator)
    verify = commands.add_parser(
        "verify-artifact", help="check a published artifact against its manifest (and the digest the job reported)"
    )
    verify.add_argument("directory", type=Path, help="the job's output directory (holds manifest.json)")
    verify.add_argument("--sha256", help="the artifact digest (JobResult.artifact.sha256): the manifest must hash to it")
    verify.set_defaults(handler=_verify_artifact)
    run = commands.add_parser("run", help="the whole pipeline on this machine, no cluster: optimize, serve, canary, decide")
    add_run_arguments(run)
    run.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Any = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
