"""The applicant form, generated from the served model's contract: one field per record field
(a one-hot group is one choice), checked by the contract's own row rules before it is sent,
so a bad value is named under its field. Pure: the page only draws what this returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from features.contract import Contract, Rule, check_values

NOT_GIVEN = "(not given)"


@dataclass(frozen=True)
class Field:
    """One input on the form: a number typed as text, or a choice among `options`."""

    name: str  # the record field, or the one-hot group's name
    kind: Literal["number", "choice"]
    label: str
    help: str
    protected: bool
    optional: bool
    options: tuple[str, ...] = ()  # for a choice: what the user picks from
    default: str = ""
    members: tuple[str, ...] = ()  # a one-hot group's indicator columns


def _bounds(rule: Rule) -> str:
    kind = "whole number" if rule.integer else "number"
    low = "" if rule.low is None else f"{rule.low:,.10g}"
    high = "" if rule.high is None else f"{rule.high:,.10g}"
    return f"{kind} from {low or '-∞'} to {high or '∞'}"


def _level_text(level: Any, labels: dict[Any, str]) -> str:
    name = labels.get(level, labels.get(str(level)))
    return f"{level} ({name})" if name and str(name) != str(level) else str(level)


def fields(contract: Contract, example: dict[str, Any]) -> list[Field]:
    """The form's fields in the contract's order, defaults from the served example record."""
    data, out, grouped = contract.data, [], set()
    member_group = {m: g for g, members in data.onehot.items() for m in members}
    for name, rule in contract.rules.items():
        labels = data.group_labels.get(member_group.get(name, name), {})
        optional = rule.nullable
        if name in member_group:
            group = member_group[name]
            if group in grouped:
                continue
            grouped.add(group)
            members = tuple(data.onehot[group])
            optional = all(contract.rules[m].nullable for m in members)
            picked = next((m for m in members if example.get(m) == 1), None)
            options = tuple(_level_text(m, labels) for m in members)
            default = (
                _level_text(picked, labels) if picked else NOT_GIVEN if optional else options[0]
            )
            out.append(Field(group, "choice", group, f"one of {len(members)} categories",
                             rule.protected, optional, ((NOT_GIVEN,) if optional else ()) + options,
                             default, members))  # fmt: skip
        elif rule.kind == "categorical":
            options = tuple(_level_text(v, labels) for v in rule.levels)
            given = example.get(name)
            default = (
                _level_text(given, labels)
                if given is not None
                else (NOT_GIVEN if optional else options[0])
            )
            out.append(Field(name, "choice", name, f"one of {list(rule.levels)}", rule.protected,
                             optional, ((NOT_GIVEN,) if optional else ()) + options, default))  # fmt: skip
        else:
            given = example.get(name)
            default = (
                "" if given is None else f"{given:g}" if isinstance(given, float) else str(given)
            )
            hint = _bounds(rule) + ("; leave empty if unknown" if optional else "")
            out.append(Field(name, "number", name, hint, rule.protected, optional, default=default))
    return out


def _number(text: str) -> Any:
    """The typed text as a number where it is one (else the text: the contract names it)."""
    text = text.strip().replace(",", "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def record(
    contract: Contract, form: list[Field], values: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(the record to send, {field: what is wrong}) from the form's raw values."""
    rec: dict[str, Any] = {}
    for f in form:
        raw = values.get(f.name, "")
        if f.kind == "number":
            rec[f.name] = _number(raw)
            continue
        picked = None if raw in ("", NOT_GIVEN) else f.options.index(raw) - (1 if f.optional else 0)
        if f.members:
            for i, m in enumerate(f.members):
                rec[m] = None if picked is None else int(i == picked)
        else:
            rec[f.name] = None if picked is None else contract.rules[f.name].levels[picked]
    errors: dict[str, str] = {}
    frame = pd.DataFrame([{k: (pd.NA if v is None else v) for k, v in rec.items()}], dtype=object)
    for v in check_values(frame, contract, list(rec), from_text=False):
        errors[_owner(form, v.column)] = v.rule
    # protected attributes left out are simply not sent (the model never reads them)
    sent = {k: v for k, v in rec.items() if v is not None or not contract.rules[k].protected}
    return sent, errors


def _owner(form: list[Field], column: str) -> str:
    """The form field a record column belongs to (a one-hot member's group)."""
    return next((f.name for f in form if column == f.name or column in f.members), column)


def api_errors(form: list[Field], problems: dict[str, str]) -> dict[str, str]:
    """The service's 422 fields (`records.0.AGE`) as form fields."""
    out: dict[str, str] = {}
    for field, message in problems.items():
        column = field.split(".")[2] if field.startswith("records.0.") else field
        out[_owner(form, column)] = message
    return out
