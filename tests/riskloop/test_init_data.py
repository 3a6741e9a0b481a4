"""`riskloop init-data`: the draft describes the file, validates as written, and says what
to check; ambiguous or unusable files stop with the candidates named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from features.contract import validate_raw
from riskloop.errors import DataContractError
from riskloop.init_data import draft, write_params
from riskloop.settings import DataSettings, Riskiest, load_params
from riskloop.tables import read_table
from tests.conftest import ROOT
from tests.synthetic_credit import HOME, PURPOSE, generate

RISKLOOP = str(Path(sys.executable).parent / "riskloop")


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "applications.csv"
    generate(1500).to_csv(path, index=False)
    return read_table(path)


def test_the_draft_describes_the_file_and_accepts_it(frame):
    d = draft(frame, "applications.csv")
    data = d.data
    assert (data["id_column"], data["target"], data["time_column"]) == ("application_id", "defaulted",
                                                                         "application_date")  # fmt: skip
    assert data["categorical"]["home_ownership"] == sorted(HOME)
    assert data["categorical"]["purpose"] == {"levels": sorted(PURPOSE), "nullable": True}
    assert data["numeric"]["annual_income"].get("nullable") and data["numeric"]["age"]["integer"]
    assert "nullable" not in data["numeric"]["loan_amount"]
    assert "integer" not in data["numeric"]["debt-to-income"]
    # bounds hold every observed value, with room, and never cross zero
    for col, spec in data["numeric"].items():
        values = frame[col].dropna()
        assert spec["min"] <= values.min() and spec["max"] >= values.max()
        assert spec["max"] > values.max() or values.max() == 0
        if values.min() >= 0:
            assert spec["min"] >= 0
    assert set(data["protected"]) == {"age", "gender"}
    assert any("protected" in c for c in d.checks)
    # valid as written: the contract accepts the very file it was drafted from
    validate_raw(frame, DataSettings.model_validate(data))


def test_ambiguity_and_unusable_targets_are_named(frame):
    two = frame.assign(bad_flag=frame["defaulted"])
    with pytest.raises(DataContractError, match=r"several columns could be the target.*--target"):
        draft(two, "f.csv")
    assert draft(two, "f.csv", target="defaulted").data["target"] == "defaulted"
    three = frame.assign(defaulted=frame["defaulted"].where(frame.index % 7 > 0, "maybe"))
    with pytest.raises(DataContractError, match=r"target 'defaulted' holds 3 values.*needs two"):
        draft(three, "f.csv", target="defaulted")
    with pytest.raises(DataContractError, match=r"no column looks like the id.*--id"):
        draft(frame.drop(columns="application_id"), "f.csv")
    free_text = frame.assign(
        note=[f"note {i}" for i in range(len(frame))], application_id=range(len(frame))
    )
    d = draft(free_text, "f.csv", id_column="application_id")
    assert "note" in d.data["ignore"]
    # a pandas index saved with the file is a row number: neither the id nor a feature
    indexed = frame.reset_index(names="Unnamed: 0")
    d = draft(indexed, "f.csv")
    assert d.data["id_column"] == "application_id" and d.data["ignore"] == ["Unnamed: 0"]
    assert "Unnamed: 0" not in d.data["numeric"]


@pytest.mark.parametrize("coded, labels, why", [
    ({"yes": "bad", "no": "good"}, {"bad": 1, "good": 0}, "named like a default"),
    ({"yes": 2, "no": 1}, {"2": 1, "1": 0}, "the rarer value"),  # German credit's own coding
    ({"yes": 0, "no": 1}, {}, None),  # 0/1 stays as it is (1 = default, whatever the words)
])  # fmt: skip
def test_a_target_not_written_0_1_gets_its_labels(frame, coded, labels, why):
    d = draft(frame.assign(defaulted=frame["defaulted"].map(coded)), "f.csv")
    assert d.data.get("target_labels", {}) == labels
    if why:
        assert any(c.startswith("target_labels") and why in c for c in d.checks), d.checks
    settings = DataSettings.model_validate(d.data)
    clean = validate_raw(frame.assign(defaulted=frame["defaulted"].map(coded)), settings)
    expected = (frame["defaulted"] == "yes") if labels else frame["defaulted"].map(coded)
    assert clean["defaulted"].tolist() == expected.astype(int).tolist()
    assert d.default_rate == pytest.approx(expected.astype(int).mean())


def test_target_values_the_labels_do_not_name_are_violations(frame):
    d = draft(frame, "f.csv")
    assert d.data["target_labels"] == {"yes": 1, "no": 0}
    with pytest.raises(DataContractError, match=r"target must be one of \['yes', 'no'\]"):
        validate_raw(frame.assign(defaulted=frame["defaulted"].replace("no", "n")),
                     DataSettings.model_validate(d.data))  # fmt: skip
    with pytest.raises(ValueError, match="YAML booleans"):
        DataSettings.model_validate({**d.data, "target_labels": {True: 1, False: 0}})
    with pytest.raises(ValueError, match="one value 1"):
        DataSettings.model_validate({**d.data, "target_labels": {"yes": 1, "no": 1}})


def test_write_keeps_other_settings_and_drops_the_old_datasets_sections(frame, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    result = draft(frame, "applications.csv")
    said = "\n".join(write_params(params, result))
    for key in ("features.repayment", "train.monotone_constraints", "monitoring.psi.key_features"):
        assert f"dropped {key}:" in said
    text = params.read_text()
    assert (
        "# Every tunable number of riskloop" in text and "CHECK protected" in text
    )  # comments kept
    loaded = load_params(params)
    assert loaded.features.repayment is None and loaded.train.monotone_constraints == {}
    assert loaded.promotion.min_auc is None and loaded.promotion.min_auc_over_baseline == 0.0
    # the shipped cuts are risk scores; the new data's are shares of its model's test split
    decline = round(result.default_rate, 2)
    assert loaded.serving.decisions.decline_from == Riskiest(riskiest=decline)
    assert loaded.serving.decisions.review_from == Riskiest(riskiest=round(2 * decline, 2))
    assert "serving.decisions: now relative" in said
    assert loaded.train.n_trials == load_params(ROOT / "params.yaml").train.n_trials
    assert loaded.data.levels["purpose"] == sorted(PURPOSE)


def test_one_command_lists_its_verbs_and_explains_each():
    out = subprocess.run([RISKLOOP], capture_output=True, text=True, check=True).stdout
    for verb in ("init-data", "promote", "rollback", "deploy", "monitor", "retrain"):
        assert f"  {verb}" in out
    bento = subprocess.run(
        [RISKLOOP, "bento", "--help"], capture_output=True, text=True, check=True
    )
    assert "changes: the BentoML store" in bento.stdout  # and it did not build anything
    promote = subprocess.run(
        [RISKLOOP, "promote", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: riskloop promote" in promote.stdout and "changes:" in promote.stdout
    unknown = subprocess.run([RISKLOOP, "promot"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown verb 'promot'" in unknown.stderr
    # printed, the draft is YAML (notes as comments): the shipped file's own draft is valid
    out = subprocess.run([RISKLOOP, "init-data", str(ROOT / "data/raw/UCI_Credit_Card.csv")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    data = DataSettings.model_validate(yaml.safe_load(out)["data"])
    assert (data.id_column, data.target) == ("ID", "default-payment-next-month")
    assert "# CHECK protected" in out


def test_written_levels_and_names_read_back_unchanged(frame, tmp_path):
    odd = [
        "(vacation - does not exist?)",
        "no",
        "a: b",
        " trailing ",
        "#hash",
        "[x]",
        "car (new)",
        "'q'",
        "yes",
    ]
    weird = frame.assign(**{"odd level": [odd[i % len(odd)] for i in range(len(frame))]})
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    write_params(params, draft(weird, "applications.csv"))
    loaded = load_params(params)  # PyYAML, as every stage reads it
    assert loaded.data.levels["odd level"] == sorted(odd)
    assert loaded.data.levels["home_ownership"] == sorted(HOME)
    assert loaded.data.target_labels == {"yes": 1, "no": 0}  # quoted, not YAML's true/false
