"""Which training run moves @challenger: the pure rule, the git probe it is fed, and the
registry operations it drives (registration without the alias, `make challenger`), on a real
MLflow SQLite store with placeholder model sources (no training)."""

from __future__ import annotations

import subprocess

import pytest
from dvc import env as dvc_env

from pipelines.train import pipeline_modified
from riskloop.errors import RegistryError
from training.registry import (
    DVC_EXP_BASELINE_REV,
    DVC_EXP_NAME,
    Origin,
    registration_summary,
    training_origin,
)
from training.tracking import connect

EXP_ENV = {DVC_EXP_NAME: "exp-abc12", DVC_EXP_BASELINE_REV: "f00dfeed" * 5}


def test_env_names_are_the_ones_dvc_sets():
    # an upgrade of DVC that renames them must fail here, not silently hijack @challenger again
    assert (DVC_EXP_NAME, DVC_EXP_BASELINE_REV) == (
        dvc_env.DVC_EXP_NAME,
        dvc_env.DVC_EXP_BASELINE_REV,
    )


@pytest.mark.parametrize("modified", [True, False, None])
def test_an_experiment_never_sets_challenger(modified):
    origin = training_origin({**EXP_ENV, "DVC_ROOT": "/repo"}, modified)
    assert not origin.sets_challenger
    assert origin.tags() == {"experiment": "exp-abc12", "experiment_baseline": "f00dfeed" * 5}


def test_an_experiment_without_baseline_is_still_one():
    origin = training_origin({DVC_EXP_NAME: "exp-1"}, False)
    assert not origin.sets_challenger
    assert origin.tags() == {"experiment": "exp-1", "experiment_baseline": "unknown"}


@pytest.mark.parametrize(
    ("modified", "state"), [(False, "committed"), (True, "modified"), (None, "unknown")]
)
def test_a_workspace_run_sets_challenger_and_says_how_its_pipeline_stood(modified, state):
    # `dvc repro` and a retrain (DVC sets DVC_ROOT/DVC_STAGE for every stage, not the exp vars)
    for env in ({}, {"DVC_ROOT": "/repo", "DVC_STAGE": "train"}, {DVC_EXP_NAME: "  "}):
        origin = training_origin(env, modified)
        assert origin.sets_challenger
        assert origin.tags() == {"workspace": state}


def test_summary_line_says_what_happened_to_challenger():
    exp = Origin(experiment="exp-abc12", baseline_rev="f00d")
    line = registration_summary("credit-risk", "7", exp, "challenger", "5")
    assert line.startswith(
        "registered credit-risk v7 (experiment exp-abc12), @challenger unchanged (v5)"
    )
    assert "make challenger VERSION=7" in line
    assert "unchanged (none)" in registration_summary("m", "1", exp, "challenger", None)
    ws = Origin(pipeline_modified=False)
    assert (
        registration_summary("m", "6", ws, "challenger", "5")
        == "registered m v6 as @challenger (was v5)"
    )
    dirty = registration_summary("m", "6", Origin(pipeline_modified=True), "challenger", None)
    assert dirty == "registered m v6 as @challenger (was none; pipeline files differ from git HEAD)"


def test_pipeline_modified_probes_git(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pipeline_modified() is None  # not a git checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "params.yaml").write_text("train: {seed: 1}\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert pipeline_modified() is True  # never committed
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    assert pipeline_modified() is False
    (tmp_path / "data.dvc").write_text(
        "outs: []\n"
    )  # a retrain's new data version: not the pipeline
    assert pipeline_modified() is False
    (tmp_path / "params.yaml").write_text("train: {seed: 7}\n")
    assert pipeline_modified() is True


@pytest.fixture
def registry(monkeypatch, tmp_path, params):
    monkeypatch.setenv("RISKLOOP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RISKLOOP_ACTOR", "reviewer-a")
    source = tmp_path / "model"
    source.mkdir()
    (source / "MLmodel").write_text("placeholder: registry operations only\n")
    return connect(params.registry)[2], source.as_uri()


def test_experiment_version_is_whole_and_leaves_challenger(registry):
    reg, uri = registry
    v1 = reg.register(uri, {"data_hash": "abc", "workspace": "committed"}, as_challenger=True)
    tags = {"data_hash": "abc", "model_sha256": "f" * 64, **Origin(experiment="exp-x").tags()}
    v2 = reg.register(uri, tags, as_challenger=False)
    assert str(reg.challenger().version) == str(v1.version)
    stored = reg.version(v2.version).tags
    assert {k: stored[k] for k in tags} == tags  # every lineage tag, in the one create call
    assert str(reg.by_fingerprint("f" * 64).version) == str(v2.version)  # how evaluate finds it


def test_make_challenger_moves_the_alias_and_audits_it(registry):
    reg, uri = registry
    v1 = reg.register(uri, {}, as_challenger=True).version
    v2 = reg.register(uri, Origin(experiment="exp-x").tags(), as_challenger=False).version
    assert reg.move_challenger(v2, "exp-x beats the baseline") == (str(v1), str(v2))
    assert str(reg.challenger().version) == str(v2)
    tags = reg.version(v2).tags
    assert tags["challenger_set_by"] == "reviewer-a"
    assert tags["previous_challenger"] == str(v1) and tags["challenger_reason"]
    entry = reg.history()[-1]
    assert (entry["action"], entry["from"], entry["to"], entry["by"]) == (
        "challenger",
        str(v1),
        str(v2),
        "reviewer-a",
    )
    assert reg.move_challenger(v2, "again") == (str(v2), str(v2))  # no move, no entry
    assert len(reg.history()) == 1


def test_make_challenger_refuses_unknown_and_rolled_back_versions(registry):
    reg, uri = registry
    v1 = reg.register(uri, {}, as_challenger=True).version
    with pytest.raises(RegistryError, match="has no version 99"):
        reg.move_challenger("99", "typo")
    with pytest.raises(RegistryError, match="has no version latest"):
        reg.move_challenger("latest", "not a number")
    v2 = reg.register(uri, {}, as_challenger=False).version
    reg.set_tags(v2, {"rolled_back": "true", "rolled_back_by": "ops", "rollback_reason": "drift"})
    with pytest.raises(RegistryError, match=rf"v{v2} was rolled back .*make promote VERSION={v2}"):
        reg.move_challenger(v2, "bring it back")
    assert str(reg.challenger().version) == str(v1) and reg.history() == []
