"""The model card's pure pieces: bootstrap intervals, the monotonicity check, the verdict and
the page (parsed, as a reviewer's browser would: no URL, every gate, labels, both models)."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import brier_score_loss, roc_auc_score

from riskloop.settings import PromotionSettings
from serving.scoring import Cutoffs
from training.card import (
    Interval,
    bootstrap_intervals,
    monotonicity,
    value_grid,
    verdict,
    weighted_metrics,
)
from training.card_html import CardData, ModelScores, Stability, group_label, render
from training.gates import GateResult, Scored, candidate_gates
from training.metrics import ks_statistic
from training.report import protected_groups


def scored_split(n: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a model with some skill (ties included: rounded)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.22).astype(int)
    margin = -1.3 + signal * y + rng.normal(0, 1, n)
    return y, np.round(1 / (1 + np.exp(-margin)), 3)


# ---------------------------------------------------------------- bootstrap
def test_weighted_metrics_with_unit_weights_match_the_reported_metrics():
    y, p = scored_split(2000)
    got = weighted_metrics(y, p, np.ones((1, len(y))))
    assert got["roc_auc"][0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got["gini"][0] == pytest.approx(2 * roc_auc_score(y, p) - 1, abs=1e-12)
    assert got["ks"][0] == pytest.approx(ks_statistic(y, p), abs=1e-12)
    assert got["brier"][0] == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_interval_holds_the_estimate_and_narrows_with_more_rows():
    widths = []
    for n in (600, 6000):
        y, p = scored_split(n, seed=n)
        iv = bootstrap_intervals(y, p, resamples=400, seed=1)
        for m, ci in iv.candidate.items():
            assert ci.low <= ci.estimate <= ci.high, (n, m, ci)
        widths.append(iv.candidate["roc_auc"].high - iv.candidate["roc_auc"].low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(10)


def test_difference_is_paired_and_fast_enough():
    y, p = scored_split(6000)
    start = time.perf_counter()
    same = bootstrap_intervals(y, p, p.copy(), resamples=1000)
    assert time.perf_counter() - start < 3
    assert same.difference is not None
    assert same.difference["roc_auc"] == Interval(0.0, 0.0, 0.0)  # same resamples for both
    worse = np.round(np.clip(p + np.random.default_rng(5).normal(0, 0.15, len(p)), 0, 1), 3)
    diff = bootstrap_intervals(y, p, worse, resamples=300).difference
    assert diff is not None and diff["roc_auc"].low > 0


# ---------------------------------------------------------------- monotonicity
def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.uniform(-1, 1, n), "z": rng.normal(0, 1, n)})


def test_monotonicity_flags_a_model_that_turns_back():
    (check,) = monotonicity(lambda f: (f["x"] ** 2).to_numpy(), frame(), {"x": 1}, sample=100)
    assert not check.passed and check.violating_rows == 100 and check.worst > 0.1


def test_monotonicity_passes_monotone_models_in_either_direction():
    checks = monotonicity(lambda f: (2 * f["x"] - f["z"]).to_numpy(), frame(),
                          {"x": 1, "z": -1, "unused": 0})  # fmt: skip
    assert [(c.feature, c.passed) for c in checks] == [("x", True), ("z", True)]
    assert checks[0].grid_points == 20


def test_rare_values_of_a_status_are_walked_too():
    status = np.r_[np.zeros(990), np.arange(1, 10), np.nan]  # late months: 1% of rows
    assert value_grid(status, 20).tolist() == list(range(10))
    assert len(value_grid(np.linspace(0, 1, 1000), 20)) == 20


def test_monotonicity_of_a_constrained_xgboost_model():
    """Against a U-shaped truth, the constrained model is monotone, the free one is not."""
    x = frame(3000, seed=3)
    y = (x["x"] ** 2 + 0.1 * np.random.default_rng(3).normal(size=len(x)) > 0.3).astype(int)

    def fit(constraint: int):
        params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1,
                  "monotone_constraints": f"({constraint},0)"}  # fmt: skip
        booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=30)
        return lambda f: booster.inplace_predict(f, predict_type="margin")

    (held,) = monotonicity(fit(1), x, {"x": 1})
    (broken,) = monotonicity(fit(0), x, {"x": 1})
    assert held.passed and not broken.passed


# ---------------------------------------------------------------- verdict
PASS = GateResult("auc_floor", True, "ok", 0.78, 0.77)
FAIL = GateResult("approval_ratio[SEX]", False, "low", 0.712, 0.8)
SKIP = GateResult("auc_gap[MARRIAGE]", True, "too few rows", None, 0.1, "max")


def test_verdict_sentences():
    up, level = Interval(0.012, 0.004, 0.020), Interval(0.001, -0.002, 0.004)
    assert verdict("7", [PASS, SKIP], "5", up) == (
        "v7 passes every gate (1 of 2, 1 skipped for too few rows) and beats champion v5 on test "
        "AUC by 0.012 (95% CI +0.004 to +0.020)."
    )
    assert verdict("7", [PASS, FAIL], "5", level) == (
        "v7 fails 1 of 2 gates: approval_ratio[SEX] 0.712 < min 0.800; it is level with champion "
        "v5 on test AUC: +0.001 (95% CI -0.002 to +0.004)."
    )
    assert verdict("7", [PASS], "5", Interval(-0.01, -0.02, -0.005)).endswith(
        "trails champion v5 on test AUC by 0.010 (95% CI -0.020 to -0.005)."
    )
    assert verdict("1", [PASS], None, None).endswith("no other champion to compare it with.")


def test_quartile_groups_read_as_ranges():
    assert group_label("(20.999, 28.0]") == "21-28"
    assert group_label("female") == "female"


# ---------------------------------------------------------------- the page
class Page(HTMLParser):
    """What the checks read: every URL-bearing attribute, table rows, SVG texts, the verdict."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.rows: list[list[str]] = []
        self.svg_texts: list[str] = []
        self.verdict = ""
        self._in: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in {"src", "href", "xlink:href", "action"}]
        if tag == "tr":
            self.rows.append([])
        elif tag == "td" and self.rows:
            self.rows[-1].append("")
        cls = dict(attrs).get("class") or ""
        self._in.append("verdict" if "verdict" in cls.split() else tag)

    def handle_endtag(self, tag):
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data):
        if "text" in self._in:
            self.svg_texts.append(data)
        if "verdict" in self._in:
            self.verdict += data
        if "td" in self._in and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


