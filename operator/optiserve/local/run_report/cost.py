"""Cost per million requests of the baseline and the candidate, from the optimization benchmark.

cost per million = price per replica-hour / (requests per second one replica serves x 3600) x 1e6.
The replica count does not change the cost per request (more replicas serve proportionally more);
it only sets the hourly bill, reported next to it.
"""

from __future__ import annotations

import math

from optiserve.local.run_report.model import CostReport, VariantCost
from optiserve_jobs.report import BatchTiming, BenchmarkReport, VariantBenchmark

DEFAULT_PRICE_PER_REPLICA_HOUR = 0.50
"""USD; a CPU replica of this size on a public cloud, order of magnitude. Override it per run."""


def cost_per_million(price_per_replica_hour: float, throughput_per_replica_s: float) -> float:
    """Cost of serving one million requests with replicas that each serve `throughput_per_replica_s`."""
    if not (math.isfinite(price_per_replica_hour) and price_per_replica_hour > 0):
        raise ValueError(f"price_per_replica_hour: must be a positive number, got {price_per_replica_hour}")
    if not (math.isfinite(throughput_per_replica_s) and throughput_per_replica_s > 0):
        raise ValueError(f"throughput_per_replica_s: must be a positive number, got {throughput_per_replica_s}")
    return price_per_replica_hour / (throughput_per_replica_s * 3600.0) * 1e6


def _variant(benchmark: BenchmarkReport, name: str) -> VariantBenchmark:
    for variant in benchmark.variants:
        if variant.name == name:
            return variant
    raise ValueError(f"benchmark.variants: has no '{name}' variant")


def _batch(variant: VariantBenchmark, batch_size: int) -> BatchTiming:
    for batch in variant.batches:
        if batch.batch_size == batch_size:
            return batch
    raise ValueError(f"batch_size: {batch_size} was not benchmarked for the {variant.name} (it has {_sizes(variant)})")


def _sizes(variant: VariantBenchmark) -> list[int]:
    return sorted(batch.batch_size for batch in variant.batches)


def _largest_common_batch(baseline: VariantBenchmark, candidate: VariantBenchmark) -> int:
    common = set(_sizes(baseline)) & set(_sizes(candidate))
    if not common:
        raise ValueError("benchmark.variants: the baseline and the candidate share no benchmarked batch size")
    return max(common)


def _variant_cost(variant: VariantBenchmark, batch_size: int, price: float, replicas: int) -> VariantCost:
    throughput = _batch(variant, batch_size).throughput_per_s
    return VariantCost(
        runtime=variant.runtime,
        replicas=replicas,
        throughput_per_replica_s=throughput,
        cost_per_hour=price * replicas,
        cost_per_million=cost_per_million(price, throughput),
    )


def cost_from_benchmark(
    benchmark: BenchmarkReport,
    *,
    price_per_replica_hour: float = DEFAULT_PRICE_PER_REPLICA_HOUR,
    baseline_replicas: int = 1,
    candidate_replicas: int = 1,
    batch_size: int | None = None,
    currency: str = "USD",
) -> CostReport:
    """Cost of both variants from the benchmark's throughput at `batch_size`.

    By default the largest batch size benchmarked for both variants: Triton's dynamic batching
    serves concurrent requests in batches, so that is closest to a loaded replica's throughput.
    One benchmark process (its `threads` intra-op threads) stands for one replica.
    """
    for field, replicas in (("baseline_replicas", baseline_replicas), ("candidate_replicas", candidate_replicas)):
        if replicas < 1:
            raise ValueError(f"{field}: must be at least 1, got {replicas}")
    baseline, candidate = _variant(benchmark, "baseline"), _variant(benchmark, "candidate")
    size = _largest_common_batch(baseline, candidate) if batch_size is None else batch_size
    baseline_cost = _variant_cost(baseline, size, price_per_replica_hour, baseline_replicas)
    candidate_cost = _variant_cost(candidate, size, price_per_replica_hour, candidate_replicas)
    return CostReport(
        price_per_replica_hour=price_per_replica_hour,
        currency=currency,
        source=(
            f"optimization benchmark: throughput at batch {size} (batch / p50 latency), "
            f"one process with {benchmark.threads} threads per replica, on {benchmark.machine.cpu}"
        ),
        baseline=baseline_cost,
        candidate=candidate_cost,
        ratio=candidate_cost.cost_per_million / baseline_cost.cost_per_million,
    )
