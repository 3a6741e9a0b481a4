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


def register_champion(state, model: CreditRiskModel, params: Params) -> str:
    """Log `model` in a fresh MLflow store under `state`, register it and make it @champion;
    returns the store URI."""
    import mlflow
    from mlflow import MlflowClient

    from training.registry import Registry

    uri = f"sqlite:///{state / 'mlflow.db'}"
    state.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment(
        "credit-risk", artifact_location=(state / "mlartifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=model, code_paths=["features", "training", "riskloop"]
        )
    registry = Registry(params.registry, client)
    mv = registry.register_challenger(info.model_uri, {"data_hash": "test"})
    registry.set_tags(mv.version, {"test_roc_auc": "0.78"})
    registry.move_champion(mv.version, "tests", None)
    return uri
