"""What the comparator exports (prometheus-client), one registry per comparator.

The judge reads `optiserve_comparator_agreeing_total` / `optiserve_comparator_compared_total`
with labels `model` and `metric` (agreement, accuracy): keep those names and labels. Every series
is created at zero when the comparator starts, so the first increase is seen from its first
scrape; the accuracy series exist only when the golden set has labels (no labels: no data, never
a pass).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from optiserve.comparator.compare import SampleComparison

AGREEMENT, ACCURACY = "agreement", "accuracy"
BASELINE, CANDIDATE = "baseline", "candidate"
VARIANTS = (BASELINE, CANDIDATE)
COSINE_BUCKETS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)


class ComparatorMetrics:
    def __init__(self, model: str, *, labelled: bool, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.labelled = labelled
        self.registry = registry if registry is not None else CollectorRegistry()
        self.compared = Counter(
            "optiserve_comparator_compared",
            "Golden samples both variants answered, by metric (accuracy: only samples with a label).",
            ["model", "metric"],
            registry=self.registry,
        )
        self.agreeing = Counter(
            "optiserve_comparator_agreeing",
            "Compared samples that count for the metric: candidate agrees with the baseline (agreement), "
            "candidate top-1 equals the label (accuracy).",
            ["model", "metric"],
            registry=self.registry,
        )
        self.errors = Counter(
            "optiserve_comparator_errors",
            "Golden requests that failed or timed out, by variant; such a sample is not compared.",
            ["model", "variant"],
            registry=self.registry,
        )
        self.correct = Counter(
            "optiserve_comparator_correct",
            "Compared labelled samples whose top-1 equals the label, by variant.",
            ["model", "variant"],
            registry=self.registry,
        )
        self.cosine = Histogram(
            "optiserve_comparator_cosine",
            "Cosine similarity of the candidate's output to the baseline's, per compared sample.",
            ["model"],
            buckets=COSINE_BUCKETS,
            registry=self.registry,
        )
        self.rounds = Counter("optiserve_comparator_rounds", "Probe rounds completed.", ["model"], registry=self.registry)
        self.golden_samples = Gauge(
            "optiserve_comparator_golden_samples", "Samples in the golden set.", ["model"], registry=self.registry
        )
        self._create_series()

    def _create_series(self) -> None:
        metrics = (AGREEMENT, ACCURACY) if self.labelled else (AGREEMENT,)
        for metric in metrics:
            self.compared.labels(self.model, metric)
            self.agreeing.labels(self.model, metric)
        for variant in VARIANTS:
            self.errors.labels(self.model, variant)
            if self.labelled:
                self.correct.labels(self.model, variant)
        self.cosine.labels(self.model)
        self.rounds.labels(self.model)

    def record(self, comparison: SampleComparison) -> None:
        self.compared.labels(self.model, AGREEMENT).inc()
        if comparison.agrees:
            self.agreeing.labels(self.model, AGREEMENT).inc()
        self.cosine.labels(self.model).observe(comparison.cosine)
        if comparison.candidate_correct is None:
            return
        self.compared.labels(self.model, ACCURACY).inc()
        if comparison.candidate_correct:
            self.agreeing.labels(self.model, ACCURACY).inc()
            self.correct.labels(self.model, CANDIDATE).inc()
        if comparison.baseline_correct:
            self.correct.labels(self.model, BASELINE).inc()

    def record_error(self, variant: str) -> None:
        self.errors.labels(self.model, variant).inc()

    def record_round(self) -> None:
        self.rounds.labels(self.model).inc()

    def value(self, name: str, **labels: str) -> float:
        """The current value of one series (0 when it does not exist), for logs and tests."""
        return self.registry.get_sample_value(name, {"model": self.model, **labels}) or 0.0
