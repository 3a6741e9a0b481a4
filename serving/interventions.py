"""Which predictions trigger an intervention (ENABLE_INTERVENTIONS): a customer's record whose
risk_score reaches the threshold and whose band has an action in
`serving.interventions.actions`. Decided in the scoring thread without touching the store.

The store records it when the log writer writes the prediction, in the same transaction and
spooled with it while the store is down: exactly once per prediction, and at most one per
customer within `cooldown_hours` of another (serving/store.py `insert_interventions`), in
whatever order workers and spool replays write. This worker also remembers the customers it
triggered within the cooldown, so its answers do not announce an action it knows the store
will not record; the store's list (GET /interventions) is the record."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from riskloop.settings import InterventionSettings
from serving import metrics
from serving.logbatch import PredictionColumns

REMEMBERED = 100_000  # customers this worker remembers (oldest forgotten first)


class Interventions:
    def __init__(self, settings: InterventionSettings, threshold: int) -> None:
        self.actions, self.threshold = settings.actions, threshold
        self.cooldown_s = settings.cooldown_hours * 3600
        self._recent: OrderedDict[str, float] = OrderedDict()

    def trigger(self, cols: PredictionColumns) -> dict[int, str]:
        """{row: action} for the block's rows that trigger one; queued on the block for the
        log writer to record."""
        out: dict[int, str] = {}
        now = time.monotonic()
        for i in np.flatnonzero(np.asarray(cols.risk_score) >= self.threshold).tolist():
            customer, action = cols.customer_id[i], self.actions.get(cols.risk_band[i])
            if customer is None or action is None:
                continue
            last = self._recent.get(customer)
            if last is not None and now - last < self.cooldown_s:
                continue
            self._recent[customer] = now
            self._recent.move_to_end(customer)
            if len(self._recent) > REMEMBERED:
                self._recent.popitem(last=False)
            out[i] = action
            metrics.INTERVENTIONS.labels(action).inc()
        cols.interventions.extend(out.items())
        return out
