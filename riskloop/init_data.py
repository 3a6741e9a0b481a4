"""`riskloop init-data FILE`: profile a CSV or Parquet file and draft params.yaml's `data`
section from what is in it, so a new dataset needs editing, not writing.

What it decides, and flags where a person should look (`# CHECK` comments in the draft):
- the id (unique in every row; a name like `id`, `*_id`) and the target (two values, 0/1
  or any other two, a name like `default`, `target`, `bad`); ambiguous or missing ones stop
  with the candidates named, and `--id`/`--target` settle them; a target not written 0/1
  gets `target_labels` (which value is the default: one named so, else the rarer, flagged);
- a date column (`time_column`: out-of-time split) when one parses as dates;
- numeric columns with bounds from the observed range widened by a margin (never across
  zero), whole numbers as `integer`, columns with gaps as `nullable`;
- text columns with few distinct values as categorical levels (nullable when some are
  empty), and under `ignore` text with too many distinct values to be a category and row
  numbers (a pandas index saved with the file, `Unnamed: 0`);
- candidate protected attributes by name (sex, gender, age, marital status, race, ...):
  listed under `protected`, kept out of the model, to confirm or remove;
- which sections of the current params.yaml name columns this file does not have (the
  shipped dataset's repayment block, monotone constraints, PSI key features): `--write`
  drops them and writes the draft into params.yaml, keeping every other setting and comment;
- settings fitted to the shipped data become relative to the new one: the promotion floor
  (beat a logistic baseline fitted in the same run) and the decision cuts (shares of the
  model's own test split, declining as many as the data's default rate).

Pure profiling (`draft`) apart from reading and writing files (`main`)."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import as_label, target_codes
from riskloop.errors import DataContractError, SettingsError
from riskloop.settings import DataSettings
from riskloop.tables import read_table

MAX_LEVELS = 30  # distinct text values up to which a column is a category
MARGIN = 0.25  # bounds: the observed range widened by this share of its span, each side
TARGET_NAME = re.compile(r"default|target|label|^bad|delinq|outcome|^y$|^class$|risk", re.I)
ID_NAME = re.compile(r"(^|[_\-\s])id$|^id([_\-\s]|$)|_id$|^id$|number$|^no$", re.I)
PROTECTED_NAME = re.compile(r"sex|gender|(?<![a-z])age(?![a-z])|race|ethnic|marital|marriage|religio|"
                            r"national|citizen|disab|pregnan|foreign", re.I)  # `age`, not `mortgage`  # fmt: skip
# a target value that means default
DEFAULT_LABEL = re.compile(r"bad|default(ed)?|yes|y|true|charged[ _-]?off|delinquent|late|fail(ed|ure)?",
                           re.I)  # fmt: skip
ROW_NUMBER_NAME = re.compile(r"Unnamed: \d+(\.\d+)?")  # pandas' name for a column without a header
DATE_NAME = re.compile(r"date|time|month|period|_dt$|_at$", re.I)


@dataclass
class Draft:
    data: dict[str, Any]
    checks: list[str] = field(default_factory=list)  # what a person should confirm
    ignored: dict[str, str] = field(default_factory=dict)  # column -> why
    default_rate: float = 0.0  # the target's mean


def _whole(values: pd.Series) -> bool:
    v = values.dropna().to_numpy(dtype="float64")
    return bool(len(v)) and bool(np.all(v == np.trunc(v)))


def _bounds(values: pd.Series, integer: bool) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * MARGIN or max(abs(hi), 1.0) * MARGIN
    low, high = lo - pad, hi + pad
    if lo >= 0:
        low = max(low, 0.0)  # a quantity that is never negative stays so
    if integer:
        low, high = math.floor(low), math.ceil(high)
    return _tidy(low), _tidy(high)


def _tidy(x: float) -> float | int:
    """3 significant digits, outward enough for a bound; ints where whole."""
    if x == 0:
        return 0
    digits = 2 - math.floor(math.log10(abs(x)))
    rounded = round(x, digits)
    return int(rounded) if float(rounded).is_integer() else rounded


def _is_date(values: pd.Series) -> bool:
    sample = values.dropna().astype(str).head(500)
    if sample.empty or not sample.str.contains(r"\d", regex=True).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.98)


def _level(v: Any) -> int | str:
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    return str(v)


def _pick(kind: str, candidates: list[str], named: list[str], given: str | None,
          columns: list[str], flag: str) -> str:  # fmt: skip
    if given is not None:
        if given not in columns:
            raise DataContractError(f"--{flag} {given!r} is not a column of the file")
        return given
    for pool in (named, candidates):
        if len(pool) == 1:
            return pool[0]
        if len(pool) > 1:
            raise DataContractError(f"several columns could be the {kind}: {pool}; choose one "
                                    f"with --{flag}")  # fmt: skip
    raise DataContractError(
        f"no column looks like the {kind}"
        + (" (a 0/1 column)" if kind == "target" else " (unique in every row)")
        + f"; name it with --{flag}"
    )


def draft(frame: pd.DataFrame, raw_file: str, raw_dir: str = "data/raw", id_column: str | None = None,
          target: str | None = None, time_column: str | None = None) -> Draft:  # fmt: skip
    """The draft `data` section for `frame`, and what to check in it."""
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    two_valued = [c for c in columns if frame[c].notna().all() and frame[c].nunique() == 2]
    binary = [
        c for c in two_valued if set(pd.to_numeric(frame[c], errors="coerce").unique()) == {0, 1}
    ]
    target = _pick("target", binary or two_valued, [c for c in two_valued if TARGET_NAME.search(c)],
                   target, columns, "target")  # fmt: skip
    # a pandas index saved with the file (`Unnamed: 0`): a row number, neither id nor feature
    row_numbers = [c for c in columns if ROW_NUMBER_NAME.fullmatch(c) and frame[c].is_unique
                   and pd.api.types.is_integer_dtype(frame[c])]  # fmt: skip
    unique = [c for c in columns if c != target and c not in row_numbers
              and frame[c].notna().all() and frame[c].is_unique]  # fmt: skip
    id_column = _pick(
        "id", unique, [c for c in unique if ID_NAME.search(c)], id_column, columns, "id"
    )
    out = Draft(data={})
    labels = _target_labels(frame[target], target, out)
    dates = [c for c in columns if c not in (id_column, target)
             and not pd.api.types.is_numeric_dtype(frame[c]) and _is_date(frame[c])]  # fmt: skip
    if time_column is None and dates:
        named = [c for c in dates if DATE_NAME.search(c)] or dates
        time_column = named[0]
        if len(dates) > 1:
            out.checks.append(
                f"time_column: {time_column} chosen of {dates}; the others are ignored"
            )
    numeric: dict[str, dict[str, Any]] = {}
    categorical: dict[str, Any] = {}
    for col in columns:
        if col in (id_column, target, time_column):
            continue
        if col in row_numbers:
            out.ignored[col] = "a row number (an index saved with the file)"
            continue
        values = frame[col]
        if col in dates:
            out.ignored[col] = "a second date column"
            continue
        if pd.api.types.is_bool_dtype(values):
            values = values.astype("Int64")
        if pd.api.types.is_numeric_dtype(values):
            present = values.dropna()
            if present.empty:
                out.ignored[col] = "always empty"
                continue
            integer = _whole(present)
            low, high = _bounds(present, integer)
            spec: dict[str, Any] = {"min": low, "max": high}
            if integer:
                spec["integer"] = True
            if values.isna().any():
                spec["nullable"] = True
            numeric[col] = spec
            continue
        levels = values.dropna().astype(str)
        distinct = levels.value_counts()
        if len(distinct) > MAX_LEVELS:
            out.ignored[col] = f"text with {len(distinct):,} distinct values: not a category"
            continue
        ordered = sorted(distinct.index.map(_level), key=str)
        spec = {"levels": ordered, "nullable": True} if values.isna().any() else ordered
        categorical[col] = spec
    protected = [c for c in [*numeric, *categorical] if PROTECTED_NAME.search(c)]
    if protected:
        out.checks.append(f"protected: {protected} look like protected attributes by name; they are "
                          "kept out of the model and used for fairness reports. Remove any that are not.")  # fmt: skip
    data: dict[str, Any] = {"raw_dir": raw_dir, "raw_file": raw_file, "id_column": id_column,
                            "target": target, **({"target_labels": labels} if labels else {}),
                            "time_column": time_column, "numeric": numeric,
                            "categorical": categorical, "protected": protected}  # fmt: skip
    if out.ignored:
        data["ignore"] = list(out.ignored)
    out.data = data
    settings = DataSettings.model_validate(data)
    rate = out.default_rate = float(target_codes(frame[target], settings).mean())
    out.checks.append(f"target: {target} (default rate {rate:.1%}); id_column: {id_column}")
    return out


def _target_labels(values: pd.Series, target: str, out: Draft) -> dict[str, int]:
    """{} for a 0/1 target; else which of its two values is the default (1): the one named
    like a default (`bad`, `yes`, ...), or the rarer one, flagged for a person to confirm."""
    distinct = values.dropna().unique()
    if set(pd.to_numeric(pd.Series(distinct), errors="coerce")) == {0, 1}:
        return {}
    if len(distinct) != 2 or values.isna().any():
        shown = sorted(map(str, distinct))[:5]
        raise DataContractError(f"target {target!r} holds {len(distinct)} values {shown}"
                                f"{' and gaps' if values.isna().any() else ''}: riskloop needs two, "
                                "one meaning default")  # fmt: skip
    written = {as_label(v): v for v in distinct}
    named = [k for k in written if DEFAULT_LABEL.fullmatch(k)]
    if len(named) == 1:
        default, why = named[0], "named like a default"
    else:
        counts = values.map(as_label).value_counts()
        default = str(counts.idxmin())
        why = f"the rarer value, {counts[default] / len(values):.0%} of rows"
    repaid = next(k for k in written if k != default)
    out.checks.append(f"target_labels: {default!r} -> 1 (default; {why}), {repaid!r} -> 0: swap the "
                      "numbers if that is the wrong way round")  # fmt: skip
    return {default: 1, repaid: 0}


# ------------------------------------------------------------------ params.yaml
def stale_sections(params: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Dotted keys of settings that name columns the new data does not declare."""
    known = {*data["numeric"], *data["categorical"]}
    stale = []
    if (params.get("features") or {}).get("repayment"):
        stale.append("features.repayment")
    for key, cols in (("train.monotone_constraints", (params.get("train") or {}).get("monotone_constraints")),
                      ("monitoring.psi.key_features", ((params.get("monitoring") or {}).get("psi") or {}).get("key_features"))):  # fmt: skip
        if cols and any(c not in known for c in cols):
            stale.append(key)
    return stale


