"""score-batch's prediction ids: 32 hex characters that rise with a run's rows (partition,
then row), the same on a retry, different across runs, and a uniform random part where the
window sample reads it."""

from __future__ import annotations

import pytest

from monitoring import records
from pipelines import batch_log


def test_ids_rise_with_the_rows_and_repeat_on_a_retry():
    first = batch_log.prediction_ids("run-a", 0, 0, 3_000)
    second = batch_log.prediction_ids("run-a", 1, 0, 3_000)
    ids = first + second
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert batch_log.prediction_ids("run-a", 1, 1_000, 10) == second[1_000:1_010]  # a retried chunk
    assert not set(first) & set(batch_log.prediction_ids("run-b", 0, 0, 3_000))


def test_the_sampled_characters_are_uniform():
    ids = batch_log.prediction_ids("run-a", 3, 0, 20_000)
    kept = sum(records.in_sample(i, records.sample_cut(0.25)) for i in ids)
    assert abs(kept - 5_000) < 5 * (20_000 * 0.25 * 0.75) ** 0.5  # binomial spread


@pytest.mark.parametrize(("part", "first", "rows"), [(-1, 0, 1), (batch_log.MAX_PARTS, 0, 1),
                                                      (0, batch_log.MAX_ROWS - 1, 2)])  # fmt: skip
def test_a_place_the_id_cannot_hold_is_refused(part, first, rows):
    with pytest.raises(ValueError, match="ids hold"):
        batch_log.prediction_ids("run-a", part, first, rows)
