"""Request and response schemas, generated from the data contract in params.yaml so the
API accepts exactly the raw dataset's columns (a CSV row without id and target scores as
is) with their types and bounds. Unknown fields are rejected."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from riskloop.settings import DataSettings, NumericColumn, ServingSettings

# Pieces of the request contract shared with the strict msgspec twin (serving/fastpath.py)
# and the Arrow codec (serving/arrowio.py).
Explain = Literal["top", "all", "none"]
ID_CHARS = "A-Za-z0-9_.:-"  # a customer id: 1 to MAX_ID_LENGTH of these
MAX_ID_LENGTH = 64  # customer and request ids
CUSTOMER_ID = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=rf"^[{ID_CHARS}]+$")
]


def _numeric_type(rule: NumericColumn) -> Any:
    base = int if rule.integer else float
    typ = Annotated[base, Field(ge=rule.min, le=rule.max, allow_inf_nan=False)] if base is float else \
        Annotated[base, Field(ge=rule.min, le=rule.max)]  # fmt: skip
    return typ | None if rule.nullable else typ


def record_model(data: DataSettings) -> type[BaseModel]:
    """One applicant/customer record. Protected attributes are accepted (and logged for
    fairness monitoring) but optional, since the model never reads them."""
    protected = set(data.protected_columns)
    fields: dict[str, Any] = {}
    for col, rule in data.numeric.items():
        typ = _numeric_type(rule)
        fields[col] = (typ | None, None) if col in protected else (typ, ...)
    for col, levels in data.categorical.items():
        typ = Literal[tuple(levels)]  # type: ignore[valid-type]
        fields[col] = (typ | None, None) if col in protected else (typ, ...)
    for members in data.onehot.values():
        for col in members:
            typ = Literal[0, 1]
            fields[col] = (typ | None, None) if col in protected else (typ, ...)
    fields["customer_id"] = (CUSTOMER_ID | None, None)
    return create_model(
        "ApplicantRecord", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )


def predict_request_model(
    record: type[BaseModel], serving: ServingSettings, example: dict
) -> type[BaseModel]:
    """`record` from record_model(); `example` is a real record shown in the OpenAPI."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"records": [example]}]}
        ),
        records=(list[record], Field(min_length=1, max_length=serving.max_records)),  # type: ignore[valid-type]
        request_id=(Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None, None),
        explain=(Explain, "top"),
    )


def customer_request_model(serving: ServingSettings) -> type[BaseModel]:
    return create_model(
        "PredictCustomerRequest",
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"customer_ids": ["1", "2"]}]}
        ),
        customer_ids=(list[CUSTOMER_ID], Field(min_length=1, max_length=serving.max_customer_ids)),
        request_id=(Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None, None),
        explain=(Explain, "top"),
    )


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    customer_id: CUSTOMER_ID | None = None
    defaulted: Literal[0, 1]

    def model_post_init(self, _: Any) -> None:
        if (self.prediction_id is None) == (self.customer_id is None):
            raise ValueError("give exactly one of prediction_id or customer_id")


class OutcomesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcomes: Annotated[list[Outcome], Field(min_length=1, max_length=10_000)]


class Reason(BaseModel):
    feature: str
    value: float | None
    contribution: float


class Prediction(BaseModel):
    prediction_id: str
    customer_id: str | None = None
    probability_of_default: float
    risk_score: int
    risk_band: str
    decision: Literal["approve", "review", "decline"]
    reasons: list[Reason]
    contributions: dict[str, float] | None = None
    base_value: float | None = None
    model_name: str
    model_version: str
