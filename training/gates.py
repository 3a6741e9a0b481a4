"""Promotion gates: pure decisions from what the candidate (and the champion) scored on the
same test split: AUC floors, fairness between protected groups, score stability. Each gate
carries what it measured and the bound it was held to, so promote, the audit trail and the
model card show value, threshold and verdict alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from riskloop.settings import PromotionSettings


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    value: float | None = None  # what was measured; None: not measured (the detail says why)
    threshold: float | None = None
    bound: Literal["min", "max"] = "min"  # the value must be at least / at most the threshold

    @property
    def verdict(self) -> str:
        """pass, FAIL, or skip: nothing to gate (too few rows, attribute not collected)."""
        return "FAIL" if not self.passed else "pass" if self.value is not None else "skip"

    @property
    def summary(self) -> str:
        """`name: value vs bound threshold`, e.g. `score_psi: 0.0290 vs max 0.2500`."""
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        vs = "" if self.threshold is None else f" vs {self.bound} {self.threshold:.4f}"
        return f"{self.name}: {value}{vs}"

    def line(self) -> str:
        """`[verdict] summary — detail`, as promote prints it."""
        return f"[{self.verdict}] {self.summary} — {self.detail}"

    def record(self) -> dict[str, Any]:
        """What the audit trail keeps of it (JSON)."""
        return {"verdict": self.verdict, "value": self.value, "threshold": self.threshold,
                "bound": self.bound, "detail": self.detail}  # fmt: skip


def evaluate_gates(challenger_auc: float, champion_auc: float | None, policy: PromotionSettings,
                   baseline_auc: float | None = None, rows: str = "",
                   baseline_challenger_auc: float | None = None) -> list[GateResult]:  # fmt: skip
    """The AUC gates. `rows`: which test rows the AUCs count, for the details; the baseline is
    scored on the sample's rows, so it is held against the challenger's AUC on those
    (`baseline_challenger_auc`, default: `challenger_auc`)."""
    gates, on = [], f" {rows}" if rows else ""
    if policy.min_auc is not None:
        gates.append(GateResult("auc_floor", challenger_auc >= policy.min_auc,
                                f"challenger AUC {challenger_auc:.4f}{on} vs floor {policy.min_auc:.4f}",
                                challenger_auc, policy.min_auc))  # fmt: skip
    if policy.min_auc_over_baseline is not None:
        if baseline_auc is None:
            raise ValueError("min_auc_over_baseline needs the baseline's AUC")
        floor = baseline_auc + policy.min_auc_over_baseline
        mine = challenger_auc if baseline_challenger_auc is None else baseline_challenger_auc
        gates.append(GateResult("beats_baseline", mine >= floor,
                                f"challenger AUC {mine:.4f} vs logistic baseline {baseline_auc:.4f} "
                                f"+ {policy.min_auc_over_baseline:.4f} = {floor:.4f}",
                                mine, floor))  # fmt: skip
    if champion_auc is not None:
        allowed = champion_auc - policy.max_auc_drop
        gates.append(GateResult("no_worse_than_champion", challenger_auc >= allowed,
                                f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f}{on} "
                                f"- tolerance {policy.max_auc_drop:.4f} = {allowed:.4f}",
                                challenger_auc, allowed))  # fmt: skip
    return gates


# ---------------------------------------------------------------- fairness
def group_table(
    groups: pd.Series, y: np.ndarray, p: np.ndarray, approved: np.ndarray
) -> pd.DataFrame:
    """Per group of one protected attribute (rows without it left out): rows, approval rate,
    defaults, non-defaults and AUC (NaN where the group holds one class only)."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    approved = np.asarray(approved, dtype=bool)
    rows = []
    for value in sorted(groups.dropna().unique(), key=str):
        m = (groups == value).to_numpy()
        ym = y[m]
        auc = float(roc_auc_score(ym, p[m])) if len(np.unique(ym)) == 2 else float("nan")
        rows.append({"group": str(value), "n": int(m.sum()), "approval_rate": float(approved[m].mean()),
                     "defaults": int(ym.sum()), "non_defaults": int(len(ym) - ym.sum()), "roc_auc": auc})  # fmt: skip
    return pd.DataFrame(
        rows, columns=["group", "n", "approval_rate", "defaults", "non_defaults", "roc_auc"]
    )


