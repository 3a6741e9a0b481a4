import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from training import metrics as m


@pytest.fixture
def scored():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 3000), 0.001, 0.999)
    return y, p


def test_auc_gini_against_sklearn(scored):
    y, p = scored
    out = m.classification_metrics(y, p, 0.5, 10)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert out["gini"] == pytest.approx(2 * roc_auc_score(y, p) - 1)


def test_ks_matches_scipy(scored):
    y, p = scored
    assert m.ks_statistic(y, p) == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic)


def test_calibration_matches_sklearn(scored):
    y, p = scored
    table = m.calibration_table(y, p, 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(table["observed_rate"], prob_true)
    np.testing.assert_allclose(table["mean_predicted"], prob_pred)


def test_ece_by_hand():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.1, 0.9, 0.9])  # two bins, each predicted 0.1/0.9, observed 0.5
    assert m.expected_calibration_error(y, p, 10) == pytest.approx(0.4)


def test_threshold_metrics():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.2, 0.7, 0.1])
    out = m.classification_metrics(y, p, 0.5, 5)
    assert out["precision_at_threshold"] == 0.5
    assert out["recall_at_threshold"] == 0.5
    assert out["approval_rate"] == 0.5
