"""The BentoML service that scores applicants and customers with the champion.

Hot routes are FastAPI class views mounted on the BentoML service (`@bentoml.asgi_app`):
they run in BentoML's server and lifecycle but skip its per-API IO-descriptor machinery,
which costs ~0.7 ms a request. Predictions are logged off the request path by a batched
writer that spools to disk when the store is down (serving/logwriter.py).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import bentoml
import msgspec
import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse
from msgspec.structs import astuple

import features.transform  # noqa: F401 - current feature code wins over a model's bundled copy
from riskloop.settings import load_params
from serving import arrowio, metrics, scoring
from serving.config import load_env
from serving.fastpath import (
    Gateway,
    Job,
    MicroBatcher,
    new_ids,
    record_inputs,
    record_struct,
    request_struct,
)
from serving.logbatch import PredictionColumns
from serving.model_tag import model_tag
from serving.schemas import (
    OutcomesRequest,
    Prediction,
    customer_request_model,
    predict_request_model,
    record_model,
)
from serving.scorer import Scorer
from serving.security import FixedWindowLimiter

log = logging.getLogger("riskloop.serving")
HERE = Path(__file__).resolve().parent
PARAMS = load_params(os.environ.get("RISKLOOP_PARAMS", HERE.parent / "params.yaml"))
ENV = load_env()
MODEL_TAG = model_tag(PARAMS.registry.model_name)
EXAMPLE = json.loads((HERE / "example_record.json").read_text())

RecordModel = record_model(PARAMS.data)
PredictRequest = predict_request_model(RecordModel, PARAMS.serving, EXAMPLE)
PredictCustomerRequest = customer_request_model(PARAMS.serving)
# the strict twin for the fast path: model input columns first (see serving/fastpath.py)
RecordStrict = record_struct(PARAMS.data, PARAMS.data.model_input_columns)
PREDICT_DECODER = msgspec.json.Decoder(request_struct(RecordStrict, PARAMS.serving))
ARROW = arrowio.ArrowCodec(PARAMS.data, PARAMS.serving, PARAMS.data.model_input_columns)
_NO_REASONS = "[]"
N_INPUTS = len(PARAMS.data.model_input_columns)
_PREDICT_LATENCY = metrics.LATENCY.labels("predict")  # label lookups cost more than the update
_PREDICT_OK = metrics.REQUESTS.labels("predict", "200")

app = FastAPI(
    title="riskloop scoring", version="1", description="Probability of default with reason codes."
)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field: `records.3.AGE: Input should be less than or equal to 120`."""
    errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"], "type": e["type"]}
              for e in exc.errors()]  # fmt: skip
    metrics.REQUESTS.labels("invalid", "422").inc()
    return JSONResponse({"detail": errors}, status_code=422)


def _offsets(jobs: list[Job]) -> list[int]:
    """Where each job's rows start in the batch matrix."""
    return np.cumsum([0] + [len(j) for j in jobs[:-1]]).tolist()


def _concat(parts: list) -> Any:
    """One column from the columns of a request's jobs (lists, numpy or Arrow arrays)."""
    if isinstance(parts[0], list):
        return [v for part in parts for v in part]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return pa.concat_arrays(parts)


class _State:
    """What the gateway needs from the running service instance."""

    service: RiskService | None = None