@pytest.fixture(scope="module")
def test_split(params) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Protected attributes as the raw data codes them (SEX 0/1, MARRIAGE one-hot, AGE)."""
    n = 1600
    rng = np.random.default_rng(11)
    y, challenger = scored_split(n, seed=11, signal=1.2)
    champion = np.round(np.clip(challenger + rng.normal(0, 0.05, n), 0, 1), 3)
    raw = pd.DataFrame({"SEX": rng.integers(0, 2, n), "AGE": rng.integers(21, 70, n)})
    marriage = rng.choice(4, n, p=[0.01, 0.45, 0.5, 0.04])
    for k in range(4):
        raw[f"MARRIAGE_{k}"] = (marriage == k).astype(int)
    return raw, y, challenger, champion


def card_of(params, split, with_champion: bool = True) -> CardData:
    raw, y, p, p_champ = split
    cut = Cutoffs(30, 50)
    challenger = ModelScores("challenger", "7", p, cut)
    champion = ModelScores("champion", "5", p_champ, cut) if with_champion else None
    groups = protected_groups(raw, params.data)
    policy = PromotionSettings(min_auc=0.6, min_approval_ratio=0.99, max_score_psi=None,
                               min_group_rows=100, min_group_class_rows=20)  # fmt: skip
    rule = "approve = risk_score < 30"
    gates = candidate_gates(Scored(y, p, challenger.approved, rule, groups,
                                   None if champion is None else p_champ), policy)  # fmt: skip
    intervals = bootstrap_intervals(y, p, None if champion is None else p_champ, resamples=200)
    diff = None if intervals.difference is None else intervals.difference["roc_auc"]
    shares = np.full(10, 0.1)
    return CardData(
        model_name="credit-risk", y=y, challenger=challenger, champion=champion, gates=gates,
        verdict=verdict("7", gates, None if champion is None else "5", diff), intervals=intervals,
        purpose="Probability of default.", lineage={"git commit": "abc123", "rows": "test 1,600"},
        training_params={"max_depth": 3}, approval_rule=rule, groups=groups,
        bands=params.serving.bands, reason_texts={"PAY_0": "Latest payment was late"},
        importance=pd.DataFrame({"feature": ["PAY_0", "LIMIT_BAL"], "mean_abs_contribution": [0.3, 0.1]}),
        monotone=monotonicity(lambda f: f["x"].to_numpy(), frame(), {"x": 1}),
        stability=Stability(0.0123, shares, shares, 4800, 1600), min_group_rows=100,
        min_approval_ratio=0.99,
    )  # fmt: skip


@pytest.fixture(scope="module")
def page(params, test_split) -> tuple[CardData, str]:
    card = card_of(params, test_split)
    return card, render(card)


def test_page_is_self_contained(page):
    _, text = page
    parsed = Page(text)
    assert "http://" not in text and "https://" not in text
    assert all(u.startswith("#") for u in parsed.urls), parsed.urls  # in-page anchors only
    assert not parsed.tags & {"script", "link", "img", "iframe", "object"}
    assert "svg" in parsed.tags and "style" in parsed.tags


def test_page_says_the_verdict_and_shows_every_gate(page):
    card, text = page
    parsed = Page(text)
    assert parsed.verdict.strip() == card.verdict
    assert card.verdict.startswith("v7 fails")  # min_approval_ratio 0.99: some attribute fails
    gate_rows = {r[0]: r for r in parsed.rows if r and r[0] in {g.name for g in card.gates}}
    assert set(gate_rows) == {g.name for g in card.gates}
    for g in card.gates:
        assert gate_rows[g.name][3] == g.verdict, g


def test_page_names_groups_by_their_labels(page):
    _, text = page
    groups = {r[0] for r in Page(text).rows if r}
    assert {"male", "female", "married", "single", "other"} <= groups
    assert not groups & {"0", "1", "MARRIAGE_1", "MARRIAGE_2"}
    assert any(g.count("-") == 1 and g.split("-")[0].isdigit() for g in groups)  # AGE quartiles


def test_both_models_share_the_axes_with_their_auc(page):
    card, text = page
    texts = Page(text).svg_texts
    for m in card.models:
        assert f"{m.label} (AUC {roc_auc_score(card.y, m.p):.3f})" in texts  # ROC legend
        assert sum(t.startswith(m.label) for t in texts) >= 4  # ROC, PR, calibration, scores
    assert card.challenger.label.startswith("challenger") and card.models[1].role == "champion"


def test_a_first_model_gets_a_card_without_a_champion(params, test_split):
    card = card_of(params, test_split, with_champion=False)
    text = render(card)
    assert "no other champion" in Page(text).verdict
    assert "champion v5" not in text and "challenger v7 (AUC" in text
