"""One way for tests to fit a small model through the project's own code (features, monotone
constraints, XGBoost params): the Optuna search itself is exercised by the integration tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import validate_raw
from features.transform import FeatureBuilder
from pipelines.prepare import split
from riskloop.settings import Params
from training import fit, search
from training.model import CreditRiskModel


def fit_small_model(raw: pd.DataFrame, params: Params, rounds: int, fit_on: tuple[str, ...],
                    **xgb_overrides: float) -> tuple[CreditRiskModel, dict[str, pd.DataFrame]]:  # fmt: skip
    """Split as the pipeline does, fit the builder on train, the booster on `fit_on` splits."""
    parts = split(validate_raw(raw, params.data), params)
    builder = FeatureBuilder(params.data, params.features).fit(parts["train"])
    mono = fit.monotone_vector(params.train, builder.feature_names_)
    xgb_params = {
        **search.base_xgb_params(params.train, mono, params.train.seed),
        "nthread": 1,
        **xgb_overrides,
    }
    x = pd.concat([builder.transform(parts[k]) for k in fit_on])
    y = np.concatenate([parts[k][params.data.target].to_numpy() for k in fit_on])
    return CreditRiskModel(builder, fit.fit_booster(x, y, xgb_params, rounds)), parts


def register(state, model: CreditRiskModel, params: Params, test: pd.DataFrame,
             champion: bool = True) -> str:  # fmt: skip
    """Log `model` the way the train stage does (with its contract, golden batch and the
    out-of-sample reference of `test`) in the MLflow store under `state` (created if new),
    register it as @challenger and, if `champion`, make it @champion; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from training.package import log_model
    from training.registry import Registry

    uri = f"sqlite:///{state / 'mlflow.db'}"
    state.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("credit-risk")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "credit-risk", artifact_location=(state / "mlartifacts").as_uri())  # fmt: skip
    with mlflow.start_run(experiment_id=exp_id):
        info, carried = log_model(model, test, params.data.target, params.evaluate,
                                  {"data_hash": "test"}, [])  # fmt: skip
    registry = Registry(params.registry, client)
    tags = {"data_hash": "test", **{k: v for k, v in carried.items() if k.endswith(("sha", "sha256"))},
            **{f"test_{k}": f"{v:.6g}" for k, v in carried["test_metrics"].items()}}  # fmt: skip
    mv = registry.register_challenger(info.model_uri, tags)
    if champion:
        current = registry.champion()
        registry.move_champion(mv.version, "tests", current.version if current else None)
    return str(mv.version)


def register_champion(state, model: CreditRiskModel, params: Params, test: pd.DataFrame) -> str:
    """A fresh MLflow store under `state` whose @champion is `model`; returns the store URI."""
    register(state, model, params, test)
    return f"sqlite:///{state / 'mlflow.db'}"
