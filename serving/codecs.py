"""The served model's data contract compiled into every request decoder at once: the pydantic
models (FastAPI routes, OpenAPI, 422s naming each field), their strict msgspec twin (the
`/predict` fast path) and the Arrow codec, plus the one way each decoded record becomes a
model-input row (categorical levels as the codes the model was trained with).

All of them come from the model's own `contract.json`, never from the working tree's
params.yaml, and serving checks at load that they decode the model's golden batch into the
exact features training computed (serving/golden.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from msgspec.structs import astuple

from features.contract import Contract, onehot_error
from riskloop.settings import ServingSettings
from serving.arrowio import ArrowCodec
from serving.fastpath import record_struct, request_struct
from serving.schemas import (
    attribute_names,
    customer_request_model,
    predict_request_model,
    record_model,
)


class Codecs:
    def __init__(self, contract: Contract, serving: ServingSettings, example: dict[str, Any]) -> None:  # fmt: skip
        self.contract = contract
        self.attrs = attribute_names(contract)
        self.renamed = any(a != c for c, a in self.attrs.items())
        self.RecordModel = record_model(contract)
        self.PredictRequest = predict_request_model(self.RecordModel, serving, example)
        self.PredictCustomerRequest = customer_request_model(serving)
        self.RecordStrict = record_struct(contract)
        self.decoder = msgspec.json.Decoder(request_struct(self.RecordStrict, serving))
        self.arrow = ArrowCodec(contract, serving)
        self.n_inputs = len(contract.model_inputs)
        self._encode = contract.row_encoder()
        self._input_attrs = [self.attrs[c] for c in contract.model_inputs]
        # one-hot groups as positions in the strict struct's tuple (its field order)
        order = {a: i for i, a in enumerate(self.RecordStrict.__struct_fields__)}
        self._groups = [(g, [order[self.attrs[m]] for m in members],
                         all(contract.rules[m].nullable for m in members))
                        for g, members in contract.data.onehot.items()]  # fmt: skip

    # ------------------------------------------------------------------ model-input rows
    def strict_matrix(self, records: list) -> np.ndarray | None:
        """Model-input matrix of records the strict decoder accepted; None when a one-hot
        group breaks its rule (msgspec cannot check across fields): pydantic then answers."""
        rows = [astuple(r) for r in records]
        for group, positions, optional in self._groups:
            for row in rows:
                if onehot_error(group, [row[p] for p in positions], optional):
                    return None
        return self._encode([row[: self.n_inputs] for row in rows])

    def model_matrix(self, records: list) -> np.ndarray:
        """Model-input matrix of pydantic-validated records."""
        return self._encode([[getattr(r, a) for a in self._input_attrs] for r in records])

    def inputs_of(self, record: Any) -> dict[str, Any]:
        """What the prediction log keeps of a record: every given field (by its column name)
        except the customer id."""
        if isinstance(record, msgspec.Struct) and not self.renamed:
            inputs = msgspec.structs.asdict(record)  # a fresh dict, built in C
            del inputs["customer_id"]
            if None not in inputs.values():  # the usual case: no optional field left out
                return inputs
            return {k: v for k, v in inputs.items() if v is not None}
        return {c: v for c, a in self.attrs.items() if (v := getattr(record, a)) is not None}
