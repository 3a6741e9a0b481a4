"""The applicant form is the contract's: a field per record field (a one-hot group one choice),
defaults from the served example, and each bad value named under its field by the contract's
own row rules, before anything is sent. Plus the dashboard's refusal to listen unguarded."""

from __future__ import annotations

import pytest

from dashboard import form
from dashboard.settings import DashboardEnv
from riskloop.errors import SettingsError
from tests.features.test_contract_paths import CONTRACT

EXAMPLE = {"loan-amount": 5000, "months employed": None, "rate": 0.1, "age": 40, "grade": 1,
           "tier": 2, "term": 36, "home": "rent", "purpose_car": 0, "purpose_home": 1, "purpose_other": 0}  # fmt: skip


def values(fields: list[form.Field], **changes: str) -> dict[str, str]:
    return {**{f.name: f.default for f in fields}, **changes}


def test_fields_follow_the_contract():
    fields = {f.name: f for f in form.fields(CONTRACT, EXAMPLE)}
    assert list(fields) == ["loan-amount", "months employed", "rate", "age", "grade", "tier", "term",
                            "home", "gender", "purpose", "marital"]  # fmt: skip
    assert fields["age"].protected and fields["age"].optional and fields["marital"].protected
    assert (
        fields["months employed"].optional
        and "whole number from 0 to 600" in fields["months employed"].help
    )
    assert (
        fields["home"].options == ("own", "rent", "mortgage") and fields["home"].default == "rent"
    )
    assert (
        fields["gender"].options[0] == form.NOT_GIVEN and fields["gender"].default == form.NOT_GIVEN
    )
    assert fields["purpose"].members == ("purpose_car", "purpose_home", "purpose_other")
    assert (
        fields["purpose"].default == "purpose_home" and fields["marital"].default == form.NOT_GIVEN
    )


def test_a_good_form_is_a_record_the_contract_accepts():
    fields = form.fields(CONTRACT, EXAMPLE)
    record, errors = form.record(
        CONTRACT, fields, values(fields, term="60", **{"months employed": ""})
    )
    assert errors == {}
    assert record["term"] == 60 and record["home"] == "rent" and record["months employed"] is None
    assert (record["purpose_car"], record["purpose_home"], record["purpose_other"]) == (0, 1, 0)
    # protected attributes left out are not sent at all (the model never reads them)
    assert "gender" not in record and "marital_single" not in record
    assert isinstance(record["age"], int) and record["rate"] == 0.1


@pytest.mark.parametrize(("field", "typed", "message"), [
    ("loan-amount", "", "missing value"),
    ("loan-amount", "lots", "not a number"),
    ("loan-amount", "-1", "below minimum 0"),
    ("rate", "1.5", "above maximum 1"),
    ("age", "40.5", "not an integer"),
    ("age", "12", "below minimum 18"),
    ("months employed", "inf", "not a finite number"),
])  # fmt: skip
def test_each_bad_value_is_named_under_its_field(field, typed, message):
    fields = form.fields(CONTRACT, EXAMPLE)
    _, errors = form.record(CONTRACT, fields, values(fields, **{field: typed}))
    assert errors == {field: message}


def test_the_services_refusals_land_on_the_form_fields():
    fields = form.fields(CONTRACT, EXAMPLE)
    problems = {"records.0.purpose_home": "one-hot group 'purpose' must have exactly one 1",
                "records.0.age": "Input should be less than or equal to 100"}  # fmt: skip
    assert form.api_errors(fields, problems) == {"purpose": problems["records.0.purpose_home"],
                                                 "age": problems["records.0.age"]}  # fmt: skip


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_password(host):
    DashboardEnv(DASHBOARD_HOST=host).check()


def test_beyond_loopback_a_password_is_required():
    with pytest.raises(SettingsError, match="DASHBOARD_PASSWORD"):
        DashboardEnv(DASHBOARD_HOST="0.0.0.0").check()
    with pytest.raises(SettingsError, match="DASHBOARD_PASSWORD"):
        DashboardEnv(DASHBOARD_HOST="10.1.2.3", DASHBOARD_PASSWORD="").check()
    DashboardEnv(DASHBOARD_HOST="0.0.0.0", DASHBOARD_PASSWORD="long-enough").check()
