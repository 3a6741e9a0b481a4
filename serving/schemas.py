"""Request and response schemas, generated from the served model's data contract so the API
accepts exactly the columns it was trained on (a CSV row without id and target scores as is)
with their types, bounds, levels and one-hot groups. Unknown fields are rejected.

Numbers must be JSON numbers (a string or a boolean is refused, as Arrow and the MLflow model
refuse them); an integer column takes 3 or 3.0, not 3.5. A column whose name is not a Python
identifier (`loan-amount`, `months employed`) is an alias of a safe attribute name."""

from __future__ import annotations

import keyword
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from features.contract import Contract, Rule, onehot_error
from riskloop.settings import ServingSettings

# Pieces of the request contract shared with the strict msgspec twin (serving/fastpath.py)
# and the Arrow codec (serving/arrowio.py).
Explain = Literal["top", "all", "none"]
ID_CHARS = "A-Za-z0-9_.:-"  # a customer id: 1 to MAX_ID_LENGTH of these
MAX_ID_LENGTH = 64  # customer and request ids
CUSTOMER_ID = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=rf"^[{ID_CHARS}]+$")
]
# A request id is the client's own trace id: printable ASCII, so no NUL, control character or
# lone surrogate ever reaches the prediction log (PostgreSQL cannot store NUL).
REQUEST_ID_CHARS = " -~"
REQUEST_ID = Annotated[str, Field(max_length=MAX_ID_LENGTH, pattern=rf"^[{REQUEST_ID_CHARS}]*$")]


def attribute_names(contract: Contract) -> dict[str, str]:
    """Record field -> the attribute that holds it in the pydantic and msgspec models."""
    out = {}
    for i, col in enumerate(contract.fields):
        safe = (col.isidentifier() and not keyword.iskeyword(col) and not col.startswith("_")
                and not hasattr(BaseModel, col) and col != "customer_id")  # fmt: skip
        out[col] = col if safe else f"field_{i}"
    return out


def _a_number(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


def _not_a_boolean(value: Any) -> Any:
    # a Literal[1, 2] would take `true` as 1 (True == 1 in Python)
    if isinstance(value, bool):
        raise PydanticCustomError("literal_error", "Input should be a level, not a boolean")
    return value


def field_type(rule: Rule) -> Any:
    if rule.kind == "categorical":
        typ: Any = Annotated[Literal[tuple(rule.levels)], BeforeValidator(_not_a_boolean)]  # type: ignore[valid-type]
    elif rule.kind == "onehot":
        typ = Annotated[Literal[0, 1], BeforeValidator(_not_a_boolean)]
    # bounds on the inner type: after a BeforeValidator pydantic would write them into the
    # JSON Schema as unknown `ge`/`le` keys instead of `minimum`/`maximum`
    elif rule.integer:
        typ = Annotated[
            Annotated[int, Field(ge=rule.low, le=rule.high)], BeforeValidator(_a_number)
        ]
    else:
        typ = Annotated[Annotated[float, Field(ge=rule.low, le=rule.high, allow_inf_nan=False)],
                        BeforeValidator(_a_number)]  # fmt: skip
    return typ | None if rule.nullable else typ


def _group_validator(group: str, attrs: list[str], optional: bool):
    """The one-hot rule, on the group's last member (it sees the others in info.data)."""

    def check(cls, value: Any, info: ValidationInfo) -> Any:
        if not all(a in info.data for a in attrs[:-1]):
            return value  # a member failed its own rule: that error is enough
        error = onehot_error(group, [*(info.data[a] for a in attrs[:-1]), value], optional)
        if error:
            raise PydanticCustomError("onehot", error)
        return value

    return field_validator(attrs[-1])(classmethod(check))


def _onehot_schema(contract: Contract) -> list[dict[str, Any]]:
    """The one-hot rule in JSON Schema (an `allOf` entry per group), so the OpenAPI document
    describes exactly the records the service accepts: exactly one member 1 and the others
    0, or, for an optional group, every member absent or null."""
    out = []
    for members in contract.data.onehot.values():
        branches: list[dict[str, Any]] = [
            {"required": list(members),
             "properties": {m: {"const": int(m == one)} for m in members}}
            for one in members
        ]  # fmt: skip
        if all(contract.rules[m].nullable for m in members):
            branches.append({"properties": {m: {"type": "null"} for m in members}})
        out.append({"oneOf": branches})
    return out


def record_model(contract: Contract) -> type[BaseModel]:
    """One applicant/customer record. Protected attributes are accepted (and logged for
    fairness monitoring) but optional, since the model never reads them."""
    attrs = attribute_names(contract)
    fields: dict[str, Any] = {}
    for col, rule in contract.rules.items():
        typ = field_type(rule)
        alias = {} if attrs[col] == col else {"alias": col}
        # validate_default: a one-hot group's rule runs on its last member even when it is left out
        default = (
            {"default": None, "validate_default": True} if rule.protected else {"default": ...}
        )
        fields[attrs[col]] = (typ, Field(**default, **alias))
    fields["customer_id"] = (CUSTOMER_ID | None, None)
    validators = {
        f"onehot_{i}": _group_validator(group, [attrs[m] for m in members],
                                        all(contract.rules[m].nullable for m in members))
        for i, (group, members) in enumerate(contract.data.onehot.items())
    }  # fmt: skip
    groups = _onehot_schema(contract)
    return create_model(
        "ApplicantRecord", __config__=ConfigDict(extra="forbid", frozen=True,
                                                 json_schema_extra={"allOf": groups} if groups else None),
        __validators__=validators, **fields,
    )  # fmt: skip


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
        request_id=(REQUEST_ID | None, None),
        explain=(Explain, "top"),
    )


