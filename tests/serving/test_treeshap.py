"""The table-driven TreeSHAP must return XGBoost's exact pred_contribs, and the flattened
trees XGBoost's probabilities, or step aside."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from serving import scoring
from serving.scorer import SMALL_BATCH, GoldenMismatch, Scorer
from serving.treeshap import BLOCK_FROM, MAX_PATH, TreeShap
from serving.treeshap_kernels import BLOCK
from tests.conftest import stratified_sample
from tests.modelling import fit_small_model


def _synthetic(n: int = 3000, features: int = 6, seed: int = 0, missing: float = 0.1):
    """Few features, so deep trees split on the same feature again along a path."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = (x[:, 0] * x[:, 1] + np.sin(3 * x[:, 2]) + 0.3 * rng.normal(size=n) > 0).astype(int)
    x[rng.random(x.shape) < missing] = np.nan  # missing values follow each split's default
    return x, y


def golden(booster: xgb.Booster, x: np.ndarray) -> dict:
    """A golden batch as training writes it: XGBoost's own probabilities and contributions."""
    return {"probability": scoring.probabilities(booster, x).tolist(),
            "contributions": scoring.contributions(booster, x).tolist(), "xgboost": xgb.__version__}  # fmt: skip


def checked(booster: xgb.Booster, x: np.ndarray) -> Scorer:
    return Scorer(booster, x, golden(booster, x))


def _train(x, y, rounds: int = 40, **params) -> xgb.Booster:
    base = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.3, "nthread": 1, "seed": 0}
    return xgb.train({**base, **params}, xgb.DMatrix(x, label=y), rounds)


def test_project_model_matches_pred_contribs(raw, params):
    sample = stratified_sample(raw, params.data.target, 6000)
    model, parts = fit_small_model(sample, params, rounds=60, fit_on=("train",))
    feats = model.builder.transform(parts["test"]).to_numpy(dtype="float64")
    table = TreeShap.from_booster(model.booster)
    assert table is not None
    ours, theirs = table.contributions(feats), scoring.contributions(model.booster, feats)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    margin = model.booster.predict(xgb.DMatrix(feats), output_margin=True, validate_features=False)
    np.testing.assert_allclose(ours.sum(axis=1), margin, atol=1e-4)
    # the same pass finds each tree's leaf, and so does the tree walk: XGBoost's margins
    np.testing.assert_allclose(table.explain(feats)[1], margin, atol=2e-6)
    np.testing.assert_array_equal(table.margins(feats), table.explain(feats)[1])
    scorer = checked(model.booster, feats[:40])
    assert scorer.scores
    contrib, p = scorer.explain(feats)
    np.testing.assert_array_equal(contrib, ours)
    xgb_p = scoring.probabilities(model.booster, feats)
    np.testing.assert_allclose(p, xgb_p, rtol=1e-6, atol=1e-7)
    # small batches are scored by the tree walk, large ones by XGBoost's predictor
    assert len(feats) >= SMALL_BATCH
    small = feats[: SMALL_BATCH - 1]
    np.testing.assert_array_equal(
        scorer.probabilities(small), scoring.sigmoid(table.margins(small))
    )
    np.testing.assert_allclose(
        scorer.probabilities(small), xgb_p[: SMALL_BATCH - 1], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(scorer.probabilities(feats), xgb_p)


def test_repeated_features_and_missing_values_match():
    x, y = _synthetic()
    booster = _train(x, y, max_depth=8)
    table = TreeShap.from_booster(booster)
    assert table is not None
    path_lengths = np.log2(np.diff(table.leaf_table) // np.maximum(table.leaf_d, 1))
    assert (path_lengths > table.leaf_d).any(), "no path split twice on one feature"
    assert np.isnan(x).any()
    np.testing.assert_allclose(table.contributions(x), scoring.contributions(booster, x), atol=2e-5)
    # the per-row kernel (small batches) and the block kernel give the same bits
    assert len(x) > BLOCK >= BLOCK_FROM > 1
    one_by_one = [table.explain(x[i : i + 1]) for i in range(BLOCK + 3)]
    block = table.explain(x[: BLOCK + 3])  # a full block and a partial one
    np.testing.assert_array_equal(np.concatenate([c for c, _ in one_by_one]), block[0])
    np.testing.assert_array_equal(np.concatenate([m for _, m in one_by_one]), block[1])
    # the tree walk reaches the same leaves (missing values take each split's default)
    np.testing.assert_array_equal(table.margins(x), table.explain(x)[1])
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    np.testing.assert_allclose(table.margins(x), margin, atol=2e-6)


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": MAX_PATH + 2, "min_child_weight": 0, "eta": 1.0},  # tables too large
        {"objective": "multi:softprob", "num_class": 3},  # one output per class
    ],
    ids=["deep", "multiclass"],
)
def test_unsupported_models_fall_back_to_xgboost(params):
    x, y = _synthetic(n=4000, features=4, missing=0.0)
    if params.get("num_class"):
        y = np.digitize(x[:, 0], [-0.5, 0.5])
    booster = _train(x, y, rounds=5, **params)
    assert TreeShap.from_booster(booster) is None
    _assert_xgboost_only(checked(booster, x[:5]), booster, x[:20])


