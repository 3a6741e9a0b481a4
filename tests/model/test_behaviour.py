"""Model behaviour on the real data and the real split: one fixed, moderate configuration
fitted through the project's own code (the Optuna search itself is exercised by the
integration tests), then the credit-specific properties the model must have."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.modelling import fit_small_model


@pytest.fixture(scope="module")
def trained(raw, params):
    model, parts = fit_small_model(raw, params, 300, ("train", "valid"), learning_rate=0.05, max_depth=4,
                                   min_child_weight=10, subsample=0.8, colsample_bytree=0.6)  # fmt: skip
    return model, parts["test"], parts["test"][params.data.target].to_numpy()


def test_auc_floor_on_real_test_split(trained, params):
    model, test, y = trained
    assert roc_auc_score(y, model.predict_proba(test)) >= params.promotion.min_auc


def test_returns_probabilities_not_labels(trained):
    model, test, _ = trained
    p = model.predict(None, test.head(200))
    assert p.dtype.kind == "f" and ((p > 0) & (p < 1)).all() and len(np.unique(p)) > 50


def test_risk_non_decreasing_in_months_past_due(trained, params):
    model, test, _ = trained
    rows = test.sample(100, random_state=3)
    for col in params.features.repayment.status_columns:
        scores = np.column_stack(
            [model.predict_proba(rows.assign(**{col: s})) for s in range(0, 9)]
        )
        assert (np.diff(scores, axis=1) >= -1e-7).all(), col


def test_protected_attributes_do_not_move_the_score(trained, params):
    model, test, _ = trained
    rows = test.head(300)
    flipped = rows.assign(SEX=1 - rows["SEX"], AGE=80 - rows["AGE"] + 21,
                          MARRIAGE_1=rows["MARRIAGE_2"], MARRIAGE_2=rows["MARRIAGE_1"])  # fmt: skip
    np.testing.assert_array_equal(model.predict_proba(rows), model.predict_proba(flipped))


def test_contributions_sum_to_margin(trained):
    model, test, _ = trained
    rows = test.head(50)
    contrib = model.contributions(rows)
    np.testing.assert_allclose(contrib.sum(axis=1), model.margin(rows), rtol=1e-4, atol=1e-4)
