"""One data contract, compiled into every validator: for records on both sides of every rule
(categorical levels 0-based, 1-based, sparse and text; missing values where allowed; bounds;
one-hot groups; column names with `-` and spaces), every path a record can take — the JSON
fast path (msgspec), the pydantic route, Arrow, /predict_customer's stored records and the
MLflow pyfunc — accepts and refuses the same records, names the same fields, and gives the
same probabilities and contributions. In process, on a small model of a synthetic dataset of
that shape; the HTTP tests run the same paths through the real service."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from features.contract import Contract
from features.transform import FeatureBuilder
from riskloop.errors import DataContractError
from riskloop.package import ModelPackage
from riskloop.settings import DataSettings, EvaluateSettings, FeatureSettings, ServingSettings
from serving import golden, scoring
from serving.arrowio import ArrowRequestError, stream_bytes
from serving.codecs import Codecs
from serving.scorer import Scorer
from training.model import CreditRiskModel

DATA = DataSettings.model_validate({
    "raw_file": "synthetic.csv", "id_column": "id", "target": "bad",
    "numeric": {"loan-amount": {"min": 0, "max": 1_000_000},
                "months employed": {"min": 0, "max": 600, "integer": True, "nullable": True},
                "rate": {"min": 0.0, "max": 1.0},
                "age": {"min": 18, "max": 100, "integer": True}},
    "categorical": {"grade": [0, 1, 2], "tier": [1, 2, 3], "term": [36, 60],
                    "home": ["own", "rent", "mortgage"], "gender": ["F", "M"]},
    "onehot": {"purpose": ["purpose_car", "purpose_home", "purpose_other"],
               "marital": ["marital_single", "marital_married"]},
    "protected": ["gender", "age", "marital"],
})  # fmt: skip
CONTRACT = Contract(DATA)
INVALID = object()  # "leave the key out"


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(n), "loan-amount": rng.uniform(1_000, 50_000, n).round(2),
        "months employed": rng.integers(0, 240, n).astype(float), "rate": rng.uniform(0.02, 0.3, n),
        "age": rng.integers(18, 80, n), "grade": rng.integers(0, 3, n), "tier": rng.integers(1, 4, n),
        "term": rng.choice([36, 60], n), "home": rng.choice(["own", "rent", "mortgage"], n),
        "gender": rng.choice(["F", "M"], n),
    })  # fmt: skip
    frame.loc[rng.random(n) < 0.1, "months employed"] = np.nan
    purpose = rng.integers(0, 3, n)
    for i, c in enumerate(DATA.onehot["purpose"]):
        frame[c] = (purpose == i).astype(int)
    married = rng.integers(0, 2, n)
    frame["marital_single"], frame["marital_married"] = 1 - married, married
    logit = (frame["rate"] * 8 - 1.5 + frame["grade"] * 0.4 - (frame["tier"] == 1) * 0.5
             + (frame["term"] == 60) * 0.6 + (frame["home"] == "rent") * 0.5 - purpose * 0.2)  # fmt: skip
    frame["bad"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """The model logged and loaded as MLflow does, and the service's codecs for its contract."""
    import mlflow

    from training.package import log_model

    data = synthetic(3000)
    train, test = data.iloc[:2400], data.iloc[2400:]
    builder = FeatureBuilder(DATA, FeatureSettings()).fit(train)
    x = builder.transform(train)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1,
                         "seed": 0}, xgb.DMatrix(x, label=train["bad"]), 30)  # fmt: skip
    model = CreditRiskModel(builder, booster)
    store = tmp_path_factory.mktemp("contract-paths")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.create_experiment("paths", artifact_location=(store / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info, _ = log_model(model, test, "bad", EvaluateSettings(), {}, [])
    pkg = ModelPackage.download(info.model_uri)
    pyfunc = pkg.load_pyfunc()
    codecs = Codecs(Contract.from_json(pkg.contract_doc), ServingSettings(), pkg.example)
    scorer = Scorer(booster, golden.golden_features(pkg.golden), pkg.golden)
    return {"model": model, "pyfunc": pyfunc, "codecs": codecs, "scorer": scorer, "pkg": pkg,
            "base": pkg.golden["records"][0]}  # fmt: skip


def test_model_carries_its_contract_and_every_decoder_reproduces_its_golden_batch(paths):
    pkg, codecs, model = paths["pkg"], paths["codecs"], paths["model"]
    assert pkg.contract_doc["model_inputs"] == list(CONTRACT.model_inputs)
    assert pkg.contract_doc["fingerprint"] == CONTRACT.fingerprint
    assert golden.verify(codecs, model.builder, pkg.golden) == []
    records = pkg.golden["records"]
    # edge cases: every level of every categorical, a missing value, bounds, protected left out
    assert {r["home"] for r in records} == {"own", "rent", "mortgage"}
    assert {r["term"] for r in records} == {36, 60}
    assert any(r["months employed"] is None for r in records)
    assert any(r["loan-amount"] == 1_000_000 for r in records)
    assert any(all(r[c] is None for c in CONTRACT.protected_columns) for r in records)
    # a model fed its categorical levels raw (the bug this contract fixes) would not pass
    assert paths["scorer"].status.contributions == "table"


# ------------------------------------------------------------------------ the property test
def _good(rule) -> st.SearchStrategy:
    if rule.kind == "categorical":
        good = st.sampled_from(list(rule.levels))
        if not rule.text:
            good = good | st.sampled_from([float(v) for v in rule.levels])  # 36.0 is 36
        return good | (st.just(None) if rule.nullable else st.nothing())
    if rule.kind == "onehot":
        return st.sampled_from([0, 1, 1.0])
    if rule.integer:
        good = st.integers(int(rule.low), int(rule.high))
        good = good | good.map(float)
    else:
        good = st.floats(rule.low, rule.high, allow_nan=False)
    return good | (st.just(None) if rule.nullable else st.nothing())


def _bad(rule) -> st.SearchStrategy:
    """Values across the rule (INVALID: the key left out), some of them valid after all."""
    bad = st.sampled_from(["x", True, None, INVALID, -1e9, 1e12, 2.5, 7, "rent ", 0, 2])
    return bad | st.floats(allow_nan=False, allow_infinity=False) | _good(rule)


GOOD = st.fixed_dictionaries({c: _good(r) for c, r in CONTRACT.rules.items()})


@st.composite
def records(draw) -> dict:
    """A valid record, then 0-3 fields redrawn across their rule; one-hot groups valid."""
    record = draw(GOOD)
    for members in DATA.onehot.values():
        active = draw(st.sampled_from(members))
        record.update({m: int(m == active) for m in members})
    for col in draw(st.lists(st.sampled_from(CONTRACT.fields), max_size=3, unique=True)):
        record[col] = draw(_bad(CONTRACT.rules[col]))
    return record


def _fields(errors) -> set[str]:
    """Column names named by errors (`records.0.X`, `X` or `body.records.0.X`)."""
    return {str(e).split(".")[-1] for e in errors}


def _json(codecs, record) -> tuple[set[str] | None, np.ndarray | None]:
    body = json.dumps({"records": [record]})
    try:
        req = codecs.PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        return _fields(e["loc"][-1] for e in exc.errors()), None
    return None, codecs.model_matrix(req.records)


def _fast(codecs, record) -> np.ndarray | None:
    try:
        req = codecs.decoder.decode(json.dumps({"records": [record]}).encode())
    except Exception:  # refused: the pydantic route answers
        return None
    return codecs.strict_matrix(req.records)


def _arrow(codecs, record) -> tuple[set[str] | None, np.ndarray | None]:
    columns = {c: pa.array([v]) for c, v in record.items()}  # the types a client's values have
    try:
        req = codecs.arrow.decode(stream_bytes(pa.table(columns)), "")
    except ArrowRequestError as exc:
        return _fields(e["field"] for e in exc.errors), None
    return None, req.values


def _stored(codecs, record) -> tuple[set[str] | None, np.ndarray | None]:
    """/predict_customer: the online table's record, validated in Python mode."""
    try:
        rec = codecs.RecordModel.model_validate({**record, "customer_id": "c-1"})
    except ValidationError as exc:
        return _fields(e["loc"][-1] for e in exc.errors()), None
    return None, codecs.model_matrix([rec])


def _pyfunc(pyfunc, record) -> tuple[set[str] | None, np.ndarray | None]:
    """The MLflow model on a one-row frame of the record (pandas infers the column types)."""
    frame = pd.DataFrame({c: pd.Series([v], dtype=object) for c, v in record.items()})
    try:
        return None, np.asarray(pyfunc.predict(frame.infer_objects()))
    except DataContractError as exc:
        return set(re.findall(r"column '([^']*)'", str(exc))), None


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=records())
def test_every_path_accepts_refuses_and_scores_alike(paths, drawn):
    codecs, scorer, model = paths["codecs"], paths["scorer"], paths["model"]
    record = {c: v for c, v in drawn.items() if v is not INVALID}
    refused, values = _json(codecs, record)
    fast = _fast(codecs, record)
    if fast is not None:  # what the strict decoder takes, pydantic takes with the same values
        assert refused is None
        np.testing.assert_array_equal(fast, values)
    arrow_refused, arrow_values = _arrow(codecs, record)
    stored_refused, stored_values = _stored(codecs, record)
    assert arrow_refused == refused, (record, arrow_refused, refused)
    assert stored_refused == refused, (record, stored_refused, refused)
    py_refused, p_pyfunc = _pyfunc(paths["pyfunc"], record)
    # the MLflow model reads its inputs only: what it refuses is what the API refuses there
    inputs_refused = None if refused is None else (refused & set(CONTRACT.model_inputs)) or None
    assert py_refused == inputs_refused, (record, py_refused, refused)
    event("refused" if refused else "accepted")
    if refused is not None:
        return
    for other in (arrow_values, stored_values):
        np.testing.assert_array_equal(other, values)
    feats = model.builder.transform_array(values)
    p_xgb = scoring.probabilities(model.booster, feats)
    contrib, p_table = scorer.explain(feats)
    np.testing.assert_allclose(p_xgb, p_pyfunc, rtol=1e-6)
    np.testing.assert_allclose(scorer.probabilities(feats), p_pyfunc, rtol=1e-6)
    np.testing.assert_allclose(p_table, p_pyfunc, rtol=1e-6)
    np.testing.assert_allclose(contrib, scoring.contributions(model.booster, feats), atol=1e-5)


def test_yaml_booleans_as_levels_are_refused_with_a_hint():
    doc = DATA.model_dump()
    doc["categorical"]["home"] = [False, True]  # YAML's reading of [no, yes]
    with pytest.raises(ValidationError, match="quote them"):
        DataSettings.model_validate(doc)


def test_whole_floats_name_integer_levels_everywhere(paths):
    """36.0 is the level 36 on every path (JSON clients and pandas frames write it so)."""
    record = {**paths["base"], "term": 60.0, "tier": 3.0}
    refused, values = _json(paths["codecs"], record)
    assert refused is None and not math.isnan(values[0][CONTRACT.model_inputs.index("term")])
    assert _arrow(paths["codecs"], record)[0] is None
