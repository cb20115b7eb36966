"""Canary judge decision times and false rollbacks, replaying synthetic recordings through the judge.

Load-shared noise: every scrape draws one load factor that slows baseline and candidate alike (as
two variants behind the same traffic do), plus per-request lognormal noise; error and comparator
counters are binomial. The judge and its settings are those of examples/minilm/optimizedmodel.yaml
(interval 15 s, warm-up 15 s). Prints JSON and a markdown table.

    python bench/canary.py --replays 300
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from optiserve.api.rollout import AnalysisSpec
from optiserve.domain.analysis_spec import AnalysisPlan, analysis_plan
from optiserve.domain.replay import replay

EXAMPLE = Path(__file__).resolve().parents[1] / "examples/minilm/optimizedmodel.yaml"
SCRAPE_S = 5
DURATION_S = 180


def _recording(
    rng: np.random.Generator, *, latency_factor: float, error_rate: float, agreement: float, requests_per_scrape: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    variants: list[dict[str, list[list[float]]]] = [{}, {}]
    counters = [[0, 0, 0, 0], [0, 0, 0, 0]]
    for t in range(SCRAPE_S, DURATION_S + 1, SCRAPE_S):
        load = rng.lognormal(0.0, 0.25)  # shared by both variants
        for index, series in enumerate(variants):
            candidate = index == 1
            scale = 5.0 * load * (latency_factor if candidate else 1.0)
            share = requests_per_scrape if candidate else requests_per_scrape * 4  # 20 % weight on the candidate
            samples = rng.lognormal(np.log(scale), 0.3, size=min(share, 40))
            series.setdefault("latency", []).extend([t, float(v)] for v in samples)
            count = counters[index]
            count[0] += share
            count[1] += int(rng.binomial(share, error_rate if candidate else 0.002))
            count[2] += 25
            count[3] += int(rng.binomial(25, agreement if candidate else 1.0))
            series.setdefault("errorRate.total", []).append([t, count[0]])
            series.setdefault("errorRate.failures", []).append([t, count[1]])
            series.setdefault("agreement.compared", []).append([t, count[2]])
            series.setdefault("agreement.agreeing", []).append([t, count[3]])
    return variants[0], variants[1]


def _run(plan: AnalysisPlan, scenario: dict[str, float], replays: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    verdicts, times = [], []
    for _ in range(replays):
        baseline, candidate = _recording(rng, requests_per_scrape=50, **scenario)
        result = replay(baseline, candidate, plan.checks, interval_s=plan.interval_s, policy=plan.policy, window_s=plan.window_s)
        verdicts.append(result["verdict"])
        if result["decision_time_s"] is not None:
            times.append(result["decision_time_s"])
    return {
        "replays": replays,
        "promote": verdicts.count("promote") / replays,
        "rollback": verdicts.count("rollback") / replays,
        "hold": verdicts.count("hold") / replays,
        "decision_time_median_s": statistics.median(times) if times else None,
        "decision_time_max_s": max(times) if times else None,
    }


SCENARIOS = {
    "A/A (healthy, same model)": {"latency_factor": 1.0, "error_rate": 0.002, "agreement": 1.0},
    "2x latency": {"latency_factor": 2.0, "error_rate": 0.002, "agreement": 1.0},
    "+5 points of errors": {"latency_factor": 1.0, "error_rate": 0.052, "agreement": 1.0},
    "5-point agreement drop, faster": {"latency_factor": 0.8, "error_rate": 0.002, "agreement": 0.95},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    analysis = yaml.safe_load(EXAMPLE.read_text())["spec"]["rollout"]["analysis"]
    plan = analysis_plan(AnalysisSpec.model_validate(analysis))
    results = {name: _run(plan, scenario, args.replays, args.seed) for name, scenario in SCENARIOS.items()}
    print(json.dumps({"interval_s": plan.interval_s, "warmup_s": plan.policy.warmup_s, "results": results}, indent=2))
    print("| scenario | replays | promote | rollback | hold | median decision s | max decision s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['replays']} | {r['promote']:.3f} | {r['rollback']:.3f} | {r['hold']:.3f} | "
            f"{r['decision_time_median_s']} | {r['decision_time_max_s']} |"
        )


if __name__ == "__main__":
    main()
