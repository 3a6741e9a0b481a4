"""Hand-written figures held equal to the libraries they stand in for."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sklearn.metrics import roc_auc_score

from dashboard.stats import Scrape, auc_from_counts, quantile, traffic


@pytest.mark.parametrize("seed", range(5))
def test_auc_from_counts_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 101, 2000)
    y = (rng.random(2000) < s / 120).astype(int)
    counts: dict = {}
    for a, b in zip(s, y, strict=True):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    assert auc_from_counts((a, b, n) for (a, b), n in counts.items()) == pytest.approx(
        roc_auc_score(y, s), abs=1e-12
    )


def test_auc_needs_both_classes():
    assert auc_from_counts([(10, 1, 5), (20, 1, 3)]) is None
    assert auc_from_counts([]) is None


def _exposition(observations: list[float], statuses: dict[str, int]) -> str:
    reg = CollectorRegistry()
    lat = Histogram("riskloop_request_latency_seconds", "x", ["endpoint"], registry=reg,
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.1))  # fmt: skip
    req = Counter("riskloop_requests_total", "x", ["endpoint", "status"], registry=reg)
    for v in observations:
        lat.labels("predict").observe(v)
    for status, n in statuses.items():
        req.labels("predict", status).inc(n)
    return generate_latest(reg).decode()


def test_traffic_between_two_scrapes():
    first = Scrape.parse(_exposition([0.0015] * 100, {"200": 100}), at=0.0)
    second = Scrape.parse(
        _exposition([0.0015] * 100 + [0.004] * 100, {"200": 150, "503": 50, "422": 10}), at=10.0
    )
    since_start = traffic(first)
    assert (
        since_start.seconds is None and since_start.requests == 100 and since_start.error_rate == 0
    )
    t = traffic(second, first)
    assert t.seconds == 10 and t.requests == 110 and t.rate == 11
    assert t.errors == 50 and t.refused == 10 and t.error_rate == pytest.approx(50 / 110)
    # the 100 new observations all fell in (2 ms, 5 ms]: Prometheus interpolates within it
    assert t.p50_ms == pytest.approx(3.5) and t.p99_ms == pytest.approx(4.97)
    restarted = traffic(first, second)  # counters went down: the service restarted
    assert restarted.seconds is None and restarted.requests == 100


def test_quantile_like_prometheus():
    buckets = {0.001: 10.0, 0.01: 20.0, float("inf"): 20.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.75, buckets) == pytest.approx(0.0055)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == pytest.approx(
        0.1
    )  # past the last edge
