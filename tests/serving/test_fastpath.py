"""The /predict fast path: the strict msgspec decoder never accepts what the pydantic request
model refuses, and reads the same values; ids; the micro-batcher's batching and chunking."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import Contract
from riskloop.settings import load_params
from serving.codecs import Codecs
from serving.fastpath import MicroBatcher, new_ids
from tests.conftest import ROOT
from training.package import to_record

# a real row of the dataset (the service's example is its model's first golden row, like this)
_DATA = load_params(ROOT / "params.yaml").data
EXAMPLE = to_record(Contract(_DATA), pd.read_csv(ROOT / _DATA.raw_path, nrows=1).iloc[0])


@pytest.fixture(scope="module")
def codecs(params):
    return Codecs(Contract(params.data), params.serving, EXAMPLE)


@pytest.fixture(scope="module")
def models(codecs):
    return codecs.PredictRequest, codecs.decoder


VALUES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
          | st.text(max_size=6) | st.sampled_from([0, 1, 1.0, 0.5, -2, 9, 10, 120, 121, 18, 17, "1", "a\n"]))  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from([*EXAMPLE, "customer_id", "unknown"]), VALUES, max_size=4),
       drop=st.lists(st.sampled_from(list(EXAMPLE)), max_size=2),
       extra=st.dictionaries(st.sampled_from(["request_id", "explain"]),
                             st.none() | st.sampled_from(["top", "all", "none", "x" * 65, "r-1", 3]), max_size=2))  # fmt: skip
def test_strict_decoder_accepts_only_what_pydantic_accepts(codecs, models, changes, drop, extra):
    pydantic_model, decoder = models
    record = {**EXAMPLE, **changes}
    for key in drop:
        record.pop(key, None)
    body = json.dumps({"records": [record], **extra}).encode()
    try:
        fast = decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return  # refused: the FastAPI route decides (and names the field)
    values = codecs.strict_matrix(fast.records)
    if values is None:
        return  # a one-hot group broke its rule: the FastAPI route answers too
    slow = pydantic_model.model_validate_json(body)  # must not raise
    np.testing.assert_array_equal(values, codecs.model_matrix(slow.records))
    assert (fast.explain, fast.request_id) == (slow.explain, slow.request_id)
    got, want = codecs.inputs_of(fast.records[0]), codecs.inputs_of(slow.records[0])
    assert got == want and all(type(got[k]) is type(want[k]) for k in got)
    assert fast.records[0].customer_id == slow.records[0].customer_id


def test_strict_decoder_reads_model_inputs_first(models, codecs):
    _, decoder = models
    rec = decoder.decode(json.dumps({"records": [EXAMPLE]}).encode()).records[0]
    inputs = codecs.contract.model_inputs
    assert msgspec.structs.astuple(rec)[: len(inputs)] == tuple(EXAMPLE[c] for c in inputs)


def test_new_ids_are_time_ordered_uuid7_hex():
    before = time.time_ns() // 1_000_000
    ids = new_ids(1000)
    later = new_ids(3)
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}", i) for i in ids)
    assert ids == sorted(ids) and later[0][:12] >= ids[-1][:12]  # ascending within and across calls
    assert uuid.UUID(ids[0]).version == 7
    assert abs(int(ids[0][:12], 16) - before) < 5_000  # milliseconds since the epoch


def test_batcher_batches_concurrent_jobs_and_chunks_large_ones():
    seen: list[list[int]] = []

    def compute(jobs):
        seen.append([len(j) for j in jobs])
        return [[float(v) for v in j.values[:, 0]] for j in jobs]

    async def main():
        batcher = MicroBatcher(compute, max_rows=100, max_explain_rows=8)

        async def one(n, explain):
            values = np.arange(n, dtype=float).reshape(n, 1)
            parts = await batcher.submit(batcher.jobs(values, list(range(n)), explain, None))
            return [v for part in parts for v in part]

        results = await asyncio.gather(
            one(1, "none"), one(1, "top"), one(230, "none"), one(20, "top")
        )
        batcher.close()
        return results

    small, small_top, large, large_top = asyncio.run(main())
    assert small == [0.0] and small_top == [0.0]
    assert large == [float(i) for i in range(230)] and large_top == [float(i) for i in range(20)]
    assert max(sum(b) for b in seen) <= 100
    assert all(n <= 50 for b in seen for n in b)  # large requests are queued in chunks
    assert len(seen) < 1 + 1 + 5 + 5  # concurrent jobs shared batches
