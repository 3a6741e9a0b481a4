"""Traffic scenarios for `make traffic`: pure transforms of held-out raw rows (seeded).

- stable: the rows as they are (no shift: the false-alarm check);
- recession: with monthly repayment history (`features.repayment`), credit limits cut, bills
  up, payments down, repayment delays up; without it, the population tilts towards those who
  defaulted (each defaulter 4x as likely to be drawn), which moves every feature the way the
  data itself says risk moves;
- new_segment: a younger population (the first protected numeric column, age in both shipped
  shapes, in its lowest quartile; else the first numeric column), and with repayment history
  lower limits, bills and payments to match.
Every output row still satisfies the data contract, so the service scores it."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from riskloop.settings import DataSettings, FeatureSettings

Scenario = Literal["stable", "recession", "new_segment"]
SCENARIOS: tuple[str, ...] = ("stable", "recession", "new_segment")


def _clip(frame: pd.DataFrame, data: DataSettings) -> pd.DataFrame:
    for col, rule in data.numeric.items():
        if col in frame:
            frame[col] = frame[col].clip(lower=rule.min, upper=rule.max)
            if rule.integer:
                frame[col] = frame[col].round().astype(int)
    return frame


def _tilted(rows: pd.DataFrame, rng: np.random.Generator, weight: np.ndarray,
            id_column: str) -> pd.DataFrame:  # fmt: skip
    """The same customers (ids), each given the values of a row drawn with replacement in
    proportion to `weight`."""
    picked = rng.choice(len(rows), size=len(rows), replace=True, p=weight / weight.sum())
    out = rows.iloc[picked].reset_index(drop=True)
    out[id_column] = rows[id_column].to_numpy()
    return out


def segment_column(data: DataSettings) -> str:
    """The column new_segment draws a young population on."""
    protected = [c for c in data.protected_columns if c in data.numeric]
    return (protected or list(data.numeric))[0]


def recession(rows: pd.DataFrame, rng: np.random.Generator, data: DataSettings,
              features: FeatureSettings) -> pd.DataFrame:  # fmt: skip
    rep = features.repayment
    if rep is None or rep.limit_column is None:
        return _tilted(
            rows, rng, np.where(rows[data.target].to_numpy() == 1, 4.0, 1.0), data.id_column
        )
    out = rows.copy()
    n = len(out)
    out[rep.limit_column] = (
        out[rep.limit_column] * rng.uniform(0.5, 0.8, n) / 10_000
    ).round() * 10_000
    out[rep.limit_column] = out[rep.limit_column].clip(lower=10_000)
    for col in rep.bill_columns:
        out[col] = (out[col] * rng.uniform(1.1, 1.5, n)).round()
    for col in rep.payment_columns:
        out[col] = (out[col] * rng.uniform(0.4, 0.9, n)).round()
    # A third of customers slip one or two more months behind, most recent months first.
    late = rng.random(n) < 0.35
    slip = rng.integers(1, 3, n)
    for k, col in enumerate(rep.status_columns):
        worse = np.maximum(out[col].to_numpy(), 0) + slip
        fade = late & (rng.random(n) < 1.0 - 0.12 * k)
        out[col] = np.where(fade, worse, out[col])
    return _clip(out, data)


def new_segment(rows: pd.DataFrame, rng: np.random.Generator, data: DataSettings,
                features: FeatureSettings) -> pd.DataFrame:  # fmt: skip
    rep, col = features.repayment, segment_column(data)
    values = rows[col].to_numpy(dtype="float64")
    young = values <= np.nanquantile(values, 0.25)
    out = _tilted(rows, rng, young.astype("float64"), data.id_column)
    if rep is None or rep.limit_column is None:
        return out
    n = len(out)
    scale = rng.uniform(0.25, 0.5, n)
    out[rep.limit_column] = (out[rep.limit_column] * scale / 10_000).round().clip(lower=1) * 10_000
    for col in [*rep.bill_columns, *rep.payment_columns]:
        out[col] = (out[col] * scale).round()
    return _clip(out, data)


def apply(name: str, rows: pd.DataFrame, seed: int, data: DataSettings,
          features: FeatureSettings) -> pd.DataFrame:  # fmt: skip
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    rng = np.random.default_rng(seed)
    if name == "stable":
        return rows.copy()
    return (recession if name == "recession" else new_segment)(rows, rng, data, features)


def sample(held_out: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows of the held-out split (with replacement only when n exceeds it)."""
    return held_out.sample(n=n, replace=n > len(held_out), random_state=seed).reset_index(drop=True)
