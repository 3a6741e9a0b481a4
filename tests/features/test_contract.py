import numpy as np
import pytest

from features.contract import find_violations, validate_raw
from riskloop.errors import DataContractError
from tests.conftest import stratified_sample


@pytest.fixture
def sample(raw, params):
    return stratified_sample(raw, params.data.target, 400).reset_index(drop=True)


def rules(frame, params):
    return {(v.column, v.rule) for v in find_violations(frame, params.data)}


def test_real_data_satisfies_contract(raw, params):
    clean = validate_raw(raw, params.data)
    assert len(clean) == 30000
    assert clean["PAY_0"].dtype == "int64"


def test_missing_column(sample, params):
    with pytest.raises(DataContractError, match="column 'PAY_0': missing column"):
        validate_raw(sample.drop(columns="PAY_0"), params.data)


def test_extra_column(sample, params):
    assert ("INCOME", "column not declared in params.yaml data section") in rules(
        sample.assign(INCOME=1), params
    )


def test_text_in_numeric_column_names_rows(sample, params):
    bad = sample.astype({"LIMIT_BAL": object})
    bad.loc[3, "LIMIT_BAL"] = "twenty thousand"
    with pytest.raises(DataContractError) as err:
        validate_raw(bad, params.data)
    msg = str(err.value)
    assert "column 'LIMIT_BAL': not a number (1 row(s)" in msg
    assert f"ID={bad.loc[3, 'ID']}: 'twenty thousand'" in msg


def test_out_of_bounds_and_non_integer(sample, params):
    bad = sample.copy()
    bad.loc[0, "AGE"] = 150
    bad["PAY_2"] = bad["PAY_2"].astype(float)
    bad.loc[1, "PAY_2"] = 1.5
    found = rules(bad, params)
    assert ("AGE", "above maximum 120") in found
    assert ("PAY_2", "not an integer") in found


def test_one_class_target(sample, params):
    found = rules(sample.assign(**{params.data.target: 0}), params)
    assert (params.data.target, "one-class target (only [0])") in found


def test_target_values_and_duplicates(sample, params):
    bad = sample.copy()
    bad.loc[0, params.data.target] = 2
    bad.loc[1, "ID"] = bad.loc[2, "ID"]
    found = rules(bad, params)
    assert (params.data.target, "target must be 0 or 1") in found
    assert ("ID", "duplicate id") in found


def test_missing_values_and_categories(sample, params):
    bad = sample.copy()
    bad.loc[0, "BILL_AMT1"] = np.nan
    bad.loc[1, "SEX"] = 7
    found = rules(bad, params)
    assert ("BILL_AMT1", "missing value") in found
    assert ("SEX", "not one of [0, 1]") in found


def test_onehot_group(sample, params):
    bad = sample.copy()
    bad.loc[0, "EDUCATION_1"] = 1
    bad.loc[0, "EDUCATION_2"] = 1
    found = rules(bad, params)
    assert ("EDUCATION_6", "one-hot group 'EDUCATION' must have exactly one 1 per row") in found
