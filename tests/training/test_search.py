"""What an Optuna trial is scored on: the valid split, or CV folds of train+valid for small
data. A CV trial's score is the same number fit.cross_validate gives for its configuration."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from features.contract import validate_raw
from features.transform import FeatureBuilder
from pipelines.prepare import split
from riskloop.settings import Params
from tests.conftest import stratified_sample
from training import fit, search


@pytest.fixture(scope="module")
def frames(raw, params):
    parts = split(
        validate_raw(stratified_sample(raw, params.data.target, 1_000), params.data), params
    )
    builder = FeatureBuilder(params.data, params.features).fit(parts["train"])
    out = {}
    for name in ("train", "valid"):
        out[name] = builder.transform(parts[name])
        out[name][params.data.target] = parts[name][params.data.target].to_numpy()
    return out, builder.feature_names_


def settings(params: Params, **changes) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update=changes)})


@pytest.mark.parametrize("below, mode", [(None, "valid split"), (500, "valid split"),
                                         (5_000, "5-fold CV")])  # fmt: skip
def test_small_data_is_tuned_by_cv(frames, params, below, mode):
    (parts, names), target = frames, params.data.target
    tr = settings(params, tune_cv_below_rows=below, cv_folds=5).train
    tuning = search.tuning(parts["train"], parts["valid"], names, target, tr)
    assert tuning.mode == mode
    n = len(parts["train"]) + len(parts["valid"])
    if tuning.folds is None:
        assert tuning.train_rows == len(parts["train"]) and tuning.dvalid is not None
    else:  # every row is validated exactly once, and each booster learns from the rest
        held = sorted(i for _, va in tuning.folds for i in va)
        assert held == list(range(n)) and tuning.train_rows == n * 4 // 5


def test_a_cv_trial_scores_what_cross_validate_measures(frames, params):
    (parts, names), target = frames, params.data.target
    tr = settings(params, tune_cv_below_rows=10_000, pruning=False, nthread=1).train
    tuning = search.tuning(parts["train"], parts["valid"], names, target, tr)
    study = optuna.create_study(direction="maximize")
    # without row or column sampling: xgb.cv trains its folds in lockstep, so sampled folds
    # draw other rows than folds fitted one by one (seen: 0.747 vs 0.738)
    study.enqueue_trial({"learning_rate": 0.1, "max_depth": 3, "min_child_weight": 5, "subsample": 1.0,
                         "colsample_bytree": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.01, "gamma": 0.0})  # fmt: skip
    study.optimize(
        search.make_objective(tuning, tr, fit.monotone_vector(tr, names), None), n_trials=1
    )
    trial = study.best_trial
    both = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    xgb_params = {
        **search.base_xgb_params(tr, fit.monotone_vector(tr, names), tr.seed),
        **trial.params,
    }
    mean, _ = fit.cross_validate(both[names], both[target].to_numpy(), xgb_params,
                                 trial.user_attrs["best_iteration"] + 1, tr.cv_folds, tr.seed)  # fmt: skip
    assert trial.value == pytest.approx(mean, abs=1e-6)
