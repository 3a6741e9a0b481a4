"""Coverage-guided fuzzing (atheris, libFuzzer) of the service's request decoders, in process:
the strict msgspec JSON decoder with the pydantic route behind it, and the Arrow IPC codec.

Every input must end in one of the outcomes the service turns into an answer: accepted (then
the model-input matrix is built, as the service does), or refused with the decoder's own error
(a 4xx). Anything else (another exception, a crash, a hang) is a finding; libFuzzer writes the
input to `<artifact_prefix>crash-…`, which belongs in tests/serving/crashers/ as a regression.

    python -m tests.serving.fuzz_decoders json|arrow [libFuzzer flags, e.g. -max_total_time=60]
"""

from __future__ import annotations

import contextlib
import json
import sys
from functools import cache

import atheris

with atheris.instrument_imports(include=["serving", "features"]):
    import pandas as pd
    from pydantic import ValidationError

    from features.contract import Contract
    from riskloop.settings import load_params
    from serving import arrowio
    from serving.codecs import Codecs
    from serving.fastpath import not_utf8, strict_decode
    from tests.conftest import ROOT
    from training.package import to_record


@cache
def codecs() -> Codecs:
    params = load_params(ROOT / "params.yaml")
    contract = Contract(params.data)
    rows = pd.read_csv(ROOT / params.data.raw_path, nrows=8)
    example = to_record(contract, rows.iloc[0])
    return Codecs(contract, params.serving, example)


def seeds() -> dict[str, list[bytes]]:
    """Valid bodies to start from: one and several records, with and without customer ids."""
    import orjson

    params = load_params(ROOT / "params.yaml")
    contract = codecs().contract
    rows = pd.read_csv(ROOT / params.data.raw_path, nrows=8)
    records = [to_record(contract, r) for _, r in rows.iterrows()]
    with_ids = [{**r, "customer_id": f"c-{i}"} for i, r in enumerate(records)]
    json_seeds = [orjson.dumps({"records": records[:1]}),
                  orjson.dumps({"records": with_ids, "request_id": "r1", "explain": "all"})]  # fmt: skip
    arrow_seeds = [arrowio.stream_bytes(arrowio.records_table(contract, records[:1])),
                   arrowio.stream_bytes(arrowio.records_table(contract, with_ids))]  # fmt: skip
    return {"json": json_seeds, "arrow": arrow_seeds}


def decode_json(data: bytes) -> None:
    """What the gateway and the FastAPI route do with a JSON body, in their order."""
    c = codecs()
    request = strict_decode(c.decoder, data)
    if request is not None and c.strict_matrix(request.records) is not None:
        return
    if not_utf8(data) is not None:
        return  # the gateway's 400
    try:  # FastAPI parses (JSONDecodeError: its 422; any other ValueError: its 400)
        body = c.PredictRequest.model_validate(json.loads(data))
    except (ValueError, ValidationError):
        return
    c.model_matrix(body.records)


def decode_arrow(data: bytes) -> None:
    split = data.find(b"\n")  # the first line plays the query string
    query, body = (data[:split].decode("latin-1"), data[split + 1 :]) if split >= 0 else ("", data)
    with contextlib.suppress(arrowio.ArrowRequestError):
        codecs().arrow.decode(body, query)


TARGETS = {"json": decode_json, "arrow": decode_arrow}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    codecs()  # built before fuzzing starts
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
