from __future__ import annotations

import pandas as pd
import pytest

from features.contract import Contract


@pytest.fixture(scope="session")
def records(raw, params) -> pd.DataFrame:
    """Real applicant records: the contract's fields of the shipped data's first rows."""
    return raw[list(Contract(params.data).fields)].head(3000)