def _assert_xgboost_only(scorer: Scorer, booster: xgb.Booster, x: np.ndarray) -> None:
    assert scorer.table is None and not scorer.scores
    contrib, p = scorer.explain(x)
    np.testing.assert_array_equal(contrib, scoring.contributions(booster, x))
    assert p is None  # XGBoost's pred_contribs does not score: the service predicts
    np.testing.assert_array_equal(
        scorer.probabilities(x[:2]), scoring.probabilities(booster, x[:2])
    )


def test_scorer_uses_xgboost_when_the_tables_disagree():
    x, y = _synthetic()
    booster = _train(x, y)
    contrib, p = checked(booster, x[:20]).explain(x)
    np.testing.assert_allclose(contrib, scoring.contributions(booster, x), atol=2e-5)
    np.testing.assert_allclose(p, scoring.probabilities(booster, x), rtol=1e-6, atol=1e-7)
    # golden contributions the table cannot reproduce: it steps aside, and says why
    off = golden(booster, x[:20])
    off["contributions"] = (np.asarray(off["contributions"]) + 1e-3).tolist()
    scorer = Scorer(booster, x[:20], off)
    _assert_xgboost_only(scorer, booster, x[:20])
    assert scorer.status.contributions == "xgboost" and scorer.status.scores == "xgboost"
    assert "differs from XGBoost's contributions" in scorer.status.fallbacks[0]


def test_scorer_refuses_a_model_xgboost_does_not_reproduce():
    """XGBoost itself must give the golden batch's probabilities (another version, another
    model file): the model is refused, never served with other scores."""
    x, y = _synthetic()
    booster = _train(x, y)
    off = golden(booster, x[:20])
    off["probability"] = (np.asarray(off["probability"]) * 0.9).tolist()
    with pytest.raises(GoldenMismatch, match="probabilities"):
        Scorer(booster, x[:20], off)


def test_scorer_scores_only_a_logistic_model():
    """Margins become probabilities through binary:logistic's link only; with another
    objective the table still explains and XGBoost scores."""
    x, y = _synthetic(missing=0.0)
    booster = _train(x, y, objective="binary:logitraw")
    table = TreeShap.from_booster(booster)
    assert table is not None
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    np.testing.assert_allclose(table.explain(x)[1], margin, atol=2e-6)
    scorer = checked(booster, x[:20])
    assert scorer.table is not None and not scorer.scores
    contrib, p = scorer.explain(x)
    np.testing.assert_allclose(contrib, scoring.contributions(booster, x), atol=2e-5)
    assert p is None
    np.testing.assert_array_equal(
        scorer.probabilities(x[:2]), scoring.probabilities(booster, x[:2])
    )
