from __future__ import annotations

import pandas as pd
import pytest

from features.contract import Contract


@pytest.fixture(scope="session")
def records(raw, params) -> pd.DataFrame:
    """Real applicant records: the contract's fields of the shipped data's first rows."""
    return raw[list(Contract(params.data).fields)].head(3000)


from tests.serving.conftest import champion  # noqa: E402,F401 - the served model the pages talk to