@bentoml.service(
    name="riskloop",
    workers=int(os.environ.get("SERVING_WORKERS", "1")),
    traffic={"timeout": 60},
    http={"cors": {"enabled": bool(ENV.cors_origins), "access_control_allow_origins": ENV.cors_origins,
                   "access_control_allow_methods": ["GET", "POST", "OPTIONS"],
                   "access_control_allow_headers": ["content-type", "x-api-key", "authorization"]}},
    logging={"access": {"enabled": ENV.debug}},
    # BentoML wraps every request in an OpenTelemetry span (~25% of a scored request's CPU
    # here) even with no exporter configured; the hot routes skip it unless TRACE_SCORING=true.
    tracing={"excluded_urls": None if os.environ.get("TRACE_SCORING", "").lower() == "true"
             else ["/predict", "/livez", "/readyz", "/metrics"]},
)  # fmt: skip
@bentoml.asgi_app(app, path="/")
class RiskService:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from serving.logwriter import PredictionLogWriter
        from serving.store import PredictionStore, make_engine, upgrade

        pyfunc = bentoml.mlflow.load_model(self.bento_model)
        self.model = pyfunc.unwrap_python_model()
        # one thread per prediction: on 2 cores, more threads make single rows ~10x slower
        self.model.booster.set_param({"nthread": 1})
        self.feature_names = list(self.model.builder.feature_names_)
        # the flattened trees (exact TreeSHAP for reason codes, and small batches' scores),
        # checked against XGBoost on the OpenAPI example (and compiled) before the first request
        example = scoring.inputs_matrix(self.model.builder, [RecordModel(**EXAMPLE)])
        self.scorer = Scorer(self.model.booster, self.model.builder.transform_array(example))
        self.model_name = PARAMS.registry.model_name
        self.model_version = str(self.bento_model.info.labels.get("registry_version", "unknown"))
        url = ENV.store_url()
        try:
            upgrade(url)
        except Exception as exc:
            log.warning(
                "prediction store not migrated at start (%s); scoring continues", type(exc).__name__
            )
        self.store = PredictionStore(make_engine(url))
        self.writer = PredictionLogWriter(url, ENV.spool_path())
        self.batcher = MicroBatcher(self._compute)
        _State.service = self
        # Everything loaded so far (MLflow, pandas, the model...) lives as long as the worker:
        # move it out of the collector's reach, or each full collection walks millions of
        # objects and stalls every in-flight request for hundreds of milliseconds.
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        _State.service = None
        self.batcher.close()
        self.writer.close()

    def __is_ready__(self) -> bool:
        return True

    def __metrics__(self, content: str) -> str:
        # gauges are refreshed by every scrape; the next scrape's collection shows them
        metrics.update_writer_gauges(self.writer.stats())
        return content

    # ------------------------------------------------------------------ scoring
    def _compute(self, jobs: list[Job]) -> list[Any]:
        """One batch, in the scoring thread: every job's rows as one matrix; exact TreeSHAP
        only for the rows whose request asked for reasons. Returns each job's results (dicts
        for the JSON API, columns for a columnar request) and queues the batch's
        prediction-log rows as one block of columns."""
        values = jobs[0].values if len(jobs) == 1 else np.concatenate([j.values for j in jobs])
        feats = self.model.builder.transform_array(values)
        explain_rows = [np.arange(len(j)) + off for j, off in zip(jobs, _offsets(jobs), strict=True)
                        if j.explain != "none"]  # fmt: skip
        contrib, top, p = None, [[]] * len(feats), None
        if explain_rows:
            rows = np.concatenate(explain_rows)
            c, p_explained = self.scorer.explain(feats[rows])
            contrib = np.full((len(feats), c.shape[1]), np.nan)
            contrib[rows] = c
            top = list(top)
            found = scoring.reasons(c, feats[rows], self.feature_names, PARAMS.serving.top_reasons)
            for r, reasons in zip(rows.tolist(), found, strict=True):
                top[r] = reasons
            if p_explained is not None:  # the same pass scored these rows
                p = np.empty(len(feats), dtype=p_explained.dtype)
                p[rows] = p_explained
                rest = np.ones(len(feats), dtype=bool)
                rest[rows] = False
                if rest.any():
                    p[rest] = self.scorer.probabilities(feats[rest])
        if p is None:
            p = self.scorer.probabilities(feats)
        scores = scoring.risk_scores(p)
        bands = scoring.risk_bands(scores, PARAMS.serving.bands)
        decisions = scoring.decisions(scores, PARAMS.serving)
        probs, score_list = p.tolist(), scores.tolist()
        ids = new_ids(len(p))
        log = PredictionColumns(
            created_at=datetime.now(UTC).isoformat(), model_name=self.model_name,
            model_version=self.model_version, prediction_id=ids, request_id=[], customer_id=[],
            inputs=[], probability=probs, risk_score=score_list, risk_band=bands,
            decision=decisions, reasons=[_NO_REASONS if not t else orjson.dumps(t).decode() for t in top],
        )  # fmt: skip
        out, i = [], 0
        for job in jobs:
            n = len(job)
            log.request_id.extend([job.request_id] * n)
            log.customer_id.extend(job.customers)
            part = slice(i, i + n)
            if job.inputs_json is not None:  # columnar request: columnar answer
                log.inputs.extend(job.inputs_json)
                out.append(self._columns(job, part, ids, p, scores, bands, decisions, top, contrib))
            else:
                log.inputs.extend(orjson.dumps(record_inputs(r)).decode() for r in job.records)
                out.append(
                    self._dicts(job, part, ids, probs, score_list, bands, decisions, top, contrib)
                )
            i += n
        self.writer.submit_columns(log)
        # one increment per band: each is a write to prometheus' multiprocess files
        for band, k in Counter(bands).items():
            metrics.PREDICTIONS.labels(band).inc(k)
        return out

    def _dicts(self, job: Job, part: slice, ids, probs, scores, bands, decisions, top, contrib) -> list[dict]:  # fmt: skip
        results = []
        for i, customer in zip(range(part.start, part.stop), job.customers, strict=True):
            result = {"prediction_id": ids[i], "customer_id": customer, "probability_of_default": probs[i],
                      "risk_score": scores[i], "risk_band": bands[i], "decision": decisions[i],
                      "reasons": top[i], "model_name": self.model_name, "model_version": self.model_version}  # fmt: skip
            if job.explain == "all":
                result["base_value"] = float(contrib[i, -1])
                result["contributions"] = dict(
                    zip(self.feature_names, contrib[i, :-1].tolist(), strict=True)
                )
            results.append(result)
        return results

    def _columns(self, job: Job, part: slice, ids, p, scores, bands, decisions, top, contrib) -> dict:  # fmt: skip
        n = part.stop - part.start
        cols = {"prediction_id": ids[part], "customer_id": pa.array(job.customers, pa.string()),
                "probability_of_default": p[part].astype("float64"), "risk_score": scores[part],
                "risk_band": bands[part], "decision": decisions[part],
                "reasons": pa.array(top[part], arrowio.REASONS),
                "model_name": pa.repeat(pa.scalar(self.model_name), n),
                "model_version": pa.repeat(pa.scalar(self.model_version), n)}  # fmt: skip
        if job.explain == "all":
            cols["base_value"] = contrib[part, -1]
            cols.update(
                {f"contribution.{f}": contrib[part, j] for j, f in enumerate(self.feature_names)}
            )
        return cols

    async def score_records(self, records: list, values: np.ndarray, explain: str,
                            request_id: str | None) -> list[dict]:  # fmt: skip
        """Validated records (pydantic or strict msgspec) and their model-input matrix."""
        customers = [r.customer_id for r in records]
        return await self.score(
            self.batcher.jobs(values, customers, explain, request_id, records=records)
        )

    async def score(self, jobs: list[Job]) -> list[Any]:
        """Scores a request's jobs; JSON-API results as one list of dicts."""
        parts = await self.batcher.submit(jobs)
        if jobs[0].inputs_json is not None:
            return parts
        out = parts[0] if len(parts) == 1 else [r for part in parts for r in part]
        if ENV.enable_interventions and any(r["customer_id"] for r in out):
            await anyio.to_thread.run_sync(self._intervene, out)
        return out

    async def predict_fast(self, request: Any) -> bytes:
        """`POST /predict` decoded by the strict decoder (the Gateway's fast path)."""
        start = time.perf_counter()
        records = request.records
        values = np.array([astuple(r)[:N_INPUTS] for r in records], dtype="float64")
        results = await self.score_records(records, values, request.explain, request.request_id)
        body = orjson.dumps({"predictions": results})
        _PREDICT_LATENCY.observe(time.perf_counter() - start)
        _PREDICT_OK.inc()
        return body

    async def predict_arrow(self, body: bytes, query: str) -> tuple[int, bytes, bytes]:
        """`POST /predict` with an Arrow IPC stream body (serving/arrowio.py): (status,
        body, content type); a request the contract refuses gets its 4xx, never a 5xx."""
        start = time.perf_counter()
        try:
            req = ARROW.decode(body, query)
        except arrowio.ArrowRequestError as exc:
            metrics.REQUESTS.labels("invalid", str(exc.status)).inc()
            return exc.status, orjson.dumps({"detail": exc.errors}), b"application/json"
        jobs = self.batcher.jobs(req.values, req.customers, req.explain, req.request_id,
                                 inputs_json=req.inputs_json)  # fmt: skip
        parts = await self.score(jobs)
        cols = (
            parts[0] if len(parts) == 1 else {k: _concat([c[k] for c in parts]) for k in parts[0]}
        )
        if ENV.enable_interventions and any(req.customers):
            cols["intervention"] = await anyio.to_thread.run_sync(self._intervene_columns, cols)
        out = ARROW.encode(cols)
        _PREDICT_LATENCY.observe(time.perf_counter() - start)
        _PREDICT_OK.inc()
        return 200, out, arrowio.CONTENT_TYPE.encode()

    def _intervene_columns(self, cols: dict) -> list[str | None]:
        """Interventions for a columnar answer: the `intervention` column."""
        rows = [{"customer_id": c, "prediction_id": pid, "risk_score": int(s), "risk_band": b}
                for c, pid, s, b in zip(cols["customer_id"].to_pylist(), cols["prediction_id"],
                                        cols["risk_score"], cols["risk_band"], strict=True)]  # fmt: skip
        self._intervene(rows)
        return [r.get("intervention") for r in rows]

    def _intervene(self, results: list[dict]) -> None:
        cooldown_s = PARAMS.serving.interventions.cooldown_hours * 3600
        for r in results:
            action = PARAMS.serving.interventions.actions.get(r["risk_band"])
            if r["customer_id"] and action and r["risk_score"] >= ENV.auto_trigger_threshold:
                try:
                    if self.store.record_intervention(r["customer_id"], r["prediction_id"], r["risk_score"],
                                                      r["risk_band"], action, cooldown_s):  # fmt: skip
                        metrics.INTERVENTIONS.labels(action).inc()
                        r["intervention"] = action
                except Exception as exc:
                    log.warning("intervention not recorded: %s", type(exc).__name__)

    async def _run(self, records: list, explain: str, request_id: str | None) -> list[dict]:
        """Pydantic-validated records (the FastAPI routes)."""
        values = scoring.inputs_matrix(self.model.builder, records)
        return await self.score_records(records, values, explain, request_id)

    async def _from_store(self, endpoint: str, call, *args) -> tuple[Any, ORJSONResponse | None]:
        """A store call off the event loop; a dead store answers 503 (retry later), never 500."""
        try:
            return await anyio.to_thread.run_sync(call, *args), None
        except Exception as exc:
            metrics.REQUESTS.labels(endpoint, "503").inc()
            detail = f"prediction store unavailable ({type(exc).__name__}); retry later"
            return None, ORJSONResponse({"detail": detail}, status_code=503)

    # ------------------------------------------------------------------ routes
    @app.post("/predict", responses={200: {"model": list[Prediction]}})
    async def predict(self, body: PredictRequest) -> ORJSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        results = await self._run(body.records, body.explain, body.request_id)
        _PREDICT_LATENCY.observe(time.perf_counter() - start)
        _PREDICT_OK.inc()
        return ORJSONResponse({"predictions": results})

    @app.post("/predict_customer")
    async def predict_customer(self, body: PredictCustomerRequest) -> ORJSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        ids = list(dict.fromkeys(body.customer_ids))
        found, unavailable = await self._from_store(
            "predict_customer", self.store.get_online_features, ids
        )
        if unavailable:
            return unavailable
        # stored records were validated when materialized: construct without re-validating
        records = [
            RecordModel.model_construct(**found[c]["record"], customer_id=c)
            for c in ids
            if c in found
        ]
        scored = await self._run(records, body.explain, body.request_id) if records else []
        by_id = {r["customer_id"]: r for r in scored}
        results = [
            by_id.get(c) or {"customer_id": c, "error": "unknown customer"}
            for c in body.customer_ids
        ]
        metrics.LATENCY.labels("predict_customer").observe(time.perf_counter() - start)
        metrics.REQUESTS.labels("predict_customer", "200").inc()
        return ORJSONResponse({"predictions": results})

    @app.post("/outcomes")
    async def outcomes(self, body: OutcomesRequest) -> ORJSONResponse:
        items = [o.model_dump(exclude_none=True) for o in body.outcomes]
        results, unavailable = await self._from_store("outcomes", self.store.record_outcomes, items)
        if unavailable:
            return unavailable
        metrics.REQUESTS.labels("outcomes", "200").inc()
        return ORJSONResponse({"results": results})

    @app.get("/interventions")
    async def interventions(self, limit: int = Query(100, ge=1, le=1000),
                            customer_id: str | None = Query(None, max_length=64)) -> ORJSONResponse:  # fmt: skip
        rows, unavailable = await self._from_store(
            "interventions", self.store.list_interventions, limit, customer_id
        )
        if unavailable:
            return unavailable
        return ORJSONResponse({"interventions": rows})  # orjson writes datetimes as ISO 8601


RiskService.add_asgi_middleware(
    Gateway, keys=ENV.api_keys, limiter=FixedWindowLimiter(ENV.rate_limit_max, ENV.rate_limit_window, ENV.api_keys),
    state=lambda: _State.service, decoder=PREDICT_DECODER,
    predict=lambda svc, request: svc.predict_fast(request),
    predict_arrow=lambda svc, body, query: svc.predict_arrow(body, query),
    on_reject=lambda status: metrics.REQUESTS.labels("auth", str(status)).inc(),
)  # fmt: skip
