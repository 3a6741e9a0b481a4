"""The hot path for `POST /predict`, inside BentoML's server: strict msgspec decoding, an
in-process micro-batcher, and one pure-ASGI gateway middleware.

- `record_struct` / `request_struct`: msgspec twins of the pydantic request models built from
  the same data contract, but strict (an int column takes only JSON integers, no strings for
  numbers). Whatever they accept, pydantic accepts with the same values (tested); whatever
  they refuse goes to the FastAPI route, whose pydantic validation answers (422 naming each
  field, or the lax coercions pydantic allows). Decoding a record costs ~1 µs instead of ~15.
- `MicroBatcher`: concurrent requests enqueue their rows; one task scores everything pending
  as one matrix in one worker thread (XGBoost releases the GIL, so the event loop keeps
  parsing requests meanwhile). Large requests are queued in chunks so they never stall small
  ones for long.
- `Gateway`: readiness, API-key auth, rate limit and the /predict fast path in one ASGI
  middleware, so a scored request never enters Starlette's router or FastAPI's machinery.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson

from features.contract import Contract, Rule
from riskloop.errors import Refused
from riskloop.settings import ServingSettings
from serving import requestlog
from serving.arrowio import CONTENT_TYPE
from serving.schemas import ID_CHARS, MAX_ID_LENGTH, REQUEST_ID_CHARS, Explain, attribute_names
from serving.security import EXEMPT, FailedKeyThrottle, FixedWindowLimiter, match_key

log = logging.getLogger("riskloop.serving")

# The API key of the request being handled: scoring charges its rows to it (`charge`).
CURRENT_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("api_key", default=None)

# pydantic's pattern (regex crate) anchors `$` at the very end; Python's `$` also matches
# before a final newline, so the strict twin uses `\Z`.
_CUSTOMER_ID = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=rf"^[{ID_CHARS}]+\Z")
]
MAX_BODY_BYTES = 64 * 2**20  # POST /predict: a 10k-row JSON or Arrow batch fits
MAX_OTHER_BODY_BYTES = 2 * 2**20  # every other route: ids and outcome labels
ARROW_STREAM = CONTENT_TYPE.encode()


def _strict_type(rule: Rule) -> Any:
    if rule.kind == "categorical":
        typ: Any = Literal[tuple(rule.levels)]  # type: ignore[valid-type]
    elif rule.kind == "onehot":
        typ = Literal[0, 1]
    elif rule.integer:  # msgspec wants integer bounds for an int: the same set of values
        low = None if rule.low is None else math.ceil(rule.low)
        high = None if rule.high is None else math.floor(rule.high)
        typ = Annotated[int, msgspec.Meta(ge=low, le=high)]
    else:
        typ = Annotated[float, msgspec.Meta(ge=rule.low, le=rule.high)]
    return typ | None if rule.nullable else typ


def record_struct(contract: Contract) -> type[msgspec.Struct]:
    """Strict twin of schemas.record_model. The model's input columns come first and in its
    order, so `astuple(record)[:len(contract.model_inputs)]` is a model input row."""
    attrs = attribute_names(contract)

    def spec(col: str, optional: bool) -> tuple:
        typ, name = _strict_type(contract.rules[col]), {} if attrs[col] == col else {"name": col}
        if optional:
            return (attrs[col], typ, msgspec.field(default=None, **name))
        return (attrs[col], typ, msgspec.field(**name)) if name else (attrs[col], typ)

    # msgspec wants required fields before defaulted ones; model inputs are never protected
    rest = [c for c in contract.fields if c not in contract.model_inputs]
    fields = [spec(c, False) for c in contract.model_inputs]
    fields += [spec(c, False) for c in rest if not contract.rules[c].protected]
    fields += [spec(c, True) for c in rest if contract.rules[c].protected]
    return msgspec.defstruct("ApplicantRecordStrict", [*fields, ("customer_id", _CUSTOMER_ID | None, None)],
                             forbid_unknown_fields=True, frozen=True)  # fmt: skip


def request_struct(record: type[msgspec.Struct], serving: ServingSettings) -> type[msgspec.Struct]:
    return msgspec.defstruct("PredictRequestStrict", [
        ("records", Annotated[list[record], msgspec.Meta(min_length=1, max_length=serving.max_records)]),  # type: ignore[valid-type]
        ("request_id", Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH,
                                                   pattern=rf"^[{REQUEST_ID_CHARS}]*\Z")] | None, None),
        ("explain", Explain, "top"),
    ], forbid_unknown_fields=True)  # fmt: skip


def new_ids(n: int) -> list[str]:
    """n UUIDv7s (RFC 9562) as 32 hex characters, ascending, in bulk (~20x cheaper than
    uuid.uuid4().hex each). Time-ordered ids land at the right edge of the store's primary
    key index instead of at random pages: with millions of rows, random UUID4 keys made each
    SQLite insert touch a cold page."""
    raw = np.frombuffer(np.random.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer((time.time_ns() // 1_000_000).to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    text = raw.tobytes().hex()
    return sorted(text[i : i + 32] for i in range(0, 32 * n, 32))


# ---------------------------------------------------------------------------- micro-batching
@dataclass(eq=False)
class Job:
    """Rows of one request (or one chunk of a large one), scored together with other jobs."""

    values: np.ndarray  # model input columns as float64 (NaN = missing)
    customers: list[str | None]
    explain: str  # top | all | none
    request_id: str | None
    records: list[Any] | None = None  # validated records (JSON API), for the prediction log
    # a columnar (Arrow) request: its log inputs as JSON text; answered with columns
    inputs_json: list[str] | None = None
    future: asyncio.Future = field(init=False)

    def __len__(self) -> int:
        return len(self.customers)


class MicroBatcher:
    """Scores queued jobs in batches in one thread. `compute(jobs)` returns one result per job.
    A batch takes whole jobs up to `max_rows` rows, and at most `max_explain_rows` rows that
    need exact contributions (~50-150 µs a row on one core: they bound the batch's latency)."""

    def __init__(self, compute: Callable[[list[Job]], list[Any]], max_rows: int = 4096,
                 max_explain_rows: int = 64) -> None:  # fmt: skip
        self.compute, self.max_rows, self.max_explain_rows = compute, max_rows, max_explain_rows
        self.chunk_rows = max_rows // 2
        self.chunk_explain_rows = max(1, max_explain_rows // 2)
        self._queue: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="scoring")
        self.batches = 0
        self.rows = 0

    def jobs(self, values: np.ndarray, customers: list, explain: str, request_id: str | None,
             records: list | None = None, inputs_json: list[str] | None = None) -> list[Job]:  # fmt: skip
        """One request's rows as jobs of at most a chunk each (records for the JSON API,
        inputs_json for a columnar request)."""
        step = self.chunk_explain_rows if explain != "none" else self.chunk_rows
        part = lambda items, i: None if items is None else items[i : i + step]  # noqa: E731
        return [Job(values[i : i + step], customers[i : i + step], explain, request_id,
                    part(records, i), part(inputs_json, i))
                for i in range(0, len(customers), step)]  # fmt: skip

    async def submit(self, jobs: list[Job]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        for job in jobs:
            job.future = loop.create_future()
            self._queue.append(job)
        self._wake.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        rows = explain_rows = 0
        while self._queue:
            job = self._queue[0]
            n = len(job)
            e = n if job.explain != "none" else 0
            if batch and (rows + n > self.max_rows or explain_rows + e > self.max_explain_rows):
                break
            batch.append(self._queue.popleft())
            rows, explain_rows = rows + n, explain_rows + e
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            try:
                results = await loop.run_in_executor(self._pool, self.compute, batch)
            except Exception as exc:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            for job, result in zip(batch, results, strict=True):
                self.rows += len(job)
                if not job.future.done():  # a client that went away cancelled its future
                    job.future.set_result(result)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def strict_decode(decoder: msgspec.json.Decoder, body: bytes) -> Any | None:
    """The strict decoder's request, or None where it refuses the body (the FastAPI route
    then answers, naming each problem)."""
    try:
        return decoder.decode(body)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8 inside a string
        return None


def not_utf8(body: bytes) -> str | None:
    """Why a body is not UTF-8, or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"request body is not valid UTF-8 (byte {exc.start})"
    return None


# ---------------------------------------------------------------------------------- gateway
async def _respond(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = (),
                   content_type: bytes = b"application/json") -> None:  # fmt: skip
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})  # fmt: skip


class Gateway:
    """One pure-ASGI middleware in front of the mounted FastAPI app:

    - `/readyz`: 503 until the model is loaded, and while no durable place can take
      prediction rows (scoring is refused then: a load balancer drains this node); 200
      `ready`, or 200 `degraded` while the store is down and rows wait in the journal.
    - Every POST body is read here and bounded (413) before anything parses it.
    - API keys (`X-API-Key` or `Authorization: Bearer`, constant-time comparison, several
      valid keys for rotation) and a per-key fixed-window rate limit answering 429 with
      Retry-After; health, metrics and docs are exempt.
    - `POST /predict` with a body the strict decoder accepts and no `Origin` header (browser
      requests take the FastAPI route, behind BentoML's CORS middleware): scored here.
      Everything else goes on to the FastAPI app, the body replayed if it was read.

    - `POST /predict` with an Arrow IPC stream body (serving/arrowio.py): answered here too;
      with an `Origin` header it gets 415 (Arrow is for server-to-server batches, browsers
      send JSON, and BentoML's CORS middleware sits behind this one).

    `state()` returns the service instance once it is initialised (else None); `predict(svc,
    request) -> bytes | None` scores a decoded request (None: the FastAPI route answers); `predict_arrow(svc, body, query) -> (status,
    body, content type)` an Arrow one."""

    def __init__(self, app, keys: list[str], limiter: FixedWindowLimiter, state: Callable[[], Any],
                 decoder: msgspec.json.Decoder, predict: Callable[[Any, Any], Awaitable[bytes | None]],
                 predict_arrow: Callable[[Any, bytes, str], Awaitable[tuple[int, bytes, bytes]]],
                 on_reject: Callable[[int], None] | None = None,
                 draining: Callable[[], str | None] = lambda: None,
                 metrics: Callable[[], tuple[bytes, bytes]] | None = None,
                 throttle: FailedKeyThrottle | None = None, access_log: bool = False) -> None:  # fmt: skip
        self.app, self.keys, self.limiter, self.state = app, keys, limiter, state
        self.metrics = metrics
        self.throttle = throttle or FailedKeyThrottle()
        self.draining = draining
        self.decoder, self.predict, self.on_reject = decoder, predict, on_reject
        self.predict_arrow = predict_arrow
        self.access_log = access_log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if stopping := self.draining():  # no client may keep this connection (serving/lifecycle.py)
            send = _closing(send)
            if stopping == "refusing" and path not in ("/readyz", "/livez", "/metrics"):
                await self._reject(send, 503, "server is stopping: retry (another node)",
                                   [(b"retry-after", b"5")])  # fmt: skip
                return
        if path == "/readyz":
            await self._readyz(send)
            return
        if path == "/metrics" and self.metrics is not None:
            body, content_type = await asyncio.to_thread(self.metrics)
            await _respond(send, 200, body, content_type=content_type)
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            # BentoML's own index page loads scripts from the internet: the API's page is /docs
            docs = (scope.get("root_path", "") + "/docs").encode()
            await _respond(send, 307, b"", [(b"location", docs)])
            return
        if path.startswith(EXEMPT) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        presented, origin, arrow, rid = None, False, False, None
        for name, value in scope["headers"]:
            if name == b"content-type":
                arrow = value.split(b";")[0].strip().lower() == ARROW_STREAM
            elif name == b"x-api-key":
                presented = value.decode("latin-1")
            elif name == b"authorization" and presented is None and value[:7].lower() == b"bearer ":
                presented = value[7:].decode("latin-1").strip()
            elif name == b"origin":
                origin = True
            elif name == requestlog.HEADER:
                rid = requestlog.accepted(value)
        requestlog.REQUEST_ID.set(rid or requestlog.new_id())
        send = requestlog.answering(send, scope["method"], path, self.access_log)
        if self.keys:
            client = (scope.get("client") or ("?",))[0]
            if (wait := self.throttle.blocked(client)) is not None:
                await self._reject(send, 429, "too many failed API key checks from this address",
                                   [(b"retry-after", str(max(1, math.ceil(wait))).encode())])  # fmt: skip
                return
            key = match_key(presented, self.keys)
            if key is None:
                self.throttle.failed(client)
                await self._reject(send, 401, "missing or invalid API key (X-API-Key or Authorization: Bearer)",
                                   [(b"www-authenticate", b"Bearer")])  # fmt: skip
                return
            wait = self.limiter.hit(key)
            if wait is not None:
                await self._reject(send, 429, "rate limit exceeded",
                                   [(b"retry-after", str(max(1, math.ceil(wait))).encode())])  # fmt: skip
                return
            CURRENT_KEY.set(key)
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # every body is read here, bounded, before anything parses it
        limit = MAX_BODY_BYTES if path == "/predict" else MAX_OTHER_BODY_BYTES
        body = await self._body(scope, receive, send, limit)
        if body is None:
            return
        svc = self.state()
        try:
            if arrow and path == "/predict" and svc is not None:
                await self._arrow(svc, scope, body, send, origin)
                return
            answer = None
            if path == "/predict" and not origin and svc is not None:
                request = strict_decode(self.decoder, body)
                answer = None if request is None else await self.predict(svc, request)
            if answer is None:
                if (why := not_utf8(body)) is not None:  # JSON is UTF-8 (RFC 8259)
                    await _respond(send, 400, orjson.dumps({"detail": [
                        {"field": "body", "message": why, "type": "json_invalid"}]}))  # fmt: skip
                    return
                await self.app(scope, _replay(body, receive), send)  # FastAPI answers
                return
        except Refused as exc:  # 503 (no durable log), 429 (the key's rows are spent)
            await self._reject(
                send, exc.status, str(exc), [(b"retry-after", str(exc.retry_after_s).encode())]
            )
            return
        except Exception:  # a bug: answer at once, never leave the client to the 60 s timeout
            log.exception("unhandled error answering %s", path)
            await self._reject(send, 500, "internal error", [])
            return
        await _respond(send, 200, answer)

    async def _arrow(self, svc, scope, body: bytes, send, origin: bool) -> None:
        if origin:
            await _respond(send, 415, b'{"detail":"Arrow bodies are for server-to-server calls: '
                                      b'browsers send JSON"}')  # fmt: skip
            return
        query = scope.get("query_string", b"").decode("latin-1")
        status, out, content_type = await self.predict_arrow(svc, body, query)
        await _respond(send, status, out, content_type=content_type)

    async def _body(self, scope, receive, send, limit: int) -> bytes | None:
        """The whole body, or None once answered (413 past `limit` bytes, announced or sent)."""
        too_large = b'{"detail":"request body too large: at most %d bytes"}' % limit
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _respond(send, 413, too_large, [(b"connection", b"close")])
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, too_large, [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _reject(
        self, send, status: int, detail: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        if self.on_reject:
            self.on_reject(status)
        await _respond(send, status, json.dumps({"detail": detail}).encode(), extra)

    async def _readyz(self, send) -> None:
        svc = self.state()
        if svc is None:
            status, body = 503, {"status": "not_ready", "model_loaded": False}
        else:
            status, body = svc.readiness()
        await _respond(send, status, json.dumps(body).encode())


def _closing(send: Callable) -> Callable:
    async def closing(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [*message.get("headers", []), (b"connection", b"close")],
            }
        await send(message)

    return closing


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
