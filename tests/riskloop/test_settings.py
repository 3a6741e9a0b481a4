from pathlib import Path

import numpy as np
import pytest
import yaml

from riskloop import stores
from riskloop.errors import SettingsError
from riskloop.settings import load_params

ROOT = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(doc)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_repository_params_load(params):
    assert params.registry.model_name == "credit-risk"
    assert set(params.data.protected_columns).isdisjoint(params.data.model_input_columns)
    assert "PAY_0" in params.data.model_input_columns


def test_unknown_key_is_named(tmp_path):
    path = write_params(tmp_path, lambda d: d["train"].update(n_trails=5))
    with pytest.raises(SettingsError, match=r"train\.n_trails: unknown key"):
        load_params(path)


def test_bad_value_is_named(tmp_path):
    path = write_params(tmp_path, lambda d: d["train"].update(n_trials=0))
    with pytest.raises(
        SettingsError, match=r"train\.n_trials: Input should be greater than or equal to 1"
    ):
        load_params(path)


def test_unknown_search_parameter(tmp_path):
    path = write_params(
        tmp_path, lambda d: d["train"]["search_space"].update(max_deph={"low": 1, "high": 3})
    )
    with pytest.raises(SettingsError, match="max_deph"):
        load_params(path)


def test_inverted_range_and_bounds(tmp_path):
    path = write_params(
        tmp_path, lambda d: d["train"]["search_space"].update(gamma={"low": 5, "high": 1})
    )
    with pytest.raises(SettingsError, match=r"train\.search_space\.gamma.*below high"):
        load_params(path)
    path = write_params(tmp_path, lambda d: d["data"]["numeric"].update(AGE={"min": 90, "max": 18}))
    with pytest.raises(SettingsError, match=r"data\.numeric\.AGE.*greater than max"):
        load_params(path)


def test_feature_columns_must_be_declared(tmp_path):
    path = write_params(
        tmp_path, lambda d: d["features"]["repayment"].update(limit_column="CREDIT_LINE")
    )
    with pytest.raises(SettingsError, match="CREDIT_LINE"):
        load_params(path)


def test_protected_attribute_must_exist(tmp_path):
    path = write_params(tmp_path, lambda d: d["data"].update(protected=["RACE"]))
    with pytest.raises(SettingsError, match="RACE"):
        load_params(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_params(path)


def test_store_defaults_are_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.setenv("RISKLOOP_STATE_DIR", str(tmp_path / "s"))
    assert stores.tracking_uri() == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    assert stores.optuna_storage() == f"sqlite:///{tmp_path / 's' / 'optuna.db'}"
    assert stores.artifact_root() == (tmp_path / "s" / "mlartifacts").as_uri()


def test_store_urls_are_checked(monkeypatch):
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u:secret@db:5432/optuna")
    assert stores.optuna_storage() == "postgresql+psycopg2://u:secret@db:5432/optuna"
    assert stores.redact(stores.optuna_storage()) == "postgresql+psycopg2://u@db:5432/optuna"
    monkeypatch.setenv("OPTUNA_STORAGE", "redis://localhost")
    with pytest.raises(SettingsError, match="OPTUNA_STORAGE"):
        stores.optuna_storage()


def test_dvc_temp_experiment_resolves_to_real_repo(tmp_path):
    temp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp.mkdir(parents=True)
    assert stores.project_root(temp) == tmp_path / "repo"
    assert stores.project_root(tmp_path) == tmp_path


def test_bands_are_ordered_by_threshold_not_by_mapping_order(tmp_path):
    from serving.scoring import risk_bands

    shuffled = {"very_high": 60, "high": 40, "low": 0, "medium": 20}
    path = write_params(tmp_path, lambda d: d["serving"].update(bands=shuffled))
    got = risk_bands(np.array([0, 19, 20, 39, 40, 100]), load_params(path).serving.bands)
    assert got == ["low", "low", "medium", "medium", "high", "very_high"]
    no_zero = {"low": 10, "medium": 20, "high": 40, "very_high": 60}
    with pytest.raises(SettingsError, match="one of them 0"):
        load_params(write_params(tmp_path, lambda d: d["serving"].update(bands=no_zero)))


def test_decision_cuts_relative_to_the_models_test_split(tmp_path):
    from serving.scoring import cutoffs, decisions

    relative = {"review_from": {"riskiest": 0.3}, "decline_from": {"riskiest": 0.1}}
    policy = load_params(
        write_params(tmp_path, lambda d: d["serving"].update(decisions=relative))
    ).serving.decisions
    reference_p = np.arange(1000) / 1000  # risk scores 0..100, ten rows each below 100
    cut = cutoffs(policy, lambda: reference_p)
    scores = np.rint(reference_p * 100)
    assert (scores >= cut.decline_from).mean() <= 0.1 < (scores >= cut.decline_from - 1).mean()
    assert (scores >= cut.review_from).mean() <= 0.3 < (scores >= cut.review_from - 1).mean()
    assert decisions(np.array([0, cut.review_from, cut.decline_from]), cut) == [
        "approve", "review", "decline",
    ]  # fmt: skip
    # absolute cuts never read the reference; shares must nest; a share is a share
    absolute = load_params(ROOT / "params.yaml").serving.decisions
    assert cutoffs(absolute, lambda: pytest.fail("read")).decline_from == absolute.decline_from
    crossed = {"review_from": {"riskiest": 0.1}, "decline_from": {"riskiest": 0.3}}
    with pytest.raises(SettingsError, match="riskiest share must be at least"):
        load_params(write_params(tmp_path, lambda d: d["serving"].update(decisions=crossed)))
    with pytest.raises(SettingsError, match="decline_from"):
        load_params(write_params(tmp_path, lambda d: d["serving"]["decisions"].update(
            decline_from={"riskiest": 1.5})))  # fmt: skip
