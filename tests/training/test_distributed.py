"""Training and evaluation on Dask (a 2-worker LocalCluster): metrics from per-partition
score counts equal the whole-frame metrics (1e-9 on counts merged in-process, 1e-6 through
the cluster), and XGBoost trained by the workers (xgboost.dask) scores the test split within
0.01 AUC of the same configuration trained in one process (stated tolerance: the workers build
their histogram sketches from their own partitions, so the trees differ slightly)."""

from __future__ import annotations

import numpy as np
import pytest

from features.contract import validate_raw
from features.transform import FeatureBuilder
from pipelines.prepare import split
from tests.conftest import stratified_sample
from training import distributed, fit, score_counts, search
from training.metrics import classification_metrics

AUC_TOLERANCE = 0.01


def test_counts_merged_over_partitions_give_the_whole_frame_metrics():
    rng = np.random.default_rng(3)
    n = 20_000
    y = (rng.random(n) < 0.22).astype(int)
    # real scores tie: a coarse half and a fine half, both informative
    p = np.clip(0.2 + 0.3 * y * rng.random(n) + rng.normal(0, 0.15, n), 0.001, 0.999)
    p[: n // 2] = p[: n // 2].round(2)
    want = classification_metrics(y, p, 0.5, 10)
    chunks = np.array_split(np.arange(n), 7)
    got = score_counts.metrics(score_counts.merge([score_counts.score_counts(y[c], p[c]) for c in chunks]),
                               0.5, 10)  # fmt: skip
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=0, abs=1e-9), key


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB", processes=True,
                       host="127.0.0.1", dashboard_address=None) as cluster,
          Client(cluster) as client):  # fmt: skip
        yield client


@pytest.fixture(scope="module")
def feature_parts(tmp_path_factory, raw, params):
    """Train and test features of a 4,000-row sample, each as a dataset of 4 Parquet parts."""
    tmp = tmp_path_factory.mktemp("distributed")
    parts = split(
        validate_raw(stratified_sample(raw, params.data.target, 4000), params.data), params
    )
    builder = FeatureBuilder(params.data, params.features).fit(parts["train"])
    out = {}
    for name in ("train", "test"):
        feats = builder.transform(parts[name])
        feats[params.data.target] = parts[name][params.data.target].to_numpy()
        files = []
        for i, rows in enumerate(np.array_split(np.arange(len(feats)), 4)):
            files.append(tmp / f"{name}.{i}.parquet")
            feats.iloc[rows].to_parquet(files[-1], index=False)
        out[name] = (feats, files)
    return builder.feature_names_, out


def test_metrics_on_the_cluster_equal_the_local_ones(cluster_client, feature_parts, params):
    names, data = feature_parts
    target = params.data.target
    train, _ = data["train"]
    booster = fit.fit_booster(train[names], train[target].to_numpy(), {"max_depth": 3, "nthread": 1,
                              "objective": "binary:logistic"}, 40)  # fmt: skip
    test, files = data["test"]
    want = classification_metrics(
        test[target].to_numpy(), booster.inplace_predict(test[names]), 0.5, 10
    )
    got = distributed.evaluate(
        distributed.read(files, names, target), booster, names, target, 0.5, 10
    )
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=0, abs=1e-6), key


def test_xgboost_dask_within_the_stated_auc_of_one_process(cluster_client, feature_parts, params):
    names, data = feature_parts
    target = params.data.target
    tr = params.train
    xgb_params = {**search.base_xgb_params(tr, fit.monotone_vector(tr, names), tr.seed),
                  "nthread": 1, "max_depth": 4, "learning_rate": 0.1}  # fmt: skip
    train, train_files = data["train"]
    test, _ = data["test"]
    local = fit.fit_booster(train[names], train[target].to_numpy(), xgb_params, 60)
    frame = distributed.read(train_files, names, target)
    spread = distributed.fit_booster(cluster_client, frame, names, target, xgb_params, 60)
    auc = {name: classification_metrics(test[target].to_numpy(), b.inplace_predict(test[names]), 0.5, 10)["roc_auc"]
           for name, b in (("local", local), ("dask", spread))}  # fmt: skip
    assert auc["local"] > 0.65  # a model that learned something, so the comparison means something
    assert abs(auc["dask"] - auc["local"]) <= AUC_TOLERANCE, auc
