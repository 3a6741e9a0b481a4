"""Model card: what a reviewer needs to decide on one model version, on one page.

Pure pieces (numbers in, numbers and HTML out): bootstrap confidence intervals on the test
split, a monotonicity check of the constrained features, the one-sentence verdict, and the
page itself (training/card_html.py). The evaluate stage gathers the inputs, writes the page
and attaches it to the version."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.gates import GateResult

BOOTSTRAP_METRICS = ("roc_auc", "gini", "ks", "brier")
_CHUNK = 200  # resamples per vectorised pass: (chunk, rows) float arrays stay a few MB


@dataclass(frozen=True)
class Interval:
    """A point estimate on the whole split and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def text(self, digits: int = 3, signed: bool = False) -> str:
        """`0.781 [0.768, 0.794]`; signed: `+0.012 [-0.002, +0.025]`."""
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}]"


@dataclass(frozen=True)
class MetricIntervals:
    """Bootstrap intervals of the candidate, the champion (or None) and their paired difference
    (candidate - champion, on the same resamples: what the verdict's claim rests on)."""

    candidate: dict[str, Interval]
    champion: dict[str, Interval] | None
    difference: dict[str, Interval] | None
    resamples: int
    level: float


# ---------------------------------------------------------------- bootstrap
def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n): how often each row is drawn in each bootstrap resample."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def weighted_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """AUC, Gini, KS and Brier for each row of weights `w` (resamples, n) at once: a row's
    weight is how often the resample drew it. Tied scores count half (as roc_auc_score)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # one block per distinct score
    ws = w[:, order]
    pos = np.add.reduceat(ws * y[order], starts, axis=1)  # (resamples, distinct), score falls
    neg = np.add.reduceat(ws * (1 - y[order]), starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without one class: NaN
        below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored strictly lower
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        gap = np.cumsum(pos, axis=1) / n_pos[:, None] - np.cumsum(neg, axis=1) / n_neg[:, None]
        ks = np.maximum(gap.max(axis=1), 0.0)
        brier = w @ (p - y) ** 2 / w.sum(axis=1)
    return {"roc_auc": auc, "gini": 2 * auc - 1, "ks": ks, "brier": brier}


def bootstrap_intervals(y: np.ndarray, candidate: np.ndarray, champion: np.ndarray | None = None,
                        resamples: int = 1000, seed: int = 0, level: float = 0.95) -> MetricIntervals:  # fmt: skip
    """Percentile bootstrap over the rows of the test split; both models are scored on the
    same resamples, so the difference's interval is paired."""
    rng = np.random.default_rng(seed)
    models = {"candidate": candidate} | ({} if champion is None else {"champion": champion})
    point = {k: weighted_metrics(y, p, np.ones((1, len(y)))) for k, p in models.items()}
    draws: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in models}
    for start in range(0, resamples, _CHUNK):
        w = resample_counts(len(y), min(_CHUNK, resamples - start), rng)
        for k, p in models.items():
            draws[k].append(weighted_metrics(y, p, w))
    stacked = {k: {m: np.concatenate([d[m] for d in v]) for m in BOOTSTRAP_METRICS}
               for k, v in draws.items()}  # fmt: skip
    tail = (1 - level) / 2 * 100

    def interval(estimate: float, values: np.ndarray) -> Interval:
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return Interval(float(estimate), float(low), float(high))

    def per_model(k: str) -> dict[str, Interval]:
        return {m: interval(point[k][m][0], stacked[k][m]) for m in BOOTSTRAP_METRICS}

    difference = None
    if champion is not None:
        difference = {m: interval(point["candidate"][m][0] - point["champion"][m][0],
                                  stacked["candidate"][m] - stacked["champion"][m])
                      for m in BOOTSTRAP_METRICS}  # fmt: skip
    return MetricIntervals(per_model("candidate"), per_model("champion") if champion is not None
                           else None, difference, resamples, level)  # fmt: skip


