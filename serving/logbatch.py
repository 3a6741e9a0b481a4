"""A block of prediction-log rows as columns: what the service hands the log writer for each
scored batch (serving/logwriter.py). Kept apart from serving/store.py so that the service
module, which BentoML's parent process imports too, does not load SQLAlchemy for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class PredictionColumns:
    """Prediction-log rows as columns, the way the service produces them: one timestamp and
    model for the batch, one list per column, `inputs` and `reasons` already JSON text. The
    log writer inserts these without building a dict per row."""

    created_at: str  # ISO 8601
    model_name: str
    model_version: str
    prediction_id: list[str]
    request_id: list[str | None]
    customer_id: list[str | None]
    inputs: list[str]
    probability: list[float]
    risk_score: list[int]
    risk_band: list[str]
    decision: list[str]
    reasons: list[str | None]
    interventions: list[tuple[int, str]] = field(default_factory=list)  # (row, action)

    def __len__(self) -> int:
        return len(self.prediction_id)

    def rows(self) -> list[dict[str, Any]]:
        """JSON-safe dict rows, as `submit` takes them (spool files, PostgreSQL, retries)."""
        per_row = zip(self.prediction_id, self.request_id, self.customer_id, self.inputs, self.probability,
                      self.risk_score, self.risk_band, self.decision, self.reasons, strict=True)  # fmt: skip
        rows = [{"prediction_id": pid, "created_at": self.created_at, "request_id": req,
                 "model_name": self.model_name, "model_version": self.model_version, "customer_id": cid,
                 "inputs": orjson.loads(inputs), "probability": p, "risk_score": score, "risk_band": band,
                 "decision": decision, "reasons": None if reasons is None else orjson.loads(reasons)}
                for pid, req, cid, inputs, p, score, band, decision, reasons in per_row]  # fmt: skip
        for i, action in self.interventions:
            rows[i]["intervention"] = action
        return rows

    def to_json(self) -> bytes:
        """One journal line (serving/journal.py): the block as it is, no dict per row."""
        return orjson.dumps({"columns": self.__dict__})

    @classmethod
    def from_json(cls, columns: dict[str, Any]) -> PredictionColumns:
        """The block a journal line holds (`columns`: the object `to_json` wrote)."""
        return cls(
            **{**columns, "interventions": [tuple(i) for i in columns.get("interventions", [])]}
        )

    def intervention_rows(self) -> list[dict[str, Any]]:
        """The interventions this block triggered, as the store records them."""
        return [{"customer_id": self.customer_id[i], "prediction_id": self.prediction_id[i],
                 "risk_score": self.risk_score[i], "risk_band": self.risk_band[i], "action": action,
                 "created_at": self.created_at} for i, action in self.interventions]  # fmt: skip