_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def _quoted(value: Any) -> Any:
    """A text level or column name as YAML reads it back unchanged: quoted unless a plain
    word (`(vacation?)`, `a: b`, `no` or a trailing space would otherwise change or break)."""
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    if isinstance(value, str) and not (
        _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS
    ):
        return SingleQuotedScalarString(value)
    return value


def write_params(path: Path, result: Draft) -> list[str]:
    """Put the draft into params.yaml (comments elsewhere kept); returns what it dropped or
    changed besides the data section, one sentence each."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml.load(path.read_text())
    plain = _plain(doc)
    dropped = stale_sections(plain, result.data)
    changed: list[str] = []  # settings fitted to the previous data, made relative to this one
    data = CommentedMap()
    for key, value in result.data.items():
        if key == "categorical":
            cats = CommentedMap()
            for col, spec in value.items():
                levels = spec["levels"] if isinstance(spec, dict) else spec
                seq = CommentedSeq([_quoted(v) for v in levels])
                seq.fa.set_flow_style()
                if isinstance(spec, dict):
                    inner = CommentedMap(levels=seq, nullable=True)
                    inner.fa.set_flow_style()
                    cats[_quoted(col)] = inner
                else:
                    cats[_quoted(col)] = seq
            data[key] = cats
        elif key == "numeric":
            nums = CommentedMap()
            for col, spec in value.items():
                inner = CommentedMap(spec)
                inner.fa.set_flow_style()
                nums[_quoted(col)] = inner
            data[key] = nums
        elif key == "target_labels":
            labels = CommentedMap((_quoted(k), v) for k, v in value.items())
            labels.fa.set_flow_style()
            data[key] = labels
        elif isinstance(value, list):
            seq = CommentedSeq([_quoted(v) for v in value])
            seq.fa.set_flow_style()
            data[key] = seq
        else:
            data[key] = _quoted(value)
    doc["data"] = data
    doc.ca.items.pop("data", None)  # the previous dataset's comments
    note = ["Drafted by `riskloop init-data`: check the CHECK lines, then edit.",
            *(f"CHECK {c}" for c in result.checks)]  # fmt: skip
    data.yaml_set_start_comment("\n".join(note), indent=2)
    for key in dropped:
        parent, _, leaf = key.rpartition(".")
        node = doc
        for part in parent.split("."):
            node = node[part]
        if leaf == "repayment":
            node[leaf] = None
        else:
            del node[leaf]
    promotion = doc.get("promotion")
    if promotion is not None and promotion.get("min_auc") is not None:
        # the shipped floor is the shipped data's: a new dataset's attainable AUC is unknown
        promotion["min_auc"] = None
        promotion["min_auc_over_baseline"] = 0.0
        changed.append(
            "promotion.min_auc: now min_auc_over_baseline 0.0 (beat a logistic baseline)"
        )
    decisions = (doc.get("serving") or {}).get("decisions")
    if decisions is not None and all(isinstance(v, int) for v in decisions.values()):
        # the shipped cuts are risk scores fitted to the shipped data's default rate; shares
        # of the model's own test split follow the new data: decline as many as default
        decline = round(min(max(result.default_rate, 0.01), 0.5), 2)
        review = round(min(2 * decline, 0.9), 2)
        for key, share in (("review_from", review), ("decline_from", decline)):
            cut = CommentedMap(riskiest=share)
            cut.fa.set_flow_style()
            decisions[key] = cut
        changed.append(f"serving.decisions: now relative, decline the riskiest {decline:.0%} of the "
                       f"model's test split, review the next {review - decline:.0%}")  # fmt: skip
    serving = doc.get("serving")
    if serving is not None:
        # the previous dataset's texts name its features: one neutral draft per new input
        texts = CommentedMap((_quoted(k), v) for k, v in draft_reason_texts(result.data).items())
        serving["reason_texts"] = texts
        serving.yaml_set_comment_before_after_key(
            "reason_texts", before="CHECK reason_texts: drafted from the column names; write the "
            "reason a declined applicant reads", indent=2)  # fmt: skip
        changed.append(f"serving.reason_texts: {len(texts)} drafts from the column names: "
                       "write the reason a declined applicant reads")  # fmt: skip
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    return [f"dropped {key}: it names columns of the previous dataset" for key in dropped] + changed


def draft_reason_texts(data: dict[str, Any]) -> dict[str, str]:
    """A neutral text per model input (a one-hot group by its name): the column name in words."""
    from riskloop.settings import DataSettings

    settings = DataSettings.model_validate(data)
    group_of = {m: g for g, members in settings.onehot.items() for m in members}
    names = dict.fromkeys(group_of.get(c, c) for c in settings.model_input_columns)
    return {n: re.sub(r"[_\-\s]+", " ", n).strip().capitalize() for n in names}


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="riskloop init-data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("file", type=Path, help="the CSV or Parquet file (put it under data/raw/)")
    ap.add_argument("--id", dest="id_column", help="the id column, when the guess is ambiguous")
    ap.add_argument(
        "--target", help="the target column (two values; 1 or a value like `bad` = default)"
    )
    ap.add_argument("--time-column", help="the date column for an out-of-time split")
    ap.add_argument("--write", type=Path, metavar="PARAMS",
                    help="write the draft into this params.yaml (else print it)")  # fmt: skip
    args = ap.parse_args(argv)
    frame = read_table(args.file)
    raw_dir = args.file.parent.as_posix()
    result = draft(frame, args.file.name, raw_dir, args.id_column, args.target, args.time_column)
    for col, why in result.ignored.items():
        print(f"{'# ' if args.write is None else ''}ignore {col}: {why}")
    if args.write is None:  # the draft as YAML, notes as comments: `> draft.yaml` keeps both
        import yaml

        for line in result.checks:
            print(f"# CHECK {line}")
        print(
            yaml.safe_dump(
                {"data": result.data}, sort_keys=False, default_flow_style=None, width=120
            )
        )
        return
    for line in result.checks:
        print(f"CHECK {line}")
    if not args.write.exists():
        raise SettingsError(f"{args.write} not found")
    for line in write_params(args.write, result):
        print(line)
    print(f"wrote the data section of {args.write} ({len(result.data['numeric'])} numeric, "
          f"{len(result.data['categorical'])} categorical columns)")  # fmt: skip
