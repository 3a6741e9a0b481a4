"""Pure data shaping for a monitoring run: which columns are watched, and the current and
reference frames in one layout (features, protected attributes, score, predicted-default
flag, outcome). Everything comes from the champion: its feature builder featurizes the
window, its contract codes the protected attributes, its out-of-sample reference is the
baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import Contract
from monitoring.report import INTERVENED, PREDICTED_DEFAULT, SCORE, TARGET, Frames
from riskloop.package import REFERENCE_LABEL, REFERENCE_SCORE
from riskloop.settings import DecisionSettings
from serving.scoring import cutoffs, risk_scores


def monitored_columns(feature_names: list[str], contract: Contract) -> list[str]:
    """The model's features plus the protected attributes: the model never sees those, but a
    shift in who applies (age, sex, marital status) is drift a lender must know about."""
    return list(feature_names) + [c for c in contract.protected_columns if c not in feature_names]


def predicted_default(p: np.ndarray, decline_from: int) -> np.ndarray:
    """1 where the service's decision is decline (its risk_score >= decline_from)."""
    return (risk_scores(p) >= decline_from).astype(int)


def protected_coverage(frame: pd.DataFrame, contract: Contract) -> dict[str, float]:
    """Share of rows that carry each protected attribute (a one-hot group: any member)."""
    out = {}
    for name in contract.data.protected:
        cols = contract.data.onehot.get(name, [name])
        present = frame.reindex(columns=cols).notna().any(axis=1)
        out[name] = float(present.mean()) if len(frame) else 0.0
    return out


def build_frames(window: pd.DataFrame, reference: pd.DataFrame, builder, contract: Contract,
                 decisions: DecisionSettings, protected_min_rows: int) -> Frames:  # fmt: skip
    """`window` from monitoring.records.load_window (protected attributes may be absent);
    `reference` is the champion's out-of-sample reference (features, raw protected
    attributes, score, label); `decisions` resolve against the reference's scores as the
    service resolves them for this model. A protected column is checked for drift when at least
    `protected_min_rows` rows on each side carry it; its coverage is reported either way."""
    features = builder.feature_names_
    protected = [c for c in contract.protected_columns if c not in features]
    current = builder.transform(window).reset_index(drop=True)
    current[protected] = contract.coded(window.reindex(columns=protected), protected).to_numpy()
    p = window[SCORE].to_numpy(dtype=float)
    ref_p = reference[REFERENCE_SCORE].to_numpy(dtype=float)
    decline_from = cutoffs(decisions, lambda: ref_p).decline_from
    current[SCORE] = p
    current[PREDICTED_DEFAULT] = predicted_default(p, decline_from)
    current[TARGET] = window[TARGET].to_numpy(dtype=float)
    current[INTERVENED] = window[INTERVENED].to_numpy(dtype=int)
    ref = reference[features].reset_index(drop=True).copy()
    ref[protected] = contract.coded(reference.reindex(columns=protected), protected).to_numpy()
    ref[SCORE] = ref_p
    ref[PREDICTED_DEFAULT] = predicted_default(ref_p, decline_from)
    ref[TARGET] = reference[REFERENCE_LABEL].to_numpy(dtype=float)
    ref[INTERVENED] = 0
    watched = [c for c in protected if current[c].notna().sum() >= protected_min_rows
               and ref[c].notna().sum() >= protected_min_rows]  # fmt: skip
    # categorical columns are compared (and shown) as their levels, never as the codes the
    # model reads: drift of `home_ownership` is a shift between `rent` and `own`
    levels = contract.data.levels
    categorical = tuple(c for c in (*features, *protected) if c in levels)
    for frame in (current, ref):
        for col in categorical:
            frame[col] = as_levels(frame[col], levels[col])
    return Frames(current=current, reference=ref, columns=(*features, *watched),
                  protected=tuple(protected), coverage=protected_coverage(window, contract),
                  categorical=categorical)  # fmt: skip


def as_levels(codes: pd.Series, levels: list) -> pd.Series:
    """Codes (a level's position; NaN missing) -> the levels as text (None missing)."""
    names = np.array([str(v) for v in levels] + [None], dtype=object)
    index = codes.to_numpy(dtype=float)
    return pd.Series(
        names[np.where(np.isnan(index), len(levels), index).astype(int)], index=codes.index
    )