def _coverage(attribute: str, groups: pd.Series) -> str:
    carried = int(groups.notna().sum())
    share = carried / len(groups) if len(groups) else 0.0
    return f"on the {carried:,} of {len(groups):,} test rows that carry {attribute} ({share:.0%})"


def _auc(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"  # NaN: the group holds one class only


def _listing(table: pd.DataFrame, gated: pd.Series, text: Callable[[Any], str]) -> str:
    """Every group; where the gate applies, the groups too small for it marked as such."""
    mark = gated.sum() >= 2
    return ", ".join(text(r) + (" (not gated)" if mark and not ok else "")
                     for r, ok in zip(table.itertuples(), gated, strict=True)) or "no group"  # fmt: skip


def approval_ratio_gate(attribute: str, groups: pd.Series, approved: np.ndarray, min_ratio: float,
                        min_rows: int, rule: str) -> GateResult:  # fmt: skip
    """The four-fifths rule: lowest group approval rate / highest, over the groups with at
    least `min_rows` rows (smaller ones are listed, not gated). `rule` says what approval is."""
    unused = np.zeros(len(groups))  # outcomes and scores play no part in approval rates
    table = group_table(groups, unused, unused, approved)
    gated = table["n"] >= min_rows
    listing = _listing(table, gated, lambda r: f"{r.group} {r.approval_rate:.1%} of {r.n:,}")
    name = f"approval_ratio[{attribute}]"
    about = f"{rule}; {_coverage(attribute, groups)}: {listing}"
    if gated.sum() < 2:
        return GateResult(name, True, f"not gated, fewer than two groups of >= {min_rows} rows; {about}",
                          None, min_ratio)  # fmt: skip
    rates = table.loc[gated, "approval_rate"]
    ratio = float(rates.min() / rates.max()) if rates.max() > 0 else 1.0  # nobody approved: equal
    return GateResult(name, ratio >= min_ratio, f"lowest / highest approval rate; {about}",
                      ratio, min_ratio)  # fmt: skip


def auc_gap_gate(attribute: str, groups: pd.Series, y: np.ndarray, p: np.ndarray, max_gap: float,
                 min_rows: int, min_class_rows: int) -> GateResult:  # fmt: skip
    """Highest group AUC - lowest, over the groups with at least `min_rows` rows and
    `min_class_rows` defaults and as many non-defaults (an AUC on fewer is mostly noise)."""
    table = group_table(groups, y, p, np.zeros(len(groups), dtype=bool))
    gated = ((table["n"] >= min_rows) & (table["defaults"] >= min_class_rows)
             & (table["non_defaults"] >= min_class_rows))  # fmt: skip
    listing = _listing(table, gated,
                       lambda r: f"{r.group} {_auc(r.roc_auc)} ({r.n:,} rows, {r.defaults:,} defaults)")  # fmt: skip
    name = f"auc_gap[{attribute}]"
    about = f"{_coverage(attribute, groups)}: {listing}"
    if gated.sum() < 2:
        return GateResult(name, True, f"not gated, fewer than two groups of >= {min_rows} rows with >= "
                          f"{min_class_rows} of each class; {about}", None, max_gap, "max")  # fmt: skip
    aucs = table.loc[gated, "roc_auc"]
    gap = float(aucs.max() - aucs.min())
    return GateResult(name, gap <= max_gap, f"highest - lowest group AUC; {about}",
                      gap, max_gap, "max")  # fmt: skip


# ---------------------------------------------------------------- stability
def score_psi_gate(train_p: np.ndarray, test_p: np.ndarray, max_psi: float,
                   left_out: int = 0) -> GateResult:  # fmt: skip
    """PSI of the candidate's PD on the test split against its train split, over the train
    split's deciles: the convention reads < 0.1 stable, 0.1-0.25 watch, >= 0.25 shifted.
    Train scores are in-sample, so an over-fitted model's are sharper: this catches that as
    well as a population shift between the train and test periods (an out-of-time split).
    `left_out`: production rows a retrain added to train, not compared (said in the detail)."""
    # here, not at the top: monitoring.psi registers an Evidently stat test (seconds to import)
    from monitoring.psi import psi

    value = psi(train_p, test_p)
    added = f"; {left_out:,} production rows a retrain added left out" if left_out else ""
    about = (f"candidate's PD on the test split ({len(test_p):,} rows) vs the train split "
             f"({len(train_p):,}{added}), train deciles; < 0.1 stable, >= 0.25 shifted")  # fmt: skip
    if np.isnan(value):
        return GateResult(
            "score_psi", True, f"not gated, a split is empty; {about}", None, max_psi, "max"
        )
    return GateResult("score_psi", value <= max_psi, about, value, max_psi, "max")


# ---------------------------------------------------------------- all of them
@dataclass(frozen=True)
class Scored:
    """What every gate reads: one test split scored by the candidate (and the champion)."""

    y: np.ndarray
    candidate: np.ndarray  # probabilities of default
    approved: np.ndarray  # the candidate's decision per row is approve
    approval_rule: str  # that decision in words, for the gate details
    groups: dict[str, pd.Series] = field(default_factory=dict)  # training.report.protected_groups
    champion: np.ndarray | None = None
    train: np.ndarray | None = None  # the candidate's PD on the train split (PSI reference)
    train_left_out: int = 0  # production rows of the train split not in `train`
    baseline_auc: float | None = None
    # The test split's rows when `y` is a sample of it (pipelines/samples.py), and the
    # candidate's and champion's AUC over every one of them (pipelines/headline.py): the AUC
    # gates then hold those, not the sample's.
    test_rows: int | None = None
    headline_auc: dict[str, float] = field(default_factory=dict)

    @property
    def candidate_auc(self) -> float:
        return float(roc_auc_score(self.y, self.candidate))

    @property
    def sampled(self) -> bool:
        return self.test_rows is not None and self.test_rows > len(self.y)


def candidate_gates(scored: Scored, policy: PromotionSettings) -> list[GateResult]:
    """Every gate the policy sets: AUC, then per protected attribute approval ratio and AUC
    gap, then score PSI."""
    sample_auc = scored.candidate_auc
    champion_auc = (
        None if scored.champion is None else float(roc_auc_score(scored.y, scored.champion))
    )
    if scored.sampled:
        gates = evaluate_gates(scored.headline_auc["candidate"],
                               None if champion_auc is None else scored.headline_auc["champion"],
                               policy, scored.baseline_auc, f"on all {scored.test_rows:,} test rows",
                               sample_auc)  # fmt: skip
    else:
        gates = evaluate_gates(sample_auc, champion_auc, policy, scored.baseline_auc)
    for attribute, groups in scored.groups.items():
        if policy.min_approval_ratio is not None:
            gates.append(approval_ratio_gate(attribute, groups, scored.approved,
                                             policy.min_approval_ratio, policy.min_group_rows,
                                             scored.approval_rule))  # fmt: skip
        if policy.max_group_auc_gap is not None:
            gates.append(auc_gap_gate(attribute, groups, scored.y, scored.candidate,
                                      policy.max_group_auc_gap, policy.min_group_rows,
                                      policy.min_group_class_rows))  # fmt: skip
    if policy.max_score_psi is not None:
        if scored.train is None:
            raise ValueError("max_score_psi needs the candidate's train-split scores")
        gates.append(score_psi_gate(scored.train, scored.candidate, policy.max_score_psi,
                                    scored.train_left_out))  # fmt: skip
    return gates
