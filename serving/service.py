"""The BentoML service that scores applicants and customers with the champion.

Everything about the model comes from the model: its data contract (request schemas, column
order, categorical codes, the OpenAPI example), its feature code (loaded from the model
itself, riskloop/package.py) and its golden batch, on which every decoder and engine is
checked at load. The working tree's params.yaml contributes only the serving policy (bands,
decisions, limits, interventions).

Hot routes are FastAPI class views mounted on the BentoML service (`@bentoml.asgi_app`):
they run in BentoML's server and lifecycle but skip its per-API IO-descriptor machinery,
which costs ~0.7 ms a request. Predictions are logged off the request path by a batched
writer that spools to disk when the store is down (serving/logwriter.py). A new champion
deployed with `make deploy` is swapped in without a restart (serving/deployment.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, ORJSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.contract import Contract
from riskloop.errors import RateLimited, Refused
from riskloop.package import ModelPackage, model_code
from riskloop.settings import load_params
from serving import arrowio, deployment, docs, golden, httpguard, metrics, requestlog, scoring
from serving.codecs import Codecs
from serving.config import load_env
from serving.fastpath import CURRENT_KEY, Gateway, Job, MicroBatcher, new_ids
from serving.interventions import Interventions
from serving.lifecycle import Drain
from serving.logbatch import PredictionColumns
from serving.model_tag import model_tag
from serving.schemas import (
    ERRORS,
    ContractResponse,
    InterventionResponse,
    InterventionsResponse,
    OutcomesRequest,
    OutcomesResponse,
    PredictCustomerResponse,
    PredictResponse,
    intervention_actions,
    intervention_request_model,
)
from serving.scorer import Scorer
from serving.security import FailedKeyThrottle, FixedWindowLimiter

log = logging.getLogger("riskloop.serving")
HERE = Path(__file__).resolve().parent
PARAMS = load_params(os.environ.get("RISKLOOP_PARAMS", HERE.parent / "params.yaml"))
ENV = load_env()
# here for the `bentoml serve` process itself; again in each worker, whose logging BentoML sets up anew
requestlog.configure(ENV.log_format, ENV.access_log)
httpguard.install(httpguard.Limits(ENV.max_head_bytes, ENV.head_timeout_s, ENV.body_timeout_s))
MODEL_TAG = model_tag(PARAMS.registry.model_name)

# The served model's contract, read from the model without loading it: the request schemas
# below are built from it when the module is imported (also by BentoML's parent process).
PACKAGE = ModelPackage.of_bento(bentoml.models.get(MODEL_TAG))
CONTRACT = Contract.from_json(PACKAGE.contract_doc)
CODECS = Codecs(CONTRACT, PARAMS.serving, PACKAGE.example)
PredictRequest = CODECS.PredictRequest
PredictCustomerRequest = CODECS.PredictCustomerRequest
ACTIONS = intervention_actions(PARAMS.serving)  # what a manual intervention may take
InterventionRequest = intervention_request_model(ACTIONS)
LIMITER = FixedWindowLimiter(ENV.rate_limit_max, ENV.rate_limit_window, ENV.api_keys,
                             max_rows=ENV.rate_limit_rows, max_explained=ENV.rate_limit_explained_rows)  # fmt: skip
_NO_REASONS = "[]"
STORE_CALL_TIMEOUT_S = 5.0  # /predict_customer, /outcomes, /interventions
# GET /contract's parts that no deployment changes (a deployed model has the same contract)
_CONTRACT_FIXED = {"fingerprint": CONTRACT.fingerprint, "example": PACKAGE.example,
                   "actions": ACTIONS}  # fmt: skip
_PREDICT_LATENCY = metrics.LATENCY.labels("predict")  # label lookups cost more than the update
_PREDICT_OK = metrics.REQUESTS.labels("predict", "200")

app = FastAPI(
    title="riskloop scoring", version="1", description="Probability of default with reason codes.",
    docs_url=None, redoc_url=None,  # FastAPI's pages load from a CDN: /docs is serving/docs.py's
)  # fmt: skip
docs.mount(app)


def _openapi() -> dict[str, Any]:
    """FastAPI's document plus the API-key schemes the gateway enforces (it sits in front of
    FastAPI, so FastAPI cannot know them), so "Try it out" in /docs sends the key."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)  # fmt: skip
        doc.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
        if ENV.api_keys:
            doc["security"] = [{"ApiKey": []}, {"Bearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


@app.exception_handler(Refused)
async def _refused(request: Request, exc: Refused) -> JSONResponse:
    """503 when no durable place takes the prediction log or the store does not answer in
    time (never a prediction nobody could audit, never a 500); 429 when the key's rows are
    spent."""
    metrics.REQUESTS.labels(_endpoint(request), str(exc.status)).inc()
    return JSONResponse({"detail": str(exc)}, status_code=exc.status,
                        headers={"Retry-After": str(exc.retry_after_s)})  # fmt: skip


def _endpoint(request: Request) -> str:
    """A metrics label from the matched route's template, never the raw path."""
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched").strip("/") or "root"


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (a body it cannot parse: 400) in the shape the document declares;
    a 405's Allow names every method the document gives the path (Starlette's names those of
    the path's first route only: GET and POST /interventions are two routes)."""
    if exc.status_code in (400, 422):
        body: dict[str, Any] = {"detail": [{"field": "body", "message": str(exc.detail),
                                            "type": "json_invalid"}]}  # fmt: skip
    else:
        body = {"detail": str(exc.detail)}
    headers, path = exc.headers, getattr(request.scope.get("route"), "path", None)
    if exc.status_code == 405 and (methods := app.openapi()["paths"].get(path)):
        headers = {**(headers or {}), "Allow": ", ".join(sorted(m.upper() for m in methods))}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


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


class ModelRefused(RuntimeError):
    """A model this service cannot serve correctly (its contract or golden batch says why)."""


class ContractChanged(ModelRefused):
    """A model of another data contract than the request schemas this process was built
    from: serving it takes a restart."""


@dataclass(frozen=True)
class Engine:
    """Everything one served model needs to score: swapped as a whole on a deploy."""

    model: Any  # training.model.CreditRiskModel, with the model's own feature code
    scorer: Scorer
    version: str
    tag: str
    feature_names: list[str]
    levels: dict[int, list]  # categorical feature's index -> its levels (reasons show levels)
    texts: list[str | None]  # each feature's adverse-action text (serving.reason_texts)
    cutoffs: scoring.Cutoffs  # decisions, resolved for this model (relative cuts differ per model)
    contract_doc: dict[str, Any]  # its contract.json (same contract, its own lineage)


def load_engine(bento_model: bentoml.Model) -> Engine:
    """Load a BentoML model and check it before it serves anything: same contract as the
    request schemas, every decoder reproducing its golden features, every engine its outputs."""
    pkg = ModelPackage.of_bento(bento_model)
    contract = Contract.from_json(pkg.contract_doc)
    if contract != CONTRACT:
        raise ContractChanged(
            f"{bento_model.tag}'s data contract ({contract.fingerprint}) differs from the one "
            f"this server's request schemas were built from ({CONTRACT.fingerprint}): restart "
            "the server (`make serve`) to serve it"
        )
    with model_code():  # the model's own feature code, not the bento's copy
        model = bentoml.mlflow.load_model(bento_model).unwrap_python_model()
    # one thread per prediction: on 2 cores, more threads make single rows ~10x slower
    model.booster.set_param({"nthread": 1})
    problems = golden.verify(CODECS, model.builder, pkg.golden)
    if problems:
        raise ModelRefused(f"{bento_model.tag} fails its golden batch: " + "; ".join(problems))
    scorer = Scorer(model.booster, golden.golden_features(pkg.golden), pkg.golden)
    version = str(bento_model.info.labels.get("registry_version", "unknown"))
    names = list(model.builder.feature_names_)
    levels, texts = scoring.reason_labels(names, contract.data, PARAMS.serving.reason_texts)
    cut = scoring.cutoffs(PARAMS.serving.decisions, pkg.reference_scores)
    return Engine(model, scorer, version, str(bento_model.tag), names, levels, texts, cut,
                  pkg.contract_doc)  # fmt: skip


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
    metrics={"enabled": False},  # the gateway serves /metrics (serving/metrics.py says why)
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
        from serving.store import PredictionStore, make_engine, restrict_files, upgrade

        try:
            ENV.check_listening()
        except Exception:
            # a worker's failure only makes BentoML start another: stop the whole server
            os.kill(os.getppid(), signal.SIGTERM)
            raise
        requestlog.configure(ENV.log_format, ENV.access_log)
        self.engine = load_engine(self.bento_model)
        self.deployment: dict[str, Any] = {"status": "serving", "source": "bento"}
        self._swap_lock = threading.Lock()
        self.model_name = PARAMS.registry.model_name
        metrics.served(None, self.engine)
        url = ENV.store_url()
        try:
            upgrade(url)
        except Exception as exc:
            log.warning(
                "prediction store not migrated at start (%s); scoring continues", type(exc).__name__
            )
        self.store = PredictionStore(make_engine(url))
        self.monitor_facts = metrics.MonitorFacts(self.store.engine)
        restrict_files(url)
        self.writer = PredictionLogWriter(
            url,
            ENV.spool_path(),
            cooldown_s=PARAMS.serving.interventions.cooldown_hours * 3600,
            on_failure=ENV.log_on_failure,
        )
        self.triggers = Interventions(PARAMS.serving.interventions, ENV.auto_trigger_threshold)
        self.batcher = MicroBatcher(self._compute)
        _State.service = self
        # Everything loaded so far (MLflow, pandas, the model...) lives as long as the worker:
        # move it out of the collector's reach, or each full collection walks millions of
        # objects and stalls every in-flight request for hundreds of milliseconds.
        gc.collect()
        gc.freeze()
        self.drain = Drain(ENV.drain_s)
        self.drain.install()
        self.watcher = deployment.Watcher(ENV.deployment_path(), lambda: self.engine.tag,
                                          self._deploy)  # fmt: skip

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        _State.service = None
        self.watcher.stop()
        self.batcher.close()
        self.writer.close()

    def __is_ready__(self) -> bool:
        return True

    def metrics(self) -> tuple[bytes, bytes]:
        """/metrics: this worker's log-writer gauges refreshed, then every worker's series."""
        metrics.update_writer_gauges(self.writer.stats())
        self.monitor_facts.refresh(time.monotonic())
        metrics.DEPLOYMENT_FAILED.set(
            int(self.deployment["status"] in ("failed", "restart_required"))
        )
        return metrics.exposition()

    # ------------------------------------------------------------------ deployment
    def _deploy(self, record: deployment.DeploymentRecord) -> None:
        """Load the deployed model beside the served one, then swap it in (watcher thread)."""
        with self._swap_lock:
            self.deployment = {
                "status": "loading",
                "wanted": record.version,
                "tag": record.model_tag,
            }
            try:
                engine = load_engine(bentoml.models.get(record.model_tag))
            except Exception as exc:
                restart = isinstance(exc, ContractChanged)
                self.deployment = {"status": "restart_required" if restart else "failed",
                                   "wanted": record.version, "tag": record.model_tag,
                                   "detail": str(exc)[:500]}  # fmt: skip
                log.error("deployment of v%s not served: %s", record.version, exc)
                return
            gc.unfreeze()
            old, self.engine = self.engine, engine  # the next batch is scored by the new model
            metrics.served(old, engine)
            self.deployment = {"status": "serving", "source": "deployment", "version": engine.version,
                               "deployed_at": record.deployed_at, "reason": record.reason}  # fmt: skip
            log.info("now serving v%s (%s), was v%s", engine.version, engine.tag, old.version)
            del old
            gc.collect()
            gc.freeze()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """/readyz: (status code, body) — which model serves, which engines, the store, the
        journal, the latest deployment. Not ready (503) while the journal cannot take rows
        and scoring is refused, so a load balancer drains this node."""
        if self.drain.draining:
            return 503, {"status": "draining", "model_loaded": True,
                         "detail": "stopping: finishing accepted requests"}  # fmt: skip
        store_up, durable = self.writer.store_up, self.writer.probe()
        engine = self.engine
        status = "ready" if store_up and durable else "degraded" if durable else "not_ready"
        body = {"status": status, "model_loaded": True, "store_up": store_up,
                "journal_ok": durable, "model_name": self.model_name,
                "model_version": engine.version, "model_tag": engine.tag,
                "decisions": asdict(engine.cutoffs), "contract": CONTRACT.fingerprint, "engine": engine.scorer.status.as_dict(),
                "deployment": self.deployment}  # fmt: skip
        if not durable and ENV.log_on_failure == "refuse":
            body["detail"] = "prediction journal cannot take rows (disk full?): scoring refused"
        elif not durable:
            body["detail"] = (
                "prediction journal failing: answers are NOT logged (operator chose drop)"
            )
            status = "degraded"
        elif not store_up:
            body["detail"] = (
                "prediction store unreachable: scoring continues, rows wait in the journal"
            )
        body["status"] = status
        return (503 if status == "not_ready" else 200), body

    # ------------------------------------------------------------------ scoring
    def _compute(self, jobs: list[Job]) -> list[Any]:
        """One batch, in the scoring thread: every job's rows as one matrix; exact TreeSHAP
        only for the rows whose request asked for reasons. Returns each job's results (dicts
        for the JSON API, columns for a columnar request) and queues the batch's
        prediction-log rows (and the interventions they trigger) as one block of columns."""
        engine = self.engine  # one model for the whole batch, even if a deploy swaps it now
        values = jobs[0].values if len(jobs) == 1 else np.concatenate([j.values for j in jobs])
        feats = engine.model.builder.transform_array(values)
        explain_rows = [np.arange(len(j)) + off for j, off in zip(jobs, _offsets(jobs), strict=True)
                        if j.explain != "none"]  # fmt: skip
        top_k = PARAMS.serving.top_reasons
        contrib, top, p = None, [[]] * len(feats), None
        if explain_rows:
            rows = np.concatenate(explain_rows)
            c, p_explained = engine.scorer.explain(feats[rows])
            contrib = np.full((len(feats), c.shape[1]), np.nan)
            contrib[rows] = c
            top = list(top)
            found = scoring.reasons(c, feats[rows], engine.feature_names, top_k, engine.levels,
                                    engine.texts)  # fmt: skip
            for r, reasons in zip(rows.tolist(), found, strict=True):
                top[r] = reasons
            if p_explained is not None:  # the same pass scored these rows
                p = np.empty(len(feats), dtype=p_explained.dtype)
                p[rows] = p_explained
                rest = np.ones(len(feats), dtype=bool)
                rest[rows] = False
                if rest.any():
                    p[rest] = engine.scorer.probabilities(feats[rest])
        if p is None:
            p = engine.scorer.probabilities(feats)
        scores = scoring.risk_scores(p)
        bands = scoring.risk_bands(scores, PARAMS.serving.bands)
        decisions = scoring.decisions(scores, engine.cutoffs)
        # a declined applicant is always told the principal reasons, whatever the request
        # asked (explain=none, or top_reasons 0): those rows are explained now
        unexplained = np.ones(len(feats), dtype=bool)
        if explain_rows and top_k:
            unexplained[rows] = False
        declined = np.flatnonzero(unexplained & (np.asarray(decisions) == "decline"))
        if len(declined):
            c, _ = engine.scorer.explain(feats[declined])
            top = list(top)
            found = scoring.reasons(c, feats[declined], engine.feature_names, max(top_k, 1),
                                    engine.levels, engine.texts)  # fmt: skip
            for r, reasons in zip(declined.tolist(), found, strict=True):
                top[r] = reasons
        probs, score_list = p.tolist(), scores.tolist()
        ids = new_ids(len(p))
        log = PredictionColumns(
            created_at=datetime.now(UTC).isoformat(), model_name=self.model_name,
            model_version=engine.version, prediction_id=ids, request_id=[], customer_id=[],
            inputs=[], probability=probs, risk_score=score_list, risk_band=bands,
            decision=decisions, reasons=[_NO_REASONS if not t else orjson.dumps(t).decode() for t in top],
        )  # fmt: skip
        for job in jobs:
            log.request_id.extend([job.request_id] * len(job))
            log.customer_id.extend(job.customers)
            if job.inputs_json is not None:  # columnar request: its inputs are JSON text already
                log.inputs.extend(job.inputs_json)
            else:
                log.inputs.extend(orjson.dumps(CODECS.inputs_of(r)).decode() for r in job.records)
        triggered = self.triggers.trigger(log) if ENV.enable_interventions else {}
        self.writer.submit_columns(log)
        out, i = [], 0
        for job in jobs:
            part = slice(i, i + len(job))
            if job.inputs_json is not None:  # columnar request: columnar answer
                out.append(self._columns(job, engine, part, ids, p, scores, bands, decisions, top,
                                         contrib, triggered))  # fmt: skip
            else:
                out.append(self._dicts(job, engine, part, ids, probs, score_list, bands, decisions,
                                       top, contrib, triggered))  # fmt: skip
            i += len(job)
        # one increment per band: each is a write to prometheus' multiprocess files
        for band, k in Counter(bands).items():
            metrics.PREDICTIONS.labels(band).inc(k)
        return out

    def _dicts(self, job: Job, engine: Engine, part: slice, ids, probs, scores, bands, decisions,
               top, contrib, triggered: dict[int, str]) -> list[dict]:  # fmt: skip
        results = []
        for i, customer in zip(range(part.start, part.stop), job.customers, strict=True):
            result = {"prediction_id": ids[i], "customer_id": customer, "probability_of_default": probs[i],
                      "risk_score": scores[i], "risk_band": bands[i], "decision": decisions[i],
                      "reasons": top[i], "model_name": self.model_name, "model_version": engine.version}  # fmt: skip
            if i in triggered:
                result["intervention"] = triggered[i]
            if job.explain == "all":
                result["base_value"] = float(contrib[i, -1])
                result["contributions"] = dict(
                    zip(engine.feature_names, contrib[i, :-1].tolist(), strict=True)
                )
            results.append(result)
        return results

    def _columns(self, job: Job, engine: Engine, part: slice, ids, p, scores, bands, decisions,
                 top, contrib, triggered: dict[int, str]) -> dict:  # fmt: skip
        n = part.stop - part.start
        cols = {"prediction_id": ids[part], "customer_id": pa.array(job.customers, pa.string()),
                "probability_of_default": p[part].astype("float64"), "risk_score": scores[part],
                "risk_band": bands[part], "decision": decisions[part],
                "reasons": pa.array(top[part], arrowio.REASONS),
                "model_name": pa.repeat(pa.scalar(self.model_name), n),
                "model_version": pa.repeat(pa.scalar(engine.version), n)}  # fmt: skip
        if ENV.enable_interventions:
            cols["intervention"] = pa.array([triggered.get(i) for i in range(part.start, part.stop)],
                                            pa.string())  # fmt: skip
        if job.explain == "all":
            cols["base_value"] = contrib[part, -1]
            cols.update(
                {f"contribution.{f}": contrib[part, j] for j, f in enumerate(engine.feature_names)}
            )
        return cols

    async def score_records(self, records: list, values: np.ndarray, explain: str,
                            request_id: str | None) -> list[dict]:  # fmt: skip
        """Validated records (pydantic or strict msgspec) and their model-input matrix."""
        customers = [r.customer_id for r in records]
        return await self.score(
            self.batcher.jobs(
                values, customers, explain, requestlog.adopt(request_id), records=records
            )
        )

    async def score(self, jobs: list[Job]) -> list[Any]:
        """Scores a request's jobs, once its rows fit in its key's window; JSON-API results as
        one list of dicts."""
        key = CURRENT_KEY.get()
        if key is not None:
            rows = sum(len(j) for j in jobs)
            explained = sum(len(j) for j in jobs if j.explain != "none")
            if (wait := LIMITER.charge(key, rows, explained)) is not None:
                raise RateLimited(f"rate limit: this key's rows ({ENV.rate_limit_rows:,}) or explained "
                                  f"rows ({ENV.rate_limit_explained_rows:,}) per {ENV.rate_limit_window:g} s "
                                  "are spent", wait)  # fmt: skip
        parts = await self.batcher.submit(jobs)
        if jobs[0].inputs_json is not None:
            return parts
        return parts[0] if len(parts) == 1 else [r for part in parts for r in part]

    async def predict_fast(self, request: Any) -> bytes | None:
        """`POST /predict` decoded by the strict decoder (the Gateway's fast path); None when
        a cross-field rule (a one-hot group) refuses it: the pydantic route then answers."""
        start = time.perf_counter()
        records = request.records
        values = CODECS.strict_matrix(records)
        if values is None:
            return None
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
            req = CODECS.arrow.decode(body, query)
        except Exception as exc:  # whatever a hostile body makes Arrow raise is a 4xx
            if not isinstance(exc, arrowio.ArrowRequestError):
                log.warning("Arrow body refused: %s", type(exc).__name__)
                exc = arrowio.ArrowRequestError(400, [{"field": "body", "type": "arrow_invalid",
                    "message": f"unreadable Arrow stream ({type(exc).__name__})"}])  # fmt: skip
            metrics.REQUESTS.labels("invalid", str(exc.status)).inc()
            return exc.status, orjson.dumps({"detail": exc.errors}), b"application/json"
        jobs = self.batcher.jobs(req.values, req.customers, req.explain, requestlog.adopt(req.request_id),
                                 inputs_json=req.inputs_json)  # fmt: skip
        parts = await self.score(jobs)
        cols = (
            parts[0] if len(parts) == 1 else {k: _concat([c[k] for c in parts]) for k in parts[0]}
        )
        out = CODECS.arrow.encode(cols)
        _PREDICT_LATENCY.observe(time.perf_counter() - start)
        _PREDICT_OK.inc()
        return 200, out, arrowio.CONTENT_TYPE.encode()

    async def _run(self, records: list, explain: str, request_id: str | None) -> list[dict]:
        """Pydantic-validated records (the FastAPI routes)."""
        return await self.score_records(records, CODECS.model_matrix(records), explain, request_id)

    async def _from_store(self, endpoint: str, call, *args) -> tuple[Any, ORJSONResponse | None]:
        """A store call off the event loop, bounded in time; a dead or stalled store answers
        503 with Retry-After (the stuck thread is left to its own timeouts), never 500."""
        try:
            with anyio.fail_after(STORE_CALL_TIMEOUT_S):
                return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True), None
        except Exception as exc:
            metrics.REQUESTS.labels(endpoint, "503").inc()
            why = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            detail = f"prediction store unavailable ({why}); retry later"
            return None, ORJSONResponse({"detail": detail}, status_code=503,
                                        headers={"Retry-After": "1"})  # fmt: skip

    # ------------------------------------------------------------------ routes
    @app.post("/predict", responses={200: {"model": PredictResponse}, **ERRORS})
    async def predict(self, body: PredictRequest) -> ORJSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        results = await self._run(body.records, body.explain, body.request_id)
        _PREDICT_LATENCY.observe(time.perf_counter() - start)
        _PREDICT_OK.inc()
        return ORJSONResponse({"predictions": results})

    @app.post("/predict_customer", responses={200: {"model": PredictCustomerResponse}, **ERRORS})
    async def predict_customer(self, body: PredictCustomerRequest) -> ORJSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        ids = list(dict.fromkeys(body.customer_ids))
        found, unavailable = await self._from_store(
            "predict_customer", self.store.get_online_features, ids
        )
        if unavailable:
            return unavailable
        # a stored record is checked by the served model's contract like any other: one the
        # model cannot take (another schema, a missing field) is this customer's error, not a 500
        records, refused = [], {}
        for c in ids:
            if c in found:
                try:
                    records.append(
                        CODECS.RecordModel.model_validate({**found[c]["record"], "customer_id": c})
                    )
                except ValidationError as exc:
                    fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                    refused[c] = f"stored record does not fit the model's contract: {fields}"
        scored = await self._run(records, body.explain, body.request_id) if records else []
        by_id = {r["customer_id"]: r for r in scored}
        results = [
            by_id.get(c) or {"customer_id": c, "error": refused.get(c, "unknown customer")}
            for c in body.customer_ids
        ]
        metrics.LATENCY.labels("predict_customer").observe(time.perf_counter() - start)
        metrics.REQUESTS.labels("predict_customer", "200").inc()
        return ORJSONResponse({"predictions": results})

    @app.post("/outcomes", responses={200: {"model": OutcomesResponse}, **ERRORS})
    async def outcomes(self, body: OutcomesRequest) -> ORJSONResponse:
        items = [o.model_dump(exclude_none=True) for o in body.outcomes]
        results, unavailable = await self._from_store(
            "outcomes", self.store.record_outcomes, items, self.writer.unflushed
        )
        if unavailable:
            return unavailable
        metrics.REQUESTS.labels("outcomes", "200").inc()
        return ORJSONResponse({"results": results})

    @app.get("/interventions", responses={200: {"model": InterventionsResponse}, **ERRORS})
    async def interventions(self, limit: int = Query(100, ge=1, le=1000),
                            customer_id: str | None = Query(None, max_length=64)) -> ORJSONResponse:  # fmt: skip
        rows, unavailable = await self._from_store(
            "interventions", self.store.list_interventions, limit, customer_id
        )
        if unavailable:
            return unavailable
        return ORJSONResponse({"interventions": rows})  # orjson writes datetimes as ISO 8601

    @app.post("/interventions", responses={200: {"model": InterventionResponse}, **ERRORS})
    async def record_intervention(self, body: InterventionRequest) -> ORJSONResponse:  # type: ignore[valid-type]
        """A person's decision (a credit officer's): recorded now, never refused for the
        cooldown the triggered ones keep."""
        row, unavailable = await self._from_store(
            "manual_intervention", self.store.record_manual_intervention,
            body.customer_id, body.action, body.note,
        )  # fmt: skip
        if unavailable:
            return unavailable
        metrics.REQUESTS.labels("manual_intervention", "200").inc()
        return ORJSONResponse({"intervention": row})

    @app.get("/contract", responses={200: {"model": ContractResponse}, **ERRORS})
    async def contract(self) -> ORJSONResponse:
        """The served model's data contract, a real record and the intervention actions: what
        a client needs to build requests."""
        engine = self.engine
        metrics.REQUESTS.labels("contract", "200").inc()
        return ORJSONResponse({"model_name": self.model_name, "model_version": engine.version,
                               "contract": engine.contract_doc, **_CONTRACT_FIXED})  # fmt: skip


RiskService.add_asgi_middleware(
    Gateway, keys=ENV.api_keys, limiter=LIMITER,
    throttle=FailedKeyThrottle(ENV.auth_failures_max, ENV.rate_limit_window),
    state=lambda: _State.service, decoder=CODECS.decoder,
    predict=lambda svc, request: svc.predict_fast(request),
    predict_arrow=lambda svc, body, query: svc.predict_arrow(body, query),
    on_reject=lambda status: metrics.REQUESTS.labels("auth", str(status)).inc(),
    draining=lambda: (d := getattr(_State.service, "drain", None)) and d.phase(),
    metrics=lambda: _State.service.metrics() if _State.service else metrics.exposition(),
    access_log=ENV.access_log,
)  # fmt: skip
