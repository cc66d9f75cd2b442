"""The latency buckets are dense enough that Prometheus's histogram_quantile reports a p95 near
the documented thresholds within 10 %: a known distribution is fed through promtool (Prometheus's
own engine) and its answer compared with the true percentile."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from harness import require_binary
from stackwatch.exposition import fmt_le
from stackwatch.store import LATENCY_BUCKETS

OLD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


def distribution(p95: float, seed: int) -> list[float]:
    """1000 latencies a minute: 90 % fast, 10 % spread around ``p95`` (so the true p95 is ~p95)."""
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.2) for _ in range(900)] + [rng.uniform(p95 * 0.85, p95 * 1.15) for _ in range(100)]


def true_p95(samples: list[float]) -> float:
    return sorted(samples)[int(0.95 * len(samples)) - 1]


def interpolated_p95(samples: list[float], buckets: tuple[float, ...]) -> float:
    """histogram_quantile(0.95) as Prometheus computes it on these buckets (checked by promtool below)."""
    counts = [sum(1 for s in samples if s <= b) for b in buckets] + [len(samples)]
    rank = 0.95 * len(samples)
    lower, below = 0.0, 0
    for bound, cum in zip((*buckets, float("inf")), counts):
        if cum >= rank:
            if bound == float("inf"):
                return buckets[-1]
            return lower + (bound - lower) * (rank - below) / (cum - below)
        lower, below = bound, cum
    raise AssertionError


def promtool_p95(tmp: Path, samples: list[float], buckets: tuple[float, ...], expected: float) -> None:
    lines = []
    for b in (*buckets, float("inf")):
        per_minute = sum(1 for s in samples if s <= b)
        lines.append(f"      - {{series: 'stackwatch_probe_duration_seconds_bucket{{target=\"t\",le=\"{fmt_le(b)}\"}}', "
                     f"values: '0+{per_minute}x30'}}")
    test = tmp / "p95_test.yml"
    test.write_text(f"""rule_files: []
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{chr(10).join(lines)}
    promql_expr_test:
      - expr: abs(histogram_quantile(0.95, sum by (le) (rate(stackwatch_probe_duration_seconds_bucket[5m]))) - {expected!r}) < bool 1e-6
        eval_time: 20m
        exp_samples:
          - labels: '{{}}'
            value: 1
""")
    proc = subprocess.run([require_binary("promtool"), "test", "rules", str(test)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("p95", [0.3, 0.5, 1.8, 2.2, 2.5, 3.5, 4.5, 5.5])
def test_p95_near_the_thresholds_is_reported_within_10_percent(tmp_path, p95):
    samples = distribution(p95, seed=int(p95 * 100))
    truth = true_p95(samples)
    reported = interpolated_p95(samples, LATENCY_BUCKETS)
    promtool_p95(tmp_path, samples, LATENCY_BUCKETS, reported)  # Prometheus computes exactly this
    assert abs(reported - truth) / truth < 0.10, (p95, truth, reported)


def test_the_old_buckets_were_off_by_more_than_30_percent_at_2_5_seconds(tmp_path):
    samples = distribution(2.5, seed=250)
    truth = true_p95(samples)
    reported = interpolated_p95(samples, OLD_BUCKETS)
    promtool_p95(tmp_path, samples, OLD_BUCKETS, reported)
    assert abs(reported - truth) / truth > 0.30, (truth, reported)  # 3.5 s reported for 2.5 s