def customer_request_model(serving: ServingSettings) -> type[BaseModel]:
    return create_model(
        "PredictCustomerRequest",
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"customer_ids": ["1", "2"]}]}
        ),
        customer_ids=(list[CUSTOMER_ID], Field(min_length=1, max_length=serving.max_customer_ids)),
        request_id=(REQUEST_ID | None, None),
        explain=(Explain, "top"),
    )


MAX_OUTCOMES = 1_000  # per request: resolved one by one, within the store call's time bound


class OutcomeByPrediction(BaseModel):
    """The label of one answered prediction."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    defaulted: Annotated[Literal[0, 1], BeforeValidator(_not_a_boolean)]


class OutcomeByCustomer(BaseModel):
    """The label of a customer's newest prediction answered before it arrives."""

    model_config = ConfigDict(extra="forbid")
    customer_id: CUSTOMER_ID
    defaulted: Annotated[Literal[0, 1], BeforeValidator(_not_a_boolean)]


class OutcomesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcomes: Annotated[
        list[OutcomeByPrediction | OutcomeByCustomer], Field(min_length=1, max_length=MAX_OUTCOMES)
    ]


class Reason(BaseModel):
    feature: str
    value: float | None = Field(
        description="the feature's value (null when missing or categorical)"
    )
    level: str | None = Field(default=None, description="a categorical feature's level")
    contribution: float
    text: str | None = Field(
        default=None, description="the adverse-action reason a lender sends (serving.reason_texts)"
    )


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
    intervention: str | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class UnknownCustomer(BaseModel):
    customer_id: str
    error: str


class PredictCustomerResponse(BaseModel):
    predictions: list[Prediction | UnknownCustomer]


class OutcomeResult(BaseModel):
    prediction_id: str | None = None
    customer_id: str | None = None
    defaulted: int | None = None
    status: Literal["recorded", "duplicate", "conflict", "unknown_prediction", "unknown_customer",
                    "invalid"]  # fmt: skip
    error: str | None = None
    existing_defaulted: int | None = None


class OutcomesResponse(BaseModel):
    results: list[OutcomeResult]


class Intervention(BaseModel):
    id: int
    customer_id: str
    prediction_id: str | None = None
    risk_score: int | None = None
    risk_band: str | None = None
    action: str
    created_at: str
    source: Literal["policy", "manual"] = Field(
        description="policy: triggered by a prediction; manual: a person's decision (POST /interventions)"
    )
    note: str | None = None


class InterventionsResponse(BaseModel):
    interventions: list[Intervention]


MAX_NOTE_LENGTH = 500  # a manual intervention's note (serving/store.py's column is this long)
# A note is free text (tabs and line breaks too) without the control characters no log
# should hold: PostgreSQL cannot store NUL (lone surrogates pydantic refuses itself).
NOTE = Annotated[
    str, Field(max_length=MAX_NOTE_LENGTH, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")
]


def intervention_actions(serving: ServingSettings) -> list[str]:
    """The actions an intervention may take: those `serving.interventions.actions` configures."""
    return sorted(set(serving.interventions.actions.values()))


def intervention_request_model(actions: list[str]) -> type[BaseModel]:
    """POST /interventions: a person's decision about a customer. `action` is one of
    `actions` (an enum in the OpenAPI); another is a 422 naming them."""
    allowed = ", ".join(actions) or "none (serving.interventions.actions is empty)"

    def known(value: str) -> str:
        if value not in actions:
            raise PydanticCustomError(
                "unknown_action", "Input should be one of the configured actions: {allowed}",
                {"allowed": allowed},
            )  # fmt: skip
        return value

    action = Annotated[str, AfterValidator(known),
                       Field(json_schema_extra={"enum": list(actions)} if actions else None)]  # fmt: skip
    examples = [{"customer_id": "1", "action": a, "note": "called: agreed a payment plan"}
                for a in actions[:1]]  # fmt: skip
    return create_model(
        "InterventionRequest",
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": examples} if examples else None
        ),
        customer_id=(CUSTOMER_ID, ...),
        action=(action, ...),
        note=(NOTE | None, None),
    )


class InterventionResponse(BaseModel):
    intervention: Intervention


class ContractResponse(BaseModel):
    """What a client needs to build valid records for the served model."""

    model_name: str
    model_version: str = Field(description="the registry version serving now")
    fingerprint: str = Field(description="the data contract's fingerprint (as in /readyz)")
    contract: dict[str, Any] = Field(
        description="the served model's contract.json: `features.contract.Contract.from_json` reads it"
    )
    example: dict[str, Any] = Field(description="a real record the model was trained on")
    actions: list[str] = Field(description="the actions POST /interventions takes")


class Problem(BaseModel):
    field: str
    message: str
    type: str


class Problems(BaseModel):
    """400 and 422: every problem, each naming its field (`records.3.AGE`)."""

    detail: list[Problem]


class Refusal(BaseModel):
    """401, 413, 429, 503: why, in one sentence."""

    detail: str


# What every route may answer besides its 200 (the OpenAPI document declares them all)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problems, "description": "unreadable body (not UTF-8 JSON, not an Arrow stream)"},
    401: {"model": Refusal, "description": "missing or invalid API key"},
    413: {"model": Refusal, "description": "body too large"},
    422: {"model": Problems, "description": "invalid request: each problem names its field"},
    429: {"model": Refusal, "description": "rate limit: retry after `Retry-After` seconds"},
    503: {"model": Refusal, "description": "cannot answer safely now (prediction log or store unavailable): retry after `Retry-After` seconds"},
}  # fmt: skip
