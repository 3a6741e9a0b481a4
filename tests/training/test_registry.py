"""Registry operations on a real MLflow SQLite store."""

import mlflow
import pytest
import xgboost as xgb

from features.transform import FeatureBuilder
from riskloop.errors import RegistryError
from tests.conftest import stratified_sample
from training.model import CreditRiskModel
from training.registry import alias_uri
from training.tracking import connect


@pytest.fixture
def registry(monkeypatch, tmp_path, params):
    monkeypatch.setenv("RISKLOOP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, exp_id, reg = connect(params.registry)
    return reg, exp_id


def log_tiny_model(exp_id, raw, params):
    sample = stratified_sample(raw, params.data.target, 600)
    builder = FeatureBuilder(params.data, params.features).fit(sample)
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(builder.transform(sample),
                        label=sample[params.data.target]), num_boost_round=5)  # fmt: skip
    with mlflow.start_run(experiment_id=exp_id):
        return mlflow.pyfunc.log_model(name="model", python_model=CreditRiskModel(builder, booster),
                                       code_paths=["features", "training", "riskloop"])  # fmt: skip


def test_register_promote_rollback(registry, raw, params):
    reg, exp_id = registry
    versions = []
    for i in range(3):
        info = log_tiny_model(exp_id, raw, params)
        mv = reg.register_challenger(info.model_uri, {"data_hash": "abc", "i": str(i)})
        assert reg.challenger().version == mv.version
        reg.move_champion(mv.version, f"release {i}", versions[-1] if versions else None)
        versions.append(str(mv.version))
    champ = reg.champion()
    assert str(champ.version) == versions[2]
    assert champ.tags["previous_champion"] == versions[1]
    assert champ.tags["promotion_reason"] == "release 2" and champ.tags["promoted_by"]
    assert reg.rollback("bad scores") == (versions[2], versions[1])
    assert str(reg.champion().version) == versions[1]
    assert reg.version(versions[2]).tags["rollback_reason"] == "bad scores"
    assert reg.rollback("again") == (versions[1], versions[0])
    with pytest.raises(RegistryError, match="first champion"):
        reg.rollback("nothing left")
    model = mlflow.pyfunc.load_model(alias_uri(reg.name, "champion"))
    assert model.predict(
        raw[model.unwrap_python_model().input_columns].head(3).astype(float)
    ).shape == (3,)


def test_rollback_without_champion(registry):
    reg, _ = registry
    with pytest.raises(RegistryError, match="no @champion"):
        reg.rollback("x")
