"""Serving reproduces the model it serves: every decoder (JSON fast path, pydantic route,
Arrow) turns the model's golden batch into exactly the features training computed, in the
model's input order, with the model's own feature code. Run at bento build and at every
service load (and hot swap); a mismatch refuses the model instead of serving wrong scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd

from serving.arrowio import ArrowCodec, ArrowRequestError, records_table, stream_bytes
from serving.codecs import Codecs


def golden_features(golden: dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in golden["features"]],
                    dtype="float64")  # fmt: skip


def decoded(codecs: Codecs, builder: Any, records: list[dict]) -> dict[str, np.ndarray | str]:
    """The features each request path computes for `records` (or why it refused them)."""
    body = orjson.dumps({"records": records})
    out: dict[str, np.ndarray | str] = {}
    try:
        strict = codecs.strict_matrix(codecs.decoder.decode(body).records)
        out["JSON fast path"] = "refused" if strict is None else builder.transform_array(strict)
    except Exception as exc:
        out["JSON fast path"] = f"refused ({exc})"
    try:
        req = codecs.PredictRequest.model_validate_json(body)
        out["JSON route"] = builder.transform_array(codecs.model_matrix(req.records))
    except Exception as exc:
        out["JSON route"] = f"refused ({str(exc).splitlines()[0]})"
    try:
        arrow: ArrowCodec = codecs.arrow
        table = records_table(codecs.contract, records)
        out["Arrow"] = builder.transform_array(arrow.decode(stream_bytes(table), "").values)
    except ArrowRequestError as exc:
        out["Arrow"] = f"refused ({exc.errors[:2]})"
    frame = pd.DataFrame.from_records(records, columns=list(codecs.contract.fields))
    out["MLflow model"] = builder.transform(frame).to_numpy(dtype="float64")
    return out


def verify(codecs: Codecs, builder: Any, golden: dict[str, Any]) -> list[str]:
    """Problems (empty: every path reproduces training's features on the golden batch)."""
    expected = golden_features(golden)
    names = golden["feature_names"]
    problems = []
    if list(builder.feature_names_) != list(names):
        problems.append("the model's feature names differ from its golden batch's")
    for path, feats in decoded(codecs, builder, golden["records"]).items():
        if isinstance(feats, str):
            problems.append(f"{path} {feats} the golden batch")
        elif feats.shape != expected.shape:
            problems.append(f"{path}: {feats.shape[1]} features, training had {expected.shape[1]}")
        elif not np.allclose(feats, expected, rtol=1e-12, atol=0, equal_nan=True):
            bad = ~np.isclose(feats, expected, rtol=1e-12, atol=0, equal_nan=True).all(axis=0)
            cols = [n for n, b in zip(names, bad, strict=True) if b][:5]
            problems.append(f"{path}: features differ from training's in {cols}")
    return problems
