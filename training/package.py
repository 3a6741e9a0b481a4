"""Everything a registered version carries besides the model (riskloop/package.py reads it):
its data contract and feature-code hash, a golden batch with XGBoost's own outputs, and its
out-of-sample reference for monitoring. Pure functions build them; `log_model` writes them
as artifacts of the one MLflow pyfunc, so the bento, the monitor and the dashboard derive
everything from the model version, never from the working tree."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema

from features.contract import Contract
from riskloop import package
from riskloop.settings import EvaluateSettings
from training import metrics as m
from training.model import CreditRiskModel

GOLDEN_REAL_ROWS = 32
# Code the pickled model needs at load time (bento, `mlflow models serve`, evaluate, monitor).
CODE_PATHS = ["features", "training"]


def feature_code_sha(root: Path = Path(".")) -> str:
    """sha256 over the feature code and the pyfunc class the model is pickled with."""
    h = hashlib.sha256()
    for path in sorted([*(root / "features").glob("*.py"), root / "training" / "model.py"]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _json_value(rule, value: Any) -> Any:
    """A raw value as a JSON client sends it: null, an integer where the rule wants one."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if rule.text:
        return str(value)
    if rule.kind != "numeric" or rule.integer:
        return int(value)
    return float(value)


def to_record(contract: Contract, row: pd.Series) -> dict[str, Any]:
    return {c: _json_value(contract.rules[c], row[c]) for c in contract.fields if c in row.index}


def _bound(rule, value: float) -> int | float:
    if not rule.integer:
        return float(value)
    return math.ceil(value) if value == rule.low else math.floor(value)


def golden_records(contract: Contract, real: pd.DataFrame, n_real: int = GOLDEN_REAL_ROWS) -> list[dict]:  # fmt: skip
    """Real rows, then edge cases on the first one: every bound of every model input, missing
    values where allowed, every level, every one-hot member, zero amounts (ratios without a
    denominator: the features' own missing values) and every protected attribute left out."""
    records = [to_record(contract, row) for _, row in real.head(n_real).iterrows()]
    base = records[0]
    edges: list[dict] = []
    zero: dict[str, Any] = {}
    for col in contract.model_inputs:
        rule = contract.rules[col]
        if rule.kind == "numeric":
            edges += [
                {**base, col: _bound(rule, b)} for b in (rule.low, rule.high) if b is not None
            ]
            if rule.nullable:
                edges.append({**base, col: None})
            if (rule.low is None or rule.low <= 0) and (rule.high is None or rule.high >= 0):
                zero[col] = 0 if rule.integer else 0.0
        elif rule.kind == "categorical":
            edges += [{**base, col: level} for level in rule.levels]
    for members in contract.data.onehot.values():
        if not contract.rules[members[0]].protected:
            edges += [{**base, **{x: int(x == member) for x in members}} for member in members]
    edges.append({**base, **zero})
    edges.append({**base, **dict.fromkeys(contract.protected_columns)})
    return records + edges


def _listed(a: np.ndarray) -> list:
    """A float matrix or vector as JSON lists (NaN as null)."""
    return json.loads(json.dumps(np.where(np.isnan(a), None, a).tolist()))


def golden_batch(model: CreditRiskModel, records: list[dict], n_real: int) -> dict[str, Any]:
    """The records with XGBoost's own features, margins, probabilities and contributions."""
    frame = pd.DataFrame.from_records(records, columns=list(model.contract.fields))
    feats = model.features(frame)
    booster = model.booster
    return {
        "records": records, "real_rows": n_real, "feature_names": model.feature_names,
        "features": _listed(feats.to_numpy(dtype="float64")),
        "margin": booster.inplace_predict(feats, predict_type="margin").astype(float).tolist(),
        "probability": booster.inplace_predict(feats, predict_type="value").astype(float).tolist(),
        "contributions": booster.predict(xgb.DMatrix(feats), pred_contribs=True).astype(float).tolist(),
        "xgboost": xgb.__version__,
    }  # fmt: skip


def reference_frame(model: CreditRiskModel, test: pd.DataFrame, target: str) -> pd.DataFrame:
    """The rows the model is evaluated on: features, protected attributes, score and label."""
    feats = model.features(test).reset_index(drop=True)
    protected = [c for c in model.contract.protected_columns if c not in feats.columns]
    prot = test.reindex(columns=protected).reset_index(drop=True)
    out = pd.concat([feats, prot], axis=1)
    out[package.REFERENCE_SCORE] = model.booster.inplace_predict(feats, predict_type="value")
    out[package.REFERENCE_LABEL] = test[target].to_numpy(dtype=int)
    return out


def signature(model: CreditRiskModel, example: pd.DataFrame) -> ModelSignature:
    """The model's input columns in its order, typed Any and not required by MLflow: its
    numeric schema refuses int64 data for a double column and floats for a long one (no typing
    takes both a CSV's integer columns and an integer column that may be missing), and it stops
    at the first problem. The model checks every record against its data contract itself and
    names every violation, as serving does (training/model.py); contract.json carries the
    types, bounds and levels."""
    inputs = Schema([ColSpec(AnyType(), name=c, required=False)
                     for c in model.contract.model_inputs])  # fmt: skip
    return ModelSignature(inputs, infer_signature(example, model.predict_proba(example)).outputs)


def log_model(model: CreditRiskModel, test: pd.DataFrame, target: str, ev: EvaluateSettings,
              lineage: dict[str, Any], pip_requirements: list[str]) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Log the pyfunc with its contract, golden batch and out-of-sample reference; returns
    (MLflow ModelInfo, what it carries in short: fingerprints and the test metrics)."""
    contract = model.contract
    records = golden_records(contract, test)
    reference = reference_frame(model, test, target)
    y, p = reference[package.REFERENCE_LABEL], reference[package.REFERENCE_SCORE]
    test_metrics = m.classification_metrics(y, p, ev.decision_threshold, ev.calibration_bins)
    summary = {"model_sha256": model.fingerprint, "contract_sha": contract.fingerprint,
               "feature_code_sha": feature_code_sha(), "test_metrics": test_metrics,
               "reference_rows": len(reference)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        doc = {**contract.to_json(), "feature_code_sha": summary["feature_code_sha"],
               "feature_names": model.feature_names, **lineage}  # fmt: skip
        (out / package.CONTRACT).write_text(json.dumps(doc, indent=1))
        golden = golden_batch(model, records, min(GOLDEN_REAL_ROWS, len(test)))
        (out / package.GOLDEN).write_text(json.dumps(golden))
        reference.to_parquet(out / package.REFERENCE, index=False)
        meta = {"rows": len(reference), "split": "test", "metrics": test_metrics,
                "threshold": ev.decision_threshold, "calibration_bins": ev.calibration_bins, **lineage}  # fmt: skip
        (out / package.REFERENCE_META).write_text(json.dumps(meta, indent=1))
        example = contract.input_frame(
            pd.DataFrame.from_records(records[:5], columns=list(contract.fields))
        )
        with warnings.catch_warnings():  # MLflow warns about integer columns that may hold NaN
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=model, code_paths=CODE_PATHS, input_example=example,
                signature=signature(model, example),
                artifacts={key: str(out / name) for key, name in package.ARTIFACTS.items()},
                pip_requirements=pip_requirements,
            )  # fmt: skip
    return info, summary
