"""Pure figures the pages show: realized AUC from per-score counts (the database counts, this
ranks), and request rates, error share and latency quantiles from two /metrics scrapes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "riskloop_request_latency_seconds"
REQUESTS = "riskloop_requests_total"


def auc_from_counts(counts: Iterable[tuple[float, int, int]]) -> float | None:
    """ROC AUC from (score, label, count) rows: the Mann-Whitney statistic, ties counting
    one half, exactly what sklearn's roc_auc_score gives on the expanded rows. None without
    both classes."""
    by_score: dict[float, list[int]] = {}
    for score, label, n in counts:
        by_score.setdefault(score, [0, 0])[int(label)] += int(n)
    neg_total = sum(v[0] for v in by_score.values())
    pos_total = sum(v[1] for v in by_score.values())
    if not neg_total or not pos_total:
        return None
    wins, below = 0.0, 0
    for score in sorted(by_score):
        neg, pos = by_score[score]
        wins += pos * (below + neg / 2)
        below += neg
    return wins / (pos_total * neg_total)


@dataclass(frozen=True)
class Scrape:
    """One /metrics scrape, reduced to what the Service page shows."""

    at: float  # monotonic seconds
    requests: dict[tuple[str, str], float]  # (endpoint, status) -> count
    buckets: dict[str, dict[float, float]]  # endpoint -> {le: cumulative count}
    gauges: dict[str, float] = field(default_factory=dict)  # riskloop_* gauges, summed

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        requests: dict[tuple[str, str], float] = {}
        buckets: dict[str, dict[float, float]] = {}
        gauges: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == REQUESTS:
                    key = (s.labels.get("endpoint", ""), s.labels.get("status", ""))
                    requests[key] = requests.get(key, 0.0) + s.value
                elif s.name == LATENCY + "_bucket":
                    le = float(s.labels["le"])
                    per = buckets.setdefault(s.labels.get("endpoint", ""), {})
                    per[le] = per.get(le, 0.0) + s.value
                elif family.type == "gauge" and s.name.startswith("riskloop_"):
                    gauges[s.name] = gauges.get(s.name, 0.0) + s.value
        return cls(at, requests, buckets, gauges)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank, prev_edge, prev_count = q * buckets[edges[-1]], 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return prev_edge  # above the highest finite bucket: its edge is all we know
            within = count - prev_count
            return prev_edge + (edge - prev_edge) * (
                (rank - prev_count) / within if within else 1.0
            )
        prev_edge, prev_count = edge, count
    return prev_edge


@dataclass(frozen=True)
class Traffic:
    """Requests between two scrapes (or since the service started, with no earlier one)."""

    seconds: float | None
    requests: float
    errors: float  # 5xx: the service failed; 4xx are the client's
    refused: float  # 4xx
    p50_ms: float | None
    p99_ms: float | None

    @property
    def rate(self) -> float | None:
        return self.requests / self.seconds if self.seconds else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def traffic(now: Scrape, before: Scrape | None = None, endpoint: str | None = None) -> Traffic:
    """Counts and latency quantiles of `now` minus `before` (a counter that went down: the
    service restarted, so `now` alone)."""
    prev = before if before and _monotone(before, now) else None

    def delta(a: Mapping, b: Mapping | None) -> dict:
        return {k: v - (b or {}).get(k, 0.0) for k, v in a.items()}

    req = delta(now.requests, prev.requests if prev else None)
    chosen = {k: v for k, v in req.items() if endpoint is None or k[0] == endpoint}
    merged: dict[float, float] = {}
    for ep, per in now.buckets.items():
        if endpoint is None or ep == endpoint:
            for le, v in delta(per, prev.buckets.get(ep) if prev else None).items():
                merged[le] = merged.get(le, 0.0) + v
    total = sum(chosen.values())
    errors = sum(v for (_, status), v in chosen.items() if status.startswith("5"))
    refused = sum(v for (_, status), v in chosen.items() if status.startswith("4"))
    p50, p99 = quantile(0.5, merged), quantile(0.99, merged)
    return Traffic(now.at - prev.at if prev else None, total, errors, refused,
                   None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)  # fmt: skip


def _monotone(before: Scrape, now: Scrape) -> bool:
    return all(now.requests.get(k, 0.0) >= v for k, v in before.requests.items())
