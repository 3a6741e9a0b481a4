"""The same small dataset through the stages on the local engine and on Dask (a 2-worker
LocalCluster each stage starts itself, partitions of 1,000 rows): the same contract verdict,
word for word; the same splits, row for row; the same clip caps to the last bit; the same
feature frames; and models whose test AUC is within AUC_TOLERANCE (stated: on Dask the trials,
the CV and the refit are trained by the workers, whose histogram sketches come from their own
partitions, so the trees differ a little and a search may pick another configuration)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, stratified_sample

AUC_TOLERANCE = 0.02


def run_stage(tmp: Path, module: str, engine: str, **data: object) -> subprocess.CompletedProcess:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["data"].update(data)
    doc["compute"] = {"engine": engine, "workers": 2, "memory_limit": "1GiB", "partition_rows": 1000}  # fmt: skip
    doc["split"]["method"] = "hash"
    # a short search scored on the valid split (not CV, which small data gets): on Dask each
    # trial is then trained by the workers
    doc["train"].update({"n_trials": 4, "tune_cv_below_rows": None, "cv_folds": 3, "nthread": 1,
                         "max_boost_rounds": 400})  # fmt: skip
    (tmp / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp),
           "PYTHONPATH": str(ROOT), "RISKLOOP_STATE_DIR": str(tmp / "state")}  # fmt: skip
    return subprocess.run([sys.executable, "-m", module], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def workspace(root: Path, name: str, raw: pd.DataFrame, file: str) -> Path:
    tmp = root / name
    (tmp / "data" / "raw").mkdir(parents=True)
    for code in ("features", "training", "pipelines", "riskloop", "serving", "monitoring"):
        (tmp / code).symlink_to(ROOT / code)  # the model carries its code from the stage's cwd
    raw.to_csv(tmp / "data" / "raw" / file, index=False)
    return tmp


@pytest.fixture(scope="module")
def sample(raw, params) -> pd.DataFrame:
    return stratified_sample(raw, params.data.target, 3000)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sample, params):
    """Both engines' prepare, features, train and evaluate on one 3,000-row sample."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for engine in ("local", "dask"):
        tmp = workspace(root, engine, sample, params.data.raw_file)
        for module in ("pipelines.prepare", "pipelines.build_features", "pipelines.train",
                       "pipelines.evaluate"):  # fmt: skip
            proc = run_stage(tmp, module, engine)
            assert proc.returncode == 0, f"{engine} {module}\n{proc.stdout}{proc.stderr[-4000:]}"
        out[engine] = tmp
    return out


def test_the_same_verdict_word_for_word(tmp_path, sample, params):
    bad = sample.copy()
    idc = params.data.id_column
    # each kind of finding, spread over partitions (1,000 rows each): bounds, integers,
    # one-hot members, a duplicate id across partitions, a level
    for row, col, value in [(5, "AGE", 7), (1500, "AGE", 200), (2999, "AGE", 3), (2000, "AGE", 5),
                            (700, "EDUCATION_1", 9), (900, "PAY_0", 1.5), (2600, "SEX", 4)]:  # fmt: skip
        bad[col] = bad[col].astype(float) if isinstance(value, float) else bad[col]
        bad.iloc[row, bad.columns.get_loc(col)] = value
    bad.iloc[2500, bad.columns.get_loc(idc)] = bad.iloc[10][idc]
    errors = {}
    for engine in ("local", "dask"):
        tmp = workspace(tmp_path, engine, bad, params.data.raw_file)
        proc = run_stage(tmp, "pipelines.prepare", engine)
        assert proc.returncode != 0
        errors[engine] = proc.stderr[proc.stderr.index("violates the data contract") :].strip()
        assert not (tmp / "data" / "prepared").exists()
    assert errors["dask"] == errors["local"]
    for text in ("below minimum 18 (3 row(s)", "duplicate id (2 row(s)", "EDUCATION_1", "SEX"):
        assert text in errors["dask"], errors["dask"]


