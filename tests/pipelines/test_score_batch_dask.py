"""score-batch on a 2-worker Dask LocalCluster scores a Parquet file partition by partition
and gives every row exactly what the local engine gives it; a bad row is named, nothing is
written."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from features.transform import feature_names
from tests.conftest import ROOT, stratified_sample
from tests.modelling import fit_small_model, register_champion

RISKLOOP = str(Path(sys.executable).parent / "riskloop")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, raw, params):
    """A champion in a fresh store, and a 3,000-row Parquet file of 6 row groups."""
    tmp = tmp_path_factory.mktemp("dask")
    model, parts = fit_small_model(
        stratified_sample(raw, params.data.target, 2000), params, 30, ("train",)
    )
    register_champion(tmp / "state", model, params, parts["test"])
    rows = raw.drop(columns=[params.data.target]).sample(3000, random_state=1)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp / "portfolio.parquet",
                   row_group_size=500)  # fmt: skip
    return tmp, rows


def score_batch(
    tmp: Path, engine: str, source: str, out: str, *extra: str
) -> subprocess.CompletedProcess:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["compute"] = {
        "engine": engine,
        "workers": 2,
        "memory_limit": "1GiB",
        "partition_rows": 1000,
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp),
           "RISKLOOP_STATE_DIR": str(tmp / "state"), "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run([RISKLOOP, "score-batch", source, "--out", out, *extra], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_dask_scores_every_row_as_the_local_engine_does(workdir, params):
    tmp, rows = workdir
    local = score_batch(tmp, "local", "portfolio.parquet", "local.parquet")
    assert local.returncode == 0, local.stdout + local.stderr
    dask = score_batch(tmp, "dask", "portfolio.parquet", "dask-out", "--log")
    assert dask.returncode == 0, dask.stdout + dask.stderr
    assert "scored 3,000 rows" in dask.stdout and "on Dask" in dask.stdout, dask.stdout
    parts = sorted((tmp / "dask-out").glob("*.parquet"))
    assert len(parts) == 3  # 3,000 rows in partitions of 1,000, each written by a worker
    idc = params.data.id_column
    want = pd.read_parquet(tmp / "local.parquet").set_index(idc).sort_index()
    got = pd.read_parquet(tmp / "dask-out").set_index(idc).sort_index()
    assert list(got.index) == sorted(rows[idc])
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-12)
    # reason codes: a declined row names what raised its risk, in the service's words
    declined = got[got["decision"] == "decline"]
    assert (
        len(declined)
        and declined["reason_1"].notna().all()
        and declined["reason_1_text"].notna().all()
    )
    assert set(got["reason_1"].dropna()) <= set(feature_names(params.data, params.features))

    # --log: every row in the prediction log, written by the workers, once, as scored
    token = re.search(r"request_id ([0-9a-f]{32})", dask.stdout).group(1)
    with sqlite3.connect(tmp / "state" / "predictions.db") as conn:
        logged = pd.read_sql("SELECT customer_id, probability, decision, reasons, inputs, model_version "
                             "FROM predictions WHERE request_id = ?", conn, params=(token,))  # fmt: skip
    assert len(logged) == 3000 and logged["customer_id"].is_unique
    # the ids rise with the rows' place in the file (partition, row): the store's indexes
    # take a run in order
    with sqlite3.connect(tmp / "state" / "predictions.db") as conn:
        in_id_order = [c for (c,) in conn.execute("SELECT customer_id FROM predictions "
                                                  "WHERE request_id = ? ORDER BY prediction_id", (token,))]  # fmt: skip
    assert in_id_order == rows[idc].astype(str).tolist()
    logged = logged.set_index(logged["customer_id"].astype(int)).sort_index()
    assert (logged["probability"].to_numpy() == got["probability_of_default"].to_numpy()).all()
    assert (logged["decision"].to_numpy() == got["decision"].to_numpy()).all()
    first = json.loads(logged["inputs"].iloc[0])
    assert set(first) == set(rows.columns) - {idc}  # the record as the service logs it


def test_a_bad_row_is_named_and_nothing_is_written(workdir):
    tmp, rows = workdir
    bad = rows.copy()
    bad.iloc[1234, bad.columns.get_loc("AGE")] = 7
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp / "bad.parquet",
                   row_group_size=500)  # fmt: skip
    proc = score_batch(tmp, "dask", "bad.parquet", "bad-out")
    assert proc.returncode != 0
    assert "AGE" in proc.stderr and "bad.parquet" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp / "bad-out").exists() and not list(tmp.glob(".bad-out*"))


def test_batch_reasons_from_the_services_table_engine_are_xgboosts(workdir, params):
    """score-batch explains with the service's engine (exact TreeSHAP from flattened trees,
    checked on the golden batch): the same reason codes as XGBoost's pred_contribs, the
    contributions within the engine's stated tolerance."""
    import mlflow

    from pipelines.score_batch import explain, explainer
    from riskloop.package import ModelPackage
    from serving.golden import golden_features
    from serving.scorer import CONTRIB_TOLERANCE, Scorer
    from training.registry import version_uri

    tmp, rows = workdir
    store = f"sqlite:///{tmp / 'state' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)  # restored after each test (tests/conftest.py)
    mlflow.set_registry_uri(store)
    pkg = ModelPackage.download(version_uri(params.registry.model_name, "1"))
    inner = pkg.load_pyfunc().unwrap_python_model()
    table = explainer(pkg, inner)
    assert table.status.contributions == "table", table.status
    xgboost = Scorer(inner.booster, golden_features(pkg.golden), pkg.golden, use_table=False)
    got, want = (explain(inner, rows, params.serving, s) for s in (table, xgboost))
    assert sum(map(len, want)) > len(rows)  # rows with reasons: the comparison means something
    for g, w in zip(got, want, strict=True):
        assert [r["feature"] for r in g] == [r["feature"] for r in w]
        assert [r["text"] for r in g] == [r["text"] for r in w]
        for a, b in zip(g, w, strict=True):
            assert a["contribution"] == pytest.approx(b["contribution"], abs=CONTRIB_TOLERANCE)


def test_a_partition_scored_in_chunks_is_scored_as_a_whole(workdir, params, monkeypatch):
    """A worker scores its partition SCORE_CHUNK_ROWS at a time (bounded memory): the rows
    come out as one pass over the whole partition gives them."""
    from features.contract import Contract
    from pipelines import score_batch_dask
    from riskloop.package import ModelPackage
    from serving import scoring
    from training.registry import version_uri

    tmp, rows = workdir
    store = f"sqlite:///{tmp / 'state' / 'mlflow.db'}"
    uri = version_uri(params.registry.model_name, "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    pkg = ModelPackage.download(uri)
    cut = scoring.cutoffs(params.serving.decisions, pkg.reference_scores)
    doc = Contract.from_json(pkg.contract_doc).to_json()

    def score() -> pd.DataFrame:
        return score_batch_dask.score_partition(
            rows, uri, store, doc, params.serving, cut, "t", None
        )

    whole = score()
    monkeypatch.setattr(score_batch_dask, "SCORE_CHUNK_ROWS", 700)
    pd.testing.assert_frame_equal(score(), whole)
    assert len(whole) == len(rows)
