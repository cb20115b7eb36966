"""Canary judge decisions on cluster-like recordings, replayed through the judge.

Recordings are made the way a cluster produces them:

- Prometheus scrapes every ``--scrape`` seconds; each variant has **one latency value per scrape**
  (a summary quantile or a mean from counter deltas), or with ``--per-request`` one point per request;
- both variants ride on the same load: a slow drift (+-15 %, minutes) and short bursts (5-20 s,
  1.3-2.2x, about one a minute) slow baseline and candidate alike;
- each variant's per-scrape values carry their own lognormal noise, 5-25 % (drawn per replay);
- 4-12 requests/s per variant (20-60 per 5 s scrape) with binomial errors, and 4 comparator
  samples/s (20 per 5 s scrape);
- regressions start at ``onset`` seconds (0, 30 or 60), as when a higher weight step begins.

The judge and its settings are those of examples/minilm/optimizedmodel.yaml (interval 15 s,
warm-up 15 s, latency +10 %, error rate +1 point, agreement >= 0.99, failureLimit 1,
inconclusiveLimit 3), judged on all data since warm-up plus the suffix windows of the evidence
scan. Prints JSON and a markdown table.

    python bench/canary.py --replays 200 --scrape 1 5 15 30
    python bench/canary.py --replays 200 --scrape 5 --test msprt     # the sequential test instead
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from optiserve.api.rollout import AnalysisSpec
from optiserve.domain.analysis import EvidenceTest
from optiserve.domain.analysis_spec import AnalysisPlan, analysis_plan
from optiserve.domain.replay import replay
from optiserve_jobs.triton_python_model import DURATION_BUCKETS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples/minilm/optimizedmodel.yaml"
BASE_LATENCY_MS = 5.0
BASE_ERROR_RATE = 0.005


@dataclass(frozen=True)
class Scenario:
    name: str
    latency_factor: float = 1.0
    error_increase: float = 0.0
    agreement_drop: float = 0.0
    onset_s: float = 0.0
    regression: bool = False
    """A regression must be rolled back; a healthy candidate promoted."""
    no_data: bool = False
    nan_from_s: float | None = None
    stop_at_s: float | None = None


def _scenarios() -> list[Scenario]:
    scenarios = [Scenario("healthy")]
    for onset in (0.0, 30.0, 60.0):
        at = f" from {onset:g}s"
        scenarios += [
            Scenario(f"2x latency{at}", latency_factor=2.0, onset_s=onset, regression=True),
            Scenario(f"1.5x latency{at}", latency_factor=1.5, onset_s=onset, regression=True),
            Scenario(f"+5 points of errors{at}", error_increase=0.05, onset_s=onset, regression=True),
            Scenario(f"5-point agreement drop{at}", agreement_drop=0.05, onset_s=onset, regression=True),
        ]
    scenarios += [
        Scenario("no candidate data", no_data=True, regression=True),
        Scenario("candidate latency NaN from 45s", nan_from_s=45.0, regression=True),
        Scenario("candidate series stop at 45s", stop_at_s=45.0, regression=True),
    ]
    return scenarios


@dataclass(frozen=True)
class Conditions:
    scrape_s: float
    duration_s: float
    per_request: bool = False
    source: str = "value"
    """value: each scrape's latency is the held-out set's value with 5-25 % noise. mean / histogram:
    it is made from the scrape's requests (lognormal, sigma 0.4, 2 % of them 10x slower, as a GC
    pause or a cold cache makes them): their mean (Triton's counters) or their median from the
    model's histogram buckets (interpolated as histogram_quantile does)."""


SLOW_SHARE, SLOW_FACTOR, REQUEST_SIGMA = 0.02, 10.0, 0.4
BUCKETS_MS = np.array(DURATION_BUCKETS) * 1000.0


def bucket_median(values_ms: np.ndarray) -> float:
    """The median as Prometheus' histogram_quantile reads it from the model's buckets."""
    counts = np.bincount(np.searchsorted(BUCKETS_MS, values_ms, side="left"), minlength=BUCKETS_MS.size + 1)
    cumulative = np.cumsum(counts)
    rank = 0.5 * cumulative[-1]
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index >= BUCKETS_MS.size:
        return float(BUCKETS_MS[-1])
    lower = 0.0 if index == 0 else float(BUCKETS_MS[index - 1])
    below = 0.0 if index == 0 else float(cumulative[index - 1])
    return float(lower + (float(BUCKETS_MS[index]) - lower) * (rank - below) / max(float(counts[index]), 1.0))


def _scrape_value(rng: np.random.Generator, level: float, requests: int, source: str) -> float:
    values = level * rng.lognormal(0.0, REQUEST_SIGMA, requests)
    values = np.where(rng.random(requests) < SLOW_SHARE, values * SLOW_FACTOR, values)
    return float(values.mean()) if source == "mean" else bucket_median(values)


def _load(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """The load both variants share: a slow drift and short bursts."""
    period, phase = rng.uniform(120.0, 600.0), rng.uniform(0.0, 2 * math.pi)
    load = np.exp(0.15 * np.sin(2 * math.pi * times / period + phase))
    t = 0.0
    while (t := t + rng.exponential(60.0)) < times[-1]:
        length, factor = rng.uniform(5.0, 20.0), rng.uniform(1.3, 2.2)
        load = np.where((times > t) & (times <= t + length), load * factor, load)
    return load


def _variant(
    rng: np.random.Generator, scenario: Scenario, conditions: Conditions, load: np.ndarray, times: np.ndarray, *, candidate: bool
) -> dict[str, list[list[float | None]]]:
    regressed = candidate & (times > scenario.onset_s)
    sigma = rng.uniform(0.05, 0.25)
    latency = BASE_LATENCY_MS * load * np.where(regressed, scenario.latency_factor, 1.0)
    requests = rng.integers(4, 13, times.size) * conditions.scrape_s
    rate = BASE_ERROR_RATE + np.where(regressed, scenario.error_increase, 0.0)
    failures = rng.binomial(requests.astype(int), rate)
    agreement = np.where(regressed, rng.uniform(0.995, 1.0) - scenario.agreement_drop, rng.uniform(0.995, 1.0))
    compared = np.full(times.size, int(4 * conditions.scrape_s))
    agreeing = rng.binomial(compared, agreement)
    series: dict[str, list[list[float | None]]] = {"latency": []}
    for i, t in enumerate(times):
        if conditions.per_request:
            values = latency[i] * rng.lognormal(0.0, 0.3, int(min(requests[i], 40)))
            series["latency"] += [[float(t), float(v)] for v in values]
        elif conditions.source != "value":
            series["latency"].append([float(t), _scrape_value(rng, latency[i], int(requests[i]), conditions.source)])
        else:
            series["latency"].append([float(t), float(latency[i] * rng.lognormal(0.0, sigma))])
    if candidate and scenario.nan_from_s is not None:
        series["latency"] = [[t, None if t is not None and t > scenario.nan_from_s else v] for t, v in series["latency"]]
    cumulative = {
        "errorRate.total": np.cumsum(requests),
        "errorRate.failures": np.cumsum(failures),
        "agreement.compared": np.cumsum(compared),
        "agreement.agreeing": np.cumsum(agreeing),
    }
    for name, values in cumulative.items():
        series[name] = [[float(t), float(v)] for t, v in zip(times, values, strict=True)]
    if candidate and scenario.stop_at_s is not None:
        series = {name: [p for p in points if p[0] is not None and p[0] <= scenario.stop_at_s] for name, points in series.items()}
    if candidate and scenario.no_data:
        series = {name: [] for name in series}
    return series


def recording(rng: np.random.Generator, scenario: Scenario, conditions: Conditions) -> tuple[dict[str, Any], dict[str, Any]]:
    times = np.arange(conditions.scrape_s, conditions.duration_s + 1e-9, conditions.scrape_s)
    load = _load(rng, times)
    baseline = _variant(rng, scenario, conditions, load, times, candidate=False)
    return baseline, _variant(rng, scenario, conditions, load, times, candidate=True)


@dataclass(frozen=True)
class Job:
    scenario: Scenario
    conditions: Conditions
    plan: AnalysisPlan
    replays: int
    seed: int


def _run(job: Job) -> dict[str, Any]:
    rng = np.random.default_rng([job.seed, int(job.conditions.scrape_s * 10), zlib.crc32(job.scenario.name.encode())])
    verdicts: list[str] = []
    after_onset: list[float] = []
    after_onset_by_replay: list[float | None] = []
    plan = job.plan
    for _ in range(job.replays):
        baseline, candidate = recording(rng, job.scenario, job.conditions)
        result = replay(baseline, candidate, plan.checks, interval_s=plan.interval_s, policy=plan.policy, window_s=plan.window_s)
        verdicts.append(result["verdict"])
        decided = result["decision_time_s"]
        after_onset_by_replay.append(None if decided is None else decided - job.scenario.onset_s)
        if decided is not None:
            after_onset.append(decided - job.scenario.onset_s)
    expected = "rollback" if job.scenario.regression else "promote"
    return {
        "scenario": job.scenario.name,
        "scrape_s": job.conditions.scrape_s,
        "replays": job.replays,
        "expected": expected,
        "promote": verdicts.count("promote") / job.replays,
        "rollback": verdicts.count("rollback") / job.replays,
        "hold": verdicts.count("hold") / job.replays,
        "decision_after_onset_median_s": statistics.median(after_onset) if after_onset else None,
        "decision_after_onset_max_s": max(after_onset) if after_onset else None,
        "expected_within_60s": _within(verdicts, after_onset_by_replay, expected, 60.0),
        "expected_within_120s": _within(verdicts, after_onset_by_replay, expected, 120.0),
    }


def _within(verdicts: Sequence[str], after_onset: Sequence[float | None], expected: str, limit_s: float) -> float:
    """The share of replays that reached the expected verdict within ``limit_s`` of the onset."""
    hits = sum(1 for v, t in zip(verdicts, after_onset, strict=True) if v == expected and t is not None and t <= limit_s)
    return hits / len(verdicts)


def _plan(test: EvidenceTest, scrape_s: float) -> AnalysisPlan:
    analysis = yaml.safe_load(EXAMPLE.read_text())["spec"]["rollout"]["analysis"]
    plan = analysis_plan(AnalysisSpec.model_validate({**analysis, "scrapeInterval": f"{scrape_s:g}s"}))
    return replace(plan, policy=plan.policy.model_copy(update={"evidence_test": test}))


def _table(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| scenario | scrape s | replays | promote | rollback | hold | median s after onset | max s after onset "
        "| expected within 60 s | within 120 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['scrape_s']:g} | {r['replays']} | {r['promote']:.3f} | {r['rollback']:.3f} | "
            f"{r['hold']:.3f} | {r['decision_after_onset_median_s']} | {r['decision_after_onset_max_s']} | "
            f"{r['expected_within_60s']:.3f} | {r['expected_within_120s']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scrape", type=float, nargs="+", default=[1.0, 5.0, 15.0, 30.0], help="scrape intervals, s")
    parser.add_argument("--duration", type=float, default=300.0, help="recording length, s")
    parser.add_argument("--per-request", action="store_true", help="one latency point per request, not per scrape")
    parser.add_argument(
        "--source", choices=["value", "mean", "histogram"], default="value", help="what each scrape's latency is made of"
    )
    parser.add_argument("--test", choices=[t.value for t in EvidenceTest], default=EvidenceTest.FIXED.value)
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    jobs = [
        Job(
            scenario,
            Conditions(scrape, args.duration, args.per_request, args.source),
            _plan(EvidenceTest(args.test), scrape),
            args.replays,
            args.seed,
        )
        for scrape in args.scrape
        for scenario in _scenarios()
        if args.only in scenario.name
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_run, jobs))
    conditions = {
        "duration_s": args.duration,
        "per_request": args.per_request,
        "source": args.source,
        "test": args.test,
        "seed": args.seed,
    }
    plan = jobs[0].plan
    json.dump(
        {"interval_s": plan.interval_s, "warmup_s": plan.policy.warmup_s, **conditions, "results": results}, sys.stdout, indent=2
    )
    print()
    print(_table(results))


if __name__ == "__main__":
    main()