def test_the_same_out_of_time_split(tmp_path, sample, params):
    """data.time_column: the rows ranked by time (ties in file order, missing times last),
    the newest test, then valid — on Dask from each partition's counts per time value."""
    dated = sample.copy()
    dated["month"] = np.random.default_rng(5).integers(1, 7, len(dated)).astype(float)
    dated.iloc[[17, 2222], dated.columns.get_loc("month")] = np.nan
    idc = params.data.id_column
    got = {}
    for engine in ("local", "dask"):
        tmp = workspace(tmp_path, engine, dated, params.data.raw_file)
        proc = run_stage(tmp, "pipelines.prepare", engine, time_column="month")
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[engine] = {s: pd.read_parquet(tmp / "data" / "prepared" / f"{s}.parquet").sort_values(idc, ignore_index=True)
                       for s in ("train", "valid", "test")}  # fmt: skip
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(got["dask"][split], got["local"][split])
    assert got["local"]["train"]["month"].max() <= got["local"]["test"]["month"].min()
    assert got["local"]["test"]["month"].isna().sum() == 2  # missing times sort last


def test_the_same_splits_row_for_row(prepared, params):
    idc = params.data.id_column
    for split in ("train", "valid", "test"):
        local = pd.read_parquet(prepared["local"] / "data" / "prepared" / f"{split}.parquet")
        parts = sorted(
            (prepared["dask"] / "data" / "prepared" / f"{split}.parquet").glob("*.parquet")
        )
        assert len(parts) == 3  # written by the workers, one file a partition
        dask = pd.read_parquet(prepared["dask"] / "data" / "prepared" / f"{split}.parquet")
        pd.testing.assert_frame_equal(dask.sort_values(idc, ignore_index=True),
                                      local.sort_values(idc, ignore_index=True))  # fmt: skip
    report = {
        e: yaml.safe_load((prepared[e] / "reports" / "prepare.json").read_text()) for e in prepared
    }
    assert report["dask"] == report["local"]


def test_the_same_caps_and_features(prepared, params):
    builders = {}
    for engine, tmp in prepared.items():
        with open(tmp / "data" / "features" / "feature_builder.pkl", "rb") as fh:
            builders[engine] = pickle.load(fh)
    assert builders["dask"].caps_ and builders["dask"].caps_ == builders["local"].caps_
    assert builders["dask"].feature_names_ == builders["local"].feature_names_
    idc_free = builders["local"].feature_names_
    for split in ("train", "valid", "test"):
        local = pd.read_parquet(prepared["local"] / "data" / "features" / f"{split}.parquet")
        dask = pd.read_parquet(prepared["dask"] / "data" / "features" / f"{split}.parquet")
        key = [*idc_free, params.data.target]
        pd.testing.assert_frame_equal(dask.sort_values(key, ignore_index=True),
                                      local.sort_values(key, ignore_index=True))  # fmt: skip


def test_models_within_the_stated_auc(prepared):
    trained = {
        e: json.loads((tmp / "reports" / "train.json").read_text()) for e, tmp in prepared.items()
    }
    assert trained["local"]["tuned_on"] == "valid split"
    assert trained["dask"]["tuned_on"] == "valid split, on Dask"
    metrics = {e: json.loads((tmp / "metrics.json").read_text()) for e, tmp in prepared.items()}
    auc = {e: m["test"]["roc_auc"] for e, m in metrics.items()}
    assert auc["local"] > 0.65, auc  # models that learned something: the comparison means something
    assert abs(auc["dask"] - auc["local"]) <= AUC_TOLERANCE, auc
    assert metrics["dask"]["test"]["n"] == metrics["local"]["test"]["n"]


def test_the_same_evaluation_on_either_engine(prepared, tmp_path):
    """The Dask model evaluated again on the local engine: the headline metrics (on Dask
    from the workers' score counts, locally scikit-learn on the whole frame) and the plots'
    points agree to 1e-6."""
    import shutil

    local_eval = tmp_path / "dask-model-local-evaluate"
    shutil.copytree(prepared["dask"], local_eval, symlinks=True)
    proc = run_stage(local_eval, "pipelines.evaluate", "local")
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = {e: json.loads((d / "metrics.json").read_text())["test"]
           for e, d in (("dask", prepared["dask"]), ("local", local_eval))}  # fmt: skip
    assert got["dask"].keys() == got["local"].keys()
    for key, value in got["local"].items():
        assert got["dask"][key] == pytest.approx(value, rel=0, abs=1e-6), key
    for plot in ("roc", "pr", "calibration", "score_distribution"):
        dask, local = (pd.read_csv(d / "reports" / "plots" / f"{plot}.csv")
                       for d in (prepared["dask"], local_eval))  # fmt: skip
        pd.testing.assert_frame_equal(dask, local, check_exact=False, rtol=0, atol=1e-6)
