"""The BentoML service that scores applicants and customers with the champion.

Hot routes are FastAPI class views mounted on the BentoML service (`@bentoml.asgi_app`):
they run in BentoML's server and lifecycle but skip its per-API IO-descriptor machinery,
which costs ~0.7 ms a request. Predictions are logged off the request path by a batched
writer that spools to disk when the store is down (serving/logwriter.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse

import features.transform  # noqa: F401 - current feature code wins over a model's bundled copy
from riskloop.settings import load_params
from serving import metrics, scoring
from serving.config import load_env
from serving.model_tag import model_tag
from serving.schemas import (
    OutcomesRequest,
    Prediction,
    customer_request_model,
    predict_request_model,
    record_model,
)
from serving.security import AuthRateLimitMiddleware, FixedWindowLimiter

log = logging.getLogger("riskloop.serving")
HERE = Path(__file__).resolve().parent
PARAMS = load_params(os.environ.get("RISKLOOP_PARAMS", HERE.parent / "params.yaml"))
ENV = load_env()
MODEL_TAG = model_tag(PARAMS.registry.model_name)
EXAMPLE = json.loads((HERE / "example_record.json").read_text())
OFFLOAD_ROWS = 64  # bigger requests are scored in a worker thread so the event loop stays free

RecordModel = record_model(PARAMS.data)
PredictRequest = predict_request_model(RecordModel, PARAMS.serving, EXAMPLE)
PredictCustomerRequest = customer_request_model(PARAMS.serving)

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


class _State:
    """What the middlewares need from the running service instance."""

    service: RiskService | None = None


class ReadinessMiddleware:
    """Answers /readyz itself so that a degraded state is explicit: 503 until the model is
    loaded; 200 `ready`, or 200 `degraded` while the store is down and rows are spooled."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz":
            await self.app(scope, receive, send)
            return
        svc = _State.service
        if svc is None:
            status, body = 503, {"status": "not_ready", "model_loaded": False}
        else:
            store_up = svc.writer.stats()["store_up"]
            body = {"status": "ready" if store_up else "degraded", "model_loaded": True, "store_up": store_up,
                    "model_version": svc.model_version}  # fmt: skip
            if not store_up:
                body["detail"] = (
                    "prediction store unreachable: scoring continues, rows spool to disk"
                )
            status = 200
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


@bentoml.service(
    name="riskloop",
    workers=int(os.environ.get("SERVING_WORKERS", "1")),
    traffic={"timeout": 60},
    http={"cors": {"enabled": bool(ENV.cors_origins), "access_control_allow_origins": ENV.cors_origins,
                   "access_control_allow_methods": ["GET", "POST", "OPTIONS"],
                   "access_control_allow_headers": ["content-type", "x-api-key", "authorization"]}},
    logging={"access": {"enabled": ENV.debug}},
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
        _State.service = self

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.writer.close()
        _State.service = None

    def __is_ready__(self) -> bool:
        return True

    def __metrics__(self, content: str) -> str:
        # gauges are refreshed by every scrape; the next scrape's collection shows them
        metrics.update_writer_gauges(self.writer.stats())
        return content

    # ------------------------------------------------------------------ scoring
    def _score(self, records: list, explain: str, request_id: str | None) -> list[dict]:
        """`records`: validated pydantic records (attribute access, no dict round trip)."""
        values = scoring.inputs_matrix(self.model.builder, records)
        feats, p, contrib = scoring.predict(self.model, values, explain != "none")
        scores = scoring.risk_scores(p)
        bands = scoring.risk_bands(scores, PARAMS.serving.bands)
        decisions = scoring.decisions(scores, PARAMS.serving)
        names = self.feature_names
        top = (
            None
            if contrib is None
            else scoring.reasons(contrib, feats, names, PARAMS.serving.top_reasons)
        )
        now = datetime.now(UTC)
        out = []
        for i, record in enumerate(records):
            rec = {k: v for k, v in record.__dict__.items() if v is not None}
            customer = rec.pop("customer_id", None)
            pid = uuid.uuid4().hex
            result = {"prediction_id": pid, "customer_id": customer,
                      "probability_of_default": float(p[i]), "risk_score": int(scores[i]), "risk_band": bands[i],
                      "decision": decisions[i], "reasons": top[i] if top else [],
                      "model_name": self.model_name, "model_version": self.model_version}  # fmt: skip
            if explain == "all":
                result["base_value"] = float(contrib[i, -1])
                result["contributions"] = dict(zip(names, contrib[i, :-1].tolist(), strict=True))
            out.append(result)
            self.writer.submit({
                "prediction_id": pid, "created_at": now, "request_id": request_id,
                "model_name": self.model_name, "model_version": self.model_version,
                "customer_id": customer, "inputs": rec,
                "probability": float(p[i]), "risk_score": int(scores[i]), "risk_band": bands[i],
                "decision": decisions[i], "reasons": result["reasons"],
            })  # fmt: skip
        # one increment per band: each is a write to prometheus' multiprocess files
        for band, n in Counter(bands).items():
            metrics.PREDICTIONS.labels(band).inc(n)
        if ENV.enable_interventions:
            self._intervene(out)
        return out

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

    async def _run(self, records: list[dict], explain: str, request_id: str | None) -> list[dict]:
        if len(records) > OFFLOAD_ROWS:
            return await anyio.to_thread.run_sync(self._score, records, explain, request_id)
        return self._score(records, explain, request_id)

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
        metrics.LATENCY.labels("predict").observe(time.perf_counter() - start)
        metrics.REQUESTS.labels("predict", "200").inc()
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


RiskService.add_asgi_middleware(ReadinessMiddleware)
RiskService.add_asgi_middleware(
    AuthRateLimitMiddleware, keys=ENV.api_keys,
    limiter=FixedWindowLimiter(ENV.rate_limit_max, ENV.rate_limit_window),
    on_reject=lambda status: metrics.REQUESTS.labels("auth", str(status)).inc(),
)  # fmt: skip
