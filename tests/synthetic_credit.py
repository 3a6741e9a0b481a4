"""A second dataset shape, generated: what a lender's own export often looks like, and
nothing like the Taiwan file riskloop ships with. Text categories (one level with a hyphen),
missing values in numeric and text columns, a column name with a hyphen, an application date,
string ids, candidate protected attributes by name, a target written "yes"/"no" (words YAML
would read as booleans), and no monthly repayment history. Seeded and small, so a test can take it from `riskloop init-data` to a served,
monitored, retrained model.

    python -m tests.synthetic_credit data/raw/applications.csv --rows 4000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

HOME = ["own", "rent", "mortgage", "other"]
PURPOSE = ["car", "debt-consolidation", "home", "education", "other"]


def generate(rows: int = 4000, seed: int = 7, start: str = "2023-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(19, 76, rows)
    income = np.round(rng.lognormal(10.4, 0.5, rows), -1)
    amount = np.round(income * rng.uniform(0.05, 0.9, rows), -1)
    term = rng.choice([36, 60], rows, p=[0.7, 0.3])
    home = rng.choice(HOME, rows, p=[0.25, 0.4, 0.3, 0.05])
    purpose = rng.choice(PURPOSE, rows, p=[0.2, 0.35, 0.15, 0.1, 0.2])
    years = rng.integers(0, 31, rows).astype(float)
    inquiries = rng.poisson(1.2, rows)
    dti = np.round(rng.uniform(0, 60, rows), 1)
    gender = rng.choice(["female", "male"], rows)
    logit = (
        -2.2
        + 1.1 * (amount / income)
        + 0.025 * (dti - 30)
        + 0.25 * inquiries
        - 0.03 * np.nan_to_num(years, nan=5)
        + 0.4 * (term == 60)
        + np.select([home == "rent", home == "own"], [0.35, -0.3], 0.0)
        + np.select([purpose == "debt-consolidation", purpose == "car"], [0.3, -0.2], 0.0)
        - 0.01 * (age - 40)
        # what a linear score misses: a stretched borrower with fresh credit searches, and
        # risk that rises again with age
        + 0.9 * ((dti > 40) & (inquiries >= 3))
        + 0.6 * (age > 65)
    )
    default = rng.random(rows) < 1 / (1 + np.exp(-logit))
    # missing values as exports have them: income not stated, employment unknown, purpose blank
    income[rng.random(rows) < 0.06] = np.nan
    years[rng.random(rows) < 0.1] = np.nan
    purpose = np.where(rng.random(rows) < 0.04, None, purpose)
    dates = pd.Timestamp(start) + pd.to_timedelta(np.sort(rng.integers(0, 730, rows)), unit="D")
    return pd.DataFrame({
        "application_id": [f"APP-{i:06d}" for i in range(rows)],
        "application_date": dates.strftime("%Y-%m-%d"),
        "age": age,
        "gender": gender,
        "annual_income": income,
        "loan_amount": amount,
        "term_months": term,
        "home_ownership": home,
        "purpose": purpose,
        "employment_years": years,
        "recent_inquiries": inquiries,
        "debt-to-income": dti,
        "defaulted": np.where(default, "yes", "no"),
    })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="CSV file to write")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    generate(args.rows, args.seed).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