# ---------------------------------------------------------------- monotonicity
@dataclass(frozen=True)
class MonotoneCheck:
    """Individual conditional expectation of one constrained feature: each sampled row's
    prediction as the feature walks a quantile grid, everything else held fixed."""

    feature: str
    direction: int  # +1: the prediction may only rise with the feature; -1: only fall
    grid_points: int
    rows: int
    violating_rows: int  # rows whose prediction moves against the direction somewhere
    worst: float  # the largest such move (in the prediction's units)

    @property
    def passed(self) -> bool:
        return self.violating_rows == 0


def value_grid(column: np.ndarray, points: int) -> np.ndarray:
    """Observed values to walk: every one of a feature with at most `points` distinct values
    (a repayment status through its rare late months too), else its quantiles (inverted CDF:
    observed values, so an integer feature is walked over integers)."""
    column = column[~np.isnan(column)]
    values = np.unique(column)
    if len(values) <= points:
        return values
    return np.unique(np.quantile(column, np.linspace(0, 1, points), method="inverted_cdf"))


def monotonicity(predict: Callable[[pd.DataFrame], np.ndarray], features: pd.DataFrame,
                 constraints: Mapping[str, int], grid_points: int = 20, sample: int = 300,
                 seed: int = 0, tolerance: float = 1e-6) -> list[MonotoneCheck]:  # fmt: skip
    """One check per non-zero constraint; `predict` maps a feature frame to margins or
    probabilities (either is monotone in the other)."""
    rows = features.sample(min(sample, len(features)), random_state=seed)
    checks = []
    for feature, direction in constraints.items():
        if direction == 0:
            continue
        grid = value_grid(features[feature].to_numpy(dtype=float), grid_points)
        if len(grid) < 2:  # a constant feature cannot move the prediction
            checks.append(MonotoneCheck(feature, direction, len(grid), len(rows), 0, 0.0))
            continue
        walked = pd.concat([rows] * len(grid), ignore_index=True)
        walked[feature] = np.repeat(grid, len(rows)).astype(walked[feature].dtype)
        pred = np.asarray(predict(walked), dtype=float).reshape(len(grid), len(rows))
        steps = np.diff(pred, axis=0) * direction  # >= 0 everywhere when the constraint holds
        against = steps < -tolerance
        worst = float(max(0.0, -steps.min()))
        checks.append(MonotoneCheck(feature, direction, len(grid), len(rows),
                                    int(against.any(axis=0).sum()), worst))  # fmt: skip
    return checks


# ---------------------------------------------------------------- verdict
def _short(gate: GateResult) -> str:
    """`approval_ratio[SEX] 0.712 < min 0.800`."""
    if gate.value is None or gate.threshold is None:
        return gate.name
    sign = "<" if gate.bound == "min" else ">"
    return f"{gate.name} {gate.value:.3f} {sign} {gate.bound} {gate.threshold:.3f}"


def gate_count(gates: Sequence[GateResult]) -> str:
    """`9/10`: gates that do not block promotion (passed or skipped) of all gates."""
    return f"{sum(g.passed for g in gates)}/{len(gates)}"


def verdict(version: str, gates: Sequence[GateResult], champion: str | None,
            auc_difference: Interval | None, level: float = 0.95) -> str:  # fmt: skip
    """The card's headline: the gates, then the version against the champion on test AUC,
    claiming a direction only where the paired interval leaves out zero."""
    failed = [g for g in gates if not g.passed]
    skipped = sum(g.verdict == "skip" for g in gates)
    if failed:
        head = f"v{version} fails {len(failed)} of {len(gates)} gates: " + "; ".join(map(_short, failed))  # fmt: skip
    else:
        head = f"v{version} passes every gate ({len(gates) - skipped} of {len(gates)}" + (
            f", {skipped} skipped for too few rows)" if skipped else ")")  # fmt: skip
    if champion is None or auc_difference is None:
        return head + "; there is no other champion to compare it with."
    d = auc_difference
    ci = f"{level:.0%} CI {d.low:+.3f} to {d.high:+.3f}"
    if d.low > 0 or d.high < 0:
        word = "beats" if d.low > 0 else "trails"
        compared = f"{word} champion v{champion} on test AUC by {abs(d.estimate):.3f} ({ci})"
    else:
        compared = f"is level with champion v{champion} on test AUC: {d.estimate:+.3f} ({ci})"
    return f"{head}{'; it' if failed else ' and'} {compared}."
