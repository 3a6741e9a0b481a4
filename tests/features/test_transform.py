import numpy as np
import pandas as pd
import pytest

from features.transform import (
    STATUS_FEATURES,
    FeatureBuilder,
    missing_reason_texts,
    repayment_features,
)
from pipelines.prepare import check_references
from riskloop.errors import SettingsError
from tests.conftest import stratified_sample


def row(params, **overrides) -> pd.DataFrame:
    base = {c: 0.0 for c in params.data.model_input_columns}
    base.update({"LIMIT_BAL": 10000.0, "EDUCATION_1": 1.0})
    base.update(overrides)
    return pd.DataFrame([base])


def test_repayment_history_features(params):
    x = row(params, PAY_0=2, PAY_2=1, PAY_3=0, PAY_4=3, PAY_5=-1, PAY_6=-2,
            BILL_AMT1=5000, BILL_AMT2=2000, PAY_AMT1=1000, PAY_AMT2=0)  # fmt: skip
    f = repayment_features(x, params.features).iloc[0]
    assert f["months_delinquent"] == 3
    assert f["recent_months_delinquent"] == 2
    assert f["worst_status"] == 3
    assert f["latest_delinquency"] == 2
    assert f["consecutive_delinquent"] == 2
    assert f["delinquency_load"] == 6
    assert f["utilization_latest"] == pytest.approx(0.5)
    assert f["pay_ratio_1"] == pytest.approx(0.5)  # PAY_AMT1 settles BILL_AMT2
    assert np.isnan(f["pay_ratio_2"])  # no bill: ratio undefined, XGBoost's missing
    assert f["months_no_payment"] == 5


def test_status_features_non_decreasing_in_every_status(params):
    rng = np.random.default_rng(0)
    statuses = params.features.repayment.status_columns
    base = pd.concat([row(params, **{c: int(rng.integers(-2, 9)) for c in statuses}) for _ in range(50)],
                     ignore_index=True)  # fmt: skip
    before = repayment_features(base, params.features)[list(STATUS_FEATURES)]
    for col in statuses:
        bumped = base.assign(**{col: base[col] + 1})
        after = repayment_features(bumped, params.features)[list(STATUS_FEATURES)]
        assert (after.to_numpy() >= before.to_numpy()).all(), col


def test_builder_caps_come_from_train_only(raw, params):
    train = stratified_sample(raw, params.data.target, 2000)
    builder = FeatureBuilder(params.data, params.features).fit(train)
    _low, high = builder.caps_["pay_ratio_1"]
    extreme = train.head(1).assign(PAY_AMT1=1e9, BILL_AMT2=1.0)
    assert builder.transform(extreme)["pay_ratio_1"].iloc[0] == pytest.approx(high)
    assert list(builder.transform(train).columns) == builder.feature_names_


def test_builder_drops_protected_and_checks_inputs(raw, params):
    builder = FeatureBuilder(params.data, params.features).fit(raw.head(500))
    assert not set(params.data.protected_columns) & set(builder.feature_names_)
    with pytest.raises(KeyError, match="PAY_0"):
        builder.transform(raw.head(5).drop(columns="PAY_0"))
    with pytest.raises(RuntimeError, match="before fit"):
        FeatureBuilder(params.data, params.features).transform(raw.head(5))


def test_array_fast_path_equals_dataframe_path(raw, params):
    builder = FeatureBuilder(params.data, params.features).fit(raw.head(5000))
    rows = raw.iloc[5000:8000]
    values = rows[builder.input_columns].to_numpy(dtype="float64")
    np.testing.assert_array_equal(
        builder.transform_array(values), builder.transform(rows).to_numpy()
    )


def test_every_model_feature_has_an_adverse_action_text(params):
    assert missing_reason_texts(params.data, params.features, params.serving.reason_texts) == []


def test_prepare_refuses_features_without_a_text_and_texts_of_no_feature(params):
    texts = {
        k: v for k, v in params.serving.reason_texts.items() if k not in ("PAY_0", "EDUCATION")
    }
    texts["NO_SUCH_COLUMN"] = "Something"
    broken = params.model_copy(
        update={"serving": params.serving.model_copy(update={"reason_texts": texts})}
    )
    with pytest.raises(SettingsError) as err:
        check_references(broken)
    message = str(err.value)
    assert "NO_SUCH_COLUMN" in message and "'PAY_0'" in message and "'EDUCATION_1'" in message
