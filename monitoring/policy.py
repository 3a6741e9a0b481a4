"""The retrain decision: pure, from the numbers of one monitoring run and the policy in
params.yaml (monitoring:). Every check is reported, triggered or not, so a reader of the
JSON sees how close each one came."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from riskloop.settings import MonitoringSettings

Status = Literal["retrain", "no_retrain", "insufficient_data", "cooldown"]


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float
    triggered: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    status: Status
    retrain: bool
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evidence:
    """What one run measured."""

    rows: int
    drift_share: float
    psi: dict[str, float]  # column -> PSI
    labelled_rows: int
    realized_auc: float | None  # None: too few outcomes, or one class only
    model_age_days: float | None  # None: unknown


def checks(ev: Evidence, policy: MonitoringSettings) -> list[Check]:
    out = [Check("drift_share", ev.drift_share, policy.drift_share, ev.drift_share >= policy.drift_share,
                 f"{ev.drift_share:.0%} of monitored columns drifted (retrain at {policy.drift_share:.0%})")]  # fmt: skip
    for col in policy.psi.key_features:
        value = ev.psi.get(col)
        hit = value is not None and value >= policy.psi.alert
        out.append(Check(f"psi:{col}", value, policy.psi.alert, hit,
                         f"PSI of {col} {value:.3f} (retrain at {policy.psi.alert})" if value is not None
                         else f"PSI of {col}: no values on one side"))  # fmt: skip
    if ev.realized_auc is not None and ev.labelled_rows >= policy.min_labelled:
        hit = ev.realized_auc < policy.auc_floor
        out.append(Check("realized_auc", ev.realized_auc, policy.auc_floor, hit,
                         f"realized AUC {ev.realized_auc:.4f} on {ev.labelled_rows} outcomes "
                         f"(floor {policy.auc_floor})"))  # fmt: skip
    if ev.model_age_days is not None:
        hit = ev.model_age_days > policy.max_model_age_days
        out.append(Check("model_age_days", ev.model_age_days, policy.max_model_age_days, hit,
                         f"champion is {ev.model_age_days:.1f} days old (max {policy.max_model_age_days:g})"))  # fmt: skip
    return out


def decide(
    ev: Evidence,
    policy: MonitoringSettings,
    last_retrain_at: datetime | None,
    now: datetime,
) -> Decision:
    if ev.rows < policy.window.min_rows:
        return Decision("insufficient_data", False,
                        [f"window has {ev.rows} predictions; a decision needs at least "
                         f"{policy.window.min_rows} (monitoring.window.min_rows)"])  # fmt: skip
    results = checks(ev, policy)
    triggered = [c.detail for c in results if c.triggered]
    if not triggered:
        return Decision("no_retrain", False, ["no check triggered"], results)
    cooldown = timedelta(hours=policy.cooldown_hours)
    if last_retrain_at is not None and now - last_retrain_at < cooldown:
        note = (f"cooldown: a retrain was decided at {last_retrain_at.isoformat(timespec='seconds')}, "
                f"within monitoring.cooldown_hours={policy.cooldown_hours:g}")  # fmt: skip
        return Decision("cooldown", False, [*triggered, note], results)
    return Decision("retrain", True, triggered, results)
